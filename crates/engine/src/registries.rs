//! The facility and practitioner registries in the engine: their write rules
//! (`registry::facility`, `registry::practitioner`) applied to every write and `$validate` of
//! Organization, OrganizationAffiliation, Practitioner and PractitionerRole (a broken rule is a
//! 422 naming the element), and `GET Practitioner/{id}/$eligibility`, the internet hospital's
//! question whether a practitioner may consult or prescribe online for an organization on a day
//! (`registry::practitioner::eligibility` over the stored Practitioner and its
//! PractitionerRoles).
//!
//! Who may ask `$eligibility`: clinical staff (an internet hospital's doctors and pharmacists
//! check a colleague before a consultation or a prescription review), operators (who administer
//! the registry), regulators (who supervise internet hospitals) and system clients (the internet
//! hospital's platform), each with a scope that lets them read Practitioners. Residents, CDC
//! officers, insurers and auditors may not. Every call is audited (no patient concerned).

use chrono::NaiveDate;
use fhir::{Issue, IssueType};
use registry::practitioner::{self, Activity};
use serde_json::{Value, json};
use store::Ctx;

use crate::crud::body_json;
use crate::{Engine, EngineError, EngineResult, RequestOptions, audit};

/// The registry's write rules for one resource, as 422 issues (prefixed with the Bundle entry's
/// location when it is not the resource type itself, as `check_body` does).
pub(crate) fn registry_issues(resource_type: &str, body: &Value, location: &str) -> Vec<Issue> {
    let problems = match resource_type {
        "Organization" => registry::facility::validate_organization(body),
        "OrganizationAffiliation" => registry::facility::validate_affiliation(body),
        "Practitioner" => practitioner::validate_practitioner(body),
        "PractitionerRole" => practitioner::validate_practitioner_role(body),
        _ => return Vec::new(),
    };
    problems
        .into_iter()
        .map(|p| {
            let message = format!("{}: {}", p.path, p.message);
            let message = if location == resource_type { message } else { format!("{location}: {message}") };
            Issue::error(IssueType::Value, message).at(p.path)
        })
        .collect()
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::bad_request(IssueType::Invalid, message)
}

/// Today in China (UTC+8), the default day of `$eligibility`.
fn today_in_china() -> NaiveDate {
    let offset = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    chrono::Utc::now().with_timezone(&offset).date_naive()
}

/// Most PractitionerRoles read for one practitioner.
const MAX_ROLES: usize = 1000;

