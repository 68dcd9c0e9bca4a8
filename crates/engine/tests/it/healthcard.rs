//! The electronic health card service over a real SQLite store: the real-name and guardian
//! rules of registration, single use of dynamic codes online, suspended and closed cards,
//! key rotation, and the audit trail of every attempt. Synthetic ID numbers only.

use access::Role;
use crypto::KeyRing;
use engine::{CardStatus, Engine, EngineError};
use serde_json::json;
use store::{Ctx, ResourceStore};

use super::authz::as_role;
use super::{engine, opts};

/// A valid synthetic GB 11643 number born on `birth` (`YYYYMMDD`).
fn id_number(birth: &str, serial: &str) -> String {
    let first17 = format!("350102{birth}{serial}");
    format!("{first17}{}", crypto::idnum::check_character(&first17).unwrap())
}

async fn put_patient(e: &Engine, id: &str, id_number: Option<&str>) {
    let mut body = json!({"resourceType": "Patient", "id": id, "name": [{"family": "林", "given": ["测试"]}]});
    if let Some(n) = id_number {
        body["identifier"] = json!([{"system": "urn:oid:2.16.156.10011.1.3", "value": n}]);
    }
    e.update(&Ctx::system(), "Patient", id, body, &opts()).await.unwrap();
}

fn resident(patients: &[&str]) -> Ctx {
    as_role(Role::Resident, None, patients)
}

fn hospital() -> Ctx {
    as_role(Role::System, Some("hosp-1"), &[])
}

fn operator() -> Ctx {
    as_role(Role::Operator, None, &[])
}

/// Audit entries of one action, oldest first: `(outcome, detail)`.
async fn audited(store: &dyn ResourceStore, action: &str) -> Vec<(String, String)> {
    let entries = store.audit_read(0, 10_000).await.unwrap();
    entries.into_iter().filter(|e| e.record.action == action).map(|e| (e.record.outcome, e.record.detail)).collect()
}

#[tokio::test]
async fn registration_needs_real_name_verification_and_a_valid_id_number() {
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    let adult = id_number("19800203", "123");
    put_patient(e, "p-adult", Some(&adult)).await;
    put_patient(e, "p-none", None).await;
    put_patient(e, "p-bad", Some("350102198002031230")).await;

    // An account that was never real-name verified gets no card.
    let refused = e.healthcard_register(&resident(&["p-adult"]), &keys, "p-adult", None).await.unwrap_err();
    assert!(matches!(&refused, EngineError::Forbidden(m) if m.contains("real-name")), "{refused:?}");
    // Not the caller's Patient record.
    let refused = e.healthcard_register(&resident(&["other"]), &keys, "p-adult", Some(&adult)).await.unwrap_err();
    assert!(matches!(refused, EngineError::Forbidden(_)), "{refused:?}");
    // Staff do not register cards for residents.
    let refused = e.healthcard_register(&operator(), &keys, "p-adult", Some(&adult)).await.unwrap_err();
    assert!(matches!(refused, EngineError::Forbidden(_)), "{refused:?}");
    // The Patient must carry a valid ID number.
    let refused = e.healthcard_register(&resident(&["p-none"]), &keys, "p-none", Some(&adult)).await.unwrap_err();
    assert!(matches!(&refused, EngineError::Unprocessable(_)) && format!("{refused:?}").contains("no national ID"));
    let refused = e.healthcard_register(&resident(&["p-bad"]), &keys, "p-bad", Some(&adult)).await.unwrap_err();
    assert!(matches!(refused, EngineError::Unprocessable(_)), "{refused:?}");
    // Another adult's record, even if linked to the account, is not the caller's to register.
    let other_adult = id_number("19750101", "456");
    put_patient(e, "p-spouse", Some(&other_adult)).await;
    let refused =
        e.healthcard_register(&resident(&["p-adult", "p-spouse"]), &keys, "p-spouse", Some(&adult)).await.unwrap_err();
    assert!(matches!(&refused, EngineError::Forbidden(m) if m.contains("under 14")), "{refused:?}");

    let card = e.healthcard_register(&resident(&["p-adult"]), &keys, "p-adult", Some(&adult)).await.unwrap();
    assert_eq!(card.card_id.len(), 64);
    assert!(!card.card_id.contains(&adult) && card.status == CardStatus::Active && card.registered_by == "self");
    assert_eq!(card.static_code, format!("{}:1::350000", card.card_id));
    // One open card per Patient.
    let again = e.healthcard_register(&resident(&["p-adult"]), &keys, "p-adult", Some(&adult)).await.unwrap_err();
    assert_eq!(again.http_status(), 409);
    // One person, one card: another Patient record of the same person gets none.
    put_patient(e, "p-adult-elsewhere", Some(&adult)).await;
    let both = resident(&["p-adult", "p-adult-elsewhere"]);
    let again = e.healthcard_register(&both, &keys, "p-adult-elsewhere", Some(&adult)).await.unwrap_err();
    assert!(matches!(&again, EngineError::Conflict { message, .. } if message.contains("one person, one card")));

    // A guardian registers a card for a child under 14.
    let child = id_number("20200601", "111");
    put_patient(e, "p-child", Some(&child)).await;
    let guardian = resident(&["p-adult", "p-child"]);
    let card = e.healthcard_register(&guardian, &keys, "p-child", Some(&adult)).await.unwrap();
    assert_eq!(card.registered_by, "guardian");

    let outcomes: Vec<String> =
        audited(e.store().as_ref(), "healthcard-register").await.into_iter().map(|(o, _)| o).collect();
    assert_eq!(outcomes.iter().filter(|o| *o == "success").count(), 2);
    assert_eq!(outcomes.len(), 10, "{outcomes:?}");
}

