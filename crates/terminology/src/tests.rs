//! The terminology model against the preloaded content and small authored resources.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{Coding, ExpandParams, ICD10, Resource, Terminology, TerminologyError};

const SEX: &str = "http://hutong.health/fhir/CodeSystem/gb-t-2261.1-sex";

fn t() -> Arc<Terminology> {
    Terminology::preloaded()
}

fn param<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["parameter"].as_array()?.iter().find(|x| x["name"] == name)
}

fn coding(system: &str, code: &str) -> Coding {
    Coding { system: Some(system.into()), code: code.into(), ..Coding::default() }
}

#[test]
fn official_r4_content_is_loaded() {
    let c = t().counts();
    // The package ships 1,062 CodeSystem, 1,316 ValueSet and 80 ConceptMap files; a few URLs
    // are shared by two files (versions), the national systems and ICD-10 add 5 systems.
    assert!(c.code_systems >= 1_000, "{c:?}");
    assert!(c.value_sets >= 1_250, "{c:?}");
    assert!(c.concept_maps >= 70, "{c:?}");
    let gender = t().code_system("http://hl7.org/fhir/administrative-gender", None).unwrap();
    assert_eq!(gender.concepts.len(), 4);
    // Official value set including a whole system expands.
    let e = t().expansion("http://hl7.org/fhir/ValueSet/administrative-gender", None).unwrap();
    assert_eq!(e.members.len(), 4);
}

