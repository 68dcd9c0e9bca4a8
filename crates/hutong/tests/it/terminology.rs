//! `hutong terminology load`: a synthetic drug catalogue from CSV stored as a CodeSystem
//! (created, then updated in place on a second load), and a malformed file refused with the
//! line at fault.

use std::path::Path;
use std::process::{Command, Stdio};

fn hutong(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hutong")).args(args).arg("--data").arg(data).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn csv_code_systems_are_loaded_through_the_engine() {
    let data = tempfile::tempdir().unwrap();
    // The checkout this test runs in (not the one it was compiled in: a build cache may be shared).
    let sample = format!(
        "{}/tests/data/drug-catalogue-sample.csv",
        std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")
    );
    let load = [
        "terminology",
        "load",
        "--system",
        "http://example.org/fhir/CodeSystem/drugs",
        "--name",
        "Drugs",
        "--version",
        "2026",
        &sample,
    ];
    let first = hutong(&load, data.path());
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(first.status.success(), "{out} {}", String::from_utf8_lossy(&first.stderr));
    assert!(out.starts_with("created CodeSystem/") && out.contains("with 4 concepts"), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    // The same URL and version again: the same resource (unchanged content keeps its version).
    let again = hutong(&load, data.path());
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.starts_with(&format!("updated {id} (version 1)")), "{out}");

    let bad = data.path().join("bad.csv");
    std::fs::write(&bad, "code,display,parent\nA,x,\nB,y,Z\n").unwrap();
    let refused = hutong(
        &["terminology", "load", "--system", "http://example.org/cs", "--name", "X", bad.to_str().unwrap()],
        data.path(),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("CSV line 3: the parent 'Z'"));
}
