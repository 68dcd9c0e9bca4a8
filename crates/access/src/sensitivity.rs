//! Sensitivity classes of health data (GB/T 39725-2020 levels; HL7 v3 ActCode labels in
//! `meta.security`). Records of mental health, HIV and other sexually transmitted infections,
//! reproductive health, substance use and genetic testing are level 5 (strictly limited): they
//! carry a label, and reading them needs explicit grounds (consent for that class, break-glass,
//! or a public-health mandate).
//!
//! [`classify`] derives labels from the codes a resource carries (ICD-10 chapters and blocks,
//! LOINC genetic panels), so data from systems that do not label it are protected all the same.

use serde_json::Value;

/// The code system of the labels (HL7 v3 ActCode, confidentiality/sensitivity policies).
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Level-5 classes, as v3 ActCode codes, with Chinese and English names.
pub const SENSITIVE: &[(&str, &str, &str)] = &[
    ("PSY", "精神卫生", "mental health"),
    ("HIV", "艾滋病", "HIV/AIDS"),
    ("STD", "性传播疾病", "sexually transmitted disease"),
    ("SEX", "生殖健康", "reproductive health"),
    ("ETH", "物质滥用", "substance abuse"),
    ("GDIS", "遗传与基因", "genetic disease and testing"),
];

pub fn is_sensitive(label: &str) -> bool {
    SENSITIVE.iter().any(|(c, _, _)| *c == label)
}

/// The GB/T 39725 level of a resource with these labels: 5 if any level-5 class, else 3 for
/// patient data (personal health information), 1 for shared reference data.
pub fn level(labels: &[String], patient_data: bool) -> u8 {
    if labels.iter().any(|l| is_sensitive(l)) {
        5
    } else if patient_data {
        3
    } else {
        1
    }
}

/// The sensitivity labels a resource already carries in `meta.security` (codes of [`ACT_CODE`]).
pub fn labels(resource: &Value) -> Vec<String> {
    resource["meta"]["security"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["system"].as_str() == Some(ACT_CODE))
                .filter_map(|c| c["code"].as_str())
                .filter(|c| is_sensitive(c))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn icd10_class(code: &str) -> Option<&'static str> {
    let code = code.trim().to_ascii_uppercase();
    let mut chars = code.chars();
    let letter = chars.next()?;
    let number: u32 = code.get(1..3)?.parse().ok()?;
    match (letter, number) {
        ('F', 10..=19) => Some("ETH"),
        ('F', _) => Some("PSY"),
        ('B', 20..=24) | ('Z', 21) => Some("HIV"),
        ('A', 50..=64) => Some("STD"),
        ('O', _) | ('Z', 30..=39) | ('N', 96..=98) => Some("SEX"),
        ('Q', _) => Some("GDIS"),
        _ => None,
    }
}

/// Level-5 classes implied by the codes of a resource: ICD-10 (WHO or GB/T 14396 systems, or a
/// system URL containing `icd-10`) anywhere in `code`, `reasonCode`, `valueCodeableConcept`;
/// LOINC genetic-testing classes in Observation categories (`genetics`).
pub fn classify(resource: &Value) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = Vec::new();
    let visit = |found: &mut Vec<&'static str>, concept: &Value| {
        for coding in concept["coding"].as_array().into_iter().flatten() {
            let system = coding["system"].as_str().unwrap_or("").to_ascii_lowercase();
            if (system.contains("icd-10") || system.contains("icd10") || system.ends_with("sid/icd-10"))
                && let Some(class) = coding["code"].as_str().and_then(icd10_class)
                && !found.contains(&class)
            {
                found.push(class);
            }
        }
    };
    for field in ["code", "valueCodeableConcept"] {
        visit(&mut found, &resource[field]);
    }
    for field in ["reasonCode", "category"] {
        for concept in resource[field].as_array().into_iter().flatten() {
            visit(&mut found, concept);
            let genetic = concept["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| matches!(c["code"].as_str(), Some("genetics") | Some("GE")));
            if genetic && !found.contains(&"GDIS") {
                found.push("GDIS");
            }
        }
    }
    found
}

/// Adds the labels of [`classify`] to `meta.security` (keeping existing ones). Returns whether
/// the resource changed.
pub fn label(resource: &mut Value) -> bool {
    let classes = classify(resource);
    if classes.is_empty() {
        return false;
    }
    let existing = labels(resource);
    let missing: Vec<&str> = classes.into_iter().filter(|c| !existing.iter().any(|e| e == c)).collect();
    if missing.is_empty() {
        return false;
    }
    let Some(obj) = resource.as_object_mut() else { return false };
    let meta = obj.entry("meta").or_insert_with(|| Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else { return false };
    let security = meta.entry("security").or_insert_with(|| Value::Array(Vec::new()));
    let Some(security) = security.as_array_mut() else { return false };
    for code in missing {
        let display = SENSITIVE.iter().find(|(c, _, _)| *c == code).map_or("", |s| s.2);
        security.push(serde_json::json!({"system": ACT_CODE, "code": code, "display": display}));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn icd10_codes_imply_classes() {
        let condition = |code: &str| json!({"resourceType": "Condition", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]}});
        assert_eq!(classify(&condition("F32.1")), ["PSY"]);
        assert_eq!(classify(&condition("F10.2")), ["ETH"]);
        assert_eq!(classify(&condition("B20")), ["HIV"]);
        assert_eq!(classify(&condition("A53.9")), ["STD"]);
        assert_eq!(classify(&condition("O80")), ["SEX"]);
        assert_eq!(classify(&condition("Q90.9")), ["GDIS"]);
        assert!(classify(&condition("I10")).is_empty(), "hypertension is ordinary");
        assert!(classify(&condition("E11.9")).is_empty());
        let loinc =
            json!({"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "F32"}]}});
        assert!(classify(&loinc).is_empty(), "only ICD-10 systems are read as ICD-10");
    }

    #[test]
    fn labelling_adds_once_and_keeps_existing() {
        let mut c = json!({"resourceType": "Condition", "meta": {"security": [{"system": "x", "code": "R"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F20"}]}});
        assert!(label(&mut c));
        assert!(!label(&mut c), "second pass changes nothing");
        assert_eq!(labels(&c), ["PSY"]);
        assert_eq!(c["meta"]["security"].as_array().unwrap().len(), 2);
        assert_eq!(level(&labels(&c), true), 5);
        assert_eq!(level(&[], true), 3);
    }
}
