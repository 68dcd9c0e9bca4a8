//! The HL7 v2 listener of the real binary over loopback: ADT^A04 in UTF-8 and GBK acknowledged
//! after the commit and found by FHIR search, a resend that updates rather than duplicates,
//! unknown types rejected, invalid content NAKed and held in the data-quality quarantine (seen,
//! reprocessed and discarded through `/quality/quarantine`), garbage and oversized messages that
//! close only their own connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use hl7::Message;
use serde_json::{Value, json};

/// A synthetic ADT^A04 (no real person) with the control id, MRN, name and charset given.
fn a04(control_id: &str, mrn: &str, name: &str, charset: &str) -> String {
    let mut pv1: Vec<&str> = vec!["PV1", "1", "O", "内科门诊^201^3^FZ-HOSP", "", "", "", "D001^林^医生"];
    pv1.resize(19, "");
    let visit = format!("V-{mrn}");
    pv1.push(&visit);
    pv1.resize(44, "");
    pv1.push("20261130092500");
    format!(
        "MSH|^~\\&|HIS|FZ-HOSP|HUTONG|REGION|20261130093000||ADT^A04^ADT_A01|{control_id}|P|2.4||||||{charset}\r\
         EVN|A04|20261130093000\r\
         PID|1||{mrn}^^^FZ-HOSP^MR||{name}||19900307|F|||五一北路12号^^福州市^福建省^350001^CHN^H||13800000001^PRN^CP\r\
         {}\r",
        pv1.join("|")
    )
}

/// Sends one framed message and reads the framed answer.
fn exchange(stream: &mut TcpStream, message: &[u8]) -> Message {
    stream.write_all(&hl7::frame(message)).unwrap();
    read_ack(stream).expect("an ACK before the connection closed")
}

fn read_ack(stream: &mut TcpStream) -> Option<Message> {
    let mut decoder = hl7::MllpDecoder::new(1 << 20);
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.next_message() {
            return Some(Message::parse(&frame.unwrap()).unwrap());
        }
        let n = stream.read(&mut buffer).unwrap();
        if n == 0 {
            return None;
        }
        decoder.push(&buffer[..n]);
    }
}

/// `hutong serve --demo` with an MLLP listener on a free port (and `extra` arguments): the
/// server and the listener's address, as the server printed it.
fn serve_with_mllp(data: &std::path::Path, extra: &[&str]) -> (super::serve::Server, String) {
    let mllp_addr = Arc::new(Mutex::new(String::new()));
    let seen = mllp_addr.clone();
    let mut args = vec!["--mllp-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = super::serve::start_with(data, true, &args, move |line| {
        if let Some(a) = line.strip_prefix("Hutong HL7 v2 listener on mllp://") {
            *seen.lock().unwrap() = a.to_string();
        }
    });
    let mllp_addr = mllp_addr.lock().unwrap().clone();
    assert!(!mllp_addr.is_empty(), "the server printed the MLLP address");
    (server, mllp_addr)
}

