//! `hutong bench ingest` and `scripts/replay-rows.py` run end to end on a small data set: the
//! figures in docs/BENCHMARKS.md come from these commands, so they must keep working and keep
//! measuring what they say (every row committed, the committer's CPU and WAL bytes read).

use std::path::Path;
use std::process::{Command, Stdio};

/// The number before `label` on the line that contains `line`.
fn figure(out: &str, line: &str, label: &str) -> f64 {
    let text = out.lines().find(|l| l.contains(line)).unwrap_or_else(|| panic!("no line with {line:?} in:\n{out}"));
    let before = text.split(label).next().unwrap_or_default();
    before
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure before {label:?} in {text:?}"))
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn bench_ingest_commits_every_resource_twice_and_the_replay_copies_them() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hutong"))
        .args(["bench", "ingest", "--patients", "6", "--extra-observations", "4", "--seed", "7", "--data"])
        .arg(data.path())
        .env_remove("HUTONG_DATABASE_URL") // the embedded store, whatever the caller's environment
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let resources = figure(&stdout, "resident bundles", "resources,") as i64;
    assert!(resources > 6 * 8, "{stdout}");
    // The rows-only stage and the engine stage each name the committer's work per resource.
    for line in ["store commit (rows only)", "CPU time of this process"] {
        // CPU time comes in 10 ms ticks, which a run this small may not reach.
        assert!(figure(&stdout, line, "µs of CPU") >= 0.0, "{stdout}");
        // Bytes are exact: a resource's rows fill at least one page of the WAL between them.
        assert!(figure(&stdout, line, "KB of WAL") >= 0.5, "{stdout}");
    }
    let db = data.path().join("hutong.db");
    // Both stages wrote every resource: the rows-only stage under suffixed ids, the engine
    // under the Bundles' own (besides the reference data the bench loads first).
    assert_eq!(count(&db, "SELECT count(*) FROM resource WHERE id LIKE '%-raw%'"), resources);
    let engine_written = count(&db, "SELECT count(*) FROM resource WHERE id NOT LIKE '%-raw%'");
    assert!(engine_written >= resources, "{engine_written} < {resources}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/replay-rows.py");
    let total = count(&db, "SELECT count(*) FROM resource");
    let index_rows = count(&db, "SELECT count(*) FROM idx_token");
    for mode in ["full", "deferred"] {
        let copy = data.path().join(format!("replay-{mode}.db"));
        let out = Command::new("python3").arg(&script).arg(&db).arg(mode).arg("50").arg(&copy).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.starts_with(&format!("{mode}: ")), "{stdout}");
        assert_eq!(count(&copy, "SELECT count(*) FROM resource"), total);
        assert_eq!(count(&copy, "SELECT count(*) FROM idx_token"), index_rows);
        // Both modes end with every index of the store.
        assert_eq!(
            count(&copy, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"),
            count(&db, "SELECT count(*) FROM sqlite_master WHERE type = 'index'")
        );
    }
}
