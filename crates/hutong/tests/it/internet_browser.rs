//! The internet hospital end to end in a real browser (issue 7's acceptance test): headless
//! Chromium (the client in `webdriver.rs`) against the real `hutong serve --demo` binary. The
//! demo resident (phone-sized window) requests a follow-up visit for their offline diagnosis and
//! writes to the doctor; the doctor (desktop window) signs in with password and TOTP, opens the
//! visit, starts it with a fresh TOTP code, answers, composes a prescription that raises a
//! live dose warning, overrides it with a typed reason and signs; the pharmacist sees the
//! override and the verified signature and approves; the resident sends the prescription to the
//! demo pharmacy for home delivery; the pharmacy dispenses and records the delivery up to
//! delivered; the resident sees "已送达"; both signatures verify (`$verify-prescription`); the
//! regulator sees the prescription and the overridden warning in the supervision feed.
//! Screenshots of every step go to `$HUTONG_ARTIFACTS_DIR/internet-screenshots/`.
//!
//! Same rule as the portal test: without Chromium it says so and passes, unless
//! `HUTONG_REQUIRE_BROWSER=1`.

use serde_json::Value;

use super::portal_browser::resident_signs_in;
use super::webdriver::{Driver, artifacts, browser_available};

/// The current TOTP code of a demo staff account, from its base32 secret.
fn totp(secret: &str) -> String {
    let key = crypto::totp::base32_decode(secret).expect("a base32 TOTP secret");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    crypto::totp::generate(&key, now, 6)
}

/// Signs a staff member in at their area's sign-in page with password and the current TOTP code.
fn staff_signs_in(browser: &Driver, base: &str, account: &Value, landing: &str) {
    let page = account["page"].as_str().unwrap();
    browser.go(&format!("{base}{page}"));
    browser.wait_for("工作人员登录");
    browser.type_into("#username", account["username"].as_str().unwrap());
    browser.type_into("#password", account["password"].as_str().unwrap());
    browser.type_into("#totp", &totp(account["totpSecret"].as_str().unwrap()));
    browser.click("main form button[type=submit]");
    browser.wait_for(landing);
    assert!(browser.url().ends_with(page), "{}", browser.url());
}

