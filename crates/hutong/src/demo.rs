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
/// (id, name, division, institution type, level): the demo's institutions.
const HOSPITALS: &[(&str, &str, &str, &str, &str)] = &[
    ("org-1", "福州市第一医院", "350102", "hospital", "3A"),
    ("org-2", "厦门市中心医院", "350203", "hospital", "3A"),
    ("org-3", "泉州市人民医院", "350502", "hospital", "3B"),
    ("org-4", "鼓楼区华大街道社区卫生服务中心", "350102", "community-health-centre", "1A"),
];
/// The demo's 医联体: org-1 leads it, the community health centre org-4 is a member.
const ALLIANCE: (&str, &str, &[(&str, &str)]) =
    ("alliance-1", "鼓楼区紧密型医联体", &[("org-1", "lead"), ("org-4", "member")]);
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

/// GB 11714 check character of an 8-character organization code body (digits here).
fn organization_code_check(body8: &str) -> char {
    const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body8.chars().zip(WEIGHTS).map(|(c, w)| c.to_digit(36).unwrap_or(0) * w).sum();
    match 11 - sum % 11 {
        10 => 'X',
        11 => '0',
        d => char::from_digit(d, 10).unwrap_or('0'),
    }
}

/// A synthetic 统一社会信用代码 of a public institution (registration authority 1, category 2
/// 事业单位): its division, a made-up organization code with a valid GB 11714 check character,
/// and a valid GB 32100 check character. Also the institution's made-up licence registration
/// number (organization code, division, class, serial).
pub fn institution_codes(division: &str, serial: u32) -> (String, String) {
    let body = format!("{:08}", 48_800_000 + serial * 7_919);
    let organization_code = format!("{body}{}", organization_code_check(&body));
    let first17 = format!("12{division}{organization_code}");
    let check = registry::facility::credit_code_check_char(&first17).unwrap_or('0');
    (format!("{first17}{check}"), format!("{organization_code}{division}11A{serial:04}"))
}

fn coding(system: &str, code: &str) -> Value {
    json!({"coding": [{"system": system, "code": code}]})
}

