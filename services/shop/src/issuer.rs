//! The development identity provider: an ES256 key of the shop's own, its public half served
//! as a JWKS, and tokens signed with it (`shop token ada`, like `dotnet user-jwts`). `shop up`,
//! compose, the lab and the tests run the shop against it, so authentication is on everywhere
//! and the README's curl flows stay copy-pasteable. A real shop trusts its identity provider
//! instead (Keycloak, any OIDC issuer) through the same three settings.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{Json, Router, routing::get};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::{
    SecretKey,
    elliptic_curve::{
        Generate,
        pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding},
        sec1::ToSec1Point,
    },
};
use serde_json::{Value, json};
use service_kit::auth::OPERATOR_SCOPE;
use tokio::net::TcpListener;

/// The `iss` of the development issuer's tokens (`AUTH_ISSUER`).
pub const DEV_ISSUER: &str = "urn:shop:dev-issuer";
/// The `aud` the shop's APIs expect of them (`AUTH_AUDIENCE`).
pub const DEV_AUDIENCE: &str = "shop";
/// Where the issuer serves its keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Where `shop up` and `shop issuer` serve them.
pub const DEFAULT_PORT: u16 = 8079;
/// How long the console's token is good for: a development shop runs for days.
pub const CONSOLE_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a token is good for unless asked otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot read or write the development key {path}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a PKCS#8 P-256 private key")]
    NotAKey { path: PathBuf },
    #[error("cannot generate a key")]
    Generate,
    #[error("cannot sign a token")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A signing key and the JWKS that publishes it.
pub struct DevIssuer {
    encoding: EncodingKey,
    kid: String,
    jwks: Value,
}

impl DevIssuer {
    /// A fresh key, for a run of its own (the lab, the tests).
    pub fn generate() -> Result<Self, IssuerError> {
        let secret = SecretKey::try_generate().map_err(|_| IssuerError::Generate)?;
        Self::from_secret(&secret)
    }

    /// The key kept at `path`, created there first if there is none: the one `shop up` and
    /// `shop issuer` serve and `shop token` signs with, whichever runs first.
    pub fn load_or_create(path: &Path) -> Result<Self, IssuerError> {
        let file_error = |source| IssuerError::KeyFile {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let secret = SecretKey::from_pkcs8_pem(&pem).map_err(|_| IssuerError::NotAKey {
                    path: path.to_owned(),
                })?;
                Self::from_secret(&secret)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = SecretKey::try_generate().map_err(|_| IssuerError::Generate)?;
                let pem = secret
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|_| IssuerError::Generate)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(file_error)?;
                }
                write_private(path, pem.as_bytes()).map_err(file_error)?;
                Self::from_secret(&secret)
            }
            Err(e) => Err(file_error(e)),
        }
    }

    fn from_secret(secret: &SecretKey) -> Result<Self, IssuerError> {
        let der = secret.to_pkcs8_der().map_err(|_| IssuerError::Generate)?;
        let point = secret.public_key().to_sec1_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(IssuerError::Generate);
        };
        let (x, y) = (base64url(x), base64url(y));
        // The key's id is derived from the key, so a restarted issuer keeps it.
        let kid = format!("dev-{}", &x[..12]);
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        }]});
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            kid,
            jwks,
        })
    }

    /// A token for `customer`, an operator's if `operator`, good for `ttl`.
    pub fn token(
        &self,
        customer: &str,
        operator: bool,
        ttl: Duration,
    ) -> Result<String, IssuerError> {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "sub": customer,
            "scope": if operator { OPERATOR_SCOPE } else { "" },
            "iat": now,
            "exp": now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        }))
    }

    /// Signs any claims (tests make expired and misaddressed tokens with it).
    pub fn sign(&self, claims: &Value) -> Result<String, IssuerError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// The settings that make a service trust this issuer, served at `base_url`.
    pub fn settings(base_url: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AUTH_JWKS_URL", format!("{base_url}{JWKS_PATH}")),
            ("AUTH_ISSUER", DEV_ISSUER.to_owned()),
            ("AUTH_AUDIENCE", DEV_AUDIENCE.to_owned()),
        ]
    }

    /// Serves the JWKS on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let jwks = self.jwks.clone();
        let app = Router::new().route(JWKS_PATH, get(move || async move { Json(jwks) }));
        axum::serve(listener, app).await
    }
}

/// `SHOP_DEV_KEY` if set, else `~/.shop/dev-signing-key.pem`.
pub fn default_key_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOP_DEV_KEY") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".shop").join("dev-signing-key.pem")
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use service_kit::auth::{Auth, AuthSettings};

    use super::*;

    #[test]
    fn base64url_has_no_padding() {
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[tokio::test]
    async fn the_kit_believes_the_dev_issuers_tokens_and_no_others() {
        let issuer = Arc::new(DevIssuer::generate().expect("a key"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        tokio::spawn(issuer.clone().serve(listener));
        let auth = Auth::new(Some(&AuthSettings {
            jwks_url: format!("{url}{JWKS_PATH}"),
            issuer: DEV_ISSUER.to_owned(),
            audience: DEV_AUDIENCE.to_owned(),
        }));
        let bearer = |token: String| {
            axum::http::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header")
        };
        let ada = issuer.token("ada", false, DEFAULT_TTL).expect("signed");
        let caller = auth
            .caller(Some(&bearer(ada.clone())))
            .await
            .expect("believed");
        assert_eq!(caller.subject.as_deref(), Some("ada"));
        assert!(!caller.operator);
        // The scheme's case does not matter; another scheme is not a bearer token.
        let shouted =
            axum::http::HeaderValue::from_str(&format!("BEARER {ada}")).expect("a header");
        assert!(auth.caller(Some(&shouted)).await.is_ok());
        let basic = axum::http::HeaderValue::from_str(&format!("Basic {ada}")).expect("a header");
        assert!(auth.caller(Some(&basic)).await.is_err());
        let operator = issuer.token("ops", true, DEFAULT_TTL).expect("signed");
        assert!(
            auth.caller(Some(&bearer(operator)))
                .await
                .expect("believed")
                .operator
        );
        let stranger = DevIssuer::generate().expect("another key");
        let forged = stranger.token("ada", true, DEFAULT_TTL).expect("signed");
        assert!(auth.caller(Some(&bearer(forged))).await.is_err());
        assert!(auth.caller(None).await.is_err());
    }
}
