//! Batch and transaction Bundles.
//!
//! A transaction is all or nothing: every entry is resolved first (ids assigned, `urn:uuid:`
//! full URLs mapped, conditional references and conditional writes searched), then all writes
//! go to the store in ONE `commit`, then the GET entries are answered. Any error names the
//! entry (`Bundle.entry[3]`) and nothing is written. A batch runs each entry on its own and
//! reports each entry's outcome in its response.

use std::collections::{HashMap, HashSet};

use fhir::IssueType;
use serde_json::{Value, json};
use store::{Ctx, StoreError, StoredResource, WriteMethod, WriteOp};

use crate::crud::{content_without_version, new_id, now_ms, parse_query_string, stored_from_op, valid_id};
use crate::{Engine, EngineError, EngineResult, RequestOptions, ReturnPreference};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Delete,
    Post,
    Put,
    Patch,
    Get,
}

struct Entry {
    index: usize,
    method: Method,
    url: String,
    resource: Option<Value>,
    full_url: Option<String>,
    if_none_exist: Option<String>,
    if_match: Option<i64>,
}

fn at(index: usize) -> String {
    format!("Bundle.entry[{index}]")
}

fn bad(index: usize, message: impl Into<String>) -> EngineError {
    EngineError::BadRequest(vec![
        fhir::Issue::error(IssueType::Invalid, format!("{}: {}", at(index), message.into())).at(at(index)),
    ])
}

/// Prefixes an error's messages with the entry it came from.
fn in_entry(index: usize, error: EngineError) -> EngineError {
    let prefix = |issues: Vec<fhir::Issue>| {
        issues
            .into_iter()
            .map(|mut i| {
                if !i.diagnostics.starts_with("Bundle.entry[") {
                    i.diagnostics = format!("{}: {}", at(index), i.diagnostics);
                }
                if i.expression.is_none() {
                    i.expression = Some(at(index));
                }
                i
            })
            .collect()
    };
    match error {
        EngineError::BadRequest(issues) => EngineError::BadRequest(prefix(issues)),
        EngineError::Unprocessable(issues) => EngineError::Unprocessable(prefix(issues)),
        EngineError::NotFound(what) => EngineError::NotFound(format!("{} ({what})", at(index))),
        EngineError::MultipleMatches(m) => EngineError::MultipleMatches(format!("{}: {m}", at(index))),
        EngineError::Conflict { message, precondition } => {
            EngineError::Conflict { message: format!("{}: {message}", at(index)), precondition }
        }
        other => other,
    }
}

fn parse_etag(text: &str) -> Option<i64> {
    text.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

/// The entries of a Bundle, their resources moved out of it.
fn parse_entries(mut bundle: Value) -> EngineResult<Vec<Entry>> {
    let entries = match bundle.get_mut("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(EngineError::bad_request(IssueType::Structure, "Bundle.entry must be an array")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (index, e) in entries.iter_mut().enumerate() {
        let resource = e.get_mut("resource").map(Value::take);
        let request = e.get("request").ok_or_else(|| bad(index, "every entry needs a request (method and url)"))?;
        let method = match request.get("method").and_then(Value::as_str) {
            Some("GET") | Some("HEAD") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("PATCH") => Method::Patch,
            Some("DELETE") => Method::Delete,
            other => {
                return Err(bad(
                    index,
                    format!("request.method {other:?} is not one of GET, POST, PUT, PATCH, DELETE"),
                ));
            }
        };
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(index, "request.url is missing"))?
            .trim_start_matches('/')
            .to_string();
        if matches!(method, Method::Post | Method::Put) && resource.is_none() {
            return Err(bad(index, "a POST or PUT entry needs a resource"));
        }
        let if_match = match request.get("ifMatch").and_then(Value::as_str) {
            Some(t) => {
                Some(parse_etag(t).ok_or_else(|| bad(index, format!("ifMatch '{t}' is not an ETag like W/\"3\"")))?)
            }
            None => None,
        };
        out.push(Entry {
            index,
            method,
            url,
            resource,
            full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_string),
            if_none_exist: request.get("ifNoneExist").and_then(Value::as_str).map(str::to_string),
            if_match,
        });
    }
    Ok(out)
}

