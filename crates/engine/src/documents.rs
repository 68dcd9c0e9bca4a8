//! CDA document collection (WS/T 500 shared documents, C-CDA): `POST /cda` with the XML.
//! The `cda` crate parses (no DTDs, no entities), validates the header and sections, and turns
//! the document into one conditional transaction; this module decodes the bytes (UTF-8, or
//! GBK/GB 18030 when the XML declaration says so) and runs the transaction with the caller's
//! authority, so the document and everything extracted from it commit together or not at all,
//! and a re-sent document changes nothing.

use fhir::{Issue, IssueType};
use serde_json::Value;
use store::Ctx;

use crate::{Engine, EngineError, EngineResult, RequestOptions};

/// The XML declaration's encoding, lowercased (`utf-8` when none is declared).
fn declared_encoding(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_lowercase();
    head.strip_prefix("\u{feff}")
        .unwrap_or(&head)
        .strip_prefix("<?xml")
        .and_then(|rest| rest.split("?>").next())
        .and_then(|decl| decl.split("encoding=").nth(1))
        .map(|v| {
            v.trim_start_matches(['"', '\'']).chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect()
        })
        .unwrap_or_else(|| "utf-8".into())
}

/// The document as text.
pub fn decode_xml(bytes: &[u8]) -> EngineResult<String> {
    let encoding = declared_encoding(bytes);
    match encoding.as_str() {
        "gbk" | "gb2312" | "gb18030" => {
            let (text, _, had_errors) = encoding_rs::GB18030.decode(bytes);
            if had_errors {
                return Err(EngineError::bad_request(
                    IssueType::Invalid,
                    format!("the document is not valid {encoding}"),
                ));
            }
            Ok(text.into_owned())
        }
        "utf-8" | "utf8" => String::from_utf8(bytes.to_vec()).map_err(|_| {
            EngineError::bad_request(
                IssueType::Invalid,
                "the document is not valid UTF-8 (declare encoding=\"GB18030\" for GB text)",
            )
        }),
        other => Err(EngineError::bad_request(
            IssueType::NotSupported,
            format!("encoding '{other}' is not supported (UTF-8, GBK, GB 18030)"),
        )),
    }
}

/// A CDA document's extraction as a transaction Bundle, or why it cannot be read.
pub(crate) fn cda_transaction(bytes: &[u8]) -> EngineResult<Value> {
    let xml = decode_xml(bytes)?;
    let doc = cda::parse(&xml).map_err(|e| match e {
        cda::CdaError::Forbidden(m) => EngineError::bad_request(IssueType::Security, m),
        cda::CdaError::Malformed(m) => EngineError::bad_request(IssueType::Structure, m),
        cda::CdaError::Invalid(problems) => {
            EngineError::Unprocessable(problems.into_iter().map(|p| Issue::error(IssueType::Invariant, p)).collect())
        }
    })?;
    Ok(cda::to_transaction(&doc, &xml))
}

impl Engine {
    /// Stores a CDA document and what it says. Answers the transaction-response Bundle.
    /// A document refused before anything is extracted (an unreadable encoding, not
    /// well-formed XML, a DTD, a header that fails validation, a section its WS/T 500 type
    /// requires missing) is kept in the data-quality quarantine of the sending institution with
    /// the reasons (`quality.rs`), the bytes as received, so nothing sent is lost; the refusal
    /// names the quarantine entry.
    pub async fn ingest_cda(&self, ctx: &Ctx, bytes: &[u8], opts: &RequestOptions) -> EngineResult<Value> {
        match cda_transaction(bytes) {
            Ok(transaction) => self.bundle(ctx, transaction, opts).await,
            Err(e) => Err(self.quarantine_document(ctx, bytes, e).await),
        }
    }

    /// Keeps a refused document in the quarantine and adds the entry's id to the refusal.
    async fn quarantine_document(&self, ctx: &Ctx, bytes: &[u8], e: EngineError) -> EngineError {
        let (rule, mut issues) = match e {
            EngineError::BadRequest(issues) => ("cda-unreadable", issues),
            EngineError::Unprocessable(issues) => ("cda-invalid", issues),
            other => return other,
        };
        let reasons: Vec<String> = issues.iter().map(|i| i.diagnostics.clone()).collect();
        match self.quarantine_raw(ctx, "ClinicalDocument", "application/hl7-cda+xml", bytes, rule, &reasons).await {
            Ok(id) => {
                let mut note = Issue::error(IssueType::Informational, format!("the document is quarantined as {id}"));
                note.severity = fhir::IssueSeverity::Information;
                issues.push(note);
                match rule {
                    "cda-invalid" => EngineError::Unprocessable(issues),
                    _ => EngineError::BadRequest(issues),
                }
            }
            Err(store_error) => store_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_follow_the_declaration() {
        assert_eq!(declared_encoding(br#"<?xml version="1.0" encoding="GBK"?><a/>"#), "gbk");
        assert_eq!(declared_encoding(b"<a/>"), "utf-8");
        let (gbk, _, _) = encoding_rs::GBK.encode("<?xml version=\"1.0\" encoding=\"GBK\"?><a>病历</a>");
        assert!(decode_xml(&gbk).unwrap().contains("病历"));
        assert!(decode_xml(&[0xff, 0xfe, 0x00]).is_err());
        assert!(decode_xml(br#"<?xml version="1.0" encoding="ISO-2022-JP"?><a/>"#).is_err());
    }
}
