//! ORU^R01 (unsolicited observation results) to FHIR: one DiagnosticReport per OBR and one
//! Observation per OBX, identified by identifiers built from the order numbers (filler, else
//! placer) and the OBX set id. Their ids are derived from those identifiers ([`derived_id`]), so
//! each is an update of a known id (`PUT Observation/{id}`, creating it the first time) that
//! needs no search: a result sent again (corrected, or because its ACK was lost) updates what is
//! there instead of adding to it, and the same content again makes no new version. The report is `basedOn` the
//! ServiceRequest of its order (created from the OBR when no ORM announced it). Mapping table in
//! `docs/HL7V2.md`.

use serde_json::{Map, Value, json};

use crate::Hl7Error;
use crate::adt::{PATIENT_URN, message_type, patient_entry, query_escape, required, visit_entry};
use crate::message::{Message, Segment};
use crate::types::{
    attachment, codeable, component, date_time_of, facility_system, field, instant_of, number, path, staff,
    staff_system, urn,
};

/// v3-ObservationInterpretation codes (R4): a v2 table 0078 flag with the same code is sent as
/// one; any other flag keeps the v2 system.
const V3_INTERPRETATIONS: [&str; 52] = [
    "CAR", "B", "D", "U", "W", "<", ">", "AC", "IE", "QCF", "TOX", "A", "AA", "HH", "LL", "H", "H>", "HU", "L", "L<",
    "LU", "N", "I", "MS", "NCL", "NS", "R", "SYN-R", "S", "SDD", "SYN-S", "VS", "EX", "HX", "LX", "HM", "IND", "E",
    "NEG", "ND", "POS", "DET", "EXP", "UNE", "NR", "RR", "WR", "Carrier", "OBX", "RES", "SUSC", "SYN",
];

/// One OBR and what follows it.
struct Group<'a> {
    ordinal: usize,
    obr: &'a Segment,
    orc: Option<&'a Segment>,
    obx: Vec<(usize, &'a Segment, Vec<String>)>,
    /// NTE segments between the OBR and its first OBX: comments on the whole report.
    notes: Vec<String>,
}

/// Maps an ORU^R01 message to a transaction Bundle.
pub fn to_bundle(message: &Message) -> Result<Value, Hl7Error> {
    let (kind, event) = message_type(message);
    if kind != "ORU" {
        return Err(Hl7Error::UnsupportedMessageType(format!("{kind}^{event}")));
    }
    if event != "R01" {
        return Err(Hl7Error::UnsupportedEvent(format!("{kind}^{event}")));
    }
    let facility = required(message, "MSH-4-1", "the sending facility names the order numbers' issuer")?;
    let mut entries = vec![patient_entry(message, &facility, false)?];
    let encounter = visit_entry(message, &facility)?;
    let encounter_ref = encounter.as_ref().map(|e| json!({"reference": e["fullUrl"]}));
    entries.extend(encounter);

    let mut groups: Vec<Group<'_>> = Vec::new();
    let (mut last_orc, mut obx_count, mut pids) = (None, 0, 0);
    for segment in &message.segments {
        match segment.id() {
            "PID" => {
                pids += 1;
                if pids > 1 {
                    return Err(Hl7Error::InvalidField {
                        field: "PID".into(),
                        value: "2".into(),
                        why: "one patient per ORU^R01 message: send each patient's results in a message of its own"
                            .into(),
                    });
                }
            }
            "ORC" => last_orc = Some(segment),
            "OBR" => groups.push(Group {
                ordinal: groups.len() + 1,
                obr: segment,
                orc: last_orc.take(),
                obx: Vec::new(),
                notes: Vec::new(),
            }),
            "OBX" => {
                obx_count += 1;
                let group = groups.last_mut().ok_or_else(|| Hl7Error::MissingField {
                    field: "OBR".into(),
                    why: "each OBX follows the OBR of the order it reports".into(),
                })?;
                group.obx.push((obx_count, segment, Vec::new()));
            }
            "NTE" => {
                let note = field(message, segment, 3).map(|f| f.value()).unwrap_or_default();
                if let Some(group) = groups.last_mut()
                    && !note.is_empty()
                {
                    match group.obx.last_mut() {
                        Some((_, _, notes)) => notes.push(note),
                        None => group.notes.push(note),
                    }
                }
            }
            _ => {}
        }
    }
    if groups.is_empty() {
        return Err(Hl7Error::MissingField {
            field: "OBR".into(),
            why: "ORU^R01 reports on at least one order".into(),
        });
    }
    let mut next = 10;
    for group in &groups {
        report(message, &facility, group, encounter_ref.as_ref(), &mut next, &mut entries)?;
    }
    Ok(crate::types::transaction(entries))
}

