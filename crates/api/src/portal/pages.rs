//! The portal's pages and form handlers. Each handler resolves the visit and the session,
//! calls the engine with the resident's own `Ctx`, and renders HTML; engine errors are shown
//! in the page with the engine's HTTP status.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use engine::{EngineError, RequestOptions};
use serde_json::{Value, json};
use store::Ctx;

use super::html::{Frame, Lang, PORTAL, csrf_field, esc, page, url};
use super::{
    ACTING_COOKIE, PRE_COOKIE, SESSION_COOKIE, Session, Visit, cookie, form, html, redirect, session, token_ok, visit,
};
use crate::AppState;

type Html = Response;

/// Renders a page for a signed-in resident (menu, acting-for name, sign-out).
#[expect(clippy::too_many_arguments, reason = "the page frame's parts, passed by every handler")]
async fn render(
    state: &AppState,
    v: &Visit,
    s: &Session,
    status: StatusCode,
    title: &str,
    section: &str,
    error: Option<&str>,
    notice: Option<&str>,
    body: &str,
    nonce: &str,
) -> Html {
    let name = patient_name(state, s, &s.patient).await;
    let frame = Frame {
        site: &PORTAL,
        lang: v.lang,
        title,
        section: Some(section),
        acting_for: Some(&name),
        csrf: Some(&s.csrf),
        here: &v.here,
    };
    html(status, page(&frame, error, notice, body), &v.cookies, nonce)
}

/// The display name of a Patient the resident may read.
async fn patient_name(state: &AppState, s: &Session, patient: &str) -> String {
    match state.engine.read(&s.ctx, "Patient", patient).await {
        Ok(r) => r
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
            .map(|p| person_name(&p))
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub(crate) fn person_name(resource: &Value) -> String {
    let name = &resource["name"][0];
    if let Some(text) = name["text"].as_str() {
        return text.to_string();
    }
    let given: Vec<&str> = name["given"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    format!("{}{}", name["family"].as_str().unwrap_or(""), given.join(""))
}

pub(crate) fn opts(state: &AppState, v: &Visit) -> RequestOptions {
    RequestOptions { base_url: crate::base_url(state, &v.headers), ..RequestOptions::default() }
}

/// Runs a search as the resident: the matches, and the included resources by `Type/id`.
async fn search(
    state: &AppState,
    v: &Visit,
    s: &Session,
    resource_type: &str,
    params: &[(&str, &str)],
) -> Result<(Vec<Value>, HashMap<String, Value>), EngineError> {
    search_as(state, v, &s.ctx, resource_type, params).await
}

/// Runs a search with the caller's `ctx`: the matches, and the included resources by `Type/id`.
pub(crate) async fn search_as(
    state: &AppState,
    v: &Visit,
    ctx: &Ctx,
    resource_type: &str,
    params: &[(&str, &str)],
) -> Result<(Vec<Value>, HashMap<String, Value>), EngineError> {
    let params: Vec<(String, String)> = params.iter().map(|(k, val)| (k.to_string(), val.to_string())).collect();
    let bundle = state.engine.search(ctx, Some(resource_type), &params, &opts(state, v)).await?;
    let mut matches = Vec::new();
    let mut included = HashMap::new();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let resource = entry["resource"].clone();
        if entry["search"]["mode"] == "include" {
            let key = format!(
                "{}/{}",
                resource["resourceType"].as_str().unwrap_or(""),
                resource["id"].as_str().unwrap_or("")
            );
            included.insert(key, resource);
        } else {
            matches.push(resource);
        }
    }
    Ok((matches, included))
}

async fn read(state: &AppState, s: &Session, resource_type: &str, id: &str) -> Result<(Value, i64), EngineError> {
    read_as(state, &s.ctx, resource_type, id).await
}

/// Reads one resource with the caller's `ctx`: its JSON and version.
pub(crate) async fn read_as(
    state: &AppState,
    ctx: &Ctx,
    resource_type: &str,
    id: &str,
) -> Result<(Value, i64), EngineError> {
    let stored = state.engine.read(ctx, resource_type, id).await?;
    let body = stored.body.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    Ok((body, stored.version))
}

pub(crate) fn error_status(e: &EngineError) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(crate) fn message(state: &AppState, e: &EngineError, lang: Lang) -> String {
    if e.http_status() >= 500 {
        tracing::error!(error = %e, "portal request failed");
    }
    super::engine_message(e, lang, &state.engine.config().booking)
}

pub(crate) fn nonce() -> String {
    crypto::random_token(16)
}

/// Sends a visitor without a session to the sign-in page.
fn to_login() -> Html {
    redirect("/portal/login", Vec::new())
}

/// A FHIR date or instant as shown to residents: `2026-12-02 08:30`, Beijing time.
pub(crate) fn when(text: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => {
            let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset");
            t.with_timezone(&beijing).format("%Y-%m-%d %H:%M").to_string()
        }
        Err(_) => text.chars().take(16).collect::<String>().replace('T', " "),
    }
}

pub(crate) fn text_of(concept: &Value) -> String {
    concept["text"]
        .as_str()
        .or_else(|| concept["coding"][0]["display"].as_str())
        .or_else(|| concept["coding"][0]["code"].as_str())
        .unwrap_or("")
        .to_string()
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

macro_rules! signed_in {
    ($state:expr, $request:expr) => {{
        let v = visit(&$state, &$request);
        match session(&$state, &v).await {
            Some(s) => (v, s),
            None => return to_login(),
        }
    }};
}

// ---- sign-in ---------------------------------------------------------------------------

fn login_page(v: &Visit, pre: &str, step2: Option<(&str, &str)>, error: Option<&str>, notice: Option<&str>) -> String {
    let l = v.lang;
    let mut body = String::new();
    let _ = write!(
        body,
        "<div class=\"card\"><p>{}</p><form method=\"post\" action=\"/portal/login\">{}",
        l.t(
            "请使用实名信息登录：填写姓名和身份证号，我们会向您登记的手机发送验证码。",
            "Sign in with your real name and ID number; a code is sent to the phone registered with your account."
        ),
        csrf_field(pre)
    );
    let (name, id) = step2.unwrap_or(("", ""));
    let _ = write!(
        body,
        "<label for=\"name\">{}</label><input id=\"name\" name=\"name\" autocomplete=\"name\" required value=\"{}\">\
         <label for=\"id_number\">{}</label><input id=\"id_number\" name=\"id_number\" inputmode=\"text\" \
         autocomplete=\"off\" required maxlength=\"18\" value=\"{}\">",
        l.t("姓名", "Name"),
        esc(name),
        l.t("身份证号", "ID number"),
        esc(id)
    );
    if step2.is_some() {
        let _ = write!(
            body,
            "<label for=\"code\">{}</label><input id=\"code\" name=\"code\" inputmode=\"numeric\" \
             autocomplete=\"one-time-code\" maxlength=\"6\" pattern=\"[0-9]{{6}}\" required autofocus>\
             <button type=\"submit\" name=\"step\" value=\"verify\">{}</button>\
             <button class=\"secondary\" type=\"submit\" name=\"step\" value=\"send\" formnovalidate>{}</button>",
            l.t("短信验证码（6位数字）", "SMS code (6 digits)"),
            l.t("登录", "Sign in"),
            l.t("重新发送验证码", "Send a new code")
        );
    } else {
        let _ = write!(
            body,
            "<button type=\"submit\" name=\"step\" value=\"send\">{}</button>",
            l.t("获取验证码", "Send me a code")
        );
    }
    body.push_str("</form></div>");
    let frame = Frame {
        site: &PORTAL,
        lang: l,
        title: l.t("实名登录", "Sign in"),
        section: None,
        acting_for: None,
        csrf: None,
        here: &v.here,
    };
    page(&frame, error, notice, &body)
}

/// `GET /portal/login`.
pub async fn login_form(State(state): State<AppState>, request: Request) -> Html {
    let mut v = visit(&state, &request);
    if session(&state, &v).await.is_some() {
        return redirect("/portal/", v.cookies);
    }
    let pre = crypto::random_token(16);
    v.cookies.push(cookie(PRE_COOKIE, &pre, "/portal", 1800, v.secure));
    let notice = match v.query.get("done").map(String::as_str) {
        Some("logout") => Some(v.lang.t("您已安全退出。", "You have signed out.")),
        _ => None,
    };
    html(StatusCode::OK, login_page(&v, &pre, None, None, notice), &v.cookies, "")
}

/// `POST /portal/login`: `step=send` sends the code, `step=verify` checks it and starts the session.
pub async fn login(State(state): State<AppState>, request: Request) -> Html {
    let mut v = visit(&state, &request);
    let l = v.lang;
    let pre = super::cookies(&v.headers).get(PRE_COOKIE).cloned().unwrap_or_default();
    let form = match form(&state, request).await {
        Ok(f) if token_ok(&f, &pre) => f,
        _ => {
            let fresh = crypto::random_token(16);
            v.cookies.push(cookie(PRE_COOKIE, &fresh, "/portal", 1800, v.secure));
            let error = l.t("页面已过期，请重新填写。", "This form has expired: please fill it in again.");
            return html(StatusCode::FORBIDDEN, login_page(&v, &fresh, None, Some(error), None), &v.cookies, "");
        }
    };
    let name = form.get("name").map(|s| s.trim()).unwrap_or("").chars().take(40).collect::<String>();
    let id_number = form.get("id_number").map(|s| s.trim()).unwrap_or("").chars().take(18).collect::<String>();
    let fail = |v: &Visit, status: StatusCode, step2: bool, error: &str| {
        let step = step2.then_some((name.as_str(), id_number.as_str()));
        html(status, login_page(v, &pre, step, Some(error), None), &v.cookies, "")
    };
    if name.is_empty() {
        return fail(&v, StatusCode::UNPROCESSABLE_ENTITY, false, l.t("请填写姓名。", "Please enter your name."));
    }
    if crypto::idnum::normalize(&id_number).is_err() {
        return fail(
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            false,
            l.t(
                "身份证号格式不正确，请填写18位居民身份证号码（最后一位可以是X）。",
                "The ID number is not valid: enter the 18-character resident ID number (the last may be X).",
            ),
        );
    }
    let phone = match state.auth.resident_phone_for(&name, &id_number).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "portal sign-in: account lookup failed");
            return fail(
                &v,
                StatusCode::SERVICE_UNAVAILABLE,
                false,
                l.t("系统繁忙，请稍后再试。", "The service is busy."),
            );
        }
    };
    match form.get("step").map(String::as_str) {
        Some("verify") => {
            let code = form.get("code").map(|c| c.trim()).unwrap_or("");
            let wrong = l.t("验证码错误或已过期，请重新获取。", "The code is wrong or has expired: request a new one.");
            let Some(phone) = phone else { return fail(&v, StatusCode::UNAUTHORIZED, true, wrong) };
            let grant: HashMap<String, String> = [
                ("grant_type", auth::SMS_GRANT),
                ("phone", phone.as_str()),
                ("code", code),
                ("scope", "patient/*.cruds openid fhirUser"),
            ]
            .iter()
            .map(|(k, val)| (k.to_string(), val.to_string()))
            .collect();
            match state.auth.token(&grant, None, v.source.as_deref()).await {
                Ok(body) => {
                    let token = body["access_token"].as_str().unwrap_or_default();
                    let ttl = body["expires_in"].as_i64().unwrap_or(900);
                    let mut cookies = v.cookies.clone();
                    cookies.push(cookie(SESSION_COOKIE, token, "/portal", ttl, v.secure));
                    cookies.push(cookie(PRE_COOKIE, "", "/portal", 0, v.secure));
                    cookies.push(cookie(ACTING_COOKIE, "", "/portal", 0, v.secure));
                    redirect("/portal/", cookies)
                }
                Err(_) => fail(&v, StatusCode::UNAUTHORIZED, true, wrong),
            }
        }
        _ => {
            if let Some(phone) = phone
                && let Err(e) = state.auth.send_sms_code(&phone).await
            {
                let text = e.to_string();
                let error = if text.contains("minute") {
                    l.t(
                        "验证码发送过于频繁，请一分钟后再试。",
                        "A code was sent less than a minute ago: wait a minute.",
                    )
                } else if text.contains("today") {
                    l.t("今日获取验证码次数过多，请明天再试。", "Too many codes today: try again tomorrow.")
                } else {
                    l.t("验证码发送失败，请稍后再试。", "The code could not be sent: try again later.")
                };
                return fail(&v, StatusCode::TOO_MANY_REQUESTS, true, error);
            }
            // The same answer whether or not the name and number belong to an account.
            let notice = l.t(
                "如果姓名和身份证号与实名账户一致，验证码已发送到您登记的手机，5分钟内有效。",
                "If the name and ID number match an account, a code has been sent to its phone (valid 5 minutes).",
            );
            html(StatusCode::OK, login_page(&v, &pre, Some((&name, &id_number)), None, Some(notice)), &v.cookies, "")
        }
    }
}

