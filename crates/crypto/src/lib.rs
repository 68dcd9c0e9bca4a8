//! Chinese commercial cryptography and credential primitives (DESIGN.md §4–5). Pure functions;
//! the only IO is the key folder of [`keyring`].
//!
//! - [`sm3`]: SM3 hashing (GB/T 32905) and HMAC-SM3.
//! - [`sm4`]: SM4 (GB/T 32907) in GCM mode (RFC 8998), authenticated encryption; sealed bytes
//!   are `nonce(12) ‖ ciphertext ‖ tag(16)`.
//! - [`sm2`]: SM2 signatures (GB/T 32918) with the standard default user id `1234567812345678`
//!   (GB/T 35276) or a caller-given one; `sign` gives 64 bytes `r ‖ s`, `sign_der` the DER form
//!   OpenSSL uses, verification takes either. Keys as hex or PKCS#8 / SPKI PEM.
//! - [`keyring`]: the platform's keys (SM4 data keys with rotation, the blind-index key, the SM2
//!   signing key), from a key folder or environment variables; field encryption
//!   (`v1.<kid>.<base64url>`) and HMAC-SM3 blind indexes for sensitive identifiers.
//! - [`password`]: argon2id hashing (PHC strings) and the 等保 level-3 password policy.
//! - [`totp`]: RFC 6238 one-time passwords (the staff's second factor), base32, `otpauth://`.
//! - [`idnum`]: GB 11643 citizen ID numbers (check character, 15 → 18 digits).
//! - [`token`]: random base64url tokens from the OS generator and constant-time comparison.
//!
//! Test vectors and their sources (each test names its source):
//! SM3 — GB/T 32905-2016 Annex A examples 1 and 2; SM4 — GB/T 32907-2016 Annex A examples 1
//! and 2 (one and 1,000,000 encryptions); SM4-GCM — RFC 8998 Appendix A.1; SM2 — GM/T 0003.5-2012
//! (GB/T 32918.5) Annex A signature example (key, digest e via Z, and (r, s)), an OpenSSL 3
//! signature published with the RustCrypto `sm2` crate's tests, and a key pair and signatures
//! made here with OpenSSL 3.0.19 in both directions; TOTP — RFC 6238 Appendix B (SHA-1 rows);
//! ID numbers — synthetic numbers with computed check characters.

pub mod idnum;
pub mod keyring;
pub mod password;
pub mod sm2;
pub mod sm3;
pub mod sm4;
pub mod totp;

/// Random tokens and constant-time comparison (also re-exported at the crate root).
pub mod token {
    pub use crate::{constant_time_eq, random_token};
}

pub use keyring::KeyRing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the ciphertext is damaged or was made with another key")]
    Decrypt,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("malformed key: {0}")]
    BadKey(String),
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("key storage: {0}")]
    Io(String),
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Parses hex (either case).
pub fn unhex(text: &str) -> Result<Vec<u8>, CryptoError> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return Err(CryptoError::Malformed("hex text has an odd length".into()));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(text.get(i..i + 2).unwrap_or("zz"), 16)
                .map_err(|_| CryptoError::Malformed("not hex".into()))
        })
        .collect()
}

/// `n` random bytes from the operating system's generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::TryRngCore;
    let mut out = vec![0u8; n];
    rand::rngs::OsRng.try_fill_bytes(&mut out).expect("the operating system's random generator works");
    out
}

/// A random token of `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    base64url(&random_bytes(bytes))
}

/// Base64url without padding.
pub fn base64url(data: &[u8]) -> String {
    encode64(data, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", false)
}

/// Base64 of `data` in `alphabet`, padded with `=` to a multiple of four when `pad`.
fn encode64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.extend_from_slice(&[
            alphabet[(n >> 18) as usize & 63],
            alphabet[(n >> 12) as usize & 63],
            alphabet[(n >> 6) as usize & 63],
            alphabet[n as usize & 63],
        ]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let n = (u32::from(rest[0]) << 16) | (u32::from(*rest.get(1).unwrap_or(&0)) << 8);
        out.push(alphabet[(n >> 18) as usize & 63]);
        out.push(alphabet[(n >> 12) as usize & 63]);
        if rest.len() == 2 {
            out.push(alphabet[(n >> 6) as usize & 63]);
        }
        if pad {
            out.resize(out.len().div_ceil(4) * 4, b'=');
        }
    }
    String::from_utf8(out).expect("the base64 alphabets are ASCII")
}

/// Decodes base64url without padding.
pub fn unbase64url(text: &str) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(CryptoError::Malformed("not base64url".into())),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Standard base64 with padding (FHIR `base64Binary`).
pub fn base64(data: &[u8]) -> String {
    encode64(data, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", true)
}

/// Decodes standard base64 (padding optional; whitespace ignored).
pub fn unbase64(text: &str) -> Result<Vec<u8>, CryptoError> {
    let url: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && *c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            '-' | '_' => '!',
            c => c,
        })
        .collect();
    unbase64url(&url).map_err(|_| CryptoError::Malformed("not base64".into()))
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn standard_base64_round_trips_with_padding() {
        for text in ["", "a", "ab", "abc", "abcd", "签名 signature"] {
            let encoded = super::base64(text.as_bytes());
            assert_eq!(encoded.len() % 4, 0);
            assert_eq!(super::unbase64(&encoded).unwrap(), text.as_bytes());
        }
        assert_eq!(super::base64(b"abcd"), "YWJjZA==");
        assert_eq!(super::base64(&[0xfb, 0xff]), "+/8=");
        // RFC 4648 section 10.
        for (plain, encoded) in [
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
            assert_eq!(super::base64url(plain.as_bytes()), encoded.trim_end_matches('='));
        }
        assert_eq!(super::base64url(&[0xfb, 0xff]), "-_8");
        assert!(super::unbase64("-_8").is_err(), "base64url characters are not standard base64");
    }

    use super::*;

    #[test]
    fn encodings_round_trip() {
        for n in 0..40 {
            let data = random_bytes(n);
            assert_eq!(unbase64url(&base64url(&data)).unwrap(), data);
            assert_eq!(unhex(&hex(&data)).unwrap(), data);
        }
        assert_eq!(base64url(b"hello"), "aGVsbG8");
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
        assert_eq!(random_token(32).len(), 43);
    }
}
