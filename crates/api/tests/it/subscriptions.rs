//! FHIR Subscriptions end to end: the real router served on loopback, the engine's subscription
//! worker running, rest-hooks received by a real HTTP server on loopback, and a real websocket
//! client (tokio-tungstenite) speaking the R4 bind/ping protocol.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use engine::{EngineConfig, SubscriptionConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{FHIR, TestApp, app_on, assert_outcome, client_bearer, req, send};

/// One request a rest-hook endpoint received.
#[derive(Debug)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: String,
}

/// A rest-hook endpoint on loopback that answers `status` and reports every request.
async fn hook_server(status: StatusCode) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let tx = tx.clone();
        async move {
            let body = String::from_utf8_lossy(&body).to_string();
            let _ = tx.send(Received { method, path: uri.path().to_string(), headers, body });
            status
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), rx)
}

/// A rest-hook endpoint on loopback over TLS, with a certificate for 127.0.0.1 issued by a CA
/// made here: (its `https` URL, the CA certificate as PEM, what it receives). It reads one
/// request per connection and answers 200.
async fn tls_hook_server() -> (String, String, mpsc::UnboundedReceiver<Received>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Hutong test regional CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A handshake the client gives up (an untrusted certificate) ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body_at, length) = loop {
                    let Ok(n) = tls.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (head, end + 4, length);
                    }
                };
                while buf.len() < body_at + length {
                    let Ok(n) = tls.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut lines = head.lines();
                let mut request_line = lines.next().unwrap_or_default().split(' ');
                let method = Method::from_bytes(request_line.next().unwrap_or_default().as_bytes()).unwrap();
                let path = request_line.next().unwrap_or_default().to_string();
                let mut headers = HeaderMap::new();
                for (k, v) in lines.filter_map(|l| l.split_once(':')) {
                    headers.insert(
                        axum::http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                        v.trim().parse().unwrap(),
                    );
                }
                let body = String::from_utf8_lossy(&buf[body_at..body_at + length]).to_string();
                let _ = tx.send(Received { method, path, headers, body });
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://{addr}"), ca.pem(), rx)
}

/// The test app with a fast subscription worker running, and Hutong itself served on loopback.
async fn live() -> (TestApp, SocketAddr) {
    live_on(None).await
}

/// [`live`] on `store` (SQLite when `None`).
async fn live_on(store: Option<std::sync::Arc<dyn store::ResourceStore>>) -> (TestApp, SocketAddr) {
    live_with(store, None).await
}

/// [`live_on`], its worker delivering through `hub` (the app's own when `None`).
async fn live_with(
    store: Option<std::sync::Arc<dyn store::ResourceStore>>,
    hub: Option<std::sync::Arc<api::subscriptions::SubscriptionHub>>,
) -> (TestApp, SocketAddr) {
    let config = EngineConfig {
        subscriptions: SubscriptionConfig {
            max_failures: 3,
            retry_base: Duration::from_millis(50),
            poll: Duration::from_millis(100),
            ..SubscriptionConfig::default()
        },
        ..EngineConfig::default()
    };
    let app = app_on(1 << 22, config, store).await;
    let hub = hub.unwrap_or_else(|| app.state.config.subscriptions.clone());
    tokio::spawn(app.state.engine.clone().subscriptions_run(hub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.app.clone();
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap()
    });
    (app, addr)
}

fn subscription(criteria: &str, channel: Value) -> String {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "tests", "criteria": criteria,
           "channel": channel})
    .to_string()
}

async fn subscribe(app: &TestApp, criteria: &str, channel: Value) -> String {
    let (status, _, body) = send(app, req("POST", "/fhir/Subscription", FHIR, &subscription(criteria, channel))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "active", "the server activates a valid Subscription");
    body["id"].as_str().unwrap().to_string()
}

fn observation(patient: &str, code: &str) -> String {
    json!({"resourceType": "Observation", "status": "final", "subject": {"reference": format!("Patient/{patient}")},
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}})
    .to_string()
}

