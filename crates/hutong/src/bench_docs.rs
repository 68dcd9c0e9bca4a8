//! Collection benchmarks of issue 5: `hutong bench cda` (WS/T 500 documents stored and
//! extracted, target ≥ 300 documents/s for typical 20–50 KB documents) and `hutong bench
//! register` (a population-register CSV imported and linked by the master patient index,
//! target ≥ 50,000 persons/s including the linkage). In process, on the embedded store (or
//! `--database`), through the same engine calls as `POST /cda` and `hutong import`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::Ctx;

use crate::{StoreArgs, engine_for, open_store};

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// A valid 18-digit GB 11643 number for a synthetic person.
fn id_number(rng: &mut StdRng, division: &str, birth: &str) -> String {
    let body = format!("{division}{birth}{:03}", rng.random_range(0..1000));
    let check = crypto::idnum::check_character(&body).unwrap_or('0');
    format!("{body}{check}")
}

const FAMILY: &[&str] = &["林", "陈", "黄", "张", "李", "王", "吴", "刘", "蔡", "杨", "郑", "许"];
const GIVEN: &[&str] = &["建国", "秀英", "志强", "丽华", "明", "芳", "伟", "静", "海燕", "晓东", "玉兰", "国平"];
const COMPLAINTS: &[&str] = &["头晕三天", "咳嗽一周", "胸闷气短两天", "血糖控制不佳", "腰痛半月", "复诊取药"];
const DIAGNOSES: &[(&str, &str)] = &[
    ("I10", "特发性(原发性)高血压"),
    ("E11.9", "2型糖尿病"),
    ("J06.9", "急性上呼吸道感染"),
    ("M54.5", "腰痛"),
    ("I25.1", "动脉硬化性心脏病"),
];
/// Laboratory items: code, name, unit, low, high.
const LABS: &[(&str, &str, &str, f64, f64)] = &[
    ("DE04.50.001.00", "白细胞计数", "10*9/L", 3.5, 9.5),
    ("DE04.50.002.00", "红细胞计数", "10*12/L", 4.3, 5.8),
    ("DE04.50.003.00", "血红蛋白", "g/L", 130.0, 175.0),
    ("DE04.50.004.00", "血小板计数", "10*9/L", 125.0, 350.0),
    ("DE04.50.005.00", "空腹血糖", "mmol/L", 3.9, 6.1),
    ("DE04.50.006.00", "总胆固醇", "mmol/L", 2.8, 5.2),
];
const NARRATIVE: &str = "患者自述近期症状反复，无发热，无恶心呕吐，饮食睡眠一般，大小便正常。既往体健，否认药物过敏史。\
体格检查：神志清楚，精神可，心肺听诊未见明显异常，腹软无压痛，双下肢无水肿。处理意见：规律服药，低盐低脂饮食，\
适当运动，监测血压血糖，两周后门诊复诊，如有不适随时就诊。";

