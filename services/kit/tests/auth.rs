//! Bearer tokens, as `service_kit::auth` promises to check them: RS256 and ES256 signatures by
//! the keys the issuer publishes (a JWKS served here, over HTTP), issuer, audience, expiry with
//! 30 s of clock skew, a key id not seen yet fetched again at most every 10 s, and a verified
//! token remembered. The keys are this test's own (`tests/fixtures`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::get};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use service_kit::auth::{AuthError, AuthSettings, Caller, OPERATOR_SCOPE, Verifier};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "shop-test";
const RSA_DER: &[u8] = include_bytes!("fixtures/rsa.der");
const EC_DER: &[u8] = include_bytes!("fixtures/ec.der");
const JWKS: &str = include_str!("fixtures/jwks.json");
/// What the kit waits, at least, before fetching the key set again for an unknown key id.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// A JWKS endpoint serving `keys` (changeable: the issuer rotates), counting its fetches.
#[derive(Clone, Default)]
struct Issuer(Arc<Mutex<(Vec<Value>, u32)>>);

impl Issuer {
    async fn serve(keys: &[&str]) -> (Self, AuthSettings) {
        let issuer = Self::default();
        issuer.publish(keys);
        let app = Router::new()
            .route("/jwks.json", get(jwks))
            .with_state(issuer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr: SocketAddr = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let settings = AuthSettings {
            jwks_url: format!("http://{addr}/jwks.json"),
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
        };
        (issuer, settings)
    }

    /// Publishes the fixture keys named by `kids` (and no others).
    fn publish(&self, kids: &[&str]) {
        let all: Value = serde_json::from_str(JWKS).expect("the fixture JWKS");
        let keys = all["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter(|key| kids.iter().any(|kid| key["kid"] == *kid))
            .cloned()
            .collect();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).0 = keys;
    }

    fn fetches(&self) -> u32 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

async fn jwks(State(issuer): State<Issuer>) -> Json<Value> {
    let mut served = issuer.0.lock().unwrap_or_else(PoisonError::into_inner);
    served.1 += 1;
    Json(json!({ "keys": served.0 }))
}

/// A token for `sub`, signed by the fixture key `kid`, expiring `expires_in` seconds from now
/// (negative: in the past), with `changes` applied to its claims.
fn token(kid: &str, sub: &str, expires_in: i64, changes: impl FnOnce(&mut Value)) -> String {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).expect("a timestamp");
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now + expires_in, "iat": now,
    });
    changes(&mut claims);
    let (algorithm, key) = match kid {
        "test-rsa" => (Algorithm::RS256, EncodingKey::from_rsa_der(RSA_DER)),
        _ => (Algorithm::ES256, EncodingKey::from_ec_der(EC_DER)),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).expect("a signed token")
}

fn customer(sub: &str) -> Caller {
    Caller {
        subject: Some(sub.to_owned()),
        operator: false,
    }
}

