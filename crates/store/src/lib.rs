//! The storage contract. A store persists versioned FHIR resources with their search-index
//! entries and outbox events, atomically, and answers reads, history and parsed searches.
//! It knows no FHIR behaviour beyond that: conditional operations, transactions' reference
//! resolution, validation and index extraction happen above it (crate `engine`), once for all
//! backends. Backends: `store-sqlite` (embedded default) and `store-postgres`.
//!
//! [`contract`] holds the test suite every backend must pass.

pub mod audit;
pub mod contract;

pub use audit::{AuditCheckpoint, AuditEntry, AuditRecord};

use async_trait::async_trait;
use fhir::IndexEntry;
use fhir::search::SearchQuery;

/// The request context every store call takes first, so the caller and purpose of a storage
/// access can never be forgotten. The security layer fills in the principal.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// Correlates log lines and audit records with the HTTP request.
    pub request_id: String,
    /// Who is asking. `None` only for the platform's own work started from its command line
    /// (import, demo data, benchmarks), never for a network request: the API always sets it.
    pub principal: Option<std::sync::Arc<access::Principal>>,
    /// The network address the request came from (for the audit trail).
    pub source: Option<String>,
}

impl Ctx {
    pub fn system() -> Self {
        Ctx { request_id: "system".to_string(), principal: None, source: None }
    }

    /// A request context for an authenticated principal.
    pub fn for_principal(request_id: String, principal: access::Principal, source: Option<String>) -> Self {
        Ctx { request_id, principal: Some(std::sync::Arc::new(principal)), source }
    }

    /// [`Ctx::for_principal`] sharing an existing principal.
    pub fn for_shared(
        request_id: String,
        principal: std::sync::Arc<access::Principal>,
        source: Option<String>,
    ) -> Self {
        Ctx { request_id, principal: Some(principal), source }
    }

    /// A cheap process-unique request id (no system call, unlike a random UUID).
    pub fn next_request_id() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let boot = BOOT.get_or_init(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
        });
        format!("{boot:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    /// Version number, 1-based; `meta.versionId` is its decimal string.
    pub version: i64,
    /// Epoch milliseconds, UTC; `meta.lastUpdated`.
    pub last_updated: i64,
    /// True for the tombstone version written by a delete; `body` is then `None`.
    pub deleted: bool,
    /// The resource JSON exactly as stored (with `id` and `meta` set by the engine).
    pub body: Option<String>,
    /// The interaction that produced this version (for history bundles' `request.method`).
    pub method: WriteMethod,
    /// The first Patient-compartment id of this version (empty for shared data): whose record
    /// it is, for policy decisions and the audit trail without parsing the JSON.
    pub patient_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Create,
    Update,
    Delete,
}

impl WriteMethod {
    pub fn code(self) -> &'static str {
        match self {
            WriteMethod::Create => "create",
            WriteMethod::Update => "update",
            WriteMethod::Delete => "delete",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "create" => WriteMethod::Create,
            "update" => WriteMethod::Update,
            "delete" => WriteMethod::Delete,
            _ => return None,
        })
    }
}

/// One version to write. The engine assigns `version`: the store commits it only if the
/// current version is exactly `version - 1` (0 meaning the resource does not exist yet),
/// otherwise the whole commit fails with [`StoreError::VersionConflict`]. This one rule gives
/// If-Match, optimistic concurrency and create-once semantics on every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOp {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub method: WriteMethod,
    /// The JSON to store; `None` for a delete.
    pub body: Option<String>,
    /// Search-index entries of this version (empty for a delete).
    pub index: Vec<IndexEntry>,
    /// Ids of the Patients whose compartment holds this resource. The first is the
    /// partitioning key (DESIGN.md §3); a Patient is in its own compartment.
    pub compartments: Vec<String>,
    /// `body` as parsed JSON, when the caller has it: checks before the commit (authorization,
    /// data quality) read it instead of parsing `body` again. Not stored.
    pub parsed: Option<std::sync::Arc<serde_json::Value>>,
}

/// An outbox event: one per committed version, written in the same database transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Strictly increasing position in the outbox.
    pub seq: i64,
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub method: WriteMethod,
    pub last_updated: i64,
}

/// What a history call covers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryQuery {
    /// `None` for system history.
    pub resource_type: Option<String>,
    /// `Some` for instance history (requires `resource_type`).
    pub id: Option<String>,
    /// Only versions with `last_updated >= since` (epoch ms).
    pub since: Option<i64>,
    pub count: usize,
    pub offset: usize,
}

