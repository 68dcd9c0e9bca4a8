//! The internet hospital (互联网医院): online follow-up visits, SM2-signed e-prescriptions with the
//! national rules and rational-drug-use checks (`rx` crate), pharmacist review, and dispensing.
//!
//! Visits are `Encounter`s of class `VR` tagged [`VISIT_TAG`]:
//! `planned` (waiting) → `in-progress` (consulting) → `finished` (completed, or referred offline
//! when the condition changed) or `cancelled`. Prescriptions are `MedicationRequest`s sharing a
//! `groupIdentifier` and `identifier` (the prescription number, [`RX_SYSTEM`]; R4 has no search
//! parameter on `groupIdentifier`): `on-hold` until a pharmacist
//! approves (`active`) or rejects (`cancelled`), `completed` once dispensed. Signatures are
//! `Provenance` resources (doctor, then pharmacist) over the canonical form of the prescription
//! content (`rx::sign`); the content leaves out statuses, so it stays verifiable for the
//! prescription's whole life. A review is a `Task` (code [`REVIEW_CODE`]) owned by the
//! prescribing hospital.
//!
//! Every operation checks who the caller is (the resident or guardian of the patient; the
//! treating doctor; a pharmacist of the hospital; a pharmacy), answers an OperationOutcome with
//! Chinese and English text when a rule stops it, and is audited, refusals included.

use std::collections::HashMap;
use std::sync::Arc;

use access::Role;
use chrono::{Datelike, NaiveDate};
use crypto::KeyRing;
use crypto::sm2::{Sm2SigningKey, Sm2VerifyingKey};
use fhir::{Issue, IssueType};
use registry::practitioner::Activity;
use rx::{Catalogue, Item, Knowledge, Level, PatientFacts, Prescription};
use serde_json::{Value, json};
use store::{Ctx, StoreError, StoredResource, WriteMethod, WriteOp};

use crate::crud::now_ms;
use crate::{Engine, EngineError, EngineResult, audit};

mod worklists;
pub use worklists::{InternetDoctor, overrides_of, task_prescription};

/// `meta.tag` of an internet visit.
pub const VISIT_TAG: &str = "https://hutong.dev/fhir/CodeSystem/internet-hospital|follow-up";
/// `groupIdentifier.system` of prescription numbers.
pub const RX_SYSTEM: &str = "https://hutong.dev/fhir/sid/prescription";
/// The catalogue's drug code system.
pub const DRUG_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/drug-catalogue";
/// `Task.code` of a pharmacist review.
pub const REVIEW_CODE: &str = "https://hutong.dev/fhir/CodeSystem/internet-hospital|rx-review";
/// Extension on the MedicationRequests: an overridden warning (`alert` key and `reason`).
pub const OVERRIDE_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/rx-override";
/// The security-object kind of practitioners' signing keys.
const SIGNING_KEY_KIND: &str = "signing-key";

/// The drug catalogue and interaction knowledge base in use.
#[derive(Debug, Clone)]
pub struct RxConfig {
    pub catalogue: Arc<Catalogue>,
    pub knowledge: Arc<Knowledge>,
}

impl Default for RxConfig {
    fn default() -> Self {
        RxConfig { catalogue: Arc::new(Catalogue::demo()), knowledge: Arc::new(Knowledge::demo()) }
    }
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::bad_request(IssueType::Invalid, message)
}

fn rule(message: impl Into<String>) -> EngineError {
    EngineError::Unprocessable(vec![Issue::error(IssueType::BusinessRule, message)])
}

fn conflict(message: impl Into<String>) -> EngineError {
    EngineError::Conflict { message: message.into(), precondition: false }
}

fn body(r: &StoredResource) -> Value {
    r.body.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null)
}

fn reference_id<'a>(reference: &'a str, ty: &str) -> Option<&'a str> {
    reference.strip_prefix(ty)?.strip_prefix('/').filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Parameters by name: each value's JSON (`valueX` or `part`s).
struct Params<'a> {
    all: Vec<(&'a str, &'a Value)>,
}

impl<'a> Params<'a> {
    fn parse(parameters: &'a Value, operation: &str, known: &[&str]) -> EngineResult<Params<'a>> {
        if parameters["resourceType"] != "Parameters" {
            return Err(bad(format!("{operation} takes a Parameters resource")));
        }
        let mut all = Vec::new();
        for p in parameters["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("");
            if !known.contains(&name) {
                return Err(bad(format!("{operation} has no parameter '{name}' ({})", known.join(", "))));
            }
            all.push((name, p));
        }
        Ok(Params { all })
    }

    fn text(&self, name: &str) -> Option<&'a str> {
        self.all.iter().find(|(n, _)| *n == name).and_then(|(_, p)| value_text(p))
    }

    fn flag(&self, name: &str) -> bool {
        self.all.iter().find(|(n, _)| *n == name).is_some_and(|(_, p)| p["valueBoolean"] == true)
    }

    fn number(&self, name: &str) -> Option<f64> {
        self.all.iter().find(|(n, _)| *n == name).and_then(|(_, p)| value_number(p))
    }

    fn each<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a Value> + 's {
        self.all.iter().filter(move |(n, _)| *n == name).map(|(_, p)| *p)
    }
}

fn value_text(p: &Value) -> Option<&str> {
    ["valueString", "valueCode", "valueId"]
        .iter()
        .find_map(|k| p[*k].as_str())
        .or_else(|| p["valueReference"]["reference"].as_str())
}

fn value_number(p: &Value) -> Option<f64> {
    ["valueDecimal", "valueInteger", "valuePositiveInt", "valueUnsignedInt"].iter().find_map(|k| p[*k].as_f64())
}

fn part<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["part"].as_array()?.iter().find(|x| x["name"] == name)
}

/// The `pharmacy` parameter's Organization id.
fn pharmacy_param(p: &Params<'_>) -> EngineResult<String> {
    p.text("pharmacy")
        .and_then(|r| reference_id(r, "Organization"))
        .map(str::to_string)
        .ok_or_else(|| bad("'pharmacy' (Organization/{id}) is required"))
}

