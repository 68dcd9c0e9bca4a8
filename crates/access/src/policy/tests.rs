//! The authorization matrix: roles × resource types × actions × relationship, consent and
//! region cases, each row stating the expected decision. Rows are written by hand from the
//! rules in the module documentation, not computed.

use super::*;
use crate::Scopes;

/// Builds the principal of a role with broad scopes (the matrix tests the policy, not scopes).
fn principal(role: Role, case: &str) -> Principal {
    let scopes = match role {
        Role::System => "system/*.*",
        Role::Resident => "patient/*.*",
        _ => "user/*.*",
    };
    Principal {
        subject: format!("user/{}", role.code()),
        role,
        organization: Some("h1".into()),
        region: Some(if case == "city" { "350100" } else { "350102" }.into()),
        practitioner: role.is_clinical().then(|| "doc1".to_string()),
        patients: if role == Role::Resident { vec!["p1".into()] } else { vec![] },
        scopes: Scopes::parse(scopes).unwrap(),
        purpose: role.default_purpose().into(),
        break_glass: (case == "glass").then(|| "unconscious patient in the emergency room".to_string()),
    }
}

fn relationship(case: &str) -> Relationship {
    match case {
        "related" | "glass-related" => Relationship { care: true, ..Default::default() },
        "consent" => Relationship { consent_permit: true, ..Default::default() },
        "consent-psy" => {
            Relationship { consent_permit: true, consent_classes: vec!["PSY".into()], ..Default::default() }
        }
        "refused" => Relationship { care: true, consent_deny: true, ..Default::default() },
        _ => Relationship::default(),
    }
}

const MATRIX: &str = "
# role          case         type                 action   expected
resident        own          Observation          read     permit
resident        own          Observation          search   permit
resident        own          Condition!           read     permit
resident        own          Observation          create   permit
resident        own          Consent              create   permit
resident        own          MedicationRequest    create   deny
resident        own          Condition            update   deny
resident        other        Observation          read     deny
resident        other        Patient              read     deny
resident        own          Organization         read     permit
resident        own          Organization         update   deny
resident        own          Observation          history  deny
resident        own          Observation          export   deny
doctor          related      Observation          read     permit
doctor          related      Observation          search   permit
doctor          related      MedicationRequest    create   permit
doctor          related      Condition!           read     deny
doctor          consent-psy  Condition!           read     permit
doctor          consent      Condition!           read     deny
doctor          consent      Observation          read     permit
doctor          unrelated    Observation          read     deny
doctor          unrelated    Encounter            create   permit
doctor          unrelated    Patient              create   permit
doctor          unrelated    Observation          create   deny
doctor          refused      Observation          read     deny
doctor          glass        Observation          read     permit!
doctor          glass        Condition!           read     permit!
doctor          related      Observation          history  deny
doctor          related      Observation          export   deny
doctor          related      Organization         read     permit
doctor          related      Organization         create   deny
family-doctor   related      CarePlan             create   permit
nurse           related      Observation          create   permit
nurse           related      MedicationRequest    create   deny
nurse           unrelated    Observation          read     deny
pharmacist      related      MedicationDispense   create   permit
pharmacist      related      MedicationRequest    create   deny
pharmacist      related      MedicationRequest    read     permit
cdc-officer     in           Condition!           read     permit
cdc-officer     in           Observation          search   permit
cdc-officer     out          Observation          read     deny
cdc-officer     city         Observation          read     permit
cdc-officer     in           Task                 create   permit
cdc-officer     in           Observation          create   deny
cdc-officer     in           Observation          export   deny
regulator       in           Encounter            read     permit
regulator       in           Condition!           read     deny
regulator       out          Encounter            read     deny
regulator       in           Encounter            update   deny
insurer         in           Claim                read     permit
insurer         in           Observation          read     deny
insurer         out          Claim                read     deny
operator        any          Organization         create   permit
operator        any          Practitioner         update   permit
operator        any          Patient              read     deny
operator        any          Observation          search   deny
auditor         any          Observation          read     deny
auditor         any          Organization         read     deny
system          any          Observation          read     permit
system          any          Condition!           read     permit
system          any          Observation          export   permit
system          any          Patient              history  permit
# purpose of use: the role's purposes only; research and marketing are nobody's
doctor          related@ETREAT Observation        read     permit
doctor          related@HMARKT Observation        read     deny
doctor          related@HRESCH Observation        read     deny
resident        own@FAMRQT   Observation          read     permit
resident        own@HRESCH   Observation          read     deny
cdc-officer     in@TREAT     Observation          read     deny
insurer         in@PUBHLTH   Claim                read     deny
regulator       in@HQUALIMP  Encounter            read     permit
system          any@HMARKT   Observation          read     permit
";

