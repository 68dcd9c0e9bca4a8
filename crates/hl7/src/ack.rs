//! Acknowledgements: an ACK whose MSH swaps the sender and receiver of the message it answers,
//! MSA-1 AA/AE/AR, MSA-2 the answered message's control id, and one ERR segment per error
//! (ERR-3 a table 0357 code, ERR-4 the severity, ERR-8 the message for people; versions before
//! 2.5 have no ERR-3, so ERR-1 carries the code there too).

use crate::message::{Charset, Delimiters, Message, Segment, escape};
use crate::{Hl7Error, SUPPORTED_VERSIONS};

/// MSA-1, original acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept: processed and committed.
    Accept,
    /// Application error: the content is wrong; fix it and send again.
    Error,
    /// Application reject: this receiver does not process such a message as sent.
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

/// ERR-4 (table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Information,
}

/// One ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// Table 0357 code and text, e.g. ("200", "Unsupported message type").
    pub code: (String, String),
    pub severity: Severity,
    /// ERR-8: what was wrong and what to do.
    pub message: String,
}

impl AckError {
    pub fn error(code: (&str, &str), message: impl Into<String>) -> AckError {
        AckError { code: (code.0.to_string(), code.1.to_string()), severity: Severity::Error, message: message.into() }
    }
}

impl From<&Hl7Error> for AckError {
    fn from(e: &Hl7Error) -> AckError {
        AckError::error(e.code(), e.to_string())
    }
}

/// The ACK answering `message`. `now` is the HL7 timestamp for MSH-7 (YYYYMMDDHHMMSS) and
/// `control_id` the ACK's own MSH-10.
pub fn ack(message: &Message, code: AckCode, errors: &[AckError], control_id: &str, now: &str) -> Message {
    let d = message.delimiters;
    let raw = |path: &str| -> String {
        let Some((id, n)) = path.split_once('-') else { return String::new() };
        let n = n.parse().unwrap_or(0);
        message.segment(id).map(|s| s.raw(n).to_string()).unwrap_or_default()
    };
    let version = message.get("MSH-12-1").filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    let version = version.unwrap_or_else(|| "2.5.1".to_string());
    let trigger = message.get("MSH-9-2").map(|e| escape(&e, &d)).unwrap_or_default();
    build(
        d,
        message.charset,
        [raw("MSH-5"), raw("MSH-6"), raw("MSH-3"), raw("MSH-4")],
        &trigger,
        raw("MSH-11"),
        &version,
        raw("MSH-18"),
        (code, &escape(&message.control_id(), &d)),
        errors,
        control_id,
        now,
    )
}

/// The ACK for bytes that could not be read as a message at all (no MSH, bad delimiters, an
/// unknown character set): AR or AE with the default delimiters, UTF-8, version 2.5.1 and an
/// empty MSA-2, since the control id could not be read.
pub fn ack_unparsed(code: AckCode, errors: &[AckError], control_id: &str, now: &str) -> Message {
    let empty = || String::new();
    build(
        Delimiters::default(),
        Charset::Utf8,
        [empty(), empty(), empty(), empty()],
        "",
        "P".to_string(),
        "2.5.1",
        empty(),
        (code, ""),
        errors,
        control_id,
        now,
    )
}

