//! The tamper-evident audit log (DESIGN.md §4): records, the SM3 hash chain that links them, and
//! the verifier that finds modified, deleted, inserted and reordered entries.
//!
//! Each entry `n` stores `prev_hash` (the hash of entry `n - 1`, or 64 zeros for the first) and
//! `hash = SM3(prev_hash ‖ canonical(n, record))`, where the canonical form is the JSON array of
//! the sequence number and every field, so a change of any field, of the position or of the
//! order breaks the chain exactly where it happened. The store appends entries (assigning the
//! sequence number and computing the hash under its single-writer discipline); periodic
//! checkpoints sign `(seq, hash)` with the platform's SM2 key, so even someone who can rewrite
//! the whole table cannot recompute a chain that matches a signature they cannot make.
//!
//! Retention: old entries are pruned only as a prefix that ends exactly at a signed checkpoint,
//! so the first remaining entry's `prev_hash` is vouched for by that checkpoint's signature. A
//! log that starts after entry 1 verifies clean only with such an anchor, signed at least
//! [`MIN_RETENTION_DAYS`] before the verification: cutting the head at a recent checkpoint (to
//! hide a recent access) is reported like any other deletion.

use sm3::{Digest, Sm3};

/// The hash that precedes the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The shortest retention the law allows: network logs are kept at least six months
/// (Cybersecurity Law of the PRC, art. 21), counted as 180 days.
pub const MIN_RETENTION_DAYS: i64 = 180;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What happened, as the caller describes it; the store assigns position and hash.
/// Shaped after FHIR AuditEvent: who (`actor`, `role`, `organization`), what (`action`,
/// `entity`), when (`recorded`), why (`purpose`), outcome, and where (`detail.source`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditRecord {
    /// Epoch milliseconds, UTC.
    pub recorded: i64,
    /// `login`, `token`, `read`, `vread`, `search`, `history`, `create`, `update`, `delete`,
    /// `transaction`, `batch`, `export`, `everything`, `admin`, `consent`…
    pub action: String,
    /// `success`, `denied`, `failure` (FHIR AuditEvent outcome 0 / 4 / 8).
    pub outcome: String,
    /// The principal: `user/{id}`, `client/{id}`, or `anonymous`.
    pub actor: String,
    pub role: String,
    /// The acting organization (`Organization/{id}`), empty if none.
    pub organization: String,
    /// Purpose of use (HL7 v3 PurposeOfUse code: TREAT, ETREAT, PUBHLTH, HPAYMT, HOPERAT, PATRQT…).
    pub purpose: String,
    /// What was acted on: `Patient/123`, `Observation?code=…`, `token`, `user/…`.
    pub entity: String,
    /// Ids of the Patients whose records were touched (for "who looked at my record").
    pub patients: Vec<String>,
    /// JSON object text with the rest: reason, break-glass, request id, source address, counts.
    pub detail: String,
}

/// A stored entry as read back (possibly tampered with).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// A signed statement that the chain up to `seq` ends in `hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditCheckpoint {
    pub seq: i64,
    pub hash: String,
    pub signed_at: i64,
    /// Which signing key (its identifier in the key ring).
    pub key_id: String,
    /// Hex signature over [`checkpoint_message`].
    pub signature: String,
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: i64, hash: &str, signed_at: i64) -> Vec<u8> {
    format!("hutong-audit-checkpoint|{seq}|{hash}|{signed_at}").into_bytes()
}

fn canonical(seq: i64, r: &AuditRecord) -> String {
    serde_json::json!([
        seq,
        r.recorded,
        r.action,
        r.outcome,
        r.actor,
        r.role,
        r.organization,
        r.purpose,
        r.entity,
        r.patients,
        r.detail
    ])
    .to_string()
}

/// `SM3(prev_hash ‖ canonical(seq, record))`, lower-case hex.
pub fn chain_hash(prev_hash: &str, seq: i64, record: &AuditRecord) -> String {
    let mut hasher = Sm3::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical(seq, record).as_bytes());
    let digest = hasher.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Links `records` after the entry `(last_seq, last_hash)`: the entries to store.
pub fn link(last_seq: i64, last_hash: &str, records: Vec<AuditRecord>) -> Vec<AuditEntry> {
    let mut prev = last_hash.to_string();
    let mut seq = last_seq;
    records
        .into_iter()
        .map(|record| {
            seq += 1;
            let hash = chain_hash(&prev, seq, &record);
            AuditEntry { seq, record, prev_hash: std::mem::replace(&mut prev, hash.clone()), hash }
        })
        .collect()
}

