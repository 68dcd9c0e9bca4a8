//! Key rotation without restart: the key folder is rotated on disk and the running `Auth` is
//! handed the reloaded ring.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use auth::{Auth, AuthConfig, Clock, NewUser};
use crypto::KeyRing;

use super::{Fixture, START};

fn staff(username: &str) -> NewUser {
    NewUser {
        username: username.into(),
        role: "doctor".into(),
        password: Some("Pass#word1".into()),
        organization: Some("h1".into()),
        ..Default::default()
    }
}

async fn log_in(f: &Fixture, username: &str, totp: &str) {
    let secret = crypto::totp::base32_decode(totp).unwrap();
    let code = crypto::totp::generate(&secret, f.now() as u64, 6);
    f.token(&[("grant_type", "password"), ("username", username), ("password", "Pass#word1"), ("totp", &code)])
        .await
        .unwrap_or_else(|e| panic!("{username} cannot log in: {e}"));
}

#[tokio::test]
async fn a_reloaded_ring_decrypts_old_and_new_values_and_encrypts_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let store: Arc<dyn store::ResourceStore> = Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap());
    let clock = Arc::new(AtomicI64::new(START));
    let reading = clock.clone();
    let config = AuthConfig { clock: Clock::from_fn(move || reading.load(Ordering::SeqCst)), ..AuthConfig::default() };
    let ring = KeyRing::load_or_create_with_env(&keys, |_| None).unwrap();
    let auth = Auth::new(store, Arc::new(ring), config, Arc::new(auth::FileSms::new(dir.path().join("sms.txt"))));
    let f = Fixture { auth, clock, _dir: dir };

    let (before, _, before_totp) = f.auth.create_user(staff("dr.before")).await.unwrap();
    assert!(before.totp_secret.as_deref().unwrap().starts_with("v1.k1."));
    let (resident, _, _) = f
        .auth
        .create_user(NewUser {
            username: "wang.fang".into(),
            role: "resident".into(),
            password: Some("Pass#word1".into()),
            patients: vec!["p1".into()],
            id_number: Some("11010519491231002X".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    assert_eq!(KeyRing::rotate_sm4_in(&keys).unwrap(), "k2");
    f.auth.replace_keys(Arc::new(KeyRing::load_with_env(&keys, |_| None).unwrap()));
    assert_eq!(f.auth.keys().active_sm4_id(), "k2");

    let (after, _, after_totp) = f.auth.create_user(staff("dr.after")).await.unwrap();
    assert!(after.totp_secret.as_deref().unwrap().starts_with("v1.k2."), "new values use the new key");
    // Both TOTP secrets open (k1 and k2), so both log in on the same Auth.
    log_in(&f, "dr.before", &before_totp.unwrap()).await;
    log_in(&f, "dr.after", &after_totp.unwrap()).await;
    // The old ID number still decrypts and its blind index still finds the account.
    let sealed = resident.id_number.as_deref().unwrap();
    assert!(sealed.starts_with("v1.k1."));
    assert_eq!(f.auth.keys().decrypt_field(sealed, "user.id_number").unwrap(), "11010519491231002X");
    let found = f.auth.find_by_id_number("11010519491231002X").await.unwrap().unwrap();
    assert_eq!(found.id, resident.id);
}
