//! The resident's side of the internet hospital: requesting a follow-up visit for an offline
//! diagnosis, the visits and their chat, and tracking the prescriptions (review, where to get
//! the drugs, dispensing, delivery).

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Html, checked_form, error_status, message, person_name, read, render, search, text_of, to_login, when};
use crate::AppState;
use crate::portal::html::{Lang, csrf_field, esc, url};
use crate::portal::{Session, Visit, redirect, session, visit};

const SECTION: &str = "/portal/visits";

/// A prescription's state as the resident follows it.
pub(crate) fn prescription_status_label(request: &Value, l: Lang) -> &'static str {
    match request["status"].as_str().unwrap_or("") {
        "on-hold" => l.t("待药师审核", "awaiting review"),
        "active" => l.t("审核通过，待取药", "approved"),
        "cancelled" => l.t("已驳回", "rejected"),
        "completed" => l.t("已调配", "dispensed"),
        _ => l.t("其他", "other"),
    }
}

/// Why the pharmacist rejected a prescription, in the page language ("药师驳回：…").
pub(crate) fn rejection(request: &Value, l: Lang) -> Option<String> {
    if request["status"] != "cancelled" {
        return None;
    }
    // The engine writes "药师驳回 / rejected by the pharmacist: {reason}".
    let text = request["statusReason"]["text"].as_str()?;
    let reason = text.split_once(": ").map_or(text, |(_, r)| r);
    Some(format!("{}{reason}", l.t("药师驳回：", "Rejected by the pharmacist: ")))
}

/// A delivery state as shown to residents and pharmacies.
pub(crate) fn delivery_label(state: &str, l: Lang) -> &'static str {
    match state {
        "dispatched" => l.t("已发货", "dispatched"),
        "in-transit" => l.t("配送中", "in transit"),
        "delivered" => l.t("已送达", "delivered"),
        _ => l.t("待发货", "awaiting dispatch"),
    }
}

fn visit_status(status: &str, l: Lang) -> &'static str {
    crate::workbench::visit_status_label(status, l)
}

/// `GET /portal/visits`: the person's internet visits, newest first.
pub async fn visits(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("互联网复诊", "Online follow-up visits");
    let patient = format!("Patient/{}", s.patient);
    let notice = match v.query.get("done").map(String::as_str) {
        Some("requested") => {
            Some(l.t("复诊申请已提交，请等待医生接诊。", "Requested: the doctor will see you online."))
        }
        _ => None,
    };
    let found = search(
        &state,
        &v,
        &s,
        "Encounter",
        &[("patient", &patient), ("_tag", engine::VISIT_TAG), ("_sort", "-_lastUpdated"), ("_count", "50")],
    )
    .await;
    let list = match found {
        Ok((list, _)) => list,
        Err(e) => {
            let error = message(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, SECTION, Some(&error), None, "", "").await;
        }
    };
    let mut body = format!(
        "<p class=\"muted\">{}</p><p><a class=\"button\" href=\"/portal/visits/new\">{}</a></p>",
        l.t(
            "互联网医院为线下已确诊的常见病、慢性病提供复诊、续方和送药上门。首诊请到医院就诊。",
            "The internet hospital offers follow-up visits, repeat prescriptions and delivery for conditions diagnosed in person. First visits are in person."
        ),
        l.t("申请复诊", "Request a follow-up")
    );
    if list.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无复诊记录。", "No visits yet."));
    }
    body.push_str("<ul class=\"plain\">");
    for e in &list {
        let id = e["id"].as_str().unwrap_or("");
        let _ = write!(
            body,
            "<li class=\"card\"><a href=\"/portal/visits/{}\"><strong>{}</strong></a> · {}<br><span class=\"muted\">{}</span></li>",
            url(id),
            esc(e["reasonCode"][0]["text"].as_str().unwrap_or(l.t("复诊", "Follow-up"))),
            visit_status(e["status"].as_str().unwrap_or(""), l),
            esc(&when(e["meta"]["lastUpdated"].as_str().unwrap_or("")))
        );
    }
    body.push_str("</ul>");
    render(&state, &v, &s, StatusCode::OK, title, SECTION, None, notice, &body, "").await
}

