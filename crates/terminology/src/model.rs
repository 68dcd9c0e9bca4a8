//! The in-memory forms of CodeSystem, ValueSet and ConceptMap resources, parsed from their FHIR
//! JSON once, with the indexes the operations need: a code → concept map (and a folded one for
//! case-insensitive systems), parent/child links, and each concept's folded search text.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::TerminologyError;

/// A designation: another name for a concept, in a language (`zh`, `en`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Designation {
    pub language: Option<String>,
    /// `use.code`, e.g. `display` or `900000000000013009` (synonym).
    pub use_code: Option<String>,
    pub value: String,
}

/// A property value of a concept (`CodeSystem.concept.property.value[x]`), kept with its FHIR
/// type suffix so it is rendered back as it came (`valueCode`, `valueString`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyValue {
    pub code: String,
    /// The `value[x]` suffix: `Code`, `String`, `Boolean`, `Integer`, `Coding`, …
    pub kind: String,
    pub value: Value,
}

impl PropertyValue {
    /// The value as text for `=` filters (`Coding` values by their code).
    pub fn as_text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(o) => o.get("code").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Concept {
    pub code: String,
    pub display: Option<String>,
    pub definition: Option<String>,
    pub designations: Vec<Designation>,
    pub properties: Vec<PropertyValue>,
    /// Indexes into [`CodeSystem::concepts`].
    pub parents: Vec<u32>,
    pub children: Vec<u32>,
    /// Folded code, display and designations (`fhir::normalize::normalize_string`), one line each,
    /// for text filters.
    pub search: String,
}

impl Concept {
    /// `notSelectable` / `abstract` property set to true.
    pub fn is_abstract(&self) -> bool {
        self.properties.iter().any(|p| matches!(p.code.as_str(), "notSelectable" | "abstract") && p.value == true)
    }

    /// `status` property `retired`/`inactive` or `inactive` property true.
    pub fn is_inactive(&self) -> bool {
        self.properties.iter().any(|p| {
            (p.code == "status" && matches!(p.value.as_str(), Some("retired") | Some("inactive")))
                || (p.code == "inactive" && p.value == true)
        })
    }

    /// The display in `language` (a designation whose language starts with it), else the display.
    pub fn display_in(&self, language: Option<&str>) -> Option<&str> {
        display_in(self.display.as_deref(), &self.designations, language)
    }
}

/// The designation in `language` (a `display` designation, or one without a use, whose language
/// starts with it), else `display`.
pub(crate) fn display_in<'a>(
    display: Option<&'a str>,
    designations: &'a [Designation],
    language: Option<&str>,
) -> Option<&'a str> {
    if let Some(lang) = language {
        let lang = lang.to_ascii_lowercase();
        if let Some(d) = designations.iter().find(|d| {
            d.language.as_deref().is_some_and(|l| l.to_ascii_lowercase().starts_with(&lang))
                && d.use_code.as_deref().is_none_or(|u| u == "display")
        }) {
            return Some(&d.value);
        }
    }
    display
}

/// Folded code, display and designations, one per line: what text filters search.
pub(crate) fn search_text(code: &str, display: Option<&str>, designations: &[Designation]) -> String {
    let mut text = fhir::normalize::normalize_string(code);
    for t in display.into_iter().chain(designations.iter().map(|d| d.value.as_str())) {
        text.push('\n');
        text.push_str(&fhir::normalize::normalize_string(t));
    }
    text
}

/// A code system with its concepts indexed.
#[derive(Debug, Clone)]
pub struct CodeSystem {
    pub url: String,
    pub version: Option<String>,
    pub name: Option<String>,
    pub title: Option<String>,
    /// `CodeSystem.content`: `complete`, `fragment`, `not-present`, …
    pub content: String,
    pub case_sensitive: bool,
    /// `urn:oid:…` / other identifier systems+values this system is also known by.
    pub identifiers: Vec<String>,
    /// `CodeSystem.valueSet`: the value set of all its codes, if declared.
    pub value_set: Option<String>,
    /// `CodeSystem.language` (the language of the displays).
    pub language: Option<String>,
    pub concepts: Vec<Concept>,
    index: HashMap<String, u32>,
    folded_index: HashMap<String, u32>,
    /// Stored resource id when the system came from the FHIR store.
    pub resource_id: Option<String>,
}

