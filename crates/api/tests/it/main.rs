//! The HTTP layer driven in-process (`tower::ServiceExt::oneshot`) over a real SQLite store:
//! headers, statuses and the OperationOutcome of every bad input.

use std::sync::Arc;

use api::{ApiConfig, AppState, router};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engine::{Engine, EngineConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod healthcard;
mod portal;
mod registries;
mod security;
mod services;
mod subscriptions;
mod terminology;
mod workbench;

struct TestApp {
    app: axum::Router,
    auth: Arc<auth::Auth>,
    /// `Bearer …` of a system client with `system/*.*`, added to requests that carry none.
    bearer: String,
    dir: tempfile::TempDir,
    /// What the router was built from (tests build variants of it).
    state: AppState,
}

async fn app(max_body_bytes: usize) -> TestApp {
    app_with(max_body_bytes, EngineConfig::default()).await
}

/// [`app`] over an engine with `config` (its export folder in the test's temporary folder).
async fn app_with(max_body_bytes: usize, config: EngineConfig) -> TestApp {
    app_on(max_body_bytes, config, None).await
}

/// [`app_with`] on `store` (a SQLite store in the temporary folder when `None`).
async fn app_on(max_body_bytes: usize, config: EngineConfig, store: Option<Arc<dyn store::ResourceStore>>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn store::ResourceStore> =
        store.unwrap_or_else(|| Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap()));
    let engine = Arc::new(Engine::new(store.clone(), EngineConfig { export_dir: dir.path().join("export"), ..config }));
    let auth = Arc::new(auth::Auth::new(
        store,
        Arc::new(crypto::KeyRing::ephemeral()),
        auth::AuthConfig::default(),
        Arc::new(auth::FileSms::new(dir.path().join("sms.txt"))),
    ));
    let bearer = client_bearer(&auth, "tests", "system/*.*").await;
    let config = ApiConfig { max_body_bytes, ..ApiConfig::default() };
    let state = AppState { engine, auth: auth.clone(), config };
    let app = router(state.clone());
    TestApp { app, auth, bearer, dir, state }
}

/// `Bearer …` of a new system client with `scopes`.
async fn client_bearer(auth: &auth::Auth, name: &str, scopes: &str) -> String {
    let (id, secret) = auth.create_client(name, scopes, None, None).await.unwrap();
    let form = [("grant_type", "client_credentials"), ("client_id", id.as_str()), ("client_secret", secret.as_str())]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let token = auth.token(&form, None, None).await.unwrap();
    format!("Bearer {}", token["access_token"].as_str().unwrap())
}

async fn send(app: &TestApp, mut request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    if !request.headers().contains_key(header::AUTHORIZATION) {
        request.headers_mut().insert(header::AUTHORIZATION, app.bearer.parse().unwrap());
    }
    let response = app.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    (status, headers, body)
}

fn req(method: &str, uri: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri).header(header::HOST, "test.local");
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

const FHIR: Option<&str> = Some("application/fhir+json");

/// The WS/T 500 outpatient record of the cda crate's fixtures (read from the checkout the tests
/// run in).
fn outpatient_cda() -> String {
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"));
    std::fs::read_to_string(dir.join("../cda/tests/fixtures/C0002-outpatient.xml")).unwrap()
}

fn assert_outcome(body: &Value, words: &str) {
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(text.contains(words), "'{text}' should mention '{words}'");
}

