//! Appending audit records for accesses that write nothing (reads, searches, denials) with
//! group commit: callers hand a record to one background task, which appends everything queued
//! in one transaction (up to [`BATCH`]).
//!
//! Two modes ([`crate::AuditMode`]): **durable** — the request is answered only after its
//! record is committed; **queued** (the default for permitted reads and searches) — the request
//! is answered at once and its record commits within [`LINGER`] (200 ms), behind a bounded queue
//! that makes requests wait when the log falls behind. Denials, break-glass accesses and exports
//! are always durable (a durable record cuts the linger short and commits with everything queued
//! before it), and writes never come here: their record commits in the write's own transaction.
//! A queued record can be lost only if the process is killed outright within the linger before
//! its batch commits; a graceful shutdown drains the queue ([`AuditSink::flush`]).

use std::sync::{Arc, OnceLock};

use store::{AuditRecord, Ctx, ResourceStore, StoreResult};
use tokio::sync::{mpsc, oneshot};

type Job = (Option<AuditRecord>, Option<oneshot::Sender<StoreResult<()>>>);

/// Most records appended in one transaction.
const BATCH: usize = 16_384;

/// How long queued records wait for company before they are committed (default; the
/// environment variable `HUTONG_AUDIT_LINGER_MS` overrides it). Every commit costs the index of
/// the patients it names and, on SQLite, resets every reader's page cache, so a few large
/// commits a second cost far less than hundreds of small ones; the price is that a process killed
/// outright loses at most this much of its queued read records.
const LINGER: std::time::Duration = std::time::Duration::from_millis(200);

fn linger() -> std::time::Duration {
    static L: OnceLock<std::time::Duration> = OnceLock::new();
    *L.get_or_init(|| {
        std::env::var("HUTONG_AUDIT_LINGER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
            .unwrap_or(LINGER)
    })
}

pub(crate) struct AuditSink {
    store: Arc<dyn ResourceStore>,
    sender: OnceLock<mpsc::Sender<Job>>,
    /// Wakes the writer from its linger when a durable record is waiting.
    urgent: Arc<tokio::sync::Notify>,
}

impl AuditSink {
    pub(crate) fn new(store: Arc<dyn ResourceStore>) -> Self {
        AuditSink { store, sender: OnceLock::new(), urgent: Arc::new(tokio::sync::Notify::new()) }
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.sender.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Job>(2 * BATCH);
            let store = self.store.clone();
            let urgent = self.urgent.clone();
            tokio::spawn(async move {
                let mut jobs: Vec<Job> = Vec::with_capacity(BATCH);
                while rx.recv_many(&mut jobs, BATCH).await > 0 {
                    // Only queued records so far: linger briefly so that one commit carries
                    // many (nobody is waiting on them); a durable waiter commits at once.
                    if jobs.len() < BATCH && jobs.iter().all(|j| j.1.is_none()) {
                        // Queued senders do not wake this task while it sleeps; a durable one
                        // does, through `urgent`.
                        tokio::select! {
                            _ = tokio::time::sleep(linger()) => {}
                            _ = urgent.notified() => {}
                        }
                        while jobs.len() < BATCH {
                            match rx.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    // Queued records travel as one block entry; durable ones keep an entry each.
                    let mut queued: Vec<AuditRecord> = Vec::new();
                    let mut records: Vec<AuditRecord> = Vec::new();
                    let mut waiters = Vec::new();
                    for (record, waiter) in jobs.drain(..) {
                        match (record, waiter) {
                            (Some(r), None) => queued.push(r),
                            (Some(r), Some(w)) => {
                                records.push(r);
                                waiters.push(w);
                            }
                            (None, w) => waiters.extend(w),
                        }
                    }
                    if !queued.is_empty() {
                        records.insert(0, block(queued));
                    }
                    let result = store.commit_audited(&Ctx::system(), Vec::new(), records).await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "audit records could not be appended");
                    }
                    for waiter in waiters {
                        let _ = waiter.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(store::StoreError::Backend(format!("audit append failed: {e}"))),
                        });
                    }
                }
            });
            tx
        })
    }

    /// Appends one record and waits until it is durable.
    pub(crate) async fn append(&self, record: AuditRecord) -> StoreResult<()> {
        self.durable(Some(record)).await
    }

    async fn durable(&self, record: Option<AuditRecord>) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.sender()
            .send((record, Some(tx)))
            .await
            .map_err(|_| store::StoreError::Unavailable("the audit log writer has stopped".into()))?;
        self.urgent.notify_one();
        rx.await.map_err(|_| store::StoreError::Unavailable("the audit log writer has stopped".into()))?
    }

    /// Queues one record (waiting only while the queue is full).
    pub(crate) async fn queue(&self, record: AuditRecord) -> StoreResult<()> {
        self.sender()
            .send((Some(record), None))
            .await
            .map_err(|_| store::StoreError::Unavailable("the audit log writer has stopped".into()))
    }

    /// Waits until every record queued before this call is committed.
    pub(crate) async fn flush(&self) -> StoreResult<()> {
        self.durable(None).await
    }
}

