//! The regulator's page: the internet hospital's supervision feed (the same records as
//! `GET /supervision/feed`, read through `Engine::supervision_feed` as the regulator) as a
//! table, a page at a time, filtered by kind.

use std::fmt::Write;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{engine_error, render, staff};
use crate::AppState;
use crate::portal::html::{Lang, esc, url};
use crate::portal::pages::{error_status, when};

/// Feed records read per page (before the kind filter).
const PAGE: usize = 100;

const KINDS: &[(&str, &str, &str)] = &[
    ("visit", "复诊", "visit"),
    ("prescription", "处方", "prescription"),
    ("review", "审方", "review"),
    ("dispense", "调配", "dispense"),
    ("violation", "违规/警示", "violation"),
];

fn kind_label(kind: &str, l: Lang) -> String {
    KINDS.iter().find(|k| k.0 == kind).map_or_else(|| kind.to_string(), |k| l.t(k.1, k.2).to_string())
}

/// A short text of a record's `detail`.
fn detail_text(record: &Value) -> String {
    let d = &record["detail"];
    let parts: Vec<String> =
        ["prescription", "name", "dosage", "rule", "alert", "text", "overridden", "reason", "outcome"]
            .iter()
            .filter_map(|k| match &d[*k] {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
            .collect();
    parts.join(" · ")
}

/// `GET /regulator/?after=SEQ&kind=KIND`.
pub async fn feed(State(state): State<AppState>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let l = v.lang;
    let title = l.t("互联网诊疗监管数据", "Internet care supervision feed");
    let after = v.query.get("after").and_then(|a| a.parse::<i64>().ok()).filter(|a| *a >= 0).unwrap_or(0);
    let kind = v.query.get("kind").filter(|k| KINDS.iter().any(|x| x.0 == k.as_str())).cloned().unwrap_or_default();
    let answer = match state.engine.supervision_feed(&s.ctx, after, PAGE).await {
        Ok(a) => a,
        Err(e) => {
            let error = engine_error(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, Some(&error), None, "").await;
        }
    };
    let records: Vec<&Value> = answer["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| kind.is_empty() || r["kind"] == kind.as_str())
        .collect();
    let mut body = format!(
        "<form method=\"get\" action=\"/regulator/\" class=\"card\" role=\"search\"><label for=\"kind\">{}</label><select id=\"kind\" name=\"kind\"><option value=\"\">{}</option>",
        l.t("类型", "Kind"),
        l.t("全部", "All")
    );
    for (code, zh, en) in KINDS {
        let selected = if *code == kind { " selected" } else { "" };
        let _ = write!(body, "<option value=\"{code}\"{selected}>{}</option>", l.t(zh, en));
    }
    let _ = write!(
        body,
        "</select><input type=\"hidden\" name=\"after\" value=\"{after}\"><button type=\"submit\">{}</button></form>",
        l.t("筛选", "Filter")
    );
    let _ = write!(
        body,
        "<p class=\"muted\">{}</p>",
        l.t(
            "患者仅以编号出现。每次查看均记入审计日志。",
            "Patients appear by id only. Every read of the feed is audited."
        )
    );
    if records.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("本页没有记录。", "No records on this page."));
    } else {
        let _ = write!(
            body,
            "<table id=\"feed\"><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
            l.t("序号", "Seq"),
            l.t("时间", "Time"),
            l.t("类型", "Kind"),
            l.t("状态", "Status"),
            l.t("机构", "Institution"),
            l.t("医务人员", "Practitioner"),
            l.t("患者编号", "Patient id"),
            l.t("内容", "Detail"),
        );
        for r in &records {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r["seq"],
                esc(&when(r["time"].as_str().unwrap_or(""))),
                esc(&kind_label(r["kind"].as_str().unwrap_or(""), l)),
                esc(r["status"].as_str().unwrap_or("")),
                esc(r["institution"].as_str().unwrap_or("")),
                esc(r["practitioner"].as_str().unwrap_or("")),
                esc(r["patient"].as_str().unwrap_or("")),
                esc(&detail_text(r)),
            );
        }
        body.push_str("</tbody></table>");
    }
    let next = answer["next"].as_i64().unwrap_or(after);
    body.push_str("<p>");
    if after > 0 {
        let _ = write!(
            body,
            "<a class=\"button\" href=\"/regulator/?kind={}\">{}</a> ",
            url(&kind),
            l.t("第一页", "First page")
        );
    }
    if next > after {
        let _ = write!(
            body,
            "<a class=\"button\" href=\"/regulator/?after={next}&amp;kind={}\">{}</a>",
            url(&kind),
            l.t("下一页", "Next page")
        );
    }
    body.push_str("</p>");
    render(&state, &v, &s, StatusCode::OK, title, None, None, &body).await
}