/// `POST /portal/logout`: revokes the token and clears the cookies.
pub async fn logout(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let Ok(form) = form(&state, request).await else { return forbidden(&state, &v, &s).await };
    if !token_ok(&form, &s.csrf) {
        return forbidden(&state, &v, &s).await;
    }
    let _ = state.auth.revoke(&s.token).await;
    let cookies =
        vec![cookie(SESSION_COOKIE, "", "/portal", 0, v.secure), cookie(ACTING_COOKIE, "", "/portal", 0, v.secure)];
    redirect("/portal/login?done=logout", cookies)
}

/// A form whose token does not match (a forged or stale form): 403.
async fn forbidden(state: &AppState, v: &Visit, s: &Session) -> Html {
    let l = v.lang;
    let body = format!("<p><a href=\"/portal/\">{}</a></p>", l.t("返回首页", "Back to the home page"));
    render(
        state,
        v,
        s,
        StatusCode::FORBIDDEN,
        l.t("请求无效", "Request refused"),
        "/portal/",
        Some(l.t(
            "页面已过期或请求来源无效，请返回后重试。",
            "This form has expired or did not come from this site: go back and try again.",
        )),
        None,
        &body,
        "",
    )
    .await
}

/// Reads a POSTed form and checks its token; the 403 page otherwise.
async fn checked_form(
    state: &AppState,
    v: &Visit,
    s: &Session,
    request: Request,
) -> Result<HashMap<String, String>, Html> {
    match form(state, request).await {
        Ok(f) if token_ok(&f, &s.csrf) => Ok(f),
        _ => Err(forbidden(state, v, s).await),
    }
}

