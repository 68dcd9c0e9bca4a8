//! The policy decision point. Every access to FHIR data is decided here, on: the token's scopes,
//! the caller's role, organization and region level (分级授权), the care relationship between
//! the caller's organization and the patient, the resident's consents, the data's sensitivity
//! class, the purpose of use and break-glass. The engine gathers [`Facts`] and
//! [`Relationship`]s and calls [`decide`] for reads and writes, and [`search_constraint`] to turn
//! a search into one that can only match what the caller may see (so totals, paging, `_include`
//! and `_revinclude` leak nothing).
//!
//! Rules, by role:
//! - **system** clients: whatever their `system/` scopes allow.
//! - **resident**: their own records and their dependants' (patient compartments in
//!   `Principal::patients`), sensitive ones included; writes limited to [`RESIDENT_WRITABLE`].
//! - **doctor, family doctor, nurse, pharmacist**: a patient's records when their organization has
//!   a care relationship with the patient (encounter, episode of care, care team, referral or
//!   family-doctor contract) or the resident consented to the organization or to them; a
//!   resident's refusal (Consent deny) overrides the care relationship. Level-5 (sensitive) data
//!   needs explicit consent for that class. Break-glass (a stated reason) opens any patient's
//!   records, sensitive ones included, and every such access is flagged for review. Starting
//!   care (registering a Patient, opening an Encounter or EpisodeOfCare at their own
//!   organization) needs no prior relationship. Nurses do not prescribe; pharmacists dispense.
//! - **CDC officer**: read patient data of residents in their region (province ⊃ city ⊃ county),
//!   sensitive classes included (notifiable diseases); writes only public-health tasks.
//! - **insurer**: read payment-relevant records ([`INSURER_READABLE`]) in their region, never
//!   level-5 data.
//! - **regulator**: read in their region, never level-5 data; no writes.
//! - **operator**: shared reference data only (organizations, practitioners, terminology,
//!   schedules); never clinical data (separation of duties).
//! - **auditor**: no FHIR data at all; the audit log only.
//! - **data steward**: identity data only ([`STEWARD_TYPES`]: Patient demographics, the master
//!   patient index's Person records and review Tasks), for keeping the index (records
//!   management); no clinical records, no writes outside the index's operations.
//!
//! Shared reference data (resources in no patient compartment) are readable by every
//! authenticated role except auditors; only operators and system clients write them.

use crate::scopes::Perm;
use crate::sensitivity::{ACT_CODE, SENSITIVE, is_sensitive};
use crate::{Principal, Role};

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Search,
    Create,
    Update,
    Delete,
    /// Type or system history (instance history is a Read).
    History,
    /// Bulk export.
    Export,
}

impl Action {
    pub fn code(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Search => "search",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::History => "history",
            Action::Export => "export",
        }
    }

    fn perm(self) -> Perm {
        match self {
            Action::Read => Perm::Read,
            Action::Search | Action::History | Action::Export => Perm::Search,
            Action::Create => Perm::Create,
            Action::Update => Perm::Update,
            Action::Delete => Perm::Delete,
        }
    }

    pub fn is_write(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
}

/// What is known about the resource acted on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub resource_type: &'a str,
    /// Whether the type belongs to the Patient compartment (patient data) at all.
    pub patient_data: bool,
    /// Patient ids whose compartment holds the resource.
    pub patients: &'a [String],
    /// Sensitivity labels (v3 ActCode codes) it carries.
    pub labels: &'a [String],
    /// GB/T 2260 division code of the patient's residence, if known.
    pub region: Option<&'a str>,
}

/// The caller's standing with the patient(s) of the resource, gathered by the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Relationship {
    /// The caller's organization has a care relationship with the patient.
    pub care: bool,
    /// An active Consent permits the caller (or their organization).
    pub consent_permit: bool,
    /// An active Consent denies the caller (or their organization).
    pub consent_deny: bool,
    /// Sensitive classes the permitting Consent explicitly covers.
    pub consent_classes: Vec<String>,
}

/// The outcome, with a reason a person can act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub permit: bool,
    pub reason: String,
    /// Permitted only through break-glass: flag for review.
    pub break_glass: bool,
}

impl Decision {
    fn permit(reason: impl Into<String>) -> Self {
        Decision { permit: true, reason: reason.into(), break_glass: false }
    }