/// The request form: the person's confirmed active offline diagnoses and the eligible doctors.
async fn request_form(state: &AppState, v: &Visit, s: &Session) -> Result<String, engine::EngineError> {
    let l = v.lang;
    let patient = format!("Patient/{}", s.patient);
    let (conditions, _) = search(
        state,
        v,
        s,
        "Condition",
        &[("patient", &patient), ("clinical-status", "active"), ("verification-status", "confirmed"), ("_count", "50")],
    )
    .await?;
    let doctors = state.engine.internet_doctors(&s.ctx).await?;
    let mut body = format!(
        "<form method=\"post\" action=\"/portal/visits\" class=\"card\">{}<fieldset><legend>{}</legend>",
        csrf_field(&s.csrf),
        l.t("复诊的疾病（须为线下医院已确诊）", "The condition (diagnosed in person)")
    );
    if conditions.is_empty() {
        let _ = write!(
            body,
            "<p>{}</p>",
            l.t(
                "没有线下确诊的疾病记录，不能申请互联网复诊。",
                "No confirmed diagnosis on record: a follow-up visit needs one."
            )
        );
    }
    for (i, c) in conditions.iter().enumerate() {
        let checked = if i == 0 { " checked" } else { "" };
        let _ = write!(
            body,
            "<label><input type=\"radio\" name=\"condition\" value=\"{}\"{checked}> {} <span class=\"muted\">{}</span></label>",
            esc(c["id"].as_str().unwrap_or("")),
            esc(&text_of(&c["code"])),
            esc(c["recordedDate"].as_str().unwrap_or(""))
        );
    }
    let _ = write!(
        body,
        "</fieldset><label for=\"role\">{}</label><select id=\"role\" name=\"role\" required>",
        l.t("医生（具备互联网诊疗资格）", "Doctor (registered for online care)")
    );
    for d in &doctors {
        let _ = write!(
            body,
            "<option value=\"{}\">{} · {} · {}</option>",
            esc(&d.role),
            esc(&d.name),
            esc(&d.organization_name),
            esc(&d.specialty)
        );
    }
    let _ = write!(
        body,
        "</select><label for=\"reason\">{}</label><textarea id=\"reason\" name=\"reason\" rows=\"3\" maxlength=\"500\" required></textarea>\
         <fieldset><legend>{}</legend><p>{}</p><label><input type=\"checkbox\" id=\"consent\" name=\"consent\" value=\"yes\" required> {}</label></fieldset>\
         <button type=\"submit\">{}</button></form>",
        l.t("复诊原因（如：血压控制情况、续方）", "Reason (e.g. blood pressure, repeat prescription)"),
        l.t("互联网诊疗知情同意书", "Informed consent to online care"),
        l.t(
            "互联网医院仅提供常见病、慢性病复诊，不提供首诊；医生通过图文问诊了解病情，病情变化或需要检查时将建议您线下就诊；\
             处方须经药师审核后生效；问诊记录将作为病历保存在医院并纳入您的健康档案。",
            "The internet hospital provides follow-up care of common and chronic diseases only, never a first \
             visit; the doctor consults by text and images and will refer you to an in-person visit when your \
             condition changes or needs examination; prescriptions take effect after a pharmacist's review; the \
             consultation is kept as a medical record at the hospital and in your health record."
        ),
        l.t("我已阅读并同意上述知情同意书", "I have read and accept this informed consent"),
        l.t("提交复诊申请", "Request the visit")
    );
    Ok(body)
}

/// `GET /portal/visits/new`.
pub async fn new_visit(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("申请互联网复诊", "Request an online follow-up");
    match request_form(&state, &v, &s).await {
        Ok(body) => render(&state, &v, &s, StatusCode::OK, title, SECTION, None, None, &body, "").await,
        Err(e) => {
            let error = message(&state, &e, l);
            render(&state, &v, &s, error_status(&e), title, SECTION, Some(&error), None, "", "").await
        }
    }
}

