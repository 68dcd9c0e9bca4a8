//! The doctor's workbench: the queue of the doctor's internet visits, one visit (the patient's
//! summary and records, the chat, starting with a fresh TOTP code, prescribing with the live
//! rule alerts, finishing or referring offline).

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use engine::EngineError;
use serde_json::{Value, json};

use super::{Staff, checked_form, engine_error, render, staff};
use crate::AppState;
use crate::portal::html::{Lang, csrf_field, esc, url};
use crate::portal::pages::{error_status, now_ms, opts, person_name, read_as, search_as, text_of, when};
use crate::portal::{Visit, redirect};

/// Lines of the prescription form.
const ITEM_ROWS: usize = 3;

pub(crate) fn visit_status_label(status: &str, l: Lang) -> &'static str {
    match status {
        "planned" => l.t("候诊", "waiting"),
        "in-progress" => l.t("接诊中", "in consultation"),
        "finished" => l.t("已结束", "finished"),
        "cancelled" => l.t("已取消", "cancelled"),
        _ => l.t("未知", "unknown"),
    }
}

fn reference_id<'a>(reference: &'a Value, ty: &str) -> &'a str {
    reference.as_str().and_then(|r| r.strip_prefix(ty)).and_then(|r| r.strip_prefix('/')).unwrap_or("")
}

/// Whole years from a FHIR birth date until today.
fn age(birth: &str) -> String {
    let Ok(born) = chrono::NaiveDate::parse_from_str(birth.get(..10).unwrap_or(""), "%Y-%m-%d") else {
        return String::new();
    };
    let today = chrono::Utc::now().date_naive();
    today.years_since(born).map(|y| y.to_string()).unwrap_or_default()
}

/// `GET /doctor/`: the doctor's waiting and running internet visits.
pub async fn queue(State(state): State<AppState>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let l = v.lang;
    let title = l.t("接诊队列", "Visit queue");
    let visits = match state.engine.doctor_visit_queue(&s.ctx).await {
        Ok(x) => x,
        Err(e) => {
            let error = engine_error(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, Some(&error), None, "").await;
        }
    };
    let mut body = format!(
        "<p class=\"muted\">{}</p>",
        l.t(
            "互联网医院仅提供复诊：患者须有线下已确诊的疾病。接诊前请输入身份验证器的动态码。",
            "Online care is follow-up only: the patient has an offline diagnosis. Starting a consultation takes your authenticator code."
        )
    );
    if visits.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无候诊患者。", "No patients waiting."));
    } else {
        let _ = write!(
            body,
            "<table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
            l.t("申请时间", "Requested"),
            l.t("患者", "Patient"),
            l.t("复诊原因", "Reason"),
            l.t("状态", "Status"),
            l.t("操作", "Open")
        );
        for visit in &visits {
            let patient = reference_id(&visit["subject"]["reference"], "Patient");
            let name = match read_as(&state, &s.ctx, "Patient", patient).await {
                Ok((p, _)) => person_name(&p),
                Err(_) => l.t("（无权查看）", "(not visible)").to_string(),
            };
            let id = visit["id"].as_str().unwrap_or("");
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a class=\"button\" href=\"/doctor/visits/{}\" aria-label=\"{} {}\">{}</a></td></tr>",
                esc(&when(visit["meta"]["lastUpdated"].as_str().unwrap_or(""))),
                esc(&name),
                esc(visit["reasonCode"][0]["text"].as_str().unwrap_or("")),
                visit_status_label(visit["status"].as_str().unwrap_or(""), l),
                url(id),
                l.t("打开就诊", "Open the visit of"),
                esc(&name),
                l.t("接诊", "Open")
            );
        }
        body.push_str("</tbody></table>");
    }
    render(&state, &v, &s, StatusCode::OK, title, None, None, &body).await
}

