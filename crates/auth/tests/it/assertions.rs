//! System clients that authenticate with signed JWT assertions (RFC 7523, SMART Backend
//! Services): SM2 and ES384 keys, every claim check, replayed `jti`s, and the mistakes a client
//! can make, each an `invalid_client` 401 with a description.

use access::Role;
use auth::jwt::{ALG_ES384, ALG_SM2, ASSERTION_TYPE};
use p384::ecdsa::signature::Signer;
use p384::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Value, json};

use super::{ENDPOINT, Fixture, fixture, oauth_error};

/// A client's private key, as its owner holds it.
pub enum ClientKey {
    Sm2(crypto::sm2::Sm2SigningKey),
    Es384(p384::ecdsa::SigningKey),
}

impl ClientKey {
    pub fn sm2() -> Self {
        ClientKey::Sm2(crypto::sm2::Sm2SigningKey::generate())
    }

    pub fn es384(seed: u8) -> Self {
        ClientKey::Es384(p384::ecdsa::SigningKey::from_slice(&[seed.max(1); 48]).unwrap())
    }

    pub fn public_pem(&self) -> String {
        match self {
            ClientKey::Sm2(k) => k.public().to_public_key_pem().unwrap(),
            ClientKey::Es384(k) => k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self {
            ClientKey::Sm2(_) => ALG_SM2,
            ClientKey::Es384(_) => ALG_ES384,
        }
    }

    /// A compact JWS of `claims` with this key, under header `alg`.
    pub fn sign_as(&self, alg: &str, claims: &Value) -> String {
        self.sign_text(alg, &claims.to_string())
    }

    /// A compact JWS of the claims text `claims` with this key, under header `alg`.
    pub fn sign_text(&self, alg: &str, claims: &str) -> String {
        let header = crypto::base64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        let input = format!("{header}.{}", crypto::base64url(claims.as_bytes()));
        let signature = match self {
            ClientKey::Sm2(k) => k.sign(input.as_bytes()),
            ClientKey::Es384(k) => {
                let s: p384::ecdsa::Signature = k.sign(input.as_bytes());
                s.to_vec()
            }
        };
        format!("{input}.{}", crypto::base64url(&signature))
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg(), claims)
    }
}

/// The claims SMART Backend Services asks for, valid at `now` for 4 minutes.
pub fn claims(client_id: &str, now: i64, jti: &str) -> Value {
    json!({"iss": client_id, "sub": client_id, "aud": ENDPOINT, "exp": now + 240, "iat": now, "jti": jti})
}

fn without(claim: &'static str) -> impl Fn(&mut Value) {
    move |c: &mut Value| {
        c.as_object_mut().unwrap().remove(claim);
    }
}

async fn exchange(f: &Fixture, assertion: &str) -> Result<Value, auth::AuthError> {
    f.token(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ])
    .await
}

#[tokio::test]
async fn sm2_and_es384_assertions_get_system_tokens() {
    let f = fixture();
    for key in [ClientKey::sm2(), ClientKey::es384(7)] {
        let (id, alg) = f
            .auth
            .create_client_with_key("lab system", "system/Observation.rs", Some("h1".into()), None, &key.public_pem())
            .await
            .unwrap();
        assert_eq!(alg, key.alg());
        let body = exchange(&f, &key.sign(&claims(&id, f.now(), "a-1"))).await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["scope"], "system/Observation.rs");
        assert!(body.get("refresh_token").is_none(), "client credentials get no refresh token");
        let session = f.auth.authenticate(body["access_token"].as_str().unwrap()).await.unwrap();
        assert_eq!(session.principal.subject, format!("client/{id}"));
        assert_eq!(session.principal.role, Role::System);
        assert_eq!(session.principal.organization.as_deref(), Some("h1"));
        // A key-registered client has no secret to guess.
        let (status, code, _) = oauth_error(
            f.token(&[("grant_type", "client_credentials"), ("client_id", &id), ("client_secret", "")]).await,
        );
        assert_eq!((status, code), (401, "invalid_client"));
    }
    let log = f.auth.store().audit_read(0, 1000).await.unwrap();
    assert_eq!(
        log.iter().filter(|e| e.record.action == "login" && e.record.outcome == "success").count(),
        2,
        "each exchange is in the audit log"
    );
}