/// `POST /portal/visits` (`condition`, `role`, `reason`, `consent`): `Encounter/$request-follow-up`.
pub async fn request_visit(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let field = |n: &str| form.get(n).map(|x| x.trim().to_string()).unwrap_or_default();
    let mut parameter = vec![
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{}", s.patient)}}),
        json!({"name": "practitionerRole", "valueReference": {"reference": format!("PractitionerRole/{}", field("role"))}}),
        json!({"name": "reason", "valueString": field("reason")}),
        json!({"name": "consent", "valueBoolean": field("consent") == "yes"}),
    ];
    if !field("condition").is_empty() {
        parameter.push(
            json!({"name": "condition", "valueReference": {"reference": format!("Condition/{}", field("condition"))}}),
        );
    }
    let parameters = json!({"resourceType": "Parameters", "parameter": parameter});
    match state.engine.request_follow_up(&s.ctx, parameters).await {
        Ok(visit) => {
            let id = visit["id"].as_str().unwrap_or("");
            redirect(&format!("/portal/visits/{}?done=requested", url(id)), v.cookies)
        }
        Err(e) => {
            let l = v.lang;
            let error = crate::workbench::one_language(&message(&state, &e, l), l);
            let body = request_form(&state, &v, &s).await.unwrap_or_default();
            let title = l.t("申请互联网复诊", "Request an online follow-up");
            render(&state, &v, &s, error_status(&e), title, SECTION, Some(&error), None, &body, "").await
        }
    }
}

/// The tracking of one prescription: its lines and state, where to get the drugs, the
/// delivery.
async fn prescription_card(
    state: &AppState,
    v: &Visit,
    s: &Session,
    number: &str,
    lines: &[Value],
    pharmacies: &[Value],
) -> String {
    let l = v.lang;
    let first = &lines[0];
    let mut out = format!(
        "<div class=\"card prescription\"><p>{}<strong>{}</strong> · <strong class=\"rx-status\">{}</strong></p><ul>",
        l.t("处方 ", "Prescription "),
        esc(number),
        prescription_status_label(first, l)
    );
    for mr in lines {
        let _ = write!(
            out,
            "<li>{} · {}</li>",
            esc(mr["medicationCodeableConcept"]["text"].as_str().unwrap_or("")),
            esc(mr["dosageInstruction"][0]["text"].as_str().unwrap_or(""))
        );
    }
    out.push_str("</ul>");
    if let Some(reason) = rejection(first, l) {
        let _ = write!(out, "<p class=\"high\">{}</p>", esc(&reason));
    }
    let routed = first["extension"].as_array().into_iter().flatten().find(|x| x["url"] == engine::DELIVERY_EXTENSION);
    let sent_to = first["dispenseRequest"]["performer"]["reference"].as_str().unwrap_or("");
    if let Some(routed) = routed {
        let method = routed["extension"].as_array().into_iter().flatten().find(|p| p["url"] == "method");
        let home = method.is_some_and(|m| m["valueCode"] == "home");
        let name = pharmacies
            .iter()
            .find(|p| format!("Organization/{}", p["id"].as_str().unwrap_or("")) == sent_to)
            .and_then(|p| p["name"].as_str())
            .unwrap_or(sent_to);
        let _ = write!(
            out,
            "<p>{}{} · {}</p>",
            l.t("取药：", "Drugs from: "),
            esc(name),
            if home { l.t("送药上门", "home delivery") } else { l.t("到店自取", "pickup") }
        );
    }
    if matches!(first["status"].as_str(), Some("on-hold" | "active")) {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/portal/prescriptions/route\">{}<input type=\"hidden\" name=\"prescription\" value=\"{}\">\
             <label for=\"pharmacy-{1}\">{}</label><select id=\"pharmacy-{1}\" name=\"pharmacy\">",
            csrf_field(&s.csrf),
            esc(number),
            l.t("选择药房", "Pharmacy"),
        );
        for p in pharmacies {
            let id = p["id"].as_str().unwrap_or("");
            let selected = if format!("Organization/{id}") == sent_to { " selected" } else { "" };
            let _ = write!(
                out,
                "<option value=\"{}\"{selected}>{}</option>",
                esc(id),
                esc(p["name"].as_str().unwrap_or(""))
            );
        }
        let _ = write!(
            out,
            "</select><fieldset><legend>{}</legend><label><input type=\"radio\" name=\"delivery\" value=\"pickup\" checked> {}</label>\
             <label><input type=\"radio\" name=\"delivery\" value=\"home\"> {}</label></fieldset>\
             <label for=\"address-{}\">{}</label><input id=\"address-{3}\" name=\"address\"><button type=\"submit\">{}</button></form>",
            l.t("取药方式", "How"),
            l.t("到店自取", "Pick up"),
            l.t("送药上门", "Home delivery"),
            esc(number),
            l.t("送药地址（送药上门时填写）", "Delivery address (for home delivery)"),
            l.t("确定取药方式", "Send the prescription there"),
        );
    }
    if first["status"] == "completed" {
        match read(state, s, "Task", &format!("{number}-delivery")).await {
            Ok((task, _)) => {
                let states: Vec<&str> =
                    task["output"].as_array().into_iter().flatten().filter_map(|o| o["valueString"].as_str()).collect();
                let last = states.last().copied().unwrap_or("");
                let _ = write!(
                    out,
                    "<p>{}<strong class=\"delivery-state\">{}</strong></p><ol>",
                    l.t("配送状态：", "Delivery: "),
                    delivery_label(last, l)
                );
                for o in task["output"].as_array().into_iter().flatten() {
                    let _ = write!(
                        out,
                        "<li>{} · {}</li>",
                        delivery_label(o["valueString"].as_str().unwrap_or(""), l),
                        esc(&when(o["type"]["text"].as_str().unwrap_or("")))
                    );
                }
                out.push_str("</ol>");
            }
            Err(_) => {
                let _ = write!(
                    out,
                    "<p>{}</p>",
                    l.t("药品已调配，请到药房取药。", "Dispensed: collect the drugs at the pharmacy.")
                );
            }
        }
    }
    out.push_str("</div>");
    out
}

