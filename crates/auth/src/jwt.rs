//! Signed JWT client assertions (RFC 7523 §2.2 and §3; SMART Backend Services
//! `private_key_jwt`): parsing a compact JWS, checking its signature against the key a system
//! client registered, and checking its claims. Pure: the replay check on `jti` needs the
//! store and lives in the identity service (`Auth::client_credentials`).
//!
//! Algorithms (the `alg` header):
//!
//! | `alg` | key registered | signature bytes |
//! |---|---|---|
//! | `SM2` | SM2 SPKI PEM (GB/T 32918 curve) | 64 bytes `r ‖ s`; SM2 over SM3 with the default user id `1234567812345678` (GB/T 35276) |
//! | `ES384` | EC P-384 SPKI PEM | 96 bytes `r ‖ s`; ECDSA P-384 with SHA-384 (RFC 7518 §3.4) |
//!
//! No JOSE `alg` name for SM2 is registered with IANA. `SM2` is the name the Chinese JWT
//! libraries we found use (e.g. a Go `golang-jwt` extension registers `SM2` for SM2-with-SM3,
//! and SM2 JWT headers in published code read `{"alg":"SM2","typ":"JWT"}`); an expired IETF
//! draft (draft-dang-webauthn-sm2) never reached a registry. The signature is encoded the JOSE
//! way, `r ‖ s` (as for ES256), not DER. The key fixes the algorithm: an assertion whose `alg`
//! differs from the registered key's is refused, so there is no algorithm confusion and no
//! `none`.
//!
//! Every failure is an `invalid_client` 401 whose description says what was wrong; nothing
//! here panics on any input (the tests feed it random and truncated tokens).

use p384::pkcs8::DecodePublicKey;
use serde::Deserialize;

use crate::{AuthError, AuthResult, oauth};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The JOSE `alg` for SM2 signatures over SM3 with the default user id.
pub const ALG_SM2: &str = "SM2";
/// ECDSA P-384 with SHA-384 (RFC 7518), one of the two algorithms SMART requires.
pub const ALG_ES384: &str = "ES384";
/// Longest assertion read; longer ones are refused before any decoding.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// How far in the future `exp` may be (SMART Backend Services: no more than five minutes).
pub const MAX_LIFETIME_SECONDS: i64 = 300;
/// Clock difference tolerated between the client and the server, both ways.
pub const CLOCK_SKEW_SECONDS: i64 = 60;
/// Longest `jti` accepted.
pub const MAX_JTI_CHARS: usize = 256;

fn invalid(description: impl Into<String>) -> AuthError {
    oauth(401, "invalid_client", description)
}

/// At most `n` characters of caller-given text, for error messages and the audit log.
fn shown(text: &str, n: usize) -> String {
    let mut out: String = text.chars().take(n).collect();
    if text.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

/// A client's registered public key.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Sm2(crypto::sm2::Sm2VerifyingKey),
    P384(Box<p384::ecdsa::VerifyingKey>),
}

impl PublicKey {
    /// Reads an SPKI PEM (`-----BEGIN PUBLIC KEY-----`) on the SM2 or the P-384 curve.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let pem = pem.trim();
        if !pem.starts_with("-----BEGIN PUBLIC KEY-----") {
            return Err("the client key must be a PEM public key (-----BEGIN PUBLIC KEY-----, SPKI), e.g. from \
                        `openssl pkey -pubout`"
                .into());
        }
        if let Ok(key) = crypto::sm2::Sm2VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Sm2(key));
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P384(Box::new(key)));
        }
        Err("the client key must be an SM2 or an EC P-384 public key (SPKI PEM); other curves and RSA are not \
             supported"
            .into())
    }

    /// The one `alg` this key verifies.
    pub fn alg(&self) -> &'static str {
        match self {
            PublicKey::Sm2(_) => ALG_SM2,
            PublicKey::P384(_) => ALG_ES384,
        }
    }

    fn verify(&self, signing_input: &[u8], signature: &[u8]) -> Result<(), String> {
        match self {
            PublicKey::Sm2(key) => {
                if signature.len() != 64 {
                    return Err(format!(
                        "an SM2 JWS signature is 64 bytes r‖s (base64url), not {} bytes (DER is not used in JOSE)",
                        signature.len()
                    ));
                }
                key.verify(signing_input, signature).map_err(|_| {
                    "the assertion's SM2 signature does not verify \
                     with the client's registered key (SM3, user id 1234567812345678)"
                        .to_string()
                })
            }
            PublicKey::P384(key) => {
                use p384::ecdsa::signature::Verifier;
                if signature.len() != 96 {
                    return Err(format!(
                        "an ES384 JWS signature is 96 bytes r‖s (base64url), not {} bytes (DER is not used in JOSE)",
                        signature.len()
                    ));
                }
                let signature = p384::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| "the ES384 signature is not a valid (r, s) pair".to_string())?;
                key.verify(signing_input, &signature).map_err(|_| {
                    "the assertion's ES384 signature does not verify with the client's registered key".to_string()
                })
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims read. Serde refuses a claim given twice, so two parsers can never disagree on
/// which `iss` or `exp` counts.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    jti: Option<String>,
}

/// A parsed, not yet verified, client assertion.
#[derive(Debug)]
pub struct Assertion {
    alg: String,
    claims: Claims,
    /// `header.payload`, the bytes signed.
    signing_input: String,
    signature: Vec<u8>,
}

/// What a verified assertion established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub client_id: String,
    pub jti: String,
    /// `exp`, seconds since the epoch.
    pub expires: i64,
}