/// One finding of [`Verifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The entry's stored hash does not match its content: a field was changed.
    Modified { seq: i64 },
    /// Sequence numbers `from..=to` are missing: entries were deleted.
    Missing { from: i64, to: i64 },
    /// The entry is intact but does not follow its predecessor: it was inserted, or entries were
    /// reordered. `follows` names the entry whose hash it links to, if that entry exists.
    OutOfPlace { seq: i64, follows: Option<i64> },
    /// A checkpoint's signature does not verify, or the chain at its position differs.
    BadCheckpoint { seq: i64, reason: String },
    /// The log starts after entry 1 and entries `1..=through` are gone without a lawful prune
    /// behind it: no validly signed checkpoint anchors the first remaining entry, or the
    /// anchor was signed less than [`MIN_RETENTION_DAYS`] ago. `reason` says which.
    HeadTruncated { through: i64, reason: String },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Modified { seq } => write!(f, "entry {seq}: content does not match its hash (modified)"),
            Finding::Missing { from, to } if from == to => write!(f, "entry {from}: missing (deleted)"),
            Finding::Missing { from, to } => write!(f, "entries {from}–{to}: missing (deleted)"),
            Finding::OutOfPlace { seq, follows: Some(p) } => write!(
                f,
                "entry {seq}: does not follow entry {} but links to entry {p} (inserted or reordered)",
                seq - 1
            ),
            Finding::OutOfPlace { seq, follows: None } => write!(
                f,
                "entry {seq}: does not follow entry {} and links to no stored entry (inserted or reordered)",
                seq - 1
            ),
            Finding::BadCheckpoint { seq, reason } => write!(f, "checkpoint at entry {seq}: {reason}"),
            Finding::HeadTruncated { through: 1, reason } => write!(f, "entry 1: missing (head truncated {reason})"),
            Finding::HeadTruncated { through, reason } => {
                write!(f, "entries 1–{through}: missing (head truncated {reason})")
            }
        }
    }
}

/// Streams entries in ascending `seq` and collects findings. Memory: 16 bytes per entry (a hash
/// prefix, to name where an out-of-place entry belongs).
pub struct Verifier {
    prev: Option<(i64, String)>,
    by_hash: std::collections::HashMap<u64, i64>,
    pending: Vec<(i64, String)>,
    /// Checkpoints whose signature verified, ascending by `seq`, not yet reached.
    checkpoints: std::collections::VecDeque<AuditCheckpoint>,
    /// A checkpoint that anchors a pruned head must be signed at or before this time (epoch
    /// ms): [`MIN_RETENTION_DAYS`] before now.
    anchor_signed_by: i64,
    pub findings: Vec<Finding>,
    pub entries: u64,
    /// The last entry covered by a valid checkpoint; entries after it are protected by the
    /// hash chain only.
    pub last_checkpoint: Option<i64>,
    /// Entries `1..=n` were pruned under the retention policy: the first entry links to a
    /// validly signed checkpoint at `n` that is old enough.
    pub pruned_through: Option<i64>,
}

