//! Appointment notifications: booking confirmations, cancellations, waiting-list promotions and
//! visit reminders, sent to residents through a pluggable [`Notifier`] (SMS gateway, app push)
//! and kept as FHIR `Communication` resources (what the portal shows as messages).
//!
//! A worker ([`Engine::notify_run`]) reads Appointment events from the outbox after its durable
//! cursor `notify`, compares each version with the one before it, and notifies:
//!
//! | change | kind | text (Simplified Chinese) |
//! |---|---|---|
//! | new `booked` / `pending` → `booked` | `booked` | 预约成功 |
//! | `waitlist` → `booked` | `promoted` | 候补成功 |
//! | → `cancelled` | `cancelled` | 预约已取消 |
//!
//! and every pass also looks for `booked` Appointments starting within
//! `BookingRules::reminder_before_hours` and sends one `reminder` (就诊提醒) each.
//!
//! Delivery is at least once: a notification's Communication has a deterministic id
//! (`notice-<appointment>-<kind>-<version>`, `notice-<appointment>-reminder`); the worker skips one
//! that exists, sends, then writes it. A crash between sending and writing resends that one
//! message on restart. The channel is SMS to the patient's phone (`Patient.telecom`) when there
//! is one, otherwise the app channel addressed to the Patient id. No message text or phone
//! number is logged. A failed delivery is recorded as a `not-done` Communication with a reason
//! and not retried (the portal still shows it).

use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Value, json};
use store::{Ctx, StoredResource, WriteMethod};

use crate::crud::now_ms;
use crate::{Engine, EngineResult, audit};

/// The outbox cursor of the notification worker.
const CURSOR: &str = "notify";
/// Outbox events read per step.
const STEP_EVENTS: usize = 500;
/// `Communication.category` system of these notifications.
pub const NOTICE_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/notice";

/// How a notification reaches the resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A text message to a phone number.
    Sms,
    /// A push message to the resident's app (addressed by Patient id).
    App,
}

impl Channel {
    fn medium(self) -> (&'static str, &'static str) {
        match self {
            Channel::Sms => ("SMSWRIT", "短信"),
            Channel::App => ("ELECTRONIC", "应用消息"),
        }
    }
}

/// The delivery adapter. A deployment plugs in its SMS gateway and app push service; the
/// `hutong` binary's local implementation appends to files under the data directory.
pub trait Notifier: Send + Sync {
    fn send(&self, channel: Channel, address: &str, text: &str) -> std::io::Result<()>;
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Booked,
    Promoted,
    Cancelled,
    Reminder,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Booked => "booked",
            Kind::Promoted => "promoted",
            Kind::Cancelled => "cancelled",
            Kind::Reminder => "reminder",
        }
    }
}

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("a fixed offset of 8 hours is valid")
}

fn parse(r: &StoredResource) -> Option<Value> {
    r.body.as_deref().and_then(|b| serde_json::from_str(b).ok())
}

/// `12月2日 09:30` in China Standard Time.
fn when(appointment: &Value) -> String {
    appointment["start"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&china()).format("%-m月%-d日 %H:%M").to_string())
        .unwrap_or_else(|| "预约时间".to_string())
}

fn text(kind: Kind, appointment: &Value, cancel_before_minutes: i64) -> String {
    let at = when(appointment);
    match kind {
        Kind::Booked => format!(
            "【12320】预约成功：{at}就诊，请携带电子健康卡按时签到。如需取消，请在就诊前{cancel_before_minutes}分钟以前操作。"
        ),
        Kind::Promoted => format!("【12320】候补成功：已为您预约{at}的号源，请按时就诊；不能前往请及时取消。"),
        Kind::Cancelled => format!("【12320】您{at}的预约已取消。"),
        Kind::Reminder => format!("【12320】就诊提醒：您预约了{at}的号源，请提前到达并出示电子健康卡签到。"),
    }
}

fn patient_of(appointment: &Value) -> Option<String> {
    appointment["participant"]
        .as_array()?
        .iter()
        .filter_map(|p| p["actor"]["reference"].as_str())
        .find_map(|r| r.strip_prefix("Patient/"))
        .map(str::to_string)
}

