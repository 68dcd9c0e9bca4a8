//! Validation: tables of valid resources and of invalid ones with the path and rule expected.

use serde_json::{Value, json};

use super::*;

fn check(resource: Value) -> Vec<Issue> {
    validate(Definitions::r4(), &resource)
}

#[test]
fn structures_and_value_sets_load() {
    let defs = Definitions::r4();
    let patient = defs.structure("Patient").expect("Patient");
    assert!(patient.by_path.contains_key("Patient.birthDate"));
    assert_eq!(patient.kind, "resource");
    let gender = defs.value_set("http://hl7.org/fhir/ValueSet/administrative-gender").expect("gender value set");
    assert!(!gender.incomplete);
    let mut codes: Vec<&str> = gender.codes.iter().map(|(_, c)| c.as_str()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["female", "male", "other", "unknown"]);
}

#[test]
fn valid_resources_pass() {
    let valid = [
        json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00.000Z"},
               "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}],
               "name": [{"text": "张三丰", "family": "张", "given": ["三丰"]}], "gender": "male", "birthDate": "1949-12-31",
               "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1949-12-31T08:00:00+08:00"}]},
               "telecom": [{"system": "phone", "value": "13800000000"}], "deceasedBoolean": false,
               "contact": [{"name": {"family": "李"}, "relationship": [{"text": "配偶"}]}]}),
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
               "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2024-05-01T08:00:00+08:00"},
               "component": [{"code": {"text": "收缩压"}, "valueQuantity": {"value": 120.5, "unit": "mmHg"}}]}),
        json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "period": {"start": "2024-01-01", "end": "2024-01-02"}, "subject": {"reference": "urn:uuid:0f4c1d2e-0000-4000-8000-000000000001"}}),
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2020-03",
               "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]}}),
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/p1"},
               "medicationReference": {"reference": "#med1"},
               "contained": [{"resourceType": "Medication", "id": "med1", "code": {"text": "二甲双胍"}}]}),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
               {"fullUrl": "urn:uuid:0f4c1d2e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"}}]}),
    ];
    for r in valid {
        let issues = check(r.clone());
        assert!(issues.is_empty(), "{}: {issues:#?}", r["resourceType"]);
    }
}

#[test]
fn invalid_resources_name_path_and_rule() {
    let cases: Vec<(Value, &str, IssueType, &str)> = vec![
        (json!({"resourceType": "Patient", "nmae": []}), "Patient.nmae", IssueType::Structure, "did you mean 'name'"),
        (
            json!({"resourceType": "Patient", "birthDate": "1990-13-01"}),
            "Patient.birthDate",
            IssueType::Value,
            "not a valid date",
        ),
        (json!({"resourceType": "Patient", "gender": "man"}), "Patient.gender", IssueType::Value, "required value set"),
        (
            json!({"resourceType": "Patient", "name": {"family": "x"}}),
            "Patient.name",
            IssueType::Structure,
            "must be an array",
        ),
        (
            json!({"resourceType": "Patient", "gender": ["male"]}),
            "Patient.gender",
            IssueType::Structure,
            "not an array",
        ),
        (json!({"resourceType": "Patient", "active": "yes"}), "Patient.active", IssueType::Value, "true or false"),
        (json!({"resourceType": "Patient", "name": []}), "Patient.name", IssueType::Structure, "empty array"),
        (
            json!({"resourceType": "Patient", "name": [{"given": [""]}]}),
            "Patient.name[0].given[0]",
            IssueType::Value,
            "empty",
        ),
        (
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "Patient/1"}}),
            "Patient.managingOrganization",
            IssueType::Value,
            "should not point to a Patient",
        ),
        (
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/a b"}}),
            "Patient.managingOrganization",
            IssueType::Value,
            "not a valid id",
        ),
        (
            json!({"resourceType": "Observation", "code": {"text": "x"}}),
            "Observation.status",
            IssueType::Required,
            "is required",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "5"}}),
            "Observation.valueQuantity.value",
            IssueType::Value,
            "JSON number",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueFoo": 1}),
            "Observation.valueFoo",
            IssueType::Structure,
            "Unknown element",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2024-01-01T10:00:00"}),
            "Observation.effectiveDateTime",
            IssueType::Value,
            "time zone",
        ),
        (
            json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "length": {"value": 1}, "resourceType2": 1}),
            "Encounter.resourceType2",
            IssueType::Structure,
            "Unknown element",
        ),
        (
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient", "gender": "x"}}]}),
            "Bundle.entry[0].resource.ofType(Patient).gender",
            IssueType::Value,
            "required value set",
        ),
        (json!({"resourceType": "Nope"}), "Nope", IssueType::Value, "not a FHIR R4 resource type"),
        (
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1", "period": {}}]}),
            "Patient.identifier[0].period",
            IssueType::Structure,
            "empty object",
        ),
    ];
    for (resource, path, code, words) in cases {
        let issues = check(resource.clone());
        let found = issues.iter().find(|i| i.expression.as_deref() == Some(path));
        let Some(issue) = found else { panic!("{resource}: expected an issue at {path}, got {issues:#?}") };
        assert_eq!(issue.code, code, "{path}: {issue:?}");
        assert!(issue.diagnostics.contains(words), "{path}: '{}' should mention '{words}'", issue.diagnostics);
    }
}

proptest::proptest! {
    #[test]
    fn never_panics(key in "[a-zA-Z_]{1,10}", text in ".{0,12}", n in proptest::num::i64::ANY, nested in "[a-z]{1,6}") {
        let r = json!({"resourceType": "Patient", key.clone(): text, "name": [{nested.clone(): n}], "birthDate": n,
                       "contained": [{"resourceType": text, key: []}]});
        let _ = validate(Definitions::r4(), &r);
        let _ = validate(Definitions::r4(), &json!([n]));
    }
}
