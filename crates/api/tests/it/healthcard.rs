//! The health card API over HTTP: a real-name resident registers and gets a dynamic code (JSON
//! and SVG), a hospital client verifies it once (the replay is a 409 OperationOutcome), an
//! operator suspends the card, and the public keys for offline verifiers are listed.

use axum::http::{StatusCode, header};
use serde_json::json;

use super::security::{token, with_token};
use super::{FHIR, app, assert_outcome, req, send};

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn register_code_verify_replay_and_suspend_over_http() {
    let app = app(1 << 20).await;
    let id_number = "11010519491231002X";
    let patient = json!({"resourceType": "Patient", "id": "p1",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": id_number}]})
    .to_string();
    assert_eq!(send(&app, req("PUT", "/fhir/Patient/p1", FHIR, &patient)).await.0, StatusCode::CREATED);
    app.auth
        .create_user(auth::NewUser {
            username: "r1".into(),
            role: "resident".into(),
            password: Some("Pass#word1".into()),
            patients: vec!["p1".into()],
            id_number: Some(id_number.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, body) = token(&app, "grant_type=password&username=r1&password=Pass%23word1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resident = body["access_token"].as_str().unwrap().to_string();

    // A hospital client cannot register a card for a resident.
    let register = || req("POST", "/healthcard/register", JSON, r#"{"patient": "Patient/p1"}"#);
    let (status, _, body) = send(&app, register()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, card) = send(&app, with_token(register(), &resident)).await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    let card_id = card["cardId"].as_str().unwrap().to_string();
    assert_eq!(card["staticCode"], format!("{card_id}:1::350000"));
    let (status, _, found) = send(&app, with_token(req("GET", "/healthcard?patient=p1", None, ""), &resident)).await;
    assert_eq!((status, found["cardId"].as_str()), (StatusCode::OK, Some(card_id.as_str())));

    let code_uri = format!("/healthcard/{card_id}/code");
    let mut svg_request = with_token(req("POST", &code_uri, JSON, ""), &resident);
    svg_request.headers_mut().insert(header::ACCEPT, "image/svg+xml".parse().unwrap());
    let response = tower::ServiceExt::oneshot(app.app.clone(), svg_request).await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], "image/svg+xml");
    let body = r#"{"insuranceToken": "EC-VOUCHER-01", "paymentToken": "PAY-01"}"#;
    let (status, _, code) = send(&app, with_token(req("POST", &code_uri, JSON, body), &resident)).await;
    assert_eq!(status, StatusCode::OK, "{code}");
    assert!(code["code"].as_str().unwrap().starts_with("HC1:"));

    let verify = json!({"code": code["code"], "careStep": "0101011", "terminal": "T-01"}).to_string();
    let (status, _, accepted) = send(&app, req("POST", "/healthcard/verify", JSON, &verify)).await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(
        (accepted["patient"].as_str(), accepted["insuranceToken"].as_str()),
        (Some("Patient/p1"), Some("EC-VOUCHER-01"))
    );
    let (status, _, replay) = send(&app, req("POST", "/healthcard/verify", JSON, &verify)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_outcome(&replay, "already used");
    let (status, _, missing) = send(&app, req("POST", "/healthcard/verify", JSON, r#"{"code": "x"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&missing, "careStep");

    // Only operators suspend.
    let suspend = format!("/healthcard/{card_id}/suspend");
    let (status, _, _) = send(&app, req("POST", &suspend, JSON, r#"{"reason": "lost"}"#)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _, keys) = send(&app, req("GET", "/healthcard/keys", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys["keys"][0]["keyId"], keys["current"]);
    assert_eq!(keys["current"], code["keyId"]);
}
