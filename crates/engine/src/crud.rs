//! Single-resource interactions: create, read, vread, update, patch, delete and their
//! conditional forms, plus the shared steps every write takes (body checks, validation,
//! `meta` stamping, index extraction) and the optimistic-concurrency retry loop.

use fhir::IssueType;
use fhir::search::{ParseOptions, SearchQuery};
use serde_json::{Map, Value, json};
use store::{Ctx, StoreError, StoredResource, WriteMethod, WriteOp};

use crate::{Engine, EngineError, EngineResult, RequestOptions, WriteOutcome};

/// How many times a write without `If-Match` is retried after losing a race.
const RETRIES: usize = 5;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// FHIR ids: 1–64 characters of `A-Z a-z 0-9 - .`.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The resource without `meta.versionId` / `meta.lastUpdated`, for "did anything change?".
pub(crate) fn content_without_version(resource: &Value) -> Value {
    let mut copy = resource.clone();
    if let Some(meta) = copy.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            copy.as_object_mut().map(|o| o.remove("meta"));
        }
    }
    copy
}

impl Engine {
    pub(crate) fn check_type(&self, resource_type: &str) -> EngineResult<()> {
        if self.defs.is_resource_type(resource_type) {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!("The resource type '{resource_type}'")))
        }
    }

    /// Checks the body's shape and `resourceType`, then validates it against the R4 definitions.
    pub(crate) fn check_body(&self, resource_type: &str, body: &Value, location: &str) -> EngineResult<()> {
        let Some(object) = body.as_object() else {
            return Err(EngineError::bad_request(
                IssueType::Structure,
                format!("{location}: the body must be a JSON object (a FHIR resource)"),
            ));
        };
        match object.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == resource_type => {}
            Some(t) => {
                return Err(EngineError::bad_request(
                    IssueType::Invalid,
                    format!("{location}: resourceType is '{t}' but the request is for {resource_type}"),
                ));
            }
            None => {
                return Err(EngineError::bad_request(
                    IssueType::Required,
                    format!("{location}: the resource has no resourceType"),
                ));
            }
        }
        let mut issues: Vec<fhir::Issue> = fhir::validate::validate(self.defs, body)
            .into_iter()
            .filter(|i| matches!(i.severity, fhir::IssueSeverity::Error | fhir::IssueSeverity::Fatal))
            .map(|mut i| {
                if location != resource_type {
                    i.diagnostics = format!("{location}: {}", i.diagnostics);
                }
                i
            })
            .collect();
        issues.extend(crate::registries::registry_issues(resource_type, body, location));
        if resource_type == "Subscription" {
            issues.extend(crate::subscriptions::issues(self, body, location));
        }
        if issues.is_empty() { Ok(()) } else { Err(EngineError::Unprocessable(issues)) }
    }

    /// Stamps `id` and `meta` and builds the write for one version.
    pub(crate) fn build_op(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
        now: i64,
        method: WriteMethod,
        mut body: Value,
    ) -> EngineResult<WriteOp> {
        let object = body
            .as_object_mut()
            .ok_or_else(|| EngineError::bad_request(IssueType::Structure, "resource is not an object"))?;
        object.insert("id".into(), Value::String(id.to_string()));
        // Level-5 classes implied by the resource's codes become `meta.security` labels, so
        // the policy protects data whatever system sent it (access::sensitivity).
        access::sensitivity::label(&mut body);
        let Some(object) = body.as_object_mut() else {
            return Err(EngineError::bad_request(IssueType::Structure, "resource is not an object"));
        };
        let meta = object.entry("meta").or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta["versionId"] = Value::String(version.to_string());
        meta["lastUpdated"] = Value::String(fhir::normalize::format_instant(now));
        // Keep `resourceType` and `id` first for readability of stored JSON.
        let mut ordered = Map::new();
        for key in ["resourceType", "id", "meta"] {
            if let Some(v) = object.shift_remove(key) {
                ordered.insert(key.to_string(), v);
            }
        }
        ordered.append(object);
        let body = Value::Object(ordered);
        let index = fhir::index::extract_stored(self.defs, &body);
        let compartments = fhir::index::patient_compartments(self.defs, &body);
        let text =
            serde_json::to_string(&body).map_err(|e| EngineError::bad_request(IssueType::Structure, e.to_string()))?;
        Ok(WriteOp {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version,
            last_updated: now,
            method,
            body: Some(text),
            index,
            compartments,
            parsed: Some(std::sync::Arc::new(body)),
        })
    }

    pub(crate) fn tombstone(resource_type: &str, id: &str, version: i64, now: i64) -> WriteOp {
        WriteOp {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version,
            last_updated: now,
            method: WriteMethod::Delete,
            body: None,
            index: Vec::new(),
            compartments: Vec::new(),
            parsed: None,
        }
    }

    pub(crate) fn parse_options(&self, lenient: bool) -> ParseOptions {
        ParseOptions { lenient, default_count: self.config.default_count, max_count: self.config.max_count }
    }

    /// Runs a conditional operation's criteria and returns up to `limit` matches.
    pub(crate) async fn matches(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        criteria: &[(String, String)],
        limit: usize,
    ) -> EngineResult<Vec<StoredResource>> {
        if criteria
            .iter()
            .all(|(k, _)| k.starts_with('_') && k != "_id" && k != "_lastUpdated" && !k.starts_with("_has"))
        {
            return Err(EngineError::bad_request(
                IssueType::Invalid,
                format!("a conditional operation on {resource_type} needs at least one search criterion"),
            ));
        }
        let parsed = fhir::search::parse(self.defs, Some(resource_type), criteria, &self.parse_options(false))
            .map_err(EngineError::BadRequest)?;
        let query = SearchQuery { count: limit, offset: 0, total: fhir::search::TotalMode::None, ..parsed.query };
        Ok(self.store.search(ctx, &query).await?.resources)
    }

    /// `POST [type]` (honours `If-None-Exist`).
    pub async fn create(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        body: Value,
        opts: &RequestOptions,
    ) -> EngineResult<WriteOutcome> {
        self.check_type(resource_type)?;
        self.check_body(resource_type, &body, resource_type)?;
        let _serialised = match &opts.if_none_exist {
            Some(condition) => Some(self.conditional.lock(&[(resource_type, condition.as_str())]).await),
            None => None,
        };
        if let Some(condition) = &opts.if_none_exist {
            let criteria = parse_query_string(condition);
            let found = self.matches(ctx, resource_type, &criteria, 2).await?;
            match found.len() {
                0 => {}
                1 => {
                    let existing = found.into_iter().next().expect("one");
                    self.authorize_read(ctx, "read", &existing).await?;
                    return Ok(WriteOutcome { resource: existing, created: false });
                }
                _ => {
                    return Err(EngineError::MultipleMatches(format!(
                        "If-None-Exist '{condition}' matches more than one {resource_type}; make the criteria more specific"
                    )));
                }
            }
        }
        let id = new_id();
        let op = self.build_op(resource_type, &id, 1, now_ms(), WriteMethod::Create, body)?;
        let resource = stored_from_op(&op);
        self.commit_checked(ctx, vec![op], "create").await?;
        let resource = self.as_committed(resource).await?;
        Ok(WriteOutcome { resource, created: true })
    }

    /// The version as committed: a Subscription is activated and tagged with its owner on the
    /// way in (subscriptions.rs), so it is read back; other resources are stored as built.
    async fn as_committed(&self, resource: StoredResource) -> EngineResult<StoredResource> {
        if resource.resource_type != "Subscription" {
            return Ok(resource);
        }
        let stored = self.store.vread(&Ctx::system(), "Subscription", &resource.id, resource.version).await?;
        Ok(stored.unwrap_or(resource))
    }

    /// Before an answer that reveals that a resource exists or existed (410 Gone, 412 on
    /// If-Match), checks that the caller may read it (the last content, for a deleted one), so
    /// a resource the caller may not see answers 404 like one that never was.
    pub(crate) async fn authorize_existence(
        &self,
        ctx: &Ctx,
        interaction: &str,
        r: &StoredResource,
    ) -> EngineResult<()> {
        if ctx.principal.is_none() {
            return Ok(());
        }
        if !r.deleted {
            return self.authorize_read(ctx, interaction, r).await;
        }
        match self.store.vread(ctx, &r.resource_type, &r.id, r.version - 1).await? {
            Some(before) if !before.deleted => self.authorize_read(ctx, interaction, &before).await,
            _ => Ok(()),
        }
    }

    /// `GET [type]/[id]`: `NotFound` if never written, `Gone` if deleted.
    pub async fn read(&self, ctx: &Ctx, resource_type: &str, id: &str) -> EngineResult<StoredResource> {
        self.check_type(resource_type)?;
        match self.store.read(ctx, resource_type, id).await? {
            Some(r) if r.deleted => {
                self.authorize_existence(ctx, "read", &r).await?;
                Err(EngineError::Gone(format!("{resource_type}/{id}")))
            }
            Some(r) => {
                self.authorize_read(ctx, "read", &r).await?;
                Ok(r)
            }
            None => Err(EngineError::NotFound(format!("{resource_type}/{id}"))),
        }
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub async fn vread(&self, ctx: &Ctx, resource_type: &str, id: &str, version: &str) -> EngineResult<StoredResource> {
        self.check_type(resource_type)?;
        let Ok(v) = version.parse::<i64>() else {
            return Err(EngineError::NotFound(format!(
                "{resource_type}/{id}/_history/{version} (version ids are whole numbers)"
            )));
        };
        match self.store.vread(ctx, resource_type, id, v).await? {
            Some(r) if r.deleted => {
                self.authorize_existence(ctx, "vread", &r).await?;
                Err(EngineError::Gone(format!("{resource_type}/{id}/_history/{version}")))
            }
            Some(r) => {
                self.authorize_read(ctx, "vread", &r).await?;
                Ok(r)
            }
            None => Err(EngineError::NotFound(format!("{resource_type}/{id}/_history/{version}"))),
        }
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
        self.check_type(resource_type)?;
        if !valid_id(id) {
            return Err(EngineError::bad_request(
                IssueType::Invalid,
                format!("'{id}' is not a valid FHIR id (1-64 characters: letters, digits, '-' and '.')"),
            ));
        }
        match body.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(EngineError::bad_request(
                    IssueType::Invalid,
                    format!("the resource id '{body_id}' does not match the id '{id}' in the URL"),
                ));
            }
            None => {
                return Err(EngineError::bad_request(
                    IssueType::Required,
                    format!("an update must carry the resource id in the body (\"id\": \"{id}\")"),
                ));
            }
        }
        self.check_body(resource_type, &body, resource_type)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.store.read(ctx, resource_type, id).await?;
            let current_version = current.as_ref().map_or(0, |c| c.version);
            if let Some(expected) = opts.if_match
                && (expected != current_version || current.as_ref().is_some_and(|c| c.deleted))
            {
                if let Some(c) = &current {
                    self.authorize_existence(ctx, "update", c).await?;
                }
                return Err(EngineError::precondition_failed(expected, resource_type, id, current_version));
            }
            if let Some(c) = current.as_ref().filter(|c| !c.deleted)
                && let Some(text) = &c.body
            {
                let stored: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                let mut candidate = body.clone();
                candidate["id"] = Value::String(id.to_string());
                access::sensitivity::label(&mut candidate);
                if content_without_version(&stored) == content_without_version(&candidate) {
                    self.authorize_read(ctx, "update", c).await?;
                    return Ok(WriteOutcome { resource: c.clone(), created: false });
                }
            }
            let created = current.as_ref().is_none_or(|c| c.deleted);
            let method = if current.is_none() { WriteMethod::Create } else { WriteMethod::Update };
            let op = self.build_op(resource_type, id, current_version + 1, now_ms(), method, body.clone())?;
            let resource = stored_from_op(&op);
            let interaction = if created { "create" } else { "update" };
            match self.commit_checked(ctx, vec![op], interaction).await {
                Ok(()) => return Ok(WriteOutcome { resource: self.as_committed(resource).await?, created }),
                Err(EngineError::Store(StoreError::VersionConflict { .. }))
                    if opts.if_match.is_none() && attempt < RETRIES =>
                {
                    continue;
                }
                Err(EngineError::Store(StoreError::VersionConflict { .. })) => {
                    return Err(EngineError::Conflict {
                        message: format!(
                            "{resource_type}/{id} was changed by another request; read it again and retry"
                        ),
                        precondition: opts.if_match.is_some(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
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
        self.check_type(resource_type)?;
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(criteria).finish();
        let _serialised = self.conditional.lock(&[(resource_type, query.as_str())]).await;
        let found = self.matches(ctx, resource_type, criteria, 2).await?;
        match found.as_slice() {
            [] => match body.get("id").and_then(Value::as_str) {
                Some(id) => {
                    let id = id.to_string();
                    self.update(ctx, resource_type, &id, body, opts).await
                }
                None => {
                    self.create(ctx, resource_type, body, &RequestOptions { if_none_exist: None, ..opts.clone() }).await
                }
            },
            [one] => {
                if let Some(body_id) = body.get("id").and_then(Value::as_str)
                    && body_id != one.id
                {
                    return Err(EngineError::bad_request(
                        IssueType::Invalid,
                        format!("the body's id '{body_id}' differs from the matching {resource_type}/{}", one.id),
                    ));
                }
                let mut body = body;
                body["id"] = Value::String(one.id.clone());
                let id = one.id.clone();
                self.update(ctx, resource_type, &id, body, opts).await
            }
            _ => Err(EngineError::MultipleMatches(format!(
                "the conditional update matches more than one {resource_type}; make the criteria more specific"
            ))),
        }
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
        let current = self.read(ctx, resource_type, id).await?;
        if let Some(expected) = opts.if_match
            && expected != current.version
        {
            return Err(EngineError::precondition_failed(expected, resource_type, id, current.version));
        }
        let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
            EngineError::bad_request(
                IssueType::Structure,
                format!("the body is not a JSON Patch document (RFC 6902): {e}"),
            )
        })?;
        let mut doc: Value = serde_json::from_str(current.body.as_deref().unwrap_or("{}"))
            .map_err(|e| EngineError::Store(StoreError::Backend(format!("stored JSON unreadable: {e}"))))?;
        json_patch::patch(&mut doc, &patch).map_err(|e| {
            EngineError::bad_request(IssueType::Processing, format!("the patch cannot be applied: {e}"))
        })?;
        if doc.get("id").and_then(Value::as_str) != Some(id)
            || doc.get("resourceType").and_then(Value::as_str) != Some(resource_type)
        {
            return Err(EngineError::bad_request(
                IssueType::Invalid,
                "a patch must not change the resource's id or resourceType",
            ));
        }
        let opts = RequestOptions { if_match: Some(current.version), ..opts.clone() };
        self.update(ctx, resource_type, id, doc, &opts).await
    }

    /// `DELETE [type]/[id]`; deleting a missing or deleted resource succeeds with `None`.
    pub async fn delete(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: &str,
        opts: &RequestOptions,
    ) -> EngineResult<Option<WriteOutcome>> {
        self.check_type(resource_type)?;
        for _ in 0..RETRIES {
            let Some(current) = self.store.read(ctx, resource_type, id).await? else { return Ok(None) };
            if current.deleted {
                return Ok(None);
            }
            if let Some(expected) = opts.if_match
                && expected != current.version
            {
                self.authorize_existence(ctx, "delete", &current).await?;
                return Err(EngineError::precondition_failed(expected, resource_type, id, current.version));
            }
            let op = Self::tombstone(resource_type, id, current.version + 1, now_ms());
            let resource = stored_from_op(&op);
            match self.commit_checked(ctx, vec![op], "delete").await {
                Ok(()) => return Ok(Some(WriteOutcome { resource, created: false })),
                Err(EngineError::Store(StoreError::VersionConflict { .. })) if opts.if_match.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Conflict {
            message: format!("{resource_type}/{id} kept changing during the delete; retry"),
            precondition: false,
        })
    }

    /// Deletes every match (at most `max_count`), atomically.
    pub async fn conditional_delete(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        criteria: &[(String, String)],
    ) -> EngineResult<usize> {
        self.check_type(resource_type)?;
        let found = self.matches(ctx, resource_type, criteria, self.config.max_count + 1).await?;
        if found.len() > self.config.max_count {
            return Err(EngineError::TooCostly(format!(
                "the conditional delete matches more than {} resources; narrow the criteria",
                self.config.max_count
            )));
        }
        let now = now_ms();
        let ops: Vec<WriteOp> =
            found.iter().map(|r| Self::tombstone(resource_type, &r.id, r.version + 1, now)).collect();
        let n = ops.len();
        self.commit_checked(ctx, ops, "delete").await?;
        Ok(n)
    }
}

/// The stored form of a version about to be committed.
pub(crate) fn stored_from_op(op: &WriteOp) -> StoredResource {
    StoredResource {
        resource_type: op.resource_type.clone(),
        id: op.id.clone(),
        version: op.version,
        last_updated: op.last_updated,
        deleted: op.method == WriteMethod::Delete,
        body: op.body.clone(),
        method: op.method,
        patient_key: op.compartments.first().cloned().unwrap_or_default(),
    }
}

/// Splits `a=1&b=2` (percent-decoding) into pairs.
pub(crate) fn parse_query_string(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.trim_start_matches('?').as_bytes()).into_owned().collect()
}

/// A resource's JSON for embedding in a Bundle (stored text parsed back).
pub(crate) fn body_json(resource: &StoredResource) -> Value {
    resource.body.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or_else(|| json!({}))
}