/// The order numbers of an OBR (placer OBR-2, filler OBR-3), each falling back to its ORC.
pub(crate) fn order_numbers(message: &Message, obr: &Segment, orc: Option<&Segment>) -> (String, String) {
    let from = |n_obr: usize, n_orc: usize| {
        let v = component(message, obr, n_obr, 1);
        if v.is_empty() { orc.map(|o| component(message, o, n_orc, 1)).unwrap_or_default() } else { v }
    };
    (from(2, 2), from(3, 3))
}

/// The order identifiers (placer, filler) and the (system, value) key: filler, else placer.
pub(crate) fn order_identifiers(facility: &str, placer: &str, filler: &str) -> (Vec<Value>, Option<(String, String)>) {
    let mut identifiers = Vec::new();
    let mut key = None;
    for (value, kind, code) in [(filler, "filler-order", "FILL"), (placer, "placer-order", "PLAC")] {
        if value.is_empty() {
            continue;
        }
        let system = facility_system(facility, kind);
        key.get_or_insert((system.clone(), value.to_string()));
        identifiers.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]},
            "system": system,
            "value": value,
        }));
    }
    (identifiers, key)
}

fn report(
    message: &Message,
    facility: &str,
    group: &Group<'_>,
    encounter: Option<&Value>,
    next: &mut usize,
    entries: &mut Vec<Value>,
) -> Result<(), Hl7Error> {
    let obr = group.obr;
    let at = |n: usize| path(obr, group.ordinal, n);
    let (placer, filler) = order_numbers(message, obr, group.orc);
    let (identifiers, key) = order_identifiers(facility, &placer, &filler);
    let Some((key_system, key_value)) = key else {
        return Err(Hl7Error::MissingField {
            field: at(3),
            why: "the filler order number (OBR-3, or the placer's OBR-2) keys the report, so that a result sent \
                  again updates it"
                .into(),
        });
    };
    let code = field(message, obr, 4).and_then(|f| codeable(&f, facility)).ok_or_else(|| Hl7Error::MissingField {
        field: at(4),
        why: "the universal service identifier is the report's code".into(),
    })?;
    let effective = field(message, obr, 7).map(|f| date_time_of(&f.component(1), &at(7))).transpose()?;
    let category = component(message, obr, 24, 1);
    let imaging =
        matches!(category.as_str(), "RAD" | "CT" | "MR" | "US" | "NMR" | "NMS" | "RX" | "XRC" | "CUS" | "VUS");

    // The order the report fulfils: created from the OBR when no ORM announced it.
    let order_key = if placer.is_empty() {
        (facility_system(facility, "filler-order"), filler.clone())
    } else {
        (facility_system(facility, "placer-order"), placer.clone())
    };
    let order_urn = urn(*next);
    *next += 1;
    let mut order = json!({
        "resourceType": "ServiceRequest",
        "identifier": identifiers,
        "status": "active",
        "intent": "order",
        "code": code,
        "subject": {"reference": PATIENT_URN},
    });
    if let Some(requester) = field(message, obr, 16).and_then(|f| staff(&f, facility)) {
        order["requester"] = requester;
    }
    if let Some(e) = encounter {
        order["encounter"] = e.clone();
    }
    entries.push(crate::types::entry(order_urn.clone(), order, json!({"method": "POST", "url": "ServiceRequest",
                    "ifNoneExist": format!("identifier={}|{}", query_escape(&order_key.0), query_escape(&order_key.1))})));

    let mut results = Vec::new();
    let mut presented = Vec::new();
    let mut statuses = Vec::new();
    for (ordinal, obx, notes) in &group.obx {
        let at = |n: usize| path(obx, *ordinal, n);
        let value_type = component(message, obx, 2, 1).to_ascii_uppercase();
        if value_type == "ED" {
            for (i, ed) in message.repetitions(obx, 5).iter().filter(|f| !f.is_empty()).enumerate() {
                let mut form = attachment(ed, &at(5))?;
                let title = field(message, obx, 3)
                    .and_then(|f| codeable(&f, facility))
                    .and_then(|c| c["text"].as_str().map(str::to_string));
                if let Some(title) = title {
                    form["title"] = json!(if i == 0 { title } else { format!("{title} ({})", i + 1) });
                }
                presented.push(form);
            }
            continue;
        }
        let status_code = component(message, obx, 11, 1);
        let status = match status_code.as_str() {
            "F" | "U" => "final",
            "C" => "corrected",
            "P" | "R" | "S" => "preliminary",
            "X" | "N" => "cancelled",
            "D" | "W" => "entered-in-error",
            "I" | "O" => "registered",
            "" => {
                return Err(Hl7Error::MissingField {
                    field: at(11),
                    why: "the observation result status (table 0085) sets Observation.status".into(),
                });
            }
            other => {
                return Err(Hl7Error::InvalidField {
                    field: at(11),
                    value: other.into(),
                    why: "the result status must be one of F, C, P, R, S, X, N, D, W, I, O, U (table 0085)".into(),
                });
            }
        };
        statuses.push(status);
        let code = field(message, obx, 3).and_then(|f| codeable(&f, facility)).ok_or_else(|| {
            Hl7Error::MissingField { field: at(3), why: "the observation identifier is the Observation's code".into() }
        })?;
        let set_id =
            Some(component(message, obx, 1, 1)).filter(|s| !s.is_empty()).unwrap_or_else(|| ordinal.to_string());
        let identifier_value = format!("{key_value}-{}-{set_id}", group.ordinal);
        let system = facility_system(facility, "observation");
        let mut observation = json!({
            "resourceType": "Observation",
            "identifier": [{"system": system, "value": identifier_value}],
            "basedOn": [{"reference": order_urn}],
            "status": status,
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": if imaging { "imaging" } else { "laboratory" },
            }]}],
            "code": code,
            "subject": {"reference": PATIENT_URN},
        });
        if let Some(e) = encounter {
            observation["encounter"] = e.clone();
        }
        match component(message, obx, 14, 1) {
            t if !t.is_empty() => observation["effectiveDateTime"] = json!(date_time_of(&t, &at(14))?),
            _ => {
                if let Some(e) = &effective {
                    observation["effectiveDateTime"] = json!(e);
                }
            }
        }
        let unit = field(message, obx, 6);
        for (key, value) in value(message, obx, &value_type, unit.as_ref(), facility, &at(5))? {
            observation[key] = value;
        }
        if let Some(range) = field(message, obx, 7).map(|f| reference_range(&f.value(), unit.as_ref())) {
            observation["referenceRange"] = json!([range]);
        }
        let flags: Vec<Value> = message
            .repetitions(obx, 8)
            .iter()
            .map(|f| f.component(1))
            .filter(|f| !f.is_empty())
            .map(|flag| {
                let system = if V3_INTERPRETATIONS.contains(&flag.as_str()) {
                    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
                } else {
                    "http://terminology.hl7.org/CodeSystem/v2-0078"
                };
                json!({"coding": [{"system": system, "code": flag}]})
            })
            .collect();
        if !flags.is_empty() {
            observation["interpretation"] = Value::Array(flags);
        }
        if let Some(performer) = field(message, obx, 16).and_then(|f| staff(&f, facility)) {
            observation["performer"] = json!([performer]);
        }
        if !notes.is_empty() {
            observation["note"] = Value::Array(notes.iter().map(|n| json!({"text": n})).collect());
        }
        let full_url = urn(*next);
        *next += 1;
        results.push(json!({"reference": full_url}));
        let id = derived_id("obs", &system, &identifier_value);
        observation["id"] = json!(id);
        entries.push(crate::types::entry(
            full_url,
            observation,
            json!({"method": "PUT", "url": format!("Observation/{id}")}),
        ));
    }

    let status = match component(message, obr, 25, 1).as_str() {
        "F" => "final",
        "C" => "corrected",
        "P" => "preliminary",
        "A" | "R" => "partial",
        "X" => "cancelled",
        "O" | "I" | "S" => "registered",
        "" if statuses.contains(&"corrected") => "corrected",
        "" if !statuses.is_empty() && statuses.iter().all(|s| *s == "final") => "final",
        "" => "preliminary",
        other => {
            return Err(Hl7Error::InvalidField {
                field: at(25),
                value: other.into(),
                why: "the result status must be one of F, C, P, A, R, X, O, I, S (table 0123)".into(),
            });
        }
    };
    let mut diagnostic = Map::new();
    let report_id = derived_id("dr", &key_system, &key_value);
    diagnostic.insert("resourceType".into(), json!("DiagnosticReport"));
    diagnostic.insert("id".into(), json!(report_id));
    diagnostic.insert("identifier".into(), order_identifiers(facility, &placer, &filler).0.into());
    diagnostic.insert("basedOn".into(), json!([{"reference": order_urn}]));
    diagnostic.insert("status".into(), json!(status));
    if !category.is_empty() {
        diagnostic.insert(
            "category".into(),
            json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": category}]}]),
        );
    }
    diagnostic.insert("code".into(), field(message, obr, 4).and_then(|f| codeable(&f, facility)).unwrap_or_default());
    diagnostic.insert("subject".into(), json!({"reference": PATIENT_URN}));
    if let Some(e) = encounter {
        diagnostic.insert("encounter".into(), e.clone());
    }
    if let Some(e) = effective {
        diagnostic.insert("effectiveDateTime".into(), json!(e));
    }
    if let Some(issued) = field(message, obr, 22).map(|f| instant_of(&f.component(1), &at(22))).transpose()?.flatten() {
        diagnostic.insert("issued".into(), json!(issued));
    }
    // OBR-32 (NDL): its first component is the interpreter as id & family & given.
    if let Some(ndl) = field(message, obr, 32) {
        let (id, name) = (ndl.subcomponent(1, 1), format!("{}{}", ndl.subcomponent(1, 2), ndl.subcomponent(1, 3)));
        let mut interpreter = Map::new();
        if !id.is_empty() {
            interpreter.insert("identifier".into(), json!({"system": staff_system(facility), "value": id}));
        }
        if !name.is_empty() {
            interpreter.insert("display".into(), json!(name));
        }
        if !interpreter.is_empty() {
            diagnostic.insert("resultsInterpreter".into(), json!([interpreter]));
        }
    }
    if !results.is_empty() {
        diagnostic.insert("result".into(), Value::Array(results));
    }
    if !presented.is_empty() {
        diagnostic.insert("presentedForm".into(), Value::Array(presented));
    }
    if !group.notes.is_empty() {
        diagnostic.insert("conclusion".into(), json!(group.notes.join("\n")));
    }
    entries.push(crate::types::entry(
        urn(*next),
        Value::Object(diagnostic),
        json!({"method": "PUT", "url": format!("DiagnosticReport/{report_id}")}),
    ));
    *next += 1;
    Ok(())
}

