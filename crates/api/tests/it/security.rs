//! Security over HTTP: tokens (401s), the OAuth2 grants, lockout, scopes (403 + audit), the
//! hidden existence of forbidden resources (404), break-glass, the access-log API, and hostile
//! input in headers, tokens and search parameters.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

use super::{FHIR, TestApp, app, req, send};

fn form(uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, "none")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    request.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    request
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn token(app: &TestApp, body: &str) -> (StatusCode, Value) {
    let (status, _, body) = send(app, form("/oauth2/token", body)).await;
    (status, body)
}

/// A staff account and a valid TOTP code for it.
async fn staff(app: &TestApp, username: &str, role: &str, org: &str) -> (String, String) {
    let (_, _, totp) = app
        .auth
        .create_user(auth::NewUser {
            username: username.into(),
            role: role.into(),
            password: Some("Pass#word1".into()),
            organization: Some(org.into()),
            practitioner: Some("doc-1".into()),
            region: Some("350102".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = crypto::totp::base32_decode(&totp.unwrap()).unwrap();
    (username.to_string(), crypto::totp::generate(&secret, now(), 6))
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let app = app(1 << 20).await;
    let (status, headers, body) = send(&app, req("GET", "/fhir/metadata", None, "").header_none()).await;
    assert_eq!(status, StatusCode::OK, "the capability statement is public: {body}");
    assert!(headers.get(header::WWW_AUTHENTICATE).is_none());
    for value in ["", "Bearer", "Bearer ", "Basic abc", "Bearer not-a-token", &format!("Bearer {}", "x".repeat(5000))] {
        let mut r = req("GET", "/fhir/Patient", None, "");
        r.headers_mut().insert(header::AUTHORIZATION, value.parse().unwrap());
        let (status, headers, body) = send(&app, r).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:.20}");
        assert!(headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    // Random bytes in the header never panic the server.
    for i in 0..200u32 {
        let bytes: Vec<u8> = (0..(i % 90)).map(|j| ((i * 31 + j * 17) % 94 + 33) as u8).collect();
        let mut r = req("GET", "/fhir/Observation", None, "");
        r.headers_mut().insert(
            header::AUTHORIZATION,
            axum::http::HeaderValue::from_bytes(&bytes).unwrap_or(axum::http::HeaderValue::from_static("x")),
        );
        assert_eq!(send(&app, r).await.0, StatusCode::UNAUTHORIZED);
    }
}

trait NoAuth {
    fn header_none(self) -> Self;
}

impl NoAuth for Request<Body> {
    fn header_none(mut self) -> Self {
        self.headers_mut().insert(header::AUTHORIZATION, "none".parse().unwrap());
        self
    }
}

#[tokio::test]
async fn client_credentials_scopes_revocation_and_introspection() {
    let app = app(1 << 20).await;
    let (id, secret) =
        app.auth.create_client("lab", "system/Observation.rs system/Patient.read", None, None).await.unwrap();
    let (status, body) =
        token(&app, &format!("grant_type=client_credentials&client_id={id}&client_secret=wrong")).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")));
    assert_eq!(body["resourceType"], "OperationOutcome", "OAuth errors are OperationOutcomes too");
    let (status, body) = token(&app, "grant_type=magic").await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_grant_type")));
    let (status, body) =
        token(&app, &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}&scope=system/*.*"))
            .await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_scope")), "{body}");
    let (status, body) =
        token(&app, &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_i64().unwrap() <= 900, "short-lived");

    let (status, _, _) = send(&app, with_token(req("GET", "/fhir/Observation", None, ""), &access)).await;
    assert_eq!(status, StatusCode::OK);
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}).to_string();
    let (status, _, body) = send(&app, with_token(req("POST", "/fhir/Observation", FHIR, &obs), &access)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "out of scope: {body}");
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("scopes"), "{body}");
    let denied = app.auth.store().audit_read(0, 1000).await.unwrap();
    assert!(denied.iter().any(|e| e.record.outcome == "denied"
        && e.record.action == "create"
        && e.record.actor == format!("client/{id}")));

    // Introspection needs client credentials.
    let (status, _, _) = send(&app, form("/oauth2/introspect", &format!("token={access}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let basic = format!("Basic {}", base64(&format!("{id}:{secret}")));
    let mut r = form("/oauth2/introspect", &format!("token={access}"));
    r.headers_mut().insert(header::AUTHORIZATION, basic.parse().unwrap());
    let (_, _, body) = send(&app, r).await;
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], format!("client/{id}"));

    let (status, _, _) = send(&app, form("/oauth2/revoke", &format!("token={access}"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, with_token(req("GET", "/fhir/Observation", None, ""), &access)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked tokens stop working at once");
    let mut r = form("/oauth2/introspect", &format!("token={access}"));
    r.headers_mut().insert(header::AUTHORIZATION, basic.parse().unwrap());
    assert_eq!(send(&app, r).await.2["active"], false);
}

fn base64(text: &str) -> String {
    let url = crypto::base64url(text.as_bytes());
    let mut s: String = url
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

#[tokio::test]
async fn staff_need_password_and_totp_and_are_locked_out() {
    let app = app(1 << 20).await;
    let (user, code) = staff(&app, "dr.lin", "doctor", "h1").await;
    let (status, body) = token(&app, &format!("grant_type=password&username={user}&password=Pass%23word1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error_description"].as_str().unwrap().contains("TOTP"), "{body}");
    let (status, body) =
        token(&app, &format!("grant_type=password&username={user}&password=Pass%23word1&totp={code}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    let (status, renewed) = token(&app, &format!("grant_type=refresh_token&refresh_token={refresh}")).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let (status, _) = token(&app, &format!("grant_type=refresh_token&refresh_token={refresh}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "refresh tokens are single-use");

    // Five wrong passwords lock the account, even against the right password afterwards.
    for _ in 0..5 {
        let (status, _) = token(&app, &format!("grant_type=password&username={user}&password=wrong&totp={code}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, body) =
        token(&app, &format!("grant_type=password&username={user}&password=Pass%23word1&totp={code}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error_description"].as_str().unwrap().contains("locked"), "{body}");
    let (status, body) = token(&app, "grant_type=password&username=nobody&password=Pass%23word1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error_description"].as_str().unwrap().contains("wrong user name or password"));
    let failures = app.auth.store().audit_read(0, 1000).await.unwrap();
    assert!(failures.iter().filter(|e| e.record.action == "login" && e.record.outcome == "failure").count() >= 7);
}

#[tokio::test]
async fn residents_log_in_by_sms_and_see_who_read_their_record() {
    let app = app(1 << 20).await;
    let patient = json!({"resourceType": "Patient", "id": "p1", "address": [{"postalCode": "350102"}]}).to_string();
    assert_eq!(send(&app, req("PUT", "/fhir/Patient/p1", FHIR, &patient)).await.0, StatusCode::CREATED);
    let other = json!({"resourceType": "Patient", "id": "p2"}).to_string();
    send(&app, req("PUT", "/fhir/Patient/p2", FHIR, &other)).await;
    let enc = json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"}, "serviceProvider": {"reference": "Organization/h1"}})
    .to_string();
    send(&app, req("PUT", "/fhir/Encounter/e1", FHIR, &enc)).await;
    let refused = app
        .auth
        .create_user(auth::NewUser {
            username: "r0".into(),
            role: "resident".into(),
            password: Some("Pass#word1".into()),
            patients: vec!["p1".into()],
            id_number: Some("110105194912310021".into()),
            ..Default::default()
        })
        .await;
    assert!(refused.unwrap_err().to_string().contains("check character should be X"));
    app.auth
        .create_user(auth::NewUser {
            username: "r1".into(),
            role: "resident".into(),
            password: Some("Pass#word1".into()),
            patients: vec!["p1".into()],
            phone: Some("13800000001".into()),
            id_number: Some("11010519491231002X".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, _, body) = send(&app, form("/oauth2/sms-code", "phone=13800000001")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = send(&app, form("/oauth2/sms-code", "phone=13900000009")).await;
    assert_eq!(status, StatusCode::OK, "an unregistered phone gets the same answer");
    let sms = std::fs::read_to_string(app.dir.path().join("sms.txt")).unwrap();
    assert!(!sms.contains("13900000009"), "nothing is sent to unregistered phones");
    let code: String = sms.lines().last().unwrap().chars().filter(char::is_ascii_digit).skip(11).take(6).collect();
    let (status, _) = token(&app, &format!("grant_type={}&phone=13800000001&code=000000", auth::SMS_GRANT)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = token(&app, &format!("grant_type={}&phone=13800000001&code={code}", auth::SMS_GRANT)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["patient"], "p1", "SMART patient context");
    let resident = body["access_token"].as_str().unwrap().to_string();

    let (status, _, _) = send(&app, with_token(req("GET", "/fhir/Patient/p2", None, ""), &resident)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another resident's record does not exist for you");
    let (status, _, _) = send(&app, with_token(req("GET", "/fhir/Patient/p1", None, ""), &resident)).await;
    assert_eq!(status, StatusCode::OK);

    // A doctor of h1 reads p1's record; break-glass at h2 too.
    let (user, code) = staff(&app, "dr.wu", "doctor", "h1").await;
    let (_, body) =
        token(&app, &format!("grant_type=password&username={user}&password=Pass%23word1&totp={code}")).await;
    let doctor = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(send(&app, with_token(req("GET", "/fhir/Patient/p1", None, ""), &doctor)).await.0, StatusCode::OK);
    assert_eq!(
        send(&app, with_token(req("GET", "/fhir/Patient/p2", None, ""), &doctor)).await.0,
        StatusCode::NOT_FOUND
    );
    let mut glass = with_token(req("GET", "/fhir/Patient/p2", None, ""), &doctor);
    glass.headers_mut().insert("x-break-glass", "%E6%80%A5%E8%AF%8A%E6%8A%A2%E6%95%91".parse().unwrap());
    assert_eq!(send(&app, glass).await.0, StatusCode::OK, "break-glass opens the record");
    let mut glass = with_token(req("GET", "/fhir/Patient/p2", None, ""), &resident);
    glass.headers_mut().insert("x-break-glass", "because".parse().unwrap());
    assert_eq!(send(&app, glass).await.0, StatusCode::FORBIDDEN, "break-glass is for clinicians");

    // 谁看过我的档案: the resident sees the doctor's read; the doctor may not look.
    let (status, _, log) = send(&app, with_token(req("GET", "/audit/patient/p1", None, ""), &resident)).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let events = log["entry"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["resource"]["agent"][0]["type"]["text"] == "doctor"
            && e["resource"]["entity"][0]["what"]["reference"].as_str().unwrap().starts_with("Patient/p1")),
        "{log}"
    );
    assert_eq!(
        send(&app, with_token(req("GET", "/audit/patient/p2", None, ""), &resident)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, with_token(req("GET", "/audit/patient/p1", None, ""), &doctor)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(&app, with_token(req("GET", "/audit/log", None, ""), &doctor)).await.0, StatusCode::FORBIDDEN);
    let (auditor, code) = staff(&app, "audit1", "auditor", "x").await;
    let (_, body) =
        token(&app, &format!("grant_type=password&username={auditor}&password=Pass%23word1&totp={code}")).await;
    let auditor = body["access_token"].as_str().unwrap().to_string();
    let (status, _, log) = send(&app, with_token(req("GET", "/audit/log?_count=1000", None, ""), &auditor)).await;
    assert_eq!(status, StatusCode::OK);
    let glass_events: Vec<&Value> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["purposeOfEvent"][0]["text"] == "急诊抢救")
        .collect();
    assert_eq!(glass_events.len(), 1, "break-glass is flagged in the log");
    assert_eq!(
        send(&app, with_token(req("GET", "/fhir/Patient/p1", None, ""), &auditor)).await.0,
        StatusCode::NOT_FOUND,
        "auditors do not read records"
    );
}

#[tokio::test]
async fn injection_in_search_parameters_is_harmless() {
    let app = app(1 << 20).await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "王"}]}).to_string();
    send(&app, req("POST", "/fhir/Patient", FHIR, &patient)).await;
    for query in [
        "name=%27%20OR%201%3D1%20--",
        "name=%27%3B%20DROP%20TABLE%20resource%3B%20--",
        "_id=1%27%20OR%20%271%27%3D%271",
        "identifier=a%7Cb%27%29%20OR%20%281%3D1",
        "_sort=name%3BDROP",
        "name:contains=%25",
        "_content=%7B%22%24gt%22%3A%22%22%7D",
    ] {
        let (status, _, body) = send(&app, req("GET", &format!("/fhir/Patient?{query}"), None, "")).await;
        assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{query}: {status}");
        if status == StatusCode::OK {
            let n = body["entry"].as_array().map_or(0, Vec::len);
            assert!(n == 0 || query.starts_with("name:contains"), "{query} matched {n}");
        } else {
            assert_eq!(body["resourceType"], "OperationOutcome");
        }
    }
    let (_, _, body) = send(&app, req("GET", "/fhir/Patient?name=%E7%8E%8B", None, "")).await;
    assert_eq!(body["entry"].as_array().unwrap().len(), 1, "the table is intact");
}