async fn registered(e: &Engine, keys: &KeyRing) -> (String, Ctx) {
    let adult = id_number("19900512", "234");
    put_patient(e, "p1", Some(&adult)).await;
    let holder = resident(&["p1"]);
    let card = e.healthcard_register(&holder, keys, "p1", Some(&adult)).await.unwrap();
    (card.card_id, holder)
}

#[tokio::test]
async fn a_code_is_accepted_once_online_and_every_attempt_is_audited() {
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    let (card_id, holder) = registered(e, &keys).await;
    let code =
        e.healthcard_code(&holder, &keys, &card_id, Some("EC-VOUCHER-01".into()), Some("PAY-01".into())).await.unwrap();
    assert_eq!(code.claims.insurance_token.as_deref(), Some("EC-VOUCHER-01"));
    // Somebody else's card: no code.
    let refused = e.healthcard_code(&resident(&["p2"]), &keys, &card_id, None, None).await.unwrap_err();
    assert!(matches!(refused, EngineError::Forbidden(_)));

    // A resident cannot verify codes.
    let refused = e.healthcard_verify(&holder, &keys, &code.payload, "0101011", "T-01").await.unwrap_err();
    assert!(matches!(refused, EngineError::Forbidden(_)));
    let accepted = e.healthcard_verify(&hospital(), &keys, &code.payload, "0101011", "T-01").await.unwrap();
    assert_eq!(accepted.card.patient, "p1");
    assert_eq!(accepted.claims.payment_token.as_deref(), Some("PAY-01"));
    // The same code a second time, even at another terminal, is a replay.
    let replay = e.healthcard_verify(&hospital(), &keys, &code.payload, "0101051", "T-02").await.unwrap_err();
    assert_eq!(replay.http_status(), 409);
    assert!(replay.to_string().contains("already used"), "{replay}");
    // A static code, a tampered code, a bad care step.
    let card = e.healthcard_read(&holder, &card_id).await.unwrap();
    let static_code = e.healthcard_verify(&hospital(), &keys, &card.static_code, "0101011", "T-01").await.unwrap_err();
    assert!(format!("{static_code:?}").contains("PIN or SMS"), "{static_code:?}");
    let fresh = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();
    let mut tampered = fresh.payload.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'Q' } else { 'A' });
    assert!(e.healthcard_verify(&hospital(), &keys, &tampered, "0101011", "T-01").await.is_err());
    let bad_step = e.healthcard_verify(&hospital(), &keys, &fresh.payload, "01-01", "T-01").await.unwrap_err();
    assert_eq!(bad_step.http_status(), 400);
    // The fresh code was not consumed by the refused attempts.
    e.healthcard_verify(&hospital(), &keys, &fresh.payload, "0101081", "T-03").await.unwrap();

    let log = audited(e.store().as_ref(), "healthcard-verify").await;
    let outcomes: Vec<&str> = log.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["denied", "success", "failure", "failure", "failure", "failure", "success"]);
    assert!(log[1].1.contains("0101011 (appointment) at terminal T-01"), "{}", log[1].1);
    assert!(log[2].1.contains("replay"), "{}", log[2].1);
    assert!(log[3].1.contains("static-code-needs-check"), "{}", log[3].1);
    // The holder sees the uses in their access log.
    let mine = e.store().audit_for_patient("p1", 100).await.unwrap();
    assert!(mine.iter().filter(|a| a.record.action == "healthcard-verify").count() >= 2);

    // A use reported after a static-code PIN check.
    e.healthcard_report_use(&hospital(), &card_id, "0101012", "T-01").await.unwrap();
    assert_eq!(audited(e.store().as_ref(), "healthcard-use").await[0].0, "success");
}

