//! Parsing, escapes, character sets, the ADT mapping, and no panic on any input.

use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::message::Charset;
use crate::{Hl7Error, Message, adt, unescape};

/// A synthetic ADT^A04 (no real person): the MRN, a national ID number in PID-3, a Chinese name
/// in one component, an address, two phones, the visit.
pub const A04: &str = "MSH|^~\\&|HIS|FZ-HOSP|HUTONG|REGION|20261130093000||ADT^A04^ADT_A01|MSG0001|P|2.5.1||||||UNICODE UTF-8\r\
EVN|A04|20261130093000\r\
PID|1||MZ100001^^^FZ-HOSP^MR~350102199003071234^^^CHN^NNCHN||欧阳娜娜||19900307|F|||五一北路12号^3单元^福州市^福建省^350001^CHN^H^^鼓楼区||13800000001^PRN^CP~^NET^Internet^nana@example.org\r\
PV1|1|O|内科门诊^201^3^FZ-HOSP||||D001^林^医生||||||||||||V20261130001|||||||||||||||||||||||||20261130092500\r";

#[test]
fn fields_components_repetitions_and_paths() {
    let m = Message::parse(A04.as_bytes()).unwrap();
    assert_eq!(m.segments.len(), 4);
    assert_eq!(m.get("MSH-1").as_deref(), Some("|"));
    assert_eq!(m.get("MSH-2").as_deref(), Some("^~\\&"));
    assert_eq!(m.get("MSH-9").as_deref(), Some("ADT^A04^ADT_A01"));
    assert_eq!(m.get("MSH-9-2").as_deref(), Some("A04"));
    assert_eq!(m.control_id(), "MSG0001");
    assert_eq!(m.version(), Ok("2.5.1".to_string()));
    assert_eq!(m.get("PID-5-1").as_deref(), Some("欧阳娜娜"));
    assert_eq!(m.get("PID-3-1").as_deref(), Some("MZ100001"));
    assert_eq!(m.get("PID-3(2)-1").as_deref(), Some("350102199003071234"));
    assert_eq!(m.get("PID-3(2)-5").as_deref(), Some("NNCHN"));
    assert_eq!(m.get("PID-3(3)-1"), None);
    assert_eq!(m.field_repetitions("PID-3").len(), 2);
    assert_eq!(m.get("PID-11-9").as_deref(), Some("鼓楼区"));
    assert_eq!(m.get("PV1-3-1-1").as_deref(), Some("内科门诊"));
    assert_eq!(m.get("ZZZ-1"), None);
    assert_eq!(m.get("nonsense"), None);
    // Written back, the message is the same text.
    assert_eq!(m.to_text(), A04);
}

#[test]
fn line_endings_lf_and_crlf_are_tolerated() {
    for ending in ["\n", "\r\n"] {
        let m = Message::parse(A04.replace('\r', ending).as_bytes()).unwrap();
        assert_eq!(m.segments.len(), 4);
        assert_eq!(m.get("PV1-19").as_deref(), Some("V20261130001"));
    }
}

#[test]
fn escape_sequences_and_custom_delimiters() {
    let m = Message::parse(b"MSH#:*!%#A\rNTE#1##a!F!b!S!c!T!d!R!e!E!f!X41E4B8AD!g!H!h!.br!i!unterminated").unwrap();
    assert_eq!(m.delimiters.field, '#');
    assert_eq!(m.get("NTE-3").as_deref(), Some("a#b:c%d*e!f\u{41}中g!H!h\ni!unterminated"));
    let d = m.delimiters;
    let raw = "x#y:z%w*v!u";
    assert_eq!(unescape(&crate::escape(raw, &d), &d), raw);
    // Components and subcomponents of an escaped value stay whole.
    let m = Message::parse(b"MSH|^~\\&|A\rNTE|1||one\\S\\two^three&four").unwrap();
    assert_eq!(m.get("NTE-3-1").as_deref(), Some("one^two"));
    assert_eq!(m.get("NTE-3-2-2").as_deref(), Some("four"));
}

#[test]
fn gbk_and_gb18030_messages_decode_and_round_trip() {
    for charset in ["GB 18030-2000", "GBK", "CHINESE", "GB18030"] {
        let text = A04.replace("UNICODE UTF-8", charset);
        let (bytes, _, _) = encoding_rs::GB18030.encode(&text);
        assert!(std::str::from_utf8(&bytes).is_err(), "the test message really is not UTF-8");
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.charset, Charset::Gb18030);
        assert_eq!(m.get("PID-5-1").as_deref(), Some("欧阳娜娜"));
        assert_eq!(m.to_bytes(), bytes.into_owned(), "{charset}: written back in the same charset");
    }
    // A rare character of a name (U+4DAE, CJK extension A) outside GBK takes four bytes in GB 18030.
    let rare = A04.replace("UNICODE UTF-8", "GB 18030-2000").replace("欧阳娜娜", "王䶮");
    let (bytes, _, _) = encoding_rs::GB18030.encode(&rare);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.get("PID-5-1").as_deref(), Some("王䶮"));
    assert_eq!(m.to_bytes(), bytes.into_owned());
    // GBK bytes declared as UTF-8 are refused rather than garbled.
    let (bytes, _, _) = encoding_rs::GB18030.encode(A04);
    assert_eq!(Message::parse(&bytes), Err(Hl7Error::InvalidText { charset: "UTF-8".into() }));
}

