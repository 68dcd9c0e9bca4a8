//! `$lookup`, `$validate-code` and `$translate` over a [`Terminology`], answering with the
//! Parameters resources the R4 OperationDefinitions describe.

use serde_json::{Value, json};

use crate::expand::designation_json;
use crate::model::{CodeSystem, put};
use crate::{Terminology, TerminologyError};

/// A coding given to `$validate-code` or `$translate`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coding {
    pub system: Option<String>,
    pub version: Option<String>,
    pub code: String,
    pub display: Option<String>,
}

impl Coding {
    /// Reads a FHIR Coding (`None` without a code).
    pub fn from_json(v: &Value) -> Option<Coding> {
        Some(Coding {
            system: v["system"].as_str().map(str::to_string),
            version: v["version"].as_str().map(str::to_string),
            code: v["code"].as_str()?.to_string(),
            display: v["display"].as_str().map(str::to_string),
        })
    }
}

/// The result of `$validate-code`.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub result: bool,
    pub message: Option<String>,
    /// The code's display (in the asked language when a designation offers it).
    pub display: Option<String>,
}

impl Validation {
    fn no(message: String) -> Validation {
        Validation { result: false, message: Some(message), display: None }
    }

    pub fn to_parameters(&self) -> Value {
        let mut parameter = vec![json!({"name": "result", "valueBoolean": self.result})];
        if let Some(m) = &self.message {
            parameter.push(json!({"name": "message", "valueString": m}));
        }
        if let Some(d) = &self.display {
            parameter.push(json!({"name": "display", "valueString": d}));
        }
        json!({"resourceType": "Parameters", "parameter": parameter})
    }
}

/// Whether `given` is an acceptable display for a code: its display or a designation, compared
/// folded (case, accents and spacing do not matter).
fn display_matches(given: &str, display: Option<&str>, designations: &[crate::Designation]) -> bool {
    let given = fhir::normalize::normalize_string(given);
    display
        .into_iter()
        .chain(designations.iter().map(|d| d.value.as_str()))
        .any(|d| fhir::normalize::normalize_string(d) == given)
}

fn check_display(
    coding: &Coding,
    system: &str,
    display: Option<&str>,
    designations: &[crate::Designation],
    shown: Option<&str>,
) -> Validation {
    match &coding.display {
        Some(given) if !display_matches(given, display, designations) => Validation {
            result: false,
            message: Some(format!(
                "the display '{given}' is not a display of the code '{}' in {system}; expected '{}'",
                coding.code,
                shown.or(display).unwrap_or("")
            )),
            display: shown.or(display).map(str::to_string),
        },
        _ => Validation { result: true, message: None, display: shown.or(display).map(str::to_string) },
    }
}

impl Terminology {
    fn system_or_404(
        &self,
        system: &str,
        version: Option<&str>,
    ) -> Result<std::sync::Arc<CodeSystem>, TerminologyError> {
        match self.code_system(system, version) {
            Some(cs) => Ok(cs),
            None => match (version, self.code_system(system, None)) {
                (Some(v), Some(other)) => Err(TerminologyError::Invalid(format!(
                    "the code system {} has no version '{v}' here (loaded: {})",
                    other.url,
                    other.version.as_deref().unwrap_or("unversioned")
                ))),
                _ => Err(TerminologyError::UnknownCodeSystem { url: system.to_string() }),
            },
        }
    }

    /// `CodeSystem/$lookup`: name, version, display, definition, designations and properties
    /// (including `parent` and `child` codes from the hierarchy).
    pub fn lookup(
        &self,
        system: &str,
        version: Option<&str>,
        code: &str,
        display_language: Option<&str>,
    ) -> Result<Value, TerminologyError> {
        let cs = self.system_or_404(system, version)?;
        let concept = cs
            .concept(code)
            .ok_or_else(|| TerminologyError::UnknownCode { system: cs.url.clone(), code: code.to_string() })?;
        let mut parameter = vec![json!({"name": "name", "valueString": cs.name.as_deref().unwrap_or(cs.label())})];
        if let Some(v) = &cs.version {
            parameter.push(json!({"name": "version", "valueString": v}));
        }
        if let Some(d) = concept.display_in(display_language) {
            parameter.push(json!({"name": "display", "valueString": d}));
        }
        if let Some(d) = &concept.definition {
            parameter.push(json!({"name": "definition", "valueString": d}));
        }
        if concept.is_abstract() {
            parameter.push(json!({"name": "abstract", "valueBoolean": true}));
        }
        for d in &concept.designations {
            let mut part = Vec::new();
            if let Some(l) = &d.language {
                part.push(json!({"name": "language", "valueCode": l}));
            }
            if d.use_code.is_some() {
                part.push(json!({"name": "use", "valueCoding": designation_json(d)["use"]}));
            }
            part.push(json!({"name": "value", "valueString": d.value}));
            parameter.push(json!({"name": "designation", "part": part}));
        }
        let property = |code: &str, kind: &str, value: &Value| {
            json!({"name": "property", "part": [
                {"name": "code", "valueCode": code},
                {"name": "value", format!("value{kind}"): value},
            ]})
        };
        for p in &concept.parents {
            parameter.push(property("parent", "Code", &json!(cs.concepts[*p as usize].code)));
        }
        for c in &concept.children {
            parameter.push(property("child", "Code", &json!(cs.concepts[*c as usize].code)));
        }
        for p in concept.properties.iter().filter(|p| p.code != "parent" && p.code != "child") {
            parameter.push(property(&p.code, &p.kind, &p.value));
        }
        Ok(json!({"resourceType": "Parameters", "parameter": parameter}))
    }

