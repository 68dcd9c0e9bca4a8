//! The internet hospital's worklists for the staff pages and the portal: a doctor's visit
//! queue, one visit for its treating doctor, the pharmacist's review queue, a pharmacy's
//! deliveries and the doctors a resident may choose. Clinical staff search one named patient
//! at a time (`access::policy::search_constraint`), so lists across patients are operations
//! that decide who may see them here, like `$pharmacy-queue`, and are audited.

use access::Role;
use registry::practitioner::Activity;
use serde_json::Value;
use store::Ctx;

use super::{REVIEW_CODE, VISIT_TAG, body, reference_id};
use crate::{Engine, EngineError, EngineResult, audit};

/// A doctor who may see patients online, as offered to residents.
#[derive(Debug, Clone, PartialEq)]
pub struct InternetDoctor {
    /// The PractitionerRole a follow-up request names.
    pub role: String,
    pub practitioner: String,
    pub name: String,
    pub organization: String,
    pub organization_name: String,
    pub specialty: String,
}

fn name_of(resource: &Value) -> String {
    let name = &resource["name"][0];
    name["text"].as_str().map(str::to_string).unwrap_or_else(|| {
        let given: Vec<&str> = name["given"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        format!("{}{}", name["family"].as_str().unwrap_or(""), given.join(""))
    })
}

impl Engine {
    /// The internet visits of the calling doctor that are waiting (`planned`) or in progress,
    /// oldest first.
    pub async fn doctor_visit_queue(&self, ctx: &Ctx) -> EngineResult<Vec<Value>> {
        let Some(practitioner) = Self::caller(ctx).and_then(|c| c.practitioner.clone()) else {
            return Err(EngineError::Forbidden("the visit queue is a doctor's own".into()));
        };
        let reference = format!("Practitioner/{practitioner}");
        let mut visits: Vec<Value> = self
            .scan("Encounter", &[("participant", reference.as_str()), ("status", "planned,in-progress")])
            .await?
            .iter()
            .map(body)
            .filter(|e| {
                e["meta"]["tag"].as_array().into_iter().flatten().any(|t| {
                    format!("{}|{}", t["system"].as_str().unwrap_or(""), t["code"].as_str().unwrap_or("")) == VISIT_TAG
                })
            })
            .collect();
        visits.sort_by(|a, b| a["meta"]["lastUpdated"].as_str().cmp(&b["meta"]["lastUpdated"].as_str()));
        let patients: Vec<String> = visits
            .iter()
            .filter_map(|v| v["subject"]["reference"].as_str().and_then(|r| reference_id(r, "Patient")))
            .map(str::to_string)
            .collect();
        self.audit.append(audit::record(ctx, "internet-visit-queue", "success", reference, patients, None)).await?;
        Ok(visits)
    }

    /// One internet visit, for its treating doctor or the patient (and guardians); anyone else
    /// is refused (and the refusal audited), even a colleague with a care relationship.
    pub async fn internet_visit(&self, ctx: &Ctx, id: &str) -> EngineResult<Value> {
        const ACTION: &str = "internet-visit-read";
        let (_, encounter, doctor) = self.visit(id).await?;
        let patient =
            encounter["subject"]["reference"].as_str().and_then(|r| reference_id(r, "Patient")).unwrap_or_default();
        let allowed = Self::caller(ctx).is_none_or(|c| {
            c.role == Role::System
                || c.practitioner.as_deref() == Some(doctor.as_str())
                || (c.role == Role::Resident && c.patients.iter().any(|p| p == patient))
        });
        let entity = format!("Encounter/{id}");
        if !allowed {
            let e = EngineError::Forbidden("an internet visit is opened by its treating doctor or the patient".into());
            return Err(self.refuse(ctx, ACTION, entity, Some(patient), e).await);
        }
        self.audit.append(audit::record(ctx, ACTION, "success", entity, vec![patient.to_string()], None)).await?;
        Ok(encounter)
    }

    /// One review: the Task and the prescription's MedicationRequests, for a pharmacist of the
    /// prescribing hospital or of a review centre it approved.
    pub async fn review_detail(&self, ctx: &Ctx, task_id: &str) -> EngineResult<(Value, Vec<Value>)> {
        const ACTION: &str = "rx-review-read";
        let (_, task, owner) = self.owned_task(task_id, "rx-review", "a prescription review").await?;
        let owner = owner.as_str();
        let patient = task["for"]["reference"].as_str().and_then(|r| reference_id(r, "Patient")).unwrap_or("");
        let entity = format!("Task/{task_id}");
        let allowed = match Self::caller(ctx) {
            None => true,
            Some(c) if c.role == Role::Pharmacist => match c.organization.as_deref() {
                Some(org) => self.reviewed_hospitals(org).await?.iter().any(|h| h == owner),
                None => false,
            },
            Some(_) => false,
        };
        if !allowed {
            let e = EngineError::Forbidden(
                "a review is opened by a pharmacist of the prescribing hospital or of its review centre".into(),
            );
            return Err(self.refuse(ctx, ACTION, entity, Some(patient), e).await);
        }
        let number = task["input"][0]["valueIdentifier"]["value"].as_str().unwrap_or_default();
        let requests: Vec<Value> = self.prescription_requests(number).await?.iter().map(body).collect();
        self.audit.append(audit::record(ctx, ACTION, "success", entity, vec![patient.to_string()], None)).await?;
        Ok((task, requests))
    }

    /// The home deliveries of the calling pharmacy not yet delivered, oldest first.
    pub async fn delivery_queue(&self, ctx: &Ctx) -> EngineResult<Vec<Value>> {
        let Some(pharmacy) =
            Self::caller(ctx).filter(|c| c.role == Role::Pharmacist).and_then(|c| c.organization.clone())
        else {
            return Err(EngineError::Forbidden("deliveries are a pharmacy's pharmacists'".into()));
        };
        let owner = format!("Organization/{pharmacy}");
        let (system, _) = REVIEW_CODE.split_once('|').unwrap_or_default();
        let code = format!("{system}|rx-delivery");
        let mut tasks: Vec<Value> = self
            .scan("Task", &[("code", code.as_str()), ("owner", owner.as_str()), ("status", "ready,in-progress")])
            .await?
            .iter()
            .map(body)
            .collect();
        tasks.sort_by(|a, b| a["authoredOn"].as_str().cmp(&b["authoredOn"].as_str()));
        self.audit.append(audit::record(ctx, "rx-delivery-queue", "success", owner, Vec::new(), None)).await?;
        Ok(tasks)
    }

    /// The doctors a resident may choose for a follow-up visit today: active PractitionerRoles
    /// registered for internet practice whose practitioner passes the consult rules
    /// (`Practitioner/$eligibility`). Registry reference data: any signed-in caller.
    pub async fn internet_doctors(&self, ctx: &Ctx) -> EngineResult<Vec<InternetDoctor>> {
        if ctx.principal.as_deref().is_some_and(|p| p.role == Role::Auditor) {
            return Err(EngineError::Forbidden("auditors read the audit log, not the registries".into()));
        }
        let code = format!("{}|internet-practice", registry::practitioner::REGISTRATION_SYSTEM);
        let mut doctors = Vec::new();
        for stored in self.scan("PractitionerRole", &[("role", code.as_str()), ("active", "true")]).await? {
            let role = body(&stored);
            let practitioner = role["practitioner"]["reference"].as_str().and_then(|r| reference_id(r, "Practitioner"));
            let organization = role["organization"]["reference"].as_str().and_then(|r| reference_id(r, "Organization"));
            let (Some(practitioner), Some(organization)) = (practitioner, organization) else { continue };
            if !self.practitioner_may(practitioner, organization, Activity::Consult).await?.eligible() {
                continue;
            }
            let name = self.current_body("Practitioner", practitioner).await.map(|(_, p)| name_of(&p));
            let org_name = self.current_body("Organization", organization).await.map(|(_, o)| o["name"].clone());
            doctors.push(InternetDoctor {
                role: stored.id.clone(),
                practitioner: practitioner.to_string(),
                name: name.unwrap_or_default(),
                organization: organization.to_string(),
                organization_name: org_name.ok().and_then(|n| n.as_str().map(str::to_string)).unwrap_or_default(),
                specialty: role["specialty"][0]["text"].as_str().unwrap_or_default().to_string(),
            });
        }
        doctors.sort_by(|a, b| (&a.organization, &a.name).cmp(&(&b.organization, &b.name)));
        Ok(doctors)
    }
}

/// The review Task's prescription number.
pub fn task_prescription(task: &Value) -> Option<&str> {
    task["input"].as_array()?.iter().find_map(|i| i["valueIdentifier"]["value"].as_str())
}

/// A prescription's overridden warnings: (alert key, reason).
pub fn overrides_of(request: &Value) -> Vec<(String, String)> {
    request["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["url"] == super::OVERRIDE_EXTENSION)
        .map(|x| {
            let part = |n: &str| {
                x["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["url"] == n)
                    .and_then(|p| p["valueString"].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            (part("alert"), part("reason"))
        })
        .collect()
}
