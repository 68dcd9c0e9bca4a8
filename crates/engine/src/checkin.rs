//! Check-in by health card (签到): a hospital terminal scans the resident's dynamic health card
//! code and the resident's booked Appointment for today becomes `arrived`.
//!
//! `POST /fhir/Appointment/$check-in` with Parameters `code` (the scanned code), `terminal` and,
//! optionally, `appointment` (a reference, when the terminal knows which visit). The code is
//! first checked offline (signature and lifetime) to find the holder; the Appointment must belong
//! to the holder (any of the Patient records the master patient index links to the holder's
//! person) and be `booked` for today (China Standard Time). Only then is the code verified online
//! (single use, care step 0101012 same-day registration) and consumed, and the Appointment
//! updated with the caller's own authority (If-Match on the version read), so a terminal that
//! may not write Appointments cannot check anyone in. Without `appointment`, the earliest of
//! today's booked visits that has not ended is checked in. Every attempt is audited (the online
//! verification as `healthcard-verify`, a refusal before it as `appointment-check-in`).

use chrono::{DateTime, FixedOffset, Utc};
use crypto::KeyRing;
use serde_json::{Value, json};
use store::{Ctx, StoredResource};

use crate::{Engine, EngineError, EngineResult, RequestOptions, audit};

/// The care step recorded for a check-in: same-day registration (挂号/取号).
pub const CHECK_IN_CARE_STEP: &str = "0101012";

/// China Standard Time, the day a visit belongs to.
fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("a fixed offset of 8 hours is valid")
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::bad_request(fhir::IssueType::Invalid, message)
}

fn conflict(message: String) -> EngineError {
    EngineError::Conflict { message, precondition: false }
}

/// The value of parameter `name` (`valueString` or `valueReference.reference`).
fn parameter<'a>(parameters: &'a Value, name: &str) -> Option<&'a str> {
    parameters["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["valueString"].as_str().or_else(|| p["valueReference"]["reference"].as_str()))
}

fn start_of(body: &Value, key: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(body[key].as_str()?).ok()
}

