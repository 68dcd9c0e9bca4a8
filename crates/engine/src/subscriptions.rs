//! FHIR R4 Subscriptions: publish/subscribe notifications of new and changed resources over the
//! `rest-hook` and `websocket` channels (docs/SUBSCRIPTIONS.md).
//!
//! A `Subscription` is written through the ordinary FHIR API. On every write
//! ([`Engine::check_body`] via [`issues`]) its `criteria` must parse as a search on a known type with
//! known parameters, its channel be `rest-hook` (an `http` endpoint whose host is on
//! [`SubscriptionConfig::allowed_hosts`]) or `websocket`, its payload absent or FHIR JSON.
//! [`Engine::commit_checked`] then (`subscription_writes`) activates it (`requested` → `active`),
//! stamps the creator as its owner (a `meta.tag` in [`OWNER_TAG`], kept on every later version;
//! only the owner may change, read or find it) and keeps a snapshot of the owner's principal
//! (security object [`OWNER_KIND`]) for the policy checks at delivery time.
//!
//! A worker ([`Engine::subscriptions_run`], spawned by `serve`) reads the outbox after its durable
//! cursor `subscriptions`. For each created or updated resource it evaluates the criteria of every
//! active Subscription on that type, restricted to the resource's `_id`, with the store's own
//! search (so every parameter type, modifier and chain the search supports matches here exactly as
//! it would in `GET [type]?criteria`), and queues a pending notification (security object
//! [`PENDING_KIND`], id `<subscription>/<outbox seq>`) before moving the cursor: nothing is lost
//! on a crash, and a notification may be delivered twice (at least once).
//!
//! Pending notifications are delivered by one task per Subscription, in outbox order, so a slow or
//! failing endpoint never holds up another Subscription. Before each delivery the owner's
//! principal is asked again whether it may read the resource (`Engine::visible`, the policy
//! decision point); a resource it may not read is dropped silently. `rest-hook` without payload is
//! an empty `POST` to the endpoint; with `payload` `application/fhir+json` it is, as R4 specifies,
//! an update: `PUT {endpoint}/{type}/{id}` with the resource. `websocket` sends `ping <id>` to the
//! clients bound to the Subscription. A failed delivery is retried with doubling back-off
//! ([`SubscriptionConfig::retry_base`], at most five minutes); after
//! [`SubscriptionConfig::max_failures`] consecutive failures the Subscription is set to `error`
//! with the reason in `error`, and its pending notifications are dropped. Every delivery is audited
//! (action `notify`, the resource version as entity, the Subscription and channel as reason); the
//! logs carry ids and counts, never resource content.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhir::{Issue, IssueType};
use serde_json::{Value, json};
use store::{Ctx, StoredResource, WriteMethod, WriteOp};

use crate::crud::{body_json, now_ms};
use crate::{Engine, EngineError, EngineResult, audit};

/// The outbox cursor of the subscription worker.
const CURSOR: &str = "subscriptions";
/// Outbox events read per step.
const STEP_EVENTS: usize = 500;
/// Security objects holding the principal that owns a Subscription (id: the Subscription id).
pub const OWNER_KIND: &str = "subscription-owner";
/// Security objects holding notifications not yet delivered (id: `<subscription>/<seq>`).
pub const PENDING_KIND: &str = "subscription-notification";
/// `meta.tag` system naming the principal (`client/…`, `user/…`) that owns a Subscription.
pub const OWNER_TAG: &str = "https://hutong.dev/fhir/CodeSystem/subscription-owner";
/// The longest wait between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Search result parameters that mean nothing in a Subscription's criteria.
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_contained",
    "_containedType",
    "_format",
];

/// The subscription service's settings.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Hosts (`name`, `name:port`, an IP address, `[v6]`) a rest-hook endpoint may name. The
    /// server makes requests to whatever a subscriber writes here, so this list is what stops a
    /// client from reaching internal services (server-side request forgery). The default allows
    /// loopback only.
    pub allowed_hosts: Vec<String>,
    /// Consecutive failed deliveries after which a Subscription is set to `error`.
    pub max_failures: u32,
    /// The wait after the first failure; it doubles after each further one.
    pub retry_base: Duration,
    /// How often the worker looks at the outbox.
    pub poll: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            allowed_hosts: vec!["127.0.0.1".into(), "localhost".into(), "[::1]".into()],
            max_failures: 5,
            retry_base: Duration::from_secs(2),
            poll: Duration::from_secs(1),
        }
    }
}

