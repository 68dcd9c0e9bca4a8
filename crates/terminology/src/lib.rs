//! The terminology service's model (FHIR R4 terminology operations without HTTP or storage):
//! CodeSystems, ValueSets and ConceptMaps held in memory and indexed, with the pure logic of
//! `$lookup`, `$validate-code`, `$expand` and `$translate`. The engine (`engine/src/terminology.rs`)
//! parses the operations' parameters, adds resources from the FHIR store and audits.
//!
//! Content ([`Terminology::preloaded`], built once per process):
//! - every CodeSystem, ValueSet and ConceptMap of the official R4 package (`fhir::definitions::R4_PACKAGE`);
//! - Chinese national code systems authored in `data/*.json` (GB/T 2261.1 sex, GB/T 2261.2
//!   marital status, GB/T 3304 ethnic groups, WS 364 CV02.01.101 ID document type) and a
//!   ConceptMap from GB/T 2261.1 to FHIR administrative gender (sources in `data/README.md`);
//! - WHO ICD-10 (2019) from `data/icd10-who-2019.tsv.gz` (`scripts/fetch-icd10.sh`),
//!   system `http://hl7.org/fhir/sid/icd-10`, with its chapter/block/category hierarchy.
//!
//! A [`Terminology`] may sit on a parent (the engine keeps the stored resources in a layer over
//! the preloaded content), and a system is found by its canonical URL or by any `urn:oid:`
//! identifier it declares. Code systems that are not freely published (national clinical
//! ICD-10 edition, ICD-9-CM-3, drug catalogues) are loaded from CSV by [`csv::code_system_from_csv`]:
//!
//! ```text
//! code,display,parent,designation:en,<property>,...
//! A00,霍乱,,Cholera,...
//! A00.0,古典生物型霍乱,A00,"Cholera due to Vibrio cholerae 01, biovar cholerae",...
//! ```
//!
//! The first row names the columns: `code` and `display` are required and come first; `parent`
//! (the parent code, building the is-a hierarchy) is optional; `designation:LANG` columns become
//! designations in that language; any other column becomes a string property of that name.

pub mod csv;
mod expand;
pub mod model;
mod ops;
mod preload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use expand::{ExpandParams, Expansion, MAX_PAGE, Member, render};
pub use model::{CodeSystem, Concept, ConceptMap, Designation, Resource, ValueSet};
pub use ops::{Coding, Validation};

/// The canonical URL of WHO ICD-10.
pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";
/// The value set of every ICD-10 code (also reachable as `http://hl7.org/fhir/sid/icd-10?vs`).
pub const ICD10_VALUE_SET: &str = "http://hutong.health/fhir/ValueSet/icd-10";
/// Where the platform's own code systems live.
pub const HUTONG_CODE_SYSTEMS: &str = "http://hutong.health/fhir/CodeSystem/";

/// Errors of the terminology operations. The engine maps them to HTTP statuses: `Invalid` 400,
/// the three `Unknown…` and `UnknownCode` 404, `TooCostly` 400 (`too-costly`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TerminologyError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the code system {url} is not known to this server; check the URL (the urn:oid: form is accepted too) or load it as a CodeSystem resource"
    )]
    UnknownCodeSystem { url: String },
    #[error("the value set {url} is not known to this server; check the URL or create it as a ValueSet resource")]
    UnknownValueSet { url: String },
    #[error("the concept map {url} is not known to this server; check the URL or create it as a ConceptMap resource")]
    UnknownConceptMap { url: String },
    #[error("the code '{code}' is not in the code system {system}")]
    UnknownCode { system: String, code: String },
    #[error("{0}")]
    TooCostly(String),
}

/// Most members an expansion may hold (a larger one would be too costly to compute and hold).
pub const MAX_EXPANSION: usize = 100_000;

/// A set of code systems, value sets and concept maps, possibly layered over a parent.
#[derive(Default)]
pub struct Terminology {
    parent: Option<Arc<Terminology>>,
    code_systems: HashMap<String, Vec<Arc<CodeSystem>>>,
    value_sets: HashMap<String, Vec<Arc<ValueSet>>>,
    concept_maps: HashMap<String, Vec<Arc<ConceptMap>>>,
    /// Other names of a code system (`urn:oid:…`) → its canonical URL.
    aliases: HashMap<String, String>,
    /// Value set URL declared by a code system (`CodeSystem.valueSet`) → the system's URL.
    system_value_sets: HashMap<String, String>,
    /// Computed expansions, by `url|version`.
    expansions: Mutex<HashMap<String, Arc<Expansion>>>,
}

/// How many resources of each kind a terminology holds (its own, without the parent's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub code_systems: usize,
    pub value_sets: usize,
    pub concept_maps: usize,
}

impl Terminology {
    /// An empty terminology over `parent` (whose content it sees but never changes).
    pub fn layered(parent: Arc<Terminology>) -> Terminology {
        Terminology { parent: Some(parent), ..Terminology::default() }
    }

