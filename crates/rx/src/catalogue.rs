//! The drug catalogue and the interaction knowledge base (formats in the headers of
//! `data/catalogue.tsv` and `data/interactions.tsv`, and in docs/INTERNET-HOSPITAL.md). A bad
//! line is an error naming the line and the field.

use std::collections::HashMap;

/// The synthetic demo catalogue.
pub const DEMO_CATALOGUE: &str = include_str!("../data/catalogue.tsv");
/// The synthetic demo interaction table.
pub const DEMO_INTERACTIONS: &str = include_str!("../data/interactions.tsv");

/// Western medicine, Chinese patent medicine (中成药) or herbal pieces (中药饮片).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Western,
    Patent,
    Herbal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drug {
    pub code: String,
    pub name: String,
    pub category: Category,
    pub form: String,
    /// Strength of one unit (tablet, capsule, gram of herbal pieces) in mg.
    pub strength_mg: f64,
    /// `None` for ordinary drugs; otherwise the special-management class (narcotic,
    /// psychotropic-1, psychotropic-2, toxic, radioactive, precursor).
    pub control: Option<String>,
    /// Therapeutic class (ATC-like) for duplicate-therapy and class interactions.
    pub class: Option<String>,
    pub max_daily_mg: Option<f64>,
    pub child_mg_per_kg_day: Option<f64>,
    pub min_age: Option<u32>,
    pub max_age: Option<u32>,
    /// `male` or `female` when restricted to one sex.
    pub sex: Option<String>,
    /// ICD-10 code prefixes of conditions that contraindicate the drug.
    pub contraindications: Vec<String>,
    pub allergy_class: Option<String>,
    pub chronic: bool,
}

/// Interaction severity: `Contraindicated` is a hard stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Contraindicated,
    Major,
    Moderate,
}

/// One side of an interaction: a drug or a class.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Side {
    Drug(String),
    Class(String),
}

impl Side {
    fn parse(text: &str) -> Side {
        match text.strip_prefix("class:") {
            Some(class) => Side::Class(class.to_string()),
            None => Side::Drug(text.to_string()),
        }
    }

    fn covers(&self, drug: &Drug) -> bool {
        match self {
            Side::Drug(code) => *code == drug.code,
            Side::Class(class) => drug.class.as_deref() == Some(class.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    a: Side,
    b: Side,
    pub severity: Severity,
    pub message_zh: String,
    pub message_en: String,
}

impl Interaction {
    /// Whether this interaction applies to the pair (either order).
    pub fn applies(&self, x: &Drug, y: &Drug) -> bool {
        (self.a.covers(x) && self.b.covers(y)) || (self.a.covers(y) && self.b.covers(x))
    }
}

/// The drugs by code.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    drugs: HashMap<String, Drug>,
    order: Vec<String>,
}

/// The interaction table, indexed by drug code and class for fast pair checks.
#[derive(Debug, Clone, Default)]
pub struct Knowledge {
    interactions: Vec<Interaction>,
    by_key: HashMap<String, Vec<usize>>,
}

fn rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n, l.split('\t').map(str::trim).collect()))
}

fn optional(field: &str) -> Option<&str> {
    Some(field).filter(|f| !f.is_empty() && *f != "-")
}

impl Catalogue {
    pub fn demo() -> Catalogue {
        Catalogue::parse(DEMO_CATALOGUE).expect("the demo catalogue parses")
    }

    pub fn parse(text: &str) -> Result<Catalogue, String> {
        let mut catalogue = Catalogue::default();
        for (n, f) in rows(text) {
            let at = |what: String| format!("drug catalogue, line {n}: {what}");
            if f.len() != 15 {
                return Err(at(format!("expected 15 tab-separated fields, found {}", f.len())));
            }
            let number = |i: usize, name: &str| -> Result<Option<f64>, String> {
                optional(f[i])
                    .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0))
                    .map(|v| v.ok_or_else(|| at(format!("{name} '{}' is not a non-negative number", f[i]))))
                    .transpose()
            };
            let years = |i: usize, name: &str| -> Result<Option<u32>, String> {
                optional(f[i])
                    .map(|v| v.parse::<u32>().map_err(|_| at(format!("{name} '{v}' is not whole years"))))
                    .transpose()
            };
            let code = f[0].to_string();
            if code.is_empty() || catalogue.drugs.contains_key(&code) {
                return Err(at(format!("drug code '{code}' is empty or repeated")));
            }
            let category = match f[2] {
                "western" => Category::Western,
                "patent" => Category::Patent,
                "herbal" => Category::Herbal,
                other => return Err(at(format!("category must be western, patent or herbal, not '{other}'"))),
            };
            let control = match f[5] {
                "none" => None,
                c @ ("narcotic" | "psychotropic-1" | "psychotropic-2" | "toxic" | "radioactive" | "precursor") => {
                    Some(c.to_string())
                }
                other => return Err(at(format!("control '{other}' is not a known special-management class"))),
            };
            let sex = match f[11] {
                "-" | "" => None,
                s @ ("male" | "female") => Some(s.to_string()),
                other => return Err(at(format!("sex must be male, female or -, not '{other}'"))),
            };
            let drug = Drug {
                code: code.clone(),
                name: f[1].to_string(),
                category,
                form: f[3].to_string(),
                strength_mg: number(4, "strength_mg")?.ok_or_else(|| at("strength_mg is required".into()))?,
                control,
                class: optional(f[6]).map(str::to_string),
                max_daily_mg: number(7, "max_daily_mg")?,
                child_mg_per_kg_day: number(8, "child_mg_per_kg_day")?,
                min_age: years(9, "min_age")?,
                max_age: years(10, "max_age")?,
                sex,
                contraindications: optional(f[12])
                    .map(|c| c.split('|').map(str::to_string).collect())
                    .unwrap_or_default(),
                allergy_class: optional(f[13]).map(str::to_string),
                chronic: match f[14] {
                    "yes" => true,
                    "no" => false,
                    other => return Err(at(format!("chronic must be yes or no, not '{other}'"))),
                },
            };
            catalogue.order.push(code.clone());
            catalogue.drugs.insert(code, drug);
        }
        Ok(catalogue)
    }

    pub fn get(&self, code: &str) -> Option<&Drug> {
        self.drugs.get(code)
    }

    pub fn len(&self) -> usize {
        self.drugs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.drugs.is_empty()
    }

    /// Drugs in table order.
    pub fn iter(&self) -> impl Iterator<Item = &Drug> {
        self.order.iter().filter_map(|c| self.drugs.get(c))
    }

    /// Adds a drug (tests and benchmarks build large catalogues this way).
    pub fn insert(&mut self, drug: Drug) {
        if !self.drugs.contains_key(&drug.code) {
            self.order.push(drug.code.clone());
        }
        self.drugs.insert(drug.code.clone(), drug);
    }
}

