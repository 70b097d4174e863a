//! A development identity provider: an ES256 key of its own, its public half served as a
//! JWKS, and tokens signed with it. The tests run the shop against one (a real shop trusts its
//! identity provider, Keycloak or any OIDC issuer, through the same three settings).

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, routing::get};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::{
    SecretKey,
    elliptic_curve::{Generate, pkcs8::EncodePrivateKey, sec1::ToSec1Point},
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
/// How long a token is good for unless asked otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
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

    /// The public keys, as `AUTH_JWKS_URL` serves them.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// Serves the JWKS on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let jwks = self.jwks.clone();
        let app = Router::new().route(JWKS_PATH, get(move || async move { Json(jwks) }));
        axum::serve(listener, app).await
    }
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
        let caller = auth.caller(Some(&bearer(ada))).await.expect("believed");
        assert_eq!(caller.subject.as_deref(), Some("ada"));
        assert!(!caller.operator);
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
