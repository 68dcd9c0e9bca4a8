//! ADT messages to FHIR: A01/A04/A05/A08 become one transaction Bundle holding the Patient as a
//! conditional update on its medical record number (so a message sent again updates, never
//! duplicates) and, for A01 and A04, the Encounter. The mapping table is in `docs/HL7V2.md`.

use serde_json::{Map, Value, json};

use crate::message::{Field, Message};
use crate::{Hl7Error, Mapped, Merge};

/// The national ID number (居民身份证号码) system.
pub const NATIONAL_ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";
/// PID-3 identifier type codes that mark a national ID number.
const NATIONAL_ID_TYPES: [&str; 4] = ["NNCHN", "ID", "CZ", "NI"];
/// Two-character surnames: a Chinese name sent in one component is split after them.
const COMPOUND_SURNAMES: [&str; 24] = [
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "夏侯", "轩辕",
    "令狐", "钟离", "端木", "独孤", "南宫", "西门", "呼延", "澹台", "申屠", "司空",
];
pub(crate) const PATIENT_URN: &str = "urn:uuid:9b7c1a4e-0000-4000-8000-000000000001";
pub(crate) const ENCOUNTER_URN: &str = "urn:uuid:9b7c1a4e-0000-4000-8000-000000000002";

/// The message type and trigger event (MSH-9-1, MSH-9-2).
pub fn message_type(message: &Message) -> (String, String) {
    (message.get("MSH-9-1").unwrap_or_default(), message.get("MSH-9-2").unwrap_or_default())
}

/// The ADT events mapped (MSH-9-2).
pub const EVENTS: [&str; 9] = ["A01", "A02", "A03", "A04", "A05", "A08", "A11", "A13", "A40"];

/// Maps an ADT message to a transaction Bundle (for A40, see [`map`] and [`complete_merge`]).
pub fn to_bundle(message: &Message) -> Result<Value, Hl7Error> {
    map(message).map(|m| m.bundle)
}

/// Maps an ADT message: the Patient (a conditional update on the MRN) and, for the visit
/// events, the Encounter (a conditional update on the visit number). A40 also names the prior
/// record to merge ([`Mapped::merge`]).
pub fn map(message: &Message) -> Result<Mapped, Hl7Error> {
    let (kind, event) = message_type(message);
    if kind != "ADT" {
        return Err(Hl7Error::UnsupportedMessageType(format!("{kind}^{event}")));
    }
    if !EVENTS.contains(&event.as_str()) {
        return Err(Hl7Error::UnsupportedEvent(format!("{kind}^{event}")));
    }
    let facility = required(message, "MSH-4-1", "the sending facility names the record numbers' issuer")?;
    let mut entries = vec![patient_entry(message, &facility, true)?];
    let mut merge = None;
    match event.as_str() {
        "A01" | "A02" | "A03" | "A04" | "A11" | "A13" => entries.push(encounter(message, &facility, &event)?),
        "A40" => merge = Some(prior_record(message, &facility, &entries[0])?),
        _ => {}
    }
    Ok(Mapped { bundle: crate::types::transaction(entries), merge })
}

/// The Patient entry of a message: a conditional update on the MRN (`upsert`: ADT, whose PID
/// is the whole record) or a create only when no Patient has that MRN yet (orders, results,
/// appointments, documents, whose PID may be partial and must not overwrite the ADT record).
pub(crate) fn patient_entry(message: &Message, facility: &str, upsert: bool) -> Result<Value, Hl7Error> {
    let (patient, mrn_system, mrn) = patient(message, facility)?;
    let query = format!("identifier={}|{}", query_escape(&mrn_system), query_escape(&mrn));
    let request = if upsert {
        json!({"method": "PUT", "url": format!("Patient?{query}")})
    } else {
        json!({"method": "POST", "url": "Patient", "ifNoneExist": query})
    };
    Ok(crate::types::entry(PATIENT_URN, patient, request))
}