/// The chat thread of a visit: its Communications, oldest first.
pub(crate) async fn thread(
    state: &AppState,
    v: &Visit,
    ctx: &store::Ctx,
    visit_id: &str,
    patient: &str,
    me: &str,
) -> Result<String, EngineError> {
    let l = v.lang;
    let encounter = format!("Encounter/{visit_id}");
    let subject = format!("Patient/{patient}");
    let (messages, _) = search_as(
        state,
        v,
        ctx,
        "Communication",
        &[("encounter", &encounter), ("subject", &subject), ("_sort", "sent"), ("_count", "200")],
    )
    .await?;
    let mut out = String::new();
    if messages.is_empty() {
        let _ = write!(out, "<p class=\"muted\">{}</p>", l.t("暂无消息。", "No messages yet."));
    }
    for m in &messages {
        let sender = m["sender"]["reference"].as_str().unwrap_or("");
        let mine = sender == me;
        let who = if sender.starts_with("Patient/") { l.t("患者", "Patient") } else { l.t("医生", "Doctor") };
        let _ = write!(
            out,
            "<div class=\"msg{}\"><span class=\"muted\">{} · {}</span><br>{}</div>",
            if mine { " mine" } else { "" },
            who,
            esc(&when(m["sent"].as_str().unwrap_or(""))),
            esc(m["payload"][0]["contentString"].as_str().unwrap_or(""))
        );
    }
    Ok(out)
}

/// The form that posts a chat message to `action`.
pub(crate) fn chat_form(action: &str, csrf: &str, label: &str, l: Lang) -> String {
    format!(
        "<form method=\"post\" action=\"{action}\">{}<label for=\"text\">{}</label><textarea id=\"text\" name=\"text\" rows=\"3\" \
         required maxlength=\"2000\"></textarea><button type=\"submit\">{}</button></form>",
        csrf_field(csrf),
        esc(label),
        l.t("发送", "Send")
    )
}

