//! `hutong bench rx`: the internet hospital's prescribing path (issue 7 targets: sign + rule
//! checks + store p99 ≤ 30 ms with a 5,000-drug catalogue and 50,000 interaction pairs; review
//! queue listing p99 ≤ 20 ms with 100,000 pending prescriptions). In process, on the embedded
//! store (or `--database`): the engine's `MedicationRequest/$prescribe` with a doctor's principal
//! (visit, eligibility, patient facts from the store, checks, SM2 signature, one transaction),
//! then the review queue a pharmacist lists (`Task?code=rx-review&status=requested&owner=…`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use access::{Principal, Role, Scopes};
use crypto::KeyRing;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rx::{Catalogue, Category, Drug, Knowledge, Severity};
use serde_json::{Value, json};
use store::Ctx;

use crate::{StoreArgs, engine_for, open_store};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// The demo catalogue grown to `drugs` with synthetic ordinary drugs in 200 classes, and the
/// demo interactions grown to `pairs` random pairs among them.
fn knowledge_base(drugs: usize, pairs: usize, rng: &mut StdRng) -> (Catalogue, Knowledge) {
    let mut catalogue = Catalogue::demo();
    let start = catalogue.len();
    for n in start..drugs {
        catalogue.insert(Drug {
            code: format!("S{n:05}"),
            name: format!("合成药品{n}"),
            category: Category::Western,
            form: "tablet".into(),
            strength_mg: 10.0,
            control: None,
            class: Some(format!("X{:03}", n % 200)),
            max_daily_mg: Some(100.0),
            child_mg_per_kg_day: None,
            min_age: None,
            max_age: None,
            sex: None,
            contraindications: vec![format!("Z{:02}", n % 90)],
            allergy_class: None,
            chronic: n % 3 == 0,
        });
    }
    let mut knowledge = Knowledge::demo();
    while knowledge.len() < pairs {
        let (a, b) = (rng.random_range(start..drugs), rng.random_range(start..drugs));
        if a != b {
            let severity = if rng.random_bool(0.5) { Severity::Major } else { Severity::Moderate };
            knowledge.add(Knowledge::pair(
                &format!("S{a:05}"),
                &format!("S{b:05}"),
                severity,
                "合成相互作用",
                "synthetic",
            ));
        }
    }
    (catalogue, knowledge)
}

fn doctor() -> Ctx {
    staff(Role::Doctor, "bench-d1")
}

fn staff(role: Role, practitioner: &str) -> Ctx {
    Ctx::for_principal(
        "bench-rx".into(),
        Principal {
            subject: format!("user/{practitioner}"),
            role,
            organization: Some("bench-h1".into()),
            region: Some("350102".into()),
            practitioner: Some(practitioner.into()),
            patients: Vec::new(),
            scopes: Scopes::parse("user/*.*").expect("scopes parse"),
            purpose: role.default_purpose().into(),
            break_glass: None,
        },
        None,
    )
}

