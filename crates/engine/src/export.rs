//! FHIR Bulk Data `$export` (system, all Patients, a Group): asynchronous jobs writing one
//! NDJSON file per resource type under `export_dir/<job>/`, with the job's state in
//! `export_dir/<job>/job.json` so status survives a restart. A job interrupted by a restart is
//! reported as failed (its files may be incomplete); clients start a new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fhir::IssueType;
use fhir::search::{Criterion, ParamRef, ParamValue, Prefix, SearchQuery, TotalMode};
use fhir::{Definitions, ParamType};
use serde_json::{Value, json};
use store::{Ctx, ResourceStore, StoredResource};

use crate::crud::{new_id, now_ms};
use crate::{Engine, EngineError, EngineResult, ExportScope, ExportStatus, RequestOptions};

const PAGE: usize = 1000;

fn job_dir(root: &Path, job: &str) -> EngineResult<PathBuf> {
    if !crate::crud::valid_id(job) {
        return Err(EngineError::NotFound(format!("export job '{job}'")));
    }
    Ok(root.join(job))
}

fn write_state(dir: &Path, state: &Value) -> std::io::Result<()> {
    let tmp = dir.join("job.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join("job.json"))
}

fn io_error(e: std::io::Error) -> EngineError {
    EngineError::Store(store::StoreError::Backend(format!("export folder: {e}")))
}

struct Job {
    store: Arc<dyn ResourceStore>,
    defs: &'static Definitions,
    dir: PathBuf,
    scope: ExportScope,
    types: Vec<String>,
    since: Option<(i64, i64)>,
    state: Value,
    base_url: String,
    job_id: String,
}

impl Job {
    async fn run(mut self) {
        let result = self.export().await;
        match result {
            Ok(outputs) => {
                self.state["status"] = json!("complete");
                self.state["output"] = Value::Array(
                    outputs
                        .into_iter()
                        .map(|(t, count)| {
                            json!({"type": t, "url": format!("{}/$export-file/{}/{t}.ndjson", self.base_url, self.job_id), "count": count})
                        })
                        .collect(),
                );
            }
            Err(message) => {
                self.state["status"] = json!("failed");
                self.state["error_message"] = json!(message);
            }
        }
        if self.dir.exists()
            && let Err(e) = write_state(&self.dir, &self.state)
        {
            tracing::error!(job = %self.job_id, error = %e, "cannot record export job state");
        }
    }

    fn since_criterion(&self) -> Vec<Criterion> {
        self.since
            .map(|(low, high)| Criterion::Param {
                param: ParamRef { code: "_lastUpdated".into(), kind: ParamType::Date, targets: vec![] },
                modifier: None,
                values: vec![ParamValue::Date { prefix: Prefix::Ge, low, high }],
            })
            .into_iter()
            .collect()
    }

    async fn export(&mut self) -> Result<Vec<(String, u64)>, String> {
        let ctx = Ctx::system();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut files: BTreeMap<String, std::io::BufWriter<std::fs::File>> = BTreeMap::new();
        let dir = self.dir.clone();
        let mut emit = |r: &StoredResource, counts: &mut BTreeMap<String, u64>| -> Result<(), String> {
            let Some(body) = &r.body else { return Ok(()) };
            if !dir.exists() {
                return Err("the job was cancelled".into());
            }
            let file = match files.entry(r.resource_type.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let f = std::fs::File::create(dir.join(format!("{}.ndjson", r.resource_type)))
                        .map_err(|e| e.to_string())?;
                    v.insert(std::io::BufWriter::new(f))
                }
            };
            file.write_all(body.as_bytes()).and_then(|_| file.write_all(b"\n")).map_err(|e| e.to_string())?;
            *counts.entry(r.resource_type.clone()).or_default() += 1;
            Ok(())
        };
        match &self.scope {
            ExportScope::System => {
                for t in self.types.clone() {
                    let mut offset = 0;
                    loop {
                        let query = SearchQuery {
                            resource_type: Some(t.clone()),
                            criteria: self.since_criterion(),
                            count: PAGE,
                            offset,
                            total: TotalMode::None,
                            ..SearchQuery::default()
                        };
                        let page = self.store.search(&ctx, &query).await.map_err(|e| e.to_string())?;
                        for r in &page.resources {
                            emit(r, &mut counts)?;
                        }
                        if page.resources.len() < PAGE {
                            break;
                        }
                        offset += PAGE;
                    }
                }
            }
            ExportScope::AllPatients | ExportScope::Group(_) => {
                let patients = self.patients(&ctx).await?;
                let since = self.since.map(|s| s.0);
                for p in patients {
                    let members = self
                        .store
                        .patient_compartment(&ctx, &p, since, &self.types)
                        .await
                        .map_err(|e| e.to_string())?;
                    for r in &members {
                        emit(r, &mut counts)?;
                    }
                }
            }
        }
        for (_, mut f) in files {
            f.flush().map_err(|e| e.to_string())?;
        }
        Ok(counts.into_iter().collect())
    }

    async fn patients(&self, ctx: &Ctx) -> Result<Vec<String>, String> {
        match &self.scope {
            ExportScope::Group(id) => {
                let group = self.store.read(ctx, "Group", id).await.map_err(|e| e.to_string())?;
                let body: Value = group
                    .and_then(|g| g.body)
                    .and_then(|b| serde_json::from_str(&b).ok())
                    .ok_or_else(|| format!("Group/{id} does not exist"))?;
                Ok(body["member"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["entity"]["reference"].as_str())
                    .filter_map(|r| r.strip_prefix("Patient/").map(str::to_string))
                    .collect())
            }
            _ => {
                let mut ids = Vec::new();
                let mut offset = 0;
                loop {
                    let query = SearchQuery {
                        resource_type: Some("Patient".into()),
                        count: PAGE,
                        offset,
                        total: TotalMode::None,
                        ..SearchQuery::default()
                    };
                    let page = self.store.search(ctx, &query).await.map_err(|e| e.to_string())?;
                    let n = page.resources.len();
                    ids.extend(page.resources.into_iter().map(|r| r.id));
                    if n < PAGE {
                        break;
                    }
                    offset += PAGE;
                }
                let _ = self.defs;
                Ok(ids)
            }
        }
    }
}

