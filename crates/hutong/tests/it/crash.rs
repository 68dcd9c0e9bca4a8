//! Crash durability: `kill -9` during `hutong import` loses no committed transaction and exposes
//! no half-applied one; re-running the import completes it, and importing again changes nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::{Ctx, ResourceStore};

const BUNDLES: usize = 400;
const OBSERVATIONS: usize = 5;

fn uuid(n: usize, k: usize) -> String {
    format!("{n:08x}-0000-4000-8000-{k:012x}")
}

/// Writes `BUNDLES` transaction files, each a Patient and its Observations.
fn write_bundles(dir: &Path) {
    for n in 0..BUNDLES {
        let patient = format!("urn:uuid:{}", uuid(n, 0));
        let mut entries = vec![json!({
            "fullUrl": patient,
            "resource": {"resourceType": "Patient", "name": [{"family": format!("测试{n}")}], "gender": "female"},
            "request": {"method": "POST", "url": "Patient"}
        })];
        for k in 1..=OBSERVATIONS {
            entries.push(json!({
                "fullUrl": format!("urn:uuid:{}", uuid(n, k)),
                "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "血糖"},
                             "subject": {"reference": patient}, "valueQuantity": {"value": k, "unit": "mmol/L"}},
                "request": {"method": "POST", "url": "Observation"}
            }));
        }
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        std::fs::write(dir.join(format!("bundle-{n:04}.json")), bundle.to_string()).unwrap();
    }
}

fn import(data: &Path, input: &Path, database: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hutong"));
    cmd.arg("import")
        .arg(input)
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("RUST_LOG", "warn");
    if let Some(url) = database {
        cmd.arg("--database").arg(url);
    }
    cmd
}

fn committed_files(data: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(data.join("import-journal.json")) else { return vec![] };
    let journal: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
    journal["files"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// (bundles fully present, bundles absent); panics on a half-applied bundle.
async fn census(store: &dyn ResourceStore) -> (Vec<usize>, usize) {
    let ctx = Ctx::system();
    let (mut present, mut absent) = (Vec::new(), 0);
    for n in 0..BUNDLES {
        let keys: Vec<(String, String)> = (0..=OBSERVATIONS)
            .map(|k| (if k == 0 { "Patient" } else { "Observation" }.to_string(), uuid(n, k)))
            .collect();
        let found = store.current_versions(&ctx, &keys).await.unwrap();
        let count = found.iter().filter(|f| f.is_some()).count();
        assert!(count == 0 || count == keys.len(), "bundle {n} is half applied: {count} of {} resources", keys.len());
        assert!(
            found.iter().flatten().all(|(v, deleted)| *v == 1 && !deleted),
            "bundle {n}: unexpected versions {found:?}"
        );
        if count == 0 { absent += 1 } else { present.push(n) }
    }
    (present, absent)
}

async fn scenario(database: Option<String>, open: impl AsyncFn(&Path) -> Arc<dyn ResourceStore>) {
    let input = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_bundles(input.path());
    let mut child = import(data.path(), input.path(), database.as_deref()).spawn().unwrap();
    let started = Instant::now();
    while committed_files(data.path()).len() < 20 {
        assert!(started.elapsed() < Duration::from_secs(120), "the import made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the import ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let journal = committed_files(data.path());
    let store = open(data.path()).await;
    let (present, absent) = census(store.as_ref()).await;
    assert!(present.len() >= journal.len(), "every bundle the journal recorded is present");
    for key in &journal {
        let n: usize = key.split("bundle-").nth(1).unwrap()[..4].parse().unwrap();
        assert!(present.contains(&n), "journaled bundle {n} is missing after the crash");
    }
    assert!(absent > 0, "the kill came too late to test anything ({} of {BUNDLES} in)", present.len());
    drop(store);

    let status = import(data.path(), input.path(), database.as_deref()).status().unwrap();
    assert!(status.success(), "the resumed import succeeds");
    let store = open(data.path()).await;
    let (present, absent) = census(store.as_ref()).await;
    assert_eq!((present.len(), absent), (BUNDLES, 0));
    let outbox = store.outbox_read(0, 100_000).await.unwrap().len();
    assert_eq!(outbox, BUNDLES * (OBSERVATIONS + 1), "one event per committed resource, none doubled by the resume");
    drop(store);

    // A full re-import from scratch (no journal) changes nothing: identical updates are no-ops.
    std::fs::remove_file(data.path().join("import-journal.json")).unwrap();
    let status = import(data.path(), input.path(), database.as_deref()).status().unwrap();
    assert!(status.success());
    let store = open(data.path()).await;
    census(store.as_ref()).await; // asserts every version is still 1
    assert_eq!(store.outbox_read(0, 100_000).await.unwrap().len(), outbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_import_on_sqlite() {
    scenario(None, async |data: &Path| -> Arc<dyn ResourceStore> {
        let store: Arc<dyn ResourceStore> = Arc::new(store_sqlite::SqliteStore::open(data).unwrap());
        store
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_import_on_postgres() {
    let Some(url) = store_postgres::testing::server_url() else { return };
    let db = store_postgres::testing::create_database(&url, "hutong_crash").await.unwrap();
    let db2 = db.clone();
    scenario(Some(db), async move |_: &Path| -> Arc<dyn ResourceStore> {
        let store: Arc<dyn ResourceStore> = Arc::new(store_postgres::PgStore::connect(&db2).await.unwrap());
        store
    })
    .await;
}
