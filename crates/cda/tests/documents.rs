//! CDA documents: a WS/T 500-shaped outpatient record written from the standard's structure,
//! hostile and broken input, and the C-CDA documents shipped with PyPI ccda-to-fhir==0.3 (fetched
//! by scripts/fetch-test-data.sh; expected values from that package's own tests).

use std::path::PathBuf;

use cda::{CdaError, MeasuredValue};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

#[test]
fn a_wst500_outpatient_record_becomes_fhir_resources() {
    let xml = fixture("C0002-outpatient.xml");
    let d = cda::parse(&xml).unwrap();
    assert_eq!((d.type_code.as_str(), d.type_display.as_str()), ("C0002", "门急诊病历"));
    assert_eq!(d.effective, "2026-12-01T09:30:00+08:00");
    assert!(d.patient_ids.contains(&("2.16.156.10011.1.3".into(), "350102198002031231".into())));
    assert_eq!(
        (d.patient_name.as_deref(), d.gender.as_deref(), d.birth_date.as_deref()),
        (Some("林测试"), Some("male"), Some("1980-02-03"))
    );
    assert_eq!(d.diagnoses.len(), 1);
    assert_eq!(
        (d.diagnoses[0].system.as_str(), d.diagnoses[0].code.as_str()),
        ("http://hl7.org/fhir/sid/icd-10", "I10")
    );
    assert_eq!(d.observations.len(), 3, "chief complaint, systolic, diastolic");
    assert!(
        matches!(&d.observations[1].value, MeasuredValue::Quantity { value, unit } if value == "156" && unit.as_deref() == Some("mm[Hg]"))
    );
    assert_eq!(d.medications[0].name.as_deref(), Some("硝苯地平控释片"));
    assert_eq!(d.sections.len(), 4);

    let bundle = cda::to_transaction(&d, &xml);
    let entries = bundle["entry"].as_array().unwrap();
    let of = |ty: &str| entries.iter().filter(|e| e["resource"]["resourceType"] == ty).count();
    assert_eq!(
        (of("Patient"), of("Encounter"), of("Condition"), of("Observation"), of("MedicationStatement")),
        (1, 1, 1, 3, 1)
    );
    assert_eq!((of("DocumentReference"), of("Binary")), (1, 1));
    // The national ID number is the patient's match key and the visit is created when new; what
    // the document alone says is written under ids derived from the document's identifiers.
    let patient = entries.iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap();
    assert_eq!(patient["request"]["ifNoneExist"], "identifier=urn:oid:2.16.156.10011.1.3|350102198002031231");
    for e in entries {
        let ty = e["resource"]["resourceType"].as_str().unwrap();
        if ty == "Patient" || ty == "Encounter" {
            assert!(e["request"]["ifNoneExist"].is_string(), "{e}");
        } else {
            let id = e["resource"]["id"].as_str().unwrap();
            assert_eq!(e["request"]["method"], "PUT", "{e}");
            assert_eq!(e["request"]["url"], format!("{ty}/{id}"));
            assert!(id.len() > 40 && id.len() <= 64, "{id}");
        }
    }
    // The same document again: the same ids.
    let again = cda::to_transaction(&cda::parse(&xml).unwrap(), &xml);
    assert_eq!(again, bundle);
    let reference = entries.iter().find(|e| e["resource"]["resourceType"] == "DocumentReference").unwrap();
    assert_eq!(reference["resource"]["masterIdentifier"]["value"], "RN001-2026-000000000000000000001");
    assert_eq!(reference["resource"]["type"]["coding"][0]["code"], "C0002");
    let binary = entries.iter().find(|e| e["resource"]["resourceType"] == "Binary").unwrap();
    assert_eq!(crypto::unbase64(binary["resource"]["data"].as_str().unwrap()).unwrap(), xml.as_bytes());
}

