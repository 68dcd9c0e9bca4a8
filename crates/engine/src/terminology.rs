//! The FHIR terminology operations: `CodeSystem/$lookup`, `CodeSystem/$validate-code`,
//! `ValueSet/$expand`, `ValueSet/$validate-code` and `ConceptMap/$translate`, at type and
//! instance level, from query parameters (GET) or a Parameters body (POST).
//!
//! The content is the `terminology` crate's preloaded set (official R4, national code systems,
//! ICD-10) with a layer on top holding CodeSystems, ValueSets and ConceptMaps stored through the
//! FHIR API: when an operation names a URL the layer does not know, the store is searched by
//! `url` (a CodeSystem also by `identifier`, for `urn:oid:` names) and what it finds is added, so
//! each URL is read once. The layer is dropped whenever this process writes one of those types
//! (`Engine::commit_checked`); another process's writes are seen once this one writes or restarts.
//!
//! Access: terminology holds no personal data, so any caller whose scopes allow reading the
//! operation's resource type and whose role may read shared reference data may use it (the
//! policy decides: auditors may not); every call is audited like a read, in queued mode, with no
//! patients.

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

use fhir::IssueType;
use serde_json::{Value, json};
use store::Ctx;
use terminology::{Coding, ExpandParams, Resource, Terminology, TerminologyError};

use crate::crud::body_json;
use crate::{Engine, EngineError, EngineResult, RequestOptions};

/// The resource types whose writes change terminology content.
pub(crate) const TERMINOLOGY_TYPES: &[&str] = &["CodeSystem", "ValueSet", "ConceptMap"];

/// Stored terminology resources over the preloaded content, and the URLs already looked for in
/// the store.
#[derive(Default)]
pub(crate) struct TerminologyLayer {
    state: OnceLock<RwLock<(Terminology, HashSet<String>)>>,
}

impl TerminologyLayer {
    fn state(&self) -> &RwLock<(Terminology, HashSet<String>)> {
        self.state.get_or_init(|| RwLock::new((Terminology::layered(Terminology::preloaded()), HashSet::new())))
    }

    /// Forgets the stored resources (after a write of a terminology type).
    pub(crate) fn clear(&self) {
        if let Some(state) = self.state.get()
            && let Ok(mut s) = state.write()
        {
            *s = (Terminology::layered(Terminology::preloaded()), HashSet::new());
        }
    }
}

/// What the store is searched for when a URL is unknown.
enum Missing {
    CodeSystem(String),
    ValueSet(String),
    ConceptMap(String),
}

fn missing(e: &TerminologyError) -> Option<Missing> {
    match e {
        TerminologyError::UnknownCodeSystem { url } => Some(Missing::CodeSystem(url.clone())),
        TerminologyError::UnknownValueSet { url } => Some(match url.strip_suffix("?vs") {
            Some(system) => Missing::CodeSystem(system.to_string()),
            None => Missing::ValueSet(url.clone()),
        }),
        TerminologyError::UnknownConceptMap { url } => Some(Missing::ConceptMap(url.clone())),
        _ => None,
    }
}

fn to_engine_error(e: TerminologyError) -> EngineError {
    match e {
        TerminologyError::Invalid(m) => EngineError::bad_request(IssueType::Invalid, m),
        TerminologyError::TooCostly(m) => EngineError::TooCostly(m),
        other => EngineError::NotFoundExplained(other.to_string()),
    }
}

/// An operation's parameters, from the query string or a Parameters resource: each a string
/// (primitive) or a JSON value (Coding, CodeableConcept, resource).
struct OpParams {
    operation: &'static str,
    values: Vec<(String, Value)>,
}

impl OpParams {
    fn new(
        operation: &'static str,
        query: &[(String, String)],
        body: Option<Value>,
        allowed: &str,
    ) -> EngineResult<OpParams> {
        let mut values: Vec<(String, Value)> =
            query.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        if let Some(body) = body {
            if body["resourceType"] != "Parameters" {
                return Err(bad(format!("${operation} takes a Parameters resource in a POST body")));
            }
            for p in body["parameter"].as_array().into_iter().flatten() {
                let Some(name) = p["name"].as_str() else {
                    return Err(bad(format!("${operation}: a parameter without a name")));
                };
                let value = p
                    .as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value") || *k == "resource"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Null);
                values.push((name.to_string(), value));
            }
        }
        for (name, _) in &values {
            if !allowed.split(' ').any(|a| a == name) {
                return Err(bad(format!(
                    "${operation} has no parameter '{name}' here (supported: {})",
                    allowed.replace(' ', ", ")
                )));
            }
        }
        Ok(OpParams { operation, values })
    }

    fn value(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn text(&self, name: &str) -> EngineResult<Option<String>> {
        Ok(match self.value(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(bad(format!("${}: the parameter '{name}' must be a primitive value", self.operation)));
            }
        })
    }