impl Engine {
    /// `GET Practitioner/{id}/$eligibility?organization=Organization/X&activity=consult|prescribe&date=YYYY-MM-DD`:
    /// a Parameters resource with `eligible` (boolean), `date` and one `reason` per failed rule
    /// (a CodeableConcept: the rule's code in `registry::practitioner::ELIGIBILITY_RULE_SYSTEM`
    /// and a sentence).
    pub async fn practitioner_eligibility(
        &self,
        ctx: &Ctx,
        id: &str,
        params: &[(String, String)],
        opts: &RequestOptions,
    ) -> EngineResult<Value> {
        let (mut organization, mut activity, mut date) = (None, None, None);
        for (name, value) in params {
            match name.as_str() {
                "organization" => {
                    let org = value.strip_prefix("Organization/").unwrap_or(value);
                    if org.is_empty() || org.contains('/') {
                        return Err(bad(format!(
                            "organization '{value}' is not an Organization reference (Organization/{{id}})"
                        )));
                    }
                    organization = Some(org.to_string());
                }
                "activity" => {
                    activity = Some(
                        Activity::parse(value)
                            .ok_or_else(|| bad(format!("activity '{value}' is not known (consult or prescribe)")))?,
                    )
                }
                "date" => {
                    date = Some(
                        NaiveDate::parse_from_str(value, "%Y-%m-%d")
                            .map_err(|_| bad(format!("date '{value}' is not a valid date (expected YYYY-MM-DD)")))?,
                    )
                }
                other => {
                    return Err(bad(format!(
                        "Practitioner/$eligibility has no parameter '{other}' (organization, activity, date)"
                    )));
                }
            }
        }
        let organization =
            organization.ok_or_else(|| bad("the parameter organization (Organization/{id}) is required"))?;
        let activity = activity.ok_or_else(|| bad("the parameter activity (consult or prescribe) is required"))?;
        let date = date.unwrap_or_else(today_in_china);
        let entity = format!(
            "Practitioner/{id}/$eligibility?organization=Organization/{organization}&activity={}&date={date}",
            if activity == Activity::Consult { "consult" } else { "prescribe" }
        );
        self.authorize_eligibility(ctx, &entity).await?;

        let internal = Ctx::system();
        let practitioner = self.current(&internal, "Practitioner", id).await?;
        self.current(&internal, "Organization", &organization).await?;
        let query =
            [("practitioner".to_string(), format!("Practitioner/{id}")), ("_count".to_string(), MAX_ROLES.to_string())];
        let inner = RequestOptions { base_url: opts.base_url.clone(), ..RequestOptions::default() };
        let bundle = self.search(&internal, Some("PractitionerRole"), &query, &inner).await?;
        let roles: Vec<Value> =
            bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect();

        let facts = practitioner::facts_from_fhir(&practitioner, &roles);
        let answer = practitioner::eligibility(&facts, &organization, activity, date);
        if ctx.principal.is_some() {
            self.audit.append(audit::record(ctx, "eligibility", "success", entity, Vec::new(), None)).await?;
        }
        let mut parameter = vec![
            json!({"name": "eligible", "valueBoolean": answer.eligible()}),
            json!({"name": "date", "valueDate": date.to_string()}),
        ];
        for failure in &answer.failures {
            let display = practitioner::RULES.iter().find(|r| r.0 == failure.rule).map_or("", |r| r.2);
            parameter.push(json!({"name": "reason", "valueCodeableConcept": {
                "coding": [{"system": practitioner::ELIGIBILITY_RULE_SYSTEM, "code": failure.rule.code(), "display": display}],
                "text": failure.message,
            }}));
        }
        Ok(json!({"resourceType": "Parameters", "parameter": parameter}))
    }

    /// The current version of a resource (404 when unknown, 410 when deleted), read without a
    /// policy decision: registry reference data for an operation that has been authorized.
    /// Whether practitioner `id` may do `activity` online for `organization` today (the same
    /// facts and rules as `Practitioner/$eligibility`), for the internet hospital's own checks.
    pub(crate) async fn practitioner_may(
        &self,
        id: &str,
        organization: &str,
        activity: Activity,
    ) -> EngineResult<practitioner::Eligibility> {
        let internal = Ctx::system();
        let practitioner = self.current(&internal, "Practitioner", id).await?;
        let query =
            [("practitioner".to_string(), format!("Practitioner/{id}")), ("_count".to_string(), MAX_ROLES.to_string())];
        let bundle = self.search(&internal, Some("PractitionerRole"), &query, &RequestOptions::default()).await?;
        let roles: Vec<Value> =
            bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect();
        let facts = practitioner::facts_from_fhir(&practitioner, &roles);
        Ok(practitioner::eligibility(&facts, organization, activity, today_in_china()))
    }

    async fn current(&self, ctx: &Ctx, resource_type: &str, id: &str) -> EngineResult<Value> {
        match self.store.read(ctx, resource_type, id).await? {
            Some(r) if !r.deleted => Ok(body_json(&r)),
            Some(_) => Err(EngineError::Gone(format!("{resource_type}/{id}"))),
            None => Err(EngineError::NotFound(format!("{resource_type}/{id}"))),
        }
    }

    /// Clinical staff, operators, regulators and system clients whose scopes let them read
    /// Practitioners (see the module comment); a refusal is audited.
    async fn authorize_eligibility(&self, ctx: &Ctx, entity: &str) -> EngineResult<()> {
        let Some(p) = ctx.principal.as_deref() else { return Ok(()) };
        let role_may = p.role.is_clinical()
            || matches!(p.role, access::Role::Operator | access::Role::Regulator | access::Role::System);
        if role_may && p.scopes.allows("Practitioner", access::Perm::Read) {
            return Ok(());
        }
        let reason = if role_may {
            "Practitioner/$eligibility needs a scope that allows reading Practitioner".to_string()
        } else {
            format!(
                "Practitioner/$eligibility is for clinical staff, operators, regulators and system clients, not the role {}",
                p.role.code()
            )
        };
        Err(self.deny(ctx, "eligibility", entity.to_string(), reason).await)
    }
}
