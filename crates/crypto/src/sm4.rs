//! SM4 (GB/T 32907-2016) with GCM (RFC 8998): authenticated encryption. Sealed text is
//! `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{AesGcm, Nonce};
use sm4::Sm4;
use sm4::cipher::consts::U12;

use crate::CryptoError;

type Sm4Gcm = AesGcm<Sm4, U12>;

/// A 128-bit SM4 key. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sm4Key(pub [u8; 16]);

impl std::fmt::Debug for Sm4Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm4Key(redacted)")
    }
}

impl Drop for Sm4Key {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Sm4Key {
    pub fn generate() -> Self {
        let mut k = [0u8; 16];
        k.copy_from_slice(&crate::random_bytes(16));
        Sm4Key(k)
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = crate::unhex(text)?;
        let k: [u8; 16] =
            bytes.try_into().map_err(|_| CryptoError::BadKey("an SM4 key is 16 bytes (32 hex digits)".into()))?;
        Ok(Sm4Key(k))
    }
}

/// Encrypts with a fresh random nonce.
pub fn seal(key: &Sm4Key, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce = crate::random_bytes(12);
    let mut out = nonce.clone();
    out.extend(seal_with_nonce(key, &nonce, plaintext, aad));
    out
}

fn seal_with_nonce(key: &Sm4Key, nonce: &[u8], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Sm4Gcm::new_from_slice(&key.0).expect("16-byte key");
    cipher
        .encrypt(Nonce::from_slice(nonce), Payload { msg: plaintext, aad })
        .expect("GCM encryption of an in-memory buffer does not fail")
}

/// Decrypts what [`seal`] produced; any change to it, the key or the AAD is an error.
pub fn open(key: &Sm4Key, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 12 + 16 {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let cipher = Sm4Gcm::new_from_slice(&key.0).expect("16-byte key");
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad }).map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm4::cipher::BlockEncrypt;

    fn h(s: &str) -> Vec<u8> {
        crate::unhex(s).unwrap()
    }

    /// GB/T 32907-2016 Annex A, example 1.
    #[test]
    fn block_vector() {
        let key = h("0123456789abcdeffedcba9876543210");
        let cipher = Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::generic_array::GenericArray::clone_from_slice(&key);
        cipher.encrypt_block(&mut block);
        assert_eq!(crate::hex(&block), "681edf34d206965e86b3e94f536e4246");
    }

    /// GB/T 32907-2016 Annex A, example 2: the same block encrypted 1,000,000 times.
    #[test]
    fn block_vector_million_iterations() {
        let key = h("0123456789abcdeffedcba9876543210");
        let cipher = Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::generic_array::GenericArray::clone_from_slice(&key);
        for _ in 0..1_000_000 {
            cipher.encrypt_block(&mut block);
        }
        assert_eq!(crate::hex(&block), "595298c7c6fd271f0402f804c33d3f66");
    }

    /// RFC 8998 Appendix A.1 (SM4-GCM).
    #[test]
    fn gcm_vector() {
        let key = Sm4Key::from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap();
        let nonce = h("00001234567800000000ABCD");
        let aad = h("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let plaintext = h(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDDEEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
        );
        let out = seal_with_nonce(&key, &nonce, &plaintext, &aad);
        let (ciphertext, tag) = out.split_at(out.len() - 16);
        assert_eq!(crate::hex(tag), "83de3541e4c2b58177e065a9bf7b62ec");
        assert_eq!(
            crate::hex(ciphertext),
            "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d"
        );
    }

    #[test]
    fn tampering_is_detected() {
        let key = Sm4Key::generate();
        let sealed = seal(&key, "110105194912310021".as_bytes(), b"Patient.identifier");
        assert_eq!(open(&key, &sealed, b"Patient.identifier").unwrap(), b"110105194912310021");
        assert_eq!(open(&key, &sealed, b"other"), Err(CryptoError::Decrypt), "AAD binds the context");
        let mut flipped = sealed.clone();
        flipped[14] ^= 1;
        assert_eq!(open(&key, &flipped, b"Patient.identifier"), Err(CryptoError::Decrypt));
        assert_eq!(open(&Sm4Key::generate(), &sealed, b"Patient.identifier"), Err(CryptoError::Decrypt));
        assert_ne!(seal(&key, b"x", b""), seal(&key, b"x", b""), "fresh nonces");
        assert_eq!(format!("{key:?}"), "Sm4Key(redacted)");
    }
}