/// Unknown portal paths.
pub async fn not_found(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let body = format!("<p><a href=\"/portal/\">{}</a></p>", l.t("返回首页", "Back to the home page"));
    render(
        &state,
        &v,
        &s,
        StatusCode::NOT_FOUND,
        l.t("页面不存在", "Page not found"),
        "/portal/",
        None,
        None,
        &body,
        "",
    )
    .await
}

// ---- home ------------------------------------------------------------------------------

/// `GET /portal/`.
pub async fn home(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let name = patient_name(&state, &s, &s.patient).await;
    let mut body = format!("<p>{}{}</p><div class=\"tiles\">", l.t("您好，", "Hello, "), esc(&name));
    for (path, zh, en) in &super::html::MENU[1..] {
        let _ = write!(body, "<a href=\"{path}\">{}</a>", l.t(zh, en));
    }
    body.push_str("</div>");
    render(&state, &v, &s, StatusCode::OK, l.t("首页", "Home"), "/portal/", None, None, &body, "").await
}

// ---- health card -----------------------------------------------------------------------

/// `GET /portal/card`: the card and a fresh dynamic QR code, reloaded when it expires.
pub async fn card(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("我的健康卡", "My health card");
    let card = match state.engine.healthcard_for_patient(&s.ctx, &s.patient).await {
        Ok(card) => card,
        Err(EngineError::NotFound(_)) | Err(EngineError::NotFoundExplained(_)) => {
            let body = format!(
                "<div class=\"card\"><p>{}</p><form method=\"post\" action=\"/portal/card/register\">{}<button type=\"submit\">{}</button></form></div>",
                l.t(
                    "您还没有电子健康卡。电子健康卡凭实名信息申领，全省医疗机构通用。",
                    "You have no electronic health card yet. It is issued on your real-name account and valid across the province."
                ),
                csrf_field(&s.csrf),
                l.t("申领电子健康卡", "Get my health card")
            );
            return render(&state, &v, &s, StatusCode::OK, title, "/portal/card", None, None, &body, "").await;
        }
        Err(e) => {
            let error = message(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, "/portal/card", Some(&error), None, "", "").await;
        }
    };
    let status_text = match card.status {
        engine::CardStatus::Active => l.t("正常", "active"),
        engine::CardStatus::Suspended => l.t("已挂失/暂停", "suspended"),
        engine::CardStatus::Closed => l.t("已注销", "closed"),
    };
    let mut body = format!(
        "<div class=\"card\"><p>{}{}</p><p class=\"muted\">{}{}…</p>",
        l.t("状态：", "Status: "),
        status_text,
        l.t("卡号：", "Card id: "),
        esc(&card.card_id[..16.min(card.card_id.len())])
    );
    let nonce = nonce();
    if card.status == engine::CardStatus::Active {
        let keys = state.auth.keys();
        match state.engine.healthcard_code(&s.ctx, &keys, &card.card_id, None, None).await {
            Ok(code) => {
                let svg = healthcard::qr::svg(&code.payload, 256).unwrap_or_default();
                let svg = svg.find("<svg").map_or("", |i| &svg[i..]);
                let expires = chrono::DateTime::from_timestamp(code.claims.expires_at, 0)
                    .map(|t| when(&t.to_rfc3339()))
                    .unwrap_or_default();
                let reload_ms = ((code.claims.expires_at - chrono::Utc::now().timestamp()) * 1000 - 2000).max(5000);
                let _ = write!(
                    body,
                    "<div class=\"qr\" role=\"img\" aria-label=\"{}\" id=\"qr\">{svg}</div>\
                     <p>{}<time>{}</time>{}</p><p><a class=\"button\" href=\"/portal/card\">{}</a></p>\
                     <script nonce=\"{nonce}\">setTimeout(function(){{location.reload()}},{reload_ms})</script>",
                    l.t("电子健康卡动态二维码", "Dynamic health card QR code"),
                    l.t("动态码一次有效，有效期至 ", "Single-use code, valid until "),
                    esc(&expires),
                    l.t("，到期自动刷新。", "; it refreshes itself."),
                    l.t("刷新二维码", "Refresh the code"),
                );
            }
            Err(e) => {
                let _ = write!(body, "<div class=\"error\" role=\"alert\">{}</div>", esc(&message(&state, &e, l)));
            }
        }
    }
    body.push_str("</div>");
    render(&state, &v, &s, StatusCode::OK, title, "/portal/card", None, None, &body, &nonce).await
}

/// `POST /portal/card/register`.
pub async fn card_register(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    if let Err(r) = checked_form(&state, &v, &s, request).await {
        return r;
    }
    let subject = s.ctx.principal.as_deref().map(|p| p.subject.clone()).unwrap_or_default();
    let verified = state.auth.verified_id_number(&subject).await.ok().flatten();
    let keys = state.auth.keys();
    match state.engine.healthcard_register(&s.ctx, &keys, &s.patient, verified.as_deref()).await {
        Ok(_) => redirect("/portal/card", v.cookies),
        Err(e) => {
            let l = v.lang;
            let error = message(&state, &e, l);
            let title = l.t("我的健康卡", "My health card");
            render(&state, &v, &s, error_status(&e), title, "/portal/card", Some(&error), None, "", "").await
        }
    }
}

// ---- doctors and booking ---------------------------------------------------------------

/// One schedule as listed: (schedule id, doctor, department, hospital and department text).
fn schedule_row(schedule: &Value, included: &HashMap<String, Value>) -> (String, String, String, String) {
    let doctor = schedule["actor"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["reference"].as_str())
        .find(|r| r.starts_with("Practitioner/"))
        .and_then(|r| included.get(r))
        .map(person_name)
        .unwrap_or_default();
    let department = schedule["specialty"].as_array().and_then(|a| a.first()).map(text_of).unwrap_or_default();
    (
        schedule["id"].as_str().unwrap_or("").to_string(),
        doctor,
        department,
        schedule["comment"].as_str().unwrap_or("").to_string(),
    )
}