fn segment(text: &str, what: &str) -> AuthResult<Vec<u8>> {
    // A base64url text of length 4k+1 cannot come from any byte string.
    if text.len() % 4 == 1 {
        return Err(invalid(format!("the assertion's {what} is not base64url (bad length)")));
    }
    let bytes = crypto::unbase64url(text)
        .map_err(|_| invalid(format!("the assertion's {what} is not base64url without padding (RFC 7515 §2)")))?;
    // One token, one spelling: unused low bits in the last character must be zero.
    if crypto::base64url(&bytes) != text {
        return Err(invalid(format!("the assertion's {what} is not canonical base64url (stray bits at the end)")));
    }
    Ok(bytes)
}

fn numeric_date(value: f64, name: &str) -> AuthResult<i64> {
    if !value.is_finite() || value.abs() > 1e13 {
        return Err(invalid(format!("the assertion's {name} is not a NumericDate (seconds since 1970)")));
    }
    Ok(value.floor() as i64)
}

impl Assertion {
    /// Parses a compact JWS: three base64url parts, a JSON header with a supported `alg`, JSON
    /// claims. Does not check the signature or the claims' values.
    pub fn parse(token: &str) -> AuthResult<Assertion> {
        if token.is_empty() {
            return Err(invalid("client_assertion is empty: send a signed JWT"));
        }
        if token.len() > MAX_ASSERTION_BYTES {
            return Err(invalid(format!(
                "client_assertion is longer than {MAX_ASSERTION_BYTES} bytes; a client assertion is a small signed JWT"
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() == 5 {
            return Err(invalid("client_assertion is an encrypted JWT (JWE); send a signed JWT (JWS)"));
        }
        let [header, payload, signature] = parts.as_slice() else {
            return Err(invalid(format!(
                "client_assertion must be a compact JWS: three base64url parts separated by dots, not {}",
                parts.len()
            )));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(invalid("client_assertion has an empty part; an unsigned JWT is not accepted"));
        }
        let header_json = segment(header, "header")?;
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|e| invalid(format!("the assertion's header is not a JSON object with an alg: {e}")))?;
        if header.crit.is_some() {
            return Err(invalid("the assertion's header has crit extensions, which this server does not understand"));
        }
        if header.alg != ALG_SM2 && header.alg != ALG_ES384 {
            return Err(invalid(format!(
                "the assertion's alg '{}' is not supported (supported: {ALG_SM2}, {ALG_ES384})",
                shown(&header.alg, 32)
            )));
        }
        let claims_json = segment(payload, "claims")?;
        let claims: Claims = serde_json::from_slice(&claims_json)
            .map_err(|e| invalid(format!("the assertion's claims are malformed ({e})")))?;
        let signature = segment(signature, "signature")?;
        let signing_input_len = token.len() - parts[2].len() - 1;
        Ok(Assertion { alg: header.alg, claims, signing_input: token[..signing_input_len].to_string(), signature })
    }

    /// The client the assertion claims to come from (`iss`, which must equal `sub`).
    pub fn client_id(&self) -> AuthResult<&str> {
        let iss = self.claims.iss.as_deref().filter(|s| !s.is_empty());
        let sub = self.claims.sub.as_deref().filter(|s| !s.is_empty());
        match (iss, sub) {
            (Some(iss), Some(sub)) if iss == sub => Ok(iss),
            (Some(iss), Some(sub)) => Err(invalid(format!(
                "the assertion's iss '{}' and sub '{}' differ; both are the client_id",
                shown(iss, 64),
                shown(sub, 64)
            ))),
            _ => Err(invalid("the assertion needs iss and sub, both the client_id")),
        }
    }

    /// Checks the signature with the client's key, then `aud`, `exp`, `nbf`, `iat` and `jti`
    /// at time `now` for the token endpoint `audience`.
    pub fn verify(&self, key: &PublicKey, audience: &str, now: i64) -> AuthResult<Verified> {
        let client_id = self.client_id()?.to_string();
        if self.alg != key.alg() {
            return Err(invalid(format!(
                "the assertion is signed with {} but client {} registered a key for {}",
                self.alg,
                shown(&client_id, 64),
                key.alg()
            )));
        }
        key.verify(self.signing_input.as_bytes(), &self.signature).map_err(invalid)?;
        let audience = audience.trim_end_matches('/');
        let names_us = |a: &String| a.trim_end_matches('/') == audience;
        let aud_ok = match &self.claims.aud {
            Some(Audience::One(a)) => names_us(a),
            Some(Audience::Many(list)) => list.iter().any(names_us),
            None => return Err(invalid(format!("the assertion needs aud, the token endpoint URL {audience}"))),
        };
        if !aud_ok {
            return Err(invalid(format!("the assertion's aud must be this server's token endpoint URL {audience}")));
        }
        let expires = match self.claims.exp {
            Some(exp) => numeric_date(exp, "exp")?,
            None => return Err(invalid("the assertion needs exp (at most 5 minutes ahead)")),
        };
        if expires + CLOCK_SKEW_SECONDS <= now {
            return Err(invalid(format!("the assertion expired {} s ago; sign a new one", now - expires)));
        }
        if expires > now + MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS {
            return Err(invalid(format!(
                "the assertion's exp is {} s ahead; it may be at most {MAX_LIFETIME_SECONDS} s ahead",
                expires - now
            )));
        }
        if let Some(nbf) = self.claims.nbf
            && numeric_date(nbf, "nbf")? > now + CLOCK_SKEW_SECONDS
        {
            return Err(invalid("the assertion is not valid yet (nbf is in the future); check the client's clock"));
        }
        if let Some(iat) = self.claims.iat
            && numeric_date(iat, "iat")? > now + CLOCK_SKEW_SECONDS
        {
            return Err(invalid("the assertion was issued in the future (iat); check the client's clock"));
        }
        let jti = match self.claims.jti.as_deref() {
            Some(j) if !j.is_empty() && j.chars().count() <= MAX_JTI_CHARS => j.to_string(),
            Some(j) if !j.is_empty() => {
                return Err(invalid(format!("the assertion's jti is longer than {MAX_JTI_CHARS} characters")));
            }
            _ => return Err(invalid("the assertion needs a jti, a new random identifier for every assertion")),
        };
        Ok(Verified { client_id, jti, expires })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with OpenSSL 3.0.19 (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384`,
    /// `openssl pkey -pubout`). Synthetic test key, used nowhere else.
    const ES384_PUB: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE4srgZaLbLo1J9bItYCJULdiGHBkidU1d
Fgpe/YZjGuc4Q844PeF09Z1pWQZ1GmKHrQNN49Al7LshluVTIs+y16l2wbS17KJM
Ztz4uvrsI3Pypkwjr186HExufmrkz4NP
-----END PUBLIC KEY-----";
    /// The SM2 test key of `crypto::sm2`'s OpenSSL cross-check.
    const SM2_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAEwCp3lH/M61aC1au1CQzxklG96aBa
kJOYiTUDtCCtptUg3ZJ+SEyp4vchmSmWK9FaABVqW6xIWOPmI8i8OFcqKA==
-----END PUBLIC KEY-----";

    /// JWTs signed by OpenSSL 3.0.19 over `header.payload`: ES384 with `openssl dgst -sha384
    /// -sign`, SM2 with `openssl pkeyutl -sign -rawin -digest sm3 -pkeyopt
    /// distid:1234567812345678`; the DER signatures converted to `r ‖ s`. Claims: iss = sub =
    /// `client-openssl0001`, aud `https://hutong.example/oauth2/token`, iat 1900000000, exp
    /// 1900000300, jti `openssl-es384-1` / `openssl-sm2-1`.
    const ES384_JWT: &str = "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJjbGllbnQtb3BlbnNzbDAwMDEiLCJzdWIiOiJjbGllbnQtb3BlbnNzbDAwMDEiLCJhdWQiOiJodHRwczovL2h1dG9uZy5leGFtcGxlL29hdXRoMi90b2tlbiIsImV4cCI6MTkwMDAwMDMwMCwiaWF0IjoxOTAwMDAwMDAwLCJqdGkiOiJvcGVuc3NsLWVzMzg0LTEifQ.2vgidhlhmR14bVxdUcNnBvrpJBByse1MQfIXbefi38OPquG0HfOJTyp58SJTxi7pDRDuBuk4FJwi9NaFAF5_lIPGF75e3ePLg_-O240u-in2AQ0HO4sYibNlyjw5vl79";
    const SM2_JWT: &str = "eyJhbGciOiJTTTIiLCJ0eXAiOiJKV1QifQ.eyJpc3MiOiJjbGllbnQtb3BlbnNzbDAwMDEiLCJzdWIiOiJjbGllbnQtb3BlbnNzbDAwMDEiLCJhdWQiOiJodHRwczovL2h1dG9uZy5leGFtcGxlL29hdXRoMi90b2tlbiIsImV4cCI6MTkwMDAwMDMwMCwiaWF0IjoxOTAwMDAwMDAwLCJqdGkiOiJvcGVuc3NsLXNtMi0xIn0.T5ookE6KJ2VPN4lOm_K79Q6J8V3ZRJEIYfZQmUXLb1YZNdEfDlJA1HfOTfXa_3lwtOOwo5kEwDXM0h_KnBoMSA";
    const AUD: &str = "https://hutong.example/oauth2/token";
    const NOW: i64 = 1_900_000_100;

    fn description(e: AuthError) -> String {
        match e {
            AuthError::OAuth { status: 401, code: "invalid_client", description } => description,
            other => panic!("expected a 401 invalid_client, got {other:?}"),
        }
    }

    #[test]
    fn openssl_signed_assertions_verify() {
        for (jwt, pem, jti) in [(ES384_JWT, ES384_PUB, "openssl-es384-1"), (SM2_JWT, SM2_PUB, "openssl-sm2-1")] {
            let key = PublicKey::from_pem(pem).unwrap();
            let assertion = Assertion::parse(jwt).unwrap();
            assert_eq!(assertion.client_id().unwrap(), "client-openssl0001");
            let verified = assertion.verify(&key, AUD, NOW).unwrap();
            assert_eq!(
                verified,
                Verified { client_id: "client-openssl0001".into(), jti: jti.into(), expires: 1_900_000_300 }
            );
            // One flipped bit anywhere in the signed part or the signature breaks it.
            for i in [3, jwt.len() / 2, jwt.len() - 3] {
                let mut bytes = jwt.as_bytes().to_vec();
                bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
                let tampered = String::from_utf8(bytes).unwrap();
                let result = Assertion::parse(&tampered).and_then(|a| a.verify(&key, AUD, NOW));
                assert!(result.is_err(), "tampered at {i}");
            }
        }
        // The wrong key type is an algorithm mismatch, named as such.
        let sm2 = PublicKey::from_pem(SM2_PUB).unwrap();
        let e = description(Assertion::parse(ES384_JWT).unwrap().verify(&sm2, AUD, NOW).unwrap_err());
        assert!(e.contains("signed with ES384") && e.contains("for SM2"), "{e}");
    }

    #[test]
    fn claims_are_checked_with_clear_messages() {
        let key = PublicKey::from_pem(SM2_PUB).unwrap();
        let a = Assertion::parse(SM2_JWT).unwrap();
        let cases: [(&str, i64, &str); 3] = [
            ("https://other.example/oauth2/token", NOW, "aud must be this server's token endpoint"),
            (AUD, 1_900_000_300 + CLOCK_SKEW_SECONDS, "expired 60 s ago"),
            (AUD, 1_900_000_300 - MAX_LIFETIME_SECONDS - CLOCK_SKEW_SECONDS - 1, "at most 300 s ahead"),
        ];
        for (aud, now, words) in cases {
            let e = description(a.verify(&key, aud, now).unwrap_err());
            assert!(e.contains(words), "{aud} at {now}: '{e}' should mention '{words}'");
        }
        // Within the skew either side, and a trailing slash on the audience, are fine.
        a.verify(&key, "https://hutong.example/oauth2/token/", 1_900_000_300 + CLOCK_SKEW_SECONDS - 1).unwrap();
        a.verify(&key, AUD, 1_900_000_300 - MAX_LIFETIME_SECONDS - CLOCK_SKEW_SECONDS).unwrap();
    }

    #[test]
    fn keys_are_sm2_or_p384_spki_pem() {
        assert_eq!(PublicKey::from_pem(SM2_PUB).unwrap().alg(), "SM2");
        assert_eq!(PublicKey::from_pem(ES384_PUB).unwrap().alg(), "ES384");
        // P-256 (made with OpenSSL), a private key, junk.
        let p256 = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhZpG68pPQh3oYjpPX23e2338FP5V
mfMnJIa9m1JA6OYL+AOFCzR5zvZbDRrRpAStVmOHcC5t/xEQqRkK3WDHMw==
-----END PUBLIC KEY-----";
        for pem in [p256, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "hello", ""] {
            let e = PublicKey::from_pem(pem).unwrap_err();
            assert!(e.contains("PEM") || e.contains("P-384"), "{e}");
        }
    }
}
