//! Sealing and verifying the audit log: periodic SM2-signed checkpoints over the SM3 hash chain
//! (`store::audit`), and the verifier behind `hutong audit verify`.

use std::sync::Arc;

use crypto::KeyRing;
use crypto::sm2::Sm2VerifyingKey;
use store::audit::{AuditCheckpoint, Finding, Verifier, checkpoint_message};
use store::{ResourceStore, StoreResult};

/// Signs the current head of the log if it moved since the last checkpoint; returns the new
/// checkpoint, if any.
pub async fn checkpoint(store: &Arc<dyn ResourceStore>, keys: &KeyRing) -> StoreResult<Option<AuditCheckpoint>> {
    let (seq, hash) = store.audit_head().await?;
    if seq == 0 {
        return Ok(None);
    }
    let last = store.audit_checkpoints().await?.last().map_or(0, |c| c.seq);
    if last >= seq {
        return Ok(None);
    }
    let signed_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let signature = crypto::hex(&keys.signing_key().sign(&checkpoint_message(seq, &hash, signed_at)));
    let cp = AuditCheckpoint { seq, hash, signed_at, key_id: keys.signing_key_id(), signature };
    store.audit_checkpoint_put(&cp).await?;
    Ok(Some(cp))
}

/// The outcome of a verification.
#[derive(Debug)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: usize,
    pub last_checkpoint: Option<i64>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Verifies the whole log against the chain and the checkpoints signed by `public` (the
/// platform's SM2 key; `<data>/keys/sm2.pub`).
pub async fn verify(store: &Arc<dyn ResourceStore>, public: &Sm2VerifyingKey) -> StoreResult<Report> {
    let checkpoints = store.audit_checkpoints().await?;
    let n = checkpoints.len();
    let mut verifier = Verifier::new(checkpoints, |cp| {
        crypto::unhex(&cp.signature)
            .is_ok_and(|sig| public.verify(&checkpoint_message(cp.seq, &cp.hash, cp.signed_at), &sig).is_ok())
    });
    let mut after = i64::MIN;
    loop {
        let page = store.audit_read(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for entry in &page {
            verifier.push(entry);
        }
    }
    verifier.finish();
    Ok(Report {
        entries: verifier.entries,
        checkpoints: n,
        last_checkpoint: verifier.last_checkpoint,
        findings: verifier.findings,
    })
}
