//! Booking over the shared slot pool (号源池): an Appointment that references Slots holds them.
//! Whenever a commit writes an Appointment, the Slots it starts to hold become `busy` and the
//! Slots it stops holding become `free` again, in the same database transaction as the
//! Appointment. A Slot that is not free cannot be booked (409). Two bookings racing for one
//! Slot both read it free, but each writes the Slot's next version, and the store commits only
//! one of them (its optimistic version check holds across connections and processes); the
//! other is answered 409 too. So no Slot is ever booked twice, on either backend.
//!
//! Holding statuses: `pending`, `booked`, `arrived`, `checked-in`, `fulfilled` and `noshow` (the
//! time was used up). `proposed` and `waitlist` hold nothing; `cancelled`, `entered-in-error` and
//! a delete release.

use serde_json::{Value, json};
use store::{Ctx, StoreError, WriteMethod, WriteOp};

use crate::crud::now_ms;
use crate::{Engine, EngineError, EngineResult};

const HOLDING: &[&str] = &["pending", "booked", "arrived", "checked-in", "fulfilled", "noshow"];

/// The Slot ids an Appointment holds (none unless its status holds slots).
fn held_slots(appointment: &Value) -> Vec<String> {
    if !appointment["status"].as_str().is_some_and(|s| HOLDING.contains(&s)) {
        return Vec::new();
    }
    let mut slots: Vec<String> = appointment["slot"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["reference"].as_str())
        .filter_map(|r| {
            let (ty, id) = r.rsplit_once('/')?;
            (ty == "Slot" || ty.ends_with("/Slot")).then(|| id.to_string())
        })
        .collect();
    slots.sort();
    slots.dedup();
    slots
}

fn taken(slot: &str) -> EngineError {
    EngineError::Conflict {
        message: format!(
            "Slot/{slot} is already booked (号源已被预约): choose another slot, or join the waiting list \
             (an Appointment with status waitlist)"
        ),
        precondition: false,
    }
}

impl Engine {
    /// The Slot writes that the Appointment writes among `ops` imply.
    pub(crate) async fn booking_effects(&self, ops: &[WriteOp]) -> EngineResult<Vec<WriteOp>> {
        let mut take: Vec<String> = Vec::new();
        let mut release: Vec<String> = Vec::new();
        for op in ops.iter().filter(|op| op.resource_type == "Appointment") {
            let new: Vec<String> = op
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
                .map(|b| held_slots(&b))
                .unwrap_or_default();
            let old: Vec<String> = match op.version {
                1 => Vec::new(),
                _ => self
                    .store
                    .read(&Ctx::system(), "Appointment", &op.id)
                    .await?
                    .and_then(|r| r.body)
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    .map(|b| held_slots(&b))
                    .unwrap_or_default(),
            };
            for slot in new.iter().filter(|s| !old.contains(s)) {
                if take.contains(slot) {
                    return Err(EngineError::Conflict {
                        message: format!("two Appointments of this request book Slot/{slot}: one Slot, one booking"),
                        precondition: false,
                    });
                }
                take.push(slot.clone());
            }
            release.extend(old.into_iter().filter(|s| !new.contains(s)));
        }
        if take.is_empty() && release.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut effects = Vec::new();
        for (slot, booking) in take.iter().map(|s| (s, true)).chain(release.iter().map(|s| (s, false))) {
            if booking && release.contains(slot) {
                continue; // moved from one Appointment to another in the same request: stays busy
            }
            let current = self.store.read(&Ctx::system(), "Slot", slot).await?.filter(|r| !r.deleted);
            let Some(current) = current else {
                if !booking {
                    continue; // a released Slot that no longer exists
                }
                return Err(EngineError::Unprocessable(vec![fhir::Issue::error(
                    fhir::IssueType::NotFound,
                    format!("Appointment.slot: Slot/{slot} does not exist (book a Slot published in the pool)"),
                )]));
            };
            let mut body: Value = current
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
                .ok_or_else(|| EngineError::Store(StoreError::Backend(format!("Slot/{slot}: stored JSON"))))?;
            let status = body["status"].as_str().unwrap_or_default().to_string();
            let next = match (booking, status.as_str()) {
                (true, "free") => "busy",
                (true, _) => return Err(taken(slot)),
                (false, "busy") => "free",
                (false, _) => continue, // blocked or entered-in-error by the hospital: left as it is
            };
            body["status"] = json!(next);
            effects.push(self.build_op("Slot", slot, current.version + 1, now, WriteMethod::Update, body)?);
        }
        Ok(effects)
    }

    /// A store conflict on a Slot a commit books or releases: another booking changed it first.
    pub(crate) fn booking_conflict(booked: &[String], error: StoreError) -> EngineError {
        match &error {
            StoreError::VersionConflict { resource_type, id, .. } if resource_type == "Slot" && booked.contains(id) => {
                taken(id)
            }
            _ => EngineError::Store(error),
        }
    }
}