fn key(hash: &str) -> u64 {
    u64::from_str_radix(hash.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

impl Verifier {
    /// `verify_signature` checks a checkpoint's SM2 signature over [`checkpoint_message`].
    pub fn new(mut checkpoints: Vec<AuditCheckpoint>, verify_signature: impl Fn(&AuditCheckpoint) -> bool) -> Self {
        checkpoints.sort_by_key(|c| c.seq);
        let mut findings = Vec::new();
        let mut valid = std::collections::VecDeque::new();
        for cp in checkpoints {
            if verify_signature(&cp) {
                valid.push_back(cp);
            } else {
                findings.push(Finding::BadCheckpoint { seq: cp.seq, reason: "the signature does not verify".into() });
            }
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        Verifier {
            prev: None,
            by_hash: Default::default(),
            pending: Vec::new(),
            checkpoints: valid,
            anchor_signed_by: now - MIN_RETENTION_DAYS * DAY_MS,
            findings,
            entries: 0,
            last_checkpoint: None,
            pruned_through: None,
        }
    }

    /// Judges the age of a pruned head's anchor as of `now_ms` instead of the system clock.
    pub fn as_of(mut self, now_ms: i64) -> Self {
        self.anchor_signed_by = now_ms - MIN_RETENTION_DAYS * DAY_MS;
        self
    }

    /// The first entry of a log whose head was pruned (`first.seq > 1`): consumes the
    /// checkpoints before it, which cover pruned entries and so prove nothing by themselves,
    /// and decides whether the cut is anchored. Runs once per verification.
    fn pruned_head(&mut self, first: &AuditEntry) {
        let cut = first.seq - 1;
        let mut anchor: Option<AuditCheckpoint> = None;
        let mut recent: Option<AuditCheckpoint> = None;
        while self.checkpoints.front().is_some_and(|cp| cp.seq <= cut) {
            let cp = self.checkpoints.pop_front().expect("front exists");
            if cp.signed_at <= self.anchor_signed_by {
                anchor = Some(cp);
            } else {
                recent = Some(cp);
            }
        }
        match anchor {
            // The normal case: the prefix ends at the checkpoint the first entry links to.
            Some(cp) if cp.seq == cut => {
                self.pruned_through = Some(cut);
                self.last_checkpoint = Some(cut);
                if cp.hash != first.prev_hash {
                    self.pending.push((first.seq, first.prev_hash.clone()));
                    self.findings.push(Finding::OutOfPlace { seq: first.seq, follows: None });
                }
            }
            // Pruned through an older checkpoint, and the entries after it deleted since.
            Some(cp) => {
                self.pruned_through = Some(cp.seq);
                self.last_checkpoint = Some(cp.seq);
                self.findings.push(Finding::Missing { from: cp.seq + 1, to: cut });
            }
            None => {
                let reason = match recent {
                    Some(cp) if cp.seq == cut => format!(
                        "at the checkpoint signed {} days ago, less than the {MIN_RETENTION_DAYS}-day retention minimum",
                        (self.anchor_signed_by + MIN_RETENTION_DAYS * DAY_MS - cp.signed_at).max(0) / DAY_MS
                    ),
                    _ => format!("without an anchor: no validly signed checkpoint at entry {cut}"),
                };
                self.findings.push(Finding::HeadTruncated { through: cut, reason });
            }
        }
    }

    /// Feeds the next entry (ascending `seq`).
    pub fn push(&mut self, entry: &AuditEntry) {
        self.entries += 1;
        if chain_hash(&entry.prev_hash, entry.seq, &entry.record) != entry.hash {
            self.findings.push(Finding::Modified { seq: entry.seq });
        }
        if self.prev.is_none() && entry.seq > 1 {
            self.pruned_head(entry);
        }
        let (expected_seq, expected_prev) = match &self.prev {
            Some((s, h)) => (s + 1, h.as_str()),
            // The first entry: at 1 it follows the genesis hash; after a pruned head,
            // `pruned_head` has judged its link.
            None => (entry.seq.max(1), if entry.seq > 1 { entry.prev_hash.as_str() } else { GENESIS_HASH }),
        };
        if entry.seq > expected_seq {
            self.findings.push(Finding::Missing { from: expected_seq, to: entry.seq - 1 });
        } else if entry.prev_hash != expected_prev {
            let follows = if entry.prev_hash == GENESIS_HASH {
                Some(0)
            } else {
                self.by_hash.get(&key(&entry.prev_hash)).copied()
            };
            if follows.is_none() {
                self.pending.push((entry.seq, entry.prev_hash.clone()));
            }
            self.findings.push(Finding::OutOfPlace { seq: entry.seq, follows });
        }
        while let Some(cp) = self.checkpoints.front() {
            if cp.seq > entry.seq {
                break;
            }
            let cp = self.checkpoints.pop_front().expect("front exists");
            if cp.seq < entry.seq {
                self.findings.push(Finding::BadCheckpoint {
                    seq: cp.seq,
                    reason: "the signed entry is not in the log (deleted)".into(),
                });
            } else if cp.hash != entry.hash {
                self.findings.push(Finding::BadCheckpoint {
                    seq: cp.seq,
                    reason: "the signed hash differs from the stored chain (entries up to here were rewritten)".into(),
                });
            } else {
                self.last_checkpoint = Some(cp.seq);
            }
        }
        self.by_hash.insert(key(&entry.hash), entry.seq);
        self.prev = Some((entry.seq, entry.hash.clone()));
    }

    /// After the last entry: names the predecessor of out-of-place entries whose true
    /// predecessor comes later in the table (a reordering), and reports checkpoints beyond the
    /// end of the log (entries deleted from the end).
    pub fn finish(&mut self) {
        for (seq, prev_hash) in std::mem::take(&mut self.pending) {
            let found = self.by_hash.get(&key(&prev_hash)).copied();
            for finding in &mut self.findings {
                if let Finding::OutOfPlace { seq: s, follows } = finding
                    && *s == seq
                {
                    *follows = found;
                }
            }
        }
        for cp in std::mem::take(&mut self.checkpoints) {
            self.findings.push(Finding::BadCheckpoint {
                seq: cp.seq,
                reason: "the signed entry is not in the log (deleted from the end)".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64) -> AuditRecord {
        AuditRecord {
            recorded: 1_700_000_000_000 + i,
            action: "read".into(),
            outcome: "success".into(),
            actor: "user/u1".into(),
            role: "doctor".into(),
            organization: "Organization/h1".into(),
            purpose: "TREAT".into(),
            entity: format!("Patient/p{i}"),
            patients: vec![format!("p{i}")],
            detail: "{}".into(),
        }
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        link(0, GENESIS_HASH, (1..=n).map(record).collect())
    }

    fn verify(entries: &[AuditEntry]) -> Vec<Finding> {
        let mut v = Verifier::new(Vec::new(), |_| true);
        for e in entries {
            v.push(e);
        }
        v.finish();
        v.findings
    }

    #[test]
    fn clean_chain_verifies() {
        let entries = chain(10);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert!(verify(&entries).is_empty());
    }

    #[test]
    fn modified_deleted_inserted_reordered_are_named() {
        let mut modified = chain(5);
        modified[2].record.actor = "user/intruder".into();
        assert_eq!(verify(&modified), vec![Finding::Modified { seq: 3 }]);

        let mut deleted = chain(6);
        deleted.remove(2);
        deleted.remove(2);
        assert_eq!(verify(&deleted), vec![Finding::Missing { from: 3, to: 4 }]);

        // An attacker inserts a self-consistent entry after entry 2 and renumbers the rest.
        let clean = chain(4);
        let mut inserted = clean[..2].to_vec();
        inserted.extend(link(2, &clean[1].hash, vec![record(99)]));
        for e in &clean[2..] {
            let mut e = e.clone();
            e.seq += 1;
            inserted.push(e);
        }
        let findings = verify(&inserted);
        assert!(findings.contains(&Finding::Modified { seq: 4 }), "{findings:?}");
        assert!(findings.contains(&Finding::OutOfPlace { seq: 4, follows: Some(2) }), "{findings:?}");

        // Two entries swapped (their positions exchanged).
        let clean = chain(5);
        let mut swapped = clean.clone();
        swapped.swap(1, 2);
        swapped[1].seq = 2;
        swapped[2].seq = 3;
        let findings = verify(&swapped);
        assert!(findings.contains(&Finding::Modified { seq: 2 }), "{findings:?}");
        assert!(findings.contains(&Finding::Modified { seq: 3 }), "{findings:?}");
    }

    #[test]
    fn checkpoints_catch_a_recomputed_chain_and_truncation() {
        let entries = chain(6);
        let cp = |seq: i64, hash: &str| AuditCheckpoint {
            seq,
            hash: hash.to_string(),
            signed_at: 0,
            key_id: "k1".into(),
            signature: "ok".into(),
        };
        // A rewritten chain (entry 2 changed and everything re-hashed) is self-consistent, but
        // the checkpoint signed before the rewrite no longer matches.
        let mut records: Vec<AuditRecord> = entries.iter().map(|e| e.record.clone()).collect();
        records[1].actor = "user/intruder".into();
        let rewritten = link(0, GENESIS_HASH, records);
        let mut v = Verifier::new(vec![cp(4, &entries[3].hash)], |c| c.signature == "ok");
        rewritten.iter().for_each(|e| v.push(e));
        v.finish();
        assert!(matches!(v.findings.as_slice(), [Finding::BadCheckpoint { seq: 4, .. }]), "{:?}", v.findings);

        // Deleting the tail is caught by a checkpoint past the new end.
        let mut v = Verifier::new(vec![cp(6, &entries[5].hash)], |c| c.signature == "ok");
        entries[..4].iter().for_each(|e| v.push(e));
        v.finish();
        assert!(matches!(v.findings.as_slice(), [Finding::BadCheckpoint { seq: 6, .. }]), "{:?}", v.findings);

        // A forged signature is reported; a good one covers the chain.
        let mut v = Verifier::new(
            vec![cp(2, &entries[1].hash), AuditCheckpoint { signature: "forged".into(), ..cp(3, &entries[2].hash) }],
            |c| c.signature == "ok",
        );
        entries.iter().for_each(|e| v.push(e));
        v.finish();
        assert_eq!(v.last_checkpoint, Some(2));
        assert!(matches!(v.findings.as_slice(), [Finding::BadCheckpoint { seq: 3, .. }]), "{:?}", v.findings);
    }

    #[test]
    fn a_pruned_head_needs_an_old_signed_anchor() {
        const NOW: i64 = 1_800_000_000_000;
        let entries = chain(10);
        let cp = |seq: usize, signed_at: i64| AuditCheckpoint {
            seq: seq as i64,
            hash: entries[seq - 1].hash.clone(),
            signed_at,
            key_id: "k1".into(),
            signature: "ok".into(),
        };
        let old = NOW - 200 * DAY_MS;
        let run = |checkpoints: Vec<AuditCheckpoint>, from: usize| {
            let mut v = Verifier::new(checkpoints, |c| c.signature == "ok").as_of(NOW);
            entries[from - 1..].iter().for_each(|e| v.push(e));
            v.finish();
            v
        };
        let truncated = |v: &Verifier| match v.findings.as_slice() {
            [Finding::HeadTruncated { through: 4, reason }] => reason.clone(),
            other => panic!("{other:?}"),
        };

        // Pruned through the checkpoint at 4: clean, and older checkpoints are not findings.
        let v = run(vec![cp(2, old), cp(4, old), cp(7, NOW)], 5);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!((v.pruned_through, v.last_checkpoint, v.entries), (Some(4), Some(7), 6));

        // Entry 5 deleted after the prune: only entry 5 is missing.
        let v = run(vec![cp(4, old)], 6);
        assert_eq!(v.findings, [Finding::Missing { from: 5, to: 5 }]);
        assert_eq!(v.pruned_through, Some(4));

        // The anchoring checkpoint deleted: with no older one, entries 1–4 are unaccounted for.
        let v = run(vec![cp(7, NOW)], 5);
        assert_eq!(truncated(&v), "without an anchor: no validly signed checkpoint at entry 4");
        assert_eq!(
            v.findings[0].to_string(),
            "entries 1–4: missing (head truncated without an anchor: no validly signed checkpoint at entry 4)"
        );
        assert_eq!(v.pruned_through, None);
        // …with an older one left behind, only the entries after it are.
        let v = run(vec![cp(2, old)], 5);
        assert_eq!(v.findings, [Finding::Missing { from: 3, to: 4 }]);

        // A forged anchor is no anchor (and is reported itself).
        let forged = AuditCheckpoint { signature: "forged".into(), ..cp(4, old) };
        let v = run(vec![forged], 5);
        assert!(
            matches!(
                v.findings.as_slice(),
                [Finding::BadCheckpoint { seq: 4, .. }, Finding::HeadTruncated { through: 4, .. }]
            ),
            "{:?}",
            v.findings
        );

        // Cut at a checkpoint signed 10 days ago: inside the legal retention, so not a prune.
        let v = run(vec![cp(4, NOW - 10 * DAY_MS)], 5);
        assert_eq!(truncated(&v), "at the checkpoint signed 10 days ago, less than the 180-day retention minimum");

        // A first entry that does not link to its anchor.
        let mut relinked = entries.clone();
        relinked[4].prev_hash = entries[1].hash.clone();
        let mut v = Verifier::new(vec![cp(4, old)], |_| true).as_of(NOW);
        relinked[4..].iter().for_each(|e| v.push(e));
        v.finish();
        assert_eq!(v.findings, [Finding::Modified { seq: 5 }, Finding::OutOfPlace { seq: 5, follows: None }]);

        // A log that starts at entry 1 is judged as before.
        let v = run(vec![cp(4, NOW)], 1);
        assert!(v.findings.is_empty() && v.pruned_through.is_none(), "{:?}", v.findings);
    }
}
