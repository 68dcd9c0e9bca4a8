//! The HTTP side of security: bearer-token authentication of every FHIR request, the OAuth2 /
//! SMART endpoints, and the audit-trail API.
//!
//! | endpoint | who |
//! |---|---|
//! | `POST /oauth2/token` | anyone (client credentials with a secret or a signed JWT assertion, password + TOTP, refresh, SMS code) |
//! | `POST /oauth2/sms-code` | anyone (sends a login code to a registered resident's phone) |
//! | `POST /oauth2/introspect` | authenticated system clients (HTTP Basic) |
//! | `POST /oauth2/revoke` | anyone holding the token |
//! | `GET /.well-known/smart-configuration` (also under `/fhir`) | anyone |
//! | `GET /audit/patient/{id}` | the resident (own and dependants' records) and auditors: who accessed the record |
//! | `GET /audit/log?after=N&_count=M` | auditors only |
//!
//! Request headers read here: `Authorization: Bearer …` (at most [`MAX_AUTHORIZATION_BYTES`]);
//! `X-Purpose-Of-Use` (an HL7 v3 PurposeOfUse code, default per role); `X-Break-Glass` (a
//! clinician's percent-encoded reason for emergency access).
//!
//! The token endpoint's public URL, which JWT client assertions name in `aud`, is the server's
//! public root (`--base-url` without `/fhir`, else `http://{Host}`) + `/oauth2/token`, the
//! same URL `/.well-known/smart-configuration` publishes.

use std::collections::HashMap;

use access::Role;
use auth::AuthError;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir::IssueType;
use serde_json::{Value, json};
use store::Ctx;

use crate::{ApiError, AppState, FHIR_JSON};

/// Purposes of use a request may declare.
const PURPOSES: &[&str] = &[
    "TREAT",
    "ETREAT",
    "HPAYMT",
    "HOPERAT",
    "PUBHLTH",
    "HRESCH",
    "PATRQT",
    "FAMRQT",
    "HSYSADMIN",
    "HMARKT",
    "HQUALIMP",
];

/// Longest `Authorization` header read: bearer tokens are 43 characters and Basic
/// credentials well under this; anything longer is refused before it is parsed. (Signed JWT
/// client assertions travel in the form body, capped at `auth::jwt::MAX_ASSERTION_BYTES`.)
pub const MAX_AUTHORIZATION_BYTES: usize = 4096;

/// The bearer token of an `Authorization` header, or why there is none usable.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(
            "this endpoint needs an access token: send Authorization: Bearer <token> (get one at /oauth2/token)",
        );
    };
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err("the Authorization header is longer than 4096 bytes; send Authorization: Bearer <token>");
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or("the Authorization header must be 'Bearer <token>'")?;
    if token.is_empty() {
        return Err("the Authorization header must be 'Bearer <token>'");
    }
    Ok(token)
}

/// A 401 with the `WWW-Authenticate` challenge.
pub fn unauthenticated(message: &str) -> Response {
    let mut response =
        ApiError::http(StatusCode::UNAUTHORIZED, IssueType::Security, message.to_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"hutong\", error=\"invalid_token\", error_description=\"{}\"",
        message.replace('"', "'")
    )) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

fn remote(headers: &HeaderMap, request: Option<&Request>) -> Option<String> {
    let peer = request
        .and_then(|r| r.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>())
        .map(|c| c.0.ip().to_string());
    peer.or_else(|| headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(|s| s.chars().take(64).collect()))
}

/// Authenticates a request: the request context for its principal, or the response to send.
pub fn authenticate(
    state: &AppState,
    request: &Request,
) -> impl std::future::Future<Output = Result<Ctx, Response>> + Send + 'static {
    let state = state.clone();
    let headers = request.headers().clone();
    let source = remote(&headers, Some(request));
    async move { authenticate_headers(&state, headers, source).await }
}

