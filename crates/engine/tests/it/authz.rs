//! The policy decision point as the engine enforces it, with real stored data: searches are
//! narrowed (totals count only what may be seen), includes and `$everything` are filtered, a
//! forbidden read is a 404, writes are decided on old and new content, care relationships and
//! consents come from stored resources, and every access lands in the audit log.

use access::{Principal, Role, Scopes};
use engine::EngineError;
use serde_json::{Value, json};
use store::Ctx;

use super::{engine, opts, pairs};

pub(super) fn as_role(role: Role, org: Option<&str>, patients: &[&str]) -> Ctx {
    let scopes = match role {
        Role::System => "system/*.*",
        Role::Resident => "patient/*.*",
        _ => "user/*.*",
    };
    Ctx::for_principal(
        "req-1".into(),
        Principal {
            subject: format!("user/{}", role.code()),
            role,
            organization: org.map(str::to_string),
            region: Some("350102".into()),
            practitioner: role.is_clinical().then(|| "doc1".to_string()),
            patients: patients.iter().map(|p| p.to_string()).collect(),
            scopes: Scopes::parse(scopes).unwrap(),
            purpose: role.default_purpose().into(),
            break_glass: None,
        },
        Some("127.0.0.1".into()),
    )
}

fn with_glass(ctx: &Ctx, reason: &str) -> Ctx {
    let mut p = (*ctx.principal.clone().unwrap()).clone();
    p.break_glass = Some(reason.into());
    Ctx::for_principal("req-2".into(), p, None)
}

async fn put(e: &engine::Engine, body: Value) {
    let ty = body["resourceType"].as_str().unwrap().to_string();
    let id = body["id"].as_str().unwrap().to_string();
    e.update(&Ctx::system(), &ty, &id, body, &opts()).await.unwrap();
}

/// Two residents in county 350102 and one in another province; one hospital has seen p1.
async fn seed(e: &engine::Engine) {
    for (id, division) in [("p1", "350102"), ("p2", "350102"), ("p3", "110101")] {
        put(
            e,
            json!({"resourceType": "Patient", "id": id, "address": [{"postalCode": "100000",
            "extension": [{"url": access::DIVISION_EXTENSION, "valueCode": division}]}]}),
        )
        .await;
        put(
            e,
            json!({"resourceType": "Observation", "id": format!("obs-{id}"), "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                   "subject": {"reference": format!("Patient/{id}")},
                   "performer": [{"reference": "Organization/h1"}]}),
        )
        .await;
        put(
            e,
            json!({"resourceType": "Condition", "id": format!("psy-{id}"),
                   "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F32.1"}]},
                   "subject": {"reference": format!("Patient/{id}")}}),
        )
        .await;
    }
    put(e, json!({"resourceType": "Organization", "id": "h1", "name": "市一医院"})).await;
    put(
        e,
        json!({"resourceType": "Encounter", "id": "enc-p1", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": "Patient/p1"}, "serviceProvider": {"reference": "Organization/h1"}}),
    )
    .await;
}

fn ids(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] != "outcome")
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn forbidden(result: Result<impl std::fmt::Debug, EngineError>) -> String {
    match result {
        Err(EngineError::Forbidden(reason)) => reason,
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn sensitive_codes_are_labelled_on_write() {
    let t = engine();
    seed(&t.engine).await;
    let c = t.engine.read(&Ctx::system(), "Condition", "psy-p1").await.unwrap();
    assert!(c.body.unwrap().contains(r#""code":"PSY""#), "an ICD-10 F code is labelled PSY");
    let o = t.engine.read(&Ctx::system(), "Observation", "obs-p1").await.unwrap();
    assert!(!o.body.unwrap().contains("security"));
}

#[tokio::test]
async fn residents_see_exactly_their_own_records() {
    let t = engine();
    let e = &t.engine;
    seed(e).await;
    let me = as_role(Role::Resident, None, &["p1"]);
    let all = e.search(&me, Some("Observation"), &pairs(&[("_total", "accurate")]), &opts()).await.unwrap();
    assert_eq!(ids(&all), ["Observation/obs-p1"]);
    assert_eq!(all["total"], 1, "the total counts only what the resident may see");
    let other = e.search(&me, Some("Observation"), &pairs(&[("subject", "Patient/p2")]), &opts()).await.unwrap();
    assert!(ids(&other).is_empty(), "naming another patient finds nothing");
    assert!(matches!(e.read(&me, "Observation", "obs-p2").await, Err(EngineError::NotFound(_))), "404, not 403");
    assert!(e.read(&me, "Condition", "psy-p1").await.is_ok(), "a resident sees their own sensitive records");
    // _revinclude cannot pull in other patients' data.
    let patients =
        e.search(&me, Some("Patient"), &pairs(&[("_revinclude", "Observation:subject")]), &opts()).await.unwrap();
    assert_eq!(ids(&patients), ["Observation/obs-p1", "Patient/p1"]);
    forbidden(e.search(&me, Some("Patient"), &pairs(&[("_has:Observation:subject:code", "2339-0")]), &opts()).await);
    forbidden(e.history(&me, Some("Observation"), None, &[], &opts()).await);
    forbidden(e.search(&me, None, &[], &opts()).await);
    // Writes: own self-reported data yes, someone else's or a diagnosis no.
    let mine = json!({"resourceType": "Observation", "status": "final", "code": {"text": "步数"},
                      "subject": {"reference": "Patient/p1"}});
    e.create(&me, "Observation", mine, &opts()).await.unwrap();
    let theirs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "步数"},
                        "subject": {"reference": "Patient/p2"}});
    forbidden(e.create(&me, "Observation", theirs, &opts()).await);
    let diagnosis = json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}});
    forbidden(e.create(&me, "Condition", diagnosis, &opts()).await);
    // Moving one's own observation into someone else's record is refused (new content decided).
    let mut moved: Value =
        serde_json::from_str(&e.read(&me, "Observation", "obs-p1").await.unwrap().body.unwrap()).unwrap();
    moved["subject"]["reference"] = json!("Patient/p2");
    forbidden(e.update(&me, "Observation", "obs-p1", moved, &opts()).await);
}

