//! SM2 signatures (GB/T 32918.2-2016) over SM3 with the user-id digest Z (default id
//! `1234567812345678`, GB/T 35276-2017). Keys: a 32-byte secret (hex) and the uncompressed
//! SEC1 public point (65 bytes, hex). Signatures: 64 bytes `r ‖ s`, hex.

use ::sm2::dsa::signature::{Signer, Verifier};
use ::sm2::dsa::{Signature, SigningKey, VerifyingKey};

use crate::CryptoError;

/// The default distinguishing identifier of GB/T 35276.
pub const DEFAULT_ID: &str = "1234567812345678";

/// An SM2 key pair. `Debug` shows only the public key.
#[derive(Clone)]
pub struct Sm2SigningKey {
    key: SigningKey,
    secret: [u8; 32],
}

impl std::fmt::Debug for Sm2SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sm2SigningKey(public {})", self.public().to_hex())
    }
}

/// An SM2 public key.
#[derive(Clone, Debug, PartialEq)]
pub struct Sm2VerifyingKey {
    sec1: Vec<u8>,
}

impl Sm2SigningKey {
    pub fn generate() -> Self {
        loop {
            let bytes = crate::random_bytes(32);
            if let Ok(k) = Self::from_secret(&bytes) {
                return k;
            }
        }
    }

    pub fn from_secret(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key = SigningKey::from_slice(DEFAULT_ID, bytes)
            .map_err(|_| CryptoError::BadKey("an SM2 secret is a 32-byte scalar in [1, n-1]".into()))?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(bytes);
        Ok(Sm2SigningKey { key, secret })
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        Self::from_secret(&crate::unhex(text)?)
    }

    /// The secret scalar, hex (for the key file only).
    pub fn secret_hex(&self) -> String {
        crate::hex(&self.secret)
    }

    pub fn public(&self) -> Sm2VerifyingKey {
        Sm2VerifyingKey { sec1: self.key.verifying_key().to_sec1_bytes().to_vec() }
    }

    /// Signs with the default user id.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }

    /// Signs with a caller-given distinguishing id.
    pub fn sign_with_id(&self, id: &str, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = SigningKey::from_slice(id, &self.secret).map_err(|_| CryptoError::BadKey("SM2 key".into()))?;
        Ok(key.sign(message).to_bytes().to_vec())
    }
}

impl Sm2VerifyingKey {
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, CryptoError> {
        VerifyingKey::from_sec1_bytes(DEFAULT_ID, bytes)
            .map_err(|_| CryptoError::BadKey("an SM2 public key is a SEC1 point on the SM2 curve".into()))?;
        Ok(Sm2VerifyingKey { sec1: bytes.to_vec() })
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        Self::from_sec1(&crate::unhex(text)?)
    }

    pub fn to_hex(&self) -> String {
        crate::hex(&self.sec1)
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.verify_with_id(DEFAULT_ID, message, signature)
    }

    pub fn verify_with_id(&self, id: &str, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let key = VerifyingKey::from_sec1_bytes(id, &self.sec1).map_err(|_| CryptoError::BadSignature)?;
        let signature = Signature::from_slice(signature).map_err(|_| CryptoError::BadSignature)?;
        key.verify(message, &signature).map_err(|_| CryptoError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = Sm2SigningKey::generate();
        let public = key.public();
        let sig = key.sign("处方 Rx-001".as_bytes());
        assert_eq!(sig.len(), 64);
        public.verify("处方 Rx-001".as_bytes(), &sig).unwrap();
        assert_eq!(public.verify(b"Rx-002", &sig), Err(CryptoError::BadSignature));
        let mut bad = sig.clone();
        bad[5] ^= 1;
        assert_eq!(public.verify("处方 Rx-001".as_bytes(), &bad), Err(CryptoError::BadSignature));
        assert_eq!(
            Sm2SigningKey::generate().public().verify("处方 Rx-001".as_bytes(), &sig),
            Err(CryptoError::BadSignature)
        );
        let with_id = key.sign_with_id("doctor@h1", b"m").unwrap();
        public.verify_with_id("doctor@h1", b"m", &with_id).unwrap();
        assert!(public.verify(b"m", &with_id).is_err(), "the user id is part of what is signed");
        let again = Sm2SigningKey::from_hex(&key.secret_hex()).unwrap();
        assert_eq!(again.public(), public);
        assert!(!format!("{key:?}").contains(&key.secret_hex()));
    }

    /// A signature made by another implementation, OpenSSL 3 (`openssl pkeyutl -sign -digest sm3
    /// -pkeyopt distid:example@rustcrypto.org`), published with the RustCrypto `sm2` crate's
    /// tests: our verifier must accept it, and reject it for another message or id.
    #[test]
    fn verifies_an_openssl_signature() {
        let public = Sm2VerifyingKey::from_hex(
            "0408D77AE04C01CC4C1104360DD8AF6B6F7DF334283D7C1A6AFD5652407B87BEE5014E2A57C36C150D16324DC664E31E6432359609C4E79847A5B161C8C7364C8A",
        )
        .unwrap();
        let sig = crate::unhex(
            "d1dcccedd9fb785e0f67c16b7c52901625c0b69de9bca2144acc7be713cad2fcf7d1eae6e3a157b36c65f672f738ca8b46298bf149a6510072c431b49cd88b1c",
        )
        .unwrap();
        public.verify_with_id("example@rustcrypto.org", b"testing", &sig).unwrap();
        assert!(public.verify_with_id("example@rustcrypto.org", b"testing!", &sig).is_err());
        assert!(public.verify(b"testing", &sig).is_err());
    }
}