fn invalid(result: Result<Caller, AuthError>) -> String {
    match result {
        Err(AuthError::Invalid(reason)) => reason,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_signed_by_published_keys_are_believed() {
    let (_, settings) = Issuer::serve(&["test-rsa", "test-ec"]).await;
    let verifier = Verifier::new(settings);
    let rsa = token("test-rsa", "cust-1", 60, |_| {});
    assert_eq!(
        verifier.verify(&rsa).await.expect("RS256"),
        customer("cust-1")
    );
    let operator = token("test-ec", "ops", 60, |claims| {
        claims["scope"] = json!(format!("openid {OPERATOR_SCOPE}"));
    });
    let caller = verifier.verify(&operator).await.expect("ES256");
    assert_eq!(caller.subject.as_deref(), Some("ops"));
    assert!(caller.operator, "the operator scope makes an operator");
}

#[tokio::test]
async fn a_token_is_refused_for_its_issuer_audience_algorithm_or_signature() {
    let (_, settings) = Issuer::serve(&["test-rsa", "test-ec"]).await;
    let verifier = Verifier::new(settings);
    let other_issuer = token("test-ec", "cust-1", 60, |c| {
        c["iss"] = json!("https://else")
    });
    assert!(invalid(verifier.verify(&other_issuer).await).contains("Issuer"));
    let other_audience = token("test-ec", "cust-1", 60, |c| c["aud"] = json!("another-api"));
    assert!(invalid(verifier.verify(&other_audience).await).contains("Audience"));
    // The EC key's id on an RSA signature: the key decides the algorithm, not the token.
    let rsa = token("test-rsa", "cust-1", 60, |_| {});
    let (_, rest) = rsa.split_once('.').expect("a JWT");
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": "test-ec" });
    let swapped = format!(
        "{}.{rest}",
        base64_url(&serde_json::to_vec(&header).expect("JSON"))
    );
    assert!(invalid(verifier.verify(&swapped).await).contains("signed RS256"));
    // Another customer's name over the same signature.
    let (head, rest) = rsa.split_once('.').expect("a JWT");
    let (_, signature) = rest.split_once('.').expect("a JWT");
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "cust-2", "exp": u64::MAX / 2 });
    let forged = format!(
        "{head}.{}.{signature}",
        base64_url(&serde_json::to_vec(&claims).expect("JSON"))
    );
    assert!(invalid(verifier.verify(&forged).await).contains("InvalidSignature"));
}

#[tokio::test]
async fn thirty_seconds_of_clock_skew_are_tolerated_and_no_more() {
    let (_, settings) = Issuer::serve(&["test-ec"]).await;
    let verifier = Verifier::new(settings);
    let just_expired = token("test-ec", "cust-1", -20, |_| {});
    assert_eq!(
        verifier
            .verify(&just_expired)
            .await
            .expect("within the skew"),
        customer("cust-1")
    );
    let expired = token("test-ec", "cust-1", -40, |_| {});
    assert!(invalid(verifier.verify(&expired).await).contains("ExpiredSignature"));
}

#[tokio::test]
async fn an_unseen_key_fetches_the_keys_again_at_most_every_ten_seconds_and_a_verified_token_is_remembered()
 {
    let (issuer, settings) = Issuer::serve(&["test-ec"]).await;
    let verifier = Verifier::new(settings);
    let remembered = token("test-ec", "cust-1", 600, |_| {});
    assert!(verifier.verify(&remembered).await.is_ok());
    assert_eq!(issuer.fetches(), 1);

    // The issuer rotates: the EC key goes, an RSA key comes. A token naming the new key right
    // after a fetch waits for the next one; so does one naming a made-up key.
    issuer.publish(&["test-rsa"]);
    let rotated = token("test-rsa", "cust-2", 600, |_| {});
    assert!(matches!(
        verifier.verify(&rotated).await,
        Err(AuthError::UnknownKey)
    ));
    let made_up = token("made-up", "cust-3", 600, |_| {});
    assert!(matches!(
        verifier.verify(&made_up).await,
        Err(AuthError::UnknownKey)
    ));
    assert_eq!(
        issuer.fetches(),
        1,
        "no fetch within ten seconds of the last"
    );

    tokio::time::sleep(REFRESH_AT_MOST_EVERY).await;
    assert_eq!(
        verifier.verify(&rotated).await.expect("the rotated key"),
        customer("cust-2")
    );
    assert_eq!(issuer.fetches(), 2);

    // The EC key is gone, yet the token verified with it stands until it expires; a new token
    // signed with the retired key does not.
    assert_eq!(
        verifier.verify(&remembered).await.expect("remembered"),
        customer("cust-1")
    );
    let retired = token("test-ec", "cust-1", 300, |_| {});
    assert!(matches!(
        verifier.verify(&retired).await,
        Err(AuthError::UnknownKey)
    ));
}

fn base64_url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
