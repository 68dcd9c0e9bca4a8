//! Parameters a store keeps no rows for (`fhir::index::stored_as`: `Observation.patient` is the
//! `subject` rows pointing to a Patient, `combo-code` the `code` and `component-code` rows) answer
//! every kind of search exactly as their own rows would, on both backends.

use std::sync::Arc;

use engine::{Engine, EngineConfig, RequestOptions};
use serde_json::{Value, json};
use store::{Ctx, ResourceStore};

fn loinc(code: &str) -> Value {
    json!({"coding": [{"system": "http://loinc.org", "code": code}]})
}

fn mmhg(value: f64) -> Value {
    json!({"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"})
}

async fn found(engine: &Engine, resource_type: &str, query: &[(&str, &str)]) -> Vec<String> {
    let bundle = engine
        .search(&Ctx::system(), Some(resource_type), &super::pairs(query), &RequestOptions::default())
        .await
        .unwrap();
    let ids = super::all_ids(&bundle);
    if let Some(total) = bundle["total"].as_u64() {
        let matches =
            bundle["entry"].as_array().into_iter().flatten().filter(|e| e["search"]["mode"] == "match").count();
        assert_eq!(total as usize, matches, "{resource_type}?{query:?}: total");
    }
    ids
}

async fn check(store: Arc<dyn ResourceStore>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(store, EngineConfig { export_dir: dir.path().join("export"), ..EngineConfig::default() });
    let ctx = Ctx::system();
    let opts = RequestOptions::default();
    let resources = [
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "王", "given": ["一"]}]}),
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "李", "given": ["二"]}]}),
        json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true}),
        json!({"resourceType": "Practitioner", "id": "d1"}),
        // A panel whose component carries 8480-6.
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": loinc("85354-9"),
            "subject": {"reference": "Patient/p1"},
            "component": [{"code": loinc("8480-6"), "valueQuantity": mmhg(120.0)},
                          {"code": loinc("8462-4"), "valueQuantity": mmhg(80.0)}]}),
        json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": loinc("2339-0"),
            "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 6.1, "unit": "mmol/L"}}),
        // A Group subject: no Patient.
        json!({"resourceType": "Observation", "id": "o3", "status": "final", "code": loinc("2339-0"),
            "subject": {"reference": "Group/g1"}, "valueQuantity": {"value": 7.0, "unit": "mmol/L"}}),
        // 8480-6 as the code itself.
        json!({"resourceType": "Observation", "id": "o4", "status": "final", "code": loinc("8480-6"),
            "subject": {"reference": "Patient/p2"}, "valueQuantity": mmhg(130.0)}),
        // A subject known by identifier only, typed Patient.
        json!({"resourceType": "Observation", "id": "o5", "status": "final", "code": loinc("2339-0"),
            "subject": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "M5"}}}),
        json!({"resourceType": "Appointment", "id": "a1", "status": "booked", "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"}]}),
    ];
    for r in resources {
        let (t, id) = (r["resourceType"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string());
        engine.update(&ctx, &t, &id, r, &opts).await.unwrap();
    }
    let obs = |ids: &[&str]| ids.iter().map(|i| format!("Observation/{i}")).collect::<Vec<_>>();
    // Typed subset: plain, typed, missing, identifier, chained, reverse-chained, included.
    assert_eq!(found(&engine, "Observation", &[("patient", "p1")]).await, obs(&["o1", "o2"]));
    assert_eq!(
        found(&engine, "Observation", &[("patient", "Patient/p1"), ("_total", "accurate")]).await,
        obs(&["o1", "o2"])
    );
    assert_eq!(found(&engine, "Observation", &[("patient", "g1")]).await, obs(&[]));
    assert_eq!(found(&engine, "Observation", &[("subject", "Group/g1")]).await, obs(&["o3"]));
    assert_eq!(found(&engine, "Observation", &[("patient:missing", "true")]).await, obs(&["o3"]));
    assert_eq!(found(&engine, "Observation", &[("patient:missing", "false")]).await, obs(&["o1", "o2", "o4", "o5"]));
    assert_eq!(found(&engine, "Observation", &[("patient:identifier", "urn:mrn|M5")]).await, obs(&["o5"]));
    assert_eq!(found(&engine, "Observation", &[("patient.name", "王")]).await, obs(&["o1", "o2"]));
    assert_eq!(
        found(&engine, "Observation", &[("code", "2339-0"), ("patient:Patient.name", "王")]).await,
        obs(&["o2"])
    );
    assert_eq!(
        found(&engine, "Patient", &[("_has:Observation:patient:code", "2339-0")]).await,
        vec!["Patient/p1".to_string()]
    );
    assert_eq!(
        found(&engine, "Patient", &[("_id", "p1"), ("_revinclude", "Observation:patient")]).await,
        vec!["Observation/o1".to_string(), "Observation/o2".to_string(), "Patient/p1".to_string()]
    );
    assert_eq!(
        found(&engine, "Observation", &[("_id", "o2"), ("_include", "Observation:patient")]).await,
        vec!["Observation/o2".to_string(), "Patient/p1".to_string()]
    );
    assert_eq!(found(&engine, "Appointment", &[("patient", "p1")]).await, vec!["Appointment/a1".to_string()]);
    assert_eq!(found(&engine, "Appointment", &[("practitioner", "d1")]).await, vec!["Appointment/a1".to_string()]);
    assert_eq!(found(&engine, "Appointment", &[("patient", "d1")]).await, Vec::<String>::new());
    // Unions: a resource matching through the code and through a component, once each.
    assert_eq!(
        found(&engine, "Observation", &[("combo-code", "8480-6"), ("_total", "accurate")]).await,
        obs(&["o1", "o4"])
    );
    assert_eq!(found(&engine, "Observation", &[("combo-code", "http://loinc.org|85354-9")]).await, obs(&["o1"]));
    assert_eq!(found(&engine, "Observation", &[("combo-code", "8480-6,85354-9")]).await, obs(&["o1", "o4"]));
    assert_eq!(found(&engine, "Observation", &[("combo-code:not", "8480-6")]).await, obs(&["o2", "o3", "o5"]));
    assert_eq!(found(&engine, "Observation", &[("combo-value-quantity", "gt100")]).await, obs(&["o1", "o4"]));
    assert_eq!(found(&engine, "Observation", &[("combo-value-quantity", "lt10")]).await, obs(&["o2", "o3"]));
    assert_eq!(found(&engine, "Observation", &[("combo-code-value-quantity", "8480-6$gt125")]).await, obs(&["o4"]));
    assert_eq!(
        found(&engine, "Observation", &[("combo-code-value-quantity", "8480-6$gt100")]).await,
        obs(&["o1", "o4"])
    );
    assert_eq!(found(&engine, "Observation", &[("combo-code:missing", "true")]).await, obs(&[]));
    assert_eq!(found(&engine, "Observation", &[("combo-value-quantity:missing", "true")]).await, obs(&["o5"]));
    // Paging over a union never repeats or skips a resource; sorting by a union works.
    let mut paged = Vec::new();
    for offset in 0..3 {
        let offset = offset.to_string();
        let page =
            found(&engine, "Observation", &[("combo-code", "8480-6,2339-0"), ("_count", "1"), ("_offset", &offset)])
                .await;
        paged.extend(page);
    }
    paged.sort();
    assert_eq!(paged, obs(&["o1", "o2", "o3"]));
    let sorted = engine
        .search(
            &ctx,
            Some("Observation"),
            &[("combo-value-quantity".into(), "gt0".into()), ("_sort".into(), "-combo-value-quantity".into())],
            &opts,
        )
        .await
        .unwrap();
    let order: Vec<&str> =
        sorted["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(order, ["o4", "o1", "o3", "o2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_without_rows_of_their_own_search_like_their_rows_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    check(Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_without_rows_of_their_own_search_like_their_rows_on_postgres() {
    let Some(store) = super::ground_truth::fresh_postgres().await else { return };
    check(store).await;
}
