//! The platform's keys. A key folder (`<data>/keys/`, created with mode 0700 and files 0600 on
//! first start) holds:
//! - `sm4.keys`: SM4 data keys, one `key-id hex` per line; the **last** line is the active key
//!   for new encryption, older ones still decrypt (rotation without downtime: append a key,
//!   restart or reload, re-encrypt at leisure).
//! - `blind-index.key`: the HMAC-SM3 key of blind indexes (stable across SM4 rotation).
//! - `sm2.key`: the platform's SM2 signing key (hex secret), e.g. for audit checkpoints;
//!   `sm2.pub` next to it holds the public key for verifiers.
//!
//! Environment variables override the files (for containers and secret managers):
//! `HUTONG_SM4_KEYS=kid:hex,kid:hex` (last active), `HUTONG_BLIND_INDEX_KEY=hex`,
//! `HUTONG_SM2_KEY=hex`. `Debug` never prints key material.

use std::path::Path;

use crate::sm2::{Sm2SigningKey, Sm2VerifyingKey};
use crate::sm4::{self, Sm4Key};
use crate::{CryptoError, base64url, unbase64url};

pub struct KeyRing {
    sm4: Vec<(String, Sm4Key)>,
    blind_index: Vec<u8>,
    signing: Sm2SigningKey,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("sm4_key_ids", &self.sm4.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}

fn io(e: std::io::Error, what: &Path) -> CryptoError {
    CryptoError::Io(format!("{}: {e}", what.display()))
}

fn write_private(path: &Path, text: &str) -> Result<(), CryptoError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| io(e, path))?;
    file.write_all(text.as_bytes()).map_err(|e| io(e, path))?;
    file.sync_all().map_err(|e| io(e, path))
}

fn parse_sm4(text: &str, separator: char) -> Result<Vec<(String, Sm4Key)>, CryptoError> {
    let keys: Vec<(String, Sm4Key)> = text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (kid, hex) = l
                .split_once(separator)
                .ok_or_else(|| CryptoError::BadKey(format!("SM4 key entry needs 'id{separator}hex'")))?;
            let kid = kid.trim();
            if kid.is_empty() || !kid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(CryptoError::BadKey("SM4 key ids are letters, digits and '-'".into()));
            }
            Ok((kid.to_string(), Sm4Key::from_hex(hex.trim())?))
        })
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(CryptoError::BadKey("no SM4 key".into()));
    }
    Ok(keys)
}

