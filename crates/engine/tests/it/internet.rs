//! The internet hospital over a real SQLite store: a follow-up visit only for an offline
//! diagnosis with an eligible doctor, prescriptions only by the treating doctor during the visit,
//! hard stops and overridable warnings, SM2 signatures that fail on altered prescriptions,
//! pharmacist review, and a prescription dispensed exactly once by racing pharmacies.

use std::sync::Arc;

use access::{Principal, Role, Scopes};
use crypto::KeyRing;
use engine::{Engine, EngineError};
use serde_json::{Value, json};
use store::{Ctx, ResourceStore};

use super::registries::registry_with_doctor;
use super::{engine, opts};

fn principal(role: Role, org: Option<&str>, practitioner: Option<&str>, patients: &[&str]) -> Ctx {
    let scopes = match role {
        Role::System => "system/*.*",
        Role::Resident => "patient/*.*",
        _ => "user/*.*",
    };
    Ctx::for_principal(
        "req-ih".into(),
        Principal {
            subject: format!("user/{}-{}", role.code(), practitioner.unwrap_or("x")),
            role,
            organization: org.map(str::to_string),
            region: Some("350102".into()),
            practitioner: practitioner.map(str::to_string),
            patients: patients.iter().map(|p| p.to_string()).collect(),
            scopes: Scopes::parse(scopes).unwrap(),
            purpose: role.default_purpose().into(),
            break_glass: None,
        },
        None,
    )
}

fn resident() -> Ctx {
    principal(Role::Resident, None, None, &["p1"])
}

fn doctor() -> Ctx {
    principal(Role::Doctor, Some("h1"), Some("d1"), &[])
}

fn pharmacist(org: &str, id: &str) -> Ctx {
    principal(Role::Pharmacist, Some(org), Some(id), &[])
}

async fn put(e: &Engine, r: Value) {
    let (ty, id) = (r["resourceType"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string());
    e.update(&Ctx::system(), &ty, &id, r, &opts()).await.unwrap();
}

/// Patient p1 (55, male) with hypertension diagnosed at an in-person visit, and a Condition
/// diagnosed online (not a basis for a follow-up).
async fn fixtures(e: &Engine) {
    registry_with_doctor(e, "2015-07-01").await;
    put(e, json!({"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1971-03-02"})).await;
    put(
        e,
        json!({"resourceType": "Encounter", "id": "offline-1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"}}),
    )
    .await;
    put(
        e,
        json!({"resourceType": "Encounter", "id": "online-1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
        "subject": {"reference": "Patient/p1"}}),
    )
    .await;
    for (id, encounter, icd) in [("htn", "offline-1", "I10"), ("online-dx", "online-1", "J06.9")] {
        put(e, json!({"resourceType": "Condition", "id": id,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd}]},
            "subject": {"reference": "Patient/p1"}, "encounter": {"reference": format!("Encounter/{encounter}")}})).await;
    }
}