/// Whole years between a birth date and a day.
fn age_on(birth: &str, day: NaiveDate) -> Option<u32> {
    let birth = NaiveDate::parse_from_str(birth.get(..10)?, "%Y-%m-%d").ok()?;
    let mut years = day.year() - birth.year();
    if (day.month(), day.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

fn today() -> NaiveDate {
    let offset = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    chrono::Utc::now().with_timezone(&offset).date_naive()
}

/// The alert texts as OperationOutcome issues.
fn alert_issues(alerts: &[&rx::Alert], prefix: &str) -> Vec<Issue> {
    alerts
        .iter()
        .map(|a| Issue::error(IssueType::BusinessRule, format!("{prefix}[{}] {} / {}", a.key(), a.zh, a.en)))
        .collect()
}

impl Engine {
    /// This engine with another drug catalogue and knowledge base (`hutong serve
    /// --drug-catalogue FILE --drug-interactions FILE`).
    pub fn with_rx(mut self, rx: RxConfig) -> Self {
        self.config.rx = rx;
        self
    }

    fn caller(ctx: &Ctx) -> Option<&access::Principal> {
        ctx.principal.as_deref()
    }

    /// Audits a refusal and returns it.
    async fn refuse(
        &self,
        ctx: &Ctx,
        action: &str,
        entity: String,
        patient: Option<&str>,
        e: EngineError,
    ) -> EngineError {
        let outcome = if matches!(e, EngineError::Forbidden(_)) { "denied" } else { "failure" };
        let why = match &e {
            EngineError::Unprocessable(issues) | EngineError::BadRequest(issues) => {
                issues.iter().map(|i| i.diagnostics.clone()).collect::<Vec<_>>().join("; ")
            }
            other => other.to_string(),
        };
        let patients = patient.map(|p| vec![p.to_string()]).unwrap_or_default();
        match self.audit.append(audit::record(ctx, action, outcome, entity, patients, Some(&why))).await {
            Ok(()) => e,
            Err(store_error) => store_error.into(),
        }
    }

    /// The create of a new resource with a fresh id.
    fn new_resource_op(&self, resource_type: &str, now: i64, body: Value) -> EngineResult<WriteOp> {
        self.build_op(resource_type, &uuid::Uuid::new_v4().to_string(), 1, now, WriteMethod::Create, body)
    }

    /// Audits an operation's outcome: success with the patient it concerned, or the refusal.
    async fn finish(
        &self,
        ctx: &Ctx,
        action: &str,
        entity: String,
        result: EngineResult<(Value, String)>,
    ) -> EngineResult<Value> {
        match result {
            Ok((answer, patient)) => {
                self.audit.append(audit::record(ctx, action, "success", entity, vec![patient], None)).await?;
                Ok(answer)
            }
            Err(e) => Err(self.refuse(ctx, action, entity, None, e).await),
        }
    }

    async fn current_body(&self, resource_type: &str, id: &str) -> EngineResult<(StoredResource, Value)> {
        match self.store.read(&Ctx::system(), resource_type, id).await? {
            Some(r) if !r.deleted => {
                let b = body(&r);
                Ok((r, b))
            }
            _ => Err(EngineError::NotFound(format!("{resource_type}/{id}"))),
        }
    }

    // ---- visits ------------------------------------------------------------------------------

    /// `POST Encounter/$request-follow-up` (the resident, or a guardian acting for the patient):
    /// `patient`, `practitionerRole` (the doctor at a hospital's internet service), `condition`
    /// (the offline diagnosis on the platform), `reason`. Answers the waiting visit.
    pub async fn request_follow_up(&self, ctx: &Ctx, parameters: Value) -> EngineResult<Value> {
        const ACTION: &str = "internet-visit-request";
        let p = Params::parse(
            &parameters,
            "Encounter/$request-follow-up",
            &["patient", "practitionerRole", "condition", "reason"],
        )?;
        let patient = p
            .text("patient")
            .and_then(|r| reference_id(r, "Patient"))
            .ok_or_else(|| bad("'patient' (Patient/{id}) is required"))?
            .to_string();
        let result = self.request_follow_up_checked(ctx, &p, &patient).await;
        match result {
            Ok((stored, encounter)) => {
                let record =
                    audit::record(ctx, ACTION, "success", format!("Encounter/{}", stored.id), vec![patient], None);
                self.audit.append(record).await?;
                Ok(encounter)
            }
            Err(e) => Err(self.refuse(ctx, ACTION, "Encounter/$request-follow-up".into(), Some(&patient), e).await),
        }
    }

    async fn request_follow_up_checked(
        &self,
        ctx: &Ctx,
        p: &Params<'_>,
        patient: &str,
    ) -> EngineResult<(StoredResource, Value)> {
        if let Some(principal) = Self::caller(ctx)
            && !(principal.role == Role::System
                || (principal.role == Role::Resident && principal.patients.iter().any(|x| x == patient)))
        {
            return Err(EngineError::Forbidden(
                "a follow-up visit is requested by the resident or a guardian acting for the patient".into(),
            ));
        }
        self.current_body("Patient", patient).await?;
        let role_id = p
            .text("practitionerRole")
            .and_then(|r| reference_id(r, "PractitionerRole"))
            .ok_or_else(|| bad("'practitionerRole' (PractitionerRole/{id}: the doctor at the hospital) is required"))?;
        let (_, role) = self.current_body("PractitionerRole", role_id).await?;
        let practitioner = role["practitioner"]["reference"].as_str().and_then(|r| reference_id(r, "Practitioner"));
        let organization = role["organization"]["reference"].as_str().and_then(|r| reference_id(r, "Organization"));
        let (Some(practitioner), Some(organization)) = (practitioner, organization) else {
            return Err(rule(format!("PractitionerRole/{role_id} names no practitioner or no organization")));
        };
        // The doctor: licensed, registered for internet practice there, ≥ 3 years of practice.
        let eligibility = self.practitioner_may(practitioner, organization, Activity::Consult).await?;
        if !eligibility.eligible() {
            let why: Vec<String> = eligibility.failures.iter().map(|f| f.message.clone()).collect();
            return Err(rule(format!(
                "该医生不具备互联网诊疗资格 / the doctor may not consult online: {}",
                why.join("; ")
            )));
        }
        // Follow-up of a disease diagnosed offline only: no first visits.
        let condition_id = p.text("condition").and_then(|r| reference_id(r, "Condition")).ok_or_else(|| {
            rule("互联网医院仅提供复诊：请选择线下已确诊的疾病 / online care is for follow-up only: name the offline diagnosis ('condition')")
        })?;
        let (_, condition) = self.current_body("Condition", condition_id).await?;
        if condition["subject"]["reference"].as_str() != Some(format!("Patient/{patient}").as_str()) {
            return Err(EngineError::Forbidden(format!("Condition/{condition_id} is not this patient's")));
        }
        let confirmed = condition["verificationStatus"]["coding"][0]["code"] == "confirmed";
        let active = condition["clinicalStatus"]["coding"][0]["code"]
            .as_str()
            .is_some_and(|c| ["active", "recurrence", "relapse"].contains(&c));
        if !confirmed || !active {
            return Err(rule(format!(
                "Condition/{condition_id} 不是已确诊且仍在治疗的疾病 / is not a confirmed, active diagnosis: a follow-up visit needs one"
            )));
        }
        if let Some(e) = condition["encounter"]["reference"].as_str().and_then(|r| reference_id(r, "Encounter")) {
            let (_, encounter) = self.current_body("Encounter", e).await?;
            if encounter["class"]["code"] == "VR" {
                return Err(rule(
                    "该诊断来自互联网诊疗，不是线下首诊 / this diagnosis was made online: a follow-up needs an offline diagnosis",
                ));
            }
        }
        let now = now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let (system, code) = VISIT_TAG.split_once('|').unwrap_or((VISIT_TAG, ""));
        let encounter = json!({
            "resourceType": "Encounter", "id": id, "status": "planned",
            "meta": {"tag": [{"system": system, "code": code}]},
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "互联网复诊"},
            "type": [{"text": "互联网复诊"}],
            "subject": {"reference": format!("Patient/{patient}")},
            "participant": [{"individual": {"reference": format!("PractitionerRole/{role_id}")}},
                            {"individual": {"reference": format!("Practitioner/{practitioner}")}}],
            "reasonReference": [{"reference": format!("Condition/{condition_id}")}],
            "reasonCode": p.text("reason").map(|r| json!([{"text": r}])).unwrap_or(Value::Null),
            "serviceProvider": {"reference": format!("Organization/{organization}")},
        });
        let mut encounter = encounter;
        if let Some(o) = encounter.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        let op = self.build_op("Encounter", &id, 1, now, WriteMethod::Create, encounter)?;
        let stored = self.commit_one(op).await?;
        let answer = body(&stored);
        Ok((stored, answer))
    }

    async fn commit_one(&self, op: WriteOp) -> EngineResult<StoredResource> {
        let (ty, id) = (op.resource_type.clone(), op.id.clone());
        self.store.commit(&Ctx::system(), vec![op]).await?;
        self.store.read(&Ctx::system(), &ty, &id).await?.ok_or_else(|| EngineError::NotFound(format!("{ty}/{id}")))
    }

    /// The visit and its treating doctor's Practitioner id.
    async fn visit(&self, id: &str) -> EngineResult<(StoredResource, Value, String)> {
        let (stored, encounter) = self.current_body("Encounter", id).await?;
        let tagged = encounter["meta"]["tag"].as_array().into_iter().flatten().any(|t| {
            format!("{}|{}", t["system"].as_str().unwrap_or(""), t["code"].as_str().unwrap_or("")) == VISIT_TAG
        });
        if !tagged {
            return Err(EngineError::NotFound(format!("Encounter/{id} (an internet follow-up visit)")));
        }
        let doctor = encounter["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["individual"]["reference"].as_str())
            .find_map(|r| reference_id(r, "Practitioner"))
            .unwrap_or_default()
            .to_string();
        Ok((stored, encounter, doctor))
    }

    /// `POST Encounter/{id}/$visit-status` `status`: the treating doctor starts
    /// (`in-progress`), completes (`finished`) or refers offline (`referred`: the condition
    /// changed; stop and see a doctor in person); the resident cancels a visit that has not
    /// started (`cancelled`).
    pub async fn visit_status(&self, ctx: &Ctx, id: &str, parameters: Value) -> EngineResult<Value> {
        const ACTION: &str = "internet-visit-status";
        let p = Params::parse(&parameters, "Encounter/$visit-status", &["status", "reason", "otp"])?;
        let wanted =
            p.text("status").ok_or_else(|| bad("'status' (in-progress, finished, referred, cancelled) is required"))?;
        let (stored, mut encounter, doctor) = self.visit(id).await?;
        let patient = encounter["subject"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Patient"))
            .unwrap_or_default()
            .to_string();
        let principal = Self::caller(ctx);
        let is_doctor = principal.is_some_and(|p| p.practitioner.as_deref() == Some(doctor.as_str()));
        let is_patient = principal.is_some_and(|p| p.role == Role::Resident && p.patients.contains(&patient));
        let status = encounter["status"].as_str().unwrap_or("").to_string();
        let checked = match (wanted, status.as_str()) {
            (_, _)
                if principal.is_some_and(|p| p.role != Role::System)
                    && !is_doctor
                    && !(is_patient && wanted == "cancelled") =>
            {
                Err(EngineError::Forbidden(
                    "only the treating doctor (or the patient, to cancel) changes a visit".into(),
                ))
            }
            ("in-progress", "planned") | ("finished" | "referred", "in-progress") | ("cancelled", "planned") => Ok(()),
            (w, s) if ["in-progress", "finished", "referred", "cancelled"].contains(&w) => {
                Err(conflict(format!("就诊状态为 {s}，不能改为 {w} / the visit is {s}: it cannot become {w}")))
            }
            (w, _) => Err(bad(format!("status '{w}' is not in-progress, finished, referred or cancelled"))),
        };
        if let Err(e) = checked {
            return Err(self.refuse(ctx, ACTION, format!("Encounter/{id}"), Some(&patient), e).await);
        }
        let now = now_ms();
        let instant = fhir::normalize::format_instant(now);
        match wanted {
            "in-progress" => encounter["period"]["start"] = json!(instant),
            "cancelled" => {}
            _ => encounter["period"]["end"] = json!(instant),
        }
        encounter["status"] = json!(if wanted == "referred" { "finished" } else { wanted });
        if wanted == "referred" {
            encounter["hospitalization"]["dischargeDisposition"] =
                json!({"text": "病情变化，转线下就诊 / condition changed: referred to an in-person visit"});
        }
        if let Some(reason) = p.text("reason") {
            encounter["reasonCode"] = json!([{"text": reason}]);
        }
        let op = self.build_op("Encounter", id, stored.version + 1, now, WriteMethod::Update, encounter)?;
        let record = audit::record(ctx, ACTION, "success", format!("Encounter/{id}"), vec![patient], Some(wanted));
        self.store.commit_audited(&Ctx::system(), vec![op], vec![record]).await.map_err(|e| match e {
            StoreError::VersionConflict { .. } => conflict("the visit changed meanwhile: reload it"),
            other => other.into(),
        })?;
        Ok(body(&self.current_body("Encounter", id).await?.0))
    }

    // ---- prescriptions -----------------------------------------------------------------------

    /// A practitioner's SM2 signing key (the stand-in for the CA's cloud signature service):
    /// created on first use, kept sealed with the platform's SM4 key; the public key is kept
    /// beside it for verification.
    async fn signing_key(&self, keys: &KeyRing, practitioner: &str) -> EngineResult<Sm2SigningKey> {
        let context = format!("signing-key:{practitioner}");
        if let Some(stored) = self.store.kv_get(SIGNING_KEY_KIND, practitioner).await? {
            let v: Value = serde_json::from_str(&stored).map_err(|e| bad(format!("stored signing key: {e}")))?;
            let secret = keys
                .decrypt_field(v["sealed"].as_str().unwrap_or(""), &context)
                .map_err(|e| bad(format!("the signing key of Practitioner/{practitioner} cannot be opened: {e}")))?;
            return Sm2SigningKey::from_hex(&secret).map_err(|e| bad(format!("stored signing key: {e}")));
        }
        let key = Sm2SigningKey::generate();
        let v = json!({"public": key.public().to_hex(), "sealed": keys.encrypt_field(&key.secret_hex(), &context)});
        match self.store.kv_put(SIGNING_KEY_KIND, practitioner, &v.to_string(), &[]).await {
            Ok(()) => Ok(key),
            // Created by a concurrent first signature: use that one.
            Err(StoreError::Duplicate { .. }) => Box::pin(self.signing_key(keys, practitioner)).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn verifying_key(&self, practitioner: &str) -> EngineResult<Sm2VerifyingKey> {
        let stored = self
            .store
            .kv_get(SIGNING_KEY_KIND, practitioner)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("the signing key of Practitioner/{practitioner}")))?;
        let v: Value = serde_json::from_str(&stored).map_err(|e| bad(format!("stored signing key: {e}")))?;
        Sm2VerifyingKey::from_hex(v["public"].as_str().unwrap_or(""))
            .map_err(|e| bad(format!("stored signing key: {e}")))
    }

    /// What the checks need to know about a patient, from the platform's records.
    async fn patient_facts(&self, patient: &str, weight: Option<f64>, day: NaiveDate) -> EngineResult<PatientFacts> {
        let (_, p) = self.current_body("Patient", patient).await?;
        let reference = format!("Patient/{patient}");
        let mut facts = PatientFacts {
            age_years: p["birthDate"].as_str().and_then(|b| age_on(b, day)).unwrap_or(0),
            weight_kg: weight,
            sex: p["gender"].as_str().filter(|g| *g == "male" || *g == "female").map(str::to_string),
            ..PatientFacts::default()
        };
        for a in self.scan("AllergyIntolerance", &[("patient", reference.as_str())]).await? {
            let a = body(&a);
            for c in a["code"]["coding"].as_array().into_iter().flatten() {
                facts.allergies.extend(c["code"].as_str().map(str::to_string));
            }
            facts.allergies.extend(a["code"]["text"].as_str().map(str::to_string));
        }
        for c in self.scan("Condition", &[("patient", reference.as_str()), ("clinical-status", "active")]).await? {
            let c = body(&c);
            for coding in c["code"]["coding"].as_array().into_iter().flatten() {
                if coding["system"] == "http://hl7.org/fhir/sid/icd-10" {
                    facts.conditions.extend(coding["code"].as_str().map(str::to_string));
                }
            }
        }
        for m in self.scan("MedicationRequest", &[("patient", reference.as_str()), ("status", "active")]).await? {
            let m = body(&m);
            for coding in m["medicationCodeableConcept"]["coding"].as_array().into_iter().flatten() {
                if coding["system"] == DRUG_SYSTEM {
                    facts.current.extend(coding["code"].as_str().map(str::to_string));
                }
            }
        }
        Ok(facts)
    }

    /// `POST MedicationRequest/$prescribe` (the treating doctor, during the visit). Parameters:
    /// `encounter`; `item` (parts `drug` code, `doseMg`, `timesPerDay`, `days`), repeated;
    /// `validDays`, `chronicReason`, `urgent`, `guardianPresent`, `weightKg`; `override` (parts
    /// `alert` key, `reason`), repeated; `check` true for the live alerts only. Hard stops are a
    /// 422; a warning without a reason is a 422 naming the key to override; otherwise the
    /// prescription is signed and stored `on-hold` with its review Task.
    pub async fn prescribe(&self, ctx: &Ctx, keys: &KeyRing, parameters: Value) -> EngineResult<Value> {
        const ACTION: &str = "rx-prescribe";
        let p = Params::parse(
            &parameters,
            "MedicationRequest/$prescribe",
            &[
                "encounter",
                "item",
                "validDays",
                "chronicReason",
                "urgent",
                "guardianPresent",
                "weightKg",
                "override",
                "check",
            ],
        )?;
        let encounter_id = p
            .text("encounter")
            .and_then(|r| reference_id(r, "Encounter"))
            .ok_or_else(|| bad("'encounter' (the internet visit, Encounter/{id}) is required"))?
            .to_string();
        let mut patient = None;
        let result = self.prescribe_checked(ctx, keys, &p, &encounter_id, &mut patient).await;
        match result {
            Ok(answer) => Ok(answer),
            Err(e) => Err(self.refuse(ctx, ACTION, format!("Encounter/{encounter_id}"), patient.as_deref(), e).await),
        }
    }

    async fn prescribe_checked(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        p: &Params<'_>,
        encounter_id: &str,
        patient_out: &mut Option<String>,
    ) -> EngineResult<Value> {
        let (_, encounter, doctor) = self.visit(encounter_id).await?;
        let patient = encounter["subject"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Patient"))
            .unwrap_or_default()
            .to_string();
        *patient_out = Some(patient.clone());
        let organization = encounter["serviceProvider"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Organization"))
            .unwrap_or_default()
            .to_string();
        if Self::caller(ctx).is_none_or(|c| c.practitioner.as_deref() != Some(doctor.as_str())) {
            return Err(EngineError::Forbidden(
                "只有接诊医生可以在本次复诊中开具处方 / only the treating doctor prescribes, within the visit".into(),
            ));
        }
        if encounter["status"] != "in-progress" {
            return Err(conflict(format!(
                "就诊状态为 {}，不能开具处方 / the visit is {}: prescriptions are written during the consultation",
                encounter["status"].as_str().unwrap_or(""),
                encounter["status"].as_str().unwrap_or("")
            )));
        }
        let eligibility = self.practitioner_may(&doctor, &organization, Activity::Prescribe).await?;
        if !eligibility.eligible() {
            let why: Vec<String> = eligibility.failures.iter().map(|f| f.message.clone()).collect();
            return Err(rule(format!(
                "该医生不具备互联网处方资格 / the doctor may not prescribe online: {}",
                why.join("; ")
            )));
        }
        let day = today();
        let mut items = Vec::new();
        for item in p.each("item") {
            let drug = part(item, "drug").and_then(value_text).ok_or_else(|| bad("each 'item' needs a 'drug' code"))?;
            let number = |n: &str| part(item, n).and_then(value_number);
            items.push(Item {
                drug: drug.to_string(),
                dose_mg: number("doseMg").ok_or_else(|| bad(format!("item {drug}: 'doseMg' is required")))?,
                times_per_day: number("timesPerDay").map_or(0, |n| n as u32),
                days: number("days").map_or(0, |n| n as u32),
            });
        }
        let prescription = Prescription {
            items,
            written: day,
            valid_days: p.number("validDays").map(|d| d as u32),
            chronic_reason: p.text("chronicReason").map(str::to_string),
            urgent: p.flag("urgent"),
            guardian_present: p.flag("guardianPresent"),
        };
        let facts = self.patient_facts(&patient, p.number("weightKg"), day).await?;
        let alerts = rx::check(&prescription, &facts, &self.config.rx.catalogue, &self.config.rx.knowledge);
        let mut overrides: HashMap<String, String> = HashMap::new();
        for o in p.each("override") {
            let (Some(key), Some(reason)) =
                (part(o, "alert").and_then(value_text), part(o, "reason").and_then(value_text))
            else {
                return Err(bad("each 'override' needs 'alert' (the alert key) and 'reason'"));
            };
            if reason.trim().is_empty() {
                return Err(bad(format!("override {key}: the reason must not be empty")));
            }
            overrides.insert(key.to_string(), reason.trim().to_string());
        }
        if p.flag("check") {
            let listed: Vec<Value> = alerts
                .iter()
                .map(|a| {
                    json!({"key": a.key(), "rule": a.rule, "level": if a.level == Level::HardStop { "hard-stop" } else { "warning" },
                           "drugs": a.drugs, "zh": a.zh, "en": a.en, "overridden": overrides.contains_key(&a.key())})
                })
                .collect();
            return Ok(
                json!({"resourceType": "Parameters", "parameter": [{"name": "alerts", "valueString": Value::Array(listed).to_string()}]}),
            );
        }
        let hard: Vec<&rx::Alert> = alerts.iter().filter(|a| a.level == Level::HardStop).collect();
        if !hard.is_empty() {
            // Kept for the regulator's supervision feed: the attempt broke a rule.
            let now = now_ms();
            let mut ops = Vec::new();
            for a in &hard {
                let issue = detected_issue(
                    a.rule,
                    &a.key(),
                    "high",
                    &format!("{} / {}", a.zh, a.en),
                    &patient,
                    encounter_id,
                    &doctor,
                    None,
                    now,
                );
                ops.push(self.new_resource_op("DetectedIssue", now, issue)?);
            }
            self.store.commit(&Ctx::system(), ops).await?;
            return Err(EngineError::Unprocessable(alert_issues(&hard, "不可开具 / hard stop ")));
        }
        let unreasoned: Vec<&rx::Alert> =
            alerts.iter().filter(|a| a.level == Level::Warning && !overrides.contains_key(&a.key())).collect();
        if !unreasoned.is_empty() {
            return Err(EngineError::Unprocessable(alert_issues(
                &unreasoned,
                "需填写理由方可开具 (override with a reason) ",
            )));
        }
        let warned: Vec<(String, String)> = alerts
            .iter()
            .filter(|a| a.level == Level::Warning)
            .map(|a| (a.key(), overrides.get(&a.key()).cloned().unwrap_or_default()))
            .collect();
        self.sign_and_store(ctx, keys, &prescription, &patient, encounter_id, &doctor, &organization, &warned).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn sign_and_store(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        prescription: &Prescription,
        patient: &str,
        encounter: &str,
        doctor: &str,
        organization: &str,
        overrides: &[(String, String)],
    ) -> EngineResult<Value> {
        let now = now_ms();
        // Hex, not base64url: the number is part of FHIR ids, which allow no '_'.
        let number = format!(
            "RX{}{}",
            prescription.written.format("%Y%m%d"),
            crypto::hex(&crypto::random_bytes(4)).to_uppercase()
        );
        let valid_until =
            prescription.written + chrono::Duration::days(i64::from(prescription.valid_days.unwrap_or(1).max(1) - 1));
        let override_ext: Vec<Value> = overrides
            .iter()
            .map(|(k, r)| json!({"url": OVERRIDE_EXTENSION, "extension": [{"url": "alert", "valueString": k}, {"url": "reason", "valueString": r}]}))
            .collect();
        let mut requests = Vec::new();
        for (i, item) in prescription.items.iter().enumerate() {
            let drug =
                self.config.rx.catalogue.get(&item.drug).ok_or_else(|| bad(format!("unknown drug {}", item.drug)))?;
            let mut mr = json!({
                "resourceType": "MedicationRequest", "id": format!("{number}-{}", i + 1),
                "status": "on-hold", "statusReason": {"text": "待药师审核 / awaiting pharmacist review"},
                "intent": "order",
                "groupIdentifier": {"system": RX_SYSTEM, "value": number},
                "identifier": [{"system": RX_SYSTEM, "value": number}],
                "medicationCodeableConcept": {"coding": [{"system": DRUG_SYSTEM, "code": drug.code, "display": drug.name}], "text": drug.name},
                "subject": {"reference": format!("Patient/{patient}")},
                "encounter": {"reference": format!("Encounter/{encounter}")},
                "requester": {"reference": format!("Practitioner/{doctor}")},
                "authoredOn": fhir::normalize::format_instant(now),
                "dosageInstruction": [{
                    "text": format!("每次{}mg，每日{}次，共{}天", item.dose_mg, item.times_per_day, item.days),
                    "timing": {"repeat": {"frequency": item.times_per_day, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": item.dose_mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}]
                }],
                "dispenseRequest": {
                    "validityPeriod": {"start": prescription.written.to_string(), "end": valid_until.to_string()},
                    "expectedSupplyDuration": {"value": item.days, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"},
                    "performer": {"reference": format!("Organization/{organization}")}
                },
            });
            if !override_ext.is_empty() {
                mr["extension"] = json!(override_ext);
            }
            if let Some(reason) = &prescription.chronic_reason {
                mr["note"] = json!([{"text": format!("长处方理由 / chronic supply reason: {reason}")}]);
            }
            requests.push(mr);
        }
        let content = prescription_content(&number, &requests);
        let key = self.signing_key(keys, doctor).await?;
        let signature = rx::sign::sign(&key, &content);
        let provenance = signature_provenance(
            &number,
            &requests,
            doctor,
            "1.2.840.10065.1.12.1.1",
            "doctor",
            &signature,
            &content,
            now,
        );
        let task = json!({
            "resourceType": "Task", "id": format!("{number}-review"), "status": "requested", "intent": "order",
            "code": {"coding": [{"system": REVIEW_CODE.split_once('|').map_or("", |x| x.0), "code": "rx-review"}], "text": "处方审核"},
            "focus": {"reference": format!("MedicationRequest/{number}-1")},
            "for": {"reference": format!("Patient/{patient}")},
            "encounter": {"reference": format!("Encounter/{encounter}")},
            "requester": {"reference": format!("Practitioner/{doctor}")},
            "owner": {"reference": format!("Organization/{organization}")},
            "authoredOn": fhir::normalize::format_instant(now),
            "input": [{"type": {"text": "prescription"}, "valueIdentifier": {"system": RX_SYSTEM, "value": number}}],
        });
        let mut ops = Vec::new();
        for mr in &requests {
            let id = mr["id"].as_str().unwrap_or_default().to_string();
            ops.push(self.build_op("MedicationRequest", &id, 1, now, WriteMethod::Create, mr.clone())?);
        }
        ops.push(self.build_op("Provenance", &format!("{number}-doctor"), 1, now, WriteMethod::Create, provenance)?);
        for (key, reason) in overrides {
            let rule = key.split(':').next().unwrap_or_default();
            let issue = detected_issue(
                rule,
                key,
                "moderate",
                &format!("prescription {number}"),
                patient,
                encounter,
                doctor,
                Some(reason),
                now,
            );
            ops.push(self.new_resource_op("DetectedIssue", now, issue)?);
        }
        ops.push(self.build_op("Task", &format!("{number}-review"), 1, now, WriteMethod::Create, task)?);
        let reason =
            format!("prescription {number}: {} drug(s), {} warning(s) overridden", requests.len(), overrides.len());
        let record = audit::record(
            ctx,
            "rx-prescribe",
            "success",
            format!("MedicationRequest?identifier={number}"),
            vec![patient.to_string()],
            Some(&reason),
        );
        self.store.commit_audited(&Ctx::system(), ops, vec![record]).await?;
        Ok(json!({"resourceType": "Parameters", "parameter": [
            {"name": "prescription", "valueIdentifier": {"system": RX_SYSTEM, "value": number}},
            {"name": "task", "valueReference": {"reference": format!("Task/{number}-review")}},
            {"name": "digest", "valueString": rx::sign::digest(&content)},
            {"name": "signature", "valueString": signature},
        ]}))
    }

    /// The MedicationRequests of a prescription, in line order.
    async fn prescription_requests(&self, number: &str) -> EngineResult<Vec<StoredResource>> {
        let identifier = format!("{RX_SYSTEM}|{number}");
        let mut found = self.scan("MedicationRequest", &[("identifier", identifier.as_str())]).await?;
        if found.is_empty() {
            return Err(EngineError::NotFound(format!("prescription {number}")));
        }
        found.sort_by_key(|r| r.id.split('-').next_back().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0));
        Ok(found)
    }

    /// `POST Task/{id}/$review-prescription` (a pharmacist of the prescribing hospital):
    /// `decision` approve | reject, `reason` (required to reject). Approval adds the
    /// pharmacist's signature and makes the prescription `active`; rejection cancels it with the
    /// reason, back to the doctor.
    pub async fn review_prescription(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        task_id: &str,
        parameters: Value,
    ) -> EngineResult<Value> {
        const ACTION: &str = "rx-review";
        let p = Params::parse(&parameters, "Task/$review-prescription", &["decision", "reason"])?;
        let result = self.review_checked(ctx, keys, task_id, &p).await;
        match result {
            Ok((answer, patient, decision)) => {
                let record =
                    audit::record(ctx, ACTION, "success", format!("Task/{task_id}"), vec![patient], Some(&decision));
                self.audit.append(record).await?;
                Ok(answer)
            }
            Err(e) => Err(self.refuse(ctx, ACTION, format!("Task/{task_id}"), None, e).await),
        }
    }

    async fn review_checked(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        task_id: &str,
        p: &Params<'_>,
    ) -> EngineResult<(Value, String, String)> {
        let decision = p.text("decision").ok_or_else(|| bad("'decision' (approve or reject) is required"))?;
        if decision != "approve" && decision != "reject" {
            return Err(bad(format!("decision '{decision}' is not approve or reject")));
        }
        let reason = p.text("reason").map(str::trim).filter(|r| !r.is_empty());
        if decision == "reject" && reason.is_none() {
            return Err(bad("驳回须说明理由 / a rejection needs a 'reason' for the doctor"));
        }
        let (task_stored, mut task) = self.current_body("Task", task_id).await?;
        if task["code"]["coding"][0]["code"] != "rx-review" {
            return Err(EngineError::NotFound(format!("Task/{task_id} (a prescription review)")));
        }
        let organization = task["owner"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Organization"))
            .unwrap_or_default()
            .to_string();
        let principal = Self::caller(ctx);
        let pharmacist = principal.and_then(|c| c.practitioner.clone());
        let allowed = principal
            .is_some_and(|c| c.role == Role::Pharmacist && c.organization.as_deref() == Some(organization.as_str()));
        let Some(pharmacist) = pharmacist.filter(|_| allowed) else {
            return Err(EngineError::Forbidden(
                "处方由开方医院的药师审核 / prescriptions are reviewed by a pharmacist of the prescribing hospital"
                    .into(),
            ));
        };
        if task["status"] != "requested" {
            return Err(conflict(format!(
                "Task/{task_id} is {}: already reviewed",
                task["status"].as_str().unwrap_or("")
            )));
        }
        let number = task["input"][0]["valueIdentifier"]["value"].as_str().unwrap_or_default().to_string();
        let requests = self.prescription_requests(&number).await?;
        let patient =
            task["for"]["reference"].as_str().and_then(|r| reference_id(r, "Patient")).unwrap_or_default().to_string();
        let bodies: Vec<Value> = requests.iter().map(body).collect();
        if bodies
            .iter()
            .any(|b| b["requester"]["reference"].as_str() == Some(format!("Practitioner/{pharmacist}").as_str()))
        {
            return Err(EngineError::Forbidden("a prescriber does not review their own prescription".into()));
        }
        // The doctor's signature must still hold over what is stored.
        let content = prescription_content(&number, &bodies);
        let (_, doctor_provenance) = self.current_body("Provenance", &format!("{number}-doctor")).await?;
        let doctor = doctor_provenance["agent"][0]["who"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Practitioner"))
            .unwrap_or_default()
            .to_string();
        let doctor_signature = doctor_provenance["signature"][0]["data"]
            .as_str()
            .and_then(|d| crypto::unbase64(d).ok())
            .map(|b| crypto::base64url(&b))
            .unwrap_or_default();
        rx::sign::verify(&self.verifying_key(&doctor).await?, &content, &doctor_signature)
            .map_err(|e| conflict(format!("处方签名校验失败 / the doctor's signature does not verify: {e}")))?;
        let now = now_ms();
        let mut ops = Vec::new();
        for (stored, mut mr) in requests.iter().zip(bodies) {
            if decision == "approve" {
                mr["status"] = json!("active");
                mr.as_object_mut().map(|o| o.remove("statusReason"));
            } else {
                mr["status"] = json!("cancelled");
                mr["statusReason"] =
                    json!({"text": format!("药师驳回 / rejected by the pharmacist: {}", reason.unwrap_or(""))});
            }
            ops.push(self.build_op(
                "MedicationRequest",
                &stored.id,
                stored.version + 1,
                now,
                WriteMethod::Update,
                mr,
            )?);
        }
        let mut signature = None;
        if decision == "approve" {
            let approval = json!({"prescription": content, "doctorSignature": doctor_signature, "decision": "approve"});
            let key = self.signing_key(keys, &pharmacist).await?;
            let s = rx::sign::sign(&key, &approval);
            let ids: Vec<Value> = requests.iter().map(|r| json!({"id": r.id})).collect();
            let provenance = signature_provenance(
                &number,
                &ids,
                &pharmacist,
                "1.2.840.10065.1.12.1.5",
                "pharmacist",
                &s,
                &approval,
                now,
            );
            ops.push(self.build_op(
                "Provenance",
                &format!("{number}-pharmacist"),
                1,
                now,
                WriteMethod::Create,
                provenance,
            )?);
            signature = Some(s);
        }
        task["status"] = json!(if decision == "approve" { "completed" } else { "rejected" });
        task["output"] = json!([{"type": {"text": "reviewer"}, "valueReference": {"reference": format!("Practitioner/{pharmacist}")}}]);
        task["lastModified"] = json!(fhir::normalize::format_instant(now));
        if let Some(r) = reason {
            task["statusReason"] = json!({"text": r});
        }
        ops.push(self.build_op("Task", task_id, task_stored.version + 1, now, WriteMethod::Update, task)?);
        self.store.commit(&Ctx::system(), ops).await.map_err(|e| match e {
            StoreError::VersionConflict { .. } => conflict("the prescription changed meanwhile: reload the review"),
            other => other.into(),
        })?;
        let mut parameter = vec![
            json!({"name": "prescription", "valueIdentifier": {"system": RX_SYSTEM, "value": number}}),
            json!({"name": "status", "valueCode": if decision == "approve" { "active" } else { "cancelled" }}),
        ];
        parameter.extend(signature.map(|s| json!({"name": "signature", "valueString": s})));
        Ok((json!({"resourceType": "Parameters", "parameter": parameter}), patient, decision.to_string()))
    }

    /// `GET MedicationRequest/$verify-prescription?number=RX…`: re-creates the canonical form
    /// from the stored MedicationRequests and verifies the doctor's and (when approved) the
    /// pharmacist's signatures. Any reader of the prescription may ask.
    pub async fn verify_prescription(&self, ctx: &Ctx, number: &str) -> EngineResult<Value> {
        let requests = self.prescription_requests(number).await?;
        for r in &requests {
            self.authorize_read(ctx, "verify-prescription", r).await?;
        }
        let bodies: Vec<Value> = requests.iter().map(body).collect();
        let content = prescription_content(number, &bodies);
        let mut results = Vec::new();
        let mut doctor_signature = String::new();
        for (who, provenance_id) in
            [("doctor", format!("{number}-doctor")), ("pharmacist", format!("{number}-pharmacist"))]
        {
            let Ok((_, provenance)) = self.current_body("Provenance", &provenance_id).await else { continue };
            let signer = provenance["agent"][0]["who"]["reference"]
                .as_str()
                .and_then(|r| reference_id(r, "Practitioner"))
                .unwrap_or_default()
                .to_string();
            let signature = provenance["signature"][0]["data"]
                .as_str()
                .and_then(|d| crypto::unbase64(d).ok())
                .map(|b| crypto::base64url(&b))
                .unwrap_or_default();
            let signed = if who == "doctor" {
                content.clone()
            } else {
                json!({"prescription": content, "doctorSignature": doctor_signature, "decision": "approve"})
            };
            let verdict = rx::sign::verify(&self.verifying_key(&signer).await?, &signed, &signature);
            if who == "doctor" {
                doctor_signature = signature.clone();
            }
            results.push(json!({"name": "signature", "part": [
                {"name": "role", "valueCode": who},
                {"name": "signer", "valueReference": {"reference": format!("Practitioner/{signer}")}},
                {"name": "valid", "valueBoolean": verdict.is_ok()},
                {"name": "message", "valueString": verdict.err().unwrap_or_else(|| "the signature matches the prescription".into())},
            ]}));
        }
        let valid = !results.is_empty() && results.iter().all(|r| r["part"][2]["valueBoolean"] == true);
        let mut parameter = vec![
            json!({"name": "valid", "valueBoolean": valid}),
            json!({"name": "digest", "valueString": rx::sign::digest(&content)}),
        ];
        parameter.extend(results);
        Ok(json!({"resourceType": "Parameters", "parameter": parameter}))
    }

    /// `POST MedicationRequest/$dispense` (a pharmacy, or the hospital pharmacy's staff):
    /// `prescription` number, `pharmacy` (Organization). Only an approved prescription within
    /// its validity, once: two pharmacies racing both read it `active`, the store's version
    /// check lets one commit, the other gets a 409. Writes the MedicationDispenses and completes
    /// the MedicationRequests in one transaction.
    pub async fn dispense(&self, ctx: &Ctx, parameters: Value) -> EngineResult<Value> {
        const ACTION: &str = "rx-dispense";
        let p = Params::parse(&parameters, "MedicationRequest/$dispense", &["prescription", "pharmacy"])?;
        let number = p.text("prescription").ok_or_else(|| bad("'prescription' (the number) is required"))?.to_string();
        let result = self.dispense_checked(ctx, &p, &number).await;
        self.finish(ctx, ACTION, format!("MedicationRequest?identifier={number}"), result).await
    }

    async fn dispense_checked(&self, ctx: &Ctx, p: &Params<'_>, number: &str) -> EngineResult<(Value, String)> {
        let pharmacy = pharmacy_param(p)?;
        let principal = Self::caller(ctx);
        let allowed = principal.is_none_or(|c| {
            matches!(c.role, Role::Pharmacist | Role::System) && c.organization.as_deref().is_none_or(|o| o == pharmacy)
        });
        if !allowed {
            return Err(EngineError::Forbidden("a prescription is dispensed by the pharmacy it was sent to".into()));
        }
        let requests = self.prescription_requests(number).await?;
        let now = now_ms();
        let day = today().to_string();
        let mut ops = Vec::new();
        let mut patient = String::new();
        for (i, stored) in requests.iter().enumerate() {
            let mut mr = body(stored);
            patient = mr["subject"]["reference"]
                .as_str()
                .and_then(|r| reference_id(r, "Patient"))
                .unwrap_or_default()
                .to_string();
            match mr["status"].as_str() {
                Some("active") => {}
                Some("completed") => {
                    return Err(conflict(format!(
                        "处方 {number} 已调配 / prescription {number} was already dispensed"
                    )));
                }
                Some("on-hold") => {
                    return Err(conflict(format!(
                        "处方 {number} 尚未通过药师审核 / prescription {number} is not approved yet"
                    )));
                }
                Some(s) => {
                    return Err(conflict(format!(
                        "处方 {number} 状态为 {s}，不能调配 / prescription {number} is {s}: it cannot be dispensed"
                    )));
                }
                None => return Err(bad("stored MedicationRequest without a status")),
            }
            let end = mr["dispenseRequest"]["validityPeriod"]["end"].as_str().unwrap_or("");
            if !end.is_empty() && day.as_str() > end {
                return Err(conflict(format!(
                    "处方 {number} 已过有效期（{end}）/ prescription {number} expired on {end}"
                )));
            }
            let sent_to =
                mr["dispenseRequest"]["performer"]["reference"].as_str().and_then(|r| reference_id(r, "Organization"));
            if principal.is_some_and(|c| c.role == Role::Pharmacist) && sent_to.is_some_and(|s| s != pharmacy) {
                return Err(EngineError::Forbidden(format!("prescription {number} was sent to another pharmacy")));
            }
            let dispense = json!({
                "resourceType": "MedicationDispense", "id": format!("{number}-{}-dispense", i + 1), "status": "completed",
                "medicationCodeableConcept": mr["medicationCodeableConcept"],
                "subject": mr["subject"],
                "authorizingPrescription": [{"reference": format!("MedicationRequest/{}", stored.id)}],
                "performer": [{"actor": {"reference": format!("Organization/{pharmacy}")}}],
                "whenHandedOver": fhir::normalize::format_instant(now),
                "dosageInstruction": mr["dosageInstruction"],
            });
            ops.push(self.build_op(
                "MedicationDispense",
                &format!("{number}-{}-dispense", i + 1),
                1,
                now,
                WriteMethod::Create,
                dispense,
            )?);
            mr["status"] = json!("completed");
            ops.push(self.build_op(
                "MedicationRequest",
                &stored.id,
                stored.version + 1,
                now,
                WriteMethod::Update,
                mr,
            )?);
        }
        let home = requests.first().map(body).is_some_and(|b| delivery_of(&b).0 == "home");
        if home {
            let first = requests.first().map(body).unwrap_or_default();
            let task = json!({
                "resourceType": "Task", "id": format!("{number}-delivery"), "status": "ready", "intent": "order",
                "businessStatus": {"text": "待发货 / awaiting dispatch"},
                "code": {"coding": [{"system": REVIEW_CODE.split_once('|').map_or("", |x| x.0), "code": "rx-delivery"}], "text": "处方配送"},
                "focus": {"reference": format!("MedicationRequest/{number}-1")},
                "for": first["subject"],
                "owner": {"reference": format!("Organization/{pharmacy}")},
                "authoredOn": fhir::normalize::format_instant(now),
                "input": [{"type": {"text": "prescription"}, "valueIdentifier": {"system": RX_SYSTEM, "value": number}},
                          {"type": {"text": "address"}, "valueString": delivery_of(&first).1}],
            });
            ops.push(self.build_op("Task", &format!("{number}-delivery"), 1, now, WriteMethod::Create, task)?);
        }
        self.store.commit(&Ctx::system(), ops).await.map_err(|e| match e {
            StoreError::VersionConflict { .. } | StoreError::Duplicate { .. } => conflict(format!(
                "处方 {number} 已被其他药房调配 / prescription {number} was dispensed elsewhere first"
            )),
            other => other.into(),
        })?;
        Ok((
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "prescription", "valueIdentifier": {"system": RX_SYSTEM, "value": number}},
                {"name": "dispensed", "valueInteger": requests.len()},
            ]}),
            patient,
        ))
    }
}

/// On the MedicationRequests: how the resident gets the drugs (`method` pickup | home, and the
/// delivery `address`). Not part of the signed content.
pub const DELIVERY_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/rx-delivery";

/// The delivery method and address of a prescription line (`pickup` when none was chosen).
fn delivery_of(mr: &Value) -> (String, String) {
    let ext = mr["extension"].as_array().into_iter().flatten().find(|x| x["url"] == DELIVERY_EXTENSION);
    let part = |name: &str| {
        ext.and_then(|x| x["extension"].as_array())
            .into_iter()
            .flatten()
            .find(|p| p["url"] == name)
            .and_then(|p| p["valueString"].as_str().or_else(|| p["valueCode"].as_str()))
            .unwrap_or_default()
            .to_string()
    };
    let method = part("method");
    (if method.is_empty() { "pickup".into() } else { method }, part("address"))
}

/// The carrier's tracking states, in order.
pub const DELIVERY_STATES: &[&str] = &["dispatched", "in-transit", "delivered"];

/// `meta.tag` of the DetectedIssues the internet hospital records for supervision.
pub const SUPERVISION_TAG: (&str, &str) = ("https://hutong.dev/fhir/CodeSystem/internet-hospital", "supervision");

/// A rule violation (`mitigation` none: refused) or an overridden warning (`mitigation` the
/// doctor's reason), as a DetectedIssue for the supervision feed.
#[allow(clippy::too_many_arguments)]
fn detected_issue(
    rule: &str,
    key: &str,
    severity: &str,
    detail: &str,
    patient: &str,
    encounter: &str,
    doctor: &str,
    mitigation: Option<&str>,
    now: i64,
) -> Value {
    let instant = fhir::normalize::format_instant(now);
    let mut issue = json!({
        "resourceType": "DetectedIssue", "status": "final",
        "meta": {"tag": [{"system": SUPERVISION_TAG.0, "code": SUPERVISION_TAG.1}]},
        "code": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/rx-rule", "code": rule}], "text": key},
        "severity": severity,
        "patient": {"reference": format!("Patient/{patient}")},
        "identifiedDateTime": instant,
        "author": {"reference": format!("Practitioner/{doctor}")},
        "implicated": [{"reference": format!("Encounter/{encounter}")}],
        "detail": detail,
    });
    if let Some(reason) = mitigation {
        issue["mitigation"] = json!([{"action": {"text": format!("医生说明理由后开具 / prescribed with the doctor's reason: {reason}")},
            "date": instant, "author": {"reference": format!("Practitioner/{doctor}")}}]);
    }
    issue
}

impl Engine {
    /// `POST MedicationRequest/$route` (the resident or guardian, before dispensing):
    /// `prescription`, `pharmacy` (a hospital or a retail pharmacy on the facility registry),
    /// `delivery` pickup | home, `address` (for home delivery). Sends the prescription there;
    /// only that pharmacy can then dispense it.
    pub async fn route_prescription(&self, ctx: &Ctx, parameters: Value) -> EngineResult<Value> {
        const ACTION: &str = "rx-route";
        let p = Params::parse(
            &parameters,
            "MedicationRequest/$route",
            &["prescription", "pharmacy", "delivery", "address"],
        )?;
        let number = p.text("prescription").ok_or_else(|| bad("'prescription' (the number) is required"))?.to_string();
        let result = self.route_checked(ctx, &p, &number).await;
        self.finish(ctx, ACTION, format!("MedicationRequest?identifier={number}"), result).await
    }

    async fn route_checked(&self, ctx: &Ctx, p: &Params<'_>, number: &str) -> EngineResult<(Value, String)> {
        let pharmacy = pharmacy_param(p)?;
        let delivery = p.text("delivery").unwrap_or("pickup");
        if delivery != "pickup" && delivery != "home" {
            return Err(bad(format!("delivery '{delivery}' is not pickup or home")));
        }
        let address = p.text("address").map(str::trim).filter(|a| !a.is_empty());
        if delivery == "home" && address.is_none() {
            return Err(bad("送药上门须填写地址 / home delivery needs an 'address'"));
        }
        let requests = self.prescription_requests(number).await?;
        let patient = body(&requests[0])["subject"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Patient"))
            .unwrap_or_default()
            .to_string();
        if Self::caller(ctx)
            .is_some_and(|c| c.role != Role::System && !(c.role == Role::Resident && c.patients.contains(&patient)))
        {
            return Err(EngineError::Forbidden("the resident (or guardian) chooses where to get the drugs".into()));
        }
        let (_, org) = self.current_body("Organization", &pharmacy).await?;
        let kinds: Vec<&str> = org["type"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["coding"].as_array().into_iter().flatten())
            .filter_map(|c| c["code"].as_str())
            .collect();
        if !kinds.iter().any(|k| *k == "pharmacy" || *k == "hospital") || org["active"] == false {
            return Err(rule(format!(
                "Organization/{pharmacy} 不是可接收处方的药店或医院 / is not an active pharmacy or hospital"
            )));
        }
        let now = now_ms();
        let mut ops = Vec::new();
        for stored in &requests {
            let mut mr = body(stored);
            if !matches!(mr["status"].as_str(), Some("on-hold" | "active")) {
                let s = mr["status"].as_str().unwrap_or("").to_string();
                return Err(conflict(format!(
                    "处方 {number} 状态为 {s}，不能更改取药方式 / prescription {number} is {s}: it can no longer be sent elsewhere"
                )));
            }
            mr["dispenseRequest"]["performer"] = json!({"reference": format!("Organization/{pharmacy}")});
            let mut extensions: Vec<Value> = mr["extension"].as_array().cloned().unwrap_or_default();
            extensions.retain(|x| x["url"] != DELIVERY_EXTENSION);
            let mut parts = vec![json!({"url": "method", "valueCode": delivery})];
            parts.extend(address.map(|a| json!({"url": "address", "valueString": a})));
            extensions.push(json!({"url": DELIVERY_EXTENSION, "extension": parts}));
            mr["extension"] = json!(extensions);
            ops.push(self.build_op(
                "MedicationRequest",
                &stored.id,
                stored.version + 1,
                now,
                WriteMethod::Update,
                mr,
            )?);
        }
        self.store.commit(&Ctx::system(), ops).await.map_err(|e| match e {
            StoreError::VersionConflict { .. } => conflict("the prescription changed meanwhile: try again"),
            other => other.into(),
        })?;
        Ok((
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "prescription", "valueIdentifier": {"system": RX_SYSTEM, "value": number}},
                {"name": "pharmacy", "valueReference": {"reference": format!("Organization/{pharmacy}")}},
                {"name": "delivery", "valueCode": delivery}]}),
            patient,
        ))
    }

    /// `POST Task/{number}-delivery/$delivery` (the dispensing pharmacy or its carrier's system
    /// client): `state` dispatched | in-transit | delivered (in that order), `carrier`,
    /// `trackingNumber`. Delivered completes the Task.
    pub async fn delivery_update(&self, ctx: &Ctx, task_id: &str, parameters: Value) -> EngineResult<Value> {
        const ACTION: &str = "rx-delivery";
        let p = Params::parse(&parameters, "Task/$delivery", &["state", "carrier", "trackingNumber"])?;
        let state = p.text("state").ok_or_else(|| bad("'state' (dispatched, in-transit, delivered) is required"))?;
        let Some(position) = DELIVERY_STATES.iter().position(|s| *s == state) else {
            return Err(bad(format!("state '{state}' is not dispatched, in-transit or delivered")));
        };
        let (stored, mut task) = self.current_body("Task", task_id).await?;
        if task["code"]["coding"][0]["code"] != "rx-delivery" {
            return Err(EngineError::NotFound(format!("Task/{task_id} (a prescription delivery)")));
        }
        let pharmacy = task["owner"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Organization"))
            .unwrap_or_default()
            .to_string();
        let patient =
            task["for"]["reference"].as_str().and_then(|r| reference_id(r, "Patient")).unwrap_or_default().to_string();
        let allowed = Self::caller(ctx).is_none_or(|c| {
            matches!(c.role, Role::Pharmacist | Role::System) && c.organization.as_deref().is_none_or(|o| o == pharmacy)
        });
        let done: Vec<String> = task["output"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["valueString"].as_str().map(str::to_string))
            .collect();
        let last = done.last().and_then(|s| DELIVERY_STATES.iter().position(|x| x == s));
        let checked = if !allowed {
            Err(EngineError::Forbidden(
                "delivery states are reported by the dispensing pharmacy and its carrier".into(),
            ))
        } else if last.is_some_and(|l| position <= l) || (last.is_none() && position != 0) {
            let from = done.last().cloned().unwrap_or_else(|| "awaiting dispatch".into());
            Err(conflict(format!("配送状态不能从 {from} 变为 {state} / the delivery cannot go from {from} to {state}")))
        } else {
            Ok(())
        };
        if let Err(e) = checked {
            return Err(self.refuse(ctx, ACTION, format!("Task/{task_id}"), Some(&patient), e).await);
        }
        let now = now_ms();
        let label = match state {
            "dispatched" => "已发货 / dispatched",
            "in-transit" => "配送中 / in transit",
            _ => "已送达 / delivered",
        };
        task["businessStatus"] = json!({"text": label});
        task["status"] = json!(if state == "delivered" { "completed" } else { "in-progress" });
        task["lastModified"] = json!(fhir::normalize::format_instant(now));
        let mut output = task["output"].as_array().cloned().unwrap_or_default();
        output.push(json!({"type": {"text": fhir::normalize::format_instant(now)}, "valueString": state}));
        task["output"] = json!(output);
        if let Some(carrier) = p.text("carrier") {
            task["note"] =
                json!([{"text": format!("carrier: {carrier}; tracking: {}", p.text("trackingNumber").unwrap_or("-"))}]);
        }
        let op = self.build_op("Task", task_id, stored.version + 1, now, WriteMethod::Update, task)?;
        let record = audit::record(ctx, ACTION, "success", format!("Task/{task_id}"), vec![patient], Some(state));
        self.store.commit_audited(&Ctx::system(), vec![op], vec![record]).await.map_err(|e| match e {
            StoreError::VersionConflict { .. } => conflict("the delivery changed meanwhile: try again"),
            other => other.into(),
        })?;
        Ok(body(&self.current_body("Task", task_id).await?.0))
    }

    /// `GET MedicationRequest/$pharmacy-queue`: the approved prescriptions sent to the caller's
    /// pharmacy (a pharmacist's organization) and not yet dispensed, oldest first. A pharmacy
    /// sees only what was sent to it.
    pub async fn pharmacy_queue(&self, ctx: &Ctx) -> EngineResult<Value> {
        let Some(pharmacy) =
            Self::caller(ctx).filter(|c| c.role == Role::Pharmacist).and_then(|c| c.organization.clone())
        else {
            return Err(EngineError::Forbidden("the queue is a pharmacy's pharmacists'".into()));
        };
        let dispenser = format!("Organization/{pharmacy}");
        let mut prescriptions: Vec<Value> = Vec::new();
        for r in
            self.scan("MedicationRequest", &[("status", "active"), ("intended-dispenser", dispenser.as_str())]).await?
        {
            let b = body(&r);
            let Some(number) =
                b["groupIdentifier"]["value"].as_str().filter(|_| b["groupIdentifier"]["system"] == RX_SYSTEM)
            else {
                continue;
            };
            let drug = b["medicationCodeableConcept"]["text"].clone();
            match prescriptions.iter_mut().find(|p| p["number"] == number) {
                Some(p) => {
                    if let Some(drugs) = p["drugs"].as_array_mut() {
                        drugs.push(drug);
                    }
                }
                None => prescriptions.push(
                    json!({"number": number, "patient": b["subject"]["reference"], "authoredOn": b["authoredOn"],
                    "delivery": delivery_of(&b).0, "drugs": [drug]}),
                ),
            }
        }
        prescriptions.sort_by(|a, b| a["authoredOn"].as_str().cmp(&b["authoredOn"].as_str()));
        let record = audit::record(ctx, "rx-pharmacy-queue", "success", dispenser.clone(), Vec::new(), None);
        self.audit.append(record).await?;
        Ok(json!({"pharmacy": dispenser, "prescriptions": prescriptions}))
    }
}

/// The signed content of a prescription: what must not change after signing (no statuses).
fn prescription_content(number: &str, requests: &[Value]) -> Value {
    let first = requests.first().cloned().unwrap_or(Value::Null);
    let items: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "drug": r["medicationCodeableConcept"]["coding"][0]["code"],
                "name": r["medicationCodeableConcept"]["coding"][0]["display"],
                "dosage": r["dosageInstruction"],
                "supply": r["dispenseRequest"]["expectedSupplyDuration"],
                "validity": r["dispenseRequest"]["validityPeriod"],
            })
        })
        .collect();
    json!({
        "number": number,
        "patient": first["subject"]["reference"],
        "encounter": first["encounter"]["reference"],
        "prescriber": first["requester"]["reference"],
        "authoredOn": first["authoredOn"],
        "items": items,
        // Only the overrides: the delivery choice (another extension) may change after signing.
        "overrides": first["extension"]
            .as_array()
            .map(|x| Value::Array(x.iter().filter(|e| e["url"] == OVERRIDE_EXTENSION).cloned().collect()))
            .filter(|x| x.as_array().is_some_and(|a| !a.is_empty()))
            .unwrap_or(Value::Null),
        "note": first["note"],
    })
}

