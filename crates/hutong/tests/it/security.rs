//! Security as operators and clients meet it through the real binary: the admin CLI's clients
//! work at once with the standard grant, demo accounts log in, `hutong audit verify` finds
//! every kind of tampering done directly in the database, and `hutong audit prune` keeps the
//! legal minimum and leaves a log that still verifies, on both backends; `hutong admin
//! rotate-keys` keeps old checkpoints verifiable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::serve::{Server, start};

fn hutong(args: &[&str], data: &Path, database: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hutong"));
    cmd.args(args).arg("--data").arg(data);
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// A minimal HTTP/1.1 request: (status, body).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(stream, "{head}\r\n{body}").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        super::serve::dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn token(server: &Server, form: &str) -> (u16, Value) {
    let (status, body) =
        http(&server.addr, "POST", "/oauth2/token", &[("Content-Type", "application/x-www-form-urlencoded")], form);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn admin_clients_and_demo_accounts_work_at_once() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), true);
    let (status, _) = http(&server.addr, "GET", "/fhir/Patient", &[], "");
    assert_eq!(status, 401);

    // A client created by the admin command while the server runs works immediately.
    let out = hutong(&["admin", "create-client", "--name", "his", "--scopes", "system/*.*"], data.path(), None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, secret) = (created["client_id"].as_str().unwrap(), created["client_secret"].as_str().unwrap());
    let (status, body) =
        token(&server, &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"));
    assert_eq!(status, 200, "{body}");
    let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let (status, body) = http(&server.addr, "GET", "/fhir/Patient?_summary=count", &[("Authorization", &bearer)], "");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["total"], 390, "300 residents, 90 registered twice");

    // Demo staff log in with password + TOTP; the demo resident sees only their own records.
    let secret = crypto::totp::base32_decode("HUTONGDEMOTOTPKEY234").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let code = crypto::totp::generate(&secret, now, 6);
    let (status, body) =
        token(&server, &format!("grant_type=password&username=doctor&password=Hutong%232026&totp={code}"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = token(&server, "grant_type=password&username=resident&password=Hutong%232026");
    assert_eq!(status, 200, "{body}");
    let resident = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let (_, body) = http(&server.addr, "GET", "/fhir/Patient?_summary=count", &[("Authorization", &resident)], "");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["total"], 2, "own record and a dependant's");
    let (status, body) = http(&server.addr, "GET", "/.well-known/smart-configuration", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("/oauth2/token"));
    let demo: Value =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("demo-client.json")).unwrap()).unwrap();
    assert!(demo["client_secret"].as_str().is_some());
    // Users: a resident without a valid ID number is refused with the reason.
    let out = hutong(
        &[
            "admin",
            "create-user",
            "--username",
            "r9",
            "--role",
            "resident",
            "--patient",
            "x",
            "--id-number",
            "110105194912310021",
        ],
        data.path(),
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("check character should be X"));
}

/// Direct SQL on the store of a data folder or a PostgreSQL database.
enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(tokio::runtime::Runtime, tokio_postgres::Client),
}

impl Db {
    fn exec(&mut self, sql: &str) {
        match self {
            Db::Sqlite(c) => {
                c.execute_batch(sql).unwrap();
            }
            Db::Postgres(rt, c) => rt.block_on(c.batch_execute(sql)).unwrap(),
        }
    }

    /// The single integer a query returns.
    fn number(&mut self, sql: &str) -> i64 {
        match self {
            Db::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).unwrap(),
            Db::Postgres(rt, c) => rt.block_on(c.query_one(sql, &[])).unwrap().get(0),
        }
    }
}

