//! Smart guidance (智能导诊): a resident describes symptoms in Chinese and gets the departments to
//! book, ranked, with the words that led there, red-flag alerts that say to go to the emergency
//! department or call 120, and the doctors on the platform who work in those departments.
//!
//! The rules are a table (`data/guidance.tsv`, its format documented in its header and in
//! docs/API.md), replaceable per deployment (`EngineConfig::guidance`). Matching is by word
//! occurrence in the text, skipping occurrences right after a negation (无, 不, 没, 没有, 否认,
//! 未), with age and sex conditions; a department's score is the sum of its rules' weights.
//! It is guidance for booking, not a diagnosis, and says so.

use std::sync::Arc;

use serde_json::{Value, json};
use store::Ctx;

use crate::{Engine, EngineError, EngineResult, audit};

/// The built-in rule table.
pub const BUILTIN_RULES: &str = include_str!("../data/guidance.tsv");

const NEGATIONS: &[&str] = &["没有", "否认", "无", "不", "没", "未"];

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Department,
    Alert,
}

#[derive(Debug, Clone)]
struct Rule {
    kind: Kind,
    keywords: Vec<String>,
    with: Vec<String>,
    target: String,
    weight: u32,
    ages: (Option<u32>, Option<u32>),
    sex: Option<String>,
    fallback: Option<String>,
}

/// A parsed rule table.
#[derive(Debug, Clone)]
pub struct GuidanceRules {
    rules: Vec<Rule>,
}

/// One suggested department.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub department: String,
    pub fallback: Option<String>,
    pub score: u32,
    /// The symptom words that led here, in table order.
    pub matched: Vec<String>,
}

/// What the rules say about one description.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Advice {
    pub alerts: Vec<String>,
    /// Best first; ties in table order.
    pub departments: Vec<Suggestion>,
}

fn words(field: &str) -> Vec<String> {
    if field == "-" {
        Vec::new()
    } else {
        field.split('|').map(str::trim).filter(|w| !w.is_empty()).map(String::from).collect()
    }
}

/// Whether `word` occurs in `text` other than right after a negation.
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| !NEGATIONS.iter().any(|n| text[..at].ends_with(n)))
}

impl GuidanceRules {
    /// The built-in table.
    pub fn builtin() -> Arc<GuidanceRules> {
        static RULES: std::sync::OnceLock<Arc<GuidanceRules>> = std::sync::OnceLock::new();
        RULES
            .get_or_init(|| Arc::new(GuidanceRules::parse(BUILTIN_RULES).expect("the built-in guidance table parses")))
            .clone()
    }

