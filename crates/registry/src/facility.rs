//! The facility registry's rules (WS/T 790 institution registration) over FHIR Organization
//! JSON: institution identifiers (统一社会信用代码 with its GB 32100 check character,
//! 医疗机构执业许可证登记号), institution type and level, the GB/T 2260 division of the
//! address, and 医联体/医共体 membership through OrganizationAffiliation. docs/API.md
//! ("Facility and practitioner registries") documents every system and code listed here.
//!
//! The rules apply to an Organization that takes part in the registry: it claims
//! [`ORGANIZATION_PROFILE`] in `meta.profile`, or carries one of the registry's identifier
//! systems, type codes or the level extension. A plain FHIR Organization (Synthea, Inferno) is
//! checked only for the division extension, which no foreign system sends.

use serde_json::Value;

use crate::division::divisions;
use crate::rules::{Problem, check_code, check_period, claims_profile, codes_in, items};

/// The profile an Organization claims to be checked as a registry institution.
pub const ORGANIZATION_PROFILE: &str = "https://hutong.dev/fhir/StructureDefinition/registry-organization";
/// 统一社会信用代码 (GB 32100-2015), 18 characters with a check character.
pub const USCC_SYSTEM: &str = "https://hutong.dev/fhir/sid/uscc";
/// 医疗机构执业许可证登记号 (the registration number on the medical institution licence).
pub const INSTITUTION_LICENCE_SYSTEM: &str = "https://hutong.dev/fhir/sid/medical-institution-licence";
/// Institution types (`Organization.type`), [`INSTITUTION_TYPES`].
pub const INSTITUTION_TYPE_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/institution-type";
/// The hospital level and grade (医院等级), `valueCoding` from [`INSTITUTION_LEVEL_SYSTEM`].
pub const INSTITUTION_LEVEL_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/institution-level";
/// Level and grade codes, [`INSTITUTION_LEVELS`].
pub const INSTITUTION_LEVEL_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/institution-level";
/// A member's role in a 医联体/医共体 (`OrganizationAffiliation.code`), [`ALLIANCE_ROLES`].
pub const ALLIANCE_ROLE_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/alliance-role";

/// The URL of the address extension carrying the GB/T 2260 division (`access::DIVISION_EXTENSION`).
pub const DIVISION_EXTENSION: &str = access::DIVISION_EXTENSION;

/// (code, Chinese name, English name) of [`INSTITUTION_TYPE_SYSTEM`].
pub const INSTITUTION_TYPES: &[(&str, &str, &str)] = &[
    ("hospital", "医院", "hospital"),
    ("tcm-hospital", "中医医院", "traditional Chinese medicine hospital"),
    ("maternal-child-health", "妇幼保健院", "maternal and child health hospital"),
    ("community-health-centre", "社区卫生服务中心", "community health centre"),
    ("community-health-station", "社区卫生服务站", "community health station"),
    ("township-health-centre", "乡镇卫生院", "township health centre"),
    ("village-clinic", "村卫生室", "village clinic"),
    ("clinic", "诊所/门诊部", "clinic or outpatient department"),
    ("cdc", "疾病预防控制中心", "centre for disease control and prevention"),
    ("pharmacy", "药店", "pharmacy"),
    ("insurer", "医疗保障经办机构/保险机构", "health insurer or insurance agency"),
    ("health-commission", "卫生健康行政部门", "health administration (regulator)"),
    ("internet-hospital", "互联网医院", "internet hospital"),
    ("medical-alliance", "医联体", "medical alliance (city medical group)"),
    ("medical-community", "医共体", "county medical community"),
];

/// The type codes that stand for a grouping of institutions rather than an institution.
pub const ALLIANCE_TYPES: &[&str] = &["medical-alliance", "medical-community"];

