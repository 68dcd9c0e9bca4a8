//! CDA R2 documents (WS/T 500-2016 shared documents and C-CDA), pure: parsing that refuses DTDs
//! and therefore every entity (no XXE, no billion laughs), header validation, the sections each
//! WS/T 500 document type requires (`data/wst500-sections.tsv`, by section LOINC code), and extraction into
//! one FHIR transaction Bundle: the document itself (`DocumentReference` + `Binary`), the patient
//! (conditional on its identifier), the encounter, diagnoses (`Condition`, ICD-10), measurements
//! (`Observation`) and medications (`MedicationStatement`), each linked to the document and
//! conditional on an identifier derived from the document id, so re-sending a document changes
//! nothing.

use serde_json::{Value, json};

/// The CDA namespace.
pub const V3: &str = "urn:hl7-org:v3";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Largest document accepted.
pub const MAX_BYTES: usize = 10 * 1024 * 1024;
/// Most XML nodes in a document (bounds memory for hostile input).
const MAX_NODES: u32 = 500_000;
/// Deepest element nesting accepted (a CDA document is about 20 levels deep). The XML parser
/// and the tree walks recurse per level, so an unbounded depth would exhaust the stack.
pub const MAX_DEPTH: usize = 256;

/// The deepest element nesting in `xml`, stopping once it exceeds `limit`: a scan of the markup
/// (comments, CDATA sections, processing instructions and declarations skipped; quoted
/// attribute values respected) that trusts nothing else about the text.
fn nesting_depth(xml: &str, limit: usize) -> usize {
    let b = xml.as_bytes();
    let skip_to = |from: usize, end: &[u8]| -> usize {
        b[from..].windows(end.len()).position(|w| w == end).map_or(b.len(), |p| from + p + end.len())
    };
    let (mut i, mut depth, mut deepest) = (0, 0usize, 0usize);
    while let Some(p) = b[i..].iter().position(|&c| c == b'<') {
        i += p;
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = skip_to(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            i = skip_to(i + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(i + 2, b">");
        } else {
            // A start tag: find its end outside quoted values; `/>` closes it at once.
            let mut j = i + 1;
            let mut quote = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (None, b'"' | b'\'') => quote = Some(b[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if !(j > i + 1 && b[j - 1] == b'/') {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return deepest;
                }
            }
            i = (j + 1).min(b.len());
        }
    }
    deepest
}
/// WS/T 500 document types (code, title).
pub const WST500_DOCUMENTS: &str = include_str!("../data/wst500-documents.tsv");
/// The code system of WS/T 500 document types (卫生信息共享文档编码体系).
pub const WST500_TYPE_SYSTEM: &str = "2.16.156.10011.2.4";
/// The sections of each WS/T 500 document type (type, section LOINC code or `-`, name,
/// required), written by `scripts/wst500-sections.py`; crates/cda/data/README.md says how the
/// required ones were chosen.
pub const WST500_SECTIONS: &str = include_str!("../data/wst500-sections.tsv");
/// LOINC, the code system of WS/T 500 section codes.
pub const LOINC: &str = "2.16.840.1.113883.6.1";

/// A section a WS/T 500 document type must carry, recognised by its LOINC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredSection {
    pub loinc: &'static str,
    pub name: &'static str,
}

/// The sections a WS/T 500 document of type `type_code` (`C0002`) must carry; none for any
/// other type.
pub fn wst500_required_sections(type_code: &str) -> Vec<RequiredSection> {
    WST500_SECTIONS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (ty, loinc, name, required) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            (ty == type_code && required == "yes" && loinc != "-").then_some(RequiredSection { loinc, name })
        })
        .collect()
}
/// Extension on extracted resources: the document they come from.
pub const SOURCE_DOCUMENT_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/source-document";

/// The C-CDA Problem Observation template.
const PROBLEM_TEMPLATE: &str = "2.16.840.1.113883.10.20.22.4.4";

/// Why a document is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum CdaError {
    /// Not well-formed XML, too large, or too deep/wide.
    Malformed(String),
    /// A DTD or entity declaration (refused outright).
    Forbidden(String),
    /// Well-formed but not a valid CDA document: every problem found.
    Invalid(Vec<String>),
}

impl std::fmt::Display for CdaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CdaError::Malformed(m) | CdaError::Forbidden(m) => f.write_str(m),
            CdaError::Invalid(problems) => f.write_str(&problems.join("; ")),
        }
    }
}