fn request(role: &str, condition: Option<&str>) -> Value {
    let mut parameter = vec![
        json!({"name": "patient", "valueReference": {"reference": "Patient/p1"}}),
        json!({"name": "practitionerRole", "valueReference": {"reference": format!("PractitionerRole/{role}")}}),
        json!({"name": "reason", "valueString": "高血压复诊配药"}),
        json!({"name": "consent", "valueBoolean": true}),
    ];
    if let Some(c) = condition {
        parameter.push(json!({"name": "condition", "valueReference": {"reference": format!("Condition/{c}")}}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

fn status(s: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": s}]})
}

fn item(drug: &str, dose: f64, times: u32, days: u32) -> Value {
    json!({"name": "item", "part": [{"name": "drug", "valueCode": drug}, {"name": "doseMg", "valueDecimal": dose},
        {"name": "timesPerDay", "valueInteger": times}, {"name": "days", "valueInteger": days}]})
}

fn prescribe(visit: &str, mut extra: Vec<Value>) -> Value {
    extra.insert(0, json!({"name": "encounter", "valueReference": {"reference": format!("Encounter/{visit}")}}));
    json!({"resourceType": "Parameters", "parameter": extra})
}

fn issues(e: &EngineError) -> String {
    match e {
        EngineError::Unprocessable(issues) | EngineError::BadRequest(issues) => {
            issues.iter().map(|i| i.diagnostics.clone()).collect::<Vec<_>>().join("\n")
        }
        other => other.to_string(),
    }
}

fn param<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["parameter"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap()
}

async fn audited(store: &dyn ResourceStore, action: &str) -> Vec<String> {
    let entries = store.audit_read(0, 10_000).await.unwrap();
    entries.into_iter().filter(|e| e.record.action == action).map(|e| e.record.outcome).collect()
}

/// A visit in progress with doctor d1 at h1.
async fn visit_in_progress(e: &Engine) -> String {
    let visit = e.request_follow_up(&resident(), request("r1", Some("htn"))).await.unwrap();
    let id = visit["id"].as_str().unwrap().to_string();
    e.visit_status(&doctor(), &id, status("in-progress")).await.unwrap();
    id
}

#[tokio::test]
async fn follow_up_visits_need_an_offline_diagnosis_and_an_eligible_doctor() {
    let t = engine();
    let e = &t.engine;
    fixtures(e).await;
    // No first visits: a diagnosis is required, and it must be offline, confirmed and the patient's.
    let err = e.request_follow_up(&resident(), request("r1", None)).await.unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert!(issues(&err).contains("复诊"), "{}", issues(&err));
    let err = e.request_follow_up(&resident(), request("r1", Some("online-dx"))).await.unwrap_err();
    assert!(issues(&err).contains("offline"), "{}", issues(&err));
    // The informed consent must be accepted.
    let mut unconsented = request("r1", Some("htn"));
    unconsented["parameter"].as_array_mut().unwrap().retain(|p| p["name"] != "consent");
    let err = e.request_follow_up(&resident(), unconsented).await.unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert!(issues(&err).contains("informed consent"), "{}", issues(&err));
    // Someone else's patient.
    let stranger = principal(Role::Resident, None, None, &["p2"]);
    assert_eq!(e.request_follow_up(&stranger, request("r1", Some("htn"))).await.unwrap_err().http_status(), 403);
    // r2 is the doctor's second site, not registered for internet practice.
    let err = e.request_follow_up(&resident(), request("r2", Some("htn"))).await.unwrap_err();
    assert!(issues(&err).contains("may not consult online"), "{}", issues(&err));

    let visit = e.request_follow_up(&resident(), request("r1", Some("htn"))).await.unwrap();
    assert_eq!((visit["status"].as_str(), visit["class"]["code"].as_str()), (Some("planned"), Some("VR")));
    let id = visit["id"].as_str().unwrap().to_string();
    // The consent is on record, naming the visit.
    let consents =
        e.search(&Ctx::system(), Some("Consent"), &[("patient".into(), "Patient/p1".into())], &opts()).await.unwrap();
    let consents = consents["entry"].as_array().unwrap();
    assert_eq!(consents.len(), 1, "one visit, one consent (refused requests record none)");
    assert_eq!(consents[0]["resource"]["provision"]["data"][0]["reference"]["reference"], format!("Encounter/{id}"));
    assert_eq!(consents[0]["resource"]["policy"][0]["uri"], engine::CONSENT_POLICY);
    // Only the treating doctor starts it; it cannot finish before it starts.
    let other_doctor = principal(Role::Doctor, Some("h1"), Some("d9"), &[]);
    assert_eq!(e.visit_status(&other_doctor, &id, status("in-progress")).await.unwrap_err().http_status(), 403);
    assert_eq!(e.visit_status(&doctor(), &id, status("finished")).await.unwrap_err().http_status(), 409);
    let started = e.visit_status(&doctor(), &id, status("in-progress")).await.unwrap();
    assert_eq!(started["status"], "in-progress");
    // The patient cannot cancel a started visit (409) nor finish one (403); the doctor refers it
    // offline when the condition changes.
    assert_eq!(e.visit_status(&resident(), &id, status("cancelled")).await.unwrap_err().http_status(), 409);
    assert_eq!(e.visit_status(&resident(), &id, status("finished")).await.unwrap_err().http_status(), 403);
    // Closing needs the visit's record, which becomes the hospital's EMR entry.
    let err = e.visit_status(&doctor(), &id, status("referred")).await.unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert!(issues(&err).contains("'note'"), "{}", issues(&err));
    let mut referral = status("referred");
    referral["parameter"].as_array_mut().unwrap().push(
        json!({"name": "note", "valueString": "主诉：血压控制不佳，头痛加重。\n处理：建议线下心内科就诊 <急>。"}),
    );
    let referred = e.visit_status(&doctor(), &id, referral).await.unwrap();
    assert_eq!(referred["status"], "finished");
    let records = e
        .search(&Ctx::system(), Some("Composition"), &[("encounter".into(), format!("Encounter/{id}"))], &opts())
        .await
        .unwrap();
    let record = &records["entry"][0]["resource"];
    assert_eq!(record["title"], "互联网复诊记录（转线下就诊）");
    assert_eq!(
        (record["author"][0]["reference"].as_str(), record["custodian"]["reference"].as_str()),
        (Some("Practitioner/d1"), Some("Organization/h1"))
    );
    let div = record["section"][0]["text"]["div"].as_str().unwrap();
    assert!(div.contains("<p>处理：建议线下心内科就诊 &lt;急&gt;。</p>"), "{div}");
    assert!(referred["hospitalization"]["dischargeDisposition"]["text"].as_str().unwrap().contains("转线下"));
    // No prescription after the visit ended.
    let err = e.prescribe(&doctor(), &KeyRing::ephemeral(), prescribe(&id, vec![item("D0001", 30.0, 1, 7)])).await;
    assert_eq!(err.unwrap_err().http_status(), 409);

    let outcomes = audited(e.store().as_ref(), "internet-visit-request").await;
    assert_eq!(outcomes, ["failure", "failure", "failure", "denied", "failure", "success"]);
}

#[tokio::test]
async fn prescriptions_are_checked_signed_reviewed_and_dispensed_once() {
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    fixtures(e).await;
    put(
        e,
        json!({"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
        "code": {"text": "penicillin"}}),
    )
    .await;
    let visit = visit_in_progress(e).await;

    // Only the treating doctor.
    let nurse = principal(Role::Nurse, Some("h1"), Some("n1"), &[]);
    let err = e.prescribe(&nurse, &keys, prescribe(&visit, vec![item("D0001", 30.0, 1, 7)])).await.unwrap_err();
    assert_eq!(err.http_status(), 403);
    // Hard stops: a narcotic; an allergy from the patient's record; more than 7 days without a reason.
    for (items, words) in [
        (vec![item("D0019", 30.0, 2, 3)], "controlled"),
        (vec![item("D0010", 500.0, 3, 5)], "allergy"),
        (vec![item("D0001", 30.0, 1, 28)], "supply-days"),
    ] {
        let err = e.prescribe(&doctor(), &keys, prescribe(&visit, items)).await.unwrap_err();
        assert_eq!(err.http_status(), 422);
        assert!(issues(&err).contains(words) && issues(&err).contains("hard stop"), "{}", issues(&err));
    }
    // The live check lists alerts without signing.
    let check = prescribe(
        &visit,
        vec![item("D0001", 30.0, 1, 7), item("D0002", 5.0, 1, 7), json!({"name": "check", "valueBoolean": true})],
    );
    let alerts = e.prescribe(&doctor(), &keys, check).await.unwrap();
    let alerts: Value = serde_json::from_str(param(&alerts, "alerts")["valueString"].as_str().unwrap()).unwrap();
    assert_eq!(alerts[0]["key"], "duplicate-therapy:D0001+D0002");
    assert_eq!(alerts[0]["level"], "warning");
    // A warning needs a reason.
    let two_ccbs = vec![item("D0001", 30.0, 1, 7), item("D0002", 5.0, 1, 7)];
    let err = e.prescribe(&doctor(), &keys, prescribe(&visit, two_ccbs.clone())).await.unwrap_err();
    assert!(
        issues(&err).contains("duplicate-therapy:D0001+D0002") && issues(&err).contains("reason"),
        "{}",
        issues(&err)
    );
    let mut with_reason = two_ccbs;
    with_reason
        .push(json!({"name": "override", "part": [{"name": "alert", "valueString": "duplicate-therapy:D0001+D0002"},
        {"name": "reason", "valueString": "换药过渡期，一周后停用氨氯地平"}]}));
    with_reason.push(json!({"name": "chronicReason", "valueString": "高血压长期用药"}));
    let signed = e.prescribe(&doctor(), &keys, prescribe(&visit, with_reason)).await.unwrap();
    let number = param(&signed, "prescription")["valueIdentifier"]["value"].as_str().unwrap().to_string();
    let task =
        param(&signed, "task")["valueReference"]["reference"].as_str().unwrap().trim_start_matches("Task/").to_string();
    let mr1: Value = serde_json::from_str(
        e.read(&Ctx::system(), "MedicationRequest", &format!("{number}-1")).await.unwrap().body.as_deref().unwrap(),
    )
    .unwrap();
    assert_eq!(mr1["status"], "on-hold", "no effect before review");
    assert_eq!(mr1["extension"][0]["extension"][1]["valueString"], "换药过渡期，一周后停用氨氯地平");
    let verified = e.verify_prescription(&Ctx::system(), &number).await.unwrap();
    assert_eq!(param(&verified, "valid")["valueBoolean"], true);

    // Not dispensable before approval; a pharmacist of another hospital cannot review.
    let dispense = json!({"resourceType": "Parameters", "parameter": [{"name": "prescription", "valueString": number},
        {"name": "pharmacy", "valueReference": {"reference": "Organization/h1"}}]});
    assert_eq!(e.dispense(&Ctx::system(), dispense.clone()).await.unwrap_err().http_status(), 409);
    let approve = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "approve"}]});
    let err = e.review_prescription(&pharmacist("h2", "ph2"), &keys, &task, approve.clone()).await.unwrap_err();
    assert_eq!(err.http_status(), 403);
    let reject = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "reject"}]});
    assert_eq!(
        e.review_prescription(&pharmacist("h1", "ph1"), &keys, &task, reject).await.unwrap_err().http_status(),
        400
    );

    // An altered prescription no longer verifies, and the pharmacist cannot approve it.
    let mut altered = mr1.clone();
    altered["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = json!(60);
    e.update(&Ctx::system(), "MedicationRequest", &format!("{number}-1"), altered, &opts()).await.unwrap();
    let verified = e.verify_prescription(&Ctx::system(), &number).await.unwrap();
    assert_eq!(param(&verified, "valid")["valueBoolean"], false);
    let err = e.review_prescription(&pharmacist("h1", "ph1"), &keys, &task, approve.clone()).await.unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    e.update(&Ctx::system(), "MedicationRequest", &format!("{number}-1"), mr1, &opts()).await.unwrap();

    let approved = e.review_prescription(&pharmacist("h1", "ph1"), &keys, &task, approve.clone()).await.unwrap();
    assert_eq!(param(&approved, "status")["valueCode"], "active");
    let verified = e.verify_prescription(&Ctx::system(), &number).await.unwrap();
    assert_eq!(param(&verified, "valid")["valueBoolean"], true);
    let signatures: Vec<&Value> =
        verified["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "signature").collect();
    assert_eq!(signatures.len(), 2, "doctor and pharmacist");
    assert_eq!(
        e.review_prescription(&pharmacist("h1", "ph1"), &keys, &task, approve).await.unwrap_err().http_status(),
        409
    );

    // Two pharmacies race: exactly one dispenses.
    let engine = Arc::new(t.engine);
    let mut racers = Vec::new();
    for _ in 0..8 {
        let (engine, body) = (engine.clone(), dispense.clone());
        racers.push(tokio::spawn(async move { engine.dispense(&Ctx::system(), body).await }));
    }
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.http_status(), 409, "{e}"),
        }
    }
    assert_eq!(won, 1);
    let dispensed = engine.search(&Ctx::system(), Some("MedicationDispense"), &[], &opts()).await.unwrap();
    assert_eq!(dispensed["entry"].as_array().unwrap().len(), 2, "one dispense per drug line");
    assert_eq!(
        audited(engine.store().as_ref(), "rx-prescribe").await,
        ["denied", "failure", "failure", "failure", "failure", "success"]
    );
    assert_eq!(
        audited(engine.store().as_ref(), "rx-review").await,
        ["denied", "failure", "failure", "success", "failure"]
    );

    // The regulator's supervision feed has all of it, violations included, in outbox order.
    let regulator = principal(Role::Regulator, None, None, &[]);
    assert_eq!(engine.supervision_feed(&resident(), 0, 100).await.unwrap_err().http_status(), 403);
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let page = engine.supervision_feed(&regulator, after, 7).await.unwrap();
        let batch = page["records"].as_array().unwrap().clone();
        after = page["next"].as_i64().unwrap();
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    let count = |kind: &str| records.iter().filter(|r| r["kind"] == kind).count();
    assert_eq!(count("visit"), 2, "requested, started");
    assert_eq!(count("prescription"), 2 + 1 + 1 + 2 + 2, "signed, altered, restored, approved, dispensed");
    assert_eq!(count("review"), 2, "requested, completed");
    assert_eq!(count("dispense"), 2);
    let violations: Vec<&Value> = records.iter().filter(|r| r["kind"] == "violation").collect();
    let rules: Vec<&str> = violations.iter().map(|v| v["detail"]["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["controlled", "allergy", "supply-days", "duplicate-therapy"]);
    assert!(violations[3]["detail"]["overridden"].as_str().unwrap().contains("换药过渡期"));
    assert!(records.iter().all(|r| r["patient"] == "p1"), "{records:?}");
    assert!(records.windows(2).all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
}

#[tokio::test]
async fn residents_send_prescriptions_to_a_pharmacy_which_alone_dispenses_and_delivers() {
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    fixtures(e).await;
    let mut shop = json!({"resourceType": "Organization", "id": "shop-1", "name": "鼓楼大药房",
        "identifier": [{"system": "https://hutong.dev/fhir/sid/uscc", "value": "12350100MB0000001Y"}],
        "type": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/institution-type", "code": "pharmacy"}]}],
        "address": [{"extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/gb2260-division", "valueCode": "350102"}]}]});
    put(e, shop.clone()).await;
    shop["id"] = json!("clinic-x");
    shop["type"][0]["coding"][0]["code"] = json!("community-health-centre");
    put(e, shop).await;
    let visit = visit_in_progress(e).await;
    let signed = e.prescribe(&doctor(), &keys, prescribe(&visit, vec![item("D0004", 500.0, 2, 7)])).await.unwrap();
    let number = param(&signed, "prescription")["valueIdentifier"]["value"].as_str().unwrap().to_string();
    let task = format!("{number}-review");

    let route = |pharmacy: &str, delivery: &str, address: Option<&str>| {
        let mut parameter = vec![
            json!({"name": "prescription", "valueString": number}),
            json!({"name": "pharmacy", "valueReference": {"reference": format!("Organization/{pharmacy}")}}),
            json!({"name": "delivery", "valueCode": delivery}),
        ];
        if let Some(a) = address {
            parameter.push(json!({"name": "address", "valueString": a}));
        }
        json!({"resourceType": "Parameters", "parameter": parameter})
    };
    // The resident chooses; not to a place that is no pharmacy; home delivery needs an address.
    assert_eq!(e.route_prescription(&doctor(), route("shop-1", "pickup", None)).await.unwrap_err().http_status(), 403);
    assert_eq!(
        e.route_prescription(&resident(), route("clinic-x", "pickup", None)).await.unwrap_err().http_status(),
        422
    );
    assert_eq!(e.route_prescription(&resident(), route("shop-1", "home", None)).await.unwrap_err().http_status(), 400);
    e.route_prescription(&resident(), route("shop-1", "home", Some("福州市鼓楼区示例路1号"))).await.unwrap();
    // Routing does not touch the signed content.
    let verified = e.verify_prescription(&Ctx::system(), &number).await.unwrap();
    assert_eq!(param(&verified, "valid")["valueBoolean"], true);
    let approve = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "approve"}]});
    e.review_prescription(&pharmacist("h1", "ph1"), &keys, &task, approve).await.unwrap();

    // Only the chosen pharmacy sees and dispenses it.
    let hospital_queue = e.pharmacy_queue(&pharmacist("h1", "ph1")).await.unwrap();
    assert_eq!(hospital_queue["prescriptions"], json!([]));
    let queue = e.pharmacy_queue(&pharmacist("shop-1", "ph-shop")).await.unwrap();
    assert_eq!(queue["prescriptions"][0]["number"], number.as_str());
    assert_eq!(queue["prescriptions"][0]["delivery"], "home");
    let dispense = |pharmacy: &str| {
        json!({"resourceType": "Parameters", "parameter": [{"name": "prescription", "valueString": number},
        {"name": "pharmacy", "valueReference": {"reference": format!("Organization/{pharmacy}")}}]})
    };
    assert_eq!(e.dispense(&pharmacist("h1", "ph1"), dispense("h1")).await.unwrap_err().http_status(), 403);
    // A retail sale links back to the prescription; a malformed one is refused before anything.
    let with_sale = |sale: Value| {
        let mut d = dispense("shop-1");
        d["parameter"].as_array_mut().unwrap().push(sale);
        d
    };
    let no_receipt = json!({"name": "sale", "part": [{"name": "amount", "valueDecimal": 36.5}]});
    let err = e.dispense(&pharmacist("shop-1", "ph-shop"), with_sale(no_receipt)).await.unwrap_err();
    assert!(issues(&err).contains("receipt"), "{}", issues(&err));
    let sale = json!({"name": "sale", "part": [{"name": "receipt", "valueString": "POS-20261201-0001"},
        {"name": "amount", "valueDecimal": 36.5}, {"name": "paidAt", "valueDateTime": "2026-12-01T10:00:00+08:00"}]});
    e.dispense(&pharmacist("shop-1", "ph-shop"), with_sale(sale)).await.unwrap();
    let sold = e
        .search(
            &Ctx::system(),
            Some("MedicationDispense"),
            &[("prescription".into(), format!("MedicationRequest/{number}-1"))],
            &opts(),
        )
        .await
        .unwrap();
    let sale = &sold["entry"][0]["resource"]["extension"][0];
    assert_eq!(sale["url"], engine::RETAIL_SALE_EXTENSION);
    assert_eq!(sale["extension"][0]["valueIdentifier"]["value"], number.as_str());
    assert_eq!(sale["extension"][2]["valueMoney"], json!({"value": 36.5, "currency": "CNY"}));
    assert_eq!(e.dispense(&pharmacist("shop-1", "ph-shop"), dispense("shop-1")).await.unwrap_err().http_status(), 409);
    assert_eq!(e.route_prescription(&resident(), route("h1", "pickup", None)).await.unwrap_err().http_status(), 409);

    // The carrier's states, in order, by the dispensing pharmacy only.
    let delivery = format!("{number}-delivery");
    let state = |s: &str| {
        json!({"resourceType": "Parameters", "parameter": [{"name": "state", "valueCode": s},
        {"name": "carrier", "valueString": "同城快递"}, {"name": "trackingNumber", "valueString": "SF000001"}]})
    };
    let shop_pharmacist = pharmacist("shop-1", "ph-shop");
    assert_eq!(
        e.delivery_update(&shop_pharmacist, &delivery, state("delivered")).await.unwrap_err().http_status(),
        409
    );
    assert_eq!(
        e.delivery_update(&pharmacist("h1", "ph1"), &delivery, state("dispatched")).await.unwrap_err().http_status(),
        403
    );
    e.delivery_update(&shop_pharmacist, &delivery, state("dispatched")).await.unwrap();
    assert_eq!(
        e.delivery_update(&shop_pharmacist, &delivery, state("dispatched")).await.unwrap_err().http_status(),
        409
    );
    e.delivery_update(&shop_pharmacist, &delivery, state("in-transit")).await.unwrap();
    let done = e.delivery_update(&shop_pharmacist, &delivery, state("delivered")).await.unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["businessStatus"]["text"], "已送达 / delivered");
    // The sale links back to the prescription.
    let sold = e.search(&Ctx::system(), Some("MedicationDispense"), &[], &opts()).await.unwrap();
    assert_eq!(
        sold["entry"][0]["resource"]["authorizingPrescription"][0]["reference"],
        format!("MedicationRequest/{number}-1")
    );
    assert_eq!(sold["entry"][0]["resource"]["performer"][0]["actor"]["reference"], "Organization/shop-1");
}

