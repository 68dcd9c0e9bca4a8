//! Data-quality control at collection (数据质量控制, issue 5): rules applied to every resource a
//! hospital system client writes (FHIR API, `POST /hl7v2`, `POST /cda`, transactions), a
//! scorecard per sending institution and day, and a quarantine for what blocking rules refuse.
//!
//! | rule | blocking | what |
//! |---|---|---|
//! | `future-date` | yes | a clinical date more than a day in the future |
//! | `period-order` | yes | a period that ends before it starts |
//! | `implausible-birth` | yes | a birth date before 1900 |
//! | `missing-element` | no | a required data element is absent (per resource type) |
//! | `id-checksum` | no | a national ID number failing GB 11643 (stored as sent, never corrected) |
//! | `implausible-value` | no | a vital sign or glucose outside a physiological range |
//! | `icd10-format` | no | an ICD-10 code that is not shaped like one |
//! | `late-report` | no | the event is older than the reporting deadline (72 hours) when received |
//!
//! A blocking finding refuses the whole write (422 naming each finding) and keeps each refused
//! resource in the quarantine with its reasons, visible to the sending institution, which can
//! send a corrected version through it (`POST /quality/quarantine/{id}/reprocess`) or discard it.
//! Nothing is altered: non-blocking findings are counted, the data is stored as sent.
//!
//! What could not even be read as resources is held there too, as the bytes received
//! ([`RawHold`]: a refused CDA document, an HL7 v2 message that was not committed). A held
//! document is retried by the engine itself; other kinds are processed again by the
//! [`RawReprocessor`] the binary installs for them (`hutong serve`: `HL7v2Message`).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use fhir::{Issue, IssueType};
use serde_json::{Value, json};
use store::{Ctx, WriteOp};

use crate::crud::now_ms;
use crate::{Engine, EngineError, EngineResult, RequestOptions, audit};

const SCORE_KIND: &str = "quality-day";
const QUARANTINE_KIND: &str = "quality-quarantine";
/// Events older than this when received are late.
pub const REPORTING_DEADLINE_HOURS: i64 = 72;
const DAY_MS: i64 = 86_400_000;
/// How often counts gathered in memory are written to the scorecards.
const FLUSH_MS: i64 = 2_000;

/// One institution-day's counts not yet written.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    received: u64,
    blocked: u64,
    warned: u64,
    rules: std::collections::BTreeMap<String, u64>,
}

/// The counts gathered in memory by institution-day, and when they were last written (ms).
pub(crate) type PendingCounts = std::sync::Mutex<(std::collections::HashMap<String, Counts>, i64)>;

/// Something received that could not be read or committed as resources, to keep in the
/// quarantine as the bytes received ([`Engine::quarantine_hold`]).
#[derive(Debug, Clone)]
pub struct RawHold {
    /// What it is (`ClinicalDocument`, `HL7v2Message`); a [`RawReprocessor`] is installed per kind.
    pub kind: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    /// The sending institution's identifier as the content names it (HL7 MSH-4-1), which
    /// places the entry when the caller has no organization (the MLLP listener).
    pub sender: Option<String>,
    pub findings: Vec<RawFinding>,
    /// What tells entries apart and what processing them again needs (e.g. MSH-4, MSH-9,
    /// MSH-10 and the character set assumed), kept as `details`.
    pub details: Value,
}

/// One reason a raw entry is held: a rule name, the message for people, and codes of the
/// content's own vocabulary (e.g. `{"ackCode": "AE", "errorCode": "102"}`), merged into it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFinding {
    pub rule: String,
    pub message: String,
    pub codes: serde_json::Map<String, Value>,
}

impl RawFinding {
    fn to_json(&self) -> Value {
        let mut finding = json!({"rule": self.rule, "blocking": true, "message": self.message});
        for (k, v) in &self.codes {
            finding[k.as_str()] = v.clone();
        }
        finding
    }
}

/// A held raw entry, as a [`RawReprocessor`] gets it.
#[derive(Debug, Clone, Copy)]
pub struct HeldRaw<'a> {
    pub id: &'a str,
    /// The bytes as received.
    pub bytes: &'a [u8],
    /// The whole entry (its `details`, `findings`, `organization`).
    pub entry: &'a Value,
}

/// Why processing a held entry again failed: the error the caller gets, and the reasons that
/// replace the entry's (none when the request itself was wrong, e.g. a malformed correction:
/// the entry is left as it was).
#[derive(Debug)]
pub struct RawRefusal {
    pub error: EngineError,
    pub findings: Vec<RawFinding>,
}