/// The treating doctor of a visit (`Practitioner/{id}`), or "".
pub(crate) fn treating_doctor(visit: &Value) -> String {
    visit["participant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["individual"]["reference"].as_str())
        .find(|r| r.starts_with("Practitioner/"))
        .unwrap_or("")
        .to_string()
}

/// Posts a chat message of a visit as the caller: a resident writes to the treating doctor,
/// the doctor to the patient. The engine's normal create decides (the patient's own record;
/// the doctor's care relationship) and audits.
pub(crate) async fn send_chat(
    state: &AppState,
    v: &Visit,
    ctx: &store::Ctx,
    visit_id: &str,
    text: &str,
) -> Result<engine::WriteOutcome, EngineError> {
    let text: String = text.trim().chars().take(2000).collect();
    if text.is_empty() {
        return Err(EngineError::bad_request(fhir::IssueType::Required, "消息不能为空 / the message is empty"));
    }
    let visit = state.engine.internet_visit(ctx, visit_id).await?;
    let patient = visit["subject"]["reference"].as_str().unwrap_or("").to_string();
    let doctor = treating_doctor(&visit);
    let from_patient = ctx.principal.as_deref().is_some_and(|p| p.role == access::Role::Resident);
    let (sender, recipient) = if from_patient { (&patient, &doctor) } else { (&doctor, &patient) };
    let communication = communication(&visit, sender, recipient, &text);
    state.engine.create(ctx, "Communication", communication, &opts(state, v)).await
}

/// A chat message of a visit as a Communication (the engine's normal create decides who may).
pub(crate) fn communication(visit: &Value, sender: &str, recipient: &str, text: &str) -> Value {
    json!({
        "resourceType": "Communication", "status": "completed",
        "category": [{"text": "互联网复诊咨询"}],
        "subject": visit["subject"],
        "encounter": {"reference": format!("Encounter/{}", visit["id"].as_str().unwrap_or(""))},
        "sent": fhir::normalize::format_instant(now_ms()),
        "sender": {"reference": sender},
        "recipient": [{"reference": recipient}],
        "payload": [{"contentString": text}],
    })
}

/// What the prescription form holds (kept across a check).
#[derive(Default)]
struct Draft {
    fields: HashMap<String, String>,
    /// The alerts of the last check: (key, level, zh, en).
    alerts: Vec<(String, String, String, String)>,
}

impl Draft {
    fn get(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }
}

/// The visit page's body.
async fn visit_body(state: &AppState, v: &Visit, s: &Staff, id: &str, draft: &Draft) -> Result<String, EngineError> {
    let l = v.lang;
    let visit = state.engine.internet_visit(&s.ctx, id).await?;
    let patient_id = reference_id(&visit["subject"]["reference"], "Patient").to_string();
    let (patient, _) = read_as(state, &s.ctx, "Patient", &patient_id).await?;
    let status = visit["status"].as_str().unwrap_or("");
    let diagnosis = match visit["reasonReference"][0]["reference"].as_str().and_then(|r| r.strip_prefix("Condition/")) {
        Some(c) => read_as(state, &s.ctx, "Condition", c).await.map(|(c, _)| text_of(&c["code"])).unwrap_or_default(),
        None => String::new(),
    };
    let gender = match patient["gender"].as_str() {
        Some("male") => l.t("男", "male"),
        Some("female") => l.t("女", "female"),
        _ => "",
    };
    let mut body = format!(
        "<div class=\"card\"><p><strong>{}</strong> · {} · {}{}</p><p>{}<strong>{}</strong></p><p>{}{}</p><p>{}<strong id=\"visit-status\">{}</strong></p></div>",
        esc(&person_name(&patient)),
        gender,
        esc(&age(patient["birthDate"].as_str().unwrap_or(""))),
        l.t("岁", " years"),
        l.t("复诊疾病（线下确诊）：", "Follow-up of (diagnosed offline): "),
        esc(&diagnosis),
        l.t("复诊原因：", "Reason: "),
        esc(visit["reasonCode"][0]["text"].as_str().unwrap_or("")),
        l.t("状态：", "Status: "),
        visit_status_label(status, l),
    );
    // Actions by status.
    let action = format!("/doctor/visits/{}/status", url(id));
    match status {
        "planned" => {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"{action}\" class=\"card\">{}<input type=\"hidden\" name=\"status\" value=\"in-progress\">\
                 <label for=\"otp\">{}</label><input id=\"otp\" name=\"otp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" maxlength=\"6\" pattern=\"[0-9]{{6}}\" required>\
                 <button type=\"submit\">{}</button></form>",
                csrf_field(&s.csrf),
                l.t(
                    "身份验证器动态码（6位数字，开始接诊前再次核验身份）",
                    "Authenticator code (6 digits: your identity is checked again before each consultation)"
                ),
                l.t("开始接诊", "Start the consultation"),
            );
        }
        "in-progress" => {
            let _ = write!(
                body,
                "<div class=\"card inline\"><form method=\"post\" action=\"{action}\">{}<input type=\"hidden\" name=\"status\" value=\"finished\"><label for=\"note\">{note}</label><textarea id=\"note\" name=\"note\" rows=\"5\" maxlength=\"20000\" required></textarea><button type=\"submit\">{}</button></form>\
                 <form method=\"post\" action=\"{action}\">{}<input type=\"hidden\" name=\"status\" value=\"referred\"><label for=\"refer-note\">{note}</label><textarea id=\"refer-note\" name=\"note\" rows=\"3\" maxlength=\"20000\" required></textarea><label for=\"refer-reason\">{}</label><input id=\"refer-reason\" name=\"reason\" required><button class=\"danger\" type=\"submit\">{}</button></form></div>",
                csrf_field(&s.csrf),
                l.t("结束接诊", "Finish the visit"),
                csrf_field(&s.csrf),
                l.t("转线下就诊的原因（病情变化）", "Reason for an in-person visit (condition changed)"),
                l.t("转线下就诊", "Refer to an in-person visit"),
                note = l.t(
                    "诊疗记录（主诉、病情、处理意见；存入医院病历）",
                    "Visit record (complaint, findings, advice; kept in the hospital's records)"
                ),
            );
        }
        _ => {}
    }
    body.push_str("<div class=\"cols\"><section>");
    // Chat.
    let me = format!("Practitioner/{}", s.principal().practitioner.as_deref().unwrap_or(""));
    let _ = write!(body, "<h2>{}</h2>", l.t("图文咨询", "Chat"));
    body.push_str(&thread(state, v, &s.ctx, id, &patient_id, &me).await?);
    if status == "in-progress" || status == "planned" {
        let action = format!("/doctor/visits/{}/messages", url(id));
        body.push_str(&chat_form(&action, &s.csrf, l.t("回复患者", "Reply to the patient"), l));
    }
    // Prescriptions of this visit.
    let encounter = format!("Encounter/{id}");
    let patient_ref = format!("Patient/{patient_id}");
    let (written, _) =
        search_as(state, v, &s.ctx, "MedicationRequest", &[("encounter", &encounter), ("patient", &patient_ref)])
            .await?;
    let _ = write!(body, "<h2>{}</h2>", l.t("本次处方", "Prescriptions of this visit"));
    if written.is_empty() {
        let _ = write!(body, "<p class=\"muted\">{}</p>", l.t("尚未开具处方。", "None yet."));
    }
    body.push_str("<ul class=\"plain\">");
    for mr in &written {
        let _ = write!(
            body,
            "<li class=\"card\">{} · {} · {} · <strong>{}</strong> {}</li>",
            esc(mr["groupIdentifier"]["value"].as_str().unwrap_or("")),
            esc(mr["medicationCodeableConcept"]["text"].as_str().unwrap_or("")),
            esc(mr["dosageInstruction"][0]["text"].as_str().unwrap_or("")),
            crate::portal::pages::prescription_status_label(mr, l),
            esc(&crate::portal::pages::rejection(mr, l).unwrap_or_default())
        );
    }
    body.push_str("</ul>");
    if status == "in-progress" {
        body.push_str(&prescription_form(state, l, s, id, draft));
    }
    body.push_str("</section><section>");
    body.push_str(&records(state, v, s, &patient_id).await);
    body.push_str("</section></div>");
    Ok(body)
}

