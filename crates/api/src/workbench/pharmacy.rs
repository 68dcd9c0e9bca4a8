//! The hospital pharmacist's review queue and review page, and the pharmacy's dispensing and
//! delivery queue.

use std::fmt::Write;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{checked_form, engine_error, render, staff};
use crate::AppState;
use crate::portal::html::{csrf_field, esc, url};
use crate::portal::pages::{delivery_label, error_status, when};
use crate::portal::redirect;

/// `GET /pharmacist/`: the prescriptions waiting for review at the pharmacist's hospital and
/// the hospitals whose review centre the pharmacist's organization is.
pub async fn review_queue(State(state): State<AppState>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let l = v.lang;
    let title = l.t("待审处方", "Prescriptions to review");
    let notice = match v.query.get("done").map(String::as_str) {
        Some("approve") => Some(l.t("已审核通过并签名。", "Approved and signed.")),
        Some("reject") => Some(l.t("已驳回，理由已告知医生。", "Rejected; the doctor sees the reason.")),
        _ => None,
    };
    // The first 100 pending reviews of every hospital the pharmacist reviews for, oldest first.
    let paging = [("_count".to_string(), "100".to_string())];
    let tasks: Vec<Value> = match state.engine.review_queue(&s.ctx, &paging).await {
        Ok(page) => page["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect(),
        Err(e) => {
            let error = engine_error(&state, &e, l);
            return render(&state, &v, &s, error_status(&e), title, Some(&error), None, "").await;
        }
    };
    let mut body = String::new();
    if tasks.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无待审处方。", "Nothing to review."));
    } else {
        let _ = write!(
            body,
            "<table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
            l.t("开具时间", "Written"),
            l.t("处方号", "Prescription"),
            l.t("操作", "Open")
        );
        for t in &tasks {
            let number = engine::task_prescription(t).unwrap_or("");
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><a class=\"button\" href=\"/pharmacist/reviews/{}\" aria-label=\"{} {}\">{}</a></td></tr>",
                esc(&when(t["authoredOn"].as_str().unwrap_or(""))),
                esc(number),
                url(t["id"].as_str().unwrap_or("")),
                l.t("审核处方", "Review prescription"),
                esc(number),
                l.t("审核", "Review")
            );
        }
        body.push_str("</tbody></table>");
    }
    render(&state, &v, &s, StatusCode::OK, title, None, notice, &body).await
}

/// The review page's body: the prescription's lines, the overridden warnings with the
/// doctor's reasons, the signature check and the decision form.
async fn review_body(
    state: &AppState,
    v: &crate::portal::Visit,
    s: &super::Staff,
    task_id: &str,
) -> Result<String, engine::EngineError> {
    let l = v.lang;
    let (task, requests) = state.engine.review_detail(&s.ctx, task_id).await?;
    let number = engine::task_prescription(&task).unwrap_or("").to_string();
    let verified = state.engine.verify_prescription(&s.ctx, &number).await?;
    let mut body = format!(
        "<div class=\"card\"><p>{}<strong id=\"rx-number\">{}</strong></p><p>{}{}</p></div><h2>{}</h2><table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
        l.t("处方号：", "Prescription: "),
        esc(&number),
        l.t("开具时间：", "Written: "),
        esc(&when(task["authoredOn"].as_str().unwrap_or(""))),
        l.t("药品", "Drugs"),
        l.t("药品", "Drug"),
        l.t("用法用量", "Dosage"),
        l.t("天数", "Days"),
    );
    for mr in &requests {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(mr["medicationCodeableConcept"]["text"].as_str().unwrap_or("")),
            esc(mr["dosageInstruction"][0]["text"].as_str().unwrap_or("")),
            mr["dispenseRequest"]["expectedSupplyDuration"]["value"]
        );
    }
    body.push_str("</tbody></table>");
    if let Some(note) = requests.first().and_then(|r| r["note"][0]["text"].as_str()) {
        let _ = write!(body, "<p>{}</p>", esc(note));
    }
    let overrides = requests.first().map(engine::overrides_of).unwrap_or_default();
    let _ = write!(body, "<h2>{}</h2>", l.t("合理用药警示与医生理由", "Warnings overridden by the doctor"));
    if overrides.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("开方时无警示。", "No warnings when it was written."));
    }
    for (key, reason) in &overrides {
        let _ = write!(
            body,
            "<div class=\"warn\">{} <code>{}</code><br>{}{}</div>",
            l.t("警示", "Warning"),
            esc(key),
            l.t("医生理由：", "Doctor's reason: "),
            esc(reason)
        );
    }
    let _ = write!(body, "<h2>{}</h2><ul id=\"signatures\">", l.t("电子签名验证", "Signatures"));
    for p in verified["parameter"].as_array().into_iter().flatten().filter(|p| p["name"] == "signature") {
        let part = |n: &str| {
            p["part"].as_array().and_then(|a| a.iter().find(|x| x["name"] == n)).cloned().unwrap_or(Value::Null)
        };
        let valid = part("valid")["valueBoolean"] == true;
        let role = if part("role")["valueCode"] == "doctor" {
            l.t("医生签名", "Doctor's signature")
        } else {
            l.t("药师签名", "Pharmacist's signature")
        };
        let _ = write!(
            body,
            "<li class=\"{}\">{}：{}</li>",
            if valid { "" } else { "high" },
            role,
            if valid { l.t("验证通过（SM2）", "valid (SM2)") } else { l.t("验证失败！", "DOES NOT VERIFY") }
        );
    }
    body.push_str("</ul>");
    if task["status"] == "requested" {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/pharmacist/reviews/{}\" class=\"card\">{}<label for=\"reason\">{}</label><input id=\"reason\" name=\"reason\">\
             <button type=\"submit\" name=\"decision\" value=\"approve\">{}</button><button class=\"danger\" type=\"submit\" name=\"decision\" value=\"reject\">{}</button></form>",
            url(task_id),
            csrf_field(&s.csrf),
            l.t("驳回理由（驳回时必填）", "Reason (required to reject)"),
            l.t("审核通过并签名", "Approve and sign"),
            l.t("驳回", "Reject"),
        );
    }
    Ok(body)
}

