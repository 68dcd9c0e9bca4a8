//! `hutong bench ingest` and `hutong bench search`: the benchmarks behind docs/BENCHMARKS.md.
//!
//! `hl7` drives the MLLP listener with ORU^R01 messages from concurrent senders.
//!
//! `ingest` generates synthetic resident transaction Bundles in memory and measures, on the same
//! Bundles, the stages separately (JSON parsing; validation + index extraction; commits of the
//! prepared rows alone) and end to end through the engine, so the result shows how close
//! ingest comes to its physical limits. `search` serves a loaded store on a loopback port and
//! drives it over HTTP with concurrent clients. `terminology` times the terminology operations
//! over HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Empty};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use store::{Ctx, WriteMethod, WriteOp};

use crate::{StoreArgs, demo, engine_for, import, open_store};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Transaction-bundle ingest of synthetic residents.
    Ingest {
        /// Residents to generate (each ~8 resources; see the printed count).
        #[arg(long, default_value_t = 2000)]
        patients: usize,
        /// Extra glucose readings per resident (bigger patients).
        #[arg(long, default_value_t = 0)]
        extra_observations: usize,
        /// Random seed (vary it to load several different batches into one store).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Skip the stage-by-stage measurements; only ingest through the engine (for loading
        /// large data sets in batches).
        #[arg(long)]
        engine_only: bool,
        /// Transactions submitted at once (as several hospitals sending at the same time).
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Seal ID numbers and phones as `serve` and `import` do (keys in `<data>/keys`).
        #[arg(long)]
        sealed: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Concurrent HTTP reads and searches against a loaded store.
    Search {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Also time `Patient/{id}/$everything` alone, 50 times, for this (large) patient.
        #[arg(long)]
        everything: Option<String>,
        /// Run one kind of request only (read, identifier, observation, encounter, everything)
        /// instead of the mix (50% reads, 10% identifier, 20% observation, 10% encounter,
        /// 10% $everything).
        #[arg(long)]
        only: Option<String>,
        /// Measure without authorization and audit (the baseline the security layer's cost is
        /// measured against); by default every request carries a system client's token and is
        /// decided and audited as in production.
        #[arg(long)]
        no_auth: bool,
        /// Open sealed ID numbers and phones as `serve` does (keys in `<data>/keys`).
        #[arg(long)]
        sealed: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Record linkage on synthetic Chinese records with ground truth (`registry::linkage::synth`):
    /// training, batch linkage, accuracy, memory, and the latency of matching one more record.
    Linkage {
        /// Records to generate and link.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// The terminology operations over HTTP (system client token, audited): `$validate-code`
    /// of random ICD-10 and national codes, and `$expand` of ICD-10 with a text filter.
    Terminology {
        /// Requests of each kind.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Booking over HTTP: concurrent clients POST Appointments for published Slots (most for a
    /// free slot, some racing for one already taken); bookings/s, latency, and a check that no
    /// Slot was booked twice.
    Booking {
        /// Concurrent clients.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Slots published (each client request books one).
        #[arg(long, default_value_t = 20_000)]
        slots: usize,
        /// Share of requests that race for a slot already taken (answered 409).
        #[arg(long, default_value_t = 0.1)]
        contended: f64,
        /// Offered load in requests/s, spread evenly over the clients (open loop: each request
        /// has a scheduled time, and its latency counts from that time, so a late start is
        /// measured too). Without it every client sends its next request as soon as the last
        /// is answered (closed loop: the server's maximum, with queueing in the latency).
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// WS/T 500 CDA documents stored and extracted (`POST /cda`'s engine call), several at once.
    Cda {
        /// Documents to store.
        #[arg(long, default_value_t = 3000)]
        documents: usize,
        /// Documents submitted at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Approximate size of each document in KB (typical: 20–50).
        #[arg(long, default_value_t = 30)]
        kb: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A population-register CSV imported (`hutong import`) and linked by the master patient
    /// index; persons/s including the linkage.
    Register {
        /// Register rows (persons registered, some several times).
        #[arg(long, default_value_t = 100_000)]
        persons: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The internet hospital's prescribing path (sign + checks + store) and review-queue listing.
    Rx {
        /// Prescriptions to sign.
        #[arg(long, default_value_t = 2000)]
        prescriptions: usize,
        /// Concurrent prescribing requests.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Drugs in the catalogue.
        #[arg(long, default_value_t = 5000)]
        drugs: usize,
        /// Interaction pairs in the knowledge base.
        #[arg(long, default_value_t = 50_000)]
        pairs: usize,
        /// Extra pending review Tasks before listing the queue.
        #[arg(long, default_value_t = 100_000)]
        pending: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Online health card verification over HTTP: registers cards, issues dynamic codes with the
    /// platform key, and has concurrent clients POST `/healthcard/verify` (system client token,
    /// single use, audited as in production); verifications/s, latency, and checks that every
    /// code was accepted once and that replays are refused.
    Healthcard {
        /// Concurrent clients (terminals).
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Cards registered (codes are issued round-robin over them).
        #[arg(long, default_value_t = 1000)]
        cards: usize,
        /// Codes verified (each once).
        #[arg(long, default_value_t = 50_000)]
        codes: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The 12320 resident portal over HTTP: loads the demo into an empty store (sealed, with
    /// keys in `<data>/keys`, as `serve --demo`), signs the demo resident in through the portal's
    /// forms (SMS code from the outbox), then concurrent clients fetch the portal pages in turn;
    /// server time per page (measured inside the server), and the bytes of the first page.
    Portal {
        /// Concurrent clients (browser tabs of the signed-in resident).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// HL7 v2 ORU^R01 over MLLP: concurrent senders on loopback, each message acknowledged
    /// only after its transaction committed; messages/s and ACK latency.
    Hl7 {
        /// Concurrent MLLP connections.
        #[arg(long, default_value_t = 8)]
        senders: usize,
        /// Messages in all.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Distinct patients the results are for (the first result of each creates it).
        #[arg(long, default_value_t = 2_000)]
        patients: usize,
        /// Do not run the master patient index worker alongside (as `serve` does by default).
        #[arg(long)]
        no_mpi: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Append audit records (in batches, as the server's group commit does), then verify the
    /// whole log as `hutong audit verify` does.
    Audit {
        /// Records to append before verifying.
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(which: BenchCommand) -> anyhow::Result<()> {
    match which {
        BenchCommand::Ingest { patients, extra_observations, seed, engine_only, concurrency, sealed, store } => {
            ingest(patients, extra_observations, seed, engine_only, concurrency.max(1), sealed, store).await
        }
        BenchCommand::Search { clients, seconds, everything, only, no_auth, sealed, store } => {
            search(clients, seconds, everything, only, no_auth, sealed, store).await
        }
        BenchCommand::Audit { entries, store } => audit(entries, store).await,
        BenchCommand::Linkage { records, seed } => linkage(records, seed),
        BenchCommand::Terminology { requests, seed, store } => terminology(requests, seed, store).await,
        BenchCommand::Booking { clients, slots, contended, rate, store } => {
            booking(clients, slots, contended, rate.filter(|r| *r > 0.0), store).await
        }
        BenchCommand::Cda { documents, concurrency, kb, store } => {
            crate::bench_docs::cda(documents, concurrency.max(1), kb.max(1), store).await
        }
        BenchCommand::Register { persons, store } => crate::bench_docs::register(persons.max(1), store).await,
        BenchCommand::Rx { prescriptions, concurrency, drugs, pairs, pending, store } => {
            crate::bench_rx::rx(prescriptions, concurrency.max(1), drugs.max(30), pairs, pending, store).await
        }
        BenchCommand::Healthcard { clients, cards, codes, store } => healthcard(clients, cards, codes, store).await,
        BenchCommand::Portal { clients, seconds, store } => portal(clients.max(1), seconds, store).await,
        BenchCommand::Hl7 { senders, messages, patients, no_mpi, store } => {
            hl7(senders.max(1), messages, patients.max(1), no_mpi, store).await
        }
    }
}

/// ORU^R01 over MLLP on loopback: `senders` connections, each sending its share of `messages`
/// one at a time (original mode: the next after the ACK), every ACK sent only after the
/// durable commit of its message's transaction. Each message is the synthetic blood count of
/// `hl7::samples::oru_r01` (Patient created when new, Encounter, ServiceRequest, six
/// Observations, DiagnosticReport) for one of `patients` patients, with its own order number.
async fn hl7(senders: usize, messages: usize, patients: usize, no_mpi: bool, args: StoreArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(store.clone(), &args));
    if !no_mpi {
        // As `serve` runs it: the master patient index follows the outbox while messages arrive,
        // loaded (and its default match model trained, about a second) before the clock starts,
        // as a server has done long before its first message.
        engine.mpi_sync().await?;
        tokio::spawn(engine.clone().mpi_run());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = crate::mllp::MllpConfig {
        max_message_bytes: 1 << 20,
        quarantine: args.data.join("hl7-quarantine"),
        principal: Arc::new(crate::mllp::listener_principal()),
    };
    tokio::spawn(crate::mllp::serve(listener, engine.clone(), config));
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut decoder = hl7::MllpDecoder::new(1 << 20);
            let mut buffer = vec![0u8; 16 * 1024];
            let (mut latencies, mut refused) = (Vec::new(), Vec::new());
            for n in (sender..messages).step_by(senders) {
                let mrn = format!("B{run}-{:06}", n % patients);
                let text = hl7::samples::oru_r01(&format!("{run}-{n}"), &mrn, &format!("F{run}-{n}"), "UNICODE UTF-8");
                let sent = Instant::now();
                stream.write_all(&hl7::frame(text.as_bytes())).await?;
                let ack = loop {
                    if let Some(frame) = decoder.next_message() {
                        break frame.map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                    let read = stream.read(&mut buffer).await?;
                    anyhow::ensure!(read > 0, "the listener closed the connection");
                    decoder.push(&buffer[..read]);
                };
                latencies.push(sent.elapsed());
                let ack = hl7::Message::parse(&ack).map_err(|e| anyhow::anyhow!("{e}"))?;
                if ack.get("MSA-1").as_deref() != Some("AA") {
                    refused.push(ack.get("ERR-8").unwrap_or_default());
                }
            }
            anyhow::Ok((latencies, refused))
        }));
    }
    let (mut latencies, mut refused) = (Vec::new(), Vec::new());
    for task in tasks {
        let (l, r) = task.await??;
        latencies.extend(l);
        refused.extend(r);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let at =
        |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "{} ORU^R01 messages from {senders} senders over MLLP in {seconds:.1} s: {:.0} messages/s ({:.0} resources/s), \
         ACK latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} not accepted",
        latencies.len(),
        latencies.len() as f64 / seconds,
        latencies.len() as f64 * 9.0 / seconds,
        at(0.50),
        at(0.99),
        at(1.0),
        refused.len()
    );
    if let Some(first) = refused.first() {
        anyhow::bail!("{} messages were not accepted; the first: {first}", refused.len());
    }
    Ok(())
}

/// The store as `serve` sees it when `sealed` (ID numbers and phones sealed with the keys in
/// `<data>/keys`), else as it is.
fn seal(
    store: Arc<dyn store::ResourceStore>,
    args: &StoreArgs,
    sealed: bool,
) -> anyhow::Result<Arc<dyn store::ResourceStore>> {
    if !sealed {
        return Ok(store);
    }
    let ring = Arc::new(crypto::KeyRing::load_or_create(&args.data.join("keys")).map_err(|e| anyhow::anyhow!("{e}"))?);
    Ok(Arc::new(engine::SealingStore::new(store, Arc::new(move || ring.clone()))))
}

/// Peak resident memory of this process (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn linkage(records: usize, seed: u64) -> anyhow::Result<()> {
    use registry::linkage::synth::{Settings, generate};
    use registry::linkage::{Linker, Metrics, Record, Thresholds};
    let started = Instant::now();
    let data = generate(Settings { records, seed });
    let generated = started.elapsed();
    let all: Vec<Record> = data.iter().map(|s| s.record.clone()).collect();
    let truth: Vec<u32> = data.iter().map(|s| s.person).collect();
    drop(data);
    println!("{records} synthetic Chinese records generated in {:.1} s", generated.as_secs_f64());
    let started = Instant::now();
    let (model, report) = Linker::train(&all, 1_000_000, 2_000_000, seed);
    let trained = started.elapsed();
    println!(
        "trained in {:.1} s: λ {:.2e}, {} random pairs, {} candidate pairs, {} distinct comparison vectors",
        trained.as_secs_f64(),
        model.lambda,
        report.random_pairs,
        report.candidate_pairs,
        report.distinct_vectors
    );
    // Batch linkage of all but the last 1,000 records; those are then matched one at a time
    // against the full index, timed one by one.
    let tail = 1000.min(all.len() / 10);
    let mut linker = Linker::new(model, Thresholds::default());
    let started = Instant::now();
    linker.link_all(&all[..all.len() - tail]);
    let linked = started.elapsed();
    let mut latencies = Vec::with_capacity(tail);
    for r in &all[all.len() - tail..] {
        let t = Instant::now();
        linker.add(r);
        latencies.push(t.elapsed());
    }
    // Persons may have merged after a record was placed: read the final assignment.
    let persons: Vec<u32> = (0..all.len() as u32).map(|i| linker.person_of(i)).collect();
    latencies.sort();
    let m = Metrics::of(&persons, &truth);
    println!(
        "batch linkage of {} records in {:.1} s ({:.0} records/s); training + linkage {:.1} s",
        all.len() - tail,
        linked.as_secs_f64(),
        (all.len() - tail) as f64 / linked.as_secs_f64(),
        (trained + linked).as_secs_f64()
    );
    println!(
        "incremental match of one more record against {} persons: p50 {:.2} ms, p99 {:.2} ms",
        linker.persons(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!("accuracy: {m}; false links {:.4}% of links", m.false_link_rate() * 100.0);
    println!("peak resident memory: {:.0} MB", peak_rss_mb());
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// User + system CPU time of this process so far, seconds (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// The SQLite committer thread's CPU seconds and bytes written so far.
fn committer_usage() -> (f64, f64) {
    (thread_cpu_seconds("sqlite-commit"), thread_wchar("sqlite-commit"))
}

/// What the SQLite committer spent per resource since `since` ([`committer_usage`]), as a
/// suffix for a figure's line; empty for other backends.
fn committer_figures(backend: &str, since: (f64, f64), resources: usize) -> String {
    if backend != "sqlite" {
        return String::new();
    }
    let (cpu, written) = committer_usage();
    format!(
        ", the SQLite committer {:.0} µs of CPU and {:.1} KB of WAL per resource",
        (cpu - since.0) * 1e6 / resources as f64,
        (written - since.1) / 1e3 / resources as f64
    )
}

/// The sum of `figure` over this process's threads named `name` (Linux
/// `/proc/self/task/*/comm`), each given its `/proc/self/task/<tid>` folder.
fn sum_over_threads(name: &str, figure: impl Fn(&std::path::Path) -> f64) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name))
        .map(|task| figure(&task.path()))
        .sum()
}

/// Bytes the threads named `name` have passed to `write`-like system calls (`wchar` in
/// `/proc/…/io`): for the SQLite committer, its WAL frames.
fn thread_wchar(name: &str) -> f64 {
    sum_over_threads(name, |task| {
        std::fs::read_to_string(task.join("io"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("wchar:").and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    })
}

/// User + system CPU time so far of this process's threads named `name`, seconds.
fn thread_cpu_seconds(name: &str) -> f64 {
    sum_over_threads(name, |task| stat_cpu_seconds(&std::fs::read_to_string(task.join("stat")).unwrap_or_default()))
}

/// utime + stime of a `/proc/…/stat` line, seconds.
fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A memory figure of `/proc/self/status` (in kB there), in MB; 0 where it cannot be read.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn ingest(
    patients: usize,
    extra: usize,
    seed: u64,
    engine_only: bool,
    concurrency: usize,
    sealed: bool,
    args: StoreArgs,
) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(seal(store.clone(), &args, sealed)?, &args));
    let ctx = Ctx::system();
    let opts = engine::RequestOptions {
        base_url: "urn:bench".into(),
        return_preference: engine::ReturnPreference::Minimal,
        ..Default::default()
    };
    engine.bundle(&ctx, demo::reference_bundle(), &opts).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let bundles: Vec<String> = (0..patients)
        .map(|_| import::idempotent_transaction(demo::resident_bundle(&mut rng, extra)).to_string())
        .collect();
    let resources: usize = bundles.iter().map(|b| b.matches("\"request\"").count()).sum();
    let bytes: usize = bundles.iter().map(String::len).sum();
    println!("generated {patients} resident bundles: {resources} resources, {:.1} MB of JSON", bytes as f64 / 1e6);

    // Stage 1: JSON parsing alone.
    let t = Instant::now();
    let parsed: Vec<Value> = bundles.iter().map(|b| serde_json::from_str(b)).collect::<Result<_, _>>()?;
    let parse_s = t.elapsed().as_secs_f64();
    println!("  JSON parse:                {:>10.0} resources/s", resources as f64 / parse_s);

    if !engine_only {
        stages(&parsed, resources, store.as_ref(), concurrency).await?;
    }

    // End to end through the engine.
    use futures::StreamExt;
    let t = Instant::now();
    let cpu = cpu_seconds();
    let committer = committer_usage();
    // Each submission is its own task, as each HTTP connection is in the server, so two
    // Bundles are prepared on both cores while the store commits another.
    let mut latencies: Vec<Duration> = futures::stream::iter(parsed)
        .map(|b| {
            let (engine, opts) = (engine.clone(), opts.clone());
            async move {
                tokio::spawn(async move {
                    let started = Instant::now();
                    engine.bundle(&Ctx::system(), b, &opts).await.map(|_| started.elapsed())
                })
                .await
                .map_err(|e| anyhow::anyhow!("bench task: {e}"))?
                .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let total_s = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let committer = committer_figures(store.backend(), committer, resources);
    latencies.sort();
    println!(
        "  engine transactions:       {:>10.0} resources/s, per bundle p50 {:.2} ms p99 {:.2} ms ({} backend, {concurrency} at once)",
        resources as f64 / total_s,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        store.backend()
    );
    println!(
        "  CPU time of this process:  {:>10.0} µs per resource ({:.1} cores busy on average){}",
        cpu * 1e6 / resources as f64,
        cpu / total_s,
        committer
    );
    Ok(())
}

/// Stage-by-stage limits on the same bundles: validation + extraction, and raw commits.
async fn stages(
    parsed: &[Value],
    resources: usize,
    store: &dyn store::ResourceStore,
    concurrency: usize,
) -> anyhow::Result<()> {
    let ctx = Ctx::system();
    // Stage 2: validation + index extraction (CPU work per resource), no storage.
    let defs = fhir::Definitions::r4();
    let t = Instant::now();
    let mut index_rows = 0usize;
    for b in parsed {
        for e in b["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            let issues = fhir::validate::validate(defs, r);
            anyhow::ensure!(issues.is_empty(), "generated data must be valid: {issues:?}");
            index_rows += fhir::index::extract_stored(defs, r).len();
        }
    }
    let cpu_s = t.elapsed().as_secs_f64();
    println!(
        "  validate + extract:        {:>10.0} resources/s ({:.1} index rows per resource)",
        resources as f64 / cpu_s,
        index_rows as f64 / resources as f64
    );

    // Stage 3: the storage limit: committing prepared rows of the same shape, one transaction
    // per bundle, as many at once as the engine stage, into a scratch namespace. The ids are
    // the Bundles' own with a suffix (so nothing collides), so they arrive in the same random
    // order as the engine's (a shared prefix per Bundle would put each Bundle's ids on a few
    // leaves of the `(type, id)` index, which the engine's ids never are).
    let prepared: Vec<Vec<WriteOp>> = parsed
        .iter()
        .enumerate()
        .map(|(n, b)| {
            b["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let r = &e["resource"];
                    WriteOp {
                        resource_type: r["resourceType"].as_str().unwrap_or_default().to_string(),
                        id: format!("{}-raw{n}", r["id"].as_str().unwrap_or_default()),
                        version: 1,
                        last_updated: 0,
                        method: WriteMethod::Create,
                        body: Some(r.to_string()),
                        index: fhir::index::extract_stored(defs, r),
                        compartments: fhir::index::patient_compartments(defs, r),
                        parsed: None,
                    }
                })
                .collect()
        })
        .collect();
    let t = Instant::now();
    let committer = committer_usage();
    {
        use futures::StreamExt;
        let mut commits = futures::stream::iter(prepared.into_iter().map(|ops| store.commit(&ctx, ops)))
            .buffer_unordered(concurrency);
        while let Some(committed) = commits.next().await {
            committed?;
        }
    }
    let raw_s = t.elapsed().as_secs_f64();
    println!(
        "  store commit (rows only):  {:>10.0} resources/s{}",
        resources as f64 / raw_s,
        committer_figures(store.backend(), committer, resources)
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Read,
    PatientByIdentifier,
    ObservationByPatientCodeDate,
    EncounterByPatientSorted,
    Everything,
}

/// The auth service over `store` and the `Authorization` header of a new system client with
/// `system/*.read` (requests are authenticated, decided and audited as in production).
async fn bench_client(
    store: Arc<dyn store::ResourceStore>,
    scopes: &str,
) -> anyhow::Result<(Arc<auth::Auth>, Arc<String>)> {
    let auth = Arc::new(auth::Auth::new(
        store,
        Arc::new(crypto::KeyRing::ephemeral()),
        auth::AuthConfig::default(),
        Arc::new(auth::FileSms::new(std::env::temp_dir().join("hutong-bench-sms.txt"))),
    ));
    let (client_id, secret) =
        auth.create_client("bench", scopes, None, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let form: std::collections::HashMap<String, String> = [
        ("grant_type".to_string(), "client_credentials".to_string()),
        ("client_id".to_string(), client_id),
        ("client_secret".to_string(), secret),
    ]
    .into();
    let token = auth.token(&form, None, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let bearer = Arc::new(format!("Bearer {}", token["access_token"].as_str().unwrap_or_default()));
    Ok((auth, bearer))
}

async fn search(
    clients: usize,
    seconds: u64,
    everything: Option<String>,
    only: Option<String>,
    no_auth: bool,
    sealed: bool,
    args: StoreArgs,
) -> anyhow::Result<()> {
    let only = match only.as_deref() {
        None => None,
        Some("read") => Some(Kind::Read),
        Some("identifier") => Some(Kind::PatientByIdentifier),
        Some("observation") => Some(Kind::ObservationByPatientCodeDate),
        Some("encounter") => Some(Kind::EncounterByPatientSorted),
        Some("everything") => Some(Kind::Everything),
        Some(other) => anyhow::bail!("--only {other}: use read, identifier, observation, encounter or everything"),
    };
    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(seal(store.clone(), &args, sealed)?, &args));
    let (auth, bearer) = bench_client(store, "system/*.read").await?;
    let ctx = Ctx::system();
    let opts = engine::RequestOptions {
        base_url: "urn:bench".into(),
        return_preference: engine::ReturnPreference::Minimal,
        ..Default::default()
    };
    let sample = engine
        .search(&ctx, Some("Patient"), &[("_count".into(), "500".into()), ("_total".into(), "accurate".into())], &opts)
        .await?;
    let patients: Vec<(String, String)> = sample["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = &e["resource"];
            Some((r["id"].as_str()?.to_string(), r["identifier"][0]["value"].as_str()?.to_string()))
        })
        .collect();
    anyhow::ensure!(
        !patients.is_empty(),
        "the store has no Patients: load data first (hutong bench ingest or hutong import)"
    );
    let total = sample["total"].as_u64().unwrap_or(0);
    println!("store: {} backend, {total} Patients; {clients} clients for {seconds} s", engine.store().backend());

    println!(
        "authorization and audit: {}",
        if no_auth { "OFF (baseline)" } else { "on (system client token, every request decided and audited)" }
    );
    let audit_before = engine.store().audit_head().await?.0;
    let config = api::ApiConfig { authenticate: !no_auth, ..api::ApiConfig::default() };
    let app = api::router(api::AppState { engine: engine.clone(), auth, config });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(clients)
            .build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let patients = Arc::new(patients);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, stop, patients, bearer) = (client.clone(), stop.clone(), patients.clone(), bearer.clone());
        tasks.push(tokio::spawn(async move {
            let mut results: Vec<(Kind, Duration, bool)> = Vec::new();
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (id, identifier) = &patients[n % patients.len()];
                let kind = only.unwrap_or(match n % 10 {
                    0..=4 => Kind::Read,
                    5 => Kind::PatientByIdentifier,
                    6 | 7 => Kind::ObservationByPatientCodeDate,
                    8 => Kind::EncounterByPatientSorted,
                    _ => Kind::Everything,
                });
                let path = match kind {
                    Kind::Read => format!("/fhir/Patient/{id}"),
                    Kind::PatientByIdentifier => format!("/fhir/Patient?identifier={}|{identifier}", demo::ID_NUMBER_SYSTEM),
                    Kind::ObservationByPatientCodeDate => {
                        format!("/fhir/Observation?subject=Patient/{id}&code=http://loinc.org|2339-0&date=ge2023-01-01&date=le2024-12-31")
                    }
                    Kind::EncounterByPatientSorted => format!("/fhir/Encounter?subject=Patient/{id}&_sort=-date"),
                    Kind::Everything => format!("/fhir/Patient/{id}/$everything"),
                };
                let uri: hyper::Uri = match format!("http://{addr}{path}").parse() {
                    Ok(u) => u,
                    Err(_) => continue,
                };
                let started = Instant::now();
                let request = match hyper::Request::get(uri).header("authorization", bearer.as_str()).body(Empty::new()) {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let ok = match client.request(request).await {
                    Ok(resp) => {
                        let status = resp.status();
                        resp.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                results.push((kind, started.elapsed(), ok));
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<(Kind, Duration, bool)> = Vec::new();
    for t in tasks {
        all.extend(t.await.context("bench client")?);
    }
    let errors = all.iter().filter(|r| !r.2).count();
    println!("total {} requests, {:.0} req/s, {errors} errors", all.len(), all.len() as f64 / seconds as f64);
    for kind in [
        Kind::Read,
        Kind::PatientByIdentifier,
        Kind::ObservationByPatientCodeDate,
        Kind::EncounterByPatientSorted,
        Kind::Everything,
    ] {
        let mut lat: Vec<Duration> = all.iter().filter(|r| r.0 == kind).map(|r| r.1).collect();
        lat.sort();
        println!(
            "  {:<32} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            format!("{kind:?}"),
            lat.len() as f64 / seconds as f64,
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
    }
    println!("resident memory: {:.0} MB", rss_mb());
    println!("audit entries appended: {}", engine.store().audit_head().await?.0 - audit_before);
    if let Some(id) = everything {
        let mut lat = Vec::new();
        let mut entries = 0;
        for _ in 0..50 {
            let uri: hyper::Uri = format!("http://{addr}/fhir/Patient/{id}/$everything").parse()?;
            let started = Instant::now();
            let request = hyper::Request::get(uri).header("authorization", bearer.as_str()).body(Empty::new())?;
            let resp = client.request(request).await?;
            let body = resp.into_body().collect().await?.to_bytes();
            lat.push(started.elapsed());
            let bundle: Value = serde_json::from_slice(&body)?;
            entries = bundle["entry"].as_array().map_or(0, Vec::len);
        }
        lat.sort();
        println!(
            "  $everything of Patient/{id} ({entries} resources), alone: p50 {:.1} ms p99 {:.1} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// `hutong bench terminology`: one client on loopback, so the figures are latencies, not
/// throughput under contention. Codes and filter words come from the ICD-10 table itself.
async fn terminology(requests: usize, seed: u64, args: StoreArgs) -> anyhow::Result<()> {
    use rand::Rng;
    let started = Instant::now();
    let preloaded = tokio::task::spawn_blocking(terminology::Terminology::preloaded).await?;
    println!("preloaded terminology built in {:.2} s: {:?}", started.elapsed().as_secs_f64(), preloaded.counts());
    let icd = preloaded.code_system(terminology::ICD10, None).context("ICD-10 is preloaded")?;
    let codes: Vec<&str> = icd.concepts.iter().map(|c| c.code.as_str()).collect();
    let mut words: Vec<String> = icd
        .concepts
        .iter()
        .filter_map(|c| c.display.as_deref())
        .flat_map(|d| d.split(|ch: char| !ch.is_alphabetic()).map(str::to_lowercase).collect::<Vec<_>>())
        .filter(|w| w.len() >= 5)
        .collect();
    words.sort();
    words.dedup();

    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(store.clone(), &args));
    let (auth, bearer) = bench_client(store, "system/*.read").await?;
    let app = api::router(api::AppState { engine, auth, config: api::ApiConfig::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let get = |path: String| {
        let (client, bearer) = (client.clone(), bearer.clone());
        async move {
            let uri: hyper::Uri = format!("http://{addr}{path}").parse()?;
            let request = hyper::Request::get(uri).header("authorization", bearer.as_str()).body(Empty::new())?;
            let started = Instant::now();
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::ensure!(status.is_success(), "{path}: {status} {}", String::from_utf8_lossy(&body));
            Ok::<_, anyhow::Error>((started.elapsed(), body))
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let sex = "http://hutong.health/fhir/CodeSystem/gb-t-2261.1-sex";
    let mut runs: Vec<(&str, Vec<Duration>, usize)> = Vec::new();
    for kind in [
        "CodeSystem/$validate-code (ICD-10)",
        "ValueSet/$validate-code (GB/T 2261.1)",
        "ValueSet/$expand ICD-10 filter",
    ] {
        // Warm-up: the first call builds the expansion and connections.
        let mut lat = Vec::with_capacity(requests);
        let mut matched = 0usize;
        for i in 0..requests + 20 {
            let path = match kind {
                "CodeSystem/$validate-code (ICD-10)" => {
                    let code = codes[rng.random_range(0..codes.len())];
                    format!("/fhir/CodeSystem/$validate-code?url={}&code={code}", terminology::ICD10)
                }
                "ValueSet/$validate-code (GB/T 2261.1)" => {
                    let code = ["0", "1", "2", "9", "3"][rng.random_range(0..5)];
                    format!(
                        "/fhir/ValueSet/$validate-code?url=http://hutong.health/fhir/ValueSet/gb-t-2261.1-sex&system={sex}&code={code}"
                    )
                }
                _ => {
                    let word = &words[rng.random_range(0..words.len())];
                    format!("/fhir/ValueSet/$expand?url={}&filter={word}&count=20", terminology::ICD10_VALUE_SET)
                }
            };
            let (elapsed, body) = get(path).await?;
            if i >= 20 {
                lat.push(elapsed);
                let v: Value = serde_json::from_slice(&body)?;
                if v["parameter"][0]["valueBoolean"] == true || v["expansion"]["total"].as_u64().unwrap_or(0) > 0 {
                    matched += 1;
                }
            }
        }
        lat.sort();
        runs.push((kind, lat, matched));
    }
    for (kind, lat, matched) in &runs {
        println!(
            "  {kind:<44} {requests} requests  p50 {:>6.3} ms  p99 {:>6.3} ms  max {:>6.2} ms  ({matched} true/non-empty)",
            percentile(lat, 0.5).as_secs_f64() * 1e3,
            percentile(lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    // The model alone (no HTTP, authorization or audit), for comparison.
    for kind in ["validate-code GB/T 2261.1, in-process model", "expand ICD-10 filter, in-process model"] {
        let mut lat = Vec::with_capacity(requests);
        for _ in 0..requests {
            let word = &words[rng.random_range(0..words.len())];
            let code = ["0", "1", "2", "9", "3"][rng.random_range(0..5)];
            let started = Instant::now();
            if kind.starts_with("validate") {
                let coding = terminology::Coding { system: Some(sex.into()), code: code.into(), ..Default::default() };
                preloaded
                    .validate_in_value_set("http://hutong.health/fhir/ValueSet/gb-t-2261.1-sex", None, &[coding], None)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            } else {
                let params =
                    terminology::ExpandParams { filter: Some(word.clone()), count: Some(20), ..Default::default() };
                preloaded.expand(terminology::ICD10_VALUE_SET, None, &params).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            lat.push(started.elapsed());
        }
        lat.sort();
        println!(
            "  {kind:<44} {requests} calls     p50 {:>6.3} ms  p99 {:>6.3} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
    }
    println!("resident memory: {:.0} MB", rss_mb());
    Ok(())
}

async fn audit(entries: usize, args: StoreArgs) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    let keys = crypto::KeyRing::ephemeral();
    let started = Instant::now();
    let mut written = 0;
    while written < entries {
        let n = (entries - written).min(1000);
        let records: Vec<store::AuditRecord> = (0..n)
            .map(|i| store::AuditRecord {
                recorded: 1_790_000_000_000 + (written + i) as i64,
                action: "read".into(),
                outcome: "success".into(),
                actor: format!("user/u-{}", (written + i) % 977),
                role: "doctor".into(),
                organization: "Organization/org-1".into(),
                purpose: "TREAT".into(),
                entity: format!("Observation/{:x}/_history/1", (written + i) * 7919),
                patients: vec![format!("p-{}", (written + i) % 50_021)],
                detail: r#"{"request":"bench"}"#.into(),
            })
            .collect();
        store.commit_audited(&Ctx::system(), Vec::new(), records).await?;
        written += n;
        if written % 100_000 == 0 {
            auth::audit::checkpoint(&store, &keys).await?;
        }
    }
    let append = started.elapsed().as_secs_f64();
    println!("appended {entries} audit records in {append:.1} s ({:.0} records/s)", entries as f64 / append);
    let started = Instant::now();
    let report = auth::audit::verify(&store, &keys).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "verified {} entries and {} checkpoints in {seconds:.1} s: {:.0} entries/minute, {} findings",
        report.entries,
        report.checkpoints,
        report.entries as f64 / seconds * 60.0,
        report.findings.len()
    );
    Ok(())
}

async fn booking(
    clients: usize,
    slots: usize,
    contended: f64,
    rate: Option<f64>,
    args: StoreArgs,
) -> anyhow::Result<()> {
    use rand::Rng;
    use std::sync::atomic::AtomicUsize;
    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(store.clone(), &args));
    // The pool: one schedule, `slots` free slots, published in transactions of 1,000.
    let sys = Ctx::system();
    let published = Instant::now();
    let schedule = serde_json::json!({"resourceType": "Schedule", "id": "bench-schedule", "active": true,
        "actor": [{"reference": "Practitioner/bench-doctor"}]});
    engine.update(&sys, "Schedule", "bench-schedule", schedule, &engine::RequestOptions::default()).await?;
    for chunk in (0..slots).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let id = format!("bench-slot-{i}");
                let minutes = i * 10;
                let slot = serde_json::json!({"resourceType": "Slot", "id": id, "status": "free",
                    "schedule": {"reference": "Schedule/bench-schedule"},
                    "start": fhir::normalize::format_instant(1_800_000_000_000 + minutes as i64 * 60_000),
                    "end": fhir::normalize::format_instant(1_800_000_000_000 + (minutes as i64 + 10) * 60_000)});
                serde_json::json!({"resource": slot, "request": {"method": "PUT", "url": format!("Slot/{id}")}})
            })
            .collect();
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        engine.bundle(&sys, bundle, &engine::RequestOptions::default()).await?;
    }
    println!("{slots} slots published in {:.1} s", published.elapsed().as_secs_f64());

    let (auth, bearer) = bench_client(store.clone(), "system/*.*").await?;
    let app = api::router(api::AppState { engine: engine.clone(), auth, config: api::ApiConfig::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, bearer, next) = (client.clone(), bearer.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let (mut latencies, mut booked, mut refused) = (Vec::new(), 0usize, 0usize);
            for k in 0usize.. {
                // The request's scheduled time (open loop) or now (closed loop).
                let t = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64((k * clients + c) as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let taken = next.load(Ordering::Relaxed);
                let slot = if taken > 0 && rng.random_bool(contended) {
                    rng.random_range(0..taken.min(slots))
                } else {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= slots {
                        break;
                    }
                    n
                };
                let start = 1_800_000_000_000 + slot as i64 * 600_000;
                let body = serde_json::json!({"resourceType": "Appointment", "status": "booked",
                    "slot": [{"reference": format!("Slot/bench-slot-{slot}")}],
                    "start": fhir::normalize::format_instant(start), "end": fhir::normalize::format_instant(start + 600_000),
                    "participant": [{"actor": {"reference": format!("Patient/bench-{c}-{slot}")}, "status": "accepted"}]});
                let request = hyper::Request::post(format!("http://{addr}/fhir/Appointment"))
                    .header("authorization", bearer.as_str())
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(http_body_util::Full::new(Bytes::from(body.to_string())))?;
                let response = client.request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                latencies.push(t.elapsed());
                match status.as_u16() {
                    201 => booked += 1,
                    409 => refused += 1,
                    other => anyhow::bail!("booking answered {other}"),
                }
            }
            Ok::<_, anyhow::Error>((latencies, booked, refused))
        }));
    }
    let (mut latencies, mut booked, mut refused) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, b, r) = t.await??;
        latencies.extend(l);
        booked += b;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{booked} bookings and {refused} refusals (409) from {clients} clients ({}) in {elapsed:.1} s: {:.0} bookings/s, \
         {:.0} requests/s; latency p50 {:.1} ms, p99 {:.1} ms",
        match rate {
            Some(r) => format!("offered {r:.0} requests/s"),
            None => "closed loop".to_string(),
        },
        booked as f64 / elapsed,
        (booked + refused) as f64 / elapsed,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    // No slot booked twice: every slot is busy exactly when one booked Appointment holds it.
    let count = |resource_type: &'static str, status: &'static str| {
        let engine = engine.clone();
        async move {
            let params = [("status".to_string(), status.to_string()), ("_summary".to_string(), "count".to_string())];
            let bundle =
                engine.search(&Ctx::system(), Some(resource_type), &params, &engine::RequestOptions::default()).await?;
            Ok::<_, anyhow::Error>(bundle["total"].as_u64().unwrap_or(0))
        }
    };
    let busy = count("Slot", "busy").await?;
    let appointments = count("Appointment", "booked").await?;
    println!("check: {busy} busy slots, {appointments} booked appointments, {booked} bookings answered 201");
    anyhow::ensure!(busy as usize == booked && appointments as usize == booked, "overbooking or a lost booking");
    Ok(())
}

/// A resident's request context (the card holder registering their card).
fn resident_ctx(patient: &str) -> Ctx {
    Ctx::for_principal(
        format!("bench-{patient}"),
        access::Principal {
            subject: format!("user/{patient}"),
            role: access::Role::Resident,
            organization: None,
            region: Some("350102".into()),
            practitioner: None,
            patients: vec![patient.to_string()],
            scopes: access::Scopes::parse("patient/*.*").expect("valid scopes"),
            purpose: access::Role::Resident.default_purpose().into(),
            break_glass: None,
        },
        Some("127.0.0.1".into()),
    )
}

async fn healthcard(clients: usize, cards: usize, codes: usize, args: StoreArgs) -> anyhow::Result<()> {
    use std::sync::atomic::AtomicUsize;
    anyhow::ensure!(cards > 0 && codes > 0 && clients > 0, "cards, codes and clients must be positive");
    let store = open_store(&args).await?;
    let engine = Arc::new(engine_for(store.clone(), &args));
    let (auth, bearer) = bench_client(store.clone(), "system/*.*").await?;
    let keys = auth.keys();

    // Residents with synthetic ID numbers (Patients in transactions of 1,000), then one card
    // each, registered by the resident through the engine (real-name check, audit).
    let started = Instant::now();
    let sys = Ctx::system();
    let id_number = |i: usize| {
        let first17 = format!("350102{}{:02}{:02}{:03}", 1950 + i / 10_000 % 60, 1 + i / 1000 % 10, 1, i % 1000);
        let check = crypto::idnum::check_character(&first17).expect("17 digits");
        format!("{first17}{check}")
    };
    for chunk in (0..cards).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let id = format!("bench-card-holder-{i}");
                let patient = serde_json::json!({"resourceType": "Patient", "id": id,
                    "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": id_number(*i)}],
                    "name": [{"family": "测", "given": [format!("试{i}")]}]});
                serde_json::json!({"resource": patient, "request": {"method": "PUT", "url": format!("Patient/{id}")}})
            })
            .collect();
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        engine.bundle(&sys, bundle, &engine::RequestOptions::default()).await?;
    }
    let mut card_ids = Vec::with_capacity(cards);
    for chunk in (0..cards).collect::<Vec<_>>().chunks(64) {
        let registered = futures::future::join_all(chunk.iter().map(|i| {
            let (engine, keys) = (engine.clone(), keys.clone());
            async move {
                let patient = format!("bench-card-holder-{i}");
                let ctx = resident_ctx(&patient);
                match engine.healthcard_register(&ctx, &keys, &patient, Some(&id_number(*i))).await {
                    Ok(card) => Ok(card.card_id),
                    // A card registered by an earlier run on this store.
                    Err(engine::EngineError::Conflict { .. }) => {
                        engine.healthcard_for_patient(&ctx, &patient).await.map(|c| c.card_id)
                    }
                    Err(e) => Err(e),
                }
            }
        }))
        .await;
        for card in registered {
            card_ids.push(card.map_err(|e| anyhow::anyhow!("registering a card: {e}"))?);
        }
    }
    println!("{cards} cards registered in {:.1} s", started.elapsed().as_secs_f64());

    // The codes, signed with the platform key as `POST /healthcard/{card}/code` does (without
    // its audit record: issuing is not what is measured), valid for the whole run.
    let started = Instant::now();
    let now = chrono::Utc::now().timestamp();
    let issuer = engine::HealthCardConfig::default().issuer;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let card_ids = Arc::new(card_ids);
    let mut issuing = Vec::new();
    for t in 0..threads {
        let (keys, card_ids, issuer) = (keys.clone(), card_ids.clone(), issuer.clone());
        issuing.push(tokio::task::spawn_blocking(move || {
            let key_id = keys.signing_key_id();
            (t..codes)
                .step_by(threads)
                .map(|i| {
                    let code = healthcard::DynamicCode {
                        card_id: healthcard::CardId::parse(&card_ids[i % card_ids.len()]).expect("card ids parse"),
                        issuer: issuer.clone(),
                        issued_at: now,
                        lifetime: 3600,
                        insurance_token: Some(format!("EC-{i:08}")),
                        payment_token: None,
                    };
                    code.issue(keys.signing_key(), &key_id).map(|(payload, _)| payload)
                })
                .collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut payloads = Vec::with_capacity(codes);
    for batch in issuing {
        payloads.extend(batch.await?.map_err(|e| anyhow::anyhow!("issuing a code: {e}"))?);
    }
    println!("{codes} codes issued in {:.1} s", started.elapsed().as_secs_f64());
    let payloads = Arc::new(payloads);

    let app = api::router(api::AppState { engine: engine.clone(), auth, config: api::ApiConfig::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let verify = {
        let (client, bearer) = (client.clone(), bearer.clone());
        move |payload: String, terminal: String| {
            let (client, bearer) = (client.clone(), bearer.clone());
            async move {
                let body = serde_json::json!({"code": payload, "careStep": "0101012", "terminal": terminal});
                let request = hyper::Request::post(format!("http://{addr}/healthcard/verify"))
                    .header("authorization", bearer.as_str())
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(Bytes::from(body.to_string())))?;
                let response = client.request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, anyhow::Error>((status, body))
            }
        }
    };

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (verify, next, payloads) = (verify.clone(), next.clone(), payloads.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut accepted) = (Vec::new(), 0usize);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= payloads.len() {
                    break;
                }
                let t = Instant::now();
                let (status, body) = verify(payloads[n].clone(), format!("T-{c:03}")).await?;
                latencies.push(t.elapsed());
                anyhow::ensure!(
                    status == 200 && body.starts_with(br#"{"accepted":true"#),
                    "code {n} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                accepted += 1;
            }
            Ok::<_, anyhow::Error>((latencies, accepted))
        }));
    }
    let (mut latencies, mut accepted) = (Vec::new(), 0);
    for t in tasks {
        let (l, a) = t.await??;
        latencies.extend(l);
        accepted += a;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    latencies.sort();
    println!(
        "{accepted} codes verified online by {clients} clients in {elapsed:.1} s: {:.0} verifications/s; \
         latency p50 {:.1} ms, p99 {:.1} ms",
        accepted as f64 / elapsed,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    // On a shared machine the rate depends on what else runs; the CPU time this process
    // (server and clients) spent per verification does not, much.
    println!(
        "process CPU {cpu:.1} s ({:.0} µs per verification, clients included): {:.0} verifications/s per busy core",
        cpu / accepted as f64 * 1e6,
        accepted as f64 / cpu
    );
    anyhow::ensure!(accepted == codes, "{accepted} of {codes} codes accepted");
    // Single use: a replay of any code, here a sample of them, is refused.
    let mut refused = 0;
    for n in (0..codes).step_by((codes / 100).max(1)) {
        let (status, body) = verify(payloads[n].clone(), "T-replay".into()).await?;
        anyhow::ensure!(status == 409, "a replay of code {n} answered {status}: {}", String::from_utf8_lossy(&body));
        refused += 1;
    }
    println!("check: {accepted} codes accepted once each, {refused} replays refused (409)");
    Ok(())
}

/// The pages a signed-in resident visits, in the order each client cycles through them
/// (`{report}` is the demo resident's first report).
const PORTAL_PAGES: &[&str] = &[
    "/portal/",
    "/portal/card",
    "/portal/doctors",
    "/portal/doctors/sched-1",
    "/portal/appointments",
    "/portal/reports",
    "/portal/reports/{report}",
    "/portal/records",
    "/portal/access-log",
    "/portal/consents",
    "/portal/family",
];

async fn portal(clients: usize, seconds: u64, args: StoreArgs) -> anyhow::Result<()> {
    type Client = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >;
    let backend = open_store(&args).await?;
    let ring = crate::security::key_ring(&args, &crate::security::KeyArgs { keys: None }, &backend).await?;
    let auth = crate::security::auth_service(backend.clone(), &args, ring)?;
    let keys_of = auth.clone();
    let sealed: Arc<dyn store::ResourceStore> =
        Arc::new(engine::SealingStore::new(backend.clone(), Arc::new(move || keys_of.keys())));
    let engine = Arc::new(engine_for(sealed, &args));
    let loaded = Instant::now();
    let n = crate::load_demo(&engine).await?;
    anyhow::ensure!(n > 0, "bench portal needs an empty store (e.g. --data $(mktemp -d))");
    crate::security::demo_accounts(&auth, &engine, &args.data).await?;
    engine.flush_audit().await?;
    println!("demo data ({n} resources) loaded in {:.1} s", loaded.elapsed().as_secs_f64());

    // Server time: measured inside the server, from the request reaching the router to the
    // response (bodies are built whole before they are answered).
    let timings: Arc<std::sync::Mutex<Vec<(String, Duration)>>> = Arc::default();
    let recorder = timings.clone();
    let app = api::router(api::AppState { engine: engine.clone(), auth, config: api::ApiConfig::default() }).layer(
        axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            let recorder = recorder.clone();
            async move {
                let path = request.uri().path().to_string();
                let t = Instant::now();
                let response = next.run(request).await;
                if let Ok(mut v) = recorder.lock() {
                    v.push((path, t.elapsed()));
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();

    async fn fetch(
        client: &Client,
        method: &str,
        url: String,
        cookie: &str,
        form: Option<String>,
    ) -> anyhow::Result<(u16, Vec<String>, Bytes)> {
        let mut request = hyper::Request::builder().method(method).uri(url).header("cookie", cookie);
        if form.is_some() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        let response =
            client.request(request.body(http_body_util::Full::new(Bytes::from(form.unwrap_or_default())))?).await?;
        let status = response.status().as_u16();
        let cookies = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .map(str::to_string)
            .collect();
        Ok((status, cookies, response.into_body().collect().await?.to_bytes()))
    }

    // Sign in as a browser does: the form, the code sent by SMS, the code.
    let base = format!("http://{addr}");
    let (_, cookies, first_page) = fetch(&client, "GET", format!("{base}/portal/login"), "", None).await?;
    let pre = cookies.iter().find_map(|c| c.strip_prefix("hutong_portal_pre=")).unwrap_or_default().to_string();
    let resident: Value = serde_json::from_str(&std::fs::read_to_string(args.data.join("demo-resident.json"))?)?;
    let form = |step: &str, code: &str| {
        form_urlencoded_pairs(&[
            ("csrf", &pre),
            ("name", resident["name"].as_str().unwrap_or("")),
            ("id_number", resident["idNumber"].as_str().unwrap_or("")),
            ("step", step),
            ("code", code),
        ])
    };
    let pre_cookie = format!("hutong_portal_pre={pre}");
    fetch(&client, "POST", format!("{base}/portal/login"), &pre_cookie, Some(form("send", ""))).await?;
    let outbox = std::fs::read_to_string(args.data.join("sms-outbox.txt"))?;
    let code: String = outbox
        .lines()
        .last()
        .and_then(|l| l.split('\t').nth(1))
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .take(6)
        .collect();
    let (status, cookies, _) =
        fetch(&client, "POST", format!("{base}/portal/login"), &pre_cookie, Some(form("verify", &code))).await?;
    let session = cookies.iter().find(|c| c.starts_with("hutong_portal=")).cloned();
    let Some(session) = session.filter(|_| status == 303) else {
        anyhow::bail!("the demo resident could not sign in ({status})")
    };
    let (_, _, reports) = fetch(&client, "GET", format!("{base}/portal/reports"), &session, None).await?;
    let reports = String::from_utf8_lossy(&reports).into_owned();
    let report = reports.split("href=\"/portal/reports/").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
    let pages: Arc<Vec<String>> = Arc::new(PORTAL_PAGES.iter().map(|p| p.replace("{report}", report)).collect());
    timings.lock().map_err(|_| anyhow::anyhow!("lock"))?.clear();

    let stop = Arc::new(AtomicBool::new(false));
    let largest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, session, pages, stop, base, largest) =
            (client.clone(), session.clone(), pages.clone(), stop.clone(), base.clone(), largest.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let page = &pages[i % pages.len()];
                let (status, _, body) = fetch(&client, "GET", format!("{base}{page}"), &session, None).await?;
                anyhow::ensure!(status == 200, "{page} answered {status}");
                largest.fetch_max(body.len(), Ordering::Relaxed);
                done += 1;
                i += 1;
            }
            Ok::<_, anyhow::Error>(done)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for t in tasks {
        requests += t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let timings = timings.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let mut all: Vec<Duration> = timings.iter().map(|(_, d)| *d).collect();
    all.sort();
    println!(
        "{requests} portal pages from {clients} clients in {elapsed:.1} s: {:.0} pages/s; server time p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        requests as f64 / elapsed,
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    for page in PORTAL_PAGES {
        let prefix = page.replace("{report}", "");
        let mut times: Vec<Duration> = timings
            .iter()
            .filter(
                |(p, _)| if page.contains('{') { p.starts_with(&prefix) && p.len() > prefix.len() } else { p == page },
            )
            .map(|(_, d)| *d)
            .collect();
        times.sort();
        println!(
            "  {page:<28} n={:<6} p50 {:>5.1} ms  p99 {:>5.1} ms",
            times.len(),
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3
        );
    }
    println!(
        "first page (/portal/login, the whole page: no other assets): {} bytes; largest page seen: {} bytes",
        first_page.len(),
        largest.load(Ordering::Relaxed)
    );
    Ok(())
}

fn form_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}