    /// Parses a rule table; an error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<GuidanceRules, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: String| format!("guidance rules, line {}: {what}", n + 1);
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                return Err(at(format!("expected 8 tab-separated fields, found {}", f.len())));
            }
            let kind = match f[0] {
                "dept" => Kind::Department,
                "alert" => Kind::Alert,
                other => return Err(at(format!("kind must be dept or alert, not '{other}'"))),
            };
            let keywords = words(f[1]);
            if keywords.is_empty() {
                return Err(at("no keywords".into()));
            }
            let weight: u32 = f[4]
                .parse()
                .ok()
                .filter(|w| (1..=5).contains(w))
                .ok_or_else(|| at(format!("weight must be 1–5, not '{}'", f[4])))?;
            let ages = if f[5] == "-" {
                (None, None)
            } else {
                let (lo, hi) =
                    f[5].split_once('-').ok_or_else(|| at(format!("ages must be min-max, not '{}'", f[5])))?;
                let year = |s: &str| -> Result<Option<u32>, String> {
                    if s.is_empty() {
                        Ok(None)
                    } else {
                        s.parse().map(Some).map_err(|_| at(format!("age '{s}' is not a number")))
                    }
                };
                (year(lo)?, year(hi)?)
            };
            let sex = match f[6] {
                "-" => None,
                s @ ("male" | "female") => Some(s.to_string()),
                other => return Err(at(format!("sex must be male, female or -, not '{other}'"))),
            };
            let target = f[3].trim().to_string();
            if target.is_empty() {
                return Err(at("no department or advice".into()));
            }
            let fallback = Some(f[7].trim()).filter(|s| *s != "-" && !s.is_empty()).map(String::from);
            rules.push(Rule { kind, keywords, with: words(f[2]), target, weight, ages, sex, fallback });
        }
        if rules.is_empty() {
            return Err("guidance rules: the table has no rules".into());
        }
        Ok(GuidanceRules { rules })
    }

    /// Applies the rules to a description, for a person of `age` years and `sex` when known
    /// (a rule with a condition on an unknown age or sex does not fire).
    pub fn advise(&self, text: &str, age: Option<u32>, sex: Option<&str>) -> Advice {
        let mut advice = Advice::default();
        for rule in &self.rules {
            let in_ages = match rule.ages {
                (None, None) => true,
                (lo, hi) => age.is_some_and(|a| lo.is_none_or(|l| a >= l) && hi.is_none_or(|h| a <= h)),
            };
            let right_sex = rule.sex.as_deref().is_none_or(|s| sex == Some(s));
            let with = rule.with.is_empty() || rule.with.iter().any(|w| mentions(text, w));
            if !in_ages || !right_sex || !with {
                continue;
            }
            let matched: Vec<String> = rule.keywords.iter().filter(|w| mentions(text, w)).cloned().collect();
            if matched.is_empty() {
                continue;
            }
            match rule.kind {
                Kind::Alert => {
                    if !advice.alerts.contains(&rule.target) {
                        advice.alerts.push(rule.target.clone());
                    }
                }
                Kind::Department => match advice.departments.iter_mut().find(|d| d.department == rule.target) {
                    Some(d) => {
                        d.score += rule.weight;
                        d.matched.extend(matched.into_iter().filter(|m| !d.matched.contains(m)).collect::<Vec<_>>());
                    }
                    None => advice.departments.push(Suggestion {
                        department: rule.target.clone(),
                        fallback: rule.fallback.clone(),
                        score: rule.weight,
                        matched,
                    }),
                },
            }
        }
        // Stable: ties keep table order.
        advice.departments.sort_by_key(|d| std::cmp::Reverse(d.score));
        advice
    }
}

impl Engine {
    /// This engine with another rule table (`hutong serve --guidance-rules FILE`).
    pub fn with_guidance(mut self, rules: Arc<GuidanceRules>) -> Self {
        self.config.guidance = rules;
        self
    }