/// ADT^A40: the prior record (MRG-1, type MR or none; its authority MRG-1.4, else the sending
/// facility) that the message's PID record replaces.
fn prior_record(message: &Message, facility: &str, survivor: &Value) -> Result<Merge, Hl7Error> {
    if message.segment("MRG").is_none() {
        return Err(Hl7Error::MissingField {
            field: "MRG".into(),
            why: "ADT^A40 names the merged record in MRG".into(),
        });
    }
    let prior = message
        .field_repetitions("MRG-1")
        .into_iter()
        .find(|cx| !cx.component(1).is_empty() && matches!(cx.component(5).to_ascii_uppercase().as_str(), "MR" | ""))
        .ok_or_else(|| Hl7Error::MissingField {
            field: "MRG-1".into(),
            why: "the prior medical record number (type MR, or no type) names the record merged away".into(),
        })?;
    let authority = Some(prior.subcomponent(4, 1)).filter(|a| !a.is_empty()).unwrap_or_else(|| facility.to_string());
    let (system, value) = (mrn_system(&authority), prior.component(1));
    let url = survivor["request"]["url"].as_str().unwrap_or_default();
    let query = format!("identifier={}|{}", query_escape(&system), query_escape(&value));
    if url == format!("Patient?{query}") {
        return Err(Hl7Error::InvalidField {
            field: "MRG-1".into(),
            value,
            why: "the prior record number is the surviving record's (PID-3): nothing to merge".into(),
        });
    }
    Ok(Merge { prior_system: system, prior_mrn: value })
}

/// Completes an A40 Bundle once the caller has read the prior Patient (`prior`, its stored
/// JSON with `id`, at `version`): the prior record becomes inactive with a `replaced-by` link
/// to the survivor, written with `ifMatch` so that a concurrent change fails the transaction
/// rather than being overwritten, and the survivor gets a `replaces` link to it.
pub fn complete_merge(bundle: &mut Value, mut prior: Value, version: i64) {
    let id = prior["id"].as_str().unwrap_or_default().to_string();
    prior["active"] = json!(false);
    let mut links: Vec<Value> =
        prior["link"].as_array().into_iter().flatten().filter(|l| l["type"] != "replaced-by").cloned().collect();
    links.push(json!({"other": {"reference": PATIENT_URN}, "type": "replaced-by"}));
    prior["link"] = Value::Array(links);
    if let Some(meta) = prior.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            prior.as_object_mut().expect("a Patient is an object").remove("meta");
        }
    }
    let entries = bundle["entry"].as_array_mut().expect("a mapped Bundle has entries");
    entries[0]["resource"]["link"] = json!([{"other": {"reference": format!("Patient/{id}")}, "type": "replaces"}]);
    entries.push(crate::types::entry(
        format!("urn:uuid:9b7c1a4e-0000-4000-8000-{:012}", 3),
        prior,
        json!({"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": format!("W/\"{version}\"")}),
    ));
}

pub(crate) fn required(message: &Message, path: &str, why: &str) -> Result<String, Hl7Error> {
    message.get(path).ok_or_else(|| Hl7Error::MissingField { field: path.to_string(), why: why.to_string() })
}