#[tokio::test]
async fn doctors_need_a_care_relationship_consent_or_break_glass() {
    let t = engine();
    let e = &t.engine;
    seed(e).await;
    let doctor = as_role(Role::Doctor, Some("h1"), &[]);
    assert!(e.read(&doctor, "Observation", "obs-p1").await.is_ok(), "p1 had an encounter at h1");
    assert!(matches!(e.read(&doctor, "Observation", "obs-p2").await, Err(EngineError::NotFound(_))));
    assert!(matches!(e.read(&doctor, "Condition", "psy-p1").await, Err(EngineError::NotFound(_))), "sensitive");
    let found = e.search(&doctor, Some("Condition"), &pairs(&[("patient", "Patient/p1")]), &opts()).await.unwrap();
    assert!(ids(&found).is_empty(), "sensitive conditions are filtered out of searches");
    let found = e.search(&doctor, Some("Observation"), &pairs(&[("patient", "Patient/p1")]), &opts()).await.unwrap();
    assert_eq!(ids(&found), ["Observation/obs-p1"]);
    let reason = forbidden(e.search(&doctor, Some("Observation"), &pairs(&[("patient", "Patient/p2")]), &opts()).await);
    assert!(reason.contains("care relationship"), "{reason}");
    let reason = forbidden(e.search(&doctor, Some("Observation"), &pairs(&[("code", "2339-0")]), &opts()).await);
    assert!(reason.contains("within one patient"), "{reason}");
    // Registration lookup of one person by an exact identifier works without a relationship;
    // anything wider (an empty value lists every patient) needs one.
    e.search(&doctor, Some("Patient"), &pairs(&[("identifier", "x|y123")]), &opts()).await.unwrap();
    for widened in [
        pairs(&[("identifier", "x|")]),
        pairs(&[("identifier:contains", "y")]),
        pairs(&[("identifier", "x|y123"), ("_revinclude", "Observation:subject")]),
    ] {
        let reason = forbidden(e.search(&doctor, Some("Patient"), &widened, &opts()).await);
        assert!(reason.contains("within one patient"), "{widened:?}: {reason}");
    }

    // A deleted record, or a stale If-Match, of a patient the doctor may not see reads as absent
    // (404), not as 410 Gone or 412, which would reveal that it exists.
    let sys = Ctx::system();
    let obs = e.read(&sys, "Observation", "obs-p2").await.unwrap();
    let mut body: Value = serde_json::from_str(obs.body.as_deref().unwrap()).unwrap();
    body["status"] = json!("amended");
    let stale = engine::RequestOptions { if_match: Some(99), ..opts() };
    assert!(matches!(e.update(&doctor, "Observation", "obs-p2", body, &stale).await, Err(EngineError::NotFound(_))));
    assert!(matches!(e.delete(&doctor, "Observation", "obs-p2", &stale).await, Err(EngineError::NotFound(_))));
    put(
        e,
        json!({"resourceType": "Observation", "id": "gone-p2", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                  "subject": {"reference": "Patient/p2"}}),
    )
    .await;
    e.delete(&sys, "Observation", "gone-p2", &opts()).await.unwrap();
    assert!(matches!(e.read(&doctor, "Observation", "gone-p2").await, Err(EngineError::NotFound(_))));
    assert!(matches!(e.read(&sys, "Observation", "gone-p2").await, Err(EngineError::Gone(_))));

    // Opening an encounter at h1 starts care with p2; at another hospital it is refused.
    let elsewhere = json!({"resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p2"}, "serviceProvider": {"reference": "Organization/h9"}});
    forbidden(e.create(&doctor, "Encounter", elsewhere.clone(), &opts()).await);
    let mut here = elsewhere;
    here["serviceProvider"]["reference"] = json!("Organization/h1");
    e.create(&doctor, "Encounter", here, &opts()).await.unwrap();
    assert!(e.read(&doctor, "Observation", "obs-p2").await.is_ok(), "the new encounter is a care relationship");

    // p3 consents to h1 for mental-health records, then p1 refuses h1 altogether.
    let consent = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p3"},
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}, "reference": {"reference": "Organization/h1"}}],
                      "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}});
    e.create(&Ctx::system(), "Consent", consent.clone(), &opts()).await.unwrap();
    assert!(e.read(&doctor, "Condition", "psy-p3").await.is_ok(), "explicit consent for the PSY class");
    let mut refusal = consent;
    refusal["patient"]["reference"] = json!("Patient/p1");
    refusal["provision"] = json!({"type": "deny", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}, "reference": {"reference": "Organization/h1"}}]});
    e.create(&Ctx::system(), "Consent", refusal, &opts()).await.unwrap();
    assert!(matches!(e.read(&doctor, "Observation", "obs-p1").await, Err(EngineError::NotFound(_))), "refusal wins");

    // Break-glass opens it, and the audit log says so.
    let glass = with_glass(&doctor, "患者昏迷，急诊抢救");
    assert!(e.read(&glass, "Condition", "psy-p1").await.is_ok());
    e.flush_audit().await.unwrap();
    let log = e.store().audit_for_patient("p1", 50).await.unwrap();
    let last = &log[0];
    assert_eq!((last.record.action.as_str(), last.record.outcome.as_str()), ("read", "success"));
    assert!(
        last.record.detail.contains("breakGlass") && last.record.detail.contains("急诊抢救"),
        "{}",
        last.record.detail
    );
    assert!(log.iter().any(|e| e.record.outcome == "denied" && e.record.entity.starts_with("Observation/obs-p1")));
}

