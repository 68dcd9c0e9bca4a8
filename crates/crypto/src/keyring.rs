//! The platform's keys. A key folder (`<data>/keys/`, created with mode 0700 and files 0600 on
//! first start) holds:
//! - `sm4.keys`: SM4 data keys, one `key-id hex` per line; the **last** line is the active key
//!   for new encryption, older ones still decrypt (rotation without downtime: append a key and
//!   let servers reload; old values never need re-encrypting to be read).
//! - `blind-index.key`: the HMAC-SM3 key of blind indexes (stable across SM4 rotation).
//! - `sm2.key`: the platform's SM2 signing key (hex secret, or a PKCS#8 PEM put there by an
//!   operator), e.g. for audit checkpoints; `sm2.pub` (hex SEC1 point) and `sm2-public.pem`
//!   (SPKI, for OpenSSL) next to it hold the public key for verifiers.
//! - `sm2-retired/<key id>.pub`: the public keys (hex SEC1 point, or an SPKI PEM) of SM2 signing
//!   keys replaced by [`KeyRing::rotate_sm2_in`], so what they signed still verifies
//!   ([`KeyRing::verifying_key_for`]).
//!
//! [`KeyRing::load`] reads the folder without creating anything (a running server's reload);
//! [`KeyRing::rotate_sm4_in`] and [`KeyRing::rotate_sm2_in`] rotate the files in place.
//!
//! Environment variables override the files (for containers and secret managers):
//! `HUTONG_SM4_KEYS=kid:hex,kid:hex` (last active; `HUTONG_SM4_KEY` is accepted too),
//! `HUTONG_BLIND_INDEX_KEY=hex`, `HUTONG_SM2_KEY=hex or PEM` (or `HUTONG_SM2_KEY_PEM=PEM`).
//! `Debug` never prints key material, and secrets are wiped from memory when dropped.

use std::path::Path;

use zeroize::Zeroizing;

use crate::sm2::{Sm2SigningKey, Sm2VerifyingKey};
use crate::sm4::{self, Sm4Key};
use crate::{CryptoError, base64url, unbase64url};

pub struct KeyRing {
    sm4: Vec<(String, Sm4Key)>,
    blind_index: Zeroizing<Vec<u8>>,
    signing: Sm2SigningKey,
    /// `key_id` of `signing` (asked for on every code verification: computed once).
    signing_id: String,
    /// Retired SM2 public keys by key id (`sm2-retired/`).
    retired: Vec<(String, Sm2VerifyingKey)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("sm4_key_ids", &self.sm4.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("signing", &self.signing)
            .field("retired_sm2_key_ids", &self.retired.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
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

/// Names the file or variable a key error came from.
fn named(name: &'static str) -> impl Fn(CryptoError) -> CryptoError {
    move |e| CryptoError::BadKey(format!("{name}: {e}"))
}

/// Writes a public file only when its content changed.
fn write_public(path: &Path, text: &str) -> Result<(), CryptoError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| io(e, path))
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
    for (i, (kid, _)) in keys.iter().enumerate() {
        if keys[..i].iter().any(|(k, _)| k == kid) {
            return Err(CryptoError::BadKey(format!("SM4 key id '{kid}' appears twice; each key needs its own id")));
        }
    }
    Ok(keys)
}

impl KeyRing {
    /// Loads the key folder, creating any missing key, then applies environment overrides.
    pub fn load_or_create(dir: &Path) -> Result<KeyRing, CryptoError> {
        Self::load_or_create_with_env(dir, |name| std::env::var(name).ok())
    }

    /// Same as [`KeyRing::load_or_create`] (the name used in the design notes).
    pub fn generate_if_missing(dir: &Path) -> Result<KeyRing, CryptoError> {
        Self::load_or_create(dir)
    }