    fn number(&self, name: &str) -> EngineResult<Option<usize>> {
        match self.text(name)? {
            None => Ok(None),
            Some(t) => t
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("${}: '{name}' must be a whole number ≥ 0, not '{t}'", self.operation))),
        }
    }

    fn flag(&self, name: &str) -> EngineResult<bool> {
        match self.text(name)?.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(bad(format!("${}: '{name}' must be true or false, not '{other}'", self.operation))),
        }
    }

    /// A Coding: JSON in a Parameters body, `system|code` in a query string.
    fn coding(&self, name: &str) -> EngineResult<Option<Coding>> {
        match self.value(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(match s.split_once('|') {
                Some((system, code)) => Coding {
                    system: (!system.is_empty()).then(|| system.to_string()),
                    code: code.to_string(),
                    ..Coding::default()
                },
                None => Coding { code: s.clone(), ..Coding::default() },
            })),
            Some(v) => Coding::from_json(v)
                .map(Some)
                .ok_or_else(|| bad(format!("${}: the Coding in '{name}' has no code", self.operation))),
        }
    }

    /// The codings to check: `code` (+`system`, `version`, `display`), `coding`, or the codings
    /// of `codeableConcept`.
    fn codings(&self, system_version: &str) -> EngineResult<Vec<Coding>> {
        if let Some(code) = self.text("code")? {
            return Ok(vec![Coding {
                system: self.text("system")?,
                version: self.text(system_version)?,
                code,
                display: self.text("display")?,
            }]);
        }
        if let Some(mut c) = self.coding("coding")? {
            if c.display.is_none() {
                c.display = self.text("display")?;
            }
            return Ok(vec![c]);
        }
        match self.value("codeableConcept") {
            Some(Value::Object(cc)) => Ok(cc
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Coding::from_json)
                .collect()),
            Some(_) => Err(bad(format!(
                "${}: codeableConcept must be a CodeableConcept (POST it in a Parameters body)",
                self.operation
            ))),
            None => Ok(Vec::new()),
        }
    }
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::bad_request(IssueType::Invalid, message)
}

