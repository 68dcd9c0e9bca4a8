//! ValueSet expansion: `compose.include`/`exclude` of whole systems, enumerated concepts,
//! filters (`is-a`, `descendent-of`, `is-not-a`, `generalizes`, `=`, `in`, `exists`) and other
//! value sets, computed once per value set and cached; then the `$expand` view of it (text
//! filter, paging, designations, display language).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::model::{CodeSystem, ConceptSetRule, Designation, Filter, ValueSet, put, search_text};
use crate::{MAX_EXPANSION, Terminology, TerminologyError};

/// Value sets including value sets deeper than this are taken to be circular.
const MAX_DEPTH: usize = 12;

/// Largest page `$expand` returns (also the page when no `count` is given).
pub const MAX_PAGE: usize = 1000;

/// One code of an expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub system: Arc<str>,
    pub version: Option<Arc<str>>,
    pub code: String,
    pub display: Option<String>,
    pub designations: Vec<Designation>,
    /// Folded code, display and designations, one per line (text filters search it).
    pub search: String,
    pub is_abstract: bool,
    pub inactive: bool,
}

impl Member {
    fn key(&self) -> String {
        key(&self.system, &self.code)
    }

    /// The display in `language` (a designation whose language starts with it), else the display.
    pub fn display_in(&self, language: Option<&str>) -> Option<&str> {
        crate::model::display_in(self.display.as_deref(), &self.designations, language)
    }
}

fn key(system: &str, code: &str) -> String {
    format!("{system}|{code}")
}

/// A computed expansion, indexed by `system|code`.
#[derive(Debug, Default)]
pub struct Expansion {
    pub members: Vec<Member>,
    index: HashMap<String, u32>,
}

impl Expansion {
    fn from_members(members: Vec<Member>) -> Expansion {
        let index = members.iter().enumerate().map(|(i, m)| (m.key(), i as u32)).collect();
        Expansion { members, index }
    }

    /// The member with this system and code.
    pub fn get(&self, system: &str, code: &str) -> Option<&Member> {
        self.index.get(&key(system, code)).map(|i| &self.members[*i as usize])
    }

    /// The members with this code in any system.
    pub fn by_code<'a>(&'a self, code: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.iter().filter(move |m| m.code == code)
    }
}

/// The parameters of `$expand` that shape the answer.
#[derive(Debug, Clone, Default)]
pub struct ExpandParams {
    /// Text every word of which must occur in a member's code, display or designations.
    pub filter: Option<String>,
    pub offset: usize,
    /// Page size (at most [`MAX_PAGE`]; `None` means [`MAX_PAGE`]).
    pub count: Option<usize>,
    pub include_designations: bool,
    /// Displays in this language where a designation offers one (`zh`, `en`).
    pub display_language: Option<String>,
    /// Leave out inactive codes.
    pub active_only: bool,
}

impl Terminology {
    /// The expansion of the value set at `url` (`url|version` accepted), cached.
    pub fn expansion(&self, url: &str, version: Option<&str>) -> Result<Arc<Expansion>, TerminologyError> {
        self.expansion_at(url, version, 0)
    }

