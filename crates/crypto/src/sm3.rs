//! SM3 (GB/T 32905-2016) and HMAC-SM3 (RFC 2104 over SM3).

use ::sm3::{Digest, Sm3};
use hmac::{KeyInit, Mac, SimpleHmac};

pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

pub fn sm3_hex(data: &[u8]) -> String {
    crate::hex(&sm3(data))
}

pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <SimpleHmac<Sm3> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GB/T 32905-2016 Annex A, examples 1 and 2.
    #[test]
    fn standard_vectors() {
        assert_eq!(sm3_hex(b"abc"), "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0");
        assert_eq!(sm3_hex(&b"abcd".repeat(16)), "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732");
    }

    #[test]
    fn hmac_depends_on_key_and_data() {
        let a = hmac_sm3(b"key", b"data");
        assert_ne!(a, hmac_sm3(b"key2", b"data"));
        assert_ne!(a, hmac_sm3(b"key", b"data2"));
        assert_eq!(a, hmac_sm3(b"key", b"data"));
        assert_ne!(a, sm3(b"keydata"));
    }
}
