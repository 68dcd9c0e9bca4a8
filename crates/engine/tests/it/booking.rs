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

fn appointment(slot: &str, patient: &str) -> Value {
    json!({"resourceType": "Appointment", "status": "booked", "slot": [{"reference": format!("Slot/{slot}")}],
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
    // A waiting-list entry holds nothing.
    let mut wait = appointment(&slots[0], "p2");
    wait["status"] = json!("waitlist");
    e.create(&sys(), "Appointment", wait, &opts()).await.unwrap();
    // Cancelling frees the slot; it can be booked again.
    let mut body: Value = serde_json::from_str(first.resource.body.as_deref().unwrap()).unwrap();
    body["status"] = json!("cancelled");
    e.update(&sys(), "Appointment", &first.resource.id, body, &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[0]).await, "free");
    let again = e.create(&sys(), "Appointment", appointment(&slots[0], "p2"), &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[0]).await, "busy");
    // Moving the booking to another slot frees the first and takes the second, atomically.
    let mut moved: Value = serde_json::from_str(again.resource.body.as_deref().unwrap()).unwrap();
    moved["slot"] = json!([{"reference": format!("Slot/{}", slots[1])}]);
    e.update(&sys(), "Appointment", &again.resource.id, moved, &opts()).await.unwrap();
    assert_eq!((slot_status(e, &slots[0]).await, slot_status(e, &slots[1]).await), ("free".into(), "busy".into()));
    // Deleting the appointment frees its slot.
    e.delete(&sys(), "Appointment", &again.resource.id, &opts()).await.unwrap();
    assert_eq!(slot_status(e, &slots[1]).await, "free");
    // A slot that does not exist is named; a transaction that books one slot twice writes nothing.
    let missing = e.create(&sys(), "Appointment", appointment("nope", "p3"), &opts()).await.unwrap_err();
    assert_eq!(missing.http_status(), 422, "{missing:?}");
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
