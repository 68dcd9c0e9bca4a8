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
/// `OrganizationAffiliation.code` approving the `organization` as the review centre of the
/// `participatingOrganization`'s prescriptions.
pub const REVIEW_CENTRE_CODE: &str = "https://hutong.dev/fhir/CodeSystem/internet-hospital|rx-review-centre";
/// Extension on the MedicationRequests: an overridden warning (`alert` key and `reason`).
pub const OVERRIDE_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/rx-override";
/// Extension on a visit whose offline diagnosis is an uploaded proof: `document`
/// (DocumentReference), `diagnosis` (as the resident named it), `status` (`pending`,
/// `accepted`, `rejected`), `reason` (a rejection's).
pub const PROOF_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/offline-diagnosis-proof";
/// The informed consent a resident accepts to request an online visit (the text the pages show;
/// `Consent.policy.uri`).
pub const CONSENT_POLICY: &str = "https://hutong.dev/policy/internet-visit-consent/v1";
/// A visit nobody took is cancelled after this long (24 h).
pub const WAITING_TIMEOUT_MS: i64 = 24 * 3600 * 1000;
/// A consultation left open is closed after this long (48 h).
pub const CONSULTING_TIMEOUT_MS: i64 = 48 * 3600 * 1000;
/// Largest uploaded proof (decoded bytes).
const MAX_PROOF_BYTES: usize = 5 * 1024 * 1024;
/// The security-object kind of practitioners' signing keys.
const SIGNING_KEY_KIND: &str = "signing-key";

/// Checks a staff member's second factor at the moment it is presented: the current code of
/// the authenticator (TOTP) registered with their account. A doctor presents one to start each
/// consultation, so a session left open on a shared workstation cannot consult in their name.
/// The API layer installs the auth service's check ([`Engine::install_second_factor`]).
#[async_trait::async_trait]
pub trait SecondFactor: Send + Sync {
    /// Whether `code` is a current code of the account `subject` (`user/{id}`). A wrong code
    /// counts as a failed login towards the account's lockout.
    async fn verify(&self, subject: &str, code: &str) -> EngineResult<bool>;
}

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

/// A signature Provenance's signer (Practitioner id) and signature (base64url, as `rx::sign`
/// takes it); empty strings when absent.
fn signer_and_signature(provenance: &Value) -> (String, String) {
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
    (signer, signature)
}

/// The Patient id a resource's `subject` names (empty when none).
fn subject_patient(resource: &Value) -> String {
    resource["subject"]["reference"].as_str().and_then(|r| reference_id(r, "Patient")).unwrap_or_default().to_string()
}

