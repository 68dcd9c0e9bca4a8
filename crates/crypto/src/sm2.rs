//! SM2 signatures (GB/T 32918.2-2016) over SM3 with the user-id digest Z (default id
//! `1234567812345678`, GB/T 35276-2017). Keys: a 32-byte secret (hex) or PKCS#8 PEM, and the
//! uncompressed SEC1 public point (65 bytes, hex) or SPKI PEM (both PEM forms are what OpenSSL 3
//! writes for `-algorithm EC -pkeyopt ec_paramgen_curve:SM2`). Signatures: [`Sm2SigningKey::sign`]
//! returns 64 bytes `r ‖ s`; [`Sm2SigningKey::sign_der`] the ASN.1 DER form OpenSSL uses; the
//! verifiers accept either (64 bytes is raw, anything else is parsed as DER).
//!
//! Note for OpenSSL users: `openssl pkeyutl -sign -rawin -digest sm3` uses an *empty* id unless
//! given `-pkeyopt distid:1234567812345678`.

use ::sm2::dsa::signature::{Signer, Verifier};
use ::sm2::dsa::{Signature, SigningKey, VerifyingKey};
use ::sm2::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use zeroize::{Zeroize, Zeroizing};

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

impl Drop for Sm2SigningKey {
    fn drop(&mut self) {
        self.secret.zeroize();
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

    /// Reads a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`), e.g. from `openssl genpkey`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let secret = ::sm2::SecretKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
            CryptoError::BadKey(format!("an SM2 private key PEM must be PKCS#8 on the SM2 curve ({e})"))
        })?;
        Self::from_secret(&Zeroizing::new(secret.to_bytes()))
    }

    /// Reads either a PKCS#8 PEM or a 64-digit hex secret.
    pub fn from_pem_or_hex(text: &str) -> Result<Self, CryptoError> {
        if text.trim_start().starts_with("-----BEGIN") { Self::from_pkcs8_pem(text) } else { Self::from_hex(text) }
    }

    /// The key as PKCS#8 PEM (readable by OpenSSL). Keep it secret.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        let secret = ::sm2::SecretKey::from_slice(&self.secret)
            .map_err(|_| CryptoError::BadKey("an SM2 secret is a 32-byte scalar in [1, n-1]".into()))?;
        secret.to_pkcs8_pem(LineEnding::LF).map_err(|e| CryptoError::BadKey(format!("SM2 PKCS#8 encoding: {e}")))
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

    /// Signs with a caller-given distinguishing id (64 bytes `r ‖ s`).
    pub fn sign_with_id(&self, id: &str, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(self.key_with_id(id)?.sign(message).to_bytes().to_vec())
    }

    /// Signs with the default user id, ASN.1 DER `SEQUENCE { r, s }` (OpenSSL's form).
    pub fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_der().to_vec()
    }

    /// Signs with a caller-given distinguishing id, ASN.1 DER.
    pub fn sign_der_with_id(&self, id: &str, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(self.key_with_id(id)?.sign(message).to_der().to_vec())
    }

    fn key_with_id(&self, id: &str) -> Result<SigningKey, CryptoError> {
        SigningKey::from_slice(id, &self.secret)
            .map_err(|_| CryptoError::BadKey(format!("SM2 distinguishing id of {} bytes is too long", id.len())))
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

    /// Reads an SPKI public key (`-----BEGIN PUBLIC KEY-----`), e.g. from `openssl pkey -pubout`.
    pub fn from_public_key_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = ::sm2::PublicKey::from_public_key_pem(pem.trim())
            .map_err(|e| CryptoError::BadKey(format!("an SM2 public key PEM must be SPKI on the SM2 curve ({e})")))?;
        Self::from_sec1(&key.to_sec1_bytes())
    }

    /// Reads either an SPKI PEM or a hex SEC1 point.
    pub fn from_pem_or_hex(text: &str) -> Result<Self, CryptoError> {
        if text.trim_start().starts_with("-----BEGIN") { Self::from_public_key_pem(text) } else { Self::from_hex(text) }
    }

    /// The key as SPKI PEM (readable by OpenSSL).
    pub fn to_public_key_pem(&self) -> Result<String, CryptoError> {
        let key = ::sm2::PublicKey::from_sec1_bytes(&self.sec1)
            .map_err(|_| CryptoError::BadKey("an SM2 public key is a SEC1 point on the SM2 curve".into()))?;
        key.to_public_key_pem(LineEnding::LF).map_err(|e| CryptoError::BadKey(format!("SM2 SPKI encoding: {e}")))
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.verify_with_id(DEFAULT_ID, message, signature)
    }

    pub fn verify_with_id(&self, id: &str, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let key = VerifyingKey::from_sec1_bytes(id, &self.sec1).map_err(|_| CryptoError::BadSignature)?;
        let signature =
            if signature.len() == 64 { Signature::from_slice(signature) } else { Signature::from_der(signature) }
                .map_err(|_| CryptoError::BadSignature)?;
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

#[cfg(test)]
mod openssl_tests {
    use super::*;

    /// Made here with OpenSSL 3.0.19: `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:SM2`
    /// and `openssl pkey -pubout`. Synthetic test key, used nowhere else.
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqBHM9VAYItBG0wawIBAQQgYVuK0TTxFRbLldZh
vvUy1NjlsezMnLF8tLkDpJL2VzGhRANCAATAKneUf8zrVoLVq7UJDPGSUb3poFqQ
k5iJNQO0IK2m1SDdkn5ITKni9yGZKZYr0VoAFWpbrEhY4+YjyLw4Vyoo
-----END PRIVATE KEY-----
";
    const PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAEwCp3lH/M61aC1au1CQzxklG96aBa
kJOYiTUDtCCtptUg3ZJ+SEyp4vchmSmWK9FaABVqW6xIWOPmI8i8OFcqKA==
-----END PUBLIC KEY-----
";
    const MSG: &[u8] = b"Hutong audit checkpoint 42";

    /// Both directions against OpenSSL 3.0.19: OpenSSL's signatures verify here, and ours
    /// (deterministic nonces, so fixed bytes) were checked with
    /// `openssl pkeyutl -verify -rawin -digest sm3 -pkeyopt distid:<id>`: "Signature Verified Successfully".
    #[test]
    fn cross_checked_with_openssl() {
        let key = Sm2SigningKey::from_pkcs8_pem(KEY_PEM).unwrap();
        let public = Sm2VerifyingKey::from_public_key_pem(PUB_PEM).unwrap();
        assert_eq!(key.public(), public);
        assert_eq!(key.to_pkcs8_pem().unwrap().as_str(), KEY_PEM, "PKCS#8 re-encodes byte for byte");
        assert_eq!(public.to_public_key_pem().unwrap(), PUB_PEM);

        // Made by `openssl pkeyutl -sign -rawin -digest sm3 -pkeyopt distid:…` (DER).
        let openssl_default = crate::unhex("3046022100bb23e78a59ab3f93193cc2cd1abdb48c8d697eb4a42cbf28e7205e00617274aa0221009b52268ad479a6f3856d8332c7b15980cc916455cab65c7935b060be6a75fdbd").unwrap();
        let openssl_doctor = crate::unhex("304502206df6ccb145fbaa1a24fcabe4d12583dd93558c97992f747d9d7c04678d1a90eb02210082da4c2c9dac68479e1964c5e49cefade730c8290d692b0111dd5d0ac6aa6d92").unwrap();
        public.verify(MSG, &openssl_default).unwrap();
        public.verify_with_id("doctor@h1", MSG, &openssl_doctor).unwrap();
        assert_eq!(public.verify(MSG, &openssl_doctor), Err(CryptoError::BadSignature), "id mismatch");
        assert_eq!(public.verify(b"Hutong audit checkpoint 43", &openssl_default), Err(CryptoError::BadSignature));

        // Ours, which OpenSSL verified.
        assert_eq!(
            crate::hex(&key.sign_der(MSG)),
            "3044022045e74d372b8987b99e4e4eb89d79071634ba36eb92c00d4a37655de097810b5902206c9f2efeb4bb9384b3b9186a1efd66f9a4cb92b1ea6b83f0857d25e2651d3961"
        );
        assert_eq!(
            crate::hex(&key.sign_der_with_id("doctor@h1", MSG).unwrap()),
            "3044022066d7554be38e7d16f31d9c3ca1b22856fdd983b20c376d8f312d59db4971f36902202592e8007652a0d4047c4f4383aec1f3d09e922c2d3e27d4e4f86f09672d5dc9"
        );
        // The raw form is the same (r, s).
        let raw = key.sign(MSG);
        assert_eq!(raw.len(), 64);
        assert_eq!(&raw[..4], &[0x45, 0xe7, 0x4d, 0x37]);
        public.verify(MSG, &raw).unwrap();
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let Err(CryptoError::BadKey(msg)) = Sm2SigningKey::from_pkcs8_pem(PUB_PEM) else {
            panic!("accepted a public key")
        };
        assert!(msg.contains("PKCS#8"), "{msg}");
        assert!(
            Sm2VerifyingKey::from_public_key_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err()
        );
        assert!(Sm2SigningKey::from_pem_or_hex(KEY_PEM).is_ok());
        assert!(
            Sm2VerifyingKey::from_pem_or_hex(&Sm2SigningKey::from_pem_or_hex(KEY_PEM).unwrap().public().to_hex())
                .is_ok()
        );
    }
}

/// GM/T 0003.5-2012 (= GB/T 32918.5-2017) Annex A, the signature example on the recommended
/// curve: key pair, ID `1234567812345678`, message "message digest", the digest e and (r, s).
#[cfg(test)]
mod standard_example {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        crate::unhex(&s.replace(' ', "")).unwrap()
    }

    const D: &str = "3945208F 7B2144B1 3F36E38A C6D39F95 88939369 2860B51A 42FB81EF 4DF7C5B8";
    const PX: &str = "09F9DF31 1E5421A1 50DD7D16 1E4BC5C6 72179FAD 1833FC07 6BB08FF3 56F35020";
    const PY: &str = "CCEA490C E26775A5 2DC6EA71 8CC1AA60 0AED05FB F35E084A 6632F607 2DA9AD13";
    const R: &str = "F5A03B06 48D2C463 0EEAC513 E1BB81A1 5944DA38 27D5B741 43AC7EAC EEE720B3";
    const S: &str = "B1B6AA29 DF212FD8 763182BC 0D421CA1 BB9038FD 1F7F42D4 840B69C4 85BBC1AA";

    #[test]
    fn published_signature_verifies() {
        let key = Sm2SigningKey::from_secret(&h(D)).unwrap();
        let public = key.public();
        assert_eq!(public.to_hex(), format!("04{}{}", PX, PY).replace(' ', "").to_lowercase());
        let mut sig = h(R);
        sig.extend(h(S));
        public.verify(b"message digest", &sig).unwrap();
        assert!(public.verify(b"message digest.", &sig).is_err());
        sig[63] ^= 1;
        assert!(public.verify(b"message digest", &sig).is_err());
    }

    /// The intermediate e = SM3(Z ‖ M) of the example, Z from the curve parameters: checks the
    /// user-id digest is the standard one (what makes our signatures interoperable).
    #[test]
    fn user_id_digest_matches_the_example() {
        let mut z_input = vec![0x00, 0x80]; // ENTL: 16 bytes = 128 bits
        z_input.extend(b"1234567812345678");
        for part in [
            "FFFFFFFE FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF 00000000 FFFFFFFF FFFFFFFC",
            "28E9FA9E 9D9F5E34 4D5A9E4B CF6509A7 F39789F5 15AB8F92 DDBCBD41 4D940E93",
            "32C4AE2C 1F198119 5F990446 6A39C994 8FE30BBF F2660BE1 715A4589 334C74C7",
            "BC3736A2 F4F6779C 59BDCEE3 6B692153 D0A9877C C62A4740 02DF32E5 2139F0A0",
            PX,
            PY,
        ] {
            z_input.extend(h(part));
        }
        let mut e_input = crate::sm3::sm3(&z_input).to_vec();
        e_input.extend(b"message digest");
        assert_eq!(
            crate::hex(&crate::sm3::sm3(&e_input)),
            "f0b43e94ba45accaace692ed534382eb17e6ab5a19ce7b31f4486fdfc0d28640"
        );
    }
}