impl CodeSystem {
    pub fn from_json(doc: &Value) -> Result<CodeSystem, TerminologyError> {
        let url = canonical_of(doc, "CodeSystem")?;
        let mut cs = CodeSystem {
            url: url.to_string(),
            version: str_of(doc, "version"),
            name: str_of(doc, "name"),
            title: str_of(doc, "title"),
            content: str_of(doc, "content").unwrap_or_else(|| "complete".into()),
            case_sensitive: doc["caseSensitive"].as_bool().unwrap_or(true),
            identifiers: identifiers(doc),
            value_set: str_of(doc, "valueSet").map(|v| strip_version(&v).to_string()),
            language: str_of(doc, "language"),
            concepts: Vec::new(),
            index: HashMap::new(),
            folded_index: HashMap::new(),
            resource_id: str_of(doc, "id"),
        };
        let mut nested_parents: Vec<(u32, u32)> = Vec::new();
        fn walk(items: &Value, parent: Option<u32>, cs: &mut CodeSystem, links: &mut Vec<(u32, u32)>) {
            for c in items.as_array().into_iter().flatten() {
                let Some(code) = c["code"].as_str() else { continue };
                let at = cs.concepts.len() as u32;
                cs.concepts.push(Concept {
                    code: code.to_string(),
                    display: str_of(c, "display"),
                    definition: str_of(c, "definition"),
                    designations: designations(c),
                    properties: c["property"].as_array().into_iter().flatten().filter_map(property_value).collect(),
                    parents: Vec::new(),
                    children: Vec::new(),
                    search: String::new(),
                });
                if let Some(p) = parent {
                    links.push((p, at));
                }
                walk(&c["concept"], Some(at), cs, links);
            }
        }
        walk(&doc["concept"], None, &mut cs, &mut nested_parents);
        cs.finish(nested_parents);
        Ok(cs)
    }

    /// Builds the indexes and the hierarchy: nested concepts, plus `parent`/`subsumedBy`
    /// properties naming another code of the system.
    pub(crate) fn finish(&mut self, mut links: Vec<(u32, u32)>) {
        self.index = self.concepts.iter().enumerate().map(|(i, c)| (c.code.clone(), i as u32)).collect();
        if !self.case_sensitive {
            self.folded_index =
                self.concepts.iter().enumerate().map(|(i, c)| (c.code.to_lowercase(), i as u32)).collect();
        }
        for (i, c) in self.concepts.iter().enumerate() {
            for p in c.properties.iter().filter(|p| p.code == "parent" || p.code == "subsumedBy") {
                if let Some(parent) = p.as_text().and_then(|code| self.index.get(&code)) {
                    links.push((*parent, i as u32));
                }
            }
        }
        links.sort_unstable();
        links.dedup();
        for (parent, child) in links {
            self.concepts[parent as usize].children.push(child);
            self.concepts[child as usize].parents.push(parent);
        }
        for c in &mut self.concepts {
            c.search = search_text(&c.code, c.display.as_deref(), &c.designations);
        }
    }

    /// The concept with this code (exactly, or folded for a case-insensitive system).
    pub fn concept(&self, code: &str) -> Option<&Concept> {
        self.index_of(code).map(|i| &self.concepts[i as usize])
    }

    pub fn index_of(&self, code: &str) -> Option<u32> {
        self.index
            .get(code)
            .copied()
            .or_else(|| if self.case_sensitive { None } else { self.folded_index.get(&code.to_lowercase()).copied() })
    }

    /// `descendant` is `ancestor` or below it.
    pub fn subsumes(&self, ancestor: u32, descendant: u32) -> bool {
        let mut stack = vec![descendant];
        let mut seen = std::collections::HashSet::new();
        while let Some(c) = stack.pop() {
            if c == ancestor {
                return true;
            }
            if seen.insert(c) {
                stack.extend(self.concepts[c as usize].parents.iter().copied());
            }
        }
        false
    }

    /// The concept and every concept below it (each once), in hierarchy order.
    pub fn descendants_and_self(&self, root: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root];
        while let Some(c) = stack.pop() {
            if seen.insert(c) {
                out.push(c);
                stack.extend(self.concepts[c as usize].children.iter().rev().copied());
            }
        }
        out
    }

    /// The display name shown in answers: title, else name, else url.
    pub fn label(&self) -> &str {
        self.title.as_deref().or(self.name.as_deref()).unwrap_or(&self.url)
    }
}

