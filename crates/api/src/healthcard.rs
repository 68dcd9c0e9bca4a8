//! The electronic health card API under `/healthcard` (JSON, bearer tokens like `/fhir`);
//! the rules and the audit trail are `engine/src/healthcard.rs`, the payloads the `healthcard`
//! crate's. Errors are OperationOutcomes through `ApiError`. Endpoints (docs/HEALTHCARD.md):
//!
//! - `POST /healthcard/register` `{"patient": id}` → 201 card (resident, real-name verified)
//! - `GET /healthcard/{card}`, `GET /healthcard?patient={id}` → card (holder, guardian, operator)
//! - `POST /healthcard/{card}/code` `{"insuranceToken"?, "paymentToken"?}` → dynamic code
//!   (JSON; `Accept: image/svg+xml` gives the QR code as SVG)
//! - `POST /healthcard/verify` `{"code", "careStep", "terminal"}` → claims (system, clinical staff)
//! - `POST /healthcard/{card}/use` `{"careStep", "terminal"}` → use event after a static-code check
//! - `POST /healthcard/{card}/suspend|resume|close` `{"reason"}` → card (operators)
//! - `GET /healthcard/keys` → the platform's SM2 public keys by key id, for offline verifiers

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::{CardStatus, HealthCard, IssuedCode};
use fhir::IssueType;
use serde_json::{Value, json};
use std::collections::HashMap;
use store::Ctx;

use crate::AppState;
use crate::error::ApiError;
use crate::security::authenticate;

/// Largest accepted request body (a code is a few hundred characters).
const MAX_BODY: usize = 16 * 1024;

/// Authenticates the request and reads its JSON object body (`{}` when empty).
async fn begin(state: &AppState, request: Request) -> Result<(Ctx, Value), Response> {
    let ctx = authenticate(state, &request).await?;
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY).await.map_err(|_| {
        ApiError::http(StatusCode::PAYLOAD_TOO_LARGE, IssueType::TooLong, "the body exceeds 16 KiB").into_response()
    })?;
    if bytes.is_empty() {
        return Ok((ctx, json!({})));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(body) if body.is_object() => Ok((ctx, body)),
        _ => Err(ApiError::http(StatusCode::BAD_REQUEST, IssueType::Structure, "the body must be a JSON object")
            .into_response()),
    }
}

/// A required string member of the body.
fn text<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body[name].as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::http(StatusCode::BAD_REQUEST, IssueType::Required, format!("the body needs a string \"{name}\""))
    })
}

fn card_json(card: &HealthCard) -> Value {
    serde_json::to_value(card).expect("a card serialises")
}

fn answer(result: Result<Value, engine::EngineError>, status: StatusCode) -> Response {
    match result {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn register(State(state): State<AppState>, request: Request) -> Response {
    let (ctx, body) = match begin(&state, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let patient = match text(&body, "patient") {
        Ok(p) => p.trim_start_matches("Patient/").to_string(),
        Err(e) => return e.into_response(),
    };
    let subject = ctx.principal.as_deref().map(|p| p.subject.clone()).unwrap_or_default();
    let verified = match state.auth.verified_id_number(&subject).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "reading the account for a health card registration");
            return ApiError::http(StatusCode::SERVICE_UNAVAILABLE, IssueType::Exception, "accounts are unavailable")
                .into_response();
        }
    };
    let keys = state.auth.keys();
    let result = state.engine.healthcard_register(&ctx, &keys, &patient, verified.as_deref()).await;
    answer(result.map(|c| card_json(&c)), StatusCode::CREATED)
}