#[test]
fn clear_errors() {
    let cases: [(&[u8], Hl7Error); 7] = [
        (b"", Hl7Error::Empty),
        (b"  \r\n", Hl7Error::Empty),
        (b"PID|1||x", Hl7Error::MissingMsh { found: "PID|1||x".into() }),
        (b"MSH", Hl7Error::BadEncodingCharacters("MSH has no MSH-1".into())),
        (
            b"MSH|^~|x",
            Hl7Error::BadEncodingCharacters(
                "MSH-2 must hold 4 characters (component, repetition, escape, subcomponent, usually ^~\\&), not '^~'"
                    .into(),
            ),
        ),
        (b"MSH|^~\\&||||||||||||||||KOI8-R", Hl7Error::UnsupportedCharset("KOI8-R".into())),
        (b"MSH|^~\\&|x\rP!D|1", Hl7Error::BadSegment { index: 2, name: "P!D".into() }),
    ];
    for (input, want) in cases {
        assert_eq!(Message::parse(input), Err(want), "{}", String::from_utf8_lossy(input));
    }
    let m = Message::parse(b"MSH|^~\\&|A|B|C|D|||ADT^A04|1|P|2.2").unwrap();
    assert_eq!(m.version(), Err(Hl7Error::UnsupportedVersion("2.2".into())));
    assert_eq!(Hl7Error::UnsupportedVersion("2.2".into()).code().0, "203");
}

#[test]
fn adt_a04_maps_to_a_patient_and_an_encounter() {
    let bundle = adt::to_bundle(&Message::parse(A04.as_bytes()).unwrap()).unwrap();
    assert_eq!(bundle["type"], "transaction");
    let patient = &bundle["entry"][0];
    assert_eq!(
        patient["request"],
        json!({"method": "PUT", "url": "Patient?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/mrn|MZ100001"})
    );
    let p = &patient["resource"];
    assert_eq!(p["identifier"][0]["system"], "https://hutong.dev/fhir/sid/FZ-HOSP/mrn");
    assert_eq!(p["identifier"][0]["value"], "MZ100001");
    assert_eq!(p["identifier"][1]["system"], adt::NATIONAL_ID_SYSTEM);
    assert_eq!(p["identifier"][1]["value"], "350102199003071234");
    assert_eq!(p["name"], json!([{"text": "欧阳娜娜", "family": "欧阳", "given": ["娜娜"]}]));
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1990-03-07");
    assert_eq!(
        p["address"],
        json!([{"line": ["五一北路12号", "3单元"], "city": "福州市", "district": "鼓楼区", "state": "福建省", "postalCode": "350001", "country": "CHN", "use": "home"}])
    );
    assert_eq!(
        p["telecom"],
        json!([{"system": "phone", "value": "13800000001", "use": "mobile"}, {"system": "email", "value": "nana@example.org"}])
    );
    let e = &bundle["entry"][1];
    assert_eq!(
        e["request"],
        json!({"method": "PUT", "url": "Encounter?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/visit|V20261130001"})
    );
    let e = &e["resource"];
    assert_eq!(e["subject"]["reference"], patient["fullUrl"]);
    assert_eq!(e["status"], "arrived");
    assert_eq!(e["class"]["code"], "AMB");
    assert_eq!(e["location"][0]["location"]["display"], "FZ-HOSP 内科门诊 201 3");
    assert_eq!(e["participant"][0]["individual"]["identifier"]["value"], "D001");
    assert_eq!(e["participant"][0]["individual"]["display"], "林医生");
    assert_eq!(e["period"]["start"], "2026-11-30T09:25:00+08:00");
}

