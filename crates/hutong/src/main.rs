//! The `hutong` binary: `serve`, `import`, `bench`, `admin`, `audit` and `terminology`.

/// mimalloc: the write path allocates many small JSON nodes and strings; glibc malloc spent a
/// fifth of ingest time in malloc/free (perf), mimalloc much less. Built with `no_thp`: with
/// transparent huge pages mimalloc's fresh arena pages were faulted in 2 MiB at a time, and the
/// kernel's zeroing of them (`clear_page_erms`) was 7–8% of the booking and health card
/// benchmarks' samples (under 0.1% without).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_docs;
mod bench_rx;
mod demo;
mod import;
mod mllp;
mod notify;
mod register_csv;
mod security;
mod terminology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use engine::{Engine, EngineConfig, RequestOptions};
use store::{Ctx, ResourceStore};

#[derive(Parser)]
#[command(name = "hutong", version, about = "Hutong (互通) regional health information platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the data lives.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// Data folder of the embedded store (and of import journals and export files).
    #[arg(long, env = "HUTONG_DATA", default_value = "./hutong-data")]
    pub data: PathBuf,
    /// PostgreSQL URL (postgres://user@host:port/db); without it the embedded SQLite store is used.
    #[arg(long, env = "HUTONG_DATABASE_URL")]
    pub database: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "HUTONG_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Load the synthetic demo data set when the store is empty.
        #[arg(long, env = "HUTONG_DEMO")]
        demo: bool,
        /// Largest request body accepted, in bytes.
        #[arg(long, env = "HUTONG_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
        max_body_bytes: usize,
        /// Public FHIR base URL, when the server runs behind a proxy.
        #[arg(long, env = "HUTONG_BASE_URL")]
        base_url: Option<String>,
        /// Keep this many days of audit log; older entries are pruned at start-up and daily,
        /// up to a signed checkpoint. The legal minimum (and default) is 180.
        #[arg(long, env = "HUTONG_AUDIT_RETENTION_DAYS", default_value_t = store::audit::MIN_RETENTION_DAYS)]
        audit_retention_days: i64,
        #[command(flatten)]
        keys: security::KeyArgs,
        /// Address of the HL7 v2 (MLLP) listener, or `off`.
        #[arg(long, env = "HUTONG_MLLP_LISTEN", default_value = "127.0.0.1:2575")]
        mllp_listen: String,
        /// Largest HL7 v2 message accepted, in bytes; a larger one is refused and its connection closed.
        #[arg(long, env = "HUTONG_MLLP_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
        mllp_max_message_bytes: usize,
        /// Smart guidance rule table (TSV, format in docs/API.md) instead of the built-in one.
        #[arg(long, env = "HUTONG_GUIDANCE_RULES")]
        guidance_rules: Option<PathBuf>,
        /// The internet hospital's drug catalogue (TSV, format in docs/INTERNET-HOSPITAL.md)
        /// instead of the synthetic demo one.
        #[arg(long, env = "HUTONG_DRUG_CATALOGUE")]
        drug_catalogue: Option<PathBuf>,
        /// The drug interaction table (TSV) instead of the synthetic demo one.
        #[arg(long, env = "HUTONG_DRUG_INTERACTIONS")]
        drug_interactions: Option<PathBuf>,
    },
    /// Import FHIR Bundles, resources and NDJSON files or folders (idempotent, resumable).
    Import {
        /// Files or folders to import.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: security::KeyArgs,
    },
    /// Benchmarks (results go to docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: bench::BenchCommand,
    },
    /// Accounts, clients and key rotation (for operators and scripts; same --data/--database as the server).
    Admin {
        #[command(subcommand)]
        which: security::AdminCommand,
    },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        which: security::AuditCommand,
    },
    /// Terminology content: load code systems from CSV.
    Terminology {
        #[command(subcommand)]
        which: terminology::TerminologyCommand,
    },
}

/// Opens the configured store.
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn ResourceStore>> {
    Ok(match &args.database {
        Some(url) => Arc::new(
            store_postgres::PgStore::connect(url)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("opening PostgreSQL")?,
        ),
        None => Arc::new(store_sqlite::SqliteStore::open(&args.data).map_err(|e| anyhow::anyhow!("{e}"))?),
    })
}

