//! Deterministic synthetic demo data: hospitals in Fujian, their doctors, and residents with
//! encounters, vital signs, diagnoses (ICD-10) and prescriptions. Everything is made up from a
//! seeded random generator; no real person is represented.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// GB 11643 identity-number system (`2.16.156.10011.1.3`).
pub const ID_NUMBER_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";

const FAMILY: &[&str] =
    &["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "林", "郑", "何", "高", "罗", "郭"];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英",
    "桂英", "建华", "志强", "丽华",
];
/// (division code, city, district).
const DIVISIONS: &[(&str, &str, &str)] = &[
    ("350102", "福州市", "鼓楼区"),
    ("350103", "福州市", "台江区"),
    ("350203", "厦门市", "思明区"),
    ("350206", "厦门市", "湖里区"),
    ("350502", "泉州市", "鲤城区"),
];
const HOSPITALS: &[(&str, &str, &str)] = &[
    ("org-1", "福州市第一医院", "350102"),
    ("org-2", "厦门市中心医院", "350203"),
    ("org-3", "泉州市人民医院", "350502"),
    ("org-4", "鼓楼区华大街道社区卫生服务中心", "350102"),
];
const SPECIALTIES: &[&str] = &["内科", "外科", "全科", "儿科", "心血管内科", "内分泌科"];

/// GB 11643 check character for the first 17 digits.
pub fn id_check_char(first17: &str) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17.chars().zip(WEIGHTS).map(|(c, w)| c.to_digit(10).unwrap_or(0) * w).sum();
    b"10X98765432"[(sum % 11) as usize] as char
}

fn uuid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string()
}

fn division(code: &str) -> (&'static str, &'static str) {
    DIVISIONS.iter().find(|d| d.0 == code).map_or(("福州市", "鼓楼区"), |d| (d.1, d.2))
}