#[tokio::test]
async fn officers_see_their_region_operators_and_auditors_no_clinical_data() {
    let t = engine();
    let e = &t.engine;
    seed(e).await;
    let cdc = as_role(Role::CdcOfficer, Some("cdc"), &[]);
    let found = e.search(&cdc, Some("Observation"), &pairs(&[("_total", "accurate")]), &opts()).await.unwrap();
    assert_eq!(ids(&found), ["Observation/obs-p1", "Observation/obs-p2"], "county 350102 only");
    assert_eq!(found["total"], 2);
    assert!(e.read(&cdc, "Condition", "psy-p1").await.is_ok(), "public health may see notifiable classes");
    assert!(matches!(e.read(&cdc, "Observation", "obs-p3").await, Err(EngineError::NotFound(_))));
    let regulator = as_role(Role::Regulator, Some("wjw"), &[]);
    let found = e.search(&regulator, Some("Condition"), &[], &opts()).await.unwrap();
    assert!(ids(&found).is_empty(), "regulators never see level-5 data");
    let operator = as_role(Role::Operator, None, &[]);
    forbidden(e.search(&operator, Some("Observation"), &[], &opts()).await);
    assert!(matches!(e.read(&operator, "Patient", "p1").await, Err(EngineError::NotFound(_))));
    assert!(e.read(&operator, "Organization", "h1").await.is_ok());
    let auditor = as_role(Role::Auditor, None, &[]);
    forbidden(e.search(&auditor, Some("Organization"), &[], &opts()).await);
}