/// What a document says, as the extraction needs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub id_root: String,
    pub id_extension: String,
    pub type_code: String,
    pub type_system: String,
    pub type_display: String,
    pub title: String,
    /// FHIR dateTime.
    pub effective: String,
    pub patient_ids: Vec<(String, String)>,
    pub patient_name: Option<String>,
    pub gender: Option<String>,
    pub birth_date: Option<String>,
    pub author: Option<String>,
    pub custodian: Option<(String, String, String)>,
    pub encounter: Option<Encounter>,
    pub sections: Vec<String>,
    pub diagnoses: Vec<Coded>,
    pub observations: Vec<Measured>,
    pub medications: Vec<Medication>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Encounter {
    pub id: Option<(String, String)>,
    pub start: Option<String>,
    pub end: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Coded {
    pub system: String,
    pub code: String,
    pub display: Option<String>,
    pub time: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub code: Coded,
    pub value: MeasuredValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MeasuredValue {
    Quantity { value: String, unit: Option<String> },
    Text(String),
    Code(Coded),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Medication {
    pub drug: Option<Coded>,
    pub name: Option<String>,
    pub dose: Option<(String, Option<String>)>,
    pub time: Option<String>,
}

/// Code systems: CDA OIDs to FHIR URIs where FHIR has one.
fn system_uri(oid: &str) -> String {
    match oid {
        "2.16.840.1.113883.6.1" => "http://loinc.org".into(),
        "2.16.840.1.113883.6.96" => "http://snomed.info/sct".into(),
        "2.16.840.1.113883.6.3" | "2.16.840.1.113883.6.90" | "2.16.156.10011.2.3.3.11" => {
            "http://hl7.org/fhir/sid/icd-10".into()
        }
        "2.16.840.1.113883.6.88" => "http://www.nlm.nih.gov/research/umls/rxnorm".into(),
        "2.16.840.1.113883.6.8" => "http://unitsofmeasure.org".into(),
        "" => String::new(),
        other => format!("urn:oid:{other}"),
    }
}

fn is_icd10(system: &str) -> bool {
    system == "http://hl7.org/fhir/sid/icd-10"
}

/// HL7 TS (`20261201083000+0800`, `19800101`) as a FHIR date or dateTime.
pub fn fhir_time(ts: &str) -> Option<String> {
    let ts = ts.trim();
    let (digits, zone) = match ts.find(['+', '-']) {
        Some(i) if i >= 8 => (&ts[..i], Some(&ts[i..])),
        _ => (ts, None),
    };
    let digits = digits.split('.').next().unwrap_or(digits);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let zone =
        zone.filter(|z| z.len() == 5).map(|z| format!("{}:{}", &z[..3], &z[3..])).unwrap_or_else(|| "+08:00".into());
    match digits.len() {
        4 => Some(digits.to_string()),
        6 => Some(format!("{}-{}", &digits[..4], &digits[4..6])),
        8 => Some(format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..8])),
        12 | 14 => Some(format!(
            "{}-{}-{}T{}:{}:{}{zone}",
            &digits[..4],
            &digits[4..6],
            &digits[6..8],
            &digits[8..10],
            &digits[10..12],
            if digits.len() == 14 { &digits[12..14] } else { "00" }
        )),
        _ => None,
    }
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name && c.tag_name().namespace() == Some(V3))
}

fn children<'a, 'i: 'a>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name && c.tag_name().namespace() == Some(V3))
}

fn path<'a, 'i>(node: Node<'a, 'i>, names: &[&str]) -> Option<Node<'a, 'i>> {
    names.iter().try_fold(node, |n, name| child(n, name))
}

