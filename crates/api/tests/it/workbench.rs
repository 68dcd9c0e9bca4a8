//! The staff workbench's security, driven in-process like a browser: no session sends to the
//! sign-in page, a wrong TOTP code is refused, the session cookie's attributes, a POST without
//! the form token (or from another origin) is refused and changes nothing, an area admits only
//! its roles, a doctor cannot open another doctor's visit, a pharmacy cannot see or dispense
//! another pharmacy's prescriptions, and sign-out revokes the session.

use access::{Principal, Role, Scopes};
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use store::Ctx;

use super::portal::{Browser, Page};
use super::{TestApp, app};

const TOTP_SECRET: &str = "HUTONGTESTTOTPKEY234";
const PASSWORD: &str = "Workbench#2026";

fn code_now() -> String {
    let key = crypto::totp::base32_decode(TOTP_SECRET).unwrap();
    crypto::totp::generate(&key, chrono::Utc::now().timestamp() as u64, 6)
}

/// A code that is not the current one (nor one step either side).
fn wrong_code() -> String {
    let key = crypto::totp::base32_decode(TOTP_SECRET).unwrap();
    let now = chrono::Utc::now().timestamp() as u64;
    let near: Vec<String> = [now - 30, now, now + 30].iter().map(|t| crypto::totp::generate(&key, *t, 6)).collect();
    (0..1_000_000).map(|n| format!("{n:06}")).find(|c| !near.contains(c)).unwrap()
}

