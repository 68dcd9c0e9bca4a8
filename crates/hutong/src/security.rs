//! The security side of the binary: the key ring and identity service a server uses (and its
//! reload when the key folder changes), the `hutong admin …` and `hutong audit …` commands
//! (working on the same `--data`/`--database` as a running server), and the demo accounts of
//! `serve --demo`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use auth::{Auth, AuthConfig, FileSms, NewUser};
use crypto::KeyRing;
use serde_json::{Value, json};
use store::ResourceStore;

use crate::StoreArgs;

/// Where the keys live.
#[derive(clap::Args, Clone)]
pub struct KeyArgs {
    /// Key folder (SM4 data keys, blind-index key, SM2 signing key); default `<data>/keys`.
    #[arg(long, env = "HUTONG_KEYS")]
    pub keys: Option<PathBuf>,
}

/// The key folder: `--keys`, default `<data>/keys`.
pub fn key_dir(store: &StoreArgs, keys: &KeyArgs) -> PathBuf {
    keys.keys.clone().unwrap_or_else(|| store.data.join("keys"))
}

/// Loads the key ring, creating missing keys only for a store that holds nothing sealed with
/// keys yet: new keys for a store with signed audit checkpoints or accounts would leave its ID
/// numbers undecryptable and its audit log unverifiable, so a wrong `--keys`/`--data` or a lost
/// key file is an error, not a silent fresh start.
pub async fn key_ring(
    store: &StoreArgs,
    keys: &KeyArgs,
    backend: &Arc<dyn ResourceStore>,
) -> anyhow::Result<Arc<KeyRing>> {
    let dir = key_dir(store, keys);
    let set = |vars: &[&str]| vars.iter().any(|v| std::env::var_os(v).is_some());
    let missing: Vec<&str> = [
        ("sm4.keys", set(&["HUTONG_SM4_KEY", "HUTONG_SM4_KEYS"])),
        ("blind-index.key", set(&["HUTONG_BLIND_INDEX_KEY"])),
        ("sm2.key", set(&["HUTONG_SM2_KEY", "HUTONG_SM2_KEY_PEM"])),
    ]
    .into_iter()
    .filter(|(file, from_env)| !from_env && !dir.join(file).exists())
    .map(|(file, _)| file)
    .collect();
    if !missing.is_empty() {
        let err = |e: store::StoreError| anyhow::anyhow!("{e}");
        let signed = !backend.audit_checkpoints().await.map_err(err)?.is_empty();
        let accounts = !backend.kv_list("user", "", 1).await.map_err(err)?.is_empty()
            || !backend.kv_list("client", "", 1).await.map_err(err)?.is_empty();
        if signed || accounts {
            anyhow::bail!(
                "the key folder {} has no {}, but this store already holds data sealed with its keys ({}): new \
                 keys would leave it unreadable and its audit log unverifiable. Point --keys (or HUTONG_KEYS) at \
                 this store's key folder, or restore the keys from backup",
                dir.display(),
                missing.join(", "),
                if signed { "signed audit checkpoints" } else { "user and client accounts" }
            );
        }
    }
    Ok(Arc::new(KeyRing::load_or_create(&dir).map_err(|e| anyhow::anyhow!("{e}")).context("loading the keys")?))
}

pub fn auth_service(
    backend: Arc<dyn ResourceStore>,
    store: &StoreArgs,
    keys: Arc<KeyRing>,
) -> anyhow::Result<Arc<Auth>> {
    std::fs::create_dir_all(&store.data).with_context(|| format!("creating {}", store.data.display()))?;
    let sms = Arc::new(FileSms::new(store.data.join("sms-outbox.txt")));
    Ok(Arc::new(Auth::new(backend, keys, AuthConfig::default(), sms)))
}

/// How often a server looks for changed key files.
const KEY_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The modification times of the key files (and of each retired public key), to notice a rotation.
fn key_folder_stamp(dir: &Path) -> Vec<(PathBuf, Option<std::time::SystemTime>)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut paths: Vec<PathBuf> = crypto::keyring::WATCHED_KEY_FILES.iter().map(|f| dir.join(f)).collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("sm2-retired")) {
        let mut retired: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        retired.sort();
        paths.extend(retired);
    }
    paths.into_iter().map(|p| (p.clone(), modified(&p))).collect()
}

