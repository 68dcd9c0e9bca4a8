//! The internet hospital's staff workbench (issue 7): server-rendered pages for doctors
//! (`/doctor/`), hospital pharmacists (`/pharmacist/`), pharmacies (`/pharmacy/`) and
//! regulators (`/regulator/`), Simplified Chinese first with the portal's `?lang=en` switch,
//! desktop-first and usable on a tablet.
//!
//! The security design is the portal's (`crate::portal`): staff sign in with user name,
//! password and the current TOTP code of their authenticator (the token endpoint's password
//! grant, `auth::Auth::token`, audited like every login); the access token is kept in the
//! cookie [`SESSION_COOKIE`] (`HttpOnly`, `SameSite=Strict`, `Path` the area signed in to, so a
//! doctor's session is never sent to the pharmacy's pages) and authenticated on every request
//! like a bearer token; every POST carries a form token and passes the Origin check; pages
//! carry the portal's strict headers; sign-out revokes the token. An area admits only its
//! roles ([`Area::admits`]).
//!
//! Every read and write goes through the engine with the staff member's own principal in the
//! `store::Ctx`: the engine decides (the treating doctor, a pharmacist of the prescribing
//! hospital, the pharmacy a prescription was sent to) and audits, refusals included.

mod doctor;
mod pharmacy;
mod regulator;

pub(crate) use doctor::{chat_form, send_chat, thread, treating_doctor, visit_status_label};

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use engine::EngineError;
use store::Ctx;

use crate::AppState;
use crate::portal::html::{Frame, Lang, Site, csrf_field, esc, page};
use crate::portal::{Visit, cookie, cookies, form, html, redirect, token_ok, visit_at};

/// The staff session cookie: the access token, sent only to the area signed in to.
pub const SESSION_COOKIE: &str = "hutong_staff";
/// The sign-in form's token before a session exists.
pub const PRE_COOKIE: &str = "hutong_staff_pre";

/// The four areas of the workbench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Doctor,
    Pharmacist,
    Pharmacy,
    Regulator,
}

const DOCTOR_SITE: Site = Site {
    home: "/doctor/",
    brand: ("互联网医院 · 医生工作台", "Internet hospital · Doctor"),
    menu: &[("/doctor/", "接诊队列", "Visit queue")],
    logout: "/doctor/logout",
    person_label: ("当前用户：", "Signed in: "),
    person_link: None,
    wide: true,
};
const PHARMACIST_SITE: Site = Site {
    home: "/pharmacist/",
    brand: ("互联网医院 · 处方审核", "Internet hospital · Review"),
    menu: &[("/pharmacist/", "待审处方", "Review queue")],
    logout: "/pharmacist/logout",
    person_label: ("当前用户：", "Signed in: "),
    person_link: None,
    wide: true,
};
const PHARMACY_SITE: Site = Site {
    home: "/pharmacy/",
    brand: ("处方流转 · 药房", "Prescriptions · Pharmacy"),
    menu: &[("/pharmacy/", "调配与配送", "Dispensing")],
    logout: "/pharmacy/logout",
    person_label: ("当前用户：", "Signed in: "),
    person_link: None,
    wide: true,
};
const REGULATOR_SITE: Site = Site {
    home: "/regulator/",
    brand: ("互联网诊疗监管", "Internet care supervision"),
    menu: &[("/regulator/", "监管数据", "Supervision feed")],
    logout: "/regulator/logout",
    person_label: ("当前用户：", "Signed in: "),
    person_link: None,
    wide: true,
};

impl Area {
    /// The area a path belongs to.
    fn of(path: &str) -> Option<Area> {
        match path.trim_start_matches('/').split('/').next()? {
            "doctor" => Some(Area::Doctor),
            "pharmacist" => Some(Area::Pharmacist),
            "pharmacy" => Some(Area::Pharmacy),
            "regulator" => Some(Area::Regulator),
            _ => None,
        }
    }

