//! ORM^O01 and OMG^O19 (orders) to FHIR: one ServiceRequest per ORC/OBR pair, a conditional
//! update on the placer order number (else the filler's), its status from the order control
//! code (ORC-1) and order status (ORC-5). Mapping table in `docs/HL7V2.md`.

use serde_json::{Value, json};

use crate::Hl7Error;
use crate::adt::{PATIENT_URN, message_type, patient_entry, query_escape, required, visit_entry};
use crate::message::{Message, Segment};
use crate::oru::{order_identifiers, order_numbers};
use crate::types::{codeable, component, date_time_of, facility_system, field, path, staff, urn};

/// Maps an ORM^O01 or OMG^O19 message to a transaction Bundle.
pub fn to_bundle(message: &Message) -> Result<Value, Hl7Error> {
    let (kind, event) = message_type(message);
    match (kind.as_str(), event.as_str()) {
        ("ORM", "O01") | ("OMG", "O19") => {}
        ("ORM" | "OMG", _) => return Err(Hl7Error::UnsupportedEvent(format!("{kind}^{event}"))),
        _ => return Err(Hl7Error::UnsupportedMessageType(format!("{kind}^{event}"))),
    }
    let facility = required(message, "MSH-4-1", "the sending facility names the order numbers' issuer")?;
    let mut entries = vec![patient_entry(message, &facility, false)?];
    let encounter = visit_entry(message, &facility)?;
    let encounter_ref = encounter.as_ref().map(|e| json!({"reference": e["fullUrl"]}));
    entries.extend(encounter);

    // Each ORC starts an order; its OBR (if any) follows before the next ORC.
    let mut orders: Vec<(usize, &Segment, Option<&Segment>)> = Vec::new();
    for segment in &message.segments {
        match segment.id() {
            "ORC" => orders.push((orders.len() + 1, segment, None)),
            "OBR" => match orders.last_mut() {
                Some((_, _, obr @ None)) => *obr = Some(segment),
                _ => {
                    return Err(Hl7Error::MissingField {
                        field: "ORC".into(),
                        why: "each OBR follows the ORC of its order".into(),
                    });
                }
            },
            _ => {}
        }
    }
    if orders.is_empty() {
        return Err(Hl7Error::MissingField { field: "ORC".into(), why: format!("{kind}^{event} carries an order") });
    }
    for (n, (ordinal, orc, obr)) in orders.into_iter().enumerate() {
        entries.push(service_request(message, &facility, ordinal, orc, obr, encounter_ref.as_ref(), urn(10 + n))?);
    }
    Ok(crate::types::transaction(entries))
}

fn service_request(
    message: &Message,
    facility: &str,
    ordinal: usize,
    orc: &Segment,
    obr: Option<&Segment>,
    encounter: Option<&Value>,
    full_url: String,
) -> Result<Value, Hl7Error> {
    let at = |n: usize| path(orc, ordinal, n);
    let control = component(message, orc, 1, 1);
    let order_status = component(message, orc, 5, 1);
    let status = match (control.as_str(), order_status.as_str()) {
        (_, "CM") => "completed",
        (_, "CA" | "DC") => "revoked",
        (_, "HD") => "on-hold",
        ("NW" | "XO" | "SC" | "RP" | "RO" | "RL" | "SN" | "XX", _) => "active",
        ("CA" | "OC" | "DC" | "OD" | "CR", _) => "revoked",
        ("HD" | "OH", _) => "on-hold",
        ("", _) => {
            return Err(Hl7Error::MissingField {
                field: at(1),
                why: "the order control code (NW, CA, SC, XO, …) sets ServiceRequest.status".into(),
            });
        }
        (other, _) => {
            return Err(Hl7Error::InvalidField {
                field: at(1),
                value: other.into(),
                why: "the order control code must be one of NW, XO, SC, RP, RO, RL, SN, XX, CA, OC, DC, OD, CR, HD, \
                      OH (table 0119)"
                    .into(),
            });
        }
    };
    let (placer, filler) = match obr {
        Some(obr) => order_numbers(message, obr, Some(orc)),
        None => (component(message, orc, 2, 1), component(message, orc, 3, 1)),
    };
    let (identifiers, _) = order_identifiers(facility, &placer, &filler);
    // The placer's number keys the order: it is known from the first message on (the filler's
    // may only be assigned later); results (ORU) find their order the same way.
    let (key_system, key_value) = match (placer.is_empty(), filler.is_empty()) {
        (false, _) => (facility_system(facility, "placer-order"), placer),
        (true, false) => (facility_system(facility, "filler-order"), filler),
        (true, true) => {
            return Err(Hl7Error::MissingField {
                field: at(2),
                why: "the placer order number (ORC-2 or OBR-2; else the filler's, ORC-3/OBR-3) keys the order".into(),
            });
        }
    };
    let code = obr.and_then(|obr| field(message, obr, 4)).and_then(|f| codeable(&f, facility)).ok_or_else(|| {
        Hl7Error::MissingField {
            field: "OBR-4".into(),
            why: "the universal service identifier is what is ordered".into(),
        }
    })?;
    let mut request = json!({
        "resourceType": "ServiceRequest",
        "identifier": identifiers,
        "status": status,
        "intent": "order",
        "code": code,
        "subject": {"reference": PATIENT_URN},
    });
    if let Some(e) = encounter {
        request["encounter"] = e.clone();
    }
    // Priority: TQ1-9 (2.5), else ORC-7.6 / OBR-27.6 (quantity/timing, before 2.5); table 0485.
    let priority = message
        .get("TQ1-9-1")
        .or_else(|| Some(component(message, orc, 7, 6)).filter(|p| !p.is_empty()))
        .or_else(|| obr.map(|o| component(message, o, 27, 6)).filter(|p| !p.is_empty()));
    if let Some(p) = priority {
        let priority = match p.as_str() {
            "S" => "stat",
            "A" | "P" => "asap",
            "C" => "urgent",
            _ => "routine",
        };
        request["priority"] = json!(priority);
    }
    if let Some(t) = field(message, orc, 9) {
        request["authoredOn"] = json!(date_time_of(&t.component(1), &at(9))?);
    }
    let requester = field(message, orc, 12).or_else(|| obr.and_then(|o| field(message, o, 16)));
    if let Some(requester) = requester.and_then(|f| staff(&f, facility)) {
        request["requester"] = requester;
    }
    if let Some(reason) = obr.and_then(|o| field(message, o, 31)).and_then(|f| codeable(&f, facility)) {
        request["reasonCode"] = json!([reason]);
    }
    if let Some(specimen) = obr.and_then(|o| field(message, o, 15)).and_then(|f| codeable(&f, facility)) {
        // SPS (before 2.5): the specimen source as a note, since no Specimen resource is made.
        if let Some(text) = specimen["text"].as_str().or_else(|| specimen["coding"][0]["code"].as_str()) {
            request["note"] = json!([{"text": format!("specimen: {text}")}]);
        }
    }
    Ok(crate::types::entry(
        full_url,
        request,
        json!({"method": "PUT",
                    "url": format!("ServiceRequest?identifier={}|{}", query_escape(&key_system), query_escape(&key_value))}),
    ))
}