    /// `GET /guidance?symptoms=…&age=…&sex=…`: the advice, with up to `DOCTORS` active
    /// PractitionerRoles per department (the department itself, else its fallback). Any signed-in
    /// caller; audited without the description (it may be health information).
    pub async fn guidance(
        &self,
        ctx: &Ctx,
        symptoms: &str,
        age: Option<u32>,
        sex: Option<&str>,
    ) -> EngineResult<Value> {
        const DOCTORS: usize = 5;
        let text = symptoms.trim();
        if text.is_empty() {
            return Err(EngineError::bad_request(
                fhir::IssueType::Required,
                "describe the symptoms (symptoms=…, 请描述症状)",
            ));
        }
        if text.chars().count() > 500 {
            return Err(EngineError::bad_request(
                fhir::IssueType::TooLong,
                "the description is limited to 500 characters",
            ));
        }
        if sex.is_some_and(|s| s != "male" && s != "female") {
            return Err(EngineError::bad_request(fhir::IssueType::Value, "sex must be male or female"));
        }
        let advice = self.config.guidance.advise(text, age, sex);
        let mut departments = Vec::new();
        for s in &advice.departments {
            let mut doctors = Vec::new();
            for specialty in std::iter::once(&s.department).chain(s.fallback.iter()) {
                let roles = self
                    .scan("PractitionerRole", &[("specialty:text", specialty.as_str()), ("active", "true")])
                    .await?;
                for r in
                    roles.iter().filter_map(|r| r.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()))
                {
                    let exact =
                        r["specialty"].as_array().into_iter().flatten().any(|c| c["text"] == specialty.as_str());
                    if exact && doctors.len() < DOCTORS {
                        doctors.push(json!({
                            "practitionerRole": format!("PractitionerRole/{}", r["id"].as_str().unwrap_or_default()),
                            "practitioner": r["practitioner"],
                            "organization": r["organization"],
                            "specialty": specialty,
                        }));
                    }
                }
                if !doctors.is_empty() {
                    break;
                }
            }
            departments.push(json!({
                "department": s.department, "fallback": s.fallback, "score": s.score,
                "matched": s.matched, "doctors": doctors,
            }));
        }
        let record = audit::record(ctx, "guidance", "success", "guidance".to_string(), Vec::new(), None);
        self.audit.append(record).await?;
        Ok(json!({
            "alerts": advice.alerts,
            "departments": departments,
            "notice": "导诊建议仅供预约参考，不作为诊断依据；病情紧急请拨打120。 Guidance for booking only, not a diagnosis.",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(advice: &Advice) -> &str {
        advice.departments.first().map_or("", |d| d.department.as_str())
    }

    #[test]
    fn symptoms_lead_to_departments() {
        let rules = GuidanceRules::builtin();
        let a = rules.advise("最近经常胸闷心慌，血压高", Some(58), Some("male"));
        assert_eq!(first(&a), "心血管内科");
        assert_eq!(a.departments[0].matched, ["胸闷", "心慌", "血压高"]);
        assert!(a.alerts.is_empty());
        assert_eq!(first(&rules.advise("口渴多尿，体重下降消瘦", Some(45), None)), "内分泌科");
        assert_eq!(first(&rules.advise("转移性右下腹痛半天", Some(30), None)), "普通外科");
        // Children go to paediatrics for the same complaints.
        assert_eq!(first(&rules.advise("孩子发烧咳嗽两天", Some(5), None)), "儿科");
        assert_eq!(first(&rules.advise("发烧咳嗽两天", Some(35), None)), "呼吸内科");
    }

    #[test]
    fn red_flags_raise_alerts() {
        let rules = GuidanceRules::builtin();
        let a = rules.advise("突然胸痛，满头大汗", Some(60), Some("male"));
        assert_eq!(a.alerts.len(), 1);
        assert!(a.alerts[0].contains("120"), "{:?}", a.alerts);
        assert_eq!(rules.advise("早上起来口角歪斜，说话不清", Some(70), None).alerts.len(), 1);
        assert!(rules.advise("胸痛", Some(60), None).alerts.is_empty(), "chest pain alone is not the sweating rule");
    }

    #[test]
    fn negations_and_conditions_are_honoured() {
        let rules = GuidanceRules::builtin();
        let a = rules.advise("咳嗽，无发热，不胸闷", Some(40), Some("female"));
        assert_eq!(a.departments[0].matched, ["咳嗽"]);
        assert!(a.departments.iter().all(|d| d.department != "心血管内科"));
        assert!(rules.advise("月经不规律", Some(30), Some("male")).departments.iter().all(|d| d.department != "妇科"));
        assert_eq!(first(&rules.advise("月经不规律", Some(30), Some("female"))), "妇科");
        // Unknown sex: the sex-specific rule does not fire.
        assert!(rules.advise("月经不规律", Some(30), None).departments.iter().all(|d| d.department != "妇科"));
    }

    #[test]
    fn bad_tables_name_the_line() {
        let e = GuidanceRules::parse("dept\t头痛\t-\t神经内科\t9\t-\t-\t-").unwrap_err();
        assert!(e.contains("line 1") && e.contains("weight"), "{e}");
        let e = GuidanceRules::parse("# c\nx\t头痛\t-\t神经内科\t3\t-\t-\t-").unwrap_err();
        assert!(e.contains("line 2") && e.contains("kind"), "{e}");
        assert!(GuidanceRules::parse("dept\t头痛\t-\t神经内科\t3\t1-x\t-\t-").unwrap_err().contains("age"));
        assert!(GuidanceRules::parse("# nothing\n").is_err());
        assert!(GuidanceRules::parse(BUILTIN_RULES).is_ok());
    }
}