/// The prescription form, with the alerts of the last check and a reason field for each
/// warning.
fn prescription_form(state: &AppState, l: Lang, s: &Staff, id: &str, draft: &Draft) -> String {
    let catalogue = &state.engine.config().rx.catalogue;
    let mut out = format!(
        "<h2>{}</h2><form method=\"post\" action=\"/doctor/visits/{}/prescribe\" class=\"card\">{}",
        l.t("开具处方", "Prescribe"),
        url(id),
        csrf_field(&s.csrf)
    );
    for row in 0..ITEM_ROWS {
        let n = row + 1;
        let chosen = draft.get(&format!("drug{n}"));
        let _ = write!(
            out,
            "<fieldset><legend>{}{n}</legend><label for=\"drug{n}\">{}</label><select id=\"drug{n}\" name=\"drug{n}\"><option value=\"\">{}</option>",
            l.t("药品 ", "Drug "),
            l.t("药品", "Drug"),
            l.t("（不开）", "(none)")
        );
        for d in catalogue.iter() {
            let selected = if d.code == chosen { " selected" } else { "" };
            let _ = write!(
                out,
                "<option value=\"{}\"{selected}>{} {}（{}mg）</option>",
                esc(&d.code),
                esc(&d.code),
                esc(&d.name),
                d.strength_mg
            );
        }
        let _ = write!(
            out,
            "</select><label for=\"dose{n}\">{}</label><input id=\"dose{n}\" name=\"dose{n}\" inputmode=\"decimal\" value=\"{}\">\
             <label for=\"times{n}\">{}</label><input id=\"times{n}\" name=\"times{n}\" inputmode=\"numeric\" value=\"{}\">\
             <label for=\"days{n}\">{}</label><input id=\"days{n}\" name=\"days{n}\" inputmode=\"numeric\" value=\"{}\"></fieldset>",
            l.t("每次剂量（mg）", "Dose (mg)"),
            esc(draft.get(&format!("dose{n}"))),
            l.t("每日次数", "Times a day"),
            esc(draft.get(&format!("times{n}"))),
            l.t("天数", "Days"),
            esc(draft.get(&format!("days{n}"))),
        );
    }
    let _ = write!(
        out,
        "<label for=\"chronicReason\">{}</label><input id=\"chronicReason\" name=\"chronicReason\" value=\"{}\">\
         <label for=\"weightKg\">{}</label><input id=\"weightKg\" name=\"weightKg\" inputmode=\"decimal\" value=\"{}\">",
        l.t("长处方理由（慢性病超过7日时填写）", "Chronic supply reason (over 7 days)"),
        esc(draft.get("chronicReason")),
        l.t("体重（kg，儿童必填）", "Weight (kg, for children)"),
        esc(draft.get("weightKg")),
    );
    if !draft.alerts.is_empty() {
        let _ = write!(out, "<h3 id=\"alerts\">{}</h3>", l.t("合理用药提示", "Rule alerts"));
    } else if draft.fields.contains_key("checked") {
        let _ = write!(
            out,
            "<p class=\"notice\" role=\"status\" id=\"alerts\">{}</p>",
            l.t("未发现问题，可以签名开具。", "No alerts: the prescription can be signed.")
        );
    }
    for (i, (key, level, zh, en)) in draft.alerts.iter().enumerate() {
        let text = l.t(zh, en);
        if level == "hard-stop" {
            let _ = write!(
                out,
                "<div class=\"stop\" role=\"alert\"><strong>{}</strong> {}</div>",
                l.t("不可开具：", "Hard stop:"),
                esc(text)
            );
        } else {
            let field = format!("reason{i}");
            let _ = write!(
                out,
                "<div class=\"warn\" role=\"alert\"><strong>{}</strong> {}<input type=\"hidden\" name=\"key{i}\" value=\"{}\">\
                 <label for=\"{field}\">{}</label><input id=\"{field}\" name=\"{field}\" value=\"{}\"></div>",
                l.t("警示：", "Warning:"),
                esc(text),
                esc(key),
                l.t("坚持开具的理由（必填方可签名）", "Reason to prescribe anyway (required to sign)"),
                esc(draft.get(&field)),
            );
        }
    }
    let _ = write!(
        out,
        "<button class=\"secondary\" type=\"submit\" name=\"action\" value=\"check\">{}</button>\
         <button type=\"submit\" name=\"action\" value=\"sign\">{}</button></form>",
        l.t("合理用药检查", "Check the rules"),
        l.t("签名开具", "Sign and send"),
    );
    out
}