/// One synthetic WS/T 500 C0002 outpatient record of about `kb` KB: the header, chief complaint,
/// vital signs, laboratory results, diagnosis and medication, each section with its narrative.
fn document(rng: &mut StdRng, n: usize, patient: usize, kb: usize) -> String {
    // The patient's own facts come from the patient's seed, so every document of one patient
    // names the same person (the same birth date and ID number).
    let mut person = StdRng::seed_from_u64(patient as u64);
    let birth = format!(
        "{}{:02}{:02}",
        person.random_range(1940..2010),
        person.random_range(1..13),
        person.random_range(1..29)
    );
    let id = id_number(&mut person, "350102", &birth);
    let name = format!("{}{}", FAMILY[patient % FAMILY.len()], GIVEN[(patient / FAMILY.len()) % GIVEN.len()]);
    let day = format!("202611{:02}", 1 + n % 28);
    let (dx, dx_name) = DIAGNOSES[rng.random_range(0..DIAGNOSES.len())];
    let complaint = COMPLAINTS[rng.random_range(0..COMPLAINTS.len())];
    // Narrative paragraphs fill each section's text to the document size wanted.
    let paragraphs = (kb * 1024 / 5 / NARRATIVE.len()).max(1);
    let text = || {
        format!(
            "<text>{}</text>",
            (0..paragraphs).map(|_| format!("<paragraph>{NARRATIVE}</paragraph>")).collect::<String>()
        )
    };
    let labs: String = LABS
        .iter()
        .map(|(code, name, unit, low, high)| {
            let value = low + (high - low) * rng.random_range(-0.2..1.2);
            format!(
                r#"<entry><observation classCode="OBS" moodCode="EVN"><code code="{code}" codeSystem="2.16.156.10011.2.2.1" displayName="{name}"/><effectiveTime value="{day}083000"/><value xsi:type="PQ" value="{value:.1}" unit="{unit}"/></observation></entry>"#
            )
        })
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<realmCode code="CN"/><typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/><templateId root="2.16.156.10011.2.1.1.22"/>
<id root="2.16.156.10011.1.1" extension="BENCH-{n:09}"/>
<code code="C0002" codeSystem="2.16.156.10011.2.4" codeSystemName="卫生信息共享文档编码体系"/><title>门(急)诊病历</title>
<effectiveTime value="{day}093000"/><confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/><languageCode code="zh-CN"/>
<recordTarget typeCode="RCT"><patientRole classCode="PAT"><id root="2.16.156.10011.1.11" extension="HR{patient:08}"/>
<id root="2.16.156.10011.1.12" extension="MZ{n:09}"/><patient classCode="PSN" determinerCode="INSTANCE">
<id root="2.16.156.10011.1.3" extension="{id}"/><name>{name}</name>
<administrativeGenderCode code="{sex}" codeSystem="2.16.156.10011.2.3.3.4"/><birthTime value="{birth}"/></patient></patientRole></recordTarget>
<author typeCode="AUT"><time value="{day}093000"/><assignedAuthor classCode="ASSIGNED"><id root="2.16.156.10011.1.7" extension="D{doctor:04}"/><assignedPerson><name>陈医生</name></assignedPerson></assignedAuthor></author>
<custodian typeCode="CST"><assignedCustodian classCode="ASSIGNED"><representedCustodianOrganization classCode="ORG" determinerCode="INSTANCE"><id root="2.16.156.10011.1.5" extension="12350100MB0000001Y"/><name>福州市第一医院</name></representedCustodianOrganization></assignedCustodian></custodian>
<componentOf><encompassingEncounter><id root="2.16.156.10011.1.12" extension="MZ{n:09}"/><effectiveTime><low value="{day}090000"/><high value="{day}093000"/></effectiveTime></encompassingEncounter></componentOf>
<component><structuredBody>
<component><section><code code="10154-3" codeSystem="2.16.840.1.113883.6.1" displayName="CHIEF COMPLAINT"/>{t1}<entry><observation classCode="OBS" moodCode="EVN"><code code="DE04.01.119.00" codeSystem="2.16.156.10011.2.2.1" displayName="主诉"/><value xsi:type="ST">{complaint}</value></observation></entry></section></component>
<component><section><code code="8716-3" codeSystem="2.16.840.1.113883.6.1" displayName="VITAL SIGNS"/>{t2}<entry><observation classCode="OBS" moodCode="EVN"><code code="DE04.10.174.00" codeSystem="2.16.156.10011.2.2.1" displayName="收缩压"/><effectiveTime value="{day}091500"/><value xsi:type="PQ" value="{sys}" unit="mm[Hg]"/></observation></entry><entry><observation classCode="OBS" moodCode="EVN"><code code="DE04.10.176.00" codeSystem="2.16.156.10011.2.2.1" displayName="舒张压"/><value xsi:type="PQ" value="{dia}" unit="mm[Hg]"/></observation></entry></section></component>
<component><section><code code="30954-2" codeSystem="2.16.840.1.113883.6.1" displayName="RELEVANT DIAGNOSTIC TESTS"/>{t3}{labs}</section></component>
<component><section><code code="29548-5" codeSystem="2.16.840.1.113883.6.1" displayName="Diagnosis"/>{t4}<entry><observation classCode="OBS" moodCode="EVN"><code code="DE05.01.024.00" codeSystem="2.16.156.10011.2.2.1" displayName="西医诊断编码"/><effectiveTime value="{day}092500"/><value xsi:type="CD" code="{dx}" displayName="{dx_name}" codeSystem="2.16.156.10011.2.3.3.11" codeSystemName="ICD-10"/></observation></entry></section></component>
<component><section><code code="10160-0" codeSystem="2.16.840.1.113883.6.1" displayName="HISTORY OF MEDICATION USE"/>{t5}<entry><substanceAdministration classCode="SBADM" moodCode="EVN"><effectiveTime value="{day}"/><doseQuantity value="30" unit="mg"/><consumable><manufacturedProduct><manufacturedLabeledDrug><code/><name>硝苯地平控释片</name></manufacturedLabeledDrug></manufacturedProduct></consumable></substanceAdministration></entry></section></component>
</structuredBody></component></ClinicalDocument>"#,
        sex = if patient.is_multiple_of(2) { 1 } else { 2 },
        doctor = n % 50,
        sys = rng.random_range(105..170),
        dia = rng.random_range(65..105),
        t1 = text(),
        t2 = text(),
        t3 = text(),
        t4 = text(),
        t5 = text(),
    )
}