/// Processes a held raw entry of one kind again (`POST /quality/quarantine/{id}/reprocess`), as
/// the caller, with the same processing it first failed: the held bytes, or the caller's
/// correction (`corrected`, the request's JSON body, whose shape the kind defines). Answers
/// what to report on success; the engine then removes the entry. A failure must not keep
/// anything itself: the engine updates the entry with the refusal's findings. The binary
/// installs one per kind ([`Engine::install_reprocessor`]), since the processing (e.g. HL7 v2)
/// lives in crates the engine does not depend on.
#[async_trait::async_trait]
pub trait RawReprocessor: Send + Sync {
    async fn reprocess(
        &self,
        engine: &Engine,
        ctx: &Ctx,
        held: HeldRaw<'_>,
        corrected: Option<&Value>,
    ) -> Result<Value, RawRefusal>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: &'static str,
    pub blocking: bool,
    pub element: String,
    pub message: String,
}

fn finding(rule: &'static str, blocking: bool, element: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding { rule, blocking, element: element.into(), message: message.into() }
}

/// Milliseconds of a FHIR date or dateTime (a date is its first instant, China time).
fn millis(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    let date = match text.len() {
        4 => NaiveDate::parse_from_str(&format!("{text}-01-01"), "%Y-%m-%d").ok(),
        7 => NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok(),
        _ => NaiveDate::parse_from_str(text, "%Y-%m-%d").ok(),
    }?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis() - 8 * 3_600_000)
}

/// The clinical event dates of a resource type (element, JSON path).
const EVENT_DATES: &[(&str, &[&str])] = &[
    ("Encounter.period.start", &["period", "start"]),
    ("Observation.effectiveDateTime", &["effectiveDateTime"]),
    ("Observation.effectivePeriod.start", &["effectivePeriod", "start"]),
    ("Observation.issued", &["issued"]),
    ("Condition.onsetDateTime", &["onsetDateTime"]),
    ("Condition.recordedDate", &["recordedDate"]),
    ("MedicationRequest.authoredOn", &["authoredOn"]),
    ("DiagnosticReport.effectiveDateTime", &["effectiveDateTime"]),
    ("DiagnosticReport.issued", &["issued"]),
    ("Procedure.performedDateTime", &["performedDateTime"]),
    ("Immunization.occurrenceDateTime", &["occurrenceDateTime"]),
];

/// Physiological ranges by LOINC code: (code, low, high, what).
const RANGES: &[(&str, f64, f64, &str)] = &[
    ("8480-6", 40.0, 300.0, "systolic blood pressure (mmHg)"),
    ("8462-4", 20.0, 200.0, "diastolic blood pressure (mmHg)"),
    ("8867-4", 20.0, 300.0, "heart rate (/min)"),
    ("8310-5", 30.0, 45.0, "body temperature (°C)"),
    ("29463-7", 0.2, 500.0, "body weight (kg)"),
    ("8302-2", 20.0, 260.0, "body height (cm)"),
    ("2339-0", 0.5, 50.0, "blood glucose (mmol/L)"),
    ("15074-8", 0.5, 50.0, "blood glucose (mmol/L)"),
];

fn at<'a>(body: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(body, |v, k| &v[*k])
}

pub(crate) fn is_icd10(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() >= 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && (b[2].is_ascii_digit() || b[2].is_ascii_uppercase())
        && (b.len() == 3 || (b[3] == b'.' && b.len() > 4 && b[4..].iter().all(|c| c.is_ascii_alphanumeric())))
}