#[test]
fn names_sexes_dates_and_identifier_rules() {
    let with_pid = |pid: &str| {
        let text = format!("MSH|^~\\&|HIS|H1|||||ADT^A08|9|P|2.4\r{pid}\r");
        adt::to_bundle(&Message::parse(text.as_bytes()).unwrap())
    };
    let patient = |pid: &str| with_pid(pid).unwrap()["entry"][0]["resource"].clone();
    // One-character surname; name in family and given components; an MRN without type code
    // issued by the sending facility; the ID number in PID-19.
    let p = patient("PID|1||42||王小明||1985|M|||||||||||11010519491231002X");
    assert_eq!(p["name"][0], json!({"text": "王小明", "family": "王", "given": ["小明"]}));
    assert_eq!(p["identifier"][0]["system"], "https://hutong.dev/fhir/sid/H1/mrn");
    assert_eq!(p["identifier"][1]["value"], "11010519491231002X");
    assert_eq!((p["birthDate"].as_str(), p["gender"].as_str()), (Some("1985"), Some("male")));
    let p = patient("PID|1||42^^^H1^MR||Smith^John^Q^^^^L||198502|U");
    assert_eq!(p["name"][0], json!({"family": "Smith", "given": ["John", "Q"], "use": "official"}));
    assert_eq!((p["birthDate"].as_str(), p["gender"].as_str()), (Some("1985-02"), Some("unknown")));
    // No encounter for A08.
    assert!(with_pid("PID|1||42").unwrap()["entry"].as_array().unwrap().len() == 1);
    let field = |r: Result<serde_json::Value, Hl7Error>| match r {
        Err(Hl7Error::MissingField { field, .. } | Hl7Error::InvalidField { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    };
    assert_eq!(field(with_pid("PID|1||350102199003071234^^^^NNCHN")), "PID-3");
    assert_eq!(field(with_pid("PID|1||42||||19901301")), "PID-7");
    assert_eq!(field(with_pid("PID|1||42|||||X")), "PID-8");
    assert_eq!(field(with_pid("EVN|A08")), "PID");
}

#[test]
fn adt_a01_admits_an_inpatient_and_a05_has_no_encounter() {
    let a01 = A04.replace("ADT^A04^ADT_A01", "ADT^A01^ADT_A01").replace("PV1|1|O|", "PV1|1|I|");
    let bundle = adt::to_bundle(&Message::parse(a01.as_bytes()).unwrap()).unwrap();
    let encounter = &bundle["entry"][1]["resource"];
    assert_eq!((encounter["status"].as_str(), encounter["class"]["code"].as_str()), (Some("in-progress"), Some("IMP")));
    let a05 = A04.replace("ADT^A04^ADT_A01", "ADT^A05^ADT_A05");
    let bundle = adt::to_bundle(&Message::parse(a05.as_bytes()).unwrap()).unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
    // Without a visit number the Encounter is keyed on the message control id.
    let no_visit = A04.replace("V20261130001", "");
    let bundle = adt::to_bundle(&Message::parse(no_visit.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        bundle["entry"][1]["request"],
        json!({"method": "POST", "url": "Encounter", "ifNoneExist": "identifier=https://hutong.dev/fhir/sid/FZ-HOSP/hl7-message|MSG0001"})
    );
    let bad_class = A04.replace("PV1|1|O|", "PV1|1|X|");
    let error = adt::to_bundle(&Message::parse(bad_class.as_bytes()).unwrap()).unwrap_err();
    assert!(matches!(&error, Hl7Error::InvalidField { field, .. } if field == "PV1-2"), "{error:?}");
}

#[test]
fn unsupported_types_are_rejected_with_their_codes() {
    let m = Message::parse(b"MSH|^~\\&|LIS|H1|||||ORU^R01|9|P|2.5").unwrap();
    let e = adt::to_bundle(&m).unwrap_err();
    assert_eq!((e.code().0, e.rejects()), ("200", true));
    let m = Message::parse(b"MSH|^~\\&|HIS|H1|||||ADT^A60|9|P|2.5").unwrap();
    assert_eq!(adt::to_bundle(&m).unwrap_err().code().0, "201");
    let e = Hl7Error::MissingField { field: "PV1".into(), why: "x".into() };
    assert_eq!((e.code().0, e.rejects()), ("101", false));
}

/// Random bytes, and valid messages with random bytes changed, inserted or deleted: parsing,
/// reading, mapping and acknowledging never panic.
#[test]
fn no_panic_on_random_or_mutated_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261130);
    use crate::samples;
    let seeds: Vec<Vec<u8>> = [
        A04.to_string(),
        samples::oru_r01("C1", "M1", "F1", "UNICODE UTF-8"),
        samples::orm_o01("C2", "M1", "P1", "NW"),
        samples::siu("S12", "C3", "M1", "A1", "202612020900"),
        samples::mdm_t02("C4", "M1", "D1"),
        samples::adt_a40("C5", "M1", "M0"),
        samples::adt_visit("A02", "C6", "M1"),
        samples::adt_visit("A03", "C7", "M1"),
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .chain([encoding_rs::GB18030.encode(&A04.replace("UNICODE UTF-8", "GBK")).0.into_owned()])
    .collect();
    let alphabet = b"|^~\\&\r\nMSHPIDV1XFOBRSNEDTQ0123456789.-+<> \x0b\x1c\xe4\xb8\xff";
    for round in 0..40_000 {
        let input: Vec<u8> = if round % 5 == 0 {
            (0..rng.random_range(0..200)).map(|_| rng.random()).collect()
        } else {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..bytes.len().max(1));
                let byte =
                    if rng.random_bool(0.7) { alphabet[rng.random_range(0..alphabet.len())] } else { rng.random() };
                match rng.random_range(0..3) {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at.min(bytes.len()), byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            bytes
        };
        let mut decoder = crate::MllpDecoder::new(512);
        decoder.push(&input);
        while let Some(Ok(_)) = decoder.next_message() {}
        let _ = decoder.finish();
        if let Ok(m) = Message::parse(&input) {
            for path in ["MSH-9-2", "PID-3(2)-4-1", "PID-5-1", "PV1-3-1-1", "MSH-0", "PID-99-99-99"] {
                let _ = m.get(path);
            }
            let _ = m.version();
            let _ = adt::to_bundle(&m);
            if let Ok(mapped) = crate::to_fhir(&m) {
                // Every mapped Bundle is a transaction with entries, each with a request.
                assert_eq!(mapped.bundle["type"], "transaction");
                assert!(mapped.bundle["entry"].as_array().unwrap().iter().all(|e| e["request"]["method"].is_string()));
            }
            let ack = crate::ack(&m, crate::AckCode::Error, &[], "X", "20261130");
            if let Err(e) = Message::parse(&ack.to_bytes()) {
                panic!("{e}: {:?} -> {:?}", String::from_utf8_lossy(&input), String::from_utf8_lossy(&ack.to_bytes()))
            }
        }
    }
}

/// Messages and expectations from the test suite of python-hl7 (PyPI `hl7==0.4.5`,
/// `tests/samples.py` and `tests/test_parse.py`, BSD-3-Clause, (C) 2009-2020 John Paulett): the
/// HL7 normative edition's sample ORU and the medical-objects repetition example.
#[test]
fn python_hl7_samples_read_the_same() {
    let sample = "MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4\r\
PID|||555-44-4444||EVERYWOMAN^EVE^E^^^^L|JONES|196203520|F|||153 FERNWOOD DR.^^STATESVILLE^OH^35292||(206)3345232|(206)752-121||||AC555444444||67-A4335^OH^20030520\r\
OBR|1|845439^GHH OE|1045813^GHH LAB|1554-5^GLUCOSE|||200202150730||||||||555-55-5555^PRIMARY^PATRICIA P^^^^MD^^LEVEL SEVEN HEALTHCARE, INC.|||||||||F||||||444-44-4444^HIPPOCRATES^HOWARD H^^^^MD\r\
OBX|1|SN|1554-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F\r\
OBX|2|FN|1553-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F\r";
    let m = Message::parse(sample.as_bytes()).unwrap();
    assert_eq!(m.segments.len(), 5);
    assert_eq!(m.segments[3].id(), "OBX");
    assert_eq!(m.get("MSH-1").as_deref(), Some("|"));
    assert_eq!(m.get("MSH-2").as_deref(), Some("^~\\&"));
    assert_eq!((m.get("MSH-9-1").as_deref(), m.get("MSH-9-2").as_deref()), (Some("ORU"), Some("R01")));
    assert_eq!(m.get("PID-5-2").as_deref(), Some("EVE"));
    assert_eq!(m.to_text(), sample);
    let reps = "MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4\r\
PID|Field1|Component1^Component2|Component1^Sub-Component1&Sub-Component2^Component3|Repeat1~Repeat2\r";
    let m = Message::parse(reps.as_bytes()).unwrap();
    assert_eq!(m.get("PID-1").as_deref(), Some("Field1"));
    assert_eq!(m.get("PID-3-2-2").as_deref(), Some("Sub-Component2"));
    assert_eq!(m.get("PID-3-2").as_deref(), Some("Sub-Component1&Sub-Component2"));
    assert_eq!(m.get("PID-4(2)").as_deref(), Some("Repeat2"));
    let values: Vec<String> = m.field_repetitions("PID-4").iter().map(|f| f.value()).collect();
    assert_eq!(values, ["Repeat1", "Repeat2"]);
    // test_unescape / test_escape.
    let d = m.delimiters;
    for (escaped, plain) in [("\\E\\", "\\"), ("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~")] {
        assert_eq!(unescape(escaped, &d), plain);
        assert_eq!(crate::escape(plain, &d), escaped);
    }
    assert_eq!(unescape("\\X20202020\\", &d), "    ");
    assert_eq!(unescape("\\Xe1\\\\Xe9\\\\Xed\\\\Xf3\\\\Xfa\\", &d), "áéíóú");
}