    /// `CodeSystem/$validate-code`: is the code in the system (and the display one of its)?
    /// An unknown system is an error; an unknown code is `result: false` with a message.
    pub fn validate_in_system(
        &self,
        system: &str,
        coding: &Coding,
        display_language: Option<&str>,
    ) -> Result<Validation, TerminologyError> {
        let cs = self.system_or_404(system, coding.version.as_deref())?;
        if let Some(given) = coding.system.as_deref()
            && self.canonical_system(given) != cs.url
        {
            return Ok(Validation::no(format!(
                "the coding's system {given} is not the code system {} being validated against",
                cs.url
            )));
        }
        Ok(match cs.concept(&coding.code) {
            Some(c) => {
                check_display(coding, &cs.url, c.display.as_deref(), &c.designations, c.display_in(display_language))
            }
            None => Validation::no(format!("the code '{}' is not in the code system {}", coding.code, cs.url)),
        })
    }

    /// `ValueSet/$validate-code`: is one of the codings in the value set? A coding without a
    /// system matches a code of any system in the set.
    pub fn validate_in_value_set(
        &self,
        url: &str,
        version: Option<&str>,
        codings: &[Coding],
        display_language: Option<&str>,
    ) -> Result<Validation, TerminologyError> {
        if codings.is_empty() {
            return Err(TerminologyError::Invalid(
                "$validate-code needs a code (with system), a coding or a codeableConcept".into(),
            ));
        }
        let expansion = self.expansion(url, version)?;
        let mut messages = Vec::new();
        for coding in codings {
            let member = match coding.system.as_deref() {
                Some(system) => expansion.get(self.canonical_system(system), &coding.code),
                None => expansion.by_code(&coding.code).next(),
            };
            match member {
                Some(m) => {
                    let v = check_display(
                        coding,
                        &m.system,
                        m.display.as_deref(),
                        &m.designations,
                        m.display_in(display_language),
                    );
                    if v.result || codings.len() == 1 {
                        return Ok(v);
                    }
                    messages.extend(v.message);
                }
                None => messages.push(match &coding.system {
                    Some(system) => {
                        let why = match self.code_system(system, None) {
                            Some(cs) if cs.concept(&coding.code).is_none() => {
                                format!(" (it is not a code of {} at all)", cs.url)
                            }
                            _ => String::new(),
                        };
                        format!("the code '{}' of {system} is not in the value set {url}{why}", coding.code)
                    }
                    None => format!("the code '{}' (no system given) is not in the value set {url}", coding.code),
                }),
            }
        }
        Ok(Validation::no(messages.join("; ")))
    }

    /// `ConceptMap/$translate`: the targets of a code in one concept map (`map_url`) or in every
    /// map with a group from its system (to `target_system` when given).
    pub fn translate(
        &self,
        map_url: Option<&str>,
        map_version: Option<&str>,
        coding: &Coding,
        target_system: Option<&str>,
    ) -> Result<Value, TerminologyError> {
        let system = coding.system.as_deref().map(|s| self.canonical_system(s).to_string());
        let maps = match map_url {
            Some(url) => vec![
                self.concept_map(url, map_version)
                    .ok_or_else(|| TerminologyError::UnknownConceptMap { url: url.to_string() })?,
            ],
            None => {
                if system.is_none() {
                    return Err(TerminologyError::Invalid(
                        "$translate without a concept map (url or id) needs the source system".into(),
                    ));
                }
                self.all_concept_maps()
            }
        };
        let mut matches = Vec::new();
        for map in &maps {
            for group in &map.groups {
                if let (Some(s), Some(gs)) = (&system, &group.source)
                    && self.canonical_system(gs) != s
                {
                    continue;
                }
                if let (Some(t), Some(gt)) = (target_system, &group.target)
                    && self.canonical_system(gt) != self.canonical_system(t)
                {
                    continue;
                }
                let Some((_, targets)) = group.elements.get(&coding.code) else { continue };
                for t in targets {
                    let mut part = vec![json!({"name": "equivalence", "valueCode": t.equivalence})];
                    if let Some(code) = &t.code {
                        let mut concept = json!({"code": code});
                        put(&mut concept, "system", group.target.as_deref());
                        put(&mut concept, "version", group.target_version.as_deref());
                        put(&mut concept, "display", t.display.as_deref());
                        part.push(json!({"name": "concept", "valueCoding": concept}));
                    }
                    part.push(json!({"name": "source", "valueUri": map.url}));
                    matches.push((t.equivalence.clone(), json!({"name": "match", "part": part})));
                }
            }
        }
        let mapped = matches.iter().any(|(e, _)| !matches!(e.as_str(), "unmatched" | "disjoint"));
        let mut parameter = vec![json!({"name": "result", "valueBoolean": mapped})];
        if !mapped {
            let whence = match map_url {
                Some(url) => format!("the concept map {url}"),
                None => "any concept map".to_string(),
            };
            parameter.push(json!({"name": "message", "valueString": format!(
                "no mapping for the code '{}'{} in {whence}",
                coding.code,
                system.as_deref().map(|s| format!(" of {s}")).unwrap_or_default()
            )}));
        }
        parameter.extend(matches.into_iter().map(|(_, m)| m));
        Ok(json!({"resourceType": "Parameters", "parameter": parameter}))
    }
}