/// Records a refused request (no principal, or one refused before any resource was touched).
async fn audit_refusal(state: &AppState, action: &str, actor: &str, role: &str, reason: &str, source: &Option<String>) {
    let record = store::AuditRecord {
        recorded: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        action: action.into(),
        outcome: "denied".into(),
        actor: actor.into(),
        role: role.into(),
        organization: String::new(),
        purpose: String::new(),
        entity: "session".into(),
        patients: Vec::new(),
        detail: serde_json::json!({"reason": reason, "source": source}).to_string(),
    };
    if let Err(e) = state.engine.audit_event(record).await {
        tracing::error!(error = %e, "a refused request could not be audited");
    }
}

pub(crate) async fn authenticate_headers(
    state: &AppState,
    headers: HeaderMap,
    source: Option<String>,
) -> Result<Ctx, Response> {
    let headers = &headers;
    let token = match bearer_token(headers) {
        Ok(t) => t,
        Err(m) => {
            audit_refusal(state, "authenticate", "anonymous", "", m, &source).await;
            return Err(unauthenticated(m));
        }
    };
    let session = match state.auth.authenticate(token).await {
        Ok(s) => s,
        Err(AuthError::Unauthenticated(m)) => {
            audit_refusal(state, "authenticate", "anonymous", "", &m, &source).await;
            return Err(unauthenticated(&m));
        }
        Err(e) => return Err(auth_failure(e)),
    };
    let mut principal = session.principal;
    let source_ctx = |principal: std::sync::Arc<access::Principal>| {
        Ctx::for_shared(Ctx::next_request_id(), principal, source.clone())
    };
    if headers.get("x-purpose-of-use").is_none() && headers.get("x-break-glass").is_none() {
        return Ok(source_ctx(principal));
    }
    let principal_mut = std::sync::Arc::make_mut(&mut principal);
    if let Some(purpose) = headers.get("x-purpose-of-use").and_then(|v| v.to_str().ok()) {
        let purpose = purpose.trim().to_ascii_uppercase();
        if !PURPOSES.contains(&purpose.as_str()) {
            return Err(ApiError::http(
                StatusCode::BAD_REQUEST,
                IssueType::Invalid,
                format!(
                    "X-Purpose-Of-Use '{}' is not a known purpose ({})",
                    purpose.chars().take(32).collect::<String>(),
                    PURPOSES.join(", ")
                ),
            )
            .into_response());
        }
        principal_mut.purpose = purpose;
    }
    if let Some(reason) = headers.get("x-break-glass").and_then(|v| v.to_str().ok()) {
        let reason: String = form_urlencoded::parse(format!("r={reason}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let reason = reason.trim().chars().take(500).collect::<String>();
        if !principal_mut.role.is_clinical() {
            let (actor, role) = (principal_mut.subject.clone(), principal_mut.role.code().to_string());
            audit_refusal(state, "break-glass", &actor, &role, "break-glass by a non-clinical role", &source).await;
            return Err(ApiError::http(
                StatusCode::FORBIDDEN,
                IssueType::Forbidden,
                "break-glass is for doctors, nurses and pharmacists in an emergency",
            )
            .into_response());
        }
        if reason.chars().count() < 4 {
            return Err(ApiError::http(
                StatusCode::BAD_REQUEST,
                IssueType::Required,
                "X-Break-Glass needs the reason for emergency access (percent-encoded text)",
            )
            .into_response());
        }
        principal_mut.break_glass = Some(reason);
        principal_mut.purpose = "ETREAT".into();
    }
    Ok(source_ctx(principal))
}

fn auth_failure(e: AuthError) -> Response {
    match e {
        AuthError::OAuth { status, code, description } => oauth_error(status, code, &description),
        AuthError::Unauthenticated(m) => unauthenticated(&m),
        AuthError::Invalid(m) => ApiError::http(StatusCode::BAD_REQUEST, IssueType::Invalid, m).into_response(),
        AuthError::Store(s) => ApiError::Engine(engine::EngineError::Store(s)).into_response(),
    }
}

/// An RFC 6749 error body that is also a FHIR OperationOutcome.
fn oauth_error(status: u16, code: &str, description: &str) -> Response {
    let body = json!({
        "error": code,
        "error_description": description,
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": if status == 401 { "login" } else { "invalid" }, "diagnostics": description}],
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"hutong\""));
    }
    response
}

fn json_ok(value: Value) -> Response {
    let mut response = (StatusCode::OK, value.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn form_of(request: Request, limit: usize) -> Result<(HeaderMap, HashMap<String, String>), Response> {
    let (parts, body) = request.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(oauth_error(400, "invalid_request", "send the parameters as application/x-www-form-urlencoded"));
    }
    let bytes = axum::body::to_bytes(body, limit.min(64 * 1024))
        .await
        .map_err(|_| oauth_error(400, "invalid_request", "the request body is too large"))?;
    let mut form = HashMap::new();
    for (k, v) in form_urlencoded::parse(&bytes) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            return Err(oauth_error(400, "invalid_request", &format!("parameter '{k}' is repeated")));
        }
    }
    Ok((parts.headers, form))
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION).filter(|v| v.len() <= MAX_AUTHORIZATION_BYTES)?;
    let value = value.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64_standard_decode(value.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((unescape(id)?, unescape(secret)?))
}