/// The reference data every demo or bench data set starts with: the facility registry
/// (institutions with codes, types, levels and divisions, a 医联体 and its members, the services
/// offered) and the practitioner registry (licences, qualifications, independent-practice start
/// dates, PractitionerRoles with multi-site practice and internet-practice registration), as one
/// transaction with fixed ids. Doctors 3 and 8 have practised independently for less than three
/// years and doctor 11's practising licence has expired, so `$eligibility` has something to say.
pub fn reference_bundle() -> Value {
    use registry::facility as f;
    use registry::practitioner as p;
    let mut entries = Vec::new();
    for (serial, (id, name, code, kind, level)) in (1..).zip(HOSPITALS) {
        let (city, district) = division(code);
        let (credit_code, licence) = institution_codes(code, serial);
        entries.push(put(json!({
            "resourceType": "Organization", "id": id, "active": true, "name": name,
            "meta": {"profile": [f::ORGANIZATION_PROFILE]},
            "identifier": [{"system": f::USCC_SYSTEM, "value": credit_code},
                           {"system": f::INSTITUTION_LICENCE_SYSTEM, "value": licence}],
            "type": [coding(f::INSTITUTION_TYPE_SYSTEM, kind),
                     {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov", "display": "医疗机构"}]}],
            "extension": [{"url": f::INSTITUTION_LEVEL_EXTENSION, "valueCoding": {"system": f::INSTITUTION_LEVEL_SYSTEM, "code": level}}],
            "address": [{"state": "福建省", "city": city, "district": district,
                         "extension": [{"url": access::DIVISION_EXTENSION, "valueCode": code}]}],
        })));
        let (service, category) = if *kind == "hospital" {
            ("互联网复诊", "互联网诊疗")
        } else {
            ("家庭医生签约服务", "基本公共卫生服务")
        };
        entries.push(put(json!({
            "resourceType": "HealthcareService", "id": format!("service-{}", &id[4..]), "active": true,
            "providedBy": {"reference": format!("Organization/{id}")},
            "category": [{"text": category}], "type": [{"text": service}], "name": format!("{name}{service}"),
        })));
    }
    let (alliance, alliance_name, members) = ALLIANCE;
    entries.push(put(json!({
        "resourceType": "Organization", "id": alliance, "active": true, "name": alliance_name,
        "meta": {"profile": [f::ORGANIZATION_PROFILE]},
        "type": [coding(f::INSTITUTION_TYPE_SYSTEM, "medical-alliance")],
        "address": [{"state": "福建省", "city": "福州市", "district": "鼓楼区",
                     "extension": [{"url": access::DIVISION_EXTENSION, "valueCode": "350102"}]}],
    })));
    for (member, role) in members {
        entries.push(put(json!({
            "resourceType": "OrganizationAffiliation", "id": format!("{alliance}-{member}"), "active": true,
            "period": {"start": "2023-01-01"},
            "organization": {"reference": format!("Organization/{alliance}")},
            "participatingOrganization": {"reference": format!("Organization/{member}")},
            "code": [coding(f::ALLIANCE_ROLE_SYSTEM, role)],
        })));
    }
    let mut rng = StdRng::seed_from_u64(7);
    for n in 1..=12 {
        let family = FAMILY[rng.random_range(0..FAMILY.len())];
        let given = GIVEN[rng.random_range(0..GIVEN.len())];
        let id = format!("doc-{n}");
        let (org, _, org_division, _, _) = HOSPITALS[(n - 1) % HOSPITALS.len()];
        let specialty = SPECIALTIES[n % SPECIALTIES.len()];
        let practice_number = format!("1103501{:08}", n * 7919);
        let qualified = 2000 + n;
        let independent = match n {
            3 => "2024-09-01".to_string(),
            8 => "2025-03-01".to_string(),
            _ => format!("{}-07-01", qualified + 3),
        };
        let licence_end = if n == 11 { json!("2025-12-31") } else { Value::Null };
        let mut licence_period = json!({"start": format!("{}-07-01", qualified + 1)});
        if !licence_end.is_null() {
            licence_period["end"] = licence_end;
        }
        entries.push(put(json!({
            "resourceType": "Practitioner", "id": id, "active": true,
            "meta": {"profile": [p::PRACTITIONER_PROFILE]},
            "name": [{"text": format!("{family}{given}"), "family": family, "given": [given]}],
            "identifier": [{"system": p::PRACTICE_CERTIFICATE_SYSTEM, "value": practice_number},
                           {"system": p::QUALIFICATION_CERTIFICATE_SYSTEM, "value": format!("{qualified}11{org_division}{:012}", n * 104_729)}],
            "gender": if n % 2 == 0 { "female" } else { "male" },
            "extension": [{"url": p::INDEPENDENT_PRACTICE_START_EXTENSION, "valueDate": independent}],
            "qualification": [
                {"code": coding(p::QUALIFICATION_TYPE_SYSTEM, "physician-qualification"),
                 "identifier": [{"system": p::QUALIFICATION_CERTIFICATE_SYSTEM, "value": format!("{qualified}11{org_division}{:012}", n * 104_729)}],
                 "period": {"start": format!("{qualified}-12-01")}, "issuer": {"display": "国家卫生健康委员会"}},
                {"code": coding(p::QUALIFICATION_TYPE_SYSTEM, p::PRACTISING_LICENCE),
                 "identifier": [{"system": p::PRACTICE_CERTIFICATE_SYSTEM, "value": practice_number}],
                 "period": licence_period, "issuer": {"display": "福建省卫生健康委员会"},
                 "extension": [{"url": p::PRACTICE_SCOPE_EXTENSION, "valueCodeableConcept": {"text": format!("临床类别 {specialty}专业")}}]},
            ],
        })));
        // The primary site: prescribing right everywhere, internet practice for two in three.
        let mut codes = vec!["primary-site", "prescribing-right"];
        if n % 3 != 0 {
            codes.push("internet-practice");
        }
        entries.push(put(practitioner_role(
            &format!("role-{n}"),
            &id,
            org,
            specialty,
            &format!("{}-07-01", qualified + 1),
            &codes,
        )));
        // Multi-site practice (多点执业) for doctors 1, 2 and 5; doctor 2 also sees patients
        // online for the second institution.
        if matches!(n, 1 | 2 | 5) {
            let second = HOSPITALS[n % HOSPITALS.len()].0;
            let codes: &[&str] = if n == 2 { &["additional-site", "internet-practice"] } else { &["additional-site"] };
            entries.push(put(practitioner_role(&format!("role-{n}-2"), &id, second, specialty, "2024-03-01", codes)));
        }
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn practitioner_role(
    id: &str,
    practitioner: &str,
    organization: &str,
    specialty: &str,
    start: &str,
    codes: &[&str],
) -> Value {
    let coding: Vec<Value> =
        codes.iter().map(|c| json!({"system": registry::practitioner::REGISTRATION_SYSTEM, "code": c})).collect();
    json!({
        "resourceType": "PractitionerRole", "id": id, "active": true,
        "period": {"start": start},
        "practitioner": {"reference": format!("Practitioner/{practitioner}")},
        "organization": {"reference": format!("Organization/{organization}")},
        "code": [{"coding": coding}],
        "specialty": [{"text": specialty}],
    })
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
        // Most visits were booked ahead (fewer at the community health centre): the booking-rate
        // KPI has something to count. Decided without the random generator, so the rest of the
        // data set stays as it was.
        let booked_ahead = if org == "org-4" { (doctor + v) % 2 == 0 } else { (doctor + v) % 7 != 0 };
        let mut encounter = json!({
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "门诊"},
            "type": [{"text": "门诊就诊"}],
            "serviceType": {"text": SPECIALTIES[doctor % SPECIALTIES.len()]},
            "subject": {"reference": patient_url},
            "participant": [{"individual": {"reference": format!("Practitioner/doc-{doctor}")}}],
            "period": {"start": start, "end": start},
            "serviceProvider": {"reference": format!("Organization/{org}")},
        });
        if booked_ahead {
            let appointment_id = format!("appt-{}", &encounter_url["urn:uuid:".len()..]);
            encounter["appointment"] = json!([{"reference": format!("Appointment/{appointment_id}")}]);
            entries.push(put(json!({
                "resourceType": "Appointment", "id": appointment_id, "status": "fulfilled",
                "serviceType": [{"text": SPECIALTIES[doctor % SPECIALTIES.len()]}],
                "start": start, "end": start,
                "participant": [
                    {"actor": {"reference": patient_url}, "status": "accepted"},
                    {"actor": {"reference": format!("Practitioner/doc-{doctor}")}, "status": "accepted"}
                ],
            })));
        }
        entries.push(post(&encounter_url, encounter));
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

/// The demo's outpatient schedules (one per doctor, at the doctor's primary hospital) and
/// their Slots in the booking pool for the 7 days after `today` (five 30-minute slots a day,
/// Beijing time), as one transaction with fixed ids. Every fourth doctor keeps the 10:30 slot
/// for the hospital's window (`booking-channel` `window`), so the pool shows both channels.
pub fn scheduling_bundle(today: chrono::NaiveDate) -> Value {
    let mut entries = Vec::new();
    for n in 1..=12 {
        let (org, hospital, ..) = HOSPITALS[(n - 1) % HOSPITALS.len()];
        let specialty = SPECIALTIES[n % SPECIALTIES.len()];
        let schedule = format!("sched-{n}");
        entries.push(put(json!({
            "resourceType": "Schedule", "id": schedule, "active": true,
            "serviceCategory": [{"text": "门诊"}],
            "serviceType": [{"text": format!("{specialty}门诊")}],
            "specialty": [{"text": specialty}],
            "actor": [{"reference": format!("Practitioner/doc-{n}")}, {"reference": format!("PractitionerRole/role-{n}")}],
            "comment": format!("{hospital} {specialty}"),
            "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/schedule-organization",
                           "valueReference": {"reference": format!("Organization/{org}")}}],
        })));
        for day in 1..=7 {
            let date = today + chrono::Days::new(day);
            for (hour, minute) in [(8, 30), (9, 30), (10, 30), (14, 30), (15, 30)] {
                let start = format!("{date}T{hour:02}:{minute:02}:00+08:00");
                let end = format!("{date}T{hour:02}:{:02}:00+08:00", minute + 29);
                let mut slot = json!({
                    "resourceType": "Slot", "id": format!("slot-{n}-{}-{hour:02}{minute:02}", date.format("%Y%m%d")),
                    "schedule": {"reference": format!("Schedule/{schedule}")}, "status": "free",
                    "serviceType": [{"text": format!("{specialty}门诊")}],
                    "start": start, "end": end,
                });
                if n % 4 == 0 && hour == 10 {
                    slot["extension"] = json!([{"url": "https://hutong.dev/fhir/StructureDefinition/booking-channel", "valueCode": "window"}]);
                }
                entries.push(put(slot));
            }
        }
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Results for the demo resident's portal: a blood count with its three results and a chest
/// X-ray report, issued by 福州市第一医院 two days before `now`.
pub fn resident_reports(patient: &str, now: chrono::DateTime<chrono::Utc>) -> Value {
    let issued = (now - chrono::Duration::days(2)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let subject = json!({"reference": format!("Patient/{patient}")});
    let lab = |code: &str, display: &str, text: &str, value: f64, unit: &str, low: f64, high: f64| {
        json!({
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": text},
            "subject": subject, "effectiveDateTime": issued, "issued": issued,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            "referenceRange": [{"low": {"value": low, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                                "high": {"value": high, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}],
        })
    };
    let results = [
        (
            "urn:uuid:8f0d2a9e-0000-4000-8000-000000000001",
            lab("6690-2", "Leukocytes [#/volume] in Blood", "白细胞计数", 6.2, "10*9/L", 3.5, 9.5),
        ),
        (
            "urn:uuid:8f0d2a9e-0000-4000-8000-000000000002",
            lab("718-7", "Hemoglobin [Mass/volume] in Blood", "血红蛋白", 128.0, "g/L", 115.0, 150.0),
        ),
        (
            "urn:uuid:8f0d2a9e-0000-4000-8000-000000000003",
            lab("777-3", "Platelets [#/volume] in Blood", "血小板计数", 210.0, "10*9/L", 125.0, 350.0),
        ),
    ];
    let mut entries: Vec<Value> = results.iter().map(|(url, r)| post(url, r.clone())).collect();
    let category = |code: &str, display: &str| json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": code, "display": display}]}]);
    entries.push(post(
        "urn:uuid:8f0d2a9e-0000-4000-8000-000000000004",
        json!({
            "resourceType": "DiagnosticReport", "status": "final", "category": category("HM", "Hematology"),
            "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel - Blood by Automated count"}], "text": "血常规"},
            "subject": subject, "effectiveDateTime": issued, "issued": issued,
            "performer": [{"reference": "Organization/org-1", "display": "福州市第一医院"}],
            "result": results.iter().map(|(url, _)| json!({"reference": url})).collect::<Vec<_>>(),
            "conclusion": "血常规各项指标在参考范围内。",
        }),
    ));
    entries.push(post(
        "urn:uuid:8f0d2a9e-0000-4000-8000-000000000005",
        json!({
            "resourceType": "DiagnosticReport", "status": "final", "category": category("RAD", "Radiology"),
            "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"}], "text": "胸部X线检查"},
            "subject": subject, "effectiveDateTime": issued, "issued": issued,
            "performer": [{"reference": "Organization/org-1", "display": "福州市第一医院"}],
            "conclusion": "两肺纹理清晰，未见明显实质性病变。心影大小正常。",
        }),
    ));
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// The demo's internet hospital (issue 7), for `hutong serve --demo`: a retail pharmacy on the
/// facility registry (`pharmacy-1`), the hospital pharmacist of 福州市第一医院 who reviews
/// prescriptions (`pharm-1`), and for the demo resident a confirmed, active hypertension (I10)
/// diagnosed at an outpatient visit of 福州市第一医院 a month before `now`: the offline diagnosis
/// a follow-up visit needs, with drugs for it in the demo catalogue.
pub fn internet_hospital_bundle(patient: &str, now: chrono::DateTime<chrono::Utc>) -> Value {
    use registry::facility as f;
    let visit = (now - chrono::Duration::days(30)).format("%Y-%m-%dT09:30:00+08:00").to_string();
    let day = &visit[..10];
    let (credit_code, _) = institution_codes("350102", 9);
    let encounter_url = "urn:uuid:8f0d2a9e-0000-4000-8000-000000000101";
    let entries = vec![
        put(json!({
            "resourceType": "Organization", "id": "pharmacy-1", "active": true, "name": "鼓楼区惠民大药房",
            "meta": {"profile": [f::ORGANIZATION_PROFILE]},
            "identifier": [{"system": f::USCC_SYSTEM, "value": credit_code}],
            "type": [coding(f::INSTITUTION_TYPE_SYSTEM, "pharmacy")],
            "address": [{"state": "福建省", "city": "福州市", "district": "鼓楼区", "line": ["八一七北路88号"],
                         "extension": [{"url": access::DIVISION_EXTENSION, "valueCode": "350102"}]}],
        })),
        put(json!({
            "resourceType": "Practitioner", "id": "pharm-1", "active": true,
            "name": [{"text": "陈静", "family": "陈", "given": ["静"]}], "gender": "female",
            "qualification": [{"code": {"text": "执业药师"}}],
        })),
        post(
            encounter_url,
            json!({
                "resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "门诊"},
                "type": [{"text": "门诊就诊"}], "serviceType": {"text": "心血管内科"},
                "subject": {"reference": format!("Patient/{patient}")},
                "participant": [{"individual": {"reference": "Practitioner/doc-1"}}],
                "period": {"start": visit, "end": visit},
                "serviceProvider": {"reference": "Organization/org-1"},
            }),
        ),
        post(
            "urn:uuid:8f0d2a9e-0000-4000-8000-000000000102",
            json!({
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10", "display": "原发性高血压"}], "text": "原发性高血压"},
                "subject": {"reference": format!("Patient/{patient}")}, "encounter": {"reference": encounter_url},
                "onsetDateTime": day, "recordedDate": day,
            }),
        ),
    ];
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
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
    fn demo_schedules_and_reports_are_valid_fhir() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let scheduling = scheduling_bundle(today);
        let slots: Vec<&Value> = scheduling["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Slot")
            .collect();
        assert_eq!(slots.len(), 12 * 7 * 5, "five slots a day for a week for each of 12 doctors");
        assert_eq!(slots[0]["resource"]["start"], "2026-12-02T08:30:00+08:00", "from tomorrow, Beijing time");
        for bundle in [scheduling.clone(), resident_reports("p1", now), internet_hospital_bundle("p1", now)] {
            for entry in bundle["entry"].as_array().unwrap() {
                let issues = fhir::validate::validate(fhir::Definitions::r4(), &entry["resource"]);
                assert!(issues.is_empty(), "{}: {issues:?}", entry["resource"]);
            }
        }
    }

    #[test]
    fn demo_reference_data_follows_the_registry_rules() {
        let bundle = reference_bundle();
        let mut practitioners = Vec::new();
        let mut roles = Vec::new();
        for entry in bundle["entry"].as_array().unwrap() {
            let r = &entry["resource"];
            let problems = match r["resourceType"].as_str().unwrap() {
                "Organization" => registry::facility::validate_organization(r),
                "OrganizationAffiliation" => registry::facility::validate_affiliation(r),
                "Practitioner" => {
                    practitioners.push(r.clone());
                    registry::practitioner::validate_practitioner(r)
                }
                "PractitionerRole" => {
                    roles.push(r.clone());
                    registry::practitioner::validate_practitioner_role(r)
                }
                _ => Vec::new(),
            };
            assert!(problems.is_empty(), "{r}: {problems:?}");
        }
        let (credit_code, _) = institution_codes("350102", 1);
        assert_eq!(registry::facility::validate_credit_code(&credit_code), Ok(()));
        // Some doctors may consult online for their first institution, some may not, each for
        // a stated reason.
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let answers: Vec<bool> = practitioners
            .iter()
            .enumerate()
            .map(|(i, doctor)| {
                let facts = registry::practitioner::facts_from_fhir(doctor, &roles);
                let org = HOSPITALS[i % HOSPITALS.len()].0;
                registry::practitioner::eligibility(&facts, org, registry::practitioner::Activity::Consult, day)
                    .eligible()
            })
            .collect();
        assert_eq!(answers.iter().filter(|a| **a).count(), 6, "{answers:?}");
    }

    #[test]
    fn demo_data_is_deterministic() {
        assert_eq!(demo_bundles(3), demo_bundles(3));
    }
}
