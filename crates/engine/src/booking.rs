//! Booking over the shared slot pool (号源池): an Appointment that references Slots holds them.
//! Whenever a commit writes an Appointment, the Slots it starts to hold become `busy` and the
//! Slots it stops holding become `free` again (or go to the first Appointment waiting for them),
//! in the same database transaction as the Appointment. A Slot that is not free cannot be booked
//! (409). Two bookings racing for one Slot both read it free, but each writes the Slot's next
//! version, and the store commits only one of them (its optimistic version check holds across
//! connections and processes); the other is answered 409 too. So no Slot is ever booked twice,
//! on either backend.
//!
//! Holding statuses: `pending`, `booked`, `arrived`, `checked-in`, `fulfilled` and `noshow` (the
//! time was used up). `proposed` and `waitlist` hold nothing; `cancelled`, `entered-in-error` and
//! a delete release.
//!
//! Rules ([`BookingRules`]): an Appointment that holds Slots carries their `start` and `end`
//! (FHIR invariant app-3, and what lets a resident's bookings be counted per day); a resident
//! books at most `per_patient_per_day` Slots a day and one per schedule (doctor) a day; a
//! resident cannot cancel less than `cancel_before_minutes` before the visit (staff can); a freed
//! Slot goes to the earliest `waitlist` Appointment that names it, which becomes `booked` in the
//! same transaction. A resident's bookings are serialised, so two at once cannot both pass the
//! daily limit. Residents with `no_show_limit` no-shows in `no_show_days` cannot book online for
//! `suspension_days`. A Slot's quota channel ([`CHANNEL_EXTENSION`]) says who may book it.

use serde_json::{Value, json};
use store::{Ctx, StoreError, WriteMethod, WriteOp};

use crate::crud::now_ms;
use crate::{Engine, EngineError, EngineResult};

const HOLDING: &[&str] = &["pending", "booked", "arrived", "checked-in", "fulfilled", "noshow"];

/// On a Slot: the channel its quota belongs to (`valueCode`): `platform` (residents book it
/// online; the default), `window` (kept for the hospital's own registration window),
/// `referral` (号源下沉: reserved for referrals by family doctors).
pub const CHANNEL_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/booking-channel";

/// Booking rules (documented defaults; a deployment sets its own in `EngineConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BookingRules {
    /// Slots a resident may hold for one day.
    pub per_patient_per_day: usize,
    /// A resident cannot cancel later than this before the Slot's start.
    pub cancel_before_minutes: i64,
    /// No-shows (Appointments marked `noshow`) within `no_show_days` that suspend a resident's
    /// online booking …
    pub no_show_limit: usize,
    pub no_show_days: i64,
    /// … for this many days after the last of them.
    pub suspension_days: i64,
    /// A reminder is sent this long before a booked visit (notify.rs).
    pub reminder_before_hours: i64,
}

impl Default for BookingRules {
    fn default() -> Self {
        BookingRules {
            per_patient_per_day: 3,
            cancel_before_minutes: 120,
            no_show_limit: 3,
            no_show_days: 90,
            suspension_days: 30,
            reminder_before_hours: 24,
        }
    }
}