    fn deny(reason: impl Into<String>) -> Self {
        Decision { permit: false, reason: reason.into(), break_glass: false }
    }
}

/// Types an operator administers (shared reference data and scheduling).
pub const OPERATOR_TYPES: &[&str] = &[
    "Organization",
    "OrganizationAffiliation",
    "Location",
    "Practitioner",
    "PractitionerRole",
    "HealthcareService",
    "Endpoint",
    "Schedule",
    "Slot",
    "CodeSystem",
    "ValueSet",
    "ConceptMap",
    "NamingSystem",
    "StructureDefinition",
    "SearchParameter",
    "Questionnaire",
    "Medication",
    "Device",
    "ActivityDefinition",
    "PlanDefinition",
    "Library",
    "Measure",
];

/// Types a data steward reads (identity data and the index's review queue).
pub const STEWARD_TYPES: &[&str] = &["Patient", "Person", "Task"];

/// What a resident may write in their own compartments.
pub const RESIDENT_WRITABLE: &[&str] = &[
    "Patient",
    "Consent",
    "QuestionnaireResponse",
    "Observation",
    "Appointment",
    "Communication",
    "DocumentReference",
];

/// What an insurer may read.
pub const INSURER_READABLE: &[&str] = &[
    "Patient",
    "Coverage",
    "Claim",
    "ClaimResponse",
    "ExplanationOfBenefit",
    "Encounter",
    "MedicationRequest",
    "MedicationDispense",
    "Procedure",
    "ServiceRequest",
    "Account",
    "ChargeItem",
    "Invoice",
    "PaymentNotice",
    "PaymentReconciliation",
];

/// Types whose creation at one's own organization starts care (no prior relationship needed).
const CARE_STARTING: &[&str] = &["Patient", "Encounter", "EpisodeOfCare"];

/// Types a nurse may not write (prescribing and ordering belong to doctors).
const NOT_FOR_NURSES: &[&str] = &["MedicationRequest", "ServiceRequest", "DiagnosticReport"];

/// Types a pharmacist may write.
const PHARMACIST_WRITABLE: &[&str] = &[
    "MedicationDispense",
    "MedicationAdministration",
    "MedicationStatement",
    "Task",
    "Communication",
    "DetectedIssue",
];

/// Types a CDC officer may write (case investigation and follow-up tasks).
const CDC_WRITABLE: &[&str] = &["Task", "Communication", "DetectedIssue"];

fn in_region(principal: &Principal, region: Option<&str>) -> bool {
    match (principal.region_prefix(), region) {
        (Some(prefix), Some(code)) => code.starts_with(&prefix),
        _ => false,
    }
}

/// Sensitive classes the caller may see without break-glass, given a relationship.
fn explicit_classes(principal: &Principal, rel: &Relationship) -> Vec<String> {
    match principal.role {
        Role::System | Role::Resident | Role::CdcOfficer => SENSITIVE.iter().map(|s| s.0.to_string()).collect(),
        _ if principal.role.is_clinical() && rel.consent_permit => rel.consent_classes.clone(),
        _ => Vec::new(),
    }
}

