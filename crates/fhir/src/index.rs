//! Search-index extraction: evaluates each applicable SearchParameter's expression over a
//! resource and turns the selected values into typed, normalised [`IndexEntry`] rows that a
//! store can persist and query. Also computes a resource's Patient-compartment membership.
//!
//! Some official parameters select exactly what other parameters of the same type select, and
//! a store keeps no rows of their own for them ([`extract_stored`], [`stored_as`]):
//! - a *typed subset*: `Observation.patient` is `Observation.subject.where(resolve() is
//!   Patient)`, so its rows are the `subject` rows whose target type is Patient;
//! - a *union*: `Observation.combo-code` is `Observation.code | Observation.component.code`, so
//!   its rows are the `code` rows and the `component-code` rows together (also for the
//!   quantity, concept and composite `combo-` parameters).
//!
//! Both are found by comparing the compiled expressions, so nothing is listed by hand. A plain
//! Observation then has 7 index rows instead of 11 (every clinical resource saves its
//! `patient` rows), which is most of what a write costs. [`extract`] still yields every
//! parameter's entries, for the in-memory uses (`_include`, subscriptions).

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

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::definitions::{Definitions, ParamType, SearchParamDef};
use crate::fhirpath::{self, Condition, Expression, Node, Path, Step};
use crate::normalize::{date_range, decimal_range, normalize_string};

/// Parameters stored as columns or answered without index rows.
const NOT_INDEXED: &[&str] = &["_id", "_lastUpdated", "_text", "_content", "_list", "_has", "_query", "_filter"];

/// A parameter compiled for one resource type.
struct CompiledParam {
    code: String,
    kind: ParamType,
    paths: Vec<Path>,
    /// For composites: each component's type and relative path.
    components: Vec<(ParamType, Expression)>,
    /// Answered from other parameters' rows (see the module doc); `None` for a parameter with
    /// rows of its own.
    stored_as: Option<StoredAs>,
}

/// Where the rows of a parameter without rows of its own are (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAs {
    /// The parameters (of the same resource type and kind) whose rows together are this one's.
    pub params: Vec<String>,
    /// Only the rows whose reference's target type is this (typed subsets).
    pub target_type: Option<String>,
}

type Compiled = HashMap<String, Vec<CompiledParam>>;

/// (resource type, code, reason) of the official parameters that are not indexed.
type Unsupported = Vec<(String, String, String)>;

static COMPILED: OnceLock<(Compiled, Unsupported)> = OnceLock::new();

fn compiled(defs: &Definitions) -> &'static (Compiled, Unsupported) {
    COMPILED.get_or_init(|| compile_all(defs))
}

fn compile_all(defs: &Definitions) -> (Compiled, Unsupported) {
    let mut by_type: Compiled = HashMap::new();
    let mut unsupported = Vec::new();
    for resource_type in defs.resource_types() {
        let mut params = Vec::new();
        for p in defs.search_params_for(resource_type) {
            if NOT_INDEXED.contains(&p.code.as_str()) {
                continue;
            }
            match compile_param(defs, resource_type, p) {
                Ok(Some(c)) => params.push(c),
                Ok(None) => {}
                Err(reason) => unsupported.push((resource_type.clone(), p.code.clone(), reason)),
            }
        }
        find_stored_as(&mut params);
        by_type.insert(resource_type.clone(), params);
    }
    (by_type, unsupported)
}