/// `GET /pharmacist/reviews/{task}`.
pub async fn review(State(state): State<AppState>, Path(task): Path<String>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let l = v.lang;
    let title = l.t("处方审核", "Prescription review");
    match review_body(&state, &v, &s, &task).await {
        Ok(body) => render(&state, &v, &s, StatusCode::OK, title, None, None, &body).await,
        Err(e) => {
            let error = engine_error(&state, &e, l);
            render(&state, &v, &s, error_status(&e), title, Some(&error), None, "").await
        }
    }
}

/// `POST /pharmacist/reviews/{task}` (`decision` approve | reject, `reason`).
pub async fn decide(State(state): State<AppState>, Path(task): Path<String>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let decision = form.get("decision").cloned().unwrap_or_default();
    let mut parameter = vec![json!({"name": "decision", "valueCode": decision})];
    if let Some(reason) = form.get("reason").map(|r| r.trim()).filter(|r| !r.is_empty()) {
        parameter.push(json!({"name": "reason", "valueString": reason}));
    }
    let keys = state.auth.keys();
    let parameters = json!({"resourceType": "Parameters", "parameter": parameter});
    match state.engine.review_prescription(&s.ctx, &keys, &task, parameters).await {
        Ok(_) => redirect(&format!("/pharmacist/?done={}", url(&decision)), v.cookies),
        Err(e) => {
            let l = v.lang;
            let error = engine_error(&state, &e, l);
            let body = review_body(&state, &v, &s, &task).await.unwrap_or_default();
            render(&state, &v, &s, error_status(&e), l.t("处方审核", "Prescription review"), Some(&error), None, &body)
                .await
        }
    }
}