/// The id of the resource that an identifier (`system`, `value`) names in this mapping:
/// `{prefix}-` and 40 hex digits of SM3(`system|value`), a valid FHIR id whatever the order
/// numbers contain, the same for every message that carries the identifier, and different for
/// different ones (160 bits: no collision in practice).
pub(crate) fn derived_id(prefix: &str, system: &str, value: &str) -> String {
    format!("{prefix}-{}", &crypto::sm3::sm3_hex(format!("{system}|{value}").as_bytes())[..40])
}

/// OBX-5 by its value type (OBX-2) as `value[x]` members.
fn value(
    message: &Message,
    obx: &Segment,
    value_type: &str,
    unit: Option<&crate::message::Field<'_>>,
    facility: &str,
    at: &str,
) -> Result<Vec<(&'static str, Value)>, Hl7Error> {
    let repetitions: Vec<_> = message.repetitions(obx, 5).into_iter().filter(|f| !f.is_empty()).collect();
    let Some(first) = repetitions.first() else { return Ok(Vec::new()) };
    Ok(match value_type {
        "NM" => vec![("valueQuantity", quantity(number(&first.value(), at)?, unit))],
        "ST" | "TX" | "FT" => {
            let text: Vec<String> = repetitions.iter().map(|f| f.value()).collect();
            vec![("valueString", json!(text.join("\n")))]
        }
        "CE" | "CWE" | "CNE" => match codeable(first, facility) {
            Some(concept) => vec![("valueCodeableConcept", concept)],
            None => Vec::new(),
        },
        "SN" => {
            let (comparator, n1, separator, n2) =
                (first.component(1), first.component(2), first.component(3), first.component(4));
            match (separator.as_str(), n2.is_empty()) {
                ("-", false) => vec![(
                    "valueRange",
                    json!({"low": quantity(number(&n1, at)?, unit), "high": quantity(number(&n2, at)?, unit)}),
                )],
                (":" | "/", false) => vec![(
                    "valueRatio",
                    json!({"numerator": {"value": number(&n1, at)?}, "denominator": {"value": number(&n2, at)?}}),
                )],
                ("+", true) => vec![("valueString", json!(format!("{n1}+")))],
                _ => {
                    let mut q = quantity(number(&n1, at)?, unit);
                    match comparator.as_str() {
                        "" | "=" => {}
                        "<" | ">" | "<=" | ">=" => q["comparator"] = json!(comparator),
                        other => {
                            return Err(Hl7Error::InvalidField {
                                field: at.into(),
                                value: other.into(),
                                why: "a structured numeric comparator is one of =, <, >, <=, >=".into(),
                            });
                        }
                    }
                    vec![("valueQuantity", q)]
                }
            }
        }
        "DT" | "TS" | "DTM" => vec![("valueDateTime", json!(date_time_of(&first.component(1), at)?))],
        // Other types (ID, IS, TM, CX, …) are kept as the text sent.
        _ => vec![("valueString", json!(first.value()))],
    })
}