#[test]
fn dtds_entities_and_broken_documents_are_refused_with_reasons() {
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><ClinicalDocument xmlns="urn:hl7-org:v3">&e;</ClinicalDocument>"#;
    assert!(matches!(cda::parse(xxe), Err(CdaError::Forbidden(m)) if m.contains("DTD")));
    let laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol">{}]><ClinicalDocument xmlns="urn:hl7-org:v3">&j;</ClinicalDocument>"#,
        (b'b'..=b'j')
            .map(|c| format!(
                r#"<!ENTITY {} "&{};&{};&{};&{};&{};">"#,
                c as char,
                (c - 1) as char,
                (c - 1) as char,
                (c - 1) as char,
                (c - 1) as char,
                (c - 1) as char
            ))
            .collect::<String>()
    );
    assert!(matches!(cda::parse(&laughs), Err(CdaError::Forbidden(_))));
    assert!(matches!(cda::parse("<ClinicalDocument xmlns=\"urn:hl7-org:v3\">"), Err(CdaError::Malformed(_))));
    assert!(matches!(cda::parse(&" ".repeat(cda::MAX_BYTES + 1)), Err(CdaError::Malformed(m)) if m.contains("bytes")));
    let wrong_root = r#"<Patient xmlns="urn:hl7-org:v3"/>"#;
    assert!(matches!(cda::parse(wrong_root), Err(CdaError::Invalid(p)) if p[0].contains("ClinicalDocument")));
    // An empty shell: every missing header part is named at once.
    let Err(CdaError::Invalid(problems)) = cda::parse(r#"<ClinicalDocument xmlns="urn:hl7-org:v3"/>"#) else {
        panic!()
    };
    for part in [
        "typeId",
        "ClinicalDocument/id",
        "ClinicalDocument/code",
        "effectiveTime",
        "recordTarget",
        "author",
        "custodian",
        "structuredBody",
    ] {
        assert!(problems.iter().any(|p| p.contains(part)), "{part}: {problems:?}");
    }
    // A WS/T 500 code that does not exist, and a document without sections.
    let xml = fixture("C0002-outpatient.xml").replace("code=\"C0002\"", "code=\"C0099\"");
    assert!(matches!(cda::parse(&xml), Err(CdaError::Invalid(p)) if p.iter().any(|x| x.contains("C0099"))));
    let xml = fixture("C0002-outpatient.xml");
    let start = xml.find("<structuredBody>").unwrap() + "<structuredBody>".len();
    let end = xml.find("</structuredBody>").unwrap();
    let hollow = format!("{}{}", &xml[..start], &xml[end..]);
    assert!(matches!(cda::parse(&hollow), Err(CdaError::Invalid(p)) if p.iter().any(|x| x.contains("section"))));
}

#[test]
fn times_convert_to_fhir() {
    assert_eq!(cda::fhir_time("20261201083000+0800").as_deref(), Some("2026-12-01T08:30:00+08:00"));
    assert_eq!(cda::fhir_time("202612010830").as_deref(), Some("2026-12-01T08:30:00+08:00"));
    assert_eq!(cda::fhir_time("19800203").as_deref(), Some("1980-02-03"));
    assert_eq!(cda::fhir_time("2026-12").as_deref(), None);
}

fn ccda_dir() -> PathBuf {
    let base = std::env::var_os("HUTONG_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/hutong-testdata"));
    let dir = base.join("ccda");
    assert!(dir.join(".done").exists(), "C-CDA fixtures missing in {}: run scripts/fetch-test-data.sh", dir.display());
    dir
}

#[test]
fn the_ccda_to_fhir_sample_documents_parse_and_extract() {
    let dir = ccda_dir();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.join("documents")).unwrap().map(|e| e.unwrap().path()).collect();
    files.extend(["practice_fusion_alice_newman.xml", "practice_fusion_jeremy_bates.xml"].iter().map(|f| dir.join(f)));
    files.retain(|f| f.extension().is_some_and(|x| x == "xml"));
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for file in &files {
        let xml = std::fs::read_to_string(file).unwrap();
        let d = cda::parse(&xml).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let bundle = cda::to_transaction(&d, &xml);
        let patient =
            bundle["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap();
        assert!(
            patient["request"]["ifNoneExist"].as_str().is_some_and(|c| c.starts_with("identifier=")),
            "{}",
            file.display()
        );
        assert!(bundle["entry"].as_array().unwrap().len() >= 3, "{}", file.display());
    }
    // Expected values from ccda-to-fhir's tests/integration/test_nist_e2e_detailed.py.
    let xml = std::fs::read_to_string(dir.join("documents/nist_ambulatory.xml")).unwrap();
    let d = cda::parse(&xml).unwrap();
    assert_eq!(d.patient_name.as_deref(), Some("Myra Jones"));
    assert_eq!((d.gender.as_deref(), d.birth_date.as_deref()), (Some("female"), Some("1947-05-01")));
    assert!(
        d.diagnoses.iter().any(|c| c.code == "195967001" && c.system == "http://snomed.info/sct"),
        "asthma: {:?}",
        d.diagnoses
    );
}