#[tokio::test]
async fn suspended_and_closed_cards_issue_no_codes_but_honour_issued_ones() {
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    let (card_id, holder) = registered(e, &keys).await;
    let code = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();

    // Only operators change a card's status.
    let refused = e.healthcard_set_status(&holder, &card_id, CardStatus::Suspended, "lost").await.unwrap_err();
    assert!(matches!(refused, EngineError::Forbidden(_)));
    let card = e.healthcard_set_status(&operator(), &card_id, CardStatus::Suspended, "reported lost").await.unwrap();
    assert_eq!(card.status, CardStatus::Suspended);
    // Suspended: no new code and no static-code use, but a code issued while the card was active
    // stays good for its lifetime (issue 6: status never invalidates codes already issued).
    let refused = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap_err();
    assert!(refused.to_string().contains("suspended"), "{refused}");
    assert!(e.healthcard_report_use(&hospital(), &card_id, "0101011", "T-01").await.is_err());
    e.healthcard_verify(&hospital(), &keys, &code.payload, "0101011", "T-01").await.unwrap();
    // ... once: the replay is still refused.
    let replay = e.healthcard_verify(&hospital(), &keys, &code.payload, "0101011", "T-01").await.unwrap_err();
    assert!(replay.to_string().contains("already used"), "{replay}");

    // Resumed, codes are issued again.
    e.healthcard_set_status(&operator(), &card_id, CardStatus::Active, "found").await.unwrap();
    let code = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();

    // Closed for good: the code issued before still verifies within its lifetime; no new one;
    // the patient may register a new card, with a new id.
    e.healthcard_set_status(&operator(), &card_id, CardStatus::Closed, "holder request").await.unwrap();
    assert!(e.healthcard_code(&holder, &keys, &card_id, None, None).await.is_err());
    e.healthcard_verify(&hospital(), &keys, &code.payload, "0101011", "T-01").await.unwrap();
    let reopen = e.healthcard_set_status(&operator(), &card_id, CardStatus::Active, "oops").await.unwrap_err();
    assert_eq!(reopen.http_status(), 409);
    let verified = id_number("19900512", "234");
    let renewed = e.healthcard_register(&holder, &keys, "p1", Some(&verified)).await.unwrap();
    assert_ne!(renewed.card_id, card_id);
    assert_eq!(e.healthcard_for_patient(&holder, "p1").await.unwrap().card_id, renewed.card_id);
    // Query by others: not found, like a forbidden read.
    assert_eq!(e.healthcard_read(&resident(&["p2"]), &renewed.card_id).await.unwrap_err().http_status(), 404);
    assert_eq!(e.healthcard_read(&operator(), &card_id).await.unwrap().status, CardStatus::Closed);

    let suspends = audited(e.store().as_ref(), "healthcard-suspend").await;
    assert_eq!(suspends.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(), ["denied", "success"]);
}

