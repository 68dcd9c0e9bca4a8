//! SM2 signatures (GB/T 32918.2-2016) over SM3 with the user-id digest Z (default id
//! `1234567812345678`, GB/T 35276-2017). Keys: a 32-byte secret (hex) or PKCS#8 PEM, and the
//! uncompressed SEC1 public point (65 bytes, hex) or SPKI PEM (both PEM forms are what OpenSSL 3
//! writes for `-algorithm EC -pkeyopt ec_paramgen_curve:SM2`). Signatures: [`Sm2SigningKey::sign`]
//! returns 64 bytes `r ‖ s`; [`Sm2SigningKey::sign_der`] the ASN.1 DER form OpenSSL uses; the
//! verifiers accept either (64 bytes is raw, anything else is parsed as DER).
//!
//! Note for OpenSSL users: `openssl pkeyutl -sign -rawin -digest sm3` uses an *empty* id unless
//! given `-pkeyopt distid:1234567812345678`.

use ::sm2::dsa::signature::Signer;
use ::sm2::dsa::signature::hazmat::PrehashVerifier;
use ::sm2::dsa::{Signature, SigningKey, VerifyingKey};
use ::sm2::elliptic_curve::sec1::ToSec1Point;
use ::sm2::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use ::sm2::{AffinePoint, PublicKey};
use ::sm3::Digest;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use zeroize::{Zeroize, Zeroizing};

use crate::CryptoError;

/// The default distinguishing identifier of GB/T 35276.
pub const DEFAULT_ID: &str = "1234567812345678";

mod fast;

/// An SM2 key pair. `Debug` shows only the public key.
#[derive(Clone)]
pub struct Sm2SigningKey {
    key: SigningKey,
    secret: [u8; 32],
    /// Kept so that every `public()` shares one prepared verifying key.
    public: Sm2VerifyingKey,
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

/// An SM2 public key, prepared for verification: the point is decoded once, Z_A for the
/// default id is computed once, and after [`PREPARE_AFTER`] verifications a precomputed table
/// of the key's multiples is built (see `sm2/fast.rs`). Clones share all of it, so a key kept
/// in a key ring and handed out by clone is prepared once per process.
#[derive(Clone)]
pub struct Sm2VerifyingKey {
    sec1: Vec<u8>,
    prepared: Arc<Prepared>,
}

/// A key's verifications before its table is built: a key verified once (e.g. parsed for a
/// single check) never pays the few milliseconds the table costs; a key in use gets it soon.
pub const PREPARE_AFTER: u32 = 8;

struct Prepared {
    point: AffinePoint,
    /// Z_A for [`DEFAULT_ID`].
    z_default: [u8; 32],
    /// Verifications before the table was built (no longer counted once it is).
    uses: AtomicU32,
    table: OnceLock<fast::CombTable>,
}

impl std::fmt::Debug for Sm2VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm2VerifyingKey").field("sec1", &crate::hex(&self.sec1)).finish()
    }
}

impl PartialEq for Sm2VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.sec1 == other.sec1
    }
}