impl Engine {
    /// Runs the notification worker until the process ends: a step every few seconds.
    pub async fn notify_run(self: Arc<Self>, notifier: Arc<dyn Notifier>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Err(e) = self.notify_step(notifier.as_ref(), now_ms()).await {
                tracing::warn!(error = %e, "appointment notifications: a step failed; retrying");
            }
        }
    }

    /// One pass: the Appointment changes since the cursor, then the reminders due at `now`
    /// (Unix milliseconds). Returns how many notifications were sent.
    pub async fn notify_step(&self, notifier: &dyn Notifier, now: i64) -> EngineResult<usize> {
        let mut sent = 0;
        loop {
            let cursor = self.store.cursor_get(CURSOR).await?;
            let events = self.store.outbox_read(cursor, STEP_EVENTS).await?;
            let Some(last) = events.last().map(|e| e.seq) else { break };
            for event in events.iter().filter(|e| e.resource_type == "Appointment") {
                let ctx = Ctx::system();
                let Some(new) = self.store.vread(&ctx, "Appointment", &event.id, event.version).await? else {
                    continue;
                };
                let Some(body) = parse(&new).filter(|_| !new.deleted) else { continue };
                let old = match event.version {
                    1 => None,
                    v => self.store.vread(&ctx, "Appointment", &event.id, v - 1).await?.as_ref().and_then(parse),
                };
                let was = old.as_ref().and_then(|o| o["status"].as_str()).unwrap_or("");
                let kind = match (was, body["status"].as_str().unwrap_or("")) {
                    ("waitlist", "booked") => Some(Kind::Promoted),
                    ("" | "proposed" | "pending", "booked") => Some(Kind::Booked),
                    (w, "cancelled") if w != "cancelled" && !w.is_empty() => Some(Kind::Cancelled),
                    _ => None,
                };
                if let Some(kind) = kind {
                    let id = format!("notice-{}-{}-{}", event.id, kind.code(), event.version);
                    sent += usize::from(self.notify(notifier, &id, kind, &event.id, &body, now).await?);
                }
            }
            self.store.cursor_set(CURSOR, last).await?;
            if events.len() < STEP_EVENTS {
                break;
            }
        }
        let hours = self.config.booking.reminder_before_hours;
        let from = format!("ge{}", fhir::normalize::format_instant(now));
        let to = format!("le{}", fhir::normalize::format_instant(now + hours * 3_600_000));
        for r in
            self.scan("Appointment", &[("status", "booked"), ("date", from.as_str()), ("date", to.as_str())]).await?
        {
            let Some(body) = parse(&r) else { continue };
            let starts = body["start"].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            if starts.is_none_or(|s| s.with_timezone(&Utc).timestamp_millis() < now) {
                continue;
            }
            let id = format!("notice-{}-reminder", r.id);
            sent += usize::from(self.notify(notifier, &id, Kind::Reminder, &r.id, &body, now).await?);
        }
        Ok(sent)
    }

    /// Sends one notification unless its Communication exists; writes the Communication.
    async fn notify(
        &self,
        notifier: &dyn Notifier,
        id: &str,
        kind: Kind,
        appointment_id: &str,
        appointment: &Value,
        now: i64,
    ) -> EngineResult<bool> {
        let ctx = Ctx::system();
        if self.store.read(&ctx, "Communication", id).await?.is_some() {
            return Ok(false);
        }
        let Some(patient) = patient_of(appointment) else { return Ok(false) };
        let phone = match self.store.read(&ctx, "Patient", &patient).await? {
            Some(r) => parse(&r).and_then(|p| {
                p["telecom"].as_array()?.iter().find(|t| t["system"] == "phone")?["value"].as_str().map(str::to_string)
            }),
            None => None,
        };
        let (channel, address) = match phone {
            Some(phone) => (Channel::Sms, phone),
            None => (Channel::App, format!("Patient/{patient}")),
        };
        let message = text(kind, appointment, self.config.booking.cancel_before_minutes);
        let status = match notifier.send(channel, &address, &message) {
            Ok(()) => "completed",
            Err(e) => {
                tracing::warn!(error = %e, kind = kind.code(), "a notification could not be delivered");
                "not-done"
            }
        };
        let (medium, medium_text) = channel.medium();
        let communication = json!({
            "resourceType": "Communication", "id": id, "status": status,
            "category": [{"coding": [{"system": NOTICE_SYSTEM, "code": kind.code()}], "text": "预约通知"}],
            "medium": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
                                    "code": medium}], "text": medium_text}],
            "subject": {"reference": format!("Patient/{patient}")},
            "recipient": [{"reference": format!("Patient/{patient}")}],
            "about": [{"reference": format!("Appointment/{appointment_id}")}],
            "sent": fhir::normalize::format_instant(now),
            "statusReason": if status == "completed" { Value::Null } else { json!({"text": "delivery failed (投递失败)"}) },
            "payload": [{"contentString": message}],
        });
        let mut communication = communication;
        if let Some(o) = communication.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        let op = self.build_op("Communication", id, 1, now, WriteMethod::Create, communication)?;
        let reason = format!("{} notification by {}", kind.code(), medium_text);
        let record =
            audit::record(&ctx, "notify", "success", format!("Communication/{id}"), vec![patient], Some(&reason));
        match self.store.commit_audited(&ctx, vec![op], vec![record]).await {
            Ok(_) | Err(store::StoreError::VersionConflict { .. }) | Err(store::StoreError::Duplicate { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(status == "completed")
    }
}