impl Engine {
    /// `POST Appointment/$check-in` (see the module documentation). Answers Parameters with the
    /// checked-in `appointment`, the `patient` reference and the card id.
    pub async fn appointment_check_in(&self, ctx: &Ctx, keys: &KeyRing, parameters: Value) -> EngineResult<Value> {
        if parameters["resourceType"] != "Parameters" {
            return Err(bad("Appointment/$check-in takes a Parameters resource (code, terminal, appointment)"));
        }
        for p in parameters["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("");
            if !["code", "terminal", "appointment"].contains(&name) {
                return Err(bad(format!(
                    "Appointment/$check-in has no parameter '{name}' (code, terminal, appointment)"
                )));
            }
        }
        let code = parameter(&parameters, "code")
            .ok_or_else(|| bad("Appointment/$check-in needs 'code': the scanned dynamic health card code"))?;
        let terminal = parameter(&parameters, "terminal")
            .ok_or_else(|| bad("Appointment/$check-in needs 'terminal': the id of the scanning terminal"))?;
        let named = match parameter(&parameters, "appointment") {
            Some(r) => Some(
                r.strip_prefix("Appointment/")
                    .filter(|id| !id.is_empty() && !id.contains('/'))
                    .ok_or_else(|| bad(format!("'appointment' must be a reference Appointment/<id>, not '{r}'")))?
                    .to_string(),
            ),
            None => None,
        };
        let now = Utc::now();
        // Offline first: who holds the code. Nothing is consumed if no visit is found.
        let Ok(claims) = healthcard::payload::verify_offline(code, |id| keys.verifying_key_for(id), now.timestamp())
        else {
            // Expired, tampered, foreign or malformed: the online verification refuses it with
            // its reason and audits the attempt.
            return Err(match self.healthcard_verify(ctx, keys, code, CHECK_IN_CARE_STEP, terminal).await {
                Err(e) => e,
                Ok(_) => bad("the code could not be checked offline; show a fresh code"),
            });
        };
        let card = self.healthcard_holder(claims.card_id.as_str()).await?;
        let patients = self.same_person_patients(&card).await?;
        let found = match self.visit_to_check_in(&patients, named.as_deref(), now).await {
            Ok(found) => found,
            Err(e) => {
                let outcome = if matches!(e, EngineError::Forbidden(_)) { "denied" } else { "failure" };
                let entity = named.as_deref().map_or("Appointment".to_string(), |id| format!("Appointment/{id}"));
                let record = audit::record(
                    ctx,
                    "appointment-check-in",
                    outcome,
                    entity,
                    vec![card.clone()],
                    Some(&e.to_string()),
                );
                self.audit.append(record).await?;
                return Err(e);
            }
        };
        let verification = self.healthcard_verify(ctx, keys, code, CHECK_IN_CARE_STEP, terminal).await?;
        let mut body: Value = serde_json::from_str(found.body.as_deref().unwrap_or("{}"))
            .map_err(|e| bad(format!("stored Appointment/{}: {e}", found.id)))?;
        body["status"] = json!("arrived");
        let opts = RequestOptions { if_match: Some(found.version), ..RequestOptions::default() };
        let outcome = self.update(ctx, "Appointment", &found.id, body, &opts).await?;
        let appointment: Value = serde_json::from_str(outcome.resource.body.as_deref().unwrap_or("{}"))
            .map_err(|e| bad(format!("stored Appointment/{}: {e}", found.id)))?;
        let patient = appointment["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["actor"]["reference"].as_str())
            .find(|r| r.starts_with("Patient/"))
            .unwrap_or_default()
            .to_string();
        Ok(json!({
            "resourceType": "Parameters",
            "parameter": [
                {"name": "appointment", "resource": appointment},
                {"name": "patient", "valueReference": {"reference": patient}},
                {"name": "card", "valueString": verification.card.card_id},
            ]
        }))
    }

    /// The booked Appointment of one of `patients` to check in today.
    async fn visit_to_check_in(
        &self,
        patients: &[String],
        named: Option<&str>,
        now: DateTime<Utc>,
    ) -> EngineResult<StoredResource> {
        let today = now.with_timezone(&china()).date_naive();
        let is_holders = |body: &Value| {
            body["participant"].as_array().into_iter().flatten().any(|p| {
                p["actor"]["reference"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("Patient/"))
                    .is_some_and(|id| patients.iter().any(|q| q == id))
            })
        };
        let parse = |r: &StoredResource| r.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok());
        if let Some(id) = named {
            let found = self
                .store
                .read(&Ctx::system(), "Appointment", id)
                .await?
                .filter(|r| !r.deleted)
                .ok_or_else(|| EngineError::NotFound(format!("Appointment/{id}")))?;
            let body = parse(&found).unwrap_or_default();
            if !is_holders(&body) {
                return Err(EngineError::Forbidden(format!(
                    "Appointment/{id} is not the card holder's (预约与健康卡持卡人不符)"
                )));
            }
            if body["status"] != "booked" {
                return Err(conflict(format!(
                    "Appointment/{id} is {}, not booked: only a booked visit is checked in",
                    body["status"].as_str().unwrap_or("without a status")
                )));
            }
            if start_of(&body, "start").map(|s| s.with_timezone(&china()).date_naive()) != Some(today) {
                return Err(conflict(format!(
                    "Appointment/{id} is not for today ({today}): check in on the day of the visit (仅限就诊当日签到)"
                )));
            }
            return Ok(found);
        }
        let from = format!("ge{}", (now - chrono::Duration::days(1)).format("%Y-%m-%d"));
        let to = format!("le{}", (now + chrono::Duration::days(1)).format("%Y-%m-%d"));
        let mut candidates: Vec<(DateTime<FixedOffset>, StoredResource)> = Vec::new();
        for patient in patients {
            let reference = format!("Patient/{patient}");
            let found = self
                .scan(
                    "Appointment",
                    &[
                        ("patient", reference.as_str()),
                        ("status", "booked"),
                        ("date", from.as_str()),
                        ("date", to.as_str()),
                    ],
                )
                .await?;
            for r in found {
                let body = parse(&r).unwrap_or_default();
                let (Some(start), end) = (start_of(&body, "start"), start_of(&body, "end")) else { continue };
                let ended = end.is_some_and(|e| e.with_timezone(&Utc) < now);
                if start.with_timezone(&china()).date_naive() == today && !ended {
                    candidates.push((start, r));
                }
            }
        }
        candidates.sort_by_key(|(start, r)| (*start, r.id.clone()));
        candidates.into_iter().next().map(|(_, r)| r).ok_or_else(|| {
            EngineError::NotFound(format!(
                "a booked Appointment for today ({today}) of this health card's holder (今日无待签到的预约)"
            ))
        })
    }
}