/// `GET /portal/doctors?q=&dept=`: doctors and departments with published schedules.
pub async fn doctors(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("找医生/科室", "Find a doctor or department");
    let q = v.query.get("q").map(|x| x.trim().to_string()).unwrap_or_default();
    let dept = v.query.get("dept").cloned().unwrap_or_default();
    let found =
        search(&state, &v, &s, "Schedule", &[("active", "true"), ("_count", "200"), ("_include", "Schedule:actor")])
            .await;
    let (schedules, included) = match found {
        Ok(x) => x,
        Err(e) => {
            let error = message(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, "/portal/doctors", Some(&error), None, "", "")
                .await;
        }
    };
    let rows: Vec<_> = schedules.iter().map(|sch| schedule_row(sch, &included)).collect();
    let mut departments: Vec<&str> = rows.iter().map(|r| r.2.as_str()).filter(|d| !d.is_empty()).collect();
    departments.sort();
    departments.dedup();
    let mut body = format!(
        "<form method=\"get\" action=\"/portal/doctors\" class=\"card\" role=\"search\"><label for=\"q\">{}</label>\
         <input id=\"q\" name=\"q\" value=\"{}\" placeholder=\"{}\"><label for=\"dept\">{}</label><select id=\"dept\" name=\"dept\"><option value=\"\">{}</option>",
        l.t("医生、医院或科室", "Doctor, hospital or department"),
        esc(&q),
        l.t("如：内科、福州", "e.g. 内科, 福州"),
        l.t("科室", "Department"),
        l.t("全部科室", "All departments"),
    );
    for d in &departments {
        let selected = if *d == dept { " selected" } else { "" };
        let _ = write!(body, "<option value=\"{0}\"{selected}>{0}</option>", esc(d));
    }
    let _ = write!(body, "</select><button type=\"submit\">{}</button></form>", l.t("搜索", "Search"));
    let shown: Vec<_> = rows
        .iter()
        .filter(|r| dept.is_empty() || r.2 == dept)
        .filter(|r| q.is_empty() || r.1.contains(&q) || r.2.contains(&q) || r.3.contains(&q))
        .collect();
    let _ = write!(body, "<h2>{} ({})</h2><ul class=\"plain\">", l.t("出诊医生", "Doctors"), shown.len());
    for (id, doctor, department, where_) in shown {
        let _ = write!(
            body,
            "<li class=\"card\"><a href=\"/portal/doctors/{}\"><strong>{}</strong></a> · {}<br><span class=\"muted\">{}</span></li>",
            url(id),
            esc(doctor),
            esc(department),
            esc(where_)
        );
    }
    body.push_str("</ul>");
    render(&state, &v, &s, StatusCode::OK, title, "/portal/doctors", None, None, &body, "").await
}

/// The doctor's page body: free online slots from now, each with a booking button.
async fn doctor_body(
    state: &AppState,
    v: &Visit,
    s: &Session,
    schedule_id: &str,
) -> Result<(String, String), EngineError> {
    let l = v.lang;
    let (schedule, _) = read(state, s, "Schedule", schedule_id).await?;
    let mut doctor = String::new();
    for actor in schedule["actor"].as_array().into_iter().flatten() {
        if let Some(id) = actor["reference"].as_str().and_then(|r| r.strip_prefix("Practitioner/")) {
            doctor = read(state, s, "Practitioner", id).await.map(|(p, _)| person_name(&p)).unwrap_or_default();
        }
    }
    let schedule_ref = format!("Schedule/{schedule_id}");
    let from = format!("ge{}", fhir::normalize::format_instant(now_ms()));
    let (slots, _) = search(
        state,
        v,
        s,
        "Slot",
        &[("schedule", &schedule_ref), ("status", "free"), ("start", &from), ("_sort", "start"), ("_count", "100")],
    )
    .await?;
    let mut body = format!(
        "<div class=\"card\"><p><strong>{}</strong> · {}</p><p class=\"muted\">{}</p></div><h2>{}</h2>",
        esc(&doctor),
        esc(&schedule["specialty"].as_array().and_then(|a| a.first()).map(text_of).unwrap_or_default()),
        esc(schedule["comment"].as_str().unwrap_or("")),
        l.t("可预约号源", "Free slots"),
    );
    let online: Vec<&Value> = slots
        .iter()
        .filter(|slot| {
            !slot["extension"].as_array().into_iter().flatten().any(|x| {
                x["url"] == engine::CHANNEL_EXTENSION && x["valueCode"].as_str().is_some_and(|c| c != "platform")
            })
        })
        .collect();
    if online.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无可预约号源。", "No free slots at the moment."));
    }
    let mut day = String::new();
    for slot in online {
        let start = when(slot["start"].as_str().unwrap_or(""));
        let (date, time) = start.split_once(' ').unwrap_or((&start, ""));
        if date != day {
            if !day.is_empty() {
                body.push_str("</div>");
            }
            let _ = write!(body, "<h3>{}</h3><div class=\"slots\">", esc(date));
            day = date.to_string();
        }
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/portal/appointments\">{}<input type=\"hidden\" name=\"slot\" value=\"{}\">\
             <button type=\"submit\" aria-label=\"{} {} {}\">{}</button></form>",
            csrf_field(&s.csrf),
            esc(slot["id"].as_str().unwrap_or("")),
            l.t("预约", "Book"),
            esc(date),
            esc(time),
            esc(time)
        );
    }
    if !day.is_empty() {
        body.push_str("</div>");
    }
    Ok((doctor, body))
}

/// `GET /portal/doctors/{schedule}`.
pub async fn doctor(State(state): State<AppState>, Path(schedule): Path<String>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    match doctor_body(&state, &v, &s, &schedule).await {
        Ok((doctor, body)) => {
            let title = format!("{}{}", l.t("预约挂号 · ", "Book · "), doctor);
            render(&state, &v, &s, StatusCode::OK, &title, "/portal/doctors", None, None, &body, "").await
        }
        Err(e) => {
            let error = message(&state, &e, l);
            let title = l.t("预约挂号", "Book");
            render(&state, &v, &s, error_status(&e), title, "/portal/doctors", Some(&error), None, "", "").await
        }
    }
}

/// `POST /portal/appointments` (`slot`): books the Slot for the person acted for.
pub async fn book(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let slot_id = form.get("slot").cloned().unwrap_or_default();
    let l = v.lang;
    let result = async {
        let (slot, _) = read(&state, &s, "Slot", &slot_id).await?;
        let schedule_id =
            slot["schedule"]["reference"].as_str().and_then(|r| r.strip_prefix("Schedule/")).unwrap_or("");
        let (schedule, _) = read(&state, &s, "Schedule", schedule_id).await?;
        let practitioner = schedule["actor"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["reference"].as_str())
            .find(|r| r.starts_with("Practitioner/"))
            .map(str::to_string);
        let doctor = match &practitioner {
            Some(r) => read(&state, &s, "Practitioner", &r["Practitioner/".len()..])
                .await
                .map(|(p, _)| person_name(&p))
                .unwrap_or_default(),
            None => String::new(),
        };
        let mut participants =
            vec![json!({"actor": {"reference": format!("Patient/{}", s.patient)}, "status": "accepted"})];
        if let Some(p) = practitioner {
            participants.push(json!({"actor": {"reference": p, "display": doctor}, "status": "accepted"}));
        }
        let description = format!("{} {}", schedule["comment"].as_str().unwrap_or(""), doctor).trim().to_string();
        let mut appointment = json!({
            "resourceType": "Appointment", "status": "booked",
            "slot": [{"reference": format!("Slot/{slot_id}")}],
            "start": slot["start"], "end": slot["end"],
            "created": chrono::Utc::now().format("%Y-%m-%d").to_string(),
            "description": description,
            "participant": participants,
        });
        if let Some(service) = slot["serviceType"].as_array() {
            appointment["serviceType"] = json!(service);
        }
        state.engine.create(&s.ctx, "Appointment", appointment, &opts(&state, &v)).await
    }
    .await;
    match result {
        Ok(_) => redirect("/portal/appointments?done=booked", v.cookies),
        Err(e) => {
            let error = message(&state, &e, l);
            let status = error_status(&e);
            // Back on the doctor's page with the reason, when the slot is known.
            let schedule = match state.engine.read(&s.ctx, "Slot", &slot_id).await {
                Ok(r) => r.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()).and_then(|b| {
                    b["schedule"]["reference"].as_str().map(|x| x.trim_start_matches("Schedule/").to_string())
                }),
                Err(_) => None,
            };
            let body = match schedule {
                Some(id) => doctor_body(&state, &v, &s, &id).await.map(|(_, b)| b).unwrap_or_default(),
                None => String::new(),
            };
            render(&state, &v, &s, status, l.t("预约挂号", "Book"), "/portal/doctors", Some(&error), None, &body, "")
                .await
        }
    }
}

