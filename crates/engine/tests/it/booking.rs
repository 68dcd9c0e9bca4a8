//! Booking over the slot pool: a booked Slot turns busy with its Appointment, a second booking
//! is a 409, a cancellation frees it, and 500 concurrent bookings for 5 Slots make exactly 5
//! bookings, on SQLite and on PostgreSQL.

use std::sync::Arc;

use engine::{Engine, EngineConfig, EngineError};
use serde_json::{Value, json};
use store::{Ctx, ResourceStore};

use super::{engine, opts};

fn sys() -> Ctx {
    Ctx::system()
}

async fn publish(e: &Engine, slots: usize) -> Vec<String> {
    let schedule = json!({"resourceType": "Schedule", "id": "dr-lin-am", "active": true,
        "actor": [{"reference": "Practitioner/doc-1", "display": "林医生"}]});
    e.update(&sys(), "Schedule", "dr-lin-am", schedule, &opts()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..slots {
        let id = format!("slot-{i}");
        let slot = json!({"resourceType": "Slot", "id": id, "schedule": {"reference": "Schedule/dr-lin-am"},
            "status": "free", "start": format!("2026-12-01T08:{:02}:00+08:00", i * 10),
            "end": format!("2026-12-01T08:{:02}:00+08:00", i * 10 + 10)});
        e.update(&sys(), "Slot", &id, slot, &opts()).await.unwrap();
        ids.push(id);
    }
    ids
}

/// A booking of `slot-{i}` (published by `publish`, so its times are known).
fn appointment(slot: &str, patient: &str) -> Value {
    let i: usize = slot.strip_prefix("slot-").and_then(|n| n.parse().ok()).unwrap_or(0);
    json!({"resourceType": "Appointment", "status": "booked", "slot": [{"reference": format!("Slot/{slot}")}],
        "start": format!("2026-12-01T08:{:02}:00+08:00", i * 10), "end": format!("2026-12-01T08:{:02}:00+08:00", i * 10 + 10),
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]})
}

async fn slot_status(e: &Engine, slot: &str) -> String {
    let r = e.read(&sys(), "Slot", slot).await.unwrap();
    serde_json::from_str::<Value>(r.body.as_deref().unwrap()).unwrap()["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_slot_is_booked_once_and_freed_by_cancelling() {
    let t = engine();
    let e = &t.engine;
    let slots = publish(e, 2).await;
    let first = e.create(&sys(), "Appointment", appointment(&slots[0], "p1"), &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[0]).await, "busy");
    let second = e.create(&sys(), "Appointment", appointment(&slots[0], "p2"), &opts()).await.unwrap_err();
    match &second {
        EngineError::Conflict { message, precondition: false } => {
            assert!(message.contains("already booked"), "{message}")
        }
        other => panic!("expected 409, got {other:?}"),
    }
    assert_eq!(second.http_status(), 409);
    // A waiting-list entry holds nothing (for a slot no one holds it stays free).
    let mut wait = appointment(&slots[1], "p2");
    wait["status"] = json!("waitlist");
    let waiting = e.create(&sys(), "Appointment", wait, &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[1]).await, "free");
    e.delete(&sys(), "Appointment", &waiting.resource.id, &opts()).await.unwrap();
    // Cancelling frees the slot; it can be booked again.
    let mut body: Value = serde_json::from_str(first.resource.body.as_deref().unwrap()).unwrap();
    body["status"] = json!("cancelled");
    e.update(&sys(), "Appointment", &first.resource.id, body, &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[0]).await, "free");
    let again = e.create(&sys(), "Appointment", appointment(&slots[0], "p2"), &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[0]).await, "busy");
    // Moving the booking to another slot frees the first and takes the second, atomically.
    let mut moved: Value = serde_json::from_str(again.resource.body.as_deref().unwrap()).unwrap();
    let target = appointment(&slots[1], "p2");
    moved["slot"] = target["slot"].clone();
    moved["start"] = target["start"].clone();
    moved["end"] = target["end"].clone();
    e.update(&sys(), "Appointment", &again.resource.id, moved, &opts()).await.unwrap();
    assert_eq!((slot_status(e, &slots[0]).await, slot_status(e, &slots[1]).await), ("free".into(), "busy".into()));
    // Deleting the appointment frees its slot.
    e.delete(&sys(), "Appointment", &again.resource.id, &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[1]).await, "free");
    // A slot that does not exist is named; a transaction that books one slot twice writes nothing.
    let missing = e.create(&sys(), "Appointment", appointment("nope", "p3"), &opts()).await.unwrap_err();
    assert_eq!(missing.http_status(), 422, "{missing:?}");
    // A booking carries its Slot's times (FHIR app-3).
    let mut untimed = appointment(&slots[1], "p3");
    untimed.as_object_mut().unwrap().remove("start");
    let err = e.create(&sys(), "Appointment", untimed, &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 422, "{err:?}");
    let mut wrong = appointment(&slots[1], "p3");
    wrong["start"] = json!("2026-12-01T09:00:00+08:00");
    assert_eq!(e.create(&sys(), "Appointment", wrong, &opts()).await.unwrap_err().http_status(), 422);
    let twice = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment(&slots[1], "p4"), "request": {"method": "POST", "url": "Appointment"}},
        {"resource": appointment(&slots[1], "p5"), "request": {"method": "POST", "url": "Appointment"}}]});
    let err = e.bundle(&sys(), twice, &opts()).await.unwrap_err();
    assert_eq!(err.http_status(), 409, "{err:?}");
    assert_eq!(slot_status(e, &slots[1]).await, "free");
}

