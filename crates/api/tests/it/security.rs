//! Security over HTTP: tokens (401s), the OAuth2 grants (secrets and signed JWT assertions),
//! lockout, scopes (403 + audit), the hidden existence of forbidden resources (404), guardians,
//! break-glass, the access-log API, the CapabilityStatement's security section, and hostile
//! input in headers, tokens and search parameters.

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{FHIR, TestApp, app, req, send};

fn form(uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::HOST, "test.local")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, "none")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub(super) fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    request.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    request
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub(super) async fn token(app: &TestApp, body: &str) -> (StatusCode, Value) {
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
    let basic = format!("Basic {}", crypto::base64(format!("{id}:{secret}").as_bytes()));
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

#[tokio::test]
async fn staff_need_password_and_totp_and_are_locked_out() {
    let app = app(1 << 20).await;
    let (user, code) = staff(&app, "dr.lin", "doctor", "h1").await;
    let (status, body) = token(&app, &format!("grant_type=password&username={user}&password=Pass%23word1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error_description"].as_str().unwrap().contains("TOTP"), "{body}");
    // The reply to a right password without the code is the reply to a wrong password.
    let (_, wrong) = token(&app, &format!("grant_type=password&username={user}&password=nope")).await;
    assert_eq!(body["error_description"], wrong["error_description"], "no hint that the password was right");
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
    assert!(body["error_description"].as_str().unwrap().contains("wrong user name, password or TOTP code"));
    let failures = app.auth.store().audit_read(0, 1000).await.unwrap();
    assert!(failures.iter().filter(|e| e.record.action == "login" && e.record.outcome == "failure").count() >= 7);
}

#[tokio::test]
async fn residents_log_in_by_sms_and_see_who_read_their_record() {
    let app = app(1 << 20).await;
    let patient = json!({"resourceType": "Patient", "id": "p1", "address": [{"extension": [{
        "url": "https://hutong.dev/fhir/StructureDefinition/gb2260-division", "valueCode": "350102"}]}]})
    .to_string();
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
    // A refused token is recorded too.
    let (status, _, _) = send(&app, with_token(req("GET", "/fhir/Patient/p1", None, ""), "forged-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, log) = send(&app, with_token(req("GET", "/audit/log?_count=1000", None, ""), &auditor)).await;
    assert!(
        log["entry"].as_array().unwrap().iter().any(|e| e["resource"]["subtype"][0]["code"] == "authenticate"
            && e["resource"]["outcome"] == "4"
            && e["resource"]["agent"][0]["who"]["identifier"]["value"] == "anonymous"),
        "a refused token is in the log: {log}"
    );
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

/// SplitMix64: a small seeded generator, so every run feeds the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Header values a hostile client might send: random bytes (control characters are refused
/// by the HTTP types, bytes 0x80-0xFF are kept, so non-UTF-8), odd prefixes, megabytes.
fn hostile_authorization(rng: &mut Rng, valid: &str) -> HeaderValue {
    let n = rng.below(600);
    let bytes: Vec<u8> = match rng.below(6) {
        0 => (0..n).map(|_| rng.next() as u8).collect(),
        1 => (0..n).map(|_| 0x80 + rng.below(128) as u8).collect(),
        2 => format!("Bearer {}", &valid[..rng.below(valid.len() + 1)]).into_bytes(),
        3 => {
            let prefix =
                ["Bearer", "bearer ", "BEARER ", "Bearer  ", "Basic ", "Bearer\t", "Bearer %00", ""][rng.below(8)];
            let body: String = (0..n).map(|_| char::from(32 + rng.below(95) as u8)).collect();
            format!("{prefix}{body}").into_bytes()
        }
        4 => format!("Bearer {}", "A".repeat([4090, 4097, 16 * 1024, 1 << 20][rng.below(4)])).into_bytes(),
        _ => format!("Bearer {valid}{}", ".".repeat(n)).into_bytes(),
    };
    HeaderValue::from_bytes(&bytes).unwrap_or(HeaderValue::from_static("Bearer x"))
}

#[test]
fn the_bearer_header_parser_never_panics_and_caps_the_length() {
    use api::security::{MAX_AUTHORIZATION_BYTES, bearer_token};
    let mut rng = Rng(0x5EED_A001);
    let valid = "k3YwbD0L2bWw7CqZ4u0cpxBhx7S8Qf2y1yq7vJYbV2M";
    for _ in 0..10_000 {
        let value = hostile_authorization(&mut rng, valid);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.clone());
        match bearer_token(&headers) {
            Ok(token) => {
                assert!(value.len() <= MAX_AUTHORIZATION_BYTES && !token.is_empty() && token == token.trim());
            }
            Err(message) => assert!(!message.is_empty()),
        }
    }
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {}", "A".repeat(1 << 20))).unwrap());
    assert!(bearer_token(&headers).unwrap_err().contains("longer than 4096 bytes"));
    headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  abc "));
    assert_eq!(bearer_token(&headers), Ok("abc"));
}

#[tokio::test]
async fn hostile_authorization_headers_get_401_through_the_router() {
    let app = app(1 << 20).await;
    let valid = app.bearer.trim_start_matches("Bearer ").to_string();
    let mut rng = Rng(0x5EED_A002);
    for i in 0..1500 {
        let value = hostile_authorization(&mut rng, &valid);
        let mut r = req("GET", if i % 2 == 0 { "/fhir/Patient" } else { "/audit/log" }, None, "");
        r.headers_mut().insert(header::AUTHORIZATION, value.clone());
        let (status, headers, body) = send(&app, r).await;
        if value.as_bytes() == app.bearer.as_bytes() {
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:.40?}");
        assert!(headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    let mut r = req("GET", "/fhir/Patient", None, "");
    r.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {}", "A".repeat(1 << 20)).parse().unwrap());
    let (status, _, body) = send(&app, r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("longer than 4096 bytes"), "{body}");
    // Oversized Basic credentials at the introspection endpoint: refused, not decoded.
    let mut r = form("/oauth2/introspect", "token=abc");
    r.headers_mut().insert(header::AUTHORIZATION, format!("Basic {}", "QUJD".repeat(4096)).parse().unwrap());
    assert_eq!(send(&app, r).await.0, StatusCode::UNAUTHORIZED);
}

/// A JWT client assertion signed with `key`, for this test app's token endpoint.
fn assertion(key: &crypto::sm2::Sm2SigningKey, client_id: &str, aud: &str, jti: &str) -> String {
    let claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": now() + 240, "jti": jti});
    let input = format!(
        "{}.{}",
        crypto::base64url(br#"{"alg":"SM2","typ":"JWT"}"#),
        crypto::base64url(claims.to_string().as_bytes())
    );
    format!("{input}.{}", crypto::base64url(&key.sign(input.as_bytes())))
}

#[tokio::test]
async fn system_clients_authenticate_with_signed_jwt_assertions() {
    let app = app(1 << 20).await;
    let key = crypto::sm2::Sm2SigningKey::generate();
    let (id, alg) = app
        .auth
        .create_client_with_key(
            "county hospital HIS",
            "system/*.rs",
            None,
            None,
            &key.public().to_public_key_pem().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(alg, "SM2");
    let endpoint = "http://test.local/oauth2/token";
    let grant = |jwt: &str| {
        format!(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}"
        )
    };
    let jwt = assertion(&key, &id, endpoint, "first");
    let (status, body) = token(&app, &grant(&jwt)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "system/*.rs");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(send(&app, with_token(req("GET", "/fhir/Patient", None, ""), access)).await.0, StatusCode::OK);

    // Replayed, for another server, or signed by someone else: 401 invalid_client with a reason.
    let stranger = crypto::sm2::Sm2SigningKey::generate();
    for (jwt, words) in [
        (jwt.clone(), "already used"),
        (assertion(&key, &id, "http://elsewhere.example/oauth2/token", "second"), "aud must be"),
        (assertion(&stranger, &id, endpoint, "third"), "does not verify"),
        ("not.a.jwt".to_string(), "base64url"),
    ] {
        let (status, headers, body) = send(&app, form("/oauth2/token", &grant(&jwt))).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")), "{body}");
        assert!(body["error_description"].as_str().unwrap().contains(words), "{body}");
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    }
    // A configured public base URL is what the audience must name, whatever the Host header.
    let behind_proxy = api::router(api::AppState {
        config: api::ApiConfig { base_url: Some("https://hutong.example.cn/fhir".into()), ..Default::default() },
        ..app.state.clone()
    });
    let proxied = |jwt: &str| {
        let request = form("/oauth2/token", &grant(jwt));
        behind_proxy.clone().oneshot(request)
    };
    let response = proxied(&assertion(&key, &id, endpoint, "fourth")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "the Host header does not decide the audience");
    let response = proxied(&assertion(&key, &id, "https://hutong.example.cn/oauth2/token", "fifth")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Discovery says so.
    let (_, _, config) = send(&app, req("GET", "/.well-known/smart-configuration", None, "")).await;
    assert_eq!(config["token_endpoint"], endpoint);
    assert!(config["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&json!("private_key_jwt")));
    assert_eq!(config["token_endpoint_auth_signing_alg_values_supported"], json!(["ES384", "SM2"]));
    assert!(config["capabilities"].as_array().unwrap().contains(&json!("client-confidential-asymmetric")));
}

#[tokio::test]
async fn guardians_read_their_childrens_records_and_nobody_elses() {
    let app = app(1 << 20).await;
    for id in ["g-mother", "g-child", "g-other"] {
        let patient = json!({"resourceType": "Patient", "id": id}).to_string();
        assert_eq!(send(&app, req("PUT", &format!("/fhir/Patient/{id}"), FHIR, &patient)).await.0, StatusCode::CREATED);
    }
    for (id, subject) in [("o-child", "g-child"), ("o-child-2", "g-child"), ("o-other", "g-other")] {
        let obs = json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "subject": {"reference": format!("Patient/{subject}")}, "valueQuantity": {"value": 98, "unit": "cm"}});
        assert_eq!(
            send(&app, req("PUT", &format!("/fhir/Observation/{id}"), FHIR, &obs.to_string())).await.0,
            StatusCode::CREATED
        );
    }
    app.auth
        .create_user(auth::NewUser {
            username: "mother".into(),
            role: "resident".into(),
            password: Some("Pass#word1".into()),
            patients: vec!["g-mother".into(), "g-child".into()],
            id_number: Some("11010519491231002X".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, body) = token(&app, "grant_type=password&username=mother&password=Pass%23word1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let guardian = body["access_token"].as_str().unwrap().to_string();
    let get = |path: &str| send(&app, with_token(req("GET", path, None, ""), &guardian));

    assert_eq!(get("/fhir/Patient/g-child").await.0, StatusCode::OK);
    assert_eq!(get("/fhir/Patient/g-mother").await.0, StatusCode::OK);
    let (status, _, body) = get("/fhir/Observation/o-child").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get("/fhir/Observation?subject=Patient/g-child").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> =
        body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let (_, _, body) = get("/fhir/Observation").await;
    let ids: Vec<&str> =
        body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert!(!ids.is_empty() && !ids.contains(&"o-other"), "an open search shows only her family's: {ids:?}");

    // Someone else's child does not exist for her.
    assert_eq!(get("/fhir/Patient/g-other").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get("/fhir/Observation/o-other").await.0, StatusCode::NOT_FOUND);
    let (_, _, body) = get("/fhir/Observation?subject=Patient/g-other").await;
    assert_eq!(body["entry"].as_array().map_or(0, Vec::len), 0, "{body}");
    // 谁看过我的档案 works for the child's record too.
    assert_eq!(get("/audit/patient/g-child").await.0, StatusCode::OK);
    assert_eq!(get("/audit/patient/g-other").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_capability_statement_names_the_smart_security_service() {
    let app = app(1 << 20).await;
    let (status, _, statement) = send(&app, req("GET", "/fhir/metadata", None, "").header_none()).await;
    assert_eq!(status, StatusCode::OK);
    let security = &statement["rest"][0]["security"];
    assert_eq!(
        security["service"][0]["coding"][0],
        json!({"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR",
               "display": "SMART-on-FHIR"})
    );
    let uris = &security["extension"][0];
    assert_eq!(uris["url"], "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris");
    let uri = |name: &str| {
        uris["extension"].as_array().unwrap().iter().find(|e| e["url"] == name).map(|e| e["valueUri"].clone())
    };
    assert_eq!(uri("token"), Some(json!("http://test.local/oauth2/token")));
    assert_eq!(uri("revoke"), Some(json!("http://test.local/oauth2/revoke")));
    assert_eq!(uri("introspect"), Some(json!("http://test.local/oauth2/introspect")));
    assert_eq!(uri("authorize"), None, "no authorization-code flow, so no authorize URI");
    // The advertised endpoints are the real ones.
    let (status, _, _) = send(&app, form("/oauth2/revoke", "token=nothing")).await;
    assert_eq!(status, StatusCode::OK);
}
