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
    /// The caller may not do this (policy decision, with its reason): 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404.
    #[error("{0} is not known")]
    NotFound(String),
    /// 404 whose message says in full what is missing and what to do (e.g. an unknown code
    /// system named by a terminology operation).
    #[error("{0}")]
    NotFoundExplained(String),
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

impl EngineError {
    /// The HTTP status of this error. This is the one table of error statuses: the `api` crate
    /// answers with it, and batch/transaction responses report it per entry
    /// (`Bundle.entry.response.status`).
    ///
    /// | variant | status |
    /// |---|---|
    /// | BadRequest | 400 |
    /// | Unprocessable | 422 |
    /// | Forbidden | 403 |
    /// | NotFound, NotFoundExplained | 404 |
    /// | Gone | 410 |
    /// | Conflict (race) | 409 |
    /// | Conflict (If-Match failed) | 412 |
    /// | MultipleMatches | 412 |
    /// | NotSupported | 501 |
    /// | TooCostly | 400 (`too-costly`) |
    /// | Store: VersionConflict | 409 |
    /// | Store: Unavailable | 503 |
    /// | Store: other | 500 |
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::BadRequest(_) | EngineError::TooCostly(_) => 400,
            EngineError::Unprocessable(_) => 422,
            EngineError::Forbidden(_) => 403,
            EngineError::NotFound(_) | EngineError::NotFoundExplained(_) => 404,
            EngineError::Gone(_) => 410,
            EngineError::Conflict { precondition: true, .. } | EngineError::MultipleMatches(_) => 412,
            EngineError::Conflict { precondition: false, .. } => 409,
            EngineError::NotSupported(_) => 501,
            EngineError::Store(StoreError::VersionConflict { .. }) => 409,
            EngineError::Store(StoreError::Unavailable(_)) => 503,
            EngineError::Store(_) => 500,
        }
    }

    /// The issues to report. Internal failures get a generic message; the caller logs the
    /// detail with the error id it also returns.
    pub fn issues(&self) -> Vec<Issue> {
        use fhir::IssueType as T;
        match self {
            EngineError::BadRequest(issues) | EngineError::Unprocessable(issues) => issues.clone(),
            EngineError::Forbidden(why) => vec![Issue::error(T::Forbidden, why.clone())],
            EngineError::NotFound(what) => vec![Issue::error(T::NotFound, format!("{what} is not known"))],
            EngineError::NotFoundExplained(message) => vec![Issue::error(T::NotFound, message.clone())],
            EngineError::Gone(what) => vec![Issue::error(T::Deleted, format!("{what} has been deleted"))],
            EngineError::Conflict { message, .. } => vec![Issue::error(T::Conflict, message.clone())],
            EngineError::MultipleMatches(message) => vec![Issue::error(T::Multiple, message.clone())],
            EngineError::NotSupported(what) => vec![Issue::error(T::NotSupported, format!("{what} is not supported"))],
            EngineError::TooCostly(message) => vec![Issue::error(T::TooCostly, message.clone())],
            EngineError::Store(StoreError::VersionConflict { resource_type, id, .. }) => vec![Issue::error(
                T::Conflict,
                format!("{resource_type}/{id} was changed by another request at the same time; retry"),
            )],
            EngineError::Store(StoreError::Unavailable(_)) => {
                vec![Issue::error(T::Exception, "the database is unavailable; try again shortly")]
            }
            EngineError::Store(_) => vec![Issue::error(T::Exception, "internal storage error")],
        }
    }

    /// A failed version precondition (`If-Match`, or `ifMatch` in a Bundle entry): 412.
    pub fn precondition_failed(expected: i64, resource_type: &str, id: &str, actual: i64) -> Self {
        EngineError::Conflict {
            message: format!("If-Match W/\"{expected}\" does not hold: {resource_type}/{id} is at version {actual}"),
            precondition: true,
        }
    }

    /// Shorthand for a 400 with one issue.
    pub fn bad_request(code: fhir::IssueType, message: impl Into<String>) -> Self {
        EngineError::BadRequest(vec![Issue::error(code, message)])
    }
}
