//! ID numbers and phones sealed at rest: the database holds neither, every interaction sees
//! them in clear, and searches by them (plain, with a system, chained, conditional) still work.

use std::sync::Arc;

use engine::{Engine, EngineConfig, RequestOptions, SealingStore};
use serde_json::{Value, json};
use store::{Ctx, ResourceStore};
use store_sqlite::SqliteStore;

use super::{all_ids as ids, opts, pairs};

const ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";
const ID: &str = "110105198001020038";
const PHONE: &str = "13800138000";

#[tokio::test]
async fn identifiers_and_phones_are_sealed_at_rest_and_found_by_search() {
    let dir = tempfile::tempdir().unwrap();
    let raw: Arc<dyn ResourceStore> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let ring = Arc::new(crypto::KeyRing::ephemeral());
    let keys = ring.clone();
    let sealed: Arc<dyn ResourceStore> = Arc::new(SealingStore::new(raw.clone(), Arc::new(move || keys.clone())));
    let config = EngineConfig { export_dir: dir.path().join("export"), ..EngineConfig::default() };
    let e = Engine::new(sealed, config);
    let sys = Ctx::system();
    let patient = json!({"resourceType": "Patient", "id": "p1",
        "identifier": [{"system": ID_SYSTEM, "value": ID}, {"system": "urn:x:mrn", "value": "MRN-7"}],
        "name": [{"family": "张", "given": ["伟"]}],
        "telecom": [{"system": "phone", "value": PHONE}, {"system": "email", "value": "zw@example.cn"}]});
    e.update(&sys, "Patient", "p1", patient.clone(), &opts()).await.unwrap();
    e.update(
        &sys,
        "Observation",
        "o1",
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}),
        &opts(),
    )
    .await
    .unwrap();

    // The database holds neither number; the engine returns both.
    let stored = raw.read(&sys, "Patient", "p1").await.unwrap().unwrap().body.unwrap();
    assert!(!stored.contains(ID) && !stored.contains(PHONE), "{stored}");
    assert!(stored.contains(engine::SEALED_EXTENSION) && stored.contains("MRN-7"));
    let read: Value =
        serde_json::from_str(e.read(&sys, "Patient", "p1").await.unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(read["identifier"], patient["identifier"]);
    assert_eq!(read["telecom"], patient["telecom"]);

    // Searches by the clear values find it, however they are written.
    for q in [
        vec![("identifier", format!("{ID_SYSTEM}|{ID}"))],
        vec![("identifier", ID.to_string())],
        vec![("identifier", ID.to_lowercase().replace('x', "X"))],
        vec![("phone", PHONE.to_string())],
        vec![("telecom", PHONE.to_string())],
        vec![("identifier", "urn:x:mrn|MRN-7".to_string())],
    ] {
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let found = e.search(&sys, Some("Patient"), &pairs(&q), &opts()).await.unwrap();
        assert_eq!(ids(&found), ["Patient/p1"], "{q:?}");
        assert_eq!(found["entry"][0]["resource"]["identifier"][0]["value"], ID, "results are opened");
    }
    let chained = pairs(&[("subject:Patient.identifier", &format!("{ID_SYSTEM}|{ID}"))]);
    assert_eq!(ids(&e.search(&sys, Some("Observation"), &chained, &opts()).await.unwrap()), ["Observation/o1"]);
    let wrong = pairs(&[("identifier", "110105198001020046")]);
    assert!(ids(&e.search(&sys, Some("Patient"), &wrong, &opts()).await.unwrap()).is_empty());

    // Conditional create by the ID number finds the existing Patient instead of duplicating.
    let cond = RequestOptions { if_none_exist: Some(format!("identifier={ID_SYSTEM}|{ID}")), ..opts() };
    let outcome = e
        .create(
            &sys,
            "Patient",
            json!({"resourceType": "Patient", "identifier": [{"system": ID_SYSTEM, "value": ID}]}),
            &cond,
        )
        .await
        .unwrap();
    assert!(!outcome.created);

    // History and $everything are opened too.
    let history = e.history(&sys, Some("Patient"), Some("p1"), &[], &opts()).await.unwrap();
    assert_eq!(history["entry"][0]["resource"]["telecom"][0]["value"], PHONE);
    let everything = e.everything(&sys, "p1", &[], &opts()).await.unwrap();
    assert!(everything.to_string().contains(ID));
}