#[expect(clippy::too_many_arguments, reason = "one private builder behind the two public entry points")]
fn build(
    d: Delimiters,
    charset: Charset,
    parties: [String; 4],
    trigger: &str,
    processing_id: String,
    version: &str,
    msh18: String,
    (code, answered): (AckCode, &str),
    errors: &[AckError],
    control_id: &str,
    now: &str,
) -> Message {
    let [sending_app, sending_facility, receiving_app, receiving_facility] = parties;
    let c = d.component;
    let message_type = if trigger.is_empty() { "ACK".to_string() } else { format!("ACK{c}{trigger}{c}ACK") };
    let processing_id = if processing_id.is_empty() { "P".to_string() } else { processing_id };
    let mut msh = vec![
        d.field.to_string(),
        d.encoding_characters(),
        sending_app,
        sending_facility,
        receiving_app,
        receiving_facility,
        escape(now, &d),
        String::new(),
        message_type,
        escape(control_id, &d),
        processing_id,
        version.to_string(),
    ];
    if !msh18.is_empty() {
        msh.resize(17, String::new());
        msh.push(msh18);
    }
    let mut segments = vec![Segment::new("MSH", msh)];
    let text = errors.first().map(|e| truncate(&escape(&e.message, &d), 80)).unwrap_or_default();
    segments.push(Segment::new("MSA", vec![code.as_str().to_string(), answered.to_string(), text]));
    let before_2_5 = matches!(version, "2.3" | "2.3.1" | "2.4");
    for e in errors {
        let s = d.subcomponent;
        let (code, display) = (escape(&e.code.0, &d), escape(&e.code.1, &d));
        let severity = match e.severity {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
        };
        let err1 = if before_2_5 { format!("{c}{c}{c}{code}{s}{display}{s}HL70357") } else { String::new() };
        let fields = vec![
            err1,
            String::new(),
            format!("{code}{c}{display}{c}HL70357"),
            severity.to_string(),
            String::new(),
            String::new(),
            String::new(),
            escape(&e.message, &d),
        ];
        segments.push(Segment::new("ERR", fields));
    }
    Message { delimiters: d, charset, segments }
}

/// At most `max` characters (MSA-3 is short in the standard; ERR-8 carries the full text).
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A04: &str =
        "MSH|^~\\&|HIS|FZ-HOSP|HUTONG|REGION|20261130093000||ADT^A04^ADT_A01|MSG0001|P|2.4\rPID|1||123^^^FZ-HOSP^MR\r";

    #[test]
    fn ack_swaps_parties_and_answers_the_control_id() {
        let message = Message::parse(A04.as_bytes()).unwrap();
        let ack = ack(&message, AckCode::Accept, &[], "ACK1", "20261130093001");
        assert_eq!(
            ack.to_text(),
            "MSH|^~\\&|HUTONG|REGION|HIS|FZ-HOSP|20261130093001||ACK^A04^ACK|ACK1|P|2.4\rMSA|AA|MSG0001|\r"
        );
    }

    #[test]
    fn nak_carries_err_segments() {
        let message = Message::parse(A04.replace("2.4", "2.5.1").as_bytes()).unwrap();
        let error = Hl7Error::UnsupportedMessageType("ORU^R01".into());
        let nak = ack(&message, AckCode::Reject, &[AckError::from(&error)], "ACK2", "20261130093001");
        let nak = Message::parse(nak.to_text().as_bytes()).unwrap();
        assert_eq!(nak.get("MSA-1").as_deref(), Some("AR"));
        assert_eq!(nak.get("MSA-2").as_deref(), Some("MSG0001"));
        assert_eq!(nak.get("ERR-3-1").as_deref(), Some("200"));
        assert_eq!(nak.get("ERR-3-3").as_deref(), Some("HL70357"));
        assert_eq!(nak.get("ERR-4").as_deref(), Some("E"));
        assert_eq!(nak.get("ERR-8").as_deref(), Some(error.to_string().as_str()));
        // Before 2.5 the code is in ERR-1 too.
        let old = Message::parse(A04.as_bytes()).unwrap();
        let nak = ack(&old, AckCode::Reject, &[AckError::from(&error)], "ACK3", "20261130093001");
        assert_eq!(nak.get("ERR-1-4-1").as_deref(), Some("200"));
    }

    #[test]
    fn unparsed_messages_are_answered_with_defaults() {
        let error = Hl7Error::MissingMsh { found: "garbage".into() };
        let nak = ack_unparsed(AckCode::Error, &[AckError::from(&error)], "ACK4", "20261130093001");
        let text = nak.to_text();
        assert!(text.starts_with("MSH|^~\\&|||||20261130093001||ACK|ACK4|P|2.5.1\rMSA|AE||"), "{text}");
        assert!(text.contains("\rERR|||100^Segment sequence error^HL70357|E||||the message does not start"), "{text}");
    }
}