pub async fn query(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let (ctx, _) = match begin(&state, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(patient) = query.get("patient") else {
        return ApiError::http(StatusCode::BAD_REQUEST, IssueType::Required, "give ?patient=<Patient id>")
            .into_response();
    };
    let patient = patient.trim_start_matches("Patient/");
    answer(state.engine.healthcard_for_patient(&ctx, patient).await.map(|c| card_json(&c)), StatusCode::OK)
}

pub async fn read(State(state): State<AppState>, Path(card): Path<String>, request: Request) -> Response {
    let (ctx, _) = match begin(&state, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    answer(state.engine.healthcard_read(&ctx, &card).await.map(|c| card_json(&c)), StatusCode::OK)
}

fn code_json(code: &IssuedCode) -> Value {
    let c = &code.claims;
    json!({"code": code.payload, "cardId": c.card_id.as_str(), "codeId": c.code_id, "issuedAt": c.issued_at,
           "expiresAt": c.expires_at, "keyId": c.key_id, "insuranceToken": c.insurance_token,
           "paymentToken": c.payment_token})
}

pub async fn code(State(state): State<AppState>, Path(card): Path<String>, request: Request) -> Response {
    let wants_svg = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("image/svg+xml"));
    let (ctx, body) = match begin(&state, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let token = |name: &str| body[name].as_str().map(str::to_string);
    let keys = state.auth.keys();
    let issued = state.engine.healthcard_code(&ctx, &keys, &card, token("insuranceToken"), token("paymentToken")).await;
    match issued {
        Ok(code) if wants_svg => match healthcard::qr::svg(&code.payload, 256) {
            Ok(svg) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-store")],
                Body::from(svg),
            )
                .into_response(),
            Err(e) => {
                ApiError::http(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, e.to_string()).into_response()
            }
        },
        other => answer(other.map(|c| code_json(&c)), StatusCode::OK),
    }
}

pub async fn verify(State(state): State<AppState>, request: Request) -> Response {
    let (ctx, body) = match begin(&state, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (code, step, terminal) = match (text(&body, "code"), text(&body, "careStep"), text(&body, "terminal")) {
        (Ok(c), Ok(s), Ok(t)) => (c, s, t),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
    };
    let keys = state.auth.keys();
    let result = state.engine.healthcard_verify(&ctx, &keys, code, step, terminal).await;
    answer(
        result.map(|v| {
            let c = &v.claims;
            json!({"accepted": true, "cardId": c.card_id.as_str(), "patient": format!("Patient/{}", v.card.patient),
                   "issuer": c.issuer, "codeId": c.code_id, "expiresAt": c.expires_at, "keyId": c.key_id,
                   "insuranceToken": c.insurance_token, "paymentToken": c.payment_token,
                   "careStep": v.care_step, "terminal": v.terminal})
        }),
        StatusCode::OK,
    )
}

pub async fn report_use(State(state): State<AppState>, Path(card): Path<String>, request: Request) -> Response {
    let (ctx, body) = match begin(&state, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (step, terminal) = match (text(&body, "careStep"), text(&body, "terminal")) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let result = state.engine.healthcard_report_use(&ctx, &card, step, terminal).await;
    answer(result.map(|c| card_json(&c)), StatusCode::OK)
}

pub async fn set_status(
    State(state): State<AppState>,
    Path((card, action)): Path<(String, String)>,
    request: Request,
) -> Response {
    let status = match action.as_str() {
        "suspend" => CardStatus::Suspended,
        "resume" => CardStatus::Active,
        "close" => CardStatus::Closed,
        _ => {
            return ApiError::http(
                StatusCode::NOT_FOUND,
                IssueType::NotFound,
                "card actions are code, use, suspend, resume and close",
            )
            .into_response();
        }
    };
    let (ctx, body) = match begin(&state, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reason = body["reason"].as_str().unwrap_or("not given");
    answer(state.engine.healthcard_set_status(&ctx, &card, status, reason).await.map(|c| card_json(&c)), StatusCode::OK)
}

/// The public keys an offline verifier needs: the current signing key and the retired ones
/// (codes signed before a rotation stay verifiable within their lifetime).
pub async fn keys(State(state): State<AppState>, request: Request) -> Response {
    if let Err(r) = begin(&state, request).await {
        return r;
    }
    let keys = state.auth.keys();
    let mut ids = vec![keys.signing_key_id()];
    ids.extend(keys.retired_signing_key_ids().into_iter().map(str::to_string));
    let listed: Vec<Value> = ids
        .iter()
        .filter_map(|id| keys.verifying_key_for(id).map(|k| json!({"keyId": id, "sm2PublicKey": k.to_hex()})))
        .collect();
    answer(Ok(json!({"current": keys.signing_key_id(), "keys": listed})), StatusCode::OK)
}
