//! `hutong terminology load`: a code system from CSV (national clinical ICD-10 edition,
//! ICD-9-CM-3, drug catalogues: licensed content a region holds a copy of) stored as a
//! CodeSystem resource through the engine, so the terminology operations find it by URL.
//! The CSV layout is `terminology::csv` (docs/API.md, "Terminology").

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use store::Ctx;

use crate::{StoreArgs, engine_for, open_store};

#[derive(Subcommand)]
pub enum TerminologyCommand {
    /// Store a CodeSystem made from a CSV file (code,display[,parent][,designation:LANG][,property…]);
    /// loading the same URL and version again replaces it.
    Load {
        /// Canonical URL of the code system, e.g. http://hutong.health/fhir/CodeSystem/icd-10-gb-clinical-2.0.
        #[arg(long)]
        system: String,
        /// Computer-friendly name, e.g. ICD10GBClinical.
        #[arg(long)]
        name: String,
        /// Version of the edition, e.g. 2.0.
        #[arg(long)]
        version: Option<String>,
        /// Human-friendly title.
        #[arg(long)]
        title: Option<String>,
        /// Other names of the system, e.g. urn:oid:2.16.156.… (repeatable).
        #[arg(long)]
        identifier: Vec<String>,
        /// The CSV file (UTF-8).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(which: TerminologyCommand) -> anyhow::Result<()> {
    match which {
        TerminologyCommand::Load { system, name, version, title, identifier, file, store } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut cs = terminology::csv::code_system_from_csv(&text, &system, &name, version.as_deref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if let Some(t) = title {
                cs["title"] = json!(t);
            }
            if !identifier.is_empty() {
                cs["identifier"] =
                    identifier.iter().map(|i| json!({"system": "urn:ietf:rfc:3986", "value": i})).collect();
            }
            let concepts = cs["concept"].as_array().map_or(0, Vec::len);
            let engine = engine_for(open_store(&store).await?, &store);
            let mut criteria = vec![("url".to_string(), system.clone())];
            if let Some(v) = &version {
                criteria.push(("version".to_string(), v.clone()));
            }
            let outcome = engine
                .conditional_update(&Ctx::system(), "CodeSystem", &criteria, cs, &engine::RequestOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("storing the CodeSystem: {:?}", e.issues()))?;
            println!(
                "{} CodeSystem/{} (version {}) with {concepts} concepts: {system}",
                if outcome.created { "created" } else { "updated" },
                outcome.resource.id,
                outcome.resource.version
            );
            Ok(())
        }
    }
}