/// One rest-hook request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestHook {
    /// `POST` (no payload) or `PUT` (the resource as payload).
    pub method: &'static str,
    pub url: String,
    /// `channel.header`, split at the first `:`.
    pub headers: Vec<(String, String)>,
    /// Content type and body, when the Subscription asks for a payload.
    pub payload: Option<(String, String)>,
}

/// The delivery channels, implemented where HTTP lives (the `api` crate's `SubscriptionHub`).
#[async_trait::async_trait]
pub trait SubscriptionChannels: Send + Sync {
    /// Makes the request; `Ok` on a 2xx answer, otherwise why not (no resource content).
    async fn rest_hook(&self, request: RestHook) -> Result<(), String>;
    /// Sends `ping <subscription>` to each websocket client bound to it; how many there were.
    fn websocket_ping(&self, subscription: &str) -> usize;
}

/// A Subscription's endpoint split into what the checks need.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint<'a> {
    scheme: &'a str,
    /// The host as written (`[::1]` keeps its brackets), lower-cased by the caller's comparison.
    host: &'a str,
    port: Option<&'a str>,
}

fn parse_endpoint(url: &str) -> Result<Endpoint<'_>, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("'{url}' is not an absolute URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("user names and passwords in the endpoint URL are not accepted; use channel.header".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| format!("'{authority}' is not a valid host"))?;
        let port = v6[end + 1..].strip_prefix(':');
        (&authority[..end + 2], port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("'{authority}' is not a valid host and port"));
    }
    Ok(Endpoint { scheme, host, port })
}

/// Whether `allowed` (`host` or `host:port`) admits the endpoint.
fn host_allowed(endpoint: &Endpoint<'_>, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        let a = a.trim();
        let (host, port) = match a.rsplit_once(':') {
            Some((h, p)) if !a.starts_with('[') || h.ends_with(']') => (h, Some(p)),
            _ => (a, None),
        };
        host.eq_ignore_ascii_case(endpoint.host) && port.is_none_or(|p| Some(p) == endpoint.port)
    })
}

/// `Type?a=b&c=d` split into the type and its parameters.
fn split_criteria(criteria: &str) -> (&str, Vec<(String, String)>) {
    let criteria = criteria.trim().trim_start_matches('/');
    match criteria.split_once('?') {
        Some((ty, query)) => (ty, crate::crud::parse_query_string(query)),
        None => (criteria, Vec::new()),
    }
}

/// The owner a Subscription's tag names.
pub(crate) fn owner_of(body: &Value) -> Option<&str> {
    body["meta"]["tag"].as_array()?.iter().find(|t| t["system"] == OWNER_TAG)?["code"].as_str()
}