    /// [`KeyRing::load_or_create`] with the environment given as a lookup function (tests, or a
    /// configuration source other than the process environment).
    pub fn load_or_create_with_env(dir: &Path, env: impl Fn(&str) -> Option<String>) -> Result<KeyRing, CryptoError> {
        std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let sm4_path = dir.join(SM4_FILE);
        if !sm4_path.exists() {
            write_private(&sm4_path, &format!("k1 {}\n", crate::hex(&Sm4Key::generate().0)))?;
        }
        let index_path = dir.join(BLIND_INDEX_FILE);
        if !index_path.exists() {
            write_private(&index_path, &format!("{}\n", crate::hex(&crate::random_bytes(32))))?;
        }
        let sm2_path = dir.join(SM2_FILE);
        if !sm2_path.exists() {
            let key = Sm2SigningKey::generate();
            write_private(&sm2_path, &format!("{}\n", key.secret_hex()))?;
        }
        Self::load_with_env(dir, env)
    }

    /// Loads the key folder without creating anything (a missing key file is an error), then
    /// applies the environment overrides: what a running server does to pick up rotated keys.
    pub fn load(dir: &Path) -> Result<KeyRing, CryptoError> {
        Self::load_with_env(dir, |name| std::env::var(name).ok())
    }

    /// [`KeyRing::load`] with the environment given as a lookup function.
    pub fn load_with_env(dir: &Path, env: impl Fn(&str) -> Option<String>) -> Result<KeyRing, CryptoError> {
        let (sm4_path, index_path, sm2_path) = (dir.join(SM4_FILE), dir.join(BLIND_INDEX_FILE), dir.join(SM2_FILE));
        let read = |p: &Path| std::fs::read_to_string(p).map(Zeroizing::new).map_err(|e| io(e, p));
        let mut sm4 = parse_sm4(&read(&sm4_path)?, ' ').map_err(named("sm4.keys"))?;
        let mut blind_index = Zeroizing::new(crate::unhex(&read(&index_path)?).map_err(named("blind-index.key"))?);
        let mut signing = Sm2SigningKey::from_pem_or_hex(&read(&sm2_path)?).map_err(named("sm2.key"))?;
        for var in ["HUTONG_SM4_KEY", "HUTONG_SM4_KEYS"] {
            if let Some(v) = env(var).map(Zeroizing::new) {
                sm4 = parse_sm4(&v, ':').map_err(named(var))?;
            }
        }
        if let Some(v) = env("HUTONG_BLIND_INDEX_KEY").map(Zeroizing::new) {
            blind_index = Zeroizing::new(crate::unhex(&v).map_err(named("HUTONG_BLIND_INDEX_KEY"))?);
        }
        for var in ["HUTONG_SM2_KEY", "HUTONG_SM2_KEY_PEM"] {
            if let Some(v) = env(var).map(Zeroizing::new) {
                signing = Sm2SigningKey::from_pem_or_hex(&v).map_err(named(var))?;
            }
        }
        // The public key files describe the key in use, so verifiers never drift. Best effort:
        // a read-only key folder (a mounted secret) must not stop the server.
        let public = signing.public();
        let _ = write_public(&dir.join("sm2.pub"), &format!("{}\n", public.to_hex()));
        if let Ok(pem) = public.to_public_key_pem() {
            let _ = write_public(&dir.join("sm2-public.pem"), &pem);
        }
        if blind_index.len() < 16 {
            return Err(CryptoError::BadKey("the blind-index key needs at least 16 bytes".into()));
        }
        let signing_id = key_id(&signing.public());
        let mut ring = KeyRing { sm4, blind_index, signing, signing_id, retired: Vec::new() };
        ring.retired = load_retired(&dir.join(RETIRED_DIR))?;
        Ok(ring)
    }

    /// A key ring of fresh keys, held in memory only (tests, tools).
    pub fn ephemeral() -> KeyRing {
        let signing = Sm2SigningKey::generate();
        KeyRing {
            sm4: vec![("k1".into(), Sm4Key::generate())],
            blind_index: Zeroizing::new(crate::random_bytes(32)),
            signing_id: key_id(&signing.public()),
            signing,
            retired: Vec::new(),
        }
    }

    /// Adds an SM4 key and makes it active (rotation). A key already in the ring under the same
    /// id is replaced (what it encrypted no longer opens), so give each new key a new id.
    pub fn rotate_sm4(&mut self, kid: &str, key: Sm4Key) {
        self.sm4.retain(|(k, _)| k != kid);
        self.sm4.push((kid.to_string(), key));
    }

