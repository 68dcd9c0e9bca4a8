use super::*;
use crate::qr;
use crypto::sm2::Sm2SigningKey;

const NOW: i64 = 1_800_000_000;

fn card() -> CardId {
    CardId::derive(b"synthetic holder #1")
}

fn code(insurance: Option<&str>, payment: Option<&str>) -> DynamicCode {
    DynamicCode {
        card_id: card(),
        issuer: "350000".into(),
        issued_at: NOW,
        lifetime: 60,
        insurance_token: insurance.map(String::from),
        payment_token: payment.map(String::from),
    }
}

fn key_id(key: &Sm2SigningKey) -> String {
    crypto::sm3::sm3_hex(&crypto::unhex(&key.public().to_hex()).unwrap())[..16].to_string()
}

/// Keys by id, as a verifier holds them (current and retired).
fn keys(known: &[&Sm2SigningKey]) -> impl Fn(&str) -> Option<Sm2VerifyingKey> {
    let known: Vec<(String, Sm2VerifyingKey)> = known.iter().map(|k| (key_id(k), k.public())).collect();
    move |id| known.iter().find(|(k, _)| k == id).map(|(_, key)| key.clone())
}

#[test]
fn dynamic_code_round_trips_with_and_without_the_fused_tokens() {
    let key = Sm2SigningKey::generate();
    for (insurance, payment) in
        [(None, None), (Some("EC-VOUCHER-0001"), None), (None, Some("PAY-7f3a")), (Some("EC1"), Some("PAY2"))]
    {
        let (text, issued) = code(insurance, payment).issue(&key, &key_id(&key)).unwrap();
        assert!(text.starts_with("HC1:"));
        assert!(text[4..].bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        let claims = verify_offline(&text, keys(&[&key]), NOW + 1).unwrap();
        assert_eq!(claims, issued);
        assert_eq!(claims.card_id, card());
        assert_eq!(claims.expires_at, NOW + 60);
        assert_eq!(claims.insurance_token.as_deref(), insurance);
        assert_eq!(claims.payment_token.as_deref(), payment);
        assert_eq!(claims.code_id.len(), 32);
    }
}

#[test]
fn the_encoding_is_deterministic_and_short() {
    let key = Sm2SigningKey::generate();
    let (a, _) =
        code(Some("EC-VOUCHER-0001"), Some("PAY-7f3a")).issue_with_code_id(&key, &key_id(&key), [7; 16]).unwrap();
    let (b, _) =
        code(Some("EC-VOUCHER-0001"), Some("PAY-7f3a")).issue_with_code_id(&key, &key_id(&key), [7; 16]).unwrap();
    // SM2 signatures are randomised; the signed body is not.
    let body = |t: &str| base32::decode(&t[4..]).unwrap()[..base32::decode(&t[4..]).unwrap().len() - 64].to_vec();
    assert_eq!(body(&a), body(&b));
    assert!(a.len() < 300, "{} characters", a.len());
    // Two issues get different code ids.
    let (_, one) = code(None, None).issue(&key, &key_id(&key)).unwrap();
    let (_, two) = code(None, None).issue(&key, &key_id(&key)).unwrap();
    assert_ne!(one.code_id, two.code_id);
}

#[test]
fn any_altered_byte_breaks_the_signature_or_the_form() {
    let key = Sm2SigningKey::generate();
    let (text, _) = code(Some("EC-VOUCHER-0001"), Some("PAY-7f3a")).issue(&key, &key_id(&key)).unwrap();
    let bytes = base32::decode(&text[4..]).unwrap();
    for position in 0..bytes.len() {
        let mut altered = bytes.clone();
        altered[position] ^= 0x01;
        let altered = format!("HC1:{}", base32::encode(&altered));
        let error = verify_offline(&altered, keys(&[&key]), NOW).unwrap_err();
        assert!(
            matches!(error, CodeError::BadSignature | CodeError::Malformed(_) | CodeError::UnknownKey { .. }),
            "byte {position}: {error:?}"
        );
    }
    // Swapping the payment token for another is a bad signature, not a new code.
    let Payload::Dynamic { mut claims, .. } = Payload::parse(&text).unwrap() else { panic!() };
    claims.payment_token = Some("PAY-ATTACKER".into());
    let mut forged = encode_body(&claims, 60).unwrap();
    forged.extend_from_slice(&base32::decode(&text[4..]).unwrap()[bytes.len() - 64..]);
    let forged = format!("HC1:{}", base32::encode(&forged));
    assert_eq!(verify_offline(&forged, keys(&[&key]), NOW), Err(CodeError::BadSignature));
    // Signed by a key that claims the platform's key id.
    let other = Sm2SigningKey::generate();
    let (foreign, _) = code(None, None).issue(&other, &key_id(&key)).unwrap();
    assert_eq!(verify_offline(&foreign, keys(&[&key]), NOW), Err(CodeError::BadSignature));
}

#[test]
fn lifetime_is_enforced_with_skew_for_slow_clocks() {
    let key = Sm2SigningKey::generate();
    let (text, _) = code(None, None).issue(&key, &key_id(&key)).unwrap();
    let at = |now| verify_offline(&text, keys(&[&key]), now);
    assert!(at(NOW).is_ok());
    assert!(at(NOW + 59).is_ok());
    assert_eq!(at(NOW + 60), Err(CodeError::Expired { expires_at: NOW + 60, now: NOW + 60 }));
    assert!(at(NOW - CLOCK_SKEW_SECONDS).is_ok());
    assert_eq!(at(NOW - 31), Err(CodeError::NotYetValid { issued_at: NOW, now: NOW - 31 }));
    let mut short = code(None, None);
    short.lifetime = 0;
    assert!(matches!(short.issue(&key, &key_id(&key)), Err(CodeError::Malformed(_))));
}

#[test]
fn a_retired_key_still_verifies_and_an_unknown_one_is_named() {
    let retired = Sm2SigningKey::generate();
    let current = Sm2SigningKey::generate();
    let (old, _) = code(None, None).issue(&retired, &key_id(&retired)).unwrap();
    assert!(verify_offline(&old, keys(&[&current, &retired]), NOW + 10).is_ok());
    assert_eq!(
        verify_offline(&old, keys(&[&current]), NOW + 10),
        Err(CodeError::UnknownKey { key_id: key_id(&retired) })
    );
}

#[test]
fn static_codes_parse_and_need_a_pin_or_sms_check() {
    let card = card();
    let text = StaticCode { card_id: card.clone(), issuer: "350000".into() }.encode();
    assert_eq!(text, format!("{card}:1::350000"));
    assert_eq!(
        Payload::parse(&text).unwrap(),
        Payload::Static(StaticCode { card_id: card.clone(), issuer: "350000".into() })
    );
    let error = verify_offline(&text, |_| None, NOW).unwrap_err();
    assert_eq!(error, CodeError::StaticCodeNeedsCheck { card_id: card.to_string(), issuer: "350000".into() });
    assert_eq!(error.reason(), "static-code-needs-check");
    for bad in [
        format!("{card}:0::350000"),
        format!("{card}:2::350000"),
        format!("{card}:1:350000"),
        format!("{card}:1::"),
        format!("{card}:1::35 00"),
        "abc:1::350000".into(),
        "hello".into(),
        "HC1:".into(),
        "HC1:abc!".into(),
        "HC1:AAAAAAAA".into(),
    ] {
        assert!(matches!(Payload::parse(&bad), Err(CodeError::Malformed(_))), "{bad}");
    }
}

#[test]
fn bad_issuers_and_tokens_are_refused_at_issue() {
    let key = Sm2SigningKey::generate();
    let mut bad_issuer = code(None, None);
    bad_issuer.issuer = "35:00".into();
    assert!(matches!(bad_issuer.issue(&key, &key_id(&key)), Err(CodeError::Malformed(_))));
    assert!(matches!(code(Some(&"x".repeat(65)), None).issue(&key, &key_id(&key)), Err(CodeError::Malformed(_))));
    assert!(matches!(code(None, Some("with space")).issue(&key, &key_id(&key)), Err(CodeError::Malformed(_))));
    assert!(matches!(code(None, None).issue(&key, "not-hex"), Err(CodeError::Malformed(_))));
}

#[test]
fn a_rendered_qr_code_decodes_and_verifies_offline() {
    let key = Sm2SigningKey::generate();
    let (text, issued) = code(Some("EC-VOUCHER-0001"), Some("PAY-7f3a")).issue(&key, &key_id(&key)).unwrap();
    let (side, pixels) = qr::greyscale(&text, 4).unwrap();
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| pixels[y * side + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, decoded) = grids[0].decode().unwrap();
    assert_eq!(decoded, text);
    assert_eq!(verify_offline(&decoded, keys(&[&key]), NOW + 5).unwrap(), issued);

    let svg = qr::svg(&text, 256).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("<svg") && svg.contains("<path"), "{}", &svg[..80]);
}
