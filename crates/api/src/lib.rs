//! The HTTP surface: the FHIR R4 REST API under `/fhir` and the liveness probe `/healthz`.
//!
//! FHIR paths are dispatched by one handler ([`fhir_handler`]) that reads the path segments
//! itself, so every unknown path, wrong method, oversized or malformed body and unsupported
//! media type is answered with an OperationOutcome (see [`error`] for the status table).
//! HTTP semantics live here (headers, ETags, Prefer, content negotiation); FHIR behaviour lives
//! in `engine`.

pub mod error;
pub mod healthcard;
pub mod hl7v2;
pub mod portal;
pub mod security;
pub mod services;
pub mod subscriptions;
pub mod workbench;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engine::{Engine, ExportScope, ExportStatus, RequestOptions, ReturnPreference, WriteOutcome};
use fhir::IssueType;
use serde_json::Value;
use store::{Ctx, StoredResource};

pub use error::{ApiError, FHIR_JSON};

/// HTTP settings.
#[derive(Clone)]
pub struct ApiConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The public FHIR base URL (e.g. behind a proxy); by default `http://{Host}/fhir`.
    pub base_url: Option<String>,
    /// Require an access token (always, except in `hutong bench search --no-auth`, which
    /// measures the cost of authorization and audit against this baseline).
    pub authenticate: bool,
    /// HL7 v2 over HTTP (`POST /hl7v2`), when the binary plugs in its listener's processing.
    pub hl7: Option<Arc<dyn hl7v2::Hl7Receiver>>,
    /// The Subscription channels: rest-hook client and bound websockets, shared with the
    /// engine's subscription worker (`Engine::subscriptions_run`).
    pub subscriptions: Arc<subscriptions::SubscriptionHub>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 16 * 1024 * 1024,
            base_url: None,
            authenticate: true,
            hl7: None,
            subscriptions: Arc::default(),
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("base_url", &self.base_url)
            .field("authenticate", &self.authenticate)
            .field("hl7", &self.hl7.is_some())
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<auth::Auth>,
    pub config: ApiConfig,
}

/// The engine's check of a staff member's fresh second factor, over the auth service.
struct AuthSecondFactor(Arc<auth::Auth>);

#[async_trait::async_trait]
impl engine::SecondFactor for AuthSecondFactor {
    async fn verify(&self, subject: &str, code: &str) -> engine::EngineResult<bool> {
        match self.0.check_second_factor(subject, code).await {
            Ok(ok) => Ok(ok),
            Err(auth::AuthError::Store(e)) => Err(e.into()),
            // A stored account that cannot be read confirms nothing.
            Err(_) => Ok(false),
        }
    }
}