/// The findings for one resource received at `now` (ms).
pub fn check(resource_type: &str, body: &Value, now: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    for (element, path) in EVENT_DATES.iter().filter(|(e, _)| e.starts_with(&format!("{resource_type}."))) {
        let Some(text) = at(body, path).as_str() else { continue };
        let Some(t) = millis(text) else { continue };
        if t > now + DAY_MS {
            out.push(finding(
                "future-date",
                true,
                *element,
                format!("{element} {text} is in the future (日期晚于当前时间)"),
            ));
        } else if now - t > REPORTING_DEADLINE_HOURS * 3_600_000 && !element.ends_with("recordedDate") {
            out.push(finding(
                "late-report",
                false,
                *element,
                format!("{element} {text} was reported more than {REPORTING_DEADLINE_HOURS} hours after the event (超过上报时限)"),
            ));
        }
    }
    for (element, period) in
        [("Encounter.period", &body["period"]), ("Observation.effectivePeriod", &body["effectivePeriod"])]
    {
        if !element.starts_with(resource_type) {
            continue;
        }
        if let (Some(s), Some(e)) = (period["start"].as_str().and_then(millis), period["end"].as_str().and_then(millis))
            && e < s
        {
            out.push(finding(
                "period-order",
                true,
                element,
                format!("{element} ends before it starts (结束时间早于开始时间)"),
            ));
        }
    }
    let require = |out: &mut Vec<Finding>, present: bool, element: &str| {
        if !present {
            out.push(finding("missing-element", false, element, format!("{element} is missing (必填数据元缺失)")));
        }
    };
    match resource_type {
        "Patient" => {
            require(&mut out, body["name"].as_array().is_some_and(|n| !n.is_empty()), "Patient.name");
            require(&mut out, body["gender"].is_string(), "Patient.gender");
            require(&mut out, body["birthDate"].is_string(), "Patient.birthDate");
            require(&mut out, body["identifier"].as_array().is_some_and(|i| !i.is_empty()), "Patient.identifier");
            if let Some(b) = body["birthDate"].as_str().and_then(millis) {
                if b > now + DAY_MS {
                    out.push(finding(
                        "future-date",
                        true,
                        "Patient.birthDate",
                        "Patient.birthDate is in the future (出生日期晚于当前日期)",
                    ));
                } else if b < millis("1900-01-01").unwrap_or(0) {
                    out.push(finding(
                        "implausible-birth",
                        true,
                        "Patient.birthDate",
                        "Patient.birthDate is before 1900 (出生日期不合理)",
                    ));
                }
            }
            for (i, id) in body["identifier"].as_array().into_iter().flatten().enumerate() {
                if id["system"] == crate::mpi::ID_NUMBER_SYSTEM
                    && let Some(v) = id["value"].as_str()
                    && let Err(e) = crypto::idnum::validate(v)
                {
                    out.push(finding(
                        "id-checksum",
                        false,
                        format!("Patient.identifier[{i}]"),
                        format!("the ID number fails GB 11643: {e} (身份证号校验不通过)"),
                    ));
                }
            }
        }
        "Encounter" => {
            require(&mut out, body["subject"]["reference"].is_string(), "Encounter.subject");
            require(&mut out, body["period"]["start"].is_string(), "Encounter.period.start");
            require(&mut out, body["serviceProvider"]["reference"].is_string(), "Encounter.serviceProvider");
        }
        "Observation" => {
            require(&mut out, body["subject"]["reference"].is_string(), "Observation.subject");
            require(
                &mut out,
                body["effectiveDateTime"].is_string()
                    || body["effectivePeriod"].is_object()
                    || body["effectiveInstant"].is_string(),
                "Observation.effective[x]",
            );
            let mut measured: Vec<(&Value, &Value, String)> =
                vec![(&body["code"], &body["valueQuantity"], "Observation.valueQuantity".into())];
            for (i, c) in body["component"].as_array().into_iter().flatten().enumerate() {
                measured.push((&c["code"], &c["valueQuantity"], format!("Observation.component[{i}].valueQuantity")));
            }
            for (code, quantity, element) in measured {
                let Some(value) = quantity["value"].as_f64() else { continue };
                for coding in
                    code["coding"].as_array().into_iter().flatten().filter(|c| c["system"] == "http://loinc.org")
                {
                    if let Some((_, lo, hi, what)) = RANGES.iter().find(|r| coding["code"] == r.0)
                        && !(*lo..=*hi).contains(&value)
                    {
                        out.push(finding(
                            "implausible-value",
                            false,
                            element.clone(),
                            format!("{what} {value} is outside {lo}–{hi} (数值超出合理范围)"),
                        ));
                    }
                }
            }
        }
        "Condition" => {
            require(&mut out, body["subject"]["reference"].is_string(), "Condition.subject");
            require(
                &mut out,
                body["code"]["coding"].as_array().is_some_and(|c| !c.is_empty()),
                "Condition.code.coding",
            );
            for (i, c) in body["code"]["coding"].as_array().into_iter().flatten().enumerate() {
                if c["system"] == "http://hl7.org/fhir/sid/icd-10"
                    && let Some(code) = c["code"].as_str()
                    && !is_icd10(code)
                {
                    out.push(finding(
                        "icd10-format",
                        false,
                        format!("Condition.code.coding[{i}]"),
                        format!("'{code}' is not an ICD-10 code (疾病编码格式错误)"),
                    ));
                }
            }
        }
        _ => {}
    }
    out
}