#[test]
fn adt_over_mllp_lands_in_fhir_once_and_bad_input_is_naked() {
    let data = tempfile::tempdir().unwrap();
    let (server, mllp_addr) = serve_with_mllp(data.path(), &["--mllp-max-message-bytes", "4096"]);
    let bearer = super::serve::demo_bearer(&server, data.path());
    let search = |query: &str| -> Vec<Value> {
        let (status, body) =
            super::security::http(&server.addr, "GET", &format!("/fhir/{query}"), &[("Authorization", &bearer)], "");
        assert_eq!(status, 200, "{body}");
        let bundle: Value = serde_json::from_str(&body).unwrap();
        bundle["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()).collect()
    };
    let mrn_query = |mrn: &str| format!("Patient?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/mrn%7C{mrn}");

    let mut stream = TcpStream::connect(&mllp_addr).unwrap();
    // UTF-8, then GB 18030 on the same connection.
    let ack = exchange(&mut stream, a04("MSG-U1", "MZ900001", "欧阳娜娜", "UNICODE UTF-8").as_bytes());
    assert_eq!((ack.get("MSA-1").as_deref(), ack.get("MSA-2").as_deref()), (Some("AA"), Some("MSG-U1")));
    assert_eq!(ack.get("MSH-9").as_deref(), Some("ACK^A04^ACK"));
    assert_eq!((ack.get("MSH-5").as_deref(), ack.get("MSH-6").as_deref()), (Some("HIS"), Some("FZ-HOSP")));
    let gbk = hl7::message::Charset::Gb18030.encode(&a04("MSG-G1", "MZ900002", "陈建国", "GB 18030-2000"));
    assert!(std::str::from_utf8(&gbk).is_err());
    let ack = exchange(&mut stream, &gbk);
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AA"), "{:?}", ack.get("ERR-8"));
    assert_eq!(ack.charset, hl7::message::Charset::Gb18030, "the ACK answers in the sender's character set");

    let found = search(&mrn_query("MZ900001"));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["name"][0]["family"], "欧阳");
    assert_eq!(found[0]["birthDate"], "1990-03-07");
    let found = search(&mrn_query("MZ900002"));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["name"][0]["text"], "陈建国");
    let patient_id = found[0]["id"].as_str().unwrap().to_string();
    let encounters = search("Encounter?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/visit%7CV-MZ900002");
    assert_eq!(encounters.len(), 1);
    assert_eq!(encounters[0]["subject"]["reference"], format!("Patient/{patient_id}"));

    // Sent again (a new control id, a changed name): still one Patient and one Encounter, updated.
    let ack =
        exchange(&mut stream, &hl7::message::Charset::Gb18030.encode(&a04("MSG-G2", "MZ900002", "陈建华", "GBK")));
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AA"));
    let found = search(&mrn_query("MZ900002"));
    assert_eq!((found.len(), found[0]["name"][0]["text"].as_str()), (1, Some("陈建华")));
    assert_eq!(found[0]["id"], patient_id.as_str());
    assert_eq!(search("Encounter?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/visit%7CV-MZ900002").len(), 1);

    // An unknown message type is rejected with code 200; invalid content is an error; both kept.
    let oru =
        "MSH|^~\\&|FIN|FZ-HOSP|HUTONG|REGION|20261130093000||DFT^P03|MSG-O1|P|2.5.1\rPID|1||MZ900001^^^FZ-HOSP^MR\r";
    let ack = exchange(&mut stream, oru.as_bytes());
    assert_eq!((ack.get("MSA-1").as_deref(), ack.get("MSA-2").as_deref()), (Some("AR"), Some("MSG-O1")));
    assert_eq!(ack.get("ERR-3-1").as_deref(), Some("200"));
    let bad_date = a04("MSG-U2", "MZ900003", "王芳", "").replace("19900307", "19901307");
    let ack = exchange(&mut stream, bad_date.as_bytes());
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AE"));
    assert!(ack.get("ERR-8").unwrap().contains("PID-7"), "{:?}", ack.get("ERR-8"));
    assert!(search(&mrn_query("MZ900003")).is_empty());
    // The mapping lets 30 February through; the engine's validation does not, and its
    // OperationOutcome text comes back in ERR-8.
    let invalid = a04("MSG-U5", "MZ900006", "王芳", "").replace("19900307", "19900230");
    let ack = exchange(&mut stream, invalid.as_bytes());
    assert_eq!((ack.get("MSA-1").as_deref(), ack.get("ERR-3-1").as_deref()), (Some("AE"), Some("102")));
    assert!(ack.get("ERR-8").unwrap().contains("1990-02-30"), "{:?}", ack.get("ERR-8"));
    assert!(search(&mrn_query("MZ900006")).is_empty());
    // The three are held in the data-quality quarantine: no Organization is known by FZ-HOSP,
    // so under `unknown`, for operators.
    let held = held_messages(&server, &operator_bearer(&server), "unknown");
    let mut rules: Vec<(&str, &str)> = held
        .iter()
        .map(|h| (h["details"]["controlId"].as_str().unwrap(), h["findings"][0]["rule"].as_str().unwrap()))
        .collect();
    rules.sort();
    assert_eq!(rules, [("MSG-O1", "hl7-mapping"), ("MSG-U2", "hl7-mapping"), ("MSG-U5", "hl7-engine")]);

    // Garbage: the sender gets a NAK and its connection is closed; others carry on.
    let mut garbage = TcpStream::connect(&mllp_addr).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let nak = read_ack(&mut garbage).expect("a NAK before the close");
    assert_eq!(nak.get("MSA-1").as_deref(), Some("AR"));
    assert_eq!(read_ack(&mut garbage), None, "the connection is closed");
    // Over the size limit: refused and closed, before the whole frame has even arrived.
    let mut large = TcpStream::connect(&mllp_addr).unwrap();
    large.write_all(&[0x0B]).unwrap();
    large.write_all(&vec![b'x'; 8192]).unwrap();
    let nak = read_ack(&mut large).expect("a NAK before the close");
    assert_eq!(nak.get("MSA-1").as_deref(), Some("AR"));
    assert!(nak.get("ERR-8").unwrap().contains("4096 bytes"), "{:?}", nak.get("ERR-8"));
    assert_eq!(read_ack(&mut large), None, "the connection is closed");
    let ack = exchange(&mut stream, a04("MSG-U3", "MZ900004", "李雷", "").as_bytes());
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AA"));
    // Two messages in one write, the second split from its end marker: two ACKs, in order.
    let mut both = hl7::frame(a04("MSG-P1", "MZ900007", "张伟", "").as_bytes());
    both.extend(hl7::frame(a04("MSG-P2", "MZ900008", "刘洋", "").as_bytes()));
    let (head, tail) = both.split_at(both.len() - 1);
    stream.write_all(head).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    stream.write_all(tail).unwrap();
    let mut decoder = hl7::MllpDecoder::new(1 << 20);
    let mut acks = Vec::new();
    let mut buffer = [0u8; 4096];
    while acks.len() < 2 {
        while let Some(frame) = decoder.next_message() {
            acks.push(Message::parse(&frame.unwrap()).unwrap().get("MSA-2").unwrap_or_default());
        }
        if acks.len() < 2 {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "two ACKs before the close");
            decoder.push(&buffer[..n]);
        }
    }
    assert_eq!(acks, ["MSG-P1", "MSG-P2"]);
    let mut fresh = TcpStream::connect(&mllp_addr).unwrap();
    let ack = exchange(&mut fresh, a04("MSG-U4", "MZ900005", "韩梅梅", "").as_bytes());
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AA"));
}

