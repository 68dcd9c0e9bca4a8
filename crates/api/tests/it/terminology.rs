//! The terminology operations over HTTP: GET with query parameters, POST with a Parameters
//! body, instance level on a stored ValueSet, and errors as OperationOutcomes.

use axum::http::StatusCode;
use serde_json::json;

use super::{app, assert_outcome, req, send};

const FHIR: &str = "application/fhir+json";

#[tokio::test]
async fn terminology_operations_over_http() {
    let t = app(1 << 20).await;
    // GET $validate-code with the OID form of the GB/T 2261.1 system.
    let (status, _, body) =
        send(&t, req("GET", "/fhir/CodeSystem/$validate-code?url=urn:oid:2.16.156.10011.2.3.3.4&code=2", None, ""))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["parameter"][0], json!({"name": "result", "valueBoolean": true}));
    assert_eq!(body["parameter"][1]["valueString"], "女");

    // GET $lookup on ICD-10.
    let (status, _, body) =
        send(&t, req("GET", "/fhir/CodeSystem/$lookup?system=http://hl7.org/fhir/sid/icd-10&code=J45.0", None, ""))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("Predominantly allergic asthma"), "{body}");

    // POST $expand with a text filter and paging.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": "http://hl7.org/fhir/sid/icd-10?vs"},
        {"name": "filter", "valueString": "tuberculosis lung"},
        {"name": "count", "valueInteger": 2}]});
    let (status, _, body) = send(&t, req("POST", "/fhir/ValueSet/$expand", Some(FHIR), &params.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resourceType"], "ValueSet");
    assert_eq!(body["expansion"]["contains"].as_array().unwrap().len(), 2);
    assert!(body["expansion"]["total"].as_u64().unwrap() >= 2);

    // A stored ValueSet, expanded and validated against at instance level.
    let vs = json!({"resourceType": "ValueSet", "url": "http://example.org/vs/sex-known", "status": "active",
        "compose": {"include": [{"system": "http://hutong.health/fhir/CodeSystem/gb-t-2261.1-sex",
                                 "concept": [{"code": "1"}, {"code": "2"}]}]}});
    let (status, headers, _) = send(&t, req("POST", "/fhir/ValueSet", Some(FHIR), &vs.to_string())).await;
    assert_eq!(status, StatusCode::CREATED);
    let location = headers["location"].to_str().unwrap();
    let id = location.split("/ValueSet/").nth(1).unwrap().split('/').next().unwrap();
    let (status, _, body) =
        send(&t, req("GET", &format!("/fhir/ValueSet/{id}/$expand?displayLanguage=en"), None, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expansion"]["total"], 2);
    assert_eq!(body["expansion"]["contains"][0]["display"], "Male");
    let (status, _, body) = send(
        &t,
        req(
            "GET",
            &format!(
                "/fhir/ValueSet/{id}/$validate-code?system=http://hutong.health/fhir/CodeSystem/gb-t-2261.1-sex&code=9"
            ),
            None,
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["parameter"][0]["valueBoolean"], false);

    // POST $translate.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": "http://hutong.health/fhir/CodeSystem/gb-t-2261.1-sex", "code": "1"}},
        {"name": "targetsystem", "valueUri": "http://hl7.org/fhir/administrative-gender"}]});
    let (status, _, body) = send(&t, req("POST", "/fhir/ConceptMap/$translate", Some(FHIR), &params.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("\"code\":\"male\""), "{body}");

    // Errors: unknown value set (404), bad parameter (400), wrong method (405).
    let (status, _, body) =
        send(&t, req("GET", "/fhir/ValueSet/$expand?url=http://example.org/vs/none", None, "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&body, "is not known to this server");
    let (status, _, body) = send(
        &t,
        req("GET", "/fhir/ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/administrative-gender&offset=x", None, ""),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "'offset' must be a whole number");
    let (status, _, _) = send(&t, req("DELETE", "/fhir/ValueSet/$expand", None, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // The CapabilityStatement lists the operations.
    let (_, _, cap) = send(&t, req("GET", "/fhir/metadata", None, "")).await;
    let value_set = cap["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "ValueSet").unwrap();
    let names: Vec<&str> =
        value_set["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["expand", "validate-code"]);
}