fn appointment_status(status: &str, l: Lang) -> &'static str {
    match status {
        "booked" => l.t("已预约", "booked"),
        "cancelled" => l.t("已取消", "cancelled"),
        "fulfilled" => l.t("已就诊", "attended"),
        "noshow" => l.t("爽约", "missed"),
        "arrived" | "checked-in" => l.t("已签到", "checked in"),
        "waitlist" => l.t("候补中", "waiting list"),
        "pending" | "proposed" => l.t("待确认", "pending"),
        _ => l.t("其他", "other"),
    }
}

async fn appointments_body(state: &AppState, v: &Visit, s: &Session) -> Result<String, EngineError> {
    let l = v.lang;
    let patient = format!("Patient/{}", s.patient);
    let (list, _) =
        search(state, v, s, "Appointment", &[("patient", &patient), ("_sort", "-date"), ("_count", "50")]).await?;
    let deadline = state.engine.config().booking.cancel_before_minutes;
    let mut body = format!(
        "<p class=\"muted\">{}</p><p><a class=\"button\" href=\"/portal/doctors\">{}</a></p>",
        match l {
            Lang::Zh => format!("就诊前{deadline}分钟内不能在线取消；爽约多次将暂停在线预约。"),
            Lang::En => format!(
                "Appointments cannot be cancelled online within {deadline} minutes of the visit; repeated no-shows suspend online booking."
            ),
        },
        l.t("预约挂号", "Book an appointment")
    );
    if list.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无预约记录。", "No appointments."));
    }
    body.push_str("<ul class=\"plain\">");
    let now = now_ms();
    for a in &list {
        let status = a["status"].as_str().unwrap_or("");
        let start = a["start"].as_str().unwrap_or("");
        let _ = write!(
            body,
            "<li class=\"card\"><strong>{}</strong> · {}<br>{}",
            esc(&when(start)),
            appointment_status(status, l),
            esc(a["description"].as_str().unwrap_or(""))
        );
        let future = fhir::normalize::date_range(start).is_some_and(|(t, _)| t > now);
        if status == "booked" && future {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/portal/appointments/{}/cancel\">{}<button class=\"danger\" type=\"submit\" aria-label=\"{} {}\">{}</button></form>",
                url(a["id"].as_str().unwrap_or("")),
                csrf_field(&s.csrf),
                l.t("取消预约", "Cancel the appointment on"),
                esc(&when(start)),
                l.t("取消预约", "Cancel")
            );
        }
        body.push_str("</li>");
    }
    body.push_str("</ul>");
    Ok(body)
}

/// `GET /portal/appointments`.
pub async fn appointments(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let notice = match v.query.get("done").map(String::as_str) {
        Some("booked") => Some(l.t(
            "预约成功！请按时就诊，凭电子健康卡签到。",
            "Booked! Please arrive on time and check in with your health card.",
        )),
        Some("cancelled") => {
            Some(l.t("已取消预约，号源已释放。", "The appointment is cancelled and the slot released."))
        }
        _ => None,
    };
    let title = l.t("我的预约", "My appointments");
    match appointments_body(&state, &v, &s).await {
        Ok(body) => {
            render(&state, &v, &s, StatusCode::OK, title, "/portal/appointments", None, notice, &body, "").await
        }
        Err(e) => {
            let error = message(&state, &e, l);
            render(&state, &v, &s, error_status(&e), title, "/portal/appointments", Some(&error), None, "", "").await
        }
    }
}

/// `POST /portal/appointments/{id}/cancel`.
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    if let Err(r) = checked_form(&state, &v, &s, request).await {
        return r;
    }
    let l = v.lang;
    let result = async {
        let (mut appointment, version) = read(&state, &s, "Appointment", &id).await?;
        appointment["status"] = json!("cancelled");
        appointment["cancelationReason"] = json!({"text": "患者在线取消 (cancelled by the patient online)"});
        let opts = RequestOptions { if_match: Some(version), ..opts(&state, &v) };
        state.engine.update(&s.ctx, "Appointment", &id, appointment, &opts).await
    }
    .await;
    match result {
        Ok(_) => redirect("/portal/appointments?done=cancelled", v.cookies),
        Err(e) => {
            let error = message(&state, &e, l);
            let body = appointments_body(&state, &v, &s).await.unwrap_or_default();
            let title = l.t("我的预约", "My appointments");
            render(&state, &v, &s, error_status(&e), title, "/portal/appointments", Some(&error), None, &body, "").await
        }
    }
}

// ---- reports and records ---------------------------------------------------------------

/// `GET /portal/reports`: diagnostic reports, newest first, and the latest lab results.
pub async fn reports(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("我的报告", "My reports");
    let patient = format!("Patient/{}", s.patient);
    let result = async {
        let (reports, _) =
            search(&state, &v, &s, "DiagnosticReport", &[("patient", &patient), ("_sort", "-date"), ("_count", "50")])
                .await?;
        let (labs, _) = search(
            &state,
            &v,
            &s,
            "Observation",
            &[("patient", &patient), ("category", "laboratory"), ("_sort", "-date"), ("_count", "10")],
        )
        .await?;
        Ok::<_, EngineError>((reports, labs))
    }
    .await;
    let (reports, labs) = match result {
        Ok(x) => x,
        Err(e) => {
            let error = message(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, "/portal/reports", Some(&error), None, "", "")
                .await;
        }
    };
    let mut body = format!("<h2>{}</h2>", l.t("检查检验报告", "Lab and imaging reports"));
    if reports.is_empty() {
        let _ = write!(
            body,
            "<p>{}</p>",
            l.t("暂无报告。报告出具后会显示在这里。", "No reports yet; they appear here when issued.")
        );
    }
    body.push_str("<ul class=\"plain\">");
    for r in &reports {
        let date = r["issued"].as_str().or(r["effectiveDateTime"].as_str()).unwrap_or("");
        let _ = write!(
            body,
            "<li class=\"card\"><a href=\"/portal/reports/{}\"><strong>{}</strong></a><br><span class=\"muted\">{} · {}</span></li>",
            url(r["id"].as_str().unwrap_or("")),
            esc(&text_of(&r["code"])),
            esc(&when(date)),
            esc(r["performer"][0]["display"].as_str().unwrap_or(""))
        );
    }
    let _ = write!(body, "</ul><h2>{}</h2>", l.t("最近检验结果", "Latest lab results"));
    body.push_str(&results_table(&labs, l));
    render(&state, &v, &s, StatusCode::OK, title, "/portal/reports", None, None, &body, "").await
}

fn quantity(q: &Value) -> String {
    match (&q["value"], q["unit"].as_str()) {
        (Value::Null, _) => String::new(),
        (value, unit) => format!("{value} {}", unit.unwrap_or("")).trim().to_string(),
    }
}

