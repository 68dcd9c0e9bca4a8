//! Building the preloaded content: the official R4 package's CodeSystems, ValueSets and
//! ConceptMaps, the national code systems in `data/*.json`, and WHO ICD-10 from
//! `data/icd10-who-2019.tsv.gz`.

use std::io::Read;
use std::sync::Arc;

use serde_json::json;

use crate::model::{CodeSystem, Resource};
use crate::{ICD10, ICD10_VALUE_SET, Terminology};

/// The national code systems and maps authored for the platform (see `data/README.md`).
const NATIONAL: &[(&str, &str)] = &[
    ("gb-t-2261.1-sex.json", include_str!("../data/gb-t-2261.1-sex.json")),
    ("gb-t-2261.2-marital-status.json", include_str!("../data/gb-t-2261.2-marital-status.json")),
    ("gb-t-3304-ethnic-group.json", include_str!("../data/gb-t-3304-ethnic-group.json")),
    ("ws-364-cv02.01.101-id-document-type.json", include_str!("../data/ws-364-cv02.01.101-id-document-type.json")),
    (
        "conceptmap-gb-t-2261.1-to-administrative-gender.json",
        include_str!("../data/conceptmap-gb-t-2261.1-to-administrative-gender.json"),
    ),
];

const ICD10_TSV_GZ: &[u8] = include_bytes!("../data/icd10-who-2019.tsv.gz");

pub(crate) fn build() -> Terminology {
    let mut t = Terminology::default();
    let files =
        fhir::definitions::package_files(fhir::definitions::R4_PACKAGE, &["CodeSystem-", "ValueSet-", "ConceptMap-"])
            .expect("the vendored R4 package is readable");
    for (name, doc) in files {
        match Resource::from_json(&doc) {
            Ok(r) => t.add(r),
            Err(e) => panic!("official terminology resource {name} does not load: {e}"),
        }
    }
    for (name, text) in NATIONAL {
        let doc: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("data/{name} is not valid JSON: {e}"));
        t.add(Resource::from_json(&doc).unwrap_or_else(|e| panic!("data/{name} does not load: {e}")));
    }
    t.add(Resource::CodeSystem(Arc::new(icd10())));
    t
}

/// WHO ICD-10 2019: chapters (I–XXII) and blocks (`A00-A09`) are not selectable; categories
/// and subcategories are codes. Lines: code, parent code, kind, English title.
fn icd10() -> CodeSystem {
    let mut text = String::new();
    flate2::read::GzDecoder::new(ICD10_TSV_GZ)
        .read_to_string(&mut text)
        .expect("the vendored ICD-10 table is readable");
    let mut concepts = Vec::new();
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(code), Some(parent), Some(kind), Some(title)) = (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        let mut property = vec![json!({"code": "kind", "valueCode": kind})];
        if !parent.is_empty() {
            property.push(json!({"code": "parent", "valueCode": parent}));
        }
        if kind == "chapter" || kind == "block" {
            property.push(json!({"code": "notSelectable", "valueBoolean": true}));
        }
        concepts.push(json!({"code": code, "display": title, "property": property}));
    }
    let doc = json!({
        "resourceType": "CodeSystem",
        "url": ICD10,
        "version": "2019",
        "name": "ICD10",
        "title": "International Classification of Diseases, 10th revision (WHO, 2019)",
        "status": "active",
        "content": "complete",
        "caseSensitive": true,
        "hierarchyMeaning": "is-a",
        "valueSet": ICD10_VALUE_SET,
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.6.3"}],
        "property": [
            {"code": "parent", "type": "code"},
            {"code": "kind", "type": "code", "description": "chapter, block, category or subcategory"},
            {"code": "notSelectable", "type": "boolean"},
        ],
        "concept": concepts,
    });
    CodeSystem::from_json(&doc).expect("the ICD-10 CodeSystem is well formed")
}