#[tokio::test]
async fn create_read_update_with_http_semantics() {
    let app = app(1 << 20).await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "黄"}]}).to_string();
    let (status, headers, body) = send(&app, req("POST", "/fhir/Patient", FHIR, &patient)).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(headers[header::ETAG], "W/\"1\"");
    assert_eq!(headers[header::LOCATION], format!("http://test.local/fhir/Patient/{id}/_history/1").as_str());
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/fhir+json"));
    assert!(headers.contains_key(header::LAST_MODIFIED));

    let (status, headers, _) = send(&app, req("GET", &format!("/fhir/Patient/{id}"), None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::ETAG], "W/\"1\"");
    let conditional = Request::builder()
        .uri(format!("/fhir/Patient/{id}"))
        .header("If-None-Match", "W/\"1\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, conditional).await.0, StatusCode::NOT_MODIFIED);

    let mut updated = body.clone();
    updated["gender"] = json!("female");
    let put = Request::builder()
        .method("PUT")
        .uri(format!("/fhir/Patient/{id}"))
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .header("If-Match", "W/\"1\"")
        .header("Prefer", "return=minimal")
        .body(Body::from(updated.to_string()))
        .unwrap();
    let (status, headers, body) = send(&app, put).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::ETAG], "W/\"2\"");
    assert!(body.is_null(), "return=minimal sends no body");
    let stale = Request::builder()
        .method("PUT")
        .uri(format!("/fhir/Patient/{id}"))
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .header("If-Match", "W/\"1\"")
        .body(Body::from(updated.to_string()))
        .unwrap();
    let (status, _, body) = send(&app, stale).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_outcome(&body, "If-Match");

    let patch = req(
        "PATCH",
        &format!("/fhir/Patient/{id}"),
        Some("application/json-patch+json"),
        r#"[{"op":"add","path":"/active","value":true}]"#,
    );
    let (status, headers, body) = send(&app, patch).await;
    assert_eq!((status, body["active"].clone()), (StatusCode::OK, json!(true)));
    assert_eq!(headers[header::ETAG], "W/\"3\"");

    let (status, _, _) = send(&app, req("DELETE", &format!("/fhir/Patient/{id}"), None, "")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = send(&app, req("GET", &format!("/fhir/Patient/{id}"), None, "")).await;
    assert_eq!(status, StatusCode::GONE);
    assert_outcome(&body, "deleted");
    let (status, _, body) = send(&app, req("GET", &format!("/fhir/Patient/{id}/_history/2"), None, "")).await;
    assert_eq!((status, body["gender"].clone()), (StatusCode::OK, json!("female")));
}

