//! The terminology operations over stored CodeSystems, ValueSets and ConceptMaps and the
//! preloaded content: results, errors as OperationOutcomes, who may call, the audit trail.

use access::{Principal, Role, Scopes};
use engine::EngineError;
use serde_json::{Value, json};
use store::Ctx;

use super::{ctx, engine, opts, pairs};

const LOCAL: &str = "http://example.org/fhir/CodeSystem/local-lab";

fn code_system() -> Value {
    json!({"resourceType": "CodeSystem", "url": LOCAL, "version": "1", "name": "LocalLab", "status": "active",
        "content": "complete", "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.5"}],
        "concept": [
            {"code": "CHEM", "display": "Chemistry", "concept": [
                {"code": "GLU", "display": "Glucose", "designation": [{"language": "zh", "value": "葡萄糖"}]},
                {"code": "NA", "display": "Sodium"}]},
            {"code": "HEME", "display": "Haematology"}]})
}

fn param<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["parameter"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap_or(&Value::Null)
}

fn as_role(role: Role, scopes: &str) -> Ctx {
    Ctx::for_principal(
        "req-t".into(),
        Principal {
            subject: format!("user/{}", role.code()),
            role,
            organization: Some("org1".into()),
            region: Some("350102".into()),
            practitioner: None,
            patients: Vec::new(),
            scopes: Scopes::parse(scopes).unwrap(),
            purpose: role.default_purpose().into(),
            break_glass: None,
        },
        None,
    )
}

async fn call(e: &engine::Engine, rt: &str, name: &str, q: &[(&str, &str)]) -> engine::EngineResult<Value> {
    e.terminology_operation(&ctx(), rt, None, name, &pairs(q), None).await
}

