//! The 12320 resident portal in a real browser: headless Debian Chromium driven over the W3C
//! WebDriver protocol (`chromedriver`, a small client below, no extra crates) against the real
//! `hutong serve --demo` binary on a free loopback port, on a phone-sized window. The demo
//! resident signs in with their real name, ID number and the SMS code from the local outbox
//! (submitting with the Enter key), reaches the skip link with Tab, registers and shows the
//! health card (QR SVG), books a slot, cancels it and opens a report. Screenshots of each step go to
//! `$HUTONG_ARTIFACTS_DIR/portal-screenshots/` (default `<target>/tmp/portal-screenshots/`).
//!
//! Without Chromium the test says so and passes, unless `HUTONG_REQUIRE_BROWSER=1` (set by
//! `scripts/test.sh`, which installs it), where a missing browser fails it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    addr: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = call(&self.addr, "DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver command over HTTP/1.1: the response's `value`, or the error it names.
fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open whatever the request says: read the head, then
    // Content-Length bytes.
    let mut response = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before the response head".into());
        }
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or("a response without Content-Length")?;
    while response.len() < head_end + length {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed in the middle of the body".into());
        }
        response.extend_from_slice(&buf[..n]);
    }
    let rest = String::from_utf8_lossy(&response[head_end..head_end + length]).into_owned();
    let value: Value = serde_json::from_str(&rest).map_err(|e| format!("{e}: {rest}"))?;
    if value["value"]["error"].is_string() {
        return Err(format!("{}: {}", value["value"]["error"], value["value"]["message"]));
    }
    Ok(value["value"].clone())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Driver {
    fn start(profile: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr = format!("127.0.0.1:{port}");
        let mut driver = Driver { child, addr, session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(&driver.addr, "GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags that work on these machines (STACK.md), a fresh profile, a phone-sized window.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=412,915",
            "--lang=zh-CN",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let session = call(&driver.addr, "POST", "/session", Some(capabilities)).expect("a browser session");
        driver.session = session["sessionId"].as_str().expect("a session id").to_string();
        driver
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(&self.addr, method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None).unwrap().as_str().unwrap_or("").to_string()
    }

    fn source(&self) -> String {
        self.cmd("GET", "/source", None).unwrap().as_str().unwrap_or("").to_string()
    }

    /// The element matching a CSS selector, waiting up to 10 s for it.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))) {
                Ok(found) => return found[ELEMENT].as_str().unwrap_or_else(|| panic!("{css}: {found}")).to_string(),
                Err(e) if Instant::now() > deadline => panic!("no element {css} on {}: {e}", self.url()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.cmd("POST", &format!("/element/{element}/click"), Some(json!({}))).unwrap();
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.cmd("POST", &format!("/element/{element}/value"), Some(json!({"text": text}))).unwrap();
    }

    /// Waits until the page source contains `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let source = self.source();
            if source.contains(text) {
                return source;
            }
            assert!(Instant::now() < deadline, "'{text}' never appeared on {}:\n{source}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Presses one key (a WebDriver key code such as Tab, `\u{E004}`) on the focused element.
    fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.cmd("POST", "/actions", Some(actions)).unwrap();
    }

    /// The text of the focused element.
    fn focused_text(&self) -> String {
        let active = self.cmd("GET", "/element/active", None).unwrap();
        let element = active[ELEMENT].as_str().unwrap().to_string();
        self.cmd("GET", &format!("/element/{element}/text"), None).unwrap().as_str().unwrap_or("").to_string()
    }

    fn screenshot(&self, dir: &Path, name: &str) {
        let encoded = self.cmd("GET", "/screenshot", None).unwrap();
        let url_safe: String = encoded
            .as_str()
            .unwrap()
            .trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        let png = crypto::unbase64url(&url_safe).expect("a base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(dir.join(name), png).unwrap();
    }
}

fn artifacts() -> PathBuf {
    let base = std::env::var_os("HUTONG_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = base.join("portal-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn resident_signs_in_shows_the_card_books_cancels_and_reads_a_report_in_chromium() {
    let have_browser = Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists();
    if !have_browser {
        assert!(
            std::env::var("HUTONG_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "HUTONG_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing: \
             apt-get install -y chromium chromium-driver fonts-wqy-microhei"
        );
        eprintln!("skipped: no {CHROMIUM} / {CHROMEDRIVER} (install chromium chromium-driver fonts-wqy-microhei)");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let server = super::serve::start(data.path(), true);
    let base = format!("http://{}", server.addr);
    let resident: Value =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("demo-resident.json")).unwrap()).unwrap();
    let shots = artifacts();
    let browser = Driver::start(profile.path());

    // Sign in: real name and ID number, the code from the SMS outbox, submitted with Enter.
    browser.go(&format!("{base}/portal/"));
    let source = browser.wait_for("实名登录");
    assert!(source.contains("lang=\"zh-CN\""), "Chinese first");
    browser.screenshot(&shots, "01-sign-in.png");
    browser.type_into("#name", resident["name"].as_str().unwrap());
    browser.type_into("#id_number", resident["idNumber"].as_str().unwrap());
    browser.click("button[value=send]");
    browser.wait_for("验证码已发送");
    let outbox = std::fs::read_to_string(data.path().join("sms-outbox.txt")).unwrap();
    let message = outbox.lines().last().unwrap();
    let code: String = message.split('\t').nth(1).unwrap().chars().filter(char::is_ascii_digit).take(6).collect();
    assert_eq!(code.len(), 6, "{message}");
    browser.type_into("#code", &format!("{code}\u{E007}"));
    browser.wait_for("您好，");
    assert!(browser.url().ends_with("/portal/"), "{}", browser.url());
    browser.screenshot(&shots, "02-home.png");

    // By keyboard: the first Tab reaches the skip link (shown when focused), Enter follows it.
    browser.press("\u{E004}");
    assert_eq!(browser.focused_text(), "跳到主要内容");
    browser.screenshot(&shots, "02b-keyboard-skip-link.png");
    browser.press("\u{E007}");
    assert!(browser.url().ends_with("/portal/#main"), "{}", browser.url());

    // The health card: register it, then the dynamic QR code is shown.
    browser.go(&format!("{base}/portal/card"));
    browser.click("form[action='/portal/card/register'] button");
    let source = browser.wait_for("电子健康卡动态二维码");
    assert!(source.contains("<svg"), "the QR code is an inline SVG");
    browser.screenshot(&shots, "03-health-card.png");

    // Book the first free slot of the first doctor listed.
    browser.go(&format!("{base}/portal/doctors"));
    browser.click("main li a");
    browser.wait_for("可预约号源");
    browser.screenshot(&shots, "04-doctor-slots.png");
    browser.click("form[action='/portal/appointments'] button");
    let source = browser.wait_for("预约成功");
    assert!(source.contains("已预约"), "{source}");
    browser.screenshot(&shots, "05-booked.png");

    // Cancel it.
    browser.click("button.danger");
    let source = browser.wait_for("已取消预约");
    assert!(source.contains("已取消"), "{source}");
    browser.screenshot(&shots, "06-cancelled.png");

    // Open a report.
    browser.go(&format!("{base}/portal/reports"));
    browser.click("a[href^='/portal/reports/']");
    let source = browser.wait_for("结论");
    assert!(source.contains("出具机构"), "{source}");
    browser.screenshot(&shots, "07-report.png");

    // And the same page in English.
    browser.go(&format!("{}?lang=en", browser.url()));
    browser.wait_for("Conclusion");
    browser.screenshot(&shots, "08-report-english.png");
    eprintln!("portal screenshots in {}", shots.display());
}