    fn expansion_at(&self, url: &str, version: Option<&str>, depth: usize) -> Result<Arc<Expansion>, TerminologyError> {
        if depth > MAX_DEPTH {
            return Err(TerminologyError::Invalid(format!(
                "the value set {url} includes value sets more than {MAX_DEPTH} levels deep (a cycle?)"
            )));
        }
        let cache_key = format!("{url}|{}", version.unwrap_or(""));
        if let Some(found) = self.expansions.lock().ok().and_then(|c| c.get(&cache_key).cloned()) {
            return Ok(found);
        }
        // The parent expands what it holds on its own (unless this layer holds its own version
        // of the set), and caches it for every layer above it.
        if let Some(parent) = &self.parent
            && !self.value_sets.contains_key(crate::model::strip_version(url))
            && parent.has_value_set(url)
        {
            match parent.expansion_at(url, version, depth) {
                Ok(found) => return Ok(found),
                Err(TerminologyError::UnknownCodeSystem { .. } | TerminologyError::UnknownValueSet { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let vs =
            self.value_set(url, version).ok_or_else(|| TerminologyError::UnknownValueSet { url: url.to_string() })?;
        let expansion = Arc::new(self.compute(&vs, depth)?);
        if let Ok(mut cache) = self.expansions.lock() {
            cache.insert(cache_key, expansion.clone());
        }
        Ok(expansion)
    }

    /// Expands a value set that is not (necessarily) registered, e.g. one given inline.
    pub fn expand_value_set(&self, vs: &ValueSet) -> Result<Expansion, TerminologyError> {
        self.compute(vs, 0)
    }

    fn compute(&self, vs: &ValueSet, depth: usize) -> Result<Expansion, TerminologyError> {
        if vs.includes.is_empty() {
            let members = vs
                .stated_expansion
                .iter()
                .map(|(system, version, code, display)| {
                    let search = search_text(code, display.as_deref(), &[]);
                    Member {
                        system: Arc::from(system.as_str()),
                        version: version.as_deref().map(Arc::from),
                        code: code.clone(),
                        display: display.clone(),
                        designations: Vec::new(),
                        search,
                        is_abstract: false,
                        inactive: false,
                    }
                })
                .collect();
            return Ok(Expansion::from_members(members));
        }
        let mut members: Vec<Member> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for rule in &vs.includes {
            for m in self.rule_members(rule, depth)? {
                if seen.insert(m.key()) {
                    members.push(m);
                }
            }
            if members.len() > MAX_EXPANSION {
                return Err(TerminologyError::TooCostly(format!(
                    "the value set {} has more than {MAX_EXPANSION} codes; expand a narrower value set",
                    vs.url
                )));
            }
        }
        if !vs.excludes.is_empty() {
            let mut excluded: HashSet<String> = HashSet::new();
            for rule in &vs.excludes {
                excluded.extend(self.rule_members(rule, depth)?.iter().map(Member::key));
            }
            members.retain(|m| !excluded.contains(&m.key()));
        }
        Ok(Expansion::from_members(members))
    }

    fn rule_members(&self, rule: &ConceptSetRule, depth: usize) -> Result<Vec<Member>, TerminologyError> {
        let mut sets: Vec<Arc<Expansion>> = Vec::new();
        for url in &rule.value_sets {
            sets.push(self.expansion_at(url, None, depth + 1)?);
        }
        let mut members: Vec<Member> = match &rule.system {
            Some(system) => {
                let cs = self.code_system(system, rule.version.as_deref());
                if rule.concepts.is_empty() {
                    let cs = cs.ok_or_else(|| TerminologyError::UnknownCodeSystem { url: system.clone() })?;
                    if cs.content == "not-present" {
                        return Err(TerminologyError::UnknownCodeSystem { url: system.clone() });
                    }
                    let selected = select(&cs, &rule.filters)?;
                    selected.into_iter().map(|i| member_of(&cs, i)).collect()
                } else {
                    // Enumerated codes: the system's own display when it is loaded, else the
                    // value set's.
                    let system_url: Arc<str> = Arc::from(cs.as_ref().map_or(system.as_str(), |c| c.url.as_str()));
                    rule.concepts
                        .iter()
                        .map(|(code, display, designations)| {
                            match cs.as_ref().and_then(|c| c.index_of(code).map(|i| (c, i))) {
                                Some((c, i)) => {
                                    let mut m = member_of(c, i);
                                    if let Some(d) = display {
                                        m.display = Some(d.clone());
                                    }
                                    m.designations.extend(designations.iter().cloned());
                                    m
                                }
                                None => Member {
                                    system: system_url.clone(),
                                    version: rule.version.as_deref().map(Arc::from),
                                    code: code.clone(),
                                    display: display.clone(),
                                    designations: designations.clone(),
                                    search: search_text(code, display.as_deref(), designations),
                                    is_abstract: false,
                                    inactive: false,
                                },
                            }
                        })
                        .collect()
                }
            }
            None => match sets.first() {
                Some(first) => first.members.clone(),
                None => {
                    return Err(TerminologyError::Invalid(
                        "a compose.include names neither a system nor a valueSet".into(),
                    ));
                }
            },
        };
        for set in &sets {
            members.retain(|m| set.get(&m.system, &m.code).is_some());
        }
        Ok(members)
    }

    /// `$expand`: the value set with its expansion page (ValueSet JSON, without
    /// `expansion.timestamp`, which the caller sets).
    pub fn expand(&self, url: &str, version: Option<&str>, params: &ExpandParams) -> Result<Value, TerminologyError> {
        let vs =
            self.value_set(url, version).ok_or_else(|| TerminologyError::UnknownValueSet { url: url.to_string() })?;
        let expansion = self.expansion(url, version)?;
        Ok(render(&vs, &expansion, params))
    }
}

/// The `$expand` answer for an expansion.
pub fn render(vs: &ValueSet, expansion: &Expansion, params: &ExpandParams) -> Value {
    let words: Vec<String> = params
        .filter
        .as_deref()
        .map(fhir::normalize::normalize_string)
        .unwrap_or_default()
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let count = params.count.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let language = params.display_language.as_deref();
    let mut total = 0usize;
    let mut contains: Vec<Value> = Vec::new();
    for m in &expansion.members {
        if params.active_only && m.inactive {
            continue;
        }
        if !words.iter().all(|w| m.search.contains(w.as_str())) {
            continue;
        }
        total += 1;
        if total <= params.offset || contains.len() >= count {
            continue;
        }
        let mut item = json!({"system": &*m.system, "code": m.code});
        put(&mut item, "version", m.version.as_deref());
        put(&mut item, "display", m.display_in(language));
        if m.is_abstract {
            item["abstract"] = json!(true);
        }
        if m.inactive {
            item["inactive"] = json!(true);
        }
        if params.include_designations && !m.designations.is_empty() {
            item["designation"] = Value::Array(m.designations.iter().map(designation_json).collect());
        }
        contains.push(item);
    }
    let mut parameters = Vec::new();
    if let Some(f) = &params.filter {
        parameters.push(json!({"name": "filter", "valueString": f}));
    }
    parameters.push(json!({"name": "offset", "valueInteger": params.offset}));
    parameters.push(json!({"name": "count", "valueInteger": count}));
    if let Some(l) = language {
        parameters.push(json!({"name": "displayLanguage", "valueCode": l}));
    }
    if params.include_designations {
        parameters.push(json!({"name": "includeDesignations", "valueBoolean": true}));
    }
    let mut out = json!({"resourceType": "ValueSet"});
    put(&mut out, "id", vs.resource_id.as_deref());
    out["url"] = json!(vs.url);
    put(&mut out, "version", vs.version.as_deref());
    put(&mut out, "name", vs.name.as_deref());
    put(&mut out, "title", vs.title.as_deref());
    out["status"] = json!("active");
    out["expansion"] = json!({
        "total": total,
        "offset": params.offset,
        "parameter": parameters,
        "contains": contains,
    });
    out
}

pub(crate) fn designation_json(d: &Designation) -> Value {
    let mut v = json!({});
    put(&mut v, "language", d.language.as_deref());
    if let Some(u) = &d.use_code {
        v["use"] = json!({"code": u});
    }
    v["value"] = json!(d.value);
    v
}

fn member_of(cs: &CodeSystem, i: u32) -> Member {
    let c = &cs.concepts[i as usize];
    Member {
        system: Arc::from(cs.url.as_str()),
        version: cs.version.as_deref().map(Arc::from),
        code: c.code.clone(),
        display: c.display.clone(),
        designations: c.designations.clone(),
        search: c.search.clone(),
        is_abstract: c.is_abstract(),
        inactive: c.is_inactive(),
    }
}

/// The concepts of `cs` every filter selects (all of them without filters), in system order.
fn select(cs: &CodeSystem, filters: &[Filter]) -> Result<Vec<u32>, TerminologyError> {
    let mut selected: Option<HashSet<u32>> = None;
    for f in filters {
        let root = |value: &str| {
            cs.index_of(value)
                .ok_or_else(|| TerminologyError::UnknownCode { system: cs.url.clone(), code: value.into() })
        };
        let hierarchy = matches!(f.property.as_str(), "concept" | "code" | "parent" | "child");
        let these: HashSet<u32> = match f.op.as_str() {
            "is-a" if hierarchy => cs.descendants_and_self(root(&f.value)?).into_iter().collect(),
            "descendent-of" if hierarchy => {
                let r = root(&f.value)?;
                cs.descendants_and_self(r).into_iter().filter(|i| *i != r).collect()
            }
            "is-not-a" if hierarchy => {
                let below: HashSet<u32> = cs.descendants_and_self(root(&f.value)?).into_iter().collect();
                (0..cs.concepts.len() as u32).filter(|i| !below.contains(i)).collect()
            }
            "generalizes" if hierarchy => {
                let r = root(&f.value)?;
                (0..cs.concepts.len() as u32).filter(|i| cs.subsumes(*i, r)).collect()
            }
            "=" | "in" => {
                let values: Vec<&str> =
                    if f.op == "in" { f.value.split(',').map(str::trim).collect() } else { vec![f.value.as_str()] };
                (0..cs.concepts.len() as u32)
                    .filter(|i| property_values(cs, *i, &f.property).iter().any(|v| values.contains(&v.as_str())))
                    .collect()
            }
            "exists" => {
                let want = f.value != "false";
                (0..cs.concepts.len() as u32)
                    .filter(|i| property_values(cs, *i, &f.property).is_empty() != want)
                    .collect()
            }
            op => {
                return Err(TerminologyError::Invalid(format!(
                    "filter '{} {op} {}' on {} is not supported (supported: is-a, descendent-of, is-not-a, generalizes on the concept hierarchy; =, in, exists on properties)",
                    f.property, f.value, cs.url
                )));
            }
        };
        selected = Some(match selected {
            None => these,
            Some(prev) => prev.intersection(&these).copied().collect(),
        });
    }
    Ok(match selected {
        None => (0..cs.concepts.len() as u32).collect(),
        Some(set) => {
            let mut v: Vec<u32> = set.into_iter().collect();
            v.sort_unstable();
            v
        }
    })
}

/// The values of property `name` of concept `i` (`code`/`concept` is the code itself, `display`
/// its display, `parent`/`child` the codes linked in the hierarchy).
fn property_values(cs: &CodeSystem, i: u32, name: &str) -> Vec<String> {
    let c = &cs.concepts[i as usize];
    match name {
        "code" | "concept" => vec![c.code.clone()],
        "display" => c.display.iter().cloned().collect(),
        "parent" => c.parents.iter().map(|p| cs.concepts[*p as usize].code.clone()).collect(),
        "child" => c.children.iter().map(|p| cs.concepts[*p as usize].code.clone()).collect(),
        _ => c.properties.iter().filter(|p| p.code == name).filter_map(|p| p.as_text()).collect(),
    }
}