fn results_table(observations: &[Value], l: Lang) -> String {
    if observations.is_empty() {
        return format!("<p>{}</p>", l.t("暂无结果。", "No results."));
    }
    let mut out = format!(
        "<table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
        l.t("项目", "Test"),
        l.t("结果", "Result"),
        l.t("参考范围", "Reference range"),
        l.t("时间", "Time"),
    );
    for o in observations {
        let value = &o["valueQuantity"];
        let range = &o["referenceRange"][0];
        let number = value["value"].as_f64();
        let flag = match (number, range["low"]["value"].as_f64(), range["high"]["value"].as_f64()) {
            (Some(x), _, Some(h)) if x > h => format!(" <span class=\"high\">↑ {}</span>", l.t("偏高", "high")),
            (Some(x), Some(lo), _) if x < lo => format!(" <span class=\"low\">↓ {}</span>", l.t("偏低", "low")),
            _ => String::new(),
        };
        let range_text = match (range["low"]["value"].as_f64(), range["high"]["value"].as_f64()) {
            (Some(lo), Some(h)) => format!("{lo}–{h}"),
            _ => range["text"].as_str().unwrap_or("").to_string(),
        };
        let shown = if value.is_null() {
            o["valueString"].as_str().map(str::to_string).unwrap_or_else(|| {
                o["component"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| quantity(&c["valueQuantity"]))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
        } else {
            quantity(value)
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}{flag}</td><td>{}</td><td>{}</td></tr>",
            esc(&text_of(&o["code"])),
            esc(&shown),
            esc(&range_text),
            esc(&when(o["effectiveDateTime"].as_str().unwrap_or("")))
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// `GET /portal/reports/{id}`: one report with its results (404 when not the resident's).
pub async fn report(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let result = async {
        let (report, _) = read(&state, &s, "DiagnosticReport", &id).await?;
        let mut results = Vec::new();
        for r in report["result"].as_array().into_iter().flatten() {
            if let Some(obs) = r["reference"].as_str().and_then(|x| x.strip_prefix("Observation/")) {
                results.push(read(&state, &s, "Observation", obs).await?.0);
            }
        }
        Ok::<_, EngineError>((report, results))
    }
    .await;
    match result {
        Ok((report, results)) => {
            let title = text_of(&report["code"]);
            let date = report["issued"].as_str().or(report["effectiveDateTime"].as_str()).unwrap_or("");
            let mut body = format!(
                "<div class=\"card\"><p>{}{}</p><p>{}{}</p><p>{}{}</p></div>",
                l.t("出具时间：", "Issued: "),
                esc(&when(date)),
                l.t("出具机构：", "By: "),
                esc(report["performer"][0]["display"].as_str().unwrap_or("")),
                l.t("状态：", "Status: "),
                if report["status"] == "final" { l.t("已出具", "final") } else { l.t("初步", "preliminary") },
            );
            if !results.is_empty() {
                body.push_str(&results_table(&results, l));
            }
            if let Some(conclusion) = report["conclusion"].as_str() {
                let _ = write!(body, "<h2>{}</h2><p>{}</p>", l.t("结论", "Conclusion"), esc(conclusion));
            }
            let _ = write!(body, "<p><a href=\"/portal/reports\">{}</a></p>", l.t("返回报告列表", "Back to reports"));
            render(&state, &v, &s, StatusCode::OK, &title, "/portal/reports", None, None, &body, "").await
        }
        Err(e) => {
            let error = message(&state, &e, l);
            let title = l.t("我的报告", "My reports");
            render(&state, &v, &s, error_status(&e), title, "/portal/reports", Some(&error), None, "", "").await
        }
    }
}

/// `GET /portal/records`: the health record summary: person, conditions, visits, prescriptions.
pub async fn records(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("我的档案", "My health record");
    let patient = format!("Patient/{}", s.patient);
    let result = async {
        let (person, _) = read(&state, &s, "Patient", &s.patient).await?;
        let (conditions, _) = search(&state, &v, &s, "Condition", &[("patient", &patient), ("_count", "50")]).await?;
        let (encounters, orgs) = search(
            &state,
            &v,
            &s,
            "Encounter",
            &[("patient", &patient), ("_sort", "-date"), ("_count", "20"), ("_include", "Encounter:service-provider")],
        )
        .await?;
        let (medications, _) =
            search(&state, &v, &s, "MedicationRequest", &[("patient", &patient), ("_count", "50")]).await?;
        Ok::<_, EngineError>((person, conditions, encounters, orgs, medications))
    }
    .await;
    let (person, conditions, encounters, orgs, medications) = match result {
        Ok(x) => x,
        Err(e) => {
            let error = message(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, "/portal/records", Some(&error), None, "", "")
                .await;
        }
    };
    let gender = match person["gender"].as_str() {
        Some("male") => l.t("男", "male"),
        Some("female") => l.t("女", "female"),
        _ => "",
    };
    let mut body = format!(
        "<div class=\"card\"><p><strong>{}</strong> · {} · {}{}</p></div><h2>{}</h2>",
        esc(&person_name(&person)),
        gender,
        l.t("出生日期 ", "born "),
        esc(person["birthDate"].as_str().unwrap_or("")),
        l.t("疾病诊断", "Conditions"),
    );
    if conditions.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无诊断记录。", "None recorded."));
    }
    body.push_str("<ul>");
    for c in &conditions {
        let _ = write!(
            body,
            "<li>{} <span class=\"muted\">{}</span></li>",
            esc(&text_of(&c["code"])),
            esc(c["recordedDate"].as_str().unwrap_or(""))
        );
    }
    let _ = write!(body, "</ul><h2>{}</h2>", l.t("就诊记录", "Visits"));
    if encounters.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无就诊记录。", "No visits recorded."));
    }
    body.push_str("<ul>");
    for e in &encounters {
        let org = e["serviceProvider"]["reference"]
            .as_str()
            .and_then(|r| orgs.get(r))
            .and_then(|o| o["name"].as_str())
            .unwrap_or("");
        let _ = write!(
            body,
            "<li>{} · {} · {}</li>",
            esc(&when(e["period"]["start"].as_str().unwrap_or(""))),
            esc(&e["type"].as_array().and_then(|t| t.first()).map(text_of).unwrap_or_default()),
            esc(org)
        );
    }
    let _ = write!(body, "</ul><h2>{}</h2>", l.t("处方用药", "Prescriptions"));
    if medications.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无处方记录。", "No prescriptions."));
    }
    body.push_str("<ul>");
    for m in &medications {
        let _ = write!(
            body,
            "<li>{} · {} <span class=\"muted\">{}</span></li>",
            esc(&text_of(&m["medicationCodeableConcept"])),
            esc(m["dosageInstruction"][0]["text"].as_str().unwrap_or("")),
            esc(m["authoredOn"].as_str().unwrap_or(""))
        );
    }
    body.push_str("</ul>");
    render(&state, &v, &s, StatusCode::OK, title, "/portal/records", None, None, &body, "").await
}

// ---- who accessed my records -----------------------------------------------------------

fn role_label(role: &str, l: Lang) -> &'static str {
    match role {
        "resident" => l.t("居民本人或监护人", "the resident or a guardian"),
        "doctor" => l.t("医生", "doctor"),
        "nurse" => l.t("护士", "nurse"),
        "family-doctor" => l.t("家庭医生", "family doctor"),
        "pharmacist" => l.t("药师", "pharmacist"),
        "cdc-officer" => l.t("疾控人员", "CDC officer"),
        "insurer" => l.t("医保经办", "insurer"),
        "regulator" => l.t("卫生监管", "regulator"),
        "operator" => l.t("平台运维", "operator"),
        "auditor" => l.t("安全审计员", "auditor"),
        "data-steward" => l.t("数据管理员", "data steward"),
        "system" => l.t("医疗机构信息系统", "hospital system"),
        _ => l.t("其他", "other"),
    }
}