/// (code, Chinese name) of [`INSTITUTION_LEVEL_SYSTEM`]: level 一级/二级/三级 × grade 甲/乙/丙.
pub const INSTITUTION_LEVELS: &[(&str, &str)] = &[
    ("3A", "三级甲等"),
    ("3B", "三级乙等"),
    ("3C", "三级丙等"),
    ("2A", "二级甲等"),
    ("2B", "二级乙等"),
    ("2C", "二级丙等"),
    ("1A", "一级甲等"),
    ("1B", "一级乙等"),
    ("1C", "一级丙等"),
    ("unrated", "未定级"),
];

/// (code, Chinese name) of [`ALLIANCE_ROLE_SYSTEM`].
pub const ALLIANCE_ROLES: &[(&str, &str)] = &[("lead", "牵头单位"), ("member", "成员单位")];

/// The GB 32100 character set: digits and upper-case letters without I, O, S, V, Z.
const USCC_CHARSET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

/// Why a 统一社会信用代码 is not valid. A wrong check character is reported with the expected
/// one, never corrected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditCodeError {
    #[error("a unified social credit code has 18 characters, this one has {len}")]
    Length { len: usize },
    #[error(
        "character {position} ('{found}') is not allowed in a unified social credit code (digits and capital letters except I, O, S, V, Z)"
    )]
    Character { position: usize, found: char },
    #[error(
        "the check character is '{found}' but GB 32100 gives '{expected}' for the first 17 characters: the code is mistyped"
    )]
    Check { expected: char, found: char },
}

/// The GB 32100 check character of the first 17 characters (`None` if they are not 17
/// characters of the code's character set).
pub fn credit_code_check_char(first17: &str) -> Option<char> {
    let values: Vec<u32> = first17.chars().map(|c| USCC_CHARSET.find(c).map(|i| i as u32)).collect::<Option<_>>()?;
    if values.len() != 17 {
        return None;
    }
    let sum: u32 = values.iter().zip(USCC_WEIGHTS).map(|(v, w)| v * w).sum();
    USCC_CHARSET.chars().nth(((31 - sum % 31) % 31) as usize)
}

/// Checks a 统一社会信用代码: 18 characters of the GB 32100 set and the check character.
pub fn validate_credit_code(code: &str) -> Result<(), CreditCodeError> {
    let chars: Vec<char> = code.chars().collect();
    if chars.len() != 18 {
        return Err(CreditCodeError::Length { len: chars.len() });
    }
    if let Some((i, &c)) = chars.iter().enumerate().find(|(_, c)| !USCC_CHARSET.contains(**c)) {
        return Err(CreditCodeError::Character { position: i + 1, found: c });
    }
    let first17: String = chars[..17].iter().collect();
    let expected = credit_code_check_char(&first17).ok_or(CreditCodeError::Length { len: chars.len() })?;
    if chars[17] == expected { Ok(()) } else { Err(CreditCodeError::Check { expected, found: chars[17] }) }
}

/// The shape of a 医疗机构执业许可证登记号: its structure is not publicly specified in a
/// checkable form, so only letters and digits, 10 to 30 of them, are required.
pub fn validate_institution_licence(number: &str) -> Result<(), String> {
    let ok = (10..=30).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{number}' is not a medical institution licence registration number (10 to 30 letters and digits)"
        ))
    }
}

/// Whether the Organization takes part in the registry (see the module comment).
pub fn claims_registry(org: &Value) -> bool {
    claims_profile(org, ORGANIZATION_PROFILE)
        || items(org, "identifier")
            .any(|(_, i)| i["system"] == USCC_SYSTEM || i["system"] == INSTITUTION_LICENCE_SYSTEM)
        || items(org, "type").any(|(_, t)| codes_in(t, INSTITUTION_TYPE_SYSTEM).next().is_some())
        || items(org, "extension").any(|(_, x)| x["url"] == INSTITUTION_LEVEL_EXTENSION)
}

