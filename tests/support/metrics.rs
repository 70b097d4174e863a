//! Reading a service's `/metrics`.

/// A service's whole `/metrics` exposition.
pub async fn metrics_text(http: &reqwest::Client, service_url: &str) -> String {
    http.get(format!("{service_url}/metrics"))
        .send()
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text")
}

/// A metric's value from a service's `/metrics` (0 if absent).
pub async fn metric(http: &reqwest::Client, service_url: &str, series: &str) -> u64 {
    metrics_text(http, service_url)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}
