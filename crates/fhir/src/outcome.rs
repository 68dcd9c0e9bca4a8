//! Issues reported to callers, rendered as a FHIR OperationOutcome.

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl IssueSeverity {
    pub fn code(self) -> &'static str {
        match self {
            IssueSeverity::Fatal => "fatal",
            IssueSeverity::Error => "error",
            IssueSeverity::Warning => "warning",
            IssueSeverity::Information => "information",
        }
    }
}

/// The subset of the FHIR `issue-type` value set that this server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    NotSupported,
    NotFound,
    Deleted,
    Conflict,
    Duplicate,
    Multiple,
    TooLong,
    TooCostly,
    Processing,
    /// A business rule (e.g. a prescription rule) forbids the action.
    BusinessRule,
    Exception,
    Security,
    Forbidden,
    Informational,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::NotSupported => "not-supported",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::Conflict => "conflict",
            IssueType::Duplicate => "duplicate",
            IssueType::Multiple => "multiple-matches",
            IssueType::TooLong => "too-long",
            IssueType::TooCostly => "too-costly",
            IssueType::Processing => "processing",
            IssueType::BusinessRule => "business-rule",
            IssueType::Exception => "exception",
            IssueType::Security => "security",
            IssueType::Forbidden => "forbidden",
            IssueType::Informational => "informational",
        }
    }
}

/// One problem found, with the FHIRPath-like location of the element at fault when known
/// (for example `Patient.birthDate` or `Bundle.entry[2].resource`).
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: IssueSeverity,
    pub code: IssueType,
    pub diagnostics: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Issue { severity: IssueSeverity::Error, code, diagnostics: diagnostics.into(), expression: None }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.code(),
            "code": self.code.code(),
            "diagnostics": self.diagnostics,
        });
        if let Some(expr) = &self.expression {
            issue["expression"] = json!([expr]);
        }
        issue
    }
}

/// Renders issues as an OperationOutcome resource.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}
