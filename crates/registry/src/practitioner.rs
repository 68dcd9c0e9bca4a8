//! The practitioner registry's rules (WS/T 790 staff registration) over FHIR Practitioner and
//! PractitionerRole JSON: licence numbers as identifiers, qualifications (licence type, scope
//! of practice, issuer, period), the date independent practice started, multi-site practice
//! (多点执业: one PractitionerRole per organization) with registration for internet practice
//! (互联网诊疗) and the prescribing right as role codes; and [`eligibility`], whether a
//! practitioner may consult or prescribe online for an organization on a day (the internet
//! hospital's check). docs/API.md ("Facility and practitioner registries") documents every
//! system and code listed here.

use chrono::{Datelike, NaiveDate};
use serde_json::Value;

use crate::rules::{
    Problem, check_code, check_period, claims_profile, codes_in, fhir_date, items, period, reference_id,
};

/// The profile a Practitioner claims to be checked as a registry practitioner.
pub const PRACTITIONER_PROFILE: &str = "https://hutong.dev/fhir/StructureDefinition/registry-practitioner";
/// The profile a PractitionerRole claims to be checked as a registered practice site.
pub const PRACTITIONER_ROLE_PROFILE: &str = "https://hutong.dev/fhir/StructureDefinition/registry-practitioner-role";
/// 医师执业证书编码 (physician practising certificate number).
pub const PRACTICE_CERTIFICATE_SYSTEM: &str = "https://hutong.dev/fhir/sid/physician-practice-certificate";
/// 医师资格证书编码 (physician qualification certificate number).
pub const QUALIFICATION_CERTIFICATE_SYSTEM: &str = "https://hutong.dev/fhir/sid/physician-qualification-certificate";
/// Licence types (`Practitioner.qualification.code`), [`QUALIFICATION_TYPES`].
pub const QUALIFICATION_TYPE_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/qualification-type";
/// 执业范围 on a qualification: `valueCodeableConcept` (e.g. text `临床类别 内科专业`).
pub const PRACTICE_SCOPE_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/practice-scope";
/// The day independent practice started (`valueDate` on Practitioner).
pub const INDEPENDENT_PRACTICE_START_EXTENSION: &str =
    "https://hutong.dev/fhir/StructureDefinition/independent-practice-start";
/// What a PractitionerRole registers at its organization (`PractitionerRole.code`),
/// [`REGISTRATIONS`].
pub const REGISTRATION_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/practice-registration";
/// The rules [`eligibility`] reports on (`reason` codings of `$eligibility`), [`RULES`].
pub const ELIGIBILITY_RULE_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/eligibility-rule";

/// (code, Chinese name) of [`QUALIFICATION_TYPE_SYSTEM`].
pub const QUALIFICATION_TYPES: &[(&str, &str)] = &[
    ("physician-qualification", "医师资格证书"),
    ("physician-practice", "医师执业证书"),
    ("assistant-physician-practice", "执业助理医师执业证书"),
    ("nurse-practice", "护士执业证书"),
    ("licensed-pharmacist", "执业药师注册证"),
];

/// (code, Chinese name) of [`REGISTRATION_SYSTEM`].
pub const REGISTRATIONS: &[(&str, &str)] = &[
    ("primary-site", "主要执业机构"),
    ("additional-site", "多点执业机构"),
    ("internet-practice", "互联网诊疗备案"),
    ("prescribing-right", "处方权"),
];

/// The licence type that allows a physician to practise (and so to consult or prescribe online).
pub const PRACTISING_LICENCE: &str = "physician-practice";
/// Years of independent practice the internet-diagnosis rules require.
pub const MIN_INDEPENDENT_PRACTICE_YEARS: u32 = 3;

/// What the internet hospital asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// An online follow-up consultation (复诊).
    Consult,
    /// An online prescription.
    Prescribe,
}

impl Activity {
    pub fn parse(code: &str) -> Option<Activity> {
        match code {
            "consult" => Some(Activity::Consult),
            "prescribe" => Some(Activity::Prescribe),
            _ => None,
        }
    }
}

