//! Hostile input for the token parsers: random bytes, non-UTF-8 turned text, odd base64,
//! truncated and re-dotted JWTs, megabyte tokens. Deterministic (seeded) loops of thousands of
//! cases; every one must end in a clean error, never a panic or a store failure.

use auth::AuthError;
use auth::jwt::{ASSERTION_TYPE, Assertion, PublicKey};

use super::assertions::{ClientKey, claims};
use super::{ENDPOINT, Rng, START, fixture};

/// A mutation of `valid`, or unrelated junk, chosen by `rng`.
fn mutant(rng: &mut Rng, valid: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \t%";
    let bytes = valid.as_bytes();
    match rng.below(10) {
        // Random bytes (invalid UTF-8 made text, control characters, any length up to 2 KB).
        0 => {
            let n = rng.below(2048);
            String::from_utf8_lossy(&rng.bytes(n)).into_owned()
        }
        // Truncated anywhere.
        1 => valid[..rng.below(valid.len() + 1)].to_string(),
        // One byte replaced by a base64url-ish or odd character.
        2 => {
            let mut b = bytes.to_vec();
            let i = rng.below(b.len());
            b[i] = ALPHABET[rng.below(ALPHABET.len())];
            String::from_utf8_lossy(&b).into_owned()
        }
        // Many dots, or none.
        3 => {
            let dots = rng.below(40);
            let mut text = valid.replace('.', "");
            for _ in 0..dots {
                let i = rng.below(text.len() + 1);
                text.insert(i, '.');
            }
            text
        }
        // Random base64url parts: header and claims that decode to junk.
        4 => {
            let parts = 1 + rng.below(6);
            (0..parts)
                .map(|_| {
                    let n = rng.below(200);
                    crypto::base64url(&rng.bytes(n))
                })
                .collect::<Vec<_>>()
                .join(".")
        }
        // JSON that is almost a header: wrong types, nesting, numbers out of range.
        5 => {
            let header = [
                r#"{"alg":5}"#,
                r#"{"alg":null}"#,
                r#"[]"#,
                r#"{"alg":"SM2","crit":["exp"]}"#,
                r#"{"alg":"SM2","alg":"ES384"}"#,
                r#"{"alg":"SM2"}"#,
                r#"{"alg":"ES384"}"#,
                "\"SM2\"",
                r#"{"alg":"SM2"#,
            ][rng.below(9)];
            let claims = [
                r#"{"exp":1e999}"#,
                r#"{"exp":-1e300,"iss":"a","sub":"a"}"#,
                r#"{"iss":"a","sub":"a","aud":[1,2],"exp":1900000100,"jti":"j"}"#,
                r#"{"iss":"a","sub":"a","aud":{"x":1}}"#,
                r#"{"iss":{"deep":[[[[[[[[[[[[[[]]]]]]]]]]]]]]}}"#,
                r#"{"iss":"a","sub":"a","aud":"https://hutong.example/oauth2/token","exp":NaN}"#,
                "null",
                "",
            ][rng.below(8)];
            let length = [0, 1, 63, 64, 65, 95, 96, 97, 300][rng.below(9)];
            let signature = crypto::base64url(&rng.bytes(length));
            format!("{}.{}.{}", crypto::base64url(header.as_bytes()), crypto::base64url(claims.as_bytes()), signature)
        }
        // Padding, standard-alphabet base64, whitespace.
        6 => valid.replacen('-', "+", 3).replacen('_', "/", 3) + "==",
        7 => format!(" {valid}\n"),
        // Deep JSON nesting in the claims.
        8 => {
            let depth = 1 + rng.below(5000);
            let claims = "[".repeat(depth) + &"]".repeat(depth);
            let head = valid.split('.').next().unwrap_or("");
            format!("{head}.{}.{}", crypto::base64url(claims.as_bytes()), crypto::base64url(&rng.bytes(64)))
        }
        // Long: up to 64 KB of base64url.
        _ => {
            let n = rng.below(64 * 1024);
            (0..n).map(|_| ALPHABET[rng.below(64)] as char).collect()
        }
    }
}

#[test]
fn the_assertion_parser_never_panics() {
    let key = ClientKey::sm2();
    let public = PublicKey::from_pem(&key.public_pem()).unwrap();
    let valid = key.sign(&claims("client-fuzz", START, "j"));
    let mut rng = Rng(0x5EED_0001);
    let mut parsed = 0;
    for _ in 0..20_000 {
        let text = mutant(&mut rng, &valid);
        let Ok(assertion) = Assertion::parse(&text) else { continue };
        parsed += 1;
        let _ = assertion.client_id();
        if assertion.verify(&public, ENDPOINT, START).is_ok() {
            assert_eq!(text, valid, "accepted a forgery");
        }
    }
    assert!(parsed > 500, "the mutations should also reach the signature and claim checks ({parsed} did)");
    // A megabyte, and every prefix of a valid token.
    assert!(Assertion::parse(&"A".repeat(1 << 20)).is_err());
    assert!(Assertion::parse(&".".repeat(1 << 20)).is_err());
    for end in 0..valid.len() {
        let r = Assertion::parse(&valid[..end]).and_then(|a| a.verify(&public, ENDPOINT, START));
        assert!(r.is_err(), "a truncated token verified at {end}");
    }
}

#[tokio::test]
async fn authenticate_never_panics_and_always_answers_401() {
    let f = fixture();
    let mut rng = Rng(0x5EED_0002);
    let mut inputs: Vec<String> = vec![
        String::new(),
        " ".into(),
        "x".repeat(1 << 20),
        "\u{0}".into(),
        "ñ".repeat(200),
        "Bearer abc".into(),
        "a".repeat(512),
        "a".repeat(513),
        "%00%ff".into(),
        "../../etc/passwd".into(),
        "' OR 1=1 --".into(),
    ];
    for _ in 0..3000 {
        let n = rng.below(700);
        inputs.push(match rng.below(3) {
            0 => String::from_utf8_lossy(&rng.bytes(n)).into_owned(),
            1 => crypto::base64url(&rng.bytes(n)),
            _ => (0..n).map(|_| char::from(33 + rng.below(94) as u8)).collect(),
        });
    }
    for input in &inputs {
        match f.auth.authenticate(input).await {
            Err(AuthError::Unauthenticated(message)) => assert!(!message.is_empty()),
            other => panic!("{:.40?}: expected a 401, got {other:?}", input),
        }
    }
}

#[tokio::test]
async fn the_token_endpoint_never_panics_on_hostile_assertions() {
    let f = fixture();
    let key = ClientKey::sm2();
    let (id, _) = f.auth.create_client_with_key("fuzz", "system/*.read", None, None, &key.public_pem()).await.unwrap();
    let valid = key.sign(&claims(&id, START, "fuzz-valid"));
    let mut rng = Rng(0x5EED_0003);
    for _ in 0..2000 {
        let assertion = mutant(&mut rng, &valid);
        let pairs = [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ];
        match f.token(&pairs).await {
            Err(AuthError::OAuth { status: 401, code: "invalid_client", description }) => {
                assert!(!description.is_empty())
            }
            Ok(_) => assert_eq!(assertion, valid, "accepted a mutant"),
            Err(other) => panic!("expected invalid_client, got {other:?}"),
        }
    }
}
