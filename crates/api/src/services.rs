//! Resident and management services outside FHIR (JSON, bearer tokens like `/fhir`; errors are
//! OperationOutcomes):
//!
//! - `GET /guidance?symptoms=…&age=…&sex=male|female` → smart guidance (engine/src/guidance.rs)
//! - `GET /kpi/booking-rate?from=YYYY-MM-DD&to=YYYY-MM-DD` → the booking-rate KPI (engine/src/kpi.rs)
//! - `POST /cda` (a CDA R2 / WS/T 500 document, `application/hl7-cda+xml`) → the
//!   transaction-response Bundle of what was stored (engine/src/documents.rs)
//! - `GET /quality/scorecard?organization=…&from=…&to=…`, `GET /quality/quarantine?organization=…`,
//!   `POST /quality/quarantine/{id}/reprocess` (no body: retry what is held; a corrected resource;
//!   `{"message": "MSH|…"}` for a held HL7 v2 message), `DELETE /quality/quarantine/{id}` → data
//!   quality (engine/src/quality.rs)
//! - `GET /supervision/feed?after=SEQ&_count=N` → the internet hospital's supervision feed
//!   (engine/src/supervision.rs)

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir::IssueType;

use crate::AppState;
use crate::error::ApiError;
use crate::security::authenticate;

fn json_answer(result: Result<serde_json::Value, engine::EngineError>) -> Response {
    match result {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A 400 naming the first parameter `endpoint` does not take, if any.
fn unknown_parameter(query: &HashMap<String, String>, endpoint: &str, known: &[&str]) -> Option<Response> {
    let unknown = query.keys().find(|k| !known.contains(&k.as_str()))?;
    Some(bad(format!("{endpoint} has no parameter '{unknown}' ({})", known.join(", "))))
}

fn bad(message: String) -> Response {
    ApiError::http(StatusCode::BAD_REQUEST, IssueType::Value, message).into_response()
}

pub async fn guidance(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    if let Some(r) = unknown_parameter(&query, "/guidance", &["symptoms", "age", "sex"]) {
        return r;
    }
    let age = match query.get("age").map(|a| a.parse::<u32>()) {
        None => None,
        Some(Ok(a)) if a <= 130 => Some(a),
        Some(_) => return bad("age must be whole years between 0 and 130".into()),
    };
    let symptoms = query.get("symptoms").map(String::as_str).unwrap_or("");
    json_answer(state.engine.guidance(&ctx, symptoms, age, query.get("sex").map(String::as_str)).await)
}

pub async fn booking_rate(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    if let Some(r) = unknown_parameter(&query, "/kpi/booking-rate", &["from", "to"]) {
        return r;
    }
    let (Some(from), Some(to)) = (query.get("from"), query.get("to")) else {
        return bad("/kpi/booking-rate needs from=YYYY-MM-DD and to=YYYY-MM-DD".into());
    };
    json_answer(state.engine.booking_rate(&ctx, from, to).await)
}

pub async fn supervision_feed(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    if let Some(r) = unknown_parameter(&query, "/supervision/feed", &["after", "_count"]) {
        return r;
    }
    let after = match query.get("after").map(|a| a.parse::<i64>()) {
        None => 0,
        Some(Ok(a)) if a >= 0 => a,
        Some(_) => return bad("after must be an outbox position (a whole number ≥ 0)".into()),
    };
    let count = match query.get("_count").map(|c| c.parse::<usize>()) {
        None => 100,
        Some(Ok(c)) => c,
        Some(Err(_)) => return bad("_count must be a whole number".into()),
    };
    json_answer(state.engine.supervision_feed(&ctx, after, count).await)
}

pub async fn cda(State(state): State<AppState>, request: Request) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !["application/hl7-cda+xml", "application/xml", "text/xml"].contains(&media.as_str()) {
        return ApiError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            format!("POST /cda takes application/hl7-cda+xml (or application/xml), not '{content_type}'"),
        )
        .into_response();
    }
    let opts = engine::RequestOptions { base_url: crate::base_url(&state, request.headers()), ..Default::default() };
    let bytes = match axum::body::to_bytes(request.into_body(), cda::MAX_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                IssueType::TooLong,
                format!("a CDA document is at most {} bytes", cda::MAX_BYTES),
            )
            .into_response();
        }
    };
    json_answer(state.engine.ingest_cda(&ctx, &bytes, &opts).await)
}

pub async fn quality_scorecard(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    let (Some(org), Some(from), Some(to)) = (query.get("organization"), query.get("from"), query.get("to")) else {
        return bad("/quality/scorecard needs organization, from=YYYY-MM-DD and to=YYYY-MM-DD".into());
    };
    json_answer(state.engine.quality_scorecard(&ctx, org.trim_start_matches("Organization/"), from, to).await)
}

pub async fn quality_quarantine(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    let Some(org) = query.get("organization") else {
        return bad("/quality/quarantine needs organization".into());
    };
    json_answer(state.engine.quality_quarantine(&ctx, org.trim_start_matches("Organization/")).await)
}

pub async fn quality_held(
    State(state): State<AppState>,
    axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    if action != "reprocess" {
        return ApiError::http(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("/quality/quarantine/{{id}}/{action} is not an endpoint (reprocess)"),
        )
        .into_response();
    }
    let opts = engine::RequestOptions { base_url: crate::base_url(&state, request.headers()), ..Default::default() };
    let bytes = match axum::body::to_bytes(request.into_body(), 4 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::http(StatusCode::PAYLOAD_TOO_LARGE, IssueType::TooLong, "the body exceeds 4 MiB")
                .into_response();
        }
    };
    let corrected = if bytes.is_empty() {
        None
    } else {
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if v.is_object() => Some(v),
            _ => {
                return bad(
                    "the body must be JSON: the corrected resource, or {\"message\": \"MSH|…\"} for a held HL7 \
                            v2 message; or empty to retry what is held"
                        .into(),
                );
            }
        }
    };
    json_answer(state.engine.quality_reprocess(&ctx, &id, corrected, &opts).await)
}

pub async fn quality_discard(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    match state.engine.quality_discard(&ctx, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
