//! Validation of resources against the base R4 StructureDefinitions: element names (unknown
//! elements are rejected), JSON shapes (array or single value, per `max`), cardinality,
//! primitive formats, required bindings on `code` elements, and reference syntax; recursing into
//! backbone elements, data types, `contained` resources and Bundle entries.
//!
//! Not enforced: FHIRPath invariants (`constraint`s such as `ele-1` beyond "no empty values",
//! `dom-2`, `obs-6`), profiles in `meta.profile`, required bindings on Coding/CodeableConcept,
//! and value sets the package cannot expand (external systems such as BCP-47 or MIME types).
//! A reference to a resource type outside the element's target profiles is a warning.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::definitions::{CodeSet, Definitions, ElementDef, StructureDef};
use crate::outcome::{Issue, IssueType};

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const SD_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

fn type_code(t: &Value) -> Option<String> {
    let code = t.get("code")?.as_str()?;
    if let Some(system) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
        let from_ext = t
            .get("extension")
            .and_then(Value::as_array)
            .and_then(|exts| exts.iter().find(|e| e["url"] == FHIR_TYPE_EXT))
            .and_then(|e| e["valueUrl"].as_str());
        return Some(from_ext.map(str::to_string).unwrap_or_else(|| system.to_ascii_lowercase()));
    }
    Some(code.to_string())
}

/// Flattens StructureDefinition snapshots into element tables keyed by type name.
pub(crate) fn flatten_structures(docs: &[Value]) -> HashMap<String, StructureDef> {
    let mut out = HashMap::new();
    for doc in docs {
        if doc["derivation"] != "specialization" || doc["kind"] == "logical" {
            continue;
        }
        let Some(name) = doc["type"].as_str() else { continue };
        let mut elements = Vec::new();
        for e in doc["snapshot"]["element"].as_array().into_iter().flatten() {
            let Some(path) = e["path"].as_str() else { continue };
            let types: Vec<String> = e["type"].as_array().into_iter().flatten().filter_map(type_code).collect();
            let target_profiles = e["type"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|t| t["targetProfile"].as_array().into_iter().flatten())
                .filter_map(|p| p.as_str()?.strip_prefix(SD_PREFIX).map(str::to_string))
                .collect();
            let required_binding = (e["binding"]["strength"] == "required")
                .then(|| e["binding"]["valueSet"].as_str().map(|v| v.split('|').next().unwrap_or(v).to_string()))
                .flatten();
            elements.push(ElementDef {
                path: path.to_string(),
                min: e["min"].as_u64().unwrap_or(0) as u32,
                max: match e["max"].as_str() {
                    Some("*") | None => None,
                    Some(n) => n.parse().ok(),
                },
                types,
                target_profiles,
                content_reference: e["contentReference"].as_str().map(|c| c.trim_start_matches('#').to_string()),
                required_binding,
                is_summary: e["isSummary"] == true,
            });
        }
        let by_path = elements.iter().enumerate().map(|(i, e)| (e.path.clone(), i)).collect();
        out.insert(
            name.to_string(),
            StructureDef {
                name: name.to_string(),
                kind: doc["kind"].as_str().unwrap_or_default().to_string(),
                is_abstract: doc["abstract"] == true,
                base_type: doc["baseDefinition"].as_str().and_then(|b| b.strip_prefix(SD_PREFIX)).map(str::to_string),
                elements,
                by_path,
            },
        );
    }
    out
}

fn concepts(list: &Value, system: &str, out: &mut Vec<(String, String)>) {
    for c in list.as_array().into_iter().flatten() {
        if let Some(code) = c["code"].as_str() {
            out.push((system.to_string(), code.to_string()));
        }
        concepts(&c["concept"], system, out);
    }
}

/// Expands the ValueSets that required bindings point at, from the package's CodeSystems.
pub(crate) fn expand_required_value_sets(
    structures: &HashMap<String, StructureDef>,
    terminology: &[Value],
) -> HashMap<String, CodeSet> {
    let mut code_systems: HashMap<&str, &Value> = HashMap::new();
    let mut value_sets: HashMap<&str, &Value> = HashMap::new();
    for doc in terminology {
        let Some(url) = doc["url"].as_str() else { continue };
        match doc["resourceType"].as_str() {
            Some("CodeSystem") => {
                code_systems.insert(url, doc);
            }
            Some("ValueSet") => {
                value_sets.insert(url, doc);
            }
            _ => {}
        }
    }
    let wanted: std::collections::BTreeSet<&str> =
        structures.values().flat_map(|s| s.elements.iter()).filter_map(|e| e.required_binding.as_deref()).collect();
    let mut out = HashMap::new();
    for url in wanted {
        let mut set = CodeSet { url: url.to_string(), ..CodeSet::default() };
        expand(url, &value_sets, &code_systems, &mut set, 0);
        out.insert(url.to_string(), set);
    }
    out
}

