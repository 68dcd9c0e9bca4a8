//! FHIR R4 interactions written once over the storage contract ([`store::ResourceStore`]):
//! create/read/vread/update/patch/delete and their conditional forms, versioning (If-Match),
//! batch and transaction Bundles, search Bundles (includes, paging, summary, elements),
//! history, `Patient/$everything`, Bulk Data `$export`, `$validate` and the capability
//! statement. Knows nothing of HTTP: the `api` crate maps [`EngineError`] to statuses.

mod bundle;
mod capability;
mod crud;
mod error;
mod export;
mod searchset;

pub use capability::UNSUPPORTED_PARAM_EXTENSION;
pub use error::{EngineError, EngineResult};

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            default_count: 20,
            max_count: 1000,
            max_bundle_entries: 10_000,
            export_dir: std::path::PathBuf::from("hutong-data/export"),
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
}

impl Engine {
    pub fn new(store: Arc<dyn ResourceStore>, config: EngineConfig) -> Self {
        export::mark_interrupted(&config.export_dir);
        Engine { store, defs: Definitions::r4(), config }
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
}

// The interaction methods below are the engine's public contract, used by the `api` crate
// and the `hutong` binary. Bodies live in the modules of this crate.
impl Engine {
    /// `POST [type]` (honours `If-None-Exist`).
    pub async fn create(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        body: Value,
        opts: &RequestOptions,
    ) -> EngineResult<WriteOutcome> {
        self.create_impl(ctx, resource_type, body, opts).await
    }

    /// `GET [type]/[id]`: `NotFound` if never written, `Gone` if deleted.
    pub async fn read(&self, ctx: &Ctx, resource_type: &str, id: &str) -> EngineResult<StoredResource> {
        self.read_impl(ctx, resource_type, id).await
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub async fn vread(&self, ctx: &Ctx, resource_type: &str, id: &str, version: &str) -> EngineResult<StoredResource> {
        self.vread_impl(ctx, resource_type, id, version).await
    }

    /// `PUT [type]/[id]` (update or update-as-create; honours If-Match). An update whose
    /// content equals the current version (ignoring `meta.versionId`/`lastUpdated`) writes
    /// nothing and returns the current version.
    pub async fn update(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: &str,
        body: Value,
        opts: &RequestOptions,
    ) -> EngineResult<WriteOutcome> {
        self.update_impl(ctx, resource_type, id, body, opts).await
    }

    /// `PUT [type]?[criteria]`.
    pub async fn conditional_update(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        criteria: &[(String, String)],
        body: Value,
        opts: &RequestOptions,
    ) -> EngineResult<WriteOutcome> {
        self.conditional_update_impl(ctx, resource_type, criteria, body, opts).await
    }

    /// `PATCH [type]/[id]` with a JSON Patch document (RFC 6902).
    pub async fn patch(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: &str,
        patch: Value,
        opts: &RequestOptions,
    ) -> EngineResult<WriteOutcome> {
        self.patch_impl(ctx, resource_type, id, patch, opts).await
    }

    /// `DELETE [type]/[id]`; deleting a missing or deleted resource succeeds with `None`.
    pub async fn delete(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: &str,
        opts: &RequestOptions,
    ) -> EngineResult<Option<WriteOutcome>> {
        self.delete_impl(ctx, resource_type, id, opts).await
    }

    /// `DELETE [type]?[criteria]`: deletes every match, atomically (returns how many).
    pub async fn conditional_delete(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        criteria: &[(String, String)],
        _opts: &RequestOptions,
    ) -> EngineResult<usize> {
        self.conditional_delete_impl(ctx, resource_type, criteria).await
    }

    /// `GET [type]?...`, `GET /?...` (resource_type `None`), `POST [type]/_search`: a searchset Bundle.
    pub async fn search(
        &self,
        ctx: &Ctx,
        resource_type: Option<&str>,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<Value> {
        self.search_impl(ctx, resource_type, params, opts).await
    }

    /// `GET [type]/[id]/_history`, `GET [type]/_history`, `GET /_history` with `_since`, `_count`, `_offset`.
    pub async fn history(
        &self,
        ctx: &Ctx,
        resource_type: Option<&str>,
        id: Option<&str>,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<Value> {
        self.history_impl(ctx, resource_type, id, params, opts).await
    }

    /// `POST /` with a batch or transaction Bundle: the response Bundle.
    pub async fn bundle(&self, ctx: &Ctx, bundle: Value, opts: &RequestOptions) -> EngineResult<Value> {
        self.bundle_impl(ctx, bundle, opts).await
    }

    /// `GET Patient/[id]/$everything` with `_since`, `_type`.
    pub async fn everything(
        &self,
        ctx: &Ctx,
        patient_id: &str,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<Value> {
        self.everything_impl(ctx, patient_id, params, opts).await
    }

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

    /// Bulk Data kick-off (`$export` with `_type`, `_since`, `_outputFormat`): the job id.
    pub async fn export_start(
        &self,
        ctx: &Ctx,
        scope: ExportScope,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<String> {
        self.export_start_impl(ctx, scope, params, opts).await
    }

    /// Bulk Data status polling; `NotFound` for an unknown job.
    pub async fn export_status(&self, _ctx: &Ctx, job_id: &str) -> EngineResult<ExportStatus> {
        self.export_status_impl(job_id).await
    }

    /// Path of one NDJSON output file of a finished job.
    pub async fn export_file(&self, _ctx: &Ctx, job_id: &str, file_name: &str) -> EngineResult<std::path::PathBuf> {
        self.export_file_impl(job_id, file_name).await
    }

    /// Cancels a job and deletes its files (`DELETE` on the status URL).
    pub async fn export_cancel(&self, _ctx: &Ctx, job_id: &str) -> EngineResult<()> {
        self.export_cancel_impl(job_id).await
    }

    /// The CapabilityStatement, true to what is implemented (supported and unsupported search
    /// parameters per type, interactions, operations).
    pub fn capability_statement(&self, base_url: &str) -> Value {
        self.capability_impl(base_url)
    }
}
