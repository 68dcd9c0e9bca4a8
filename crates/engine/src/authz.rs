//! Where the engine enforces the policy decision point (`access::policy`) and records the audit
//! trail. Every public interaction passes through here: reads and vreads are decided on the
//! stored resource (a denial reads as 404, so existence does not leak, and is recorded with its
//! reason); searches are narrowed before they run ([`Engine::constrain_search`]), so totals and
//! paging only ever count what the caller may see, and `_include`/`_revinclude` results are
//! decided one by one; writes are decided on the new content and on the version they replace
//! and committed together with their audit record.
//!
//! The facts a decision needs and the policy does not know are gathered here: which patients'
//! records a resource belongs to (the Patient compartment), its sensitivity labels (set on write
//! from its codes, `access::sensitivity`), the patient's residence (the GB/T 2260 division code
//! in the `access::DIVISION_EXTENSION` extension of an address; see ARCHITECTURE.md), the care
//! relationship between the caller's organization and the patient (an Encounter with
//! `service-provider`, EpisodeOfCare with `organization`, CareTeam with `participant`, or
//! ServiceRequest with `performer` naming the organization), and the resident's active Consents.
//! Relationships and residences are cached for [`CACHE_TTL`]; writes of the resource types they
//! derive from clear the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use access::policy::{self, Action, Decision, Facts, Relationship, SearchConstraint};
use access::{Principal, Role};
use serde_json::Value;
use store::{Ctx, StoredResource, WriteMethod, WriteOp};

use crate::audit;
use crate::crud::body_json;
use crate::{Engine, EngineError, EngineResult};

/// How long a care relationship or residence lookup is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// Whether the Subscription's owner tag names the principal (`subscriptions.rs`).
fn subscription_owned_by(principal: &Principal, r: &StoredResource) -> bool {
    crate::subscriptions::owner_of(&body_json(r)) == Some(principal.subject.as_str())
}

/// Types whose writes change relationships or residences.
const RELATIONSHIP_TYPES: &[&str] = &["Patient", "Encounter", "EpisodeOfCare", "CareTeam", "ServiceRequest", "Consent"];

/// (organization, practitioner, patient).
type RelationshipKey = (String, String, String);

#[derive(Default)]
pub(crate) struct AccessCache {
    relationships: Mutex<HashMap<RelationshipKey, (Instant, Relationship)>>,
    regions: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl AccessCache {
    fn clear(&self) {
        if let Ok(mut m) = self.relationships.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.regions.lock() {
            m.clear();
        }
    }
}

/// What a decision needs to know about one resource.
struct OwnedFacts {
    resource_type: String,
    patient_data: bool,
    patients: Vec<String>,
    labels: Vec<String>,
    region: Option<String>,
}

fn reference_id<'a>(value: &'a str, resource_type: &str) -> Option<&'a str> {
    match value.split_once('/') {
        Some((t, id)) if t == resource_type && !id.contains('/') => Some(id),
        Some(_) => None,
        None => Some(value),
    }
}

fn patient_region(patient: &Value) -> Option<String> {
    patient["address"].as_array()?.iter().find_map(|a| {
        a["extension"].as_array()?.iter().find_map(|x| {
            (x["url"] == access::DIVISION_EXTENSION)
                .then(|| x["valueCode"].as_str())
                .flatten()
                .filter(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_string)
        })
    })
}

/// Types the R4 Patient compartment lists but that this platform publishes as shared reference
/// data: a Schedule is a hospital's published availability in the booking pool (号源池), which
/// every resident must find (`Schedule.actor` names doctors, rooms and services, not patients;
/// operators administer them, `access::policy::OPERATOR_TYPES`).
pub const SHARED_SCHEDULING_TYPES: &[&str] = &["Schedule"];

impl Engine {
    /// Whether resources of this type are patient data (in the Patient compartment).
    pub(crate) fn is_patient_data(&self, resource_type: &str) -> bool {
        resource_type == "Patient"
            || (!SHARED_SCHEDULING_TYPES.contains(&resource_type)
                && !self.defs.patient_compartment_params(resource_type).is_empty())
    }