async fn visit_body(state: &AppState, v: &Visit, s: &Session, id: &str) -> Result<String, engine::EngineError> {
    let l = v.lang;
    let visit = state.engine.internet_visit(&s.ctx, id).await?;
    let patient = visit["subject"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).unwrap_or("");
    let doctor_ref = crate::workbench::treating_doctor(&visit);
    let doctor = match doctor_ref.strip_prefix("Practitioner/") {
        Some(d) => read(state, s, "Practitioner", d).await.map(|(p, _)| person_name(&p)).unwrap_or_default(),
        None => String::new(),
    };
    let status = visit["status"].as_str().unwrap_or("");
    let mut body = format!(
        "<div class=\"card\"><p>{}<strong>{}</strong></p><p>{}{}</p><p>{}<strong id=\"visit-status\">{}</strong></p></div><h2>{}</h2>",
        l.t("医生：", "Doctor: "),
        esc(&doctor),
        l.t("复诊原因：", "Reason: "),
        esc(visit["reasonCode"][0]["text"].as_str().unwrap_or("")),
        l.t("状态：", "Status: "),
        visit_status(status, l),
        l.t("图文咨询", "Chat with the doctor"),
    );
    let me = format!("Patient/{patient}");
    body.push_str(&crate::workbench::thread(state, v, &s.ctx, id, patient, &me).await?);
    if status == "planned" || status == "in-progress" {
        let action = format!("/portal/visits/{}/messages", url(id));
        body.push_str(&crate::workbench::chat_form(&action, &s.csrf, l.t("给医生留言", "Message to the doctor"), l));
    }
    let encounter = format!("Encounter/{id}");
    let (requests, _) =
        search(state, v, s, "MedicationRequest", &[("encounter", &encounter), ("patient", &me)]).await?;
    let mut by_number: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for mr in requests {
        if let Some(number) = mr["groupIdentifier"]["value"].as_str() {
            by_number.entry(number.to_string()).or_default().push(mr.clone());
        }
    }
    let _ = write!(body, "<h2>{}</h2>", l.t("处方与取药", "Prescriptions"));
    if by_number.is_empty() {
        let _ = write!(
            body,
            "<p class=\"muted\">{}</p>",
            l.t("本次复诊暂无处方。", "No prescription from this visit yet.")
        );
    } else {
        let (mut pharmacies, _) =
            search(state, v, s, "Organization", &[("type", "pharmacy"), ("active", "true")]).await?;
        let hospital = visit["serviceProvider"]["reference"].as_str().and_then(|r| r.strip_prefix("Organization/"));
        if let Some(h) = hospital
            && let Ok((org, _)) = read(state, s, "Organization", h).await
        {
            pharmacies.insert(0, org);
        }
        for (number, mut lines) in by_number {
            lines.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            body.push_str(&prescription_card(state, v, s, &number, &lines, &pharmacies).await);
        }
    }
    Ok(body)
}