/// One `compose.include` or `compose.exclude` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptSetRule {
    pub system: Option<String>,
    pub version: Option<String>,
    /// Enumerated concepts (code, display, designations).
    pub concepts: Vec<(String, Option<String>, Vec<Designation>)>,
    pub filters: Vec<Filter>,
    /// Value sets whose intersection (with the rest of the rule) is included.
    pub value_sets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub property: String,
    pub op: String,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct ValueSet {
    pub url: String,
    pub version: Option<String>,
    pub name: Option<String>,
    pub title: Option<String>,
    pub includes: Vec<ConceptSetRule>,
    pub excludes: Vec<ConceptSetRule>,
    /// A stored `expansion.contains` (used when the set has no compose).
    pub stated_expansion: Vec<(String, Option<String>, String, Option<String>)>,
    pub resource_id: Option<String>,
}

impl ValueSet {
    pub fn from_json(doc: &Value) -> Result<ValueSet, TerminologyError> {
        let url = canonical_of(doc, "ValueSet")?;
        let rules = |key: &str| -> Vec<ConceptSetRule> {
            doc["compose"][key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| ConceptSetRule {
                    system: str_of(r, "system"),
                    version: str_of(r, "version"),
                    concepts: r["concept"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| Some((c["code"].as_str()?.to_string(), str_of(c, "display"), designations(c))))
                        .collect(),
                    filters: r["filter"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| {
                            Some(Filter {
                                property: f["property"].as_str()?.to_string(),
                                op: f["op"].as_str()?.to_string(),
                                value: f["value"].as_str()?.to_string(),
                            })
                        })
                        .collect(),
                    value_sets: r["valueSet"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(|v| v.to_string())
                        .collect(),
                })
                .collect()
        };
        let mut stated = Vec::new();
        fn walk(items: &Value, out: &mut Vec<(String, Option<String>, String, Option<String>)>) {
            for c in items.as_array().into_iter().flatten() {
                if let (Some(system), Some(code)) = (c["system"].as_str(), c["code"].as_str()) {
                    out.push((system.to_string(), str_of(c, "version"), code.to_string(), str_of(c, "display")));
                }
                walk(&c["contains"], out);
            }
        }
        walk(&doc["expansion"]["contains"], &mut stated);
        Ok(ValueSet {
            url: url.to_string(),
            version: str_of(doc, "version"),
            name: str_of(doc, "name"),
            title: str_of(doc, "title"),
            includes: rules("include"),
            excludes: rules("exclude"),
            stated_expansion: stated,
            resource_id: str_of(doc, "id"),
        })
    }

    /// The value set of every code of a system (`{system}?vs`, and `CodeSystem.valueSet`).
    pub fn whole_system(url: &str, system: &str, name: Option<String>) -> ValueSet {
        ValueSet {
            url: url.to_string(),
            version: None,
            name,
            title: None,
            includes: vec![ConceptSetRule {
                system: Some(system.to_string()),
                version: None,
                concepts: Vec::new(),
                filters: Vec::new(),
                value_sets: Vec::new(),
            }],
            excludes: Vec::new(),
            stated_expansion: Vec::new(),
            resource_id: None,
        }
    }
}

/// One mapping target of a ConceptMap element.
#[derive(Debug, Clone, PartialEq)]
pub struct MapTarget {
    pub code: Option<String>,
    pub display: Option<String>,
    /// `equivalent`, `wider`, `narrower`, `unmatched`, …
    pub equivalence: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapGroup {
    pub source: Option<String>,
    pub source_version: Option<String>,
    pub target: Option<String>,
    pub target_version: Option<String>,
    /// source code → (source display, targets).
    pub elements: HashMap<String, (Option<String>, Vec<MapTarget>)>,
}

#[derive(Debug, Clone)]
pub struct ConceptMap {
    pub url: String,
    pub version: Option<String>,
    pub name: Option<String>,
    /// `sourceUri`/`sourceCanonical`, `targetUri`/`targetCanonical` (value sets).
    pub source_scope: Option<String>,
    pub target_scope: Option<String>,
    pub groups: Vec<MapGroup>,
    pub resource_id: Option<String>,
}

impl ConceptMap {
    pub fn from_json(doc: &Value) -> Result<ConceptMap, TerminologyError> {
        let url = canonical_of(doc, "ConceptMap")?;
        let groups = doc["group"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                let mut elements: HashMap<String, (Option<String>, Vec<MapTarget>)> = HashMap::new();
                for e in g["element"].as_array().into_iter().flatten() {
                    let Some(code) = e["code"].as_str() else { continue };
                    let entry = elements.entry(code.to_string()).or_insert_with(|| (str_of(e, "display"), Vec::new()));
                    for t in e["target"].as_array().into_iter().flatten() {
                        entry.1.push(MapTarget {
                            code: str_of(t, "code"),
                            display: str_of(t, "display"),
                            equivalence: str_of(t, "equivalence").unwrap_or_else(|| "equivalent".into()),
                            comment: str_of(t, "comment"),
                        });
                    }
                }
                MapGroup {
                    source: str_of(g, "source"),
                    source_version: str_of(g, "sourceVersion"),
                    target: str_of(g, "target"),
                    target_version: str_of(g, "targetVersion"),
                    elements,
                }
            })
            .collect();
        Ok(ConceptMap {
            url: url.to_string(),
            version: str_of(doc, "version"),
            name: str_of(doc, "name"),
            source_scope: str_of(doc, "sourceUri").or_else(|| str_of(doc, "sourceCanonical")),
            target_scope: str_of(doc, "targetUri").or_else(|| str_of(doc, "targetCanonical")),
            groups,
            resource_id: str_of(doc, "id"),
        })
    }
}

/// Any of the three, as stored in the [`crate::Terminology`].
#[derive(Debug, Clone)]
pub enum Resource {
    CodeSystem(Arc<CodeSystem>),
    ValueSet(Arc<ValueSet>),
    ConceptMap(Arc<ConceptMap>),
}

impl Resource {
    /// Parses a CodeSystem, ValueSet or ConceptMap resource.
    pub fn from_json(doc: &Value) -> Result<Resource, TerminologyError> {
        match doc["resourceType"].as_str() {
            Some("CodeSystem") => Ok(Resource::CodeSystem(Arc::new(CodeSystem::from_json(doc)?))),
            Some("ValueSet") => Ok(Resource::ValueSet(Arc::new(ValueSet::from_json(doc)?))),
            Some("ConceptMap") => Ok(Resource::ConceptMap(Arc::new(ConceptMap::from_json(doc)?))),
            other => Err(TerminologyError::Invalid(format!(
                "expected a CodeSystem, ValueSet or ConceptMap, not {}",
                other.unwrap_or("a resource without resourceType")
            ))),
        }
    }
}

/// The `url` of a resource that must be of type `kind`.
fn canonical_of<'a>(doc: &'a Value, kind: &str) -> Result<&'a str, TerminologyError> {
    if doc["resourceType"] != kind {
        return Err(TerminologyError::Invalid(format!("expected a {kind} resource")));
    }
    doc["url"]
        .as_str()
        .ok_or_else(|| TerminologyError::Invalid(format!("the {kind} has no url; terminology needs one")))
}