fn text_of(node: Node) -> Option<String> {
    let parts: Vec<&str> = node
        .descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn coded(node: Node) -> Option<Coded> {
    let code = node.attribute("code")?.trim();
    if code.is_empty() {
        return None;
    }
    Some(Coded {
        system: system_uri(node.attribute("codeSystem").unwrap_or("")),
        code: code.to_string(),
        display: node.attribute("displayName").map(str::to_string),
        time: None,
    })
}

fn time_of(node: Node) -> Option<String> {
    let t = child(node, "effectiveTime")?;
    t.attribute("value").or_else(|| child(t, "low").and_then(|l| l.attribute("value"))).and_then(fhir_time)
}

/// Parses and validates a document.
pub fn parse(xml: &str) -> Result<Document, CdaError> {
    if xml.len() > MAX_BYTES {
        return Err(CdaError::Malformed(format!(
            "the document is {} bytes; at most {MAX_BYTES} are accepted",
            xml.len()
        )));
    }
    if nesting_depth(xml, MAX_DEPTH) > MAX_DEPTH {
        return Err(CdaError::Malformed(format!(
            "elements are nested more than {MAX_DEPTH} levels deep: not a clinical document"
        )));
    }
    let options = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES };
    let doc = roxmltree::Document::parse_with_options(xml, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => CdaError::Forbidden(
            "the document declares a DTD: DTDs and entities are refused (XXE and entity-expansion protection)".into(),
        ),
        other => CdaError::Malformed(format!("not well-formed XML: {other}")),
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "ClinicalDocument" || root.tag_name().namespace() != Some(V3) {
        return Err(CdaError::Invalid(vec![format!(
            "the root element is {{{}}}{}, not ClinicalDocument in {V3}",
            root.tag_name().namespace().unwrap_or(""),
            root.tag_name().name()
        )]));
    }
    let mut problems = Vec::new();
    let mut d = Document::default();
    match child(root, "typeId") {
        Some(t)
            if t.attribute("root") == Some("2.16.840.1.113883.1.3")
                && t.attribute("extension") == Some("POCD_HD000040") => {}
        _ => problems.push(
            "ClinicalDocument/typeId must be root 2.16.840.1.113883.1.3, extension POCD_HD000040 (CDA R2)".into(),
        ),
    }
    match child(root, "id") {
        Some(id) if id.attribute("root").is_some() => {
            d.id_root = id.attribute("root").unwrap_or_default().to_string();
            d.id_extension = id.attribute("extension").unwrap_or_default().to_string();
        }
        _ => problems.push("ClinicalDocument/id (the document id, with a root) is required".into()),
    }
    match child(root, "code").and_then(coded) {
        Some(c) => {
            let raw_system = child(root, "code").and_then(|n| n.attribute("codeSystem")).unwrap_or("");
            if c.code.starts_with("C00") {
                match WST500_DOCUMENTS
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .find_map(|l| l.split_once('\t').filter(|(k, _)| *k == c.code))
                {
                    Some((_, title)) => d.type_display = title.to_string(),
                    None => problems.push(format!(
                        "ClinicalDocument/code {} is not a WS/T 500 document type (C0001–C0053)",
                        c.code
                    )),
                }
                if raw_system != WST500_TYPE_SYSTEM {
                    problems.push(format!(
                        "a WS/T 500 document code needs codeSystem {WST500_TYPE_SYSTEM}, not '{raw_system}'"
                    ));
                }
            } else {
                d.type_display = c.display.clone().unwrap_or_default();
            }
            d.type_code = c.code;
            d.type_system = c.system;
        }
        None => problems.push("ClinicalDocument/code (the document type) is required".into()),
    }
    d.title = child(root, "title").and_then(text_of).unwrap_or_default();
    match child(root, "effectiveTime").and_then(|t| t.attribute("value")).and_then(fhir_time) {
        Some(t) => d.effective = t,
        None => problems.push("ClinicalDocument/effectiveTime/@value (an HL7 timestamp) is required".into()),
    }
    match path(root, &["recordTarget", "patientRole"]) {
        Some(role) => {
            for id in children(role, "id") {
                if let (Some(r), Some(e)) =
                    (id.attribute("root"), id.attribute("extension").filter(|e| !e.trim().is_empty()))
                {
                    d.patient_ids.push((r.to_string(), e.trim().to_string()));
                }
            }
            if let Some(patient) = child(role, "patient") {
                // WS/T 500 puts the national ID number on patient/id.
                for id in children(patient, "id") {
                    if let (Some(r), Some(e)) =
                        (id.attribute("root"), id.attribute("extension").filter(|e| !e.trim().is_empty()))
                    {
                        d.patient_ids.push((r.to_string(), e.trim().to_string()));
                    }
                }
                d.patient_name = child(patient, "name").and_then(|n| {
                    let family = child(n, "family").and_then(text_of);
                    let given = child(n, "given").and_then(text_of);
                    match (family, given) {
                        // Chinese names are family name first, no space; others given name first.
                        (Some(f), Some(g)) if f.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)) => {
                            Some(format!("{f}{g}"))
                        }
                        (Some(f), Some(g)) => Some(format!("{g} {f}")),
                        (Some(f), None) => Some(f),
                        _ => text_of(n),
                    }
                });
                d.gender = child(patient, "administrativeGenderCode").and_then(|g| g.attribute("code")).map(|c| {
                    match c {
                        "1" | "M" => "male",
                        "2" | "F" => "female",
                        "9" | "UN" => "other",
                        _ => "unknown",
                    }
                    .to_string()
                });
                d.birth_date = child(patient, "birthTime")
                    .and_then(|b| b.attribute("value"))
                    .and_then(|v| fhir_time(v.get(..8).unwrap_or(v)));
            }
            if child(role, "id").is_none() {
                problems.push("recordTarget/patientRole needs an id (the patient's identifier)".into());
            }
        }
        None => problems.push("ClinicalDocument/recordTarget/patientRole (the patient) is required".into()),
    }
    match path(root, &["author", "assignedAuthor"]) {
        Some(a) => {
            d.author = path(a, &["assignedPerson", "name"])
                .and_then(text_of)
                .or_else(|| child(a, "id").and_then(|i| i.attribute("extension")).map(str::to_string))
        }
        None => problems.push("ClinicalDocument/author/assignedAuthor is required".into()),
    }
    match path(root, &["custodian", "assignedCustodian", "representedCustodianOrganization"]) {
        Some(o) => {
            let id = child(o, "id");
            d.custodian = Some((
                id.and_then(|i| i.attribute("root")).unwrap_or_default().to_string(),
                id.and_then(|i| i.attribute("extension")).unwrap_or_default().to_string(),
                child(o, "name").and_then(text_of).unwrap_or_default(),
            ));
        }
        None => problems.push(
            "ClinicalDocument/custodian/…/representedCustodianOrganization (the keeping institution) is required"
                .into(),
        ),
    }
    if let Some(e) = path(root, &["componentOf", "encompassingEncounter"]) {
        let t = child(e, "effectiveTime");
        d.encounter = Some(Encounter {
            id: child(e, "id")
                .and_then(|i| Some((i.attribute("root")?.to_string(), i.attribute("extension")?.to_string()))),
            start: t
                .and_then(|t| t.attribute("value").or_else(|| child(t, "low").and_then(|l| l.attribute("value"))))
                .and_then(fhir_time),
            end: t.and_then(|t| child(t, "high")).and_then(|h| h.attribute("value")).and_then(fhir_time),
        });
    }
    let body = path(root, &["component", "structuredBody"]);
    match body {
        Some(body) => {
            let mut loinc_codes = Vec::new();
            for section in body.descendants().filter(|n| n.is_element() && n.tag_name().name() == "section") {
                // Only a LOINC code identifies a section; a code in another system makes it
                // an extra section, which is fine.
                if let Some(code) = child(section, "code").filter(|c| c.attribute("codeSystem") == Some(LOINC)) {
                    loinc_codes.extend(code.attribute("code").map(str::trim));
                }
                let name = child(section, "title")
                    .and_then(text_of)
                    .or_else(|| {
                        child(section, "code")
                            .and_then(|c| c.attribute("displayName").or(c.attribute("code")).map(str::to_string))
                    })
                    .unwrap_or_default();
                d.sections.push(name);
            }
            if d.sections.is_empty() {
                problems.push("component/structuredBody has no section: a document needs its required sections".into());
            }
            for required in wst500_required_sections(&d.type_code) {
                if !loinc_codes.contains(&required.loinc) {
                    problems.push(format!(
                        "{} {} needs the {} section (LOINC {}): add a section whose code is {} in code system {LOINC}; a title alone does not count",
                        d.type_code, d.type_display, required.name, required.loinc, required.loinc
                    ));
                }
            }
            extract_entries(body, &mut d);
        }
        None if path(root, &["component", "nonXMLBody"]).is_some() => {
            // A WS/T 500 type with required sections is a structured document: an unstructured
            // body cannot carry them.
            let required = wst500_required_sections(&d.type_code);
            if !required.is_empty() {
                let names: Vec<String> = required.iter().map(|r| format!("{} (LOINC {})", r.name, r.loinc)).collect();
                problems.push(format!(
                    "{} {} needs a structuredBody with its required sections ({}), not a nonXMLBody",
                    d.type_code,
                    d.type_display,
                    names.join(", ")
                ));
            }
        }
        None => problems.push("ClinicalDocument/component needs a structuredBody (or a nonXMLBody)".into()),
    }
    if problems.is_empty() { Ok(d) } else { Err(CdaError::Invalid(problems)) }
}