#[test]
fn lookup_returns_display_designations_and_hierarchy() {
    let p = t().lookup(ICD10, None, "A00.0", None).unwrap();
    assert_eq!(param(&p, "display").unwrap()["valueString"], "Cholera due to Vibrio cholerae 01, biovar cholerae");
    let parent = p["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "property" && x["part"][0]["valueCode"] == "parent")
        .unwrap();
    assert_eq!(parent["part"][1], json!({"name": "value", "valueCode": "A00"}));
    let a00 = t().lookup(ICD10, None, "A00", None).unwrap();
    let children: Vec<&Value> = a00["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == "property" && x["part"][0]["valueCode"] == "child")
        .map(|x| &x["part"][1]["valueCode"])
        .collect();
    assert_eq!(children, vec!["A00.0", "A00.1", "A00.9"]);

    let sex = t().lookup(SEX, None, "1", None).unwrap();
    assert_eq!(param(&sex, "display").unwrap()["valueString"], "男");
    let en = t().lookup(SEX, None, "1", Some("en")).unwrap();
    assert_eq!(param(&en, "display").unwrap()["valueString"], "Male");
    assert!(sex["parameter"].as_array().unwrap().iter().any(|x| x["name"] == "designation"));

    assert_eq!(
        t().lookup(SEX, None, "3", None).unwrap_err(),
        TerminologyError::UnknownCode { system: SEX.into(), code: "3".into() }
    );
    assert!(matches!(
        t().lookup("http://example.org/nope", None, "1", None),
        Err(TerminologyError::UnknownCodeSystem { .. })
    ));
}

#[test]
fn validate_code_in_system_true_and_false_with_message() {
    let ok = t().validate_in_system(SEX, &coding(SEX, "2"), None).unwrap();
    assert!(ok.result);
    assert_eq!(ok.display.as_deref(), Some("女"));
    let no = t().validate_in_system(SEX, &coding(SEX, "3"), None).unwrap();
    assert!(!no.result);
    assert_eq!(
        no.message.as_deref(),
        Some("the code '3' is not in the code system http://hutong.health/fhir/CodeSystem/gb-t-2261.1-sex")
    );
    // A wrong display is a failure that names the right one; an English designation is fine.
    let wrong = Coding { display: Some("男".into()), ..coding(SEX, "2") };
    let v = t().validate_in_system(SEX, &wrong, None).unwrap();
    assert!(!v.result);
    assert!(v.message.unwrap().contains("expected '女'"));
    let english = Coding { display: Some("female".into()), ..coding(SEX, "2") };
    assert!(t().validate_in_system(SEX, &english, None).unwrap().result);
    let rendered = no.to_parameters();
    assert_eq!(param(&rendered, "result").unwrap()["valueBoolean"], false);
}

#[test]
fn systems_are_found_by_their_oid_too() {
    let oid = "urn:oid:2.16.156.10011.2.3.3.4";
    let v = t().validate_in_system(oid, &coding(oid, "1"), None).unwrap();
    assert!(v.result, "{v:?}");
    assert_eq!(t().code_system(oid, None).unwrap().url, SEX);
    // ICD-10's HL7 OID, and a value set validated with the OID form of the system.
    assert!(t().lookup("urn:oid:2.16.840.1.113883.6.3", None, "J45", None).is_ok());
    let in_vs = t()
        .validate_in_value_set("http://hutong.health/fhir/ValueSet/gb-t-2261.1-sex", None, &[coding(oid, "9")], None)
        .unwrap();
    assert!(in_vs.result, "{in_vs:?}");
}

#[test]
fn icd10_hierarchy_is_a() {
    let icd = t().code_system(ICD10, None).unwrap();
    assert!(icd.concepts.len() > 12_000);
    let (a00, a000) = (icd.index_of("A00").unwrap(), icd.index_of("A00.0").unwrap());
    assert!(icd.subsumes(a00, a000));
    assert!(!icd.subsumes(a000, a00));
    // Chapter I is above A00.0 through the block A00-A09.
    assert!(icd.subsumes(icd.index_of("I").unwrap(), a000));
    assert!(icd.concept("A00-A09").unwrap().is_abstract());

    let mut tl = Terminology::layered(t());
    tl.add(
        Resource::from_json(&json!({"resourceType": "ValueSet", "url": "http://example.org/vs/cholera",
            "compose": {"include": [{"system": ICD10, "filter": [{"property": "concept", "op": "is-a", "value": "A00"}]}]}}))
        .unwrap(),
    );
    tl.add(
        Resource::from_json(&json!({"resourceType": "ValueSet", "url": "http://example.org/vs/below-a00",
            "compose": {"include": [{"system": ICD10, "filter": [{"property": "concept", "op": "descendent-of", "value": "A00"}]}],
                        "exclude": [{"system": ICD10, "concept": [{"code": "A00.9"}]}]}}))
        .unwrap(),
    );
    let codes = |url: &str| -> Vec<String> {
        tl.expansion(url, None).unwrap().members.iter().map(|m| m.code.clone()).collect()
    };
    assert_eq!(codes("http://example.org/vs/cholera"), ["A00", "A00.0", "A00.1", "A00.9"]);
    assert_eq!(codes("http://example.org/vs/below-a00"), ["A00.0", "A00.1"]);
}

#[test]
fn expand_with_text_filter_and_paging() {
    let p = ExpandParams { filter: Some("cholera".into()), count: Some(2), ..ExpandParams::default() };
    let page = t().expand("http://hl7.org/fhir/sid/icd-10?vs", None, &p).unwrap();
    let total = page["expansion"]["total"].as_u64().unwrap();
    assert!(total >= 5, "{total}");
    let contains = page["expansion"]["contains"].as_array().unwrap();
    assert_eq!(contains.len(), 2);
    assert_eq!(contains[0]["code"], "A00");
    let next = t().expand(crate::ICD10_VALUE_SET, None, &ExpandParams { offset: 2, ..p.clone() }).unwrap();
    assert_eq!(next["expansion"]["offset"], 2);
    assert_eq!(next["expansion"]["total"].as_u64(), Some(total));
    assert_ne!(next["expansion"]["contains"][0]["code"], contains[0]["code"]);
    // All words must match, in any order, case-insensitively.
    let two = t()
        .expand(
            crate::ICD10_VALUE_SET,
            None,
            &ExpandParams { filter: Some("VIBRIO eltor".into()), ..ExpandParams::default() },
        )
        .unwrap();
    assert_eq!(two["expansion"]["total"], 1);
    assert_eq!(two["expansion"]["contains"][0]["code"], "A00.1");
    // Chinese text and another display language.
    let zh = t()
        .expand(
            "http://hutong.health/fhir/ValueSet/gb-t-3304-ethnic-group",
            None,
            &ExpandParams { filter: Some("蒙古".into()), include_designations: true, ..ExpandParams::default() },
        )
        .unwrap();
    assert_eq!(zh["expansion"]["contains"][0]["code"], "02");
    assert!(zh["expansion"]["contains"][0]["designation"].is_array());
    let en = t()
        .expand(
            "http://hutong.health/fhir/ValueSet/gb-t-3304-ethnic-group",
            None,
            &ExpandParams { display_language: Some("en".into()), ..ExpandParams::default() },
        )
        .unwrap();
    assert_eq!(en["expansion"]["total"], 58);
    assert_eq!(en["expansion"]["contains"][0]["display"], "Han");
    assert!(matches!(
        t().expand("http://example.org/none", None, &ExpandParams::default()),
        Err(TerminologyError::UnknownValueSet { .. })
    ));
}

#[test]
fn national_code_systems_have_their_codes() {
    let count = |slug: &str| {
        t().code_system(&format!("http://hutong.health/fhir/CodeSystem/{slug}"), None).unwrap().concepts.len()
    };
    assert_eq!(count("gb-t-2261.1-sex"), 4);
    assert_eq!(count("gb-t-2261.2-marital-status"), 8);
    assert_eq!(count("gb-t-3304-ethnic-group"), 58);
    assert_eq!(count("ws-364-cv02.01.101-id-document-type"), 8);
    let marital = t().code_system("http://hutong.health/fhir/CodeSystem/gb-t-2261.2-marital-status", None).unwrap();
    assert!(marital.subsumes(marital.index_of("20").unwrap(), marital.index_of("22").unwrap()));
    let ethnic = t().code_system("http://hutong.health/fhir/CodeSystem/gb-t-3304-ethnic-group", None).unwrap();
    assert_eq!(ethnic.concept("01").unwrap().display.as_deref(), Some("汉族"));
    assert_eq!(ethnic.concept("56").unwrap().display.as_deref(), Some("基诺族"));
}

#[test]
fn validate_code_in_value_set() {
    let vs = "http://hl7.org/fhir/ValueSet/administrative-gender";
    let ok = t()
        .validate_in_value_set(vs, None, &[coding("http://hl7.org/fhir/administrative-gender", "female")], None)
        .unwrap();
    assert!(ok.result);
    assert_eq!(ok.display.as_deref(), Some("Female"));
    // A codeableConcept: one good coding suffices.
    let cc = [coding(SEX, "2"), coding("http://hl7.org/fhir/administrative-gender", "male")];
    assert!(t().validate_in_value_set(vs, None, &cc, None).unwrap().result);
    let no =
        t().validate_in_value_set(vs, None, &[coding("http://hl7.org/fhir/administrative-gender", "x")], None).unwrap();
    assert!(!no.result);
    assert!(no.message.unwrap().contains("is not in the value set"));
    // No system: any system of the set.
    let bare = Coding { code: "other".into(), ..Coding::default() };
    assert!(t().validate_in_value_set(vs, None, &[bare], None).unwrap().result);
}

#[test]
fn translate_through_concept_maps() {
    let map = "http://hutong.health/fhir/ConceptMap/gb-t-2261.1-to-administrative-gender";
    let p = t().translate(Some(map), None, &coding(SEX, "2"), None).unwrap();
    assert_eq!(param(&p, "result").unwrap()["valueBoolean"], true);
    let m = param(&p, "match").unwrap();
    assert_eq!(m["part"][0]["valueCode"], "equivalent");
    assert_eq!(m["part"][1]["valueCoding"]["code"], "female");
    // Without a map: every map from the source system, restricted to the target system.
    let back =
        t().translate(None, None, &coding("http://hl7.org/fhir/administrative-gender", "male"), Some(SEX)).unwrap();
    assert_eq!(param(&back, "match").unwrap()["part"][1]["valueCoding"]["code"], "1");
    let none = t().translate(Some(map), None, &coding(SEX, "7"), None).unwrap();
    assert_eq!(param(&none, "result").unwrap()["valueBoolean"], false);
    assert!(param(&none, "message").is_some());
    assert!(matches!(
        t().translate(Some("http://example.org/cm"), None, &coding(SEX, "1"), None),
        Err(TerminologyError::UnknownConceptMap { .. })
    ));
}

#[test]
fn csv_code_systems() {
    let text = "\u{feff}code,display,parent,designation:en,category\r\n\
                D01,\"阿司匹林, 肠溶片\",,Aspirin,antiplatelet\r\n\
                D01.1,阿司匹林肠溶片 100mg,D01,\"Aspirin \"\"EC\"\" 100 mg\",\r\n";
    let doc = crate::csv::code_system_from_csv(text, "http://example.org/cs/drugs", "Drugs", Some("1")).unwrap();
    assert_eq!(doc["concept"][0]["display"], "阿司匹林, 肠溶片");
    assert_eq!(doc["concept"][1]["designation"][0]["value"], "Aspirin \"EC\" 100 mg");
    let mut tl = Terminology::layered(t());
    tl.add(Resource::from_json(&doc).unwrap());
    let cs = tl.code_system("http://example.org/cs/drugs", Some("1")).unwrap();
    assert!(cs.subsumes(cs.index_of("D01").unwrap(), cs.index_of("D01.1").unwrap()));
    let p = tl.lookup("http://example.org/cs/drugs", None, "D01", None).unwrap();
    assert!(p["parameter"].as_array().unwrap().iter().any(|x| x["part"][0]["valueCode"] == "category"));

    let bad = |text: &str| crate::csv::code_system_from_csv(text, "u", "n", None).unwrap_err().to_string();
    assert!(bad("id,name\n1,x\n").contains("must start with code,display"));
    assert!(bad("code,display,parent\nA,x,B\n").contains("the parent 'B'"));
    assert!(bad("code,display\nA,x\nA,y\n").contains("appears twice"));
    assert!(bad("code,display\n\"A,x\n").contains("never closed"));
}

#[test]
fn official_value_sets_expand_where_their_content_is_available() {
    let t = t();
    let files = fhir::definitions::package_files(fhir::definitions::R4_PACKAGE, &["ValueSet-"]).unwrap();
    let (mut expanded, mut external, mut other) = (0, 0, Vec::new());
    for (_, doc) in &files {
        let url = doc["url"].as_str().unwrap();
        match t.expansion(url, None) {
            Ok(_) => expanded += 1,
            // SNOMED CT, LOINC, UCUM, BCP-47, … are not preloaded.
            Err(TerminologyError::UnknownCodeSystem { .. } | TerminologyError::UnknownValueSet { .. }) => external += 1,
            Err(e) => other.push(format!("{url}: {e}")),
        }
    }
    println!("{expanded} expanded, {external} need external content, {} other", other.len());
    // 1,216 of 1,316 on 2026-11-30; the rest include systems that are not preloaded.
    assert!(expanded >= 1_200, "{expanded} expanded, {external} external");
    assert!(other.is_empty(), "{other:?}");
}