fn base64_standard_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() > 2048 {
        return None;
    }
    let url: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    crypto::unbase64url(&url).ok()
}

/// The server's public root URL (the FHIR base without `/fhir`), where `/oauth2/…` lives.
fn public_root(state: &AppState, headers: &HeaderMap) -> String {
    crate::base_url(state, headers).trim_end_matches("/fhir").to_string()
}

/// `POST /oauth2/token`.
pub async fn token(State(state): State<AppState>, request: Request) -> Response {
    let source = remote(request.headers(), Some(&request));
    let (headers, form) = match form_of(request, state.config.max_body_bytes).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let endpoint = format!("{}/oauth2/token", public_root(&state, &headers));
    match state.auth.token_at(Some(&endpoint), &form, basic_credentials(&headers), source.as_deref()).await {
        Ok(body) => json_ok(body),
        Err(e) => auth_failure(e),
    }
}

/// `POST /oauth2/sms-code` (`phone=…`).
pub async fn sms_code(State(state): State<AppState>, request: Request) -> Response {
    let (_, form) = match form_of(request, state.config.max_body_bytes).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let phone = form.get("phone").cloned().unwrap_or_default();
    match state.auth.send_sms_code(&phone).await {
        Ok(()) => json_ok(json!({"sent": true, "expires_in": state.auth.config().sms_code_ttl})),
        Err(e) => auth_failure(e),
    }
}

/// `POST /oauth2/introspect` (RFC 7662), for system clients.
pub async fn introspect(State(state): State<AppState>, request: Request) -> Response {
    let (headers, form) = match form_of(request, state.config.max_body_bytes).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some((id, secret)) = basic_credentials(&headers) else {
        return oauth_error(401, "invalid_client", "introspection needs client credentials (HTTP Basic)");
    };
    match state.auth.client_ok(&id, &secret).await {
        Ok(true) => {}
        Ok(false) => return oauth_error(401, "invalid_client", "unknown client or wrong secret"),
        Err(e) => return auth_failure(e),
    }
    let Some(token) = form.get("token") else { return oauth_error(400, "invalid_request", "token is required") };
    match state.auth.introspect(token).await {
        Ok(v) => json_ok(v),
        Err(e) => auth_failure(e),
    }
}

/// `POST /oauth2/revoke` (RFC 7009).
pub async fn revoke(State(state): State<AppState>, request: Request) -> Response {
    let (_, form) = match form_of(request, state.config.max_body_bytes).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(token) = form.get("token") else { return oauth_error(400, "invalid_request", "token is required") };
    match state.auth.revoke(token).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => auth_failure(e),
    }
}

/// `GET /.well-known/smart-configuration`.
pub async fn smart_configuration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = crate::base_url(&state, &headers);
    let mut doc = auth::smart_configuration(&public_root(&state, &headers));
    doc["issuer"] = json!(base);
    json_ok(doc)
}