/// The reference data every demo or bench data set starts with: organizations, practitioners
/// and their roles, as one transaction with fixed ids.
pub fn reference_bundle() -> Value {
    let mut entries = Vec::new();
    for (id, name, code) in HOSPITALS {
        let (city, district) = division(code);
        entries.push(put(json!({
            "resourceType": "Organization", "id": id, "active": true, "name": name,
            "identifier": [{"system": "https://hutong.dev/fhir/sid/institution-code", "value": format!("{code}{}", &id[4..])}],
            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov", "display": "医疗机构"}]}],
            "address": [{"state": "福建省", "city": city, "district": district,
                         "extension": [{"url": access::DIVISION_EXTENSION, "valueCode": code}]}],
        })));
    }
    let mut rng = StdRng::seed_from_u64(7);
    for n in 1..=12 {
        let family = FAMILY[rng.random_range(0..FAMILY.len())];
        let given = GIVEN[rng.random_range(0..GIVEN.len())];
        let id = format!("doc-{n}");
        entries.push(put(json!({
            "resourceType": "Practitioner", "id": id, "active": true,
            "name": [{"text": format!("{family}{given}"), "family": family, "given": [given]}],
            "identifier": [{"system": "https://hutong.dev/fhir/sid/practitioner-licence", "value": format!("1103501{:08}", n * 7919)}],
            "gender": if n % 2 == 0 { "female" } else { "male" },
        })));
        let org = HOSPITALS[(n - 1) % HOSPITALS.len()].0;
        entries.push(put(json!({
            "resourceType": "PractitionerRole", "id": format!("role-{n}"), "active": true,
            "practitioner": {"reference": format!("Practitioner/{id}")},
            "organization": {"reference": format!("Organization/{org}")},
            "specialty": [{"text": SPECIALTIES[n % SPECIALTIES.len()]}],
        })));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn put(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap_or_default(),
        resource["id"].as_str().unwrap_or_default()
    );
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

fn post(full_url: &str, resource: Value) -> Value {
    let ty = resource["resourceType"].as_str().unwrap_or_default().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": ty}})
}

/// One resident and their records as a transaction Bundle with `urn:uuid:` full URLs (the
/// shape Synthea and hospital systems send). `extra_observations` adds that many more
/// glucose readings (to make large patients for `$everything` benchmarks).
pub fn resident_bundle(rng: &mut StdRng, extra_observations: usize) -> Value {
    let patient_url = format!("urn:uuid:{}", uuid(rng));
    let family = FAMILY[rng.random_range(0..FAMILY.len())];
    let given = GIVEN[rng.random_range(0..GIVEN.len())];
    let (code, city, district) = DIVISIONS[rng.random_range(0..DIVISIONS.len())];
    let (year, month, day) = (rng.random_range(1935..2020), rng.random_range(1..=12), rng.random_range(1..=28));
    let sequence: u32 = rng.random_range(1..999);
    let male = sequence % 2 == 1;
    let first17 = format!("{code}{year:04}{month:02}{day:02}{sequence:03}");
    let id_number = format!("{first17}{}", id_check_char(&first17));
    let phone = format!("13{:09}", rng.random_range(0..1_000_000_000u64));
    let mut entries = vec![post(
        &patient_url,
        json!({
            "resourceType": "Patient", "active": true,
            "identifier": [{"use": "official", "system": ID_NUMBER_SYSTEM, "value": id_number,
                            "type": {"text": "居民身份证"}}],
            "name": [{"use": "official", "text": format!("{family}{given}"), "family": family, "given": [given]}],
            "gender": if male { "male" } else { "female" },
            "birthDate": format!("{year:04}-{month:02}-{day:02}"),
            "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
            "address": [{"use": "home", "state": "福建省", "city": city, "district": district,
                         "extension": [{"url": access::DIVISION_EXTENSION, "valueCode": code}],
                         "line": [format!("{}路{}号", ["八一七", "湖东", "鹭江", "中山"][rng.random_range(0..4)], rng.random_range(1..300))]}],
            "managingOrganization": {"reference": format!("Organization/{}", HOSPITALS[rng.random_range(0..HOSPITALS.len())].0)},
        }),
    )];
    let hypertension = rng.random_bool(0.3);
    let diabetes = rng.random_bool(0.15);
    let visits = rng.random_range(1..=3);
    for v in 0..visits {
        let encounter_url = format!("urn:uuid:{}", uuid(rng));
        let org = HOSPITALS[rng.random_range(0..HOSPITALS.len())].0;
        let doctor = rng.random_range(1..=12);
        let date = format!("2024-{:02}-{:02}", rng.random_range(1..=12), rng.random_range(1..=28));
        let start = format!("{date}T{:02}:{:02}:00+08:00", rng.random_range(8..17), rng.random_range(0..60));
        entries.push(post(
            &encounter_url,
            json!({
                "resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "门诊"},
                "type": [{"text": "门诊就诊"}],
                "subject": {"reference": patient_url},
                "participant": [{"individual": {"reference": format!("Practitioner/doc-{doctor}")}}],
                "period": {"start": start, "end": start},
                "serviceProvider": {"reference": format!("Organization/{org}")},
            }),
        ));
        let systolic = rng.random_range(100..170);
        let diastolic = rng.random_range(60..105);
        entries.push(post(
            &format!("urn:uuid:{}", uuid(rng)),
            json!({
                "resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}], "text": "血压"},
                "subject": {"reference": patient_url}, "encounter": {"reference": encounter_url},
                "effectiveDateTime": start,
                "performer": [{"reference": format!("Practitioner/doc-{doctor}")}],
                "component": [
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
                     "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
                     "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
                ],
            }),
        ));
        let glucose = f64::from(rng.random_range(40..120)) / 10.0;
        entries.push(post(&format!("urn:uuid:{}", uuid(rng)), glucose_observation(&patient_url, &start, glucose)));
        if v == 0 && (hypertension || diabetes) {
            let (icd, name, drug) = if hypertension {
                ("I10", "特发性(原发性)高血压", "硝苯地平控释片")
            } else {
                ("E11.9", "2型糖尿病,不伴有并发症", "盐酸二甲双胍片")
            };
            entries.push(post(
                &format!("urn:uuid:{}", uuid(rng)),
                json!({
                    "resourceType": "Condition",
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd, "display": name}], "text": name},
                    "subject": {"reference": patient_url}, "encounter": {"reference": encounter_url},
                    "onsetDateTime": date, "recordedDate": date,
                }),
            ));
            entries.push(post(
                &format!("urn:uuid:{}", uuid(rng)),
                json!({
                    "resourceType": "MedicationRequest", "status": "active", "intent": "order",
                    "medicationCodeableConcept": {"text": drug},
                    "subject": {"reference": patient_url}, "encounter": {"reference": encounter_url},
                    "authoredOn": date,
                    "requester": {"reference": format!("Practitioner/doc-{doctor}")},
                    "dosageInstruction": [{"text": "每日一次,每次一片"}],
                }),
            ));
        }
    }
    for n in 0..extra_observations {
        let time = format!("2023-{:02}-{:02}T07:{:02}:00+08:00", n % 12 + 1, n % 28 + 1, n % 60);
        let glucose = f64::from(rng.random_range(40..120)) / 10.0;
        entries.push(post(&format!("urn:uuid:{}", uuid(rng)), glucose_observation(&patient_url, &time, glucose)));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn glucose_observation(patient_url: &str, time: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}], "text": "血糖"},
        "subject": {"reference": patient_url},
        "effectiveDateTime": time,
        "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    })
}