/// A system URL segment: letters, digits, `-`, `.`, `_` as they are; other bytes percent-encoded.
pub(crate) fn slug(s: &str) -> String {
    let mut out = String::new();
    for b in s.trim().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escapes what would end a query value in the conditional URL.
pub(crate) fn query_escape(s: &str) -> String {
    s.replace('%', "%25").replace('&', "%26").replace('#', "%23").replace('+', "%2B").replace(' ', "%20")
}

pub(crate) fn mrn_system(authority: &str) -> String {
    format!("https://hutong.dev/fhir/sid/{}/mrn", slug(authority))
}

pub(crate) fn patient(message: &Message, facility: &str) -> Result<(Value, String, String), Hl7Error> {
    if message.segment("PID").is_none() {
        return Err(Hl7Error::MissingField { field: "PID".into(), why: "an ADT message carries the patient".into() });
    }
    let mut identifiers = Vec::new();
    let mut mrn: Option<(String, String)> = None;
    let mut national = false;
    for cx in message.field_repetitions("PID-3") {
        let value = cx.component(1);
        if value.is_empty() {
            continue;
        }
        let kind = cx.component(5).to_ascii_uppercase();
        let authority = Some(cx.subcomponent(4, 1)).filter(|a| !a.is_empty()).unwrap_or_else(|| facility.to_string());
        if NATIONAL_ID_TYPES.contains(&kind.as_str()) {
            national = true;
            identifiers.push(national_id(&value));
        } else if kind == "MR" || kind.is_empty() {
            let system = mrn_system(&authority);
            if mrn.is_none() {
                mrn = Some((system.clone(), value.clone()));
            }
            identifiers.push(json!({"use": "usual", "type": v2_type("MR"), "system": system, "value": value}));
        } else {
            let system =
                format!("https://hutong.dev/fhir/sid/{}/{}", slug(&authority), slug(&kind.to_ascii_lowercase()));
            identifiers.push(json!({"type": v2_type(&kind), "system": system, "value": value}));
        }
    }
    // Some hospital systems send the ID number in PID-19 (SSN) instead: taken when PID-3 has none
    // and it has the shape of one.
    if let Some(ssn) = message.get("PID-19-1").filter(|_| !national)
        && ssn.len() == 18
        && ssn[..17].bytes().all(|b| b.is_ascii_digit())
        && (ssn.as_bytes()[17].is_ascii_digit() || matches!(ssn.as_bytes()[17], b'X' | b'x'))
    {
        identifiers.push(national_id(&ssn.to_ascii_uppercase()));
    }
    let Some((system, value)) = mrn else {
        return Err(Hl7Error::MissingField {
            field: "PID-3".into(),
            why: "a medical record number (identifier type MR, or no type) keys the patient".into(),
        });
    };
    let mut patient = Map::new();
    patient.insert("resourceType".into(), json!("Patient"));
    patient.insert("identifier".into(), Value::Array(identifiers));
    let names: Vec<Value> = message.field_repetitions("PID-5").iter().filter_map(name).collect();
    if !names.is_empty() {
        patient.insert("name".into(), Value::Array(names));
    }
    let telecom: Vec<Value> = message.field_repetitions("PID-13").iter().filter_map(telecom).collect();
    if !telecom.is_empty() {
        patient.insert("telecom".into(), Value::Array(telecom));
    }
    if let Some(sex) = message.get("PID-8-1") {
        let gender = match sex.to_ascii_uppercase().as_str() {
            "M" => "male",
            "F" => "female",
            "O" | "A" => "other",
            "U" | "N" => "unknown",
            _ => {
                return Err(Hl7Error::InvalidField {
                    field: "PID-8".into(),
                    value: sex,
                    why: "administrative sex must be M, F, O, A, U or N (table 0001)".into(),
                });
            }
        };
        patient.insert("gender".into(), json!(gender));
    }
    if let Some(ts) = message.get("PID-7-1") {
        patient.insert("birthDate".into(), json!(date(&ts, "PID-7")?));
    }
    let addresses: Vec<Value> = message.field_repetitions("PID-11").iter().filter_map(address).collect();
    if !addresses.is_empty() {
        patient.insert("address".into(), Value::Array(addresses));
    }
    Ok((Value::Object(patient), system, value))
}

fn national_id(value: &str) -> Value {
    json!({"use": "official", "type": v2_type("NNCHN"), "system": NATIONAL_ID_SYSTEM, "value": value})
}

pub(crate) fn v2_type(code: &str) -> Value {
    json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]})
}