impl Engine {
    /// One terminology operation (`lookup`, `validate-code`, `expand`, `translate`, without the
    /// `$`) on `CodeSystem`, `ValueSet` or `ConceptMap`, at type level (`id` None) or on a
    /// stored instance. `body` is the POSTed Parameters resource, if any.
    pub async fn terminology_operation(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: Option<&str>,
        operation: &str,
        query: &[(String, String)],
        body: Option<Value>,
    ) -> EngineResult<Value> {
        let entity = match id {
            Some(id) => format!("{resource_type}/{id}/${operation}"),
            None => format!("{resource_type}/${operation}"),
        };
        self.authorize_reference_read(ctx, resource_type, &entity).await?;
        // The stored instance, by its URL and version (added to the layer if it is not the
        // resource the layer holds for that URL).
        let instance = match id {
            Some(id) => Some(self.terminology_instance(ctx, resource_type, id).await?),
            None => None,
        };
        match (resource_type, operation) {
            ("CodeSystem", "lookup") => {
                if instance.is_some() {
                    return Err(bad("$lookup is a type-level operation: GET CodeSystem/$lookup?system=…&code=…"));
                }
                let p =
                    OpParams::new("lookup", query, body, "system code version coding date displayLanguage property")?;
                let coding = match p.coding("coding")? {
                    Some(c) => c,
                    None => Coding {
                        system: p.text("system")?,
                        code: p.text("code")?.unwrap_or_default(),
                        ..Coding::default()
                    },
                };
                let (Some(system), false) = (coding.system.clone(), coding.code.is_empty()) else {
                    return Err(bad("$lookup needs system and code (or a coding with both)"));
                };
                let version = p.text("version")?;
                let language = p.text("displayLanguage")?;
                self.with_terminology(|t| t.lookup(&system, version.as_deref(), &coding.code, language.as_deref()))
                    .await
            }
            ("CodeSystem", "validate-code") => {
                let p = OpParams::new(
                    "validate-code",
                    query,
                    body,
                    "url system codeSystem code version display coding codeableConcept date abstract displayLanguage",
                )?;
                if p.value("codeSystem").is_some() {
                    return Err(EngineError::NotSupported(
                        "$validate-code with an inline codeSystem (store the CodeSystem first, then name its url)"
                            .into(),
                    ));
                }
                let (system, version) = match &instance {
                    Some((url, version)) => (url.clone(), version.clone()),
                    None => (
                        p.text("url")?.or(p.text("system").ok().flatten()).ok_or_else(|| {
                            bad("CodeSystem/$validate-code needs url (the code system) or a CodeSystem id in the path")
                        })?,
                        p.text("version")?,
                    ),
                };
                let mut codings = p.codings("version")?;
                if codings.is_empty() {
                    return Err(bad("$validate-code needs a code, a coding or a codeableConcept"));
                }
                for c in &mut codings {
                    c.version = version.clone();
                }
                let language = p.text("displayLanguage")?;
                let result = self
                    .with_terminology(|t| {
                        // A codeableConcept is valid when one of its codings of this system is.
                        let mut last = None;
                        for c in &codings {
                            let v = t.validate_in_system(&system, c, language.as_deref())?;
                            if v.result {
                                return Ok(v);
                            }
                            last = Some(v);
                        }
                        Ok(last.expect("at least one coding"))
                    })
                    .await?;
                Ok(result.to_parameters())
            }
            ("ValueSet", "validate-code") => {
                let p = OpParams::new(
                    "validate-code",
                    query,
                    body,
                    "url valueSetVersion valueSet context code system systemVersion display coding codeableConcept date abstract displayLanguage",
                )?;
                if p.value("valueSet").is_some() {
                    return Err(EngineError::NotSupported(
                        "$validate-code with an inline valueSet (store the ValueSet first, then name its url or id)"
                            .into(),
                    ));
                }
                let (url, version) = self.value_set_target(&p, &instance)?;
                let codings = p.codings("systemVersion")?;
                let language = p.text("displayLanguage")?;
                let result = self
                    .with_terminology(|t| {
                        t.validate_in_value_set(&url, version.as_deref(), &codings, language.as_deref())
                    })
                    .await?;
                Ok(result.to_parameters())
            }
            ("ValueSet", "expand") => {
                let p = OpParams::new(
                    "expand",
                    query,
                    body,
                    "url valueSetVersion valueSet context filter date offset count includeDesignations displayLanguage activeOnly includeDefinition excludeNested",
                )?;
                let params = ExpandParams {
                    filter: p.text("filter")?,
                    offset: p.number("offset")?.unwrap_or(0),
                    count: p.number("count")?,
                    include_designations: p.flag("includeDesignations")?,
                    display_language: p.text("displayLanguage")?,
                    active_only: p.flag("activeOnly")?,
                };
                let mut expanded = match p.value("valueSet") {
                    Some(inline @ Value::Object(_)) => {
                        let vs = terminology::ValueSet::from_json(inline).map_err(to_engine_error)?;
                        self.with_terminology(|t| Ok(terminology::render(&vs, &t.expand_value_set(&vs)?, &params)))
                            .await?
                    }
                    _ => {
                        let (url, version) = self.value_set_target(&p, &instance)?;
                        self.with_terminology(|t| t.expand(&url, version.as_deref(), &params)).await?
                    }
                };
                expanded["expansion"]["identifier"] = json!(format!("urn:uuid:{}", uuid::Uuid::new_v4()));
                expanded["expansion"]["timestamp"] = json!(fhir::normalize::format_instant(crate::crud::now_ms()));
                Ok(expanded)
            }
            ("ConceptMap", "translate") => {
                let p = OpParams::new(
                    "translate",
                    query,
                    body,
                    "url conceptMap conceptMapVersion code system version source coding codeableConcept target targetsystem dependency reverse",
                )?;
                if p.flag("reverse")? {
                    return Err(EngineError::NotSupported("$translate with reverse=true".into()));
                }
                let (map, map_version) = match &instance {
                    Some((url, version)) => (Some(url.clone()), version.clone()),
                    None => (p.text("url")?, p.text("conceptMapVersion")?),
                };
                let codings = p.codings("version")?;
                let Some(coding) = codings.into_iter().next() else {
                    return Err(bad("$translate needs code and system, a coding or a codeableConcept"));
                };
                let target = p.text("targetsystem")?;
                let target_vs = p.text("target")?;
                self.with_terminology(|t| {
                    let mut out = t.translate(map.as_deref(), map_version.as_deref(), &coding, target.as_deref())?;
                    if let Some(vs) = &target_vs {
                        // Keep the matches whose concept is in the target value set.
                        let expansion = t.expansion(vs, None)?;
                        if let Some(params) = out["parameter"].as_array_mut() {
                            params.retain(|m| {
                                m["name"] != "match"
                                    || m["part"].as_array().into_iter().flatten().any(|part| {
                                        part["name"] == "concept"
                                            && expansion
                                                .get(
                                                    part["valueCoding"]["system"].as_str().unwrap_or_default(),
                                                    part["valueCoding"]["code"].as_str().unwrap_or_default(),
                                                )
                                                .is_some()
                                    })
                            });
                        }
                    }
                    Ok(out)
                })
                .await
            }
            (t, op) => Err(EngineError::NotFoundExplained(format!(
                "{t}/${op} is not an operation of this server (terminology: CodeSystem/$lookup, CodeSystem/$validate-code, ValueSet/$expand, ValueSet/$validate-code, ConceptMap/$translate)"
            ))),
        }
    }