fn action_label(action: &str, l: Lang) -> String {
    let known = match action {
        "read" | "vread" => Some(l.t("查看", "viewed")),
        "search" => Some(l.t("查询", "searched")),
        "create" => Some(l.t("新建", "created")),
        "update" | "patch" => Some(l.t("修改", "changed")),
        "delete" => Some(l.t("删除", "deleted")),
        "everything" | "$everything" => Some(l.t("调阅全部档案", "opened the whole record")),
        "history" => Some(l.t("查看历史版本", "viewed history")),
        "export" => Some(l.t("批量导出", "exported")),
        "transaction" | "batch" => Some(l.t("提交数据", "submitted data")),
        _ if action.starts_with("healthcard") => Some(l.t("健康卡服务", "health card service")),
        _ => None,
    };
    known.map(str::to_string).unwrap_or_else(|| action.to_string())
}

/// What part of the record an audit entry touched, by resource type (`Observation/…`,
/// `Observation?…`), without ids or query text.
fn entity_label(entity: &str, l: Lang) -> String {
    let ty = entity.split(['/', '?']).next().unwrap_or("");
    let known = match ty {
        "Patient" => Some(l.t("基本信息", "personal details")),
        "Observation" => Some(l.t("检验/体征结果", "results and vital signs")),
        "DiagnosticReport" => Some(l.t("检查检验报告", "reports")),
        "Encounter" => Some(l.t("就诊记录", "visits")),
        "Condition" => Some(l.t("疾病诊断", "conditions")),
        "MedicationRequest" => Some(l.t("处方", "prescriptions")),
        "Appointment" => Some(l.t("预约", "appointments")),
        "Consent" => Some(l.t("授权", "authorizations")),
        "audit" => Some(l.t("访问记录", "access log")),
        _ if entity.starts_with("healthcard") || entity.len() == 64 => Some(l.t("电子健康卡", "health card")),
        _ => None,
    };
    known.map(str::to_string).unwrap_or_else(|| ty.to_string())
}

/// Accesses shown on the access-log page.
const ACCESS_LOG_ROWS: usize = 50;

/// `GET /portal/access-log`: who accessed the records of the person acted for.
pub async fn access_log(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("访问记录", "Who accessed my records");
    // The latest log entries that name the person (a queued block entry holds many accesses),
    // newest first, at most ACCESS_LOG_ROWS of them.
    let mut events = match crate::security::patient_access_log(&state, &s.ctx, &s.patient, 20).await {
        Ok(e) => e,
        Err(e) => {
            let error = match e {
                crate::ApiError::Engine(e) => message(&state, &e, l),
                crate::ApiError::Http { .. } => {
                    l.t("您无权查看此访问记录。", "You may not see this access log.").to_string()
                }
            };
            return render(
                &state,
                &v,
                &s,
                StatusCode::FORBIDDEN,
                title,
                "/portal/access-log",
                Some(&error),
                None,
                "",
                "",
            )
            .await;
        }
    };
    events.sort_by(|a, b| b["recorded"].as_str().cmp(&a["recorded"].as_str()));
    events.truncate(ACCESS_LOG_ROWS);
    let me = s.ctx.principal.as_deref().map(|p| p.subject.clone()).unwrap_or_default();
    let mut body = format!(
        "<p class=\"muted\">{}</p>",
        l.t(
            "每一次查看、修改您的健康档案都会记录在防篡改的审计日志中。如发现异常访问，请拨打12320投诉。",
            "Every access to your record is kept in the tamper-evident audit log. Call 12320 about any access you did not expect."
        )
    );
    if events.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无访问记录。", "No accesses recorded."));
    } else {
        let _ = write!(
            body,
            "<table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
            l.t("时间", "Time"),
            l.t("访问者", "Who"),
            l.t("操作", "What"),
            l.t("结果", "Outcome")
        );
        for e in &events {
            let who = e["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("");
            let role = e["agent"][0]["type"]["text"].as_str().unwrap_or("");
            let org = e["agent"][0]["location"]["display"].as_str().unwrap_or("");
            let who_text = if who == me {
                l.t("您本人", "you").to_string()
            } else {
                format!("{} {}", role_label(role, l), org).trim().to_string()
            };
            let outcome = match e["outcome"].as_str() {
                Some("0") => l.t("成功", "done"),
                Some("4") => l.t("已拒绝", "refused"),
                _ => l.t("失败", "failed"),
            };
            let what = format!(
                "{} {}",
                action_label(e["subtype"][0]["code"].as_str().unwrap_or(""), l),
                entity_label(e["entity"][0]["what"]["reference"].as_str().unwrap_or(""), l)
            );
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&when(e["recorded"].as_str().unwrap_or(""))),
                esc(&who_text),
                esc(what.trim()),
                outcome
            );
        }
        body.push_str("</tbody></table>");
    }
    render(&state, &v, &s, StatusCode::OK, title, "/portal/access-log", None, None, &body, "").await
}

// ---- authorizations (Consent) ----------------------------------------------------------

const PRIVACY_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";

async fn consents_body(state: &AppState, v: &Visit, s: &Session) -> Result<String, EngineError> {
    let l = v.lang;
    let patient = format!("Patient/{}", s.patient);
    let (consents, _) = search(state, v, s, "Consent", &[("patient", &patient), ("_count", "50")]).await?;
    let (orgs, _) = search(state, v, s, "Organization", &[("active", "true"), ("_count", "100")]).await?;
    let mut body = format!(
        "<p class=\"muted\">{}</p><h2>{}</h2>",
        l.t(
            "授权后，该医疗机构的医生可以查看您的健康档案；拒绝后，即使在该机构就诊过也不能查看（急诊抢救除外，且会被记录审查）。",
            "A permit lets that institution's clinicians see your record; a refusal stops them even after a visit (except emergencies, which are logged for review)."
        ),
        l.t("已有授权", "Current authorizations")
    );
    if consents.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无授权记录。", "None."));
    }
    body.push_str("<ul class=\"plain\">");
    for c in &consents {
        let provision = &c["provision"];
        let kind =
            if provision["type"] == "deny" { l.t("拒绝查看", "refused") } else { l.t("允许查看", "permitted") };
        let actor = provision["actor"][0]["reference"]["display"]
            .as_str()
            .or(provision["actor"][0]["reference"]["reference"].as_str())
            .unwrap_or(l.t("所有机构", "everyone"));
        let active = c["status"] == "active";
        let _ = write!(
            body,
            "<li class=\"card\"><strong>{}</strong> · {} · {}<br><span class=\"muted\">{}</span>",
            esc(actor),
            kind,
            if active { l.t("生效中", "in force") } else { l.t("已撤销", "revoked") },
            esc(&when(c["dateTime"].as_str().unwrap_or("")))
        );
        if active {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/portal/consents/{}/revoke\">{}<button class=\"danger\" type=\"submit\" aria-label=\"{} {}\">{}</button></form>",
                url(c["id"].as_str().unwrap_or("")),
                csrf_field(&s.csrf),
                l.t("撤销对此机构的授权：", "Revoke for"),
                esc(actor),
                l.t("撤销", "Revoke")
            );
        }
        body.push_str("</li>");
    }
    let _ = write!(
        body,
        "</ul><h2>{}</h2><form method=\"post\" action=\"/portal/consents\" class=\"card\">{}<label for=\"org\">{}</label><select id=\"org\" name=\"org\" required>",
        l.t("新增授权", "New authorization"),
        csrf_field(&s.csrf),
        l.t("医疗机构", "Institution")
    );
    for o in &orgs {
        let is_alliance = o["type"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["coding"].as_array().into_iter().flatten())
            .any(|c| c["code"] == "medical-alliance");
        if is_alliance {
            continue;
        }
        let _ = write!(
            body,
            "<option value=\"{}\">{}</option>",
            esc(o["id"].as_str().unwrap_or("")),
            esc(o["name"].as_str().unwrap_or(""))
        );
    }
    let _ = write!(
        body,
        "</select><fieldset><legend>{}</legend><label><input type=\"radio\" name=\"kind\" value=\"permit\" checked> {}</label>\
         <label><input type=\"radio\" name=\"kind\" value=\"deny\"> {}</label></fieldset><button type=\"submit\">{}</button></form>",
        l.t("授权方式", "Decision"),
        l.t("允许该机构医生查看我的档案", "Let its clinicians see my record"),
        l.t("拒绝该机构查看我的档案", "Refuse it access to my record"),
        l.t("提交授权", "Save")
    );
    Ok(body)
}

