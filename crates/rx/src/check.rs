//! The prescription rules and rational-drug-use checks. [`check`] returns every alert; the
//! caller signs only when there is no hard stop and every warning has a recorded reason.
//!
//! | rule | level | what |
//! |---|---|---|
//! | `empty` | hard stop | a prescription with no drug |
//! | `unknown-drug` | hard stop | a drug not in the catalogue |
//! | `bad-dose` | hard stop | dose, frequency or days not positive |
//! | `duplicate-item` | hard stop | the same drug twice on one prescription |
//! | `controlled` | hard stop | narcotic, psychotropic or other specially controlled drug (never online) |
//! | `child-guardian` | hard stop | a child under 6 without a guardian present |
//! | `max-drugs` | hard stop | more than 5 drugs on a Western/patent prescription |
//! | `herbal-separate` | hard stop | herbal pieces with Western or patent drugs |
//! | `supply-days` | hard stop | over 7 days' supply (3 when urgent), unless chronic with a stated reason (then ≤ 84) |
//! | `validity` | hard stop | a stated validity over 3 days |
//! | `age-restriction`, `sex-restriction` | hard stop | the drug's age range or sex |
//! | `allergy` | hard stop | the patient is allergic to the drug or its allergy class |
//! | `interaction` | hard stop if contraindicated, else warning | a pair on the prescription, or with a current drug |
//! | `duplicate-therapy` | warning | two drugs of one therapeutic class (on it, or with a current drug) |
//! | `dose-adult` | warning | daily dose over the adult limit |
//! | `dose-child` | warning | a child's daily dose over the mg/kg limit, or no weight to check it |
//! | `contraindication` | warning | a condition of the patient contraindicates the drug |

use chrono::NaiveDate;

use crate::catalogue::{Catalogue, Category, Drug, Knowledge, Severity};

/// Most drugs on one Western/patent prescription.
pub const MAX_DRUGS: usize = 5;
/// Ordinary supply limit, urgent supply limit, and the chronic (long prescription) limit, in days.
pub const MAX_DAYS: u32 = 7;
pub const MAX_URGENT_DAYS: u32 = 3;
pub const MAX_CHRONIC_DAYS: u32 = 84;
/// Longest stated validity, in days.
pub const MAX_VALID_DAYS: u32 = 3;

/// One drug line.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub drug: String,
    /// Dose per administration, mg.
    pub dose_mg: f64,
    pub times_per_day: u32,
    /// Days of supply.
    pub days: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prescription {
    pub items: Vec<Item>,
    pub written: NaiveDate,
    /// Stated validity in days (none: valid on the day written).
    pub valid_days: Option<u32>,
    /// The reason for a long (chronic disease) prescription.
    pub chronic_reason: Option<String>,
    /// An urgent prescription (3 days' supply at most).
    pub urgent: bool,
    /// A guardian is present (required for children under 6).
    pub guardian_present: bool,
}

/// What the checks need to know about the patient.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatientFacts {
    pub age_years: u32,
    pub weight_kg: Option<f64>,
    /// `male` or `female`.
    pub sex: Option<String>,
    /// Allergy classes (e.g. `penicillin`) or drug codes.
    pub allergies: Vec<String>,
    /// ICD-10 codes of active conditions.
    pub conditions: Vec<String>,
    /// Catalogue codes of the drugs the patient currently takes.
    pub current: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Never signed.
    HardStop,
    /// Signed only with a recorded reason.
    Warning,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: &'static str,
    pub level: Level,
    /// The drug codes concerned.
    pub drugs: Vec<String>,
    pub zh: String,
    pub en: String,
}