fn ctx(role: Role, org: Option<&str>, practitioner: Option<&str>, patients: &[&str]) -> Ctx {
    let scopes = if role == Role::Resident { "patient/*.*" } else { "user/*.*" };
    Ctx::for_principal(
        "req-wb".into(),
        Principal {
            subject: format!("user/test-{}", role.code()),
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

/// Hospital h1 with two eligible internet doctors (d1, d2), its pharmacist (ph-a), two
/// pharmacies; patient p1 with an offline hypertension diagnosis; a visit of p1 with d1 in
/// progress and an approved prescription sent to pharmacy ph1. Staff accounts for both
/// doctors and both pharmacies. Answers (visit id, prescription number).
async fn world(t: &TestApp) -> (String, String) {
    let e = &t.state.engine;
    let put = |r: Value| async move {
        let (ty, id) = (r["resourceType"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string());
        e.update(&Ctx::system(), &ty, &id, r, &engine::RequestOptions::default()).await.unwrap();
    };
    use registry::practitioner::{
        INDEPENDENT_PRACTICE_START_EXTENSION, PRACTICE_CERTIFICATE_SYSTEM, QUALIFICATION_TYPE_SYSTEM,
        REGISTRATION_SYSTEM,
    };
    put(json!({"resourceType": "Organization", "id": "h1", "active": true, "name": "测试医院",
        "type": [{"coding": [{"system": "urn:test:org-type", "code": "hospital"}]}]}))
    .await;
    for (id, name) in [("ph1", "第一药房"), ("ph2", "第二药房")] {
        put(json!({"resourceType": "Organization", "id": id, "active": true, "name": name,
            "type": [{"coding": [{"system": "urn:test:org-type", "code": "pharmacy"}]}]}))
        .await;
    }
    for (n, name) in [(1, "林医生"), (2, "黄医生")] {
        let certificate = format!("11035010001234{n}");
        put(json!({"resourceType": "Practitioner", "id": format!("d{n}"), "active": true, "name": [{"text": name}],
            "identifier": [{"system": PRACTICE_CERTIFICATE_SYSTEM, "value": certificate}],
            "extension": [{"url": INDEPENDENT_PRACTICE_START_EXTENSION, "valueDate": "2015-07-01"}],
            "qualification": [{"identifier": [{"system": PRACTICE_CERTIFICATE_SYSTEM, "value": certificate}],
                "code": {"coding": [{"system": QUALIFICATION_TYPE_SYSTEM, "code": "physician-practice"}]},
                "period": {"start": "2015-07-01", "end": "2030-06-30"}}]}))
        .await;
        let coding: Vec<Value> = ["primary-site", "internet-practice", "prescribing-right"]
            .iter()
            .map(|c| json!({"system": REGISTRATION_SYSTEM, "code": c}))
            .collect();
        put(json!({"resourceType": "PractitionerRole", "id": format!("r{n}"), "active": true,
            "practitioner": {"reference": format!("Practitioner/d{n}")}, "organization": {"reference": "Organization/h1"},
            "period": {"start": "2020-01-01"}, "code": [{"coding": coding}]}))
        .await;
    }
    put(json!({"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1971-03-02",
        "name": [{"text": "郑测试"}]}))
    .await;
    put(json!({"resourceType": "Encounter", "id": "offline-1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"}, "serviceProvider": {"reference": "Organization/h1"}}))
    .await;
    put(json!({"resourceType": "Condition", "id": "htn",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}], "text": "高血压"},
        "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/offline-1"}}))
    .await;
    for (username, org, practitioner) in [
        ("doc1", "h1", Some("d1")),
        ("doc2", "h1", Some("d2")),
        ("pharm1", "ph1", None),
        ("pharm2", "ph2", None),
        ("pharm-h1", "h1", Some("ph-a")),
    ] {
        t.auth
            .create_user(auth::NewUser {
                username: username.into(),
                display: username.into(),
                role: if practitioner.is_some_and(|p| p.starts_with('d')) { "doctor" } else { "pharmacist" }.into(),
                password: Some(PASSWORD.into()),
                organization: Some(org.into()),
                region: Some("350102".into()),
                practitioner: practitioner.map(str::to_string),
                totp_secret: Some(TOTP_SECRET.into()),
                ..auth::NewUser::default()
            })
            .await
            .unwrap();
    }
    // A visit with d1, a prescription approved by h1's pharmacist and sent to ph1; a second
    // visit with d1 waiting.
    let resident = ctx(Role::Resident, None, None, &["p1"]);
    let request = |role: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
            {"name": "practitionerRole", "valueReference": {"reference": format!("PractitionerRole/{role}")}},
            {"name": "condition", "valueReference": {"reference": "Condition/htn"}},
            {"name": "reason", "valueString": "复诊"},
            {"name": "consent", "valueBoolean": true}]})
    };
    let visit = e.request_follow_up(&resident, request("r1")).await.unwrap();
    let visit_id = visit["id"].as_str().unwrap().to_string();
    let d1 = ctx(Role::Doctor, Some("h1"), Some("d1"), &[]);
    let start = json!({"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "in-progress"}]});
    // Started as the system (the doctor's own start, with a fresh TOTP code, is the browser test's).
    e.visit_status(&Ctx::system(), &visit_id, start).await.unwrap();
    let keys = t.auth.keys();
    let rx = json!({"resourceType": "Parameters", "parameter": [
        {"name": "encounter", "valueReference": {"reference": format!("Encounter/{visit_id}")}},
        {"name": "item", "part": [{"name": "drug", "valueCode": "D0001"}, {"name": "doseMg", "valueDecimal": 30},
            {"name": "timesPerDay", "valueInteger": 1}, {"name": "days", "valueInteger": 7}]}]});
    let signed = e.prescribe(&d1, &keys, rx).await.unwrap();
    let number = signed["parameter"][0]["valueIdentifier"]["value"].as_str().unwrap().to_string();
    let pharmacist = ctx(Role::Pharmacist, Some("h1"), Some("ph-a"), &[]);
    let approve = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "approve"}]});
    e.review_prescription(&pharmacist, &keys, &format!("{number}-review"), approve).await.unwrap();
    let route = json!({"resourceType": "Parameters", "parameter": [
        {"name": "prescription", "valueString": number}, {"name": "pharmacy", "valueReference": {"reference": "Organization/ph1"}}]});
    e.route_prescription(&resident, route).await.unwrap();
    (visit_id, number)
}

/// Signs a staff member in at an area; answers the response of the credentials POST.
async fn sign_in(b: &mut Browser<'_>, area: &str, username: &str, code: &str) -> Page {
    let form = b.get(&format!("/{area}/login")).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.text);
    let csrf = form.csrf();
    b.post(
        &format!("/{area}/login"),
        &[("csrf", &csrf), ("username", username), ("password", PASSWORD), ("totp", code)],
    )
    .await
}

