//! Index extraction over hand-written resources.

use serde_json::json;

use super::*;

fn entries(resource: serde_json::Value) -> Vec<IndexEntry> {
    extract(Definitions::r4(), &resource)
}

fn values<'a>(entries: &'a [IndexEntry], param: &str) -> Vec<&'a IndexValue> {
    entries.iter().filter(|e| e.param == param).map(|e| &e.value).collect()
}

fn token(system: Option<&str>, code: &str) -> IndexValue {
    IndexValue::Token { system: system.map(str::to_string), code: Some(code.to_string()), text: None }
}

#[test]
fn patient_parameters() {
    let e = entries(json!({
        "resourceType": "Patient", "id": "p1",
        "meta": {"tag": [{"system": "http://example.org/tags", "code": "demo"}], "profile": ["http://example.org/p"]},
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}],
        "name": [{"family": "张", "given": ["三丰"], "text": "张三丰"}],
        "gender": "male", "birthDate": "1949-12-31", "active": true,
        "telecom": [{"system": "phone", "value": "13800000000"}],
        "address": [{"city": "福州市", "line": ["鼓楼区八一七北路"]}]
    }));
    assert_eq!(values(&e, "identifier"), [&token(Some("urn:oid:2.16.156.10011.1.3"), "11010519491231002X")]);
    assert_eq!(values(&e, "gender"), [&token(None, "male")]);
    assert_eq!(values(&e, "active"), [&token(None, "true")]);
    assert_eq!(values(&e, "family"), [&IndexValue::String { normalized: "张".into(), exact: "张".into() }]);
    assert_eq!(values(&e, "name").len(), 3, "family, text and given");
    assert_eq!(values(&e, "phone"), [&token(None, "13800000000")]);
    assert_eq!(
        values(&e, "address-city"),
        [&IndexValue::String { normalized: "福州市".into(), exact: "福州市".into() }]
    );
    let (lo, hi) = date_range("1949-12-31").unwrap();
    assert_eq!(values(&e, "birthdate"), [&IndexValue::Date { low: lo, high: hi }]);
    assert_eq!(values(&e, "_tag"), [&token(Some("http://example.org/tags"), "demo")]);
    assert_eq!(values(&e, "_profile"), [&IndexValue::Uri { uri: "http://example.org/p".into() }]);
    assert!(values(&e, "_id").is_empty(), "_id is a column, not an entry");
    assert_eq!(patient_compartments(Definitions::r4(), &json!({"resourceType": "Patient", "id": "p1"})), ["p1"]);
}

#[test]
fn observation_parameters_and_composites() {
    let obs = json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"}]},
        "subject": {"reference": "Patient/p1"},
        "performer": [{"reference": "Practitioner/d1"}],
        "effectivePeriod": {"start": "2024-05-01T08:00:00+08:00"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80.5, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    let e = entries(obs.clone());
    assert_eq!(
        values(&e, "code"),
        [&IndexValue::Token {
            system: Some("http://loinc.org".into()),
            code: Some("85354-9".into()),
            text: Some("Blood pressure".into())
        }]
    );
    let subject = values(&e, "subject");
    assert_eq!(subject.len(), 1);
    assert!(
        matches!(subject[0], IndexValue::Reference { target_type: Some(t), target_id: Some(i), .. } if t == "Patient" && i == "p1")
    );
    assert_eq!(values(&e, "patient").len(), 1);
    let date = values(&e, "date");
    assert!(matches!(date[0], IndexValue::Date { high: i64::MAX, .. }), "open period ends at +infinity");
    assert_eq!(values(&e, "component-code").len(), 2);
    let cvq = values(&e, "component-code-value-quantity");
    assert_eq!(cvq.len(), 2, "one composite per component");
    let IndexValue::Composite { components } = cvq[1] else { panic!("composite") };
    assert!(
        matches!(&components[1], IndexValue::Quantity { value, code: Some(c), .. } if *value == 80.5 && c == "mm[Hg]")
    );
    assert!(values(&e, "value-quantity").is_empty());
    assert_eq!(patient_compartments(Definitions::r4(), &obs), ["p1"]);
}

#[test]
fn decimal_precision_is_kept() {
    let text = r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "valueQuantity": {"value": 1.50, "code": "mg"}}"#;
    let e = entries(serde_json::from_str(text).unwrap());
    let IndexValue::Quantity { low, high, .. } = values(&e, "value-quantity")[0] else { panic!() };
    // "1.50" has two decimals: the range is [1.495, 1.505], not the [1.45, 1.55] of "1.5".
    assert!((*high - *low - 0.01).abs() < 1e-9);
}

#[test]
fn encounter_condition_medication() {
    let enc = entries(
        json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"}, "period": {"start": "2024-01-01", "end": "2024-01-02"},
        "serviceProvider": {"reference": "Organization/h1"}}),
    );
    assert_eq!(values(&enc, "class"), [&token(Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"), "AMB")]);
    let IndexValue::Date { low, high } = values(&enc, "date")[0] else { panic!() };
    assert_eq!((*low, *high), (date_range("2024-01-01").unwrap().0, date_range("2024-01-02").unwrap().1));
    let cond = entries(json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]}, "onsetDateTime": "2020-03"}));
    assert_eq!(values(&cond, "code"), [&token(Some("http://hl7.org/fhir/sid/icd-10"), "E11.9")]);
    assert_eq!(values(&cond, "onset-date").len(), 1);
    let med = entries(json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "二甲双胍"}, "subject": {"reference": "Patient/p1"}, "authoredOn": "2024-02-02"}));
    assert_eq!(values(&med, "code"), [&IndexValue::Token { system: None, code: None, text: Some("二甲双胍".into()) }]);
    assert_eq!(values(&med, "authoredon").len(), 1);
}

#[test]
fn references_parse() {
    assert!(matches!(reference_value("Patient/1/_history/2", None),
        IndexValue::Reference { target_type: Some(t), target_id: Some(i), version: Some(v), url: None, .. } if t == "Patient" && i == "1" && v == "2"));
    assert!(matches!(reference_value("http://other.org/fhir/Patient/9", None),
        IndexValue::Reference { target_type: Some(t), url: Some(_), .. } if t == "Patient"));
    assert!(matches!(
        reference_value("#contained1", None),
        IndexValue::Reference { target_type: None, url: Some(_), .. }
    ));
}

#[test]
fn unsupported_are_few_and_explained() {
    let unsupported = unsupported_params();
    assert!(unsupported.iter().all(|(_, _, reason)| !reason.is_empty()));
    // Specials (e.g. Location.near) and a few composites of 3 parts are all that is missing.
    assert!(unsupported.len() < 40, "{unsupported:?}");
}

proptest::proptest! {
    #[test]
    fn extraction_never_panics(ty in proptest::sample::select(vec!["Patient", "Observation", "Encounter", "Bundle", "Nope"]),
                               key in "[a-zA-Z]{1,12}", text in ".{0,20}", n in proptest::num::i64::ANY) {
        let r = json!({"resourceType": ty, key.clone(): text, "code": {"coding": [{"code": n}]}, "valueQuantity": {"value": text}});
        let _ = extract(Definitions::r4(), &r);
        let _ = patient_compartments(Definitions::r4(), &r);
    }
}