/// `Type`, `Type/id`, `Type?query` of a request url.
fn split_url(url: &str) -> (String, Option<String>, Option<String>) {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let mut parts = path.splitn(2, '/');
    let ty = parts.next().unwrap_or_default().to_string();
    let id = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
    (ty, id, query)
}

/// Rewrites every `reference` string found anywhere in `value`.
fn rewrite_references(
    value: &mut Value,
    f: &mut dyn FnMut(&str) -> Result<Option<String>, String>,
) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "reference"
                    && let Value::String(s) = v
                {
                    if let Some(new) = f(s)? {
                        *s = new;
                    }
                    continue;
                }
                rewrite_references(v, f)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                rewrite_references(v, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    };
    format!("{code} {reason}").trim().to_string()
}

/// The `response` of an entry that wrote or read a resource.
fn write_response(resource: &StoredResource, status: u16, with_resource: bool) -> Value {
    let mut entry = json!({
        "response": {
            "status": status_line(status),
            "location": format!("{}/{}/_history/{}", resource.resource_type, resource.id, resource.version),
            "etag": format!("W/\"{}\"", resource.version),
            "lastModified": fhir::normalize::format_instant(resource.last_updated),
        }
    });
    if with_resource && let Some(body) = resource.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()) {
        entry["resource"] = body;
    }
    entry
}

fn error_response(error: &EngineError) -> Value {
    json!({
        "response": {
            "status": status_line(error.http_status()),
            "outcome": fhir::outcome::operation_outcome(&error.issues()),
        }
    })
}

