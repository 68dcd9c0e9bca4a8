//! MDM^T02 (original document notification and content) to FHIR: a DocumentReference (a
//! conditional update on the unique document number, TXA-12) whose content is one Binary per
//! encapsulated OBX (ED, base64) and one `text/plain` Binary for the text OBX lines (TX, FT,
//! ST). Binary ids are derived from the facility and document number, so a document sent again
//! replaces its content instead of adding copies. Mapping table in `docs/HL7V2.md`.

use serde_json::{Value, json};

use crate::Hl7Error;
use crate::adt::{PATIENT_URN, message_type, patient_entry, query_escape, required, visit_entry};
use crate::message::Message;
use crate::types::{
    attachment, base64, codeable, component, facility_system, field, instant_of, path, stable_hash, staff, urn,
};

/// Maps an MDM^T02 message to a transaction Bundle.
pub fn to_bundle(message: &Message) -> Result<Value, Hl7Error> {
    let (kind, event) = message_type(message);
    if kind != "MDM" {
        return Err(Hl7Error::UnsupportedMessageType(format!("{kind}^{event}")));
    }
    if event != "T02" {
        return Err(Hl7Error::UnsupportedEvent(format!("{kind}^{event}")));
    }
    let facility = required(message, "MSH-4-1", "the sending facility names the document numbers' issuer")?;
    let txa = message.segment("TXA").ok_or_else(|| Hl7Error::MissingField {
        field: "TXA".into(),
        why: "MDM^T02 describes the document in TXA".into(),
    })?;
    let number = component(message, txa, 12, 1);
    if number.is_empty() {
        return Err(Hl7Error::MissingField {
            field: "TXA-12".into(),
            why: "the unique document number keys the document, so that sending it again replaces it".into(),
        });
    }
    let mut entries = vec![patient_entry(message, &facility, false)?];
    let encounter = visit_entry(message, &facility)?;
    let encounter_ref = encounter.as_ref().map(|e| json!({"reference": e["fullUrl"]}));
    entries.extend(encounter);

    // The content: each ED value an attachment, the text lines one text attachment.
    let mut attachments: Vec<Value> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut ordinal = 0;
    for obx in message.segments.iter().filter(|s| s.id() == "OBX") {
        ordinal += 1;
        let value_type = component(message, obx, 2, 1).to_ascii_uppercase();
        let values: Vec<_> = message.repetitions(obx, 5).into_iter().filter(|f| !f.is_empty()).collect();
        match value_type.as_str() {
            "ED" => {
                for ed in &values {
                    attachments.push(attachment(ed, &path(obx, ordinal, 5))?);
                }
            }
            "TX" | "FT" | "ST" => lines.extend(values.iter().map(|f| f.value())),
            other => {
                return Err(Hl7Error::InvalidField {
                    field: path(obx, ordinal, 2),
                    value: other.into(),
                    why: "document content is ED (encapsulated, e.g. base64 PDF) or TX/FT/ST text".into(),
                });
            }
        }
    }
    if !lines.is_empty() {
        let text = lines.join("\n");
        attachments.push(json!({"contentType": "text/plain; charset=utf-8", "data": base64(text.as_bytes())}));
    }
    if attachments.is_empty() {
        return Err(Hl7Error::MissingField {
            field: "OBX-5".into(),
            why: "MDM^T02 carries the document's content in OBX segments (ED or TX)".into(),
        });
    }

    let mut content = Vec::new();
    for (n, a) in attachments.into_iter().enumerate() {
        let id = format!("hl7doc-{}", stable_hash(&format!("{facility}|{number}|{n}")));
        let binary = json!({
            "resourceType": "Binary",
            "contentType": a["contentType"],
            "securityContext": {"reference": PATIENT_URN},
            "data": a["data"],
        });
        entries.push(crate::types::entry(urn(20 + n), binary, json!({"method": "PUT", "url": format!("Binary/{id}")})));
        content.push(json!({"attachment": {"contentType": a["contentType"], "url": format!("Binary/{id}")}}));
    }

    let availability = component(message, txa, 19, 1);
    let status = match availability.as_str() {
        "" | "AV" | "UN" => "current",
        "OB" => "superseded",
        "CA" => "entered-in-error",
        other => {
            return Err(Hl7Error::InvalidField {
                field: "TXA-19".into(),
                value: other.into(),
                why: "the availability status must be AV, CA, OB or UN (table 0273)".into(),
            });
        }
    };
    let system = facility_system(&facility, "document");
    let mut document = json!({
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": system, "value": number},
        "status": status,
        "subject": {"reference": PATIENT_URN},
        "content": content,
    });
    match component(message, txa, 17, 1).as_str() {
        "DO" | "AU" | "LA" => document["docStatus"] = json!("final"),
        "IP" | "IN" | "DI" | "PA" => document["docStatus"] = json!("preliminary"),
        _ => {}
    }
    if let Some(kind) = field(message, txa, 2) {
        // TXA-2 is a bare code (IS, table 0270) before 2.6; a CWE names its system.
        let concept = if kind.component(3).is_empty() {
            let code = kind.component(1);
            json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0270", "code": code}]})
        } else {
            codeable(&kind, &facility).unwrap_or_default()
        };
        document["type"] = concept;
    }
    let date = [(4, "TXA-4"), (6, "TXA-6")]
        .into_iter()
        .find_map(|(n, at)| field(message, txa, n).map(|f| instant_of(&f.component(1), at)));
    if let Some(date) = date.transpose()?.flatten() {
        document["date"] = json!(date);
    }
    let authors: Vec<Value> =
        message.repetitions(txa, 9).iter().filter(|f| !f.is_empty()).filter_map(|f| staff(f, &facility)).collect();
    if !authors.is_empty() {
        document["author"] = Value::Array(authors);
    }
    if let Some(authenticator) = field(message, txa, 22).and_then(|f| staff(&f, &facility)) {
        document["authenticator"] = authenticator;
    }
    if let Some(e) = encounter_ref {
        document["context"] = json!({"encounter": [e]});
    }
    let parent = component(message, txa, 13, 1);
    if !parent.is_empty() {
        document["relatesTo"] =
            json!([{"code": "appends", "target": {"identifier": {"system": system, "value": parent}}}]);
    }
    entries.push(crate::types::entry(
        urn(10),
        document,
        json!({"method": "PUT",
               "url": format!("DocumentReference?identifier={}|{}", query_escape(&system), query_escape(&number))}),
    ));
    Ok(crate::types::transaction(entries))
}