#[tokio::test]
async fn a_code_issued_before_a_key_rotation_still_verifies() {
    let t = engine();
    let e = &t.engine;
    let dir = tempfile::tempdir().unwrap();
    let before = KeyRing::load_or_create(dir.path()).unwrap();
    let (card_id, holder) = registered(e, &before).await;
    let code = e.healthcard_code(&holder, &before, &card_id, None, None).await.unwrap();
    assert_eq!(code.claims.key_id, before.signing_key_id());

    KeyRing::rotate_sm2_in(dir.path()).unwrap();
    let after = KeyRing::load(dir.path()).unwrap();
    assert_ne!(after.signing_key_id(), before.signing_key_id());
    let accepted = e.healthcard_verify(&hospital(), &after, &code.payload, "0101011", "T-01").await.unwrap();
    assert_eq!(accepted.claims.key_id, before.signing_key_id());
    // New codes are signed with the new key; a ring that lost the old key names it.
    let new_code = e.healthcard_code(&holder, &after, &card_id, None, None).await.unwrap();
    assert_eq!(new_code.claims.key_id, after.signing_key_id());
    let stranger = KeyRing::ephemeral();
    let unknown = e.healthcard_verify(&hospital(), &stranger, &new_code.payload, "0101011", "T-01").await.unwrap_err();
    assert!(format!("{unknown:?}").contains("does not know"), "{unknown:?}");
}

/// 50 terminals scan the same code at once: exactly one is accepted, every other one is a
/// replay (409), and every attempt is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_racing_with_one_code_accept_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap());
    let config = engine::EngineConfig { export_dir: dir.path().join("export"), ..engine::EngineConfig::default() };
    let e = std::sync::Arc::new(Engine::new(store, config));
    let keys = std::sync::Arc::new(KeyRing::ephemeral());
    let (card_id, holder) = registered(&e, &keys).await;
    let code = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();
    let mut tasks = Vec::new();
    for terminal in 0..50 {
        let (e, keys, payload) = (e.clone(), keys.clone(), code.payload.clone());
        tasks.push(tokio::spawn(async move {
            e.healthcard_verify(&hospital(), &keys, &payload, "0101012", &format!("T-{terminal}")).await
        }));
    }
    let (mut accepted, mut replays) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(error) if error.http_status() == 409 => replays += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!((accepted, replays), (1, 49));
    let log = audited(e.store().as_ref(), "healthcard-verify").await;
    assert_eq!(log.iter().filter(|(o, _)| o == "success").count(), 1);
    assert_eq!(log.len(), 50);
}

/// A booked Appointment of `patient` starting `from_now_ms` from now, lasting an hour.
async fn visit(e: &Engine, patient: &str, from_now_ms: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let start = (now + from_now_ms) / 1000 * 1000;
    let body = json!({"resourceType": "Appointment", "status": "booked",
        "start": fhir::normalize::format_instant(start), "end": fhir::normalize::format_instant(start + 3_600_000),
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]});
    e.create(&Ctx::system(), "Appointment", body, &opts()).await.unwrap().resource.id
}