/// XPN to HumanName. A name sent whole in the family component (usual for Chinese names) is
/// split: the family name is the first character, or the first two for a compound surname.
fn name(xpn: &Field<'_>) -> Option<Value> {
    let (family, given, middle) = (xpn.subcomponent(1, 1), xpn.component(2), xpn.component(3));
    if family.is_empty() && given.is_empty() {
        return None;
    }
    let mut name = Map::new();
    let chinese = family.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
    if chinese && given.is_empty() && family.chars().count() >= 2 {
        let split =
            if COMPOUND_SURNAMES.iter().any(|s| family.starts_with(s)) && family.chars().count() > 2 { 2 } else { 1 };
        let at = family.char_indices().nth(split).map_or(family.len(), |(i, _)| i);
        name.insert("text".into(), json!(family));
        name.insert("family".into(), json!(&family[..at]));
        name.insert("given".into(), json!([&family[at..]]));
    } else {
        if chinese {
            name.insert("text".into(), json!(format!("{family}{given}")));
        }
        if !family.is_empty() {
            name.insert("family".into(), json!(family));
        }
        let given: Vec<&str> = [given.as_str(), middle.as_str()].into_iter().filter(|g| !g.is_empty()).collect();
        if !given.is_empty() {
            name.insert("given".into(), json!(given));
        }
    }
    let usage = match xpn.component(7).as_str() {
        "L" => Some("official"),
        "A" => Some("nickname"),
        "M" => Some("maiden"),
        _ => None,
    };
    if let Some(usage) = usage {
        name.insert("use".into(), json!(usage));
    }
    Some(Value::Object(name))
}

/// XTN to ContactPoint: XTN-1 (or XTN-12 unformatted, or XTN-6 area + XTN-7 local), XTN-4 for
/// e-mail; XTN-2 PRN/ORN home, WPN work; XTN-3 CP mobile.
fn telecom(xtn: &Field<'_>) -> Option<Value> {
    let equipment = xtn.component(3).to_ascii_uppercase();
    let email = equipment == "INTERNET" || xtn.component(2).eq_ignore_ascii_case("NET");
    let value = if email {
        xtn.component(4)
    } else {
        [xtn.component(1), xtn.component(12), format!("{}{}", xtn.component(6), xtn.component(7))]
            .into_iter()
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    };
    if value.is_empty() {
        return None;
    }
    let mut contact = json!({"system": if email { "email" } else { "phone" }, "value": value});
    let usage = match (xtn.component(2).to_ascii_uppercase().as_str(), equipment.as_str()) {
        (_, "CP") => Some("mobile"),
        ("PRN" | "ORN", _) => Some("home"),
        ("WPN", _) => Some("work"),
        _ => None,
    };
    if let Some(usage) = usage {
        contact["use"] = json!(usage);
    }
    Some(contact)
}

/// XAD to Address: XAD-1/2 lines, 3 city, 4 state (province), 5 postal code, 6 country, 7 type
/// (H home, B/O work), 9 county (district).
fn address(xad: &Field<'_>) -> Option<Value> {
    let mut address = Map::new();
    let lines: Vec<String> = [xad.subcomponent(1, 1), xad.component(2)].into_iter().filter(|l| !l.is_empty()).collect();
    if !lines.is_empty() {
        address.insert("line".into(), json!(lines));
    }
    for (component, key) in [(3, "city"), (9, "district"), (4, "state"), (5, "postalCode"), (6, "country")] {
        let value = xad.component(component);
        if !value.is_empty() {
            address.insert(key.into(), json!(value));
        }
    }
    if address.is_empty() {
        return None;
    }
    match xad.component(7).as_str() {
        "H" => {
            address.insert("use".into(), json!("home"));
        }
        "B" | "O" => {
            address.insert("use".into(), json!("work"));
        }
        _ => {}
    }
    Some(Value::Object(address))
}

/// An HL7 date (YYYY[MM[DD...]]) as a FHIR date.
pub(crate) fn date(ts: &str, field: &str) -> Result<String, Hl7Error> {
    let digits: String = ts.chars().take_while(|c| c.is_ascii_digit()).collect();
    let bad = |why: &str| Hl7Error::InvalidField { field: field.into(), value: ts.into(), why: why.into() };
    let valid = |s: &str, lo: u32, hi: u32| s.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n));
    match digits.len() {
        n if n < 4 => Err(bad("a date is YYYY[MM[DD]]")),
        4 | 5 => Ok(digits[..4].to_string()),
        6 | 7 if valid(&digits[4..6], 1, 12) => Ok(format!("{}-{}", &digits[..4], &digits[4..6])),
        n if n >= 8 && valid(&digits[4..6], 1, 12) && valid(&digits[6..8], 1, 31) => {
            Ok(format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..8]))
        }
        _ => Err(bad("the month or day is out of range")),
    }
}

