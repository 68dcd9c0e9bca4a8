//! The delivery channels of FHIR Subscriptions (the rules and the worker are the engine's
//! `subscriptions.rs`): [`SubscriptionHub`] makes rest-hook requests with a small hyper client
//! (http, and https through rustls: the endpoint's certificate must chain to the system's trusted
//! roots or to the extra roots the operator names, and match the endpoint's host) and keeps the
//! websocket clients bound to each Subscription; [`websocket`] is `GET /fhir/websocket`, the R4
//! websocket protocol (`bind <id>` → `bound <id>`, then `ping <id>` per notification).
//!
//! The websocket upgrade is authenticated like every `/fhir` request (a bearer token in
//! `Authorization`), and a client binds only Subscriptions it may read, i.e. its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use engine::{RestHook, SubscriptionChannels};
use fhir::IssueType;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use store::Ctx;
use tokio::sync::mpsc;

use crate::{ApiError, AppState, security};

/// How long one rest-hook request may take before it counts as failed.
const REST_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// A websocket connection's number and its outgoing queue.
type BoundClient = (u64, mpsc::UnboundedSender<String>);

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The channels the engine's subscription worker delivers through.
pub struct SubscriptionHub {
    client: Client,
    /// Websocket clients by Subscription id: (connection number, its outgoing queue).
    bound: Mutex<HashMap<String, Vec<BoundClient>>>,
    next_connection: AtomicU64,
}

impl Default for SubscriptionHub {
    /// A hub trusting the system's roots (`/etc/ssl/certs` on Debian) for https endpoints.
    fn default() -> Self {
        SubscriptionHub::with_roots(system_roots())
    }
}

/// The system's trusted root certificates (those it cannot read are left out, with a warning).
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::warn!(errors = found.errors.len(), "some system root certificates could not be read");
    }
    let (_, unusable) = roots.add_parsable_certificates(found.certs);
    if unusable > 0 {
        tracing::warn!(unusable, "some system root certificates are not usable for TLS");
    }
    roots
}

impl SubscriptionHub {
    /// A hub trusting the system's roots and the certificates of a PEM file (a regional CA, or
    /// a hospital's own): what `HUTONG_SUBSCRIPTION_CA` names. Fails when the file cannot be
    /// read or holds no certificate.
    pub fn with_extra_roots(pem: &[u8]) -> Result<SubscriptionHub, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the CA file is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("the CA file holds no certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        let mut roots = system_roots();
        for cert in certs {
            roots.add(cert).map_err(|e| format!("a certificate of the CA file is not usable as a root: {e}"))?;
        }
        Ok(SubscriptionHub::with_roots(roots))
    }

    /// A hub trusting exactly `roots` for https endpoints.
    pub fn with_roots(roots: rustls::RootCertStore) -> SubscriptionHub {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        SubscriptionHub {
            client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            bound: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
        }
    }
}

impl std::fmt::Debug for SubscriptionHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = self.bound.lock().map(|b| b.len()).unwrap_or(0);
        f.debug_struct("SubscriptionHub").field("bound_subscriptions", &bound).finish()
    }
}

impl SubscriptionHub {
    fn bind(&self, subscription: &str, connection: u64, queue: mpsc::UnboundedSender<String>) {
        if let Ok(mut bound) = self.bound.lock() {
            let clients = bound.entry(subscription.to_string()).or_default();
            if !clients.iter().any(|(c, _)| *c == connection) {
                clients.push((connection, queue));
            }
        }
    }

    fn unbind_all(&self, connection: u64) {
        if let Ok(mut bound) = self.bound.lock() {
            bound.values_mut().for_each(|clients| clients.retain(|(c, _)| *c != connection));
            bound.retain(|_, clients| !clients.is_empty());
        }
    }
}

#[async_trait::async_trait]
impl SubscriptionChannels for SubscriptionHub {
    async fn rest_hook(&self, hook: RestHook) -> Result<(), String> {
        let mut request = axum::http::Request::builder().method(hook.method).uri(&hook.url);
        for (name, value) in &hook.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let body = match hook.payload {
            Some((content_type, body)) => {
                request = request.header("content-type", content_type);
                Full::new(Bytes::from(body))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| format!("the request could not be built: {e}"))?;
        match tokio::time::timeout(REST_HOOK_TIMEOUT, self.client.request(request)).await {
            Err(_) => Err(format!("no answer within {} s", REST_HOOK_TIMEOUT.as_secs())),
            Ok(Err(e)) => Err(format!("connection failed: {}", causes(&e))),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("the endpoint answered HTTP {}", response.status().as_u16())),
        }
    }

    fn websocket_ping(&self, subscription: &str) -> usize {
        let Ok(mut bound) = self.bound.lock() else { return 0 };
        let Some(clients) = bound.get_mut(subscription) else { return 0 };
        clients.retain(|(_, queue)| queue.send(format!("ping {subscription}")).is_ok());
        clients.len()
    }
}

/// An error with its causes ("client error (Connect): invalid peer certificate: UnknownIssuer"):
/// the outer one alone rarely says what to fix.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// `GET /fhir/websocket`: the R4 Subscription websocket.
pub async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ctx = match security::authenticate_headers(&state, headers, None).await {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    let Ok(upgrade) = upgrade else {
        return ApiError::http(
            StatusCode::BAD_REQUEST,
            IssueType::NotSupported,
            "this is the Subscription websocket: connect with a websocket client (Upgrade: websocket), then send \
             'bind <Subscription id>'",
        )
        .into_response();
    };
    upgrade.on_upgrade(move |socket| serve_socket(state, ctx, socket))
}

async fn serve_socket(state: AppState, ctx: Ctx, socket: WebSocket) {
    let hub = state.config.subscriptions.clone();
    let connection = hub.next_connection.fetch_add(1, Ordering::Relaxed);
    let (queue, mut outgoing) = mpsc::unbounded_channel::<String>();
    let (mut sender, mut receiver) = socket.split();
    loop {
        tokio::select! {
            message = receiver.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text.as_str().to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let answer = match text.trim().split_once(' ') {
                    Some(("bind", id)) => {
                        let id = id.trim();
                        match state.engine.subscription_bind(&ctx, id).await {
                            Ok(()) => {
                                hub.bind(id, connection, queue.clone());
                                format!("bound {id}")
                            }
                            Err(e) => format!("error {id}: {e}"),
                        }
                    }
                    _ => "error: send 'bind <Subscription id>'".to_string(),
                };
                if sender.send(Message::Text(answer.into())).await.is_err() {
                    break;
                }
            }
            Some(ping) = outgoing.recv() => {
                if sender.send(Message::Text(ping.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    hub.unbind_all(connection);
}