    pub fn active_sm4_id(&self) -> &str {
        self.sm4.last().map_or("", |(kid, _)| kid.as_str())
    }

    /// The ids of all SM4 keys, oldest first (the last is active).
    pub fn sm4_key_ids(&self) -> Vec<&str> {
        self.sm4.iter().map(|(kid, _)| kid.as_str()).collect()
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
        self.signing_id.clone()
    }

    /// The public key that verifies signatures made under `key_id`: the current signing key's,
    /// or a retired one's from `sm2-retired/`. `None` for a key this ring does not know.
    pub fn verifying_key_for(&self, key_id: &str) -> Option<Sm2VerifyingKey> {
        if key_id == self.signing_id {
            return Some(self.verifying_key());
        }
        self.retired.iter().find(|(id, _)| id == key_id).map(|(_, key)| key.clone())
    }

    /// The ids of the retired SM2 keys found in `sm2-retired/`, sorted.
    pub fn retired_signing_key_ids(&self) -> Vec<&str> {
        self.retired.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Appends a fresh SM4 key to `<dir>/sm4.keys`, making it the active key for new encryption;
    /// returns its id (`k<n>`, one past the highest `k<n>` in the file). Older keys stay, so what
    /// they encrypted still opens.
    pub fn rotate_sm4_in(dir: &Path) -> Result<String, CryptoError> {
        use std::io::Write;
        let path = dir.join(SM4_FILE);
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| io(e, &path))?);
        let keys = parse_sm4(&text, ' ').map_err(named("sm4.keys"))?;
        let next = keys.iter().filter_map(|(kid, _)| kid.strip_prefix('k')?.parse::<u64>().ok()).max().unwrap_or(0) + 1;
        let mut n = next;
        while keys.iter().any(|(kid, _)| *kid == format!("k{n}")) {
            n += 1;
        }
        let kid = format!("k{n}");
        let separator = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
        let line = Zeroizing::new(format!("{separator}{kid} {}\n", crate::hex(&Sm4Key::generate().0)));
        // One write of one line, so a concurrent reader sees the file before or after it.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| io(e, &path))?;
        file.write_all(line.as_bytes()).map_err(|e| io(e, &path))?;
        file.sync_all().map_err(|e| io(e, &path))?;
        Ok(kid)
    }

    /// Replaces `<dir>/sm2.key` with a fresh SM2 key, first archiving the current public key as
    /// `<dir>/sm2-retired/<key id>.pub` (hex) so checkpoints it signed still verify. Rewrites
    /// `sm2.pub` and `sm2-public.pem`. Returns `(retired key id, new key id)`.
    pub fn rotate_sm2_in(dir: &Path) -> Result<(String, String), CryptoError> {
        let path = dir.join(SM2_FILE);
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| io(e, &path))?);
        let old = Sm2SigningKey::from_pem_or_hex(&text).map_err(named("sm2.key"))?.public();
        let old_id = key_id(&old);
        let retired = dir.join(RETIRED_DIR);
        std::fs::create_dir_all(&retired).map_err(|e| io(e, &retired))?;
        // The archive goes first: if anything fails after it, the old key still signs and an
        // extra retired public key is harmless.
        let archived = retired.join(format!("{old_id}.pub"));
        std::fs::write(&archived, format!("{}\n", old.to_hex())).map_err(|e| io(e, &archived))?;
        let new = Sm2SigningKey::generate();
        let staged = dir.join("sm2.key.new");
        let _ = std::fs::remove_file(&staged);
        write_private(&staged, &format!("{}\n", new.secret_hex()))?;
        // A rename replaces the file at once, so a server reloading meanwhile reads one key or the other.
        std::fs::rename(&staged, &path).map_err(|e| io(e, &path))?;
        let public = new.public();
        write_public(&dir.join("sm2.pub"), &format!("{}\n", public.to_hex()))?;
        write_public(&dir.join("sm2-public.pem"), &public.to_public_key_pem()?)?;
        Ok((old_id, key_id(&public)))
    }
}