impl KeyRing {
    /// Loads the key folder, creating any missing key, then applies environment overrides.
    pub fn load_or_create(dir: &Path) -> Result<KeyRing, CryptoError> {
        std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let sm4_path = dir.join("sm4.keys");
        if !sm4_path.exists() {
            write_private(&sm4_path, &format!("k1 {}\n", crate::hex(&Sm4Key::generate().0)))?;
        }
        let index_path = dir.join("blind-index.key");
        if !index_path.exists() {
            write_private(&index_path, &format!("{}\n", crate::hex(&crate::random_bytes(32))))?;
        }
        let sm2_path = dir.join("sm2.key");
        if !sm2_path.exists() {
            let key = Sm2SigningKey::generate();
            write_private(&sm2_path, &format!("{}\n", key.secret_hex()))?;
            std::fs::write(dir.join("sm2.pub"), format!("{}\n", key.public().to_hex()))
                .map_err(|e| io(e, &dir.join("sm2.pub")))?;
        }
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| io(e, p));
        let mut sm4 = parse_sm4(&read(&sm4_path)?, ' ')?;
        let mut blind_index = crate::unhex(&read(&index_path)?)?;
        let mut signing = Sm2SigningKey::from_hex(&read(&sm2_path)?)?;
        if let Ok(v) = std::env::var("HUTONG_SM4_KEYS") {
            sm4 = parse_sm4(&v, ':')?;
        }
        if let Ok(v) = std::env::var("HUTONG_BLIND_INDEX_KEY") {
            blind_index = crate::unhex(&v)?;
        }
        if let Ok(v) = std::env::var("HUTONG_SM2_KEY") {
            signing = Sm2SigningKey::from_hex(&v)?;
        }
        if blind_index.len() < 16 {
            return Err(CryptoError::BadKey("the blind-index key needs at least 16 bytes".into()));
        }
        Ok(KeyRing { sm4, blind_index, signing })
    }

    /// A key ring of fresh keys, held in memory only (tests, tools).
    pub fn ephemeral() -> KeyRing {
        KeyRing {
            sm4: vec![("k1".into(), Sm4Key::generate())],
            blind_index: crate::random_bytes(32),
            signing: Sm2SigningKey::generate(),
        }
    }

    /// Adds an SM4 key and makes it active (rotation).
    pub fn rotate_sm4(&mut self, kid: &str, key: Sm4Key) {
        self.sm4.push((kid.to_string(), key));
    }

    pub fn active_sm4_id(&self) -> &str {
        &self.sm4.last().expect("at least one SM4 key").0
    }

    /// Encrypts a field value: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`. `context`
    /// (e.g. `Patient.identifier`) is authenticated, so a value cannot be moved to another field.
    pub fn encrypt_field(&self, plaintext: &str, context: &str) -> String {
        let (kid, key) = self.sm4.last().expect("at least one SM4 key");
        format!("v1.{kid}.{}", base64url(&sm4::seal(key, plaintext.as_bytes(), context.as_bytes())))
    }

    pub fn decrypt_field(&self, sealed: &str, context: &str) -> Result<String, CryptoError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Malformed("not an encrypted field (v1.<key>.<data>)".into()));
        };
        let key = self
            .sm4
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, k)| k)
            .ok_or_else(|| CryptoError::BadKey(format!("SM4 key '{kid}' is not in the key ring")))?;
        let plain = sm4::open(key, &unbase64url(body)?, context.as_bytes())?;
        String::from_utf8(plain).map_err(|_| CryptoError::Decrypt)
    }

    /// A keyed, deterministic index of a normalized value in `domain` (e.g. `id-number`,
    /// `phone`): equal values give equal indexes, so exact search works on encrypted fields,
    /// while the index reveals nothing without the key. Stable across SM4 rotation.
    pub fn blind_index(&self, domain: &str, normalized: &str) -> String {
        let domain_key = crate::sm3::hmac_sm3(&self.blind_index, domain.as_bytes());
        base64url(&crate::sm3::hmac_sm3(&domain_key, normalized.as_bytes()))
    }

    pub fn signing_key(&self) -> &Sm2SigningKey {
        &self.signing
    }

    pub fn verifying_key(&self) -> Sm2VerifyingKey {
        self.signing.public()
    }

    /// Identifier of the signing key (first 16 hex digits of the SM3 of its public key).
    pub fn signing_key_id(&self) -> String {
        crate::sm3::sm3_hex(self.signing.public().to_hex().as_bytes())[..16].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_keys_persist_and_rotate() {
        let dir = std::env::temp_dir().join(format!("hutong-keys-{}", crate::random_token(6)));
        let ring = KeyRing::load_or_create(&dir).unwrap();
        let sealed = ring.encrypt_field("11010519491231002X", "Patient.identifier");
        assert!(sealed.starts_with("v1.k1."));
        assert!(!sealed.contains("1101051949"));
        let again = KeyRing::load_or_create(&dir).unwrap();
        assert_eq!(again.decrypt_field(&sealed, "Patient.identifier").unwrap(), "11010519491231002X");
        assert!(again.decrypt_field(&sealed, "Patient.telecom").is_err(), "context is bound");
        assert_eq!(again.blind_index("id", "x"), ring.blind_index("id", "x"));
        assert_eq!(again.signing_key_id(), ring.signing_key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("sm4.keys")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "key files are private");
        }
        // Rotation: new values use k2, old ones still open.
        let mut rotated = again;
        rotated.rotate_sm4("k2", Sm4Key::generate());
        let new = rotated.encrypt_field("13800000000", "phone");
        assert!(new.starts_with("v1.k2."));
        assert_eq!(rotated.decrypt_field(&sealed, "Patient.identifier").unwrap(), "11010519491231002X");
        assert_eq!(rotated.blind_index("id", "x"), ring.blind_index("id", "x"), "indexes survive rotation");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blind_indexes_separate_domains_and_values() {
        let ring = KeyRing::ephemeral();
        assert_ne!(ring.blind_index("id", "1"), ring.blind_index("phone", "1"));
        assert_ne!(ring.blind_index("id", "1"), ring.blind_index("id", "2"));
        assert_ne!(ring.blind_index("id", "1"), KeyRing::ephemeral().blind_index("id", "1"), "keyed");
        assert!(!format!("{ring:?}").contains(&crate::hex(&ring.blind_index)));
        assert!(ring.decrypt_field("v1.k9.AAAA", "x").is_err());
        assert!(ring.decrypt_field("garbage", "x").is_err());
    }
}