/// `GET /pharmacy/`: prescriptions sent here to dispense, and home deliveries under way.
pub async fn dispensing_queue(State(state): State<AppState>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let l = v.lang;
    let title = l.t("调配与配送", "Dispensing and delivery");
    let notice = match v.query.get("done").map(String::as_str) {
        Some("dispensed") => Some(l.t("处方已调配。", "Dispensed.")),
        Some("delivery") => Some(l.t("配送状态已更新。", "Delivery state recorded.")),
        _ => None,
    };
    let (queue, deliveries) =
        match (state.engine.pharmacy_queue(&s.ctx).await, state.engine.delivery_queue(&s.ctx).await) {
            (Ok(q), Ok(d)) => (q, d),
            (Err(e), _) | (_, Err(e)) => {
                let error = engine_error(&state, &e, l);
                return render(&state, &v, &s, error_status(&e), title, Some(&error), None, "").await;
            }
        };
    let pharmacy = queue["pharmacy"].as_str().unwrap_or("").to_string();
    let mut body = format!("<h2>{}</h2>", l.t("待调配处方", "To dispense"));
    let prescriptions = queue["prescriptions"].as_array().cloned().unwrap_or_default();
    if prescriptions.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无待调配处方。", "Nothing to dispense."));
    } else {
        let _ = write!(
            body,
            "<table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
            l.t("开具时间", "Written"),
            l.t("处方号", "Prescription"),
            l.t("药品", "Drugs"),
            l.t("取药方式", "Delivery"),
            l.t("操作", "Action")
        );
        for p in &prescriptions {
            let number = p["number"].as_str().unwrap_or("");
            let drugs: Vec<&str> = p["drugs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let method = if p["delivery"] == "home" {
                l.t("送药上门", "home delivery")
            } else {
                l.t("到店自取", "pickup")
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/pharmacy/dispense\">{}<input type=\"hidden\" name=\"prescription\" value=\"{}\"><input type=\"hidden\" name=\"pharmacy\" value=\"{}\"><button type=\"submit\" aria-label=\"{} {}\">{}</button></form></td></tr>",
                esc(&when(p["authoredOn"].as_str().unwrap_or(""))),
                esc(number),
                esc(&drugs.join("、")),
                method,
                csrf_field(&s.csrf),
                esc(number),
                esc(&pharmacy),
                l.t("调配处方", "Dispense prescription"),
                esc(number),
                l.t("调配", "Dispense")
            );
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(body, "<h2>{}</h2>", l.t("配送中的处方", "Home deliveries"));
    if deliveries.is_empty() {
        let _ = write!(body, "<p>{}</p>", l.t("暂无配送任务。", "No deliveries under way."));
    }
    body.push_str("<ul class=\"plain\">");
    for t in &deliveries {
        let id = t["id"].as_str().unwrap_or("");
        let done: Vec<&str> =
            t["output"].as_array().into_iter().flatten().filter_map(|o| o["valueString"].as_str()).collect();
        let last = done.last().copied().unwrap_or("");
        let next = match last {
            "" => Some("dispatched"),
            "dispatched" => Some("in-transit"),
            "in-transit" => Some("delivered"),
            _ => None,
        };
        let number = t["input"][0]["valueIdentifier"]["value"].as_str().unwrap_or("");
        let _ = write!(
            body,
            "<li class=\"card\"><strong>{}</strong> · {}{} · {}<strong class=\"delivery-state\">{}</strong>",
            esc(number),
            l.t("地址：", "Address: "),
            esc(t["input"][1]["valueString"].as_str().unwrap_or("")),
            l.t("状态：", "State: "),
            delivery_label(last, l)
        );
        if let Some(next) = next {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/pharmacy/deliveries/{}\">{}<input type=\"hidden\" name=\"state\" value=\"{next}\">",
                url(id),
                csrf_field(&s.csrf)
            );
            if next == "dispatched" {
                let _ = write!(
                    body,
                    "<label for=\"carrier-{0}\">{1}</label><input id=\"carrier-{0}\" name=\"carrier\"><label for=\"tracking-{0}\">{2}</label><input id=\"tracking-{0}\" name=\"trackingNumber\">",
                    esc(id),
                    l.t("承运方", "Carrier"),
                    l.t("运单号", "Tracking number")
                );
            }
            let _ = write!(
                body,
                "<button type=\"submit\" aria-label=\"{} {}\">{}{}</button></form>",
                esc(number),
                delivery_label(next, l),
                l.t("标记为", "Mark as "),
                delivery_label(next, l)
            );
        }
        body.push_str("</li>");
    }
    body.push_str("</ul>");
    render(&state, &v, &s, StatusCode::OK, title, None, notice, &body).await
}

/// `POST /pharmacy/dispense` (`prescription`, `pharmacy`).
pub async fn dispense(State(state): State<AppState>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "prescription", "valueString": form.get("prescription").cloned().unwrap_or_default()},
        {"name": "pharmacy", "valueReference": {"reference": form.get("pharmacy").cloned().unwrap_or_default()}},
    ]});
    let result = state.engine.dispense(&s.ctx, parameters).await;
    pharmacy_answer(&state, &v, &s, result, "dispensed").await
}

/// `POST /pharmacy/deliveries/{task}` (`state`, `carrier`, `trackingNumber`).
pub async fn delivery(State(state): State<AppState>, Path(task): Path<String>, request: Request) -> Response {
    let (v, s) = staff!(state, request);
    let form = match checked_form(&state, &v, &s, request).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut parameter = vec![json!({"name": "state", "valueCode": form.get("state").cloned().unwrap_or_default()})];
    for name in ["carrier", "trackingNumber"] {
        if let Some(value) = form.get(name).map(|x| x.trim()).filter(|x| !x.is_empty()) {
            parameter.push(json!({"name": name, "valueString": value}));
        }
    }
    let parameters = json!({"resourceType": "Parameters", "parameter": parameter});
    let result = state.engine.delivery_update(&s.ctx, &task, parameters).await;
    pharmacy_answer(&state, &v, &s, result, "delivery").await
}

/// After a pharmacy's action: back to the queue with a notice, or the refusal in the page
/// language.
async fn pharmacy_answer(
    state: &AppState,
    v: &crate::portal::Visit,
    s: &super::Staff,
    result: Result<Value, engine::EngineError>,
    done: &str,
) -> Response {
    match result {
        Ok(_) => redirect(&format!("/pharmacy/?done={done}"), v.cookies.clone()),
        Err(e) => {
            let l = v.lang;
            let error = engine_error(state, &e, l);
            let back = format!("<p><a href=\"/pharmacy/\">{}</a></p>", l.t("返回", "Back"));
            let title = l.t("调配与配送", "Dispensing and delivery");
            render(state, v, s, error_status(&e), title, Some(&error), None, &back).await
        }
    }
}
