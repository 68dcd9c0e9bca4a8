//! Search-index extraction: evaluates each applicable SearchParameter's expression over a
//! resource and turns the selected values into typed, normalised [`IndexEntry`] rows that a
//! store can persist and query. Also computes a resource's Patient-compartment membership.

/// One indexed value of one search parameter of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter's code, e.g. `code`, `subject`, `birthdate`.
    pub param: String,
    pub value: IndexValue,
}

/// A typed, normalised search-index value.
///
/// Dates are stored as inclusive ranges of epoch milliseconds (UTC; a value without a time
/// zone is taken as UTC), so `2020` is `[2020-01-01T00:00:00.000, 2020-12-31T23:59:59.999]`.
/// Numbers and quantities carry the range implied by their precision (`1.5` is `[1.45, 1.55)`),
/// stored as `low`/`high`, plus the value itself.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    String {
        /// Lower-cased, accents removed, whitespace collapsed: what plain and `:contains`
        /// searches compare against.
        normalized: String,
        /// The value as written: what `:exact` compares against.
        exact: String,
    },
    Token {
        system: Option<String>,
        code: Option<String>,
        /// Display text (Coding.display, CodeableConcept.text, Identifier.type.text) for `:text`.
        text: Option<String>,
    },
    Reference {
        /// For relative and absolute RESTful references: the target type and id.
        target_type: Option<String>,
        target_id: Option<String>,
        version: Option<String>,
        /// The reference string as written (absolute URLs, canonicals, `#contained`).
        url: Option<String>,
        /// `Reference.identifier`, for the `:identifier` modifier.
        identifier_system: Option<String>,
        identifier_value: Option<String>,
    },
    Date {
        low: i64,
        high: i64,
    },
    Number {
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri {
        uri: String,
    },
    /// A composite parameter's value: one component value per component, in definition order.
    Composite {
        components: Vec<IndexValue>,
    },
}

use serde_json::Value;

use crate::definitions::Definitions;

/// Every index entry of `resource` for every official search parameter of its type
/// (the `Resource`-level `_id`/`_lastUpdated` are columns, not entries; `_tag`, `_profile`,
/// `_security`, `_source` are entries).
pub fn extract(defs: &Definitions, resource: &Value) -> Vec<IndexEntry> {
    let _ = (defs, resource);
    Vec::new()
}

/// Ids of the Patients in whose compartment `resource` is (per CompartmentDefinition-patient:
/// the Patient references found through the compartment's parameters; a Patient's own id).
/// Sorted, without duplicates; the first one is the resource's partitioning key.
pub fn patient_compartments(defs: &Definitions, resource: &Value) -> Vec<String> {
    let _ = (defs, resource);
    Vec::new()
}