/// `GET /portal/visits/{id}`.
pub async fn show_visit(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let l = v.lang;
    let title = l.t("复诊详情", "Follow-up visit");
    let notice = match v.query.get("done").map(String::as_str) {
        Some("requested") => {
            Some(l.t("复诊申请已提交，请等待医生接诊。", "Requested: the doctor will see you online."))
        }
        Some("sent") => Some(l.t("消息已发送。", "Message sent.")),
        Some("routed") => Some(l.t("已确定取药方式。", "The prescription was sent to the pharmacy.")),
        _ => None,
    };
    match visit_body(&state, &v, &s, &id).await {
        Ok(body) => render(&state, &v, &s, StatusCode::OK, title, SECTION, None, notice, &body, "").await,
        Err(e) => {
            let error = message(&state, &e, l);
            render(&state, &v, &s, error_status(&e), title, SECTION, Some(&error), None, "", "").await
        }
    }
}

/// `POST /portal/visits/{id}/messages` (`text`).
pub async fn post_message(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let text = form.get("text").map(String::as_str).unwrap_or("");
    let result = crate::workbench::send_chat(&state, &v, &s.ctx, &id, text).await;
    match result {
        Ok(_) => redirect(&format!("/portal/visits/{}?done=sent", url(&id)), v.cookies),
        Err(e) => {
            let l = v.lang;
            let error = message(&state, &e, l);
            render(
                &state,
                &v,
                &s,
                error_status(&e),
                l.t("复诊详情", "Follow-up visit"),
                SECTION,
                Some(&error),
                None,
                "",
                "",
            )
            .await
        }
    }
}

/// `POST /portal/prescriptions/route` (`prescription`, `pharmacy`, `delivery`, `address`):
/// `MedicationRequest/$route` as the resident.
pub async fn route(State(state): State<AppState>, request: Request) -> Html {
    let (v, s) = signed_in!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let field = |n: &str| form.get(n).map(|x| x.trim().to_string()).unwrap_or_default();
    let number = field("prescription");
    let mut parameter = vec![
        json!({"name": "prescription", "valueString": number}),
        json!({"name": "pharmacy", "valueReference": {"reference": format!("Organization/{}", field("pharmacy"))}}),
        json!({"name": "delivery", "valueCode": if field("delivery") == "home" { "home" } else { "pickup" }}),
    ];
    if !field("address").is_empty() {
        parameter.push(json!({"name": "address", "valueString": field("address")}));
    }
    let parameters = json!({"resourceType": "Parameters", "parameter": parameter});
    let l = v.lang;
    match state.engine.route_prescription(&s.ctx, parameters).await {
        Ok(_) => {
            // Back to the visit the prescription belongs to.
            let visit = match read(&state, &s, "MedicationRequest", &format!("{number}-1")).await {
                Ok((mr, _)) => {
                    mr["encounter"]["reference"].as_str().and_then(|r| r.strip_prefix("Encounter/")).map(str::to_string)
                }
                Err(_) => None,
            };
            match visit {
                Some(id) => redirect(&format!("/portal/visits/{}?done=routed", url(&id)), v.cookies),
                None => redirect("/portal/visits", v.cookies),
            }
        }
        Err(e) => {
            let error = crate::workbench::one_language(&message(&state, &e, l), l);
            let back = format!("<p><a href=\"/portal/visits\">{}</a></p>", l.t("返回", "Back"));
            render(
                &state,
                &v,
                &s,
                error_status(&e),
                l.t("取药方式", "Where to get the drugs"),
                SECTION,
                Some(&error),
                None,
                &back,
                "",
            )
            .await
        }
    }
}
