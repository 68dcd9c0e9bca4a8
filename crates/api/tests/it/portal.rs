//! The 12320 resident portal driven in-process like a browser (cookies, form tokens): real-name
//! sign-in with the SMS code from the local SMS outbox, booking and cancelling under the booking
//! rules with their Chinese messages, reports, records, the access log, consents, family
//! members, CSRF refusals, and no way into another resident's data.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use engine::RequestOptions;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use store::Ctx;
use tower::ServiceExt;

use super::{TestApp, app};

/// The GB 11643 check character of 17 digits.
fn id_number(first17: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17.chars().zip(WEIGHTS).map(|(c, w)| c.to_digit(10).unwrap() * w).sum();
    let check = "10X98765432".as_bytes()[(sum % 11) as usize] as char;
    format!("{first17}{check}")
}

const PHONE: &str = "13900000007";

/// A cookie-keeping client of the router.
pub(super) struct Browser<'a> {
    app: &'a TestApp,
    jar: HashMap<String, String>,
}

pub(super) struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The first form token in the page.
    pub fn csrf(&self) -> String {
        let at = self.text.find("name=\"csrf\" value=\"").expect("a form token in the page") + 19;
        self.text[at..].split('"').next().unwrap().to_string()
    }
}

impl<'a> Browser<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Browser { app, jar: HashMap::new() }
    }

    /// A cookie's value.
    pub fn jar_value(&self, name: &str) -> Option<String> {
        self.jar.get(name).cloned()
    }

    pub async fn send(&mut self, request: axum::http::request::Builder, body: String) -> Page {
        let cookies = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let mut request = request.header(header::HOST, "test.local");
        if !cookies.is_empty() {
            request = request.header(header::COOKIE, cookies);
        }
        let response = self.app.app.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_string(), value.to_string());
            }
        }
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Page { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&mut self, uri: &str) -> Page {
        self.send(Request::builder().uri(uri), String::new()).await
    }

    pub async fn post(&mut self, uri: &str, form: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let request = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        self.send(request, body).await
    }

    /// Signs in through the forms, reading the code from the SMS outbox.
    async fn sign_in(&mut self, name: &str, id: &str) -> Page {
        let form = self.get("/portal/login").await;
        let csrf = form.csrf();
        let sent =
            self.post("/portal/login", &[("csrf", &csrf), ("name", name), ("id_number", id), ("step", "send")]).await;
        assert_eq!(sent.status, StatusCode::OK, "{}", sent.text);
        let code = last_code(self.app);
        self.post(
            "/portal/login",
            &[("csrf", &csrf), ("name", name), ("id_number", id), ("step", "verify"), ("code", &code)],
        )
        .await
    }
}

fn outbox(app: &TestApp) -> Vec<String> {
    auth::FileSms::new(app.dir.path().join("sms.txt")).messages_to(PHONE)
}

fn last_code(app: &TestApp) -> String {
    let message = outbox(app).pop().expect("an SMS was sent");
    message.chars().filter(char::is_ascii_digit).take(6).collect()
}

fn opts() -> RequestOptions {
    RequestOptions::default()
}