#[test]
fn authorization_matrix() {
    let mut failures = Vec::new();
    let mut rows = 0;
    for line in MATRIX.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [role, case, ty, action, expected] = cols[..] else { panic!("bad row {line}") };
        // `case@PURPOSE` states a purpose of use other than the role's default.
        let (case, purpose) = case.split_once('@').unwrap_or((case, ""));
        let role = Role::parse(role).unwrap_or_else(|| panic!("role {role}"));
        let sensitive = ty.ends_with('!');
        let ty = ty.trim_end_matches('!');
        let action = match action {
            "read" => Action::Read,
            "search" => Action::Search,
            "create" => Action::Create,
            "update" => Action::Update,
            "delete" => Action::Delete,
            "history" => Action::History,
            "export" => Action::Export,
            other => panic!("action {other}"),
        };
        let patient = if case == "other" { "p2" } else { "p1" };
        let patients = vec![patient.to_string()];
        let labels: Vec<String> = if sensitive { vec!["PSY".into()] } else { vec![] };
        let reference = crate::policy::OPERATOR_TYPES.contains(&ty) && ty != "Questionnaire" && ty != "Medication";
        let facts = Facts {
            resource_type: ty,
            patient_data: !reference,
            patients: if reference { &[] } else { &patients },
            labels: &labels,
            region: Some(if case == "out" { "360101" } else { "350102" }),
        };
        let mut who = principal(role, case);
        if !purpose.is_empty() {
            who.purpose = purpose.to_string();
        }
        let decision = decide(&who, action, &facts, &relationship(case));
        let got = match (decision.permit, decision.break_glass) {
            (true, true) => "permit!",
            (true, false) => "permit",
            (false, _) => "deny",
        };
        if got != expected {
            failures.push(format!("{line}\n    got {got}: {}", decision.reason));
        }
        assert!(!decision.reason.is_empty(), "every decision explains itself: {line}");
        rows += 1;
    }
    assert!(rows > 60, "the matrix has {rows} rows");
    assert!(failures.is_empty(), "{} rows disagree:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn scopes_bound_every_role() {
    let mut p = principal(Role::System, "any");
    p.scopes = Scopes::parse("system/Patient.rs").unwrap();
    let patients = vec!["p1".to_string()];
    let facts = |ty| Facts { resource_type: ty, patient_data: true, patients: &patients, labels: &[], region: None };
    assert!(decide(&p, Action::Read, &facts("Patient"), &Relationship::default()).permit);
    let denied = decide(&p, Action::Read, &facts("Observation"), &Relationship::default());
    assert!(!denied.permit && denied.reason.contains("scopes"), "{denied:?}");
    assert!(!decide(&p, Action::Create, &facts("Patient"), &Relationship::default()).permit);
    assert!(matches!(search_constraint(&p, "Observation", Some("patient"), false), SearchConstraint::Deny(_)));
}

#[test]
fn searches_are_narrowed_not_filtered() {
    let resident = principal(Role::Resident, "own");
    assert_eq!(
        search_constraint(&resident, "Observation", Some("patient"), false),
        SearchConstraint::Params(vec![("patient".into(), "Patient/p1".into())])
    );
    assert_eq!(
        search_constraint(&resident, "Patient", Some("_id"), false),
        SearchConstraint::Params(vec![("_id".into(), "p1".into())])
    );
    assert!(matches!(search_constraint(&resident, "Patient", Some("_id"), true), SearchConstraint::Deny(_)));
    assert_eq!(search_constraint(&resident, "Organization", None, false), SearchConstraint::Unrestricted);
    let doctor = principal(Role::Doctor, "related");
    assert_eq!(search_constraint(&doctor, "Observation", Some("patient"), false), SearchConstraint::WithinPatient);
    let officer = principal(Role::Regulator, "city");
    let SearchConstraint::Params(params) = search_constraint(&officer, "Encounter", Some("patient"), false) else {
        panic!("regulators are narrowed to their region")
    };
    assert_eq!(params[0], ("patient:Patient.division".into(), "3501".into()));
    assert!(params.iter().any(|(k, v)| k == "_security:not" && v.ends_with("|HIV")), "{params:?}");
    let cdc = principal(Role::CdcOfficer, "in");
    assert_eq!(
        search_constraint(&cdc, "Patient", Some("_id"), false),
        SearchConstraint::Params(vec![("division".into(), "350102".into())])
    );
    assert!(matches!(
        search_constraint(&principal(Role::Operator, "any"), "Observation", Some("patient"), false),
        SearchConstraint::Deny(_)
    ));
    // Consent for one class lifts only that class's filter.
    let filter = sensitivity_filter(&doctor, &relationship("consent-psy"));
    assert!(!filter.iter().any(|(_, v)| v.ends_with("|PSY")) && filter.iter().any(|(_, v)| v.ends_with("|HIV")));
    assert!(sensitivity_filter(&principal(Role::Doctor, "glass"), &Relationship::default()).is_empty());
}

#[test]
fn region_levels_nest() {
    assert_eq!(crate::region_prefix("350000"), "35");
    assert_eq!(crate::region_prefix("350100"), "3501");
    assert_eq!(crate::region_prefix("350102"), "350102");
}