async fn create(app: &TestApp, ty: &str, body: &str) -> String {
    let (status, _, created) = send(app, req("POST", &format!("/fhir/{ty}"), FHIR, body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_string()
}

/// The Subscription once its status is `error` (or as it is after 10 s).
async fn in_error(app: &TestApp, id: &str) -> Value {
    let mut sub = Value::Null;
    for _ in 0..100 {
        sub = send(app, req("GET", &format!("/fhir/Subscription/{id}"), None, "")).await.2;
        if sub["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a rest-hook within 10 s").unwrap()
}

async fn nothing_within(rx: &mut mpsc::UnboundedReceiver<Received>, wait: Duration) {
    if let Ok(Some(r)) = tokio::time::timeout(wait, rx.recv()).await {
        panic!("no notification expected, got {} {}", r.method, r.path);
    }
}

#[tokio::test]
async fn rest_hooks_deliver_matching_resources_with_their_payload_and_headers() {
    let (app, _) = live().await;
    let (endpoint, mut hooks) = hook_server(StatusCode::OK).await;
    // With payload: an update (PUT endpoint/type/id) carrying the resource and the headers.
    let full = subscribe(
        &app,
        "Observation?code=http://loinc.org|2339-0&subject=Patient/p1",
        json!({"type": "rest-hook", "endpoint": format!("{endpoint}/fhir"), "payload": "application/fhir+json",
               "header": ["Authorization: Bearer hook-secret"]}),
    )
    .await;
    // Without payload: an empty POST to the endpoint.
    let bare = subscribe(
        &app,
        "Observation?value-quantity=gt10",
        json!({"type": "rest-hook", "endpoint": format!("{endpoint}/ping")}),
    )
    .await;
    assert_ne!(full, bare);

    let glucose = create(&app, "Observation", &observation("p1", "2339-0")).await;
    let hook = next(&mut hooks).await;
    assert_eq!((hook.method, hook.path.as_str()), (Method::PUT, format!("/fhir/Observation/{glucose}").as_str()));
    assert_eq!(hook.headers[header::AUTHORIZATION], "Bearer hook-secret");
    assert_eq!(hook.headers[header::CONTENT_TYPE], "application/fhir+json");
    let payload: Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(
        (payload["resourceType"].as_str(), payload["id"].as_str()),
        (Some("Observation"), Some(glucose.as_str()))
    );
    // Not matching: another patient, another code, a value below the threshold.
    create(&app, "Observation", &observation("p2", "2339-0")).await;
    create(&app, "Observation", &observation("p1", "718-7")).await;
    nothing_within(&mut hooks, Duration::from_millis(1500)).await;
    // A quantity comparison (another parameter type) matches the bare subscription only.
    let mut high: Value = serde_json::from_str(&observation("p9", "1558-6")).unwrap();
    high["valueQuantity"]["value"] = json!(12.5);
    create(&app, "Observation", &high.to_string()).await;
    let hook = next(&mut hooks).await;
    assert_eq!((hook.method, hook.path.as_str(), hook.body.as_str()), (Method::POST, "/ping", ""));
    nothing_within(&mut hooks, Duration::from_millis(800)).await;
    // Every delivery is in the audit log, with the subscription as reason.
    let log = app.state.engine.store().audit_read(0, 10_000).await.unwrap();
    let notices: Vec<_> = log.iter().filter(|e| e.record.action == "notify").collect();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert_eq!(notices[0].record.entity, format!("Observation/{glucose}/_history/1"));
    assert!(notices[0].record.detail.contains(&format!("Subscription/{full} rest-hook")), "{:?}", notices[0]);
    assert!(notices[0].record.patients.contains(&"p1".to_string()));
}

#[tokio::test]
async fn new_cda_documents_reach_document_subscribers() {
    let (app, _) = live().await;
    let (endpoint, mut hooks) = hook_server(StatusCode::OK).await;
    subscribe(
        &app,
        "DocumentReference?status=current",
        json!({"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}),
    )
    .await;
    let xml = super::outpatient_cda();
    let (status, _, _) = send(&app, req("POST", "/cda", Some("application/hl7-cda+xml"), &xml)).await;
    assert_eq!(status, StatusCode::OK);
    let hook = next(&mut hooks).await;
    assert!(hook.path.starts_with("/DocumentReference/"), "{}", hook.path);
    let document: Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(document["resourceType"], "DocumentReference");
    assert!(document["masterIdentifier"]["value"].is_string(), "{document}");
    // The same document again creates nothing, so nothing is announced.
    send(&app, req("POST", "/cda", Some("application/hl7-cda+xml"), &xml)).await;
    nothing_within(&mut hooks, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn owners_hear_only_of_what_they_may_read() {
    let (app, _) = live().await;
    let (endpoint, mut hooks) = hook_server(StatusCode::OK).await;
    // A client that may manage Subscriptions but not read Observations.
    let narrow = client_bearer(&app.auth, "narrow", "system/Subscription.cruds system/Patient.rs").await;
    let mut r = req(
        "POST",
        "/fhir/Subscription",
        FHIR,
        &subscription("Observation", json!({"type": "rest-hook", "endpoint": format!("{endpoint}/narrow")})),
    );
    r.headers_mut().insert(header::AUTHORIZATION, narrow.parse().unwrap());
    let (status, _, created) = send(&app, r).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let narrow_id = created["id"].as_str().unwrap().to_string();
    subscribe(&app, "Observation", json!({"type": "rest-hook", "endpoint": format!("{endpoint}/full")})).await;
    create(&app, "Observation", &observation("p1", "2339-0")).await;
    assert_eq!(next(&mut hooks).await.path, "/full");
    nothing_within(&mut hooks, Duration::from_millis(1500)).await;

    // Subscriptions are their owners' alone: others neither read, find nor change them.
    let (status, _, _) = send(&app, req("GET", &format!("/fhir/Subscription/{narrow_id}"), None, "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, found) = send(&app, req("GET", "/fhir/Subscription", None, "")).await;
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 1, "{found}");
    let mut takeover: Value = created.clone();
    takeover["channel"]["endpoint"] = json!(format!("{endpoint}/stolen"));
    let (status, _, body) =
        send(&app, req("PUT", &format!("/fhir/Subscription/{narrow_id}"), FHIR, &takeover.to_string())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_outcome(&body, "created it");
    let mut own = req("GET", &format!("/fhir/Subscription/{narrow_id}"), None, "");
    own.headers_mut().insert(header::AUTHORIZATION, narrow.parse().unwrap());
    let (status, _, mine) = send(&app, own).await;
    assert_eq!(
        (status, mine["channel"]["endpoint"].as_str()),
        (StatusCode::OK, Some(format!("{endpoint}/narrow").as_str()))
    );
}

#[tokio::test]
async fn failing_endpoints_are_retried_then_the_subscription_is_in_error() {
    let (app, _) = live().await;
    let (failing, mut attempts) = hook_server(StatusCode::SERVICE_UNAVAILABLE).await;
    let (working, mut delivered) = hook_server(StatusCode::OK).await;
    let broken = subscribe(&app, "Observation", json!({"type": "rest-hook", "endpoint": failing})).await;
    subscribe(&app, "Observation", json!({"type": "rest-hook", "endpoint": working})).await;
    create(&app, "Observation", &observation("p1", "2339-0")).await;
    // The working endpoint is served at once, whatever the failing one does.
    next(&mut delivered).await;
    for _ in 0..3 {
        next(&mut attempts).await;
    }
    let status = in_error(&app, &broken).await;
    assert_eq!(status["status"], "error", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("3 times") && error.contains("503"), "{error}");
    nothing_within(&mut attempts, Duration::from_millis(800)).await;
    // A closed port fails the same way (connection refused).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let refused =
        subscribe(&app, "Patient", json!({"type": "rest-hook", "endpoint": format!("http://{closed}/")})).await;
    create(&app, "Patient", &json!({"resourceType": "Patient", "gender": "female"}).to_string()).await;
    let last = in_error(&app, &refused).await;
    assert!(last["error"].as_str().is_some_and(|e| e.contains("connection failed")), "{last}");
    // Reactivated by its owner, it is active again.
    let mut again = last.clone();
    again["status"] = json!("requested");
    let (status, _, body) =
        send(&app, req("PUT", &format!("/fhir/Subscription/{refused}"), FHIR, &again.to_string())).await;
    assert_eq!((status, body["status"].as_str(), body.get("error")), (StatusCode::OK, Some("active"), None));
}

#[tokio::test]
async fn https_rest_hooks_verify_the_endpoint_certificate() {
    let (endpoint, ca_pem, mut hooks) = tls_hook_server().await;
    // Trusted through the operator's CA file (HUTONG_SUBSCRIPTION_CA): delivered over TLS.
    let hub = api::subscriptions::SubscriptionHub::with_extra_roots(ca_pem.as_bytes()).unwrap();
    let (app, _) = live_with(None, Some(std::sync::Arc::new(hub))).await;
    let sub = subscribe(
        &app,
        "Observation?subject=Patient/p1",
        json!({"type": "rest-hook", "endpoint": format!("{endpoint}/fhir"), "payload": "application/fhir+json",
               "header": ["Authorization: Bearer hook-secret"]}),
    )
    .await;
    let id = create(&app, "Observation", &observation("p1", "2339-0")).await;
    let hook = next(&mut hooks).await;
    assert_eq!((hook.method, hook.path.as_str()), (Method::PUT, format!("/fhir/Observation/{id}").as_str()));
    assert_eq!(hook.headers[header::AUTHORIZATION], "Bearer hook-secret");
    let payload: Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(payload["id"].as_str(), Some(id.as_str()));
    let (_, _, active) = send(&app, req("GET", &format!("/fhir/Subscription/{sub}"), None, "")).await;
    assert_eq!(active["status"], "active", "{active}");

    // Without that CA, the same endpoint's certificate is not trusted: no request reaches it,
    // and the Subscription goes to error saying why.
    let (app, _) = live().await;
    let untrusted = subscribe(&app, "Observation", json!({"type": "rest-hook", "endpoint": endpoint})).await;
    create(&app, "Observation", &observation("p1", "2339-0")).await;
    let status = in_error(&app, &untrusted).await;
    assert_eq!(status["status"], "error", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("certificate") && error.contains("UnknownIssuer"), "{error}");
    nothing_within(&mut hooks, Duration::from_millis(300)).await;

    // A CA file without certificates is refused with a reason.
    let refused = api::subscriptions::SubscriptionHub::with_extra_roots(b"not a certificate").unwrap_err();
    assert!(refused.contains("no certificate"), "{refused}");
}

#[tokio::test]
async fn websocket_clients_bind_and_are_pinged() {
    let (app, addr) = live().await;
    let id = subscribe(&app, "Observation?code=http://loinc.org|2339-0", json!({"type": "websocket"})).await;
    let (_, _, capability) = send(&app, req("GET", "/fhir/metadata", None, "")).await;
    let url = capability["rest"][0]["extension"][0]["valueUri"].as_str().unwrap().to_string();
    assert_eq!(url, "ws://test.local/fhir/websocket");

    // Without a token: refused before the upgrade.
    let anonymous = format!("ws://{addr}/fhir/websocket").into_client_request().unwrap();
    assert!(tokio_tungstenite::connect_async(anonymous).await.is_err());

    let mut request = format!("ws://{addr}/fhir/websocket").into_client_request().unwrap();
    request.headers_mut().insert(header::AUTHORIZATION, app.bearer.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(Message::Text(format!("bind {id}").into())).await.unwrap();
    let answer = recv_text(&mut socket).await;
    assert_eq!(answer, format!("bound {id}"));
    socket.send(Message::Text("bind no-such-subscription".into())).await.unwrap();
    assert!(recv_text(&mut socket).await.starts_with("error no-such-subscription"));

    create(&app, "Observation", &observation("p1", "2339-0")).await;
    assert_eq!(recv_text(&mut socket).await, format!("ping {id}"));
    create(&app, "Observation", &observation("p1", "718-7")).await;
    create(&app, "Observation", &observation("p2", "2339-0")).await;
    assert_eq!(recv_text(&mut socket).await, format!("ping {id}"), "one ping per matching resource");
    let quiet = tokio::time::timeout(Duration::from_millis(1000), socket.next()).await;
    assert!(quiet.is_err(), "no ping for a resource that does not match: {quiet:?}");
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn recv_text(socket: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(text) = message {
            return text.as_str().to_string();
        }
    }
}

#[tokio::test]
async fn invalid_subscriptions_are_refused_with_an_operation_outcome() {
    let (app, _) = live().await;
    let hook = json!({"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"});
    let cases = [
        ("Nothing?x=1", hook.clone(), "known resource type"),
        ("Observation?colour=blue", hook.clone(), "colour"),
        ("Observation?date=yesterday", hook.clone(), "yesterday"),
        ("Observation?_count=5", hook.clone(), "_count"),
        ("Subscription?status=active", hook.clone(), "Subscriptions themselves"),
        ("Observation", json!({"type": "email", "endpoint": "mailto:a@b.cn"}), "not supported"),
        ("Observation", json!({"type": "rest-hook"}), "channel.endpoint"),
        (
            "Observation",
            json!({"type": "rest-hook", "endpoint": "ftp://127.0.0.1/x"}),
            "scheme 'ftp' is not allowed (use https, or http)",
        ),
        ("Observation", json!({"type": "rest-hook", "endpoint": "https://10.0.0.8/x"}), "allow-list"),
        ("Observation", json!({"type": "rest-hook", "endpoint": "http://10.0.0.8/x"}), "allow-list"),
        (
            "Observation",
            json!({"type": "rest-hook", "endpoint": "http://127.0.0.1/x", "payload": "application/fhir+xml"}),
            "payload type",
        ),
        (
            "Observation",
            json!({"type": "rest-hook", "endpoint": "http://127.0.0.1/x", "header": ["no colon"]}),
            "Name: value",
        ),
    ];
    for (criteria, channel, words) in cases {
        let (status, _, body) =
            send(&app, req("POST", "/fhir/Subscription", FHIR, &subscription(criteria, channel.clone()))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{criteria} {channel}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert!(body.to_string().contains(words), "{criteria} {channel}: {body} should mention '{words}'");
    }
    let (_, _, found) = send(&app, req("GET", "/fhir/Subscription", None, "")).await;
    assert_eq!(found["total"], 0, "nothing was stored");
    // The capability statement describes the service.
    let (_, _, capability) = send(&app, req("GET", "/fhir/metadata", None, "")).await;
    let resources = capability["rest"][0]["resource"].as_array().unwrap();
    let sub = resources.iter().find(|r| r["type"] == "Subscription").unwrap();
    assert!(sub["documentation"].as_str().unwrap().contains("rest-hook"), "{sub}");
}

/// The delivery path on PostgreSQL (scripts/test.sh provides the server): a rest-hook with its
/// payload, a non-matching resource, and a failing endpoint ending in `error`.
#[tokio::test]
async fn rest_hooks_and_errors_on_postgresql() {
    let Some(store) = store_postgres::testing::fresh_store().await else { return };
    let (app, _) = live_on(Some(std::sync::Arc::new(store))).await;
    let (endpoint, mut hooks) = hook_server(StatusCode::OK).await;
    let (failing, mut attempts) = hook_server(StatusCode::INTERNAL_SERVER_ERROR).await;
    subscribe(
        &app,
        "Observation?code=http://loinc.org|2339-0",
        json!({"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}),
    )
    .await;
    let broken = subscribe(&app, "Observation", json!({"type": "rest-hook", "endpoint": failing})).await;
    let glucose = create(&app, "Observation", &observation("p1", "2339-0")).await;
    let hook = next(&mut hooks).await;
    assert_eq!((hook.method, hook.path), (Method::PUT, format!("/Observation/{glucose}")));
    create(&app, "Observation", &observation("p1", "718-7")).await;
    // Three attempts (max_failures), then the Subscription is in error and the rest is dropped.
    for _ in 0..3 {
        next(&mut attempts).await;
    }
    nothing_within(&mut hooks, Duration::from_millis(500)).await;
    let sub = in_error(&app, &broken).await;
    assert!(sub["error"].as_str().is_some_and(|e| e.contains("HTTP 500")), "{sub}");
    nothing_within(&mut attempts, Duration::from_millis(800)).await;
}