fn with_proof(data: &[u8], content_type: &str, diagnosis: Value) -> Value {
    let mut r = request("r1", None);
    let list = r["parameter"].as_array_mut().unwrap();
    list.push(json!({"name": "proof", "valueAttachment": {"contentType": content_type,
        "data": crypto::base64(data), "title": "门诊病历"}}));
    list.push(diagnosis);
    r
}

fn decision(decision: &str, extra: Vec<Value>) -> Value {
    let mut parameter = vec![json!({"name": "decision", "valueCode": decision})];
    parameter.extend(extra);
    json!({"resourceType": "Parameters", "parameter": parameter})
}

fn proof_status(visit: &Value) -> String {
    let proof = visit["extension"].as_array().unwrap().iter().find(|x| x["url"] == engine::PROOF_EXTENSION).unwrap();
    let status = proof["extension"].as_array().unwrap().iter().find(|x| x["url"] == "status").unwrap();
    status["valueCode"].as_str().unwrap().to_string()
}

/// A diagnosis made offline but not on the platform: the resident uploads its proof, the visit
/// waits until the treating doctor accepts it (then it is a confirmed diagnosis with the proof as
/// evidence, and the visit can start) or rejects it (the visit is cancelled with the reason).
#[tokio::test]
async fn an_uploaded_proof_of_an_offline_diagnosis_is_reviewed_by_the_doctor() {
    let t = engine();
    let e = &t.engine;
    fixtures(e).await;
    let png = b"\x89PNG\r\n\x1a\n synthetic scan of a clinic record";
    let text_dx = json!({"name": "diagnosis", "valueString": "2型糖尿病"});
    // Bad uploads: a type not accepted, content that is not what it says, no diagnosis.
    let err = e.request_follow_up(&resident(), with_proof(png, "text/html", text_dx.clone())).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert!(issues(&err).contains("image/jpeg, image/png or application/pdf"), "{}", issues(&err));
    let err = e.request_follow_up(&resident(), with_proof(b"GIF89a", "image/png", text_dx.clone())).await.unwrap_err();
    assert!(issues(&err).contains("not image/png"), "{}", issues(&err));
    let bad_code =
        json!({"name": "diagnosis", "valueCoding": {"system": "http://hl7.org/fhir/sid/icd-10", "code": "diabetes"}});
    let err = e.request_follow_up(&resident(), with_proof(png, "image/png", bad_code)).await.unwrap_err();
    assert!(issues(&err).contains("not an ICD-10 code"), "{}", issues(&err));
    for ty in ["DocumentReference", "Binary", "Encounter"] {
        let found = e.search(&Ctx::system(), Some(ty), &[], &opts()).await.unwrap();
        let n = found["entry"].as_array().map_or(0, Vec::len);
        assert_eq!(n, if ty == "Encounter" { 2 } else { 0 }, "a refused request stores no {ty}");
    }

    let visit = e.request_follow_up(&resident(), with_proof(png, "image/png", text_dx.clone())).await.unwrap();
    let id = visit["id"].as_str().unwrap().to_string();
    assert_eq!((visit["status"].as_str(), proof_status(&visit).as_str()), (Some("planned"), "pending"));
    assert!(visit.get("reasonReference").is_none());
    // It cannot start before the review; only the treating doctor reviews.
    let err = e.visit_status(&doctor(), &id, status("in-progress")).await.unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert!(issues(&err).contains("review-proof"), "{}", issues(&err));
    let other_doctor = principal(Role::Doctor, Some("h1"), Some("d9"), &[]);
    assert_eq!(e.review_proof(&other_doctor, &id, decision("accept", vec![])).await.unwrap_err().http_status(), 403);
    assert_eq!(e.review_proof(&resident(), &id, decision("accept", vec![])).await.unwrap_err().http_status(), 403);
    // The resident named it in text: accepting needs the ICD-10 code.
    let err = e.review_proof(&doctor(), &id, decision("accept", vec![])).await.unwrap_err();
    assert!(issues(&err).contains("ICD-10"), "{}", issues(&err));
    let e11 = json!({"name": "diagnosis", "valueCoding": {"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "display": "2型糖尿病"}});
    let accepted = e.review_proof(&doctor(), &id, decision("accept", vec![e11])).await.unwrap();
    assert_eq!(proof_status(&accepted), "accepted");
    let condition_id =
        accepted["reasonReference"][0]["reference"].as_str().unwrap().strip_prefix("Condition/").unwrap();
    let condition = e.read(&Ctx::system(), "Condition", condition_id).await.unwrap();
    let condition: Value = serde_json::from_str(&condition.body.unwrap()).unwrap();
    assert_eq!(condition["code"]["coding"][0]["code"], "E11.9");
    assert_eq!(condition["verificationStatus"]["coding"][0]["code"], "confirmed");
    assert_eq!(condition["recorder"]["reference"], "Practitioner/d1");
    let document = condition["evidence"][0]["detail"][0]["reference"]
        .as_str()
        .unwrap()
        .strip_prefix("DocumentReference/")
        .unwrap();
    let document = e.read(&Ctx::system(), "DocumentReference", document).await.unwrap();
    let document: Value = serde_json::from_str(&document.body.unwrap()).unwrap();
    assert_eq!(document["docStatus"], "final");
    let binary = document["content"][0]["attachment"]["url"].as_str().unwrap().strip_prefix("Binary/").unwrap();
    let binary = e.read(&Ctx::system(), "Binary", binary).await.unwrap();
    let binary: Value = serde_json::from_str(&binary.body.unwrap()).unwrap();
    assert_eq!(crypto::unbase64(binary["data"].as_str().unwrap()).unwrap(), png);
    // Reviewed once; then the visit starts as any other.
    assert_eq!(e.review_proof(&doctor(), &id, decision("accept", vec![])).await.unwrap_err().http_status(), 409);
    assert_eq!(e.visit_status(&doctor(), &id, status("in-progress")).await.unwrap()["status"], "in-progress");

    // A rejected proof cancels the visit with the reason; a rejection needs one.
    let visit = e.request_follow_up(&resident(), with_proof(png, "image/png", text_dx)).await.unwrap();
    let id = visit["id"].as_str().unwrap().to_string();
    assert_eq!(e.review_proof(&doctor(), &id, decision("reject", vec![])).await.unwrap_err().http_status(), 400);
    let reason = json!({"name": "reason", "valueString": "图片不清晰，请重新上传"});
    let rejected = e.review_proof(&doctor(), &id, decision("reject", vec![reason])).await.unwrap();
    assert_eq!((rejected["status"].as_str(), proof_status(&rejected).as_str()), (Some("cancelled"), "rejected"));
    assert!(rejected["hospitalization"]["dischargeDisposition"]["text"].as_str().unwrap().contains("图片不清晰"));
    assert_eq!(
        audited(e.store().as_ref(), "internet-proof-review").await,
        ["denied", "denied", "failure", "success", "failure", "failure", "success"]
    );
}

fn queue_tasks(page: &Value) -> Vec<String> {
    page["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect()
}

/// A hospital may have its prescriptions reviewed by an approved review centre (审方中心):
/// the centre's pharmacists see them in their queue and review them only while the approval
/// (an active OrganizationAffiliation within its period) holds; other pharmacists never do.
#[tokio::test]
async fn an_approved_review_centre_reviews_the_hospitals_prescriptions() {
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    fixtures(e).await;
    put(e, json!({"resourceType": "Organization", "id": "rc1", "name": "区域审方中心"})).await;
    let visit = visit_in_progress(e).await;
    let signed = e.prescribe(&doctor(), &keys, prescribe(&visit, vec![item("D0001", 30.0, 1, 7)])).await.unwrap();
    let task =
        param(&signed, "task")["valueReference"]["reference"].as_str().unwrap().trim_start_matches("Task/").to_string();
    let centre = pharmacist("rc1", "ph-rc");
    let approve = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "approve"}]});

    // Not approved yet: an empty queue, and no review.
    assert!(queue_tasks(&e.review_queue(&centre, &[]).await.unwrap()).is_empty());
    assert_eq!(e.review_prescription(&centre, &keys, &task, approve.clone()).await.unwrap_err().http_status(), 403);
    // The hospital's own pharmacists see it.
    assert_eq!(queue_tasks(&e.review_queue(&pharmacist("h1", "ph1"), &[]).await.unwrap()), vec![task.as_str()]);
    // An expired approval does not count; a current one does.
    let affiliation = |id: &str, start: &str, end: &str| {
        json!({"resourceType": "OrganizationAffiliation", "id": id, "active": true,
            "period": {"start": start, "end": end},
            "organization": {"reference": "Organization/rc1"}, "participatingOrganization": {"reference": "Organization/h1"},
            "code": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/internet-hospital", "code": "rx-review-centre"}]}]})
    };
    put(e, affiliation("aff-old", "2020-01-01", "2021-01-01")).await;
    assert!(queue_tasks(&e.review_queue(&centre, &[]).await.unwrap()).is_empty());
    put(e, affiliation("aff-now", "2025-01-01", "2099-12-31")).await;
    assert_eq!(queue_tasks(&e.review_queue(&centre, &[]).await.unwrap()), vec![task.as_str()]);
    // Paging parameters only; a doctor has no review queue.
    let err = e.review_queue(&centre, &[("owner".into(), "Organization/h2".into())]).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert_eq!(e.review_queue(&doctor(), &[]).await.unwrap_err().http_status(), 403);
    // Another hospital's pharmacist still cannot; the centre's approves, and the queue empties.
    assert_eq!(
        e.review_prescription(&pharmacist("h2", "ph2"), &keys, &task, approve.clone()).await.unwrap_err().http_status(),
        403
    );
    let approved = e.review_prescription(&centre, &keys, &task, approve).await.unwrap();
    assert_eq!(param(&approved, "status")["valueCode"], "active");
    assert!(queue_tasks(&e.review_queue(&centre, &[]).await.unwrap()).is_empty());
    let verified = e
        .verify_prescription(&Ctx::system(), &{
            param(&signed, "prescription")["valueIdentifier"]["value"].as_str().unwrap().to_string()
        })
        .await
        .unwrap();
    assert_eq!(param(&verified, "valid")["valueBoolean"], true);
}

/// Visits time out: waiting 24 h untaken → cancelled; in progress 48 h → closed; each audited,
/// and nothing changes before its time.
#[tokio::test]
async fn visits_nobody_takes_or_closes_time_out() {
    let t = engine();
    let e = &t.engine;
    fixtures(e).await;
    let waiting = e.request_follow_up(&resident(), request("r1", Some("htn"))).await.unwrap();
    let waiting = waiting["id"].as_str().unwrap().to_string();
    let consulting = visit_in_progress(e).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let hour = 3_600_000;
    let status_of = |id: String| async move {
        let r = e.read(&Ctx::system(), "Encounter", &id).await.unwrap();
        let b: Value = serde_json::from_str(&r.body.unwrap()).unwrap();
        (b["status"].as_str().unwrap().to_string(), b["hospitalization"]["dischargeDisposition"]["text"].clone())
    };
    assert_eq!(e.expire_visits(now + 23 * hour).await.unwrap(), 0);
    assert_eq!(e.expire_visits(now + 25 * hour).await.unwrap(), 1);
    let (status, why) = status_of(waiting.clone()).await;
    assert_eq!(status, "cancelled");
    assert!(why.as_str().unwrap().contains("24 hours"), "{why}");
    assert_eq!(status_of(consulting.clone()).await.0, "in-progress");
    assert_eq!(e.expire_visits(now + 49 * hour).await.unwrap(), 1);
    assert_eq!(status_of(consulting).await.0, "finished");
    assert_eq!(e.expire_visits(now + 100 * hour).await.unwrap(), 0, "each visit times out once");
    assert_eq!(audited(e.store().as_ref(), "internet-visit-timeout").await, ["success", "success"]);
}