/// Marks the parameters of one resource type whose rows other parameters already hold.
fn find_stored_as(params: &mut [CompiledParam]) {
    let mut found: Vec<(usize, StoredAs)> = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let others = || params.iter().enumerate().filter(move |(j, _)| *j != i).map(|(_, q)| q);
        // Typed subset: every path is another parameter's path plus `.where(resolve() is T)`.
        if p.kind == ParamType::Reference {
            let mut target: Option<&str> = None;
            let stripped: Option<Vec<Path>> = p
                .paths
                .iter()
                .map(|path| match path.steps.split_last() {
                    Some((Step::Where(Condition::ResolvesTo(t)), rest)) if target.is_none_or(|seen| seen == t) => {
                        target = Some(t);
                        Some(Path { root: path.root.clone(), steps: rest.to_vec() })
                    }
                    _ => None,
                })
                .collect();
            if let (Some(stripped), Some(t)) = (stripped, target)
                && let Some(q) = others().find(|q| q.kind == ParamType::Reference && q.paths == stripped)
            {
                found.push((i, StoredAs { params: vec![q.code.clone()], target_type: Some(t.to_string()) }));
                continue;
            }
        }
        // Union: the paths are exactly those of two or more other parameters of the same kind
        // (and, for composites, the same components), each path covered once.
        if p.paths.len() >= 2 {
            let parts: Vec<&CompiledParam> = others()
                .filter(|q| {
                    q.kind == p.kind
                        && q.components == p.components
                        && !q.paths.is_empty()
                        && q.paths.len() < p.paths.len()
                        && q.paths.iter().all(|path| p.paths.contains(path))
                })
                .collect();
            let covered: usize = parts.iter().map(|q| q.paths.len()).sum();
            let every_path_once =
                p.paths.iter().all(|path| parts.iter().filter(|q| q.paths.contains(path)).count() == 1);
            if parts.len() >= 2 && covered == p.paths.len() && every_path_once {
                let params = parts.iter().map(|q| q.code.clone()).collect();
                found.push((i, StoredAs { params, target_type: None }));
            }
        }
    }
    // A parameter stored as others must not be one that others are stored as (no chains).
    let aliased: Vec<String> = found.iter().map(|(i, _)| params[*i].code.clone()).collect();
    for (i, stored) in found {
        if stored.params.iter().all(|q| !aliased.contains(q)) {
            params[i].stored_as = Some(stored);
        }
    }
}

/// Where the rows of `resource_type`'s parameter `code` are kept, when it has none of its own.
pub fn stored_as(resource_type: &str, code: &str) -> Option<&'static StoredAs> {
    compiled(Definitions::r4()).0.get(resource_type)?.iter().find(|p| p.code == code).and_then(|p| p.stored_as.as_ref())
}

fn compile_param(defs: &Definitions, resource_type: &str, p: &SearchParamDef) -> Result<Option<CompiledParam>, String> {
    if p.kind == ParamType::Special {
        return Err("special search parameters are not supported".into());
    }
    let Some(expression) = &p.expression else {
        return Err("the official definition has no FHIRPath expression".into());
    };
    let compiled = fhirpath::compile(expression)?;
    let paths: Vec<Path> = compiled.paths_for(resource_type).cloned().collect();
    if paths.is_empty() {
        return Ok(None);
    }
    let mut components = Vec::new();
    if p.kind == ParamType::Composite {
        for c in &p.components {
            let Some(def) = defs.search_param_by_url(&c.definition) else {
                return Err(format!("component {} is not an official parameter", c.definition));
            };
            if matches!(def.kind, ParamType::Composite | ParamType::Special) {
                return Err("nested composite components are not supported".into());
            }
            components.push((def.kind, fhirpath::compile(&c.expression)?));
        }
        if components.len() != 2 {
            return Err(format!("composites of {} components are not supported (only 2)", components.len()));
        }
    }
    Ok(Some(CompiledParam { code: p.code.clone(), kind: p.kind, paths, components, stored_as: None }))
}

/// The official parameters this server does not index, as (resource type, code, reason).
pub fn unsupported_params() -> Vec<(String, String, String)> {
    compiled(Definitions::r4()).1.clone()
}

/// Every index entry of `resource` for every official search parameter of its type
/// (the `Resource`-level `_id`/`_lastUpdated` are columns, not entries; `_tag`, `_profile`,
/// `_security`, `_source` are entries).
pub fn extract(defs: &Definitions, resource: &Value) -> Vec<IndexEntry> {
    extract_where(defs, resource, false)
}