    /// The cookie path (`/doctor`).
    pub fn path(self) -> &'static str {
        match self {
            Area::Doctor => "/doctor",
            Area::Pharmacist => "/pharmacist",
            Area::Pharmacy => "/pharmacy",
            Area::Regulator => "/regulator",
        }
    }

    fn site(self) -> &'static Site {
        match self {
            Area::Doctor => &DOCTOR_SITE,
            Area::Pharmacist => &PHARMACIST_SITE,
            Area::Pharmacy => &PHARMACY_SITE,
            Area::Regulator => &REGULATOR_SITE,
        }
    }

    /// Whether a principal may use this area: doctors with a Practitioner record, pharmacists
    /// (of a hospital, or of a pharmacy) and regulators.
    pub fn admits(self, principal: &access::Principal) -> bool {
        use access::Role;
        match self {
            Area::Doctor => {
                matches!(principal.role, Role::Doctor | Role::FamilyDoctor) && principal.practitioner.is_some()
            }
            Area::Pharmacist | Area::Pharmacy => principal.role == Role::Pharmacist && principal.organization.is_some(),
            Area::Regulator => principal.role == Role::Regulator,
        }
    }
}

/// The staff workbench's routes (merged into [`crate::router`]).
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for area in [Area::Doctor, Area::Pharmacist, Area::Pharmacy, Area::Regulator] {
        let base = area.path();
        router = router
            .route(base, get(move || async move { redirect(&format!("{base}/"), Vec::new()) }))
            .route(&format!("{base}/login"), get(login_form).post(login))
            .route(&format!("{base}/logout"), post(logout))
            .route(&format!("{base}/{{*rest}}"), get(not_found).post(not_found));
    }
    router
        .route("/doctor/", get(doctor::queue))
        .route("/doctor/visits/{id}", get(doctor::visit))
        .route("/doctor/visits/{id}/status", post(doctor::status))
        .route("/doctor/visits/{id}/messages", post(doctor::message))
        .route("/doctor/visits/{id}/prescribe", post(doctor::prescribe))
        .route("/pharmacist/", get(pharmacy::review_queue))
        .route("/pharmacist/reviews/{task}", get(pharmacy::review).post(pharmacy::decide))
        .route("/pharmacy/", get(pharmacy::dispensing_queue))
        .route("/pharmacy/dispense", post(pharmacy::dispense))
        .route("/pharmacy/deliveries/{task}", post(pharmacy::delivery))
        .route("/regulator/", get(regulator::feed))
}

/// A signed-in staff member.
pub(crate) struct Staff {
    pub area: Area,
    pub token: String,
    pub ctx: Ctx,
    pub csrf: String,
}

impl Staff {
    pub fn principal(&self) -> &access::Principal {
        self.ctx.principal.as_deref().expect("a staff session has a principal")
    }
}

/// The form token of a staff session: a hash of its access token.
pub fn form_token(session_token: &str) -> String {
    crypto::sm3::sm3_hex(format!("hutong-staff-form\0{session_token}").as_bytes())[..32].to_string()
}

/// The visit of a request to an area.
pub(crate) fn area_visit(state: &AppState, request: &Request) -> (Area, Visit) {
    let area = Area::of(request.uri().path()).unwrap_or(Area::Doctor);
    (area, visit_at(state, request, area.path()))
}

/// The session of this visit, if its cookie holds a valid token of a role the area admits.
pub(crate) async fn session(state: &AppState, area: Area, visit: &Visit) -> Option<Staff> {
    let token = cookies(&visit.headers).get(SESSION_COOKIE)?.clone();
    let auth_session = state.auth.authenticate(&token).await.ok()?;
    if !area.admits(&auth_session.principal) {
        return None;
    }
    let ctx = Ctx::for_shared(Ctx::next_request_id(), Arc::clone(&auth_session.principal), visit.source.clone());
    let csrf = form_token(&token);
    Some(Staff { area, token, ctx, csrf })
}

/// Resolves the area, the visit and the session, or sends the visitor to the sign-in page.
macro_rules! staff {
    ($state:expr, $request:expr) => {{
        let (area, v) = $crate::workbench::area_visit(&$state, &$request);
        match $crate::workbench::session(&$state, area, &v).await {
            Some(s) => (v, s),
            None => return $crate::portal::redirect(&format!("{}/login", area.path()), Vec::new()),
        }
    }};
}
pub(crate) use staff;

