//! The admin CLI's other kinds of account, through the real binary against a running server:
//! a system client registered with an SM2 public key that signs JWT assertions
//! (`create-client --public-key`), and a guardian created with several patients
//! (`create-user --patients`).

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::security::http;
use super::serve::start;

fn hutong(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hutong")).args(args).arg("--data").arg(data).stdin(Stdio::null()).output().unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A SMART Backend Services assertion: SM2 over `header.claims`, `r ‖ s`, base64url.
fn assertion(key: &crypto::sm2::Sm2SigningKey, client_id: &str, audience: &str) -> String {
    let claims = json!({"iss": client_id, "sub": client_id, "aud": audience, "exp": now() + 240,
                        "jti": crypto::random_token(16)});
    let input = format!(
        "{}.{}",
        crypto::base64url(br#"{"alg":"SM2","typ":"JWT"}"#),
        crypto::base64url(claims.to_string().as_bytes())
    );
    format!("{input}.{}", crypto::base64url(&key.sign(input.as_bytes())))
}

#[test]
fn key_clients_and_guardians_made_by_the_admin_cli_work_at_once() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), false);
    let key = crypto::sm2::Sm2SigningKey::generate();
    let pem_file = data.path().join("his-public.pem");
    std::fs::write(&pem_file, key.public().to_public_key_pem().unwrap()).unwrap();

    let out = hutong(
        &[
            "admin",
            "create-client",
            "--name",
            "his",
            "--scopes",
            "system/*.*",
            "--public-key",
            pem_file.to_str().unwrap(),
        ],
        data.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(created["alg"], "SM2");
    assert!(created.get("client_secret").is_none(), "no secret for a key client: {created}");
    let id = created["client_id"].as_str().unwrap();

    let token = |jwt: &str| {
        let form = format!(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}"
        );
        let (status, body) = http(
            &server.addr,
            "POST",
            "/oauth2/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &form,
        );
        (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null))
    };
    let endpoint = format!("http://{}/oauth2/token", server.addr);
    let jwt = assertion(&key, id, &endpoint);
    let (status, body) = token(&jwt);
    assert_eq!(status, 200, "{body}");
    let system = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let (status, body) = token(&jwt);
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "a replay: {body}");

    // The hospital system writes a family's records.
    let put = |path: &str, resource: Value| {
        http(
            &server.addr,
            "PUT",
            path,
            &[("Authorization", &system), ("Content-Type", "application/fhir+json")],
            &resource.to_string(),
        )
        .0
    };
    for id in ["mother", "child", "neighbour"] {
        assert_eq!(put(&format!("/fhir/Patient/{id}"), json!({"resourceType": "Patient", "id": id})), 201);
    }
    for (id, subject) in [("child-height", "child"), ("neighbour-height", "neighbour")] {
        let obs = json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "subject": {"reference": format!("Patient/{subject}")}});
        assert_eq!(put(&format!("/fhir/Observation/{id}"), obs), 201);
    }

    // A guardian acting for herself and her child.
    let out = hutong(
        &[
            "admin",
            "create-user",
            "--username",
            "li.mei",
            "--role",
            "resident",
            "--patients",
            "mother,child",
            "--id-number",
            "11010519491231002X",
            "--password",
            "Guardian#2026",
        ],
        data.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = http(
        &server.addr,
        "POST",
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "grant_type=password&username=li.mei&password=Guardian%232026",
    );
    assert_eq!(status, 200, "{body}");
    let guardian =
        format!("Bearer {}", serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap());
    let get = |path: &str| http(&server.addr, "GET", path, &[("Authorization", &guardian)], "").0;
    assert_eq!(get("/fhir/Patient/child"), 200);
    assert_eq!(get("/fhir/Observation/child-height"), 200);
    assert_eq!(get("/fhir/Patient/neighbour"), 404);
    assert_eq!(get("/fhir/Observation/neighbour-height"), 404);

    // An operator disables the account: its password no longer gets a token.
    let out = hutong(&["admin", "set-user", "--username", "li.mei", "--disable"], data.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["active"], false);
    let (status, _) = http(
        &server.addr,
        "POST",
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "grant_type=password&username=li.mei&password=Guardian%232026",
    );
    assert_eq!(status, 400, "a disabled account gets no token");
    let out = hutong(&["admin", "set-user", "--username", "li.mei"], data.path());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--disable"));

    // A key that is neither SM2 nor P-384 is refused with the reason.
    std::fs::write(&pem_file, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
    let out = hutong(
        &[
            "admin",
            "create-client",
            "--name",
            "bad",
            "--scopes",
            "system/*.*",
            "--public-key",
            pem_file.to_str().unwrap(),
        ],
        data.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SM2 or an EC P-384 public key"), "{out:?}");
}
