//! The HL7 v2 listener of the real binary over loopback: ADT^A04 in UTF-8 and GBK acknowledged
//! after the commit and found by FHIR search, a resend that updates rather than duplicates,
//! unknown types rejected, invalid content NAKed and kept, garbage and oversized messages that
//! close only their own connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use hl7::Message;
use serde_json::Value;

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

#[test]
fn adt_over_mllp_lands_in_fhir_once_and_bad_input_is_naked() {
    let data = tempfile::tempdir().unwrap();
    let mllp_addr = Arc::new(Mutex::new(String::new()));
    let seen = mllp_addr.clone();
    let server = super::serve::start_with(
        data.path(),
        true,
        &["--mllp-listen", "127.0.0.1:0", "--mllp-max-message-bytes", "4096"],
        move |line| {
            if let Some(a) = line.strip_prefix("Hutong HL7 v2 listener on mllp://") {
                *seen.lock().unwrap() = a.to_string();
            }
        },
    );
    let mllp_addr = mllp_addr.lock().unwrap().clone();
    assert!(!mllp_addr.is_empty(), "the server printed the MLLP address");
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
        "MSH|^~\\&|LIS|FZ-HOSP|HUTONG|REGION|20261130093000||ORU^R01|MSG-O1|P|2.5.1\rPID|1||MZ900001^^^FZ-HOSP^MR\r";
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
    let kept: Vec<String> = std::fs::read_dir(data.path().join("hl7-quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hl7"))
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");

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