/// Renders a page of an area for a signed-in staff member.
#[expect(clippy::too_many_arguments, reason = "the page frame's parts, passed by every handler")]
pub(crate) async fn render(
    state: &AppState,
    v: &Visit,
    s: &Staff,
    status: StatusCode,
    title: &str,
    error: Option<&str>,
    notice: Option<&str>,
    body: &str,
) -> Response {
    let who = who(state, s, v.lang).await;
    let site = s.area.site();
    let frame = Frame {
        site,
        lang: v.lang,
        title,
        section: Some(site.home),
        acting_for: Some(&who),
        csrf: Some(&s.csrf),
        here: &v.here,
    };
    html(status, page(&frame, error, notice, body), &v.cookies, "")
}

/// "张伟 · 福州市第一医院": the practitioner's name (when there is one) and the organization.
async fn who(state: &AppState, s: &Staff, l: Lang) -> String {
    let p = s.principal();
    let mut parts = Vec::new();
    if let Some(id) = &p.practitioner
        && let Ok((practitioner, _)) = crate::portal::pages::read_as(state, &s.ctx, "Practitioner", id).await
    {
        parts.push(crate::portal::pages::person_name(&practitioner));
    }
    if parts.is_empty() {
        parts.push(l.t(role_label_zh(p.role), p.role.code()).to_string());
    }
    if let Some(org) = &p.organization {
        match crate::portal::pages::read_as(state, &s.ctx, "Organization", org).await {
            Ok((o, _)) => parts.push(o["name"].as_str().unwrap_or(org).to_string()),
            Err(_) => parts.push(org.clone()),
        }
    }
    parts.join(" · ")
}

fn role_label_zh(role: access::Role) -> &'static str {
    match role {
        access::Role::Regulator => "监管人员",
        access::Role::Pharmacist => "药师",
        _ => "医生",
    }
}

/// An engine error as a sentence in the page language: the portal's messages, with the
/// Chinese or the English half of the internet hospital's bilingual rule texts.
pub(crate) fn engine_error(state: &AppState, e: &EngineError, l: Lang) -> String {
    let text = crate::portal::pages::message(state, e, l);
    one_language(&text, l)
}