/// The hospital, an eligible doctor, and `patients` patients, each with an offline diagnosis and
/// a visit in progress; answers the visit ids.
async fn fixtures(engine: &engine::Engine, patients: usize) -> anyhow::Result<Vec<String>> {
    let sys = Ctx::system();
    let opts = engine::RequestOptions::default();
    let licence = json!({"code": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/qualification-type", "code": "physician-practice"}]},
        "period": {"start": "2010-07-01", "end": "2035-06-30"}});
    let registration: Vec<Value> = ["primary-site", "internet-practice", "prescribing-right"]
        .iter()
        .map(|c| json!({"system": "https://hutong.dev/fhir/CodeSystem/practice-registration", "code": c}))
        .collect();
    for r in [
        json!({"resourceType": "Organization", "id": "bench-h1", "name": "基准医院",
            "identifier": [{"system": "https://hutong.dev/fhir/sid/uscc", "value": "12350100MB0000001Y"}],
            "type": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/institution-type", "code": "hospital"}]}],
            "address": [{"extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/gb2260-division", "valueCode": "350102"}]}]}),
        json!({"resourceType": "Practitioner", "id": "bench-d1", "active": true, "name": [{"text": "基准医生"}],
            "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/independent-practice-start", "valueDate": "2012-01-01"}],
            "qualification": [licence]}),
        json!({"resourceType": "PractitionerRole", "id": "bench-r1", "active": true, "period": {"start": "2015-01-01"},
            "practitioner": {"reference": "Practitioner/bench-d1"}, "organization": {"reference": "Organization/bench-h1"},
            "code": [{"coding": registration}]}),
    ] {
        let (ty, id) = (
            r["resourceType"].as_str().unwrap_or_default().to_string(),
            r["id"].as_str().unwrap_or_default().to_string(),
        );
        engine.update(&sys, &ty, &id, r, &opts).await?;
    }
    let mut visits = Vec::new();
    for n in 0..patients {
        let p = format!("bench-p{n}");
        for r in [
            json!({"resourceType": "Patient", "id": p, "gender": if n % 2 == 0 { "female" } else { "male" }, "birthDate": "1970-05-05"}),
            json!({"resourceType": "Encounter", "id": format!("{p}-offline"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("Patient/{p}")}}),
            json!({"resourceType": "Condition", "id": format!("{p}-htn"),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
                "subject": {"reference": format!("Patient/{p}")}, "encounter": {"reference": format!("Encounter/{p}-offline")}}),
        ] {
            let (ty, id) = (
                r["resourceType"].as_str().unwrap_or_default().to_string(),
                r["id"].as_str().unwrap_or_default().to_string(),
            );
            engine.update(&sys, &ty, &id, r, &opts).await?;
        }
        let request = json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": format!("Patient/{p}")}},
            {"name": "practitionerRole", "valueReference": {"reference": "PractitionerRole/bench-r1"}},
            {"name": "condition", "valueReference": {"reference": format!("Condition/{p}-htn")}},
            {"name": "consent", "valueBoolean": true}]});
        let visit = engine.request_follow_up(&sys, request).await?;
        let id = visit["id"].as_str().unwrap_or_default().to_string();
        let start =
            json!({"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "in-progress"}]});
        engine.visit_status(&doctor(), &id, start).await?;
        visits.push(id);
    }
    Ok(visits)
}

