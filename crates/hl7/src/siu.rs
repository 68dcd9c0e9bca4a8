//! SIU (scheduling) to FHIR. Per HL7, SIU^S12 notifies an appointment the hospital's own
//! system has booked; here it becomes an Appointment (a conditional update on the filler's
//! appointment id, SCH-2, else the placer's, SCH-1) that holds a Slot of the resource's Schedule
//! in the province-wide pool. The Schedule (the doctor AIP, else the resource AIG, else the
//! location AIL) and the Slot (that schedule at that start time) are created busy when the pool
//! does not have them yet; a free Slot the hospital published before is taken; a Slot someone
//! else holds makes the message fail (AE), never a double booking. S13 (reschedule) and S14
//! (modify) update the Appointment, moving it to the Slot of its new time and freeing the old
//! one; S15 (cancel) cancels it and frees its Slot. Mapping table in `docs/HL7V2.md`.

use serde_json::{Map, Value, json};

use crate::Hl7Error;
use crate::adt::{PATIENT_URN, message_type, patient_entry, query_escape, required, visit_entry};
use crate::message::{Message, Segment};
use crate::types::{codeable, component, date_time_of, facility_system, field, staff, urn};

/// On a Slot the hospital's own system booked: its quota channel is the hospital's (`window`),
/// so freeing it does not offer it to residents online unless the hospital publishes it.
const CHANNEL_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/booking-channel";

/// Maps an SIU^S12/S13/S14/S15 message to a transaction Bundle.
pub fn to_bundle(message: &Message) -> Result<Value, Hl7Error> {
    let (kind, event) = message_type(message);
    if kind != "SIU" {
        return Err(Hl7Error::UnsupportedMessageType(format!("{kind}^{event}")));
    }
    if !matches!(event.as_str(), "S12" | "S13" | "S14" | "S15") {
        return Err(Hl7Error::UnsupportedEvent(format!("{kind}^{event}")));
    }
    let facility = required(message, "MSH-4-1", "the sending facility names the appointment numbers' issuer")?;
    let sch = message.segment("SCH").ok_or_else(|| Hl7Error::MissingField {
        field: "SCH".into(),
        why: "SIU carries the appointment in SCH".into(),
    })?;
    let mut entries = vec![patient_entry(message, &facility, false)?];
    let encounter = visit_entry(message, &facility)?;
    entries.extend(encounter);

    let (placer, filler) = (component(message, sch, 1, 1), component(message, sch, 2, 1));
    let mut identifiers = Vec::new();
    for (value, kind, code) in [(&filler, "filler-appointment", "FILL"), (&placer, "placer-appointment", "PLAC")] {
        if !value.is_empty() {
            identifiers.push(json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]},
                "system": facility_system(&facility, kind),
                "value": value,
            }));
        }
    }
    let Some(key) = identifiers.first().cloned() else {
        return Err(Hl7Error::MissingField {
            field: "SCH-2".into(),
            why: "the filler appointment id (SCH-2, else the placer's SCH-1) keys the appointment".into(),
        });
    };
    let (start, end) = times(message, sch)?;
    let service = message.segment("AIS").and_then(|ais| field(message, ais, 3)).and_then(|f| codeable(&f, &facility));
    let (resource_key, actor) = resource(message, &facility)?;

    let status = if event == "S15" {
        "cancelled"
    } else {
        match component(message, sch, 25, 1).to_ascii_lowercase().as_str() {
            "pending" => "pending",
            "complete" => "fulfilled",
            "noshow" => "noshow",
            "started" => "arrived",
            "cancelled" | "deleted" => "cancelled",
            "waitlist" => "waitlist",
            _ => "booked",
        }
    };
    let schedule_system = facility_system(&facility, "schedule");
    let mut schedule = json!({
        "resourceType": "Schedule",
        "identifier": [{"system": schedule_system, "value": resource_key}],
        "active": true,
        "actor": [actor.clone()],
    });
    if let Some(s) = &service {
        schedule["serviceType"] = json!([s]);
    }
    let (schedule_urn, slot_urn) = (urn(10), urn(11));
    let slot_system = facility_system(&facility, "slot");
    let slot_key = format!("{resource_key}@{}", start.replace([':', '-'], ""));
    let mut slot = json!({
        "resourceType": "Slot",
        "extension": [{"url": CHANNEL_EXTENSION, "valueCode": "window"}],
        "identifier": [{"system": slot_system, "value": slot_key}],
        "schedule": {"reference": schedule_urn},
        "status": "busy",
        "start": start,
        "end": end,
    });
    if let Some(s) = &service {
        slot["serviceType"] = json!([s]);
    }

    let mut appointment = Map::new();
    appointment.insert("resourceType".into(), json!("Appointment"));
    appointment.insert("identifier".into(), Value::Array(identifiers));
    appointment.insert("status".into(), json!(status));
    if let Some(reason) = field(message, sch, 6).and_then(|f| codeable(&f, &facility)).filter(|_| event == "S15") {
        appointment.insert("cancelationReason".into(), reason);
    }
    if let Some(s) = &service {
        appointment.insert("serviceType".into(), json!([s]));
    }
    if let Some(t) = field(message, sch, 8).and_then(|f| codeable(&f, &facility)) {
        appointment.insert("appointmentType".into(), t);
    }
    if let Some(r) = field(message, sch, 7).and_then(|f| codeable(&f, &facility)) {
        appointment.insert("reasonCode".into(), json!([r]));
    }
    appointment.insert("start".into(), json!(start));
    appointment.insert("end".into(), json!(end));
    // A cancelled appointment holds nothing: it names no Slot (the one it held is freed).
    let holds = !matches!(status, "cancelled" | "waitlist");
    if holds {
        appointment.insert("slot".into(), json!([{"reference": slot_urn}]));
    }
    let mut participants = vec![json!({"actor": {"reference": PATIENT_URN}, "status": "accepted"})];
    if actor.get("identifier").is_some() && message.segment("AIP").is_some() {
        participants.push(json!({"actor": actor, "status": "accepted"}));
    }
    if let Some(ail) = message.segment("AIL").and_then(|ail| field(message, ail, 3)) {
        let display = location(&ail);
        if !display.is_empty() && message.segment("AIP").is_some() {
            participants.push(json!({"actor": {"display": display}, "status": "accepted"}));
        }
    }
    appointment.insert("participant".into(), Value::Array(participants));

    let query = |system: &Value, value: &Value| {
        format!(
            "identifier={}|{}",
            query_escape(system.as_str().unwrap_or("")),
            query_escape(value.as_str().unwrap_or(""))
        )
    };
    if holds {
        entries.push(crate::types::entry(schedule_urn, schedule, json!({"method": "POST", "url": "Schedule", "ifNoneExist": query(&json!(schedule_system), &json!(resource_key))})));
        entries.push(crate::types::entry(
            slot_urn,
            slot,
            json!({"method": "POST", "url": "Slot", "ifNoneExist": query(&json!(slot_system), &json!(slot_key))}),
        ));
    }
    entries.push(crate::types::entry(
        urn(12),
        Value::Object(appointment),
        json!({"method": "PUT", "url": format!("Appointment?{}", query(&key["system"], &key["value"]))}),
    ));
    Ok(crate::types::transaction(entries))
}