/// Z_A = SM3(ENTL_A ‖ ID_A ‖ a ‖ b ‖ x_G ‖ y_G ‖ x_A ‖ y_A) (GB/T 32918.2 §5.5); `None` if the id
/// is longer than ENTL's 16 bits of bit length allow.
fn user_digest(id: &str, point: &AffinePoint) -> Option<[u8; 32]> {
    const CURVE: &str = "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC\
                         28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93\
                         32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7\
                         BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0";
    static CURVE_BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bits = u16::try_from(id.len().checked_mul(8)?).ok()?;
    let encoded = point.to_sec1_point(false);
    let xy = encoded.as_bytes().get(1..65)?;
    let curve = CURVE_BYTES.get_or_init(|| crate::unhex(CURVE).expect("curve constants are hex"));
    let mut input = Vec::with_capacity(2 + id.len() + curve.len() + 64);
    input.extend_from_slice(&bits.to_be_bytes());
    input.extend_from_slice(id.as_bytes());
    input.extend_from_slice(curve);
    input.extend_from_slice(xy);
    Some(crate::sm3::sm3(&input))
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
        let public = Sm2VerifyingKey::from_sec1(&key.verifying_key().to_sec1_bytes())?;
        Ok(Sm2SigningKey { key, secret, public })
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
        self.public.clone()
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
        let bad = || CryptoError::BadKey("an SM2 public key is a SEC1 point on the SM2 curve".into());
        // Rejects the identity and points off the curve.
        let public = PublicKey::from_sec1_bytes(bytes).map_err(|_| bad())?;
        let point = *public.as_affine();
        let z_default = user_digest(DEFAULT_ID, &point).ok_or_else(bad)?;
        let prepared = Prepared { point, z_default, uses: AtomicU32::new(0), table: OnceLock::new() };
        Ok(Sm2VerifyingKey { sec1: bytes.to_vec(), prepared: Arc::new(prepared) })
    }

    /// Builds the key's precomputed table now rather than after [`PREPARE_AFTER`]
    /// verifications (a few milliseconds, once per key and process; clones share it).
    pub fn prepare(&self) {
        self.table();
    }

    fn table(&self) -> &fast::CombTable {
        self.prepared.table.get_or_init(|| fast::CombTable::new(&self.prepared.point))
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

    /// Verifies with a caller-given distinguishing id. Until the key has verified
    /// [`PREPARE_AFTER`] signatures this is the `sm2` crate's verification; then the key's
    /// precomputed table is built and the fast path of `sm2/fast.rs` is used (same result,
    /// as the tests there and below check, several times faster).
    pub fn verify_with_id(&self, id: &str, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        // r and s in [1, n-1] (B1, B2): `Signature` refuses 0 and anything >= n.
        let signature =
            if signature.len() == 64 { Signature::from_slice(signature) } else { Signature::from_der(signature) }
                .map_err(|_| CryptoError::BadSignature)?;
        let z = if id == DEFAULT_ID {
            self.prepared.z_default
        } else {
            user_digest(id, &self.prepared.point).ok_or(CryptoError::BadSignature)?
        };
        // B3, B4: e = SM3(Z_A ‖ M).
        let digest: [u8; 32] = ::sm3::Sm3::new_with_prefix(z).chain_update(message).finalize().into();
        let hot =
            self.prepared.table.get().is_some() || self.prepared.uses.fetch_add(1, Ordering::Relaxed) >= PREPARE_AFTER;
        let ok = if hot {
            fast::verify_prehashed(&digest, &signature.r(), &signature.s(), self.table())
        } else {
            VerifyingKey::from_affine(id, self.prepared.point)
                .and_then(|key| key.verify_prehash(&digest, &signature))
                .is_ok()
        };
        if ok { Ok(()) } else { Err(CryptoError::BadSignature) }
    }

    /// The `sm2` crate's verification alone (the reference the fast path is tested against).
    #[cfg(test)]
    fn verify_reference(&self, id: &str, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        use ::sm2::dsa::signature::Verifier;
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
        for prepared in [false, true] {
            if prepared {
                public.prepare();
            }
            public.verify_with_id("example@rustcrypto.org", b"testing", &sig).unwrap();
            assert!(public.verify_with_id("example@rustcrypto.org", b"testing!", &sig).is_err());
            assert!(public.verify(b"testing", &sig).is_err());
        }
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
        // Before and after the key is prepared (the `sm2` crate's path, then the fast one).
        for prepared in [false, true] {
            if prepared {
                public.prepare();
            }
            let mut sig = h(R);
            sig.extend(h(S));
            public.verify(b"message digest", &sig).unwrap();
            assert!(public.verify(b"message digest.", &sig).is_err());
            sig[63] ^= 1;
            assert!(public.verify(b"message digest", &sig).is_err());
        }
        assert!(public.prepared.table.get().is_some());
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

/// The fast verification (`sm2/fast.rs`, used once a key is prepared) against the `sm2` crate's
/// own verification, on random keys, messages and ids, for valid signatures and for corrupted
/// signatures, messages and keys: both must give the same answer every time.
#[cfg(test)]
mod fast_equivalence {
    use super::*;
    use ::sm2::Scalar;
    use ::sm2::elliptic_curve::ff::PrimeField;
    use proptest::prelude::*;

    /// n, the order of G, big-endian.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x72, 0x03,
        0xdf, 0x6b, 0x21, 0xc6, 0x05, 0x2b, 0x53, 0xbb, 0xf4, 0x09, 0x39, 0xd5, 0x41, 0x23,
    ];

    fn with(r: &[u8], s: &[u8]) -> Vec<u8> {
        [r, s].concat()
    }

    /// Big-endian 256-bit addition (wrapping), for values near n.
    fn add_small(a: &[u8; 32], k: u8) -> [u8; 32] {
        let mut out = *a;
        let mut carry = u16::from(k);
        for byte in out.iter_mut().rev() {
            let v = u16::from(*byte) + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
        out
    }

    /// One case: id, message, signature, key, and what was changed.
    type Case = (String, Vec<u8>, Vec<u8>, Sm2VerifyingKey, &'static str);

    /// Every variant of (id, message, signature, key) checked for one signing.
    fn variants(key: &Sm2SigningKey, other: &Sm2SigningKey, id: &str, message: &[u8], flip: usize) -> Vec<Case> {
        let sig = key.sign_with_id(id, message).unwrap();
        let der = key.sign_der_with_id(id, message).unwrap();
        let (r, s) = sig.split_at(32);
        let public = key.public();
        let id = id.to_string();
        let mut flipped_message = message.to_vec();
        if flipped_message.is_empty() {
            flipped_message.push(0);
        } else {
            let i = flip % flipped_message.len();
            flipped_message[i] ^= 1 << (flip % 8);
        }
        let mut flipped_sig = sig.clone();
        flipped_sig[flip % 64] ^= 1 << (flip % 8);
        // s = n − r: t = (r + s) mod n = 0, which B5 refuses.
        let r_scalar = Scalar::from_repr(<[u8; 32]>::try_from(r).unwrap().into()).unwrap();
        let minus_r: [u8; 32] = (-r_scalar).to_repr().into();
        let mut out = vec![
            (id.clone(), message.to_vec(), sig.clone(), public.clone(), "valid"),
            (id.clone(), message.to_vec(), der.clone(), public.clone(), "valid DER"),
            (id.clone(), flipped_message, sig.clone(), public.clone(), "message bit flipped"),
            (id.clone(), message.to_vec(), flipped_sig, public.clone(), "signature bit flipped"),
            (id.clone(), message.to_vec(), with(s, r), public.clone(), "r and s swapped"),
            (id.clone(), message.to_vec(), with(&[0; 32], s), public.clone(), "r = 0"),
            (id.clone(), message.to_vec(), with(r, &[0; 32]), public.clone(), "s = 0"),
            (id.clone(), message.to_vec(), with(&N, s), public.clone(), "r = n"),
            (id.clone(), message.to_vec(), with(r, &N), public.clone(), "s = n"),
            (id.clone(), message.to_vec(), with(&add_small(&N, 1), s), public.clone(), "r = n + 1"),
            (id.clone(), message.to_vec(), with(r, &[0xff; 32]), public.clone(), "s = 2^256 - 1"),
            (id.clone(), message.to_vec(), with(r, &minus_r), public.clone(), "t = 0"),
            (id.clone(), message.to_vec(), sig[..63].to_vec(), public.clone(), "truncated"),
            (id.clone(), message.to_vec(), sig.clone(), other.public(), "another key"),
            (format!("{id}x"), message.to_vec(), sig.clone(), public.clone(), "another id"),
        ];
        // r reduced differently: (r + n) does not fit a valid encoding, r − 1 is just wrong.
        let r_minus_one: [u8; 32] = (r_scalar - Scalar::ONE).to_repr().into();
        out.push((id.clone(), message.to_vec(), with(&r_minus_one, s), public, "r - 1"));
        out
    }

    fn check(key: &Sm2SigningKey, other: &Sm2SigningKey, id: &str, message: &[u8], flip: usize) {
        for (id, message, sig, public, what) in variants(key, other, id, message, flip) {
            let reference = public.verify_reference(&id, &message, &sig);
            // A fresh key (the `sm2` crate's path with our Z_A and e) and a prepared one (fast).
            let cold = Sm2VerifyingKey::from_sec1(&public.sec1).unwrap();
            assert!(cold.prepared.table.get().is_none());
            let cold_result = cold.verify_with_id(&id, &message, &sig);
            public.prepare();
            let fast_result = public.verify_with_id(&id, &message, &sig);
            assert_eq!(cold_result, reference, "{what}: the unprepared key disagrees with the sm2 crate");
            assert_eq!(fast_result, reference, "{what}: the fast path disagrees with the sm2 crate");
            assert_eq!(reference.is_ok(), what.starts_with("valid"), "{what}: {reference:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fast_verify_agrees_with_the_sm2_crate(
            secret in any::<[u8; 32]>(),
            other_secret in any::<[u8; 32]>(),
            message in proptest::collection::vec(any::<u8>(), 0..200),
            id in prop_oneof![Just(DEFAULT_ID.to_string()), Just(String::new()), "[a-z@.0-9]{1,40}"],
            flip in any::<usize>(),
        ) {
            let key = Sm2SigningKey::from_secret(&secret);
            let other = Sm2SigningKey::from_secret(&other_secret);
            prop_assume!(key.is_ok() && other.is_ok() && secret != other_secret);
            check(&key.unwrap(), &other.unwrap(), &id, &message, flip);
        }
    }

    /// Keys with small and extreme secrets (public points with special coordinates).
    #[test]
    fn edge_keys() {
        let mut n_minus_one = N;
        n_minus_one[31] -= 2; // n − 1 is not a valid SM2 secret (d + 1 must be invertible)
        let mut secrets = vec![n_minus_one];
        for k in [1u8, 2, 3, 0x80, 0xff] {
            let mut small = [0u8; 32];
            small[31] = k;
            secrets.push(small);
        }
        let other = Sm2SigningKey::generate();
        for secret in secrets {
            let key = Sm2SigningKey::from_secret(&secret).unwrap();
            for (i, message) in [&b""[..], b"a", b"HC1 payload"].into_iter().enumerate() {
                check(&key, &other, DEFAULT_ID, message, i * 37);
            }
        }
    }

    /// A key switches to the fast path after `PREPARE_AFTER` verifications, with the same
    /// answers before and after; clones share the table.
    #[test]
    fn switches_to_the_fast_path_after_some_uses() {
        let key = Sm2SigningKey::generate();
        let public = Sm2VerifyingKey::from_hex(&key.public().to_hex()).unwrap();
        let clone = public.clone();
        let sig = key.sign(b"m");
        for i in 0..3 * PREPARE_AFTER {
            assert_eq!(public.prepared.table.get().is_some(), i > PREPARE_AFTER, "after {i} verifications");
            if i % 2 == 0 {
                public.verify(b"m", &sig).unwrap();
            } else {
                assert_eq!(public.verify(b"n", &sig), Err(CryptoError::BadSignature));
            }
        }
        assert!(clone.prepared.table.get().is_some(), "clones share the prepared key");
        clone.verify(b"m", &sig).unwrap();
        assert!(clone.verify(b"m", &key.sign(b"other")).is_err());
    }
}