/// `CapabilityStatement.rest[0].security` for the FHIR base `base`: the SMART-on-FHIR
/// service and its OAuth endpoints (the `oauth-uris` extension of SMART App Launch 1.0, which
/// clients still read next to `/.well-known/smart-configuration`). There is no `authorize`
/// URI: this server has no authorization-code flow.
pub fn capability_security(base: &str) -> Value {
    let root = base.trim_end_matches("/fhir");
    json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                {"url": "token", "valueUri": format!("{root}/oauth2/token")},
                {"url": "revoke", "valueUri": format!("{root}/oauth2/revoke")},
                {"url": "introspect", "valueUri": format!("{root}/oauth2/introspect")},
            ]
        }],
        "cors": false,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR"
            }],
            "text": "OAuth2 with SMART on FHIR scopes"
        }],
        "description": "Every request except this statement needs a bearer token from the token endpoint: client \
                        credentials (secret or a JWT assertion signed with SM2 or ES384, SMART Backend Services), \
                        password + TOTP for staff, SMS code for residents, refresh tokens. Scopes: SMART v1/v2. \
                        See /.well-known/smart-configuration."
    })
}

/// The AuditEvents of one log entry: one, or one per event of a block entry
/// ([`engine::BLOCK_ACTION`]), keeping only events that touched `patient` when given.
fn audit_events(entry: &store::AuditEntry, patient: Option<&str>) -> Vec<Value> {
    if entry.record.action != engine::BLOCK_ACTION {
        return vec![audit_event(entry.seq.to_string(), &entry.record)];
    }
    let detail: Value = serde_json::from_str(&entry.record.detail).unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    detail["events"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, e)| {
            let patients: Vec<String> =
                e[8].as_array().into_iter().flatten().filter_map(|p| p.as_str()).map(str::to_string).collect();
            if patient.is_some_and(|p| !patients.iter().any(|x| x == p)) {
                return None;
            }
            let record = store::AuditRecord {
                recorded: e[0].as_i64().unwrap_or(0),
                action: text(&e[1]),
                outcome: text(&e[2]),
                actor: text(&e[3]),
                role: text(&e[4]),
                organization: text(&e[5]),
                purpose: text(&e[6]),
                entity: text(&e[7]),
                patients,
                detail: e[9].to_string(),
            };
            Some(audit_event(format!("{}-{i}", entry.seq), &record))
        })
        .collect()
}

fn audit_event(id: String, r: &store::AuditRecord) -> Value {
    let outcome = match r.outcome.as_str() {
        "success" => "0",
        "denied" => "4",
        _ => "8",
    };
    let detail: Value = serde_json::from_str(&r.detail).unwrap_or(Value::Null);
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": r.action}],
        "recorded": fhir::normalize::format_instant(r.recorded),
        "outcome": outcome,
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": r.purpose}]}],
        "agent": [{
            "who": {"identifier": {"value": r.actor}},
            "type": {"text": r.role},
            "requestor": true,
        }],
        "source": {"observer": {"display": "hutong"}},
        "entity": [{"what": {"reference": r.entity}}],
    });
    if !r.organization.is_empty() {
        event["agent"][0]["location"] = json!({"display": r.organization});
        if let Some(agents) = event["agent"].as_array_mut() {
            agents.push(json!({"who": {"reference": r.organization}, "requestor": false}));
        }
    }
    if let Some(reason) = detail["reason"].as_str() {
        event["outcomeDesc"] = json!(reason);
    }
    if let Some(glass) = detail["breakGlass"].as_str() {
        event["purposeOfEvent"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}], "text": glass}]);
    }
    if let Some(source) = detail["source"].as_str() {
        event["agent"][0]["network"] = json!({"address": source, "type": "2"});
    }
    event
}