    /// The preloaded content (official R4, national code systems, ICD-10), built on first use.
    pub fn preloaded() -> Arc<Terminology> {
        static PRELOADED: OnceLock<Arc<Terminology>> = OnceLock::new();
        PRELOADED.get_or_init(|| Arc::new(preload::build())).clone()
    }

    /// Adds a resource (a later version of the same URL is preferred when no version is asked).
    pub fn add(&mut self, resource: Resource) {
        if let Ok(mut cache) = self.expansions.lock() {
            cache.clear();
        }
        match resource {
            Resource::CodeSystem(cs) => {
                for id in &cs.identifiers {
                    if id != &cs.url {
                        self.aliases.insert(id.clone(), cs.url.clone());
                    }
                }
                if let Some(vs) = &cs.value_set {
                    self.system_value_sets.insert(vs.clone(), cs.url.clone());
                }
                self.code_systems.entry(cs.url.clone()).or_default().push(cs);
            }
            Resource::ValueSet(vs) => self.value_sets.entry(vs.url.clone()).or_default().push(vs),
            Resource::ConceptMap(cm) => self.concept_maps.entry(cm.url.clone()).or_default().push(cm),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            code_systems: self.code_systems.len(),
            value_sets: self.value_sets.len(),
            concept_maps: self.concept_maps.len(),
        }
    }

    /// The canonical URL of a system named by its URL or one of its identifiers (`urn:oid:…`).
    pub fn canonical_system<'a>(&'a self, system: &'a str) -> &'a str {
        let system = model::strip_version(system);
        if let Some(url) = self.aliases.get(system) {
            return url;
        }
        match &self.parent {
            Some(p) => p.canonical_system(system),
            None => system,
        }
    }

    /// The code system (any of its names), in `version` or the latest loaded.
    pub fn code_system(&self, system: &str, version: Option<&str>) -> Option<Arc<CodeSystem>> {
        let url = self.canonical_system(system);
        if let Some(found) = pick(self.code_systems.get(url), version, |c| c.version.as_deref()) {
            return Some(found);
        }
        self.parent.as_ref()?.code_system(url, version)
    }

    /// The value set at `url` (`url|version` accepted). Also `{system}?vs` (every code of a
    /// known system) and the `CodeSystem.valueSet` of a known system.
    pub fn value_set(&self, url: &str, version: Option<&str>) -> Option<Arc<ValueSet>> {
        let (url, version) = split_canonical(url, version);
        if let Some(found) = pick(self.value_sets.get(url), version, |v| v.version.as_deref()) {
            return Some(found);
        }
        if let Some(found) = self.parent.as_ref().and_then(|p| p.value_set(url, version)) {
            return Some(found);
        }
        let system = match url.strip_suffix("?vs") {
            Some(system) => self.code_system(system, None)?.url.clone(),
            None => self.system_value_sets.get(url)?.clone(),
        };
        let cs = self.code_system(&system, None)?;
        Some(Arc::new(ValueSet::whole_system(url, &system, Some(format!("All codes of {}", cs.label())))))
    }

    pub fn concept_map(&self, url: &str, version: Option<&str>) -> Option<Arc<ConceptMap>> {
        let (url, version) = split_canonical(url, version);
        if let Some(found) = pick(self.concept_maps.get(url), version, |m| m.version.as_deref()) {
            return Some(found);
        }
        self.parent.as_ref()?.concept_map(url, version)
    }

    /// Every concept map (this layer's and the parent's), latest version of each URL.
    pub fn all_concept_maps(&self) -> Vec<Arc<ConceptMap>> {
        let mut out: Vec<Arc<ConceptMap>> = self.concept_maps.values().filter_map(|v| v.last().cloned()).collect();
        if let Some(p) = &self.parent {
            out.extend(p.all_concept_maps().into_iter().filter(|m| !self.concept_maps.contains_key(&m.url)));
        }
        out
    }

    /// Whether this terminology (or its parent) holds a value set with this URL.
    pub fn has_value_set(&self, url: &str) -> bool {
        self.value_set(url, None).is_some()
    }
}

fn split_canonical<'a>(url: &'a str, version: Option<&'a str>) -> (&'a str, Option<&'a str>) {
    match url.split_once('|') {
        Some((u, v)) if version.is_none() => (u, Some(v)),
        Some((u, _)) => (u, version),
        None => (url, version),
    }
}

fn pick<T>(
    items: Option<&Vec<Arc<T>>>,
    version: Option<&str>,
    version_of: impl Fn(&T) -> Option<&str>,
) -> Option<Arc<T>> {
    let items = items?;
    match version {
        Some(v) => items.iter().rev().find(|i| version_of(i) == Some(v)).cloned(),
        None => items.last().cloned(),
    }
}

#[cfg(test)]
mod tests;