/// One rule of [`eligibility`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `Practitioner.active` is not false.
    Active,
    /// A physician practising licence whose period covers the day.
    Licence,
    /// An active PractitionerRole at the organization on the day.
    Role,
    /// That role registers internet practice.
    InternetPractice,
    /// At least [`MIN_INDEPENDENT_PRACTICE_YEARS`] full years since independent practice started.
    IndependentPractice,
    /// For prescribing: that role carries the prescribing right.
    PrescribingRight,
}

/// (rule, code, what the rule requires) of [`ELIGIBILITY_RULE_SYSTEM`].
pub const RULES: &[(Rule, &str, &str)] = &[
    (Rule::Active, "active", "the practitioner record is active"),
    (Rule::Licence, "licence", "a physician practising licence valid on the day"),
    (Rule::Role, "role", "an active PractitionerRole at the organization on the day"),
    (Rule::InternetPractice, "internet-practice", "registration for internet practice at the organization"),
    (Rule::IndependentPractice, "independent-practice", "at least 3 years of independent practice"),
    (Rule::PrescribingRight, "prescribing-right", "the prescribing right at the organization (to prescribe)"),
];

impl Rule {
    pub fn code(self) -> &'static str {
        RULES.iter().find(|r| r.0 == self).map_or("", |r| r.1)
    }
}

/// A licence as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Licence {
    /// A [`QUALIFICATION_TYPES`] code.
    pub kind: String,
    pub number: Option<String>,
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
}

/// A practice site (one PractitionerRole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The PractitionerRole id (for messages).
    pub role: String,
    /// The Organization id.
    pub organization: String,
    pub active: bool,
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
    /// [`REGISTRATIONS`] codes.
    pub registrations: Vec<String>,
}

/// What the eligibility rules need to know about a practitioner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PractitionerFacts {
    pub active: bool,
    pub licences: Vec<Licence>,
    pub independent_practice_start: Option<NaiveDate>,
    pub sites: Vec<Site>,
}

fn covers(start: Option<NaiveDate>, end: Option<NaiveDate>, day: NaiveDate) -> bool {
    start.is_none_or(|s| s <= day) && end.is_none_or(|e| day <= e)
}

/// Full years from `start` to `day` (0 when `day` is earlier).
pub fn full_years(start: NaiveDate, day: NaiveDate) -> u32 {
    if day < start {
        return 0;
    }
    let mut years = day.year() - start.year();
    if (day.month(), day.day()) < (start.month(), start.day()) {
        years -= 1;
    }
    years.max(0) as u32
}

/// The facts of a Practitioner and its PractitionerRoles (roles naming another practitioner are
/// ignored).
pub fn facts_from_fhir(practitioner: &Value, roles: &[Value]) -> PractitionerFacts {
    let licences = items(practitioner, "qualification")
        .flat_map(|(_, q)| {
            let (start, end) = period(&q["period"]);
            let number = items(q, "identifier").find_map(|(_, i)| i["value"].as_str()).map(str::to_string);
            codes_in(&q["code"], QUALIFICATION_TYPE_SYSTEM)
                .map(move |(_, kind)| Licence { kind: kind.to_string(), number: number.clone(), start, end })
                .collect::<Vec<_>>()
        })
        .collect();
    let independent_practice_start = items(practitioner, "extension")
        .find(|(_, x)| x["url"] == INDEPENDENT_PRACTICE_START_EXTENSION)
        .and_then(|(_, x)| fhir_date(x["valueDate"].as_str()?, false));
    let own_id = practitioner["id"].as_str();
    let sites = roles
        .iter()
        .filter(|r| own_id.is_none() || reference_id(&r["practitioner"], "Practitioner") == own_id)
        .filter_map(|r| {
            let (start, end) = period(&r["period"]);
            Some(Site {
                role: r["id"].as_str().unwrap_or_default().to_string(),
                organization: reference_id(&r["organization"], "Organization")?.to_string(),
                active: r["active"].as_bool() != Some(false),
                start,
                end,
                registrations: items(r, "code")
                    .flat_map(|(_, c)| codes_in(c, REGISTRATION_SYSTEM).map(|(_, code)| code.to_string()))
                    .collect(),
            })
        })
        .collect();
    PractitionerFacts {
        active: practitioner["active"].as_bool() != Some(false),
        licences,
        independent_practice_start,
        sites,
    }
}