#[allow(clippy::too_many_arguments)]
fn signature_provenance(
    number: &str,
    requests: &[Value],
    signer: &str,
    signature_type: &str,
    role: &str,
    signature: &str,
    content: &Value,
    now: i64,
) -> Value {
    let instant = fhir::normalize::format_instant(now);
    json!({
        "resourceType": "Provenance", "id": format!("{number}-{role}"),
        "target": requests.iter().map(|r| json!({"reference": format!("MedicationRequest/{}", r["id"].as_str().unwrap_or_default())})).collect::<Vec<_>>(),
        "recorded": instant,
        "activity": {"text": if role == "doctor" { "处方签名 / prescription signed" } else { "药师审核通过 / approved by the pharmacist" }},
        "agent": [{"type": {"text": role}, "who": {"reference": format!("Practitioner/{signer}")}}],
        "signature": [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": signature_type}],
            "when": instant,
            "who": {"reference": format!("Practitioner/{signer}")},
            "sigFormat": "application/sm2-signature",
            "targetFormat": "application/json",
            "data": crypto::base64(&crypto::unbase64url(signature).unwrap_or_default()),
        }],
        "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/signed-digest", "valueString": rx::sign::digest(content)}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_whole_years() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(age_on("2020-12-02", day), Some(5));
        assert_eq!(age_on("2020-12-01", day), Some(6));
        assert_eq!(age_on("bad", day), None);
    }
}