/// One section of the records: type, Chinese and English heading, extra search parameters.
type RecordSection<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

/// The patient's records as the doctor may see them: conditions, allergies, medications and
/// the latest results.
async fn records(state: &AppState, v: &Visit, s: &Staff, patient: &str) -> String {
    let l = v.lang;
    let reference = format!("Patient/{patient}");
    let mut out = format!("<h2>{}</h2>", l.t("患者档案", "The patient's records"));
    let sections: [RecordSection; 4] = [
        ("Condition", "疾病诊断", "Conditions", &[("_count", "20")]),
        ("AllergyIntolerance", "过敏史", "Allergies", &[("_count", "20")]),
        ("MedicationRequest", "用药记录", "Medications", &[("_count", "20"), ("_sort", "-authoredon")]),
        ("Observation", "检验/体征结果", "Results", &[("_count", "10"), ("_sort", "-date")]),
    ];
    for (ty, zh, en, extra) in sections {
        let mut params = vec![("patient", reference.as_str())];
        params.extend_from_slice(extra);
        let _ = write!(out, "<h3>{}</h3>", l.t(zh, en));
        match search_as(state, v, &s.ctx, ty, &params).await {
            Ok((found, _)) if found.is_empty() => {
                let _ = write!(out, "<p class=\"muted\">{}</p>", l.t("无", "None"));
            }
            Ok((found, _)) => {
                out.push_str("<ul>");
                for r in &found {
                    let line = match ty {
                        "Condition" => format!(
                            "{} ({}) {}",
                            text_of(&r["code"]),
                            r["code"]["coding"][0]["code"].as_str().unwrap_or(""),
                            r["clinicalStatus"]["coding"][0]["code"].as_str().unwrap_or("")
                        ),
                        "AllergyIntolerance" => text_of(&r["code"]),
                        "MedicationRequest" => format!(
                            "{} · {} · {}",
                            text_of(&r["medicationCodeableConcept"]),
                            r["dosageInstruction"][0]["text"].as_str().unwrap_or(""),
                            r["status"].as_str().unwrap_or("")
                        ),
                        _ => format!(
                            "{} {} {} · {}",
                            text_of(&r["code"]),
                            r["valueQuantity"]["value"],
                            r["valueQuantity"]["unit"].as_str().unwrap_or(""),
                            when(r["effectiveDateTime"].as_str().unwrap_or(""))
                        ),
                    };
                    let _ = write!(out, "<li>{}</li>", esc(&line));
                }
                out.push_str("</ul>");
            }
            Err(e) => {
                let _ = write!(out, "<p class=\"error\">{}</p>", esc(&engine_error(state, &e, l)));
            }
        }
    }
    out
}

