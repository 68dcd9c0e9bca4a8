//! HL7 v2 messages (versions 2.3 to 2.5.1): parsing and writing with the message's own
//! delimiters, escape sequences and character set (`message`), MLLP framing (`mllp`),
//! acknowledgements (`ack`) and the mapping of messages to FHIR transaction Bundles ([`to_fhir`]:
//! ADT in `adt`, ORU^R01 in `oru`, ORM^O01/OMG^O19 in `orders`, SIU in `siu`, MDM^T02 in
//! `mdm`, shared data types in `types`).
//!
//! Pure: no IO, no clock (callers pass timestamps), no storage. The listener lives in the
//! `hutong` binary (`crates/hutong/src/mllp.rs`).

pub mod ack;
pub mod adt;
pub mod mdm;
pub mod message;
pub mod mllp;
pub mod orders;
pub mod oru;
pub mod samples;
pub mod siu;
pub mod types;

use serde_json::Value;

pub use ack::{AckCode, AckError, Severity, ack, ack_unparsed};
pub use message::{Delimiters, Field, Message, Segment, escape, unescape};
pub use mllp::{FrameError, MllpDecoder, frame};

/// The versions this crate reads (MSH-12).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"];

/// The message types and events mapped, as named in NAKs and documentation.
pub const SUPPORTED_MESSAGES: &str = "ADT^A01/A02/A03/A04/A05/A08/A11/A13/A40, ORU^R01, ORM^O01, OMG^O19, \
     SIU^S12/S13/S14/S15, MDM^T02";

/// A message mapped to FHIR: one transaction Bundle, committed as one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub bundle: Value,
    /// ADT^A40 only: the prior record the caller must read and pass to
    /// [`adt::complete_merge`] before committing the Bundle.
    pub merge: Option<Merge>,
}

/// The prior record of an ADT^A40 merge: the identifier (system and MRN) of the prior Patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub prior_system: String,
    pub prior_mrn: String,
}

impl Merge {
    /// The `identifier` search value (`system|value`) that finds the prior Patient.
    pub fn identifier_token(&self) -> String {
        format!("{}|{}", self.prior_system, self.prior_mrn)
    }
}

/// Maps a message to FHIR by its type (MSH-9): the version is checked first.
pub fn to_fhir(message: &Message) -> Result<Mapped, Hl7Error> {
    message.version()?;
    let (kind, event) = adt::message_type(message);
    let bundle = match kind.as_str() {
        "ADT" => return adt::map(message),
        "ORU" => oru::to_bundle(message)?,
        "ORM" | "OMG" => orders::to_bundle(message)?,
        "SIU" => siu::to_bundle(message)?,
        "MDM" => mdm::to_bundle(message)?,
        _ => return Err(Hl7Error::UnsupportedMessageType(format!("{kind}^{event}"))),
    };
    Ok(Mapped { bundle, merge: None })
}

/// Everything that can be wrong with a message. Each error names the HL7 table 0357 code an
/// acknowledgement reports for it ([`Hl7Error::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hl7Error {
    #[error("the message is empty")]
    Empty,
    #[error("the message does not start with an MSH segment (it starts with '{found}')")]
    MissingMsh { found: String },
    #[error("MSH-1/MSH-2 encoding characters are invalid: {0}")]
    BadEncodingCharacters(String),
    #[error("MSH-18 character set '{0}' is not supported (use UNICODE UTF-8, GB 18030-2000, GBK or CHINESE)")]
    UnsupportedCharset(String),
    #[error("the message is not valid {charset} text (MSH-18 names the character set)")]
    InvalidText { charset: String },
    #[error("segment {index} ('{name}') does not start with a three-character segment id")]
    BadSegment { index: usize, name: String },
    #[error("MSH-12 version '{0}' is not supported (supported: 2.3, 2.3.1, 2.4, 2.5, 2.5.1)")]
    UnsupportedVersion(String),
    #[error("message type '{0}' is not supported (supported: {SUPPORTED_MESSAGES})")]
    UnsupportedMessageType(String),
    #[error("event '{0}' is not supported for this message type (supported: {SUPPORTED_MESSAGES})")]
    UnsupportedEvent(String),
    #[error("{field} is required: {why}")]
    MissingField { field: String, why: String },
    #[error("{field} value '{value}' is invalid: {why}")]
    InvalidField { field: String, value: String, why: String },
    #[error("{field} '{value}' names no record here: {why}")]
    UnknownKey { field: String, value: String, why: String },
}

impl Hl7Error {
    /// The HL7 table 0357 (message error condition) code and its display text.
    pub fn code(&self) -> (&'static str, &'static str) {
        match self {
            Hl7Error::Empty | Hl7Error::MissingMsh { .. } | Hl7Error::BadSegment { .. } => {
                ("100", "Segment sequence error")
            }
            Hl7Error::MissingField { .. } => ("101", "Required field missing"),
            Hl7Error::BadEncodingCharacters(_) | Hl7Error::InvalidText { .. } | Hl7Error::InvalidField { .. } => {
                ("102", "Data type error")
            }
            Hl7Error::UnsupportedCharset(_) => ("103", "Table value not found"),
            Hl7Error::UnknownKey { .. } => ("204", "Unknown key identifier"),
            Hl7Error::UnsupportedMessageType(_) => ("200", "Unsupported message type"),
            Hl7Error::UnsupportedEvent(_) => ("201", "Unsupported event code"),
            Hl7Error::UnsupportedVersion(_) => ("203", "Unsupported version id"),
        }
    }

    /// Whether the receiver rejects the message outright (AR: it cannot be processed here as
    /// sent, whatever its content) rather than reporting an error in its content (AE).
    pub fn rejects(&self) -> bool {
        matches!(
            self,
            Hl7Error::UnsupportedMessageType(_) | Hl7Error::UnsupportedEvent(_) | Hl7Error::UnsupportedVersion(_)
        )
    }
}

#[cfg(test)]
mod mapping_tests;
#[cfg(test)]
mod tests;