/// Reads the key folder again (creating nothing) and checks that the new ring can still read
/// what the current one sealed: every SM4 key id kept, the same blind-index key.
fn reload_keys(dir: &Path, current: &KeyRing) -> anyhow::Result<KeyRing> {
    let ring = KeyRing::load(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dropped: Vec<&str> =
        current.sm4_key_ids().into_iter().filter(|kid| !ring.sm4_key_ids().contains(kid)).collect();
    if !dropped.is_empty() {
        anyhow::bail!(
            "the SM4 key(s) {} are no longer in the key folder, and values they encrypted would not open; put them \
             back (old keys are never removed)",
            dropped.join(", ")
        );
    }
    if ring.blind_index("reload-check", "x") != current.blind_index("reload-check", "x") {
        anyhow::bail!(
            "the blind-index key changed, which would make every ID-number and phone lookup miss; restore the old one"
        );
    }
    Ok(ring)
}

/// Every [`KEY_RELOAD_INTERVAL`], reloads the key folder into `auth` when a key file's
/// modification time changed (after `hutong admin rotate-keys` or an operator's edit). A reload
/// that fails is logged and retried at the next tick; the keys in use stay until one succeeds.
pub fn spawn_key_reload(auth: Arc<Auth>, dir: PathBuf) {
    tokio::spawn(async move {
        let mut seen = key_folder_stamp(&dir);
        let mut tick = tokio::time::interval(KEY_RELOAD_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = key_folder_stamp(&dir);
            if now == seen {
                continue;
            }
            match reload_keys(&dir, &auth.keys()) {
                Ok(ring) => {
                    tracing::info!(
                        sm4.active = ring.active_sm4_id(),
                        sm2.key_id = %ring.signing_key_id(),
                        sm2.retired = ring.retired_signing_key_ids().len(),
                        "reloaded the key folder"
                    );
                    auth.replace_keys(Arc::new(ring));
                    seen = now;
                }
                Err(e) => {
                    tracing::error!(error = %e, folder = %dir.display(), "could not reload the key folder; the keys in use stay")
                }
            }
        }
    });
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Create a system client (hospital system, platform node); prints {"client_id", "client_secret"},
    /// or with --public-key {"client_id", "token_endpoint_auth_method": "private_key_jwt", "alg"}.
    CreateClient {
        #[arg(long)]
        name: String,
        /// SMART system scopes, e.g. 'system/*.*' or 'system/Patient.rs system/Observation.cruds'.
        #[arg(long)]
        scopes: String,
        /// The client authenticates with JWT assertions signed by this key's private half instead of
        /// a secret: a PEM public key (SPKI) on the SM2 curve (alg SM2) or P-384 (alg ES384).
        #[arg(long, value_name = "FILE.pem")]
        public_key: Option<PathBuf>,
        /// The organization the client acts for (Organization id).
        #[arg(long)]
        organization: Option<String>,
        /// GB/T 2260 division code of the client's jurisdiction.
        #[arg(long)]
        region: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Create a staff or resident account; prints the account, its password if generated and
    /// the TOTP secret (staff).
    CreateUser {
        #[arg(long)]
        username: String,
        /// resident, doctor, nurse, family-doctor, pharmacist, cdc-officer, insurer, regulator, operator, auditor.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        display: String,
        /// Generated when absent (and printed once).
        #[arg(long, env = "HUTONG_NEW_PASSWORD")]
        password: Option<String>,
        #[arg(long)]
        organization: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        practitioner: Option<String>,
        /// Patient ids the account acts for: a resident's own, and a guardian's children and
        /// dependants. Repeat the option or separate ids with commas (--patients p1,p2).
        #[arg(long = "patient", visible_alias = "patients", value_delimiter = ',')]
        patients: Vec<String>,
        #[arg(long)]
        phone: Option<String>,
        /// GB 11643 ID number (required for residents).
        #[arg(long)]
        id_number: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Disable or enable an account, or set the patients a resident acts for (a guardian's
    /// dependants); sessions take the change at their next refresh. Prints the account as JSON.
    SetUser {
        #[arg(long)]
        username: String,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        /// Patient ids, comma-separated (replaces the list).
        #[arg(long, value_delimiter = ',')]
        patients: Option<Vec<String>>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Rotate keys in the key folder; running servers pick them up within 30 s, no restart.
    /// Prints the new key ids as JSON.
    RotateKeys {
        /// Append a new SM4 data key (new id) as the active key; older keys stay and still decrypt.
        #[arg(long)]
        sm4: bool,
        /// Replace the SM2 signing key, keeping the old public key in sm2-retired/ so checkpoints it
        /// signed still verify (a checkpoint over the log is signed with the old key first).
        #[arg(long)]
        sm2: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the whole audit log (hash chain and signed checkpoints); exit status 1 on findings.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Sign a checkpoint over the current end of the log now (the server does this every minute).
    Checkpoint {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Delete entries older than the retention, up to a signed checkpoint so that the rest still
    /// verifies (the server does this daily). The prune itself is recorded in the log.
    Prune {
        /// Keep at least this many days of audit log (the legal minimum, and default, is 180).
        #[arg(long, env = "HUTONG_AUDIT_RETENTION_DAYS", default_value_t = store::audit::MIN_RETENTION_DAYS)]
        retention_days: i64,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

/// The audit retention in milliseconds, refusing less than the legal minimum with the reason.
pub fn audit_retention_ms(days: i64, option: &str) -> anyhow::Result<i64> {
    let minimum = store::audit::MIN_RETENTION_DAYS;
    if days < minimum {
        anyhow::bail!(
            "{option} {days} is below the legal minimum of {minimum} days (the Cybersecurity Law, art. 21, requires \
             network logs to be kept at least six months); use {minimum} or more"
        );
    }
    days.checked_mul(24 * 60 * 60 * 1000).with_context(|| format!("{option} {days} is too large"))
}

pub async fn admin(which: AdminCommand) -> anyhow::Result<()> {
    match which {
        AdminCommand::CreateClient { name, scopes, public_key, organization, region, store, keys } => {
            let pem = match &public_key {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading the public key {}", path.display()))?,
                ),
                None => None,
            };
            let backend = crate::open_store(&store).await?;
            let ring = key_ring(&store, &keys, &backend).await?;
            let auth = auth_service(backend, &store, ring)?;
            let out = match pem {
                Some(pem) => {
                    let (id, alg) = auth
                        .create_client_with_key(&name, &scopes, organization, region, &pem)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    json!({"client_id": id, "token_endpoint_auth_method": "private_key_jwt", "alg": alg})
                }
                None => {
                    let (id, secret) = auth
                        .create_client(&name, &scopes, organization, region)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    json!({"client_id": id, "client_secret": secret})
                }
            };
            println!("{out}");
            Ok(())
        }
        AdminCommand::CreateUser {
            username,
            role,
            display,
            password,
            organization,
            region,
            practitioner,
            patients,
            phone,
            id_number,
            store,
            keys,
        } => {
            let backend = crate::open_store(&store).await?;
            let ring = key_ring(&store, &keys, &backend).await?;
            let auth = auth_service(backend, &store, ring)?;
            let new = NewUser {
                username,
                display,
                role,
                password,
                organization,
                region,
                practitioner,
                patients,
                phone,
                id_number,
                totp_secret: None,
            };
            let (user, generated, totp) = auth.create_user(new).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut out = json!({"id": user.id, "username": user.username, "role": user.role.code()});
            if let Some(p) = generated {
                out["password"] = json!(p);
            }
            if let Some(t) = totp {
                let secret = crypto::totp::base32_decode(&t).unwrap_or_default();
                out["totp_secret"] = json!(t);
                out["totp_uri"] = json!(crypto::totp::uri(&secret, &user.username, "Hutong"));
            }
            println!("{out}");
            Ok(())
        }
        AdminCommand::RotateKeys { sm4, sm2, store, keys } => rotate_keys(sm4, sm2, &store, &keys).await,
        AdminCommand::SetUser { username, disable, enable, patients, store, keys } => {
            let backend = crate::open_store(&store).await?;
            let ring = key_ring(&store, &keys, &backend).await?;
            let auth = auth_service(backend, &store, ring)?;
            let active = if disable {
                Some(false)
            } else if enable {
                Some(true)
            } else {
                None
            };
            anyhow::ensure!(
                active.is_some() || patients.is_some(),
                "say what to change: --disable, --enable or --patients p1,p2"
            );
            let user = auth.set_user(&username, active, patients).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}",
                json!({"id": user.id, "username": user.username, "role": user.role.code(), "active": user.active,
                       "patients": user.patients})
            );
            Ok(())
        }
    }
}

/// `hutong admin rotate-keys`: rotates the key files in place. Keys given by environment
/// variables are not in the files, so rotating those is refused with where to do it instead.
async fn rotate_keys(sm4: bool, sm2: bool, store: &StoreArgs, keys: &KeyArgs) -> anyhow::Result<()> {
    if !sm4 && !sm2 {
        anyhow::bail!("say which keys to rotate: --sm4, --sm2 or both");
    }
    let from_env = |vars: &[&str]| vars.iter().find(|v| std::env::var_os(v).is_some()).map(|v| v.to_string());
    for (wanted, vars) in
        [(sm4, &["HUTONG_SM4_KEY", "HUTONG_SM4_KEYS"]), (sm2, &["HUTONG_SM2_KEY", "HUTONG_SM2_KEY_PEM"])]
    {
        if let (true, Some(var)) = (wanted, from_env(vars)) {
            anyhow::bail!(
                "{var} is set, so that key comes from the environment, not the key folder; rotate it where the \
                 variable is managed (docs/OPERATIONS.md, \"Keys\")"
            );
        }
    }
    let backend = crate::open_store(store).await?;
    let ring = key_ring(store, keys, &backend).await?;
    let dir = key_dir(store, keys);
    let mut out = json!({});
    if sm4 {
        let kid = KeyRing::rotate_sm4_in(&dir).map_err(|e| anyhow::anyhow!("{e}")).context("rotating the SM4 key")?;
        out["sm4_key_id"] = json!(kid);
    }
    if sm2 {
        // Seal the log as it stands with the old key, so everything before the rotation is
        // covered by a checkpoint that the retired key verifies.
        auth::audit::checkpoint(&backend, &ring)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("signing a last checkpoint with the old SM2 key")?;
        let (retired, new) =
            KeyRing::rotate_sm2_in(&dir).map_err(|e| anyhow::anyhow!("{e}")).context("rotating the SM2 key")?;
        out["sm2_key_id"] = json!(new);
        out["sm2_retired_key_id"] = json!(retired);
    }
    // The rotation is an administrative act like any other: it goes in the log (key ids only).
    let record = store::AuditRecord {
        recorded: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        action: "key-rotation".into(),
        outcome: "success".into(),
        actor: "platform".into(),
        role: "operator".into(),
        organization: String::new(),
        purpose: "HSYSADMIN".into(),
        entity: "keys".into(),
        patients: Vec::new(),
        detail: out.to_string(),
    };
    backend
        .commit_audited(&store::Ctx::system(), Vec::new(), vec![record])
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("recording the rotation in the audit log")?;
    println!("{out}");
    Ok(())
}

pub async fn audit(which: AuditCommand) -> anyhow::Result<()> {
    match which {
        AuditCommand::Verify { store, keys } => {
            let backend = crate::open_store(&store).await?;
            let ring = key_ring(&store, &keys, &backend).await?;
            let started = std::time::Instant::now();
            let report = auth::audit::verify(&backend, &ring).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let seconds = started.elapsed().as_secs_f64();
            for finding in &report.findings {
                println!("TAMPERED {finding}");
            }
            if !report.signing_keys.is_empty() {
                let keys: Vec<String> = report
                    .signing_keys
                    .iter()
                    .map(|k| {
                        let state = match (k.current, k.known) {
                            (true, _) => "current",
                            (false, true) => "retired",
                            (false, false) => "UNKNOWN",
                        };
                        format!("{} ({state}): {}", k.key_id, k.checkpoints)
                    })
                    .collect();
                println!("checkpoints by SM2 key: {}", keys.join(", "));
            }
            println!(
                "{} entries{}, {} checkpoints (last valid at entry {}), verified in {:.2} s ({:.0} entries/s): {}",
                report.entries,
                report.pruned_through.map_or(String::new(), |n| format!(" (entries 1–{n} pruned by retention)")),
                report.checkpoints,
                report.last_checkpoint.map_or("none".to_string(), |s| s.to_string()),
                seconds,
                report.entries as f64 / seconds.max(1e-6),
                if report.is_clean() { "the audit log is intact" } else { "THE AUDIT LOG HAS BEEN TAMPERED WITH" }
            );
            if report.is_clean() { Ok(()) } else { std::process::exit(1) }
        }
        AuditCommand::Checkpoint { store, keys } => {
            let backend = crate::open_store(&store).await?;
            let ring = key_ring(&store, &keys, &backend).await?;
            match auth::audit::checkpoint(&backend, &ring).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                Some(cp) => println!("signed checkpoint at entry {} ({})", cp.seq, cp.hash),
                None => println!("nothing new to sign"),
            }
            Ok(())
        }
        AuditCommand::Prune { retention_days, store, keys } => {
            let retention = audit_retention_ms(retention_days, "--retention-days")?;
            let backend = crate::open_store(&store).await?;
            let ring = key_ring(&store, &keys, &backend).await?;
            match auth::audit::prune(&backend, &ring, retention).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                Some(p) => println!(
                    "pruned {} audit entries ({}–{}) older than {retention_days} days, through the checkpoint signed \
                     {}; the log now starts at entry {}",
                    p.entries,
                    p.from,
                    p.through,
                    chrono::DateTime::from_timestamp_millis(p.checkpoint_signed_at)
                        .map_or_else(|| p.checkpoint_signed_at.to_string(), |t| t.to_rfc3339()),
                    p.through + 1
                ),
                None => println!(
                    "nothing to prune: no signed checkpoint covers only entries older than {retention_days} days"
                ),
            }
            Ok(())
        }
    }
}

/// The password of every demo account (documented in README; demo data only).
pub const DEMO_PASSWORD: &str = "Hutong#2026";
/// The TOTP secret (base32) of every demo staff account (documented in README).
pub const DEMO_TOTP: &str = "HUTONGDEMOTOTPKEY234";

/// Creates one account per role for the demo (once), and a system client whose secret is
/// written to `<data>/demo-client.json`. The resident account is linked to the first demo
/// Patient and uses its ID number.
pub async fn demo_accounts(auth: &Auth, engine: &engine::Engine, data: &std::path::Path) -> anyhow::Result<()> {
    if auth.find_user("doctor").await.map_err(|e| anyhow::anyhow!("{e}"))?.is_some() {
        return Ok(());
    }
    let opts = engine::RequestOptions { base_url: "urn:hutong:demo".into(), ..Default::default() };
    let first = engine
        .search(
            &store::Ctx::system(),
            Some("Patient"),
            &[("_count".into(), "2".into()), ("_sort".into(), "_id".into())],
            &opts,
        )
        .await?;
    let patient = |i: usize| {
        let r = &first["entry"][i]["resource"];
        (r["id"].as_str().unwrap_or("").to_string(), r["identifier"][0]["value"].as_str().map(str::to_string))
    };
    let (resident_patient, resident_id) = patient(0);
    let resident_name = first["entry"][0]["resource"]["name"][0]["text"].as_str().unwrap_or("居民").to_string();
    let (child_patient, _) = patient(1);
    let staff = [
        ("doctor", "doctor", "张医生", Some("org-1"), Some("doc-1"), None),
        ("nurse", "nurse", "李护士", Some("org-1"), None, None),
        ("family-doctor", "family-doctor", "王家庭医生", Some("org-4"), Some("doc-4"), None),
        ("pharmacist", "pharmacist", "陈药师", Some("org-1"), Some("pharm-1"), None),
        ("pharmacy", "pharmacist", "惠民大药房药师", Some("pharmacy-1"), None, Some("350102")),
        ("cdc", "cdc-officer", "福州市疾控中心", Some("cdc-fz"), None, Some("350100")),
        ("insurer", "insurer", "福建省医保中心", Some("ybj-fj"), None, Some("350000")),
        ("regulator", "regulator", "福建省卫健委", Some("wjw-fj"), None, Some("350000")),
        ("operator", "operator", "平台运维", None, None, None),
        ("auditor", "auditor", "安全审计员", None, None, None),
        ("steward", "data-steward", "主索引数据管理员", None, None, Some("350000")),
    ];
    for (username, role, display, org, practitioner, region) in staff {
        auth.create_user(NewUser {
            username: username.into(),
            display: display.into(),
            role: role.into(),
            password: Some(DEMO_PASSWORD.into()),
            organization: org.map(str::to_string),
            region: region.map(str::to_string).or_else(|| Some("350102".to_string())),
            practitioner: practitioner.map(str::to_string),
            totp_secret: Some(DEMO_TOTP.into()),
            ..NewUser::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("demo account {username}: {e}"))?;
    }
    if !resident_patient.is_empty() {
        // Lab and imaging results for the portal's 我的报告.
        let reports = crate::demo::resident_reports(&resident_patient, chrono::Utc::now());
        engine.bundle(&store::Ctx::system(), reports, &opts).await.context("loading the demo resident's reports")?;
        // The internet hospital: a pharmacy, the hospital pharmacist, and an offline diagnosis
        // (hypertension) the resident can ask a follow-up visit for.
        let internet = crate::demo::internet_hospital_bundle(&resident_patient, chrono::Utc::now());
        engine.bundle(&store::Ctx::system(), internet, &opts).await.context("loading the demo internet hospital")?;
        // The portal signs residents in by real name + ID number + SMS code: the synthetic
        // resident's name and ID number go to a file readable by the owner only (never to the log).
        let sign_in = json!({"name": resident_name, "idNumber": resident_id, "phone": "13800000001"});
        write_private(&data.join("demo-resident.json"), &sign_in)?;
        let mut patients = vec![resident_patient];
        if !child_patient.is_empty() {
            patients.push(child_patient); // acts as guardian of a second resident
        }
        auth.create_user(NewUser {
            username: "resident".into(),
            display: resident_name,
            role: "resident".into(),
            password: Some(DEMO_PASSWORD.into()),
            patients,
            phone: Some("13800000001".into()),
            id_number: resident_id,
            ..NewUser::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("demo resident account: {e}"))?;
    }
    write_demo_staff(data)?;
    let (id, secret) = auth
        .create_client("demo hospital system", "system/*.*", Some("org-1".into()), Some("350102".into()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private(&data.join("demo-client.json"), &json!({"client_id": id, "client_secret": secret}))
}

/// Writes a demo credentials file readable by its owner only.
fn write_private(path: &std::path::Path, content: &Value) -> anyhow::Result<()> {
    std::fs::write(path, content.to_string()).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

/// The demo staff sign-ins of the internet hospital's workbench (`<data>/demo-staff.json`,
/// readable by its owner only; synthetic accounts): user name, password, TOTP secret (base32)
/// and the page each one signs in at.
fn write_demo_staff(data: &std::path::Path) -> anyhow::Result<()> {
    let account = |username: &str, page: &str, role: &str| json!({"username": username, "password": DEMO_PASSWORD, "totpSecret": DEMO_TOTP, "page": page, "role": role});
    let staff = json!({
        "doctor": account("doctor", "/doctor/", "internet-practice doctor at 福州市第一医院 (Practitioner/doc-1)"),
        "pharmacist": account("pharmacist", "/pharmacist/", "pharmacist of 福州市第一医院 (Practitioner/pharm-1)"),
        "pharmacy": account("pharmacy", "/pharmacy/", "pharmacist of 鼓楼区惠民大药房 (Organization/pharmacy-1)"),
        "regulator": account("regulator", "/regulator/", "regulator, 福建省卫健委"),
    });
    write_private(&data.join("demo-staff.json"), &staff)
}
