//! Who is calling. A request is believed only for what its caller proved: an OAuth 2.0 bearer
//! token (RFC 6750), a JWT signed RS256 or ES256 by the issuer whose keys `AUTH_JWKS_URL`
//! serves, for `AUTH_AUDIENCE`, from `AUTH_ISSUER`, not expired. Its `sub` is the customer; a
//! `scope` holding [`OPERATOR_SCOPE`] makes an operator. Keys are cached and fetched again
//! when a token names one not seen yet (the issuer rotated).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, JwkSet},
};
use serde::Deserialize;

use crate::http::problem::Problem;

/// The scope that makes a caller an operator: every order is theirs to see and cancel.
pub const OPERATOR_SCOPE: &str = "shop:operate";

/// How long a key set fetched for an unknown key id stands before a token naming another
/// unknown one may fetch again (a stream of made-up key ids must not hammer the issuer).
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 30;
/// Tokens remembered as verified; past this many the memory starts over.
const VERIFIED_CAPACITY: usize = 10_000;

/// `AUTH_JWKS_URL`, `AUTH_ISSUER`, `AUTH_AUDIENCE`: the identity provider a service trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
}

/// How a service's API tells who calls it.
#[derive(Clone)]
pub enum Auth {
    /// Bearer tokens, verified.
    Tokens(Arc<Verifier>),
    /// `AUTH_DISABLED=true`: every caller is an operator. For a laptop, never for a shop.
    Disabled,
}

impl Auth {
    pub fn new(settings: Option<&AuthSettings>) -> Self {
        settings.map_or(Self::Disabled, |settings| {
            Self::Tokens(Arc::new(Verifier::new(settings.clone())))
        })
    }

    /// The caller a request's `Authorization` header proves.
    pub async fn caller(&self, authorization: Option<&HeaderValue>) -> Result<Caller, AuthError> {
        let Self::Tokens(verifier) = self else {
            return Ok(Caller {
                subject: None,
                operator: true,
            });
        };
        let value = authorization.ok_or(AuthError::Missing)?;
        // The scheme is case-insensitive (RFC 7235): `Bearer`, `bearer`, `BEARER`.
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        verifier.verify(token).await
    }
}

/// Who is calling, as proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: the customer (`None` only with authentication disabled).
    pub subject: Option<String>,
    /// Holds [`OPERATOR_SCOPE`] (everyone, with authentication disabled).
    pub operator: bool,
}

impl Caller {
    /// Whether this caller may see and act on `customer`'s data.
    pub fn may_act_for(&self, customer: &str) -> bool {
        self.operator || self.subject.as_deref() == Some(customer)
    }
}

/// A caller holding [`OPERATOR_SCOPE`]: an extractor for the APIs only operators may read
/// (anyone else gets `403`).
#[derive(Debug, Clone)]
pub struct Operator(pub Caller);

impl<S> FromRequestParts<S> for Caller
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Auth::from_ref(state);
        auth.caller(parts.headers.get(header::AUTHORIZATION)).await
    }
}

impl<S> FromRequestParts<S> for Operator
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.operator {
            Ok(Self(caller))
        } else {
            Err(AuthError::NotOperator)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header is not a bearer token")]
    NotBearer,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token is signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("the issuer's keys cannot be fetched now; retry shortly")]
    KeysUnavailable,
    #[error("this needs the {OPERATOR_SCOPE} scope")]
    NotOperator,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code, challenge) = match self {
            Self::Missing | Self::NotBearer => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Bearer realm=\"shop\"".to_owned(),
            ),
            Self::Invalid(_) | Self::UnknownKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                format!(
                    "Bearer realm=\"shop\", error=\"invalid_token\", error_description=\"{}\"",
                    message.replace('"', "'")
                ),
            ),
            Self::KeysUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                String::new(),
            ),
            Self::NotOperator => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "Bearer realm=\"shop\", error=\"insufficient_scope\", scope=\"{OPERATOR_SCOPE}\""
                ),
            ),
        };
        let mut response = Problem::new(status, code, message).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge)
            && !challenge.is_empty()
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The claims the shop reads; `exp`, `iss` and `aud` are checked by the validation itself.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
    exp: u64,
}

struct Key {
    decoding: DecodingKey,
    algorithm: Algorithm,
}

/// Verifies tokens against the issuer's published keys.
pub struct Verifier {
    settings: AuthSettings,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<Key>>>,
    /// Tokens already verified, with their `exp`: a client sends the same token for its whole
    /// life, and checking an ES256 signature costs more than the rest of most requests.
    verified: Mutex<HashMap<String, (Caller, u64)>>,
    /// When the key set was last fetched; held while fetching.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Verifier {
    pub fn new(settings: AuthSettings) -> Self {
        Self {
            settings,
            http: reqwest::Client::new(),
            keys: RwLock::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((caller, exp)) = self.remembered(token)
            && now <= exp + LEEWAY_SECS
        {
            return Ok(caller);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".to_owned()))?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => self.fetch_key(&kid).await?,
        };
        if header.alg != key.algorithm {
            return Err(AuthError::Invalid(format!(
                "signed {:?}, but the key is for {:?}",
                header.alg, key.algorithm
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        let caller = Caller {
            operator: claims.scope.split_whitespace().any(|s| s == OPERATOR_SCOPE),
            subject: Some(claims.sub),
        };
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CAPACITY {
            verified.clear();
        }
        verified.insert(token.to_owned(), (caller.clone(), claims.exp));
        Ok(caller)
    }

    fn remembered(&self, token: &str) -> Option<(Caller, u64)> {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    fn key(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    /// Fetches the issuer's key set again for a key id not seen yet, unless that was done a
    /// moment ago. One fetch at a time: requests arriving meanwhile wait for it and find the
    /// key it brought.
    async fn fetch_key(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        let mut last_fetch = self.last_fetch.lock().await;
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        if last_fetch.is_some_and(|at| at.elapsed() < REFRESH_AT_MOST_EVERY) {
            return Err(AuthError::UnknownKey);
        }
        let fetched = async {
            self.http
                .get(&self.settings.jwks_url)
                .timeout(FETCH_TIMEOUT)
                .send()
                .await?
                .error_for_status()?
                .json::<JwkSet>()
                .await
        }
        .await;
        let set = match fetched {
            Ok(set) => set,
            // Not counted as a fetch: the next token tries again at once.
            Err(e) => {
                tracing::warn!(error = %e, url = %self.settings.jwks_url, "cannot fetch the issuer's keys");
                return Err(AuthError::KeysUnavailable);
            }
        };
        *last_fetch = Some(Instant::now());
        let keys: HashMap<String, Arc<Key>> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                // Only the two algorithms the shop accepts, whatever else the issuer publishes.
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => return None,
                };
                let decoding = DecodingKey::from_jwk(jwk).ok()?;
                Some((
                    kid,
                    Arc::new(Key {
                        decoding,
                        algorithm,
                    }),
                ))
            })
            .collect();
        tracing::info!(keys = keys.len(), "fetched the issuer's keys");
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
        self.key(kid).ok_or(AuthError::UnknownKey)
    }
}