/// The entries a store keeps: [`extract`] without the parameters answered from other
/// parameters' rows ([`stored_as`]).
pub fn extract_stored(defs: &Definitions, resource: &Value) -> Vec<IndexEntry> {
    extract_where(defs, resource, true)
}

fn extract_where(defs: &Definitions, resource: &Value, stored_only: bool) -> Vec<IndexEntry> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let Some(params) = compiled(defs).0.get(resource_type) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    let mut nodes = Vec::new();
    for param in params.iter().filter(|p| !stored_only || p.stored_as.is_none()) {
        nodes.clear();
        for path in &param.paths {
            path.evaluate_into(resource, &mut nodes);
        }
        let before = entries.len();
        for node in &nodes {
            if param.kind == ParamType::Composite {
                composite_values(param, node, &mut |value| {
                    entries.push(IndexEntry { param: param.code.clone(), value })
                });
            } else {
                convert(param.kind, node, &mut |value| entries.push(IndexEntry { param: param.code.clone(), value }));
            }
        }
        dedup_tail(&mut entries, before);
    }
    entries
}

fn dedup_tail(entries: &mut Vec<IndexEntry>, from: usize) {
    let mut i = from;
    while i < entries.len() {
        if entries[from..i].contains(&entries[i]) {
            entries.remove(i);
        } else {
            i += 1;
        }
    }
}