pub fn engine_for(store: Arc<dyn ResourceStore>, args: &StoreArgs) -> Engine {
    // HUTONG_AUDIT_READS=durable makes every read wait for its audit record to commit.
    let audit_reads = match std::env::var("HUTONG_AUDIT_READS").as_deref() {
        Ok("durable") => engine::AuditMode::Durable,
        _ => engine::AuditMode::Queued,
    };
    // HUTONG_SUBSCRIPTION_HOSTS=a.example.org,10.1.2.3:8080 replaces the rest-hook allow-list
    // (default: loopback only; docs/SUBSCRIPTIONS.md).
    let mut subscriptions = engine::SubscriptionConfig::default();
    if let Ok(hosts) = std::env::var("HUTONG_SUBSCRIPTION_HOSTS") {
        subscriptions.allowed_hosts =
            hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
    }
    Engine::new(
        store,
        EngineConfig { export_dir: args.data.join("export"), audit_reads, subscriptions, ..EngineConfig::default() },
    )
}

/// Loads the demo data set if the store holds no Patient yet; returns how many resources.
pub(crate) async fn load_demo(engine: &Engine) -> anyhow::Result<usize> {
    let ctx = Ctx::system();
    let opts = RequestOptions {
        base_url: "urn:hutong:demo".into(),
        return_preference: engine::ReturnPreference::Minimal,
        ..RequestOptions::default()
    };
    let probe = engine.search(&ctx, Some("Patient"), &[("_count".into(), "1".into())], &opts).await?;
    if probe["entry"].as_array().is_some_and(|e| !e.is_empty()) {
        return Ok(0);
    }
    let mut n = 0;
    for bundle in demo::demo_bundles(300) {
        let bundle = import::idempotent_transaction(bundle);
        n += bundle["entry"].as_array().map_or(0, Vec::len);
        engine.bundle(&ctx, bundle, &opts).await.context("loading the demo data")?;
    }
    // The booking pool: a week of outpatient slots from tomorrow (Beijing time).
    let today = (chrono::Utc::now() + chrono::Duration::hours(8)).date_naive();
    let scheduling = demo::scheduling_bundle(today);
    n += scheduling["entry"].as_array().map_or(0, Vec::len);
    engine.bundle(&ctx, scheduling, &opts).await.context("loading the demo schedules")?;
    Ok(n)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tokio_postgres=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            store,
            demo,
            max_body_bytes,
            base_url,
            audit_retention_days,
            keys,
            mllp_listen,
            mllp_max_message_bytes,
            guidance_rules,
            drug_catalogue,
            drug_interactions,
        } => {
            let read = |path: &PathBuf, what: &str| {
                std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
            };
            let mut rx = engine::RxConfig::default();
            if let Some(path) = &drug_catalogue {
                let text = read(path, "--drug-catalogue")?;
                rx.catalogue = Arc::new(::rx::Catalogue::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            if let Some(path) = &drug_interactions {
                let text = read(path, "--drug-interactions")?;
                rx.knowledge = Arc::new(::rx::Knowledge::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            let guidance = match &guidance_rules {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading --guidance-rules {}", path.display()))?;
                    Some(Arc::new(engine::GuidanceRules::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?))
                }
                None => None,
            };
            let addr: SocketAddr =
                listen.parse().with_context(|| format!("--listen '{listen}' is not an address like 127.0.0.1:8080"))?;
            let mllp_addr: Option<SocketAddr> = match mllp_listen.as_str() {
                "off" => None,
                a => Some(a.parse().with_context(|| {
                    format!("--mllp-listen '{a}' is not an address like 127.0.0.1:2575 (or 'off')")
                })?),
            };
            let audit_retention = security::audit_retention_ms(audit_retention_days, "--audit-retention-days")?;
            let backend = open_store(&store).await?;
            let ring = security::key_ring(&store, &keys, &backend).await?;
            let auth = security::auth_service(backend.clone(), &store, ring)?;
            // ID numbers and phones in person resources are sealed at rest with the key ring the
            // server currently holds (rotations reload it).
            let keys_of = auth.clone();
            let sealed: Arc<dyn ResourceStore> =
                Arc::new(engine::SealingStore::new(backend.clone(), Arc::new(move || keys_of.keys())));
            let mut engine = engine_for(sealed, &store);
            if let Some(rules) = guidance {
                engine = engine.with_guidance(rules);
            }
            engine = engine.with_rx(rx);
            let engine = Arc::new(engine);
            // Build the preloaded terminology (R4 package, national systems, ICD-10; under a
            // second) in the background, so the first terminology request does not wait for it.
            tokio::task::spawn_blocking(::terminology::Terminology::preloaded);
            if demo {
                let n = load_demo(&engine).await?;
                if n > 0 {
                    println!(
                        "Loaded the synthetic demo data set: {n} resources (4 hospitals, 12 doctors, 300 residents, 90 of them registered again at another hospital)"
                    );
                }
                security::demo_accounts(&auth, &engine, &store.data).await?;
                println!(
                    "Demo accounts (see README): resident, doctor, nurse, family-doctor, pharmacist, pharmacy, cdc, \
                     insurer, regulator, operator, auditor, steward; demo system client in {}; internet-hospital \
                     staff sign-ins in {}",
                    store.data.join("demo-client.json").display(),
                    store.data.join("demo-staff.json").display()
                );
            }
            // The master patient index matches Patients as they arrive (and those imported
            // while the server was down).
            tokio::spawn(engine.clone().mpi_run());
            // Booking confirmations, cancellations, waiting-list promotions and visit reminders
            // (engine/src/notify.rs) through the local SMS and app outboxes.
            tokio::spawn(engine.clone().notify_run(Arc::new(notify::FileNotifier::new(&store.data))));
            // Internet visits nobody took, or left open, time out (engine/src/internet.rs).
            tokio::spawn(engine.clone().visit_timeouts_run());
            // FHIR Subscriptions (engine/src/subscriptions.rs): rest-hooks and websockets, through
            // the hub the HTTP layer also serves the websocket endpoint with.
            // HUTONG_SUBSCRIPTION_CA=file.pem: more trusted roots for https rest-hooks.
            let subscription_hub = Arc::new(match std::env::var_os("HUTONG_SUBSCRIPTION_CA") {
                Some(path) => {
                    let pem = std::fs::read(&path).with_context(|| {
                        format!("HUTONG_SUBSCRIPTION_CA: cannot read {}", std::path::Path::new(&path).display())
                    })?;
                    api::subscriptions::SubscriptionHub::with_extra_roots(&pem).map_err(|e| {
                        anyhow::anyhow!("HUTONG_SUBSCRIPTION_CA {}: {e}", std::path::Path::new(&path).display())
                    })?
                }
                None => api::subscriptions::SubscriptionHub::default(),
            });
            tokio::spawn(engine.clone().subscriptions_run(subscription_hub.clone()));
            // Rotated keys are picked up without a restart (`hutong admin rotate-keys`).
            security::spawn_key_reload(auth.clone(), security::key_dir(&store, &keys));
            // Seal the audit log every minute: an SM2-signed checkpoint over the chain's head,
            // with the signing key in use at that moment.
            let (sealing_store, sealing_auth) = (backend.clone(), auth.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    if let Err(e) = auth::audit::checkpoint(&sealing_store, &sealing_auth.keys()).await {
                        tracing::warn!(error = %e, "could not sign an audit checkpoint");
                    }
                }
            });
            // Expired tokens and codes are deleted hourly (counts only in the log).
            let purging_auth = auth.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60 * 60));
                loop {
                    tick.tick().await;
                    match purging_auth.purge_expired().await {
                        Ok(n) => tracing::debug!(purged = n, "expired tokens and codes deleted"),
                        Err(e) => tracing::warn!(error = %e, "could not delete expired tokens"),
                    }
                }
            });
            // Audit retention, at start-up and then daily: entries older than the retention go,
            // up to a signed checkpoint, so the log still verifies. Logs counts and positions only.
            let (pruning_store, pruning_auth) = (backend.clone(), auth.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(24 * 60 * 60));
                loop {
                    tick.tick().await;
                    match auth::audit::prune(&pruning_store, &pruning_auth.keys(), audit_retention).await {
                        Ok(Some(p)) => {
                            tracing::info!(
                                entries = p.entries,
                                from = p.from,
                                through = p.through,
                                "pruned the audit log"
                            )
                        }
                        Ok(None) => tracing::debug!("audit retention: nothing old enough to prune"),
                        Err(e) => tracing::warn!(error = %e, "could not prune the audit log"),
                    }
                }
            });
            if let Some(mllp_addr) = mllp_addr {
                let listener = tokio::net::TcpListener::bind(mllp_addr).await.with_context(|| {
                    format!(
                        "cannot listen on {mllp_addr} for HL7 v2 (is the port in use? --mllp-listen off disables it)"
                    )
                })?;
                println!("Hutong HL7 v2 listener on mllp://{}", listener.local_addr()?);
                let config = mllp::MllpConfig {
                    max_message_bytes: mllp_max_message_bytes,
                    quarantine: store.data.join("hl7-quarantine"),
                    principal: Arc::new(mllp::listener_principal()),
                };
                tokio::spawn(mllp::serve(listener, engine.clone(), config));
            }
            // Held HL7 v2 messages are processed again by the listener's processing.
            engine.install_reprocessor(mllp::QUARANTINE_KIND, Arc::new(mllp::Reprocessor));
            // Messages an earlier run kept in files become quarantine entries.
            let adopted =
                mllp::adopt_files(&store.data.join("hl7-quarantine"), &engine, Arc::new(mllp::listener_principal()))
                    .await;
            if adopted > 0 {
                println!("moved {adopted} HL7 v2 message(s) kept in files into the data-quality quarantine");
            }
            let hl7: Arc<dyn api::hl7v2::Hl7Receiver> =
                Arc::new(mllp::HttpReceiver { engine: engine.clone(), quarantine: store.data.join("hl7-quarantine") });
            let config = api::ApiConfig {
                max_body_bytes,
                base_url,
                hl7: Some(hl7),
                subscriptions: subscription_hub,
                ..api::ApiConfig::default()
            };
            let app = api::router(api::AppState { engine: engine.clone(), auth: auth.clone(), config });
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (is the port in use?)"))?;
            let local = listener.local_addr()?;
            println!("Hutong FHIR server listening on http://{local}/fhir");
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            // Drain queued audit records, then seal the log.
            if let Err(e) = engine.flush_audit().await {
                tracing::error!(error = %e, "queued audit records could not be committed at shutdown");
            }
            let _ = auth::audit::checkpoint(&backend, &auth.keys()).await;
            Ok(())
        }
        Command::Import { paths, store, keys } => {
            let backend = open_store(&store).await?;
            // The same sealing of ID numbers and phones as the server's, with the same keys.
            let ring = security::key_ring(&store, &keys, &backend).await?;
            let sealed: Arc<dyn ResourceStore> =
                Arc::new(engine::SealingStore::new(backend, Arc::new(move || ring.clone())));
            let engine = Arc::new(engine_for(sealed, &store));
            let summary = import::run(engine, &store.data, &paths, true).await?;
            println!(
                "Imported {} resources from {} files in {:.1} s ({:.0} resources/s)",
                summary.resources,
                summary.files,
                summary.seconds,
                summary.resources as f64 / summary.seconds.max(1e-3)
            );
            if summary.failures.is_empty() {
                Ok(())
            } else {
                for f in &summary.failures {
                    eprintln!("failed: {f}");
                }
                anyhow::bail!(
                    "{} unit(s) failed to import; fix them and run the same command again",
                    summary.failures.len()
                )
            }
        }
        Command::Bench { which } => bench::run(which).await,
        Command::Admin { which } => security::admin(which).await,
        Command::Audit { which } => security::audit(which).await,
        Command::Terminology { which } => terminology::run(which).await,
    }
}