/// The registry's institution type codes of an Organization.
pub fn institution_types(org: &Value) -> Vec<&str> {
    items(org, "type").flat_map(|(_, t)| codes_in(t, INSTITUTION_TYPE_SYSTEM).map(|(_, c)| c)).collect()
}

/// The GB/T 2260 division codes in the addresses' division extensions, with their paths.
fn division_codes<'a>(resource: &'a Value, resource_type: &str) -> Vec<(String, Option<&'a str>)> {
    let mut out = Vec::new();
    for (a, address) in items(resource, "address") {
        for (x, ext) in items(address, "extension").filter(|(_, x)| x["url"] == DIVISION_EXTENSION) {
            out.push((format!("{resource_type}.address[{a}].extension[{x}].valueCode"), ext["valueCode"].as_str()));
        }
    }
    out
}

/// Checks every division extension of a resource's addresses against the GB/T 2260 table.
pub fn check_divisions(resource: &Value, resource_type: &str) -> Vec<Problem> {
    division_codes(resource, resource_type)
        .into_iter()
        .filter_map(|(path, code)| match code {
            None => Some(Problem::new(path, "the GB/T 2260 division extension needs a valueCode (six digits)")),
            Some(code) => divisions().validate(code).err().map(|e| Problem::new(path, e.to_string())),
        })
        .collect()
}

/// The registry's rules for an Organization write; empty when it may be stored.
pub fn validate_organization(org: &Value) -> Vec<Problem> {
    let mut problems = check_divisions(org, "Organization");
    if !claims_registry(org) {
        return problems;
    }
    let mut institution_ids = 0;
    for (i, identifier) in items(org, "identifier") {
        let path = format!("Organization.identifier[{i}].value");
        let value = identifier["value"].as_str().unwrap_or_default();
        let checked = match identifier["system"].as_str() {
            Some(USCC_SYSTEM) => validate_credit_code(value).map_err(|e| format!("'{value}': {e}")),
            Some(INSTITUTION_LICENCE_SYSTEM) => validate_institution_licence(value),
            _ => continue,
        };
        institution_ids += 1;
        if let Err(message) = checked {
            problems.push(Problem::new(path, message));
        }
    }
    let types = institution_types(org);
    let alliance = types.iter().any(|t| ALLIANCE_TYPES.contains(t));
    if institution_ids == 0 && !alliance {
        problems.push(Problem::new(
            "Organization.identifier",
            format!(
                "a registry institution needs its unified social credit code (system {USCC_SYSTEM}) or its medical institution licence number (system {INSTITUTION_LICENCE_SYSTEM})"
            ),
        ));
    }
    let known: Vec<&str> = INSTITUTION_TYPES.iter().map(|k| k.0).collect();
    for (t, concept) in items(org, "type") {
        for (c, code) in codes_in(concept, INSTITUTION_TYPE_SYSTEM) {
            let path = format!("Organization.type[{t}].coding[{c}].code");
            check_code(code, &known, "an institution type", INSTITUTION_TYPE_SYSTEM, path, &mut problems);
        }
    }
    if types.is_empty() {
        problems.push(Problem::new(
            "Organization.type",
            format!("a registry institution needs a type from {INSTITUTION_TYPE_SYSTEM} (e.g. hospital)"),
        ));
    }
    for (x, ext) in items(org, "extension").filter(|(_, x)| x["url"] == INSTITUTION_LEVEL_EXTENSION) {
        let coding = &ext["valueCoding"];
        let code = coding["code"].as_str().unwrap_or_default();
        if coding["system"] != INSTITUTION_LEVEL_SYSTEM || !INSTITUTION_LEVELS.iter().any(|l| l.0 == code) {
            problems.push(Problem::new(
                format!("Organization.extension[{x}].valueCoding"),
                format!(
                    "the institution level is a valueCoding of {INSTITUTION_LEVEL_SYSTEM}: 3A, 3B, 3C, 2A, 2B, 2C, 1A, 1B, 1C (level × grade) or unrated"
                ),
            ));
        }
    }
    if !alliance && division_codes(org, "Organization").is_empty() {
        problems.push(Problem::new(
            "Organization.address",
            format!(
                "a registry institution needs the GB/T 2260 division of its address (extension {DIVISION_EXTENSION}, valueCode, e.g. 350102)"
            ),
        ));
    }
    if let (Some(id), Some(parent)) = (org["id"].as_str(), org["partOf"]["reference"].as_str())
        && parent == format!("Organization/{id}")
    {
        problems.push(Problem::new("Organization.partOf", "an institution cannot be part of itself"));
    }
    problems
}