#[tokio::test]
async fn no_session_goes_to_sign_in_and_a_wrong_totp_is_refused() {
    let t = app(1 << 20).await;
    world(&t).await;
    let mut b = Browser::new(&t);
    for area in ["doctor", "pharmacist", "pharmacy", "regulator"] {
        let page = b.get(&format!("/{area}/")).await;
        assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, format!("/{area}/login").as_str()));
    }
    let page = b.post("/doctor/visits/x/status", &[("status", "in-progress")]).await;
    assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, "/doctor/login"), "a POST without a session");
    let form = b.get("/doctor/login").await;
    assert!(form.text.contains("工作人员登录") && form.text.contains("lang=\"zh-CN\""), "{}", form.text);
    assert!(form.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'none'"));

    let refused = sign_in(&mut b, "doctor", "doc1", &wrong_code()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    assert!(refused.text.contains("用户名、密码或动态验证码错误"), "{}", refused.text);
    assert!(
        refused.headers.get_all(header::SET_COOKIE).iter().all(|c| !c.to_str().unwrap().starts_with("hutong_staff="))
    );
    assert_eq!(b.get("/doctor/").await.status, StatusCode::SEE_OTHER, "still no session");

    let ok = sign_in(&mut b, "doctor", "doc1", &code_now()).await;
    assert_eq!((ok.status, ok.location()), (StatusCode::SEE_OTHER, "/doctor/"), "{}", ok.text);
    let cookie = ok
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|c| c.to_str().unwrap().to_string())
        .find(|c| c.starts_with("hutong_staff="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/doctor;"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let queue = b.get("/doctor/").await;
    assert_eq!(queue.status, StatusCode::OK);
    assert!(queue.text.contains("郑测试"), "the doctor's queue names the patient: {}", queue.text);
    let missing = b.get("/doctor/nowhere").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.text.contains("页面不存在"), "{}", missing.text);
    let english = b.get("/doctor/?lang=en").await;
    assert!(english.text.contains("Visit queue") && english.text.contains("lang=\"en\""), "{}", english.text);
    let cookie = english.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("hutong_lang=en") && cookie.contains("Path=/doctor;"), "{cookie}");
    b.get("/doctor/?lang=zh").await;
    // A doctor's session does not open the pharmacy's pages.
    let page = b.get("/pharmacy/").await;
    assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, "/pharmacy/login"));

    // Sign-out revokes the token: the old cookie no longer works.
    let token = b.jar_value("hutong_staff").unwrap();
    let csrf = queue.csrf();
    let out = b.post("/doctor/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (StatusCode::SEE_OTHER, "/doctor/login?done=logout"));
    assert!(t.auth.authenticate(&token).await.is_err(), "the token is revoked");
}

