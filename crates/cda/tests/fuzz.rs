//! The CDA parser under hostile input: random bytes, the WS/T 500 fixture and the C-CDA samples
//! with bytes changed, inserted, deleted or cut off, markup duplicated, elements nested very
//! deeply, and huge attributes. Parsing never panics and always answers (a document or a
//! reason); whatever it accepts extracts into a transaction Bundle without panicking.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeds() -> Vec<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("tests/fixtures");
    let mut out = vec![std::fs::read_to_string(dir.join("C0002-outpatient.xml")).unwrap()];
    // The C-CDA samples when the test data is fetched (scripts/fetch-test-data.sh).
    let home = std::env::var("HOME").unwrap_or_default();
    let ccda = std::env::var("HUTONG_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(home).join(".cache/hutong-testdata"))
        .join("ccda");
    if let Ok(entries) = std::fs::read_dir(&ccda) {
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "xml")).collect();
        files.sort();
        out.extend(files.iter().take(6).filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    out
}

/// Parses; if accepted, extracts. Panics only if the parser does.
fn exercise(xml: &str) -> bool {
    match cda::parse(xml) {
        Ok(document) => {
            let bundle = cda::to_transaction(&document, xml);
            assert_eq!(bundle["type"], "transaction", "an accepted document extracts into a transaction");
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal says why");
            false
        }
    }
}

fn mutate(rng: &mut StdRng, xml: &str) -> String {
    let mut bytes = xml.as_bytes().to_vec();
    let markup = b"<>/=\"' &;!?-[]x:";
    for _ in 0..rng.random_range(1..6) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.random_range(0..bytes.len());
        let byte = if rng.random_bool(0.6) { markup[rng.random_range(0..markup.len())] } else { rng.random() };
        match rng.random_range(0..5) {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            _ => {
                // Duplicate a slice of markup somewhere else.
                let len = rng.random_range(1..200).min(bytes.len() - at);
                let slice = bytes[at..at + len].to_vec();
                let to = rng.random_range(0..bytes.len());
                bytes.splice(to..to, slice);
            }
        }
    }
    // The parser takes text: invalid UTF-8 is the HTTP layer's refusal (tested in the api crate).
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_documents_never_panic() {
    let mut rng = StdRng::seed_from_u64(20261201);
    let seeds = seeds();
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..3_000 {
        let xml = if round % 10 == 0 {
            let n = rng.random_range(0..400);
            (0..n).map(|_| rng.random_range(0x20u8..0x7f) as char).collect()
        } else {
            mutate(&mut rng, &seeds[round % seeds.len()])
        };
        if exercise(&xml) { accepted += 1 } else { refused += 1 }
    }
    // Both outcomes occur: small changes in text content leave valid documents.
    assert!(accepted > 0 && refused > 0, "accepted {accepted}, refused {refused}");
}

#[test]
fn deep_nesting_and_huge_attributes_are_answered() {
    let seed = &seeds()[0];
    let at = seed.find("</ClinicalDocument>").unwrap();
    // 50,000 nested elements inside the document: refused before the parser recurses.
    let deep = format!("{}{}{}{}", &seed[..at], "<x>".repeat(50_000), "</x>".repeat(50_000), &seed[at..]);
    let err = cda::parse(&deep).unwrap_err();
    assert!(err.to_string().contains("nested more than"), "{err}");
    // Within the limit it is an ordinary document with an unknown element.
    let nested = format!("{}{}{}{}", &seed[..at], "<x>".repeat(100), "</x>".repeat(100), &seed[at..]);
    exercise(&nested);
    // An attribute of 4 MB.
    let huge = seed.replacen("<id ", &format!("<id extra=\"{}\" ", "a".repeat(4 << 20)), 1);
    exercise(&huge);
    // Every truncation point of the header.
    for cut in (0..seed.len().min(4_000)).step_by(7) {
        assert!(!exercise(&seed[..seed.floor_char_boundary(cut)]) || cut == 0);
    }
}
