//! The facility and practitioner registries through the engine: write rules (422 with element
//! paths, plain FHIR Organizations still accepted), division search by hierarchy, and
//! `Practitioner/$eligibility` (answers, parameters, who may ask, audit).

use access::{Role, Scopes};
use engine::EngineError;
use registry::facility::{
    ALLIANCE_ROLE_SYSTEM, INSTITUTION_LEVEL_EXTENSION, INSTITUTION_LEVEL_SYSTEM, INSTITUTION_TYPE_SYSTEM, USCC_SYSTEM,
};
use registry::practitioner::{
    INDEPENDENT_PRACTICE_START_EXTENSION, PRACTICE_CERTIFICATE_SYSTEM, QUALIFICATION_TYPE_SYSTEM, REGISTRATION_SYSTEM,
};
use serde_json::{Value, json};
use store::Ctx;

use super::matching::as_role;
use super::{ctx, engine, opts, pairs};

fn hospital(id: &str, credit_code: &str, division: &str) -> Value {
    json!({"resourceType": "Organization", "id": id, "name": format!("医院 {id}"),
        "identifier": [{"system": USCC_SYSTEM, "value": credit_code}],
        "type": [{"coding": [{"system": INSTITUTION_TYPE_SYSTEM, "code": "hospital"}]}],
        "extension": [{"url": INSTITUTION_LEVEL_EXTENSION, "valueCoding": {"system": INSTITUTION_LEVEL_SYSTEM, "code": "3A"}}],
        "address": [{"extension": [{"url": access::DIVISION_EXTENSION, "valueCode": division}]}]})
}

fn expressions(err: &EngineError) -> Vec<String> {
    err.issues().iter().filter_map(|i| i.expression.clone()).collect()
}

#[tokio::test]
async fn organization_writes_follow_the_registry_rules() {
    let t = engine();
    let e = &t.engine;
    let valid = hospital("h1", "12350100MB0000001Y", "350102");
    e.update(&ctx(), "Organization", "h1", valid.clone(), &opts()).await.expect("a valid registry institution");

    let mut bad_check = hospital("h2", "12350100MB0000001X", "350102");
    let err = e.update(&ctx(), "Organization", "h2", bad_check.clone(), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert_eq!(expressions(&err), ["Organization.identifier[0].value"]);
    let text = &err.issues()[0].diagnostics;
    assert!(text.contains("check character is 'X'") && text.contains("'Y'"), "{text}");

    bad_check["identifier"][0]["value"] = json!("12350100MB0000001Y");
    bad_check["address"][0]["extension"][0]["valueCode"] = json!("350199");
    let err = e.create(&ctx(), "Organization", bad_check.clone(), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert_eq!(expressions(&err), ["Organization.address[0].extension[0].valueCode"]);
    assert!(err.issues()[0].diagnostics.contains("350199"));

    // Inside a transaction the entry is named, and nothing is written.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": hospital("h3", "12350100MB0000001Y", "350203"), "request": {"method": "PUT", "url": "Organization/h3"}},
        {"resource": bad_check, "request": {"method": "POST", "url": "Organization"}}]});
    let err = e.bundle(&ctx(), bundle, &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 422);
    assert!(err.issues()[0].diagnostics.starts_with("Bundle.entry[1]"), "{:?}", err.issues());
    assert!(matches!(e.read(&ctx(), "Organization", "h3").await, Err(EngineError::NotFound(_))));

    // $validate reports the same rules without writing.
    let outcome =
        e.validate(&ctx(), Some("Organization"), hospital("h4", "12350100MB0000001X", "350102")).await.unwrap();
    assert_eq!(outcome["issue"][0]["expression"][0], "Organization.identifier[0].value");

    // A plain FHIR Organization (as Synthea sends) is not a registry institution.
    let synthea = json!({"resourceType": "Organization", "name": "PCP1234", "active": true,
        "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "ef6ab57c"}],
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}],
        "address": [{"line": ["1 Main St"], "city": "Boston", "state": "MA", "postalCode": "02101"}]});
    e.create(&ctx(), "Organization", synthea, &opts()).await.expect("plain Organizations are accepted");

    // Alliance membership through OrganizationAffiliation.
    let affiliation = json!({"resourceType": "OrganizationAffiliation",
        "organization": {"reference": "Organization/alliance-1"},
        "participatingOrganization": {"reference": "Organization/h1"},
        "code": [{"coding": [{"system": ALLIANCE_ROLE_SYSTEM, "code": "chair"}]}]});
    let err = e.create(&ctx(), "OrganizationAffiliation", affiliation, &opts()).await.unwrap_err();
    assert_eq!(expressions(&err), ["OrganizationAffiliation.code[0].coding[0].code"]);

    // Practitioner rules.
    let doctor = json!({"resourceType": "Practitioner",
        "identifier": [{"system": PRACTICE_CERTIFICATE_SYSTEM, "value": "1103"}]});
    let err = e.create(&ctx(), "Practitioner", doctor, &opts()).await.unwrap_err();
    assert_eq!(expressions(&err), ["Practitioner.identifier[0].value"]);
}