fn composite_values(param: &CompiledParam, item: &Node<'_>, emit: &mut dyn FnMut(IndexValue)) {
    let mut per_component: Vec<Vec<IndexValue>> = Vec::with_capacity(param.components.len());
    for (kind, expression) in &param.components {
        let mut nodes = Vec::new();
        for path in &expression.paths {
            path.evaluate_into(item.value, &mut nodes);
        }
        let mut values = Vec::new();
        for n in &nodes {
            convert(*kind, n, &mut |v| values.push(v));
        }
        if values.is_empty() {
            return;
        }
        per_component.push(values);
    }
    if let [first, second] = per_component.as_slice() {
        for a in first {
            for b in second {
                emit(IndexValue::Composite { components: vec![a.clone(), b.clone()] });
            }
        }
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn owned(v: &Value, key: &str) -> Option<String> {
    str_field(v, key).map(str::to_string)
}

fn string_value(s: &str, emit: &mut dyn FnMut(IndexValue)) {
    if !s.is_empty() {
        emit(IndexValue::String { normalized: normalize_string(s), exact: s.to_string() });
    }
}

/// Turns one selected node into index values of the parameter's type.
fn convert(kind: ParamType, node: &Node<'_>, emit: &mut dyn FnMut(IndexValue)) {
    let v = node.value;
    match kind {
        ParamType::String => match v {
            Value::String(s) => string_value(s, emit),
            Value::Object(_) => {
                for key in ["family", "text", "city", "district", "state", "postalCode", "country"] {
                    if let Some(s) = str_field(v, key) {
                        string_value(s, emit);
                    }
                }
                for key in ["given", "prefix", "suffix", "line"] {
                    for s in v.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                        string_value(s, emit);
                    }
                }
            }
            _ => {}
        },
        ParamType::Token => token_values(v, emit),
        ParamType::Reference => match v {
            Value::String(s) => emit(reference_value(s, None)),
            Value::Object(_) => {
                let identifier = v.get("identifier");
                if let Some(reference) = str_field(v, "reference") {
                    let mut value = reference_value(reference, identifier);
                    if let IndexValue::Reference { target_type, .. } = &mut value
                        && target_type.is_none()
                    {
                        *target_type = owned(v, "type");
                    }
                    emit(value);
                } else if let Some(identifier) = identifier {
                    emit(IndexValue::Reference {
                        target_type: owned(v, "type"),
                        target_id: None,
                        version: None,
                        url: None,
                        identifier_system: owned(identifier, "system"),
                        identifier_value: owned(identifier, "value"),
                    });
                }
            }
            _ => {}
        },
        ParamType::Date => match v {
            Value::String(s) => {
                if let Some((low, high)) = date_range(s) {
                    emit(IndexValue::Date { low, high });
                }
            }
            Value::Object(_) if v.get("start").is_some() || v.get("end").is_some() => {
                let low = str_field(v, "start").and_then(date_range).map_or(i64::MIN, |r| r.0);
                let high = str_field(v, "end").and_then(date_range).map_or(i64::MAX, |r| r.1);
                emit(IndexValue::Date { low, high });
            }
            Value::Object(_) => {
                for s in v.get("event").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                    if let Some((low, high)) = date_range(s) {
                        emit(IndexValue::Date { low, high });
                    }
                }
            }
            _ => {}
        },
        ParamType::Number => {
            if let Value::Number(n) = v
                && let Some((value, low, high)) = decimal_range(&n.to_string())
            {
                emit(IndexValue::Number { value, low, high });
            }
        }
        ParamType::Quantity => {
            if let Some(Value::Number(n)) = v.get("value")
                && let Some((value, low, high)) = decimal_range(&n.to_string())
            {
                let code = owned(v, "code").or_else(|| owned(v, "currency"));
                emit(IndexValue::Quantity {
                    value,
                    low,
                    high,
                    system: owned(v, "system"),
                    code,
                    unit: owned(v, "unit"),
                });
            }
        }
        ParamType::Uri => {
            if let Value::String(s) = v {
                emit(IndexValue::Uri { uri: s.clone() });
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn token_values(v: &Value, emit: &mut dyn FnMut(IndexValue)) {
    match v {
        Value::String(s) => emit(IndexValue::Token { system: None, code: Some(s.clone()), text: None }),
        Value::Bool(b) => emit(IndexValue::Token { system: None, code: Some(b.to_string()), text: None }),
        Value::Object(_) => {
            if let Some(codings) = v.get("coding").and_then(Value::as_array) {
                let text = owned(v, "text");
                for coding in codings {
                    emit(IndexValue::Token {
                        system: owned(coding, "system"),
                        code: owned(coding, "code"),
                        text: owned(coding, "display").or_else(|| text.clone()),
                    });
                }
                if codings.is_empty()
                    && let Some(text) = text
                {
                    emit(IndexValue::Token { system: None, code: None, text: Some(text) });
                }
            } else if v.get("code").is_some() {
                emit(IndexValue::Token {
                    system: owned(v, "system"),
                    code: owned(v, "code"),
                    text: owned(v, "display"),
                });
            } else if v.get("value").is_some() {
                // Identifier or ContactPoint.
                let text = v.get("type").and_then(|t| owned(t, "text"));
                let system = owned(v, "system");
                let system =
                    if matches!(system.as_deref(), Some("phone" | "email" | "fax" | "sms" | "url" | "pager" | "other"))
                    {
                        None
                    } else {
                        system
                    };
                emit(IndexValue::Token { system, code: owned(v, "value"), text });
            } else if let Some(text) = owned(v, "text") {
                emit(IndexValue::Token { system: None, code: None, text: Some(text) });
            }
        }
        _ => {}
    }
}

/// Parses a reference string (`Patient/1`, `Patient/1/_history/2`, an absolute URL ending in
/// `Type/id`, `#contained`, `urn:uuid:...`, a canonical `url|version`).
pub fn reference_value(reference: &str, identifier: Option<&Value>) -> IndexValue {
    let (mut target_type, mut target_id, mut version, mut url) = (None, None, None, None);
    let (base, history) = match reference.split_once("/_history/") {
        Some((b, v)) => (b, Some(v.to_string())),
        None => (reference, None),
    };
    let mut parts = base.rsplitn(3, '/');
    let id = parts.next();
    let ty = parts.next();
    let rest = parts.next();
    match (ty, id) {
        (Some(ty), Some(id))
            if ty.starts_with(|c: char| c.is_ascii_uppercase())
                && ty.chars().all(|c| c.is_ascii_alphanumeric())
                && !id.is_empty() =>
        {
            target_type = Some(ty.to_string());
            target_id = Some(id.to_string());
            version = history;
            if rest.is_some() {
                url = Some(reference.to_string());
            }
        }
        _ => url = Some(reference.to_string()),
    }
    IndexValue::Reference {
        target_type,
        target_id,
        version,
        url,
        identifier_system: identifier.and_then(|i| owned(i, "system")),
        identifier_value: identifier.and_then(|i| owned(i, "value")),
    }
}

/// Ids of the Patients in whose compartment `resource` is (per CompartmentDefinition-patient:
/// the Patient references found through the compartment's parameters; a Patient's own id).
/// Sorted, without duplicates; the first one is the resource's partitioning key.
pub fn patient_compartments(defs: &Definitions, resource: &Value) -> Vec<String> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    if resource_type == "Patient" {
        if let Some(id) = str_field(resource, "id") {
            ids.push(id.to_string());
        }
        return ids;
    }
    let params = defs.patient_compartment_params(resource_type);
    if params.is_empty() {
        return ids;
    }
    let Some(compiled) = compiled(defs).0.get(resource_type) else { return ids };
    let mut nodes = Vec::new();
    for param in compiled.iter().filter(|c| c.kind == ParamType::Reference && params.contains(&c.code)) {
        nodes.clear();
        for path in &param.paths {
            path.evaluate_into(resource, &mut nodes);
        }
        for node in &nodes {
            if let Some(reference) = str_field(node.value, "reference")
                && let IndexValue::Reference { target_type: Some(t), target_id: Some(id), .. } =
                    reference_value(reference, None)
                && t == "Patient"
            {
                ids.push(id);
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod stored_as_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_subsets_and_unions_are_found_from_the_expressions() {
        let patient = stored_as("Observation", "patient").expect("Observation.patient is a typed subset");
        assert_eq!(
            (patient.params.as_slice(), patient.target_type.as_deref()),
            (&["subject".to_string()][..], Some("Patient"))
        );
        let combo = stored_as("Observation", "combo-code").expect("combo-code is a union");
        assert_eq!(combo.params, ["code", "component-code"]);
        assert_eq!(combo.target_type, None);
        let composite = stored_as("Observation", "combo-code-value-quantity").expect("a composite union");
        assert_eq!(composite.params, ["code-value-quantity", "component-code-value-quantity"]);
        assert_eq!(stored_as("Appointment", "practitioner").unwrap().params, ["actor"]);
        // Parameters with rows of their own, and one whose expression is not another's subset.
        for (t, p) in
            [("Observation", "subject"), ("Observation", "code"), ("Patient", "name"), ("Encounter", "subject")]
        {
            assert_eq!(stored_as(t, p), None, "{t}.{p}");
        }
    }

    #[test]
    fn stored_entries_hold_every_row_of_the_parameters_answered_from_them() {
        let defs = Definitions::r4();
        let observation = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1"},
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]});
        let all = extract(defs, &observation);
        let stored = extract_stored(defs, &observation);
        assert!(stored.len() < all.len(), "{} stored of {}", stored.len(), all.len());
        for entry in &all {
            match stored_as("Observation", &entry.param) {
                None => assert!(stored.contains(entry), "{entry:?} is stored"),
                Some(s) => {
                    assert!(!stored.iter().any(|e| e.param == entry.param), "{} has no rows", entry.param);
                    let found = stored.iter().any(|e| {
                        s.params.contains(&e.param)
                            && e.value == entry.value
                            && s.target_type.as_ref().is_none_or(
                                |t| matches!(&e.value, IndexValue::Reference { target_type: Some(x), .. } if x == t),
                            )
                    });
                    assert!(found, "{entry:?} is answered from {:?}", s.params);
                }
            }
        }
        // A subject that is a Group is no Patient row.
        let group = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Group/g1"}});
        assert!(!extract(defs, &group).iter().any(|e| e.param == "patient"));
    }
}
