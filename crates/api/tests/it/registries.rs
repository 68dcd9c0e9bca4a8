//! The facility and practitioner registries over HTTP: a registry rule broken on write is a 422
//! OperationOutcome naming the element, and `GET Practitioner/{id}/$eligibility` answers a
//! Parameters resource (documented systems written out, as clients send them).

use axum::http::StatusCode;
use serde_json::json;

use super::{FHIR, app, assert_outcome, req, send};

#[tokio::test]
async fn registry_writes_and_eligibility_over_http() {
    let app = app(1 << 20).await;
    let hospital = json!({"resourceType": "Organization", "id": "h1", "name": "鼓楼区示例医院",
        "identifier": [{"system": "https://hutong.dev/fhir/sid/uscc", "value": "12350100MB0000001Y"}],
        "type": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/institution-type", "code": "hospital"}]}],
        "address": [{"extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/gb2260-division", "valueCode": "350102"}]}]});
    let (status, _, body) = send(&app, req("PUT", "/fhir/Organization/h1", FHIR, &hospital.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut unknown = hospital.clone();
    unknown["address"][0]["extension"][0]["valueCode"] = json!("359999");
    let (status, _, body) = send(&app, req("PUT", "/fhir/Organization/h1", FHIR, &unknown.to_string())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_outcome(&body, "359999");
    assert_eq!(body["issue"][0]["expression"][0], "Organization.address[0].extension[0].valueCode");

    let doctor = json!({"resourceType": "Practitioner", "id": "d1",
        "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/independent-practice-start", "valueDate": "2024-09-01"}],
        "qualification": [{"code": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/qualification-type", "code": "physician-practice"}]},
                           "period": {"start": "2024-09-01"}}]});
    let role = json!({"resourceType": "PractitionerRole", "id": "r1",
        "practitioner": {"reference": "Practitioner/d1"}, "organization": {"reference": "Organization/h1"},
        "code": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/practice-registration", "code": "internet-practice"}]}]});
    for (url, resource) in [("/fhir/Practitioner/d1", doctor), ("/fhir/PractitionerRole/r1", role)] {
        let (status, _, body) = send(&app, req("PUT", url, FHIR, &resource.to_string())).await;
        assert!(status.is_success(), "{body}");
    }

    let uri = "/fhir/Practitioner/d1/$eligibility?organization=Organization%2Fh1&activity=prescribe&date=2026-06-01";
    let (status, headers, body) = send(&app, req("GET", uri, None, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    assert_eq!(body["resourceType"], "Parameters");
    assert_eq!(body["parameter"][0], json!({"name": "eligible", "valueBoolean": false}));
    let reasons: Vec<&str> = body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "reason")
        .map(|p| p["valueCodeableConcept"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["independent-practice", "prescribing-right"], "{body}");

    let (status, _, body) = send(
        &app,
        req("GET", "/fhir/Practitioner/d1/$eligibility?organization=h1&activity=consult&date=1.6.2026", None, ""),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "YYYY-MM-DD");
    let (status, _, body) =
        send(&app, req("GET", "/fhir/Practitioner/nobody/$eligibility?organization=h1&activity=consult", None, ""))
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, _) = send(&app, req("POST", uri, FHIR, "{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