async fn show_visit(
    state: &AppState,
    v: &Visit,
    s: &Staff,
    id: &str,
    status: StatusCode,
    error: Option<&str>,
    draft: &Draft,
) -> Response {
    let l = v.lang;
    let title = l.t("互联网复诊", "Online follow-up visit");
    let notice = match v.query.get("done").map(String::as_str) {
        Some("in-progress") => Some(l.t("已开始接诊。", "The consultation has started.")),
        Some("finished") => Some(l.t("本次接诊已结束。", "The visit is finished.")),
        Some("referred") => Some(l.t("已转线下就诊。", "Referred to an in-person visit.")),
        Some("sent") => Some(l.t("消息已发送。", "Message sent.")),
        Some("signed") => {
            Some(l.t("处方已签名，等待药师审核。", "Prescription signed: awaiting the pharmacist's review."))
        }
        _ => None,
    };
    match visit_body(state, v, s, id, draft).await {
        Ok(body) => render(state, v, s, status, title, error, notice, &body).await,
        Err(e) => {
            let message = engine_error(state, &e, l);
            let back = format!("<p><a href=\"/doctor/\">{}</a></p>", l.t("返回接诊队列", "Back to the queue"));
            render(state, v, s, error_status(&e), title, Some(&message), None, &back).await
        }
    }
}

/// `GET /doctor/visits/{id}`.
pub async fn visit(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    show_visit(&state, &v, &s, &id, StatusCode::OK, None, &Draft::default()).await
}

/// `POST /doctor/visits/{id}/status` (`status`, `otp`, `reason`, `note`): `$visit-status` as the
/// doctor.
pub async fn status(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let wanted = form.get("status").cloned().unwrap_or_default();
    let mut parameter = vec![json!({"name": "status", "valueCode": wanted})];
    if let Some(otp) = form.get("otp").map(|o| o.trim()).filter(|o| !o.is_empty()) {
        parameter.push(json!({"name": "otp", "valueString": otp}));
    }
    if let Some(reason) = form.get("reason").map(|r| r.trim()).filter(|r| !r.is_empty()) {
        parameter.push(json!({"name": "reason", "valueString": reason}));
    }
    if let Some(note) = form.get("note").map(|n| n.trim()).filter(|n| !n.is_empty()) {
        parameter.push(json!({"name": "note", "valueString": note}));
    }
    let parameters = json!({"resourceType": "Parameters", "parameter": parameter});
    match state.engine.visit_status(&s.ctx, &id, parameters).await {
        Ok(_) => redirect(&format!("/doctor/visits/{}?done={}", url(&id), url(&wanted)), v.cookies),
        Err(e) => {
            let error = engine_error(&state, &e, v.lang);
            show_visit(&state, &v, &s, &id, error_status(&e), Some(&error), &Draft::default()).await
        }
    }
}

/// `POST /doctor/visits/{id}/messages` (`text`): a chat message to the patient.
pub async fn message(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let result = send_chat(&state, &v, &s.ctx, &id, form.get("text").map(String::as_str).unwrap_or("")).await;
    match result {
        Ok(_) => redirect(&format!("/doctor/visits/{}?done=sent", url(&id)), v.cookies),
        Err(e) => {
            let error = engine_error(&state, &e, v.lang);
            show_visit(&state, &v, &s, &id, error_status(&e), Some(&error), &Draft::default()).await
        }
    }
}