fn day_of(now: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(now + 8 * 3_600_000)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

impl Engine {
    /// The quality gate of a hospital feed's commit: blocking findings refuse it (and quarantine
    /// the resources); the counts go to the institution's scorecard of the day.
    pub(crate) async fn quality_gate(&self, ctx: &Ctx, ops: &[WriteOp]) -> EngineResult<()> {
        let Some(principal) = ctx.principal.as_deref().filter(|p| p.role == access::Role::System) else {
            return Ok(());
        };
        let organization = principal.organization.clone().unwrap_or_else(|| "unknown".into());
        let now = now_ms();
        let mut blocked: Vec<(String, Value, Vec<Finding>)> = Vec::new();
        let mut warned = 0u64;
        let mut rules: Vec<&'static str> = Vec::new();
        let mut received = 0u64;
        for op in ops {
            let Some(body) = parsed_body(op) else { continue };
            received += 1;
            let findings = check(&op.resource_type, &body, now);
            rules.extend(findings.iter().map(|f| f.rule));
            if findings.iter().any(|f| f.blocking) {
                blocked.push((op.resource_type.clone(), body.into_owned(), findings));
            } else if !findings.is_empty() {
                warned += 1;
            }
        }
        if received == 0 {
            return Ok(());
        }
        self.score(&organization, now, received, blocked.len() as u64, warned, &rules).await?;
        if blocked.is_empty() {
            return Ok(());
        }
        let mut issues = Vec::new();
        for (resource_type, body, findings) in &blocked {
            let id = format!("{organization}|{now:013}|{}", uuid::Uuid::new_v4());
            let record = json!({"id": id, "organization": organization, "received": fhir::normalize::format_instant(now),
                "status": "held", "resourceType": resource_type, "resource": body,
                "findings": findings.iter().map(|f| json!({"rule": f.rule, "blocking": f.blocking, "element": f.element, "message": f.message})).collect::<Vec<_>>()});
            self.store.kv_put(QUARANTINE_KIND, &id, &record.to_string(), &[]).await?;
            for f in findings.iter().filter(|f| f.blocking) {
                let mut issue =
                    Issue::error(IssueType::BusinessRule, format!("[{}] {} (quarantined as {id})", f.rule, f.message));
                issue.expression = Some(f.element.clone());
                issues.push(issue);
            }
        }
        let reason = format!("{} resource(s) quarantined by blocking data-quality rules", blocked.len());
        self.audit_block(ctx, &reason).await?;
        Err(EngineError::Unprocessable(issues))
    }

    /// Adds to the day's counts in memory; they reach the store at most a few seconds later
    /// (every `FLUSH_MS`, and before any scorecard is read), so the gate costs no write per
    /// commit. A crash loses at most those seconds of counts, never data.
    async fn score(
        &self,
        organization: &str,
        now: i64,
        received: u64,
        blocked: u64,
        warned: u64,
        rules: &[&str],
    ) -> EngineResult<()> {
        let due = {
            let mut pending = self
                .quality_counts
                .lock()
                .map_err(|_| EngineError::bad_request(IssueType::Exception, "quality counters poisoned"))?;
            let card = pending.0.entry(format!("{organization}|{}", day_of(now))).or_default();
            card.received += received;
            card.blocked += blocked;
            card.warned += warned;
            for rule in rules {
                *card.rules.entry((*rule).to_string()).or_default() += 1;
            }
            let due = now - pending.1 >= FLUSH_MS;
            if due {
                pending.1 = now;
            }
            due
        };
        if due { self.quality_flush().await } else { Ok(()) }
    }

    /// Writes the counts gathered in memory into the stored scorecards.
    pub(crate) async fn quality_flush(&self) -> EngineResult<()> {
        let _serial = self.quality.lock().await;
        let taken = match self.quality_counts.lock() {
            Ok(mut pending) => std::mem::take(&mut pending.0),
            Err(_) => return Err(EngineError::bad_request(IssueType::Exception, "quality counters poisoned")),
        };
        for (id, counts) in taken {
            let mut card: Value = match self.store.kv_get(SCORE_KIND, &id).await? {
                Some(text) => serde_json::from_str(&text).unwrap_or_else(|_| json!({})),
                None => json!({}),
            };
            for (key, n) in [("received", counts.received), ("blocked", counts.blocked), ("warned", counts.warned)] {
                card[key] = json!(card[key].as_u64().unwrap_or(0) + n);
            }
            for (rule, n) in counts.rules {
                card["rules"][rule.as_str()] = json!(card["rules"][rule.as_str()].as_u64().unwrap_or(0) + n);
            }
            self.store.kv_put(SCORE_KIND, &id, &card.to_string(), &[]).await?;
        }
        Ok(())
    }

    /// Who may see an institution's quality data: its own system clients, operators, regulators.
    async fn quality_reader(&self, ctx: &Ctx, organization: &str, action: &str) -> EngineResult<()> {
        let allowed = |p: &access::Principal| match p.role {
            access::Role::Operator | access::Role::Regulator => true,
            access::Role::System => p.organization.as_deref().is_none_or(|o| o == organization),
            _ => false,
        };
        self.require(
            ctx,
            allowed,
            action,
            format!("quality/{organization}"),
            "quality data is the sending institution's and the operators'",
        )
        .await
    }

    /// `GET /quality/scorecard?organization=…&from=…&to=…`: per day, records received, blocked,
    /// with warnings, the share passing clean, and the findings by rule.
    pub async fn quality_scorecard(&self, ctx: &Ctx, organization: &str, from: &str, to: &str) -> EngineResult<Value> {
        self.quality_reader(ctx, organization, "quality-scorecard").await?;
        self.quality_flush().await?;
        let mut days = Vec::new();
        // Ids sort by institution then day; `kv_list` starts after the given id.
        for (id, text) in self.store.kv_list(SCORE_KIND, &format!("{organization}|"), 10_000).await? {
            let Some(day) = id.strip_prefix(&format!("{organization}|")) else { break };
            if day < from {
                continue;
            }
            if day > to {
                break;
            }
            let card: Value = serde_json::from_str(&text).unwrap_or_default();
            let received = card["received"].as_u64().unwrap_or(0);
            let clean =
                received.saturating_sub(card["blocked"].as_u64().unwrap_or(0) + card["warned"].as_u64().unwrap_or(0));
            days.push(json!({"date": day, "received": received, "blocked": card["blocked"], "warned": card["warned"],
                "clean": clean, "cleanRate": if received == 0 { Value::Null } else { json!((clean as f64 / received as f64 * 10_000.0).round() / 10_000.0) },
                "rules": card["rules"]}));
        }
        let record =
            audit::record(ctx, "quality-scorecard", "success", format!("quality/{organization}"), Vec::new(), None);
        self.audit.append(record).await?;
        Ok(json!({"organization": organization, "from": from, "to": to, "days": days}))
    }

    /// Keeps a refused CDA document in the quarantine ([`Engine::quarantine_hold`]) with one rule
    /// for its reasons. Answers the entry's id.
    pub(crate) async fn quarantine_raw(
        &self,
        ctx: &Ctx,
        kind: &str,
        content_type: &str,
        bytes: &[u8],
        rule: &str,
        reasons: &[String],
    ) -> EngineResult<String> {
        let findings = reasons
            .iter()
            .map(|m| RawFinding { rule: rule.to_string(), message: m.clone(), codes: serde_json::Map::new() })
            .collect();
        let hold = RawHold {
            kind: kind.to_string(),
            content_type: content_type.to_string(),
            bytes: bytes.to_vec(),
            sender: None,
            findings,
            details: Value::Null,
        };
        self.quarantine_hold(ctx, &hold).await
    }

    /// Keeps something refused before it could be committed as resources (a CDA document, an
    /// HL7 v2 message) in the quarantine: the bytes as received (base64), the reasons, the
    /// details. The entry belongs to the caller's institution; a caller without one (the MLLP
    /// listener) places it with the Organization whose identifier is `hold.sender`, when
    /// exactly one has it, and under `unknown` otherwise (operators see those). The entry and
    /// its audit record commit together before this answers the entry's id, so a refusal that
    /// names the entry never names one that is not there.
    pub async fn quarantine_hold(&self, ctx: &Ctx, hold: &RawHold) -> EngineResult<String> {
        let organization = match ctx.principal.as_deref().and_then(|p| p.organization.clone()) {
            Some(own) => own,
            None => match hold.sender.as_deref().filter(|s| !s.trim().is_empty()) {
                Some(sender) => self.organization_with_identifier(sender).await?.unwrap_or_else(|| "unknown".into()),
                None => "unknown".into(),
            },
        };
        let now = now_ms();
        let id = format!("{organization}|{now:013}|{}", uuid::Uuid::new_v4());
        let mut record = json!({"id": id, "organization": organization, "received": fhir::normalize::format_instant(now),
            "status": "held", "resourceType": hold.kind, "contentType": hold.content_type, "data": crypto::base64(&hold.bytes),
            "findings": hold.findings.iter().map(RawFinding::to_json).collect::<Vec<_>>()});
        if !hold.details.is_null() {
            record["details"] = hold.details.clone();
        }
        let rules: Vec<&str> = hold.findings.iter().map(|f| f.rule.as_str()).collect();
        let reason = format!("{} quarantined as {id}: {}", hold.kind, rules.join(", "));
        let audit =
            audit::record(ctx, "quality-block", "failure", "quality/quarantine".into(), Vec::new(), Some(&reason));
        self.store.kv_put_audited(QUARANTINE_KIND, &id, &record.to_string(), &[], vec![audit]).await?;
        Ok(id)
    }

    /// The id of the one Organization with an identifier of this value (any system), if
    /// exactly one has it. A store lookup rather than a search as the caller: it only places
    /// a quarantine entry (nothing is disclosed to the caller), Organizations are reference
    /// data outside any patient's records, and the MLLP listener's scopes deliberately reach
    /// only what its mappings write.
    async fn organization_with_identifier(&self, value: &str) -> EngineResult<Option<String>> {
        let mut escaped = String::new();
        for c in value.trim().chars() {
            if matches!(c, '\\' | ',' | '|' | '$') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        let pairs = [("identifier".to_string(), escaped), ("_count".to_string(), "2".to_string())];
        let parsed = fhir::search::parse(self.defs, Some("Organization"), &pairs, &self.parse_options(false))
            .map_err(EngineError::BadRequest)?;
        let query = fhir::search::SearchQuery { total: fhir::search::TotalMode::None, ..parsed.query };
        let found = self.store.search(&Ctx::system(), &query).await?.resources;
        Ok(match found.as_slice() {
            [one] => Some(one.id.clone()),
            _ => None,
        })
    }

    /// Audits what the quarantine took in.
    async fn audit_block(&self, ctx: &Ctx, reason: &str) -> EngineResult<()> {
        let record =
            audit::record(ctx, "quality-block", "failure", "quality/quarantine".into(), Vec::new(), Some(reason));
        Ok(self.audit.append(record).await?)
    }

    /// `GET /quality/quarantine?organization=…`: what blocking rules held back, newest last.
    pub async fn quality_quarantine(&self, ctx: &Ctx, organization: &str) -> EngineResult<Value> {
        self.quality_reader(ctx, organization, "quality-quarantine").await?;
        let mut held = Vec::new();
        for (id, text) in self.store.kv_list(QUARANTINE_KIND, &format!("{organization}|"), 1000).await? {
            if !id.starts_with(&format!("{organization}|")) {
                break;
            }
            held.push(serde_json::from_str::<Value>(&text).unwrap_or_default());
        }
        let record =
            audit::record(ctx, "quality-quarantine", "success", format!("quality/{organization}"), Vec::new(), None);
        self.audit.append(record).await?;
        Ok(json!({"organization": organization, "held": held}))
    }

    /// `POST /quality/quarantine/{id}/reprocess` with the corrected resource (or no body to
    /// retry it as held): written as the caller, through the same gate; on success the held
    /// record is removed. `DELETE /quality/quarantine/{id}` discards it.
    pub async fn quality_reprocess(
        &self,
        ctx: &Ctx,
        id: &str,
        corrected: Option<Value>,
        opts: &RequestOptions,
    ) -> EngineResult<Value> {
        let text = self
            .store
            .kv_get(QUARANTINE_KIND, id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("quarantined record {id}")))?;
        let held: Value =
            serde_json::from_str(&text).map_err(|e| EngineError::bad_request(IssueType::Exception, e.to_string()))?;
        let organization = held["organization"].as_str().unwrap_or_default().to_string();
        self.quality_reader(ctx, &organization, "quality-reprocess").await?;
        if held["resourceType"] == "ClinicalDocument" {
            // A document is retried as received (after the platform was fixed); a corrected
            // document is sent to POST /cda again, and the held one discarded.
            if corrected.is_some() {
                return Err(EngineError::bad_request(
                    IssueType::NotSupported,
                    "a held CDA document is reprocessed as received (no body); send a corrected document to POST /cda",
                ));
            }
            let bytes = crypto::unbase64(held["data"].as_str().unwrap_or_default())
                .map_err(|e| EngineError::bad_request(IssueType::Exception, format!("held document: {e}")))?;
            // Not through `ingest_cda`: a document refused again stays this one entry.
            let transaction = crate::documents::cda_transaction(&bytes)?;
            let answer = Box::pin(self.bundle(ctx, transaction, opts)).await?;
            self.store.kv_delete(QUARANTINE_KIND, id).await?;
            return Ok(json!({"reprocessed": id, "response": answer}));
        }
        if held["data"].is_string() {
            return self.reprocess_raw(ctx, id, held, corrected.as_ref()).await;
        }
        let resource = corrected.unwrap_or_else(|| held["resource"].clone());
        let resource_type = resource["resourceType"].as_str().unwrap_or_default().to_string();
        if resource_type != held["resourceType"].as_str().unwrap_or_default() {
            return Err(EngineError::bad_request(
                IssueType::Invalid,
                format!("the corrected resource must be a {}", held["resourceType"]),
            ));
        }
        let outcome = match resource["id"].as_str().map(str::to_string) {
            Some(rid) => self.update(ctx, &resource_type, &rid, resource, opts).await?,
            None => self.create(ctx, &resource_type, resource, opts).await?,
        };
        self.store.kv_delete(QUARANTINE_KIND, id).await?;
        Ok(
            json!({"reprocessed": id, "resource": format!("{}/{}", outcome.resource.resource_type, outcome.resource.id), "version": outcome.resource.version}),
        )
    }

    /// Installs what processes held entries of `kind` again (the last one installed wins).
    pub fn install_reprocessor(&self, kind: &str, reprocessor: Arc<dyn RawReprocessor>) {
        if let Ok(mut installed) = self.reprocessors.write() {
            installed.insert(kind.to_string(), reprocessor);
        }
    }

    /// A held raw entry processed again by its kind's [`RawReprocessor`], as the caller: on
    /// success the entry is removed; on failure it stays with the new reasons and the caller
    /// gets the refusal (plus where the entry is). Audited either way.
    async fn reprocess_raw(
        &self,
        ctx: &Ctx,
        id: &str,
        mut held: Value,
        corrected: Option<&Value>,
    ) -> EngineResult<Value> {
        let kind = held["resourceType"].as_str().unwrap_or_default().to_string();
        let reprocessor = self.reprocessors.read().ok().and_then(|r| r.get(&kind).cloned());
        let Some(reprocessor) = reprocessor else {
            return Err(EngineError::NotSupported(format!(
                "reprocessing held {kind} entries here (this process has no {kind} processing installed: \
                 `hutong serve` installs it; or discard the entry and have the content sent again)"
            )));
        };
        let bytes = crypto::unbase64(held["data"].as_str().unwrap_or_default())
            .map_err(|e| EngineError::bad_request(IssueType::Exception, format!("held {kind}: {e}")))?;
        let entity = format!("quality/quarantine/{id}");
        let result = reprocessor.reprocess(self, ctx, HeldRaw { id, bytes: &bytes, entry: &held }, corrected).await;
        match result {
            Ok(answer) => {
                self.store.kv_delete(QUARANTINE_KIND, id).await?;
                let record = audit::record(ctx, "quality-reprocess", "success", entity, Vec::new(), None);
                self.audit.append(record).await?;
                Ok(json!({"reprocessed": id, "resourceType": kind, "corrected": corrected.is_some(), "result": answer}))
            }
            Err(RawRefusal { error, findings }) => {
                let why = if findings.is_empty() {
                    error.issues().first().map(|i| i.diagnostics.clone()).unwrap_or_default()
                } else {
                    findings.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>().join(", ")
                };
                let reason = format!("{kind} not reprocessed: {why}");
                let record = audit::record(ctx, "quality-reprocess", "failure", entity, Vec::new(), Some(&reason));
                if findings.is_empty() {
                    self.audit.append(record).await?;
                    return Err(error);
                }
                held["findings"] = findings.iter().map(RawFinding::to_json).collect();
                let subject = ctx.principal.as_deref().map(|p| p.subject.clone()).unwrap_or_default();
                held["lastAttempt"] = json!({"at": fhir::normalize::format_instant(now_ms()), "by": subject,
                    "corrected": corrected.is_some()});
                self.store.kv_put_audited(QUARANTINE_KIND, id, &held.to_string(), &[], vec![record]).await?;
                Err(with_note(error, format!("the {kind} stays in the quarantine as {id}, with these reasons")))
            }
        }
    }

    pub async fn quality_discard(&self, ctx: &Ctx, id: &str) -> EngineResult<()> {
        let text = self
            .store
            .kv_get(QUARANTINE_KIND, id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("quarantined record {id}")))?;
        let held: Value = serde_json::from_str(&text).unwrap_or_default();
        self.quality_reader(ctx, held["organization"].as_str().unwrap_or_default(), "quality-discard").await?;
        self.store.kv_delete(QUARANTINE_KIND, id).await?;
        let record =
            audit::record(ctx, "quality-discard", "success", format!("quality/quarantine/{id}"), Vec::new(), None);
        Ok(self.audit.append(record).await?)
    }
}

