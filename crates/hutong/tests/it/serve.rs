//! `hutong serve` as an operator runs it: demo data, the FHIR base URL, the capability
//! statement, liveness, and clear failures at start-up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct Server {
    child: Child,
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(data: &std::path::Path, demo: bool) -> Server {
    start_expecting(data, demo, |_| {})
}

/// Starts the server, passing every line it prints before the URL line to `check`.
fn start_expecting(data: &std::path::Path, demo: bool, check: impl FnMut(&str)) -> Server {
    start_with(data, demo, &[], check)
}

/// [`start_expecting`] with more arguments. The HL7 v2 listener is off unless they turn it on,
/// so that tests running side by side do not compete for its default port.
pub fn start_with(data: &std::path::Path, demo: bool, extra: &[&str], mut check: impl FnMut(&str)) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hutong"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data).args(extra);
    cmd.env("HUTONG_MLLP_LISTEN", "off").stdout(Stdio::piped()).stderr(Stdio::null());
    if demo {
        cmd.arg("--demo");
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server printed its URL").unwrap();
        check(&line);
        if let Some(url) = line.strip_prefix("Hutong FHIR server listening on http://") {
            break url.trim_end_matches("/fhir").to_string();
        }
    };
    Server { child, addr }
}

/// A minimal HTTP/1.1 GET: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A system client's bearer token, from the demo client the server wrote.
pub fn demo_bearer(server: &Server, data: &std::path::Path) -> String {
    let demo: Value = serde_json::from_str(&std::fs::read_to_string(data.join("demo-client.json")).unwrap()).unwrap();
    client_bearer(server, &demo)
}

/// The bearer token of a system client (`client_id`, `client_secret`, as `admin create-client`
/// prints them), by the client-credentials grant.
pub fn client_bearer(server: &Server, client: &Value) -> String {
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        client["client_id"].as_str().unwrap(),
        client["client_secret"].as_str().unwrap()
    );
    form_bearer(server, &form)
}

/// The bearer token the token endpoint grants for `form` (a urlencoded grant).
pub fn form_bearer(server: &Server, form: &str) -> String {
    let (status, body) = super::security::http(
        &server.addr,
        "POST",
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    );
    assert_eq!(status, 200, "{body}");
    format!("Bearer {}", serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap())
}

#[test]
fn serve_demo_answers_fhir_requests() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), true);
    assert_eq!(get(&server.addr, "/healthz").0, 200);
    let bearer = demo_bearer(&server, data.path());
    let get = |path: &str| super::security::http(&server.addr, "GET", path, &[("Authorization", &bearer)], "");
    let (status, body) = get("/fhir/Patient?_summary=count");
    assert_eq!(status, 200);
    let bundle: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bundle["total"], 390, "the demo data set has 300 residents, 90 of them registered at two hospitals");
    // The master patient index links the records of each resident to one Person as the server
    // starts: 300 persons.
    let persons = "/fhir/Person?_tag=https://hutong.dev/fhir/CodeSystem/mpi%7Cgolden&_summary=count";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, body) = get(persons);
        let total = serde_json::from_str::<Value>(&body).unwrap()["total"].clone();
        if total == 300 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the index made {total} persons, not 300");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, body) =
        get("/fhir/Patient/$ihe-pix?sourceIdentifier=https://hutong.dev/fhir/sid/org-2/mrn%7CMZ100000");
    assert_eq!(status, 200, "{body}");
    let pix: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pix["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "targetId").count(), 2, "{pix}");
    let (_, body) = get("/fhir/Organization?name=福州");
    let orgs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(orgs["total"], 1);
    let (status, body) = get("/fhir/metadata");
    assert_eq!(status, 200);
    let cs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let (status, body) = get("/fhir/Patient?birthdate=1990-13-01");
    assert_eq!(status, 400);
    assert!(body.contains("not a valid date"), "{body}");
    drop(server);
    // Restarting on the same data does not load the demo twice.
    let server = start_expecting(data.path(), true, |line| {
        assert!(!line.starts_with("Loaded the synthetic demo data set"), "the demo was loaded again: {line}")
    });
    let bearer = demo_bearer(&server, data.path());
    let (_, body) =
        super::security::http(&server.addr, "GET", "/fhir/Patient?_summary=count", &[("Authorization", &bearer)], "");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["total"], 390);
}

#[test]
fn every_official_search_parameter_is_declared_supported_or_unsupported() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), false);
    let (_, body) = get(&server.addr, "/fhir/metadata");
    let cs: Value = serde_json::from_str(&body).unwrap();
    let defs = fhir::Definitions::r4();
    let mut declared = 0;
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        let ty = r["type"].as_str().unwrap();
        let mut names: Vec<String> =
            r["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
        names.extend(
            r["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x["extension"][0]["valueCode"].as_str().unwrap().to_string()),
        );
        for p in defs.search_params_for(ty) {
            assert!(names.contains(&p.code), "{ty}.{} is neither supported nor listed as unsupported", p.code);
            declared += 1;
        }
    }
    assert!(declared > 3000, "every type × parameter pair was checked ({declared})");
}

#[test]
fn a_bad_subscription_ca_file_fails_fast() {
    let data = tempfile::tempdir().unwrap();
    let junk = data.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for (file, words) in [(data.path().join("missing.pem"), "cannot read"), (junk, "holds no certificate")] {
        let output = Command::new(env!("CARGO_BIN_EXE_hutong"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path().join("store"))
            .env("HUTONG_MLLP_LISTEN", "off")
            .env("HUTONG_SUBSCRIPTION_CA", &file)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("HUTONG_SUBSCRIPTION_CA") && stderr.contains(words), "{stderr}");
    }
}

#[test]
fn bad_listen_address_fails_fast() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_hutong")).args(["serve", "--listen", "not-an-address"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not an address like 127.0.0.1:8080"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_hutong"))
        .args(["serve", "--database", "postgres://nobody@127.0.0.1:1/none"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect to PostgreSQL at 127.0.0.1:1/none"));
}