#[tokio::test]
async fn every_bad_assertion_is_an_invalid_client_with_a_reason() {
    let f = fixture();
    let key = ClientKey::sm2();
    let (id, _) = f.auth.create_client_with_key("his", "system/*.read", None, None, &key.public_pem()).await.unwrap();
    let (secret_client, _) = f.auth.create_client("old", "system/*.read", None, None).await.unwrap();
    let t = f.now();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims(&id, t, &format!("jti-{}", crypto::random_token(6)));
        change(&mut c);
        key.sign(&c)
    };
    let other_key = ClientKey::sm2();
    let cases: Vec<(String, &str)> = vec![
        (with(&|c| c["aud"] = json!("https://elsewhere.example/oauth2/token")), "aud must be this server's token"),
        (with(&|c| c["aud"] = json!(["https://a.example", ENDPOINT])), ""),
        (with(&without("aud")), "needs aud"),
        (with(&|c| c["exp"] = json!(t - 61)), "expired"),
        (with(&|c| c["exp"] = json!(t + 3600)), "at most 300 s ahead"),
        (with(&|c| c["exp"] = json!("soon")), "claims are malformed"),
        (with(&without("exp")), "needs exp"),
        (with(&|c| c["nbf"] = json!(t + 120)), "not valid yet"),
        (with(&|c| c["iat"] = json!(t + 120)), "issued in the future"),
        (with(&without("jti")), "needs a jti"),
        (with(&|c| c["jti"] = json!("x".repeat(300))), "jti is longer than 256"),
        (with(&|c| c["sub"] = json!("someone-else")), "iss 'client-"),
        (with(&without("iss")), "needs iss and sub"),
        (key.sign(&claims("client-000000000000", t, "j")), "unknown or disabled client"),
        (key.sign(&claims(&secret_client, t, "j")), "authenticates with a secret"),
        (other_key.sign(&claims(&id, t, "j")), "SM2 signature does not verify"),
        (key.sign_as("ES384", &claims(&id, t, "j")), "signed with ES384 but client"),
        (key.sign_as("none", &claims(&id, t, "j")), "alg 'none' is not supported"),
        (key.sign_as("HS256", &claims(&id, t, "j")), "alg 'HS256' is not supported"),
        (format!("{}.", key.sign(&claims(&id, t, "j")).rsplit_once('.').unwrap().0), "empty part"),
        ("a.b.c.d.e".into(), "encrypted JWT"),
        (
            key.sign_text(
                ALG_SM2,
                &format!(r#"{{"iss":"{id}","iss":"x","sub":"{id}","aud":"{ENDPOINT}","exp":{},"jti":"d"}}"#, t + 60),
            ),
            "duplicate field `iss`",
        ),
        ("x".repeat(20_000), "longer than 16384 bytes"),
    ];
    for (assertion, words) in &cases {
        let result = exchange(&f, assertion).await;
        if words.is_empty() {
            result.expect("an aud array that names this endpoint is fine");
            continue;
        }
        let (status, code, description) = oauth_error(result);
        assert_eq!((status, code), (401, "invalid_client"), "{words}: {description}");
        assert!(description.contains(words), "'{description}' should mention '{words}'");
    }
    // A DER signature (what `openssl pkeyutl` prints) is refused with a hint.
    let ClientKey::Sm2(sm2) = &key else { unreachable!() };
    let good = key.sign(&claims(&id, t, "der"));
    let input = good.rsplit_once('.').unwrap().0;
    let der = format!("{input}.{}", crypto::base64url(&sm2.sign_der(input.as_bytes())));
    assert!(oauth_error(exchange(&f, &der).await).2.contains("64 bytes r‖s"));

    // The form itself.
    let assertion = key.sign(&claims(&id, t, "form"));
    let cases: [(Vec<(&str, &str)>, &str); 4] = [
        (vec![("client_assertion_type", "urn:other"), ("client_assertion", &assertion)], "is not supported"),
        (vec![("client_assertion", &assertion)], "client_assertion_type urn:ietf"),
        (vec![("client_assertion_type", ASSERTION_TYPE)], "client_assertion (a signed JWT) is required"),
        (
            vec![("client_assertion_type", ASSERTION_TYPE), ("client_assertion", &assertion), ("client_secret", "s")],
            "one client authentication method",
        ),
    ];
    for (pairs, words) in cases {
        let mut all = vec![("grant_type", "client_credentials")];
        all.extend(pairs);
        let (status, code, description) = oauth_error(f.token(&all).await);
        assert_eq!((status, code), (401, "invalid_client"));
        assert!(description.contains(words), "'{description}' should mention '{words}'");
    }
    let mismatched = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
        ("client_id", secret_client.as_str()),
    ];
    assert!(oauth_error(f.token(&mismatched).await).2.contains("client_id differs"));
    // Without knowing its own URL the server cannot check aud, so it refuses.
    let form = super::form(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &assertion),
    ]);
    assert!(oauth_error(f.auth.token(&form, None, None).await).2.contains("token endpoint URL"));
    exchange(&f, &assertion).await.expect("the assertion itself was fine all along");

    let failures = f.auth.store().audit_read(0, 1000).await.unwrap();
    assert!(
        failures
            .iter()
            .filter(|e| e.record.action == "login" && e.record.outcome == "failure")
            .any(|e| e.record.detail.contains("SM2 signature does not verify")),
        "failed assertions are audited with their reason"
    );
}