/// Two patients (the resident and their child), a stranger, two doctors' schedules with slots
/// tomorrow, a report for the resident and one for the stranger; the resident's account.
async fn world(app: &TestApp) -> (String, String) {
    let e = &app.state.engine;
    let sys = Ctx::system();
    let resident_id = id_number("35010219800101001");
    let child_id = id_number("35010220180601002");
    let stranger_id = id_number("35010219750303003");
    for (id, name, number, birth) in [
        ("p1", "林小梅", &resident_id, "1980-01-01"),
        ("p2", "林乐乐", &child_id, "2018-06-01"),
        ("p3", "陈其他", &stranger_id, "1975-03-03"),
    ] {
        let patient = json!({"resourceType": "Patient", "id": id, "name": [{"text": name}], "birthDate": birth,
            "gender": "female", "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number}]});
        e.update(&sys, "Patient", id, patient, &opts()).await.unwrap();
    }
    let tomorrow = (chrono::Utc::now() + chrono::Duration::hours(8) + chrono::Duration::days(1)).date_naive();
    for n in 1..=5 {
        let practitioner =
            json!({"resourceType": "Practitioner", "id": format!("d{n}"), "name": [{"text": format!("医生{n}")}]});
        e.update(&sys, "Practitioner", &format!("d{n}"), practitioner, &opts()).await.unwrap();
        let schedule = json!({"resourceType": "Schedule", "id": format!("s{n}"), "active": true,
            "specialty": [{"text": if n == 1 { "心血管内科" } else { "内科" }}], "comment": "福州市第一医院",
            "actor": [{"reference": format!("Practitioner/d{n}")}]});
        e.update(&sys, "Schedule", &format!("s{n}"), schedule, &opts()).await.unwrap();
        for hour in [9, 10] {
            let id = format!("slot-{n}-{hour}");
            let slot = json!({"resourceType": "Slot", "id": id, "schedule": {"reference": format!("Schedule/s{n}")},
                "status": "free", "start": format!("{tomorrow}T{hour:02}:00:00+08:00"), "end": format!("{tomorrow}T{hour:02}:30:00+08:00")});
            e.update(&sys, "Slot", &id, slot, &opts()).await.unwrap();
        }
    }
    for (id, patient, text) in [("r1", "p1", "血常规"), ("r3", "p3", "肝功能")] {
        let report = json!({"resourceType": "DiagnosticReport", "id": id, "status": "final",
            "code": {"text": text}, "subject": {"reference": format!("Patient/{patient}")},
            "issued": "2026-01-02T03:04:05Z", "conclusion": "未见异常。"});
        e.update(&sys, "DiagnosticReport", id, report, &opts()).await.unwrap();
    }
    app.auth
        .create_user(auth::NewUser {
            username: "lin".into(),
            display: "林小梅".into(),
            role: "resident".into(),
            patients: vec!["p1".into(), "p2".into()],
            phone: Some(PHONE.into()),
            id_number: Some(resident_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    (resident_id, stranger_id)
}

async fn appointment_of(app: &TestApp, slot: &str) -> Value {
    let params = vec![("slot".to_string(), format!("Slot/{slot}"))];
    let bundle = app.state.engine.search(&Ctx::system(), Some("Appointment"), &params, &opts()).await.unwrap();
    bundle["entry"][0]["resource"].clone()
}

async fn slot_status(app: &TestApp, slot: &str) -> String {
    let slot = app.state.engine.read(&Ctx::system(), "Slot", slot).await.unwrap();
    let body: Value = serde_json::from_str(slot.body.as_deref().unwrap()).unwrap();
    body["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn real_name_sign_in_with_sms_code() {
    let app = app(1 << 20).await;
    let (resident_id, stranger_id) = world(&app).await;
    let mut b = Browser::new(&app);
    let page = b.get("/portal/").await;
    assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, "/portal/login"));
    let login = b.get("/portal/login").await;
    assert!(login.text.contains("<html lang=\"zh-CN\">") && login.text.contains("实名登录"), "{}", login.text);
    assert!(login.text.contains("<label for=\"id_number\">身份证号</label>"), "inputs carry labels");
    // The first page is the whole download: well under 100 KB, nothing fetched from elsewhere.
    assert!(login.text.len() < 100_000, "{} bytes", login.text.len());
    assert!(!login.text.contains("src=") && !login.text.contains("href=\"http"), "no external assets");
    let csrf = login.csrf();

    // A forged sign-in form (no token) is refused.
    let forged = b.post("/portal/login", &[("name", "林小梅"), ("id_number", &resident_id), ("step", "send")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.text.contains("页面已过期"), "{}", forged.text);
    assert_ne!(forged.csrf(), csrf, "a fresh form token after a refusal");
    let csrf = forged.csrf();
    // A bad ID number is named; a wrong name or someone else's number gets the same answer as a
    // right one, and no SMS.
    let bad =
        b.post("/portal/login", &[("csrf", &csrf), ("name", "林小梅"), ("id_number", "123"), ("step", "send")]).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text.contains("身份证号格式不正确"), "{}", bad.text);
    for (name, number) in [("林大梅", resident_id.as_str()), ("陈其他", stranger_id.as_str())] {
        let page =
            b.post("/portal/login", &[("csrf", &csrf), ("name", name), ("id_number", number), ("step", "send")]).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.text.contains("验证码已发送到您登记的手机"), "{}", page.text);
    }
    assert!(outbox(&app).is_empty(), "no code for a name that does not match the account");

    let sent = b
        .post("/portal/login", &[("csrf", &csrf), ("name", "林小梅"), ("id_number", &resident_id), ("step", "send")])
        .await;
    assert!(sent.text.contains("验证码已发送到您登记的手机") && sent.text.contains("autocomplete=\"one-time-code\""));
    let code = last_code(&app);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let page = b
        .post(
            "/portal/login",
            &[("csrf", &csrf), ("name", "林小梅"), ("id_number", &resident_id), ("step", "verify"), ("code", wrong)],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.text.contains("验证码错误或已过期"), "{}", page.text);
    let ok = b
        .post(
            "/portal/login",
            &[("csrf", &csrf), ("name", "林小梅"), ("id_number", &resident_id), ("step", "verify"), ("code", &code)],
        )
        .await;
    assert_eq!((ok.status, ok.location()), (StatusCode::SEE_OTHER, "/portal/"));
    let session = ok
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("hutong_portal="))
        .expect("a session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict") && session.contains("Path=/portal"));
    let home = b.get("/portal/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.text.contains("您好，林小梅"), "{}", home.text);
    assert!(home.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("default-src 'none'"));

    // The login is in the audit log; English on request, remembered in a cookie.
    let english = b.get("/portal/?lang=en").await;
    assert!(english.text.contains("<html lang=\"en\">") && english.text.contains("Hello, 林小梅"));
    assert_eq!(b.jar.get("hutong_lang").map(String::as_str), Some("en"));
    assert!(b.get("/portal/reports").await.text.contains("Lab and imaging reports"));

    // Signing out revokes the token: the old cookie no longer opens anything.
    let token = b.jar.get("hutong_portal").cloned().unwrap();
    let csrf = home.csrf();
    let out = b.post("/portal/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(app.auth.authenticate(&token).await.is_err(), "the token is revoked");
    b.jar.insert("hutong_portal".into(), token);
    assert_eq!(b.get("/portal/").await.location(), "/portal/login");
}

#[tokio::test]
async fn booking_and_cancelling_with_the_rules_in_chinese() {
    let app = app(1 << 20).await;
    let (resident_id, _) = world(&app).await;
    let mut b = Browser::new(&app);
    assert_eq!(b.sign_in("林小梅", &resident_id).await.status, StatusCode::SEE_OTHER);

    // Residents find the published schedules (shared reference data) and their free slots.
    let doctors = b.get("/portal/doctors?dept=%E5%BF%83%E8%A1%80%E7%AE%A1%E5%86%85%E7%A7%91").await;
    assert_eq!(doctors.status, StatusCode::OK, "{}", doctors.text);
    assert!(
        doctors.text.contains("医生1") && !doctors.text.contains("医生2"),
        "filtered by department: {}",
        doctors.text
    );
    let page = b.get("/portal/doctors/s1").await;
    assert!(page.text.contains("name=\"slot\" value=\"slot-1-9\""), "{}", page.text);
    let csrf = page.csrf();

    // Forms without the session's token, or from another site, change nothing.
    let forged = b.post("/portal/appointments", &[("slot", "slot-1-9")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let cross_site = Request::builder()
        .method("POST")
        .uri("/portal/appointments")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    let body = format!("csrf={csrf}&slot=slot-1-9");
    assert_eq!(b.send(cross_site, body).await.status, StatusCode::FORBIDDEN);
    assert_eq!(slot_status(&app, "slot-1-9").await, "free");

    // Book: a booked Appointment for the resident, the Slot busy, an audited create.
    let booked = b.post("/portal/appointments", &[("csrf", &csrf), ("slot", "slot-1-9")]).await;
    assert_eq!((booked.status, booked.location()), (StatusCode::SEE_OTHER, "/portal/appointments?done=booked"));
    let appointment = appointment_of(&app, "slot-1-9").await;
    assert_eq!(appointment["status"], "booked");
    assert_eq!(appointment["participant"][0]["actor"]["reference"], "Patient/p1");
    assert_eq!(slot_status(&app, "slot-1-9").await, "busy");
    let list = b.get("/portal/appointments?done=booked").await;
    assert!(list.text.contains("预约成功") && list.text.contains("福州市第一医院 医生1"), "{}", list.text);
    app.state.engine.flush_audit().await.unwrap();
    let log = app.state.engine.store().audit_for_patient("p1", 100).await.unwrap();
    let user = app.auth.find_user("lin").await.unwrap().unwrap();
    assert!(
        // One commit: the Appointment and the Slot it holds.
        log.iter().any(|e| e.record.action == "create"
            && e.record.outcome == "success"
            && e.record.actor == format!("user/{}", user.id)),
        "the booking is audited as the resident: {:?}",
        log.iter().map(|e| (&e.record.action, &e.record.entity, &e.record.actor)).collect::<Vec<_>>()
    );

    // The rules, each as a clear Chinese sentence with the engine's status.
    let cases = [("slot-1-9", "该号源已被他人预约"), ("slot-1-10", "同一医生每天只能预约一个号")];
    for (slot, words) in cases {
        let page = b.post("/portal/appointments", &[("csrf", &csrf), ("slot", slot)]).await;
        assert_eq!(page.status, StatusCode::CONFLICT, "{slot}");
        assert!(page.text.contains(words), "{slot}: {}", page.text);
        assert!(page.text.contains("role=\"alert\""));
    }
    // A same-site form (the Origin a browser sends for this host) books.
    let same_site = Request::builder()
        .method("POST")
        .uri("/portal/appointments")
        .header(header::ORIGIN, "http://test.local")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    assert_eq!(b.send(same_site, format!("csrf={csrf}&slot=slot-2-9")).await.status, StatusCode::SEE_OTHER);
    assert_eq!(
        b.post("/portal/appointments", &[("csrf", &csrf), ("slot", "slot-3-9")]).await.status,
        StatusCode::SEE_OTHER
    );
    let over = b.post("/portal/appointments", &[("csrf", &csrf), ("slot", "slot-4-10")]).await;
    assert_eq!(over.status, StatusCode::CONFLICT);
    assert!(over.text.contains("每人每天最多预约3个号"), "{}", over.text);
    assert_eq!(slot_status(&app, "slot-4-10").await, "free");

    // Cancel: the Appointment cancelled, the Slot free again.
    let id = appointment["id"].as_str().unwrap().to_string();
    let cancelled = b.post(&format!("/portal/appointments/{id}/cancel"), &[("csrf", &csrf)]).await;
    assert_eq!(
        (cancelled.status, cancelled.location()),
        (StatusCode::SEE_OTHER, "/portal/appointments?done=cancelled")
    );
    assert_eq!(appointment_of(&app, "slot-1-9").await["status"], "cancelled");
    assert_eq!(slot_status(&app, "slot-1-9").await, "free");

    // Too late to cancel online: a visit in an hour.
    let sys = Ctx::system();
    let soon = chrono::Utc::now() + chrono::Duration::minutes(60);
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let slot = json!({"resourceType": "Slot", "id": "soon", "schedule": {"reference": "Schedule/s5"}, "status": "free",
        "start": fmt(soon), "end": fmt(soon + chrono::Duration::minutes(30))});
    app.state.engine.update(&sys, "Slot", "soon", slot, &opts()).await.unwrap();
    assert_eq!(
        b.post("/portal/appointments", &[("csrf", &csrf), ("slot", "soon")]).await.status,
        StatusCode::SEE_OTHER
    );
    let late = appointment_of(&app, "soon").await;
    let page =
        b.post(&format!("/portal/appointments/{}/cancel", late["id"].as_str().unwrap()), &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.text.contains("距就诊开始已不足120分钟，不能在线取消"), "{}", page.text);
    assert_eq!(appointment_of(&app, "soon").await["status"], "booked");

    // Another resident's appointment cannot be cancelled from here (not found, nothing changes).
    let theirs = json!({"resourceType": "Appointment", "id": "theirs", "status": "booked",
        "participant": [{"actor": {"reference": "Patient/p3"}, "status": "accepted"}]});
    app.state.engine.update(&sys, "Appointment", "theirs", theirs, &opts()).await.unwrap();
    let page = b.post("/portal/appointments/theirs/cancel", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.text.contains("未找到该记录"), "{}", page.text);
}

#[tokio::test]
async fn suspended_residents_are_told_until_when() {
    let app = app(1 << 20).await;
    let (resident_id, _) = world(&app).await;
    let sys = Ctx::system();
    for n in 0..3 {
        let day = (chrono::Utc::now() - chrono::Duration::days(3 + n)).format("%Y-%m-%d").to_string();
        let missed = json!({"resourceType": "Appointment", "id": format!("missed-{n}"), "status": "noshow",
            "start": format!("{day}T01:00:00Z"), "end": format!("{day}T01:30:00Z"),
            "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]});
        app.state.engine.update(&sys, "Appointment", &format!("missed-{n}"), missed, &opts()).await.unwrap();
    }
    let mut b = Browser::new(&app);
    b.sign_in("林小梅", &resident_id).await;
    let csrf = b.get("/portal/doctors/s1").await.csrf();
    let page = b.post("/portal/appointments", &[("csrf", &csrf), ("slot", "slot-1-9")]).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.text.contains("您近期爽约次数过多") && page.text.contains("在线预约已暂停至"), "{}", page.text);
    assert_eq!(slot_status(&app, "slot-1-9").await, "free");
    let english = b.post("/portal/appointments?lang=en", &[("csrf", &csrf), ("slot", "slot-1-9")]).await;
    assert!(english.text.contains("Online booking is suspended until"), "{}", english.text);
}

#[tokio::test]
async fn reports_records_access_log_consents_and_family() {
    let app = app(1 << 20).await;
    let (resident_id, _) = world(&app).await;
    let mut b = Browser::new(&app);
    b.sign_in("林小梅", &resident_id).await;

    let reports = b.get("/portal/reports").await;
    assert!(reports.text.contains("/portal/reports/r1") && reports.text.contains("血常规"), "{}", reports.text);
    assert!(!reports.text.contains("肝功能"), "another resident's report is not listed");
    let report = b.get("/portal/reports/r1").await;
    assert_eq!(report.status, StatusCode::OK);
    assert!(report.text.contains("未见异常"));
    // Another resident's report: the same 404 as a missing one, and the refusal is audited.
    let theirs = b.get("/portal/reports/r3").await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert!(theirs.text.contains("未找到该记录") && !theirs.text.contains("肝功能"));
    app.state.engine.flush_audit().await.unwrap();
    let log = app.state.engine.store().audit_for_patient("p3", 100).await.unwrap();
    assert!(log.iter().any(|e| e.record.outcome == "denied" && e.record.entity.contains("DiagnosticReport/r3")));

    let records = b.get("/portal/records").await;
    assert!(records.text.contains("林小梅") && records.text.contains("1980-01-01"), "{}", records.text);
    let access = b.get("/portal/access-log").await;
    assert_eq!(access.status, StatusCode::OK);
    assert!(access.text.contains("您本人") && access.text.contains("检查检验报告"), "{}", access.text);

    // Consent: granting writes an active Consent the policy reads; revoking makes it inactive.
    let org = json!({"resourceType": "Organization", "id": "h1", "active": true, "name": "福州市第一医院"});
    app.state.engine.update(&Ctx::system(), "Organization", "h1", org, &opts()).await.unwrap();
    let page = b.get("/portal/consents").await;
    assert!(page.text.contains("<option value=\"h1\">福州市第一医院</option>"), "{}", page.text);
    let csrf = page.csrf();
    let granted = b.post("/portal/consents", &[("csrf", &csrf), ("org", "h1"), ("kind", "deny")]).await;
    assert_eq!(granted.status, StatusCode::SEE_OTHER);
    let params = vec![("patient".to_string(), "Patient/p1".to_string())];
    let found = app.state.engine.search(&Ctx::system(), Some("Consent"), &params, &opts()).await.unwrap();
    let consent = found["entry"][0]["resource"].clone();
    assert_eq!((consent["status"].as_str(), consent["provision"]["type"].as_str()), (Some("active"), Some("deny")));
    assert_eq!(consent["provision"]["actor"][0]["reference"]["reference"], "Organization/h1");
    let listed = b.get("/portal/consents?done=granted").await;
    assert!(listed.text.contains("拒绝查看") && listed.text.contains("生效中"), "{}", listed.text);
    let id = consent["id"].as_str().unwrap();
    assert_eq!(
        b.post(&format!("/portal/consents/{id}/revoke"), &[("csrf", &csrf)]).await.status,
        StatusCode::SEE_OTHER
    );
    let consent = app.state.engine.read(&Ctx::system(), "Consent", id).await.unwrap();
    assert!(consent.body.unwrap().contains("\"status\":\"inactive\""));

    // Family: act for the child; never for someone the account does not act for.
    let family = b.get("/portal/family").await;
    assert!(family.text.contains("林乐乐"), "{}", family.text);
    let switched = b.post("/portal/family", &[("csrf", &csrf), ("patient", "p2")]).await;
    assert_eq!(switched.status, StatusCode::SEE_OTHER);
    assert!(b.get("/portal/records").await.text.contains("2018-06-01"));
    assert!(b.get("/portal/").await.text.contains("就诊人：林乐乐"));
    let refused = b.post("/portal/family", &[("csrf", &csrf), ("patient", "p3")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    b.jar.insert("hutong_portal_for".into(), "p3".into());
    let records = b.get("/portal/records").await;
    assert!(
        records.text.contains("林小梅") && !records.text.contains("陈其他"),
        "a forged cookie falls back to the resident"
    );
}

#[tokio::test]
async fn health_card_page_shows_a_fresh_qr_code() {
    let app = app(1 << 20).await;
    let (resident_id, _) = world(&app).await;
    let mut b = Browser::new(&app);
    b.sign_in("林小梅", &resident_id).await;
    let page = b.get("/portal/card").await;
    assert!(page.text.contains("申领电子健康卡"), "{}", page.text);
    let registered = b.post("/portal/card/register", &[("csrf", &page.csrf())]).await;
    assert_eq!((registered.status, registered.location()), (StatusCode::SEE_OTHER, "/portal/card"));
    let card = b.get("/portal/card").await;
    assert!(card.text.contains("<svg") && card.text.contains("电子健康卡动态二维码"), "{}", card.text);
    let csp = card.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
    let nonce = csp.split("'nonce-").nth(1).unwrap().split('\'').next().unwrap();
    assert!(card.text.contains(&format!("<script nonce=\"{nonce}\">")), "only the page's own script runs");
    let again = b.get("/portal/card").await;
    assert_ne!(card.text, again.text, "each visit shows a new single-use code");
    assert!(card.text.len() < 100_000, "the card page is {} bytes", card.text.len());
}