impl Knowledge {
    pub fn demo() -> Knowledge {
        Knowledge::parse(DEMO_INTERACTIONS).expect("the demo interaction table parses")
    }

    pub fn parse(text: &str) -> Result<Knowledge, String> {
        let mut knowledge = Knowledge::default();
        for (n, f) in rows(text) {
            let at = |what: String| format!("interaction table, line {n}: {what}");
            if f.len() != 5 {
                return Err(at(format!("expected 5 tab-separated fields, found {}", f.len())));
            }
            let severity = match f[2] {
                "contraindicated" => Severity::Contraindicated,
                "major" => Severity::Major,
                "moderate" => Severity::Moderate,
                other => return Err(at(format!("severity must be contraindicated, major or moderate, not '{other}'"))),
            };
            if f[0].is_empty() || f[1].is_empty() || f[3].is_empty() || f[4].is_empty() {
                return Err(at("the drugs and both messages are required".into()));
            }
            knowledge.add(Interaction {
                a: Side::parse(f[0]),
                b: Side::parse(f[1]),
                severity,
                message_zh: f[3].to_string(),
                message_en: f[4].to_string(),
            });
        }
        Ok(knowledge)
    }

    fn key(side: &Side) -> String {
        match side {
            Side::Drug(c) => format!("d:{c}"),
            Side::Class(c) => format!("c:{c}"),
        }
    }

    /// Adds an interaction (tests and benchmarks build large tables this way).
    pub fn add(&mut self, interaction: Interaction) {
        let i = self.interactions.len();
        for side in [&interaction.a, &interaction.b] {
            self.by_key.entry(Self::key(side)).or_default().push(i);
        }
        self.interactions.push(interaction);
    }

    /// An interaction between two drugs given by codes, e.g. for benchmarks.
    pub fn pair(a: &str, b: &str, severity: Severity, zh: &str, en: &str) -> Interaction {
        Interaction {
            a: Side::parse(a),
            b: Side::parse(b),
            severity,
            message_zh: zh.to_string(),
            message_en: en.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.interactions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.interactions.is_empty()
    }

    /// The interactions between two drugs (looked up by the first drug's code and class).
    pub fn between<'a>(&'a self, x: &'a Drug, y: &'a Drug) -> impl Iterator<Item = &'a Interaction> + 'a {
        let mut keys = vec![format!("d:{}", x.code)];
        keys.extend(x.class.as_ref().map(|c| format!("c:{c}")));
        let mut seen: Vec<usize> = keys.iter().filter_map(|k| self.by_key.get(k)).flatten().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().map(|i| &self.interactions[i]).filter(move |i| i.applies(x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_tables_parse() {
        let c = Catalogue::demo();
        assert_eq!(c.len(), 30);
        let morphine = c.get("D0019").unwrap();
        assert_eq!(morphine.control.as_deref(), Some("narcotic"));
        assert_eq!(c.get("D0025").unwrap().category, Category::Herbal);
        let k = Knowledge::demo();
        assert_eq!(k.len(), 7);
        let (warfarin, aspirin) = (c.get("D0009").unwrap(), c.get("D0007").unwrap());
        assert_eq!(k.between(aspirin, warfarin).count(), 1, "either order, by class");
        assert_eq!(k.between(warfarin, aspirin).count(), 1);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = Catalogue::parse("X1\t名\twestern\ttablet\t1\tsecret\t-\t-\t-\t-\t-\t-\t-\t-\tno").unwrap_err();
        assert!(e.contains("line 1") && e.contains("control"), "{e}");
        let e = Catalogue::parse("X1\t名\tpill\ttablet\t1\tnone\t-\t-\t-\t-\t-\t-\t-\t-\tno").unwrap_err();
        assert!(e.contains("category"), "{e}");
        let e = Catalogue::parse("X1\t名\twestern\ttablet\t-1\tnone\t-\t-\t-\t-\t-\t-\t-\t-\tno").unwrap_err();
        assert!(e.contains("strength_mg"), "{e}");
        let e = Knowledge::parse("# c\nD1\tD2\tsevere\t中\ten").unwrap_err();
        assert!(e.contains("line 2") && e.contains("severity"), "{e}");
    }
}