/// The WS/T 500 fixtures of the types the issue names, each written from its schema with the
/// sections its type requires (crates/cda/data/wst500-sections.tsv). 转诊记录, also named by the
/// issue, is not a WS/T 500-2016 type (it is WS/T 483.20), so it has no fixture and no rule.
const NAMED_TYPES: &[(&str, &str)] = &[
    ("C0001", "C0001-summary.xml"),
    ("C0002", "C0002-outpatient.xml"),
    ("C0006", "C0006-examination.xml"),
    ("C0007", "C0007-laboratory.xml"),
    ("C0053", "C0053-discharge.xml"),
];

/// `xml` without the section whose LOINC code is `loinc` (its whole `<component>`).
fn without_section(xml: &str, loinc: &str) -> String {
    let at = xml.find(&format!("code=\"{loinc}\" codeSystem=\"{}\"", cda::LOINC)).expect("the section is there");
    let start = xml[..at].rfind("<component>").unwrap();
    let end = at + xml[at..].find("</component>").unwrap() + "</component>".len();
    format!("{}{}", &xml[..start], &xml[end..])
}

/// `xml` with `sections` added at the end of its structured body.
fn with_sections(xml: &str, sections: &str) -> String {
    xml.replacen("</structuredBody>", &format!("{sections}</structuredBody>"), 1)
}

