//! Passwords: argon2id (PHC strings) and the 等保 level-3 complexity rule.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::CryptoError;

/// Hashes a password (argon2id, default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    let salt_bytes = crate::random_bytes(16);
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| CryptoError::Malformed(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CryptoError::Malformed(e.to_string()))
}

/// Longest input [`verify_password`] will hash: a caller cannot make the server hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// At least 8 characters (at most 128) from at least three of: lower case, upper case, digits,
/// symbols (GB/T 22239-2019 8.1.4.1: complexity and regular change).
pub fn check_password_policy(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < 8 {
        return Err("the password must have at least 8 characters".into());
    }
    if n > 128 {
        return Err("the password must have at most 128 characters".into());
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    if classes.iter().filter(|c| **c).count() < 3 {
        return Err(
            "the password must mix at least three of: lower-case letters, upper-case letters, digits, symbols".into()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("Hutong#2026").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("Hutong#2026", &h));
        assert!(!verify_password("hutong#2026", &h));
        assert!(!verify_password("Hutong#2026", "not a hash"));
        assert_ne!(hash_password("Hutong#2026").unwrap(), h, "salted");
        assert!(!verify_password(&"A".repeat(MAX_PASSWORD_BYTES + 1), &h), "oversized input is refused");
        let params = PasswordHash::new(&h).unwrap();
        assert_eq!(params.algorithm.as_str(), "argon2id");
    }

    #[test]
    fn policy() {
        assert!(check_password_policy("Abcdefg1").is_ok());
        assert!(check_password_policy("abcdef1!").is_ok());
        assert!(check_password_policy("Abc1!").is_err(), "too short");
        assert!(check_password_policy("abcdefgh1").is_err(), "two classes only");
        assert!(check_password_policy("密码Abcd1234").is_ok());
    }
}
