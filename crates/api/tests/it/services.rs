//! Smart guidance, the booking-rate KPI and check-in by health card over HTTP: answers from the
//! stored data, OperationOutcomes for bad input, and who may ask.

use axum::http::StatusCode;
use serde_json::json;

use super::security::{token, with_token};
use super::{FHIR, TestApp, app, assert_outcome, req, send};

async fn put(app: &TestApp, resource: serde_json::Value) {
    let url = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let (status, _, body) = send(app, req("PUT", &url, FHIR, &resource.to_string())).await;
    assert!(status.is_success(), "{url}: {body}");
}

fn hospital(id: &str, level: &str) -> serde_json::Value {
    json!({"resourceType": "Organization", "id": id, "name": format!("示例医院{id}"),
        "identifier": [{"system": "https://hutong.dev/fhir/sid/uscc", "value": "12350100MB0000001Y"}],
        "type": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/institution-type", "code": "hospital"}]}],
        "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/institution-level",
                       "valueCoding": {"system": "https://hutong.dev/fhir/CodeSystem/institution-level", "code": level}}],
        "address": [{"extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/gb2260-division", "valueCode": "350102"}]}]})
}

fn visit(id: &str, org: &str, class: &str, department: &str, booked: bool) -> serde_json::Value {
    let mut e = json!({"resourceType": "Encounter", "id": id, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
        "serviceType": {"text": department}, "period": {"start": "2026-11-03T09:00:00+08:00"},
        "serviceProvider": {"reference": format!("Organization/{org}")}});
    if booked {
        e["appointment"] = json!([{"reference": format!("Appointment/a-{id}")}]);
    }
    e
}