/// POSTs a raw v2 message to `/hl7v2`: (status, Content-Type, ACK).
fn post_hl7(addr: &str, bearer: &str, content_type: &str, body: &[u8]) -> (u16, String, Option<Message>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /hl7v2 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {bearer}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let body = &response[split + 4..];
    let ack = if content_type.starts_with("application/hl7-v2") {
        let charset =
            if content_type.contains("gb18030") { hl7::message::Charset::Gb18030 } else { hl7::message::Charset::Utf8 };
        Some(Message::parse_with_default(body, charset).unwrap())
    } else {
        None
    };
    (status, content_type, ack)
}

/// Every message type of issue 5 over MLLP and HTTP against the real binary: results, orders,
/// appointments, documents, visit events and a merge land as FHIR resources once, a resend
/// changes nothing, and refusals are NAKed with their reason.
#[test]
fn results_orders_appointments_documents_and_merges_over_mllp_and_http() {
    use hl7::samples;
    let data = tempfile::tempdir().unwrap();
    let (server, mllp_addr) = serve_with_mllp(data.path(), &[]);
    let bearer = super::serve::demo_bearer(&server, data.path());
    let search = |query: &str| -> Vec<Value> {
        let (status, body) =
            super::security::http(&server.addr, "GET", &format!("/fhir/{query}"), &[("Authorization", &bearer)], "");
        assert_eq!(status, 200, "{query}: {body}");
        let bundle: Value = serde_json::from_str(&body).unwrap();
        bundle["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()).collect()
    };
    let sid = |kind: &str, value: &str| format!("identifier=https://hutong.dev/fhir/sid/FZ-HOSP/{kind}%7C{value}");
    let mut stream = TcpStream::connect(&mllp_addr).unwrap();
    let mut send = |text: &str| exchange(&mut stream, text.as_bytes());
    let accepted = |ack: &Message| {
        assert_eq!(ack.get("MSA-1").as_deref(), Some("AA"), "{:?}", ack.get("ERR-8"));
    };

    // ORM^O01 (2.3) announces the order; ORU^R01 (2.5.1) reports on it.
    accepted(&send(&samples::orm_o01("E-ORM1", "MZ700001", "P-F7001", "NW")));
    let orders = search(&format!("ServiceRequest?{}", sid("placer-order", "P-F7001")));
    assert_eq!((orders.len(), orders[0]["status"].as_str()), (1, Some("active")));
    accepted(&send(&samples::oru_r01("E-ORU1", "MZ700001", "F7001", "UNICODE UTF-8")));
    let patient = &search(&format!("Patient?{}", sid("mrn", "MZ700001")))[0];
    assert_eq!(patient["name"][0]["text"], "王小明", "the ORU's PID does not overwrite the ORM's Patient");
    let patient_ref = format!("Patient/{}", patient["id"].as_str().unwrap());
    let reports = search(&format!("DiagnosticReport?{}", sid("filler-order", "F7001")));
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["status"], "final");
    assert_eq!(reports[0]["subject"]["reference"], patient_ref);
    assert_eq!(reports[0]["basedOn"][0]["reference"], format!("ServiceRequest/{}", orders[0]["id"].as_str().unwrap()));
    let observations = search(&format!("Observation?subject={patient_ref}&_count=50"));
    assert_eq!(observations.len(), 6);
    assert!(
        observations.iter().all(|o| o["encounter"]["reference"].as_str().is_some_and(|r| r.starts_with("Encounter/")))
    );
    let wbc = observations.iter().find(|o| o["code"]["coding"][0]["code"] == "6690-2").unwrap();
    assert_eq!(wbc["valueQuantity"]["value"].to_string(), "6.8");
    assert_eq!(wbc["code"]["coding"][0]["display"], "白细胞计数");
    // Sent again (the ACK was lost, a new control id): nothing is duplicated.
    accepted(&send(&samples::oru_r01("E-ORU2", "MZ700001", "F7001", "UNICODE UTF-8")));
    assert_eq!(search(&format!("Observation?subject={patient_ref}&_count=50")).len(), 6);
    let again = search(&format!("DiagnosticReport?subject={patient_ref}"));
    assert_eq!(again.len(), 1);
    // Results have ids derived from their identifiers; the same content again is no new version.
    assert!(again[0]["id"].as_str().unwrap().starts_with("dr-"), "{}", again[0]["id"]);
    assert_eq!((&again[0]["id"], &again[0]["meta"]["versionId"]), (&reports[0]["id"], &json!("1")));
    assert!(observations.iter().all(|o| o["id"].as_str().unwrap().starts_with("obs-")));
    assert_eq!(search(&format!("ServiceRequest?subject={patient_ref}")).len(), 1);
    // The order is cancelled.
    accepted(&send(&samples::orm_o01("E-ORM2", "MZ700001", "P-F7001", "CA")));
    assert_eq!(search(&format!("ServiceRequest?{}", sid("placer-order", "P-F7001")))[0]["status"], "revoked");

    // A GBK-encoded ORU with Chinese text, over MLLP: answered in GBK, stored as Unicode.
    let gbk = hl7::message::Charset::Gb18030.encode(&samples::oru_r01("E-ORU3", "MZ700002", "F7002", "GBK"));
    assert!(std::str::from_utf8(&gbk).is_err());
    let ack = exchange(&mut stream, &gbk);
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AA"), "{:?}", ack.get("ERR-8"));
    assert_eq!(ack.charset, hl7::message::Charset::Gb18030);
    let gbk_patient = &search(&format!("Patient?{}", sid("mrn", "MZ700002")))[0];
    assert_eq!(gbk_patient["name"][0]["text"], "陈建国");
    let remark = search(&format!("Observation?{}", sid("observation", "F7002-1-6")));
    assert_eq!(remark[0]["valueString"], "标本轻度溶血");
    assert_eq!(remark[0]["note"][0]["text"], "复查建议");

    // SIU (2.4): booked, rescheduled to another time (the first Slot is freed), cancelled.
    let mut send = |text: &str| exchange(&mut stream, text.as_bytes());
    accepted(&send(&samples::siu("S12", "E-SIU1", "MZ700003", "APT-77", "202612030900")));
    let appointment = |n: usize| {
        let found = search(&format!("Appointment?{}", sid("filler-appointment", "APT-77")));
        assert_eq!(found.len(), n);
        found.into_iter().next()
    };
    let booked = appointment(1).unwrap();
    assert_eq!(booked["status"], "booked");
    let first_slot = booked["slot"][0]["reference"].as_str().unwrap().to_string();
    let slot_status =
        |reference: &str| search(&format!("Slot?_id={}", reference.trim_start_matches("Slot/")))[0]["status"].clone();
    assert_eq!(slot_status(&first_slot), "busy");
    assert_eq!(search("Schedule?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/schedule%7Cpractitioner:D003").len(), 1);
    accepted(&send(&samples::siu("S12", "E-SIU2", "MZ700003", "APT-77", "202612030900")));
    assert_eq!(appointment(1).unwrap()["slot"][0]["reference"], first_slot.as_str(), "a resend keeps its Slot");
    accepted(&send(&samples::siu("S13", "E-SIU3", "MZ700003", "APT-77", "202612031000")));
    let moved = appointment(1).unwrap();
    assert_eq!(moved["start"], "2026-12-03T10:00:00+08:00");
    let second_slot = moved["slot"][0]["reference"].as_str().unwrap().to_string();
    assert_ne!(second_slot, first_slot);
    assert_eq!((slot_status(&first_slot), slot_status(&second_slot)), (Value::from("free"), Value::from("busy")));
    // Another appointment at a time someone holds is refused, not double-booked.
    let clash = send(&samples::siu("S12", "E-SIU4", "MZ700004", "APT-78", "202612031000"));
    assert_eq!(clash.get("MSA-1").as_deref(), Some("AE"));
    assert!(clash.get("ERR-8").unwrap().contains("already booked"), "{:?}", clash.get("ERR-8"));
    assert!(search(&format!("Appointment?{}", sid("filler-appointment", "APT-78"))).is_empty());
    accepted(&send(&samples::siu("S15", "E-SIU5", "MZ700003", "APT-77", "202612031000")));
    assert_eq!(appointment(1).unwrap()["status"], "cancelled");
    assert_eq!(slot_status(&second_slot), "free");

    // ADT visit events (2.3.1): admit, transfer, discharge.
    for (event, control) in [("A01", "E-ADT1"), ("A02", "E-ADT2"), ("A03", "E-ADT3")] {
        accepted(&send(&samples::adt_visit(event, control, "MZ700005")));
    }
    let visit = search(&format!("Encounter?{}", sid("visit", "V-MZ700005")));
    assert_eq!(visit.len(), 1);
    assert_eq!(
        (visit[0]["status"].as_str(), visit[0]["period"]["end"].as_str()),
        (Some("finished"), Some("2026-12-05T10:00:00+08:00"))
    );
    accepted(&send(&samples::adt_visit("A13", "E-ADT4", "MZ700005")));
    let visit = search(&format!("Encounter?{}", sid("visit", "V-MZ700005")));
    assert_eq!(visit[0]["status"], "in-progress");
    assert!(visit[0]["period"].get("end").is_none());

    // ADT^A40 (2.5): two records of one person at the hospital are merged.
    // Different enough that matching alone would not link them: the sender's merge does.
    accepted(&send(&a04("E-A04a", "MZ700010", "林小红", "").replace("19900307", "19751212")));
    accepted(&send(&a04("E-A04b", "MZ700011", "欧阳娜娜", "")));
    let old_id = search(&format!("Patient?{}", sid("mrn", "MZ700010")))[0]["id"].as_str().unwrap().to_string();
    let new_id = search(&format!("Patient?{}", sid("mrn", "MZ700011")))[0]["id"].as_str().unwrap().to_string();
    let person_of = |id: &str| -> Vec<String> {
        search(&format!("Person?link=Patient/{id}"))
            .iter()
            .filter(|p| p["active"] != false)
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The index matches them first (its worker follows the outbox): two persons.
    let started = std::time::Instant::now();
    while (person_of(&old_id).is_empty() || person_of(&new_id).is_empty()) && started.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_ne!(person_of(&old_id), person_of(&new_id), "not linked by matching");
    accepted(&send(&samples::adt_a40("E-A40", "MZ700011", "MZ700010")));
    let old = &search(&format!("Patient?{}", sid("mrn", "MZ700010")))[0];
    let new = &search(&format!("Patient?{}", sid("mrn", "MZ700011")))[0];
    let (old_id, new_id) = (old["id"].as_str().unwrap(), new["id"].as_str().unwrap());
    assert_eq!(old["active"], false);
    assert_eq!(
        old["link"],
        serde_json::json!([{"other": {"reference": format!("Patient/{new_id}")}, "type": "replaced-by"}])
    );
    assert_eq!(
        new["link"],
        serde_json::json!([{"other": {"reference": format!("Patient/{old_id}")}, "type": "replaces"}])
    );
    let person = person_of(new_id);
    assert_eq!(person.len(), 1);
    assert_eq!(person_of(old_id), person, "both records are one person in the MPI");
    // Again: nothing changes; a prior record nobody knows is an error (204).
    accepted(&send(&samples::adt_a40("E-A40b", "MZ700011", "MZ700010")));
    let unknown = send(&samples::adt_a40("E-A40c", "MZ700011", "MZ799999"));
    assert_eq!((unknown.get("MSA-1").as_deref(), unknown.get("ERR-3-1").as_deref()), (Some("AE"), Some("204")));

    // HTTP: MDM^T02 (2.5) with the system client's token.
    let (status, content_type, ack) = post_hl7(
        &server.addr,
        &bearer,
        "application/hl7-v2",
        samples::mdm_t02("E-MDM1", "MZ700006", "DOC-9").as_bytes(),
    );
    let ack = ack.unwrap();
    assert_eq!((status, ack.get("MSA-1").as_deref()), (200, Some("AA")), "{:?}", ack.get("ERR-8"));
    assert_eq!(content_type, "application/hl7-v2; charset=utf-8");
    let documents = search(&format!("DocumentReference?{}", sid("document", "DOC-9")));
    assert_eq!((documents.len(), documents[0]["docStatus"].as_str()), (1, Some("final")));
    let binary_url = documents[0]["content"][0]["attachment"]["url"].as_str().unwrap();
    let (status, body) = super::security::http(
        &server.addr,
        "GET",
        &format!("/fhir/{binary_url}"),
        &[("Authorization", &bearer), ("Accept", "application/fhir+json")],
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["data"], "JVBERi0xLjQKJcfsj6IK");
    // A GBK body named by the Content-Type's charset, MSH-18 empty.
    let gbk = hl7::message::Charset::Gb18030.encode(&samples::oru_r01("E-ORU9", "MZ700007", "F7009", ""));
    let (status, content_type, ack) = post_hl7(&server.addr, &bearer, "application/hl7-v2; charset=GBK", &gbk);
    assert_eq!((status, ack.unwrap().get("MSA-1").as_deref()), (200, Some("AA")));
    assert_eq!(content_type, "application/hl7-v2; charset=gb18030");
    assert_eq!(search(&format!("Patient?{}", sid("mrn", "MZ700007")))[0]["name"][0]["text"], "陈建国");
    // Refusals: an unknown type (AR, 400), invalid content (AE, 422), no token, not HL7.
    let (status, _, ack) = post_hl7(
        &server.addr,
        &bearer,
        "x-application/hl7-v2+er7",
        b"MSH|^~\\&|X|FZ-HOSP|||||DFT^P03|E-X1|P|2.5\rPID|1||M1\r",
    );
    assert_eq!((status, ack.unwrap().get("ERR-3-1").as_deref()), (400, Some("200")));
    let bad = samples::oru_r01("E-ORU10", "MZ700008", "F7010", "").replace("|6.8|", "|6,8|");
    let (status, _, ack) = post_hl7(&server.addr, &bearer, "application/hl7-v2", bad.as_bytes());
    let ack = ack.unwrap();
    assert_eq!((status, ack.get("MSA-1").as_deref()), (422, Some("AE")));
    assert!(ack.get("ERR-8").unwrap().contains("OBX-5"), "{:?}", ack.get("ERR-8"));
    assert!(search(&format!("Patient?{}", sid("mrn", "MZ700008"))).is_empty(), "a refused message leaves nothing");
    let (status, _, _) = post_hl7(&server.addr, "Bearer nonsense", "application/hl7-v2", bad.as_bytes());
    assert_eq!(status, 401);
    let (status, _, _) = post_hl7(&server.addr, &bearer, "application/json", b"{}");
    assert_eq!(status, 415);
    // A resident's token is valid but not a hospital system's.
    let (status, body) = super::security::http(
        &server.addr,
        "POST",
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "grant_type=password&username=resident&password=Hutong%232026",
    );
    assert_eq!(status, 200, "{body}");
    let resident =
        format!("Bearer {}", serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap());
    let (status, _, _) = post_hl7(&server.addr, &resident, "application/hl7-v2", bad.as_bytes());
    assert_eq!(status, 403);
    // Every refused message is kept: the clash and the unknown prior record from a sender the
    // registry does not know, the two over HTTP for the caller's institution.
    let control_ids = |held: Vec<Value>| -> Vec<String> {
        let mut ids: Vec<String> =
            held.iter().map(|h| h["details"]["controlId"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(control_ids(held_messages(&server, &operator_bearer(&server), "unknown")), ["E-A40c", "E-SIU4"]);
    assert_eq!(control_ids(held_messages(&server, &bearer, "org-1")), ["E-ORU10", "E-X1"]);
}

/// `Bearer …` of the demo operator (password and the demo authenticator's current code).
fn operator_bearer(server: &super::serve::Server) -> String {
    let secret = crypto::totp::base32_decode("HUTONGDEMOTOTPKEY234").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let form = format!(
        "grant_type=password&username=operator&password=Hutong%232026&totp={}",
        crypto::totp::generate(&secret, now, 6)
    );
    super::serve::form_bearer(server, &form)
}

/// The HL7 v2 messages an institution's quarantine holds, as `bearer` sees them.
fn held_messages(server: &super::serve::Server, bearer: &str, organization: &str) -> Vec<Value> {
    let (status, body) = super::security::http(
        &server.addr,
        "GET",
        &format!("/quality/quarantine?organization={organization}"),
        &[("Authorization", bearer)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let held: Value = serde_json::from_str(&body).unwrap();
    held["held"].as_array().unwrap().iter().filter(|h| h["resourceType"] == "HL7v2Message").cloned().collect()
}

/// The quarantine entry a NAK names.
fn entry_named(ack: &Message) -> String {
    let text = ack.get("ERR-8").unwrap_or_default();
    text.split("data-quality quarantine entry ").nth(1).unwrap_or_else(|| panic!("no entry named: {text}")).to_string()
}

/// A message read but not committed is held in the sending institution's data-quality
/// quarantine (found by MSH-4 among the registry's Organizations) with the bytes as received
/// and the reason, and the NAK names the entry. The institution's system clients and operators
/// see it, other institutions' clients do not; the institution reprocesses it as held (refused
/// again, still one entry, new reasons) or corrected (committed, entry gone), or discards it;
/// each step is in the audit log.
#[test]
fn unmappable_messages_are_held_for_the_sender_and_reprocessed_or_discarded() {
    use hl7::samples;
    let data = tempfile::tempdir().unwrap();
    let (server, mllp_addr) = serve_with_mllp(data.path(), &[]);
    let hospital = super::serve::demo_bearer(&server, data.path()); // a system client of org-1
    let operator = operator_bearer(&server);
    let http = |method: &str, path: &str, bearer: &str, body: &str| -> (u16, Value) {
        let (status, text) = super::security::http(
            &server.addr,
            method,
            path,
            &[("Authorization", bearer), ("Content-Type", "application/json")],
            body,
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    // The registry knows org-1 by the facility code its interface engine sends in MSH-4.
    let (status, mut org) = http("GET", "/fhir/Organization/org-1", &hospital, "");
    assert_eq!(status, 200, "{org}");
    org["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": "https://hutong.dev/fhir/sid/hl7-facility", "value": "FZ-HOSP"}));
    let (status, body) = http("PUT", "/fhir/Organization/org-1", &hospital, &org.to_string());
    assert_eq!(status, 200, "{body}");

    // An ORU whose result is not a number (OBX-5 "6,8"): not mapped, NAKed naming the entry.
    let mut stream = TcpStream::connect(&mllp_addr).unwrap();
    let bad = samples::oru_r01("Q-ORU1", "MZ600001", "F6001", "").replace("|6.8|", "|6,8|");
    let ack = exchange(&mut stream, bad.as_bytes());
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AE"));
    assert!(ack.get("ERR-8").unwrap().contains("OBX-5"), "{:?}", ack.get("ERR-8"));
    let id = entry_named(&ack);
    assert!(id.starts_with("org-1|"), "held for the institution MSH-4 names: {id}");
    let path = |action: &str| format!("/quality/quarantine/{}{action}", id.replace('|', "%7C"));

    // The operator and the institution's own client see it, with what tells it apart.
    for bearer in [&operator, &hospital] {
        let held = held_messages(&server, bearer, "org-1");
        assert_eq!(held.len(), 1, "{held:?}");
        let entry = &held[0];
        assert_eq!(entry["id"], id.as_str());
        assert_eq!(entry["contentType"], "x-application/hl7-v2+er7");
        assert_eq!(crypto::unbase64(entry["data"].as_str().unwrap()).unwrap(), bad.as_bytes(), "the bytes as received");
        assert_eq!(entry["findings"][0]["rule"], "hl7-mapping");
        assert_eq!(
            (&entry["findings"][0]["ackCode"], &entry["findings"][0]["errorCode"]),
            (&json!("AE"), &json!("102"))
        );
        assert!(entry["findings"][0]["message"].as_str().unwrap().contains("OBX-5"), "{entry}");
        assert_eq!(
            entry["details"],
            json!({"sendingFacility": "FZ-HOSP", "messageType": "ORU^R01^ORU_R01", "controlId": "Q-ORU1", "charset": "UTF-8"})
        );
    }
    // Another institution's client may neither see nor touch it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hutong"))
        .args(["admin", "create-client", "--name", "other-lab", "--scopes", "system/*.*", "--organization", "org-2"])
        .arg("--data")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let other = super::serve::client_bearer(&server, &created);
    let (status, body) = http("GET", "/quality/quarantine?organization=org-1", &other, "");
    assert_eq!((status, body["resourceType"].as_str()), (403, Some("OperationOutcome")), "{body}");
    assert_eq!(http("POST", &path("/reprocess"), &other, "").0, 403);
    assert_eq!(http("DELETE", &path(""), &other, "").0, 403);

    // Retried as held: refused again with the reason; still the one entry, its reasons renewed.
    let (status, body) = http("POST", &path("/reprocess"), &hospital, "");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("OBX-5"), "{body}");
    assert!(body["issue"][1]["diagnostics"].as_str().unwrap().contains(&id), "{body}");
    let held = held_messages(&server, &hospital, "org-1");
    assert_eq!(held.len(), 1, "no new entry: {held:?}");
    assert_eq!(held[0]["findings"][0]["rule"], "hl7-mapping");
    assert_eq!(held[0]["lastAttempt"]["corrected"], false);
    // Operators see entries but write no clinical data: a correction they send is refused, and
    // the reasons stay the message's.
    let corrected = json!({"message": samples::oru_r01("Q-ORU1", "MZ600001", "F6001", "")});
    let (status, body) = http("POST", &path("/reprocess"), &operator, &corrected.to_string());
    assert_eq!((status, body["resourceType"].as_str()), (403, Some("OperationOutcome")), "{body}");
    assert_eq!(held_messages(&server, &hospital, "org-1")[0]["findings"], held[0]["findings"]);
    // A body that is not a correction is refused and changes nothing.
    assert_eq!(http("POST", &path("/reprocess"), &hospital, "{\"text\": 1}").0, 400);

    // Corrected: committed as the institution's client, the entry removed.
    let (status, body) = http("POST", &path("/reprocess"), &hospital, &corrected.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["reprocessed"], &body["result"]["ackCode"]), (&json!(id), &json!("AA")));
    assert!(held_messages(&server, &operator, "org-1").is_empty());
    let (status, reports) = http(
        "GET",
        "/fhir/DiagnosticReport?identifier=https://hutong.dev/fhir/sid/FZ-HOSP/filler-order%7CF6001",
        &hospital,
        "",
    );
    assert_eq!((status, reports["entry"].as_array().map(Vec::len)), (200, Some(1)), "{reports}");

    // A message from a sender the registry does not know is the operators' to see.
    let unknown = samples::oru_r01("Q-ORU2", "MZ600002", "F6002", "").replacen("|FZ-HOSP|", "|NO-SUCH-HOSP|", 1);
    let ack = exchange(&mut stream, unknown.replace("|6.8|", "|6,8|").as_bytes());
    let unknown_id = entry_named(&ack);
    assert!(unknown_id.starts_with("unknown|"), "{unknown_id}");
    assert_eq!(held_messages(&server, &operator, "unknown").len(), 1);
    assert_eq!(http("GET", "/quality/quarantine?organization=unknown", &hospital, "").0, 403);
    // Over HTTP it is the caller's; one the institution will not correct is discarded.
    let (status, _, ack) = post_hl7(
        &server.addr,
        &hospital,
        "application/hl7-v2",
        b"MSH|^~\\&|FIN|X|||||DFT^P03|Q-DFT1|P|2.5\rPID|1||M1\r",
    );
    assert_eq!(status, 400);
    let discarded = entry_named(&ack.unwrap());
    assert!(discarded.starts_with("org-1|"), "{discarded}");
    assert_eq!(held_messages(&server, &hospital, "org-1")[0]["findings"][0]["ackCode"], "AR");
    let (status, _) = http("DELETE", &format!("/quality/quarantine/{}", discarded.replace('|', "%7C")), &hospital, "");
    assert_eq!(status, 204);
    assert!(held_messages(&server, &hospital, "org-1").is_empty());
    assert!(!data.path().join("hl7-quarantine").exists(), "no file while the store takes messages");

    // Each step is in the audit log.
    let conn = rusqlite::Connection::open(data.path().join("hutong.db")).unwrap();
    let audited = |action: &str, outcome: &str, detail: &str| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM audit_log WHERE action = ?1 AND outcome = ?2 AND detail LIKE ?3",
            rusqlite::params![action, outcome, format!("%{detail}%")],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(audited("quality-block", "failure", &id), 1, "held");
    assert_eq!(audited("quality-block", "failure", &unknown_id), 1);
    assert_eq!(audited("quality-block", "failure", &discarded), 1);
    assert!(audited("quality-quarantine", "success", "") >= 5, "each look at the quarantine");
    assert_eq!(
        audited("quality-quarantine", "denied", ""),
        2,
        "the other institution's client, and org-1's at unknown"
    );
    assert_eq!(audited("quality-reprocess", "denied", ""), 1);
    assert_eq!(audited("quality-discard", "denied", ""), 1);
    assert_eq!(audited("quality-reprocess", "failure", "hl7-mapping"), 1);
    assert_eq!(audited("quality-reprocess", "failure", "the body must be"), 1, "the malformed correction");
    assert_eq!(audited("quality-reprocess", "success", ""), 1);
    assert_eq!(audited("quality-discard", "success", ""), 1);
}
