//! Engine behaviour over a real SQLite store.

mod authz;
mod booking;
mod ground_truth;
mod healthcard;
mod internet;
mod matching;
mod mpi;
mod registries;
mod sealing;
mod search_aliases;
mod terminology;

use std::sync::Arc;

use engine::{Engine, EngineConfig, EngineError, ExportScope, ExportStatus, RequestOptions};
use serde_json::{Value, json};
use store::Ctx;
use store_sqlite::SqliteStore;

struct TestEngine {
    engine: Engine,
    _dir: tempfile::TempDir,
}

fn engine() -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let config = EngineConfig { export_dir: dir.path().join("export"), ..EngineConfig::default() };
    TestEngine { engine: Engine::new(store, config), _dir: dir }
}

fn opts() -> RequestOptions {
    RequestOptions { base_url: "http://test/fhir".into(), ..RequestOptions::default() }
}

fn ctx() -> Ctx {
    Ctx::system()
}

fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
    q.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["三"]}], "gender": "male", "birthDate": "1980-02-03",
           "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": format!("ID-{family}")}]})
}

fn body(r: &store::StoredResource) -> Value {
    serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
}

/// Every entry of a Bundle as `Type/id`, sorted (matches and included resources alike).
fn all_ids(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
        })
        .collect();
    v.sort();
    v
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn create_read_update_delete() {
    let t = engine();
    let e = &t.engine;
    let created = e.create(&ctx(), "Patient", patient("张"), &opts()).await.unwrap();
    assert!(created.created);
    let id = created.resource.id.clone();
    let read = e.read(&ctx(), "Patient", &id).await.unwrap();
    let mut doc = body(&read);
    assert_eq!(doc["meta"]["versionId"], "1");
    assert_eq!(doc["name"][0]["family"], "张");
    // Identical content: no new version.
    let same = e.update(&ctx(), "Patient", &id, doc.clone(), &opts()).await.unwrap();
    assert_eq!((same.resource.version, same.created), (1, false));
    doc["gender"] = json!("female");
    let updated = e.update(&ctx(), "Patient", &id, doc.clone(), &opts()).await.unwrap();
    assert_eq!(updated.resource.version, 2);
    // If-Match with a stale version.
    doc["gender"] = json!("other");
    let stale = RequestOptions { if_match: Some(1), ..opts() };
    let err = e.update(&ctx(), "Patient", &id, doc.clone(), &stale).await.unwrap_err();
    assert_eq!(err.http_status(), 412);
    assert_eq!(e.vread(&ctx(), "Patient", &id, "1").await.unwrap().version, 1);
    e.delete(&ctx(), "Patient", &id, &opts()).await.unwrap().expect("deleted");
    assert!(matches!(e.read(&ctx(), "Patient", &id).await, Err(EngineError::Gone(_))));
    assert!(e.delete(&ctx(), "Patient", &id, &opts()).await.unwrap().is_none(), "deleting twice is fine");
    assert!(matches!(e.read(&ctx(), "Patient", "nope").await, Err(EngineError::NotFound(_))));
    // Update-as-create with a client id.
    let mut p = patient("王");
    p["id"] = json!("wang-1");
    let made = e.update(&ctx(), "Patient", "wang-1", p, &opts()).await.unwrap();
    assert!(made.created);
}

