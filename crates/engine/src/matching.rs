//! `Patient/$match` (FHIR R4 MPI operation): which stored Patients may be the person a given
//! Patient describes, with a score and a match grade. Candidates come from the FHIR search
//! index (the same identifiers, phone, name and birth date: several independent keys, as the
//! linkage index blocks), and each is weighed by the registry's Fellegi–Sunter model
//! (`registry::linkage`). Grades: `certain` at or above the link threshold with no review rule
//! holding the pair back and no second candidate as strong, `probable` from the review
//! threshold, `possible` for any positive weight; weaker candidates are not returned. The model
//! is `registry::linkage::default_model` (trained on synthetic records); its prior is replaced
//! by the registry's own (one true match among its Patients), so the same evidence counts for
//! less in a larger registry.

use std::sync::{Arc, OnceLock};

use fhir::IssueType;
use registry::linkage::{self, Model, Record, Thresholds};
use serde_json::{Value, json};
use store::Ctx;

use crate::{Engine, EngineError, EngineResult, RequestOptions, audit};

/// Candidates fetched per search key.
const PER_KEY: usize = 50;

const MATCH_GRADE: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

/// The model for a registry too small to learn its own (trained once per process,
/// `registry::linkage::default_model`).
fn default_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL.get_or_init(|| Arc::new(linkage::default_model())).clone()
}

/// A registry this large learns its own model (its own name frequencies and error rates).
const OWN_MODEL_FROM: u64 = 1_000;

/// Most Patients read to learn it.
const TRAINING_RECORDS: usize = 50_000;

/// HL7 v2 table 0203, identifier types.
const V2_IDENTIFIER_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

fn first_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = match cur {
            Value::Array(items) => items.first()?.get(*key)?,
            other => other.get(*key)?,
        };
    }
    match cur {
        Value::Array(items) => items.first()?.as_str(),
        other => other.as_str(),
    }
}

/// What a Patient resource says, as the linkage compares it. The national ID number is the
/// identifier whose value is a GB 11643 number (whatever system it is filed under); failing
/// that, an identifier typed (v2-0203) as person-level (SS, NI, PPN, DL, …). Hospital record
/// numbers are never compared: they differ between sources by nature.
pub(crate) fn record_of(patient: &Value) -> Record {
    let name =
        patient["name"].as_array().and_then(|ns| ns.iter().find(|n| n["use"] == "official").or_else(|| ns.first()));
    let (mut family, mut given) = (
        name.and_then(|n| n["family"].as_str()).map(str::to_string),
        name.and_then(|n| first_str(n, &["given"])).map(str::to_string),
    );
    if family.is_none()
        && given.is_none()
        && let Some(text) = name.and_then(|n| n["text"].as_str())
    {
        // A Chinese name written whole: the first character is the family name (two for the
        // common compound family names).
        let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
        let split = if chars.len() > 3
            && ["欧阳", "司马", "诸葛", "上官", "司徒"].contains(&chars[..2].iter().collect::<String>().as_str())
        {
            2
        } else {
            1
        };
        if chars.len() > split {
            family = Some(chars[..split].iter().collect());
            given = Some(chars[split..].iter().collect());
        }
    }
    let identifiers: Vec<&Value> = patient["identifier"].as_array().into_iter().flatten().collect();
    let id_number = identifiers
        .iter()
        .filter_map(|i| i["value"].as_str())
        // A valid number, or one whose only fault is its check character (a typo the linkage
        // should still weigh as a near match).
        .find(|v| {
            crypto::idnum::normalize(v).is_ok()
                || matches!(crypto::idnum::validate(v), Err(crypto::idnum::IdError::Check { .. }))
        })
        // Else a person-level identifier another source may share (social security, national
        // id, passport, driving licence, …): never a hospital's own record number.
        .or_else(|| {
            identifiers
                .iter()
                .find(|i| {
                    i["type"]["coding"].as_array().into_iter().flatten().any(|c| {
                        c["system"] == V2_IDENTIFIER_TYPE
                            && matches!(c["code"].as_str(), Some("SS" | "NI" | "NH" | "NNCHN" | "PPN" | "DL" | "CZ"))
                    })
                })
                .and_then(|i| i["value"].as_str())
        })
        .map(|v| v.to_string());
    let phone = patient["telecom"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| matches!(t["system"].as_str(), Some("phone") | Some("sms")))
        .and_then(|t| t["value"].as_str())
        .map(str::to_string);
    let address = patient["address"].as_array().and_then(|a| a.first());
    let division = address.and_then(|a| {
        a["extension"]
            .as_array()?
            .iter()
            .find(|x| x["url"] == access::DIVISION_EXTENSION)
            .and_then(|x| x["valueCode"].as_str())
            .map(str::to_string)
    });
    Record {
        family,
        given,
        birth_date: patient["birthDate"].as_str().map(str::to_string),
        sex: match patient["gender"].as_str() {
            Some("male") => Some('M'),
            Some("female") => Some('F'),
            _ => None,
        },
        id_number,
        phone,
        street_number: None,
        address: address.and_then(|a| {
            let lines: Vec<&str> = a["line"].as_array()?.iter().filter_map(Value::as_str).collect();
            (!lines.is_empty()).then(|| lines.join(" "))
        }),
        locality: address.and_then(|a| a["district"].as_str().or_else(|| a["city"].as_str())).map(str::to_string),
        postcode: address.and_then(|a| a["postalCode"].as_str()).map(str::to_string),
        region: division.or_else(|| address.and_then(|a| a["state"].as_str()).map(str::to_string)),
    }
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::bad_request(IssueType::Invalid, message)
}

