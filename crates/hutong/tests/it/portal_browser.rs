//! The 12320 resident portal in a real browser: headless Debian Chromium driven over the W3C
//! WebDriver protocol (`chromedriver`, the small client in `webdriver.rs`, no extra crates) against the real
//! `hutong serve --demo` binary on a free loopback port, on a phone-sized window. The demo
//! resident signs in with their real name, ID number and the SMS code from the local outbox
//! (submitting with the Enter key), reaches the skip link with Tab, registers and shows the
//! health card (QR SVG), books a slot, cancels it and opens a report. Screenshots of each step go to
//! `$HUTONG_ARTIFACTS_DIR/portal-screenshots/` (default `<target>/tmp/portal-screenshots/`).
//!
//! Without Chromium the test says so and passes, unless `HUTONG_REQUIRE_BROWSER=1` (set by
//! `scripts/test.sh`, which installs it), where a missing browser fails it.

use std::path::Path;

use serde_json::Value;

use super::webdriver::{Driver, artifacts, browser_available};

#[test]
fn resident_signs_in_shows_the_card_books_cancels_and_reads_a_report_in_chromium() {
    if !browser_available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let server = super::serve::start(data.path(), true);
    let base = format!("http://{}", server.addr);
    let resident: Value =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("demo-resident.json")).unwrap()).unwrap();
    let shots = artifacts("portal-screenshots");
    let browser = Driver::start(profile.path(), 412, 915);

    // Sign in: real name and ID number, the code from the SMS outbox, submitted with Enter.
    resident_signs_in(&browser, &base, data.path(), &resident, Some(&shots));
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

/// Signs the demo resident in to the portal: real name and ID number, the code from the SMS
/// outbox, submitted with the Enter key; ends on the home page ("您好，").
pub(super) fn resident_signs_in(browser: &Driver, base: &str, data: &Path, resident: &Value, shots: Option<&Path>) {
    browser.go(&format!("{base}/portal/"));
    let source = browser.wait_for("实名登录");
    assert!(source.contains("lang=\"zh-CN\""), "Chinese first");
    if let Some(shots) = shots {
        browser.screenshot(shots, "01-sign-in.png");
    }
    browser.type_into("#name", resident["name"].as_str().unwrap());
    browser.type_into("#id_number", resident["idNumber"].as_str().unwrap());
    browser.click("button[value=send]");
    browser.wait_for("验证码已发送");
    let outbox = std::fs::read_to_string(data.join("sms-outbox.txt")).unwrap();
    let message = outbox.lines().last().unwrap();
    let code: String = message.split('\t').nth(1).unwrap().chars().filter(char::is_ascii_digit).take(6).collect();
    assert_eq!(code.len(), 6, "{message}");
    browser.type_into("#code", &format!("{code}\u{E007}"));
    browser.wait_for("您好，");
    assert!(browser.url().ends_with("/portal/"), "{}", browser.url());
}