#[tokio::test]
async fn bad_input_is_an_operation_outcome_with_the_right_status() {
    let app = app(256).await;
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (req("POST", "/fhir/Patient", FHIR, "{oops"), StatusCode::BAD_REQUEST, "not valid JSON"),
        (
            req("POST", "/fhir/Patient", Some("text/plain"), "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type text/plain",
        ),
        (req("POST", "/fhir/Patient", None, "{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "(none)"),
        (
            req(
                "POST",
                "/fhir/Patient",
                FHIR,
                &format!("{{\"resourceType\":\"Patient\",\"x\":\"{}\"}}", "a".repeat(400)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than the limit of 256 bytes",
        ),
        (
            req("POST", "/fhir/Patient", FHIR, r#"{"resourceType":"Observation"}"#),
            StatusCode::BAD_REQUEST,
            "resourceType is 'Observation'",
        ),
        (
            req("POST", "/fhir/Patient", FHIR, r#"{"resourceType":"Patient","birthDate":"1990-13-01"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a valid date",
        ),
        (
            req("PUT", "/fhir/Patient/a", FHIR, r#"{"resourceType":"Patient","id":"b"}"#),
            StatusCode::BAD_REQUEST,
            "does not match",
        ),
        (req("GET", "/fhir/Patient?nmae=x", None, ""), StatusCode::BAD_REQUEST, "Unknown search parameter 'nmae'"),
        (req("GET", "/fhir/Patient?_count=abc", None, ""), StatusCode::BAD_REQUEST, "_count"),
        (req("GET", "/fhir/Patient?_format=xml", None, ""), StatusCode::NOT_ACCEPTABLE, "JSON only"),
        (req("GET", "/fhir/Banana", None, ""), StatusCode::NOT_FOUND, "'Banana' is not a FHIR R4 resource type"),
        (req("GET", "/fhir/Patient/missing", None, ""), StatusCode::NOT_FOUND, "Patient/missing"),
        (req("PATCH", "/fhir/Patient", FHIR, "[]"), StatusCode::METHOD_NOT_ALLOWED, "PATCH is not allowed"),
        (req("GET", "/nowhere", None, ""), StatusCode::NOT_FOUND, "/fhir"),
        (req("GET", "/fhir/$export", None, ""), StatusCode::BAD_REQUEST, "Prefer: respond-async"),
        (
            Request::builder()
                .uri("/fhir/Patient")
                .header("Accept", "application/fhir+xml")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_ACCEPTABLE,
            "application/fhir+json only",
        ),
        (
            Request::builder()
                .method("PUT")
                .uri("/fhir/Patient/a")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header("If-Match", "three")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "If-Match 'three'",
        ),
        (
            req("POST", "/fhir", FHIR, r#"{"resourceType":"Bundle","type":"collection"}"#),
            StatusCode::BAD_REQUEST,
            "batch or transaction",
        ),
    ];
    for (request, status, words) in cases {
        let uri = request.uri().to_string();
        let (got, headers, body) = send(&app, request).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/fhir+json"), "{uri}");
        assert_outcome(&body, words);
    }
}

#[tokio::test]
async fn search_post_search_history_lenient_and_export() {
    let app = app(1 << 20).await;
    for family in ["林", "林", "郭"] {
        let body = json!({"resourceType": "Patient", "name": [{"family": family}]}).to_string();
        assert_eq!(send(&app, req("POST", "/fhir/Patient", FHIR, &body)).await.0, StatusCode::CREATED);
    }
    let (_, _, bundle) = send(&app, req("GET", "/fhir/Patient?family=%E6%9E%97", None, "")).await;
    assert_eq!(bundle["total"], 2);
    let (_, _, bundle) =
        send(&app, req("POST", "/fhir/Patient/_search", Some("application/x-www-form-urlencoded"), "family=%E9%83%AD"))
            .await;
    assert_eq!(bundle["total"], 1);
    let lenient = Request::builder()
        .uri("/fhir/Patient?nmae=x")
        .header("Prefer", "handling=lenient")
        .body(Body::empty())
        .unwrap();
    let (status, _, bundle) = send(&app, lenient).await;
    assert_eq!((status, bundle["total"].clone()), (StatusCode::OK, json!(3)));
    let (_, _, history) = send(&app, req("GET", "/fhir/_history", None, "")).await;
    assert_eq!(history["total"], 3);
    let (_, _, cs) = send(&app, req("GET", "/fhir/metadata", None, "")).await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");

    let kickoff =
        Request::builder().uri("/fhir/Patient/$export").header("Prefer", "respond-async").body(Body::empty()).unwrap();
    let (status, headers, _) = send(&app, kickoff).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let status_url = headers[header::CONTENT_LOCATION].to_str().unwrap().to_string();
    let path = status_url
        .strip_prefix("http://localhost")
        .or_else(|| status_url.strip_prefix("http://test.local"))
        .unwrap_or(&status_url);
    let path = path.to_string();
    let manifest = loop {
        let (status, _, body) = send(&app, req("GET", &path, None, "")).await;
        if status == StatusCode::OK {
            break body;
        }
        assert_eq!(status, StatusCode::ACCEPTED);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let url = manifest["output"][0]["url"].as_str().unwrap();
    let file_path = &url[url.find("/fhir/").unwrap()..];
    let unauthenticated = app.app.clone().oneshot(req("GET", file_path, None, "")).await.unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED, "export files need the token too");
    let mut file = req("GET", file_path, None, "");
    file.headers_mut().insert(header::AUTHORIZATION, app.bearer.parse().unwrap());
    let response = app.app.clone().oneshot(file).await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/fhir+ndjson");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&bytes).lines().count(), 3);
}

#[tokio::test]
async fn patient_match_over_http() {
    let app = app(1 << 20).await;
    let patient = r#"{"resourceType":"Patient","id":"m1","name":[{"family":"王","given":["芳"]}],"gender":"female",
        "birthDate":"1990-03-04","identifier":[{"system":"urn:oid:2.16.156.10011.1.3","value":"110105199003040029"}]}"#;
    let (status, _, body) = send(&app, req("PUT", "/fhir/Patient/m1", Some("application/fhir+json"), patient)).await;
    assert!(status.is_success(), "{body}");
    let query = r#"{"resourceType":"Parameters","parameter":[{"name":"resource","resource":{"resourceType":"Patient",
        "name":[{"text":"王芳"}],"birthDate":"1990-03-04","identifier":[{"value":"110105199003040029"}]}},
        {"name":"onlyCertainMatches","valueBoolean":true}]}"#;
    let (status, _, bundle) =
        send(&app, req("POST", "/fhir/Patient/$match", Some("application/fhir+json"), query)).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(bundle["entry"][0]["resource"]["id"], "m1", "{bundle}");
    assert_eq!(bundle["entry"][0]["search"]["extension"][0]["valueCode"], "certain");
    let (status, _, outcome) =
        send(&app, req("POST", "/fhir/Patient/$match", Some("application/fhir+json"), "{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let (status, _, _) = send(&app, req("GET", "/fhir/Patient/$match", None, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

/// The master patient index over HTTP: PIXm answers (and its error statuses), a steward's link
/// through `Person/$mpi-link`, and OperationOutcomes for bad calls.
#[tokio::test]
async fn master_patient_index_over_http() {
    let t = app(1 << 20).await;
    for (mrn, phone) in [("urn:hospital:h1:mrn|A1", "13800138000"), ("urn:hospital:h2:mrn|B1", "13800138000")] {
        let (system, value) = mrn.split_once('|').unwrap();
        let p = json!({"resourceType": "Patient", "identifier": [{"system": system, "value": value},
            {"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}],
            "name": [{"family": "林", "given": ["静"]}], "gender": "female", "birthDate": "1988-08-08",
            "telecom": [{"system": "phone", "value": phone}]});
        let (status, _, _) = send(&t, req("POST", "/fhir/Patient", FHIR, &p.to_string())).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // PIXm syncs the index itself before answering.
    let (status, _, body) = send(
        &t,
        req(
            "GET",
            "/fhir/Patient/$ihe-pix?sourceIdentifier=urn:hospital:h1:mrn%7CA1&targetSystem=urn:hospital:h2:mrn",
            None,
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["parameter"][0],
        json!({"name": "targetIdentifier", "valueIdentifier": {"system": "urn:hospital:h2:mrn", "value": "B1"}})
    );
    let (status, _, body) =
        send(&t, req("GET", "/fhir/Patient/$ihe-pix?sourceIdentifier=urn:hospital:h1:mrn%7CZZ", None, "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&body, "sourceIdentifier");
    let (status, _, body) = send(
        &t,
        req(
            "GET",
            "/fhir/Patient/$ihe-pix?sourceIdentifier=urn:hospital:h1:mrn%7CA1&targetSystem=urn:nowhere",
            None,
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_outcome(&body, "targetSystem");
    let (status, _, _) = send(&t, req("POST", "/fhir/Patient/$ihe-pix", FHIR, "{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // The person of A1, found by link; a steward-style unlink through the operation.
    let (_, _, found) = send(&t, req("GET", "/fhir/Patient?identifier=urn:hospital:h2:mrn%7CB1", None, "")).await;
    let b = found["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    let (_, _, persons) = send(&t, req("GET", &format!("/fhir/Person?link=Patient/{b}"), None, "")).await;
    assert_eq!(persons["entry"][0]["resource"]["link"].as_array().unwrap().len(), 2, "{persons}");
    let unlink = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source", "valueReference": {"reference": format!("Patient/{b}")}},
        {"name": "reason", "valueString": "different person: mother and daughter"}]});
    let (status, _, body) = send(&t, req("POST", "/fhir/Person/$mpi-link", FHIR, &unlink.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["parameter"].as_array().unwrap().len(), 2, "both persons rewritten: {body}");
    let (_, _, persons) = send(&t, req("GET", &format!("/fhir/Person?link=Patient/{b}"), None, "")).await;
    assert_eq!(persons["entry"][0]["resource"]["link"].as_array().unwrap().len(), 1);
    assert_eq!(persons["entry"][0]["resource"]["link"][0]["assurance"], "level4");
    let bad = json!({"resourceType": "Parameters", "parameter": [{"name": "source", "valueReference": {"reference": "Observation/1"}}]});
    let (status, _, body) = send(&t, req("POST", "/fhir/Person/$mpi-link", FHIR, &bad.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "valueReference to a Patient");
}
