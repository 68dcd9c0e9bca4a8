//! The engine's one error type. The `api` crate maps each variant to an HTTP status and an
//! OperationOutcome (see `api::error`).

use fhir::Issue;
use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request itself is malformed (bad JSON shape, bad search parameter, bad Bundle): 400.
    #[error("invalid request")]
    BadRequest(Vec<Issue>),
    /// The resource failed validation against the R4 definitions: 422.
    #[error("resource failed validation")]
    Unprocessable(Vec<Issue>),
    /// 404.
    #[error("{0} is not known")]
    NotFound(String),
    /// Deleted resource: 410.
    #[error("{0} has been deleted")]
    Gone(String),
    /// A write raced another or an `If-Match` did not hold: 409 (race) / 412 (If-Match).
    #[error("version conflict: {message}")]
    Conflict { message: String, precondition: bool },
    /// A conditional operation matched more than one resource: 412.
    #[error("{0}")]
    MultipleMatches(String),
    /// An interaction, parameter or operation this server does not implement: 501 for an
    /// interaction, 400 for a parameter (the message says which).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The request would cost too much (e.g. `_count` or a Bundle over the limits): 400 too-costly.
    #[error("too costly: {0}")]
    TooCostly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type EngineResult<T> = Result<T, EngineError>;