#[test]
fn follow_up_visit_prescription_review_dispensing_and_delivery_in_chromium() {
    if !browser_available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let (resident_profile, staff_profile) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = super::serve::start(data.path(), true);
    let base = format!("http://{}", server.addr);
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(data.path().join(name)).unwrap()).unwrap()
    };
    let (resident, staff) = (read("demo-resident.json"), read("demo-staff.json"));
    let shots = artifacts("internet-screenshots");
    let phone = Driver::start(resident_profile.path(), 412, 915);
    let desk = Driver::start(staff_profile.path(), 1280, 900);

    // The resident asks for a follow-up of their offline hypertension with doctor doc-1.
    resident_signs_in(&phone, &base, data.path(), &resident, None);
    phone.go(&format!("{base}/portal/visits/new"));
    let source = phone.wait_for("申请互联网复诊");
    assert!(source.contains("原发性高血压"), "the offline diagnosis is offered: {source}");
    phone.click("input[name=condition]");
    phone.click("#role option[value='role-1']");
    phone.type_into("#reason", "高血压复诊，需要续开降压药");
    assert!(phone.source().contains("互联网诊疗知情同意书"), "the informed consent is shown");
    phone.click("#consent");
    phone.screenshot(&shots, "01-resident-requests.png");
    phone.click("main form button[type=submit]");
    let source = phone.wait_for("复诊申请已提交");
    assert!(source.contains("候诊"), "the visit waits for the doctor: {source}");
    let visit_url = phone.url();
    let visit_url = visit_url.split('?').next().unwrap().to_string();
    phone.type_into("#text", "医生您好，最近早上血压偏高。");
    phone.click("form[action$='/messages'] button");
    phone.wait_for("消息已发送");
    phone.screenshot(&shots, "02-resident-chat.png");
    phone.go(&format!("{base}/portal/visits"));
    let source = phone.wait_for("高血压复诊，需要续开降压药");
    assert!(source.contains("候诊"), "my visits list it, waiting: {source}");

    // The doctor: sign in, the queue names the resident, open the visit.
    staff_signs_in(&desk, &base, &staff["doctor"], "接诊队列");
    let source = desk.wait_for("高血压复诊");
    assert!(source.contains(resident["name"].as_str().unwrap()), "the queue names the patient");
    assert!(source.contains("候诊"), "{source}");
    desk.screenshot(&shots, "03-doctor-queue.png");
    desk.click("a[href^='/doctor/visits/']");
    let source = desk.wait_for("复诊疾病");
    assert!(source.contains("最近早上血压偏高"), "the resident's message is in the chat");
    assert!(source.contains("患者档案") && source.contains("原发性高血压"), "the patient's records are shown");
    // Start with a fresh code of the doctor's authenticator.
    desk.type_into("#otp", &totp(staff["doctor"]["totpSecret"].as_str().unwrap()));
    desk.click("form[action$='/status'] button");
    let source = desk.wait_for("已开始接诊");
    assert!(source.contains("接诊中"), "{source}");
    desk.type_into("#text", "请继续监测血压，今天为您调整用药。");
    desk.click("form[action$='/messages'] button");
    desk.wait_for("消息已发送");
    // Compose: nifedipine 60 mg three times a day is over the daily limit (a warning).
    desk.click("#drug1 option[value='D0001']");
    desk.type_into("#dose1", "60");
    desk.type_into("#times1", "3");
    desk.type_into("#days1", "7");
    desk.click("button[value=check]");
    let source = desk.wait_for("合理用药提示");
    assert!(source.contains("警示") && source.contains("超过上限"), "the live dose alert: {source}");
    desk.scroll_to("#alerts");
    desk.screenshot(&shots, "04-doctor-live-alert.png");
    // Signing without a reason is refused; with one, it is signed.
    desk.click("button[value=sign]");
    let source = desk.wait_for("class=\"error\" role=\"alert\"");
    assert!(source.contains("有警示尚未填写坚持开具的理由"), "{source}");
    assert!(source.contains("超过上限") && !source.contains("处方已签名"), "a warning without a reason is not signed");
    desk.type_into("#reason0", "血压控制不佳，短期加量并密切随访");
    desk.click("button[value=sign]");
    let source = desk.wait_for("处方已签名");
    assert!(source.contains("待药师审核"), "{source}");
    desk.screenshot(&shots, "05-doctor-signed.png");
    desk.type_into("#note", "主诉：晨起血压偏高。处理：硝苯地平控释片加量，两周后复诊。");
    desk.click("form[action$='/status'] input[value=finished] ~ button");
    let source = desk.wait_for("本次接诊已结束");
    assert!(source.contains("已结束") && !source.contains("开具处方</h2>"), "no prescribing after the visit: {source}");

    // The pharmacist of the hospital: the review shows the override and the verified signature.
    staff_signs_in(&desk, &base, &staff["pharmacist"], "待审处方");
    desk.click("a[href^='/pharmacist/reviews/']");
    let source = desk.wait_for("电子签名验证");
    assert!(source.contains("短期加量并密切随访"), "the doctor's reason is shown");
    assert!(source.contains("验证通过"), "the doctor's signature verifies");
    assert!(source.contains("硝苯地平控释片"), "{source}");
    let number: String = {
        let at = source.find("id=\"rx-number\">").unwrap() + "id=\"rx-number\">".len();
        source[at..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect()
    };
    assert!(number.starts_with("RX"), "{number}");
    desk.scroll_to("#signatures");
    desk.screenshot(&shots, "06-pharmacist-review.png");
    desk.click("button[value=approve]");
    desk.wait_for("已审核通过并签名");

    // The resident sees the approval and sends the prescription to the pharmacy, home delivery.
    phone.go(&visit_url);
    let source = phone.wait_for("审核通过");
    assert!(source.contains("请继续监测血压"), "the doctor's answer is in the chat");
    phone.click("select[name=pharmacy] option[value='pharmacy-1']");
    phone.click("input[name=delivery][value=home]");
    phone.type_into("input[name=address]", "福州市鼓楼区八一七北路1号");
    phone.scroll_to("select[name=pharmacy]");
    phone.screenshot(&shots, "07-resident-chooses-pharmacy.png");
    phone.click("form[action='/portal/prescriptions/route'] button");
    let source = phone.wait_for("已确定取药方式");
    assert!(source.contains("鼓楼区惠民大药房") && source.contains("送药上门"), "{source}");

    // The pharmacy dispenses and reports the delivery up to delivered.
    staff_signs_in(&desk, &base, &staff["pharmacy"], "待调配处方");
    let source = desk.wait_for(&number);
    assert!(source.contains("送药上门"), "{source}");
    desk.screenshot(&shots, "08-pharmacy-queue.png");
    desk.click("form[action='/pharmacy/dispense'] button");
    let source = desk.wait_for("处方已调配");
    assert!(source.contains("待发货"), "a home delivery waits for dispatch: {source}");
    desk.type_into("input[name=carrier]", "同城配送");
    // Each state shows on the next page (the marker is unique to it, so no stale page matches).
    for (next, shown) in [
        ("dispatched", "class=\"delivery-state\">已发货</strong>"),
        ("in-transit", "class=\"delivery-state\">配送中</strong>"),
        ("delivered", "暂无配送任务"),
    ] {
        desk.click(&format!("form[action^='/pharmacy/deliveries/'] input[value='{next}'] ~ button"));
        desk.wait_for(shown);
    }
    let source = desk.source();
    assert!(!source.contains(&format!("<strong>{number}</strong>")), "a delivered prescription leaves the list");
    desk.screenshot(&shots, "09-pharmacy-delivered.png");

    // The resident sees it delivered.
    phone.go(&visit_url);
    let source = phone.wait_for("已送达");
    assert!(source.contains("已调配"), "{source}");
    phone.scroll_to(".delivery-state");
    phone.screenshot(&shots, "10-resident-delivered.png");

    // Both signatures still verify over the stored prescription.
    let bearer = super::serve::demo_bearer(&server, data.path());
    let (status, body) = super::security::http(
        &server.addr,
        "GET",
        &format!("/fhir/MedicationRequest/$verify-prescription?number={number}"),
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let verified: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(verified["parameter"][0]["valueBoolean"], true, "{verified}");
    let signatures = verified["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "signature").count();
    assert_eq!(signatures, 2, "the doctor's and the pharmacist's: {verified}");

    // The regulator's feed has the prescription and the overridden warning.
    staff_signs_in(&desk, &base, &staff["regulator"], "互联网诊疗监管数据");
    desk.go(&format!("{base}/regulator/?kind=violation"));
    let source = desk.wait_for("id=\"feed\"");
    assert!(source.contains("dose-adult"), "the overridden dose warning: {source}");
    desk.go(&format!("{base}/regulator/?kind=prescription"));
    let source = desk.wait_for(&number);
    assert!(source.contains("硝苯地平控释片"), "{source}");
    desk.screenshot(&shots, "11-regulator-feed.png");
    eprintln!("internet hospital screenshots in {}", shots.display());
}