impl Engine {
    /// `POST Patient/$match` with a Parameters resource (`resource`: the Patient,
    /// `onlyCertainMatches`, `count`): a searchset Bundle of candidates, best first.
    pub async fn patient_match(&self, ctx: &Ctx, parameters: Value, opts: &RequestOptions) -> EngineResult<Value> {
        if parameters["resourceType"] != "Parameters" {
            return Err(bad(
                "Patient/$match takes a Parameters resource with a parameter 'resource' holding a Patient",
            ));
        }
        let mut probe: Option<&Value> = None;
        let mut only_certain = false;
        let mut count = 10usize;
        for p in parameters["parameter"].as_array().into_iter().flatten() {
            match p["name"].as_str() {
                Some("resource") => probe = Some(&p["resource"]),
                Some("onlyCertainMatches") => {
                    only_certain =
                        p["valueBoolean"].as_bool().ok_or_else(|| bad("onlyCertainMatches is a valueBoolean"))?
                }
                Some("count") => {
                    count = p["valueInteger"]
                        .as_u64()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| bad("count is a valueInteger from 1 to 100"))?
                        as usize
                }
                Some(other) => {
                    return Err(bad(format!(
                        "Patient/$match has no parameter '{other}' (resource, onlyCertainMatches, count)"
                    )));
                }
                None => return Err(bad("every parameter needs a name")),
            }
        }
        let probe = probe
            .filter(|r| r["resourceType"] == "Patient")
            .ok_or_else(|| bad("the parameter 'resource' must hold a Patient"))?;
        self.authorize_match(ctx).await?;
        let record = record_of(probe);
        if record.family.is_none() && record.given.is_none() && record.id_number.is_none() && record.phone.is_none() {
            return Err(bad("the Patient to match needs at least a name, an identifier or a phone number"));
        }

        // Candidates by several independent keys of the search index (internal searches).
        let internal = Ctx::system();
        let mut keys: Vec<Vec<(String, String)>> = Vec::new();
        for i in probe["identifier"].as_array().into_iter().flatten() {
            if let Some(v) = i["value"].as_str() {
                let value = match i["system"].as_str() {
                    Some(s) => format!("{s}|{v}"),
                    None => v.to_string(),
                };
                keys.push(vec![("identifier".into(), value)]);
            }
        }
        if let Some(phone) = &record.phone {
            keys.push(vec![("phone".into(), phone.clone())]);
        }
        let birth = record.birth_date.clone();
        for (param, value) in [("family", &record.family), ("given", &record.given)] {
            if let (Some(v), Some(b)) = (value, &birth) {
                keys.push(vec![(param.into(), v.clone()), ("birthdate".into(), b.clone())]);
            }
        }
        if let (Some(f), Some(g)) = (&record.family, &record.given) {
            keys.push(vec![("family".into(), f.clone()), ("given".into(), g.clone())]);
        }
        let mut candidates: Vec<Value> = Vec::new();
        let inner = RequestOptions { base_url: opts.base_url.clone(), ..RequestOptions::default() };
        for mut key in keys {
            key.push(("_count".into(), PER_KEY.to_string()));
            let bundle = self.search(&internal, Some("Patient"), &key, &inner).await?;
            for e in bundle["entry"].as_array().into_iter().flatten() {
                let r = &e["resource"];
                if !candidates.iter().any(|c| c["id"] == r["id"]) {
                    candidates.push(r.clone());
                }
            }
        }

