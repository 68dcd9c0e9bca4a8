//! The one mapping from every error to an HTTP status and a FHIR OperationOutcome.
//!
//! Engine errors take their status from [`engine::EngineError::http_status`] (its doc comment
//! is the table). HTTP-level problems found here:
//!
//! | problem | status |
//! |---|---|
//! | malformed JSON body | 400 |
//! | unparsable `If-Match` | 400 |
//! | unknown path | 404 |
//! | method not allowed on the path | 405 |
//! | `Accept` / `_format` asks for XML or another format | 406 |
//! | body larger than the limit | 413 |
//! | unsupported `Content-Type` | 415 |
//!
//! 5xx bodies never carry internals: the detail is logged once with an error id, and the
//! caller gets the same id in the diagnostics.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::EngineError;
use fhir::{Issue, IssueType};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug)]
pub enum ApiError {
    Engine(EngineError),
    Http { status: StatusCode, code: IssueType, message: String },
}

impl ApiError {
    pub fn http(status: StatusCode, code: IssueType, message: impl Into<String>) -> Self {
        ApiError::Http { status, code, message: message.into() }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::Engine(e)
    }
}

/// An OperationOutcome response.
pub fn outcome_response(status: StatusCode, issues: &[Issue]) -> Response {
    let body = fhir::outcome::operation_outcome(issues).to_string();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Http { status, code, message } => outcome_response(status, &[Issue::error(code, message)]),
            ApiError::Engine(error) => {
                let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut issues = error.issues();
                if status.is_server_error() {
                    let error_id = uuid::Uuid::new_v4();
                    tracing::error!(%error_id, error = %error, detail = ?error, "request failed");
                    for issue in &mut issues {
                        issue.diagnostics = format!("{} (error id {error_id})", issue.diagnostics);
                    }
                }
                outcome_response(status, &issues)
            }
        }
    }
}