impl Engine {
    /// `POST /` with a batch or transaction Bundle: the response Bundle.
    pub async fn bundle(&self, ctx: &Ctx, bundle: Value, opts: &RequestOptions) -> EngineResult<Value> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(EngineError::bad_request(
                IssueType::Invalid,
                "POST to the base URL takes a Bundle of type batch or transaction",
            ));
        }
        let kind = bundle.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        if kind != "batch" && kind != "transaction" {
            return Err(EngineError::bad_request(
                IssueType::Invalid,
                format!("Bundle.type must be batch or transaction to be processed, not '{kind}'"),
            ));
        }
        let entries = parse_entries(bundle)?;
        if entries.len() > self.config.max_bundle_entries {
            return Err(EngineError::TooCostly(format!(
                "the Bundle has {} entries; the limit is {}",
                entries.len(),
                self.config.max_bundle_entries
            )));
        }
        let responses = if kind == "transaction" {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.transaction(ctx, &entries, opts).await {
                    Err(EngineError::Store(StoreError::VersionConflict { .. })) if attempt < 3 => continue,
                    other => break other?,
                }
            }
        } else {
            self.batch(ctx, entries, opts).await
        };
        Ok(json!({
            "resourceType": "Bundle",
            "id": new_id(),
            "type": format!("{kind}-response"),
            "entry": responses,
        }))
    }

    async fn batch(&self, ctx: &Ctx, entries: Vec<Entry>, opts: &RequestOptions) -> Vec<Value> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let (ty, id, query) = split_url(&entry.url);
            let entry_opts =
                RequestOptions { if_match: entry.if_match, if_none_exist: entry.if_none_exist.clone(), ..opts.clone() };
            let with_resource = opts.return_preference == ReturnPreference::Representation;
            let result: EngineResult<Value> = match (entry.method, id, query) {
                (Method::Get, None, q) if ty.is_empty() || self.defs.is_resource_type(&ty) => {
                    let params = q.as_deref().map(parse_query_string).unwrap_or_default();
                    let t = (!ty.is_empty()).then_some(ty.as_str());
                    self.search(ctx, t, &params, opts)
                        .await
                        .map(|b| json!({"resource": b, "response": {"status": "200 OK"}}))
                }
                (Method::Get, Some(id), _) => match id.split_once("/_history/") {
                    Some((id, v)) => self.vread(ctx, &ty, id, v).await.map(|r| write_response(&r, 200, true)),
                    None => self.read(ctx, &ty, &id).await.map(|r| write_response(&r, 200, true)),
                },
                (Method::Post, _, _) => {
                    let body = entry.resource.clone().unwrap_or(Value::Null);
                    self.create(ctx, &ty, body, &entry_opts)
                        .await
                        .map(|o| write_response(&o.resource, if o.created { 201 } else { 200 }, with_resource))
                }
                (Method::Put, Some(id), _) => {
                    let body = entry.resource.clone().unwrap_or(Value::Null);
                    self.update(ctx, &ty, &id, body, &entry_opts)
                        .await
                        .map(|o| write_response(&o.resource, if o.created { 201 } else { 200 }, with_resource))
                }
                (Method::Put, None, Some(q)) => {
                    let body = entry.resource.clone().unwrap_or(Value::Null);
                    self.conditional_update(ctx, &ty, &parse_query_string(&q), body, &entry_opts)
                        .await
                        .map(|o| write_response(&o.resource, if o.created { 201 } else { 200 }, with_resource))
                }
                (Method::Patch, Some(id), _) => {
                    let patch = entry.resource.clone().and_then(binary_patch).unwrap_or(Value::Null);
                    self.patch(ctx, &ty, &id, patch, &entry_opts)
                        .await
                        .map(|o| write_response(&o.resource, 200, with_resource))
                }
                (Method::Delete, Some(id), _) => self
                    .delete(ctx, &ty, &id, &entry_opts)
                    .await
                    .map(|_| json!({"response": {"status": "204 No Content"}})),
                (Method::Delete, None, Some(q)) => self
                    .conditional_delete(ctx, &ty, &parse_query_string(&q))
                    .await
                    .map(|_| json!({"response": {"status": "204 No Content"}})),
                _ => Err(bad(entry.index, format!("cannot process {:?} {}", entry.method, entry.url))),
            };
            out.push(match result {
                Ok(v) => v,
                Err(e) => error_response(&in_entry(entry.index, e)),
            });
        }
        out
    }

    async fn transaction(&self, ctx: &Ctx, entries: &[Entry], opts: &RequestOptions) -> EngineResult<Vec<Value>> {
        let criteria: Vec<(&str, &str)> = entries
            .iter()
            .filter_map(|e| match &e.if_none_exist {
                Some(condition) => {
                    Some((e.url.trim_matches('/').split(['/', '?']).next().unwrap_or(""), condition.as_str()))
                }
                None if e.method != Method::Get => e.url.split_once('?').map(|(ty, q)| (ty.trim_matches('/'), q)),
                None => None,
            })
            .collect();
        let _serialised = self.conditional.lock(&criteria).await;
        // 1. Decide every entry's target (type, id) and map full URLs to local references.
        struct Target {
            ty: String,
            id: Option<String>,
            /// For POST with a matching ifNoneExist: the existing resource, nothing written.
            existing: Option<StoredResource>,
            /// For conditional deletes: every match.
            delete_matches: Vec<StoredResource>,
        }
        let mut targets: Vec<Target> = Vec::with_capacity(entries.len());
        let mut full_urls: HashMap<String, String> = HashMap::new();
        for entry in entries {
            let (ty, id, query) = split_url(&entry.url);
            let i = entry.index;
            if entry.method != Method::Get && !self.defs.is_resource_type(&ty) {
                return Err(bad(i, format!("'{ty}' in request.url is not a FHIR R4 resource type")));
            }
            let mut target = Target { ty: ty.clone(), id: None, existing: None, delete_matches: Vec::new() };
            match entry.method {
                Method::Post => {
                    if let Some(cond) = &entry.if_none_exist {
                        let found =
                            self.matches(ctx, &ty, &parse_query_string(cond), 2).await.map_err(|e| in_entry(i, e))?;
                        match found.len() {
                            0 => {}
                            1 => target.existing = found.into_iter().next(),
                            _ => {
                                return Err(in_entry(
                                    i,
                                    EngineError::MultipleMatches(format!(
                                        "ifNoneExist '{cond}' matches more than one {ty}"
                                    )),
                                ));
                            }
                        }
                    }
                    target.id = Some(target.existing.as_ref().map_or_else(new_id, |e| e.id.clone()));
                }
                Method::Put | Method::Patch => match (id, query) {
                    (Some(id), _) => {
                        if !valid_id(&id) {
                            return Err(bad(i, format!("'{id}' is not a valid FHIR id")));
                        }
                        target.id = Some(id);
                    }
                    (None, Some(q)) => {
                        let found =
                            self.matches(ctx, &ty, &parse_query_string(&q), 2).await.map_err(|e| in_entry(i, e))?;
                        target.id = Some(match found.as_slice() {
                            [] => entry
                                .resource
                                .as_ref()
                                .and_then(|r| r.get("id"))
                                .and_then(Value::as_str)
                                .map_or_else(new_id, str::to_string),
                            [one] => one.id.clone(),
                            _ => {
                                return Err(in_entry(
                                    i,
                                    EngineError::MultipleMatches(format!(
                                        "the conditional update '{q}' matches more than one {ty}"
                                    )),
                                ));
                            }
                        });
                    }
                    (None, None) => return Err(bad(i, "PUT needs Type/id or Type?criteria")),
                },
                Method::Delete => match (id, query) {
                    (Some(id), _) => target.id = Some(id),
                    (None, Some(q)) => {
                        target.delete_matches = self
                            .matches(ctx, &ty, &parse_query_string(&q), self.config.max_count)
                            .await
                            .map_err(|e| in_entry(i, e))?
                    }
                    (None, None) => return Err(bad(i, "DELETE needs Type/id or Type?criteria")),
                },
                Method::Get => {}
            }
            if let (Some(full_url), Some(id)) = (&entry.full_url, &target.id)
                && matches!(entry.method, Method::Post | Method::Put)
                && full_urls.insert(full_url.clone(), format!("{ty}/{id}")).is_some()
            {
                return Err(bad(i, format!("fullUrl '{full_url}' appears in more than one entry")));
            }
            targets.push(target);
        }

        // 2. Rewrite references and resolve conditional references.
        let mut resources: Vec<Option<Value>> = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(mut resource) = entry.resource.clone() else {
                resources.push(None);
                continue;
            };
            if entry.method == Method::Patch {
                resources.push(Some(resource));
                continue;
            }
            let mut conditional: Vec<String> = Vec::new();
            rewrite_references(&mut resource, &mut |reference| {
                if let Some(local) = full_urls.get(reference) {
                    return Ok(Some(local.clone()));
                }
                if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
                    return Err(format!(
                        "the reference '{reference}' does not match the fullUrl of any entry in this transaction"
                    ));
                }
                if reference.contains('?') {
                    conditional.push(reference.to_string());
                }
                Ok(None)
            })
            .map_err(|m| bad(entry.index, m))?;
            let mut resolved: HashMap<String, String> = HashMap::new();
            for reference in conditional {
                let (ty, _, query) = split_url(&reference);
                if !self.defs.is_resource_type(&ty) {
                    return Err(bad(
                        entry.index,
                        format!("the conditional reference '{reference}' names no resource type"),
                    ));
                }
                let found = self
                    .matches(ctx, &ty, &parse_query_string(query.as_deref().unwrap_or_default()), 2)
                    .await
                    .map_err(|e| in_entry(entry.index, e))?;
                match found.as_slice() {
                    [one] => {
                        resolved.insert(reference, format!("{ty}/{}", one.id));
                    }
                    [] => {
                        return Err(bad(
                            entry.index,
                            format!("the conditional reference '{reference}' matches no resource"),
                        ));
                    }
                    _ => {
                        return Err(in_entry(
                            entry.index,
                            EngineError::MultipleMatches(format!(
                                "the conditional reference '{reference}' matches more than one resource"
                            )),
                        ));
                    }
                }
            }
            if !resolved.is_empty() {
                rewrite_references(&mut resource, &mut |r| Ok(resolved.get(r).cloned()))
                    .map_err(|m| bad(entry.index, m))?;
            }
            resources.push(Some(resource));
        }

        // 3. Read every targeted resource's current state in two batched store calls.
        let keys: Vec<(String, String)> = entries
            .iter()
            .zip(&targets)
            .filter(|(e, t)| matches!(e.method, Method::Put | Method::Patch | Method::Delete) && t.id.is_some())
            .map(|(_, t)| (t.ty.clone(), t.id.clone().unwrap_or_default()))
            .collect();
        let versions = self.store.current_versions(ctx, &keys).await?;
        // Bodies only of the resources that exist and are not deleted (none for new ones).
        let live: Vec<(String, String)> = keys
            .iter()
            .zip(&versions)
            .filter(|(_, version)| matches!(version, Some((_, false))))
            .map(|(key, _)| key.clone())
            .collect();
        let bodies = if live.is_empty() { Vec::new() } else { self.store.read_many(ctx, &live).await? };
        let mut current_state: HashMap<(String, String), StoredResource> = HashMap::new();
        for (key, version) in keys.iter().zip(versions) {
            if let Some((version, deleted)) = version {
                current_state.insert(
                    key.clone(),
                    StoredResource {
                        resource_type: key.0.clone(),
                        id: key.1.clone(),
                        version,
                        last_updated: 0,
                        deleted,
                        body: None,
                        method: if deleted { WriteMethod::Delete } else { WriteMethod::Update },
                        patient_key: String::new(),
                    },
                );
            }
        }
        for body in bodies {
            current_state.insert((body.resource_type.clone(), body.id.clone()), body);
        }

        // 4. Build the writes, in the spec's order (DELETE, POST, PUT/PATCH), checking versions.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| (entries[i].method, i));
        let now = now_ms();
        let mut ops: Vec<WriteOp> = Vec::new();
        let mut written: HashSet<(String, String)> = HashSet::new();
        let mut results: Vec<Option<(StoredResource, u16)>> = vec![None; entries.len()];
        let mut claim = |ty: &str, id: &str, index: usize| -> EngineResult<()> {
            if written.insert((ty.to_string(), id.to_string())) {
                Ok(())
            } else {
                Err(bad(index, format!("{ty}/{id} is written by more than one entry of this transaction")))
            }
        };
        for &n in &order {
            let entry = &entries[n];
            let target = &targets[n];
            let i = entry.index;
            match entry.method {
                Method::Get => {}
                Method::Delete => {
                    let victims: Vec<(String, i64)> = match &target.id {
                        Some(id) => match current_state.get(&(target.ty.clone(), id.clone())).cloned() {
                            Some(c) if !c.deleted => vec![(id.clone(), c.version)],
                            _ => vec![],
                        },
                        None => target.delete_matches.iter().map(|r| (r.id.clone(), r.version)).collect(),
                    };
                    for (id, version) in victims {
                        if let Some(expected) = entry.if_match
                            && expected != version
                        {
                            return Err(in_entry(
                                i,
                                EngineError::precondition_failed(expected, &target.ty, &id, version),
                            ));
                        }
                        claim(&target.ty, &id, i)?;
                        ops.push(Self::tombstone(&target.ty, &id, version + 1, now));
                    }
                }
                Method::Post => {
                    let id = target.id.clone().expect("POST targets have ids");
                    if let Some(existing) = &target.existing {
                        results[n] = Some((existing.clone(), 200));
                        continue;
                    }
                    let body = resources[n].take().unwrap_or(Value::Null);
                    self.check_body(&target.ty, &body, &at(i)).map_err(|e| in_entry(i, e))?;
                    claim(&target.ty, &id, i)?;
                    let op = self.build_op(&target.ty, &id, 1, now, WriteMethod::Create, body)?;
                    results[n] = Some((stored_from_op(&op), 201));
                    ops.push(op);
                }
                Method::Put | Method::Patch => {
                    let id = target.id.clone().expect("PUT targets have ids");
                    let current = current_state.get(&(target.ty.clone(), id.clone())).cloned();
                    let current_version = current.as_ref().map_or(0, |c| c.version);
                    if let Some(expected) = entry.if_match
                        && expected != current_version
                    {
                        if let Some(c) = &current {
                            self.authorize_existence(ctx, "update", c).await.map_err(|e| in_entry(i, e))?;
                        }
                        return Err(in_entry(
                            i,
                            EngineError::precondition_failed(expected, &target.ty, &id, current_version),
                        ));
                    }
                    let mut body = if entry.method == Method::Patch {
                        let Some(c) = current.as_ref().filter(|c| !c.deleted) else {
                            return Err(in_entry(i, EngineError::NotFound(format!("{}/{id}", target.ty))));
                        };
                        let mut doc: Value = crate::crud::body_json(c);
                        let patch = resources[n].take().and_then(binary_patch).unwrap_or(Value::Null);
                        let patch: json_patch::Patch =
                            serde_json::from_value(patch).map_err(|e| bad(i, format!("not a JSON Patch: {e}")))?;
                        json_patch::patch(&mut doc, &patch)
                            .map_err(|e| bad(i, format!("the patch cannot be applied: {e}")))?;
                        doc
                    } else {
                        resources[n].take().unwrap_or(Value::Null)
                    };
                    if let Some(body_id) = body.get("id").and_then(Value::as_str)
                        && body_id != id
                    {
                        return Err(bad(
                            i,
                            format!("the resource id '{body_id}' does not match '{id}' in request.url"),
                        ));
                    }
                    body["id"] = Value::String(id.clone());
                    self.check_body(&target.ty, &body, &at(i)).map_err(|e| in_entry(i, e))?;
                    claim(&target.ty, &id, i)?;
                    if let Some(c) = current.as_ref().filter(|c| !c.deleted) {
                        let stored = crate::crud::body_json(c);
                        if content_without_version(&stored) == content_without_version(&body) {
                            results[n] = Some((c.clone(), 200));
                            continue;
                        }
                    }
                    let created = current.as_ref().is_none_or(|c| c.deleted);
                    let method = if current.is_none() { WriteMethod::Create } else { WriteMethod::Update };
                    let op = self.build_op(&target.ty, &id, current_version + 1, now, method, body)?;
                    results[n] = Some((stored_from_op(&op), if created { 201 } else { 200 }));
                    ops.push(op);
                }
            }
        }

        // 5. One atomic commit.
        self.commit_checked(ctx, ops, "transaction").await?;

        // 6. Answer every entry (GETs see the committed state).
        let with_resource = opts.return_preference == ReturnPreference::Representation;
        let mut out = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let value = match entry.method {
                Method::Delete => json!({"response": {"status": "204 No Content"}}),
                Method::Get => {
                    let (ty, id, query) = split_url(&entry.url);
                    let result = match id {
                        Some(id) => self.read(ctx, &ty, &id).await.map(|r| write_response(&r, 200, true)),
                        None => {
                            let params = query.as_deref().map(parse_query_string).unwrap_or_default();
                            self.search(ctx, Some(&ty), &params, opts)
                                .await
                                .map(|b| json!({"resource": b, "response": {"status": "200 OK"}}))
                        }
                    };
                    result.unwrap_or_else(|e| error_response(&in_entry(entry.index, e)))
                }
                _ => match &results[n] {
                    Some((resource, status)) => {
                        let mut v = write_response(resource, *status, with_resource);
                        v["fullUrl"] =
                            Value::String(format!("{}/{}/{}", opts.base_url, resource.resource_type, resource.id));
                        v
                    }
                    None => json!({"response": {"status": "200 OK"}}),
                },
            };
            out.push(value);
        }
        Ok(out)
    }
}

/// A PATCH entry carries its JSON Patch as a Binary (base64 `data`) or, leniently, as a
/// Parameters-free raw array.
fn binary_patch(resource: Value) -> Option<Value> {
    if resource.is_array() {
        return Some(resource);
    }
    let data = resource.get("data")?.as_str()?;
    let bytes = base64_decode(data)?;
    serde_json::from_slice(&bytes).ok()
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}
