//! `hutong import`: loads FHIR Bundles, single resources, NDJSON files and population-register
//! CSV files (or folders of them) through the engine, each Bundle or chunk as one atomic
//! transaction.
//!
//! Idempotent: `POST` entries whose `fullUrl` is `urn:uuid:X` become `PUT Type/X`, and the
//! engine writes nothing for an update identical to the current version, so importing the
//! same files twice changes nothing. Resumable: `import-journal.json` in the data folder
//! records, per file (path, size, modification time), how many units (Bundles or NDJSON
//! chunks) are committed; it is written after each commit, so a re-run after an interruption
//! skips what is already in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use engine::{Engine, RequestOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use store::Ctx;

/// Resources per transaction when importing NDJSON.
const NDJSON_CHUNK: usize = 500;

/// Rewrites a Bundle into an idempotent transaction (see the module doc).
pub fn idempotent_transaction(mut bundle: Value) -> Value {
    let kind = bundle["type"].as_str().unwrap_or_default().to_string();
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        for entry in entries.iter_mut() {
            let ty = entry["resource"]["resourceType"].as_str().map(str::to_string);
            let full_url = entry["fullUrl"].as_str().map(str::to_string);
            let uuid = full_url.as_deref().and_then(|u| u.strip_prefix("urn:uuid:")).map(str::to_string);
            let method = entry["request"]["method"].as_str().map(str::to_string);
            match (kind.as_str(), method.as_deref(), ty, uuid) {
                ("transaction" | "batch", Some("POST"), Some(ty), Some(id))
                    if entry["request"].get("ifNoneExist").is_none() =>
                {
                    entry["request"] = json!({"method": "PUT", "url": format!("{ty}/{id}")});
                    entry["resource"]["id"] = Value::String(id);
                }
                ("transaction" | "batch", _, _, _) => {}
                // collection, searchset, document, message: store each resource.
                (_, _, Some(ty), uuid) => {
                    let id = entry["resource"]["id"].as_str().map(str::to_string).or(uuid);
                    entry["request"] = match id {
                        Some(id) => {
                            entry["resource"]["id"] = Value::String(id.clone());
                            json!({"method": "PUT", "url": format!("{ty}/{id}")})
                        }
                        None => json!({"method": "POST", "url": ty}),
                    };
                }
                _ => {}
            }
        }
    }
    bundle["type"] = json!("transaction");
    bundle
}

fn single_resource_transaction(resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let ty = r["resourceType"].as_str().unwrap_or_default().to_string();
            let request = match r["id"].as_str() {
                Some(id) => json!({"method": "PUT", "url": format!("{ty}/{id}")}),
                None => json!({"method": "POST", "url": ty}),
            };
            json!({"resource": r, "request": request})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// file key (path|size|mtime) → units committed.
    files: BTreeMap<String, usize>,
}

fn journal_path(data: &Path) -> PathBuf {
    data.join("import-journal.json")
}

