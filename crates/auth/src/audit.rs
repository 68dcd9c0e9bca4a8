//! Sealing, verifying and pruning the audit log: periodic SM2-signed checkpoints over the SM3
//! hash chain (`store::audit`), the verifier behind `hutong audit verify`, and retention
//! (`hutong audit prune`, and daily in `hutong serve`), which removes old entries only up to a
//! signed checkpoint so that what remains still verifies.

use std::sync::Arc;

use crypto::KeyRing;
use crypto::sm2::Sm2VerifyingKey;
use serde_json::json;
use store::audit::checkpoint_message;
use store::audit::{AuditCheckpoint, AuditEntry, Finding, GENESIS_HASH, MIN_RETENTION_DAYS, Verifier, chain_hash};
use store::{AuditRecord, Ctx, ResourceStore, StoreResult};

use crate::{AuthError, AuthResult};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A checkpoint over `(seq, hash)` signed with the ring's SM2 key at `signed_at` (epoch ms).
pub fn sign_checkpoint(keys: &KeyRing, seq: i64, hash: &str, signed_at: i64) -> AuditCheckpoint {
    let signature = crypto::hex(&keys.signing_key().sign(&checkpoint_message(seq, hash, signed_at)));
    AuditCheckpoint { seq, hash: hash.to_string(), signed_at, key_id: keys.signing_key_id(), signature }
}

fn signature_verifies(public: &Sm2VerifyingKey, cp: &AuditCheckpoint) -> bool {
    crypto::unhex(&cp.signature)
        .is_ok_and(|sig| public.verify(&checkpoint_message(cp.seq, &cp.hash, cp.signed_at), &sig).is_ok())
}

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
    let cp = sign_checkpoint(keys, seq, &hash, now_ms());
    store.audit_checkpoint_put(&cp).await?;
    Ok(Some(cp))
}

/// The outcome of a verification.
#[derive(Debug)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: usize,
    pub last_checkpoint: Option<i64>,
    /// Entries `1..=n` were pruned under the retention policy (anchored by a signed checkpoint).
    pub pruned_through: Option<i64>,
    /// The SM2 key ids the checkpoints name, in order of first use, with how many each signed
    /// and whether the key is the current one (`false`: retired or unknown).
    pub signing_keys: Vec<SigningKeyUse>,
    pub findings: Vec<Finding>,
}

/// How many checkpoints name one SM2 key id.
#[derive(Debug, Clone, PartialEq)]
pub struct SigningKeyUse {
    pub key_id: String,
    pub checkpoints: usize,
    pub current: bool,
    /// The ring knows the key (current or in `sm2-retired/`).
    pub known: bool,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Whether `cp`'s signature verifies under the key its `key_id` names among `keys`' current and
/// retired SM2 keys (`Err` says why not).
fn checkpoint_signed(keys: &KeyRing, cp: &AuditCheckpoint) -> Result<(), String> {
    match keys.verifying_key_for(&cp.key_id) {
        Some(public) if signature_verifies(&public, cp) => Ok(()),
        Some(_) => Err("the signature does not verify".into()),
        None => Err(format!(
            "signed with SM2 key '{}', which is neither the current key nor a retired one in the key folder's \
             sm2-retired/ (restore its public key there as <key id>.pub)",
            cp.key_id
        )),
    }
}

/// Verifies the whole log against the chain and the signed checkpoints, each checked with the
/// key its `key_id` names: the ring's current SM2 key or a retired one (`sm2-retired/`), so
/// checkpoints signed before a key rotation still verify. A checkpoint under an unknown key is a
/// [`Finding::BadCheckpoint`] that says so.
pub async fn verify(store: &Arc<dyn ResourceStore>, keys: &KeyRing) -> StoreResult<Report> {
    let checkpoints = store.audit_checkpoints().await?;
    let n = checkpoints.len();
    let current = keys.signing_key_id();
    let mut signing_keys: Vec<SigningKeyUse> = Vec::new();
    for cp in &checkpoints {
        match signing_keys.iter_mut().find(|k| k.key_id == cp.key_id) {
            Some(used) => used.checkpoints += 1,
            None => signing_keys.push(SigningKeyUse {
                key_id: cp.key_id.clone(),
                checkpoints: 1,
                current: cp.key_id == current,
                known: keys.verifying_key_for(&cp.key_id).is_some(),
            }),
        }
    }
    // The verifier judges signatures as valid or not; a checkpoint under an unknown key is
    // reported here with its own reason and left out, which the verifier treats the same way
    // as a bad signature (the checkpoint anchors nothing).
    let mut unknown_key = Vec::new();
    let checkpoints: Vec<AuditCheckpoint> = checkpoints
        .into_iter()
        .filter(|cp| {
            let known = keys.verifying_key_for(&cp.key_id).is_some();
            if let (false, Err(reason)) = (known, checkpoint_signed(keys, cp)) {
                unknown_key.push((cp.seq, reason));
            }
            known
        })
        .collect();
    let mut verifier = Verifier::new(checkpoints, |cp| checkpoint_signed(keys, cp).is_ok());
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
    unknown_key.sort();
    let mut findings: Vec<Finding> =
        unknown_key.into_iter().map(|(seq, reason)| Finding::BadCheckpoint { seq, reason }).collect();
    findings.extend(verifier.findings);
    Ok(Report {
        entries: verifier.entries,
        checkpoints: n,
        last_checkpoint: verifier.last_checkpoint,
        pruned_through: verifier.pruned_through,
        signing_keys,
        findings,
    })
}

/// What [`prune`] removed: entries `from..=through`, anchored by the checkpoint at `through`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    pub from: i64,
    pub through: i64,
    pub entries: u64,
    /// When the anchoring checkpoint was signed (epoch ms).
    pub checkpoint_signed_at: i64,
}