/// The application router.
pub fn router(state: AppState) -> Router {
    state.engine.install_second_factor(Arc::new(AuthSecondFactor(state.auth.clone())));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/oauth2/token", axum::routing::post(security::token))
        .route("/oauth2/sms-code", axum::routing::post(security::sms_code))
        .route("/oauth2/introspect", axum::routing::post(security::introspect))
        .route("/oauth2/revoke", axum::routing::post(security::revoke))
        .route("/.well-known/smart-configuration", get(security::smart_configuration))
        .route("/fhir/.well-known/smart-configuration", get(security::smart_configuration))
        .route("/audit/patient/{id}", get(security::patient_log))
        .route("/audit/log", get(security::log))
        .route("/healthcard", get(healthcard::query))
        .route("/healthcard/keys", get(healthcard::keys))
        .route("/healthcard/register", axum::routing::post(healthcard::register))
        .route("/healthcard/verify", axum::routing::post(healthcard::verify))
        .route("/healthcard/{card}", get(healthcard::read))
        .route("/healthcard/{card}/code", axum::routing::post(healthcard::code))
        .route("/healthcard/{card}/use", axum::routing::post(healthcard::report_use))
        .route("/healthcard/{card}/{action}", axum::routing::post(healthcard::set_status))
        .route("/guidance", get(services::guidance))
        .route("/kpi/booking-rate", get(services::booking_rate))
        .route("/supervision/feed", get(services::supervision_feed))
        .route("/cda", axum::routing::post(services::cda))
        .route("/quality/scorecard", get(services::quality_scorecard))
        .route("/quality/quarantine", get(services::quality_quarantine))
        .route("/quality/quarantine/{id}", axum::routing::delete(services::quality_discard))
        .route("/quality/quarantine/{id}/{action}", axum::routing::post(services::quality_held))
        .route("/hl7v2", axum::routing::post(hl7v2::post))
        .route("/fhir/websocket", get(subscriptions::websocket))
        .route("/fhir", axum::routing::any(fhir_handler))
        .route("/fhir/", axum::routing::any(fhir_handler))
        .route("/fhir/{*rest}", axum::routing::any(fhir_handler))
        .merge(portal::routes())
        .merge(workbench::routes())
        .fallback(|| async {
            ApiError::http(StatusCode::NOT_FOUND, IssueType::NotFound, "no such endpoint; the FHIR API is under /fhir")
        })
        .with_state(state)
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.config.base_url {
        return base.trim_end_matches('/').to_string();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}/fhir")
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parses `W/"3"` or `"3"`.
fn parse_etag(text: &str) -> Option<i64> {
    text.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

fn prefer(headers: &HeaderMap) -> (ReturnPreference, bool) {
    let mut ret = ReturnPreference::Representation;
    let mut lenient = false;
    for value in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
        for part in value.split([',', ';']).map(str::trim) {
            match part {
                "return=minimal" => ret = ReturnPreference::Minimal,
                "return=representation" => ret = ReturnPreference::Representation,
                "return=OperationOutcome" => ret = ReturnPreference::OperationOutcome,
                "handling=lenient" => lenient = true,
                "handling=strict" => lenient = false,
                _ => {}
            }
        }
    }
    (ret, lenient)
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

fn http_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

fn resource_response(
    status: StatusCode,
    resource: &StoredResource,
    base: &str,
    location: bool,
    ret: ReturnPreference,
) -> Response {
    let body = match ret {
        ReturnPreference::Representation => resource.body.clone().unwrap_or_default(),
        ReturnPreference::Minimal => String::new(),
        ReturnPreference::OperationOutcome => {
            let mut issue = fhir::Issue::error(
                IssueType::Informational,
                format!("{}/{} is at version {}", resource.resource_type, resource.id, resource.version),
            );
            issue.severity = fhir::IssueSeverity::Information;
            fhir::outcome::operation_outcome(&[issue]).to_string()
        }
    };
    let mut response = json_response(status, body);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", resource.version)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(resource.last_updated)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if location {
        let url = format!("{base}/{}/{}/_history/{}", resource.resource_type, resource.id, resource.version);
        if let Ok(v) = HeaderValue::from_str(&url) {
            headers.insert(header::LOCATION, v.clone());
            headers.insert(header::CONTENT_LOCATION, v);
        }
    }
    response
}

fn write_response(outcome: WriteOutcome, base: &str, ret: ReturnPreference) -> Response {
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    resource_response(status, &outcome.resource, base, true, ret)
}

/// Checks `_format` and `Accept`: only JSON is produced.
fn check_format(headers: &HeaderMap, params: &[(String, String)]) -> Result<(), ApiError> {
    let json_like = |f: &str| {
        let f = f.trim();
        f.is_empty()
            || f == "json"
            || f.contains("json")
            || f.starts_with("*/*")
            || f == "application/*"
            || f.contains("text/html")
    };
    if let Some((_, f)) = params.iter().find(|(k, _)| k == "_format")
        && !json_like(f)
    {
        return Err(ApiError::http(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("_format={f} is not supported: this server speaks FHIR JSON only (use _format=json)"),
        ));
    }
    if let Some(accept) = header_str(headers, "accept")
        && !accept.split(',').any(|a| json_like(a.split(';').next().unwrap_or("")))
    {
        return Err(ApiError::http(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("Accept: {accept} cannot be served: this server produces application/fhir+json only"),
        ));
    }
    Ok(())
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::http(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!("the request body is larger than the limit of {limit} bytes; split it (e.g. smaller Bundles)"),
        )
    })
}