#[tokio::test]
async fn posts_need_the_form_token_and_doctors_see_only_their_own_visits() {
    let t = app(1 << 20).await;
    let (visit, _) = world(&t).await;
    let mut doc1 = Browser::new(&t);
    sign_in(&mut doc1, "doctor", "doc1", &code_now()).await;
    let page = doc1.get(&format!("/doctor/visits/{visit}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("郑测试") && page.text.contains("接诊中"), "{}", page.text);
    let csrf = page.csrf();

    // Without the form token, or with it from another origin: 403, nothing changes.
    let forged = doc1.post(&format!("/doctor/visits/{visit}/status"), &[("status", "finished")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text);
    let request = Request::builder()
        .method("POST")
        .uri(format!("/doctor/visits/{visit}/status"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ORIGIN, "https://evil.example");
    let cross = doc1.send(request, format!("csrf={csrf}&status=finished")).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "{}", cross.text);
    let message = doc1.post(&format!("/doctor/visits/{visit}/messages"), &[("text", "伪造的消息")]).await;
    assert_eq!(message.status, StatusCode::FORBIDDEN);
    let still = t.state.engine.read(&Ctx::system(), "Encounter", &visit).await.unwrap();
    assert!(still.body.unwrap().contains("\"in-progress\""), "the visit did not change");

    // Another doctor of the same hospital: the visit is refused (and the refusal audited).
    let mut doc2 = Browser::new(&t);
    sign_in(&mut doc2, "doctor", "doc2", &code_now()).await;
    let other = doc2.get(&format!("/doctor/visits/{visit}")).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.text);
    assert!(!other.text.contains("郑测试"), "no patient data on the refusal page");
    assert!(!doc2.get("/doctor/").await.text.contains("郑测试"), "nor in the other doctor's queue");
    let csrf2 = doc2.get("/doctor/").await.csrf();
    let post = doc2.post(&format!("/doctor/visits/{visit}/messages"), &[("csrf", &csrf2), ("text", "越权")]).await;
    assert_eq!(post.status, StatusCode::FORBIDDEN, "{}", post.text);
    let audit = t.auth.store().audit_read(0, 100_000).await.unwrap();
    assert!(
        audit.iter().any(|e| e.record.action == "internet-visit-read" && e.record.outcome == "denied"),
        "the refusal is in the audit log"
    );

    // With the token, the treating doctor's message is stored as a Communication of the visit.
    let sent = doc1.post(&format!("/doctor/visits/{visit}/messages"), &[("csrf", &csrf), ("text", "按时服药")]).await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.text);
    let thread = doc1.get(&format!("/doctor/visits/{visit}")).await;
    assert!(thread.text.contains("按时服药"), "{}", thread.text);
}

#[tokio::test]
async fn a_pharmacy_sees_and_dispenses_only_what_was_sent_to_it() {
    let t = app(1 << 20).await;
    let (_, number) = world(&t).await;
    let mut other = Browser::new(&t);
    sign_in(&mut other, "pharmacy", "pharm2", &code_now()).await;
    let queue = other.get("/pharmacy/").await;
    assert_eq!(queue.status, StatusCode::OK, "{}", queue.text);
    assert!(!queue.text.contains(&number), "another pharmacy's prescription is not listed: {}", queue.text);
    let csrf = queue.csrf();
    for pharmacy in ["Organization/ph1", "Organization/ph2"] {
        let page = other
            .post("/pharmacy/dispense", &[("csrf", &csrf), ("prescription", &number), ("pharmacy", pharmacy)])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{pharmacy}: {}", page.text);
    }
    let mut mine = Browser::new(&t);
    sign_in(&mut mine, "pharmacy", "pharm1", &code_now()).await;
    let queue = mine.get("/pharmacy/").await;
    assert!(queue.text.contains(&number), "{}", queue.text);
    let csrf = queue.csrf();
    let done = mine
        .post("/pharmacy/dispense", &[("csrf", &csrf), ("prescription", &number), ("pharmacy", "Organization/ph1")])
        .await;
    assert_eq!((done.status, done.location()), (StatusCode::SEE_OTHER, "/pharmacy/?done=dispensed"), "{}", done.text);
    let again = mine
        .post("/pharmacy/dispense", &[("csrf", &csrf), ("prescription", &number), ("pharmacy", "Organization/ph1")])
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert!(again.text.contains("已调配"), "the refusal in Chinese: {}", again.text);
}

#[tokio::test]
async fn the_hospital_pharmacist_reviews_and_a_rejection_reaches_the_doctor() {
    let t = app(1 << 20).await;
    let (visit, _) = world(&t).await;
    // A second prescription of the running visit, waiting for review.
    let d1 = ctx(Role::Doctor, Some("h1"), Some("d1"), &[]);
    let rx = json!({"resourceType": "Parameters", "parameter": [
        {"name": "encounter", "valueReference": {"reference": format!("Encounter/{visit}")}},
        {"name": "item", "part": [{"name": "drug", "valueCode": "D0006"}, {"name": "doseMg", "valueDecimal": 20},
            {"name": "timesPerDay", "valueInteger": 1}, {"name": "days", "valueInteger": 7}]}]});
    let signed = t.state.engine.prescribe(&d1, &t.auth.keys(), rx).await.unwrap();
    let number = signed["parameter"][0]["valueIdentifier"]["value"].as_str().unwrap().to_string();

    let mut b = Browser::new(&t);
    sign_in(&mut b, "pharmacist", "pharm-h1", &code_now()).await;
    let queue = b.get("/pharmacist/").await;
    assert!(queue.text.contains(&number), "{}", queue.text);
    let review = b.get(&format!("/pharmacist/reviews/{number}-review")).await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.text);
    assert!(review.text.contains("阿托伐他汀钙片") && review.text.contains("验证通过"), "{}", review.text);
    let csrf = review.csrf();
    let path = format!("/pharmacist/reviews/{number}-review");
    let no_reason = b.post(&path, &[("csrf", &csrf), ("decision", "reject")]).await;
    assert_eq!(no_reason.status, StatusCode::BAD_REQUEST, "{}", no_reason.text);
    assert!(no_reason.text.contains("驳回须说明理由"), "{}", no_reason.text);
    let rejected = b.post(&path, &[("csrf", &csrf), ("decision", "reject"), ("reason", "剂量需与既往用药核对")]).await;
    assert_eq!((rejected.status, rejected.location()), (StatusCode::SEE_OTHER, "/pharmacist/?done=reject"));
    assert!(!b.get("/pharmacist/").await.text.contains(&number), "reviewed: off the queue");
    // A pharmacy's pharmacist is not the hospital's: no review for them.
    let mut pharmacy = Browser::new(&t);
    sign_in(&mut pharmacy, "pharmacist", "pharm1", &code_now()).await;
    let other = pharmacy.get(&path).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.text);

    let mut doctor = Browser::new(&t);
    sign_in(&mut doctor, "doctor", "doc1", &code_now()).await;
    let page = doctor.get(&format!("/doctor/visits/{visit}")).await;
    assert!(page.text.contains("药师驳回：剂量需与既往用药核对"), "{}", page.text);
}
