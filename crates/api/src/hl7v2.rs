//! HL7 v2 over HTTP: `POST /hl7v2` takes one ER7 message as the body (`Content-Type:
//! application/hl7-v2` or `x-application/hl7-v2+er7`; a `charset` parameter applies when MSH-18
//! is empty) and answers its ACK in the body, in the message's character set: 200 with AA, 400
//! with AR (or a message that could not be read), 422 with AE for content, 403/404/409/412/5xx by
//! the engine's reason. The caller is a system client with a bearer token, authenticated like
//! every FHIR request, and writes as itself (its scopes, its audit trail). The processing is
//! the MLLP listener's, plugged in by the binary as an [`Hl7Receiver`]; `docs/HL7V2.md`.

use std::future::Future;
use std::pin::Pin;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir::IssueType;
use store::Ctx;

use crate::AppState;
use crate::error::ApiError;
use crate::security::authenticate;

/// The media types accepted for a v2 message.
pub const MEDIA_TYPES: [&str; 2] = ["application/hl7-v2", "x-application/hl7-v2+er7"];

/// The answer to one message.
pub struct Hl7Reply {
    pub status: u16,
    /// The ACK's character set (`utf-8`, `gb18030`, `iso-8859-1`).
    pub charset: &'static str,
    pub body: Vec<u8>,
}

/// Processes one v2 message as the caller in `ctx`; `charset` is the Content-Type's.
pub trait Hl7Receiver: Send + Sync {
    fn receive<'a>(
        &'a self,
        ctx: Ctx,
        body: Vec<u8>,
        charset: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Hl7Reply> + Send + 'a>>;
}

pub async fn post(State(state): State<AppState>, request: Request) -> Response {
    let Some(receiver) = state.config.hl7.clone() else {
        return ApiError::http(StatusCode::NOT_FOUND, IssueType::NotFound, "HL7 v2 over HTTP is not enabled here")
            .into_response();
    };
    let ctx = match authenticate(&state, &request).await {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    if let Some(p) = ctx.principal.as_deref().filter(|p| p.role != access::Role::System) {
        // A refusal is audited durably before it is answered, like the policy's denials.
        let record = store::AuditRecord {
            recorded: chrono::Utc::now().timestamp_millis(),
            action: "hl7v2".into(),
            outcome: "denied".into(),
            actor: p.subject.clone(),
            role: p.role.code().to_string(),
            organization: p.organization.as_deref().map(|o| format!("Organization/{o}")).unwrap_or_default(),
            purpose: p.purpose.clone(),
            entity: "hl7v2".into(),
            patients: Vec::new(),
            detail: serde_json::json!({"request": ctx.request_id, "source": ctx.source,
                "reason": "POST /hl7v2 is for system clients"})
            .to_string(),
        };
        if let Err(e) = state.engine.audit_event(record).await {
            tracing::error!(error = %e, "a refused HL7 v2 request could not be audited");
        }
        return ApiError::http(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "POST /hl7v2 is for system clients (hospital interface engines); use the FHIR API",
        )
        .into_response();
    }
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !MEDIA_TYPES.contains(&media.as_str()) {
        return ApiError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            format!("Content-Type '{content_type}' is not an HL7 v2 message: send application/hl7-v2 (ER7)"),
        )
        .into_response();
    }
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("charset").then(|| v.trim().trim_matches('"').to_string())
    });
    let limit = state.config.max_body_bytes;
    let body = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            return ApiError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                IssueType::TooLong,
                format!("the message is larger than the limit of {limit} bytes"),
            )
            .into_response();
        }
    };
    let reply = receiver.receive(ctx, body, charset).await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = format!("application/hl7-v2; charset={}", reply.charset);
    (status, [(header::CONTENT_TYPE, content_type)], reply.body).into_response()
}
