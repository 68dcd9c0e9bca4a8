//! The mappings beyond ADT^A01/A04: ADT visit events and A40, ORU^R01, ORM/OMG, SIU, MDM, and
//! their refusals. Each test reads the Bundle a sample message maps to.

use serde_json::{Value, json};

use crate::{Hl7Error, Message, adt, samples, to_fhir};

fn map(text: &str) -> Result<crate::Mapped, Hl7Error> {
    to_fhir(&Message::parse(text.as_bytes()).unwrap())
}

fn bundle(text: &str) -> Value {
    map(text).unwrap().bundle
}

/// The entries of a Bundle whose resource has this type.
fn of_type(bundle: &Value, ty: &str) -> Vec<Value> {
    bundle["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["resourceType"] == ty).cloned().collect()
}

#[test]
fn adt_visit_events_update_the_encounter_by_visit_number() {
    let cases = [
        ("A01", "in-progress"),
        ("A02", "in-progress"),
        ("A03", "finished"),
        ("A11", "cancelled"),
        ("A13", "in-progress"),
    ];
    for (event, status) in cases {
        let b = bundle(&samples::adt_visit(event, "C1", "MZ1"));
        let encounter = &of_type(&b, "Encounter")[0];
        assert_eq!(
            encounter["request"],
            json!({"method": "PUT", "url": "Encounter?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/visit|V-MZ1"}),
            "{event}"
        );
        let e = &encounter["resource"];
        assert_eq!(e["status"], status, "{event}");
        assert_eq!(e["period"]["start"], "2026-12-01T08:00:00+08:00");
        match event {
            "A02" => assert_eq!(
                e["location"],
                json!([{"location": {"display": "FZ-HOSP 内科病区 01 1"}, "status": "completed"},
                       {"location": {"display": "FZ-HOSP ICU 02 1"}, "status": "active"}])
            ),
            "A03" => assert_eq!(e["period"]["end"], "2026-12-05T10:00:00+08:00"),
            _ => assert!(e["period"].get("end").is_none(), "{event}"),
        }
        // The Patient is updated by every ADT event.
        assert_eq!(of_type(&b, "Patient")[0]["request"]["method"], "PUT");
    }
    // A visit event without a visit number has nothing to change.
    let no_visit = samples::adt_visit("A03", "C2", "MZ1").replace("V-MZ1", "");
    assert!(matches!(map(&no_visit), Err(Hl7Error::MissingField { field, .. }) if field == "PV1-19"));
}

#[test]
fn adt_a40_names_the_prior_record_and_completes_with_links() {
    let mapped = map(&samples::adt_a40("C3", "MZ-NEW", "MZ-OLD")).unwrap();
    let merge = mapped.merge.clone().expect("A40 names a prior record");
    assert_eq!(merge.identifier_token(), "https://hutong.dev/fhir/sid/FZ-HOSP/mrn|MZ-OLD");
    let mut b = mapped.bundle;
    let prior = json!({"resourceType": "Patient", "id": "p-old", "meta": {"versionId": "4", "lastUpdated": "x"},
        "identifier": [{"system": "https://hutong.dev/fhir/sid/FZ-HOSP/mrn", "value": "MZ-OLD"}], "gender": "female"});
    adt::complete_merge(&mut b, prior, 4);
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["resource"]["link"], json!([{"other": {"reference": "Patient/p-old"}, "type": "replaces"}]));
    let old = &entries[1];
    assert_eq!(old["request"], json!({"method": "PUT", "url": "Patient/p-old", "ifMatch": "W/\"4\""}));
    assert_eq!(old["resource"]["active"], false);
    assert_eq!(old["resource"]["gender"], "female", "the prior record keeps its content");
    assert_eq!(
        old["resource"]["link"],
        json!([{"other": {"reference": entries[0]["fullUrl"]}, "type": "replaced-by"}])
    );
    assert!(old["resource"].get("meta").is_none());
    // No MRG, or a merge of a record into itself, is refused.
    let no_mrg = samples::adt_a40("C4", "MZ-NEW", "MZ-OLD").replace("MRG|MZ-OLD^^^FZ-HOSP^MR\r", "");
    assert!(matches!(map(&no_mrg), Err(Hl7Error::MissingField { field, .. }) if field == "MRG"));
    let same = samples::adt_a40("C5", "MZ-NEW", "MZ-NEW");
    assert!(matches!(map(&same), Err(Hl7Error::InvalidField { field, .. }) if field == "MRG-1"));
}