/// The action of a block entry: many permitted accesses recorded together. Its `detail` is
/// `{"events": [[recorded, action, outcome, actor, role, organization, purpose, entity,
/// [patients…], detail], …]}`, its `patients` the union of theirs; the hash chain covers the
/// block as one entry, so changing any event in it breaks the chain at that entry.
pub const BLOCK_ACTION: &str = "access";

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn block(records: Vec<AuditRecord>) -> AuditRecord {
    let mut events = String::with_capacity(records.len() * 256);
    let mut patients: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    events.push_str("{\"events\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            events.push(',');
        }
        let ps: Vec<String> = r.patients.iter().map(|p| json_str(p)).collect();
        events.push_str(&format!(
            "[{},{},{},{},{},{},{},{},[{}],{}]",
            r.recorded,
            json_str(&r.action),
            json_str(&r.outcome),
            json_str(&r.actor),
            json_str(&r.role),
            json_str(&r.organization),
            json_str(&r.purpose),
            json_str(&r.entity),
            ps.join(","),
            if r.detail.is_empty() { "{}" } else { r.detail.as_str() }
        ));
        for p in &r.patients {
            if seen.insert(p.clone()) {
                patients.push(p.clone());
            }
        }
    }
    events.push_str("]}");
    AuditRecord {
        recorded: records.iter().map(|r| r.recorded).max().unwrap_or(0),
        action: BLOCK_ACTION.into(),
        outcome: "success".into(),
        actor: "platform".into(),
        role: "platform".into(),
        organization: String::new(),
        purpose: String::new(),
        entity: format!("{} accesses", records.len()),
        patients,
        detail: events,
    }
}

/// A record for `ctx`'s principal (or the platform itself for command-line work).
pub(crate) fn record(
    ctx: &Ctx,
    action: &str,
    outcome: &str,
    entity: String,
    patients: Vec<String>,
    reason: Option<&str>,
) -> AuditRecord {
    let (actor, role, organization, purpose, glass) = match ctx.principal.as_deref() {
        Some(p) => (
            p.subject.clone(),
            p.role.code().to_string(),
            p.organization.as_deref().map(|o| format!("Organization/{o}")).unwrap_or_default(),
            p.purpose.clone(),
            p.break_glass.clone(),
        ),
        None => ("platform".to_string(), "platform".to_string(), String::new(), "HOPERAT".to_string(), None),
    };
    let mut detail = format!("{{\"request\":{}", json_str(&ctx.request_id));
    for (key, value) in [("source", ctx.source.as_deref()), ("reason", reason), ("breakGlass", glass.as_deref())] {
        if let Some(v) = value {
            detail.push_str(&format!(",\"{key}\":{}", json_str(v)));
        }
    }
    detail.push('}');
    AuditRecord {
        recorded: crate::crud::now_ms(),
        action: action.to_string(),
        outcome: outcome.to_string(),
        actor,
        role,
        organization,
        purpose,
        entity,
        patients,
        detail,
    }
}