fn issue_text(e: &EngineError) -> String {
    e.issues().iter().map(|i| i.diagnostics.clone()).collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn stored_code_system_value_set_and_concept_map_are_used() {
    let t = engine();
    let e = &t.engine;
    let cs = e.create(&ctx(), "CodeSystem", code_system(), &opts()).await.unwrap();
    let vs = json!({"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/chemistry", "status": "active",
        "compose": {"include": [{"system": LOCAL, "filter": [{"property": "concept", "op": "is-a", "value": "CHEM"}]}]}});
    let vs_id = e.create(&ctx(), "ValueSet", vs, &opts()).await.unwrap().resource.id;
    let cm = json!({"resourceType": "ConceptMap", "url": "http://example.org/fhir/ConceptMap/lab-to-loinc", "status": "active",
        "group": [{"source": LOCAL, "target": "http://loinc.org",
                   "element": [{"code": "GLU", "target": [{"code": "2345-7", "display": "Glucose [Mass/volume] in Serum or Plasma", "equivalence": "equivalent"}]}]}]});
    let cm_id = e.create(&ctx(), "ConceptMap", cm, &opts()).await.unwrap().resource.id;

    // $lookup by URL and by the OID identifier, with the hierarchy.
    let p = call(e, "CodeSystem", "lookup", &[("system", LOCAL), ("code", "GLU")]).await.unwrap();
    assert_eq!(param(&p, "display")["valueString"], "Glucose");
    assert!(
        p["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "property" && x["part"][1]["valueCode"] == "CHEM")
    );
    let by_oid = call(e, "CodeSystem", "lookup", &[("system", "urn:oid:1.2.3.4.5"), ("code", "NA")]).await.unwrap();
    assert_eq!(param(&by_oid, "display")["valueString"], "Sodium");

    // CodeSystem/$validate-code at instance level, with a display that is not the code's.
    let v = e
        .terminology_operation(
            &ctx(),
            "CodeSystem",
            Some(&cs.resource.id),
            "validate-code",
            &pairs(&[("code", "GLU"), ("display", "Sugar")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(param(&v, "result")["valueBoolean"], false);
    assert!(param(&v, "message")["valueString"].as_str().unwrap().contains("expected 'Glucose'"));

    // ValueSet/$expand (type level by url, POST Parameters; instance level by id).
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": "http://example.org/fhir/ValueSet/chemistry"},
        {"name": "filter", "valueString": "葡萄"},
        {"name": "includeDesignations", "valueBoolean": true}]});
    let x = e.terminology_operation(&ctx(), "ValueSet", None, "expand", &[], Some(body)).await.unwrap();
    assert_eq!(x["expansion"]["total"], 1);
    assert_eq!(x["expansion"]["contains"][0]["code"], "GLU");
    assert!(x["expansion"]["timestamp"].is_string());
    let all = e.terminology_operation(&ctx(), "ValueSet", Some(&vs_id), "expand", &[], None).await.unwrap();
    assert_eq!(all["expansion"]["total"], 3);
    assert_eq!(all["id"], vs_id.as_str());

    // ValueSet/$validate-code: HEME is in the system but not under CHEM.
    let out = e
        .terminology_operation(
            &ctx(),
            "ValueSet",
            Some(&vs_id),
            "validate-code",
            &pairs(&[("system", LOCAL), ("code", "HEME")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(param(&out, "result")["valueBoolean"], false);
    let coding = json!({"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": "http://example.org/fhir/ValueSet/chemistry"},
        {"name": "codeableConcept", "valueCodeableConcept": {"coding": [{"system": "http://other", "code": "x"}, {"system": LOCAL, "code": "NA"}]}}]});
    let yes = e.terminology_operation(&ctx(), "ValueSet", None, "validate-code", &[], Some(coding)).await.unwrap();
    assert_eq!(param(&yes, "result")["valueBoolean"], true);

    // ConceptMap/$translate, instance level.
    let tr = e
        .terminology_operation(
            &ctx(),
            "ConceptMap",
            Some(&cm_id),
            "translate",
            &pairs(&[("system", LOCAL), ("code", "GLU")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(param(&tr, "result")["valueBoolean"], true);
    assert_eq!(param(&tr, "match")["part"][1]["valueCoding"]["code"], "2345-7");

    // An update through the API is seen by the next operation (the layer is dropped on write).
    let mut changed = code_system();
    changed["id"] = json!(cs.resource.id);
    changed["concept"][1]["display"] = json!("Hematology");
    e.update(&ctx(), "CodeSystem", &cs.resource.id, changed, &opts()).await.unwrap();
    let p = call(e, "CodeSystem", "lookup", &[("system", LOCAL), ("code", "HEME")]).await.unwrap();
    assert_eq!(param(&p, "display")["valueString"], "Hematology");
}

#[tokio::test]
async fn preloaded_content_through_the_engine() {
    let t = engine();
    let e = &t.engine;
    let p = call(
        e,
        "ValueSet",
        "expand",
        &[("url", "http://hl7.org/fhir/sid/icd-10?vs"), ("filter", "asthma"), ("count", "3")],
    )
    .await
    .unwrap();
    assert!(p["expansion"]["total"].as_u64().unwrap() >= 3);
    assert_eq!(p["expansion"]["contains"].as_array().unwrap().len(), 3);
    let sex = call(e, "CodeSystem", "validate-code", &[("url", "urn:oid:2.16.156.10011.2.3.3.4"), ("code", "1")])
        .await
        .unwrap();
    assert_eq!(param(&sex, "result")["valueBoolean"], true);
    assert_eq!(param(&sex, "display")["valueString"], "男");
    let tr = call(
        e,
        "ConceptMap",
        "translate",
        &[
            ("system", "http://hutong.health/fhir/CodeSystem/gb-t-2261.1-sex"),
            ("code", "2"),
            ("targetsystem", "http://hl7.org/fhir/administrative-gender"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(param(&tr, "match")["part"][1]["valueCoding"]["code"], "female");
}

#[tokio::test]
async fn errors_are_operation_outcomes_with_a_status() {
    let t = engine();
    let e = &t.engine;
    let op = |rt, name, q| call(e, rt, name, q);
    let unknown =
        op("CodeSystem", "lookup", &[("system", "http://example.org/unknown"), ("code", "1")]).await.unwrap_err();
    assert_eq!(unknown.http_status(), 404);
    assert!(issue_text(&unknown).contains("http://example.org/unknown is not known to this server"), "{unknown:?}");
    let no_vs = op("ValueSet", "expand", &[("url", "http://example.org/vs/none")]).await.unwrap_err();
    assert_eq!(no_vs.http_status(), 404);
    assert!(issue_text(&no_vs).contains("create it as a ValueSet resource"));
    let bad_count =
        op("ValueSet", "expand", &[("url", "http://hl7.org/fhir/ValueSet/administrative-gender"), ("count", "-1")])
            .await
            .unwrap_err();
    assert_eq!(bad_count.http_status(), 400);
    let unknown_param = op("ValueSet", "expand", &[("url", "x"), ("colour", "red")]).await.unwrap_err();
    assert_eq!(unknown_param.http_status(), 400);
    assert!(issue_text(&unknown_param).contains("no parameter 'colour'"));
    let no_code =
        op("CodeSystem", "lookup", &[("system", "http://hl7.org/fhir/administrative-gender")]).await.unwrap_err();
    assert_eq!(no_code.http_status(), 400);
    let unknown_code =
        op("CodeSystem", "lookup", &[("system", "http://hl7.org/fhir/administrative-gender"), ("code", "x")])
            .await
            .unwrap_err();
    assert_eq!(unknown_code.http_status(), 404);
    let missing_instance =
        e.terminology_operation(&ctx(), "ValueSet", Some("nope"), "expand", &[], None).await.unwrap_err();
    assert_eq!(missing_instance.http_status(), 404);
    let not_parameters = e
        .terminology_operation(&ctx(), "ValueSet", None, "expand", &[], Some(json!({"resourceType": "Patient"})))
        .await
        .unwrap_err();
    assert_eq!(not_parameters.http_status(), 400);
}

#[tokio::test]
async fn callers_need_read_scopes_and_every_call_is_audited() {
    let t = engine();
    let e = &t.engine;
    let q = pairs(&[("system", "http://hl7.org/fhir/administrative-gender"), ("code", "male")]);
    let doctor = as_role(Role::Doctor, "user/*.read");
    e.terminology_operation(&doctor, "CodeSystem", None, "lookup", &q, None).await.unwrap();
    let narrow = as_role(Role::System, "system/Patient.read");
    let denied = e.terminology_operation(&narrow, "CodeSystem", None, "lookup", &q, None).await.unwrap_err();
    assert!(matches!(denied, EngineError::Forbidden(_)), "{denied:?}");
    let auditor = as_role(Role::Auditor, "user/*.read");
    assert!(e.terminology_operation(&auditor, "CodeSystem", None, "lookup", &q, None).await.is_err());

    e.flush_audit().await.unwrap();
    let log = e.store().audit_read(0, 1000).await.unwrap();
    let text: Vec<String> = log
        .iter()
        .map(|a| format!("{} {} {} {}", a.record.action, a.record.outcome, a.record.entity, a.record.detail))
        .collect();
    assert!(text.iter().any(|l| l.contains("CodeSystem/$lookup") && l.contains("success")), "{text:?}");
    assert!(log.iter().any(|a| a.record.outcome == "denied" && a.record.entity == "CodeSystem/$lookup"));
    assert!(log.iter().all(|a| a.record.patients.is_empty()));
}

#[tokio::test]
async fn stored_value_sets_include_stored_value_sets_and_versions_are_kept_apart() {
    let t = engine();
    let e = &t.engine;
    let mut v1 = code_system();
    v1["id"] = json!("lab-1");
    e.update(&ctx(), "CodeSystem", "lab-1", v1, &opts()).await.unwrap();
    let mut v2 = code_system();
    v2["id"] = json!("lab-2");
    v2["version"] = json!("2");
    v2["concept"][1]["code"] = json!("HAEM");
    e.update(&ctx(), "CodeSystem", "lab-2", v2, &opts()).await.unwrap();
    // An outer set that includes an inner one (both only in the store), minus one code.
    let inner = json!({"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/inner", "status": "active",
        "compose": {"include": [{"system": LOCAL, "version": "1"}]}});
    let outer = json!({"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/outer", "status": "active",
        "compose": {"include": [{"valueSet": ["http://example.org/fhir/ValueSet/inner"]}],
                    "exclude": [{"system": LOCAL, "concept": [{"code": "NA"}]}]}});
    e.create(&ctx(), "ValueSet", inner, &opts()).await.unwrap();
    e.create(&ctx(), "ValueSet", outer, &opts()).await.unwrap();
    let x = call(e, "ValueSet", "expand", &[("url", "http://example.org/fhir/ValueSet/outer")]).await.unwrap();
    let codes: Vec<&str> =
        x["expansion"]["contains"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["CHEM", "GLU", "HEME"]);

    let in_v1 =
        call(e, "CodeSystem", "validate-code", &[("url", LOCAL), ("version", "1"), ("code", "HEME")]).await.unwrap();
    assert_eq!(param(&in_v1, "result")["valueBoolean"], true);
    let in_v2 =
        call(e, "CodeSystem", "validate-code", &[("url", LOCAL), ("version", "2"), ("code", "HEME")]).await.unwrap();
    assert_eq!(param(&in_v2, "result")["valueBoolean"], false);
    let missing =
        call(e, "CodeSystem", "lookup", &[("system", LOCAL), ("version", "3"), ("code", "GLU")]).await.unwrap_err();
    assert_eq!(missing.http_status(), 400);
    assert!(issue_text(&missing).contains("has no version '3'"), "{missing:?}");
}