fn bundle(events: Vec<Value>) -> Response {
    let body = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": events.len(),
        "entry": events.into_iter().map(|e| json!({"resource": e})).collect::<Vec<_>>(),
    });
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// `GET /audit/patient/{id}`: who accessed this patient's records, newest first
/// ("谁看过我的档案"). For the resident (own and dependants') and auditors.
pub async fn patient_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let count = query.get("_count").and_then(|c| c.parse().ok()).unwrap_or(100usize).min(1000);
    match patient_access_log(&state, &ctx, &id, count).await {
        Ok(events) => bundle(events),
        Err(e) => e.into_response(),
    }
}

/// The access log of one patient's records as AuditEvents, newest first, for the caller of
/// `ctx`: the resident (own and dependants' records) and auditors; anyone else is refused
/// (403, recorded). The read itself is recorded. Shared by `GET /audit/patient/{id}` and the
/// portal's 访问记录 page.
pub(crate) async fn patient_access_log(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    count: usize,
) -> Result<Vec<Value>, ApiError> {
    let principal = ctx.principal.as_deref().expect("authenticated");
    let allowed = match principal.role {
        Role::Auditor => true,
        Role::Resident => principal.patients.iter().any(|p| p == id),
        _ => false,
    };
    let store = state.engine.store();
    let record = |outcome: &str| store::AuditRecord {
        recorded: chrono::Utc::now().timestamp_millis(),
        action: "audit-read".into(),
        outcome: outcome.into(),
        actor: principal.subject.clone(),
        role: principal.role.code().into(),
        organization: principal.organization.clone().map(|o| format!("Organization/{o}")).unwrap_or_default(),
        purpose: principal.purpose.clone(),
        entity: format!("audit/patient/{id}"),
        patients: Vec::new(),
        detail: json!({"request": ctx.request_id}).to_string(),
    };
    if !allowed {
        let _ = store.commit_audited(ctx, Vec::new(), vec![record("denied")]).await;
        return Err(ApiError::http(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "the access log of a record is shown to the resident (and guardians) and to auditors",
        ));
    }
    state.engine.flush_audit().await?;
    let entries =
        store.audit_for_patient(id, count).await.map_err(|e| ApiError::Engine(engine::EngineError::Store(e)))?;
    store
        .commit_audited(ctx, Vec::new(), vec![record("success")])
        .await
        .map_err(|e| ApiError::Engine(engine::EngineError::Store(e)))?;
    Ok(entries.iter().flat_map(|e| audit_events(e, Some(id))).collect())
}

/// `GET /audit/log?after=N&_count=M`: the log in order, for auditors.
pub async fn log(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let principal = ctx.principal.as_deref().expect("authenticated");
    let store = state.engine.store();
    let record = |outcome: &str| store::AuditRecord {
        recorded: chrono::Utc::now().timestamp_millis(),
        action: "audit-read".into(),
        outcome: outcome.into(),
        actor: principal.subject.clone(),
        role: principal.role.code().into(),
        organization: String::new(),
        purpose: principal.purpose.clone(),
        entity: "audit/log".into(),
        patients: Vec::new(),
        detail: json!({"request": ctx.request_id}).to_string(),
    };
    if principal.role != Role::Auditor {
        let _ = store.commit_audited(&ctx, Vec::new(), vec![record("denied")]).await;
        return ApiError::http(StatusCode::FORBIDDEN, IssueType::Forbidden, "the audit log is for auditors")
            .into_response();
    }
    let after = query.get("after").and_then(|c| c.parse().ok()).unwrap_or(0i64);
    let count = query.get("_count").and_then(|c| c.parse().ok()).unwrap_or(100usize).min(1000);
    if let Err(e) = state.engine.flush_audit().await {
        return ApiError::Engine(e).into_response();
    }
    let entries = match store.audit_read(after, count).await {
        Ok(e) => e,
        Err(e) => return ApiError::Engine(engine::EngineError::Store(e)).into_response(),
    };
    if let Err(e) = store.commit_audited(&ctx, Vec::new(), vec![record("success")]).await {
        return ApiError::Engine(engine::EngineError::Store(e)).into_response();
    }
    bundle(entries.iter().flat_map(|e| audit_events(e, None)).collect())
}