const SM4_FILE: &str = "sm4.keys";
const BLIND_INDEX_FILE: &str = "blind-index.key";
const SM2_FILE: &str = "sm2.key";
const RETIRED_DIR: &str = "sm2-retired";

/// The files and folder whose changes mean the ring must be reloaded (relative to the key folder).
pub const WATCHED_KEY_FILES: [&str; 4] = [SM4_FILE, BLIND_INDEX_FILE, SM2_FILE, RETIRED_DIR];

/// First 16 hex digits of the SM3 of a public key's hex point.
fn key_id(public: &Sm2VerifyingKey) -> String {
    crate::sm3::sm3_hex(public.to_hex().as_bytes())[..16].to_string()
}

/// The retired public keys in `dir` (`*.pub`, hex or PEM), by the id computed from each key, so
/// a renamed file cannot make a key stand for another id. No folder means none.
fn load_retired(dir: &Path) -> Result<Vec<(String, Sm2VerifyingKey)>, CryptoError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e, dir)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io(e, dir))?.path();
        if path.extension().is_none_or(|x| x != "pub") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(e, &path))?;
        let key = Sm2VerifyingKey::from_pem_or_hex(&text)
            .map_err(|e| CryptoError::BadKey(format!("{}: {e}", path.display())))?;
        keys.push((key_id(&key), key));
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys.dedup_by(|a, b| a.0 == b.0);
    Ok(keys)
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

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hutong-keys-{}", crate::random_token(6)))
    }

    #[test]
    fn environment_overrides_files() {
        let dir = temp_dir();
        let from_files = KeyRing::load_or_create_with_env(&dir, |_| None).unwrap();
        let sm2 = Sm2SigningKey::generate();
        let pem = sm2.to_pkcs8_pem().unwrap();
        let env = |name: &str| match name {
            "HUTONG_SM4_KEY" => {
                Some("old:000102030405060708090a0b0c0d0e0f, new:0f0e0d0c0b0a09080706050403020100".into())
            }
            "HUTONG_BLIND_INDEX_KEY" => Some("11".repeat(32)),
            "HUTONG_SM2_KEY_PEM" => Some(pem.to_string()),
            _ => None,
        };
        let ring = KeyRing::load_or_create_with_env(&dir, env).unwrap();
        assert_eq!(ring.sm4_key_ids(), ["old", "new"]);
        assert!(ring.encrypt_field("x", "c").starts_with("v1.new."), "the last key is active");
        assert_eq!(ring.verifying_key(), sm2.public());
        assert_ne!(ring.blind_index("id", "x"), from_files.blind_index("id", "x"));
        // The public key files follow the key in use.
        let pub_pem = std::fs::read_to_string(dir.join("sm2-public.pem")).unwrap();
        assert_eq!(crate::sm2::Sm2VerifyingKey::from_public_key_pem(&pub_pem).unwrap(), sm2.public());
        let pub_hex = std::fs::read_to_string(dir.join("sm2.pub")).unwrap();
        assert_eq!(pub_hex.trim(), sm2.public().to_hex());
        // Old-style variable name, hex SM2 key.
        let hex = sm2.secret_hex();
        let ring = KeyRing::load_or_create_with_env(&dir, |n| {
            (n == "HUTONG_SM4_KEYS")
                .then(|| "a:000102030405060708090a0b0c0d0e0f".to_string())
                .or_else(|| (n == "HUTONG_SM2_KEY").then(|| hex.clone()))
        })
        .unwrap();
        assert_eq!((ring.active_sm4_id(), ring.verifying_key()), ("a", sm2.public()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_key_material_names_its_source() {
        let dir = temp_dir();
        let err = |var: &'static str, value: &'static str| {
            KeyRing::load_or_create_with_env(&dir, move |n| (n == var).then(|| value.to_string()))
                .unwrap_err()
                .to_string()
        };
        let e = err("HUTONG_SM4_KEYS", "a:0001,b:000102030405060708090a0b0c0d0e0f");
        assert!(e.contains("HUTONG_SM4_KEYS") && e.contains("16 bytes"), "{e}");
        let e = err("HUTONG_SM4_KEYS", "a:000102030405060708090a0b0c0d0e0f,a:000102030405060708090a0b0c0d0e0f");
        assert!(e.contains("appears twice"), "{e}");
        let e = err("HUTONG_SM2_KEY_PEM", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(e.contains("HUTONG_SM2_KEY_PEM") && e.contains("PKCS#8"), "{e}");
        let e = err("HUTONG_BLIND_INDEX_KEY", "0011");
        assert!(e.contains("at least 16 bytes"), "{e}");
        // An operator may put an OpenSSL PKCS#8 key in sm2.key.
        let sm2 = Sm2SigningKey::generate();
        std::fs::write(dir.join("sm2.key"), sm2.to_pkcs8_pem().unwrap().as_str()).unwrap();
        let ring = KeyRing::load_or_create_with_env(&dir, |_| None).unwrap();
        assert_eq!(ring.verifying_key(), sm2.public());
        std::fs::write(dir.join("sm4.keys"), "k1 nothex\n").unwrap();
        let e = KeyRing::load_or_create_with_env(&dir, |_| None).unwrap_err().to_string();
        assert!(e.contains("sm4.keys"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotated_files_keep_old_keys_and_retired_public_keys_are_found_by_id() {
        let dir = temp_dir();
        let first = KeyRing::load_or_create_with_env(&dir, |_| None).unwrap();
        let sealed = first.encrypt_field("v", "c");
        let old_id = first.signing_key_id();
        assert_eq!(first.verifying_key_for(&old_id), Some(first.verifying_key()));
        assert_eq!(first.verifying_key_for("0000000000000000"), None);

        assert_eq!(KeyRing::rotate_sm4_in(&dir).unwrap(), "k2");
        let (retired, new_id) = KeyRing::rotate_sm2_in(&dir).unwrap();
        assert_eq!(retired, old_id);
        assert!(dir.join("sm2-retired").join(format!("{old_id}.pub")).exists());

        let second = KeyRing::load_with_env(&dir, |_| None).unwrap();
        assert_eq!(second.sm4_key_ids(), ["k1", "k2"]);
        assert!(second.encrypt_field("v", "c").starts_with("v1.k2."));
        assert_eq!(second.decrypt_field(&sealed, "c").unwrap(), "v", "old SM4 keys stay");
        assert_eq!(second.signing_key_id(), new_id);
        assert_ne!(new_id, old_id);
        assert_eq!(second.verifying_key_for(&old_id), Some(first.verifying_key()), "retired key found by id");
        assert_eq!(second.verifying_key_for(&new_id), Some(second.verifying_key()));
        assert_eq!(second.retired_signing_key_ids(), [old_id.as_str()]);
        let pub_hex = std::fs::read_to_string(dir.join("sm2.pub")).unwrap();
        assert_eq!(pub_hex.trim(), second.verifying_key().to_hex(), "public files follow the new key");

        // A retired key given as PEM is found by the id of its content, whatever the file name.
        let other = Sm2SigningKey::generate().public();
        std::fs::write(dir.join("sm2-retired/any-name.pub"), other.to_public_key_pem().unwrap()).unwrap();
        let third = KeyRing::load_with_env(&dir, |_| None).unwrap();
        assert_eq!(third.verifying_key_for(&key_id(&other)), Some(other));

        // Loading never creates keys.
        std::fs::remove_file(dir.join("sm2.key")).unwrap();
        let e = KeyRing::load_with_env(&dir, |_| None).unwrap_err().to_string();
        assert!(e.contains("sm2.key"), "{e}");
        assert!(!dir.join("sm2.key").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_reusing_an_id_replaces_the_key() {
        let mut ring = KeyRing::ephemeral();
        let old = ring.encrypt_field("v", "c");
        ring.rotate_sm4("k2", Sm4Key::generate());
        ring.rotate_sm4("k2", Sm4Key::generate());
        assert_eq!(ring.sm4_key_ids(), ["k1", "k2"]);
        assert_eq!(ring.decrypt_field(&old, "c").unwrap(), "v");
    }
}
