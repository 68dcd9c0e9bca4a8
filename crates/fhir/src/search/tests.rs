//! Search-query parsing: tables of inputs and the typed queries or errors they give.

use super::*;
use crate::normalize::date_range;

fn q(resource_type: &str, pairs: &[(&str, &str)]) -> Result<Parsed, Vec<Issue>> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    parse(Definitions::r4(), Some(resource_type), &pairs, &ParseOptions::default())
}

fn one(resource_type: &str, name: &str, value: &str) -> Criterion {
    let parsed = q(resource_type, &[(name, value)]).unwrap_or_else(|e| panic!("{name}={value}: {e:?}"));
    assert_eq!(parsed.query.criteria.len(), 1);
    parsed.query.criteria.into_iter().next().unwrap()
}

fn err(resource_type: &str, name: &str, value: &str) -> String {
    let issues = q(resource_type, &[(name, value)]).expect_err("must fail");
    assert_eq!(issues[0].expression.as_deref(), Some(name));
    issues[0].diagnostics.clone()
}

#[test]
fn tokens() {
    let Criterion::Param { param, modifier, values } =
        one("Patient", "identifier", "urn:oid:2.16.156.10011.1.3|110105")
    else {
        panic!()
    };
    assert_eq!(param.kind, ParamType::Token);
    assert_eq!(modifier, None);
    assert_eq!(
        values,
        [ParamValue::Token { system: Some(Some("urn:oid:2.16.156.10011.1.3".into())), code: Some("110105".into()) }]
    );
    let Criterion::Param { values, .. } = one("Patient", "gender", "male,female") else { panic!() };
    assert_eq!(values.len(), 2);
    let Criterion::Param { values, .. } = one("Observation", "code", "|abc") else { panic!() };
    assert_eq!(values, [ParamValue::Token { system: Some(None), code: Some("abc".into()) }]);
    let Criterion::Param { values, .. } = one("Observation", "code", "http://loinc.org|") else { panic!() };
    assert_eq!(values, [ParamValue::Token { system: Some(Some("http://loinc.org".into())), code: None }]);
    let Criterion::Param { modifier, .. } = one("Patient", "gender", "male").clone() else { panic!() };
    assert_eq!(modifier, None);
    let Criterion::Param { modifier, .. } = one("Patient", "gender:not", "male") else { panic!() };
    assert_eq!(modifier, Some(Modifier::Not));
    let Criterion::Param { modifier, values, .. } = one("Observation", "code:text", "blood") else { panic!() };
    assert_eq!((modifier, values), (Some(Modifier::Text), vec![ParamValue::String("blood".into())]));
}

#[test]
fn escapes() {
    let Criterion::Param { values, .. } = one("Patient", "name", r"a\,b,c") else { panic!() };
    assert_eq!(values, [ParamValue::String("a,b".into()), ParamValue::String("c".into())]);
    let Criterion::Param { values, .. } = one("Observation", "code", r"sys\|x|c") else { panic!() };
    assert_eq!(values, [ParamValue::Token { system: Some(Some("sys|x".into())), code: Some("c".into()) }]);
}

#[test]
fn dates_and_prefixes() {
    let Criterion::Param { values, .. } = one("Patient", "birthdate", "ge1990-01") else { panic!() };
    let (low, high) = date_range("1990-01").unwrap();
    assert_eq!(values, [ParamValue::Date { prefix: Prefix::Ge, low, high }]);
    let Criterion::Param { values, .. } = one("Observation", "date", "2024-05-01T08:00:00+08:00") else { panic!() };
    assert!(matches!(values[0], ParamValue::Date { prefix: Prefix::Eq, .. }));
    assert!(err("Patient", "birthdate", "1990-13-01").contains("not a valid date"));
    assert!(err("Patient", "birthdate", "xx2020").contains("not a valid date"));
    let Criterion::Param { param, .. } = one("Patient", "_lastUpdated", "gt2020") else { panic!() };
    assert_eq!(param.kind, ParamType::Date);
}