/// Decides one access to one resource.
pub fn decide(principal: &Principal, action: Action, facts: &Facts<'_>, rel: &Relationship) -> Decision {
    let ty = facts.resource_type;
    if !principal.scopes.allows(ty, action.perm()) {
        return Decision::deny(format!(
            "the access token's scopes do not allow {} on {ty} (needs e.g. {}/{ty}.{})",
            action.code(),
            match principal.role {
                Role::System => "system",
                Role::Resident => "patient",
                _ => "user",
            },
            action.perm().letter()
        ));
    }
    let role = principal.role;
    match role {
        Role::System => return Decision::permit("system client within its scopes"),
        Role::Auditor => {
            return Decision::deny("auditors read the audit log (/audit), not health records (separation of duties)");
        }
        Role::DataSteward => {
            return if STEWARD_TYPES.contains(&ty) && !action.is_write() {
                Decision::permit("data steward keeping the master patient index")
            } else if !facts.patient_data && !action.is_write() {
                Decision::permit("shared reference data")
            } else {
                Decision::deny(format!(
                    "data stewards keep the master patient index (identity data) and may not {} {ty}",
                    action.code()
                ))
            };
        }
        Role::Operator => {
            return if OPERATOR_TYPES.contains(&ty) {
                Decision::permit("operator administering reference data")
            } else {
                Decision::deny(format!(
                    "operators administer the platform and may not {} {ty} (clinical data; separation of duties)",
                    action.code()
                ))
            };
        }
        _ => {}
    }
    if facts.patient_data
        && !principal.purpose.is_empty()
        && !role.allowed_purposes().contains(&principal.purpose.as_str())
    {
        return Decision::deny(format!(
            "the purpose of use {} is not one for which a {} may touch patient records (allowed: {})",
            principal.purpose,
            role.code(),
            role.allowed_purposes().join(", ")
        ));
    }
    if !facts.patient_data {
        return if action.is_write() {
            Decision::deny(format!("{ty} is shared reference data: it is maintained by operators and system clients"))
        } else {
            Decision::permit("shared reference data")
        };
    }
    if matches!(action, Action::History | Action::Export) {
        return Decision::deny(format!(
            "{} across many patients is for system clients; use the patient's own records instead",
            action.code()
        ));
    }
    let sensitive: Vec<&String> = facts.labels.iter().filter(|l| is_sensitive(l)).collect();
    match role {
        Role::Resident => {
            let own = facts.patients.iter().any(|p| principal.patients.contains(p));
            if !own {
                return Decision::deny(format!("{ty} is not in your records or those of a dependant of yours"));
            }
            if action.is_write() && !RESIDENT_WRITABLE.contains(&ty) {
                return Decision::deny(format!(
                    "residents may not {} {ty}; it is written by your care providers",
                    action.code()
                ));
            }
            Decision::permit("the resident's own record")
        }
        r if r.is_clinical() => {
            if action.is_write() {
                let allowed = match r {
                    Role::Nurse => !NOT_FOR_NURSES.contains(&ty),
                    Role::Pharmacist => PHARMACIST_WRITABLE.contains(&ty),
                    _ => true,
                };
                if !allowed {
                    return Decision::deny(format!("a {} may not {} {ty}", r.code().replace('-', " "), action.code()));
                }
                if action == Action::Create && CARE_STARTING.contains(&ty) {
                    return Decision::permit("starting care at the caller's organization");
                }
            }
            let glass = principal.break_glass.as_deref().filter(|r| !r.trim().is_empty());
            if rel.consent_deny && glass.is_none() {
                return Decision::deny(
                    "the resident has refused your organization access to their records (Consent); in an emergency \
                     use break-glass with a reason",
                );
            }
            let related = (rel.care || rel.consent_permit) && !rel.consent_deny;
            if !related {
                return match glass {
                    Some(_) => Decision { permit: true, reason: "break-glass".into(), break_glass: true },
                    None => Decision::deny(format!(
                        "no care relationship between your organization and this patient: record an encounter or \
                         referral, obtain the resident's consent, or in an emergency use break-glass with a reason \
                         (to {} {ty})",
                        action.code()
                    )),
                };
            }
            let allowed = explicit_classes(principal, rel);
            let blocked: Vec<&String> = sensitive.iter().copied().filter(|l| !allowed.contains(l)).collect();
            if !blocked.is_empty() {
                return match glass {
                    Some(_) => {
                        Decision { permit: true, reason: "break-glass (sensitive data)".into(), break_glass: true }
                    }
                    None => Decision::deny(format!(
                        "this {ty} is level-5 sensitive data ({}): it needs the resident's explicit consent for that \
                         class, or break-glass with a reason",
                        blocked.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                };
            }
            Decision::permit(if rel.care { "care relationship" } else { "the resident's consent" })
        }
        Role::CdcOfficer | Role::Insurer | Role::Regulator => {
            if action.is_write() {
                if role == Role::CdcOfficer && CDC_WRITABLE.contains(&ty) && in_region(principal, facts.region) {
                    return Decision::permit("public-health follow-up in the officer's region");
                }
                return Decision::deny(format!("a {} may not {} {ty}", role.code().replace('-', " "), action.code()));
            }
            if role == Role::Insurer && !INSURER_READABLE.contains(&ty) {
                return Decision::deny(format!("insurers read payment-relevant records only, not {ty}"));
            }
            if !in_region(principal, facts.region) {
                return Decision::deny(format!(
                    "this patient's residence is outside your jurisdiction ({})",
                    principal.region.as_deref().unwrap_or("none assigned")
                ));
            }
            if role != Role::CdcOfficer && !sensitive.is_empty() {
                return Decision::deny(format!("this {ty} is level-5 sensitive data and not open to {}s", role.code()));
            }
            Decision::permit("within the officer's region")
        }
        _ => Decision::deny("no rule permits this access"),
    }
}

/// How a search must be narrowed for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchConstraint {
    /// No narrowing beyond scopes.
    Unrestricted,
    /// Refused, with the reason.
    Deny(String),
    /// AND these parameters to the query.
    Params(Vec<(String, String)>),
    /// Clinical staff: the search must name one patient (the engine checks the relationship
    /// with that patient and then applies [`sensitivity_filter`]); a Patient search by
    /// identifier (registration lookup) is the exception.
    WithinPatient,
}

/// `_security:not` parameters that hide the sensitive classes the caller may not see.
pub fn sensitivity_filter(principal: &Principal, rel: &Relationship) -> Vec<(String, String)> {
    if principal.break_glass.as_deref().is_some_and(|r| !r.trim().is_empty()) {
        return Vec::new();
    }
    let allowed = explicit_classes(principal, rel);
    SENSITIVE
        .iter()
        .filter(|(c, _, _)| !allowed.iter().any(|a| a == c))
        .map(|(c, _, _)| ("_security:not".to_string(), format!("{ACT_CODE}|{c}")))
        .collect()
}

/// How to narrow a search of `resource_type`. `patient_param` is the search parameter that
/// names the patient for this type (`_id` for Patient, else `patient` or `subject`), `None` if
/// the type is not patient data. `uses_has`: the query has `_has` criteria.
pub fn search_constraint(
    principal: &Principal,
    resource_type: &str,
    patient_param: Option<&str>,
    uses_has: bool,
) -> SearchConstraint {
    if !principal.scopes.allows(resource_type, Perm::Search) {
        return SearchConstraint::Deny(format!("the access token's scopes do not allow searching {resource_type}"));
    }
    let role = principal.role;
    match role {
        Role::System => return SearchConstraint::Unrestricted,
        Role::Auditor => {
            return SearchConstraint::Deny("auditors read the audit log (/audit), not health records".into());
        }
        Role::Operator if !OPERATOR_TYPES.contains(&resource_type) => {
            return SearchConstraint::Deny(format!(
                "operators may not search {resource_type} (clinical data; separation of duties)"
            ));
        }
        Role::Operator => return SearchConstraint::Unrestricted,
        Role::DataSteward if STEWARD_TYPES.contains(&resource_type) || patient_param.is_none() => {
            return SearchConstraint::Unrestricted;
        }
        Role::DataSteward => {
            return SearchConstraint::Deny(format!(
                "data stewards may not search {resource_type} (clinical data; they keep the master patient index)"
            ));
        }
        _ => {}
    }
    let Some(param) = patient_param else {
        return SearchConstraint::Unrestricted; // shared reference data
    };
    if uses_has && role != Role::CdcOfficer {
        return SearchConstraint::Deny(
            "_has is available to system clients and CDC officers only (it could reveal records you may not see)"
                .into(),
        );
    }
    match role {
        Role::Resident => {
            if principal.patients.is_empty() {
                return SearchConstraint::Deny("your account is not linked to a patient record yet".into());
            }
            let value = if param == "_id" {
                principal.patients.join(",")
            } else {
                principal.patients.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>().join(",")
            };
            SearchConstraint::Params(vec![(param.to_string(), value)])
        }
        r if r.is_clinical() => SearchConstraint::WithinPatient,
        Role::CdcOfficer | Role::Insurer | Role::Regulator => {
            if role == Role::Insurer && !INSURER_READABLE.contains(&resource_type) {
                return SearchConstraint::Deny(format!(
                    "insurers read payment-relevant records only, not {resource_type}"
                ));
            }
            let Some(prefix) = principal.region_prefix() else {
                return SearchConstraint::Deny("your account has no region (GB/T 2260 division) assigned".into());
            };
            let region_param = if param == "_id" {
                crate::DIVISION_PARAM.to_string()
            } else {
                format!("{param}:Patient.{}", crate::DIVISION_PARAM)
            };
            let mut params = vec![(region_param, prefix)];
            if role != Role::CdcOfficer {
                params.extend(sensitivity_filter(principal, &Relationship::default()));
            }
            SearchConstraint::Params(params)
        }
        _ => SearchConstraint::Deny("no rule permits this search".into()),
    }
}

#[cfg(test)]
mod tests;