/// The demo data set: reference data plus `residents` resident bundles, deterministic.
pub fn demo_bundles(residents: usize) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(20_181_122);
    let mut out = vec![reference_bundle()];
    out.extend((0..residents).map(|_| resident_bundle(&mut rng, 0)));
    let registrations = re_registrations(&out[1..]);
    out.push(registrations);
    out
}

/// The same residents registered again at another hospital, as hospital systems do (their own
/// record number; sometimes no ID number, a name written differently, a new phone), so the
/// master patient index has records to link and possible matches for its review queue: every
/// 10th resident with the ID number (linked), every 10th + 3 without it but with the same phone
/// (linked on name, birth date and phone), every 10th + 6 without ID number, with a new phone
/// and the birth date's day and month swapped where that is a date (a possible match to
/// review, or a link when the address says enough).
fn re_registrations(residents: &[Value]) -> Value {
    let mut entries = Vec::new();
    for (i, bundle) in residents.iter().enumerate() {
        let variant = match i % 10 {
            0 => 0,
            3 => 1,
            6 => 2,
            _ => continue,
        };
        let original = &bundle["entry"][0]["resource"];
        let hospital = HOSPITALS[(i / 10 + 1) % HOSPITALS.len()].0;
        let mrn = format!("MZ{:06}", 100_000 + i * 7);
        let mut p = json!({
            "resourceType": "Patient", "id": format!("reg-{hospital}-{mrn}"), "active": true,
            "identifier": [{"use": "usual", "system": format!("https://hutong.dev/fhir/sid/{hospital}/mrn"), "value": mrn,
                            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "name": original["name"], "gender": original["gender"], "birthDate": original["birthDate"],
            "telecom": original["telecom"], "address": original["address"],
            "managingOrganization": {"reference": format!("Organization/{hospital}")},
        });
        match variant {
            0 => p["identifier"].as_array_mut().expect("array").push(original["identifier"][0].clone()),
            1 => {}
            _ => {
                let birth = original["birthDate"].as_str().unwrap_or("1970-01-01");
                let swapped = format!("{}-{}-{}", &birth[..4], &birth[8..10], &birth[5..7]);
                if swapped[5..7].parse::<u32>().unwrap_or(13) <= 12 {
                    p["birthDate"] = json!(swapped);
                }
                p["telecom"] =
                    json!([{"system": "phone", "value": format!("159{:08}", i * 7919 % 100_000_000), "use": "mobile"}]);
            }
        }
        entries.push(put(p));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_numbers_carry_valid_check_characters() {
        // A published GB 11643 example.
        assert_eq!(id_check_char("11010519491231002"), 'X');
        let mut rng = StdRng::seed_from_u64(1);
        let bundle = resident_bundle(&mut rng, 0);
        let id = bundle["entry"][0]["resource"]["identifier"][0]["value"].as_str().unwrap();
        assert_eq!(id.len(), 18);
        assert_eq!(id.chars().last().unwrap(), id_check_char(&id[..17]));
    }

    #[test]
    fn demo_data_is_valid_fhir() {
        for bundle in demo_bundles(40) {
            for entry in bundle["entry"].as_array().unwrap() {
                let issues = fhir::validate::validate(fhir::Definitions::r4(), &entry["resource"]);
                assert!(issues.is_empty(), "{}: {issues:?}", entry["resource"]);
            }
        }
    }

    #[test]
    fn demo_data_is_deterministic() {
        assert_eq!(demo_bundles(3), demo_bundles(3));
    }
}