#[test]
fn numbers_and_quantities() {
    let Criterion::Param { values, .. } = one("RiskAssessment", "probability", "gt0.8") else { panic!() };
    assert!(matches!(values[0], ParamValue::Number { prefix: Prefix::Gt, value, .. } if value == 0.8));
    let Criterion::Param { values, .. } = one("Observation", "value-quantity", "le5.4|http://unitsofmeasure.org|mg")
    else {
        panic!()
    };
    assert!(
        matches!(&values[0], ParamValue::Quantity { prefix: Prefix::Le, value, system: Some(s), code: Some(c), .. }
        if *value == 5.4 && s == "http://unitsofmeasure.org" && c == "mg")
    );
    let Criterion::Param { values, .. } = one("Observation", "value-quantity", "5.4||mg") else { panic!() };
    assert!(matches!(&values[0], ParamValue::Quantity { system: None, code: Some(c), .. } if c == "mg"));
    assert!(err("Observation", "value-quantity", "abc").contains("not a quantity"));
}

#[test]
fn references() {
    let Criterion::Param { values, .. } = one("Observation", "subject", "Patient/123") else { panic!() };
    assert_eq!(
        values,
        [ParamValue::Reference {
            resource_type: Some("Patient".into()),
            id: Some("123".into()),
            version: None,
            url: None
        }]
    );
    let Criterion::Param { values, modifier, .. } = one("Observation", "subject:Patient", "123") else { panic!() };
    assert_eq!(modifier, Some(Modifier::Type("Patient".into())));
    assert_eq!(
        values,
        [ParamValue::Reference {
            resource_type: Some("Patient".into()),
            id: Some("123".into()),
            version: None,
            url: None
        }]
    );
    let Criterion::Param { values, .. } = one("Observation", "subject:identifier", "urn:oid:1|42") else { panic!() };
    assert!(matches!(values[0], ParamValue::Token { .. }));
    assert!(err("Observation", "subject", "Banana/1").contains("not one"));
    assert!(err("Observation", "subject:Medication", "1").contains("cannot refer"));
}

#[test]
fn modifiers_and_missing() {
    let Criterion::Param { modifier, .. } = one("Patient", "name:exact", "张三") else { panic!() };
    assert_eq!(modifier, Some(Modifier::Exact));
    let Criterion::Param { modifier, .. } = one("Patient", "family:contains", "an") else { panic!() };
    assert_eq!(modifier, Some(Modifier::Contains));
    assert_eq!(
        one("Patient", "birthdate:missing", "true"),
        Criterion::Missing {
            param: ParamRef { code: "birthdate".into(), kind: ParamType::Date, targets: vec![] },
            missing: true
        }
    );
    assert!(err("Patient", "birthdate:missing", "maybe").contains("true or false"));
    assert!(err("Patient", "birthdate:exact", "2020").contains("cannot be used"));
    assert!(err("Observation", "code:in", "http://x/vs").contains("not support"));
}

#[test]
fn chains_and_has() {
    let Criterion::Chain { param, target_types, criterion } = one("Observation", "subject:Patient.name", "张") else {
        panic!()
    };
    assert_eq!(param.code, "subject");
    assert_eq!(target_types, ["Patient"]);
    assert!(matches!(*criterion, Criterion::Param { ref param, .. } if param.code == "name"));
    let Criterion::Chain { target_types, .. } = one("Observation", "subject.birthdate", "1990") else { panic!() };
    assert!(target_types.contains(&"Patient".to_string()));
    assert!(!target_types.contains(&"Device".to_string()), "Device has no birthdate");
    let Criterion::Chain { criterion, .. } = one("Encounter", "subject.organization.name", "医院") else { panic!() };
    assert!(matches!(*criterion, Criterion::Chain { .. }));
    let Criterion::Has { source_type, reference_param, criterion } =
        one("Patient", "_has:Observation:patient:code", "1234-5")
    else {
        panic!()
    };
    assert_eq!((source_type.as_str(), reference_param.code.as_str()), ("Observation", "patient"));
    assert!(matches!(*criterion, Criterion::Param { .. }));
    assert!(err("Patient", "_has:Observation:code:code", "1").contains("not a reference"));
    assert!(err("Observation", "subject.nonsense", "1").contains("nonsense"));
}

#[test]
fn composites() {
    let Criterion::Param { values, .. } = one("Observation", "code-value-quantity", "http://loinc.org|8480-6$gt100")
    else {
        panic!()
    };
    let ParamValue::Composite(parts) = &values[0] else { panic!() };
    assert!(matches!(parts[0], ParamValue::Token { .. }));
    assert!(matches!(parts[1], ParamValue::Quantity { prefix: Prefix::Gt, value, .. } if value == 100.0));
    assert!(err("Observation", "code-value-quantity", "abc").contains("2 parts"));
}