/// Parses a JSON request body, requiring a JSON media type.
fn json_body(headers: &HeaderMap, bytes: &[u8], patch: bool) -> Result<Value, ApiError> {
    let content_type = header_str(headers, "content-type").unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let accepted = match media.as_str() {
        "application/fhir+json" | "application/json" | "application/json+fhir" => true,
        "application/json-patch+json" => patch,
        _ => false,
    };
    if !accepted {
        let expected = if patch { "application/json-patch+json" } else { "application/fhir+json" };
        let shown = if media.is_empty() { "(none)".to_string() } else { media };
        return Err(ApiError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            format!("Content-Type {shown} is not supported; send {expected}"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::http(StatusCode::BAD_REQUEST, IssueType::Structure, format!("the body is not valid JSON: {e}"))
    })
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn method_not_allowed(method: &Method, path: &str, allowed: &str) -> ApiError {
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        format!("{method} is not allowed on {path} (allowed: {allowed})"),
    )
}

/// The single FHIR dispatcher.
pub async fn fhir_handler(State(state): State<AppState>, request: Request) -> Response {
    match dispatch(state, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(state: AppState, request: Request) -> ApiResult {
    // The capability statement is public (clients discover the security services from it);
    // everything else needs a valid access token.
    let public = (request.method() == Method::GET
        && matches!(request.uri().path(), "/fhir/metadata" | "/fhir/metadata/"))
        || !state.config.authenticate;
    let ctx = if public {
        Ctx { request_id: Ctx::next_request_id(), ..Ctx::default() }
    } else {
        match security::authenticate(&state, &request).await {
            Ok(ctx) => ctx,
            Err(response) => return Ok(response),
        }
    };
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let headers = parts.headers;
    let path = parts.uri.path().to_string();
    let mut params = query_pairs(parts.uri.query());
    check_format(&headers, &params)?;
    params.retain(|(k, _)| k != "_format" && k != "_pretty");
    let base = base_url(&state, &headers);
    let (return_preference, lenient) = prefer(&headers);
    let if_match = match header_str(&headers, "if-match") {
        Some(v) => Some(parse_etag(v).ok_or_else(|| {
            ApiError::http(
                StatusCode::BAD_REQUEST,
                IssueType::Invalid,
                format!("If-Match '{v}' is not an ETag like W/\"3\""),
            )
        })?),
        None => None,
    };
    let opts = RequestOptions {
        base_url: base.clone(),
        lenient,
        if_match,
        if_none_exist: header_str(&headers, "if-none-exist").map(str::to_string),
        return_preference,
    };
    let engine = &state.engine;
    let segments: Vec<String> =
        path.trim_start_matches("/fhir").split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let body_bytes = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        read_body(body, state.config.max_body_bytes).await?
    } else {
        bytes::Bytes::new()
    };
    let is_type = |t: &str| engine.definitions().is_resource_type(t);
    let unknown_type = |t: &str| {
        ApiError::http(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("'{t}' is not a FHIR R4 resource type (check the spelling and case, e.g. Patient)"),
        )
    };
    match segs.as_slice() {
        [] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, engine.search_json(&ctx, None, &params, &opts).await?)),
            Method::POST => {
                let bundle = json_body(&headers, &body_bytes, false)?;
                Ok(json_response(StatusCode::OK, engine.bundle(&ctx, bundle, &opts).await?.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "GET, POST")),
        },
        ["metadata"] => match method {
            Method::GET => {
                let mut statement = engine.capability_statement(&base);
                if state.config.authenticate {
                    statement["rest"][0]["security"] = security::capability_security(&base);
                }
                Ok(json_response(StatusCode::OK, statement.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        ["_history"] => match method {
            Method::GET => {
                Ok(json_response(StatusCode::OK, engine.history(&ctx, None, None, &params, &opts).await?.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        ["$export"] => {
            export_kickoff(engine, &ctx, &headers, &method, &path, ExportScope::System, &params, &opts).await
        }
        ["$export-status", job] => match method {
            Method::GET => export_status(engine, &ctx, job).await,
            Method::DELETE => {
                engine.export_cancel(&ctx, job).await?;
                Ok(StatusCode::ACCEPTED.into_response())
            }
            _ => Err(method_not_allowed(&method, &path, "GET, DELETE")),
        },
        ["$export-file", job, file] => match method {
            Method::GET => {
                let path = engine.export_file(&ctx, job, file).await?;
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    ApiError::Engine(engine::EngineError::Store(store::StoreError::Backend(format!(
                        "export file: {e}"
                    ))))
                })?;
                let stream = Body::from_stream(tokio_util_stream(file));
                let mut response = (StatusCode::OK, stream).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
                Ok(response)
            }
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        ["Patient", "$export"] => {
            export_kickoff(engine, &ctx, &headers, &method, &path, ExportScope::AllPatients, &params, &opts).await
        }
        ["Group", id, "$export"] => {
            export_kickoff(engine, &ctx, &headers, &method, &path, ExportScope::Group(id.to_string()), &params, &opts)
                .await
        }
        // Terminology operations (engine/src/terminology.rs), type and instance level.
        [t @ ("CodeSystem" | "ValueSet" | "ConceptMap"), .., op]
            if op.starts_with('$') && *op != "$validate" && segs.len() <= 3 =>
        {
            let id = if segs.len() == 3 { Some(segs[1]) } else { None };
            let body = match method {
                Method::GET => None,
                Method::POST => Some(json_body(&headers, &body_bytes, false)?),
                _ => return Err(method_not_allowed(&method, &path, "GET, POST")),
            };
            let result = engine.terminology_operation(&ctx, t, id, &op[1..], &params, body).await?;
            Ok(json_response(StatusCode::OK, result.to_string()))
        }
        [t, ..] if !is_type(t) => Err(unknown_type(t)),
        [t] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, engine.search_json(&ctx, Some(t), &params, &opts).await?)),
            Method::POST => {
                let body = json_body(&headers, &body_bytes, false)?;
                let outcome = engine.create(&ctx, t, body, &opts).await?;
                Ok(write_response(outcome, &base, return_preference))
            }
            Method::PUT => {
                let body = json_body(&headers, &body_bytes, false)?;
                let outcome = engine.conditional_update(&ctx, t, &params, body, &opts).await?;
                Ok(write_response(outcome, &base, return_preference))
            }
            Method::DELETE => {
                let n = engine.conditional_delete(&ctx, t, &params).await?;
                let mut info = fhir::Issue::error(IssueType::Informational, format!("deleted {n} {t} resource(s)"));
                info.severity = fhir::IssueSeverity::Information;
                Ok(error::outcome_response(StatusCode::OK, &[info]))
            }
            _ => Err(method_not_allowed(&method, &path, "GET, POST, PUT, DELETE")),
        },
        [t, "_search"] => match method {
            Method::POST => {
                let mut all = params.clone();
                let content_type = header_str(&headers, "content-type").unwrap_or("");
                if !body_bytes.is_empty() {
                    if !content_type.starts_with("application/x-www-form-urlencoded") {
                        return Err(ApiError::http(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            IssueType::NotSupported,
                            "POST _search takes application/x-www-form-urlencoded parameters",
                        ));
                    }
                    all.extend(form_urlencoded::parse(&body_bytes).into_owned());
                }
                Ok(json_response(StatusCode::OK, engine.search_json(&ctx, Some(t), &all, &opts).await?))
            }
            _ => Err(method_not_allowed(&method, &path, "POST")),
        },
        ["Patient", "$match"] => match method {
            Method::POST => {
                let parameters = json_body(&headers, &body_bytes, false)?;
                Ok(json_response(StatusCode::OK, engine.patient_match(&ctx, parameters, &opts).await?.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "POST")),
        },
        ["Patient", "$ihe-pix"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, engine.ihe_pix(&ctx, &params).await?.to_string())),
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        // The internet hospital (engine/src/internet.rs).
        ["Encounter", "$request-follow-up"]
        | ["Encounter", _, "$visit-status" | "$review-proof"]
        | ["MedicationRequest", "$prescribe" | "$dispense" | "$route"]
        | ["Task", _, "$review-prescription" | "$delivery"] => match method {
            Method::POST => {
                let parameters = json_body(&headers, &body_bytes, false)?;
                let keys = state.auth.keys();
                let result = match segs.as_slice() {
                    ["Encounter", "$request-follow-up"] => {
                        let visit = engine.request_follow_up(&ctx, parameters).await?;
                        return Ok(json_response(StatusCode::CREATED, visit.to_string()));
                    }
                    ["Encounter", id, "$review-proof"] => engine.review_proof(&ctx, id, parameters).await?,
                    ["Encounter", id, _] => engine.visit_status(&ctx, id, parameters).await?,
                    ["MedicationRequest", "$prescribe"] => engine.prescribe(&ctx, &keys, parameters).await?,
                    ["MedicationRequest", "$route"] => engine.route_prescription(&ctx, parameters).await?,
                    ["MedicationRequest", _] => engine.dispense(&ctx, parameters).await?,
                    [_, id, "$delivery"] => engine.delivery_update(&ctx, id, parameters).await?,
                    [_, id, _] => engine.review_prescription(&ctx, &keys, id, parameters).await?,
                    _ => unreachable!("matched above"),
                };
                Ok(json_response(StatusCode::OK, result.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "POST")),
        },
        ["Task", "$review-queue"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, engine.review_queue(&ctx, &params).await?.to_string())),
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        ["MedicationRequest", "$pharmacy-queue"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, engine.pharmacy_queue(&ctx).await?.to_string())),
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        ["MedicationRequest", "$verify-prescription"] => match method {
            Method::GET => {
                let number = params.iter().find(|(k, _)| k == "number").map(|(_, v)| v.as_str()).ok_or_else(|| {
                    ApiError::http(StatusCode::BAD_REQUEST, IssueType::Required, "number=RX… is required")
                })?;
                Ok(json_response(StatusCode::OK, engine.verify_prescription(&ctx, number).await?.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        // Check-in by health card code (engine/src/checkin.rs).
        ["Appointment", "$check-in"] => match method {
            Method::POST => {
                let parameters = json_body(&headers, &body_bytes, false)?;
                let keys = state.auth.keys();
                Ok(json_response(
                    StatusCode::OK,
                    engine.appointment_check_in(&ctx, &keys, parameters).await?.to_string(),
                ))
            }
            _ => Err(method_not_allowed(&method, &path, "POST")),
        },
        ["Person", op @ ("$mpi-link" | "$mpi-merge" | "$mpi-unmerge" | "$mpi-relink")] => match method {
            Method::POST => {
                let parameters = json_body(&headers, &body_bytes, false)?;
                let result = match *op {
                    "$mpi-link" => engine.mpi_link(&ctx, parameters).await?,
                    "$mpi-merge" => engine.mpi_merge(&ctx, parameters).await?,
                    "$mpi-relink" => engine.mpi_relink(&ctx, parameters).await?,
                    _ => engine.mpi_unmerge(&ctx, parameters).await?,
                };
                Ok(json_response(StatusCode::OK, result.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "POST")),
        },
        [t, "_history"] => match method {
            Method::GET => Ok(json_response(
                StatusCode::OK,
                engine.history(&ctx, Some(t), None, &params, &opts).await?.to_string(),
            )),
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        [t, "$validate"] | [t, _, "$validate"] => match method {
            Method::POST => {
                let body = json_body(&headers, &body_bytes, false)?;
                Ok(json_response(StatusCode::OK, engine.validate(&ctx, Some(t), body).await?.to_string()))
            }
            _ => Err(method_not_allowed(&method, &path, "POST")),
        },
        [t, id] => match method {
            Method::GET => {
                let resource = engine.read(&ctx, t, id).await?;
                if let Some(v) = header_str(&headers, "if-none-match").and_then(parse_etag)
                    && v == resource.version
                {
                    return Ok(StatusCode::NOT_MODIFIED.into_response());
                }
                Ok(resource_response(StatusCode::OK, &resource, &base, false, ReturnPreference::Representation))
            }
            Method::PUT => {
                let body = json_body(&headers, &body_bytes, false)?;
                let outcome = engine.update(&ctx, t, id, body, &opts).await?;
                Ok(write_response(outcome, &base, return_preference))
            }
            Method::PATCH => {
                let patch = json_body(&headers, &body_bytes, true)?;
                let outcome = engine.patch(&ctx, t, id, patch, &opts).await?;
                Ok(write_response(outcome, &base, return_preference))
            }
            Method::DELETE => {
                engine.delete(&ctx, t, id, &opts).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            _ => Err(method_not_allowed(&method, &path, "GET, PUT, PATCH, DELETE")),
        },
        ["Patient", id, "$everything"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, engine.everything_json(&ctx, id, &params, &opts).await?)),
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        ["Practitioner", id, "$eligibility"] => match method {
            Method::GET => Ok(json_response(
                StatusCode::OK,
                engine.practitioner_eligibility(&ctx, id, &params, &opts).await?.to_string(),
            )),
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        [t, id, "_history"] => match method {
            Method::GET => Ok(json_response(
                StatusCode::OK,
                engine.history(&ctx, Some(t), Some(id), &params, &opts).await?.to_string(),
            )),
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        [t, id, "_history", version] => match method {
            Method::GET => {
                let resource = engine.vread(&ctx, t, id, version).await?;
                Ok(resource_response(StatusCode::OK, &resource, &base, false, ReturnPreference::Representation))
            }
            _ => Err(method_not_allowed(&method, &path, "GET")),
        },
        _ => Err(ApiError::http(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("{path} is not a FHIR endpoint of this server"),
        )),
    }
}

#[expect(clippy::too_many_arguments, reason = "one call site per export scope, all HTTP context")]
async fn export_kickoff(
    engine: &Engine,
    ctx: &Ctx,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    scope: ExportScope,
    params: &[(String, String)],
    opts: &RequestOptions,
) -> ApiResult {
    if *method != Method::GET && *method != Method::POST {
        return Err(method_not_allowed(method, path, "GET, POST"));
    }
    let respond_async =
        headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("respond-async"));
    if !respond_async {
        return Err(ApiError::http(
            StatusCode::BAD_REQUEST,
            IssueType::Invalid,
            "$export runs asynchronously: send the header Prefer: respond-async",
        ));
    }
    let job = engine.export_start(ctx, scope, params, opts).await?;
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/$export-status/{job}", opts.base_url)) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

async fn export_status(engine: &Engine, ctx: &Ctx, job: &str) -> ApiResult {
    match engine.export_status(ctx, job).await? {
        ExportStatus::InProgress { progress } => {
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                response.headers_mut().insert("x-progress", v);
            }
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(response)
        }
        ExportStatus::Complete { manifest } => {
            let mut response = (StatusCode::OK, manifest.to_string()).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
        ExportStatus::Failed { issues } => Ok(error::outcome_response(StatusCode::INTERNAL_SERVER_ERROR, &issues)),
    }
}

/// Streams a file in chunks.
fn tokio_util_stream(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

fn percent_decode(segment: &str) -> String {
    form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| segment.to_string())
}