fn verify(data: &Path, database: Option<&str>) -> (bool, String) {
    let out = hutong(&["audit", "verify"], data, database);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tamper_suite(data: &Path, database: Option<&str>, mut db: Db) {
    for i in 0..6 {
        let out = hutong(
            &["admin", "create-client", "--name", &format!("c{i}"), "--scopes", "system/*.read"],
            data,
            database,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = hutong(&["audit", "checkpoint"], data, database);
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed checkpoint at entry 6"), "{out:?}");
    for i in 6..10 {
        hutong(&["admin", "create-client", "--name", &format!("c{i}"), "--scopes", "system/*.read"], data, database);
    }
    let (ok, report) = verify(data, database);
    assert!(ok, "{report}");
    assert!(report.contains("10 entries") && report.contains("intact"), "{report}");

    // Edit one field.
    db.exec("UPDATE audit_log SET actor = 'user/intruder' WHERE seq = 3");
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(report.contains("entry 3: content does not match its hash (modified)"), "{report}");
    db.exec("UPDATE audit_log SET actor = 'platform' WHERE seq = 3");
    assert!(verify(data, database).0, "restored");

    // Delete one entry.
    db.exec("CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = 5; DELETE FROM audit_log WHERE seq = 5");
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(report.contains("entry 5: missing (deleted)"), "{report}");
    db.exec("INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved");
    assert!(verify(data, database).0, "restored");

    // Cut off the head where no signed checkpoint anchors what follows.
    db.exec("CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq <= 2; DELETE FROM audit_log WHERE seq <= 2");
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(
        report.contains(
            "entries 1–2: missing (head truncated without an anchor: no validly signed checkpoint at entry 2)"
        ),
        "{report}"
    );
    db.exec("INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved");
    assert!(verify(data, database).0, "restored");

    // Reorder two entries (swap their positions).
    db.exec("UPDATE audit_log SET seq = -7 WHERE seq = 7; UPDATE audit_log SET seq = 7 WHERE seq = 8; UPDATE audit_log SET seq = 8 WHERE seq = -7");
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(
        report.contains("entry 7: content does not match") && report.contains("entry 8: content does not match"),
        "{report}"
    );
    assert!(report.contains("entry 7: does not follow entry 6 but links to entry 8"), "{report}");
    db.exec("UPDATE audit_log SET seq = -7 WHERE seq = 7; UPDATE audit_log SET seq = 7 WHERE seq = 8; UPDATE audit_log SET seq = 8 WHERE seq = -7");
    assert!(verify(data, database).0, "restored");

    // Insert an entry in the middle, renumbering the rest. Its forged hash differs from entry
    // 4's in the first two digits (a fixed '00' prefix equalled it whenever entry 4's hash began
    // with 00, one run in 256, and entry 6 then seemed to follow it).
    db.exec(
        "UPDATE audit_log SET seq = -(seq + 1) WHERE seq > 4; UPDATE audit_log SET seq = -seq WHERE seq < 0; \
         INSERT INTO audit_log (seq, recorded, action, outcome, actor, role, organization, purpose, entity, patients, detail, prev_hash, hash) \
         SELECT 5, recorded, 'read', 'success', 'user/ghost', 'doctor', '', 'TREAT', 'Patient/p1', 'p1', '{}', hash, \
         CASE WHEN substr(hash, 1, 2) = '00' THEN 'ff' ELSE '00' END || substr(hash, 3) FROM audit_log WHERE seq = 4",
    );
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(report.contains("entry 5: content does not match"), "{report}");
    assert!(report.contains("entry 6: does not follow entry 5 but links to entry 4"), "{report}");
    assert!(report.contains("checkpoint at entry 6"), "the signed checkpoint no longer matches: {report}");
}

#[test]
fn audit_verify_finds_tampering_on_sqlite() {
    let data = tempfile::tempdir().unwrap();
    let out = hutong(&["audit", "verify"], data.path(), None);
    assert!(out.status.success(), "an empty log verifies");
    let conn = rusqlite::Connection::open(data.path().join("hutong.db")).unwrap();
    tamper_suite(data.path(), None, Db::Sqlite(conn));
}

#[test]
fn audit_verify_finds_tampering_on_postgres() {
    let Some(url) = store_postgres::testing::server_url() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let db = rt.block_on(store_postgres::testing::create_database(&url, "hutong_audit")).unwrap();
    let (client, connection) = rt.block_on(tokio_postgres::connect(&db, tokio_postgres::NoTls)).unwrap();
    rt.spawn(connection);
    let data = tempfile::tempdir().unwrap();
    // The first command creates the schema.
    assert!(hutong(&["audit", "verify"], data.path(), Some(&db)).status.success());
    tamper_suite(data.path(), Some(&db), Db::Postgres(rt, client));
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Audit entries as a server would have written them 400 days ago (entity `Observation/o{seq}`,
/// some touching Patient `p-old`), sealed by checkpoints signed with the data folder's key: the
/// one at entry 4 then, the one at entry 6 only ten days ago.
fn seed_old_log(data: &Path, database: Option<&str>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store: std::sync::Arc<dyn store::ResourceStore> = match database {
            Some(url) => std::sync::Arc::new(store_postgres::PgStore::connect(url).await.unwrap()),
            None => std::sync::Arc::new(store_sqlite::SqliteStore::open(data).unwrap()),
        };
        let keys = crypto::KeyRing::load_or_create(&data.join("keys")).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let old = now - 400 * DAY_MS;
        for seq in 1..=6 {
            let patients = if seq % 2 == 1 { vec!["p-old".to_string()] } else { Vec::new() };
            let record = store::AuditRecord {
                recorded: old + seq,
                action: "read".into(),
                outcome: "success".into(),
                actor: "user/u-doctor".into(),
                role: "doctor".into(),
                purpose: "TREAT".into(),
                entity: format!("Observation/o{seq}"),
                patients,
                detail: "{}".into(),
                ..store::AuditRecord::default()
            };
            store.commit_audited(&store::Ctx::system(), Vec::new(), vec![record]).await.unwrap();
        }
        let entries = store.audit_read(0, 10).await.unwrap();
        for (seq, signed_at) in [(4, old + 10), (6, now - 10 * DAY_MS)] {
            let cp = auth::audit::sign_checkpoint(&keys, seq, &entries[seq as usize - 1].hash, signed_at);
            store.audit_checkpoint_put(&cp).await.unwrap();
        }
    });
}

/// `hutong serve` with the given extra arguments is expected to refuse to start: its stderr.
fn serve_refuses(data: &Path, database: Option<&str>, extra: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hutong"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra).arg("--data").arg(data);
    cmd.env("HUTONG_MLLP_LISTEN", "off");
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("hutong serve {extra:?} started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!child.wait().unwrap().success(), "{stderr}");
    stderr
}

fn retention_suite(data: &Path, database: Option<&str>, mut db: Db) {
    // Less than the legal minimum is refused, by the command and by the server at start-up.
    let out = hutong(&["audit", "prune", "--retention-days", "90"], data, database);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--retention-days 90 is below the legal minimum of 180 days"),
        "{out:?}"
    );
    let stderr = serve_refuses(data, database, &["--audit-retention-days", "179"]);
    assert!(stderr.contains("--audit-retention-days 179 is below the legal minimum of 180 days"), "{stderr}");

    assert!(hutong(&["audit", "verify"], data, database).status.success(), "creates the schema and the keys");
    seed_old_log(data, database);
    let out = hutong(
        &[
            "admin",
            "create-user",
            "--username",
            "res-old",
            "--role",
            "resident",
            "--patient",
            "p-old",
            "--id-number",
            "11010519491231002X",
            "--password",
            "Hutong#2026",
        ],
        data,
        database,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A tampered stretch is not pruned away: that would destroy the evidence.
    db.exec("UPDATE audit_log SET actor = 'user/intruder' WHERE seq = 2");
    let out = hutong(&["audit", "prune"], data, database);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the entries 1–4 due for pruning do not verify (entry 2: content does not match its hash")
            && stderr.contains("nothing was pruned"),
        "{stderr}"
    );
    db.exec("UPDATE audit_log SET actor = 'user/u-doctor' WHERE seq = 2");
    assert_eq!(db.number("SELECT count(*) FROM audit_log"), 7);

    // The default retention prunes through the checkpoint at 4 (the one at 6 is too recent).
    let out = hutong(&["audit", "prune"], data, database);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("pruned 4 audit entries (1–4) older than 180 days") && stdout.contains("starts at entry 5"),
        "{stdout}"
    );
    assert_eq!(db.number("SELECT min(seq) FROM audit_log"), 5);
    assert_eq!(db.number("SELECT count(*) FROM audit_patient WHERE seq <= 4"), 0, "their patient rows went too");
    assert_eq!(db.number("SELECT count(*) FROM audit_patient WHERE patient_key = 'p-old'"), 1);
    assert_eq!(
        db.number(
            "SELECT count(*) FROM audit_log WHERE action = 'audit-prune' AND actor = 'platform' AND role = 'operator'"
        ),
        1,
        "the prune is itself on record"
    );
    let (ok, report) = verify(data, database);
    assert!(ok, "{report}");
    assert!(report.contains("(entries 1–4 pruned by retention)") && report.contains("intact"), "{report}");
    let out = hutong(&["audit", "prune", "--retention-days", "365"], data, database);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to prune"), "{out:?}");

    // Deleting the anchoring checkpoint afterwards leaves the cut unexplained.
    db.exec(
        "CREATE TABLE saved AS SELECT * FROM audit_checkpoint WHERE seq = 4; DELETE FROM audit_checkpoint WHERE seq = 4",
    );
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(
        report.contains(
            "entries 1–4: missing (head truncated without an anchor: no validly signed checkpoint at entry 4)"
        ),
        "{report}"
    );
    db.exec("INSERT INTO audit_checkpoint SELECT * FROM saved; DROP TABLE saved");
    assert!(verify(data, database).0, "restored");

    // Entries beyond the prune point are still each accounted for: the first remaining one…
    db.exec("CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = 5; DELETE FROM audit_log WHERE seq = 5");
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(report.contains("entry 5: missing (deleted)") && !report.contains("head truncated"), "{report}");
    db.exec("INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved");
    // …and one further on.
    db.exec("CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = 6; DELETE FROM audit_log WHERE seq = 6");
    let (ok, report) = verify(data, database);
    assert!(!ok);
    assert!(report.contains("entry 6: missing (deleted)"), "{report}");
    assert!(report.contains("checkpoint at entry 6: the signed entry is not in the log"), "{report}");
    db.exec("INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved");
    assert!(verify(data, database).0, "restored");

    // The resident still sees who accessed the record, for what remains (o5, not o1 or o3).
    if database.is_none() {
        let server = start(data, false);
        let (status, body) = token(&server, "grant_type=password&username=res-old&password=Hutong%232026");
        assert_eq!(status, 200, "{body}");
        let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());
        let (status, body) = http(&server.addr, "GET", "/audit/patient/p-old", &[("Authorization", &bearer)], "");
        assert_eq!(status, 200, "{body}");
        let bundle: Value = serde_json::from_str(&body).unwrap();
        let seen: Vec<&str> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["resource"]["entity"][0]["what"]["reference"].as_str())
            .collect();
        assert_eq!(seen, ["Observation/o5"], "{body}");
    }
}

#[test]
fn audit_prune_keeps_the_law_and_the_chain_on_sqlite() {
    let data = tempfile::tempdir().unwrap();
    let out = hutong(&["audit", "verify"], data.path(), None);
    assert!(out.status.success());
    let conn = rusqlite::Connection::open(data.path().join("hutong.db")).unwrap();
    retention_suite(data.path(), None, Db::Sqlite(conn));
}

#[test]
fn audit_prune_keeps_the_law_and_the_chain_on_postgres() {
    let Some(url) = store_postgres::testing::server_url() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let db = rt.block_on(store_postgres::testing::create_database(&url, "hutong_retention")).unwrap();
    let (client, connection) = rt.block_on(tokio_postgres::connect(&db, tokio_postgres::NoTls)).unwrap();
    rt.spawn(connection);
    let data = tempfile::tempdir().unwrap();
    assert!(hutong(&["audit", "verify"], data.path(), Some(&db)).status.success(), "creates the schema");
    retention_suite(data.path(), Some(&db), Db::Postgres(rt, client));
}

#[test]
fn lost_keys_are_an_error_not_a_silent_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let made = hutong(&["admin", "create-client", "--name", "lab", "--scopes", "system/*.read"], data, None);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // The keys go missing (a wrong --keys, a lost volume): nothing may generate new ones.
    std::fs::rename(data.join("keys"), data.join("keys-elsewhere")).unwrap();
    let again = hutong(&["admin", "create-client", "--name", "lab2", "--scopes", "system/*.read"], data, None);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "must refuse");
    assert!(stderr.contains("key folder") && stderr.contains("user and client accounts"), "{stderr}");
    assert!(!data.join("keys").join("sm2.key").exists(), "no new keys were written");
    // Pointed at the right folder, it works.
    let elsewhere = data.join("keys-elsewhere");
    let ok = hutong(
        &[
            "admin",
            "create-client",
            "--name",
            "lab3",
            "--scopes",
            "system/*.read",
            "--keys",
            elsewhere.to_str().unwrap(),
        ],
        data,
        None,
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn rotated_keys_keep_the_audit_log_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let client = |name: &str| {
        let out = hutong(&["admin", "create-client", "--name", name, "--scopes", "system/*.read"], data, None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let rotate = |which: &[&str]| {
        let out = hutong(&[&["admin", "rotate-keys"], which].concat(), data, None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    for i in 0..3 {
        client(&format!("before{i}"));
    }
    let out = hutong(&["audit", "checkpoint"], data, None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed checkpoint at entry 3"), "{out:?}");

    let refused = hutong(&["admin", "rotate-keys"], data, None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--sm4, --sm2 or both"));

    let sm4 = rotate(&["--sm4"]);
    assert_eq!(sm4["sm4_key_id"], "k2");
    let lines = std::fs::read_to_string(data.join("keys/sm4.keys")).unwrap();
    assert_eq!(lines.lines().map(|l| l.split(' ').next().unwrap()).collect::<Vec<_>>(), ["k1", "k2"]);

    let sm2 = rotate(&["--sm2"]);
    let (old, new) = (sm2["sm2_retired_key_id"].as_str().unwrap(), sm2["sm2_key_id"].as_str().unwrap());
    assert_ne!(old, new);
    let retired = data.join("keys/sm2-retired").join(format!("{old}.pub"));
    assert!(retired.exists(), "the old public key is kept");

    for i in 0..2 {
        client(&format!("after{i}"));
    }
    let out = hutong(&["audit", "checkpoint"], data, None);
    // Three accounts, the two rotations (each recorded) and two more accounts.
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed checkpoint at entry 7"), "{out:?}");
    let (ok, report) = verify(data, None);
    assert!(ok, "{report}");
    // The --sm2 rotation signed the log (moved by the --sm4 rotation's record) with the old key.
    assert!(report.contains("7 entries, 3 checkpoints (last valid at entry 7)"), "{report}");
    assert!(report.contains(&format!("{old} (retired): 2, {new} (current): 1")), "{report}");

    // Without the retired public key the old checkpoint cannot be checked, and verify says why.
    std::fs::remove_file(&retired).unwrap();
    let (ok, report) = verify(data, None);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!(
            "checkpoint at entry 3: signed with SM2 key '{old}', which is neither the current key nor a retired one"
        )),
        "{report}"
    );
    assert!(report.contains(&format!("{old} (UNKNOWN): 2")), "{report}");
}

#[test]
fn imported_id_numbers_and_phones_never_reach_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bundle = dir.path().join("bundle.json");
    std::fs::write(
        &bundle,
        serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
            "request": {"method": "PUT", "url": "Patient/sealed-1"},
            "resource": {"resourceType": "Patient", "id": "sealed-1",
                "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "110105198001020038"}],
                "telecom": [{"system": "phone", "value": "13912345678"}]}}]})
        .to_string(),
    )
    .unwrap();
    let out = hutong(&["import", bundle.to_str().unwrap()], &data, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut bytes = Vec::new();
    for f in std::fs::read_dir(&data).unwrap() {
        let path = f.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("hutong.db") {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("sealed-1"), "the Patient was stored");
    assert!(!text.contains("110105198001020038") && !text.contains("13912345678"), "numbers in clear in the database");
}