/// The `$prescribe` Parameters of the form: its items and the warnings given a reason.
fn prescribe_parameters(visit: &str, draft: &Draft, check: bool) -> Value {
    let mut parameter =
        vec![json!({"name": "encounter", "valueReference": {"reference": format!("Encounter/{visit}")}})];
    for n in 1..=ITEM_ROWS {
        let drug = draft.get(&format!("drug{n}"));
        if drug.is_empty() {
            continue;
        }
        let number = |field: &str| draft.get(&format!("{field}{n}")).trim().parse::<f64>().unwrap_or(0.0);
        parameter.push(json!({"name": "item", "part": [
            {"name": "drug", "valueCode": drug},
            {"name": "doseMg", "valueDecimal": number("dose")},
            {"name": "timesPerDay", "valueInteger": number("times") as i64},
            {"name": "days", "valueInteger": number("days") as i64},
        ]}));
    }
    if let Some(reason) = Some(draft.get("chronicReason").trim()).filter(|r| !r.is_empty()) {
        parameter.push(json!({"name": "chronicReason", "valueString": reason}));
    }
    if let Ok(weight) = draft.get("weightKg").trim().parse::<f64>() {
        parameter.push(json!({"name": "weightKg", "valueDecimal": weight}));
    }
    for i in 0..20 {
        let (key, reason) = (draft.get(&format!("key{i}")), draft.get(&format!("reason{i}")).trim());
        if !key.is_empty() && !reason.is_empty() {
            parameter.push(json!({"name": "override", "part": [
                {"name": "alert", "valueString": key}, {"name": "reason", "valueString": reason}]}));
        }
    }
    if check {
        parameter.push(json!({"name": "check", "valueBoolean": true}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// The live alerts of a draft (`$prescribe` with `check`).
async fn check(state: &AppState, s: &Staff, id: &str, draft: &mut Draft) -> Result<(), EngineError> {
    let keys = state.auth.keys();
    let answer = state.engine.prescribe(&s.ctx, &keys, prescribe_parameters(id, draft, true)).await?;
    let listed: Vec<Value> =
        answer["parameter"][0]["valueString"].as_str().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
    // Keep typed reasons with their alert even when the list changed.
    let reasons: HashMap<String, String> = (0..20)
        .filter_map(|i| {
            let key = draft.fields.get(&format!("key{i}"))?.clone();
            Some((key, draft.fields.get(&format!("reason{i}")).cloned().unwrap_or_default()))
        })
        .collect();
    draft.fields.retain(|k, _| !(k.starts_with("key") || k.starts_with("reason")));
    draft.alerts = listed
        .iter()
        .map(|a| {
            let s = |n: &str| a[n].as_str().unwrap_or("").to_string();
            (s("key"), s("level"), s("zh"), s("en"))
        })
        .collect();
    for (i, (key, ..)) in draft.alerts.iter().enumerate() {
        if let Some(reason) = reasons.get(key) {
            draft.fields.insert(format!("reason{i}"), reason.clone());
        }
        draft.fields.insert(format!("key{i}"), key.clone());
    }
    draft.fields.insert("checked".into(), "1".into());
    Ok(())
}

/// `POST /doctor/visits/{id}/prescribe`: `action=check` shows the live alerts of the draft;
/// `action=sign` signs it (hard stops refuse, warnings need their typed reason).
pub async fn prescribe(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let l = v.lang;
    let sign = form.get("action").map(String::as_str) == Some("sign");
    let mut draft = Draft { fields: form, alerts: Vec::new() };
    draft.fields.remove("csrf");
    if sign {
        let keys = state.auth.keys();
        let parameters = prescribe_parameters(&id, &draft, false);
        match state.engine.prescribe(&s.ctx, &keys, parameters).await {
            Ok(_) => return redirect(&format!("/doctor/visits/{}?done=signed", url(&id)), v.cookies),
            Err(e) => {
                // The rules' refusals are explained by the alerts shown again below the form, in
                // the page language; other errors as the engine words them.
                let checked = check(&state, &s, &id, &mut draft).await.is_ok();
                let hard = draft.alerts.iter().any(|a| a.1 == "hard-stop");
                let error = match (&e, checked) {
                    (EngineError::Unprocessable(_), true) if hard => l
                        .t(
                            "处方有不可开具的问题（见下方合理用药提示），请修改后再签名。",
                            "The prescription breaks a rule that cannot be overridden (see the alerts below): change it first.",
                        )
                        .to_string(),
                    (EngineError::Unprocessable(_), true) if !draft.alerts.is_empty() => l
                        .t(
                            "有警示尚未填写坚持开具的理由（见下方合理用药提示），填写后方可签名。",
                            "A warning has no reason yet (see the alerts below): give one to sign.",
                        )
                        .to_string(),
                    _ => engine_error(&state, &e, l),
                };
                return show_visit(&state, &v, &s, &id, error_status(&e), Some(&error), &draft).await;
            }
        }
    }
    match check(&state, &s, &id, &mut draft).await {
        Ok(()) => show_visit(&state, &v, &s, &id, StatusCode::OK, None, &draft).await,
        Err(e) => {
            let error = engine_error(&state, &e, l);
            show_visit(&state, &v, &s, &id, error_status(&e), Some(&error), &draft).await
        }
    }
}