async fn resident_token(app: &TestApp) -> String {
    app.auth
        .create_user(auth::NewUser {
            username: "r-services".into(),
            role: "resident".into(),
            password: Some("Pass#word1".into()),
            patients: vec!["p1".into()],
            id_number: Some("11010519491231002X".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, body) = token(app, "grant_type=password&username=r-services&password=Pass%23word1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn guidance_suggests_departments_and_doctors() {
    let app = app(1 << 20).await;
    put(&app, hospital("h1", "3A")).await;
    put(&app, json!({"resourceType": "Practitioner", "id": "d1", "name": [{"text": "陈医生"}]})).await;
    put(
        &app,
        json!({"resourceType": "PractitionerRole", "id": "r1", "active": true,
        "practitioner": {"reference": "Practitioner/d1"}, "organization": {"reference": "Organization/h1"},
        "specialty": [{"text": "内科"}]}),
    )
    .await;
    let resident = resident_token(&app).await;

    // 胸闷心慌 → cardiology; no cardiologist on the platform, so the internal-medicine doctor.
    let uri = "/guidance?symptoms=%E8%83%B8%E9%97%B7%E5%BF%83%E6%85%8C&age=60&sex=male";
    let (status, _, body) = send(&app, with_token(req("GET", uri, None, ""), &resident)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["departments"][0]["department"], "心血管内科");
    assert_eq!(body["departments"][0]["matched"], json!(["胸闷", "心慌"]));
    assert_eq!(body["departments"][0]["doctors"][0]["practitionerRole"], "PractitionerRole/r1");
    assert_eq!(body["departments"][0]["doctors"][0]["specialty"], "内科");
    assert_eq!(body["alerts"], json!([]));
    // 胸痛 + 大汗: a red flag.
    let uri = "/guidance?symptoms=%E8%83%B8%E7%97%9B%E5%A4%A7%E6%B1%97&age=60";
    let (_, _, body) = send(&app, with_token(req("GET", uri, None, ""), &resident)).await;
    assert!(body["alerts"][0].as_str().unwrap().contains("120"), "{body}");

    for (uri, words) in [
        ("/guidance?age=30", "symptoms"),
        ("/guidance?symptoms=x&age=old", "age"),
        ("/guidance?symptoms=x&sex=x", "sex"),
        ("/guidance?symptom=x", "no parameter 'symptom'"),
    ] {
        let (status, _, body) = send(&app, with_token(req("GET", uri, None, ""), &resident)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_outcome(&body, words);
    }
    let mut anonymous = req("GET", "/guidance?symptoms=x", None, "");
    anonymous.headers_mut().insert(axum::http::header::AUTHORIZATION, "Bearer nope".parse().unwrap());
    assert_eq!(send(&app, anonymous).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn booking_rate_counts_outpatient_visits_booked_ahead() {
    let app = app(1 << 20).await;
    put(&app, hospital("h3", "3A")).await;
    put(&app, hospital("h1", "1A")).await;
    for e in [
        visit("e1", "h3", "AMB", "内科", true),
        visit("e2", "h3", "AMB", "内科", true),
        visit("e3", "h3", "AMB", "儿科", true),
        visit("e4", "h3", "AMB", "儿科", false),
        visit("e5", "h3", "EMER", "急诊科", false),
        visit("e6", "h1", "AMB", "全科", false),
    ] {
        put(&app, e).await;
    }
    let (status, _, body) = send(&app, req("GET", "/kpi/booking-rate?from=2026-11-01&to=2026-11-30", None, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tertiary"]["visits"], 4);
    assert_eq!(body["tertiary"]["bookedAhead"], 3);
    assert_eq!(body["tertiary"]["rate"], 0.75);
    assert_eq!(body["tertiary"]["met"], false);
    let h3 = body["hospitals"].as_array().unwrap().iter().find(|h| h["organization"] == "Organization/h3").unwrap();
    assert_eq!(h3["departments"][0], json!({"department": "儿科", "visits": 2, "bookedAhead": 1, "rate": 0.5}));
    assert_eq!(h3["departments"][1]["rate"], 1.0);
    let h1 = body["hospitals"].as_array().unwrap().iter().find(|h| h["organization"] == "Organization/h1").unwrap();
    assert_eq!((h1["tertiary"].as_bool(), h1["rate"].as_f64()), (Some(false), Some(0.0)));
    // Outside the range: nothing.
    let (_, _, body) = send(&app, req("GET", "/kpi/booking-rate?from=2026-10-01&to=2026-10-31", None, "")).await;
    assert_eq!((body["tertiary"]["visits"].as_u64(), body["tertiary"]["rate"].is_null()), (Some(0), true));

    let (status, _, body) = send(&app, req("GET", "/kpi/booking-rate?from=2026-11-31&to=2026-12-01", None, "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "2026-11-31");
    let (status, _, _) = send(&app, req("GET", "/kpi/booking-rate?from=2026-11-01", None, "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resident = resident_token(&app).await;
    let uri = "/kpi/booking-rate?from=2026-11-01&to=2026-11-30";
    assert_eq!(send(&app, with_token(req("GET", uri, None, ""), &resident)).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn check_in_rejects_bad_parameters_with_an_outcome() {
    let app = app(1 << 20).await;
    let (status, _, body) =
        send(&app, req("POST", "/fhir/Appointment/$check-in", FHIR, r#"{"resourceType": "Parameters"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "code");
    let forged = json!({"resourceType": "Parameters", "parameter": [
        {"name": "code", "valueString": "HC1:AAAA"}, {"name": "terminal", "valueString": "K-1"}]});
    let (status, _, body) = send(&app, req("POST", "/fhir/Appointment/$check-in", FHIR, &forged.to_string())).await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let (status, _, _) = send(&app, req("GET", "/fhir/Appointment/$check-in", None, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn internet_hospital_operations_answer_outcomes() {
    let app = app(1 << 20).await;
    let post = |uri: &str, body: serde_json::Value| req("POST", uri, FHIR, &body.to_string());
    // Not Parameters; an unknown parameter; a visit that does not exist.
    let (status, _, body) =
        send(&app, post("/fhir/Encounter/$request-follow-up", json!({"resourceType": "Patient"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "Parameters");
    let unknown = json!({"resourceType": "Parameters", "parameter": [{"name": "doctor", "valueString": "x"}]});
    let (status, _, body) = send(&app, post("/fhir/Encounter/$request-follow-up", unknown)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "no parameter 'doctor'");
    let visit = json!({"resourceType": "Parameters", "parameter": [{"name": "encounter", "valueReference": {"reference": "Encounter/nope"}}]});
    let (status, _, body) = send(&app, post("/fhir/MedicationRequest/$prescribe", visit)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = send(
        &app,
        post(
            "/fhir/Encounter/nope/$visit-status",
            json!({"resourceType": "Parameters",
        "parameter": [{"name": "status", "valueCode": "in-progress"}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = send(&app, req("GET", "/fhir/MedicationRequest/$verify-prescription", None, "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "number");
    let (status, _, _) =
        send(&app, req("GET", "/fhir/MedicationRequest/$verify-prescription?number=RX0", None, "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(&app, req("GET", "/fhir/MedicationRequest/$prescribe", None, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let review = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "approve"}]});
    let (status, _, body) = send(&app, post("/fhir/Task/nope/$review-prescription", review)).await;
    assert!(status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN, "{status} {body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn cda_documents_are_stored_once_with_what_they_say() {
    let app = app(16 << 20).await;
    let xml = super::outpatient_cda();
    let cda_type = Some("application/hl7-cda+xml");
    let (status, _, body) = send(&app, req("POST", "/cda", cda_type, &xml)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "transaction-response");
    let created: Vec<&str> =
        body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert!(created.iter().all(|s| s.starts_with("201")), "{created:?}");
    // Found as a document of the patient, with the extracted diagnosis.
    let (_, _, patients) =
        send(&app, req("GET", "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.3|350102198002031231", None, ""))
            .await;
    let patient = patients["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    let (_, _, docs) = send(&app, req("GET", &format!("/fhir/DocumentReference?patient={patient}"), None, "")).await;
    assert_eq!(docs["entry"][0]["resource"]["type"]["coding"][0]["code"], "C0002");
    let (_, _, conditions) =
        send(&app, req("GET", &format!("/fhir/Condition?patient={patient}&code=I10"), None, "")).await;
    assert_eq!(conditions["entry"].as_array().map(Vec::len), Some(1));
    // Sent again: nothing new.
    let (status, _, again) = send(&app, req("POST", "/cda", cda_type, &xml)).await;
    assert_eq!(status, StatusCode::OK);
    let created = again["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["response"]["status"].as_str().unwrap().starts_with("201"))
        .count();
    assert_eq!(created, 0, "{again}");
    let binary = again["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["response"]["location"].as_str().is_some_and(|l| l.contains("Binary/")))
        .unwrap();
    assert!(
        binary["response"]["location"].as_str().unwrap().ends_with("/_history/1"),
        "the same content makes no new version: {binary}"
    );
    let (_, _, conditions) = send(&app, req("GET", &format!("/fhir/Condition?patient={patient}"), None, "")).await;
    assert_eq!(conditions["entry"].as_array().map(Vec::len), Some(1));

    // Hostile and broken documents.
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><ClinicalDocument xmlns="urn:hl7-org:v3">&e;</ClinicalDocument>"#;
    let (status, _, body) = send(&app, req("POST", "/cda", cda_type, xxe)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["issue"][0]["code"], "security");
    let (status, _, body) =
        send(&app, req("POST", "/cda", cda_type, r#"<ClinicalDocument xmlns="urn:hl7-org:v3"/>"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["issue"].as_array().unwrap().len() >= 5, "{body}");
    let (status, _, _) = send(&app, req("POST", "/cda", Some("application/json"), "{}")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn data_quality_blocks_quarantines_scores_and_reprocesses() {
    let app = app(1 << 20).await;
    // A clean record, one with warnings (kept as sent), and one a blocking rule refuses.
    let clean = json!({"resourceType": "Patient", "id": "q1", "name": [{"text": "林一"}], "gender": "male", "birthDate": "1980-02-03",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}]});
    put(&app, clean).await;
    let warned = json!({"resourceType": "Patient", "id": "q2", "gender": "female",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "110105194912310021"}]});
    put(&app, warned).await;
    let (_, _, stored) = send(&app, req("GET", "/fhir/Patient/q2", None, "")).await;
    assert_eq!(stored["identifier"][0]["value"], "110105194912310021", "never corrected");
    let future = json!({"resourceType": "Encounter", "id": "q3", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/q1"}, "period": {"start": "2099-01-01T09:00:00+08:00"}});
    let (status, _, body) = send(&app, req("PUT", "/fhir/Encounter/q3", FHIR, &future.to_string())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_outcome(&body, "future-date");
    assert_eq!(
        send(&app, req("GET", "/fhir/Encounter/q3", None, "")).await.0,
        StatusCode::NOT_FOUND,
        "nothing written"
    );

    // The sending institution sees it held, with the reason, and sends a correction through it.
    let (status, _, held) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let record = &held["held"][0];
    assert_eq!(record["findings"][0]["rule"], "future-date");
    let id = record["id"].as_str().unwrap().to_string();
    let uri = format!("/quality/quarantine/{}/reprocess", id.replace('|', "%7C"));
    let (status, _, _) = send(&app, req("POST", &uri, FHIR, "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "retried as held, still refused");
    let mut fixed = future.clone();
    fixed["period"]["start"] = json!("2026-11-30T09:00:00+08:00");
    let (status, _, done) = send(&app, req("POST", &uri, FHIR, &fixed.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["resource"], "Encounter/q3");
    let (_, _, held) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    let remaining: Vec<&serde_json::Value> =
        held["held"].as_array().unwrap().iter().filter(|h| h["id"] == id.as_str()).collect();
    assert!(remaining.is_empty(), "{held}");

    // The scorecard counts what came in, by rule.
    let today = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .format("%Y-%m-%d")
        .to_string();
    let uri = format!("/quality/scorecard?organization=unknown&from={today}&to={today}");
    let (status, _, card) = send(&app, req("GET", &uri, None, "")).await;
    assert_eq!(status, StatusCode::OK, "{card}");
    let day = &card["days"][0];
    assert!(day["received"].as_u64().unwrap() >= 4, "{card}");
    assert!(day["blocked"].as_u64().unwrap() >= 2, "{card}");
    assert!(day["rules"]["id-checksum"].as_u64().unwrap() >= 1, "{card}");
    assert!(day["rules"]["missing-element"].as_u64().unwrap() >= 2, "{card}");
    // Residents see none of it.
    let resident = resident_token(&app).await;
    assert_eq!(send(&app, with_token(req("GET", &uri, None, ""), &resident)).await.0, StatusCode::FORBIDDEN);
}

/// A doctor starts each consultation with a fresh code of their authenticator (`otp`), checked
/// against their own account: none, a wrong one or another account's refuse with a 403 that says
/// what to do; the right one starts the visit.
#[tokio::test]
async fn starting_a_consultation_needs_a_fresh_second_factor() {
    let app = app(1 << 20).await;
    let licence = json!({"code": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/qualification-type", "code": "physician-practice"}]},
        "period": {"start": "2010-07-01", "end": "2035-06-30"}});
    let registration: Vec<serde_json::Value> = ["primary-site", "internet-practice", "prescribing-right"]
        .iter()
        .map(|c| json!({"system": "https://hutong.dev/fhir/CodeSystem/practice-registration", "code": c}))
        .collect();
    put(&app, hospital("h1", "3A")).await;
    for doctor in ["d1", "d2"] {
        put(&app, json!({"resourceType": "Practitioner", "id": doctor, "active": true, "name": [{"text": "医生"}],
            "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/independent-practice-start", "valueDate": "2012-01-01"}],
            "qualification": [licence]}))
        .await;
    }
    put(
        &app,
        json!({"resourceType": "PractitionerRole", "id": "r1", "active": true, "period": {"start": "2015-01-01"},
        "practitioner": {"reference": "Practitioner/d1"}, "organization": {"reference": "Organization/h1"},
        "code": [{"coding": registration}]}),
    )
    .await;
    put(&app, json!({"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-05"})).await;
    put(
        &app,
        json!({"resourceType": "Encounter", "id": "e-offline", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"}}),
    )
    .await;
    put(&app, json!({"resourceType": "Condition", "id": "c1",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
        "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e-offline"}}))
    .await;
    let request = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
        {"name": "practitionerRole", "valueReference": {"reference": "PractitionerRole/r1"}},
        {"name": "condition", "valueReference": {"reference": "Condition/c1"}},
        {"name": "consent", "valueBoolean": true}]});
    let (status, _, visit) =
        send(&app, req("POST", "/fhir/Encounter/$request-follow-up", FHIR, &request.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{visit}");
    let visit = visit["id"].as_str().unwrap().to_string();

    // Two doctors' accounts; each signs in with password and TOTP.
    let mut tokens = Vec::new();
    let mut secrets = Vec::new();
    for (user, doctor) in [("doc-a", "d1"), ("doc-b", "d2")] {
        let (_, _, totp) = app
            .auth
            .create_user(auth::NewUser {
                username: user.into(),
                role: "doctor".into(),
                password: Some("Pass#word1".into()),
                organization: Some("h1".into()),
                practitioner: Some(doctor.into()),
                region: Some("350102".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let secret = crypto::totp::base32_decode(&totp.unwrap()).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let code = crypto::totp::generate(&secret, now, 6);
        let (status, body) =
            token(&app, &format!("grant_type=password&username={user}&password=Pass%23word1&totp={code}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push(body["access_token"].as_str().unwrap().to_string());
        secrets.push(secret);
    }
    let start = |otp: Option<String>| {
        let mut parameter = vec![json!({"name": "status", "valueCode": "in-progress"})];
        if let Some(otp) = otp {
            parameter.push(json!({"name": "otp", "valueString": otp}));
        }
        json!({"resourceType": "Parameters", "parameter": parameter}).to_string()
    };
    let code_of = |secret: &[u8]| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        crypto::totp::generate(secret, now, 6)
    };
    let uri = format!("/fhir/Encounter/{visit}/$visit-status");
    let doctor = &tokens[0];
    // No code: 403 saying what is needed.
    let (status, _, body) = send(&app, with_token(req("POST", &uri, FHIR, &start(None)), doctor)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_outcome(&body, "otp");
    // A wrong code (a well-formed one that is not current).
    let wrong = format!("{:06}", (code_of(&secrets[0]).parse::<u32>().unwrap() + 500_000) % 1_000_000);
    let (status, _, body) = send(&app, with_token(req("POST", &uri, FHIR, &start(Some(wrong))), doctor)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_outcome(&body, "authenticator code is wrong");
    // The other doctor's current code is not this doctor's second factor.
    let (status, _, body) =
        send(&app, with_token(req("POST", &uri, FHIR, &start(Some(code_of(&secrets[1])))), doctor)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The other doctor with their own code is not the treating doctor.
    let (status, _, body) =
        send(&app, with_token(req("POST", &uri, FHIR, &start(Some(code_of(&secrets[1])))), &tokens[1])).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_outcome(&body, "treating doctor");
    // The visit is still waiting; the right code starts it.
    let (status, _, body) =
        send(&app, with_token(req("POST", &uri, FHIR, &start(Some(code_of(&secrets[0])))), doctor)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "in-progress");
}

/// A WS/T 500 document without a section its type requires is refused naming the section, held in
/// the quarantine with that reason, and writes nothing.
#[tokio::test]
async fn a_cda_document_missing_a_required_section_is_refused_and_quarantined() {
    let app = app(1 << 20).await;
    let xml = super::outpatient_cda();
    // The chief complaint section taken away, its title left in an uncoded section.
    let at = xml.find(r#"code="10154-3""#).unwrap();
    let start = xml[..at].rfind("<component>").unwrap();
    let end = at + xml[at..].find("</component>").unwrap() + "</component>".len();
    let missing =
        format!("{}<component><section><title>主诉</title><text/></section></component>{}", &xml[..start], &xml[end..]);
    let (status, _, body) = send(&app, req("POST", "/cda", Some("application/hl7-cda+xml"), &missing)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_outcome(&body, "C0002 门急诊病历 needs the 主诉 section (LOINC 10154-3)");
    let issues = body["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 2, "the missing section, then the quarantine entry: {body}");
    assert!(issues[1]["diagnostics"].as_str().unwrap().starts_with("the document is quarantined as "), "{body}");

    let (status, _, held) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let held: Vec<&serde_json::Value> =
        held["held"].as_array().unwrap().iter().filter(|h| h["resourceType"] == "ClinicalDocument").collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["findings"][0]["rule"], "cda-invalid");
    assert!(held[0]["findings"][0]["message"].as_str().unwrap().contains("主诉 section (LOINC 10154-3)"), "{held:?}");
    assert_eq!(crypto::unbase64(held[0]["data"].as_str().unwrap()).unwrap(), missing.as_bytes());
    // Nothing was written.
    let (_, _, patients) =
        send(&app, req("GET", "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.3|350102198002031231", None, ""))
            .await;
    assert_eq!(patients["entry"].as_array().map_or(0, Vec::len), 0, "{patients}");
    // The complete document is accepted.
    let (status, _, body) = send(&app, req("POST", "/cda", Some("application/hl7-cda+xml"), &xml)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A CDA document refused before extraction (not well-formed, a DTD) is kept in the sending
/// institution's quarantine with the reason and the bytes as sent; a retry as held is refused
/// again and keeps it; discarding removes it.
#[tokio::test]
async fn refused_cda_documents_are_quarantined_not_lost() {
    let app = app(1 << 20).await;
    let cda_type = Some("application/hl7-cda+xml");
    let broken = "<?xml version=\"1.0\"?><ClinicalDocument xmlns=\"urn:hl7-org:v3\"><title>门诊病历</title>";
    let (status, _, body) = send(&app, req("POST", "/cda", cda_type, broken)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_outcome(&body, "not well-formed");
    assert_eq!(body["issue"][1]["severity"], "information");
    assert!(body["issue"][1]["diagnostics"].as_str().unwrap().starts_with("the document is quarantined as unknown|"));
    let bomb = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><ClinicalDocument xmlns=\"urn:hl7-org:v3\">&a;</ClinicalDocument>";
    let (status, _, body) = send(&app, req("POST", "/cda", cda_type, bomb)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_outcome(&body, "DTD");

    let (status, _, held) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let documents: Vec<&serde_json::Value> =
        held["held"].as_array().unwrap().iter().filter(|h| h["resourceType"] == "ClinicalDocument").collect();
    assert_eq!(documents.len(), 2, "{held}");
    let held_broken = documents
        .iter()
        .find(|d| d["findings"][0]["message"].as_str().unwrap().contains("not well-formed"))
        .expect("the broken document is held");
    assert_eq!(held_broken["findings"][0]["rule"], "cda-unreadable");
    assert_eq!(
        crypto::unbase64(held_broken["data"].as_str().unwrap()).unwrap(),
        broken.as_bytes(),
        "the bytes as sent"
    );
    let id = held_broken["id"].as_str().unwrap().replace('|', "%7C");
    // Retried as held: refused again, and still the one entry.
    let (status, _, _) = send(&app, req("POST", &format!("/quality/quarantine/{id}/reprocess"), FHIR, "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, _, again) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    assert_eq!(again["held"].as_array().unwrap().len(), held["held"].as_array().unwrap().len(), "still one entry each");
    let (status, _, _) = send(
        &app,
        req("POST", &format!("/quality/quarantine/{id}/reprocess"), FHIR, "{\"resourceType\": \"Patient\"}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a document is not corrected as a resource");
    let (status, _, _) = send(&app, req("DELETE", &format!("/quality/quarantine/{id}"), None, "")).await;
    assert!(status.is_success(), "{status}");
    let (_, _, held) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    let left =
        held["held"].as_array().unwrap().iter().filter(|h| h["id"].as_str().unwrap().replace('|', "%7C") == id).count();
    assert_eq!(left, 0);
}

/// Processes held `HL7v2Message` entries in place of the binary's HL7 processing: the bytes
/// `MSH|good` (held or sent as `{"message": …}`) commit, anything else is refused again.
struct StubReprocessor;

#[async_trait::async_trait]
impl engine::RawReprocessor for StubReprocessor {
    async fn reprocess(
        &self,
        _engine: &engine::Engine,
        _ctx: &store::Ctx,
        held: engine::HeldRaw<'_>,
        corrected: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, engine::RawRefusal> {
        let bytes = corrected.and_then(|c| c["message"].as_str()).map(str::as_bytes).unwrap_or(held.bytes);
        if bytes == b"MSH|good" {
            return Ok(json!({"ackCode": "AA"}));
        }
        let finding =
            engine::RawFinding { rule: "hl7-mapping".into(), message: "still bad".into(), codes: Default::default() };
        Err(engine::RawRefusal {
            error: engine::EngineError::Unprocessable(vec![fhir::Issue::error(fhir::IssueType::Invalid, "still bad")]),
            findings: vec![finding],
        })
    }
}

/// A held raw entry of a kind no reprocessor is installed for answers 501 and stays; with one
/// installed, a retry refused again keeps the one entry with the new reasons and answers the
/// refusal, and a correction that commits removes it.
#[tokio::test]
async fn held_raw_entries_are_reprocessed_by_the_reprocessor_of_their_kind() {
    let app = app(1 << 20).await;
    let hold = engine::RawHold {
        kind: "HL7v2Message".into(),
        content_type: "x-application/hl7-v2+er7".into(),
        bytes: b"MSH|bad".to_vec(),
        sender: Some("NO-SUCH-HOSP".into()),
        findings: vec![engine::RawFinding {
            rule: "hl7-parse".into(),
            message: "unreadable".into(),
            codes: [("ackCode".to_string(), json!("AR"))].into_iter().collect(),
        }],
        details: json!({"controlId": "C-1"}),
    };
    let id = app.state.engine.quarantine_hold(&store::Ctx::system(), &hold).await.unwrap();
    assert!(id.starts_with("unknown|"), "no Organization has the sender's identifier: {id}");
    // A caller without an organization (the MLLP listener): the one Organization with the
    // sender's identifier (any system) owns the entry; when two have it, neither does.
    for (org, code) in [("h-solo", "SOLO,1"), ("h-twin-a", "TWIN"), ("h-twin-b", "TWIN")] {
        let mut organization = hospital(org, "3A");
        let facility = json!({"system": "https://hutong.dev/fhir/sid/hl7-facility", "value": code});
        organization["identifier"].as_array_mut().unwrap().push(facility);
        put(&app, organization).await;
    }
    for (sender, owner) in [("SOLO,1", "h-solo|"), ("TWIN", "unknown|")] {
        let hold = engine::RawHold { sender: Some(sender.into()), ..hold.clone() };
        let placed = app.state.engine.quarantine_hold(&store::Ctx::system(), &hold).await.unwrap();
        assert!(placed.starts_with(owner), "{sender}: {placed}");
        app.state.engine.quality_discard(&store::Ctx::system(), &placed).await.unwrap();
    }
    let uri = format!("/quality/quarantine/{}/reprocess", id.replace('|', "%7C"));
    let held = |body: serde_json::Value| -> Vec<serde_json::Value> {
        body["held"].as_array().unwrap().iter().filter(|h| h["id"] == id.as_str()).cloned().collect()
    };
    let (_, _, list) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    let entry = &held(list)[0];
    assert_eq!((&entry["findings"][0]["rule"], &entry["findings"][0]["ackCode"]), (&json!("hl7-parse"), &json!("AR")));
    assert_eq!(entry["details"]["controlId"], "C-1");

    let (status, _, body) = send(&app, req("POST", &uri, None, "")).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_outcome(&body, "no HL7v2Message processing installed");

    app.state.engine.install_reprocessor("HL7v2Message", std::sync::Arc::new(StubReprocessor));
    let (status, _, body) = send(&app, req("POST", &uri, None, "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_outcome(&body, "still bad");
    assert!(body["issue"][1]["diagnostics"].as_str().unwrap().contains(&id), "{body}");
    let (_, _, list) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    let entries = held(list);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["findings"], json!([{"rule": "hl7-mapping", "blocking": true, "message": "still bad"}]));
    assert_eq!(entries[0]["lastAttempt"]["corrected"], false);

    let (status, _, body) = send(&app, req("POST", &uri, None, "[1]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = send(&app, req("POST", &uri, None, "{\"message\": \"MSH|good\"}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["reprocessed"], &body["result"]["ackCode"]), (&json!(id), &json!("AA")));
    let (_, _, list) = send(&app, req("GET", "/quality/quarantine?organization=unknown", None, "")).await;
    assert!(held(list).is_empty());
}
