//! CDA documents: a WS/T 500-shaped outpatient record written from the standard's structure,
//! hostile and broken input, and the C-CDA documents shipped with PyPI ccda-to-fhir==0.3 (fetched
//! by scripts/fetch-test-data.sh; expected values from that package's own tests).

use std::path::PathBuf;

use cda::{CdaError, MeasuredValue};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
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
