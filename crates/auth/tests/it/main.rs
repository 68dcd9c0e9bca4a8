//! The identity service driven directly over a real SQLite store, with a clock the tests move
//! by hand: token expiry, idle timeout, refresh rotation and reuse, lockout, signed JWT client
//! assertions, and parsers fed hostile input.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use auth::{Auth, AuthConfig, AuthError, Clock};
use serde_json::Value;

mod assertions;
mod fuzz;
mod keys;
mod sessions;

/// 2030-03-17T17:46:40Z: far from the real time, so nothing passes by reading the system clock.
const START: i64 = 1_900_000_000;

struct Fixture {
    auth: Auth,
    clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn advance(&self, seconds: i64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    async fn token(&self, pairs: &[(&str, &str)]) -> Result<Value, AuthError> {
        self.auth.token_at(Some(ENDPOINT), &form(pairs), None, None).await
    }
}

/// The token endpoint URL the tests' assertions name.
const ENDPOINT: &str = "https://hutong.example/oauth2/token";

fn fixture_with(config: AuthConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn store::ResourceStore> = Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap());
    let clock = Arc::new(AtomicI64::new(START));
    let reading = clock.clone();
    let config = AuthConfig { clock: Clock::from_fn(move || reading.load(Ordering::SeqCst)), ..config };
    let auth = Auth::new(
        store,
        Arc::new(crypto::KeyRing::ephemeral()),
        config,
        Arc::new(auth::FileSms::new(dir.path().join("sms.txt"))),
    );
    Fixture { auth, clock, _dir: dir }
}

fn fixture() -> Fixture {
    fixture_with(AuthConfig::default())
}

fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The OAuth error code and description, or a panic naming what came instead.
fn oauth_error(result: Result<Value, AuthError>) -> (u16, &'static str, String) {
    match result {
        Err(AuthError::OAuth { status, code, description }) => (status, code, description),
        other => panic!("expected an OAuth error, got {other:?}"),
    }
}

/// SplitMix64: a small seeded generator, so every run feeds the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