impl Engine {
    /// Bulk Data kick-off (`$export` with `_type`, `_since`, `_outputFormat`): the job id.
    pub async fn export_start(
        &self,
        ctx: &Ctx,
        scope: ExportScope,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<String> {
        let mut types: Vec<String> = Vec::new();
        let mut since = None;
        for (k, v) in params {
            match k.as_str() {
                "_type" => {
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !self.defs.is_resource_type(t) {
                            return Err(EngineError::bad_request(
                                IssueType::Invalid,
                                format!("'{t}' in _type is not a resource type"),
                            ));
                        }
                        types.push(t.to_string());
                    }
                }
                "_since" => {
                    since = Some(fhir::normalize::date_range(v).ok_or_else(|| {
                        EngineError::bad_request(IssueType::Invalid, format!("_since '{v}' is not a valid instant"))
                    })?)
                }
                "_outputFormat" => {
                    if !matches!(v.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                        return Err(EngineError::bad_request(
                            IssueType::NotSupported,
                            format!("_outputFormat '{v}' is not supported; use application/fhir+ndjson"),
                        ));
                    }
                }
                other => {
                    return Err(EngineError::bad_request(
                        IssueType::NotSupported,
                        format!("the $export parameter '{other}' is not supported (use _type, _since, _outputFormat)"),
                    ));
                }
            }
        }
        let entity = format!("$export?{}", crate::searchset::audit_params(params));
        self.authorize_bulk(ctx, access::Action::Export, "*").await?;
        if let ExportScope::Group(id) = &scope {
            self.read(ctx, "Group", id).await?;
        }
        if types.is_empty() && scope == ExportScope::System {
            types = self.defs.resource_types().to_vec();
        }
        if let Some(principal) = ctx.principal.as_deref() {
            if types.is_empty() {
                types = self.defs.resource_types().to_vec();
                types.retain(|t| principal.scopes.allows(t, access::Perm::Read));
            } else if let Some(t) = types.iter().find(|t| !principal.scopes.allows(t, access::Perm::Read)) {
                let reason = format!("the access token's scopes do not allow exporting {t}");
                return Err(self.deny(ctx, "export", entity, reason).await);
            }
        }
        let job_id = new_id();
        let dir = self.config.export_dir.join(&job_id);
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        let state = json!({
            "status": "in-progress",
            "transactionTime": fhir::normalize::format_instant(now_ms()),
            "request": format!("{}/$export?{}", opts.base_url, crate::searchset::encode_params(params)),
            "requiresAccessToken": ctx.principal.is_some(),
            "owner": ctx.principal.as_deref().map(|p| p.subject.clone()),
        });
        if ctx.principal.is_some() {
            self.audit.append(crate::audit::record(ctx, "export", "success", entity, Vec::new(), None)).await?;
        }
        write_state(&dir, &state).map_err(io_error)?;
        let job = Job {
            store: self.store.clone(),
            defs: self.defs,
            dir,
            scope,
            types,
            since,
            state,
            base_url: opts.base_url.clone(),
            job_id: job_id.clone(),
        };
        tokio::spawn(job.run());
        Ok(job_id)
    }

