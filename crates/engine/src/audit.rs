//! Appending audit records for accesses that write nothing (reads, searches, denials) with
//! group commit: callers hand a record to one background task, which appends everything queued
//! in one transaction and then answers every caller. A request is answered only after its audit
//! record is durable, so no access goes unrecorded, while the cost per record stays a fraction
//! of a commit. Writes do not come here: their record commits in the write's own transaction.

use std::sync::{Arc, OnceLock};

use serde_json::json;
use store::{AuditRecord, Ctx, ResourceStore, StoreResult};
use tokio::sync::{mpsc, oneshot};

type Job = (AuditRecord, oneshot::Sender<StoreResult<()>>);

/// Most records appended in one transaction.
const BATCH: usize = 1024;

pub(crate) struct AuditSink {
    store: Arc<dyn ResourceStore>,
    sender: OnceLock<mpsc::Sender<Job>>,
}

impl AuditSink {
    pub(crate) fn new(store: Arc<dyn ResourceStore>) -> Self {
        AuditSink { store, sender: OnceLock::new() }
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.sender.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Job>(8 * BATCH);
            let store = self.store.clone();
            tokio::spawn(async move {
                let mut jobs: Vec<Job> = Vec::with_capacity(BATCH);
                while rx.recv_many(&mut jobs, BATCH).await > 0 {
                    let (records, waiters): (Vec<_>, Vec<_>) = jobs.drain(..).unzip();
                    let result = store.commit_audited(&Ctx::system(), Vec::new(), records).await;
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
        let (tx, rx) = oneshot::channel();
        self.sender()
            .send((record, tx))
            .await
            .map_err(|_| store::StoreError::Unavailable("the audit log writer has stopped".into()))?;
        rx.await.map_err(|_| store::StoreError::Unavailable("the audit log writer has stopped".into()))?
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
    let mut detail = json!({"request": ctx.request_id});
    if let Some(source) = &ctx.source {
        detail["source"] = json!(source);
    }
    if let Some(reason) = reason {
        detail["reason"] = json!(reason);
    }
    if let Some(glass) = glass {
        detail["breakGlass"] = json!(glass);
    }
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
        detail: detail.to_string(),
    }
}