/// The booked resource: its schedule key and the actor reference.
fn resource(message: &Message, facility: &str) -> Result<(String, Value), Hl7Error> {
    if let Some(aip) = message.segment("AIP")
        && let Some(xcn) = field(message, aip, 3)
        && let Some(actor) = staff(&xcn, facility)
        && !xcn.component(1).is_empty()
    {
        return Ok((format!("practitioner:{}", xcn.component(1)), actor));
    }
    if let Some(aig) = message.segment("AIG")
        && let Some(ce) = field(message, aig, 3)
        && !ce.component(1).is_empty()
    {
        let id = ce.component(1);
        let mut actor = json!({"identifier": {"system": facility_system(facility, "resource"), "value": id}});
        if !ce.component(2).is_empty() {
            actor["display"] = json!(ce.component(2));
        }
        return Ok((format!("resource:{id}"), actor));
    }
    if let Some(ail) = message.segment("AIL")
        && let Some(pl) = field(message, ail, 3)
    {
        let display = location(&pl);
        if !display.is_empty() {
            return Ok((format!("location:{display}"), json!({"display": display})));
        }
    }
    Err(Hl7Error::MissingField {
        field: "AIP-3".into(),
        why: "the booked resource (AIP-3 personnel, AIG-3 resource or AIL-3 location) names the schedule".into(),
    })
}