/// The registry's rules for an OrganizationAffiliation that records 医联体/医共体 membership
/// (one whose `code` uses [`ALLIANCE_ROLE_SYSTEM`]): a known role, both organizations, a period
/// that does not end before it starts. Whether `organization` is an alliance is the engine's
/// check (it needs the store).
pub fn validate_affiliation(affiliation: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut membership = false;
    for (c, concept) in items(affiliation, "code") {
        for (k, code) in codes_in(concept, ALLIANCE_ROLE_SYSTEM) {
            membership = true;
            let known: Vec<&str> = ALLIANCE_ROLES.iter().map(|r| r.0).collect();
            let path = format!("OrganizationAffiliation.code[{c}].coding[{k}].code");
            check_code(code, &known, "an alliance role", ALLIANCE_ROLE_SYSTEM, path, &mut problems);
        }
    }
    if !membership {
        return problems;
    }
    for element in ["organization", "participatingOrganization"] {
        if crate::rules::reference_id(&affiliation[element], "Organization").is_none() {
            problems.push(Problem::new(
                format!("OrganizationAffiliation.{element}"),
                "alliance membership names the alliance (organization) and the member (participatingOrganization) as Organization/{id} references",
            ));
        }
    }
    check_period(&affiliation["period"], "OrganizationAffiliation.period", &mut problems);
    problems
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn credit_code_check_characters() {
        // Published codes of two companies (public register data, not personal data).
        assert_eq!(validate_credit_code("914403001922038216"), Ok(()));
        assert_eq!(validate_credit_code("91110108551385082Q"), Ok(()));
        assert_eq!(
            validate_credit_code("914403001922038217"),
            Err(CreditCodeError::Check { expected: '6', found: '7' })
        );
        assert_eq!(validate_credit_code("91440300192203821"), Err(CreditCodeError::Length { len: 17 }));
        assert_eq!(
            validate_credit_code("91440300192203821I"),
            Err(CreditCodeError::Character { position: 18, found: 'I' })
        );
        assert_eq!(
            validate_credit_code("9144030019220382i6"),
            Err(CreditCodeError::Character { position: 17, found: 'i' })
        );
        let message = validate_credit_code("914403001922038217").unwrap_err().to_string();
        assert!(message.contains("'7'") && message.contains("'6'"), "{message}");
        assert_eq!(credit_code_check_char("12350100MB0000001"), Some('Y'));
    }

    fn hospital() -> Value {
        json!({"resourceType": "Organization", "id": "h1", "name": "福州市第一医院",
            "identifier": [{"system": USCC_SYSTEM, "value": "914403001922038216"}],
            "type": [{"coding": [{"system": INSTITUTION_TYPE_SYSTEM, "code": "hospital"}]}],
            "extension": [{"url": INSTITUTION_LEVEL_EXTENSION, "valueCoding": {"system": INSTITUTION_LEVEL_SYSTEM, "code": "3A"}}],
            "address": [{"extension": [{"url": DIVISION_EXTENSION, "valueCode": "350102"}]}]})
    }

    fn paths(org: &Value) -> Vec<String> {
        validate_organization(org).into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn organization_rules_each_name_their_element() {
        assert_eq!(paths(&hospital()), Vec::<String>::new());
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "bad check character",
                Box::new(|o| o["identifier"][0]["value"] = json!("914403001922038217")),
                "Organization.identifier[0].value",
            ),
            ("no institution identifier", Box::new(|o| o["identifier"] = json!([])), "Organization.identifier"),
            (
                "bad licence number",
                Box::new(|o| o["identifier"][0] = json!({"system": INSTITUTION_LICENCE_SYSTEM, "value": "12-34"})),
                "Organization.identifier[0].value",
            ),
            (
                "unknown type",
                Box::new(|o| o["type"][0]["coding"][0]["code"] = json!("spa")),
                "Organization.type[0].coding[0].code",
            ),
            (
                "unknown level",
                Box::new(|o| o["extension"][0]["valueCoding"]["code"] = json!("4A")),
                "Organization.extension[0].valueCoding",
            ),
            (
                "unknown division",
                Box::new(|o| o["address"][0]["extension"][0]["valueCode"] = json!("350199")),
                "Organization.address[0].extension[0].valueCode",
            ),
            ("no division", Box::new(|o| o["address"] = json!([{"city": "福州市"}])), "Organization.address"),
            (
                "part of itself",
                Box::new(|o| o["partOf"] = json!({"reference": "Organization/h1"})),
                "Organization.partOf",
            ),
        ];
        for (what, change, path) in cases {
            let mut org = hospital();
            change(&mut org);
            assert_eq!(paths(&org), [path], "{what}");
        }
        let mut untyped = hospital();
        untyped["type"] = json!([]);
        assert_eq!(paths(&untyped), ["Organization.type"]);
    }

    #[test]
    fn plain_organizations_are_left_alone_but_divisions_are_checked() {
        let synthea = json!({"resourceType": "Organization", "name": "PCP1234",
            "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "abc"}],
            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}],
            "address": [{"city": "Boston", "postalCode": "02101"}]});
        assert!(!claims_registry(&synthea));
        assert!(validate_organization(&synthea).is_empty());
        let mut with_division = synthea.clone();
        with_division["address"][0]["extension"] = json!([{"url": DIVISION_EXTENSION, "valueCode": "123456"}]);
        assert_eq!(paths(&with_division), ["Organization.address[0].extension[0].valueCode"]);
        let mut profiled = synthea;
        profiled["meta"] = json!({"profile": [ORGANIZATION_PROFILE]});
        assert_eq!(paths(&profiled), ["Organization.identifier", "Organization.type", "Organization.address"]);
    }

    #[test]
    fn alliances_need_no_identifier_or_division() {
        let alliance = json!({"resourceType": "Organization", "name": "鼓楼区医联体",
            "type": [{"coding": [{"system": INSTITUTION_TYPE_SYSTEM, "code": "medical-alliance"}]}]});
        assert!(validate_organization(&alliance).is_empty());
        let member = json!({"resourceType": "OrganizationAffiliation",
            "organization": {"reference": "Organization/alliance-1"},
            "participatingOrganization": {"reference": "Organization/h1"},
            "code": [{"coding": [{"system": ALLIANCE_ROLE_SYSTEM, "code": "lead"}]}],
            "period": {"start": "2023-01-01"}});
        assert!(validate_affiliation(&member).is_empty());
        let mut bad = member.clone();
        bad["code"][0]["coding"][0]["code"] = json!("owner");
        bad["participatingOrganization"] = json!({"display": "?"});
        bad["period"]["end"] = json!("2022-01-01");
        let p: Vec<String> = validate_affiliation(&bad).into_iter().map(|p| p.path).collect();
        assert_eq!(
            p,
            [
                "OrganizationAffiliation.code[0].coding[0].code",
                "OrganizationAffiliation.participatingOrganization",
                "OrganizationAffiliation.period"
            ]
        );
        let other = json!({"resourceType": "OrganizationAffiliation", "code": [{"text": "referral partner"}]});
        assert!(validate_affiliation(&other).is_empty());
    }
}
