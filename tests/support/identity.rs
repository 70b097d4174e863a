//! The tests' identity provider: the shop's development issuer with a key of the test run's
//! own, its JWKS served from a thread of its own (each test has its own runtime; the issuer
//! outlives them all). Every shop a test starts trusts it, as compose and `shop up` trust
//! theirs.

use std::sync::{Arc, LazyLock};

use service_kit::auth::AuthSettings;
use shop::issuer::{DEFAULT_TTL, DEV_AUDIENCE, DEV_ISSUER, DevIssuer, JWKS_PATH};

/// The customer the tests' orders are placed for ([`crate::order_body`]). The tests' HTTP
/// client calls as this customer, with the operator scope besides, so a test reads any order
/// without another token.
pub const TEST_CUSTOMER: &str = "cust-42";

struct Served {
    issuer: Arc<DevIssuer>,
    base_url: String,
}

static ISSUER: LazyLock<Served> = LazyLock::new(|| {
    let issuer = Arc::new(DevIssuer::generate().expect("a development key"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the JWKS");
    let base_url = format!("http://{}", listener.local_addr().expect("the JWKS port"));
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let serving = issuer.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the JWKS");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            let _ = serving.serve(listener).await;
        });
    });
    Served { issuer, base_url }
});

/// Where the tests' issuer serves its keys (`http://127.0.0.1:<port>`).
pub fn issuer_url() -> String {
    ISSUER.base_url.clone()
}

/// What a service under test is told to trust.
pub fn auth_settings() -> AuthSettings {
    AuthSettings {
        jwks_url: format!("{}{JWKS_PATH}", ISSUER.base_url),
        issuer: DEV_ISSUER.to_owned(),
        audience: DEV_AUDIENCE.to_owned(),
    }
}

/// A token for `customer` (an operator's if `operator`).
pub fn token(customer: &str, operator: bool) -> String {
    ISSUER
        .issuer
        .token(customer, operator, DEFAULT_TTL)
        .expect("a signed token")
}

/// A token signed by the tests' issuer with exactly `claims`.
pub fn signed(claims: &serde_json::Value) -> String {
    ISSUER.issuer.sign(claims).expect("a signed token")
}

/// An HTTP client that calls as [`TEST_CUSTOMER`], an operator.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("an HTTP client")
}

/// [`client`]'s settings, for a test that needs more of its own.
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", token(TEST_CUSTOMER, true));
    headers.insert(
        reqwest::header::AUTHORIZATION,
        bearer.parse().expect("a header value"),
    );
    reqwest::Client::builder().default_headers(headers)
}