    /// The value set an operation is about: the instance, or `url` (+`valueSetVersion`).
    fn value_set_target(
        &self,
        p: &OpParams,
        instance: &Option<(String, Option<String>)>,
    ) -> EngineResult<(String, Option<String>)> {
        match instance {
            Some((url, version)) => Ok((url.clone(), version.clone())),
            None => Ok((
                p.text("url")?.ok_or_else(|| {
                    bad(format!(
                        "ValueSet/${} needs url (the value set), a ValueSet id in the path, or a valueSet",
                        p.operation
                    ))
                })?,
                p.text("valueSetVersion")?,
            )),
        }
    }

    /// Reads a stored CodeSystem/ValueSet/ConceptMap and makes sure the layer answers for its
    /// URL with it; its (url, version).
    async fn terminology_instance(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: &str,
    ) -> EngineResult<(String, Option<String>)> {
        let stored = match self.store.read(ctx, resource_type, id).await? {
            Some(r) if r.deleted => return Err(EngineError::Gone(format!("{resource_type}/{id}"))),
            Some(r) => r,
            None => return Err(EngineError::NotFound(format!("{resource_type}/{id}"))),
        };
        let doc = body_json(&stored);
        let resource = Resource::from_json(&doc).map_err(to_engine_error)?;
        let url = doc["url"].as_str().unwrap_or_default().to_string();
        let version = doc["version"].as_str().map(str::to_string);
        let state = self.terminology.state();
        let held = {
            let s = state.read().map_err(|_| poisoned())?;
            match &resource {
                Resource::CodeSystem(_) => {
                    s.0.code_system(&url, version.as_deref()).and_then(|c| c.resource_id.clone())
                }
                Resource::ValueSet(_) => s.0.value_set(&url, version.as_deref()).and_then(|c| c.resource_id.clone()),
                Resource::ConceptMap(_) => {
                    s.0.concept_map(&url, version.as_deref()).and_then(|c| c.resource_id.clone())
                }
            }
        };
        if held.as_deref() != Some(id) {
            state.write().map_err(|_| poisoned())?.0.add(resource);
        }
        Ok((url, version))
    }

    /// Runs `f` over the terminology; when it names a URL the layer does not hold, looks for it
    /// in the store once, adds what it finds and runs `f` again.
    async fn with_terminology<T>(&self, f: impl Fn(&Terminology) -> Result<T, TerminologyError>) -> EngineResult<T> {
        let state = self.terminology.state();
        loop {
            let result = f(&state.read().map_err(|_| poisoned())?.0);
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(want) = missing(&error) else { return Err(to_engine_error(error)) };
            let (resource_type, param, url) = match &want {
                Missing::CodeSystem(u) if u.starts_with("urn:") => ("CodeSystem", "identifier", u),
                Missing::CodeSystem(u) => ("CodeSystem", "url", u),
                Missing::ValueSet(u) => ("ValueSet", "url", u),
                Missing::ConceptMap(u) => ("ConceptMap", "url", u),
            };
            let key = format!("{resource_type} {url}");
            if !state.write().map_err(|_| poisoned())?.1.insert(key) {
                return Err(to_engine_error(error));
            }
            let pairs = [
                (param.to_string(), terminology::model::strip_version(url).to_string()),
                ("_count".to_string(), "100".to_string()),
            ];
            let bundle = self.search(&Ctx::system(), Some(resource_type), &pairs, &RequestOptions::default()).await?;
            let mut found: Vec<Resource> = Vec::new();
            for e in bundle["entry"].as_array().into_iter().flatten() {
                match Resource::from_json(&e["resource"]) {
                    Ok(r) => found.push(r),
                    Err(e) => tracing::warn!(error = %e, "a stored terminology resource does not load"),
                }
            }
            let mut s = state.write().map_err(|_| poisoned())?;
            for r in found {
                s.0.add(r);
            }
        }
    }
}

/// The terminology operations a resource type offers, as CapabilityStatement entries.
pub(crate) fn capability_operations(resource_type: &str) -> Option<Value> {
    let ops: &[&str] = match resource_type {
        "CodeSystem" => &["lookup", "validate-code"],
        "ValueSet" => &["expand", "validate-code"],
        "ConceptMap" => &["translate"],
        _ => return None,
    };
    Some(Value::Array(
        ops.iter()
            .map(|op| {
                json!({"name": op, "definition": format!("http://hl7.org/fhir/OperationDefinition/{resource_type}-{op}")})
            })
            .collect(),
    ))
}

fn poisoned() -> EngineError {
    EngineError::Store(store::StoreError::Backend("the terminology layer's lock is poisoned".into()))
}