#[test]
fn result_parameters() {
    let p = q(
        "Observation",
        &[
            ("_count", "5000"),
            ("_offset", "40"),
            ("_sort", "-date,code"),
            ("_total", "none"),
            ("_summary", "data"),
            ("_elements", "code,subject"),
            ("_include", "Observation:subject"),
            ("_revinclude:iterate", "Provenance:target"),
            ("_format", "json"),
        ],
    )
    .unwrap();
    assert_eq!(p.query.count, 1000, "clamped to max_count");
    assert_eq!(p.warnings.len(), 1);
    assert_eq!(p.query.offset, 40);
    assert_eq!(p.query.sort.len(), 2);
    assert!(p.query.sort[0].descending && !p.query.sort[1].descending);
    assert_eq!(p.query.total, TotalMode::None);
    assert_eq!(p.query.summary, Some(SummaryMode::Data));
    assert_eq!(p.query.elements.as_deref(), Some(&["code".to_string(), "subject".to_string()][..]));
    assert_eq!(p.query.includes[0].param.as_deref(), Some("subject"));
    assert!(p.query.revincludes[0].iterate);
    assert!(err("Patient", "_count", "-1").contains("non-negative"));
    assert!(err("Patient", "_sort", "nonsense").contains("cannot sort"));
    assert!(err("Patient", "_include", "Patient:name").contains("not a reference"));
}

#[test]
fn unknown_parameters_strict_and_lenient() {
    let message = err("Patient", "nmae", "x");
    assert!(message.contains("Unknown search parameter 'nmae' for Patient"), "{message}");
    let pairs = vec![("nmae".to_string(), "x".to_string()), ("gender".to_string(), "male".to_string())];
    let lenient = ParseOptions { lenient: true, ..ParseOptions::default() };
    let parsed = parse(Definitions::r4(), Some("Patient"), &pairs, &lenient).unwrap();
    assert_eq!(parsed.query.criteria.len(), 1);
    assert_eq!(parsed.warnings.len(), 1);
}

#[test]
fn system_search() {
    let pairs = vec![
        ("_type".to_string(), "Patient,Observation".to_string()),
        ("_lastUpdated".to_string(), "gt2020".to_string()),
    ];
    let parsed = parse(Definitions::r4(), None, &pairs, &ParseOptions::default()).unwrap();
    assert_eq!(parsed.query.types, ["Patient", "Observation"]);
    let pairs = vec![("_type".to_string(), "Nope".to_string())];
    assert!(parse(Definitions::r4(), None, &pairs, &ParseOptions::default()).is_err());
}

/// A plausible value for every official parameter of every type parses.
#[test]
fn every_official_parameter_parses() {
    let defs = Definitions::r4();
    let mut failures = Vec::new();
    for t in defs.resource_types() {
        for p in defs.search_params_for(t) {
            let value = match p.kind {
                ParamType::Token => "a|b".to_string(),
                ParamType::Date => "2020-01-01".into(),
                ParamType::Number => "5".into(),
                ParamType::Quantity => "5||mg".into(),
                ParamType::Reference => p.targets.first().map_or("x".to_string(), |t| format!("{t}/1")),
                ParamType::String => "x".into(),
                ParamType::Uri => "http://x".into(),
                ParamType::Composite => p
                    .components
                    .iter()
                    .map(|c| match defs.search_param_by_url(&c.definition).map(|d| d.kind) {
                        Some(ParamType::Quantity) => "5",
                        Some(ParamType::Date) => "2020",
                        Some(ParamType::Number) => "1",
                        Some(ParamType::Reference) => "1",
                        _ => "a",
                    })
                    .collect::<Vec<_>>()
                    .join("$"),
                ParamType::Special => continue,
            };
            if matches!(p.code.as_str(), "_text" | "_content" | "_list" | "_query" | "_filter") {
                continue;
            }
            if let Err(e) = q(t, &[(&p.code, &value)]) {
                failures.push(format!("{t}.{}={value}: {}", p.code, e[0].diagnostics));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(name in "[_a-z:.$|\\-]{0,24}", value in ".{0,30}") {
        let _ = q("Observation", &[(&name, &value)]);
        let _ = parse(Definitions::r4(), None, &[(name, value)], &ParseOptions::default());
    }
}
