//! The 12320 resident portal at `/portal/` (issue 6): server-rendered HTML pages for residents,
//! Simplified Chinese first with an English switch, phone-sized screens first.
//!
//! Sessions: a resident signs in with their real name and ID number, then the one-time code
//! sent by SMS to the phone registered with the account (`auth::Auth::resident_phone_for`, then
//! the SMS-code grant of the token endpoint, audited like any login). The access token is kept
//! in the cookie [`SESSION_COOKIE`] (`HttpOnly`, `SameSite=Strict`, `Path=/portal`, `Secure`
//! when the server is reached over HTTPS) and authenticated on every request exactly like a
//! bearer token, so the session ends when the token expires, idles out or is revoked (sign-out
//! revokes it).
//!
//! Every read and write goes through the engine with the resident's own principal in the
//! `store::Ctx`, so the policy decides and the audit log records it exactly as for the FHIR
//! API; the portal holds no data and takes no shortcut. A resident acting for a family member
//! picks one of `Principal::patients` ([`ACTING_COOKIE`]); anything else is ignored.
//!
//! Forms: every POST carries a form token (`csrf`) that must match the session (a hash of the
//! session token, [`form_token`]) or, before sign-in, the random [`PRE_COOKIE`]; a POST whose
//! `Origin` names another host is refused. Pages are sent with a strict Content-Security-Policy
//! (no external anything; the one inline script, the health card's refresh, carries a nonce).
//!
//! Languages: `?lang=en` or `?lang=zh` on any page sets the cookie [`LANG_COOKIE`]; default
//! Chinese. Engine errors become clear messages in the page language ([`html::engine_message`]).

pub(crate) mod html;
pub(crate) mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use store::Ctx;

use crate::AppState;
pub use html::{Lang, engine_message, esc};

/// The session cookie: the resident's access token.
pub const SESSION_COOKIE: &str = "hutong_portal";
/// The family member the resident acts for (a Patient id among the account's patients).
pub const ACTING_COOKIE: &str = "hutong_portal_for";
/// The page language (`zh`, `en`).
pub const LANG_COOKIE: &str = "hutong_lang";
/// The sign-in forms' token before a session exists.
pub const PRE_COOKIE: &str = "hutong_portal_pre";
/// Largest form body read.
const MAX_FORM: usize = 16 * 1024;

/// The portal's routes (merged into [`crate::router`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/portal", get(|| async { redirect("/portal/", Vec::new()) }))
        .route("/portal/", get(pages::home))
        .route("/portal/login", get(pages::login_form).post(pages::login))
        .route("/portal/logout", post(pages::logout))
        .route("/portal/card", get(pages::card))
        .route("/portal/card/register", post(pages::card_register))
        .route("/portal/doctors", get(pages::doctors))
        .route("/portal/doctors/{schedule}", get(pages::doctor))
        .route("/portal/appointments", get(pages::appointments).post(pages::book))
        .route("/portal/appointments/{id}/cancel", post(pages::cancel))
        .route("/portal/reports", get(pages::reports))
        .route("/portal/reports/{id}", get(pages::report))
        .route("/portal/records", get(pages::records))
        .route("/portal/access-log", get(pages::access_log))
        .route("/portal/consents", get(pages::consents).post(pages::grant_consent))
        .route("/portal/consents/{id}/revoke", post(pages::revoke_consent))
        .route("/portal/family", get(pages::family).post(pages::switch_family))
        .route("/portal/visits", get(pages::internet::visits).post(pages::internet::request_visit))
        .route("/portal/visits/new", get(pages::internet::new_visit))
        .route("/portal/visits/{id}", get(pages::internet::show_visit))
        .route("/portal/visits/{id}/messages", post(pages::internet::post_message))
        .route("/portal/prescriptions/route", post(pages::internet::route))
        .route("/portal/{*rest}", get(pages::not_found).post(pages::not_found))
}

/// What every portal request carries besides its session.
pub(crate) struct Visit {
    pub lang: Lang,
    /// `Set-Cookie` values to send (a language switch).
    pub cookies: Vec<String>,
    /// Path and query without `lang`, for the language switch.
    pub here: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub source: Option<String>,
    pub secure: bool,
}

/// A signed-in resident.
pub(crate) struct Session {
    pub token: String,
    pub ctx: Ctx,
    /// The Patient the resident acts for now (their own first).
    pub patient: String,
    pub csrf: String,
}