#[tokio::test]
async fn organizations_are_found_by_division_hierarchy() {
    let t = engine();
    let e = &t.engine;
    for (id, division) in [("gulou", "350102"), ("taijiang", "350103"), ("siming", "350203"), ("dongcheng", "110101")] {
        e.update(&ctx(), "Organization", id, hospital(id, "12350100MB0000001Y", division), &opts()).await.unwrap();
    }
    for (query, expected) in [
        ("35", vec!["gulou", "siming", "taijiang"]),
        ("3501", vec!["gulou", "taijiang"]),
        ("350102", vec!["gulou"]),
        ("11", vec!["dongcheng"]),
        ("44", vec![]),
    ] {
        let bundle = e
            .search(&ctx(), Some("Organization"), &pairs(&[("division", query), ("_sort", "_id")]), &opts())
            .await
            .unwrap();
        let ids: Vec<&str> =
            bundle["entry"].as_array().into_iter().flatten().filter_map(|x| x["resource"]["id"].as_str()).collect();
        assert_eq!(ids, expected, "division={query}");
    }
}

/// A practitioner `d1` with a practising licence, independent practice since `since`, a primary
/// site at `h1` registered for internet practice with the prescribing right, and a second site
/// (多点执业) at `h2`.
pub(super) async fn registry_with_doctor(e: &engine::Engine, since: &str) {
    let licence = json!({"identifier": [{"system": PRACTICE_CERTIFICATE_SYSTEM, "value": "110350100012345"}],
        "code": {"coding": [{"system": QUALIFICATION_TYPE_SYSTEM, "code": "physician-practice"}]},
        "period": {"start": "2015-07-01", "end": "2030-06-30"}});
    let mut resources = vec![
        hospital("h1", "12350100MB0000001Y", "350102"),
        hospital("h2", "12350100MB0000001Y", "350203"),
        json!({"resourceType": "Practitioner", "id": "d1", "active": true, "name": [{"text": "林医生"}],
            "identifier": [{"system": PRACTICE_CERTIFICATE_SYSTEM, "value": "110350100012345"}],
            "extension": [{"url": INDEPENDENT_PRACTICE_START_EXTENSION, "valueDate": since}],
            "qualification": [licence]}),
    ];
    for (id, org, codes) in [
        ("r1", "h1", vec!["primary-site", "internet-practice", "prescribing-right"]),
        ("r2", "h2", vec!["additional-site"]),
    ] {
        let coding: Vec<Value> = codes.iter().map(|c| json!({"system": REGISTRATION_SYSTEM, "code": c})).collect();
        resources.push(json!({"resourceType": "PractitionerRole", "id": id, "active": true,
            "practitioner": {"reference": "Practitioner/d1"}, "organization": {"reference": format!("Organization/{org}")},
            "period": {"start": "2020-01-01"}, "code": [{"coding": coding}]}));
    }
    for r in resources {
        let (ty, id) = (r["resourceType"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string());
        e.update(&ctx(), &ty, &id, r, &opts()).await.unwrap();
    }
}

fn reasons(parameters: &Value) -> Vec<String> {
    parameters["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "reason")
        .map(|p| p["valueCodeableConcept"]["coding"][0]["code"].as_str().unwrap().to_string())
        .collect()
}

fn eligible(parameters: &Value) -> bool {
    parameters["parameter"][0]["valueBoolean"].as_bool().unwrap()
}

#[tokio::test]
async fn eligibility_answers_with_one_reason_per_failed_rule() {
    let t = engine();
    let e = &t.engine;
    registry_with_doctor(e, "2016-03-01").await;
    let ask =
        |org: &str, activity: &str, date: &str| pairs(&[("organization", org), ("activity", activity), ("date", date)]);
    let doctor = as_role(Role::Doctor);
    let yes = e
        .practitioner_eligibility(&doctor, "d1", &ask("Organization/h1", "prescribe", "2026-06-01"), &opts())
        .await
        .unwrap();
    assert!(eligible(&yes), "{yes}");
    assert!(reasons(&yes).is_empty());
    assert_eq!(yes["parameter"][1], json!({"name": "date", "valueDate": "2026-06-01"}));

    // At the second site: registered there, but neither for internet practice nor prescribing.
    let h2 = e.practitioner_eligibility(&doctor, "d1", &ask("h2", "prescribe", "2026-06-01"), &opts()).await.unwrap();
    assert!(!eligible(&h2));
    assert_eq!(reasons(&h2), ["internet-practice", "prescribing-right"]);
    // After the licence expired.
    let late = e.practitioner_eligibility(&doctor, "d1", &ask("h1", "consult", "2030-07-01"), &opts()).await.unwrap();
    assert_eq!(reasons(&late), ["licence"]);
    // Before the role began, the role and the registrations it carries fail.
    let early = e.practitioner_eligibility(&doctor, "d1", &ask("h1", "consult", "2019-12-31"), &opts()).await.unwrap();
    assert_eq!(reasons(&early), ["role", "internet-practice"]);
    let text = early["parameter"][2]["valueCodeableConcept"]["text"].as_str().unwrap();
    assert!(text.contains("Organization/h1") && text.contains("2019-12-31"), "{text}");

    // Fewer than three years of independent practice.
    let t2 = engine();
    registry_with_doctor(&t2.engine, "2024-01-01").await;
    let junior =
        t2.engine.practitioner_eligibility(&ctx(), "d1", &ask("h1", "consult", "2026-06-01"), &opts()).await.unwrap();
    assert_eq!(reasons(&junior), ["independent-practice"]);

    // Bad requests.
    for (query, words) in [
        (pairs(&[("organization", "h1")]), "activity"),
        (pairs(&[("activity", "consult")]), "organization"),
        (ask("h1", "operate", "2026-06-01"), "consult or prescribe"),
        (ask("h1", "consult", "2026-13-01"), "YYYY-MM-DD"),
        (pairs(&[("organization", "h1"), ("activity", "consult"), ("patient", "x")]), "no parameter 'patient'"),
    ] {
        let err = e.practitioner_eligibility(&doctor, "d1", &query, &opts()).await.unwrap_err();
        assert_eq!(err.http_status(), 400, "{query:?}");
        assert!(err.issues()[0].diagnostics.contains(words), "{:?} should mention {words}", err.issues());
    }
    let err =
        e.practitioner_eligibility(&doctor, "nobody", &ask("h1", "consult", "2026-06-01"), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 404);
    let err =
        e.practitioner_eligibility(&doctor, "d1", &ask("h9", "consult", "2026-06-01"), &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 404);
}

#[tokio::test]
async fn eligibility_is_for_staff_regulators_operators_and_systems_and_audited() {
    let t = engine();
    let e = &t.engine;
    registry_with_doctor(e, "2016-03-01").await;
    let query = pairs(&[("organization", "h1"), ("activity", "consult"), ("date", "2026-06-01")]);
    for role in [Role::Doctor, Role::Pharmacist, Role::Operator, Role::Regulator, Role::System] {
        let mut c = as_role(role);
        if role == Role::System {
            let mut p = (*c.principal.clone().unwrap()).clone();
            p.scopes = Scopes::parse("system/Practitioner.rs").unwrap();
            c = Ctx::for_principal("req-sys".into(), p, None);
        }
        let answer = e.practitioner_eligibility(&c, "d1", &query, &opts()).await;
        assert!(answer.is_ok_and(|a| eligible(&a)), "{role:?}");
    }
    for role in [Role::Resident, Role::CdcOfficer, Role::Insurer, Role::Auditor] {
        let err = e.practitioner_eligibility(&as_role(role), "d1", &query, &opts()).await.unwrap_err();
        assert!(matches!(err, EngineError::Forbidden(_)), "{role:?}: {err:?}");
    }
    e.flush_audit().await.unwrap();
    let log = e.store().audit_read(0, 1000).await.unwrap();
    let calls: Vec<(&str, &str)> = log
        .iter()
        .filter(|a| a.record.action == "eligibility")
        .map(|a| (a.record.role.as_str(), a.record.outcome.as_str()))
        .collect();
    assert_eq!(calls.len(), 9, "{calls:?}");
    assert!(calls.contains(&("regulator", "success")) && calls.contains(&("resident", "denied")));
    let entry = log.iter().find(|a| a.record.action == "eligibility").unwrap();
    assert_eq!(
        entry.record.entity,
        "Practitioner/d1/$eligibility?organization=Organization/h1&activity=consult&date=2026-06-01"
    );
    assert!(entry.record.patients.is_empty());
}
