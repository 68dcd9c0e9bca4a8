//! A small W3C WebDriver client for the browser tests (no extra crates): Debian `chromedriver`
//! driving headless `/usr/bin/chromium`, plus the skip-or-require rule and the screenshot folder.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Driver {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Driver {
    /// A browser with a fresh profile and a window of `width`×`height`.
    pub fn start(profile: &Path, width: u32, height: u32) -> Driver {
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
        // The flags that work on these machines (STACK.md), a fresh profile, the window size asked for.
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
            "--lang=zh-CN",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--window-size={width},{height}"));
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let session = call(&driver.addr, "POST", "/session", Some(capabilities)).expect("a browser session");
        driver.session = session["sessionId"].as_str().expect("a session id").to_string();
        driver
    }

    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(&self.addr, method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).unwrap().as_str().unwrap_or("").to_string()
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).unwrap().as_str().unwrap_or("").to_string()
    }

    /// The element matching a CSS selector, waiting up to 10 s for it.
    pub fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))) {
                Ok(found) => return found[ELEMENT].as_str().unwrap_or_else(|| panic!("{css}: {found}")).to_string(),
                Err(e) if Instant::now() > deadline => panic!("no element {css} on {}: {e}", self.url()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Scrolls the element matching `css` into the middle of the window (for screenshots).
    pub fn scroll_to(&self, css: &str) {
        let element = self.find(css);
        let script = json!({"script": "arguments[0].scrollIntoView({block: 'center'})", "args": [{ELEMENT: element}]});
        self.cmd("POST", "/execute/sync", Some(script)).unwrap();
    }

    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.cmd("POST", &format!("/element/{element}/click"), Some(json!({}))).unwrap();
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.cmd("POST", &format!("/element/{element}/value"), Some(json!({"text": text}))).unwrap();
    }

    /// Waits until the page source contains `text` and the page has finished loading (on a
    /// loaded machine the source can be read while the parser is still building the DOM, so a
    /// heading can be there before the lines under it).
    pub fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let source = self.source();
            if source.contains(text) && self.loaded() {
                // The source read after the load completed holds the whole page.
                return self.source();
            }
            assert!(Instant::now() < deadline, "'{text}' never appeared on {}:\n{source}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the document has finished loading (`document.readyState` is `complete`).
    pub fn loaded(&self) -> bool {
        let script = json!({"script": "return document.readyState", "args": []});
        self.cmd("POST", "/execute/sync", Some(script)).is_ok_and(|v| v == "complete")
    }

    /// Presses one key (a WebDriver key code such as Tab, `\u{E004}`) on the focused element.
    pub fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.cmd("POST", "/actions", Some(actions)).unwrap();
    }

    /// The text of the focused element.
    pub fn focused_text(&self) -> String {
        let active = self.cmd("GET", "/element/active", None).unwrap();
        let element = active[ELEMENT].as_str().unwrap().to_string();
        self.cmd("GET", &format!("/element/{element}/text"), None).unwrap().as_str().unwrap_or("").to_string()
    }

    pub fn screenshot(&self, dir: &Path, name: &str) {
        let encoded = self.cmd("GET", "/screenshot", None).unwrap();
        let png = crypto::unbase64(encoded.as_str().unwrap()).expect("a base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// The screenshot folder `name` under `$HUTONG_ARTIFACTS_DIR` (default `<target>/tmp`).
pub fn artifacts(name: &str) -> PathBuf {
    let base = std::env::var_os("HUTONG_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether the browser is installed: without it a test says so and passes, unless
/// `HUTONG_REQUIRE_BROWSER=1`, where a missing browser fails it.
pub fn browser_available() -> bool {
    let have_browser = Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists();
    if !have_browser {
        assert!(
            std::env::var("HUTONG_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "HUTONG_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing: \
             apt-get install -y chromium chromium-driver fonts-wqy-microhei"
        );
        eprintln!("skipped: no {CHROMIUM} / {CHROMEDRIVER} (install chromium chromium-driver fonts-wqy-microhei)");
    }
    have_browser
}