fn location(pl: &crate::message::Field<'_>) -> String {
    [(4, 1), (1, 1), (2, 1), (3, 1)]
        .into_iter()
        .map(|(c, s)| pl.subcomponent(c, s))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Start and end, precise to the minute: TQ1-7/8 (2.5), else SCH-11.4/11.5, else the start of
/// AIS-4, AIP-6, AIG-8 or AIL-6 plus the duration (SCH-9/10, AIS-7/8, AIP-9/10; minutes by default).
fn times(message: &Message, sch: &Segment) -> Result<(String, String), Hl7Error> {
    let candidates: [(&str, Option<String>); 6] = [
        ("TQ1-7", message.get("TQ1-7-1")),
        ("SCH-11", Some(component(message, sch, 11, 4)).filter(|s| !s.is_empty())),
        ("AIS-4", message.get("AIS-4-1")),
        ("AIP-6", message.get("AIP-6-1")),
        ("AIG-8", message.get("AIG-8-1")),
        ("AIL-6", message.get("AIL-6-1")),
    ];
    let (at, start_ts) =
        candidates.into_iter().find_map(|(p, v)| v.map(|v| (p, v))).ok_or_else(|| Hl7Error::MissingField {
            field: "SCH-11".into(),
            why: "the appointment's start time (TQ1-7, SCH-11.4, AIS-4 or AIP-6)".into(),
        })?;
    let start = precise(&start_ts, at)?;
    let end_ts = message.get("TQ1-8-1").or_else(|| Some(component(message, sch, 11, 5)).filter(|s| !s.is_empty()));
    let end = match end_ts {
        Some(ts) => precise(&ts, "SCH-11")?,
        None => {
            let durations = [
                ("SCH-9", "SCH-10"),
                ("AIS-7", "AIS-8"),
                ("AIP-9", "AIP-10"),
                ("AIG-11", "AIG-12"),
                ("AIL-9", "AIL-10"),
            ];
            let (path, amount, unit) = durations
                .into_iter()
                .find_map(|(d, u)| {
                    message.get(&format!("{d}-1")).map(|v| (d, v, message.get(&format!("{u}-1")).unwrap_or_default()))
                })
                .ok_or_else(|| Hl7Error::MissingField {
                    field: "SCH-9".into(),
                    why: "the appointment's end (TQ1-8, SCH-11.5) or its duration (SCH-9, AIS-7, AIP-9)".into(),
                })?;
            let amount: i64 = amount.trim().parse().map_err(|_| Hl7Error::InvalidField {
                field: path.into(),
                value: amount.clone(),
                why: "a duration is a whole number".into(),
            })?;
            let factor = match unit.to_ascii_lowercase().as_str() {
                "" | "min" | "m" | "minute" | "minutes" => 1,
                "h" | "hr" | "hour" | "hours" => 60,
                "s" | "sec" | "second" | "seconds" => 0,
                _ => {
                    return Err(Hl7Error::InvalidField {
                        field: path.into(),
                        value: unit,
                        why: "the duration unit must be minutes (min) or hours (h)".into(),
                    });
                }
            };
            let minutes = if factor == 0 { amount / 60 } else { amount * factor };
            add_minutes(&start, minutes).ok_or_else(|| Hl7Error::InvalidField {
                field: path.into(),
                value: amount.to_string(),
                why: "the end time is out of range".into(),
            })?
        }
    };
    if start.get(19..) == end.get(19..) && end.get(..19) <= start.get(..19) {
        return Err(Hl7Error::InvalidField {
            field: "SCH-11".into(),
            value: end,
            why: "the appointment ends before it starts".into(),
        });
    }
    Ok((start, end))
}

/// A timestamp precise at least to the minute, as a FHIR instant.
fn precise(ts: &str, at: &str) -> Result<String, Hl7Error> {
    let value = date_time_of(ts, at)?;
    if !value.contains('T') {
        return Err(Hl7Error::InvalidField {
            field: at.into(),
            value: ts.into(),
            why: "an appointment time is precise to the minute (YYYYMMDDHHMM)".into(),
        });
    }
    Ok(value)
}

/// `YYYY-MM-DDTHH:MM:SS±HH:MM` plus some minutes, in the same zone.
fn add_minutes(instant: &str, minutes: i64) -> Option<String> {
    let n = |a: usize, b: usize| instant.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d, h, mi) = (n(0, 4)?, n(5, 7)?, n(8, 10)?, n(11, 13)?, n(14, 16)?);
    let zone = instant.get(19..)?;
    let seconds = instant.get(17..19)?;
    let days = days_from_civil(y, mo, d);
    let total = days * 1440 + h * 60 + mi + minutes;
    let (days, rest) = (total.div_euclid(1440), total.rem_euclid(1440));
    let (y, mo, d) = civil_from_days(days);
    Some(format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{seconds}{zone}", rest / 60, rest % 60))
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::add_minutes;

    #[test]
    fn minutes_cross_days_months_and_years() {
        assert_eq!(add_minutes("2026-12-31T23:50:00+08:00", 20).as_deref(), Some("2027-01-01T00:10:00+08:00"));
        assert_eq!(add_minutes("2028-02-28T23:00:00+08:00", 90).as_deref(), Some("2028-02-29T00:30:00+08:00"));
        assert_eq!(add_minutes("2026-12-01T08:00:00+08:00", 15).as_deref(), Some("2026-12-01T08:15:00+08:00"));
    }
}