/// A page of results, newest first for history, in query order for search.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub resources: Vec<StoredResource>,
    /// The number of matches on all pages, when the query asked for it.
    pub total: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{resource_type}/{id}: expected the current version to be {expected}, but it is {actual}")]
    VersionConflict { resource_type: String, id: String, expected: i64, actual: i64 },
    #[error("the search is not supported by this store: {0}")]
    Unsupported(String),
    /// A unique lookup key of a stored object (`kv_put`) already belongs to another object.
    #[error("{kind} '{lookup}' is already taken")]
    Duplicate { kind: String, lookup: String },
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// Short backend name for logs and the capability statement (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Writes all `ops` atomically and durably (committed means it survives `kill -9`), with
    /// their index entries and one outbox event each. All or nothing.
    async fn commit(&self, ctx: &Ctx, ops: Vec<WriteOp>) -> StoreResult<()> {
        self.commit_audited(ctx, ops, Vec::new()).await
    }

    /// [`commit`](Self::commit) that also appends `audit` records to the audit log in the same
    /// transaction (so a write and its record commit together or not at all). With no ops it
    /// only appends. Appends are serialised: positions are contiguous and each entry's hash
    /// chains to the previous one ([`audit::link`]).
    async fn commit_audited(&self, ctx: &Ctx, ops: Vec<WriteOp>, audit: Vec<AuditRecord>) -> StoreResult<()>;

    /// Audit entries with `seq > after`, ascending, at most `limit`, exactly as stored.
    async fn audit_read(&self, after: i64, limit: usize) -> StoreResult<Vec<AuditEntry>>;

    /// The newest audit entries that touched Patient `patient_id`, newest first.
    async fn audit_for_patient(&self, patient_id: &str, limit: usize) -> StoreResult<Vec<AuditEntry>>;

    /// The last entry's position and hash (`(0, GENESIS_HASH)` for an empty log).
    async fn audit_head(&self) -> StoreResult<(i64, String)>;

    async fn audit_checkpoint_put(&self, checkpoint: &AuditCheckpoint) -> StoreResult<()>;

    async fn audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>>;

    /// Retention: deletes the audit entries with `seq <= through_seq` and their patient index
    /// rows, and the checkpoints before `through_seq` (they cover only deleted entries; the one
    /// at `through_seq` stays, as the anchor of the entries that remain), all in one
    /// transaction. Returns the number of entries deleted. The newest entry is always kept,
    /// because the next append chains to it. Callers prune only through a signed checkpoint
    /// (`auth::audit::prune`), or the log no longer verifies.
    async fn audit_prune(&self, through_seq: i64) -> StoreResult<u64>;

    /// Stores (inserts or replaces) a security object (account, client, token, code…) of
    /// `kind` as JSON text, with unique `lookups` (e.g. a user name) that replace its old ones.
    /// A lookup held by another object of the kind fails with [`StoreError::Duplicate`].
    async fn kv_put(&self, kind: &str, id: &str, body: &str, lookups: &[String]) -> StoreResult<()>;

    /// [`kv_put`](Self::kv_put) and an audit append in one transaction: the object is stored and
    /// the records appended together, or neither (a held lookup fails with
    /// [`StoreError::Duplicate`] and appends nothing). For a single-use record whose acceptance
    /// must be audited (a health card code): after a crash both or neither are there.
    async fn kv_put_audited(
        &self,
        kind: &str,
        id: &str,
        body: &str,
        lookups: &[String],
        audit: Vec<AuditRecord>,
    ) -> StoreResult<()>;

    async fn kv_get(&self, kind: &str, id: &str) -> StoreResult<Option<String>>;

    /// The object of `kind` that holds the unique `lookup`: `(id, body)`.
    async fn kv_find(&self, kind: &str, lookup: &str) -> StoreResult<Option<(String, String)>>;

    /// Removes an object and its lookups; true if it existed.
    async fn kv_delete(&self, kind: &str, id: &str) -> StoreResult<bool>;

    /// Objects of `kind` with id greater than `after`, ascending, at most `limit`.
    async fn kv_list(&self, kind: &str, after: &str, limit: usize) -> StoreResult<Vec<(String, String)>>;

    /// Current version number and deleted flag of each key, `None` if never written.
    async fn current_versions(&self, ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<Option<(i64, bool)>>>;

    /// The current version (a tombstone if deleted), `None` if never written.
    async fn read(&self, ctx: &Ctx, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>>;

    /// The current, non-deleted versions of the keys that exist, in no particular order.
    async fn read_many(&self, ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<StoredResource>>;

    async fn vread(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<Option<StoredResource>>;

    /// Versions newest first; `total` is always filled.
    async fn history(&self, ctx: &Ctx, query: &HistoryQuery) -> StoreResult<Page>;

    /// Executes a parsed search over current, non-deleted resources. Honors criteria, sort,
    /// count, offset and total; ignores includes, summary and elements (the engine does those).
    async fn search(&self, ctx: &Ctx, query: &SearchQuery) -> StoreResult<Page>;

    /// Current, non-deleted resources in the compartment of Patient `patient_id` (the Patient
    /// itself included), optionally only those updated since `since` and of `types`.
    async fn patient_compartment(
        &self,
        ctx: &Ctx,
        patient_id: &str,
        since: Option<i64>,
        types: &[String],
    ) -> StoreResult<Vec<StoredResource>>;

    /// Events after position `after`, oldest first, at most `limit`.
    async fn outbox_read(&self, after: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>>;

    /// The durable cursor of a named consumer (0 if it has none yet).
    async fn cursor_get(&self, consumer: &str) -> StoreResult<i64>;

    /// Moves a consumer's cursor (never backwards).
    async fn cursor_set(&self, consumer: &str, position: i64) -> StoreResult<()>;
}
