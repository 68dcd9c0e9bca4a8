//! RFC 6238 time-based one-time passwords (HMAC-SHA1, 30-second steps), the format every
//! authenticator app reads (`otpauth://` URIs with base32 secrets).

use hmac::{KeyInit, Mac, SimpleHmac};
use sha1::Sha1;

/// The code for `unix_time` with `digits` digits (RFC 4226 dynamic truncation); `digits` is
/// clamped to 6..=9 (RFC 4226 asks for at least 6; 31 bits hold at most 9 whole digits).
pub fn generate(secret: &[u8], unix_time: u64, digits: u32) -> String {
    let digits = digits.clamp(6, 9);
    let counter = unix_time / 30;
    let mut mac = <SimpleHmac<Sha1> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let binary = (u32::from(digest[offset] & 0x7f) << 24)
        | (u32::from(digest[offset + 1]) << 16)
        | (u32::from(digest[offset + 2]) << 8)
        | u32::from(digest[offset + 3]);
    let code = binary % 10u32.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

/// Whether `code` (6 digits) is valid at `unix_time`, allowing `skew` steps either side.
pub fn verify(secret: &[u8], code: &str, unix_time: u64, skew: u64) -> bool {
    verify_digits(secret, code, unix_time, skew, 6)
}

/// [`verify`] for codes of `digits` digits (6..=9). `skew` is capped at 10 steps (5 minutes).
pub fn verify_digits(secret: &[u8], code: &str, unix_time: u64, skew: u64, digits: u32) -> bool {
    let code = code.trim();
    if !(6..=9).contains(&digits) || code.len() != digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let skew = skew.min(10);
    (0..=2 * skew).any(|i| {
        let t = unix_time.checked_add(i * 30).and_then(|t| t.checked_sub(skew * 30));
        t.is_some_and(|t| crate::constant_time_eq(generate(secret, t, digits).as_bytes(), code.as_bytes()))
    })
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes().filter(|b| *b != b' ') {
        let v = BASE32.iter().position(|x| *x == c.to_ascii_uppercase())? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A new 20-byte secret.
pub fn new_secret() -> Vec<u8> {
    crate::random_bytes(20)
}

/// The `otpauth://` URI an authenticator app scans.
pub fn uri(secret: &[u8], account: &str, issuer: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(account),
        base32_encode(secret),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA1 rows.
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(generate(secret, t, 8), code, "T={t}");
        }
    }

    #[test]
    fn verify_with_skew_and_base32() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let code = generate(&secret, now, 6);
        assert!(verify(&secret, &code, now, 1));
        assert!(verify(&secret, &code, now + 30, 1), "one step late is accepted");
        assert!(!verify(&secret, &code, now + 90, 1), "three steps late is not");
        assert!(!verify(&secret, &code, now - 60, 1), "two steps early is not");
        assert!(!verify(&secret, "12345", now, 1) && !verify(&secret, "abcdef", now, 1));
        assert!(!verify(&secret, &code, u64::MAX, 1), "no overflow at the end of time");
        assert!(verify(&secret, &code, now, 0) && !verify(&secret, &code, now + 30, 0));
        let eight = generate(&secret, now, 8);
        assert!(verify_digits(&secret, &eight, now, 1, 8) && !verify(&secret, &eight, now, 1));
        assert_eq!(generate(&secret, now, 20).len(), 9, "digits are clamped, no overflow");
        assert_eq!(base32_decode(&base32_encode(&secret)).unwrap(), secret);
        assert_eq!(base32_encode(b"12345678901234567890"), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert!(uri(&secret, "doctor 1", "互通").starts_with("otpauth://totp/%E4%BA%92%E9%80%9A:doctor%201?secret="));
    }
}