/// Units of clinical laboratories that are valid UCUM codes as written here; a unit sent without
/// a coding system is declared UCUM only when it is one of these (after the usual case slips,
/// `mg/dl` for `mg/dL`, `mmol/l` for `mmol/L`, `10^9/L` for `10*9/L`).
const UCUM_LAB_UNITS: [&str; 46] = [
    "g/L",
    "g/dL",
    "mg/L",
    "mg/dL",
    "ug/L",
    "ug/dL",
    "ng/L",
    "ng/mL",
    "pg/mL",
    "mmol/L",
    "umol/L",
    "nmol/L",
    "pmol/L",
    "mol/L",
    "U/L",
    "[IU]/L",
    "[IU]/mL",
    "m[IU]/L",
    "u[IU]/mL",
    "mU/L",
    "10*9/L",
    "10*12/L",
    "10*6/L",
    "10*3/uL",
    "/uL",
    "%",
    "fL",
    "pg",
    "s",
    "min",
    "h",
    "d",
    "mm[Hg]",
    "kg",
    "g",
    "mg",
    "cm",
    "mm",
    "mm/h",
    "mL/min",
    "mL/min/{1.73_m2}",
    "mL",
    "L",
    "Cel",
    "/min",
    "kg/m2",
];

/// The UCUM code of a unit sent without a coding system, when it is a known lab unit.
fn ucum_code(code: &str) -> Option<String> {
    let mut normal = code.trim().replace("10^", "10*").replace("x10*", "10*");
    for (slip, fixed) in
        [("/l", "/L"), ("/dl", "/dL"), ("/ml", "/mL"), ("iu/", "[IU]/"), ("IU/", "[IU]/"), ("fl", "fL")]
    {
        if let Some(at) = normal.find(slip) {
            normal.replace_range(at..at + slip.len(), fixed);
        }
    }
    if normal.ends_with("/l") {
        normal.replace_range(normal.len() - 1.., "L");
    }
    let normal = if normal == "[[IU]]/L" { "[IU]/L".to_string() } else { normal };
    UCUM_LAB_UNITS.contains(&normal.as_str()).then_some(normal)
}