/// Who may book a Slot of a channel: residents book `platform` Slots, family doctors also
/// `referral` Slots, hospital staff and systems any.
fn channel_allows(ctx: &Ctx, slot: &Value) -> Result<(), String> {
    let channel = slot["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["url"] == CHANNEL_EXTENSION)
        .and_then(|x| x["valueCode"].as_str())
        .unwrap_or("platform");
    let Some(role) = ctx.principal.as_deref().map(|p| p.role) else { return Ok(()) };
    let allowed = match channel {
        "platform" => true,
        "referral" => role != access::Role::Resident,
        _ => !matches!(role, access::Role::Resident | access::Role::FamilyDoctor),
    };
    if allowed {
        Ok(())
    } else {
        Err(match channel {
            "referral" => {
                "this slot is reserved for family-doctor referrals (该号源为家庭医生转诊预留号源)".to_string()
            }
            _ => format!(
                "this slot belongs to the hospital's '{channel}' quota and is not bookable online (该号源不对外开放预约)"
            ),
        })
    }
}

/// The Slot ids an Appointment holds (none unless its status holds slots).
fn held_slots(appointment: &Value) -> Vec<String> {
    if !appointment["status"].as_str().is_some_and(|s| HOLDING.contains(&s)) {
        return Vec::new();
    }
    slot_ids(appointment)
}

fn slot_ids(appointment: &Value) -> Vec<String> {
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

/// The Patient an Appointment is for (its first Patient participant).
/// The body of a Slot that this commit creates (version 1), if it does.
fn slot_created_in(ops: &[WriteOp], slot: &str) -> Option<Value> {
    ops.iter()
        .find(|op| op.resource_type == "Slot" && op.id == slot && op.version == 1)
        .and_then(|op| parse(op.body.as_deref()))
}

fn patient_of(appointment: &Value) -> Option<String> {
    appointment["participant"].as_array()?.iter().find_map(|p| {
        let r = p["actor"]["reference"].as_str()?;
        r.strip_prefix("Patient/").map(str::to_string)
    })
}

/// An instant as epoch milliseconds (the start of the range a FHIR dateTime stands for).
fn instant(text: &str) -> Option<i64> {
    fhir::normalize::date_range(text).map(|(start, _)| start)
}

fn parse(body: Option<&str>) -> Option<Value> {
    body.and_then(|b| serde_json::from_str(b).ok())
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

fn refused(message: String) -> EngineError {
    EngineError::Conflict { message, precondition: false }
}

fn invalid(message: String) -> EngineError {
    EngineError::Unprocessable(vec![fhir::Issue::error(fhir::IssueType::Invariant, message)])
}

/// A Slot as read for a booking.
struct SlotNow {
    version: i64,
    body: Value,
}

impl Engine {
    async fn read_slot(&self, slot: &str) -> EngineResult<Option<SlotNow>> {
        let current = self.store.read(&Ctx::system(), "Slot", slot).await?.filter(|r| !r.deleted);
        Ok(current.and_then(|r| Some(SlotNow { version: r.version, body: parse(r.body.as_deref())? })))
    }

    /// Whether the caller books as a resident (the rules for residents apply).
    fn books_as_resident(ctx: &Ctx) -> bool {
        ctx.principal.as_deref().is_some_and(|p| p.role == access::Role::Resident)
    }

    /// Serialises residents' bookings (held until their commit ends), so the daily limit holds
    /// under concurrency; staff and system bookings need no lock.
    pub(crate) async fn booking_guard(&self, ctx: &Ctx, ops: &[WriteOp]) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let books = ops.iter().any(|op| op.resource_type == "Appointment");
        if books && Self::books_as_resident(ctx) { Some(self.booking.lock().await) } else { None }
    }

    /// The writes that the Appointment writes among `ops` imply: Slot status changes, and
    /// waiting-list Appointments promoted into freed Slots. Checks the booking rules.
    pub(crate) async fn booking_effects(&self, ctx: &Ctx, ops: &[WriteOp]) -> EngineResult<Vec<WriteOp>> {
        let resident = Self::books_as_resident(ctx);
        let now = now_ms();
        let mut take: Vec<(String, Value)> = Vec::new();
        let mut release: Vec<(String, bool)> = Vec::new();
        for op in ops.iter().filter(|op| op.resource_type == "Appointment") {
            let new_body = parse(op.body.as_deref());
            let new = new_body.as_ref().map(held_slots).unwrap_or_default();
            let old_body = match op.version {
                1 => None,
                _ => {
                    self.store.read(&Ctx::system(), "Appointment", &op.id).await?.and_then(|r| parse(r.body.as_deref()))
                }
            };
            let old = old_body.as_ref().map(held_slots).unwrap_or_default();
            for slot in new.iter().filter(|s| !old.contains(s)) {
                if take.iter().any(|(s, _)| s == slot) {
                    return Err(refused(format!(
                        "two Appointments of this request book Slot/{slot}: one Slot, one booking"
                    )));
                }
                take.push((slot.clone(), new_body.clone().unwrap_or_default()));
            }
            let cancelled = new_body.as_ref().is_some_and(|b| b["status"] == "cancelled");
            release.extend(old.into_iter().filter(|s| !new.contains(s)).map(|s| (s, cancelled)));
        }
        if take.is_empty() && release.is_empty() {
            return Ok(Vec::new());
        }
        let mut effects = Vec::new();
        let mut checked_patients: Vec<String> = Vec::new();
        for (slot, appointment) in &take {
            if release.iter().any(|(s, _)| s == slot) {
                continue; // moved from one Appointment to another in the same request: stays busy
            }
            if let Some(created) = slot_created_in(ops, slot) {
                // A hospital that publishes a Slot and books it in one message (HL7 SIU^S12)
                // creates it busy in the same commit: nobody else can have held it.
                self.check_times(slot, appointment, &created)?;
                if created["status"] != "busy" {
                    return Err(invalid(format!(
                        "Slot/{slot} is created in the same request as the Appointment that holds it: create it busy"
                    )));
                }
                continue;
            }
            let Some(mut current) = self.read_slot(slot).await? else {
                return Err(invalid(format!(
                    "Appointment.slot: Slot/{slot} does not exist (book a Slot published in the pool)"
                )));
            };
            self.check_times(slot, appointment, &current.body)?;
            if current.body["status"] != "free" {
                return Err(taken(slot));
            }
            channel_allows(ctx, &current.body).map_err(|why| refused(format!("Slot/{slot}: {why}")))?;
            if resident
                && let Some(patient) = patient_of(appointment)
                && !checked_patients.contains(&patient)
            {
                self.check_standing(&patient, now).await?;
                self.check_daily_limits(&patient, appointment, ops).await?;
                checked_patients.push(patient);
            }
            current.body["status"] = json!("busy");
            effects.push(self.build_op("Slot", slot, current.version + 1, now, WriteMethod::Update, current.body)?);
        }
        for (slot, cancelled) in &release {
            let Some(mut current) = self.read_slot(slot).await? else { continue };
            if *cancelled && resident {
                let start = current.body["start"].as_str().and_then(instant);
                let deadline = self.config.booking.cancel_before_minutes;
                if start.is_some_and(|s| now > s - deadline * 60_000) {
                    return Err(refused(format!(
                        "the visit of Slot/{slot} starts in less than {deadline} minutes: it can no longer be cancelled \
                         online (距就诊不足{deadline}分钟，不能在线取消；请联系医院)"
                    )));
                }
            }
            if current.body["status"] != "busy" {
                continue; // blocked or entered-in-error by the hospital: left as it is
            }
            // The earliest Appointment waiting for this Slot gets it.
            let slot_ref = format!("Slot/{slot}");
            let waiting = self
                .scan("Appointment", &[("slot", slot_ref.as_str()), ("status", "waitlist"), ("_sort", "_lastUpdated")])
                .await?;
            let promoted =
                waiting.iter().find(|w| !ops.iter().any(|op| op.resource_type == "Appointment" && op.id == w.id));
            if let Some(waiting) = promoted
                && let Some(mut body) = parse(waiting.body.as_deref())
            {
                body["status"] = json!("booked");
                for key in ["start", "end"] {
                    if body[key].is_null() {
                        body[key] = current.body[key].clone();
                    }
                }
                effects.push(self.build_op(
                    "Appointment",
                    &waiting.id,
                    waiting.version + 1,
                    now,
                    WriteMethod::Update,
                    body,
                )?);
                continue; // the Slot stays busy
            }
            current.body["status"] = json!("free");
            effects.push(self.build_op("Slot", slot, current.version + 1, now, WriteMethod::Update, current.body)?);
        }
        Ok(effects)
    }

    /// app-3: a booked Appointment has the start and end of its Slot.
    fn check_times(&self, slot: &str, appointment: &Value, slot_body: &Value) -> EngineResult<()> {
        for key in ["start", "end"] {
            let (Some(a), Some(s)) = (appointment[key].as_str(), slot_body[key].as_str()) else {
                return Err(invalid(format!(
                    "Appointment.{key} is required for a booking and must be the {key} of Slot/{slot} ({})",
                    slot_body[key].as_str().unwrap_or("unknown")
                )));
            };
            if instant(a) != instant(s) {
                return Err(invalid(format!("Appointment.{key} ({a}) is not the {key} of Slot/{slot} ({s})")));
            }
        }
        Ok(())
    }

    /// A resident with `no_show_limit` no-shows in `no_show_days` cannot book online until
    /// `suspension_days` after the last one.
    async fn check_standing(&self, patient: &str, now: i64) -> EngineResult<()> {
        let rules = self.config.booking;
        let since = fhir::normalize::format_instant(now - rules.no_show_days * 86_400_000);
        let patient_ref = format!("Patient/{patient}");
        let from = format!("ge{since}");
        let missed = self
            .scan("Appointment", &[("patient", patient_ref.as_str()), ("status", "noshow"), ("date", from.as_str())])
            .await?;
        if missed.len() < rules.no_show_limit {
            return Ok(());
        }
        let last = missed
            .iter()
            .filter_map(|r| parse(r.body.as_deref()))
            .filter_map(|b| b["start"].as_str().and_then(instant))
            .max()
            .unwrap_or(now);
        let until = last + rules.suspension_days * 86_400_000;
        if now >= until {
            return Ok(());
        }
        Err(refused(format!(
            "online booking is suspended until {} after {} missed appointments in {} days (爽约{}次，暂停在线预约至{})",
            &fhir::normalize::format_instant(until)[..10],
            missed.len(),
            rules.no_show_days,
            missed.len(),
            &fhir::normalize::format_instant(until)[..10],
        )))
    }

    /// A resident's limits for the day of the booking: `per_patient_per_day` Slots, one per
    /// schedule (doctor).
    async fn check_daily_limits(&self, patient: &str, appointment: &Value, ops: &[WriteOp]) -> EngineResult<()> {
        let Some(day) = appointment["start"].as_str().map(|s| s[..10.min(s.len())].to_string()) else { return Ok(()) };
        let patient_ref = format!("Patient/{patient}");
        let holding = HOLDING.join(",");
        let booked = self
            .scan(
                "Appointment",
                &[("patient", patient_ref.as_str()), ("date", day.as_str()), ("status", holding.as_str())],
            )
            .await?;
        let others: Vec<Value> = booked
            .iter()
            .filter(|r| !ops.iter().any(|op| op.resource_type == "Appointment" && op.id == r.id))
            .filter_map(|r| parse(r.body.as_deref()))
            .collect();
        let limit = self.config.booking.per_patient_per_day;
        if others.len() >= limit {
            return Err(refused(format!(
                "at most {limit} bookings a day per resident (每人每天最多预约{limit}个号); {day} already has {}",
                others.len()
            )));
        }
        let mut mine: Vec<String> = Vec::new();
        for slot in slot_ids(appointment) {
            if let Some(s) = self.read_slot(&slot).await? {
                mine.extend(s.body["schedule"]["reference"].as_str().map(str::to_string));
            }
        }
        for other in &others {
            for slot in slot_ids(other) {
                if let Some(s) = self.read_slot(&slot).await?
                    && let Some(schedule) = s.body["schedule"]["reference"].as_str()
                    && mine.iter().any(|m| m == schedule)
                {
                    return Err(refused(format!(
                        "one booking per doctor per day (同一医生每天限约一个号): {day} already has one with {schedule}"
                    )));
                }
            }
        }
        Ok(())
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