#[tokio::test]
async fn bad_bodies_are_rejected() {
    let t = engine();
    let e = &t.engine;
    let err = e.create(&ctx(), "Patient", json!({"resourceType": "Observation"}), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert!(err.issues()[0].diagnostics.contains("resourceType is 'Observation'"));
    let err =
        e.update(&ctx(), "Patient", "a", json!({"resourceType": "Patient", "id": "b"}), &opts()).await.unwrap_err();
    assert!(err.issues()[0].diagnostics.contains("does not match"));
    let err = e
        .update(&ctx(), "Patient", "bad id!", json!({"resourceType": "Patient", "id": "bad id!"}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 400);
    let err = e.create(&ctx(), "Nope", json!({"resourceType": "Nope"}), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 404);
}

#[tokio::test]
async fn conditional_create_update_delete_and_patch() {
    let t = engine();
    let e = &t.engine;
    let o = RequestOptions { if_none_exist: Some("identifier=urn:oid:2.16.156.10011.1.3|ID-李".into()), ..opts() };
    let first = e.create(&ctx(), "Patient", patient("李"), &o).await.unwrap();
    let again = e.create(&ctx(), "Patient", patient("李"), &o).await.unwrap();
    assert!(!again.created);
    assert_eq!(first.resource.id, again.resource.id);
    let mut changed = patient("李");
    changed["gender"] = json!("female");
    let cu =
        e.conditional_update(&ctx(), "Patient", &pairs(&[("identifier", "ID-李")]), changed, &opts()).await.unwrap();
    assert_eq!((cu.resource.id.as_str(), cu.resource.version), (first.resource.id.as_str(), 2));
    let patched = e
        .patch(
            &ctx(),
            "Patient",
            &first.resource.id,
            json!([{"op": "replace", "path": "/gender", "value": "male"}]),
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(body(&patched.resource)["gender"], "male");
    let err = e
        .patch(&ctx(), "Patient", &first.resource.id, json!([{"op": "replace", "path": "/id", "value": "x"}]), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 400);
    e.create(&ctx(), "Patient", patient("赵"), &opts()).await.unwrap();
    let n = e.conditional_delete(&ctx(), "Patient", &pairs(&[("gender", "male")])).await.unwrap();
    assert_eq!(n, 2);
    let err =
        e.conditional_update(&ctx(), "Patient", &pairs(&[("_count", "1")]), patient("x"), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 400, "criteria are required");
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[tokio::test]
async fn transaction_resolves_references_and_is_atomic() {
    let t = engine();
    let e = &t.engine;
    let bundle = transaction(vec![
        json!({"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "resource": patient("陈"),
               "request": {"method": "POST", "url": "Patient"}}),
        json!({"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
               "resource": {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                            "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}, "valueQuantity": {"value": 5.6, "unit": "mmol/L"}},
               "request": {"method": "POST", "url": "Observation"}}),
    ]);
    let response = e.bundle(&ctx(), bundle, &opts()).await.unwrap();
    assert_eq!(response["type"], "transaction-response");
    let locations: Vec<&str> =
        response["entry"].as_array().unwrap().iter().map(|x| x["response"]["location"].as_str().unwrap()).collect();
    assert!(locations[0].starts_with("Patient/") && locations[1].starts_with("Observation/"));
    let patient_ref = locations[0].split("/_history").next().unwrap();
    let obs_id = locations[1].split('/').nth(1).unwrap();
    let obs = body(&e.read(&ctx(), "Observation", obs_id).await.unwrap());
    assert_eq!(obs["subject"]["reference"], patient_ref, "urn:uuid rewritten");
    let found = e.search(&ctx(), Some("Observation"), &pairs(&[("subject", patient_ref)]), &opts()).await.unwrap();
    assert_eq!(found["total"], 1);

    let outbox_before = e.store().outbox_read(0, 1000).await.unwrap().len();
    let failing = transaction(vec![
        json!({"resource": patient("回滚"), "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                            "subject": {"reference": "urn:uuid:99999999-9999-9999-9999-999999999999"}},
               "request": {"method": "POST", "url": "Observation"}}),
    ]);
    let err = e.bundle(&ctx(), failing, &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert!(err.issues()[0].diagnostics.contains("Bundle.entry[1]"), "{:?}", err.issues());
    let none = e.search(&ctx(), Some("Patient"), &pairs(&[("family", "回滚")]), &opts()).await.unwrap();
    assert_eq!(none["total"], 0, "nothing from the failed transaction exists");
    assert_eq!(e.store().outbox_read(0, 1000).await.unwrap().len(), outbox_before);

    // Conditional reference and a PUT in the same transaction.
    let conditional = transaction(vec![json!({
        "resource": {"resourceType": "Encounter", "id": "enc-1", "status": "finished",
                     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                     "subject": {"reference": "Patient?identifier=ID-陈"}},
        "request": {"method": "PUT", "url": "Encounter/enc-1"}})]);
    e.bundle(&ctx(), conditional, &opts()).await.unwrap();
    let enc = body(&e.read(&ctx(), "Encounter", "enc-1").await.unwrap());
    assert_eq!(enc["subject"]["reference"], patient_ref);
}

#[tokio::test]
async fn batch_reports_each_entry() {
    let t = engine();
    let e = &t.engine;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("甲"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "GET", "url": "Patient?family=甲"}},
    ]});
    let response = e.bundle(&ctx(), bundle, &opts()).await.unwrap();
    let statuses: Vec<&str> =
        response["entry"].as_array().unwrap().iter().map(|x| x["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "404 Not Found", "200 OK"]);
    assert_eq!(response["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(response["entry"][2]["resource"]["total"], 1);
}

#[tokio::test]
async fn search_paging_includes_and_history() {
    let t = engine();
    let e = &t.engine;
    let org = e
        .create(&ctx(), "Organization", json!({"resourceType": "Organization", "name": "福州市第一医院"}), &opts())
        .await
        .unwrap();
    for i in 0..7 {
        let mut p = patient(&format!("周{i}"));
        p["managingOrganization"] = json!({"reference": format!("Organization/{}", org.resource.id)});
        e.create(&ctx(), "Patient", p, &opts()).await.unwrap();
    }
    let page = e
        .search(
            &ctx(),
            Some("Patient"),
            &pairs(&[
                ("family", "周"),
                ("_count", "3"),
                ("_include", "Patient:organization"),
                ("_sort", "family"),
                ("_total", "accurate"),
            ]),
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(page["total"], 7);
    // Without _total, a full page does not pay for counting; the last page proves the total.
    let full = e.search(&ctx(), Some("Patient"), &pairs(&[("family", "周"), ("_count", "3")]), &opts()).await.unwrap();
    assert!(full.get("total").is_none(), "{full}");
    assert!(full["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"), "a full page links onwards");
    let last = e
        .search(&ctx(), Some("Patient"), &pairs(&[("family", "周"), ("_count", "3"), ("_offset", "6")]), &opts())
        .await
        .unwrap();
    assert_eq!(last["total"], 7);
    assert_eq!(ids(&page, "match").len(), 3);
    assert_eq!(ids(&page, "include"), [format!("Organization/{}", org.resource.id)]);
    let links = page["link"].as_array().unwrap();
    let next = links.iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap();
    assert!(next.contains("_offset=3") && next.starts_with("http://test/fhir/Patient?"), "{next}");
    let rev = e
        .search(
            &ctx(),
            Some("Organization"),
            &pairs(&[("_id", &org.resource.id), ("_revinclude", "Patient:organization")]),
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(ids(&rev, "include").len(), 7);
    let summary = e.search(&ctx(), Some("Patient"), &pairs(&[("_summary", "count")]), &opts()).await.unwrap();
    assert_eq!(summary["total"], 7);
    assert!(summary["entry"].as_array().unwrap().is_empty());
    let elements =
        e.search(&ctx(), Some("Patient"), &pairs(&[("_elements", "gender"), ("_count", "1")]), &opts()).await.unwrap();
    let r = &elements["entry"][0]["resource"];
    assert!(r.get("name").is_none() && r.get("gender").is_some());
    let err = e.search(&ctx(), Some("Patient"), &pairs(&[("nmae", "x")]), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    let lenient = RequestOptions { lenient: true, ..opts() };
    let ok = e.search(&ctx(), Some("Patient"), &pairs(&[("nmae", "x")]), &lenient).await.unwrap();
    assert_eq!(ok["entry"].as_array().unwrap().last().unwrap()["search"]["mode"], "outcome");

    let history = e.history(&ctx(), Some("Patient"), None, &pairs(&[("_count", "100")]), &opts()).await.unwrap();
    assert_eq!(history["total"], 7);
    assert_eq!(history["entry"][0]["request"]["method"], "POST");
    let err = e.history(&ctx(), None, None, &pairs(&[("_since", "yesterday")]), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
}

#[tokio::test]
async fn everything_and_export() {
    let t = engine();
    let e = &t.engine;
    let org = e
        .create(&ctx(), "Organization", json!({"resourceType": "Organization", "name": "医院"}), &opts())
        .await
        .unwrap();
    let p = e.create(&ctx(), "Patient", patient("吴"), &opts()).await.unwrap();
    let other = e.create(&ctx(), "Patient", patient("郑"), &opts()).await.unwrap();
    for (pid, code) in [(&p.resource.id, "a"), (&p.resource.id, "b"), (&other.resource.id, "c")] {
        e.create(
            &ctx(),
            "Encounter",
            json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"text": code}],
            "subject": {"reference": format!("Patient/{pid}")},
            "serviceProvider": {"reference": format!("Organization/{}", org.resource.id)}}),
            &opts(),
        )
        .await
        .unwrap();
    }
    let all = e.everything(&ctx(), &p.resource.id, &[], &opts()).await.unwrap();
    let mut got = ids(&all, "match");
    got.sort();
    assert_eq!(got.len(), 4, "patient, two encounters, the organization: {got:?}");
    assert!(got.contains(&format!("Organization/{}", org.resource.id)));
    let only = e.everything(&ctx(), &p.resource.id, &pairs(&[("_type", "Encounter")]), &opts()).await.unwrap();
    assert_eq!(ids(&only, "match").len(), 2);
    assert_eq!(e.everything(&ctx(), "missing", &[], &opts()).await.unwrap_err().http_status(), 404);

    let job =
        e.export_start(&ctx(), ExportScope::System, &pairs(&[("_type", "Patient,Encounter")]), &opts()).await.unwrap();
    let manifest = loop {
        match e.export_status(&ctx(), &job).await.unwrap() {
            ExportStatus::Complete { manifest } => break manifest,
            ExportStatus::InProgress { .. } => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            ExportStatus::Failed { issues } => panic!("{issues:?}"),
        }
    };
    let outputs = manifest["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    let enc = outputs.iter().find(|o| o["type"] == "Encounter").unwrap();
    assert_eq!(enc["count"], 3);
    let path = e.export_file(&ctx(), &job, "Encounter.ndjson").await.unwrap();
    let lines = std::fs::read_to_string(path).unwrap();
    assert_eq!(lines.lines().count(), 3);
    assert!(lines.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
    let pjob = e.export_start(&ctx(), ExportScope::AllPatients, &[], &opts()).await.unwrap();
    let manifest = loop {
        match e.export_status(&ctx(), &pjob).await.unwrap() {
            ExportStatus::Complete { manifest } => break manifest,
            ExportStatus::InProgress { .. } => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            ExportStatus::Failed { issues } => panic!("{issues:?}"),
        }
    };
    assert!(
        manifest["output"].as_array().unwrap().iter().all(|o| o["type"] != "Organization"),
        "patient export is compartment data"
    );
    e.export_cancel(&ctx(), &job).await.unwrap();
    assert_eq!(e.export_status(&ctx(), &job).await.unwrap_err().http_status(), 404);
    let err = e
        .export_start(&ctx(), ExportScope::System, &pairs(&[("_outputFormat", "text/csv")]), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 400);
}

#[tokio::test]
async fn capability_statement_accounts_for_every_official_parameter() {
    let t = engine();
    let cs = t.engine.capability_statement("http://test/fhir");
    let defs = fhir::Definitions::r4();
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), defs.resource_types().len());
    for r in resources {
        let ty = r["type"].as_str().unwrap();
        let supported: Vec<&str> =
            r["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        let unsupported: Vec<&str> = r["extension"]
            .as_array()
            .map(|a| a.iter().map(|x| x["extension"][0]["valueCode"].as_str().unwrap()).collect())
            .unwrap_or_default();
        for p in defs.search_params_for(ty) {
            let listed = supported.contains(&p.code.as_str()) as u8 + unsupported.contains(&p.code.as_str()) as u8;
            assert_eq!(listed, 1, "{ty}.{} must be listed exactly once as supported or unsupported", p.code);
        }
    }
}

#[tokio::test]
async fn validate_never_writes() {
    let t = engine();
    let outcome = t.engine.validate(&ctx(), Some("Patient"), patient("孙")).await.unwrap();
    assert_eq!(outcome["issue"][0]["severity"], "information");
    let bad = t.engine.validate(&ctx(), Some("Patient"), json!({"resourceType": "Observation"})).await.unwrap();
    assert_eq!(bad["issue"][0]["severity"], "error");
    assert!(t.engine.store().outbox_read(0, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_creates_make_one_resource() {
    let t = engine();
    let e = std::sync::Arc::new(t.engine);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let o = RequestOptions {
                if_none_exist: Some("identifier=urn:oid:2.16.156.10011.1.3|ID-唯一".into()),
                ..opts()
            };
            e.create(&ctx(), "Patient", patient("唯一"), &o).await.map(|w| w.resource.id)
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every conditional create found the same single Patient");
    let found = e.search(&ctx(), Some("Patient"), &pairs(&[("identifier", "ID-唯一")]), &opts()).await.unwrap();
    assert_eq!(found["total"], 1);
}

/// Conditional writes are serialised per criteria: transactions naming the same two identifiers
/// in opposite orders neither deadlock nor duplicate, and unrelated criteria do not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_transactions_neither_deadlock_nor_duplicate() {
    let t = engine();
    let e = std::sync::Arc::new(t.engine);
    let entry = |n: &str| {
        json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": patient(n),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier=urn:oid:2.16.156.10011.1.3|ID-{n}")}})
    };
    let mut tasks = Vec::new();
    for i in 0..16 {
        let e = e.clone();
        let entries = if i % 2 == 0 { vec![entry("甲"), entry("乙")] } else { vec![entry("乙"), entry("甲")] };
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        tasks.push(tokio::spawn(async move { e.bundle(&ctx(), bundle, &opts()).await }));
    }
    let all = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    });
    all.await.expect("no deadlock");
    for n in ["甲", "乙"] {
        let id = format!("ID-{n}");
        let found = e.search(&ctx(), Some("Patient"), &pairs(&[("identifier", id.as_str())]), &opts()).await.unwrap();
        assert_eq!(found["total"], 1, "{n}");
    }
}