/// A Quantity with the unit of OBX-6: its code as a UCUM code when OBX-6.3 says UCUM, or when
/// no system is named and it is a known lab unit ([`UCUM_LAB_UNITS`]); its text (OBX-6.2, else
/// the code) as `unit`.
fn quantity(value: Value, unit: Option<&crate::message::Field<'_>>) -> Value {
    let mut q = json!({"value": value});
    if let Some(unit) = unit {
        let (code, text, system) = (unit.component(1), unit.component(2), unit.component(3).to_ascii_uppercase());
        let display = if text.is_empty() { code.clone() } else { text };
        if !display.is_empty() {
            q["unit"] = json!(display);
        }
        let ucum = match system.as_str() {
            "UCUM" | "ISO+" if !code.is_empty() => Some(code),
            "" => ucum_code(&code),
            _ => None,
        };
        if let Some(code) = ucum {
            q["system"] = json!("http://unitsofmeasure.org");
            q["code"] = json!(code);
        }
    }
    q
}

/// OBX-7: `low-high`, `<high`, `<=high`, `>low`, `>=low` with the unit of OBX-6; anything else as text.
fn reference_range(text: &str, unit: Option<&crate::message::Field<'_>>) -> Value {
    let t = text.trim();
    let num = |s: &str| number(s, "OBX-7").ok().map(|n| quantity(n, unit));
    let parsed = if let Some(rest) = t.strip_prefix("<=").or_else(|| t.strip_prefix('<')) {
        num(rest).map(|q| json!({"high": q}))
    } else if let Some(rest) = t.strip_prefix(">=").or_else(|| t.strip_prefix('>')) {
        num(rest).map(|q| json!({"low": q}))
    } else {
        // The separator is the first dash after the first character (a low bound may be negative).
        t.char_indices().skip(1).find(|(_, c)| *c == '-').and_then(|(i, _)| {
            let (low, high) = (num(&t[..i])?, num(&t[i + 1..])?);
            Some(json!({"low": low, "high": high}))
        })
    };
    let mut range = parsed.unwrap_or_else(|| json!({}));
    range["text"] = json!(t);
    range
}