fn check_in_parameters(code: &str, appointment: Option<&str>) -> serde_json::Value {
    let mut parameter =
        vec![json!({"name": "code", "valueString": code}), json!({"name": "terminal", "valueString": "KIOSK-3"})];
    if let Some(id) = appointment {
        parameter.push(json!({"name": "appointment", "valueReference": {"reference": format!("Appointment/{id}")}}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

async fn status_of(e: &Engine, id: &str) -> String {
    let body: serde_json::Value =
        serde_json::from_str(e.read(&Ctx::system(), "Appointment", id).await.unwrap().body.as_deref().unwrap())
            .unwrap();
    body["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn check_in_by_code_marks_todays_booked_visit_arrived() {
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    let (card_id, holder) = registered(e, &keys).await;
    put_patient(e, "p2", Some(&id_number("19851111", "345"))).await;
    let now_visit = visit(e, "p1", 0).await;
    let later_visit = visit(e, "p1", 60_000).await;
    let tomorrow = visit(e, "p1", 86_400_000 + 60_000).await;
    let someone_elses = visit(e, "p2", 0).await;

    // A visit of somebody else, or not for today, is refused and the code is not consumed.
    let code = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();
    let refused =
        e.appointment_check_in(&hospital(), &keys, check_in_parameters(&code.payload, Some(&someone_elses))).await;
    assert_eq!(refused.unwrap_err().http_status(), 403);
    let refused = e.appointment_check_in(&hospital(), &keys, check_in_parameters(&code.payload, Some(&tomorrow))).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.http_status(), 409);
    assert!(refused.to_string().contains("not for today"), "{refused}");
    // A resident's own app cannot check in (terminals and staff verify codes).
    let refused = e.appointment_check_in(&holder, &keys, check_in_parameters(&code.payload, None)).await.unwrap_err();
    assert_eq!(refused.http_status(), 403);

    // The earliest of today's booked visits is checked in.
    let answer = e.appointment_check_in(&hospital(), &keys, check_in_parameters(&code.payload, None)).await.unwrap();
    assert_eq!(answer["parameter"][0]["resource"]["id"], now_visit.as_str());
    assert_eq!(answer["parameter"][0]["resource"]["status"], "arrived");
    assert_eq!(answer["parameter"][1]["valueReference"]["reference"], "Patient/p1");
    assert_eq!(answer["parameter"][2]["valueString"], card_id.as_str());
    assert_eq!(status_of(e, &now_visit).await, "arrived");
    // The same code again is a replay, even though another visit is waiting.
    let replay =
        e.appointment_check_in(&hospital(), &keys, check_in_parameters(&code.payload, None)).await.unwrap_err();
    assert!(replay.to_string().contains("already used"), "{replay}");
    assert_eq!(status_of(e, &later_visit).await, "booked");
    // A tampered code is refused with its reason.
    let fresh = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();
    let mut tampered = fresh.payload.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'Q' } else { 'A' });
    assert!(e.appointment_check_in(&hospital(), &keys, check_in_parameters(&tampered, None)).await.is_err());
    // Named, a fresh code checks in the later visit; nothing is left to check in today.
    e.appointment_check_in(&hospital(), &keys, check_in_parameters(&fresh.payload, Some(&later_visit))).await.unwrap();
    assert_eq!(status_of(e, &later_visit).await, "arrived");
    let third = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();
    let none = e.appointment_check_in(&hospital(), &keys, check_in_parameters(&third.payload, None)).await.unwrap_err();
    assert_eq!(none.http_status(), 404);
    assert_eq!(status_of(e, &tomorrow).await, "booked");
    // Bad parameters.
    let bad = e.appointment_check_in(&hospital(), &keys, json!({"resourceType": "Parameters"})).await.unwrap_err();
    assert_eq!(bad.http_status(), 400);

    // Every attempt is in the audit log: verifications (with the care step) and the refusals before them.
    let verified = audited(e.store().as_ref(), "healthcard-verify").await;
    let outcomes: Vec<&str> = verified.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["denied", "success", "failure", "failure", "success"], "{verified:?}");
    assert!(verified[1].1.contains("0101012"), "{}", verified[1].1);
    let refusals = audited(e.store().as_ref(), "appointment-check-in").await;
    assert_eq!(refusals.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(), ["denied", "failure", "failure"]);
}

/// Used code ids are kept while their codes could verify and pruned after, in batches: a
/// backlog of expired ids (more than one batch) is gone after a few verifications, live ids
/// stay, and a replay is still refused.
#[tokio::test]
async fn used_code_ids_are_pruned_once_their_codes_expire() {
    const KIND: &str = "healthcard-code";
    let t = engine();
    let e = &t.engine;
    let keys = KeyRing::ephemeral();
    let (card_id, holder) = registered(e, &keys).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let store = e.store();
    for i in 0..300 {
        let id = format!("{:012}-expired{i:03}", now - 100 + i / 10);
        store.kv_put(KIND, &id, "{}", &[format!("code:expired{i}")]).await.unwrap();
    }
    for i in 0..5 {
        let id = format!("{:012}-live{i}", now + 1000);
        store.kv_put(KIND, &id, "{}", &[format!("code:live{i}")]).await.unwrap();
    }
    let mut first = None;
    for _ in 0..3 {
        let code = e.healthcard_code(&holder, &keys, &card_id, None, None).await.unwrap();
        e.healthcard_verify(&hospital(), &keys, &code.payload, "0101011", "T-01").await.unwrap();
        first.get_or_insert(code.payload);
    }
    let left = store.kv_list(KIND, "", 1000).await.unwrap();
    let expired = left.iter().filter(|(id, _)| id.contains("-expired")).count();
    let live = left.iter().filter(|(id, _)| id.contains("-live")).count();
    assert_eq!((expired, live, left.len()), (0, 5, 8), "{left:?}");
    let replay = e.healthcard_verify(&hospital(), &keys, &first.unwrap(), "0101011", "T-02").await.unwrap_err();
    assert_eq!(replay.http_status(), 409);
}