fn days(ms: i64) -> String {
    if ms % DAY_MS == 0 { format!("{} days", ms / DAY_MS) } else { format!("{:.2} days", ms as f64 / DAY_MS as f64) }
}

/// Retention: deletes the audit entries older than `older_than_ms` (at least
/// [`MIN_RETENTION_DAYS`]), as a prefix ending exactly at a checkpoint signed with one of `keys`'
/// SM2 keys (current or retired, by the checkpoint's key id), so
/// the first remaining entry stays anchored and the log still verifies. The checkpoint chosen is
/// the newest one signed before the cutoff whose entry was also recorded before it; its entries
/// were all appended before it was signed, so all are older than the cutoff.
///
/// Before deleting anything it checks that the entries due to go still verify (anchored at the
/// start, chained, ending at the checkpoint): pruning a tampered stretch would destroy the
/// evidence, so that is refused. It then appends an administrative entry (`audit-prune`, by
/// `platform` as `operator`, with the range and count) and prunes in one store transaction.
/// `None` when nothing is old enough.
pub async fn prune(store: &Arc<dyn ResourceStore>, keys: &KeyRing, older_than_ms: i64) -> AuthResult<Option<Pruned>> {
    if older_than_ms < MIN_RETENTION_DAYS * DAY_MS {
        return Err(AuthError::Invalid(format!(
            "an audit retention of {} is below the legal minimum of {MIN_RETENTION_DAYS} days (network logs are kept \
             at least six months, Cybersecurity Law art. 21); nothing was pruned",
            days(older_than_ms)
        )));
    }
    let now = now_ms();
    let cutoff = now - older_than_ms;
    let valid: Vec<AuditCheckpoint> =
        store.audit_checkpoints().await?.into_iter().filter(|cp| checkpoint_signed(keys, cp).is_ok()).collect();
    let Some(first) = store.audit_read(i64::MIN, 1).await?.pop() else { return Ok(None) };
    let refuse = |what: String| {
        AuthError::Invalid(format!(
            "{what}; nothing was pruned (pruning would destroy the evidence): run `hutong audit verify` and investigate"
        ))
    };

    let mut chosen = None;
    for cp in valid.iter().rev().filter(|cp| cp.signed_at <= cutoff) {
        if cp.seq < first.seq {
            break;
        }
        let at = store.audit_read(cp.seq - 1, 1).await?.pop();
        match at {
            Some(entry) if entry.seq == cp.seq && entry.hash == cp.hash => {
                if entry.record.recorded <= cutoff {
                    chosen = Some(cp.clone());
                    break;
                }
            }
            _ => return Err(refuse(format!("the log at the signed checkpoint at entry {} is not as signed", cp.seq))),
        }
    }
    let Some(anchor) = chosen else { return Ok(None) };

    // The stretch due to go: its start anchored, each entry intact and linked, its end signed.
    let head_anchored = if first.seq == 1 {
        first.prev_hash == GENESIS_HASH
    } else {
        valid.iter().any(|cp| cp.seq == first.seq - 1 && cp.hash == first.prev_hash)
    };
    if !head_anchored {
        return Err(refuse(format!(
            "entry {} (the first in the log) is not anchored by the genesis hash or a signed checkpoint",
            first.seq
        )));
    }
    let mut prev: Option<AuditEntry> = None;
    let mut count = 0u64;
    'pages: loop {
        let after = prev.as_ref().map_or(first.seq - 1, |e| e.seq);
        let page = store.audit_read(after, 10_000).await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            let finding = if chain_hash(&entry.prev_hash, entry.seq, &entry.record) != entry.hash {
                Some(Finding::Modified { seq: entry.seq })
            } else {
                match &prev {
                    Some(p) if entry.seq != p.seq + 1 => Some(Finding::Missing { from: p.seq + 1, to: entry.seq - 1 }),
                    Some(p) if entry.prev_hash != p.hash => Some(Finding::OutOfPlace { seq: entry.seq, follows: None }),
                    _ => None,
                }
            };
            if let Some(finding) = finding {
                return Err(refuse(format!(
                    "the entries {}–{} due for pruning do not verify ({finding})",
                    first.seq, anchor.seq
                )));
            }
            count += 1;
            let done = entry.seq >= anchor.seq;
            prev = Some(entry);
            if done {
                break 'pages;
            }
        }
    }
    if prev.as_ref().is_none_or(|e| e.seq != anchor.seq || e.hash != anchor.hash) {
        return Err(refuse(format!("the entries up to the signed checkpoint at entry {} do not match it", anchor.seq)));
    }

    let record = |outcome: &str, detail: serde_json::Value| AuditRecord {
        recorded: now_ms(),
        action: "audit-prune".into(),
        outcome: outcome.into(),
        actor: "platform".into(),
        role: "operator".into(),
        organization: String::new(),
        purpose: "HOPERAT".into(),
        entity: "audit-log".into(),
        patients: Vec::new(),
        detail: detail.to_string(),
    };
    let detail = json!({
        "from": first.seq,
        "through": anchor.seq,
        "entries": count,
        "retention_days": older_than_ms / DAY_MS,
        "checkpoint_signed_at": anchor.signed_at,
    });
    store.commit_audited(&Ctx::system(), Vec::new(), vec![record("success", detail.clone())]).await?;
    match store.audit_prune(anchor.seq).await {
        Ok(entries) => {
            Ok(Some(Pruned { from: first.seq, through: anchor.seq, entries, checkpoint_signed_at: anchor.signed_at }))
        }
        Err(e) => {
            // The intent is on record; say that it did not happen (best effort: the store failed).
            let _ = store.commit_audited(&Ctx::system(), Vec::new(), vec![record("failure", detail)]).await;
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETENTION: i64 = MIN_RETENTION_DAYS * DAY_MS;

    fn record(recorded: i64, patients: &[&str]) -> AuditRecord {
        AuditRecord {
            recorded,
            action: "read".into(),
            outcome: "success".into(),
            actor: "user/u1".into(),
            role: "doctor".into(),
            purpose: "TREAT".into(),
            entity: "Observation/o1".into(),
            patients: patients.iter().map(|p| p.to_string()).collect(),
            detail: "{}".into(),
            ..AuditRecord::default()
        }
    }

    async fn fixture() -> (Arc<dyn ResourceStore>, KeyRing, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ResourceStore> = Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap());
        (store, KeyRing::ephemeral(), dir)
    }

    async fn append(store: &Arc<dyn ResourceStore>, records: Vec<AuditRecord>) {
        store.commit_audited(&Ctx::system(), Vec::new(), records).await.unwrap();
    }

    /// Signs a checkpoint at `seq` as of `signed_at`.
    async fn seal(store: &Arc<dyn ResourceStore>, keys: &KeyRing, seq: i64, signed_at: i64) {
        let entry = store.audit_read(seq - 1, 1).await.unwrap().pop().unwrap();
        store.audit_checkpoint_put(&sign_checkpoint(keys, seq, &entry.hash, signed_at)).await.unwrap();
    }

    fn seqs(entries: &[AuditEntry]) -> Vec<i64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn retention_below_the_legal_minimum_is_refused() {
        let (store, keys, _dir) = fixture().await;
        let old = now_ms() - 400 * DAY_MS;
        append(&store, vec![record(old, &["p1"]), record(old, &[])]).await;
        seal(&store, &keys, 1, old).await;
        let refused = prune(&store, &keys, 179 * DAY_MS).await.unwrap_err().to_string();
        assert!(refused.contains("an audit retention of 179 days is below the legal minimum of 180 days"), "{refused}");
        assert_eq!(store.audit_head().await.unwrap().0, 2, "nothing pruned, nothing recorded");
        assert_eq!(prune(&store, &keys, RETENTION).await.unwrap().map(|p| p.through), Some(1), "180 days is allowed");
    }

    #[tokio::test]
    async fn prune_cuts_at_the_newest_old_checkpoint_and_the_rest_verifies() {
        let (store, keys, _dir) = fixture().await;
        let now = now_ms();
        let old = now - 400 * DAY_MS;
        append(&store, vec![record(old, &[]), record(old, &["p1"]), record(old, &[]), record(old + 1, &["p1", "p2"])])
            .await;
        seal(&store, &keys, 2, old).await;
        seal(&store, &keys, 4, now - 300 * DAY_MS).await;
        append(&store, vec![record(old + 2, &["p1"]), record(old + 3, &[])]).await;
        // Signed late (say the server was down): its entries are old, but it is not.
        seal(&store, &keys, 6, now - 10 * DAY_MS).await;
        append(&store, vec![record(now, &["p1"])]).await;
        // A forged checkpoint is no anchor.
        let mut forged = sign_checkpoint(&keys, 7, &store.audit_head().await.unwrap().1, old);
        forged.signature = forged.signature.replace(|c: char| c != '0', "0");
        store.audit_checkpoint_put(&forged).await.unwrap();

        let pruned = prune(&store, &keys, RETENTION).await.unwrap().unwrap();
        assert_eq!((pruned.from, pruned.through, pruned.entries), (1, 4, 4));
        assert_eq!(pruned.checkpoint_signed_at, now - 300 * DAY_MS);
        let left = store.audit_read(0, 100).await.unwrap();
        assert_eq!(seqs(&left), [5, 6, 7, 8]);
        let note = &left[3].record;
        assert_eq!(
            (note.action.as_str(), note.actor.as_str(), note.role.as_str()),
            ("audit-prune", "platform", "operator")
        );
        let detail: serde_json::Value = serde_json::from_str(&note.detail).unwrap();
        assert_eq!(
            (detail["from"].as_i64(), detail["through"].as_i64(), detail["entries"].as_i64()),
            (Some(1), Some(4), Some(4))
        );
        assert_eq!(
            store.audit_checkpoints().await.unwrap().iter().map(|c| c.seq).collect::<Vec<_>>(),
            [4, 6, 7],
            "checkpoints over pruned entries only are gone; the anchor stays"
        );
        // Who looked at my record: the remaining entries, newest first.
        assert_eq!(seqs(&store.audit_for_patient("p1", 10).await.unwrap()), [7, 5]);
        assert!(store.audit_for_patient("p2", 10).await.unwrap().is_empty());

        let report = verify(&store, &keys).await.unwrap();
        assert_eq!(report.pruned_through, Some(4));
        assert_eq!(
            report.findings,
            [Finding::BadCheckpoint { seq: 7, reason: "the signature does not verify".into() }]
        );
        assert_eq!(prune(&store, &keys, RETENTION).await.unwrap(), None, "nothing more is old enough");
        assert_eq!(store.audit_head().await.unwrap().0, 8, "and nothing is recorded then");
    }

    #[tokio::test]
    async fn checkpoints_of_a_retired_key_still_anchor_and_verify() {
        let (store, _, dir) = fixture().await;
        let folder = dir.path().join("keys");
        let before = KeyRing::load_or_create_with_env(&folder, |_| None).unwrap();
        let old = now_ms() - 400 * DAY_MS;
        append(&store, (0..4).map(|_| record(old, &[])).collect()).await;
        seal(&store, &before, 2, old).await;
        KeyRing::rotate_sm2_in(&folder).unwrap();
        let after = KeyRing::load_with_env(&folder, |_| None).unwrap();
        seal(&store, &after, 4, now_ms()).await;

        let report = verify(&store, &after).await.unwrap();
        assert!(report.is_clean(), "{:?}", report.findings);
        let uses: Vec<_> = report.signing_keys.iter().map(|k| (k.key_id.clone(), k.current, k.known)).collect();
        assert_eq!(uses, [(before.signing_key_id(), false, true), (after.signing_key_id(), true, true)]);
        let pruned = prune(&store, &after, RETENTION).await.unwrap().unwrap();
        assert_eq!(pruned.through, 2, "a checkpoint of the retired key anchors the cut");

        // A ring without the retired key names the checkpoint's key as unknown.
        let report = verify(&store, &KeyRing::ephemeral()).await.unwrap();
        let unknown = format!("signed with SM2 key '{}', which is neither", after.signing_key_id());
        assert!(
            report
                .findings
                .iter()
                .any(|f| matches!(f, Finding::BadCheckpoint { seq: 4, reason } if reason.starts_with(&unknown))),
            "{:?}",
            report.findings
        );
    }

    #[tokio::test]
    async fn prune_refuses_to_destroy_evidence() {
        let (store, keys, _dir) = fixture().await;
        let old = now_ms() - 400 * DAY_MS;
        append(&store, (0..6).map(|_| record(old, &[])).collect()).await;
        seal(&store, &keys, 5, old).await;
        // The head cut at entry 2, where no checkpoint is: the log already fails verification,
        // and a prune through 5 would erase the trace of it.
        assert_eq!(store.audit_prune(2).await.unwrap(), 2);
        let refused = prune(&store, &keys, RETENTION).await.unwrap_err().to_string();
        assert!(refused.contains("entry 3 (the first in the log) is not anchored"), "{refused}");
        assert!(refused.contains("nothing was pruned"), "{refused}");
        assert_eq!(seqs(&store.audit_read(0, 100).await.unwrap()), [3, 4, 5, 6]);
    }
}