#[tokio::test]
async fn system_clients_follow_their_scopes_and_every_access_is_audited() {
    let t = engine();
    let e = &t.engine;
    seed(e).await;
    let before = e.store().audit_head().await.unwrap().0;
    let mut p = (*as_role(Role::System, Some("h1"), &[]).principal.unwrap()).clone();
    p.scopes = Scopes::parse("system/Observation.rs system/Patient.read").unwrap();
    let client = Ctx::for_principal("req-9".into(), p, None);
    e.read(&client, "Observation", "obs-p3").await.unwrap();
    assert!(matches!(e.read(&client, "Condition", "psy-p3").await, Err(EngineError::NotFound(_))));
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}});
    let reason = forbidden(e.create(&client, "Observation", obs, &opts()).await);
    assert!(reason.contains("scopes"), "{reason}");
    let bundle = e
        .search(
            &client,
            Some("Observation"),
            &pairs(&[("_include", "Observation:subject"), ("_revinclude", "Condition:subject")]),
            &opts(),
        )
        .await
        .unwrap();
    assert!(ids(&bundle).iter().all(|i| !i.starts_with("Condition/")), "no Condition scope, no Condition includes");
    assert!(ids(&bundle).contains(&"Patient/p1".to_string()));
    forbidden(e.export_start(&client, engine::ExportScope::System, &pairs(&[("_type", "Condition")]), &opts()).await);
    e.history(&client, Some("Observation"), None, &[], &opts()).await.unwrap();
    e.flush_audit().await.unwrap();
    let entries = e.store().audit_read(before, 100).await.unwrap();
    // Permitted reads travel in block entries; expand them into events.
    let mut events: Vec<(String, String, String, String, Vec<String>)> = Vec::new();
    for entry in &entries {
        let r = &entry.record;
        if r.action == engine::BLOCK_ACTION {
            let detail: Value = serde_json::from_str(&r.detail).unwrap();
            for ev in detail["events"].as_array().unwrap() {
                let s = |i: usize| ev[i].as_str().unwrap().to_string();
                let patients = ev[8].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
                events.push((s(1), s(2), s(3), s(7), patients));
                assert!(ev[9]["request"] == "req-9");
            }
        } else {
            assert!(r.detail.contains("req-9"));
            events.push((r.action.clone(), r.outcome.clone(), r.actor.clone(), r.entity.clone(), r.patients.clone()));
        }
    }
    let mut actions: Vec<(&str, &str)> = events.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            ("create", "denied"),
            ("export", "denied"),
            ("history", "success"),
            ("read", "denied"),
            ("read", "success"),
            ("search", "success")
        ]
    );
    assert!(events.iter().all(|e| e.2 == "user/system"));
    let read = events.iter().find(|e| e.0 == "read" && e.1 == "success").unwrap();
    assert_eq!(read.4, ["p3"]);
    let search = events.iter().find(|e| e.0 == "search").unwrap();
    assert!(search.3.starts_with("Observation?") && search.4.len() == 3, "{search:?}");
}