        let patients = self.patient_count().await?;
        let prior = -(patients.max(1) as f64).log2();
        let model = self.match_model(patients).await?;
        let thresholds = Thresholds::default();
        let mut scored: Vec<(f64, &'static str, Value)> = Vec::new();
        for c in candidates {
            if probe["id"].is_string() && c["id"] == probe["id"] {
                continue; // a stored Patient matched against the registry is not its own match
            }
            let (weight, g) = linkage::weigh(&model, &record, &record_of(&c));
            // The model's prior is its training population's; the prior here is one true match
            // among the registry's Patients.
            let weight = weight - model.prior_weight() + prior;
            let grade = if weight >= thresholds.link && !linkage::needs_review(&g) {
                "certain"
            } else if weight >= thresholds.review {
                "probable"
            } else if weight > 0.0 {
                "possible"
            } else {
                continue;
            };
            if only_certain && grade != "certain" {
                continue;
            }
            scored.push((weight, grade, c));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        // Two or more candidates above the link threshold: none of them is certain (a person
        // decides between them, as the registry's review queue does).
        if scored.iter().filter(|s| s.1 == "certain").count() > 1 {
            for s in scored.iter_mut().filter(|s| s.1 == "certain") {
                s.1 = "probable";
            }
            if only_certain {
                scored.clear();
            }
        }
        scored.truncate(count);

        if ctx.principal.is_some() {
            let patients: Vec<String> = scored.iter().filter_map(|s| s.2["id"].as_str()).map(str::to_string).collect();
            let record = audit::record(ctx, "match", "success", "Patient/$match".into(), patients, None);
            self.audit.append(record).await?;
        }
        let base = &opts.base_url;
        let entries: Vec<Value> = scored
            .into_iter()
            .map(|(weight, grade, resource)| {
                let probability = 1.0 / (1.0 + (-weight).exp2());
                json!({
                    "fullUrl": format!("{base}/Patient/{}", resource["id"].as_str().unwrap_or_default()),
                    "resource": resource,
                    "search": {
                        "mode": "match",
                        "score": (probability * 10_000.0).round() / 10_000.0,
                        "extension": [{"url": MATCH_GRADE, "valueCode": grade}],
                    },
                })
            })
            .collect();
        Ok(json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "searchset",
            "total": entries.len(),
            "entry": entries,
        }))
    }

    /// The model `$match` weighs with: learned from the registry's own Patients (up to
    /// [`TRAINING_RECORDS`] of them) once it holds [`OWN_MODEL_FROM`], and learned again when it
    /// has doubled since; until then the built-in default.
    pub(crate) async fn match_model(&self, patients: u64) -> EngineResult<Arc<Model>> {
        let mut cached = self.match_model.lock().await;
        if let Some((trained_at, model)) = cached.as_ref()
            && (patients < OWN_MODEL_FROM || patients < 2 * trained_at.max(&OWN_MODEL_FROM))
        {
            return Ok(model.clone());
        }
        if patients < OWN_MODEL_FROM {
            let model = default_model();
            *cached = Some((0, model.clone()));
            return Ok(model);
        }
        let mut records = Vec::new();
        let mut offset = 0;
        while records.len() < TRAINING_RECORDS {
            let query = fhir::search::SearchQuery {
                resource_type: Some("Patient".into()),
                count: 1000,
                offset,
                ..fhir::search::SearchQuery::default()
            };
            let page = self.store.search(&Ctx::system(), &query).await?;
            if page.resources.is_empty() {
                break;
            }
            offset += page.resources.len();
            for r in &page.resources {
                if let Some(body) = &r.body
                    && let Ok(v) = serde_json::from_str::<Value>(body)
                {
                    records.push(record_of(&v));
                }
            }
        }
        let model = tokio::task::spawn_blocking(move || linkage::Linker::train(&records, 1_000_000, 2_000_000, 7).0)
            .await
            .map_err(|e| EngineError::Store(store::StoreError::Backend(format!("training the match model: {e}"))))?;
        let model = Arc::new(model);
        *cached = Some((patients, model.clone()));
        Ok(model)
    }

    /// Patients in the registry (counted at most once a minute).
    async fn patient_count(&self) -> EngineResult<u64> {
        if let Ok(cached) = self.patients_counted.lock()
            && let Some((at, n)) = *cached
            && at.elapsed() < std::time::Duration::from_secs(60)
        {
            return Ok(n);
        }
        let params = [("_count".to_string(), "0".to_string()), ("_total".to_string(), "accurate".to_string())];
        let bundle = self.search(&Ctx::system(), Some("Patient"), &params, &RequestOptions::default()).await?;
        let n = bundle["total"].as_u64().unwrap_or(0);
        if let Ok(mut cached) = self.patients_counted.lock() {
            *cached = Some((std::time::Instant::now(), n));
        }
        Ok(n)
    }

    /// Who may ask: clinical staff (registration) and system clients that may read Patients.
    /// The candidates' demographics are shown whatever the care relationship, since finding the
    /// person is what starts one; every call is audited with the patients it returned.
    async fn authorize_match(&self, ctx: &Ctx) -> EngineResult<()> {
        let allowed = |p: &access::Principal| {
            p.scopes.allows("Patient", access::Perm::Search) && (p.role.is_clinical() || p.role == access::Role::System)
        };
        let reason = "Patient/$match is for clinical staff and system clients that may search Patients";
        self.require(ctx, allowed, "match", "Patient/$match".into(), reason).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_become_linkage_records() {
        let p = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:x:mrn", "value": "A1"}, {"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}],
            "name": [{"text": "欧阳娜娜"}], "gender": "female", "birthDate": "1949-12-31",
            "telecom": [{"system": "email", "value": "x@y"}, {"system": "phone", "value": "13800138000"}],
            "address": [{"line": ["人民路1号"], "district": "东城区",
                         "extension": [{"url": access::DIVISION_EXTENSION, "valueCode": "110101"}]}]});
        let r = record_of(&p);
        assert_eq!((r.family.as_deref(), r.given.as_deref()), (Some("欧阳"), Some("娜娜")));
        assert_eq!(r.id_number.as_deref(), Some("11010519491231002X"));
        assert_eq!(r.phone.as_deref(), Some("13800138000"));
        assert_eq!(r.region.as_deref(), Some("110101"));
        assert_eq!(r.sex, Some('F'));
    }
}