fn expand(
    url: &str,
    value_sets: &HashMap<&str, &Value>,
    code_systems: &HashMap<&str, &Value>,
    set: &mut CodeSet,
    depth: u32,
) {
    let Some(vs) = value_sets.get(url) else {
        set.incomplete = true;
        return;
    };
    if depth > 5 || vs["compose"]["exclude"].is_array() {
        set.incomplete = true;
        return;
    }
    for include in vs["compose"]["include"].as_array().into_iter().flatten() {
        for imported in include["valueSet"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            expand(imported.split('|').next().unwrap_or(imported), value_sets, code_systems, set, depth + 1);
        }
        let Some(system) = include["system"].as_str() else { continue };
        if include["filter"].is_array() {
            set.incomplete = true;
        } else if let Some(list) = include["concept"].as_array() {
            for c in list {
                if let Some(code) = c["code"].as_str() {
                    set.codes.push((system.to_string(), code.to_string()));
                }
            }
        } else if let Some(cs) = code_systems.get(system) {
            if cs["content"] != "complete" {
                set.incomplete = true;
            }
            concepts(&cs["concept"], system, &mut set.codes);
        } else {
            set.incomplete = true;
        }
    }
}

/// One child element as it appears in JSON.
#[derive(Debug, Clone)]
struct Child {
    /// Index into the owning structure's elements.
    element: usize,
    /// The concrete type for this JSON key (a choice `value[x]` gives `valueQuantity` → Quantity).
    ty: String,
    /// The element's path where children are defined (contentReference resolved).
    children_path: String,
}

/// (structure name, parent element path).
type ParentKey = (String, String);

/// A child element with minimum cardinality 1: its JSON name (for a choice, the prefix).
struct Required {
    name: String,
    is_choice: bool,
}

struct TypeIndex {
    /// (type, parent path) → JSON key → child.
    children: HashMap<(String, String), HashMap<String, Child>>,
    /// (type, parent path) → required children (element index, base name, is_choice).
    required: HashMap<ParentKey, Vec<Required>>,
}

static INDEX: OnceLock<TypeIndex> = OnceLock::new();

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn build_index(defs: &Definitions) -> TypeIndex {
    let mut children: HashMap<(String, String), HashMap<String, Child>> = HashMap::new();
    let mut required: HashMap<ParentKey, Vec<Required>> = HashMap::new();
    for (name, sd) in &defs.structures {
        for (i, e) in sd.elements.iter().enumerate() {
            let Some((parent, last)) = e.path.rsplit_once('.') else { continue };
            let key = (name.clone(), parent.to_string());
            let map = children.entry(key.clone()).or_default();
            let children_path = e.content_reference.clone().unwrap_or_else(|| e.path.clone());
            if let Some(base) = last.strip_suffix("[x]") {
                for t in &e.types {
                    map.insert(
                        format!("{base}{}", capitalize(t)),
                        Child { element: i, ty: t.clone(), children_path: children_path.clone() },
                    );
                }
                if e.min > 0 {
                    required.entry(key).or_default().push(Required { name: base.to_string(), is_choice: true });
                }
            } else {
                let ty = if e.content_reference.is_some() {
                    "BackboneElement".to_string()
                } else if e.path.matches('.').count() == 1 && last == "id" && sd.kind == "resource" {
                    "id".to_string()
                } else {
                    e.types.first().cloned().unwrap_or_else(|| "BackboneElement".into())
                };
                map.insert(last.to_string(), Child { element: i, ty, children_path });
                if e.min > 0 {
                    required.entry(key).or_default().push(Required { name: last.to_string(), is_choice: false });
                }
            }
        }
    }
    TypeIndex { children, required }
}

fn is_primitive(ty: &str) -> bool {
    ty.starts_with(|c: char| c.is_ascii_lowercase())
}

struct Walker<'d> {
    defs: &'d Definitions,
    index: &'d TypeIndex,
    issues: Vec<Issue>,
}

/// Checks `resource` against the base R4 StructureDefinition of its `resourceType`. Returns
/// every problem found, each naming the element path (e.g. `Patient.birthDate`) and the rule.
pub fn validate(defs: &Definitions, resource: &Value) -> Vec<Issue> {
    let index = INDEX.get_or_init(|| build_index(defs));
    let mut walker = Walker { defs, index, issues: Vec::new() };
    walker.resource(resource, "");
    walker.issues
}