/// One failed rule, with a sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub rule: Rule,
    pub message: String,
}

/// The answer of [`eligibility`]: eligible when no rule failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligibility {
    pub failures: Vec<Failure>,
}

impl Eligibility {
    pub fn eligible(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn failed(&self) -> Vec<Rule> {
        self.failures.iter().map(|f| f.rule).collect()
    }
}

/// Whether a practitioner may do `activity` online for `organization` (an Organization id) on
/// `day`, under the internet-diagnosis rules (docs/STANDARDS: real, licensed physicians with at
/// least three years of independent practice, registered at the institution): one [`Failure`]
/// per rule that does not hold. Assistant physicians' licences do not count.
pub fn eligibility(facts: &PractitionerFacts, organization: &str, activity: Activity, day: NaiveDate) -> Eligibility {
    let mut failures = Vec::new();
    let mut fail = |rule, message: String| failures.push(Failure { rule, message });
    if !facts.active {
        fail(Rule::Active, "the practitioner record is inactive".into());
    }
    if !facts.licences.iter().any(|l| l.kind == PRACTISING_LICENCE && covers(l.start, l.end, day)) {
        let held = facts.licences.iter().filter(|l| l.kind == PRACTISING_LICENCE).count();
        fail(
            Rule::Licence,
            if held == 0 {
                "no physician practising licence (qualification physician-practice) is recorded".into()
            } else {
                format!("no physician practising licence is valid on {day}")
            },
        );
    }
    let sites: Vec<&Site> = facts
        .sites
        .iter()
        .filter(|s| s.organization == organization && s.active && covers(s.start, s.end, day))
        .collect();
    if sites.is_empty() {
        fail(Rule::Role, format!("no active PractitionerRole at Organization/{organization} on {day}"));
    }
    let registered = |code: &str| sites.iter().any(|s| s.registrations.iter().any(|r| r == code));
    if !registered("internet-practice") {
        fail(
            Rule::InternetPractice,
            format!("not registered for internet practice at Organization/{organization} on {day}"),
        );
    }
    match facts.independent_practice_start {
        None => fail(Rule::IndependentPractice, "the start of independent practice is not recorded".into()),
        Some(start) if full_years(start, day) < MIN_INDEPENDENT_PRACTICE_YEARS => fail(
            Rule::IndependentPractice,
            format!(
                "{} full years of independent practice (since {start}); at least {MIN_INDEPENDENT_PRACTICE_YEARS} are required",
                full_years(start, day)
            ),
        ),
        Some(_) => {}
    }
    if activity == Activity::Prescribe && !registered("prescribing-right") {
        fail(Rule::PrescribingRight, format!("no prescribing right at Organization/{organization} on {day}"));
    }
    Eligibility { failures }
}

/// The registry's rules for a Practitioner write (one that claims [`PRACTITIONER_PROFILE`] or
/// carries the registry's licence identifiers, qualification types or practice-start
/// extension); empty when it may be stored.
pub fn validate_practitioner(practitioner: &Value) -> Vec<Problem> {
    let ours = |system: &Value| system == PRACTICE_CERTIFICATE_SYSTEM || system == QUALIFICATION_CERTIFICATE_SYSTEM;
    let claims = claims_profile(practitioner, PRACTITIONER_PROFILE)
        || items(practitioner, "identifier").any(|(_, i)| ours(&i["system"]))
        || items(practitioner, "qualification")
            .any(|(_, q)| codes_in(&q["code"], QUALIFICATION_TYPE_SYSTEM).next().is_some())
        || items(practitioner, "extension").any(|(_, x)| x["url"] == INDEPENDENT_PRACTICE_START_EXTENSION);
    let mut problems = Vec::new();
    if !claims {
        return problems;
    }
    let certificate = |path: String, value: &str, problems: &mut Vec<Problem>| {
        if !(8..=30).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            problems.push(Problem::new(
                path,
                format!("'{value}' is not a certificate number (8 to 30 letters and digits)"),
            ));
        }
    };
    for (i, identifier) in items(practitioner, "identifier").filter(|(_, i)| ours(&i["system"])) {
        certificate(
            format!("Practitioner.identifier[{i}].value"),
            identifier["value"].as_str().unwrap_or_default(),
            &mut problems,
        );
    }
    for (q, qualification) in items(practitioner, "qualification") {
        let known: Vec<&str> = QUALIFICATION_TYPES.iter().map(|t| t.0).collect();
        for (c, code) in codes_in(&qualification["code"], QUALIFICATION_TYPE_SYSTEM) {
            let path = format!("Practitioner.qualification[{q}].code.coding[{c}].code");
            check_code(code, &known, "a licence type", QUALIFICATION_TYPE_SYSTEM, path, &mut problems);
        }
        for (i, identifier) in items(qualification, "identifier") {
            certificate(
                format!("Practitioner.qualification[{q}].identifier[{i}].value"),
                identifier["value"].as_str().unwrap_or_default(),
                &mut problems,
            );
        }
        check_period(&qualification["period"], &format!("Practitioner.qualification[{q}].period"), &mut problems);
    }
    for (x, ext) in items(practitioner, "extension").filter(|(_, x)| x["url"] == INDEPENDENT_PRACTICE_START_EXTENSION) {
        if ext["valueDate"].as_str().and_then(|d| fhir_date(d, false)).is_none() {
            problems.push(Problem::new(
                format!("Practitioner.extension[{x}].valueDate"),
                "the start of independent practice is a valueDate (YYYY-MM-DD)",
            ));
        }
    }
    problems
}