fn problems_of(xml: &str) -> Vec<String> {
    match cda::parse(xml) {
        Err(CdaError::Invalid(problems)) => problems,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn each_named_wst500_type_needs_its_required_sections() {
    for (ty, file) in NAMED_TYPES {
        let xml = fixture(file);
        let d = cda::parse(&xml).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(&d.type_code, ty);
        let required = cda::wst500_required_sections(ty);
        assert!(!required.is_empty(), "{ty} has required sections");
        for section in &required {
            let expected =
                format!("{ty} {} needs the {} section (LOINC {})", d.type_display, section.name, section.loinc);
            // Removed: refused, with that section (and nothing else) named.
            let problems = problems_of(&without_section(&xml, section.loinc));
            assert_eq!(problems.len(), 1, "{ty}: {problems:?}");
            assert!(problems[0].starts_with(&expected), "{ty}: {problems:?}");
            // A title alone, or the code in another code system, does not make the section.
            let titled = without_section(&xml, section.loinc);
            let titled = with_sections(
                &titled,
                &format!("<component><section><title>{}</title><text/></section></component>", section.name),
            );
            assert!(problems_of(&titled)[0].starts_with(&expected), "{ty}: a title alone");
            let elsewhere = xml.replace(
                &format!("code=\"{}\" codeSystem=\"{}\"", section.loinc, cda::LOINC),
                &format!("code=\"{}\" codeSystem=\"2.16.156.10011.2.2.1\"", section.loinc),
            );
            assert!(problems_of(&elsewhere)[0].starts_with(&expected), "{ty}: the code in another system");
        }
        // Every required section gone: each one named.
        let bare = required.iter().fold(xml.clone(), |x, s| without_section(&x, s.loinc));
        let bare = with_sections(&bare, "<component><section><title>其他</title><text/></section></component>");
        assert_eq!(problems_of(&bare).len(), required.len(), "{ty}");
        // Sections the table does not know, or coded in another system, are fine extras.
        let extra = with_sections(
            &xml,
            r#"<component><section><code code="51848-0" codeSystem="2.16.840.1.113883.6.1" displayName="Assessment"/><text/></section></component>
<component><section><code code="HT01" codeSystem="2.16.156.10011.2.2.1" displayName="随访计划"/><title>随访计划</title><text/></section></component>"#,
        );
        let with_extra = cda::parse(&extra).unwrap_or_else(|e| panic!("{ty} with extra sections: {e}"));
        assert_eq!(with_extra.sections.len(), d.sections.len() + 2);
    }
}

#[test]
fn section_rules_leave_other_document_types_alone() {
    // A C-CDA (LOINC-typed) document with none of the WS/T 500 outpatient sections.
    let xml = fixture("C0002-outpatient.xml").replace(
        r#"code="C0002" codeSystem="2.16.156.10011.2.4""#,
        r#"code="34133-9" codeSystem="2.16.840.1.113883.6.1""#,
    );
    let xml = without_section(&without_section(&xml, "10154-3"), "29548-5");
    let d = cda::parse(&xml).unwrap();
    assert_eq!((d.type_code.as_str(), d.sections.len()), ("34133-9", 2));
    // A WS/T 500 type for which the table requires nothing (C0004 西药处方) needs only a section.
    let prescription = fixture("C0002-outpatient.xml").replace(r#"code="C0002""#, r#"code="C0004""#);
    let prescription = without_section(&without_section(&prescription, "10154-3"), "29548-5");
    assert!(cda::wst500_required_sections("C0004").is_empty());
    assert_eq!(cda::parse(&prescription).unwrap().type_display, "西药处方");
    // An unstructured body cannot carry required sections; a C-CDA one may still be unstructured.
    let body_start = |x: &str| x.find("<component>\n    <structuredBody>").unwrap();
    let body_end = |x: &str| x.find("</ClinicalDocument>").unwrap();
    let unstructured = |x: &str| {
        format!(
            "{}<component><nonXMLBody><text mediaType=\"text/plain\">门诊记录</text></nonXMLBody></component>\n{}",
            &x[..body_start(x)],
            &x[body_end(x)..]
        )
    };
    let problems = problems_of(&unstructured(&fixture("C0002-outpatient.xml")));
    assert!(
        problems[0].contains("C0002 门急诊病历 needs a structuredBody") && problems[0].contains("主诉 (LOINC 10154-3)")
    );
    assert!(cda::parse(&unstructured(&xml)).is_ok());
}

#[test]
fn the_section_table_covers_all_53_types() {
    let rows =
        |text: &'static str| text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split('\t').collect::<Vec<_>>());
    let types: Vec<Vec<&str>> = rows(cda::WST500_DOCUMENTS).collect();
    let sections: Vec<Vec<&str>> = rows(cda::WST500_SECTIONS).collect();
    assert_eq!(types.len(), 53);
    for row in &sections {
        assert_eq!(row.len(), 4, "{row:?}");
        assert!(types.iter().any(|t| t[0] == row[0]), "{row:?}");
        assert!(row[1] == "-" || row[1].split_once('-').is_some_and(|(n, c)| n.parse::<u32>().is_ok() && c.len() == 1));
        assert!(row[3] == "yes" || row[3] == "no", "{row:?}");
        assert!(row[3] == "no" || row[1] != "-", "a required section has a code: {row:?}");
    }
    for ty in &types {
        let listed = sections.iter().filter(|s| s[0] == ty[0]).count();
        assert!(listed > 0, "{} {} has its sections listed", ty[0], ty[1]);
        let required = cda::wst500_required_sections(ty[0]);
        let named = NAMED_TYPES.iter().any(|(t, _)| *t == ty[0]);
        assert_eq!(!required.is_empty(), named, "{}: only the named types require sections", ty[0]);
    }
    // The codes the rules rely on, as WS/T 500 gives them.
    let code_of = |ty: &str, name: &str| sections.iter().find(|s| s[0] == ty && s[2] == name).map(|s| s[1]);
    assert_eq!(code_of("C0002", "主诉"), Some("10154-3"));
    assert_eq!(code_of("C0002", "诊断记录"), Some("29548-5"));
    assert_eq!(code_of("C0053", "出院诊断"), Some("11535-2"));
    assert_eq!(code_of("C0001", "卫生事件"), Some("-"), "WS/T 500 gives 卫生事件 no code");
    assert!(!cda::WST500_DOCUMENTS.contains("转诊"), "转诊记录 is not a WS/T 500 type");
}