/// Sets `key` on a JSON object when there is a value.
pub(crate) fn put(target: &mut Value, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        target[key] = Value::String(v.to_string());
    }
}

pub(crate) fn str_of(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_string)
}

/// `http://x|1.0` → `http://x`.
pub fn strip_version(canonical: &str) -> &str {
    canonical.split_once('|').map_or(canonical, |(u, _)| u)
}

fn identifiers(doc: &Value) -> Vec<String> {
    let ids = match &doc["identifier"] {
        Value::Array(a) => a.iter().collect::<Vec<_>>(),
        Value::Object(_) => vec![&doc["identifier"]],
        _ => Vec::new(),
    };
    // `urn:ietf:rfc:3986` identifiers hold the other names of the system (`urn:oid:…`).
    ids.into_iter()
        .filter_map(|i| i["value"].as_str())
        .filter(|v| v.starts_with("urn:oid:") || v.starts_with("urn:uuid:") || v.contains("://"))
        .map(str::to_string)
        .collect()
}

fn designations(concept: &Value) -> Vec<Designation> {
    concept["designation"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some(Designation {
                language: str_of(d, "language"),
                use_code: d["use"]["code"].as_str().map(str::to_string),
                value: d["value"].as_str()?.to_string(),
            })
        })
        .collect()
}

fn property_value(p: &Value) -> Option<PropertyValue> {
    let code = p["code"].as_str()?;
    let obj = p.as_object()?;
    let (key, value) = obj.iter().find(|(k, _)| k.starts_with("value"))?;
    Some(PropertyValue { code: code.to_string(), kind: key["value".len()..].to_string(), value: value.clone() })
}