#[tokio::test]
async fn a_jti_is_usable_once_until_its_assertion_expires() {
    let f = fixture();
    let key = ClientKey::es384(3);
    let (id, _) =
        f.auth.create_client_with_key("node-2", "system/*.read", None, None, &key.public_pem()).await.unwrap();
    let other = ClientKey::sm2();
    let (other_id, _) =
        f.auth.create_client_with_key("node-3", "system/*.read", None, None, &other.public_pem()).await.unwrap();

    exchange(&f, &key.sign(&claims(&id, f.now(), "once"))).await.unwrap();
    // The same assertion, or a new one with the same jti, is a replay while the first is valid.
    f.advance(100);
    let again = key.sign(&claims(&id, f.now(), "once"));
    let (status, code, description) = oauth_error(exchange(&f, &again).await);
    assert_eq!((status, code), (401, "invalid_client"));
    assert!(description.contains("jti was already used"), "{description}");
    // Another client's jti space is its own.
    exchange(&f, &other.sign(&claims(&other_id, f.now(), "once"))).await.unwrap();
    // Once the first assertion is past its exp and the skew, the jti may come back.
    f.advance(240 + 60 - 100 - 1);
    let (_, _, description) = oauth_error(exchange(&f, &key.sign(&claims(&id, f.now(), "once"))).await);
    assert!(description.contains("already used"), "still inside the skew: {description}");
    f.advance(1);
    exchange(&f, &key.sign(&claims(&id, f.now(), "once"))).await.expect("the first use has expired");

    // Expired records are pruned as new assertions arrive.
    for i in 0..40 {
        exchange(&f, &key.sign(&claims(&id, f.now(), &format!("n{i}")))).await.unwrap();
    }
    f.advance(3600);
    exchange(&f, &key.sign(&claims(&id, f.now(), "late"))).await.unwrap();
    exchange(&f, &key.sign(&claims(&id, f.now(), "later"))).await.unwrap();
    let left = f.auth.store().kv_list("jti", "", 1000).await.unwrap();
    assert!(left.len() <= 10, "expired jti records pruned, {} left", left.len());
}
