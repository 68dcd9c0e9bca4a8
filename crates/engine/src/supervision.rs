//! The internet hospital's supervision feed (互联网诊疗监管): every visit, prescription, review,
//! dispense and rule violation, read from the outbox (so nothing committed is missed and
//! nothing is reported that did not commit) and rendered in one documented record format
//! (docs/INTERNET-HOSPITAL.md) for the regulator's supervision platform, which pulls it with a
//! cursor: `GET /supervision/feed?after=SEQ&_count=N` (regulators, operators, system clients).
//!
//! A record: `seq` (outbox position; pass the answer's `next` as `after`), `kind` (`visit`,
//! `prescription`, `review`, `dispense`, `violation`), `resource` (`Type/id`), `version`,
//! `time`, `status`, `institution`, `practitioner`, `patient` (Patient id; no names or
//! identifiers), and `detail` (kind-specific: the visit's outcome, the drugs, the decision, the
//! rule and the override reason).

use serde_json::{Value, json};
use store::Ctx;

use crate::internet::{RX_SYSTEM, SUPERVISION_TAG, VISIT_TAG};
use crate::{Engine, EngineError, EngineResult, audit};

/// Outbox events examined per read.
const BATCH: usize = 1000;
/// Most records per answer.
pub const MAX_FEED_COUNT: usize = 1000;

fn reference_id(value: &Value, ty: &str) -> Value {
    value
        .as_str()
        .and_then(|r| r.strip_prefix(ty))
        .and_then(|r| r.strip_prefix('/'))
        .map_or(Value::Null, |id| json!(id))
}

fn tagged(body: &Value, system: &str, code: &str) -> bool {
    body["meta"]["tag"].as_array().into_iter().flatten().any(|t| t["system"] == system && t["code"] == code)
}

/// The feed record of one resource version, if it is one the feed reports.
fn record(resource_type: &str, b: &Value) -> Option<(&'static str, Value)> {
    let (visit_system, visit_code) = VISIT_TAG.split_once('|').unwrap_or_default();
    match resource_type {
        "Encounter" if tagged(b, visit_system, visit_code) => Some((
            "visit",
            json!({
                "institution": reference_id(&b["serviceProvider"]["reference"], "Organization"),
                "practitioner": b["participant"].as_array().into_iter().flatten()
                    .find_map(|p| p["individual"]["reference"].as_str().filter(|r| r.starts_with("Practitioner/")))
                    .map_or(Value::Null, |r| json!(&r["Practitioner/".len()..])),
                "patient": reference_id(&b["subject"]["reference"], "Patient"),
                "detail": {"diagnosis": b["reasonReference"][0]["reference"], "outcome": b["hospitalization"]["dischargeDisposition"]["text"]},
            }),
        )),
        "MedicationRequest" if b["groupIdentifier"]["system"] == RX_SYSTEM => Some((
            "prescription",
            json!({
                "institution": reference_id(&b["dispenseRequest"]["performer"]["reference"], "Organization"),
                "practitioner": reference_id(&b["requester"]["reference"], "Practitioner"),
                "patient": reference_id(&b["subject"]["reference"], "Patient"),
                "detail": {"prescription": b["groupIdentifier"]["value"], "drug": b["medicationCodeableConcept"]["coding"][0]["code"],
                           "name": b["medicationCodeableConcept"]["text"], "dosage": b["dosageInstruction"][0]["text"],
                           "supplyDays": b["dispenseRequest"]["expectedSupplyDuration"]["value"], "overrides": b["extension"]},
            }),
        )),
        "Task" if b["code"]["coding"][0]["code"] == "rx-review" => Some((
            "review",
            json!({
                "institution": reference_id(&b["owner"]["reference"], "Organization"),
                "practitioner": reference_id(&b["output"][0]["valueReference"]["reference"], "Practitioner"),
                "patient": reference_id(&b["for"]["reference"], "Patient"),
                "detail": {"prescription": b["input"][0]["valueIdentifier"]["value"], "reason": b["statusReason"]["text"]},
            }),
        )),
        "MedicationDispense" => Some((
            "dispense",
            json!({
                "institution": reference_id(&b["performer"][0]["actor"]["reference"], "Organization"),
                "practitioner": Value::Null,
                "patient": reference_id(&b["subject"]["reference"], "Patient"),
                "detail": {"prescription": b["authorizingPrescription"][0]["reference"], "drug": b["medicationCodeableConcept"]["coding"][0]["code"],
                           "handedOver": b["whenHandedOver"]},
            }),
        )),
        "DetectedIssue" if tagged(b, SUPERVISION_TAG.0, SUPERVISION_TAG.1) => Some((
            "violation",
            json!({
                "institution": Value::Null,
                "practitioner": reference_id(&b["author"]["reference"], "Practitioner"),
                "patient": reference_id(&b["patient"]["reference"], "Patient"),
                "detail": {"rule": b["code"]["coding"][0]["code"], "alert": b["code"]["text"], "severity": b["severity"],
                           "text": b["detail"], "overridden": b["mitigation"][0]["action"]["text"], "visit": b["implicated"][0]["reference"]},
            }),
        )),
        _ => None,
    }
}

impl Engine {
    /// The feed after outbox position `after`, at most `count` records.
    pub async fn supervision_feed(&self, ctx: &Ctx, after: i64, count: usize) -> EngineResult<Value> {
        let allowed = |p: &access::Principal| {
            matches!(p.role, access::Role::Regulator | access::Role::Operator | access::Role::System)
        };
        self.require(
            ctx,
            allowed,
            "supervision-feed",
            "supervision/feed".into(),
            "the supervision feed is for regulators",
        )
        .await?;
        if count == 0 || count > MAX_FEED_COUNT {
            return Err(EngineError::bad_request(
                fhir::IssueType::Value,
                format!("_count must be between 1 and {MAX_FEED_COUNT}"),
            ));
        }
        let mut records = Vec::new();
        let mut next = after;
        'read: loop {
            let events = self.store.outbox_read(next, BATCH).await?;
            if events.is_empty() {
                break;
            }
            for event in &events {
                if !matches!(
                    event.resource_type.as_str(),
                    "Encounter" | "MedicationRequest" | "Task" | "MedicationDispense" | "DetectedIssue"
                ) {
                    next = event.seq;
                    continue;
                }
                let stored = self.store.vread(&Ctx::system(), &event.resource_type, &event.id, event.version).await?;
                let body =
                    stored.as_ref().and_then(|r| r.body.as_deref()).and_then(|b| serde_json::from_str::<Value>(b).ok());
                if let Some((kind, mut r)) = body.as_ref().and_then(|b| record(&event.resource_type, b)) {
                    r["seq"] = json!(event.seq);
                    r["kind"] = json!(kind);
                    r["resource"] = json!(format!("{}/{}", event.resource_type, event.id));
                    r["version"] = json!(event.version);
                    r["time"] = json!(fhir::normalize::format_instant(event.last_updated));
                    r["status"] = body.as_ref().map_or(Value::Null, |b| b["status"].clone());
                    records.push(r);
                }
                next = event.seq;
                if records.len() >= count {
                    break 'read;
                }
            }
            if events.len() < BATCH {
                break;
            }
        }
        let reason = format!("after {after}: {} records", records.len());
        self.audit
            .append(audit::record(
                ctx,
                "supervision-feed",
                "success",
                "supervision/feed".into(),
                Vec::new(),
                Some(&reason),
            ))
            .await?;
        Ok(json!({"records": records, "next": next}))
    }
}