impl Walker<'_> {
    fn issue(&mut self, code: IssueType, location: &str, message: String) {
        if self.issues.len() < 100 {
            self.issues.push(Issue::error(code, message).at(location.to_string()));
        }
    }

    fn resource(&mut self, value: &Value, location: &str) {
        let Some(object) = value.as_object() else {
            let at = if location.is_empty() { "(root)" } else { location };
            return self.issue(IssueType::Structure, at, format!("{at}: a resource must be a JSON object"));
        };
        let Some(ty) = object.get("resourceType").and_then(Value::as_str) else {
            let at = if location.is_empty() { "(root)" } else { location };
            return self.issue(IssueType::Required, at, format!("{at}: the resource has no resourceType"));
        };
        if !self.defs.is_resource_type(ty) {
            let at = if location.is_empty() { ty.to_string() } else { location.to_string() };
            return self.issue(IssueType::Value, &at, format!("'{ty}' is not a FHIR R4 resource type"));
        }
        let at = if location.is_empty() { ty.to_string() } else { format!("{location}.ofType({ty})") };
        self.object(value, ty, ty, &at, true);
    }

    /// Validates the JSON object `value` whose element definitions are the children of
    /// `parent_path` in structure `structure`.
    fn object(&mut self, value: &Value, structure: &str, parent_path: &str, location: &str, is_resource_root: bool) {
        let Some(object) = value.as_object() else {
            return self.issue(IssueType::Structure, location, format!("{location} must be a JSON object"));
        };
        if object.is_empty() {
            return self.issue(
                IssueType::Structure,
                location,
                format!("{location} is an empty object; omit it instead"),
            );
        }
        let key = (structure.to_string(), parent_path.to_string());
        let index = self.index;
        let Some(children) = index.children.get(&key) else { return };
        for (name, child_value) in object {
            if name == "resourceType" {
                if !is_resource_root {
                    self.issue(
                        IssueType::Structure,
                        location,
                        format!("{location} has a resourceType but is not a resource"),
                    );
                }
                continue;
            }
            if let Some(base) = name.strip_prefix('_') {
                match children.get(base) {
                    Some(c) if is_primitive(&c.ty) => self.primitive_extension(child_value, &format!("{location}.{name}")),
                    _ => self.issue(
                        IssueType::Structure,
                        &format!("{location}.{name}"),
                        format!("Unknown element '{name}' in {location}: '_{base}' is only allowed next to a primitive element"),
                    ),
                }
                continue;
            }
            let Some(child) = children.get(name.as_str()) else {
                let hint = children
                    .keys()
                    .find(|k| similar(k, name))
                    .map(|k| format!(" (did you mean '{k}'?)"))
                    .unwrap_or_default();
                self.issue(
                    IssueType::Structure,
                    &format!("{location}.{name}"),
                    format!("Unknown element '{name}' in {location}{hint}"),
                );
                continue;
            };
            let Some(sd) = self.defs.structures.get(structure) else { continue };
            let element = &sd.elements[child.element];
            let here = format!("{location}.{name}");
            match (element.max, child_value) {
                (Some(1), Value::Array(_)) => {
                    self.issue(
                        IssueType::Structure,
                        &here,
                        format!("{here} must be a single value, not an array (max 1)"),
                    );
                }
                (Some(1), item) | (Some(0), item) => self.item(item, structure, child, element, &here),
                (_, Value::Array(items)) => {
                    if items.is_empty() {
                        self.issue(IssueType::Structure, &here, format!("{here} is an empty array; omit it instead"));
                    }
                    if let Some(max) = element.max
                        && items.len() > max as usize
                    {
                        self.issue(
                            IssueType::Structure,
                            &here,
                            format!("{here} has {} items; at most {max} allowed", items.len()),
                        );
                    }
                    for (n, item) in items.iter().enumerate() {
                        self.item(item, structure, child, element, &format!("{here}[{n}]"));
                    }
                }
                (_, _) => self.issue(IssueType::Structure, &here, format!("{here} must be an array (it repeats)")),
            }
        }
        if let Some(required) = index.required.get(&key) {
            for Required { name: base, is_choice } in required {
                let present = if *is_choice {
                    object.keys().any(|k| {
                        k.starts_with(base.as_str()) && k[base.len()..].starts_with(|c: char| c.is_ascii_uppercase())
                    })
                } else {
                    object.contains_key(base.as_str()) || object.contains_key(&format!("_{base}"))
                };
                if !present {
                    self.issue(
                        IssueType::Required,
                        &format!("{location}.{base}"),
                        format!("{location}.{base} is required (minimum cardinality 1)"),
                    );
                }
            }
        }
    }

    fn primitive_extension(&mut self, value: &Value, location: &str) {
        let ok = |v: &Value| {
            v.is_null()
                || v.as_object().is_some_and(|o| !o.is_empty() && o.keys().all(|k| k == "id" || k == "extension"))
        };
        let valid = match value {
            Value::Array(items) => items.iter().all(ok),
            v => ok(v) && !v.is_null(),
        };
        if !valid {
            self.issue(IssueType::Structure, location, format!("{location} may only hold 'id' and 'extension'"));
        }
    }

    fn item(&mut self, value: &Value, structure: &str, child: &Child, element: &ElementDef, location: &str) {
        let ty = child.ty.as_str();
        if is_primitive(ty) {
            self.primitive(value, ty, location);
            if let (Some(vs), Some(code)) = (&element.required_binding, value.as_str())
                && ty == "code"
            {
                self.binding(vs, code, location);
            }
            return;
        }
        match ty {
            "BackboneElement" | "Element" => self.object(value, structure, &child.children_path, location, false),
            "Resource" => self.resource(value, location),
            _ => {
                if self.defs.structures.contains_key(ty) {
                    self.object(value, ty, ty, location, false);
                    if ty == "Reference"
                        && let Some(reference) = value.get("reference").and_then(Value::as_str)
                    {
                        self.reference(reference, &element.target_profiles, location);
                    }
                }
            }
        }
    }

    fn binding(&mut self, value_set: &str, code: &str, location: &str) {
        let Some(set) = self.defs.value_sets.get(value_set) else { return };
        if set.incomplete || set.codes.is_empty() || set.codes.iter().any(|(_, c)| c == code) {
            return;
        }
        let allowed: Vec<&str> = set.codes.iter().take(12).map(|(_, c)| c.as_str()).collect();
        let more = if set.codes.len() > 12 { ", …" } else { "" };
        self.issue(
            IssueType::Value,
            location,
            format!(
                "{location} '{code}' is not in the required value set {value_set} (allowed: {}{more})",
                allowed.join(", ")
            ),
        );
    }

    fn reference(&mut self, reference: &str, targets: &[String], location: &str) {
        if reference.starts_with('#')
            || reference.starts_with("urn:uuid:")
            || reference.starts_with("urn:oid:")
            || reference.starts_with("http://")
            || reference.starts_with("https://")
        {
            return;
        }
        let path = reference.split('?').next().unwrap_or(reference);
        if reference.contains('?') {
            // A conditional reference in a transaction, resolved before storage.
            if !self.defs.is_resource_type(path) {
                self.issue(
                    IssueType::Value,
                    location,
                    format!("{location}.reference '{reference}': '{path}' is not a resource type"),
                );
            }
            return;
        }
        let parts: Vec<&str> = path.split('/').collect();
        let (ty, id) = match parts.as_slice() {
            [ty, id] | [ty, id, "_history", _] => (*ty, *id),
            _ => {
                return self.issue(
                    IssueType::Value,
                    location,
                    format!(
                        "{location}.reference '{reference}' must be Type/id, an absolute URL, urn:uuid:… or #contained"
                    ),
                );
            }
        };
        if !self.defs.is_resource_type(ty) {
            return self.issue(
                IssueType::Value,
                location,
                format!("{location}.reference '{reference}': '{ty}' is not a resource type"),
            );
        }
        if !valid_id(id) {
            return self.issue(
                IssueType::Value,
                location,
                format!("{location}.reference '{reference}': '{id}' is not a valid id"),
            );
        }
        if !targets.is_empty() && !targets.iter().any(|t| t == ty || t == "Resource") {
            // A warning, not an error: real feeds (Synthea's ExplanationOfBenefit.insurer, for
            // one) point at other types, and the reference is still well-formed and resolvable.
            self.issue(
                IssueType::Value,
                location,
                format!(
                    "{location}.reference '{reference}' should not point to a {ty} (allowed: {})",
                    targets.join(", ")
                ),
            );
            if let Some(last) = self.issues.last_mut() {
                last.severity = crate::outcome::IssueSeverity::Warning;
            }
        }
    }

    fn primitive(&mut self, value: &Value, ty: &str, location: &str) {
        let problem: Option<String> = match (ty, value) {
            ("boolean", Value::Bool(_)) => None,
            ("boolean", _) => Some("must be true or false".into()),
            ("integer" | "unsignedInt" | "positiveInt", Value::Number(n)) => match n.as_i64() {
                Some(v) if ty == "positiveInt" && v < 1 => Some("must be a whole number of at least 1".into()),
                Some(v) if ty == "unsignedInt" && v < 0 => Some("must be a whole number of at least 0".into()),
                Some(v) if v > i64::from(i32::MAX) || v < i64::from(i32::MIN) => {
                    Some("is outside the 32-bit integer range".into())
                }
                Some(_) => None,
                None => Some("must be a whole number".into()),
            },
            ("integer" | "unsignedInt" | "positiveInt", _) => Some("must be a JSON number (a whole number)".into()),
            ("decimal", Value::Number(_)) => None,
            ("decimal", _) => Some("must be a JSON number".into()),
            (_, Value::String(s)) => string_problem(ty, s),
            (_, _) => Some(format!("must be a JSON string ({ty})")),
        };
        if let Some(problem) = problem {
            let shown = match value {
                Value::String(s) => format!(" \"{}\"", s.chars().take(60).collect::<String>()),
                Value::Object(_) | Value::Array(_) => String::new(),
                v => format!(" {v}"),
            };
            self.issue(IssueType::Value, location, format!("{location}{shown} {problem}"));
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn similar(a: &str, b: &str) -> bool {
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    let mut sa: Vec<char> = a.to_lowercase().chars().collect();
    let mut sb: Vec<char> = b.to_lowercase().chars().collect();
    sa.sort_unstable();
    sb.sort_unstable();
    sa == sb || a.eq_ignore_ascii_case(b)
}

fn string_problem(ty: &str, s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("is empty; omit the element instead".into());
    }
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match ty {
        "string" | "markdown" | "xhtml" => None,
        "code" => (s.trim() != s || s.contains("  "))
            .then(|| "is not a valid code (no leading, trailing or double spaces)".into()),
        "id" => (!valid_id(s)).then(|| "is not a valid id (1-64 characters: letters, digits, '-' and '.')".into()),
        "uri" | "url" | "canonical" => s.contains(char::is_whitespace).then(|| "is not a valid URI (no spaces)".into()),
        "oid" => {
            let ok = s.strip_prefix("urn:oid:").is_some_and(|rest| {
                rest.split('.').count() >= 2 && rest.split('.').all(|p| digits(p) && (p == "0" || !p.starts_with('0')))
            });
            (!ok).then(|| "is not a valid OID (expected urn:oid:1.2.3…)".into())
        }
        "uuid" => {
            let ok = s
                .strip_prefix("urn:uuid:")
                .is_some_and(|u| u.len() == 36 && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
            (!ok).then(|| "is not a valid UUID (expected urn:uuid:xxxxxxxx-xxxx-…)".into())
        }
        "base64Binary" => (!s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/= \r\n".contains(&b)))
            .then(|| "is not valid base64".into()),
        "date" => {
            let ok = matches!(s.len(), 4 | 7 | 10) && crate::normalize::date_range(s).is_some();
            (!ok).then(|| "is not a valid date (expected YYYY, YYYY-MM or YYYY-MM-DD)".into())
        }
        "dateTime" => {
            let has_time = s.contains('T');
            let zoned = s.ends_with('Z') || s[s.len().saturating_sub(6)..].starts_with(['+', '-']) && s.len() > 19;
            let ok = crate::normalize::date_range(s).is_some() && (!has_time || (zoned && s.len() >= 20));
            (!ok).then(|| {
                "is not a valid dateTime (expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz with a time zone)".into()
            })
        }
        "instant" => {
            let zoned = s.ends_with('Z') || s[s.len().saturating_sub(6)..].starts_with(['+', '-']);
            let ok = s.len() >= 20 && s.contains('T') && zoned && crate::normalize::date_range(s).is_some();
            (!ok).then(|| "is not a valid instant (expected YYYY-MM-DDThh:mm:ss[.sss]Z or +zz:zz)".into())
        }
        "time" => {
            let parts: Vec<&str> = s.split(':').collect();
            let ok = parts.len() == 3
                && digits(parts[0])
                && digits(parts[1])
                && parts[0].len() == 2
                && parts[1].len() == 2
                && parts[0] < "24"
                && parts[1] < "60"
                && parts[2].split('.').next().is_some_and(|sec| sec.len() == 2 && digits(sec) && sec < "60");
            (!ok).then(|| "is not a valid time (expected hh:mm:ss)".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