/// The registry's rules for a PractitionerRole write (one that claims
/// [`PRACTITIONER_ROLE_PROFILE`] or carries [`REGISTRATION_SYSTEM`] codes): known codes, the
/// practitioner and the organization named, a period that does not end before it starts.
pub fn validate_practitioner_role(role: &Value) -> Vec<Problem> {
    let registrations: Vec<(usize, usize, &str)> = items(role, "code")
        .flat_map(|(c, concept)| codes_in(concept, REGISTRATION_SYSTEM).map(move |(k, code)| (c, k, code)))
        .collect();
    let mut problems = Vec::new();
    if registrations.is_empty() && !claims_profile(role, PRACTITIONER_ROLE_PROFILE) {
        return problems;
    }
    let known: Vec<&str> = REGISTRATIONS.iter().map(|r| r.0).collect();
    for (c, k, code) in registrations {
        let path = format!("PractitionerRole.code[{c}].coding[{k}].code");
        check_code(code, &known, "a practice registration", REGISTRATION_SYSTEM, path, &mut problems);
    }
    for (element, target) in [("practitioner", "Practitioner"), ("organization", "Organization")] {
        if reference_id(&role[element], target).is_none() {
            problems.push(Problem::new(
                format!("PractitionerRole.{element}"),
                format!("a registered practice site names its {element} as a {target}/{{id}} reference"),
            ));
        }
    }
    check_period(&role["period"], "PractitionerRole.period", &mut problems);
    problems
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn site(organization: &str, registrations: &[&str]) -> Site {
        Site {
            role: format!("role-{organization}"),
            organization: organization.into(),
            active: true,
            start: Some(day("2020-01-01")),
            end: None,
            registrations: registrations.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A physician who may consult and prescribe online for `h1` on 2026-06-01.
    fn eligible() -> PractitionerFacts {
        PractitionerFacts {
            active: true,
            licences: vec![Licence {
                kind: PRACTISING_LICENCE.into(),
                number: Some("110350100012345".into()),
                start: Some(day("2015-07-01")),
                end: Some(day("2030-06-30")),
            }],
            independent_practice_start: Some(day("2016-03-01")),
            sites: vec![
                site("h1", &["primary-site", "internet-practice", "prescribing-right"]),
                site("h2", &["additional-site"]),
            ],
        }
    }

    #[test]
    fn each_rule_fails_alone() {
        let on = day("2026-06-01");
        assert!(eligibility(&eligible(), "h1", Activity::Prescribe, on).eligible());
        type Change = Box<dyn Fn(&mut PractitionerFacts)>;
        let cases: Vec<(&str, Change, Activity, Rule)> = vec![
            ("inactive", Box::new(|f| f.active = false), Activity::Consult, Rule::Active),
            (
                "licence expired",
                Box::new(|f| f.licences[0].end = Some(day("2026-05-31"))),
                Activity::Consult,
                Rule::Licence,
            ),
            ("no licence", Box::new(|f| f.licences.clear()), Activity::Consult, Rule::Licence),
            (
                "assistant only",
                Box::new(|f| f.licences[0].kind = "assistant-physician-practice".into()),
                Activity::Consult,
                Rule::Licence,
            ),
            (
                "not registered online",
                Box::new(|f| f.sites[0].registrations.retain(|r| r != "internet-practice")),
                Activity::Consult,
                Rule::InternetPractice,
            ),
            (
                "2 years 364 days",
                Box::new(|f| f.independent_practice_start = Some(day("2023-06-02"))),
                Activity::Consult,
                Rule::IndependentPractice,
            ),
            (
                "start unknown",
                Box::new(|f| f.independent_practice_start = None),
                Activity::Consult,
                Rule::IndependentPractice,
            ),
            (
                "no prescribing right",
                Box::new(|f| f.sites[0].registrations.retain(|r| r != "prescribing-right")),
                Activity::Prescribe,
                Rule::PrescribingRight,
            ),
        ];
        for (what, change, activity, rule) in cases {
            let mut facts = eligible();
            change(&mut facts);
            let answer = eligibility(&facts, "h1", activity, on);
            assert_eq!(answer.failed(), [rule], "{what}: {answer:?}");
        }
        // Exactly three years counts.
        let mut facts = eligible();
        facts.independent_practice_start = Some(day("2023-06-01"));
        assert!(eligibility(&facts, "h1", Activity::Consult, on).eligible());
        // Prescribing right is only asked for prescriptions.
        facts.sites[0].registrations.retain(|r| r != "prescribing-right");
        assert!(eligibility(&facts, "h1", Activity::Consult, on).eligible());
    }

    #[test]
    fn the_role_must_be_at_that_organization_and_current() {
        let on = day("2026-06-01");
        let facts = eligible();
        // h2 is a second site (多点执业) without internet registration or prescribing right.
        assert_eq!(
            eligibility(&facts, "h2", Activity::Prescribe, on).failed(),
            [Rule::InternetPractice, Rule::PrescribingRight]
        );
        // The role rule cannot fail alone: the registrations it would carry fail with it.
        assert_eq!(eligibility(&facts, "h9", Activity::Consult, on).failed(), [Rule::Role, Rule::InternetPractice]);
        let mut ended = eligible();
        ended.sites[0].end = Some(day("2026-05-31"));
        ended.sites.push(Site { organization: "h1".into(), registrations: vec![], ..site("h1", &[]) });
        assert_eq!(eligibility(&ended, "h1", Activity::Consult, on).failed(), [Rule::InternetPractice]);
        let mut inactive = eligible();
        inactive.sites[0].active = false;
        assert_eq!(eligibility(&inactive, "h1", Activity::Consult, on).failed(), [Rule::Role, Rule::InternetPractice]);
        let message = &eligibility(&inactive, "h1", Activity::Consult, on).failures[0].message;
        assert!(message.contains("Organization/h1") && message.contains("2026-06-01"), "{message}");
    }

    #[test]
    fn full_years_count_anniversaries() {
        assert_eq!(full_years(day("2023-06-01"), day("2026-06-01")), 3);
        assert_eq!(full_years(day("2023-06-02"), day("2026-06-01")), 2);
        assert_eq!(full_years(day("2020-02-29"), day("2023-02-28")), 2);
        assert_eq!(full_years(day("2027-01-01"), day("2026-06-01")), 0);
    }

    fn practitioner() -> Value {
        json!({"resourceType": "Practitioner", "id": "d1",
            "identifier": [{"system": PRACTICE_CERTIFICATE_SYSTEM, "value": "110350100012345"}],
            "extension": [{"url": INDEPENDENT_PRACTICE_START_EXTENSION, "valueDate": "2016-03-01"}],
            "qualification": [{
                "identifier": [{"system": PRACTICE_CERTIFICATE_SYSTEM, "value": "110350100012345"}],
                "code": {"coding": [{"system": QUALIFICATION_TYPE_SYSTEM, "code": "physician-practice"}]},
                "period": {"start": "2015-07-01", "end": "2030-06-30"},
                "issuer": {"display": "福州市卫生健康委员会"},
                "extension": [{"url": PRACTICE_SCOPE_EXTENSION, "valueCodeableConcept": {"text": "临床类别 内科专业"}}]}]})
    }

    #[test]
    fn facts_come_from_fhir_resources() {
        let roles = [
            json!({"resourceType": "PractitionerRole", "id": "r1", "practitioner": {"reference": "Practitioner/d1"},
                   "organization": {"reference": "Organization/h1"}, "period": {"start": "2020-01"},
                   "code": [{"coding": [{"system": REGISTRATION_SYSTEM, "code": "internet-practice"},
                                        {"system": REGISTRATION_SYSTEM, "code": "prescribing-right"}]}]}),
            json!({"resourceType": "PractitionerRole", "id": "r2", "practitioner": {"reference": "Practitioner/other"},
                   "organization": {"reference": "Organization/h1"}}),
        ];
        let facts = facts_from_fhir(&practitioner(), &roles);
        assert_eq!(facts.licences.len(), 1);
        assert_eq!(facts.independent_practice_start, Some(day("2016-03-01")));
        assert_eq!(facts.sites.len(), 1, "the other practitioner's role is ignored");
        assert_eq!(facts.sites[0].start, Some(day("2020-01-01")));
        assert!(eligibility(&facts, "h1", Activity::Prescribe, day("2026-06-01")).eligible());
    }

    #[test]
    fn writes_are_checked_with_element_paths() {
        assert!(validate_practitioner(&practitioner()).is_empty());
        assert!(
            validate_practitioner(&json!({"resourceType": "Practitioner", "name": [{"family": "Smith"}]})).is_empty()
        );
        let mut bad = practitioner();
        bad["identifier"][0]["value"] = json!("12 34");
        bad["qualification"][0]["code"]["coding"][0]["code"] = json!("wizard");
        bad["qualification"][0]["period"]["end"] = json!("2010-01-01");
        bad["extension"][0]["valueDate"] = json!("soon");
        let paths: Vec<String> = validate_practitioner(&bad).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "Practitioner.identifier[0].value",
                "Practitioner.qualification[0].code.coding[0].code",
                "Practitioner.qualification[0].period",
                "Practitioner.extension[0].valueDate"
            ]
        );
        let role = json!({"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/d1"},
            "code": [{"coding": [{"system": REGISTRATION_SYSTEM, "code": "online"}]}]});
        let paths: Vec<String> = validate_practitioner_role(&role).into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["PractitionerRole.code[0].coding[0].code", "PractitionerRole.organization"]);
        assert!(validate_practitioner_role(&json!({"resourceType": "PractitionerRole"})).is_empty());
    }
}
