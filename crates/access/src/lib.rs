//! Who is asking, and may they (DESIGN.md §4): the [`Principal`] every request carries, SMART
//! [`scopes`], data [`sensitivity`] classes, and [`policy`], the one decision point every FHIR and
//! service endpoint consults. Pure: no IO; the engine gathers the facts (care relationships,
//! consents) and the `auth` crate establishes principals.

pub mod policy;
pub mod scopes;
pub mod sensitivity;

pub use policy::{Action, Decision, Facts, Relationship, SearchConstraint};
pub use scopes::{Perm, ScopeContext, Scopes};

use serde::{Deserialize, Serialize};

/// The roles of MISSION.md's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Resident,
    Doctor,
    Nurse,
    FamilyDoctor,
    Pharmacist,
    CdcOfficer,
    Insurer,
    Regulator,
    Operator,
    Auditor,
    /// Keeps the master patient index: resolves possible matches, links, unlinks, merges
    /// (identity data, never clinical records).
    DataSteward,
    /// A system client (hospital system, platform node) with `system/` scopes.
    System,
}

impl Role {
    pub const ALL: [Role; 12] = [
        Role::Resident,
        Role::Doctor,
        Role::Nurse,
        Role::FamilyDoctor,
        Role::Pharmacist,
        Role::CdcOfficer,
        Role::Insurer,
        Role::Regulator,
        Role::Operator,
        Role::Auditor,
        Role::DataSteward,
        Role::System,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Role::Resident => "resident",
            Role::Doctor => "doctor",
            Role::Nurse => "nurse",
            Role::FamilyDoctor => "family-doctor",
            Role::Pharmacist => "pharmacist",
            Role::CdcOfficer => "cdc-officer",
            Role::Insurer => "insurer",
            Role::Regulator => "regulator",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::DataSteward => "data-steward",
            Role::System => "system",
        }
    }

    pub fn parse(code: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Clinical staff whose access follows care relationships.
    pub fn is_clinical(self) -> bool {
        matches!(self, Role::Doctor | Role::Nurse | Role::FamilyDoctor | Role::Pharmacist)
    }

    /// Officers whose access follows their region (分级授权).
    pub fn is_regional(self) -> bool {
        matches!(self, Role::CdcOfficer | Role::Insurer | Role::Regulator)
    }

    /// The purposes of use (HL7 v3 PurposeOfUse) for which this role may touch a patient's
    /// records: care for clinicians (emergency care with break-glass), public health for CDC,
    /// payment for insurers, operations and quality review for regulators, the patient's own or
    /// family's request for residents. Research and marketing are no one's purpose for
    /// identified records. System clients are bounded by their scopes instead.
    pub fn allowed_purposes(self) -> &'static [&'static str] {
        match self {
            Role::Resident => &["PATRQT", "FAMRQT"],
            Role::Doctor | Role::Nurse | Role::FamilyDoctor | Role::Pharmacist => &["TREAT", "ETREAT"],
            Role::CdcOfficer => &["PUBHLTH"],
            Role::Insurer => &["HPAYMT"],
            Role::Regulator => &["HOPERAT", "HQUALIMP"],
            Role::Operator => &["HSYSADMIN"],
            Role::Auditor => &["HOPERAT"],
            Role::DataSteward => &["RECORDMGT"],
            Role::System => &[],
        }
    }

    /// The default purpose of use (HL7 v3 PurposeOfUse).
    pub fn default_purpose(self) -> &'static str {
        match self {
            Role::Resident => "PATRQT",
            Role::Doctor | Role::Nurse | Role::FamilyDoctor | Role::Pharmacist => "TREAT",
            Role::CdcOfficer => "PUBHLTH",
            Role::Insurer => "HPAYMT",
            Role::Regulator => "HOPERAT",
            Role::Operator => "HSYSADMIN",
            Role::Auditor => "HOPERAT",
            Role::DataSteward => "RECORDMGT",
            Role::System => "HOPERAT",
        }
    }
}

/// The extension on `Patient.address` (and `Organization.address`) that carries the GB/T 2260
/// division code of the place (`valueCode`, six digits): the residence the regional roles'
/// access follows. A postal code is not a division code, so it is never read as one.
pub const DIVISION_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/gb2260-division";

/// The search parameter over [`DIVISION_EXTENSION`] (defined by the `fhir` crate on Patient and
/// Organization).
pub const DIVISION_PARAM: &str = "division";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    /// `user/{id}` or `client/{id}`.
    pub subject: String,
    pub role: Role,
    /// The organization the caller acts for (Organization id), if any.
    #[serde(default)]
    pub organization: Option<String>,
    /// GB/T 2260 division code (6 digits) of the caller's jurisdiction: a province (`350000`),
    /// a city (`350100`) or a county (`350102`).
    #[serde(default)]
    pub region: Option<String>,
    /// The Practitioner id of a staff member.
    #[serde(default)]
    pub practitioner: Option<String>,
    /// The Patient ids a resident may act for: their own and their dependants' (guardians).
    #[serde(default)]
    pub patients: Vec<String>,
    #[serde(skip)]
    pub scopes: Scopes,
    /// Purpose of use for this request.
    #[serde(default)]
    pub purpose: String,
    /// Break-glass: the stated reason for emergency access, if invoked on this request.
    #[serde(default)]
    pub break_glass: Option<String>,
}

impl Principal {
    /// The region prefix that division codes inside the jurisdiction share: `35` for a
    /// province, `3501` for a city, the full code for a county.
    pub fn region_prefix(&self) -> Option<String> {
        self.region.as_deref().map(region_prefix)
    }
}

/// `350000` → `35`, `350100` → `3501`, `350102` → `350102`.
pub fn region_prefix(code: &str) -> String {
    let code = code.trim();
    if code.len() == 6 && code.ends_with("0000") {
        code[..2].to_string()
    } else if code.len() == 6 && code.ends_with("00") {
        code[..4].to_string()
    } else {
        code.to_string()
    }
}