/// Problems of a Subscription that the R4 definitions do not catch (422, one issue each).
pub(crate) fn issues(engine: &Engine, body: &Value, location: &str) -> Vec<Issue> {
    let mut out = Vec::new();
    let at = |path: &str| format!("{location}.{path}");
    if let Some(criteria) = body["criteria"].as_str() {
        let (ty, params) = split_criteria(criteria);
        if !engine.defs.is_resource_type(ty) {
            out.push(
                Issue::error(
                    IssueType::Invalid,
                    format!(
                        "Subscription.criteria '{criteria}' does not start with a known resource type (expected e.g. \
                         DocumentReference?patient=Patient/123)"
                    ),
                )
                .at(at("criteria")),
            );
        } else if ty == "Subscription" {
            out.push(
                Issue::error(IssueType::NotSupported, "Subscription.criteria may not watch Subscriptions themselves")
                    .at(at("criteria")),
            );
        } else if let Some((k, _)) = params.iter().find(|(k, _)| RESULT_PARAMS.contains(&k.as_str())) {
            out.push(
                Issue::error(
                    IssueType::Invalid,
                    format!("Subscription.criteria: {k} shapes search results and means nothing in a subscription; remove it"),
                )
                .at(at("criteria")),
            );
        } else if let Err(problems) = fhir::search::parse(engine.defs, Some(ty), &params, &engine.parse_options(false))
        {
            out.extend(problems.into_iter().map(|mut i| {
                i.diagnostics = format!("Subscription.criteria '{criteria}': {}", i.diagnostics);
                i.expression = Some(at("criteria"));
                i
            }));
        }
    }
    let channel = &body["channel"];
    match channel["type"].as_str() {
        Some("rest-hook") => match channel["endpoint"].as_str() {
            None => out.push(
                Issue::error(
                    IssueType::Required,
                    "a rest-hook Subscription needs channel.endpoint (an https or http URL)",
                )
                .at(at("channel.endpoint")),
            ),
            Some(url) => {
                let problem = match parse_endpoint(url) {
                    Err(e) => Some(e),
                    Ok(e) if !e.scheme.eq_ignore_ascii_case("http") && !e.scheme.eq_ignore_ascii_case("https") => {
                        Some(format!("the endpoint scheme '{}' is not allowed (use https, or http)", e.scheme))
                    }
                    Ok(e) if !host_allowed(&e, &engine.config.subscriptions.allowed_hosts) => Some(format!(
                        "the endpoint host '{}' is not on this server's allow-list for rest-hooks (ask the operator \
                         to add it to HUTONG_SUBSCRIPTION_HOSTS)",
                        e.host
                    )),
                    Ok(_) => None,
                };
                if let Some(problem) = problem {
                    out.push(
                        Issue::error(IssueType::Invalid, format!("Subscription.channel.endpoint: {problem}"))
                            .at(at("channel.endpoint")),
                    );
                }
            }
        },
        Some("websocket") => {}
        Some(other) => out.push(
            Issue::error(
                IssueType::NotSupported,
                format!("the channel type '{other}' is not supported here (supported: rest-hook, websocket)"),
            )
            .at(at("channel.type")),
        ),
        None => {}
    }
    if let Some(payload) = channel["payload"].as_str() {
        let media = payload.split(';').next().unwrap_or("").trim();
        if !matches!(media, "application/fhir+json" | "application/json") {
            out.push(
                Issue::error(
                    IssueType::NotSupported,
                    format!("the payload type '{payload}' is not supported (use application/fhir+json, or none)"),
                )
                .at(at("channel.payload")),
            );
        }
    }
    for (i, header) in channel["header"].as_array().into_iter().flatten().enumerate() {
        let ok = header.as_str().and_then(|h| h.split_once(':')).is_some_and(|(name, _)| {
            !name.trim().is_empty() && name.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !ok {
            out.push(
                Issue::error(IssueType::Invalid, "Subscription.channel.header must be 'Name: value'")
                    .at(at(&format!("channel.header[{i}]"))),
            );
        }
    }
    out
}

/// What the worker needs of an active Subscription.
struct Active {
    id: String,
    /// When the Subscription was last written: older resource versions are not announced (a
    /// new Subscription does not replay the outbox the worker has not reached yet).
    since: i64,
    resource_type: String,
    params: Vec<(String, String)>,
}

/// The owner's principal, as kept for delivery-time decisions.
#[derive(serde::Serialize, serde::Deserialize)]
struct OwnerSnapshot {
    principal: access::Principal,
    scopes: String,
}

impl Engine {
    /// Applies the subscription rules to a commit's Subscription writes: only the owner may
    /// change or delete one; new versions are activated and carry their owner's tag. Returns the
    /// writer's principal to keep for the delivery-time policy checks once the commit succeeded
    /// ([`Engine::subscription_owners_keep`]).
    pub(crate) async fn subscription_writes(
        &self,
        ctx: &Ctx,
        ops: &mut [WriteOp],
    ) -> EngineResult<Vec<(String, String)>> {
        let mut owners = Vec::new();
        for op in ops.iter_mut().filter(|op| op.resource_type == "Subscription") {
            let previous = match op.version {
                1 => None,
                v => self.store.vread(&Ctx::system(), "Subscription", &op.id, v - 1).await?,
            };
            let previous_owner =
                previous.as_ref().filter(|p| !p.deleted).map(body_json).and_then(|b| owner_of(&b).map(str::to_string));
            if let (Some(principal), Some(owner)) = (ctx.principal.as_deref(), previous_owner.as_deref())
                && principal.subject != owner
            {
                return Err(self
                    .deny(
                        ctx,
                        if op.body.is_some() { "update" } else { "delete" },
                        format!("Subscription/{}", op.id),
                        "a Subscription is changed only by the client or user that created it".to_string(),
                    )
                    .await);
            }
            let Some(text) = op.body.as_deref() else { continue };
            let mut body: Value = serde_json::from_str(text)
                .map_err(|e| EngineError::bad_request(IssueType::Structure, e.to_string()))?;
            let owner = ctx.principal.as_deref().map(|p| p.subject.clone()).or(previous_owner);
            if matches!(body["status"].as_str(), Some("requested")) {
                body["status"] = json!("active");
            }
            if body["status"] == "active"
                && let Some(o) = body.as_object_mut()
            {
                o.remove("error");
            }
            if let Some(meta) = body.get_mut("meta").and_then(Value::as_object_mut)
                && let Some(tags) = meta.get_mut("tag").and_then(Value::as_array_mut)
            {
                tags.retain(|t| t["system"] != OWNER_TAG);
                if tags.is_empty() {
                    meta.remove("tag");
                }
            }
            if let Some(owner) = owner {
                let meta = body
                    .as_object_mut()
                    .ok_or_else(|| EngineError::bad_request(IssueType::Structure, "resource is not an object"))?
                    .entry("meta")
                    .or_insert_with(|| json!({}));
                let tags = meta.as_object_mut().map(|m| m.entry("tag").or_insert_with(|| json!([])));
                if let Some(tags) = tags.and_then(Value::as_array_mut) {
                    tags.push(json!({"system": OWNER_TAG, "code": owner}));
                }
            }
            *op = self.build_op("Subscription", &op.id, op.version, op.last_updated, op.method, body)?;
            if let Some(principal) = ctx.principal.as_deref() {
                let snapshot = OwnerSnapshot {
                    principal: access::Principal { break_glass: None, ..principal.clone() },
                    scopes: principal.scopes.to_text(),
                };
                let text = serde_json::to_string(&snapshot)
                    .map_err(|e| EngineError::bad_request(IssueType::Exception, e.to_string()))?;
                owners.push((op.id.clone(), text));
            }
        }
        Ok(owners)
    }

    /// Keeps the owners' principals of committed Subscription writes. A crash before this leaves
    /// a Subscription whose owner is unknown, which notifies nobody until its owner updates it.
    pub(crate) async fn subscription_owners_keep(&self, owners: Vec<(String, String)>) -> EngineResult<()> {
        for (id, text) in owners {
            self.store.kv_put(OWNER_KIND, &id, &text, &[]).await?;
        }
        Ok(())
    }

    /// The request context the owner of a Subscription acts in at delivery time: the platform's
    /// own for a Subscription without an owner (written by an import or the platform itself);
    /// `None`, so nothing is sent, when the owner's principal is not known.
    async fn owner_ctx(&self, subscription: &str, body: &Value) -> EngineResult<Option<Ctx>> {
        let Some(owner) = owner_of(body) else { return Ok(Some(Ctx::system())) };
        let Some(text) = self.store.kv_get(OWNER_KIND, subscription).await? else { return Ok(None) };
        let Ok(snapshot) = serde_json::from_str::<OwnerSnapshot>(&text) else { return Ok(None) };
        if snapshot.principal.subject != owner {
            return Ok(None);
        }
        let Ok(scopes) = access::Scopes::parse(&snapshot.scopes) else { return Ok(None) };
        let principal = access::Principal { scopes, ..snapshot.principal };
        Ok(Some(Ctx::for_principal(format!("subscription-{subscription}"), principal, None)))
    }

    /// Whether the owner of the Subscription may be told about this resource now.
    async fn owner_may_read(&self, owner: &Ctx, resource: &StoredResource) -> EngineResult<bool> {
        Ok(!self.visible(owner, vec![resource.clone()]).await?.is_empty())
    }

    /// Checks that the caller may bind a websocket to the Subscription: it exists, the caller
    /// owns it (others get 404, like a read), it is active and uses the websocket channel.
    pub async fn subscription_bind(&self, ctx: &Ctx, id: &str) -> EngineResult<()> {
        let resource = self.read(ctx, "Subscription", id).await?;
        let body = body_json(&resource);
        if body["channel"]["type"] != "websocket" {
            return Err(EngineError::bad_request(
                IssueType::Invalid,
                format!("Subscription/{id} uses the channel type {} (bind needs websocket)", body["channel"]["type"]),
            ));
        }
        if body["status"] != "active" {
            return Err(EngineError::bad_request(
                IssueType::BusinessRule,
                format!("Subscription/{id} is {}, not active", body["status"]),
            ));
        }
        Ok(())
    }

    /// Runs the subscription worker until the process ends.
    pub async fn subscriptions_run(self: Arc<Self>, channels: Arc<dyn SubscriptionChannels>) {
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut tick = tokio::time::interval(self.config.subscriptions.poll);
        loop {
            tick.tick().await;
            if let Err(e) = self.subscriptions_match().await {
                tracing::warn!(error = %e, "subscriptions: matching failed; retrying");
            }
            match self.subscriptions_pending().await {
                Ok(ids) => {
                    for id in ids {
                        let fresh = running.lock().map(|mut r| r.insert(id.clone())).unwrap_or(false);
                        if fresh {
                            let (engine, channels, running) = (self.clone(), channels.clone(), running.clone());
                            tokio::spawn(async move {
                                if let Err(e) = engine.deliver_pending(channels.as_ref(), &id).await {
                                    tracing::warn!(subscription = %id, error = %e, "subscriptions: delivery stopped");
                                }
                                if let Ok(mut r) = running.lock() {
                                    r.remove(&id);
                                }
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "subscriptions: listing pending notifications failed"),
            }
        }
    }

    /// The active Subscriptions.
    async fn active_subscriptions(&self) -> EngineResult<Vec<Active>> {
        let mut out = Vec::new();
        for r in self.scan("Subscription", &[("status", "active")]).await? {
            let body = body_json(&r);
            let Some(criteria) = body["criteria"].as_str() else { continue };
            let (ty, params) = split_criteria(criteria);
            out.push(Active { id: r.id.clone(), since: r.last_updated, resource_type: ty.to_string(), params });
        }
        Ok(out)
    }

    /// Matches the outbox events after the cursor against the active Subscriptions and queues a
    /// pending notification for each match. Returns how many were queued.
    pub async fn subscriptions_match(&self) -> EngineResult<usize> {
        let mut queued = 0;
        loop {
            let cursor = self.store.cursor_get(CURSOR).await?;
            let events = self.store.outbox_read(cursor, STEP_EVENTS).await?;
            let Some(last) = events.last().map(|e| e.seq) else { break };
            let active = self.active_subscriptions().await?;
            for event in events.iter().filter(|e| e.method != WriteMethod::Delete) {
                for sub in active.iter().filter(|s| s.resource_type == event.resource_type) {
                    let mut params = sub.params.clone();
                    params.push(("_id".into(), event.id.clone()));
                    // The criteria were valid when written; if the definitions changed since,
                    // the Subscription simply matches nothing.
                    let Ok(parsed) =
                        fhir::search::parse(self.defs, Some(&sub.resource_type), &params, &self.parse_options(false))
                    else {
                        continue;
                    };
                    let query = fhir::search::SearchQuery {
                        count: 1,
                        offset: 0,
                        total: fhir::search::TotalMode::None,
                        ..parsed.query
                    };
                    let found = self.store.search(&Ctx::system(), &query).await?.resources;
                    // The current version is what the criteria saw; a later version has its own event.
                    if found.iter().any(|r| r.version == event.version && r.last_updated >= sub.since) {
                        let item = json!({"type": event.resource_type, "id": event.id, "version": event.version});
                        let key = format!("{}/{:020}", sub.id, event.seq);
                        self.store.kv_put(PENDING_KIND, &key, &item.to_string(), &[]).await?;
                        queued += 1;
                    }
                }
            }
            self.store.cursor_set(CURSOR, last).await?;
            if events.len() < STEP_EVENTS {
                break;
            }
        }
        Ok(queued)
    }

    /// The Subscriptions with pending notifications.
    async fn subscriptions_pending(&self) -> EngineResult<Vec<String>> {
        let mut ids: Vec<String> = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.store.kv_list(PENDING_KIND, &after, 1000).await?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (key, _) in &page {
                let sub = key.split('/').next().unwrap_or_default();
                if ids.last().is_none_or(|l| l != sub) {
                    ids.push(sub.to_string());
                }
            }
            if page.len() < 1000 {
                break;
            }
        }
        Ok(ids)
    }

    /// The next pending notifications of one Subscription, in outbox order.
    async fn pending_of(&self, subscription: &str) -> EngineResult<Vec<(String, String)>> {
        let prefix = format!("{subscription}/");
        Ok(self
            .store
            .kv_list(PENDING_KIND, &prefix, 100)
            .await?
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect())
    }

    /// Delivers one Subscription's pending notifications in order until none is left, retrying a
    /// failed one with back-off and setting the Subscription to `error` after too many failures.
    async fn deliver_pending(&self, channels: &dyn SubscriptionChannels, subscription: &str) -> EngineResult<()> {
        let config = self.config.subscriptions.clone();
        let mut failures = 0u32;
        loop {
            let pending = self.pending_of(subscription).await?;
            if pending.is_empty() {
                return Ok(());
            }
            for (key, item) in pending {
                let current = self.store.read(&Ctx::system(), "Subscription", subscription).await?;
                let sub = current.as_ref().filter(|r| !r.deleted).map(body_json).filter(|s| s["status"] == "active");
                let owner = match &sub {
                    Some(sub) => self.owner_ctx(subscription, sub).await?,
                    None => None,
                };
                let (Some(sub), Some(owner)) = (sub, owner) else {
                    // Off, in error, deleted, or its owner unreadable: nothing more is sent.
                    self.drop_pending(subscription).await?;
                    return Ok(());
                };
                let item: Value = serde_json::from_str(&item).unwrap_or_default();
                let (Some(ty), Some(id), Some(version)) =
                    (item["type"].as_str(), item["id"].as_str(), item["version"].as_i64())
                else {
                    self.store.kv_delete(PENDING_KIND, &key).await?;
                    continue;
                };
                let resource = self.store.vread(&Ctx::system(), ty, id, version).await?;
                let Some(resource) = resource.filter(|r| !r.deleted) else {
                    self.store.kv_delete(PENDING_KIND, &key).await?;
                    continue;
                };
                if !self.owner_may_read(&owner, &resource).await? {
                    tracing::debug!(subscription, "subscriptions: the owner may not read a match; not sent");
                    self.store.kv_delete(PENDING_KIND, &key).await?;
                    continue;
                }
                let channel = sub["channel"]["type"].as_str().unwrap_or_default().to_string();
                let result = match channel.as_str() {
                    "rest-hook" => channels.rest_hook(rest_hook(&sub, &resource)).await.map(|()| 1),
                    "websocket" => Ok(channels.websocket_ping(subscription)),
                    other => Err(format!("unsupported channel type {other}")),
                };
                match result {
                    Ok(recipients) => {
                        failures = 0;
                        if recipients > 0 {
                            let reason = format!("Subscription/{subscription} {channel}");
                            let entity = format!("{ty}/{id}/_history/{version}");
                            let patients = if resource.patient_key.is_empty() {
                                vec![]
                            } else {
                                vec![resource.patient_key.clone()]
                            };
                            self.audit
                                .append(audit::record(&owner, "notify", "success", entity, patients, Some(&reason)))
                                .await?;
                        }
                        self.store.kv_delete(PENDING_KIND, &key).await?;
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(subscription, failures, %error, "subscriptions: delivery failed");
                        if failures >= config.max_failures {
                            self.subscription_failed(subscription, &owner, failures, &error).await?;
                            self.drop_pending(subscription).await?;
                            return Ok(());
                        }
                        let wait = config.retry_base.saturating_mul(1 << (failures - 1).min(16)).min(MAX_BACKOFF);
                        tokio::time::sleep(wait).await;
                        // Start again from the first pending notification (this one).
                        break;
                    }
                }
            }
        }
    }

    async fn drop_pending(&self, subscription: &str) -> EngineResult<()> {
        loop {
            let pending = self.pending_of(subscription).await?;
            if pending.is_empty() {
                return Ok(());
            }
            for (key, _) in pending {
                self.store.kv_delete(PENDING_KIND, &key).await?;
            }
        }
    }

    /// Sets the Subscription to `error` with the reason, audited as the platform's act.
    async fn subscription_failed(
        &self,
        subscription: &str,
        owner: &Ctx,
        failures: u32,
        error: &str,
    ) -> EngineResult<()> {
        let ctx = Ctx::system();
        for _ in 0..5 {
            let Some(current) = self.store.read(&ctx, "Subscription", subscription).await? else { return Ok(()) };
            if current.deleted {
                return Ok(());
            }
            let mut body = body_json(&current);
            if body["status"] != "active" {
                return Ok(());
            }
            body["status"] = json!("error");
            body["error"] = json!(format!("delivery failed {failures} times in a row; last: {error}"));
            let op =
                self.build_op("Subscription", subscription, current.version + 1, now_ms(), WriteMethod::Update, body)?;
            let entity = format!("Subscription/{subscription}/_history/{}", op.version);
            let record = audit::record(&ctx, "update", "success", entity, Vec::new(), Some("delivery failures"));
            match self.store.commit_audited(&ctx, vec![op], vec![record]).await {
                Ok(_) => {
                    let owner = owner.principal.as_deref().map(|p| p.subject.as_str()).unwrap_or("platform");
                    tracing::warn!(
                        subscription,
                        owner,
                        failures,
                        "subscriptions: set to error after failed deliveries"
                    );
                    return Ok(());
                }
                Err(store::StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The rest-hook request for one notification (R4: no payload → `POST endpoint`; a payload → an
/// update, `PUT endpoint/type/id` with the resource).
fn rest_hook(subscription: &Value, resource: &StoredResource) -> RestHook {
    let channel = &subscription["channel"];
    let endpoint = channel["endpoint"].as_str().unwrap_or_default();
    let headers = channel["header"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str()?.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    match channel["payload"].as_str() {
        Some(mime) => RestHook {
            method: "PUT",
            url: format!("{}/{}/{}", endpoint.trim_end_matches('/'), resource.resource_type, resource.id),
            headers,
            payload: Some((mime.to_string(), resource.body.clone().unwrap_or_default())),
        },
        None => RestHook { method: "POST", url: endpoint.to_string(), headers, payload: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_against_the_allow_list() {
        let allowed: Vec<String> = vec!["127.0.0.1".into(), "his.example.org:8443".into(), "[::1]".into()];
        let cases = [
            ("http://127.0.0.1:9000/hook", Ok(true)),
            ("http://127.0.0.1/hook", Ok(true)),
            ("http://127.0.0.1.evil.example/hook", Ok(false)),
            ("http://his.example.org:8443/x", Ok(true)),
            ("http://his.example.org/x", Ok(false)),
            ("http://HIS.example.org:8443", Ok(true)),
            ("http://[::1]:8080/", Ok(true)),
            ("http://10.0.0.1/", Ok(false)),
            ("http://user:pw@127.0.0.1/", Err(())),
            ("127.0.0.1/hook", Err(())),
            ("http://127.0.0.1:x/", Err(())),
        ];
        for (url, expected) in cases {
            let got = parse_endpoint(url).map(|e| host_allowed(&e, &allowed)).map_err(|_| ());
            assert_eq!(got, expected, "{url}");
        }
    }

    #[test]
    fn criteria_split_into_type_and_parameters() {
        let (ty, params) = split_criteria("DocumentReference?patient=Patient/1&type=http://loinc.org|11488-4");
        assert_eq!(ty, "DocumentReference");
        assert_eq!(params[0], ("patient".to_string(), "Patient/1".to_string()));
        assert_eq!(params[1].1, "http://loinc.org|11488-4");
        assert_eq!(split_criteria("/Observation").0, "Observation");
    }

    #[test]
    fn rest_hooks_follow_the_r4_channel_rules() {
        let resource = StoredResource {
            resource_type: "Observation".into(),
            id: "o1".into(),
            version: 1,
            last_updated: 0,
            deleted: false,
            body: Some("{}".into()),
            method: WriteMethod::Create,
            patient_key: String::new(),
        };
        let bare =
            json!({"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1/h", "header": ["X-Token: a:b"]}});
        let hook = rest_hook(&bare, &resource);
        assert_eq!((hook.method, hook.url.as_str(), hook.payload), ("POST", "http://127.0.0.1/h", None));
        assert_eq!(hook.headers, vec![("X-Token".to_string(), "a:b".to_string())]);
        let full = json!({"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1/fhir/", "payload": "application/fhir+json"}});
        let hook = rest_hook(&full, &resource);
        assert_eq!((hook.method, hook.url.as_str()), ("PUT", "http://127.0.0.1/fhir/Observation/o1"));
        assert_eq!(hook.payload, Some(("application/fhir+json".to_string(), "{}".to_string())));
    }
}
