//! FHIR R4 interactions written once over the storage contract ([`store::ResourceStore`]):
//! create/read/vread/update/patch/delete and their conditional forms, versioning (If-Match),
//! batch and transaction Bundles, search Bundles (includes, paging, summary, elements),
//! history, `Patient/$everything`, Bulk Data `$export`, `$validate`, the terminology
//! operations and the capability statement. Knows nothing of HTTP: the `api` crate maps [`EngineError`] to statuses.

mod audit;
mod authz;
mod booking;
mod bundle;
mod capability;
mod checkin;
mod crud;
mod documents;
mod error;
mod export;
mod guidance;
mod healthcard;
mod internet;
mod kpi;
mod matching;
mod mpi;
mod notify;
mod quality;
mod registries;
mod sealing;
mod searchset;
mod subscriptions;
mod supervision;
mod terminology;

pub use audit::BLOCK_ACTION;
pub use booking::{BookingRules, CHANNEL_EXTENSION};
pub use capability::UNSUPPORTED_PARAM_EXTENSION;
pub use checkin::CHECK_IN_CARE_STEP;
pub use error::{EngineError, EngineResult};
pub use guidance::{Advice, GuidanceRules, Suggestion};
pub use healthcard::{CARE_STEPS, CardStatus, HealthCard, HealthCardConfig, IssuedCode, Verification};
pub use internet::{
    CONSENT_POLICY, CONSULTING_TIMEOUT_MS, DELIVERY_EXTENSION, DELIVERY_STATES, DRUG_SYSTEM, InternetDoctor,
    OVERRIDE_EXTENSION, PROOF_EXTENSION, RETAIL_SALE_EXTENSION, REVIEW_CENTRE_CODE, REVIEW_CODE, RX_SYSTEM, RxConfig,
    SUPERVISION_TAG, SecondFactor, VISIT_TAG, WAITING_TIMEOUT_MS, overrides_of, task_prescription,
};
pub use kpi::BOOKING_RATE_TARGET;
pub use mpi::{LINK_WEIGHT_EXTENSION, MPI_SYSTEM, REPLACED_BY_EXTENSION};
pub use notify::{Channel, NOTICE_SYSTEM, Notifier};
pub use quality::{Finding, HeldRaw, REPORTING_DEADLINE_HOURS, RawFinding, RawHold, RawRefusal, RawReprocessor};
pub use sealing::{SEALED_EXTENSION, SealingStore};
pub use subscriptions::{OWNER_TAG, RestHook, SubscriptionChannels, SubscriptionConfig};
pub use supervision::MAX_FEED_COUNT;

use std::sync::Arc;

use fhir::Definitions;
use serde_json::Value;
use store::{Ctx, ResourceStore, StoredResource};

/// Tunables, with defaults that suit the embedded store.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `_count` when the client gives none.
    pub default_count: usize,
    /// Largest `_count` honoured; larger requests are clamped (with a warning in the Bundle).
    pub max_count: usize,
    /// Most entries accepted in one batch/transaction Bundle.
    pub max_bundle_entries: usize,
    /// Folder where Bulk Data export jobs write their NDJSON files.
    pub export_dir: std::path::PathBuf,
    /// How permitted reads and searches are audited (see `audit.rs`).
    pub audit_reads: AuditMode,
    /// Residents' booking limits (booking.rs).
    pub booking: BookingRules,
    /// The electronic health card service (healthcard.rs).
    pub health_card: HealthCardConfig,
    /// The smart guidance rule table (guidance.rs).
    pub guidance: std::sync::Arc<GuidanceRules>,
    /// The internet hospital's drug catalogue and interaction knowledge base (internet.rs).
    pub rx: RxConfig,
    /// FHIR Subscriptions: rest-hook allow-list, retries (subscriptions.rs).
    pub subscriptions: SubscriptionConfig,
}

/// Whether a permitted read waits for its audit record to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditMode {
    /// Answer after the record is committed.
    Durable,
    /// Answer at once; the record commits within milliseconds (bounded queue).
    #[default]
    Queued,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            default_count: 20,
            max_count: 1000,
            max_bundle_entries: 10_000,
            export_dir: std::path::PathBuf::from("hutong-data/export"),
            audit_reads: AuditMode::default(),
            booking: BookingRules::default(),
            health_card: HealthCardConfig::default(),
            guidance: GuidanceRules::builtin(),
            rx: RxConfig::default(),
            subscriptions: SubscriptionConfig::default(),
        }
    }
}