/// An HL7 timestamp (YYYYMMDD[HHMM[SS]][+ZZZZ]) as a FHIR dateTime. A time without a zone is
/// China Standard Time (+08:00), the zone of the hospitals that send to this platform.
pub(crate) fn date_time(ts: &str, field: &str) -> Result<String, Hl7Error> {
    let day = date(ts, field)?;
    let digits: String = ts.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let digits: String = digits.split('.').next().unwrap_or_default().to_string();
    if digits.len() < 12 {
        return Ok(day);
    }
    let bad = |why: &str| Hl7Error::InvalidField { field: field.into(), value: ts.into(), why: why.into() };
    let (hour, minute) = (&digits[8..10], &digits[10..12]);
    let second = if digits.len() >= 14 { &digits[12..14] } else { "00" };
    if hour > "23" || minute > "59" || second > "59" {
        return Err(bad("the time is out of range"));
    }
    let zone = match ts.find(['+', '-']) {
        Some(at) => {
            let z = &ts[at + 1..];
            if z.len() != 4 || !z.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the time zone is +HHMM or -HHMM"));
            }
            format!("{}{}:{}", &ts[at..at + 1], &z[..2], &z[2..])
        }
        None => "+08:00".to_string(),
    };
    Ok(format!("{day}T{hour}:{minute}:{second}{zone}"))
}

/// PV1 to an Encounter: a conditional update on the visit number (PV1-19) when there is one,
/// else a create that does nothing when the same message (MSH-10) was loaded before.
fn encounter(message: &Message, facility: &str, event: &str) -> Result<Value, Hl7Error> {
    if message.segment("PV1").is_none() {
        return Err(Hl7Error::MissingField { field: "PV1".into(), why: format!("ADT^{event} carries the visit") });
    }
    let class = required(message, "PV1-2-1", "the patient class (E, I, O, P, R, B) sets Encounter.class")?;
    let (code, display) = class_of(&class)?;
    let status = match event {
        "A01" | "A02" | "A13" => "in-progress",
        "A03" => "finished",
        "A11" => "cancelled",
        _ => "arrived",
    };
    let mut encounter = json!({
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display},
        "subject": {"reference": PATIENT_URN},
    });
    let visit = message.get("PV1-19-1");
    if visit.is_none() && matches!(event, "A02" | "A03" | "A11" | "A13") {
        return Err(Hl7Error::MissingField {
            field: "PV1-19".into(),
            why: format!("ADT^{event} changes a visit, found by its visit number"),
        });
    }
    let (key_system, key_value) = match &visit {
        Some(v) => (format!("https://hutong.dev/fhir/sid/{}/visit", slug(facility)), v.clone()),
        None => {
            let control = required(message, "MSH-10", "the message control id keys an Encounter without PV1-19")?;
            (format!("https://hutong.dev/fhir/sid/{}/hl7-message", slug(facility)), control)
        }
    };
    encounter["identifier"] = json!([{"system": key_system, "value": key_value}]);
    let mut locations = Vec::new();
    // A transfer (A02) names where the patient was (PV1-6) and where they are now (PV1-3).
    if event == "A02"
        && let Some(prior) = location_display(message, 6)
    {
        locations.push(json!({"location": {"display": prior}, "status": "completed"}));
    }
    if let Some(current) = location_display(message, 3) {
        let mut location = json!({"location": {"display": current}});
        if event == "A02" {
            location["status"] = json!("active");
        }
        locations.push(location);
    }
    if !locations.is_empty() {
        encounter["location"] = Value::Array(locations);
    }
    let doctor = message.segment("PV1").map(|s| message.repetitions(s, 7)).unwrap_or_default();
    if let Some(xcn) = doctor.first().filter(|x| !x.is_empty()) {
        let mut individual = Map::new();
        let id = xcn.component(1);
        if !id.is_empty() {
            individual.insert(
                "identifier".into(),
                json!({"system": format!("https://hutong.dev/fhir/sid/{}/staff", slug(facility)), "value": id}),
            );
        }
        let display: String = format!("{}{}", xcn.subcomponent(2, 1), xcn.component(3));
        if !display.is_empty() {
            individual.insert("display".into(), json!(display));
        }
        encounter["participant"] = json!([{
            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND", "display": "attender"}]}],
            "individual": individual,
        }]);
    }
    if let Some(admit) = message.get("PV1-44-1") {
        encounter["period"] = json!({"start": date_time(&admit, "PV1-44")?});
    }
    if event == "A03" {
        // The discharge time: PV1-45, else the event's time (EVN-6 occurred, EVN-2 recorded).
        let (path, end) = ["PV1-45-1", "EVN-6-1", "EVN-2-1"]
            .into_iter()
            .find_map(|p| message.get(p).map(|v| (p, v)))
            .ok_or_else(|| Hl7Error::MissingField {
            field: "PV1-45".into(),
            why: "ADT^A03 ends the visit at the discharge time (PV1-45, or EVN-6/EVN-2)".into(),
        })?;
        encounter["period"]["end"] = json!(date_time(&end, &path[..path.len() - 2])?);
    }
    let query = format!("identifier={}|{}", query_escape(&key_system), query_escape(&key_value));
    let request = match visit {
        Some(_) => json!({"method": "PUT", "url": format!("Encounter?{query}")}),
        None => json!({"method": "POST", "url": "Encounter", "ifNoneExist": query}),
    };
    Ok(crate::types::entry(ENCOUNTER_URN, encounter, request))
}