/// The error with an informational issue added (where the refused content is kept).
fn with_note(error: EngineError, note: String) -> EngineError {
    let mut issue = Issue::error(IssueType::Informational, note);
    issue.severity = fhir::IssueSeverity::Information;
    match error {
        EngineError::BadRequest(mut issues) => {
            issues.push(issue);
            EngineError::BadRequest(issues)
        }
        EngineError::Unprocessable(mut issues) => {
            issues.push(issue);
            EngineError::Unprocessable(issues)
        }
        other => other,
    }
}

/// An op's body as JSON: the engine's parsed copy when it has one, else parsed from the text.
pub(crate) fn parsed_body(op: &WriteOp) -> Option<std::borrow::Cow<'_, Value>> {
    match &op.parsed {
        Some(parsed) => Some(std::borrow::Cow::Borrowed(parsed.as_ref())),
        None => op.body.as_deref().and_then(|b| serde_json::from_str(b).ok()).map(std::borrow::Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_083_200_000; // 2026-12-01T00:00:00Z

    fn rules(resource_type: &str, body: Value) -> Vec<(&'static str, bool)> {
        check(resource_type, &body, NOW).into_iter().map(|f| (f.rule, f.blocking)).collect()
    }

    #[test]
    fn each_rule_with_a_passing_and_a_failing_case() {
        let good = json!({"name": [{"text": "林测试"}], "gender": "male", "birthDate": "1980-02-03",
            "identifier": [{"system": crate::mpi::ID_NUMBER_SYSTEM, "value": "11010519491231002X"}]});
        assert_eq!(rules("Patient", good.clone()), []);
        let mut bad = good.clone();
        bad["identifier"][0]["value"] = json!("110105194912310021");
        assert_eq!(rules("Patient", bad), [("id-checksum", false)]);
        assert_eq!(rules("Patient", json!({"birthDate": "2030-01-01"})).iter().filter(|r| r.1).count(), 1);
        assert!(
            rules("Patient", json!({"birthDate": "1850-01-01", "name": [{}], "gender": "male", "identifier": [{}]}))
                .contains(&("implausible-birth", true))
        );
        assert_eq!(rules("Patient", json!({})).iter().filter(|r| r.0 == "missing-element").count(), 4);

        let visit = json!({"subject": {"reference": "Patient/p"}, "serviceProvider": {"reference": "Organization/h"},
            "period": {"start": "2026-11-30T09:00:00+08:00", "end": "2026-11-30T10:00:00+08:00"}});
        assert_eq!(rules("Encounter", visit.clone()), []);
        let mut reversed = visit.clone();
        reversed["period"]["end"] = json!("2026-11-30T08:00:00+08:00");
        assert_eq!(rules("Encounter", reversed), [("period-order", true)]);
        let mut future = visit.clone();
        future["period"]["start"] = json!("2026-12-05T09:00:00+08:00");
        future["period"].as_object_mut().unwrap().remove("end");
        assert_eq!(rules("Encounter", future), [("future-date", true)]);
        let mut late = visit;
        late["period"] = json!({"start": "2026-11-20T09:00:00+08:00"});
        assert_eq!(rules("Encounter", late), [("late-report", false)]);

        let bp = |systolic: f64| {
            json!({"subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-11-30T09:00:00+08:00",
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": systolic}}]})
        };
        assert_eq!(rules("Observation", bp(150.0)), []);
        assert_eq!(rules("Observation", bp(1500.0)), [("implausible-value", false)]);

        let dx = |code: &str| json!({"subject": {"reference": "Patient/p"}, "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]}});
        assert_eq!(rules("Condition", dx("I10")), []);
        assert_eq!(rules("Condition", dx("E11.9")), []);
        assert_eq!(rules("Condition", dx("高血压")), [("icd10-format", false)]);
    }
}
