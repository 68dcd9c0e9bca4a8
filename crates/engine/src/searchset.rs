//! Search, history and `$everything` Bundles: paging links, totals, `_include` /
//! `_revinclude` (with `:iterate`), `_summary` and `_elements`.
//!
//! `_summary=true` keeps the top-level elements the R4 definitions mark `isSummary`, plus
//! `resourceType`, `id` and `meta`.

use std::collections::HashSet;

use fhir::search::{Criterion, Include, ParamRef, ParamValue, SearchQuery, SummaryMode, TotalMode};
use fhir::{IndexValue, IssueType, ParamType};
use serde_json::{Map, Value, json};
use store::{Ctx, HistoryQuery, StoredResource, WriteMethod};

use crate::crud::{body_json, new_id};
use crate::{Engine, EngineError, EngineResult, RequestOptions};

/// Most resources added by includes to one page.
const MAX_INCLUDED: usize = 1000;

pub(crate) fn encode_params(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The search parameters as the audit log records them: identifiers, phones and e-mail
/// addresses masked (kept: the system, the first three and last two characters of the value),
/// so the log never holds a full ID number in clear.
pub(crate) fn audit_params(params: &[(String, String)]) -> String {
    let masked: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| {
            let base = k.rsplit('.').next().unwrap_or("").split(':').next().unwrap_or("");
            if matches!(base, "identifier" | "phone" | "telecom" | "email") {
                let masked_values: Vec<String> = v
                    .split(',')
                    .map(|one| match one.rsplit_once('|') {
                        Some((system, value)) => format!("{system}|{}", mask(value)),
                        None => mask(one),
                    })
                    .collect();
                (k.clone(), masked_values.join(","))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    encode_params(&masked)
}

fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 5 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 5))
}

fn with_offset(params: &[(String, String)], offset: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "_offset").cloned().collect();
    out.push(("_offset".into(), offset.to_string()));
    out
}

fn link(relation: &str, url: String) -> Value {
    json!({"relation": relation, "url": url})
}

/// Applies `_summary` / `_elements` to a resource, marking it SUBSETTED.
fn subset(mut resource: Value, summary: Option<SummaryMode>, elements: Option<&[String]>) -> Value {
    let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
    type Keep = Box<dyn Fn(&str) -> bool>;
    let keep: Option<Keep> = match (summary, elements) {
        (_, Some(list)) => {
            let list: Vec<String> = list.to_vec();
            Some(Box::new(move |k: &str| matches!(k, "resourceType" | "id" | "meta") || list.iter().any(|e| e == k)))
        }
        (Some(SummaryMode::True), None) => {
            let summary = fhir::Definitions::r4().summary_elements(&ty);
            Some(Box::new(move |k: &str| {
                matches!(k, "resourceType" | "id" | "meta")
                    || summary.iter().any(|s| {
                        k == s
                            || (k.starts_with(s.as_str()) && k[s.len()..].starts_with(|c: char| c.is_ascii_uppercase()))
                    })
            }))
        }
        (Some(SummaryMode::Text), None) => {
            Some(Box::new(|k: &str| matches!(k, "resourceType" | "id" | "meta" | "text")))
        }
        (Some(SummaryMode::Data), None) => Some(Box::new(|k: &str| k != "text")),
        _ => None,
    };
    if let (Some(keep), Some(object)) = (keep, resource.as_object_mut()) {
        object.retain(|k, _| keep(k));
        let meta = object.entry("meta").or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(
                    json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}),
                );
            }
        }
    }
    resource
}