/// Keeps one language of "中文 / English" texts written by the internet hospital's rules.
pub(crate) fn one_language(text: &str, l: Lang) -> String {
    text.split("; ")
        .map(|part| match part.split_once(" / ") {
            Some((zh, en)) if zh.chars().any(|c| c as u32 > 0x2E80) => match l {
                Lang::Zh => zh.to_string(),
                Lang::En => en.to_string(),
            },
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(l.t("；", "; "))
}

/// Reads a POSTed form and checks its token; the 403 page otherwise.
pub(crate) async fn checked_form(
    state: &AppState,
    v: &Visit,
    s: &Staff,
    request: Request,
) -> Result<HashMap<String, String>, Response> {
    match form(state, request).await {
        Ok(f) if token_ok(&f, &s.csrf) => Ok(f),
        _ => {
            let l = v.lang;
            let body = format!("<p><a href=\"{}\">{}</a></p>", s.area.site().home, l.t("返回", "Back"));
            Err(render(
                state,
                v,
                s,
                StatusCode::FORBIDDEN,
                l.t("请求无效", "Request refused"),
                Some(l.t(
                    "页面已过期或请求来源无效，请返回后重试。",
                    "This form has expired or did not come from this site: go back and try again.",
                )),
                None,
                &body,
            )
            .await)
        }
    }
}

/// Unknown paths of an area (after sign-in: a page in the area's frame).
pub async fn not_found(State(state): State<AppState>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let l = v.lang;
    let body = format!("<p><a href=\"{}\">{}</a></p>", s.area.site().home, l.t("返回", "Back"));
    render(&state, &v, &s, StatusCode::NOT_FOUND, l.t("页面不存在", "Page not found"), None, None, &body).await
}

// ---- sign-in ---------------------------------------------------------------------------

fn login_page(area: Area, v: &Visit, pre: &str, username: &str, error: Option<&str>, notice: Option<&str>) -> String {
    let l = v.lang;
    let mut body = String::new();
    let _ = write!(
        body,
        "<div class=\"card\"><p>{}</p><form method=\"post\" action=\"{}/login\">{}\
         <label for=\"username\">{}</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required value=\"{}\">\
         <label for=\"password\">{}</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <label for=\"totp\">{}</label><input id=\"totp\" name=\"totp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" maxlength=\"6\" pattern=\"[0-9]{{6}}\" required>\
         <button type=\"submit\">{}</button></form></div>",
        l.t(
            "工作人员请使用账号、密码和身份验证器（TOTP）的6位动态码登录。",
            "Staff sign in with user name, password and the 6-digit code of their authenticator (TOTP)."
        ),
        area.path(),
        csrf_field(pre),
        l.t("用户名", "User name"),
        esc(username),
        l.t("密码", "Password"),
        l.t("动态验证码（6位数字）", "Authenticator code (6 digits)"),
        l.t("登录", "Sign in"),
    );
    let frame = Frame {
        site: area.site(),
        lang: l,
        title: l.t("工作人员登录", "Staff sign-in"),
        section: None,
        acting_for: None,
        csrf: None,
        here: &v.here,
    };
    page(&frame, error, notice, &body)
}

/// `GET /{area}/login`.
pub async fn login_form(State(state): State<AppState>, request: Request) -> Response {
    let (area, mut v) = area_visit(&state, &request);
    if session(&state, area, &v).await.is_some() {
        return redirect(&format!("{}/", area.path()), v.cookies);
    }
    let pre = crypto::random_token(16);
    v.cookies.push(cookie(PRE_COOKIE, &pre, area.path(), 1800, v.secure));
    let notice = match v.query.get("done").map(String::as_str) {
        Some("logout") => Some(v.lang.t("您已安全退出。", "You have signed out.")),
        _ => None,
    };
    html(StatusCode::OK, login_page(area, &v, &pre, "", None, notice), &v.cookies, "")
}

/// `POST /{area}/login`: user name, password and TOTP code through the password grant.
pub async fn login(State(state): State<AppState>, request: Request) -> Response {
    let (area, mut v) = area_visit(&state, &request);
    let l = v.lang;
    let pre = cookies(&v.headers).get(PRE_COOKIE).cloned().unwrap_or_default();
    let form = match form(&state, request).await {
        Ok(f) if token_ok(&f, &pre) => f,
        _ => {
            let fresh = crypto::random_token(16);
            v.cookies.push(cookie(PRE_COOKIE, &fresh, area.path(), 1800, v.secure));
            let error = l.t("页面已过期，请重新填写。", "This form has expired: please fill it in again.");
            return html(StatusCode::FORBIDDEN, login_page(area, &v, &fresh, "", Some(error), None), &v.cookies, "");
        }
    };
    let username: String = form.get("username").map(|u| u.trim()).unwrap_or("").chars().take(64).collect();
    let grant: HashMap<String, String> = [
        ("grant_type", "password"),
        ("username", username.as_str()),
        ("password", form.get("password").map(String::as_str).unwrap_or("")),
        ("totp", form.get("totp").map(|t| t.trim()).unwrap_or("")),
    ]
    .iter()
    .map(|(k, val)| (k.to_string(), val.to_string()))
    .collect();
    let refused = |v: &Visit, status: StatusCode, error: &str| {
        html(status, login_page(area, v, &pre, &username, Some(error), None), &v.cookies, "")
    };
    let body = match state.auth.token(&grant, None, v.source.as_deref()).await {
        Ok(body) => body,
        Err(e) => {
            let text = e.to_string();
            let error = if text.contains("locked") {
                l.t(
                    "登录失败次数过多，账号已临时锁定，请稍后再试。",
                    "Too many failed sign-ins: the account is locked for a while.",
                )
            } else if text.contains("disabled") {
                l.t("该账号已停用。", "This account is disabled.")
            } else {
                l.t("用户名、密码或动态验证码错误。", "Wrong user name, password or authenticator code.")
            };
            return refused(&v, StatusCode::UNAUTHORIZED, error);
        }
    };
    let token = body["access_token"].as_str().unwrap_or_default().to_string();
    let admitted = match state.auth.authenticate(&token).await {
        Ok(s) => area.admits(&s.principal),
        Err(_) => false,
    };
    if !admitted {
        let _ = state.auth.revoke(&token).await;
        let error = l.t("此账号不能使用该工作台。", "This account may not use this workbench.");
        return refused(&v, StatusCode::FORBIDDEN, error);
    }
    let ttl = body["expires_in"].as_i64().unwrap_or(900);
    let mut cookies = v.cookies.clone();
    cookies.push(cookie(SESSION_COOKIE, &token, area.path(), ttl, v.secure));
    cookies.push(cookie(PRE_COOKIE, "", area.path(), 0, v.secure));
    redirect(&format!("{}/", area.path()), cookies)
}

/// `POST /{area}/logout`: revokes the token and clears the cookie.
pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    if let Err(r) = checked_form(&state, &v, &s, request).await {
        return r;
    }
    let _ = state.auth.revoke(&s.token).await;
    let path = s.area.path();
    redirect(&format!("{path}/login?done=logout"), vec![cookie(SESSION_COOKIE, "", path, 0, v.secure)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilingual_rule_texts_keep_the_page_language() {
        let cases = [
            (
                "处方 RX1 已调配 / prescription RX1 was already dispensed",
                "处方 RX1 已调配",
                "prescription RX1 was already dispensed",
            ),
            (
                "配送状态不能从 a 变为 b / the delivery cannot go from a to b; 驳回须说明理由 / a rejection needs a reason",
                "配送状态不能从 a 变为 b；驳回须说明理由",
                "the delivery cannot go from a to b; a rejection needs a reason",
            ),
            (
                "the visit changed meanwhile: reload it",
                "the visit changed meanwhile: reload it",
                "the visit changed meanwhile: reload it",
            ),
            ("a / b", "a / b", "a / b"),
        ];
        for (text, zh, en) in cases {
            assert_eq!(one_language(text, Lang::Zh), zh, "{text}");
            assert_eq!(one_language(text, Lang::En), en, "{text}");
        }
    }

    #[test]
    fn areas_admit_only_their_roles() {
        use access::{Principal, Role};
        let principal = |role: Role, org: Option<&str>, practitioner: Option<&str>| Principal {
            subject: "user/x".into(),
            role,
            organization: org.map(str::to_string),
            region: None,
            practitioner: practitioner.map(str::to_string),
            patients: Vec::new(),
            scopes: access::Scopes::default(),
            purpose: String::new(),
            break_glass: None,
        };
        let doctor = principal(Role::Doctor, Some("h1"), Some("d1"));
        let nurse = principal(Role::Nurse, Some("h1"), Some("n1"));
        let pharmacist = principal(Role::Pharmacist, Some("ph1"), None);
        let regulator = principal(Role::Regulator, None, None);
        let resident = principal(Role::Resident, None, None);
        let table = [
            (Area::Doctor, [true, false, false, false, false]),
            (Area::Pharmacist, [false, false, true, false, false]),
            (Area::Pharmacy, [false, false, true, false, false]),
            (Area::Regulator, [false, false, false, true, false]),
        ];
        for (area, expected) in table {
            let got = [&doctor, &nurse, &pharmacist, &regulator, &resident].map(|p| area.admits(p));
            assert_eq!(got, expected, "{area:?}");
        }
        assert!(!Area::Doctor.admits(&principal(Role::Doctor, Some("h1"), None)), "a doctor without a Practitioner");
        assert_eq!(Area::of("/pharmacy/deliveries/x"), Some(Area::Pharmacy));
        assert_eq!(Area::of("/portal/"), None);
    }
}