    /// The search parameter that names the patient of this type (`_id` for Patient).
    pub(crate) fn patient_param(&self, resource_type: &str) -> Option<String> {
        if resource_type == "Patient" {
            return Some("_id".into());
        }
        if SHARED_SCHEDULING_TYPES.contains(&resource_type) {
            return None;
        }
        let compartment = self.defs.patient_compartment_params(resource_type);
        if compartment.is_empty() {
            return None;
        }
        let codes: Vec<String> = self.defs.search_params_for(resource_type).iter().map(|p| p.code.clone()).collect();
        for preferred in ["patient", "subject"] {
            if codes.iter().any(|c| c == preferred) && compartment.iter().any(|c| c == preferred) {
                return Some(preferred.to_string());
            }
        }
        compartment.first().cloned()
    }

    async fn region_of(&self, patient: &str) -> EngineResult<Option<String>> {
        if let Ok(m) = self.access.regions.lock()
            && let Some((at, region)) = m.get(patient)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(region.clone());
        }
        let region = match self.store.read(&Ctx::system(), "Patient", patient).await? {
            Some(r) if !r.deleted => patient_region(&body_json(&r)),
            _ => None,
        };
        if let Ok(mut m) = self.access.regions.lock() {
            m.insert(patient.to_string(), (Instant::now(), region.clone()));
        }
        Ok(region)
    }

    async fn exists(&self, resource_type: &str, params: &[(&str, String)]) -> EngineResult<bool> {
        let pairs: Vec<(String, String)> =
            params.iter().map(|(k, v)| (k.to_string(), v.clone())).chain([("_count".into(), "1".into())]).collect();
        let parsed = fhir::search::parse(self.defs, Some(resource_type), &pairs, &self.parse_options(false))
            .map_err(EngineError::BadRequest)?;
        let query = fhir::search::SearchQuery { total: fhir::search::TotalMode::None, ..parsed.query };
        Ok(!self.store.search(&Ctx::system(), &query).await?.resources.is_empty())
    }

    /// The caller's standing with a patient (clinical roles only; others need none).
    async fn relationship(&self, principal: &Principal, patient: &str) -> EngineResult<Relationship> {
        if !principal.role.is_clinical() {
            return Ok(Relationship::default());
        }
        let org = principal.organization.clone().unwrap_or_default();
        let practitioner = principal.practitioner.clone().unwrap_or_default();
        let key = (org.clone(), practitioner.clone(), patient.to_string());
        if let Ok(m) = self.access.relationships.lock()
            && let Some((at, rel)) = m.get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(rel.clone());
        }
        let mut rel = Relationship::default();
        let p = format!("Patient/{patient}");
        if !org.is_empty() {
            let o = format!("Organization/{org}");
            for (ty, param) in [
                ("Encounter", "service-provider"),
                ("EpisodeOfCare", "organization"),
                ("CareTeam", "participant"),
                ("ServiceRequest", "performer"),
            ] {
                if self.exists(ty, &[("patient", p.clone()), (param, o.clone())]).await? {
                    rel.care = true;
                    break;
                }
            }
        }
        let actors: Vec<String> = [
            (!org.is_empty()).then(|| format!("Organization/{org}")),
            (!practitioner.is_empty()).then(|| format!("Practitioner/{practitioner}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let consents = {
            let pairs = vec![("patient".to_string(), p.clone()), ("status".to_string(), "active".to_string())];
            let parsed = fhir::search::parse(self.defs, Some("Consent"), &pairs, &self.parse_options(false))
                .map_err(EngineError::BadRequest)?;
            let query = fhir::search::SearchQuery { count: 100, total: fhir::search::TotalMode::None, ..parsed.query };
            self.store.search(&Ctx::system(), &query).await?.resources
        };
        for consent in consents {
            apply_consent(&body_json(&consent), &actors, &mut rel);
        }
        if let Ok(mut m) = self.access.relationships.lock() {
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(key, (Instant::now(), rel.clone()));
        }
        Ok(rel)
    }

    async fn facts(&self, principal: &Principal, resource_type: &str, body: &Value) -> EngineResult<OwnedFacts> {
        let patient_data = self.is_patient_data(resource_type);
        let patients = if patient_data { fhir::index::patient_compartments(self.defs, body) } else { Vec::new() };
        let labels = access::sensitivity::labels(body);
        let region = if principal.role.is_regional() {
            if resource_type == "Patient" {
                patient_region(body)
            } else if let Some(first) = patients.first() {
                self.region_of(first).await?
            } else {
                None
            }
        } else {
            None
        };
        Ok(OwnedFacts { resource_type: resource_type.to_string(), patient_data, patients, labels, region })
    }

    async fn decide_on(&self, principal: &Principal, action: Action, facts: &OwnedFacts) -> EngineResult<Decision> {
        let rel = match facts.patients.first() {
            Some(p) => self.relationship(principal, p).await?,
            None => Relationship::default(),
        };
        Ok(policy::decide(
            principal,
            action,
            &Facts {
                resource_type: &facts.resource_type,
                patient_data: facts.patient_data,
                patients: &facts.patients,
                labels: &facts.labels,
                region: facts.region.as_deref(),
            },
            &rel,
        ))
    }

    /// Decides a read of a stored resource: `Ok` if permitted; a denial is recorded and
    /// answered as `NotFound` (the resource's existence is not revealed).
    pub(crate) async fn authorize_read(&self, ctx: &Ctx, action: &str, r: &StoredResource) -> EngineResult<()> {
        let Some(principal) = ctx.principal.as_deref() else { return Ok(()) };
        let key = format!("{}/{}", r.resource_type, r.id);
        let facts = if principal.role == Role::System {
            // Scopes decide for system clients: no need to look inside the resource.
            OwnedFacts {
                resource_type: r.resource_type.clone(),
                patient_data: true,
                patients: if r.patient_key.is_empty() { Vec::new() } else { vec![r.patient_key.clone()] },
                labels: Vec::new(),
                region: None,
            }
        } else {
            self.facts(principal, &r.resource_type, &body_json(r)).await?
        };
        let mut decision = if principal.role == Role::System {
            policy::decide(
                principal,
                Action::Read,
                &Facts {
                    resource_type: &facts.resource_type,
                    patient_data: true,
                    patients: &facts.patients,
                    labels: &[],
                    region: None,
                },
                &Relationship::default(),
            )
        } else {
            self.decide_on(principal, Action::Read, &facts).await?
        };
        if decision.permit && r.resource_type == "Subscription" && !subscription_owned_by(principal, r) {
            decision = Decision {
                permit: false,
                reason: "a Subscription is read only by the client or user that created it".into(),
                break_glass: false,
            };
        }
        let outcome = if decision.permit { "success" } else { "denied" };
        let entity = format!("{key}/_history/{}", r.version);
        let reason = (!decision.permit || decision.break_glass).then_some(decision.reason.as_str());
        let record = audit::record(ctx, action, outcome, entity, facts.patients, reason);
        if decision.permit && !decision.break_glass && self.config.audit_reads == crate::AuditMode::Queued {
            self.audit.queue(record).await?;
        } else {
            self.audit.append(record).await?;
        }
        if decision.permit { Ok(()) } else { Err(EngineError::NotFound(key)) }
    }

    /// Keeps the resources the caller may read (for `_include`, `_revinclude`, `$everything`).
    pub(crate) async fn visible(&self, ctx: &Ctx, resources: Vec<StoredResource>) -> EngineResult<Vec<StoredResource>> {
        let Some(principal) = ctx.principal.as_deref() else { return Ok(resources) };
        if principal.role == Role::System {
            return Ok(resources
                .into_iter()
                .filter(|r| principal.scopes.allows(&r.resource_type, access::Perm::Read))
                .collect());
        }
        let mut out = Vec::with_capacity(resources.len());
        for r in resources {
            let facts = self.facts(principal, &r.resource_type, &body_json(&r)).await?;
            if self.decide_on(principal, Action::Read, &facts).await?.permit {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// An operation's own access rule: `allowed` decides (a caller without a principal is the
    /// platform itself); a refusal is audited and answered with `reason`.
    pub(crate) async fn require(
        &self,
        ctx: &Ctx,
        allowed: impl FnOnce(&access::Principal) -> bool,
        action: &str,
        entity: String,
        reason: &str,
    ) -> EngineResult<()> {
        match ctx.principal.as_deref() {
            Some(p) if !allowed(p) => Err(self.deny(ctx, action, entity, reason.to_string()).await),
            _ => Ok(()),
        }
    }

    /// Records a denied request and returns the 403 to answer with.
    pub(crate) async fn deny(&self, ctx: &Ctx, action: &str, entity: String, reason: String) -> EngineError {
        if let Err(e) = self.audit.append(audit::record(ctx, action, "denied", entity, Vec::new(), Some(&reason))).await
        {
            return e.into();
        }
        EngineError::Forbidden(reason)
    }

    /// Decides a read of shared reference data that is about no stored resource in particular
    /// (the terminology operations): the caller's scopes and role decide; permitted calls are
    /// audited in queued mode, refusals durably (403).
    pub(crate) async fn authorize_reference_read(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        entity: &str,
    ) -> EngineResult<()> {
        let Some(principal) = ctx.principal.as_deref() else { return Ok(()) };
        let decision = policy::decide(
            principal,
            Action::Read,
            &Facts { resource_type, patient_data: false, patients: &[], labels: &[], region: None },
            &Relationship::default(),
        );
        if !decision.permit {
            return Err(self.deny(ctx, "operation", entity.to_string(), decision.reason).await);
        }
        let record = audit::record(ctx, "operation", "success", entity.to_string(), Vec::new(), None);
        if self.config.audit_reads == crate::AuditMode::Queued {
            self.audit.queue(record).await?;
        } else {
            self.audit.append(record).await?;
        }
        Ok(())
    }

    /// Checks an action that is not about one resource (type/system history, export).
    pub(crate) async fn authorize_bulk(&self, ctx: &Ctx, action: Action, resource_type: &str) -> EngineResult<()> {
        let Some(principal) = ctx.principal.as_deref() else { return Ok(()) };
        let decision = policy::decide(
            principal,
            action,
            &Facts { resource_type, patient_data: true, patients: &[], labels: &[], region: None },
            &Relationship::default(),
        );
        if decision.permit {
            Ok(())
        } else {
            Err(self.deny(ctx, action.code(), resource_type.to_string(), decision.reason).await)
        }
    }

    /// Narrows a search for the caller: the parameters to run instead of `params`, and the
    /// patients it is confined to (for the audit record; empty when not confined).
    pub(crate) async fn constrain_search(
        &self,
        ctx: &Ctx,
        resource_type: Option<&str>,
        params: &[(String, String)],
    ) -> EngineResult<Vec<(String, String)>> {
        let Some(principal) = ctx.principal.as_deref() else { return Ok(params.to_vec()) };
        let entity = format!("{}?{}", resource_type.unwrap_or(""), crate::searchset::audit_params(params));
        let Some(ty) = resource_type else {
            if principal.role == Role::System && principal.scopes.allows("*", access::Perm::Search) {
                return Ok(params.to_vec());
            }
            return Err(self
                .deny(ctx, "search", entity, "search one resource type at a time (e.g. GET /fhir/Observation?…)".into())
                .await);
        };
        if ty == "Subscription" {
            // Subscriptions are found by their owners only (their headers may hold secrets).
            let own = (String::from("_tag"), format!("{}|{}", crate::OWNER_TAG, principal.subject));
            return match policy::search_constraint(principal, ty, None, false) {
                SearchConstraint::Deny(reason) => Err(self.deny(ctx, "search", entity, reason).await),
                _ => Ok(params.iter().cloned().chain([own]).collect()),
            };
        }
        let uses_has = params.iter().any(|(k, _)| k.starts_with("_has"));
        let patient_param = self.patient_param(ty);
        match policy::search_constraint(principal, ty, patient_param.as_deref(), uses_has) {
            SearchConstraint::Unrestricted => Ok(params.to_vec()),
            SearchConstraint::Deny(reason) => Err(self.deny(ctx, "search", entity, reason).await),
            SearchConstraint::Params(extra) => Ok(params.iter().cloned().chain(extra).collect()),
            SearchConstraint::WithinPatient => {
                let param = patient_param.unwrap_or_default();
                let named: Vec<&str> = params
                    .iter()
                    .filter(|(k, _)| {
                        let base = k.split(':').next().unwrap_or("");
                        base == param || (base == "patient" || base == "subject") && !k.contains('.')
                    })
                    .map(|(_, v)| v.as_str())
                    .collect();
                let patient = match named.as_slice() {
                    [one] if !one.contains(',') => reference_id(one, "Patient"),
                    _ => None,
                };
                let Some(patient) = patient else {
                    if ty == "Patient" && registration_lookup(params) {
                        // Registration lookup of one person by an exact identifier.
                        return Ok(params.to_vec());
                    }
                    return Err(self
                        .deny(
                            ctx,
                            "search",
                            entity,
                            format!(
                                "search within one patient: add {param}=Patient/{{id}} (or look a patient up with \
                                 Patient?identifier=…)"
                            ),
                        )
                        .await);
                };
                let rel = self.relationship(principal, patient).await?;
                let patients = vec![patient.to_string()];
                let decision = policy::decide(
                    principal,
                    Action::Search,
                    &Facts { resource_type: ty, patient_data: true, patients: &patients, labels: &[], region: None },
                    &rel,
                );
                if !decision.permit {
                    return Err(self.deny(ctx, "search", entity, decision.reason).await);
                }
                Ok(params.iter().cloned().chain(policy::sensitivity_filter(principal, &rel)).collect())
            }
        }
    }

    /// Records a completed search or `$everything` with the patients whose records it returned.
    pub(crate) async fn audit_search(
        &self,
        ctx: &Ctx,
        action: &str,
        entity: String,
        results: &[StoredResource],
    ) -> EngineResult<()> {
        if ctx.principal.is_none() {
            return Ok(());
        }
        let mut patients: Vec<String> = Vec::new();
        for r in results {
            if !r.patient_key.is_empty() && !patients.contains(&r.patient_key) && patients.len() < 1000 {
                patients.push(r.patient_key.clone());
            }
        }
        let glass = ctx.principal.as_deref().and_then(|p| p.break_glass.as_deref()).map(|_| "break-glass");
        let record = audit::record(ctx, action, "success", entity, patients, glass);
        if glass.is_none() && self.config.audit_reads == crate::AuditMode::Queued {
            self.audit.queue(record).await?;
        } else {
            self.audit.append(record).await?;
        }
        Ok(())
    }

    /// Decides every write of a commit (new content and the version it replaces), then commits
    /// the writes with their audit record in one transaction.
    /// Slot bookings that Appointment writes imply (booking.rs) join the same transaction; they
    /// are consequences of the authorized Appointment write, not writes of the caller's own.
    pub(crate) async fn commit_checked(&self, ctx: &Ctx, ops: Vec<WriteOp>, interaction: &str) -> EngineResult<()> {
        if let Some(principal) = ctx.principal.as_deref() {
            self.authorize_writes(ctx, principal, &ops, interaction).await?;
        }
        // A Subscription belongs to its creator and is activated on write (subscriptions.rs).
        let mut ops = ops;
        let subscription_owners = if ops.iter().any(|op| op.resource_type == "Subscription") {
            self.subscription_writes(ctx, &mut ops).await?
        } else {
            Vec::new()
        };
        // Hospital feeds pass the data-quality gate (quality.rs).
        self.quality_gate(ctx, &ops).await?;
        let _booking = self.booking_guard(ctx, &ops).await;
        let effects = self.booking_effects(ctx, &ops).await?;
        let booked: Vec<String> = effects.iter().map(|op| op.id.clone()).collect();
        ops.extend(effects);
        let relationships_change = ops.iter().any(|op| RELATIONSHIP_TYPES.contains(&op.resource_type.as_str()));
        let terminology_changes =
            ops.iter().any(|op| crate::terminology::TERMINOLOGY_TYPES.contains(&op.resource_type.as_str()));
        let mut patients: Vec<String> = Vec::new();
        for op in &ops {
            if let Some(p) = op.compartments.first()
                && !patients.contains(p)
                && patients.len() < 1000
            {
                patients.push(p.clone());
            }
        }
        let entity = match ops.as_slice() {
            [one] => format!("{}/{}/_history/{}", one.resource_type, one.id, one.version),
            many => format!("{} resources", many.len()),
        };
        let record = audit::record(ctx, interaction, "success", entity, patients, None);
        let patients_written = ops.iter().any(|op| op.resource_type == "Patient");
        // The parsed bodies were for the checks above; the store gets the text only (and the
        // committer thread does not spend its time freeing them).
        for op in &mut ops {
            op.parsed = None;
        }
        let result = self.store.commit_audited(ctx, ops, vec![record]).await;
        if patients_written && result.is_ok() {
            self.mpi_wake.notify_one();
        }
        if relationships_change {
            self.access.clear();
        }
        if terminology_changes {
            self.terminology.clear();
        }
        if result.is_ok() && !subscription_owners.is_empty() {
            self.subscription_owners_keep(subscription_owners).await?;
        }
        result.map_err(|e| Self::booking_conflict(&booked, e))
    }

    async fn authorize_writes(
        &self,
        ctx: &Ctx,
        principal: &Principal,
        ops: &[WriteOp],
        interaction: &str,
    ) -> EngineResult<()> {
        let deny = |op: &WriteOp, reason: String| {
            let entity = format!("{}/{}", op.resource_type, op.id);
            let reason = if interaction == "transaction" || interaction == "batch" {
                format!("{entity}: {reason}")
            } else {
                reason
            };
            self.deny(ctx, interaction, entity, reason)
        };
        if principal.role == Role::System {
            for op in ops {
                let perm = match op.method {
                    WriteMethod::Create => access::Perm::Create,
                    WriteMethod::Update => access::Perm::Update,
                    WriteMethod::Delete => access::Perm::Delete,
                };
                // An update-as-create (PUT of a new id) needs create or update.
                let ok = principal.scopes.allows(&op.resource_type, perm)
                    || (op.version == 1 && principal.scopes.allows(&op.resource_type, access::Perm::Update));
                if !ok {
                    let reason =
                        format!("the access token's scopes do not allow {} on {}", op.method.code(), op.resource_type);
                    return Err(deny(op, reason).await);
                }
            }
            return Ok(());
        }
        let replaced: Vec<(String, String)> =
            ops.iter().filter(|op| op.version > 1).map(|op| (op.resource_type.clone(), op.id.clone())).collect();
        let old: HashMap<(String, String), StoredResource> = if replaced.is_empty() {
            HashMap::new()
        } else {
            self.store
                .read_many(&Ctx::system(), &replaced)
                .await?
                .into_iter()
                .map(|r| ((r.resource_type.clone(), r.id.clone()), r))
                .collect()
        };
        for op in ops {
            let action = match op.method {
                WriteMethod::Create if op.version == 1 => Action::Create,
                WriteMethod::Delete => Action::Delete,
                _ => Action::Update,
            };
            if op.body.is_some() {
                let body = crate::quality::parsed_body(op).unwrap_or(std::borrow::Cow::Owned(Value::Null));
                let facts = self.facts(principal, &op.resource_type, &body).await?;
                let mut decision = self.decide_on(principal, action, &facts).await?;
                if decision.permit
                    && action == Action::Create
                    && principal.role.is_clinical()
                    && let Some(reason) = self.foreign_care_start(principal, &op.resource_type, &body)
                {
                    decision = Decision { permit: false, reason, break_glass: false };
                }
                if !decision.permit {
                    return Err(deny(op, decision.reason).await);
                }
            }
            if let Some(previous) = old.get(&(op.resource_type.clone(), op.id.clone())) {
                let facts = self.facts(principal, &previous.resource_type, &body_json(previous)).await?;
                let decision = self.decide_on(principal, action, &facts).await?;
                if !decision.permit {
                    return Err(deny(op, decision.reason).await);
                }
            }
        }
        Ok(())
    }

    /// An Encounter or EpisodeOfCare a clinician opens must be at their own organization (it
    /// is what creates the care relationship). `Some(reason)` if it is not.
    fn foreign_care_start(&self, principal: &Principal, resource_type: &str, body: &Value) -> Option<String> {
        let field = match resource_type {
            "Encounter" => "serviceProvider",
            "EpisodeOfCare" => "managingOrganization",
            _ => return None,
        };
        let org = principal.organization.as_deref().unwrap_or("");
        let named = body[field]["reference"].as_str().unwrap_or("");
        if !org.is_empty() && named == format!("Organization/{org}") {
            None
        } else {
            Some(format!("an {resource_type} you open must be at your own organization ({field}: Organization/{org})"))
        }
    }
}

/// Reads one Consent into the relationship: permits and denials for the caller's organization
/// or person, and the sensitive classes a permit covers.
fn apply_consent(consent: &Value, actors: &[String], rel: &mut Relationship) {
    let provision = &consent["provision"];
    let top_type = provision["type"].as_str().unwrap_or("permit");
    let names_actor = |p: &Value| {
        p["actor"].as_array().is_some_and(|a| {
            a.iter().any(|x| x["reference"]["reference"].as_str().is_some_and(|r| actors.iter().any(|m| m == r)))
        })
    };
    let has_actor = provision["actor"].as_array().is_some_and(|a| !a.is_empty());
    let labels = |p: &Value| -> Vec<String> {
        p["securityLabel"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["code"].as_str()).map(str::to_string).collect())
            .unwrap_or_default()
    };
    match top_type {
        "deny" if !has_actor || names_actor(provision) => rel.consent_deny = true,
        "permit" if names_actor(provision) => {
            rel.consent_permit = true;
            for class in labels(provision) {
                if !rel.consent_classes.contains(&class) {
                    rel.consent_classes.push(class);
                }
            }
            // Nested denials withdraw classes again.
            for nested in provision["provision"].as_array().into_iter().flatten() {
                if nested["type"].as_str() == Some("deny") {
                    let withdrawn = labels(nested);
                    rel.consent_classes.retain(|c| !withdrawn.contains(c));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn consents_grant_and_refuse() {
        let actors = vec!["Organization/h1".to_string(), "Practitioner/d1".to_string()];
        let mut rel = Relationship::default();
        apply_consent(
            &json!({"provision": {"type": "permit", "actor": [{"reference": {"reference": "x"}}]}}),
            &actors,
            &mut rel,
        );
        assert_eq!(rel, Relationship::default(), "malformed actors grant nothing");
        apply_consent(
            &json!({"provision": {"type": "permit", "actor": [{"reference": {"reference": "Organization/h2"}}]}}),
            &actors,
            &mut rel,
        );
        assert!(!rel.consent_permit, "a consent to another organization grants nothing");
        let mut rel = Relationship::default();
        apply_consent(
            &json!({"provision": {"type": "permit",
                "actor": [{"reference": {"reference": "Practitioner/d1"}}],
                "securityLabel": [{"code": "PSY"}, {"code": "HIV"}],
                "provision": [{"type": "deny", "securityLabel": [{"code": "HIV"}]}]}}),
            &actors,
            &mut rel,
        );
        assert!(rel.consent_permit);
        assert_eq!(rel.consent_classes, ["PSY"]);
        let mut rel = Relationship::default();
        apply_consent(&json!({"provision": {"type": "deny"}}), &actors, &mut rel);
        assert!(rel.consent_deny, "a blanket refusal applies to everyone");
    }
}

/// Whether a Patient search is a registration lookup a clinician may make without a care
/// relationship (to start one): exactly one `identifier` with one complete value (`system|value`
/// or `value`, no modifier, no list), and otherwise only parameters that shape the page. Anything
/// that widens it (an empty or partial value, `:contains`, `:missing`, `_include`, `_revinclude`,
/// `_has`, other criteria) needs a relationship like any other search.
fn registration_lookup(params: &[(String, String)]) -> bool {
    let mut identifiers = 0;
    for (k, v) in params {
        match k.as_str() {
            "identifier" => {
                identifiers += 1;
                let value = v.rsplit_once('|').map_or(v.as_str(), |(_, value)| value);
                if value.trim().len() < 4 || v.contains(',') {
                    return false;
                }
            }
            "_count" | "_summary" | "_elements" | "_format" | "_total" => {}
            _ => return false,
        }
    }
    identifiers == 1
}

#[cfg(test)]
mod registration_tests {
    use super::registration_lookup;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_division_extension_is_one_url() {
        // `access` decides on it and `fhir` indexes it; neither crate depends on the other.
        assert_eq!(access::DIVISION_EXTENSION, fhir::definitions::DIVISION_EXTENSION);
    }

    #[test]
    fn only_an_exact_single_identifier_is_a_registration_lookup() {
        let sys = "urn:oid:2.16.156.10011.1.5";
        assert!(registration_lookup(&p(&[("identifier", &format!("{sys}|11010519491231002X"))])));
        assert!(registration_lookup(&p(&[("identifier", "11010519491231002X"), ("_count", "5")])));
        for widened in [
            p(&[("identifier", &format!("{sys}|"))]),
            p(&[("identifier", "")]),
            p(&[("identifier:contains", "1101")]),
            p(&[("identifier:missing", "false")]),
            p(&[("identifier", "a|11010519491231002X,b|110105194912310029")]),
            p(&[("identifier", "11010519491231002X"), ("_revinclude", "Observation:subject")]),
            p(&[("identifier", "11010519491231002X"), ("_has:Observation:subject:code", "x")]),
            p(&[("identifier", "11010519491231002X"), ("identifier", "110105194912310029")]),
            p(&[("identifier", "11010519491231002X"), ("name", "张")]),
            p(&[("name", "张")]),
        ] {
            assert!(!registration_lookup(&widened), "{widened:?}");
        }
    }
}
