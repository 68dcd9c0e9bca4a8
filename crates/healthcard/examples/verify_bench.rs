//! Offline verification throughput: `cargo run --release -p healthcard --example verify_bench`.
//! Issues one dynamic code with both 三码融合 tokens, then verifies it repeatedly on one thread
//! and on every core (results in docs/BENCHMARKS.md). The key is looked up by id on every
//! call, as a verifier does; clones of it share its prepared table, built once (timed apart).

use crypto::sm2::Sm2SigningKey;
use healthcard::{CardId, DynamicCode, payload::verify_offline};
use std::time::Instant;

fn main() {
    let key = Sm2SigningKey::generate();
    let key_id = "0123456789abcdef";
    let now = 1_800_000_000;
    let code = DynamicCode {
        card_id: CardId::derive(b"benchmark holder"),
        issuer: "350000".into(),
        issued_at: now,
        lifetime: 60,
        insurance_token: Some("EC-VOUCHER-000001".into()),
        payment_token: Some("PAY-000001".into()),
    };
    let (payload, _) = code.issue(&key, key_id).expect("issue");
    let public = key.public();
    let lookup = |id: &str| (id == key_id).then(|| public.clone());

    // The key's table is built by `prepare` (or after a few verifications), the generator's
    // by the first verification on the fast path: both timed apart from the steady state.
    let start = Instant::now();
    public.prepare();
    let prepare = start.elapsed();
    let start = Instant::now();
    verify_offline(&payload, lookup, now + 1).expect("verifies");
    let first = start.elapsed();
    println!(
        "key table {:.1} ms, first fast verification {:.1} ms (builds the generator table)",
        prepare.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );

    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        verify_offline(&payload, lookup, now + 1).expect("verifies");
    }
    let elapsed = start.elapsed();
    let one = n as f64 / elapsed.as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..n {
                    verify_offline(&payload, lookup, now + 1).expect("verifies");
                }
            });
        }
    });
    let all = (n * threads) as f64 / start.elapsed().as_secs_f64();
    // A corrupted code must still be refused on the fast path.
    let mut bad = payload.clone().into_bytes();
    let last = bad.len() - 5;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).expect("ASCII");
    assert!(verify_offline(&bad, lookup, now + 1).is_err(), "a corrupted code verifies");
    println!("payload {} characters", payload.len());
    println!(
        "offline verification: {one:.0}/s on one thread ({:.1} µs each), {all:.0}/s on {threads} threads",
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
}