#[test]
fn oru_r01_maps_to_a_report_observations_and_the_order() {
    let b = bundle(&samples::oru_r01("C6", "MZ2", "F100", "UNICODE UTF-8"));
    // The Patient is created only if new (a result's PID must not overwrite the ADT record).
    let patient = &of_type(&b, "Patient")[0];
    assert_eq!(patient["request"]["method"], "POST");
    assert_eq!(patient["request"]["ifNoneExist"], "identifier=https://hutong.dev/fhir/sid/FZ-HOSP/mrn|MZ2");
    let encounter = &of_type(&b, "Encounter")[0];
    assert_eq!(encounter["request"]["ifNoneExist"], "identifier=https://hutong.dev/fhir/sid/FZ-HOSP/visit|V-MZ2");
    let order = &of_type(&b, "ServiceRequest")[0];
    assert_eq!(order["request"]["ifNoneExist"], "identifier=https://hutong.dev/fhir/sid/FZ-HOSP/placer-order|P-F100");

    let report = &of_type(&b, "DiagnosticReport")[0];
    // Ids derived from the identifiers: an update of a known id, no criteria search.
    let report_id = crate::oru::derived_id("dr", "https://hutong.dev/fhir/sid/FZ-HOSP/filler-order", "F100");
    assert_eq!(report["request"]["url"], format!("DiagnosticReport/{report_id}"));
    assert_eq!(report["resource"]["id"], report_id.as_str());
    let r = &report["resource"];
    assert_eq!(r["status"], "final");
    assert_eq!(r["code"]["coding"][0], json!({"system": "http://loinc.org", "code": "58410-2", "display": "血常规"}));
    assert_eq!(r["category"][0]["coding"][0]["code"], "HM");
    assert_eq!(r["effectiveDateTime"], "2026-12-01T08:10:00+08:00");
    assert_eq!(r["issued"], "2026-12-01T10:10:00+08:00");
    assert_eq!(r["basedOn"][0]["reference"], order["fullUrl"]);
    assert_eq!(r["encounter"]["reference"], encounter["fullUrl"]);

    let observations = of_type(&b, "Observation");
    assert_eq!(observations.len(), 6);
    let results: Vec<&Value> = r["result"].as_array().unwrap().iter().map(|x| &x["reference"]).collect();
    assert_eq!(results, observations.iter().map(|o| &o["fullUrl"]).collect::<Vec<_>>());
    let wbc = &observations[0];
    let wbc_id = crate::oru::derived_id("obs", "https://hutong.dev/fhir/sid/FZ-HOSP/observation", "F100-1-1");
    assert_eq!(wbc["request"]["url"], format!("Observation/{wbc_id}"));
    assert_eq!(
        wbc["resource"]["identifier"][0],
        json!({"system": "https://hutong.dev/fhir/sid/FZ-HOSP/observation", "value": "F100-1-1"})
    );
    let wbc = &wbc["resource"];
    assert_eq!(wbc["status"], "final");
    assert_eq!(
        wbc["valueQuantity"],
        json!({"value": 6.8, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"})
    );
    assert_eq!(wbc["referenceRange"][0]["low"]["value"], json!(3.5));
    assert_eq!(wbc["referenceRange"][0]["high"]["value"], json!(9.5));
    assert_eq!(wbc["referenceRange"][0]["text"], "3.5-9.5");
    assert_eq!(
        wbc["interpretation"][0]["coding"][0],
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"})
    );
    assert_eq!(wbc["effectiveDateTime"], "2026-12-01T09:30:00+08:00", "OBX-14 before OBR-7");
    assert_eq!(wbc["category"][0]["coding"][0]["code"], "laboratory");
    let hb = &observations[1]["resource"];
    assert_eq!(hb["interpretation"][0]["coding"][0]["code"], "L");
    assert_eq!(hb["effectiveDateTime"], "2026-12-01T08:10:00+08:00", "OBR-7 without OBX-14");
    let pt = &observations[3]["resource"];
    assert_eq!(pt["valueQuantity"]["comparator"], "<");
    assert_eq!(pt["valueQuantity"]["value"].to_string(), "0.5");
    assert_eq!(pt["referenceRange"][0]["high"]["value"], json!(1));
    let abo = &observations[4]["resource"];
    assert_eq!(abo["valueCodeableConcept"]["coding"][0]["system"], "http://terminology.hl7.org/CodeSystem/v2-0005");
    let note = &observations[5]["resource"];
    assert_eq!((note["valueString"].as_str(), note["status"].as_str()), (Some("标本轻度溶血"), Some("preliminary")));
    assert_eq!(note["note"], json!([{"text": "复查建议"}]));
}

#[test]
fn oru_value_types_and_refusals() {
    let with_obx = |obx: &str| {
        let text = samples::oru_r01("C7", "MZ3", "F200", "");
        let head: Vec<&str> = text.split('\r').filter(|s| !s.starts_with("OBX") && !s.starts_with("NTE")).collect();
        format!("{}{obx}\r", head.join("\r"))
    };
    let first_observation = |obx: &str| of_type(&bundle(&with_obx(obx)), "Observation")[0]["resource"].clone();
    // NTE right after the OBR comments on the whole report.
    let b = bundle(&with_obx("NTE|1||请结合临床\rNTE|2||建议复查\rOBX|1|NM|X^x^L||5||||||F"));
    assert_eq!(of_type(&b, "DiagnosticReport")[0]["resource"]["conclusion"], "请结合临床\n建议复查");
    assert!(of_type(&b, "Observation")[0]["resource"].get("note").is_none());
    let o = first_observation("OBX|1|SN|X^x^L||^1^-^5|mg|||||F");
    assert_eq!(o["valueRange"]["low"]["value"], json!(1));
    assert_eq!(o["valueRange"]["high"]["value"], json!(5));
    assert_eq!(o["valueRange"]["low"]["unit"], "mg");
    let o = first_observation("OBX|1|SN|X^x^L||^1^:^128||||||F");
    assert_eq!(o["valueRatio"], json!({"numerator": {"value": 1}, "denominator": {"value": 128}}));
    let o = first_observation("OBX|1|TX|X^x^L||第一行~第二行||||||C");
    assert_eq!((o["valueString"].as_str(), o["status"].as_str()), (Some("第一行\n第二行"), Some("corrected")));
    let o = first_observation("OBX|1|NM|X^x^L||5.60|个/HP^个/高倍视野^99LAB|||||F");
    assert_eq!(o["valueQuantity"]["value"].to_string(), "5.60", "the precision sent is kept");
    assert_eq!(o["valueQuantity"]["unit"], "个/高倍视野");
    assert!(o["valueQuantity"].get("system").is_none(), "a local unit is not declared UCUM");
    let o = first_observation("OBX|1|NM|X^x^L||7|mmol/L||HH~A|||F");
    let flags: Vec<&str> =
        o["interpretation"].as_array().unwrap().iter().map(|i| i["coding"][0]["code"].as_str().unwrap()).collect();
    assert_eq!(flags, ["HH", "A"]);
    // An encapsulated PDF becomes the report's presented form, not an Observation.
    let b = bundle(&with_obx("OBX|1|ED|PDF^报告^L||^AP^PDF^Base64^JVBERi0=||||||F"));
    assert!(of_type(&b, "Observation").is_empty());
    let form = &of_type(&b, "DiagnosticReport")[0]["resource"]["presentedForm"][0];
    assert_eq!(*form, json!({"contentType": "application/pdf", "data": "JVBERi0=", "title": "报告"}));

    for (obx, field) in [
        ("OBX|1|NM|X^x^L||abc||||||F", "OBX-5"),
        ("OBX|1|NM|X^x^L||5||||||Q", "OBX-11"),
        ("OBX|1|NM|X^x^L||5|||||", "OBX-11"),
        ("OBX|1|NM|||5||||||F", "OBX-3"),
        ("OBX|1|ED|X^x^L||^AP^PDF^Base64^not base64!||||||F", "OBX-5"),
    ] {
        let error = map(&with_obx(obx)).unwrap_err();
        let named = match &error {
            Hl7Error::MissingField { field, .. } | Hl7Error::InvalidField { field, .. } => field.clone(),
            other => panic!("{obx}: {other:?}"),
        };
        assert_eq!(named, field, "{obx}: {error}");
    }
    // No order number to key the report; an OBX before any OBR.
    let no_numbers = samples::oru_r01("C8", "MZ3", "F300", "").replace("P-F300", "").replace("F300", "");
    assert!(matches!(map(&no_numbers), Err(Hl7Error::MissingField { field, .. }) if field == "OBR-3"));
    let orphan = "MSH|^~\\&|LIS|H|||||ORU^R01|1|P|2.5\rPID|1||M1\rOBX|1|NM|X^x^L||5||||||F\r";
    assert!(matches!(map(orphan), Err(Hl7Error::MissingField { field, .. }) if field == "OBR"));
}

#[test]
fn orders_map_to_service_requests_by_control_code() {
    for (control, status) in
        [("NW", "active"), ("XO", "active"), ("SC", "active"), ("CA", "revoked"), ("HD", "on-hold")]
    {
        let b = bundle(&samples::orm_o01("C9", "MZ4", "ORD-1", control));
        let sr = &of_type(&b, "ServiceRequest")[0];
        assert_eq!(
            sr["request"]["url"],
            "ServiceRequest?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/placer-order|ORD-1"
        );
        let r = &sr["resource"];
        assert_eq!(r["status"], status, "{control}");
        assert_eq!(r["intent"], "order");
        assert_eq!(r["priority"], "stat");
        assert_eq!(r["code"]["coding"][0]["code"], "36643-5");
        assert_eq!(
            r["requester"],
            json!({"identifier": {"system": "https://hutong.dev/fhir/sid/FZ-HOSP/staff", "value": "D002"}, "display": "黄医生"})
        );
        assert_eq!(r["authoredOn"], "2026-12-01T08:25:00+08:00");
    }
    // OMG^O19 (2.5) reads the same way; an unknown control code is refused.
    let omg =
        samples::orm_o01("C10", "MZ4", "ORD-2", "NW").replace("ORM^O01", "OMG^O19^OMG_O19").replace("|2.3\r", "|2.5\r");
    assert_eq!(of_type(&bundle(&omg), "ServiceRequest")[0]["resource"]["status"], "active");
    let bad = samples::orm_o01("C11", "MZ4", "ORD-3", "ZZ");
    assert!(matches!(map(&bad), Err(Hl7Error::InvalidField { field, .. }) if field == "ORC-1"));
    let other = samples::orm_o01("C12", "MZ4", "ORD-3", "NW").replace("ORM^O01", "ORM^O02");
    assert_eq!(map(&other).unwrap_err().code().0, "201");
}

#[test]
fn siu_maps_to_an_appointment_holding_a_slot() {
    let b = bundle(&samples::siu("S12", "C13", "MZ5", "APT-1", "202612020900"));
    let schedule = &of_type(&b, "Schedule")[0];
    assert_eq!(
        schedule["request"]["ifNoneExist"],
        "identifier=https://hutong.dev/fhir/sid/FZ-HOSP/schedule|practitioner:D003"
    );
    let slot = &of_type(&b, "Slot")[0];
    assert_eq!(slot["request"]["method"], "POST");
    let s = &slot["resource"];
    assert_eq!(
        (s["status"].as_str(), s["start"].as_str(), s["end"].as_str()),
        (Some("busy"), Some("2026-12-02T09:00:00+08:00"), Some("2026-12-02T09:15:00+08:00"))
    );
    assert_eq!(s["schedule"]["reference"], schedule["fullUrl"]);
    let appointment = &of_type(&b, "Appointment")[0];
    assert_eq!(
        appointment["request"]["url"],
        "Appointment?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/filler-appointment|APT-1"
    );
    let a = &appointment["resource"];
    assert_eq!(a["status"], "booked");
    assert_eq!(a["slot"][0]["reference"], slot["fullUrl"]);
    assert_eq!((a["start"].as_str(), a["end"].as_str()), (s["start"].as_str(), s["end"].as_str()));
    assert_eq!(a["participant"][1]["actor"]["display"], "张医生");
    assert_eq!(a["serviceType"][0]["coding"][0]["code"], "CARD");
    // S15 cancels and holds nothing (the Slot it held is freed by the booking rules).
    let b = bundle(&samples::siu("S15", "C14", "MZ5", "APT-1", "202612020900"));
    let a = &of_type(&b, "Appointment")[0]["resource"];
    assert_eq!(a["status"], "cancelled");
    assert!(a.get("slot").is_none());
    assert!(of_type(&b, "Slot").is_empty());
    // 2.5: the times in TQ1-7/8 instead of SCH-11; a duration in hours when there is no end.
    let tq1 = samples::siu("S14", "C24", "MZ5", "APT-3", "202612020900")
        .replace("|2.4\r", "|2.5\r")
        .replace("|^^^202612020900|", "||")
        .replace("RGS|1\r", "TQ1|1||||||202612021400|202612021430\rRGS|1\r");
    let a = &of_type(&bundle(&tq1), "Appointment")[0]["resource"];
    assert_eq!(
        (a["start"].as_str(), a["end"].as_str()),
        (Some("2026-12-02T14:00:00+08:00"), Some("2026-12-02T14:30:00+08:00"))
    );
    let hours = samples::siu("S12", "C25", "MZ5", "APT-4", "202612022330").replace("|15|min|^^^", "|2|h|^^^");
    let a = &of_type(&bundle(&hours), "Appointment")[0]["resource"];
    assert_eq!(a["end"], "2026-12-03T01:30:00+08:00", "across midnight");
    // No time, no appointment id: refused.
    let no_time = samples::siu("S12", "C15", "MZ5", "APT-2", "202612020900").replace("202612020900", "");
    assert!(matches!(map(&no_time), Err(Hl7Error::MissingField { .. })));
    let no_id = samples::siu("S12", "C16", "MZ5", "", "202612020900").replace("P-|", "|");
    assert!(matches!(map(&no_id), Err(Hl7Error::MissingField { field, .. }) if field == "SCH-2"));
    assert_eq!(map(&samples::siu("S26", "C17", "MZ5", "A", "202612020900")).unwrap_err().code().0, "201");
}

#[test]
fn mdm_t02_maps_to_a_document_reference_and_binaries() {
    let b = bundle(&samples::mdm_t02("C18", "MZ6", "DOC-1"));
    let binaries = of_type(&b, "Binary");
    assert_eq!(binaries.len(), 2);
    assert_eq!(binaries[0]["resource"]["contentType"], "application/pdf");
    assert_eq!(binaries[0]["resource"]["data"], "JVBERi0xLjQKJcfsj6IK");
    assert_eq!(binaries[1]["resource"]["data"], crate::types::base64("患者病情稳定，准予出院。".as_bytes()));
    let document = &of_type(&b, "DocumentReference")[0];
    assert_eq!(
        document["request"]["url"],
        "DocumentReference?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/document|DOC-1"
    );
    let d = &document["resource"];
    assert_eq!((d["status"].as_str(), d["docStatus"].as_str()), (Some("current"), Some("final")));
    assert_eq!(
        d["type"]["coding"][0],
        json!({"system": "http://terminology.hl7.org/CodeSystem/v2-0270", "code": "DS"})
    );
    assert_eq!(d["date"], "2026-12-01T11:55:00+08:00");
    assert_eq!(d["author"][0]["display"], "吴医生");
    let url = binaries[0]["request"]["url"].as_str().unwrap();
    assert_eq!(d["content"][0]["attachment"]["url"], url);
    // The same document again maps to the same Binary ids.
    let again = bundle(&samples::mdm_t02("C19", "MZ6", "DOC-1"));
    assert_eq!(of_type(&again, "Binary")[0]["request"]["url"], url);
    let no_content: String = samples::mdm_t02("C20", "MZ6", "DOC-2")
        .split('\r')
        .filter(|s| !s.starts_with("OBX"))
        .map(|s| format!("{s}\r"))
        .collect();
    assert!(matches!(map(&no_content), Err(Hl7Error::MissingField { field, .. }) if field == "OBX-5"));
}

#[test]
fn unknown_types_are_rejected_and_versions_checked_first() {
    let unknown = "MSH|^~\\&|X|H|||||DFT^P03|1|P|2.5\rPID|1||M1\r";
    let e = map(unknown).unwrap_err();
    assert_eq!((e.code().0, e.rejects()), ("200", true));
    assert!(e.to_string().contains("ORU^R01"), "the NAK lists what is supported: {e}");
    let old = samples::oru_r01("C21", "M1", "F1", "").replace("|2.5.1|", "|2.2|");
    assert_eq!(map(&old).unwrap_err().code().0, "203");
}

#[test]
fn http_charset_applies_when_msh_18_is_empty() {
    let text = samples::oru_r01("C22", "MZ7", "F400", "");
    let (gbk, _, _) = encoding_rs::GB18030.encode(&text);
    assert!(Message::parse(&gbk).is_err(), "not UTF-8");
    let m = Message::parse_with_default(&gbk, crate::message::Charset::Gb18030).unwrap();
    assert_eq!(m.get("PID-5-1").as_deref(), Some("陈建国"));
    // MSH-18 wins over the default.
    let declared = samples::oru_r01("C23", "MZ7", "F400", "UNICODE UTF-8");
    let m = Message::parse_with_default(declared.as_bytes(), crate::message::Charset::Gb18030).unwrap();
    assert_eq!(m.get("PID-5-1").as_deref(), Some("陈建国"));
}

/// The HL7 normative edition's sample ORU (as vendored from python-hl7's test suite in
/// `tests.rs`), mapped: an external message, not written for this mapping.
#[test]
fn the_normative_sample_oru_maps() {
    let sample = "MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4\r\
PID|||555-44-4444||EVERYWOMAN^EVE^E^^^^L|JONES|196203520|F|||153 FERNWOOD DR.^^STATESVILLE^OH^35292||(206)3345232|(206)752-121||||AC555444444||67-A4335^OH^20030520\r\
OBR|1|845439^GHH OE|1045813^GHH LAB|1554-5^GLUCOSE|||200202150730||||||||555-55-5555^PRIMARY^PATRICIA P^^^^MD^^LEVEL SEVEN HEALTHCARE, INC.|||||||||F||||||444-44-4444^HIPPOCRATES^HOWARD H^^^^MD\r\
OBX|1|SN|1554-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F\r\
OBX|2|FN|1553-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F\r";
    // Its birth date (PID-7 "196203520") has day 20 of month 35: the message is refused with the field named.
    let error = map(sample).unwrap_err();
    assert!(matches!(&error, Hl7Error::InvalidField { field, .. } if field == "PID-7"), "{error:?}");
    let b = bundle(&sample.replace("196203520", "19620320"));
    let report = &of_type(&b, "DiagnosticReport")[0];
    let report_id = crate::oru::derived_id("dr", "https://hutong.dev/fhir/sid/ELAB-3/filler-order", "1045813");
    assert_eq!(report["request"]["url"], format!("DiagnosticReport/{report_id}"));
    assert_eq!(report["resource"]["status"], "final");
    assert_eq!(report["resource"]["effectiveDateTime"], "2002-02-15T07:30:00+08:00");
    let observations = of_type(&b, "Observation");
    let glucose = &observations[0]["resource"];
    assert_eq!(
        glucose["valueQuantity"],
        json!({"value": 182, "unit": "mg/dl", "system": "http://unitsofmeasure.org", "code": "mg/dL"})
    );
    assert_eq!(glucose["referenceRange"][0], json!({"text": "70_105"}));
    assert_eq!(glucose["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(
        glucose["code"]["coding"][0]["system"],
        "https://hutong.dev/fhir/CodeSystem/ELAB-3/post%2012h%20cfst%3Amcnc%3Apt%3Aser%2Fplas%3Aqn"
    );
    // FN (a name) is not a result type this maps to a value of its own: kept as the text sent.
    assert_eq!(observations[1]["resource"]["valueString"], "^182");
    let patient = &of_type(&b, "Patient")[0]["resource"];
    assert_eq!(patient["identifier"][0]["value"], "555-44-4444");
}

#[test]
fn result_ids_are_derived_from_their_identifiers() {
    let id = crate::oru::derived_id("obs", "https://hutong.dev/fhir/sid/FZ-HOSP/observation", "F100-1-1");
    assert_eq!(id, crate::oru::derived_id("obs", "https://hutong.dev/fhir/sid/FZ-HOSP/observation", "F100-1-1"));
    assert_ne!(id, crate::oru::derived_id("obs", "https://hutong.dev/fhir/sid/XM-HOSP/observation", "F100-1-1"));
    assert_ne!(id, crate::oru::derived_id("obs", "https://hutong.dev/fhir/sid/FZ-HOSP/observation", "F100-1-2"));
    assert_ne!(id, crate::oru::derived_id("dr", "https://hutong.dev/fhir/sid/FZ-HOSP/observation", "F100-1-1"));
    // A valid FHIR id whatever the order number holds.
    let odd = crate::oru::derived_id("obs", "https://hutong.dev/fhir/sid/%E5%8E%A6/observation", "单号/01 ^&|-1-1");
    assert!(odd.len() <= 64 && odd.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{odd}");
}