    /// Bulk Data status polling; `NotFound` for an unknown job.
    pub async fn export_status(&self, ctx: &Ctx, job_id: &str) -> EngineResult<ExportStatus> {
        let state = self.export_job(ctx, job_id)?;
        Ok(match state["status"].as_str() {
            Some("complete") => {
                let mut manifest = state.clone();
                if let Some(o) = manifest.as_object_mut() {
                    o.remove("status");
                    o.remove("owner");
                    o.insert("error".into(), json!([]));
                }
                ExportStatus::Complete { manifest }
            }
            Some("failed") => ExportStatus::Failed {
                issues: vec![fhir::Issue::error(
                    IssueType::Exception,
                    format!("the export failed: {}", state["error_message"].as_str().unwrap_or("unknown reason")),
                )],
            },
            _ => ExportStatus::InProgress { progress: "exporting".into() },
        })
    }

    /// Path of one NDJSON output file of a finished job.
    pub async fn export_file(&self, ctx: &Ctx, job_id: &str, file_name: &str) -> EngineResult<PathBuf> {
        self.export_job(ctx, job_id)?;
        if ctx.principal.is_some() {
            let entity = format!("$export/{job_id}/{}", file_name.chars().take(80).collect::<String>());
            self.audit
                .append(crate::audit::record(ctx, "export-download", "success", entity, Vec::new(), None))
                .await?;
        }
        let dir = job_dir(&self.config.export_dir, job_id)?;
        let Some(ty) = file_name.strip_suffix(".ndjson") else {
            return Err(EngineError::NotFound(format!("export file '{file_name}'")));
        };
        if !self.defs.is_resource_type(ty) {
            return Err(EngineError::NotFound(format!("export file '{file_name}'")));
        }
        let path = dir.join(file_name);
        if path.exists() { Ok(path) } else { Err(EngineError::NotFound(format!("export file '{file_name}'"))) }
    }

    /// Cancels a job and deletes its files (`DELETE` on the status URL).
    pub async fn export_cancel(&self, ctx: &Ctx, job_id: &str) -> EngineResult<()> {
        self.export_job(ctx, job_id)?;
        let dir = job_dir(&self.config.export_dir, job_id)?;
        std::fs::remove_dir_all(&dir).map_err(io_error)
    }

    /// A job's state, if it exists and belongs to the caller (another caller's job reads as
    /// unknown).
    fn export_job(&self, ctx: &Ctx, job_id: &str) -> EngineResult<Value> {
        let unknown = || EngineError::NotFound(format!("export job '{job_id}'"));
        let dir = job_dir(&self.config.export_dir, job_id)?;
        let text = std::fs::read(dir.join("job.json")).map_err(|_| unknown())?;
        let state: Value = serde_json::from_slice(&text).map_err(|_| unknown())?;
        if let Some(principal) = ctx.principal.as_deref()
            && state["owner"].as_str() != Some(principal.subject.as_str())
        {
            return Err(unknown());
        }
        Ok(state)
    }
}

/// Marks jobs left in progress by a previous process as failed (their files may be partial).
pub(crate) fn mark_interrupted(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let path = entry.path().join("job.json");
        let Ok(text) = std::fs::read(&path) else { continue };
        let Ok(mut state) = serde_json::from_slice::<Value>(&text) else { continue };
        if state["status"] == "in-progress" {
            state["status"] = json!("failed");
            state["error_message"] = json!("the server restarted while the export ran; start a new export");
            let _ = write_state(&entry.path(), &state);
        }
    }
}