impl Session {
    pub fn patients(&self) -> &[String] {
        self.ctx.principal.as_deref().map(|p| p.patients.as_slice()).unwrap_or_default()
    }
}

pub(crate) fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn visit(state: &AppState, request: &Request) -> Visit {
    visit_at(state, request, "/portal")
}

/// The visit of a request to the site under `path` (where the language cookie is kept).
pub(crate) fn visit_at(state: &AppState, request: &Request, path: &str) -> Visit {
    let headers = request.headers().clone();
    let query: HashMap<String, String> =
        request.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let jar = cookies(&headers);
    let secure = state.config.base_url.as_deref().is_some_and(|b| b.starts_with("https:"))
        || headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let mut cookies_out = Vec::new();
    let asked = query.get("lang").map(String::as_str);
    let lang = match asked.or(jar.get(LANG_COOKIE).map(String::as_str)) {
        Some("en") => Lang::En,
        _ => Lang::Zh,
    };
    if let Some(code @ ("zh" | "en")) = asked {
        cookies_out.push(cookie(LANG_COOKIE, code, path, 365 * 86_400, secure));
    }
    let kept: Vec<(String, String)> =
        query.iter().filter(|(k, _)| *k != "lang").map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut here = request.uri().path().to_string();
    if !kept.is_empty() {
        here.push('?');
        here.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish());
    }
    let source =
        request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
    Visit { lang, cookies: cookies_out, here, query, headers, source, secure }
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Strict always, Secure over HTTPS.
pub(crate) fn cookie(name: &str, value: &str, path: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The form token of a session: a hash of its access token, so it cannot be known without it.
pub fn form_token(session_token: &str) -> String {
    crypto::sm3::sm3_hex(format!("hutong-portal-form\0{session_token}").as_bytes())[..32].to_string()
}

/// The session of this visit, if its cookie holds a valid resident token.
pub(crate) async fn session(state: &AppState, visit: &Visit) -> Option<Session> {
    let jar = cookies(&visit.headers);
    let token = jar.get(SESSION_COOKIE)?.clone();
    let auth_session = state.auth.authenticate(&token).await.ok()?;
    if auth_session.principal.role != access::Role::Resident {
        return None;
    }
    let principal = auth_session.principal;
    let patient = jar
        .get(ACTING_COOKIE)
        .filter(|p| principal.patients.iter().any(|x| x == *p))
        .cloned()
        .or_else(|| principal.patients.first().cloned())?;
    let ctx = Ctx::for_shared(Ctx::next_request_id(), Arc::clone(&principal), visit.source.clone());
    let csrf = form_token(&token);
    Some(Session { token, ctx, patient, csrf })
}

/// Reads a urlencoded form body, after checking that the request's `Origin`, when a real one is
/// sent, names this server (the `Host`, the proxy's `X-Forwarded-Host` or `--base-url`'s host).
/// `Origin: null` (privacy-preserving browsers, sandboxed frames) is left to the form token.
pub(crate) async fn form(state: &AppState, request: Request) -> Result<HashMap<String, String>, &'static str> {
    let (parts, body) = request.into_parts();
    if let Some(origin) = parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != "null"
    {
        let origin_host = origin.split("://").nth(1).unwrap_or("");
        let header_host = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        let configured = state
            .config
            .base_url
            .as_deref()
            .and_then(|b| b.split("://").nth(1))
            .map(|rest| rest.split('/').next().unwrap_or(""));
        let ours = [header_host(header::HOST.as_str()), header_host("x-forwarded-host"), configured];
        if !ours.iter().flatten().any(|h| !h.is_empty() && *h == origin_host) {
            return Err("origin");
        }
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| "size")?;
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(&bytes) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    Ok(out)
}

/// Whether a submitted form token matches.
pub(crate) fn token_ok(form: &HashMap<String, String>, expected: &str) -> bool {
    form.get("csrf")
        .is_some_and(|t| !expected.is_empty() && crypto::constant_time_eq(t.as_bytes(), expected.as_bytes()))
}

/// An HTML response with the portal's security headers.
pub(crate) fn html(status: StatusCode, body: String, set_cookies: &[String], nonce: &str) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    let script = if nonce.is_empty() { "'none'".to_string() } else { format!("'nonce-{nonce}'") };
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; script-src {script}; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    for c in set_cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}

/// A 303 See Other (after a POST, or to the sign-in page).
pub(crate) fn redirect(to: &str, set_cookies: Vec<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in set_cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}