pub async fn rx(
    prescriptions: usize,
    concurrency: usize,
    drugs: usize,
    pairs: usize,
    pending: usize,
    args: StoreArgs,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let built = Instant::now();
    let (catalogue, knowledge) = knowledge_base(drugs, pairs, &mut rng);
    println!(
        "knowledge base: {} drugs, {} interaction pairs, built in {:.2} s",
        catalogue.len(),
        knowledge.len(),
        built.elapsed().as_secs_f64()
    );
    let first = catalogue.len().min(30);
    let store = open_store(&args).await?;
    let engine = Arc::new(
        engine_for(store, &args)
            .with_rx(engine::RxConfig { catalogue: Arc::new(catalogue), knowledge: Arc::new(knowledge) }),
    );
    // Prescriptions spread over patients as a day's online clinic would (each patient's
    // current drugs are read for the checks).
    let visits = Arc::new(fixtures(&engine, (prescriptions / 10).clamp(1, 500)).await?);
    let keys = Arc::new(KeyRing::ephemeral());

    // Prescribing: `concurrency` doctors' requests at a time, three random synthetic drugs each.
    let codes: Vec<(usize, Vec<String>)> = (0..prescriptions)
        .map(|n| (n, (0..3).map(|_| format!("S{:05}", rng.random_range(first..drugs))).collect()))
        .collect();
    let work = Arc::new(std::sync::Mutex::new(codes));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (engine, keys, work, visits) = (engine.clone(), keys.clone(), work.clone(), visits.clone());
        tasks.push(tokio::spawn(async move {
            let mut out: Vec<(Duration, bool)> = Vec::new();
            // The guard is dropped inside `and_then`, before the request.
            while let Some((n, drugs)) = work.lock().ok().and_then(|mut w| w.pop()) {
                let visit = &visits[n % visits.len()];
                let mut parameter = vec![json!({"name": "encounter", "valueReference": {"reference": format!("Encounter/{visit}")}})];
                for d in drugs {
                    parameter.push(json!({"name": "item", "part": [{"name": "drug", "valueCode": d},
                        {"name": "doseMg", "valueDecimal": 10}, {"name": "timesPerDay", "valueInteger": 2}, {"name": "days", "valueInteger": 7}]}));
                }
                let t = Instant::now();
                let ok = engine.prescribe(&doctor(), &keys, json!({"resourceType": "Parameters", "parameter": parameter})).await.is_ok();
                out.push((t.elapsed(), ok));
            }
            out
        }));
    }
    let mut latencies = Vec::new();
    let mut signed = 0;
    for t in tasks {
        for (d, ok) in t.await? {
            latencies.push(d);
            signed += usize::from(ok);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "prescribe: {} requests ({signed} signed and stored, {} refused by a check) at {concurrency} concurrent in {seconds:.1} s: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        latencies.len() - signed,
        latencies.len() as f64 / seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    // The review queue: `pending` more review Tasks, then a pharmacist's first page, 200 times.
    let sys = Ctx::system();
    let opts = engine::RequestOptions { return_preference: engine::ReturnPreference::Minimal, ..Default::default() };
    let loaded = Instant::now();
    let mut n = 0;
    while n < pending {
        let entries: Vec<Value> = (n..(n + 1000).min(pending))
            .map(|i| {
                let task = json!({"resourceType": "Task", "id": format!("bench-review-{i}"), "status": "requested", "intent": "order",
                    "code": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/internet-hospital", "code": "rx-review"}]},
                    "for": {"reference": format!("Patient/bench-p{}", i % 500)}, "owner": {"reference": "Organization/bench-h1"},
                    "authoredOn": format!("2026-{:02}-{:02}T{:02}:00:00+08:00", i % 12 + 1, i % 28 + 1, i % 24)});
                json!({"resource": task, "request": {"method": "PUT", "url": format!("Task/bench-review-{i}")}})
            })
            .collect();
        n += entries.len();
        engine.bundle(&sys, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}), &opts).await?;
    }
    if pending > 0 {
        println!("loaded {pending} pending review Tasks in {:.1} s", loaded.elapsed().as_secs_f64());
    }
    let query: Vec<(String, String)> = [
        ("code", "https://hutong.dev/fhir/CodeSystem/internet-hospital|rx-review"),
        ("status", "requested"),
        ("owner", "Organization/bench-h1"),
        // No `_sort`: the default order is the order of creation, so the first page is the
        // oldest pending reviews (sorting by a parameter costs a lookup per match, see
        // docs/BENCHMARKS.md).
        ("_count", "20"),
        // No total: the page's next link says whether there is more.
        ("_total", "none"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut listing = Vec::new();
    let mut shown = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let page = engine.search(&sys, Some("Task"), &query, &engine::RequestOptions::default()).await?;
        listing.push(t.elapsed());
        shown = page["entry"].as_array().map_or(0, Vec::len);
    }
    listing.sort();
    println!(
        "review queue search (first page of {shown}, oldest first, {} pending): p50 {:.1} ms, p99 {:.1} ms",
        pending + signed,
        percentile(&listing, 0.5),
        percentile(&listing, 0.99)
    );
    // The same through the pharmacist's `Task/$review-queue`: the hospitals reviewed for, the
    // search, and the audit record of who saw which patients.
    let pharmacist = staff(Role::Pharmacist, "bench-ph1");
    let paging = [("_count".to_string(), "20".to_string())];
    let mut listing = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let page = engine.review_queue(&pharmacist, &paging).await?;
        listing.push(t.elapsed());
        shown = page["entry"].as_array().map_or(0, Vec::len);
    }
    listing.sort();
    println!(
        "Task/$review-queue (a pharmacist, first page of {shown}, audited): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&listing, 0.5),
        percentile(&listing, 0.99)
    );
    Ok(())
}
