//! The booking-rate KPI (预约诊疗率; seed 003 (三): at least 90% of non-emergency outpatient visits
//! at tertiary hospitals booked ahead), computed from the data: outpatient Encounters (class
//! `AMB`; emergency `EMER` and inpatient stays do not count) whose period starts in the asked
//! range, grouped by hospital (`serviceProvider`) and department (`serviceType`, else "未分科");
//! a visit counts as booked ahead when it references its Appointment (`Encounter.appointment`,
//! as hospital systems record it and as the platform's check-in leaves it). Tertiary hospitals
//! are those whose institution level (`registry::facility`) starts with 3.
//!
//! `GET /kpi/booking-rate?from=YYYY-MM-DD&to=YYYY-MM-DD`: regulators, operators and system
//! clients; aggregates only, no person appears; audited.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use store::Ctx;

use crate::{Engine, EngineError, EngineResult, audit};

/// The seed's target share for tertiary hospitals.
pub const BOOKING_RATE_TARGET: f64 = 0.90;

#[derive(Default)]
struct Tally {
    visits: u64,
    booked: u64,
}

impl Tally {
    fn json(&self) -> Value {
        let rate = if self.visits == 0 {
            Value::Null
        } else {
            json!((self.booked as f64 / self.visits as f64 * 10_000.0).round() / 10_000.0)
        };
        json!({"visits": self.visits, "bookedAhead": self.booked, "rate": rate})
    }
}

fn date_param(value: &str, name: &str) -> EngineResult<String> {
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").map(|d| d.to_string()).map_err(|_| {
        EngineError::bad_request(fhir::IssueType::Value, format!("'{name}' must be a date YYYY-MM-DD, not '{value}'"))
    })
}

impl Engine {
    /// The KPI over visits starting between `from` and `to` (inclusive dates).
    pub async fn booking_rate(&self, ctx: &Ctx, from: &str, to: &str) -> EngineResult<Value> {
        let allowed = |p: &access::Principal| {
            matches!(p.role, access::Role::Regulator | access::Role::Operator | access::Role::System)
        };
        self.require(
            ctx,
            allowed,
            "kpi-booking-rate",
            "kpi/booking-rate".into(),
            "KPIs are for regulators and operators",
        )
        .await?;
        let (from, to) = (date_param(from, "from")?, date_param(to, "to")?);
        if from > to {
            return Err(EngineError::bad_request(
                fhir::IssueType::Value,
                format!("'from' ({from}) is after 'to' ({to})"),
            ));
        }
        let (ge, le) = (format!("ge{from}"), format!("le{to}"));
        let encounters =
            self.scan("Encounter", &[("date", ge.as_str()), ("date", le.as_str()), ("class", "AMB")]).await?;
        let mut by_hospital: BTreeMap<String, (Tally, BTreeMap<String, Tally>)> = BTreeMap::new();
        for stored in &encounters {
            let Some(e) = stored.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()) else { continue };
            if e["status"] == "cancelled" || e["status"] == "entered-in-error" {
                continue;
            }
            let hospital = e["serviceProvider"]["reference"].as_str().unwrap_or("unknown").to_string();
            let department = e["serviceType"]["text"]
                .as_str()
                .or_else(|| e["serviceType"]["coding"][0]["display"].as_str())
                .unwrap_or("未分科")
                .to_string();
            let booked = e["appointment"].as_array().is_some_and(|a| !a.is_empty());
            let (total, departments) = by_hospital.entry(hospital).or_default();
            let dept = departments.entry(department).or_default();
            for t in [total, dept] {
                t.visits += 1;
                t.booked += u64::from(booked);
            }
        }
        let mut hospitals = Vec::new();
        let mut tertiary = Tally::default();
        for (reference, (total, departments)) in &by_hospital {
            let org = match reference.strip_prefix("Organization/") {
                Some(id) => self.store.read(&Ctx::system(), "Organization", id).await?,
                None => None,
            };
            let org = org.and_then(|r| r.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()));
            let level = org.as_ref().and_then(|o| {
                o["extension"]
                    .as_array()?
                    .iter()
                    .find(|x| x["url"] == registry::facility::INSTITUTION_LEVEL_EXTENSION)?["valueCoding"]["code"]
                    .as_str()
                    .map(str::to_string)
            });
            let is_tertiary = level.as_deref().is_some_and(|l| l.starts_with('3'));
            if is_tertiary {
                tertiary.visits += total.visits;
                tertiary.booked += total.booked;
            }
            let mut row = total.json();
            row["organization"] = json!(reference);
            row["name"] = org.as_ref().map_or(Value::Null, |o| o["name"].clone());
            row["level"] = json!(level);
            row["tertiary"] = json!(is_tertiary);
            row["departments"] = departments
                .iter()
                .map(|(name, t)| {
                    let mut d = t.json();
                    d["department"] = json!(name);
                    d
                })
                .collect();
            hospitals.push(row);
        }
        let mut summary = tertiary.json();
        summary["target"] = json!(BOOKING_RATE_TARGET);
        summary["met"] = match summary["rate"].as_f64() {
            Some(rate) => json!(rate >= BOOKING_RATE_TARGET),
            None => Value::Null,
        };
        let reason = format!("{from}..{to}: {} visits", encounters.len());
        self.audit
            .append(audit::record(
                ctx,
                "kpi-booking-rate",
                "success",
                "kpi/booking-rate".into(),
                Vec::new(),
                Some(&reason),
            ))
            .await?;
        Ok(json!({"indicator": "booking-rate", "from": from, "to": to, "tertiary": summary, "hospitals": hospitals}))
    }
}
