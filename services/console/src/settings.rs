//! The console's own settings (beside the kit's): the Orders API its buttons call, as any
//! client would, and the token they call it with.

use service_kit::{Config, config::ConfigError};

/// The variables the console reads for itself.
pub const VARIABLES: &[&str] = &["ORDERS_URL", "ORDERS_TOKEN_FILE", "CONSOLE_MAX_STREAMS"];

/// `CONSOLE_MAX_STREAMS` when unset: live pages served at once, far below the kit's default
/// HTTP_MAX_CONNECTIONS, so streams never hold every connection.
pub const DEFAULT_MAX_STREAMS: usize = 64;

/// `ORDERS_URL` when unset: orders on this machine, on its default port.
pub const DEFAULT_ORDERS_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct Settings {
    /// `ORDERS_URL`: the public Orders API.
    pub orders_url: String,
    /// `ORDERS_TOKEN_FILE`: a file holding the bearer token the buttons send (the demo
    /// customer's), read at start.
    pub orders_token: Option<String>,
    /// `CONSOLE_MAX_STREAMS`: live streams (`/api/stream`) served at once; one more is refused.
    pub max_streams: usize,
}

impl Settings {
    pub fn read(config: &Config) -> Result<Self, ConfigError> {
        let orders_url = config
            .var("ORDERS_URL")
            .unwrap_or(DEFAULT_ORDERS_URL)
            .trim_end_matches('/')
            .to_owned();
        let orders_token = match config.var("ORDERS_TOKEN_FILE") {
            Some(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    name: "ORDERS_TOKEN_FILE",
                    reason: format!("cannot read {path}: {e}"),
                })?;
                Some(token.trim().to_owned())
            }
            None => None,
        };
        Ok(Self {
            orders_url,
            orders_token,
            max_streams: config.number("CONSOLE_MAX_STREAMS", DEFAULT_MAX_STREAMS, 1..=100_000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let mut config = Config::defaults(SocketAddr::from((Ipv4Addr::LOCALHOST, 8085)));
        for (name, value) in vars {
            config.set_var(name, *value);
        }
        config
    }

    #[test]
    fn orders_on_this_machine_unless_told_otherwise() {
        let settings = Settings::read(&config(&[])).expect("defaults");
        assert_eq!(settings.orders_url, DEFAULT_ORDERS_URL);
        assert_eq!(settings.orders_token, None);
        let told =
            Settings::read(&config(&[("ORDERS_URL", "http://orders:8080/")])).expect("a URL");
        assert_eq!(told.orders_url, "http://orders:8080");
    }

    #[test]
    fn a_token_file_that_cannot_be_read_is_reported_by_name() {
        let missing = config(&[("ORDERS_TOKEN_FILE", "/nonexistent/orders-token")]);
        let error = Settings::read(&missing).expect_err("no such file");
        assert!(error.to_string().contains("ORDERS_TOKEN_FILE"), "{error}");
    }
}