fn extract_entries(body: Node, d: &mut Document) {
    for obs in body
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "observation" && n.tag_name().namespace() == Some(V3))
    {
        if obs.attribute("negationInd") == Some("true") {
            continue;
        }
        let Some(code) = child(obs, "code").and_then(coded) else { continue };
        let time = time_of(obs);
        // A C-CDA Problem Observation's value is a diagnosis whatever its code system.
        let problem = children(obs, "templateId").any(|t| t.attribute("root") == Some(PROBLEM_TEMPLATE));
        for value in children(obs, "value") {
            let kind = value.attribute((XSI, "type")).unwrap_or("").rsplit(':').next().unwrap_or("");
            match kind {
                "CD" | "CE" | "CV" | "CO" => {
                    if let Some(mut c) = coded(value) {
                        c.time = time.clone();
                        if is_icd10(&c.system) || problem {
                            d.diagnoses.push(c);
                        } else {
                            d.observations.push(Measured {
                                code: Coded { time: time.clone(), ..code.clone() },
                                value: MeasuredValue::Code(c),
                            });
                        }
                    }
                }
                "PQ" => {
                    if let Some(v) = value.attribute("value").filter(|v| v.trim().parse::<f64>().is_ok()) {
                        d.observations.push(Measured {
                            code: Coded { time: time.clone(), ..code.clone() },
                            value: MeasuredValue::Quantity {
                                value: v.trim().to_string(),
                                unit: value.attribute("unit").map(str::to_string),
                            },
                        });
                    }
                }
                "ST" | "ED" => {
                    if let Some(t) = text_of(value) {
                        d.observations.push(Measured {
                            code: Coded { time: time.clone(), ..code.clone() },
                            value: MeasuredValue::Text(t),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    for sa in body.descendants().filter(|n| {
        n.is_element() && n.tag_name().name() == "substanceAdministration" && n.tag_name().namespace() == Some(V3)
    }) {
        let material = path(sa, &["consumable", "manufacturedProduct", "manufacturedLabeledDrug"])
            .or_else(|| path(sa, &["consumable", "manufacturedProduct", "manufacturedMaterial"]));
        let drug = material.and_then(|m| child(m, "code")).and_then(coded);
        let name = material.and_then(|m| child(m, "name").and_then(text_of)).or_else(|| {
            material.and_then(|m| child(m, "code")).and_then(|c| c.attribute("displayName").map(str::to_string))
        });
        if drug.is_none() && name.is_none() {
            continue;
        }
        let dose = child(sa, "doseQuantity")
            .and_then(|q| Some((q.attribute("value")?.to_string(), q.attribute("unit").map(str::to_string))));
        d.medications.push(Medication { drug, name, dose, time: time_of(sa) });
    }
}

fn codeable(c: &Coded) -> Value {
    let mut coding = json!({"system": c.system, "code": c.code});
    if let Some(display) = &c.display {
        coding["display"] = json!(display);
    }
    let mut cc = json!({"coding": [coding]});
    if let Some(display) = &c.display {
        cc["text"] = json!(display);
    }
    cc
}

/// The transaction Bundle that stores `doc` (its XML as `xml`). Every entry is conditional on an
/// identifier derived from the document id, so the same document sent twice creates nothing new.
pub fn to_transaction(doc: &Document, xml: &str) -> Value {
    let doc_system = format!("urn:oid:{}", doc.id_root);
    let doc_key = if doc.id_extension.is_empty() { doc.id_root.clone() } else { doc.id_extension.clone() };
    let derived =
        |n: &str| json!({"system": format!("urn:hutong:cda:{}", doc.id_root), "value": format!("{doc_key}#{n}")});
    let condition = |id: &Value| {
        format!("identifier={}|{}", id["system"].as_str().unwrap_or(""), id["value"].as_str().unwrap_or(""))
    };
    let source =
        json!([{"url": SOURCE_DOCUMENT_EXTENSION, "valueIdentifier": {"system": doc_system, "value": doc_key}}]);
    let mut entries = Vec::new();
    let mut add = |full_url: String, resource: Value, if_none_exist: String| {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_string();
        entries.push(json!({"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": ty, "ifNoneExist": if_none_exist}}));
    };
    // What the document alone says (its diagnoses, observations, medications, the reference to
    // it) is written under an id derived from its identifier: an update of a known id needs no
    // search, and the same document again makes no new version.
    let mut derived_entries: Vec<Value> = Vec::new();
    let mut put = |prefix: &str, mut resource: Value, identifier: &Value| {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_string();
        let key =
            format!("{}|{}", identifier["system"].as_str().unwrap_or(""), identifier["value"].as_str().unwrap_or(""));
        let id = format!("{prefix}-{}", &crypto::sm3::sm3_hex(key.as_bytes())[..40]);
        resource["id"] = json!(id);
        derived_entries.push(json!({"resource": resource, "request": {"method": "PUT", "url": format!("{ty}/{id}")}}));
    };
    // The patient: conditional on the first identifier (national ID number first when present).
    let mut ids = doc.patient_ids.clone();
    ids.sort_by_key(|(root, _)| if root == "2.16.156.10011.1.3" { 0 } else { 1 });
    let identifiers: Vec<Value> =
        ids.iter().map(|(r, e)| json!({"system": format!("urn:oid:{r}"), "value": e})).collect();
    let mut patient = json!({"resourceType": "Patient", "identifier": identifiers});
    if let Some(name) = &doc.patient_name {
        patient["name"] = json!([{"text": name}]);
    }
    if let Some(g) = &doc.gender {
        patient["gender"] = json!(g);
    }
    if let Some(b) = &doc.birth_date {
        patient["birthDate"] = json!(b);
    }
    let patient_url = "urn:uuid:00000000-0000-4000-8000-000000000001".to_string();
    // Without a usable identifier (a root-only id names no one), the patient is keyed to this
    // document, so a re-sent document does not duplicate it; the master patient index links it.
    let patient_condition = match ids.first() {
        Some((r, e)) => format!("identifier=urn:oid:{r}|{e}"),
        None => {
            let id = derived("patient");
            patient["identifier"] = json!([id.clone()]);
            condition(&id)
        }
    };
    add(patient_url.clone(), patient, patient_condition);
    let subject = json!({"reference": patient_url});
    let encounter_url = "urn:uuid:00000000-0000-4000-8000-000000000002".to_string();
    if let Some(e) = &doc.encounter {
        let identifier = match &e.id {
            Some((r, x)) => json!({"system": format!("urn:oid:{r}"), "value": x}),
            None => derived("encounter"),
        };
        let mut encounter = json!({"resourceType": "Encounter", "status": "finished", "identifier": [identifier],
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject, "extension": source});
        if e.start.is_some() || e.end.is_some() {
            encounter["period"] = json!({"start": e.start, "end": e.end});
            if let Some(p) = encounter["period"].as_object_mut() {
                p.retain(|_, v| !v.is_null());
            }
        }
        let cond = condition(&encounter["identifier"][0]);
        add(encounter_url.clone(), encounter, cond);
    }
    let context = |r: &mut Value| {
        if doc.encounter.is_some() {
            r["encounter"] = json!({"reference": encounter_url});
        }
    };
    for (n, dx) in doc.diagnoses.iter().enumerate() {
        let id = derived(&format!("dx{n}"));
        let mut c = json!({"resourceType": "Condition", "identifier": [id.clone()], "extension": source,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "code": codeable(dx), "subject": subject, "recordedDate": dx.time.clone().unwrap_or_else(|| doc.effective.clone())});
        context(&mut c);
        put("cdx", c, &id);
    }
    for (n, m) in doc.observations.iter().enumerate() {
        let id = derived(&format!("obs{n}"));
        let mut o = json!({"resourceType": "Observation", "status": "final", "identifier": [id.clone()], "extension": source,
            "code": codeable(&m.code), "subject": subject,
            "effectiveDateTime": m.code.time.clone().unwrap_or_else(|| doc.effective.clone())});
        match &m.value {
            MeasuredValue::Quantity { value, unit } => {
                let number: Value = serde_json::from_str(value).unwrap_or(Value::Null);
                o["valueQuantity"] = json!({"value": number});
                if let Some(u) = unit {
                    o["valueQuantity"]["unit"] = json!(u);
                    o["valueQuantity"]["system"] = json!("http://unitsofmeasure.org");
                    o["valueQuantity"]["code"] = json!(u);
                }
            }
            MeasuredValue::Text(t) => o["valueString"] = json!(t),
            MeasuredValue::Code(c) => o["valueCodeableConcept"] = codeable(c),
        }
        context(&mut o);
        put("cobs", o, &id);
    }
    for (n, m) in doc.medications.iter().enumerate() {
        let id = derived(&format!("med{n}"));
        let mut concept = m.drug.as_ref().map(codeable).unwrap_or_else(|| json!({}));
        if let Some(name) = &m.name {
            concept["text"] = json!(name);
        }
        let mut s = json!({"resourceType": "MedicationStatement", "status": "completed", "identifier": [id.clone()],
            "extension": source, "medicationCodeableConcept": concept, "subject": subject});
        if let Some(t) = &m.time {
            s["effectiveDateTime"] = json!(t);
        }
        if let Some((value, unit)) = &m.dose {
            let number: Value = serde_json::from_str(value).unwrap_or(Value::Null);
            if !number.is_null() {
                s["dosage"] = json!([{"doseAndRate": [{"doseQuantity": {"value": number, "unit": unit}}]}]);
            }
        }
        if doc.encounter.is_some() {
            s["context"] = json!({"reference": encounter_url});
        }
        put("cmed", s, &id);
    }
    // A Binary has no identifier: its id is derived from the document id, and writing the same
    // content again makes no new version.
    let binary_id = format!("cda-{}", &crypto::sm3::sm3_hex(format!("{doc_system}|{doc_key}").as_bytes())[..40]);
    let binary_url = format!("Binary/{binary_id}");
    let binary = json!({"resourceType": "Binary", "id": binary_id, "contentType": "application/hl7-cda+xml",
        "data": crypto::base64(xml.as_bytes())});
    let type_coding = if doc.type_code.starts_with("C00") {
        json!({"system": format!("urn:oid:{WST500_TYPE_SYSTEM}"), "code": doc.type_code, "display": doc.type_display})
    } else {
        json!({"system": doc.type_system, "code": doc.type_code, "display": doc.type_display})
    };
    let mut reference = json!({"resourceType": "DocumentReference", "status": "current",
        "masterIdentifier": {"system": doc_system, "value": doc_key},
        "identifier": [derived("document")],
        "type": {"coding": [type_coding], "text": if doc.title.is_empty() { &doc.type_display } else { &doc.title }},
        "subject": subject, "date": to_instant(&doc.effective),
        "description": doc.title,
        "content": [{"attachment": {"contentType": "application/hl7-cda+xml", "url": binary_url, "size": xml.len(),
            "title": doc.title}, "format": {"system": "http://ihe.net/fhir/ValueSet/IHE.FormatCode.codesystem", "code": "urn:hl7-org:sdwg:ccda-structuredBody:2.1"}}]});
    if let Some(a) = &doc.author {
        reference["author"] = json!([{"display": a}]);
    }
    if let Some((root, ext, name)) = &doc.custodian {
        reference["custodian"] =
            json!({"display": name, "identifier": {"system": format!("urn:oid:{root}"), "value": ext}});
    }
    if doc.encounter.is_some() {
        reference["context"] = json!({"encounter": [{"reference": encounter_url}]});
    }
    put("cdoc", reference, &derived("document"));
    entries.push(json!({"resource": binary, "request": {"method": "PUT", "url": binary_url}}));
    entries.extend(derived_entries);
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// A FHIR instant from a date or dateTime (midnight China time for a date).
fn to_instant(t: &str) -> String {
    match t.len() {
        4 => format!("{t}-01-01T00:00:00+08:00"),
        7 => format!("{t}-01T00:00:00+08:00"),
        10 => format!("{t}T00:00:00+08:00"),
        _ => t.to_string(),
    }
}

#[cfg(test)]
mod depth_tests {
    use super::nesting_depth;

    #[test]
    fn nesting_is_measured_on_markup_only() {
        assert_eq!(nesting_depth("<a><b/><c><d></d></c></a>", 100), 3);
        assert_eq!(nesting_depth("<a><!-- <b><c> --><![CDATA[<x><y>]]><?pi <z>?><e attr=\"<f>\"/></a>", 100), 1);
        assert_eq!(nesting_depth(&"<a>".repeat(1000), 10), 11, "stops once past the limit");
        assert_eq!(nesting_depth("<a b='/'>", 100), 1);
        assert_eq!(nesting_depth("", 100), 0);
    }
}