/// Request-level options that come from HTTP headers or the URL, kept HTTP-free here.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// The server's FHIR base URL as the client sees it, e.g. `http://127.0.0.1:8080/fhir`,
    /// used in Bundle links and `fullUrl`s.
    pub base_url: String,
    /// `Prefer: handling=lenient`: unknown search parameters are ignored (and reported)
    /// instead of rejected.
    pub lenient: bool,
    /// `If-Match` version (parsed from `W/"3"`).
    pub if_match: Option<i64>,
    /// `If-None-Exist` query (without the leading `?`).
    pub if_none_exist: Option<String>,
    /// `If-None-Match` / `If-Modified-Since` are answered by the api crate from the result.
    pub return_preference: ReturnPreference,
}

/// `Prefer: return=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The version written (for a delete: the tombstone; for a no-op conditional create: the
    /// existing match).
    pub resource: StoredResource,
    /// 201 Created rather than 200 OK.
    pub created: bool,
}

/// A Bulk Data export job's state, as the status endpoint reports it.
#[derive(Debug, Clone)]
pub enum ExportStatus {
    InProgress {
        progress: String,
    },
    /// The completion manifest (JSON per the Bulk Data spec).
    Complete {
        manifest: Value,
    },
    Failed {
        issues: Vec<fhir::Issue>,
    },
}

/// Which data an export covers.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportScope {
    System,
    AllPatients,
    Group(String),
}

pub struct Engine {
    store: Arc<dyn ResourceStore>,
    defs: &'static Definitions,
    config: EngineConfig,
    /// Serialises conditional writes (If-None-Exist, conditional update, transactions with
    /// `ifNoneExist` or conditional URLs) that have the same criteria, whose search and write are
    /// otherwise not atomic: two concurrent conditional creates with the same criteria would both
    /// create. Writes with different criteria run in parallel (striped by type and sorted
    /// parameters; criteria that differ only in spelling are not recognised as the same).
    /// One process; a multi-node deployment needs the database to arbitrate (see ARCHITECTURE.md).
    conditional: ConditionalLocks,
    /// Group-committing appender of audit records for reads, searches and denials.
    audit: audit::AuditSink,
    /// Care relationships and residences, cached for policy decisions.
    access: authz::AccessCache,
    /// When used health card codes are next pruned (Unix seconds; healthcard.rs).
    codes_prune_due: std::sync::atomic::AtomicI64,
    /// Patients in the registry, for `Patient/$match` (matching.rs).
    patients_counted: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
    /// The `$match` model and the registry size it was learned at (matching.rs).
    match_model: tokio::sync::Mutex<Option<(u64, Arc<registry::linkage::Model>)>>,
    /// The master patient index in memory (mpi.rs), loaded at first use; its lock serialises
    /// every change of the index.
    mpi: tokio::sync::Mutex<Option<mpi::MpiState>>,
    /// Wakes the index's worker when this process writes a Patient.
    mpi_wake: tokio::sync::Notify,
    /// Serialises residents' bookings (booking.rs).
    booking: tokio::sync::Mutex<()>,
    /// Checks a staff member's fresh second factor (internet.rs); installed by the API layer.
    second_factor: std::sync::OnceLock<Arc<dyn SecondFactor>>,
    /// Serialises scorecard writes (quality.rs).
    quality: tokio::sync::Mutex<()>,
    /// What processes held raw quarantine entries again, by kind (quality.rs); installed by
    /// the binary (`hutong serve` for `HL7v2Message`).
    reprocessors: std::sync::RwLock<std::collections::HashMap<String, Arc<dyn RawReprocessor>>>,
    /// Scorecard counts not yet written (quality.rs).
    quality_counts: quality::PendingCounts,
    /// Stored CodeSystems, ValueSets and ConceptMaps over the preloaded terminology (terminology.rs).
    terminology: terminology::TerminologyLayer,
}