/// A new waiting visit (no reason reference yet).
fn visit_encounter(p: &Params<'_>, patient: &str, role_id: &str, practitioner: &str, organization: &str) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    let (system, code) = VISIT_TAG.split_once('|').unwrap_or((VISIT_TAG, ""));
    let mut encounter = json!({
        "resourceType": "Encounter", "id": id, "status": "planned",
        "meta": {"tag": [{"system": system, "code": code}]},
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "互联网复诊"},
        "type": [{"text": "互联网复诊"}],
        "subject": {"reference": format!("Patient/{patient}")},
        "participant": [{"individual": {"reference": format!("PractitionerRole/{role_id}")}},
                        {"individual": {"reference": format!("Practitioner/{practitioner}")}}],
        "reasonCode": p.text("reason").map(|r| json!([{"text": r}])).unwrap_or(Value::Null),
        "serviceProvider": {"reference": format!("Organization/{organization}")},
    });
    if let Some(o) = encounter.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    encounter
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

    /// Installs the check of staff members' fresh second factor (once; later calls are
    /// ignored). Without one (an engine used as a library, its tests) starting a consultation
    /// asks for none.
    pub fn install_second_factor(&self, check: Arc<dyn SecondFactor>) {
        let _ = self.second_factor.set(check);
    }

    /// A doctor starting a consultation: their fresh second factor (`otp`), when a check is
    /// installed and the caller is a staff account.
    async fn fresh_second_factor(&self, ctx: &Ctx, otp: Option<&str>) -> EngineResult<()> {
        let (Some(check), Some(principal)) = (self.second_factor.get(), Self::caller(ctx)) else {
            return Ok(());
        };
        if !principal.subject.starts_with("user/") || principal.role == Role::Resident {
            return Ok(());
        }
        let Some(otp) = otp.filter(|o| !o.is_empty()) else {
            return Err(EngineError::Forbidden(
                "开始问诊前须再次验证身份：请输入身份验证器的当前动态码（参数 otp） / a fresh second factor is \
                 required to start a consultation: send the current code of your authenticator as 'otp'"
                    .into(),
            ));
        };
        if check.verify(&principal.subject, otp).await? {
            Ok(())
        } else {
            Err(EngineError::Forbidden(
                "动态码错误或已过期，身份验证未通过 / the authenticator code is wrong or expired: identity not \
                 confirmed"
                    .into(),
            ))
        }
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
            &["patient", "practitionerRole", "condition", "reason", "proof", "diagnosis", "consent"],
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
        if !p.flag("consent") {
            return Err(rule(
                "须阅读并同意《互联网诊疗知情同意书》（consent 为 true） / the informed consent to online care must be \
                 read and accepted ('consent' true)",
            ));
        }
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
        // Follow-up of a disease diagnosed offline only: no first visits. The diagnosis is a
        // record on the platform, or an uploaded proof the doctor reviews before the visit.
        let Some(condition_id) = p.text("condition").and_then(|r| reference_id(r, "Condition")) else {
            return self.request_with_proof(p, patient, role_id, practitioner, organization).await;
        };
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
        let encounter = visit_encounter(p, patient, role_id, practitioner, organization);
        let mut encounter = encounter;
        encounter["reasonReference"] = json!([{"reference": format!("Condition/{condition_id}")}]);
        let id = encounter["id"].as_str().unwrap_or_default().to_string();
        let now = now_ms();
        let ops = vec![
            self.build_op("Encounter", &id, 1, now, WriteMethod::Create, encounter)?,
            self.consent_op(patient, organization, &id, now)?,
        ];
        let stored = self.commit_then_read(ops, "Encounter", &id).await?;
        let answer = body(&stored);
        Ok((stored, answer))
    }

    /// The resident's informed consent to this online visit (互联网诊疗知情同意), recorded as a
    /// `Consent` (scope treatment) naming the visit, stored with it.
    fn consent_op(&self, patient: &str, organization: &str, visit: &str, now: i64) -> EngineResult<WriteOp> {
        let consent = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}],
                          "text": "互联网诊疗知情同意 / informed consent to online care"}],
            "patient": {"reference": format!("Patient/{patient}")},
            "dateTime": fhir::normalize::format_instant(now),
            "performer": [{"reference": format!("Patient/{patient}")}],
            "organization": [{"reference": format!("Organization/{organization}")}],
            "policy": [{"uri": CONSENT_POLICY}],
            "provision": {"type": "permit", "data": [{"meaning": "related", "reference": {"reference": format!("Encounter/{visit}")}}]}});
        self.new_resource_op("Consent", now, consent)
    }

    /// A follow-up whose offline diagnosis is not on the platform: the resident uploads its
    /// proof (`proof`, an image or PDF of the hospital's record) and names it (`diagnosis`, an
    /// ICD-10 coding or text). The proof is stored as `Binary` + `DocumentReference`
    /// (`docStatus` preliminary) and the visit waits, proof `pending`, for the doctor's
    /// [`review_proof`](Self::review_proof); it cannot start before.
    async fn request_with_proof(
        &self,
        p: &Params<'_>,
        patient: &str,
        role_id: &str,
        practitioner: &str,
        organization: &str,
    ) -> EngineResult<(StoredResource, Value)> {
        let first_visit = || {
            rule(
                "互联网医院仅提供复诊：请选择线下已确诊的疾病，或上传线下诊断证明（proof）并注明诊断（diagnosis） / \
                  online care is for follow-up only: name the offline diagnosis ('condition'), or upload its proof \
                  ('proof') and name it ('diagnosis')",
            )
        };
        let proof =
            p.all.iter().find(|(n, _)| *n == "proof").map(|(_, v)| &v["valueAttachment"]).ok_or_else(first_visit)?;
        let diagnosis = p.all.iter().find(|(n, _)| *n == "diagnosis").map(|(_, v)| *v).ok_or_else(first_visit)?;
        let diagnosis = match (&diagnosis["valueCoding"], diagnosis["valueString"].as_str()) {
            (Value::Object(c), _) => {
                let code = c.get("code").and_then(Value::as_str).unwrap_or("");
                if c.get("system").and_then(Value::as_str) != Some("http://hl7.org/fhir/sid/icd-10")
                    || !crate::quality::is_icd10(code)
                {
                    return Err(bad(format!(
                        "'diagnosis' coding '{code}' is not an ICD-10 code (system http://hl7.org/fhir/sid/icd-10, e.g. I10)"
                    )));
                }
                json!({"coding": [Value::Object(c.clone())]})
            }
            (_, Some(text)) if !text.trim().is_empty() && text.chars().count() <= 200 => json!({"text": text.trim()}),
            _ => return Err(bad("'diagnosis' is an ICD-10 valueCoding or a valueString of at most 200 characters")),
        };
        let content_type = proof["contentType"].as_str().unwrap_or("");
        let data = proof["data"].as_str().and_then(|d| crypto::unbase64(d).ok()).filter(|d| !d.is_empty());
        let Some(data) = data else {
            return Err(bad("'proof' is a valueAttachment with contentType and base64 data"));
        };
        let magic: &[u8] = match content_type {
            "image/jpeg" => b"\xFF\xD8\xFF",
            "image/png" => b"\x89PNG",
            "application/pdf" => b"%PDF",
            other => {
                return Err(bad(format!(
                    "proof contentType '{other}' is not accepted: image/jpeg, image/png or application/pdf"
                )));
            }
        };
        if data.len() > MAX_PROOF_BYTES {
            return Err(EngineError::TooCostly(format!(
                "the proof is {} bytes; at most {MAX_PROOF_BYTES} (5 MB)",
                data.len()
            )));
        }
        if !data.starts_with(magic) {
            return Err(bad(format!("the proof's content is not {content_type}")));
        }
        let now = now_ms();
        let (binary_id, document_id) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
        let title = proof["title"].as_str().unwrap_or("线下诊断证明");
        let binary = json!({"resourceType": "Binary", "id": binary_id, "contentType": content_type,
            "securityContext": {"reference": format!("Patient/{patient}")}, "data": crypto::base64(&data)});
        let document = json!({"resourceType": "DocumentReference", "id": document_id, "status": "current",
            "docStatus": "preliminary",
            "type": {"text": "线下诊断证明 / proof of an offline diagnosis"},
            "subject": {"reference": format!("Patient/{patient}")},
            "author": [{"reference": format!("Patient/{patient}")}],
            "date": fhir::normalize::format_instant(now),
            "description": title,
            "content": [{"attachment": {"contentType": content_type, "url": format!("Binary/{binary_id}"),
                "size": data.len(), "title": title}}]});
        let mut encounter = visit_encounter(p, patient, role_id, practitioner, organization);
        encounter["extension"] = json!([{"url": PROOF_EXTENSION, "extension": [
            {"url": "document", "valueReference": {"reference": format!("DocumentReference/{document_id}")}},
            {"url": "diagnosis", "valueCodeableConcept": diagnosis},
            {"url": "status", "valueCode": "pending"}]}]);
        let id = encounter["id"].as_str().unwrap_or_default().to_string();
        let ops = vec![
            self.consent_op(patient, organization, &id, now)?,
            self.build_op("Binary", &binary_id, 1, now, WriteMethod::Create, binary)?,
            self.build_op("DocumentReference", &document_id, 1, now, WriteMethod::Create, document)?,
            self.build_op("Encounter", &id, 1, now, WriteMethod::Create, encounter)?,
        ];
        let stored = self.commit_then_read(ops, "Encounter", &id).await?;
        let answer = body(&stored);
        Ok((stored, answer))
    }

    /// `POST Encounter/{id}/$review-proof` (the treating doctor, before the visit starts):
    /// `decision` `accept` or `reject`, `reason` (required to reject), `diagnosis` (an ICD-10
    /// valueCoding: required to accept when the resident named the diagnosis in text only,
    /// otherwise a correction). Accepting records the diagnosis as a confirmed, active
    /// `Condition` with the proof as its evidence (recorded by the doctor, no encounter: it was
    /// made offline), makes it the visit's reason and the document final; rejecting cancels the
    /// visit with the reason, which the resident sees.
    pub async fn review_proof(&self, ctx: &Ctx, id: &str, parameters: Value) -> EngineResult<Value> {
        const ACTION: &str = "internet-proof-review";
        let p = Params::parse(&parameters, "Encounter/$review-proof", &["decision", "reason", "diagnosis"])?;
        let result = self.review_proof_checked(ctx, id, &p).await;
        self.finish(ctx, ACTION, format!("Encounter/{id}"), result).await
    }

    async fn review_proof_checked(&self, ctx: &Ctx, id: &str, p: &Params<'_>) -> EngineResult<(Value, String)> {
        let decision = p.text("decision").ok_or_else(|| bad("'decision' (accept or reject) is required"))?;
        if decision != "accept" && decision != "reject" {
            return Err(bad(format!("decision '{decision}' is not accept or reject")));
        }
        let reason = p.text("reason").map(str::trim).filter(|r| !r.is_empty());
        let (stored, mut encounter, doctor) = self.visit(id).await?;
        let patient = subject_patient(&encounter);
        if !Self::caller(ctx).is_none_or(|c| c.role == Role::System || c.practitioner.as_deref() == Some(&*doctor)) {
            return Err(EngineError::Forbidden(
                "线下诊断证明由接诊医生审核 / the treating doctor reviews the proof".into(),
            ));
        }
        let Some(proof) =
            encounter["extension"].as_array().and_then(|x| x.iter().find(|e| e["url"] == PROOF_EXTENSION)).cloned()
        else {
            return Err(rule(format!("Encounter/{id} has no uploaded proof to review")));
        };
        let field = |proof: &Value, name: &str| -> Value {
            proof["extension"].as_array().and_then(|x| x.iter().find(|e| e["url"] == name)).cloned().unwrap_or_default()
        };
        let status = field(&proof, "status")["valueCode"].as_str().unwrap_or("").to_string();
        if status != "pending" || encounter["status"] != "planned" {
            return Err(conflict(format!("证明已审核（{status}） / the proof was already reviewed ({status})")));
        }
        let document = field(&proof, "document")["valueReference"]["reference"].as_str().unwrap_or("").to_string();
        let mut diagnosis = field(&proof, "diagnosis")["valueCodeableConcept"].clone();
        if let Some(coding) = p.all.iter().find(|(n, _)| *n == "diagnosis").map(|(_, v)| &v["valueCoding"]) {
            let code = coding["code"].as_str().unwrap_or("");
            if coding["system"] != "http://hl7.org/fhir/sid/icd-10" || !crate::quality::is_icd10(code) {
                return Err(bad(format!("'diagnosis' coding '{code}' is not an ICD-10 code (e.g. I10)")));
            }
            diagnosis = json!({"coding": [coding], "text": diagnosis["text"]});
            if let Some(o) = diagnosis.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
        }
        let now = now_ms();
        let mut ops = Vec::new();
        let set = |proof: &mut Value, name: &str, value: Value| {
            if let Some(x) = proof["extension"].as_array_mut() {
                x.retain(|e| e["url"] != name);
                x.push(value);
            }
        };
        if decision == "accept" {
            if diagnosis["coding"][0]["code"].as_str().is_none() {
                return Err(rule(
                    "确认诊断须给出 ICD-10 编码（diagnosis） / accepting needs the diagnosis as an ICD-10 coding ('diagnosis')",
                ));
            }
            let condition_id = uuid::Uuid::new_v4().to_string();
            let condition = json!({"resourceType": "Condition", "id": condition_id,
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "code": diagnosis, "subject": {"reference": format!("Patient/{patient}")},
                "recordedDate": fhir::normalize::format_instant(now),
                "recorder": {"reference": format!("Practitioner/{doctor}")},
                "evidence": [{"detail": [{"reference": document}]}],
                "note": [{"text": "线下诊断证明经接诊医生审核 / proof of the offline diagnosis reviewed by the treating doctor"}]});
            ops.push(self.build_op("Condition", &condition_id, 1, now, WriteMethod::Create, condition)?);
            encounter["reasonReference"] = json!([{"reference": format!("Condition/{condition_id}")}]);
            if let Some(document_id) = reference_id(&document, "DocumentReference") {
                let (doc_stored, mut doc) = self.current_body("DocumentReference", document_id).await?;
                doc["docStatus"] = json!("final");
                ops.push(self.update_op(&doc_stored, now, doc)?);
            }
        } else {
            let Some(reason) = reason else {
                return Err(bad("驳回须说明理由 / a rejection needs a 'reason' for the resident"));
            };
            encounter["status"] = json!("cancelled");
            encounter["hospitalization"]["dischargeDisposition"] =
                json!({"text": format!("线下诊断证明未通过审核 / the proof was not accepted: {reason}")});
        }
        let proof = encounter["extension"]
            .as_array_mut()
            .and_then(|x| x.iter_mut().find(|e| e["url"] == PROOF_EXTENSION))
            .expect("found above");
        set(
            proof,
            "status",
            json!({"url": "status", "valueCode": if decision == "accept" { "accepted" } else { "rejected" }}),
        );
        if let Some(reason) = reason {
            set(proof, "reason", json!({"url": "reason", "valueString": reason}));
        }
        ops.push(self.update_op(&stored, now, encounter)?);
        self.store.commit(&Ctx::system(), ops).await.map_err(|e| match e {
            StoreError::VersionConflict { .. } => conflict("the visit changed meanwhile: reload it"),
            other => other.into(),
        })?;
        Ok((body(&self.current_body("Encounter", id).await?.0), patient))
    }

    /// Commits `ops` and reads back one of the resources written.
    async fn commit_then_read(&self, ops: Vec<WriteOp>, ty: &str, id: &str) -> EngineResult<StoredResource> {
        self.store.commit(&Ctx::system(), ops).await?;
        self.store.read(&Ctx::system(), ty, id).await?.ok_or_else(|| EngineError::NotFound(format!("{ty}/{id}")))
    }

    /// An internet-hospital Task with this `code` (404 naming `what` otherwise) and the
    /// Organization id that owns it.
    pub(crate) async fn owned_task(
        &self,
        task_id: &str,
        code: &str,
        what: &str,
    ) -> EngineResult<(StoredResource, Value, String)> {
        let (stored, task) = self.current_body("Task", task_id).await?;
        if task["code"]["coding"][0]["code"] != code {
            return Err(EngineError::NotFound(format!("Task/{task_id} ({what})")));
        }
        let owner = task["owner"]["reference"]
            .as_str()
            .and_then(|r| reference_id(r, "Organization"))
            .unwrap_or_default()
            .to_string();
        Ok((stored, task, owner))
    }

    /// The next version of a stored resource, with `body`.
    fn update_op(&self, stored: &StoredResource, now: i64, body: Value) -> EngineResult<WriteOp> {
        self.build_op(&stored.resource_type, &stored.id, stored.version + 1, now, WriteMethod::Update, body)
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
        let p = Params::parse(&parameters, "Encounter/$visit-status", &["status", "reason", "otp", "note"])?;
        let wanted =
            p.text("status").ok_or_else(|| bad("'status' (in-progress, finished, referred, cancelled) is required"))?;
        let (stored, mut encounter, doctor) = self.visit(id).await?;
        let patient = subject_patient(&encounter);
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
        let proof_pending = encounter["extension"].as_array().into_iter().flatten().any(|e| {
            e["url"] == PROOF_EXTENSION
                && e["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["url"] == "status" && x["valueCode"] == "pending")
        });
        let checked = match checked {
            Ok(()) if wanted == "in-progress" && proof_pending => Err(rule(
                "须先审核患者上传的线下诊断证明（$review-proof） / review the uploaded proof of the offline diagnosis first ($review-proof)",
            )),
            Ok(()) if wanted == "in-progress" => self.fresh_second_factor(ctx, p.text("otp")).await,
            Ok(())
                if (wanted == "finished" || wanted == "referred")
                    && p.text("note").is_none_or(|n| n.trim().is_empty() || n.chars().count() > 20_000) =>
            {
                Err(rule(
                    "结束问诊须填写诊疗记录（note，不超过 20000 字） / closing a visit needs its record ('note', at most \
                     20,000 characters)",
                ))
            }
            other => other,
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
        let mut ops = Vec::new();
        if let Some(note) = p.text("note").filter(|_| wanted == "finished" || wanted == "referred") {
            ops.push(self.visit_record_op(&encounter, id, &doctor, note, wanted == "referred", now)?);
        }
        ops.push(self.update_op(&stored, now, encounter)?);
        let record = audit::record(ctx, ACTION, "success", format!("Encounter/{id}"), vec![patient], Some(wanted));
        self.store.commit_audited(&Ctx::system(), ops, vec![record]).await.map_err(|e| match e {
            StoreError::VersionConflict { .. } => conflict("the visit changed meanwhile: reload it"),
            other => other.into(),
        })?;
        Ok(body(&self.current_body("Encounter", id).await?.0))
    }

    /// The visit's record (互联网复诊记录) as an EMR entry of the hospital: a final
    /// `Composition` (LOINC 11506-3 progress note) for the patient and the visit, authored by the
    /// doctor, custodian the hospital, so it is part of the hospital's records and the shared
    /// health record like any note from an in-person visit.
    fn visit_record_op(
        &self,
        encounter: &Value,
        id: &str,
        doctor: &str,
        note: &str,
        referred: bool,
        now: i64,
    ) -> EngineResult<WriteOp> {
        let escaped = note.trim().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let div = format!(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>",
            escaped.lines().map(|l| format!("<p>{l}</p>")).collect::<String>()
        );
        let title = if referred { "互联网复诊记录（转线下就诊）" } else { "互联网复诊记录" };
        let composition = json!({"resourceType": "Composition", "status": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}], "text": "互联网复诊记录"},
            "subject": encounter["subject"], "encounter": {"reference": format!("Encounter/{id}")},
            "date": fhir::normalize::format_instant(now),
            "author": [{"reference": format!("Practitioner/{doctor}")}],
            "title": title, "custodian": encounter["serviceProvider"],
            "section": [{"title": "诊疗记录", "text": {"status": "generated", "div": div}}]});
        self.new_resource_op("Composition", now, composition)
    }

    /// Runs the visit timeouts until the process ends: a sweep every minute.
    pub async fn visit_timeouts_run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = self.expire_visits(now_ms()).await {
                tracing::warn!(error = %e, "internet visits: the timeout sweep failed; retrying");
            }
        }
    }

    /// The visits' timeouts at `now` (Unix ms): a visit still waiting [`WAITING_TIMEOUT_MS`]
    /// after its request (or after its proof was accepted) is cancelled, the doctor not having
    /// taken it; a consultation still in progress [`CONSULTING_TIMEOUT_MS`] after it started is
    /// closed (`finished`, without a visit record: the doctor never wrote one). Each change is
    /// audited as the system's and reaches the supervision feed. Returns how many changed.
    pub async fn expire_visits(&self, now: i64) -> EngineResult<usize> {
        let tag = VISIT_TAG;
        let waiting_cutoff = format!("lt{}", fhir::normalize::format_instant(now - WAITING_TIMEOUT_MS));
        let consulting_cutoff = format!("lt{}", fhir::normalize::format_instant(now - CONSULTING_TIMEOUT_MS));
        let waiting =
            self.scan("Encounter", &[("_tag", tag), ("status", "planned"), ("_lastUpdated", &waiting_cutoff)]).await?;
        let consulting =
            self.scan("Encounter", &[("_tag", tag), ("status", "in-progress"), ("date", &consulting_cutoff)]).await?;
        let mut changed = 0;
        for (stored, closing) in waiting.iter().map(|s| (s, false)).chain(consulting.iter().map(|s| (s, true))) {
            let mut encounter = body(stored);
            let patient = subject_patient(&encounter);
            let instant = fhir::normalize::format_instant(now);
            let (status, why) = if closing {
                ("finished", "问诊超过 48 小时未结束，系统自动关闭 / closed by the platform: in progress for 48 hours")
            } else {
                (
                    "cancelled",
                    "医生 24 小时内未接诊，系统自动取消 / cancelled by the platform: no doctor took it within 24 hours",
                )
            };
            encounter["status"] = json!(status);
            encounter["period"]["end"] = json!(instant);
            encounter["hospitalization"]["dischargeDisposition"] = json!({"text": why});
            let op = self.update_op(stored, now, encounter)?;
            let record = audit::record(
                &Ctx::system(),
                "internet-visit-timeout",
                "success",
                format!("Encounter/{}", stored.id),
                vec![patient],
                Some(status),
            );
            match self.store.commit_audited(&Ctx::system(), vec![op], vec![record]).await {
                Ok(()) => changed += 1,
                // Changed meanwhile (the doctor started or closed it): the next sweep decides.
                Err(StoreError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(changed)
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
        let patient = subject_patient(&encounter);
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
        let (task_stored, mut task, organization) =
            self.owned_task(task_id, "rx-review", "a prescription review").await?;
        let principal = Self::caller(ctx);
        let pharmacist = principal.and_then(|c| c.practitioner.clone());
        let reviewer = principal.filter(|c| c.role == Role::Pharmacist).and_then(|c| c.organization.as_deref());
        let allowed = match reviewer {
            Some(org) => self.reviewed_hospitals(org).await?.contains(&organization),
            None => false,
        };
        let Some(pharmacist) = pharmacist.filter(|_| allowed) else {
            return Err(EngineError::Forbidden(
                "处方由开方医院或其认可的审方中心的药师审核 / prescriptions are reviewed by a pharmacist of the \
                 prescribing hospital or of a review centre it has approved"
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
        let (doctor, doctor_signature) = signer_and_signature(&doctor_provenance);
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
            ops.push(self.update_op(stored, now, mr)?);
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
        ops.push(self.update_op(&task_stored, now, task)?);
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
            let (signer, signature) = signer_and_signature(&provenance);
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
        let p = Params::parse(&parameters, "MedicationRequest/$dispense", &["prescription", "pharmacy", "sale"])?;
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
        let sale = match p.all.iter().find(|(n, _)| *n == "sale") {
            Some((_, sale)) => Some(retail_sale(sale, number)?),
            None => None,
        };
        let requests = self.prescription_requests(number).await?;
        let now = now_ms();
        let day = today().to_string();
        let mut ops = Vec::new();
        let mut patient = String::new();
        for (i, stored) in requests.iter().enumerate() {
            let mut mr = body(stored);
            patient = subject_patient(&mr);
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
            let mut dispense = dispense;
            if let Some(sale) = &sale {
                dispense["extension"] = json!([sale]);
            }
            ops.push(self.build_op(
                "MedicationDispense",
                &format!("{number}-{}-dispense", i + 1),
                1,
                now,
                WriteMethod::Create,
                dispense,
            )?);
            mr["status"] = json!("completed");
            ops.push(self.update_op(stored, now, mr)?);
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

/// The `sale` parameter of `$dispense` (a retail pharmacy's sale: parts `receipt`, `amount` in
/// CNY, `paidAt`) as the [`RETAIL_SALE_EXTENSION`] on each MedicationDispense, naming the
/// prescription, so the sale links back to it.
fn retail_sale(sale: &Value, number: &str) -> EngineResult<Value> {
    let receipt = part(sale, "receipt").and_then(value_text).map(str::trim).filter(|r| !r.is_empty() && r.len() <= 64);
    let Some(receipt) = receipt else {
        return Err(bad("'sale' needs 'receipt' (the sales receipt number, at most 64 characters)"));
    };
    let amount = part(sale, "amount").and_then(value_number).filter(|a| a.is_finite() && *a >= 0.0 && *a < 1e7);
    let Some(amount) = amount else {
        return Err(bad("'sale' needs 'amount' (the price paid in CNY, ≥ 0)"));
    };
    let mut fields = vec![
        json!({"url": "prescription", "valueIdentifier": {"system": RX_SYSTEM, "value": number}}),
        json!({"url": "receipt", "valueString": receipt}),
        json!({"url": "amount", "valueMoney": {"value": (amount * 100.0).round() / 100.0, "currency": "CNY"}}),
    ];
    if let Some(paid) = part(sale, "paidAt").and_then(|p| p["valueDateTime"].as_str()) {
        if paid.len() < 20 || fhir::normalize::date_range(paid).is_none() {
            return Err(bad(format!("'sale' paidAt '{paid}' is not a dateTime with a time and time zone")));
        }
        fields.push(json!({"url": "paidAt", "valueDateTime": paid}));
    }
    Ok(json!({"url": RETAIL_SALE_EXTENSION, "extension": fields}))
}

/// On a MedicationDispense: the retail sale (`prescription`, `receipt`, `amount`, `paidAt`).
pub const RETAIL_SALE_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/rx-retail-sale";

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
            ops.push(self.update_op(stored, now, mr)?);
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
        let (stored, mut task, pharmacy) = self.owned_task(task_id, "rx-delivery", "a prescription delivery").await?;
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
        let op = self.update_op(&stored, now, task)?;
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
    /// The hospitals whose prescriptions pharmacists of `organization` review: its own, and
    /// those that approved it as their review centre (审方中心) by an active
    /// `OrganizationAffiliation` (`organization` the centre, `participatingOrganization` the
    /// hospital, `code` [`REVIEW_CENTRE_CODE`], `period` covering today).
    pub async fn reviewed_hospitals(&self, organization: &str) -> EngineResult<Vec<String>> {
        let mut hospitals = vec![organization.to_string()];
        let centre = format!("Organization/{organization}");
        let today = today().format("%Y-%m-%d").to_string();
        let role = REVIEW_CENTRE_CODE;
        for a in self
            .scan(
                "OrganizationAffiliation",
                &[("primary-organization", centre.as_str()), ("role", role), ("active", "true")],
            )
            .await?
        {
            let a = body(&a);
            let within = a["period"]["start"].as_str().is_none_or(|s| s.get(..10).unwrap_or(s) <= today.as_str())
                && a["period"]["end"].as_str().is_none_or(|e| e.get(..10).unwrap_or(e) >= today.as_str());
            let hospital =
                a["participatingOrganization"]["reference"].as_str().and_then(|r| reference_id(r, "Organization"));
            if let Some(h) = hospital.filter(|_| within)
                && !hospitals.iter().any(|x| x == h)
            {
                hospitals.push(h.to_string());
            }
        }
        Ok(hospitals)
    }

    /// `GET Task/$review-queue?_count=N&_offset=M` (a pharmacist): the pending prescription
    /// reviews of the hospitals the pharmacist's organization reviews for, oldest first, as a
    /// searchset Bundle of review Tasks; audited with the patients shown.
    pub async fn review_queue(&self, ctx: &Ctx, params: &[(String, String)]) -> EngineResult<Value> {
        const ACTION: &str = "rx-review-queue";
        let Some(organization) =
            Self::caller(ctx).filter(|c| c.role == Role::Pharmacist).and_then(|c| c.organization.clone())
        else {
            let e = EngineError::Forbidden("the review queue is a pharmacist's".into());
            return Err(self.refuse(ctx, ACTION, "Task/$review-queue".into(), None, e).await);
        };
        let mut query: Vec<(String, String)> = vec![
            ("code".into(), REVIEW_CODE.into()),
            ("status".into(), "requested".into()),
            ("_total".into(), "none".into()),
        ];
        for (k, v) in params {
            match k.as_str() {
                "_count" | "_offset" => query.push((k.clone(), v.clone())),
                other => return Err(bad(format!("Task/$review-queue has no parameter '{other}' (_count, _offset)"))),
            }
        }
        let hospitals = self.reviewed_hospitals(&organization).await?;
        let owners: Vec<String> = hospitals.iter().map(|h| format!("Organization/{h}")).collect();
        query.push(("owner".into(), owners.join(",")));
        let mut page = self.search(&Ctx::system(), Some("Task"), &query, &crate::RequestOptions::default()).await?;
        let patients: Vec<String> = page["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["for"]["reference"].as_str().and_then(|r| reference_id(r, "Patient")))
            .map(str::to_string)
            .collect();
        // The links name the system search; the queue pages with its own parameters.
        if let Some(o) = page.as_object_mut() {
            o.remove("link");
        }
        let record =
            audit::record(ctx, ACTION, "success", "Task/$review-queue".into(), patients, Some(&owners.join(",")));
        self.audit.append(record).await?;
        Ok(page)
    }

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