/// 500 clients race for 5 slots: exactly 5 bookings, every other one a 409, every slot busy
/// and held by exactly one appointment.
async fn race(store: Arc<dyn ResourceStore>, dir: &std::path::Path) {
    let e = Arc::new(Engine::new(store, EngineConfig { export_dir: dir.join("export"), ..EngineConfig::default() }));
    let slots = publish(&e, 5).await;
    let mut tasks = Vec::new();
    for client in 0..500 {
        let (e, slot) = (e.clone(), slots[client % slots.len()].clone());
        tasks.push(tokio::spawn(async move {
            e.create(&Ctx::system(), "Appointment", appointment(&slot, &format!("p{client}")), &opts()).await
        }));
    }
    let (mut booked, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => booked += 1,
            Err(e) if e.http_status() == 409 => refused += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!((booked, refused), (5, 495));
    for slot in &slots {
        assert_eq!(slot_status(&e, slot).await, "busy");
        let q = vec![("slot".to_string(), format!("Slot/{slot}")), ("status".to_string(), "booked".to_string())];
        let holders = e.search(&Ctx::system(), Some("Appointment"), &q, &opts()).await.unwrap();
        assert_eq!(holders["entry"].as_array().map_or(0, Vec::len), 1, "{slot} is held once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_clients_never_overbook_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    race(Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_clients_never_overbook_on_postgres() {
    let Some(store) = super::ground_truth::fresh_postgres().await else { return };
    let dir = tempfile::tempdir().unwrap();
    race(store, dir.path()).await;
}

fn resident(patient: &str) -> Ctx {
    Ctx::for_principal(
        "req-booking".into(),
        access::Principal {
            subject: "user/resident".into(),
            role: access::Role::Resident,
            organization: None,
            region: None,
            practitioner: None,
            patients: vec![patient.into()],
            scopes: access::Scopes::parse("patient/*.*").unwrap(),
            purpose: "PATRQT".into(),
            break_glass: None,
        },
        None,
    )
}

async fn slot_at(e: &Engine, id: &str, schedule: &str, start_ms: i64) {
    let schedule_body = json!({"resourceType": "Schedule", "id": schedule, "active": true,
        "actor": [{"reference": format!("Practitioner/{schedule}")}]});
    e.update(&sys(), "Schedule", schedule, schedule_body, &opts()).await.unwrap();
    let slot = json!({"resourceType": "Slot", "id": id, "schedule": {"reference": format!("Schedule/{schedule}")},
        "status": "free", "start": fhir::normalize::format_instant(start_ms),
        "end": fhir::normalize::format_instant(start_ms + 600_000)});
    e.update(&sys(), "Slot", id, slot, &opts()).await.unwrap();
}

async fn book(e: &Engine, ctx: &Ctx, slot: &str, patient: &str, status: &str) -> Result<String, EngineError> {
    let s: Value = serde_json::from_str(e.read(&sys(), "Slot", slot).await.unwrap().body.as_deref().unwrap()).unwrap();
    let body = json!({"resourceType": "Appointment", "status": status, "slot": [{"reference": format!("Slot/{slot}")}],
        "start": s["start"], "end": s["end"],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]});
    e.create(ctx, "Appointment", body, &opts()).await.map(|o| o.resource.id)
}

async fn cancel(e: &Engine, ctx: &Ctx, id: &str) -> Result<(), EngineError> {
    let mut body: Value =
        serde_json::from_str(e.read(&sys(), "Appointment", id).await.unwrap().body.as_deref().unwrap()).unwrap();
    body["status"] = json!("cancelled");
    e.update(ctx, "Appointment", id, body, &opts()).await.map(|_| ())
}

#[tokio::test]
async fn residents_book_within_the_rules_and_the_waiting_list_fills_freed_slots() {
    let t = engine();
    let e = &t.engine;
    let me = resident("p-me");
    let day = 1_800_000_000_000; // a day far ahead
    for (i, schedule) in ["dr-a", "dr-b", "dr-c", "dr-d"].iter().enumerate() {
        slot_at(e, &format!("s-{schedule}-1"), schedule, day + i as i64 * 3_600_000).await;
        slot_at(e, &format!("s-{schedule}-2"), schedule, day + i as i64 * 3_600_000 + 600_000).await;
    }
    // One per doctor per day.
    book(e, &me, "s-dr-a-1", "p-me", "booked").await.unwrap();
    let twice = book(e, &me, "s-dr-a-2", "p-me", "booked").await.unwrap_err();
    assert!(matches!(&twice, EngineError::Conflict { message, .. } if message.contains("per doctor")), "{twice:?}");
    // At most three a day.
    book(e, &me, "s-dr-b-1", "p-me", "booked").await.unwrap();
    book(e, &me, "s-dr-c-1", "p-me", "booked").await.unwrap();
    let fourth = book(e, &me, "s-dr-d-1", "p-me", "booked").await.unwrap_err();
    assert!(matches!(&fourth, EngineError::Conflict { message, .. } if message.contains("at most 3")), "{fourth:?}");
    // Staff are not bound by a resident's limits.
    book(e, &sys(), "s-dr-d-1", "p-me", "booked").await.unwrap();

    // The waiting list: another resident waits for dr-a's first slot; a cancellation gives it to them.
    let other = resident("p-other");
    let waiting = book(e, &other, "s-dr-a-1", "p-other", "waitlist").await.unwrap();
    let mine = e
        .search(
            &sys(),
            Some("Appointment"),
            &[("patient".into(), "Patient/p-me".into()), ("slot".into(), "Slot/s-dr-a-1".into())],
            &opts(),
        )
        .await
        .unwrap();
    let mine = mine["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    cancel(e, &me, &mine).await.unwrap();
    let promoted: Value =
        serde_json::from_str(e.read(&sys(), "Appointment", &waiting).await.unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(promoted["status"], "booked");
    assert_eq!(slot_status(e, "s-dr-a-1").await, "busy");

    // Too close to the visit: a resident cannot cancel; the hospital can.
    slot_at(e, "soon", "dr-e", now() + 30 * 60_000).await;
    let soon = book(e, &me, "soon", "p-me", "booked").await.unwrap();
    let late = cancel(e, &me, &soon).await.unwrap_err();
    assert!(matches!(&late, EngineError::Conflict { message, .. } if message.contains("120 minutes")), "{late:?}");
    cancel(e, &sys(), &soon).await.unwrap();
    assert_eq!(slot_status(e, "soon").await, "free");
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn quota_channels_and_no_show_suspension() {
    let t = engine();
    let e = &t.engine;
    let day = 1_800_000_000_000;
    // A slot reserved for family-doctor referrals (号源下沉) and one for the hospital window.
    for (id, channel) in [("ref-1", "referral"), ("win-1", "window")] {
        slot_at(e, id, &format!("dr-{id}"), day).await;
        let mut slot: Value =
            serde_json::from_str(e.read(&sys(), "Slot", id).await.unwrap().body.as_deref().unwrap()).unwrap();
        slot["extension"] = json!([{"url": engine::CHANNEL_EXTENSION, "valueCode": channel}]);
        e.update(&sys(), "Slot", id, slot, &opts()).await.unwrap();
    }
    let me = resident("p-me");
    for slot in ["ref-1", "win-1"] {
        let err = book(e, &me, slot, "p-me", "booked").await.unwrap_err();
        assert_eq!(err.http_status(), 409, "{err:?}");
    }
    // The hospital books its window slot (a staff or system caller).
    book(e, &sys(), "win-1", "p-me", "booked").await.unwrap();

    // Three no-shows in the last 90 days suspend online booking.
    let start = now() - 5 * 86_400_000;
    for i in 0..3 {
        let id = format!("past-{i}");
        slot_at(e, &id, &format!("dr-past-{i}"), start + i * 3_600_000).await;
        let appt = book(e, &sys(), &id, "p-me", "booked").await.unwrap();
        let mut body: Value =
            serde_json::from_str(e.read(&sys(), "Appointment", &appt).await.unwrap().body.as_deref().unwrap()).unwrap();
        body["status"] = json!("noshow");
        e.update(&sys(), "Appointment", &appt, body, &opts()).await.unwrap();
    }
    slot_at(e, "later", "dr-later", day).await;
    let err = book(e, &me, "later", "p-me", "booked").await.unwrap_err();
    assert!(matches!(&err, EngineError::Conflict { message, .. } if message.contains("suspended")), "{err:?}");
    // Another resident is not affected.
    book(e, &resident("p-other"), "later", "p-other", "booked").await.unwrap();
}

/// Notifications as the delivery adapter received them: `(channel, address, text)`.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(engine::Channel, String, String)>>, std::sync::atomic::AtomicBool);

impl engine::Notifier for Recorder {
    fn send(&self, channel: engine::Channel, address: &str, text: &str) -> std::io::Result<()> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("gateway down"));
        }
        self.0.lock().unwrap().push((channel, address.to_string(), text.to_string()));
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<(engine::Channel, String, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The notifications about an Appointment (found, as the portal finds them, by recipient).
async fn communications_about(e: &Engine, appointment: &str) -> Vec<Value> {
    let stored = e.read(&sys(), "Appointment", appointment).await.unwrap();
    let body: Value = serde_json::from_str(stored.body.as_deref().unwrap()).unwrap();
    let patient = body["participant"][0]["actor"]["reference"].as_str().unwrap().to_string();
    let found = e.search(&sys(), Some("Communication"), &[("recipient".into(), patient)], &opts()).await.unwrap();
    let about = format!("Appointment/{appointment}");
    let all = found["entry"].as_array().into_iter().flatten().map(|x| x["resource"].clone());
    all.filter(|c| c["about"][0]["reference"] == about.as_str()).collect()
}

#[tokio::test]
async fn bookings_cancellations_promotions_and_reminders_are_notified_once() {
    let t = engine();
    let e = &t.engine;
    let with_phone =
        json!({"resourceType": "Patient", "id": "p-phone", "telecom": [{"system": "phone", "value": "13800000001"}]});
    e.update(&sys(), "Patient", "p-phone", with_phone, &opts()).await.unwrap();
    e.update(&sys(), "Patient", "p-app", json!({"resourceType": "Patient", "id": "p-app"}), &opts()).await.unwrap();
    let hour = 3_600_000;
    slot_at(e, "in-3h", "dr-wu", now() + 3 * hour).await;
    slot_at(e, "in-3d", "dr-zhao", now() + 72 * hour).await;
    let notifier = Recorder::default();
    // Whatever the fixtures wrote is consumed first.
    e.notify_step(&notifier, now()).await.unwrap();
    notifier.take();

    // A booking within the reminder window: a confirmation and a reminder, by SMS.
    let soon = book(e, &resident("p-phone"), "in-3h", "p-phone", "booked").await.unwrap();
    // A booking three days ahead: a confirmation only; a waiting-list entry for it: nothing yet.
    let later = book(e, &resident("p-phone"), "in-3d", "p-phone", "booked").await.unwrap();
    let waiting = book(e, &sys(), "in-3d", "p-app", "waitlist").await.unwrap();
    assert_eq!(e.notify_step(&notifier, now()).await.unwrap(), 3);
    let sent = notifier.take();
    assert!(sent.iter().all(|(c, a, _)| *c == engine::Channel::Sms && a == "13800000001"), "{sent:?}");
    assert_eq!(sent.iter().filter(|(_, _, m)| m.contains("预约成功")).count(), 2, "{sent:?}");
    assert_eq!(sent.iter().filter(|(_, _, m)| m.contains("就诊提醒")).count(), 1, "{sent:?}");
    let notices = communications_about(e, &soon).await;
    assert_eq!(notices.len(), 2);
    assert!(notices.iter().all(|c| c["status"] == "completed" && c["recipient"][0]["reference"] == "Patient/p-phone"));
    // Nothing is sent twice.
    assert_eq!(e.notify_step(&notifier, now()).await.unwrap(), 0);
    assert!(notifier.take().is_empty());

    // Cancelling the later visit: its holder is told, and the waiting resident gets the Slot
    // (app channel: no phone on record).
    cancel(e, &resident("p-phone"), &later).await.unwrap();
    assert_eq!(e.notify_step(&notifier, now()).await.unwrap(), 2);
    let sent = notifier.take();
    assert!(sent.iter().any(|(c, a, m)| *c == engine::Channel::Sms && a == "13800000001" && m.contains("已取消")));
    assert!(sent.iter().any(|(c, a, m)| *c == engine::Channel::App && a == "Patient/p-app" && m.contains("候补成功")));
    assert_eq!(communications_about(e, &waiting).await[0]["category"][0]["coding"][0]["code"], "promoted");

    // Three days on, the promoted visit is within a day: one reminder; a failed delivery is kept
    // as not-done and not retried.
    notifier.1.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(e.notify_step(&notifier, now() + 50 * hour).await.unwrap(), 0);
    let notices = communications_about(e, &waiting).await;
    let reminder = notices.iter().find(|c| c["category"][0]["coding"][0]["code"] == "reminder").unwrap();
    assert_eq!(reminder["status"], "not-done");
    notifier.1.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(e.notify_step(&notifier, now() + 50 * hour).await.unwrap(), 0);
    assert!(notifier.take().is_empty());
}

/// The booking pool is shared reference data: residents find Schedules (which the R4 Patient
/// compartment lists through `Schedule.actor`) and their Slots, by search and by read, while a
/// resident's own Appointments stay theirs.
#[tokio::test]
async fn residents_find_the_published_schedules_and_slots() {
    let t = engine();
    let e = &t.engine;
    slot_at(e, "s-pool-1", "dr-pool", 1_800_000_000_000).await;
    let me = resident("p-me");
    let found = e.search(&me, Some("Schedule"), &[("active".into(), "true".into())], &opts()).await.unwrap();
    assert_eq!(found["entry"][0]["resource"]["id"], "dr-pool", "{found}");
    assert!(e.read(&me, "Schedule", "dr-pool").await.is_ok());
    let slots = e.search(&me, Some("Slot"), &[("schedule".into(), "Schedule/dr-pool".into())], &opts()).await.unwrap();
    assert_eq!(slots["entry"].as_array().map(Vec::len), Some(1), "{slots}");
    let mine = book(e, &me, "s-pool-1", "p-me", "booked").await.unwrap();
    let other = resident("p-other");
    assert!(matches!(e.read(&other, "Appointment", &mine).await, Err(EngineError::NotFound(_))));
    assert!(e.read(&other, "Schedule", "dr-pool").await.is_ok(), "every resident sees the pool");
}

/// A hospital that publishes a Slot and books it in one transaction (HL7 SIU^S12) creates the
/// Slot busy; created free, the booking is refused (another booking of the same request could
/// otherwise not see it taken). Cancelling frees it like any other.
#[tokio::test]
async fn a_slot_created_with_its_booking_is_created_busy() {
    let t = engine();
    let e = &t.engine;
    publish(e, 0).await;
    let bundle = |status: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:6b0c3c1e-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Slot", "schedule": {"reference": "Schedule/dr-lin-am"}, "status": status,
                          "start": "2026-12-02T09:00:00+08:00", "end": "2026-12-02T09:15:00+08:00"},
             "request": {"method": "POST", "url": "Slot"}},
            {"resource": {"resourceType": "Appointment", "status": "booked",
                          "slot": [{"reference": "urn:uuid:6b0c3c1e-0000-4000-8000-000000000001"}],
                          "start": "2026-12-02T09:00:00+08:00", "end": "2026-12-02T09:15:00+08:00",
                          "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]},
             "request": {"method": "POST", "url": "Appointment"}}]})
    };
    let refused = e.bundle(&sys(), bundle("free"), &opts()).await.unwrap_err();
    assert_eq!(refused.http_status(), 422, "{refused:?}");
    let done = e.bundle(&sys(), bundle("busy"), &opts()).await.unwrap();
    let slot = done["entry"][0]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    let appointment = done["entry"][1]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    assert_eq!(slot_status(e, &slot).await, "busy");
    let mut body: Value =
        serde_json::from_str(e.read(&sys(), "Appointment", &appointment).await.unwrap().body.as_deref().unwrap())
            .unwrap();
    body["status"] = json!("cancelled");
    e.update(&sys(), "Appointment", &appointment, body, &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slot).await, "free");
}