fn load_journal(data: &Path) -> Journal {
    std::fs::read(journal_path(data)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save_journal(data: &Path, journal: &Journal) -> anyhow::Result<()> {
    let tmp = data.join("import-journal.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(journal)?)?;
    std::fs::rename(&tmp, journal_path(data)).context("writing the import journal")
}

fn file_key(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("{}|{size}|{mtime}", canonical.display())
}

fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(p)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            children.sort();
            let children: Vec<PathBuf> = children
                .into_iter()
                .filter(|c| {
                    c.is_dir() || matches!(c.extension().and_then(|e| e.to_str()), Some("json" | "ndjson" | "csv"))
                })
                .collect();
            out.extend(collect_files(&children)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The units of one file, as transaction Bundles.
fn units(path: &Path) -> anyhow::Result<Vec<Value>> {
    if path.extension().and_then(|e| e.to_str()) == Some("csv") {
        // A population-register file (register_csv.rs): all rows or none.
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let patients = crate::register_csv::patients(&crate::register_csv::decode(&bytes))
            .with_context(|| format!("{}", path.display()))?;
        return Ok(patients.chunks(NDJSON_CHUNK).map(|c| single_resource_transaction(c.to_vec())).collect());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().and_then(|e| e.to_str()) == Some("ndjson") {
        let mut resources = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r: Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not valid JSON", path.display(), n + 1))?;
            resources.push(r);
        }
        return Ok(resources.chunks(NDJSON_CHUNK).map(|c| single_resource_transaction(c.to_vec())).collect());
    }
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(vec![if value["resourceType"] == "Bundle" {
        idempotent_transaction(value)
    } else {
        single_resource_transaction(vec![value])
    }])
}

pub struct Summary {
    pub files: usize,
    pub resources: usize,
    pub seconds: f64,
    pub failures: Vec<String>,
}

/// Transactions in flight at once: one is prepared on the second core while another commits.
/// Completions are journaled in order, so an interruption never records a unit as done before
/// every earlier one is; a unit that committed after the last journaled one is simply imported
/// again on resume, which changes nothing.
const IN_FLIGHT: usize = 2;

/// One unit of work: a Bundle (or NDJSON chunk) of one file.
struct Unit {
    file: usize,
    index: usize,
    count: usize,
    bundle: Value,
}

/// Imports `paths` into `engine`, journaling progress in `data`.
pub async fn run(engine: Arc<Engine>, data: &Path, paths: &[PathBuf], show_progress: bool) -> anyhow::Result<Summary> {
    use futures::StreamExt;
    std::fs::create_dir_all(data)?;
    let files = collect_files(paths)?;
    let keys: Vec<String> = files.iter().map(|f| file_key(f)).collect();
    let sizes: Vec<u64> = files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).collect();
    let bar = if show_progress { ProgressBar::new(sizes.iter().sum()) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut journal = load_journal(data);
    let started = Instant::now();
    let mut resources = 0usize;
    let mut failures = Vec::new();
    // Minimal responses: the import needs the outcome, not the resources echoed back.
    let opts = RequestOptions {
        base_url: "urn:hutong:import".into(),
        return_preference: engine::ReturnPreference::Minimal,
        ..RequestOptions::default()
    };
    // Files are read lazily, one at a time, as the pipeline asks for more units.
    let mut read_failures: Vec<String> = Vec::new();
    let done: Vec<usize> = keys.iter().map(|k| journal.files.get(k).copied().unwrap_or(0)).collect();
    let units = futures::stream::iter(0..files.len()).flat_map(|file| {
        let items: Vec<Result<Unit, String>> = match units(&files[file]) {
            Ok(list) => {
                let count = list.len().max(1);
                list.into_iter()
                    .enumerate()
                    .filter(|(index, _)| *index >= done[file])
                    .map(|(index, bundle)| Ok(Unit { file, index, count, bundle }))
                    .collect()
            }
            Err(e) => vec![Err(format!("{e:#}"))],
        };
        futures::stream::iter(items)
    });
    let mut results = units
        .map(|item| {
            let (engine, opts) = (engine.clone(), opts.clone());
            async move {
                let unit = match item {
                    Ok(unit) => unit,
                    Err(message) => return Err(message),
                };
                let entries = unit.bundle["entry"].as_array().map_or(0, Vec::len);
                let outcome = tokio::spawn(async move { engine.bundle(&Ctx::system(), unit.bundle, &opts).await })
                    .await
                    .map_err(|e| format!("import task failed: {e}"))?;
                Ok((unit.file, unit.index, unit.count, entries, outcome))
            }
        })
        .buffered(IN_FLIGHT);
    while let Some(result) = results.next().await {
        let (file, index, count, entries, outcome) = match result {
            Ok(r) => r,
            Err(message) => {
                read_failures.push(message);
                continue;
            }
        };
        match outcome {
            Ok(_) => {
                resources += entries;
                journal.files.insert(keys[file].clone(), index + 1);
                save_journal(data, &journal)?;
            }
            Err(e) => {
                let issues: Vec<String> = e.issues().into_iter().map(|i| i.diagnostics).collect();
                failures.push(format!("{} (unit {}): {}", files[file].display(), index + 1, issues.join("; ")));
            }
        }
        bar.inc(sizes[file] / count as u64);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{resources} resources, {:.0}/s", resources as f64 / secs));
    }
    bar.finish_and_clear();
    failures.extend(read_failures);
    Ok(Summary { files: files.len(), resources, seconds: started.elapsed().as_secs_f64(), failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_with_uuid_becomes_put() {
        let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:abc", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:def", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x"}}
        ]});
        let t = idempotent_transaction(b);
        assert_eq!(t["entry"][0]["request"], json!({"method": "PUT", "url": "Patient/abc"}));
        assert_eq!(t["entry"][0]["resource"]["id"], "abc");
        assert_eq!(t["entry"][1]["request"]["method"], "POST", "conditional creates are left alone");
    }

    #[test]
    fn collections_become_transactions() {
        let b = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"}},
            {"resource": {"resourceType": "Patient"}}
        ]});
        let t = idempotent_transaction(b);
        assert_eq!(t["type"], "transaction");
        assert_eq!(t["entry"][0]["request"]["url"], "Patient/p1");
        assert_eq!(t["entry"][1]["request"]["method"], "POST");
    }
}