/// A PL field of PV1 (3 assigned, 6 prior location) as a display: facility, point of care,
/// room and bed joined with spaces (no Location resource yet).
fn location_display(message: &Message, field: usize) -> Option<String> {
    let location = message.segment("PV1").map(|s| message.repetitions(s, field)).unwrap_or_default();
    let pl = location.first()?;
    let parts: Vec<String> = [(4, 1), (1, 1), (2, 1), (3, 1)]
        .into_iter()
        .map(|(c, s)| pl.subcomponent(c, s))
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// PV1-2 (table 0004) to the v3-ActCode of `Encounter.class`.
fn class_of(class: &str) -> Result<(&'static str, &'static str), Hl7Error> {
    Ok(match class {
        "E" => ("EMER", "emergency"),
        "I" | "B" => ("IMP", "inpatient encounter"),
        "O" | "R" => ("AMB", "ambulatory"),
        "P" => ("PRENC", "pre-admission"),
        _ => {
            return Err(Hl7Error::InvalidField {
                field: "PV1-2".into(),
                value: class.into(),
                why: "the patient class must be E, I, O, P, R or B (table 0004)".into(),
            });
        }
    })
}

/// For messages other than ADT: the visit named by PV1-19 (with the class PV1-2), created
/// only if no Encounter has that visit number yet (the ADT messages own its content), so that
/// results, orders and documents can refer to it. `None` without PV1-19 or PV1-2.
pub(crate) fn visit_entry(message: &Message, facility: &str) -> Result<Option<Value>, Hl7Error> {
    let (Some(visit), Some(class)) = (message.get("PV1-19-1"), message.get("PV1-2-1")) else { return Ok(None) };
    let (code, display) = class_of(&class)?;
    let system = format!("https://hutong.dev/fhir/sid/{}/visit", slug(facility));
    let encounter = json!({
        "resourceType": "Encounter",
        "status": "unknown",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display},
        "identifier": [{"system": system, "value": visit}],
        "subject": {"reference": PATIENT_URN},
    });
    let query = format!("identifier={}|{}", query_escape(&system), query_escape(&visit));
    Ok(Some(crate::types::entry(
        ENCOUNTER_URN,
        encounter,
        json!({"method": "POST", "url": "Encounter", "ifNoneExist": query}),
    )))
}