impl Alert {
    /// The key an override reason is recorded under: `rule:code+code`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.rule, self.drugs.join("+"))
    }

    fn hard(rule: &'static str, drugs: &[&str], zh: String, en: String) -> Alert {
        Alert { rule, level: Level::HardStop, drugs: drugs.iter().map(|d| d.to_string()).collect(), zh, en }
    }

    fn warn(rule: &'static str, drugs: &[&str], zh: String, en: String) -> Alert {
        Alert { rule, level: Level::Warning, drugs: drugs.iter().map(|d| d.to_string()).collect(), zh, en }
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Every alert for `prescription` (empty: nothing to object to).
pub fn check(p: &Prescription, patient: &PatientFacts, catalogue: &Catalogue, knowledge: &Knowledge) -> Vec<Alert> {
    let mut alerts = Vec::new();
    if p.items.is_empty() {
        alerts.push(Alert::hard("empty", &[], "处方中没有药品".into(), "the prescription has no drug".into()));
        return alerts;
    }
    let mut drugs: Vec<(&Item, &Drug)> = Vec::new();
    for item in &p.items {
        match catalogue.get(&item.drug) {
            Some(d) => drugs.push((item, d)),
            None => alerts.push(Alert::hard(
                "unknown-drug",
                &[&item.drug],
                format!("药品 {} 不在药品目录中", item.drug),
                format!("drug {} is not in the catalogue", item.drug),
            )),
        }
    }
    let age = patient.age_years;
    for (i, (item, d)) in drugs.iter().enumerate() {
        let code = d.code.as_str();
        if !(item.dose_mg > 0.0 && item.dose_mg.is_finite()) || item.times_per_day == 0 || item.days == 0 {
            alerts.push(Alert::hard(
                "bad-dose",
                &[code],
                format!("{}：单次剂量、每日次数和天数都必须为正数", d.name),
                format!("{}: dose, times a day and days must all be positive", d.name),
            ));
        }
        if drugs[..i].iter().any(|(_, e)| e.code == d.code) {
            alerts.push(Alert::hard(
                "duplicate-item",
                &[code],
                format!("{} 在处方中重复开具", d.name),
                format!("{} appears twice on the prescription", d.name),
            ));
        }
        if let Some(control) = &d.control {
            alerts.push(Alert::hard(
                "controlled",
                &[code],
                format!("{} 属于特殊管理药品（{control}），不得在互联网医院开具", d.name),
                format!("{} is specially controlled ({control}) and cannot be prescribed online", d.name),
            ));
        }
        if d.min_age.is_some_and(|m| age < m) || d.max_age.is_some_and(|m| age > m) {
            let range = format!(
                "{}–{}",
                d.min_age.map_or(String::new(), |m| m.to_string()),
                d.max_age.map_or(String::new(), |m| m.to_string())
            );
            alerts.push(Alert::hard(
                "age-restriction",
                &[code],
                format!("{} 限用于 {range} 岁，患者 {age} 岁", d.name),
                format!("{} is for ages {range}; the patient is {age}", d.name),
            ));
        }
        if let Some(sex) = &d.sex
            && patient.sex.as_deref() != Some(sex.as_str())
        {
            let zh_sex = if sex == "male" { "男性" } else { "女性" };
            alerts.push(Alert::hard(
                "sex-restriction",
                &[code],
                format!("{} 仅限{zh_sex}使用", d.name),
                format!("{} is for {sex} patients only", d.name),
            ));
        }
        let allergic = patient.allergies.iter().any(|a| *a == d.code || d.allergy_class.as_deref() == Some(a.as_str()));
        if allergic {
            let class = d.allergy_class.as_deref().unwrap_or(code);
            alerts.push(Alert::hard(
                "allergy",
                &[code],
                format!("患者对 {class} 过敏，不能使用 {}", d.name),
                format!("the patient is allergic to {class}: {} cannot be used", d.name),
            ));
        }
        for condition in &patient.conditions {
            if let Some(prefix) = d.contraindications.iter().find(|c| condition.starts_with(c.as_str())) {
                alerts.push(Alert::warn(
                    "contraindication",
                    &[code],
                    format!("患者有 {condition}（{prefix}），{} 禁用或慎用", d.name),
                    format!("the patient's condition {condition} ({prefix}) contraindicates {}", d.name),
                ));
            }
        }
        let daily = item.dose_mg * f64::from(item.times_per_day);
        match (age < 14, d.child_mg_per_kg_day, patient.weight_kg) {
            (true, Some(per_kg), Some(weight)) if daily > per_kg * weight => alerts.push(Alert::warn(
                "dose-child",
                &[code],
                format!(
                    "{} 日剂量 {} mg 超过儿童上限 {} mg/kg/日 × {} kg",
                    d.name,
                    trim(daily),
                    trim(per_kg),
                    trim(weight)
                ),
                format!(
                    "{}: {} mg a day is over the children's limit of {} mg/kg/day × {} kg",
                    d.name,
                    trim(daily),
                    trim(per_kg),
                    trim(weight)
                ),
            )),
            (true, Some(_), None) => alerts.push(Alert::warn(
                "dose-child",
                &[code],
                format!("儿童使用 {} 需按体重核对剂量：请填写体重", d.name),
                format!("a child's dose of {} is checked by weight: give the weight", d.name),
            )),
            _ => {
                if let Some(max) = d.max_daily_mg
                    && daily > max
                    && (age >= 14 || d.child_mg_per_kg_day.is_none())
                {
                    alerts.push(Alert::warn(
                        "dose-adult",
                        &[code],
                        format!("{} 日剂量 {} mg 超过上限 {} mg", d.name, trim(daily), trim(max)),
                        format!("{}: {} mg a day is over the limit of {} mg", d.name, trim(daily), trim(max)),
                    ));
                }
            }
        }
    }
    if !drugs.is_empty() && drugs.iter().any(|(_, d)| d.control.is_none()) && age < 6 && !p.guardian_present {
        alerts.push(Alert::hard(
            "child-guardian",
            &[],
            format!("患者 {age} 岁：6岁以下儿童须有监护人陪同方可在线开方"),
            format!("the patient is {age}: children under 6 are prescribed for online only with a guardian present"),
        ));
    }
    let herbal = drugs.iter().filter(|(_, d)| d.category == Category::Herbal).count();
    if herbal > 0 && herbal < drugs.len() {
        alerts.push(Alert::hard(
            "herbal-separate",
            &[],
            "中药饮片须单独开具处方，不能与西药、中成药同开".into(),
            "herbal pieces go on a separate prescription, not with Western or patent drugs".into(),
        ));
    }
    if herbal == 0 && p.items.len() > MAX_DRUGS {
        alerts.push(Alert::hard(
            "max-drugs",
            &[],
            format!("西药、中成药处方每张不得超过{MAX_DRUGS}种药品（本处方{}种）", p.items.len()),
            format!("a Western/patent prescription holds at most {MAX_DRUGS} drugs ({} here)", p.items.len()),
        ));
    }
    let longest = p.items.iter().map(|i| i.days).max().unwrap_or(0);
    let reason = p.chronic_reason.as_deref().is_some_and(|r| !r.trim().is_empty());
    if p.urgent && longest > MAX_URGENT_DAYS {
        alerts.push(Alert::hard(
            "supply-days",
            &[],
            format!("急诊处方用量不得超过{MAX_URGENT_DAYS}日（本处方{longest}日）"),
            format!("an urgent prescription supplies at most {MAX_URGENT_DAYS} days ({longest} here)"),
        ));
    } else if longest > MAX_DAYS && (!reason || longest > MAX_CHRONIC_DAYS) {
        let (zh, en) = if reason {
            (
                format!("慢性病长处方用量不得超过{MAX_CHRONIC_DAYS}日（本处方{longest}日）"),
                format!("a chronic-disease prescription supplies at most {MAX_CHRONIC_DAYS} days ({longest} here)"),
            )
        } else {
            (
                format!("处方用量一般不得超过{MAX_DAYS}日（本处方{longest}日）；慢性病需延长的，请注明理由"),
                format!(
                    "a prescription supplies at most {MAX_DAYS} days ({longest} here); for a chronic disease state the reason"
                ),
            )
        };
        alerts.push(Alert::hard("supply-days", &[], zh, en));
    }
    if let Some(valid) = p.valid_days
        && (valid == 0 || valid > MAX_VALID_DAYS)
    {
        alerts.push(Alert::hard(
            "validity",
            &[],
            format!("处方有效期最长{MAX_VALID_DAYS}天（填写了{valid}天）"),
            format!("a prescription is valid for at most {MAX_VALID_DAYS} days ({valid} given)"),
        ));
    }
    // Pairs: on the prescription, and with what the patient already takes.
    let current: Vec<&Drug> = patient
        .current
        .iter()
        .filter(|c| !drugs.iter().any(|(_, d)| d.code == **c))
        .filter_map(|c| catalogue.get(c))
        .collect();
    for (i, (_, x)) in drugs.iter().enumerate() {
        let others = drugs[i + 1..].iter().map(|(_, d)| (*d, false)).chain(current.iter().map(|d| (*d, true)));
        for (y, is_current) in others {
            if x.code == y.code {
                continue;
            }
            let with = if is_current { "（患者正在使用）" } else { "" };
            let with_en = if is_current { " (currently taken)" } else { "" };
            for interaction in knowledge.between(x, y) {
                let zh = format!("{} + {}{with}：{}", x.name, y.name, interaction.message_zh);
                let en = format!("{} + {}{with_en}: {}", x.name, y.name, interaction.message_en);
                let pair = [x.code.as_str(), y.code.as_str()];
                alerts.push(match interaction.severity {
                    Severity::Contraindicated => Alert::hard("interaction", &pair, zh, en),
                    Severity::Major | Severity::Moderate => Alert::warn("interaction", &pair, zh, en),
                });
            }
            if let (Some(a), Some(b)) = (&x.class, &y.class)
                && a == b
            {
                alerts.push(Alert::warn(
                    "duplicate-therapy",
                    &[x.code.as_str(), y.code.as_str()],
                    format!("{} 与 {}{with} 同属 {a} 类，重复用药", x.name, y.name),
                    format!("{} and {}{with_en} are both class {a}: duplicate therapy", x.name, y.name),
                ));
            }
        }
    }
    alerts
}

#[cfg(test)]
mod tests {
    //! The rule table: every rule with an allowed and a forbidden case.
    use super::*;

    fn item(drug: &str, dose_mg: f64, times: u32, days: u32) -> Item {
        Item { drug: drug.into(), dose_mg, times_per_day: times, days }
    }

    fn rx(items: Vec<Item>) -> Prescription {
        Prescription {
            items,
            written: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
            valid_days: None,
            chronic_reason: None,
            urgent: false,
            guardian_present: false,
        }
    }

    fn adult() -> PatientFacts {
        PatientFacts { age_years: 45, weight_kg: Some(65.0), sex: Some("male".into()), ..PatientFacts::default() }
    }

    fn rules(p: &Prescription, patient: &PatientFacts) -> Vec<(&'static str, Level)> {
        check(p, patient, &Catalogue::demo(), &Knowledge::demo()).into_iter().map(|a| (a.rule, a.level)).collect()
    }

    fn fires(p: &Prescription, patient: &PatientFacts, rule: &str) -> Option<Level> {
        rules(p, patient).into_iter().find(|(r, _)| *r == rule).map(|(_, l)| l)
    }

    const HARD: Option<Level> = Some(Level::HardStop);
    const WARN: Option<Level> = Some(Level::Warning);

    #[test]
    fn a_plain_follow_up_prescription_passes() {
        let p = rx(vec![item("D0001", 30.0, 1, 7), item("D0004", 500.0, 2, 7)]);
        assert_eq!(rules(&p, &adult()), []);
    }

    #[test]
    fn empty_unknown_bad_dose_and_duplicate_items() {
        assert_eq!(fires(&rx(vec![]), &adult(), "empty"), HARD);
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 1, 7)]), &adult(), "empty"), None);
        assert_eq!(fires(&rx(vec![item("NOPE", 1.0, 1, 1)]), &adult(), "unknown-drug"), HARD);
        assert_eq!(fires(&rx(vec![item("D0001", 0.0, 1, 7)]), &adult(), "bad-dose"), HARD);
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 0, 7)]), &adult(), "bad-dose"), HARD);
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 1, 0)]), &adult(), "bad-dose"), HARD);
        let twice = rx(vec![item("D0001", 30.0, 1, 7), item("D0001", 30.0, 1, 7)]);
        assert_eq!(fires(&twice, &adult(), "duplicate-item"), HARD);
    }

    #[test]
    fn controlled_drugs_are_never_prescribed_online() {
        assert_eq!(fires(&rx(vec![item("D0019", 30.0, 2, 3)]), &adult(), "controlled"), HARD, "narcotic");
        assert_eq!(fires(&rx(vec![item("D0020", 1.0, 1, 3)]), &adult(), "controlled"), HARD, "psychotropic");
        assert_eq!(fires(&rx(vec![item("D0021", 50.0, 1, 7)]), &adult(), "controlled"), None);
    }

    #[test]
    fn children_under_six_need_a_guardian() {
        let child = PatientFacts { age_years: 4, weight_kg: Some(16.0), ..PatientFacts::default() };
        let mut p = rx(vec![item("D0014", 160.0, 3, 3)]);
        assert_eq!(fires(&p, &child, "child-guardian"), HARD);
        p.guardian_present = true;
        assert_eq!(fires(&p, &child, "child-guardian"), None);
        let six = PatientFacts { age_years: 6, ..child };
        assert_eq!(fires(&rx(vec![item("D0014", 160.0, 3, 3)]), &six, "child-guardian"), None);
    }

    #[test]
    fn at_most_five_drugs_and_herbal_pieces_apart() {
        let five = rx(["D0001", "D0003", "D0004", "D0006", "D0015"].iter().map(|d| item(d, 1.0, 1, 7)).collect());
        assert_eq!(fires(&five, &adult(), "max-drugs"), None);
        let mut six = five.clone();
        six.items.push(item("D0014", 500.0, 1, 3));
        assert_eq!(fires(&six, &adult(), "max-drugs"), HARD);
        let herbal = rx(["D0025", "D0026", "D0027"].iter().map(|d| item(d, 10_000.0, 1, 7)).collect());
        assert_eq!(fires(&herbal, &adult(), "herbal-separate"), None);
        let mut mixed = herbal.clone();
        mixed.items.push(item("D0001", 30.0, 1, 7));
        assert_eq!(fires(&mixed, &adult(), "herbal-separate"), HARD);
        // Many herbal pieces on one herbal prescription are fine.
        let mut big = herbal;
        big.items.extend(["D0025", "D0026", "D0027"].iter().map(|d| item(d, 1000.0, 1, 7)));
        assert_eq!(fires(&big, &adult(), "max-drugs"), None);
    }

    #[test]
    fn supply_days_and_validity() {
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 1, 7)]), &adult(), "supply-days"), None);
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 1, 8)]), &adult(), "supply-days"), HARD);
        let mut chronic = rx(vec![item("D0001", 30.0, 1, 28)]);
        chronic.chronic_reason = Some("高血压病情稳定，长期服药".into());
        assert_eq!(fires(&chronic, &adult(), "supply-days"), None);
        chronic.items[0].days = 90;
        assert_eq!(fires(&chronic, &adult(), "supply-days"), HARD);
        chronic.chronic_reason = Some("  ".into());
        chronic.items[0].days = 28;
        assert_eq!(fires(&chronic, &adult(), "supply-days"), HARD, "a blank reason is no reason");
        let mut urgent = rx(vec![item("D0014", 500.0, 3, 3)]);
        urgent.urgent = true;
        assert_eq!(fires(&urgent, &adult(), "supply-days"), None);
        urgent.items[0].days = 4;
        assert_eq!(fires(&urgent, &adult(), "supply-days"), HARD);
        let mut valid = rx(vec![item("D0001", 30.0, 1, 7)]);
        valid.valid_days = Some(3);
        assert_eq!(fires(&valid, &adult(), "validity"), None);
        valid.valid_days = Some(4);
        assert_eq!(fires(&valid, &adult(), "validity"), HARD);
    }

    #[test]
    fn age_sex_and_allergy_restrictions() {
        let teen = PatientFacts { age_years: 15, weight_kg: Some(50.0), ..adult() };
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 1, 7)]), &teen, "age-restriction"), HARD);
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 1, 7)]), &adult(), "age-restriction"), None);
        let woman = PatientFacts { sex: Some("female".into()), ..adult() };
        assert_eq!(fires(&rx(vec![item("D0017", 5.0, 1, 7)]), &woman, "sex-restriction"), HARD);
        assert_eq!(fires(&rx(vec![item("D0017", 5.0, 1, 7)]), &adult(), "sex-restriction"), None);
        let unknown_sex = PatientFacts { sex: None, ..adult() };
        assert_eq!(fires(&rx(vec![item("D0017", 5.0, 1, 7)]), &unknown_sex, "sex-restriction"), HARD);
        let allergic = PatientFacts { allergies: vec!["penicillin".into()], ..adult() };
        assert_eq!(fires(&rx(vec![item("D0010", 500.0, 3, 5)]), &allergic, "allergy"), HARD);
        assert_eq!(fires(&rx(vec![item("D0011", 250.0, 2, 5)]), &allergic, "allergy"), None);
        let by_code = PatientFacts { allergies: vec!["D0011".into()], ..adult() };
        assert_eq!(fires(&rx(vec![item("D0011", 250.0, 2, 5)]), &by_code, "allergy"), HARD);
    }

    #[test]
    fn interactions_on_the_prescription_and_with_current_drugs() {
        let major = rx(vec![item("D0009", 2.5, 1, 7), item("D0007", 100.0, 1, 7)]);
        assert_eq!(fires(&major, &adult(), "interaction"), WARN);
        let contraindicated = rx(vec![item("D0028", 20.0, 1, 7), item("D0029", 250.0, 2, 7)]);
        assert_eq!(fires(&contraindicated, &adult(), "interaction"), HARD);
        let taking_clarithromycin = PatientFacts { current: vec!["D0029".into()], ..adult() };
        let simvastatin = rx(vec![item("D0028", 20.0, 1, 7)]);
        assert_eq!(fires(&simvastatin, &taking_clarithromycin, "interaction"), HARD);
        assert_eq!(fires(&simvastatin, &adult(), "interaction"), None);
        let alerts = check(&simvastatin, &taking_clarithromycin, &Catalogue::demo(), &Knowledge::demo());
        assert!(alerts[0].zh.contains("正在使用") && alerts[0].en.contains("rhabdomyolysis"), "{alerts:?}");
        assert_eq!(alerts[0].key(), "interaction:D0028+D0029");
    }

    #[test]
    fn duplicate_therapy() {
        let two_ccbs = rx(vec![item("D0001", 30.0, 1, 7), item("D0002", 5.0, 1, 7)]);
        assert_eq!(fires(&two_ccbs, &adult(), "duplicate-therapy"), WARN);
        let taking_amlodipine = PatientFacts { current: vec!["D0002".into()], ..adult() };
        assert_eq!(fires(&rx(vec![item("D0001", 30.0, 1, 7)]), &taking_amlodipine, "duplicate-therapy"), WARN);
        assert_eq!(
            fires(&rx(vec![item("D0001", 30.0, 1, 7), item("D0003", 150.0, 1, 7)]), &adult(), "duplicate-therapy"),
            None
        );
    }

    #[test]
    fn dose_limits_by_age_and_weight() {
        assert_eq!(fires(&rx(vec![item("D0004", 500.0, 3, 7)]), &adult(), "dose-adult"), None);
        assert_eq!(fires(&rx(vec![item("D0004", 1000.0, 3, 7)]), &adult(), "dose-adult"), WARN);
        let child = PatientFacts { age_years: 8, weight_kg: Some(25.0), ..PatientFacts::default() };
        // Amoxicillin 90 mg/kg/day × 25 kg = 2,250 mg.
        assert_eq!(fires(&rx(vec![item("D0010", 500.0, 3, 5)]), &child, "dose-child"), None);
        assert_eq!(fires(&rx(vec![item("D0010", 1000.0, 3, 5)]), &child, "dose-child"), WARN);
        let no_weight = PatientFacts { weight_kg: None, ..child };
        assert_eq!(fires(&rx(vec![item("D0010", 250.0, 3, 5)]), &no_weight, "dose-child"), WARN);
    }

    #[test]
    fn contraindications() {
        let pregnant = PatientFacts { sex: Some("female".into()), conditions: vec!["O26.9".into()], ..adult() };
        assert_eq!(fires(&rx(vec![item("D0012", 500.0, 1, 5)]), &pregnant, "contraindication"), WARN);
        assert_eq!(fires(&rx(vec![item("D0012", 500.0, 1, 5)]), &adult(), "contraindication"), None);
    }
}