/// `documents` CDA documents (about `kb` KB each, for `documents / 3` patients), stored by
/// `concurrency` submitters at once through `Engine::ingest_cda` as a hospital's system client.
pub async fn cda(documents: usize, concurrency: usize, kb: usize, args: StoreArgs) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(store, &args));
    // As `serve` runs it: the master patient index follows the outbox, loaded (and its default
    // match model trained, about a second) before the clock starts, as a server has done long
    // before its first document.
    engine.mpi_sync().await?;
    tokio::spawn(engine.clone().mpi_run());
    let mut rng = StdRng::seed_from_u64(5);
    let patients = (documents / 3).max(1);
    let run = rng.random_range(0..1_000_000_000usize);
    let docs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..documents)
            .map(|n| {
                let patient = rng.random_range(0..patients);
                document(&mut rng, run + n, patient, kb).into_bytes()
            })
            .collect(),
    );
    let bytes: usize = docs.iter().map(Vec::len).sum();
    println!(
        "{documents} WS/T 500 C0002 documents, {:.1} KB on average, {patients} patients, {concurrency} at once",
        bytes as f64 / documents.max(1) as f64 / 1024.0
    );
    let next = Arc::new(AtomicUsize::new(0));
    let resources = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (engine, docs, next, resources) = (engine.clone(), docs.clone(), next.clone(), resources.clone());
        tasks.push(tokio::spawn(async move {
            let opts = engine::RequestOptions {
                return_preference: engine::ReturnPreference::Minimal,
                ..engine::RequestOptions::default()
            };
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(doc) = docs.get(i) else { break };
                let t = Instant::now();
                let answer = engine.ingest_cda(&Ctx::system(), doc, &opts).await?;
                latencies.push(t.elapsed());
                resources.fetch_add(answer["entry"].as_array().map_or(0, Vec::len), Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let resources = resources.load(Ordering::Relaxed);
    println!(
        "stored {documents} documents in {seconds:.1} s: {:.0} documents/s, {:.0} resources/s ({:.1} per document), {:.1} MB/s; \
         per document p50 {:.1} ms, p99 {:.1} ms",
        documents as f64 / seconds,
        resources as f64 / seconds,
        resources as f64 / documents.max(1) as f64,
        bytes as f64 / seconds / 1e6,
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.99)
    );
    Ok(())
}

/// A population-register CSV of `persons` rows from several institutions (the synthetic Chinese
/// records of `registry::linkage::synth`: the same person registered up to four times, with the
/// drift of real registers), imported with `hutong import`'s code while the master patient index
/// links every Patient; the time until the index has matched the last one.
pub async fn register(persons: usize, args: StoreArgs) -> anyhow::Result<()> {
    use registry::linkage::synth::{Settings, generate};
    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(store, &args));
    let records = generate(Settings { records: persons, seed: 2026 });
    let mut csv = String::with_capacity(persons * 160);
    csv.push_str(&crate::register_csv::COLUMNS.join(","));
    csv.push('\n');
    let quote =
        |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    for (i, s) in records.iter().enumerate() {
        let r = &s.record;
        let birth =
            r.birth_date.as_deref().filter(|b| b.len() == 8 && chrono::NaiveDate::parse_from_str(b, "%Y%m%d").is_ok());
        let row = [
            format!("H{:03}", i % 40),
            format!("R{i:09}"),
            r.id_number.clone().unwrap_or_default(),
            format!("{}{}", r.family.as_deref().unwrap_or(""), r.given.as_deref().unwrap_or("")),
            match r.sex {
                Some('M') => "1".into(),
                Some('F') => "2".into(),
                _ => "0".into(),
            },
            birth.unwrap_or_default().to_string(),
            "01".into(),
            String::new(),
            r.phone.clone().unwrap_or_default(),
            r.region.clone().unwrap_or_default(),
            format!("{}{}", r.locality.as_deref().unwrap_or(""), r.address.as_deref().unwrap_or("")),
        ];
        csv.push_str(&row.iter().map(|f| quote(f)).collect::<Vec<_>>().join(","));
        csv.push('\n');
    }
    std::fs::create_dir_all(&args.data)?;
    let file = args.data.join(format!("register-{}.csv", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, &csv)?;
    let true_persons = records.iter().map(|s| s.person).collect::<std::collections::HashSet<_>>().len();
    println!("{persons} register rows ({} MB) for {true_persons} persons", csv.len() / 1_000_000);
    let worker = tokio::spawn(engine.clone().mpi_run());
    let started = Instant::now();
    let summary = crate::import::run(engine.clone(), &args.data, std::slice::from_ref(&file), false).await?;
    let imported = started.elapsed().as_secs_f64();
    anyhow::ensure!(summary.failures.is_empty(), "import failures: {:?}", summary.failures);
    // The index is current once a step finds nothing new.
    while engine.mpi_sync().await? > 0 {}
    let linked = started.elapsed().as_secs_f64();
    worker.abort();
    std::fs::remove_file(&file)?;
    println!(
        "imported {} Patients in {imported:.1} s ({:.0} persons/s); linked by the index after {linked:.1} s: \
         {:.0} persons/s including the linkage",
        summary.resources,
        summary.resources as f64 / imported,
        summary.resources as f64 / linked
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's documents are valid C0002 records: every section the type requires is
    /// there (by its LOINC code), so the benchmark measures accepted documents.
    #[test]
    fn benchmark_documents_carry_the_sections_their_type_requires() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in 0..4 {
            let xml = document(&mut rng, n, n / 2, 2);
            let d = cda::parse(&xml).unwrap_or_else(|e| panic!("document {n}: {e}"));
            assert_eq!(d.type_code, "C0002");
            let required = cda::wst500_required_sections("C0002");
            assert!(!required.is_empty());
            for section in required {
                assert!(xml.contains(&format!("code=\"{}\" codeSystem=\"{}\"", section.loinc, cda::LOINC)));
            }
            assert_eq!((d.diagnoses.len(), d.observations.len(), d.medications.len()), (1, 3 + LABS.len(), 1));
        }
    }
}