/// `GET /portal/consents`.
pub async fn consents(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("我的授权", "My authorizations");
    let notice = match v.query.get("done").map(String::as_str) {
        Some("granted") => Some(l.t("授权已保存。", "Saved.")),
        Some("revoked") => Some(l.t("授权已撤销。", "Revoked.")),
        _ => None,
    };
    match consents_body(&state, &v, &s).await {
        Ok(body) => render(&state, &v, &s, StatusCode::OK, title, "/portal/consents", None, notice, &body, "").await,
        Err(e) => {
            let error = message(&state, &e, l);
            render(&state, &v, &s, error_status(&e), title, "/portal/consents", Some(&error), None, "", "").await
        }
    }
}

/// `POST /portal/consents` (`org`, `kind` permit|deny): a Consent the policy honours.
pub async fn grant_consent(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let l = v.lang;
    let org_id = form.get("org").cloned().unwrap_or_default();
    let deny = form.get("kind").map(String::as_str) == Some("deny");
    let result = async {
        let (org, _) = read(&state, &s, "Organization", &org_id).await?;
        let consent = json!({
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": PRIVACY_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
            "patient": {"reference": format!("Patient/{}", s.patient)},
            "dateTime": fhir::normalize::format_instant(now_ms()),
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": if deny { "OPTOUT" } else { "OPTIN" }}]},
            "provision": {"type": if deny { "deny" } else { "permit" }, "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                "reference": {"reference": format!("Organization/{org_id}"), "display": org["name"]}}]},
        });
        state.engine.create(&s.ctx, "Consent", consent, &opts(&state, &v)).await
    }
    .await;
    match result {
        Ok(_) => redirect("/portal/consents?done=granted", v.cookies),
        Err(e) => {
            let error = message(&state, &e, l);
            let body = consents_body(&state, &v, &s).await.unwrap_or_default();
            let title = l.t("我的授权", "My authorizations");
            render(&state, &v, &s, error_status(&e), title, "/portal/consents", Some(&error), None, &body, "").await
        }
    }
}

/// `POST /portal/consents/{id}/revoke`: the Consent becomes `inactive`.
pub async fn revoke_consent(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    if let Err(r) = checked_form(&state, &v, &s, request).await {
        return r;
    }
    let l = v.lang;
    let result = async {
        let (mut consent, version) = read(&state, &s, "Consent", &id).await?;
        consent["status"] = json!("inactive");
        let opts = RequestOptions { if_match: Some(version), ..opts(&state, &v) };
        state.engine.update(&s.ctx, "Consent", &id, consent, &opts).await
    }
    .await;
    match result {
        Ok(_) => redirect("/portal/consents?done=revoked", v.cookies),
        Err(e) => {
            let error = message(&state, &e, l);
            let body = consents_body(&state, &v, &s).await.unwrap_or_default();
            let title = l.t("我的授权", "My authorizations");
            render(&state, &v, &s, error_status(&e), title, "/portal/consents", Some(&error), None, &body, "").await
        }
    }
}

// ---- family ----------------------------------------------------------------------------

/// `GET /portal/family`: the people the resident acts for, and switching between them.
pub async fn family(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let mut body = format!(
        "<p class=\"muted\">{}</p><ul class=\"plain\">",
        l.t(
            "您可以代家庭成员（如未成年子女）预约、查看报告和档案。切换后，各页面显示所选成员的信息。",
            "You can book and see reports and records for the family members you act for (e.g. children). Pages show the member you pick."
        )
    );
    for (i, p) in s.patients().iter().enumerate() {
        let (person, _) = match read(&state, &s, "Patient", p).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let relation = if i == 0 { l.t("本人", "yourself") } else { l.t("家庭成员", "family member") };
        let _ = write!(
            body,
            "<li class=\"card\"><strong>{}</strong> · {} · {}",
            esc(&person_name(&person)),
            relation,
            esc(person["birthDate"].as_str().unwrap_or(""))
        );
        if *p == s.patient {
            let _ = write!(body, " <span aria-current=\"true\">({})</span>", l.t("当前", "current"));
        } else {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/portal/family\">{}<input type=\"hidden\" name=\"patient\" value=\"{}\"><button type=\"submit\" aria-label=\"{} {}\">{}</button></form>",
                csrf_field(&s.csrf),
                esc(p),
                l.t("切换为", "Act for"),
                esc(&person_name(&person)),
                l.t("切换为此成员", "Act for this person")
            );
        }
        body.push_str("</li>");
    }
    body.push_str("</ul>");
    render(&state, &v, &s, StatusCode::OK, l.t("家庭成员", "Family members"), "/portal/family", None, None, &body, "")
        .await
}

/// `POST /portal/family` (`patient`): act for one of the account's patients.
pub async fn switch_family(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let wanted = form.get("patient").cloned().unwrap_or_default();
    if !s.patients().contains(&wanted) {
        let l = v.lang;
        let error = l.t("您不能代此人办理业务。", "You do not act for this person.");
        return render(
            &state,
            &v,
            &s,
            StatusCode::FORBIDDEN,
            l.t("家庭成员", "Family members"),
            "/portal/family",
            Some(error),
            None,
            "",
            "",
        )
        .await;
    }
    let mut cookies = v.cookies.clone();
    cookies.push(cookie(ACTING_COOKIE, &wanted, "/portal", 86_400, v.secure));
    redirect("/portal/", cookies)
}

// ---- the internet hospital -------------------------------------------------------------

pub(crate) mod internet;
pub(crate) use internet::{delivery_label, prescription_status_label, rejection};