/// One Bundle entry as JSON text, embedding the resource's JSON text as is.
fn entry_json(base: &str, r: &StoredResource, resource: &str, mode: &str) -> String {
    let full_url = Value::String(format!("{base}/{}/{}", r.resource_type, r.id));
    format!(r#"{{"fullUrl":{full_url},"resource":{resource},"search":{{"mode":"{mode}"}}}}"#)
}

impl Engine {
    /// `GET [type]?...`, `GET /?...` (resource_type `None`), `POST [type]/_search`: a searchset Bundle.
    pub async fn search(
        &self,
        ctx: &Ctx,
        resource_type: Option<&str>,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<Value> {
        let text = self.search_json(ctx, resource_type, params, opts).await?;
        serde_json::from_str(&text)
            .map_err(|e| EngineError::Store(store::StoreError::Backend(format!("stored JSON: {e}"))))
    }

    /// The same searchset Bundle as [`Engine::search`], as JSON text. Stored resources are
    /// embedded as stored, without parsing and re-serialising them (unless `_summary` or
    /// `_elements` asks for a subset): this is what the HTTP API sends.
    pub async fn search_json(
        &self,
        ctx: &Ctx,
        resource_type: Option<&str>,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<String> {
        if let Some(t) = resource_type {
            self.check_type(t)?;
        }
        let constrained = self.constrain_search(ctx, resource_type, params).await?;
        let parsed = fhir::search::parse(self.defs, resource_type, &constrained, &self.parse_options(opts.lenient))
            .map_err(EngineError::BadRequest)?;
        let mut query = parsed.query;
        let count_only = query.summary == Some(SummaryMode::Count);
        if count_only {
            query.count = 0;
            query.total = TotalMode::Accurate;
        }
        let estimate = query.total == TotalMode::Estimate;
        if estimate {
            query.total = TotalMode::None;
        }
        let mut page = self.store.search(ctx, &query).await?;
        if estimate && page.resources.len() < query.count && (query.offset == 0 || !page.resources.is_empty()) {
            page.total = Some((query.offset + page.resources.len()) as u64);
        }
        let base = &opts.base_url;
        let path = match resource_type {
            Some(t) => format!("{base}/{t}"),
            None => base.clone(),
        };
        let subsetting = query.summary.is_some_and(|m| m != SummaryMode::False) || query.elements.is_some();
        let mut entries: Vec<String> = page
            .resources
            .iter()
            .map(|r| {
                if subsetting {
                    let resource = subset(body_json(r), query.summary, query.elements.as_deref());
                    entry_json(base, r, &resource.to_string(), "match")
                } else {
                    entry_json(base, r, r.body.as_deref().unwrap_or("{}"), "match")
                }
            })
            .collect();
        let included = self.includes(ctx, &query, &page.resources).await?;
        let included = self.visible(ctx, included).await?;
        let entity = format!("{}?{}", resource_type.unwrap_or(""), audit_params(params));
        let mut touched = page.resources.clone();
        touched.extend(included.iter().cloned());
        self.audit_search(ctx, "search", entity, &touched).await?;
        entries.extend(included.iter().map(|r| entry_json(base, r, r.body.as_deref().unwrap_or("{}"), "include")));
        if !parsed.warnings.is_empty() {
            entries.push(
                json!({
                    "fullUrl": format!("urn:uuid:{}", new_id()),
                    "resource": fhir::outcome::operation_outcome(&parsed.warnings),
                    "search": {"mode": "outcome"},
                })
                .to_string(),
            );
        }
        let mut links = vec![link("self", format!("{path}?{}", encode_params(&with_offset(params, query.offset))))];
        if !count_only {
            links.push(link("first", format!("{path}?{}", encode_params(&with_offset(params, 0)))));
            let more = match page.total {
                Some(total) => (query.offset + query.count) < total as usize,
                None => query.count > 0 && page.resources.len() == query.count,
            };
            if more && query.count > 0 {
                links.push(link(
                    "next",
                    format!("{path}?{}", encode_params(&with_offset(params, query.offset + query.count))),
                ));
            }
            if query.offset > 0 && query.count > 0 {
                let previous = query.offset.saturating_sub(query.count);
                links.push(link("previous", format!("{path}?{}", encode_params(&with_offset(params, previous)))));
            }
        }
        let mut bundle = json!({
            "resourceType": "Bundle",
            "id": new_id(),
            "meta": {"lastUpdated": fhir::normalize::format_instant(crate::crud::now_ms())},
            "type": "searchset",
            "link": links,
        });
        if let Some(total) = page.total {
            bundle["total"] = json!(total);
        }
        // Splice the entries in as text: `{…head…,"entry":[…]}`.
        let mut text = bundle.to_string();
        text.pop();
        text.push_str(",\"entry\":[");
        text.push_str(&entries.join(","));
        text.push_str("]}");
        Ok(text)
    }

    /// Resolves `_include` and `_revinclude` (iterating while `:iterate` finds new ones).
    async fn includes(
        &self,
        ctx: &Ctx,
        query: &SearchQuery,
        matches: &[StoredResource],
    ) -> EngineResult<Vec<StoredResource>> {
        if query.includes.is_empty() && query.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen: HashSet<(String, String)> =
            matches.iter().map(|r| (r.resource_type.clone(), r.id.clone())).collect();
        let mut out: Vec<StoredResource> = Vec::new();
        let mut frontier: Vec<StoredResource> = matches.to_vec();
        let mut first_round = true;
        while !frontier.is_empty() && out.len() < MAX_INCLUDED {
            let mut found: Vec<StoredResource> = Vec::new();
            for include in query.includes.iter().filter(|i| first_round || i.iterate) {
                let mut keys: Vec<(String, String)> = Vec::new();
                for r in
                    frontier.iter().filter(|r| include.source_type == "*" || include.source_type == r.resource_type)
                {
                    let body = body_json(r);
                    for e in fhir::index::extract(self.defs, &body) {
                        if include.param.as_ref().is_some_and(|p| *p != e.param) {
                            continue;
                        }
                        if let IndexValue::Reference { target_type: Some(t), target_id: Some(id), url: None, .. } =
                            e.value
                            && include.target_type.as_ref().is_none_or(|want| *want == t)
                            && !seen.contains(&(t.clone(), id.clone()))
                        {
                            keys.push((t, id));
                        }
                    }
                }
                keys.sort();
                keys.dedup();
                found.extend(self.store.read_many(ctx, &keys).await?);
            }
            for include in query.revincludes.iter().filter(|i| first_round || i.iterate) {
                found.extend(self.revinclude(ctx, include, &frontier).await?);
            }
            first_round = false;
            frontier = found.into_iter().filter(|r| seen.insert((r.resource_type.clone(), r.id.clone()))).collect();
            out.extend(frontier.iter().cloned());
        }
        out.truncate(MAX_INCLUDED);
        Ok(out)
    }

    async fn revinclude(
        &self,
        ctx: &Ctx,
        include: &Include,
        targets: &[StoredResource],
    ) -> EngineResult<Vec<StoredResource>> {
        if targets.is_empty() || include.source_type == "*" {
            return Ok(Vec::new());
        }
        let params: Vec<&fhir::SearchParamDef> = self
            .defs
            .search_params_for(&include.source_type)
            .into_iter()
            .filter(|p| p.kind == ParamType::Reference && include.param.as_ref().is_none_or(|want| *want == p.code))
            .collect();
        let mut out = Vec::new();
        for p in params {
            let values: Vec<ParamValue> = targets
                .iter()
                .map(|t| ParamValue::Reference {
                    resource_type: Some(t.resource_type.clone()),
                    id: Some(t.id.clone()),
                    version: None,
                    url: None,
                })
                .collect();
            let query = SearchQuery {
                resource_type: Some(include.source_type.clone()),
                criteria: vec![Criterion::Param {
                    param: ParamRef { code: p.code.clone(), kind: ParamType::Reference, targets: p.targets.clone() },
                    modifier: None,
                    values,
                }],
                count: MAX_INCLUDED,
                total: TotalMode::None,
                ..SearchQuery::default()
            };
            out.extend(self.store.search(ctx, &query).await?.resources);
        }
        Ok(out)
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
        if let Some(t) = resource_type {
            self.check_type(t)?;
        }
        let mut query = HistoryQuery {
            resource_type: resource_type.map(str::to_string),
            id: id.map(str::to_string),
            count: self.config.default_count,
            ..HistoryQuery::default()
        };
        for (k, v) in params {
            match k.as_str() {
                "_since" => {
                    let (low, _) = fhir::normalize::date_range(v).ok_or_else(|| {
                        EngineError::bad_request(
                            IssueType::Invalid,
                            format!("_since '{v}' is not a valid instant (e.g. 2024-05-01T00:00:00Z)"),
                        )
                    })?;
                    query.since = Some(low);
                }
                "_count" => {
                    let n: usize = v.parse().map_err(|_| {
                        EngineError::bad_request(
                            IssueType::Invalid,
                            format!("_count must be a non-negative whole number, not '{v}'"),
                        )
                    })?;
                    query.count = n.min(self.config.max_count);
                }
                "_offset" => {
                    query.offset = v.parse().map_err(|_| {
                        EngineError::bad_request(
                            IssueType::Invalid,
                            format!("_offset must be a non-negative whole number, not '{v}'"),
                        )
                    })?
                }
                "_format" | "_pretty" => {}
                other if !opts.lenient => {
                    return Err(EngineError::bad_request(
                        IssueType::NotSupported,
                        format!("the history parameter '{other}' is not supported (use _since, _count, _offset)"),
                    ));
                }
                _ => {}
            }
        }
        match (resource_type, id) {
            (Some(t), Some(i)) => match self.store.read(ctx, t, i).await? {
                None => return Err(EngineError::NotFound(format!("{t}/{i}"))),
                Some(current) if current.deleted => {
                    // The last version with content decides who may see the history.
                    let versions = self.store.history(ctx, &HistoryQuery { count: 1000, ..query.clone() }).await?;
                    match versions.resources.into_iter().find(|r| !r.deleted) {
                        Some(last) => self.authorize_read(ctx, "history", &last).await?,
                        None => self.authorize_bulk(ctx, access::Action::History, t).await?,
                    }
                }
                Some(current) => self.authorize_read(ctx, "history", &current).await?,
            },
            (t, _) => self.authorize_bulk(ctx, access::Action::History, t.unwrap_or("*")).await?,
        }
        let page = self.store.history(ctx, &query).await?;
        if id.is_none() {
            // Type and system history (instance history was recorded by its read decision).
            let entity = format!("{}/_history?{}", resource_type.unwrap_or(""), audit_params(params));
            self.audit_search(ctx, "history", entity, &page.resources).await?;
        }
        let base = &opts.base_url;
        let entries: Vec<Value> = page
            .resources
            .iter()
            .map(|r| {
                let (method, url, status) = match r.method {
                    WriteMethod::Create => ("POST", r.resource_type.clone(), "201 Created"),
                    WriteMethod::Update => ("PUT", format!("{}/{}", r.resource_type, r.id), "200 OK"),
                    WriteMethod::Delete => ("DELETE", format!("{}/{}", r.resource_type, r.id), "204 No Content"),
                };
                let mut e = json!({
                    "fullUrl": format!("{base}/{}/{}", r.resource_type, r.id),
                    "request": {"method": method, "url": url},
                    "response": {
                        "status": status,
                        "etag": format!("W/\"{}\"", r.version),
                        "lastModified": fhir::normalize::format_instant(r.last_updated),
                    },
                });
                if !r.deleted {
                    e["resource"] = body_json(r);
                }
                e
            })
            .collect();
        let path = match (resource_type, id) {
            (Some(t), Some(i)) => format!("{base}/{t}/{i}/_history"),
            (Some(t), None) => format!("{base}/{t}/_history"),
            _ => format!("{base}/_history"),
        };
        let mut links = vec![link("self", format!("{path}?{}", encode_params(&with_offset(params, query.offset))))];
        let total = page.total.unwrap_or(0) as usize;
        if query.count > 0 && query.offset + query.count < total {
            links.push(link(
                "next",
                format!("{path}?{}", encode_params(&with_offset(params, query.offset + query.count))),
            ));
        }
        Ok(json!({
            "resourceType": "Bundle",
            "id": new_id(),
            "type": "history",
            "total": total,
            "link": links,
            "entry": entries,
        }))
    }

    /// `Patient/[id]/$everything` as a Bundle value (see [`Engine::everything_json`]).
    pub async fn everything(
        &self,
        ctx: &Ctx,
        patient_id: &str,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<Value> {
        let text = self.everything_json(ctx, patient_id, params, opts).await?;
        serde_json::from_str(&text)
            .map_err(|e| EngineError::Store(store::StoreError::Backend(format!("stored JSON: {e}"))))
    }

    /// `$everything` as JSON text, stored resources embedded as stored: the Patient, every resource in its compartment, and the shared resources
    /// (organizations, practitioners, locations, medications, …) they reference. Honors
    /// `_since` and `_type`; returns all entries in one Bundle (no paging).
    pub async fn everything_json(
        &self,
        ctx: &Ctx,
        patient_id: &str,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<String> {
        self.read(ctx, "Patient", patient_id).await?;
        let mut since = None;
        let mut types: Vec<String> = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "_since" => {
                    since = Some(fhir::normalize::date_range(v).map(|r| r.0).ok_or_else(|| {
                        EngineError::bad_request(IssueType::Invalid, format!("_since '{v}' is not a valid instant"))
                    })?)
                }
                "_type" => {
                    for t in v.split(',') {
                        if !self.defs.is_resource_type(t) {
                            return Err(EngineError::bad_request(
                                IssueType::Invalid,
                                format!("'{t}' in _type is not a resource type"),
                            ));
                        }
                        types.push(t.to_string());
                    }
                }
                "_count" | "_format" | "_pretty" | "start" | "end" => {}
                other if !opts.lenient => {
                    return Err(EngineError::bad_request(
                        IssueType::NotSupported,
                        format!("the $everything parameter '{other}' is not supported (use _since, _type)"),
                    ));
                }
                _ => {}
            }
        }
        let members = self.store.patient_compartment(ctx, patient_id, since, &types).await?;
        let mut seen: HashSet<(String, String)> =
            members.iter().map(|r| (r.resource_type.clone(), r.id.clone())).collect();
        let mut wanted: Vec<(String, String)> = Vec::new();
        for r in &members {
            let body = body_json(r);
            let mut collect = |reference: &str| {
                if let IndexValue::Reference { target_type: Some(t), target_id: Some(id), url: None, .. } =
                    fhir::index::reference_value(reference, None)
                {
                    let shared = self.defs.patient_compartment_params(&t).is_empty() && t != "Patient";
                    if shared && (types.is_empty() || types.contains(&t)) && seen.insert((t.clone(), id.clone())) {
                        wanted.push((t, id));
                    }
                }
            };
            walk_references(&body, &mut collect);
        }
        let shared = self.store.read_many(ctx, &wanted).await?;
        let members = self.visible(ctx, members).await?;
        let shared = self.visible(ctx, shared).await?;
        if ctx.principal.is_some() {
            let entity = format!("Patient/{patient_id}/$everything");
            let glass = ctx.principal.as_deref().and_then(|p| p.break_glass.as_deref()).map(|_| "break-glass");
            let record =
                crate::audit::record(ctx, "everything", "success", entity, vec![patient_id.to_string()], glass);
            if glass.is_none() && self.config.audit_reads == crate::AuditMode::Queued {
                self.audit.queue(record).await?;
            } else {
                self.audit.append(record).await?;
            }
        }
        let base = &opts.base_url;
        let entries: Vec<String> = members
            .iter()
            .chain(shared.iter())
            .map(|r| entry_json(base, r, r.body.as_deref().unwrap_or("{}"), "match"))
            .collect();
        let mut text = json!({
            "resourceType": "Bundle",
            "id": new_id(),
            "type": "searchset",
            "total": entries.len(),
            "link": [link("self", format!("{base}/Patient/{patient_id}/$everything"))],
        })
        .to_string();
        text.pop();
        text.push_str(",\"entry\":[");
        text.push_str(&entries.join(","));
        text.push_str("]}");
        Ok(text)
    }
}

pub(crate) fn walk_references(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(s)) => f(s),
                    _ => walk_references(v, f),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk_references(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::audit_params;

    #[test]
    fn the_audit_log_gets_identifiers_masked() {
        let params = vec![
            ("identifier".to_string(), "urn:oid:2.16.156.10011.1.5|11010519491231002X".to_string()),
            ("subject:Patient.phone".to_string(), "13800138000".to_string()),
            ("code".to_string(), "2339-0".to_string()),
        ];
        let text = audit_params(&params);
        assert!(!text.contains("11010519491231002X") && !text.contains("13800138000"), "{text}");
        assert!(text.contains("110*************2X"), "{text}");
        assert!(text.contains("code=2339-0"), "{text}");
    }
}