impl Engine {
    pub fn new(store: Arc<dyn ResourceStore>, config: EngineConfig) -> Self {
        export::mark_interrupted(&config.export_dir);
        Engine {
            audit: audit::AuditSink::new(store.clone()),
            store,
            defs: Definitions::r4(),
            config,
            conditional: ConditionalLocks::new(),
            access: authz::AccessCache::default(),
            codes_prune_due: std::sync::atomic::AtomicI64::new(0),
            patients_counted: std::sync::Mutex::new(None),
            match_model: tokio::sync::Mutex::new(None),
            mpi: tokio::sync::Mutex::new(None),
            mpi_wake: tokio::sync::Notify::new(),
            booking: tokio::sync::Mutex::new(()),
            second_factor: std::sync::OnceLock::new(),
            quality: tokio::sync::Mutex::new(()),
            reprocessors: std::sync::RwLock::new(std::collections::HashMap::new()),
            quality_counts: std::sync::Mutex::new((std::collections::HashMap::new(), 0)),
            terminology: terminology::TerminologyLayer::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn ResourceStore> {
        &self.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn definitions(&self) -> &'static Definitions {
        self.defs
    }

    /// Waits until every queued audit record is committed (call before shutting down).
    pub async fn flush_audit(&self) -> EngineResult<()> {
        Ok(self.audit.flush().await?)
    }

    /// Records an access-control event that writes nothing and concerns no resource (a refused
    /// token, a refused break-glass request) through the queued audit path, so a flood of bad
    /// requests costs one commit per block, not one each.
    pub async fn audit_event(&self, record: store::AuditRecord) -> EngineResult<()> {
        Ok(self.audit.queue(record).await?)
    }
}

// The interaction methods (the engine's public contract, used by the `api` crate and the
// `hutong` binary) live in the modules: crud.rs, bundle.rs, searchset.rs, export.rs,
// capability.rs; `validate` is here.
impl Engine {
    /// `POST [type]/$validate` (or `[type]/[id]/$validate`): an OperationOutcome; never writes.
    /// A `Parameters` body with a `resource` parameter is unwrapped.
    pub async fn validate(&self, _ctx: &Ctx, resource_type: Option<&str>, body: Value) -> EngineResult<Value> {
        let resource = if body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
            && resource_type != Some("Parameters")
        {
            body["parameter"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "resource"))
                .map(|p| p["resource"].clone())
                .unwrap_or(body)
        } else {
            body
        };
        let ty = resource_type
            .map(str::to_string)
            .or_else(|| resource.get("resourceType").and_then(Value::as_str).map(str::to_string));
        let ty = ty.ok_or_else(|| {
            EngineError::bad_request(fhir::IssueType::Required, "the resource to validate has no resourceType")
        })?;
        self.check_type(&ty)?;
        match self.check_body(&ty, &resource, &ty) {
            Ok(()) => {
                let mut ok = fhir::Issue::error(
                    fhir::IssueType::Informational,
                    format!("the {ty} is valid against the base R4 definitions"),
                );
                ok.severity = fhir::IssueSeverity::Information;
                Ok(fhir::outcome::operation_outcome(&[ok]))
            }
            Err(EngineError::Unprocessable(issues)) | Err(EngineError::BadRequest(issues)) => {
                Ok(fhir::outcome::operation_outcome(&issues))
            }
            Err(e) => Err(e),
        }
    }
}

/// Serialises conditional writes with the same criteria (type and sorted search parameters),
/// hashed onto 1,024 stripes: writes with different criteria proceed in parallel, and a request
/// with several conditional entries takes its stripes in ascending order (no deadlock).
pub(crate) struct ConditionalLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl ConditionalLocks {
    const STRIPES: usize = 1024;

    fn new() -> Self {
        ConditionalLocks { stripes: (0..Self::STRIPES).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    pub(crate) async fn lock(&self, criteria: &[(&str, &str)]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        use std::hash::{Hash, Hasher};
        let mut stripes: Vec<usize> = criteria
            .iter()
            .map(|(resource_type, query)| {
                let mut pairs = crud::parse_query_string(query);
                pairs.sort();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (resource_type, pairs).hash(&mut h);
                (h.finish() % Self::STRIPES as u64) as usize
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.stripes[stripe].lock().await);
        }
        guards
    }
}
