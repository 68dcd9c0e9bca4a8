//! The record the linkage compares, and its normalized, prepared form.

use pinyin::ToPinyin;

/// What a source system says about a person. Every field is optional: linkage must survive
/// missing data. Free text is normalized when the record is prepared, never here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Family name (姓), or the surname of a Latin-script name.
    pub family: Option<String>,
    /// Given name (名).
    pub given: Option<String>,
    /// Birth date as `YYYYMMDD` or `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    /// `M` or `F` (anything else is treated as unknown).
    pub sex: Option<char>,
    /// National identity number (GB 11643 for residents of China; 15-digit numbers are compared
    /// in their 18-digit form), or another person-level identifier.
    pub id_number: Option<String>,
    pub phone: Option<String>,
    pub street_number: Option<String>,
    /// Street address, free text.
    pub address: Option<String>,
    /// Town, township, suburb.
    pub locality: Option<String>,
    pub postcode: Option<String>,
    /// GB/T 2260 division code (six digits), or a state or province name.
    pub region: Option<String>,
}

/// A name, normalized, with its phonetic forms.
#[derive(Debug, Clone, Default)]
pub(crate) struct Name {
    /// Lower case, no spaces or punctuation; Hanzi kept as written.
    pub text: String,
    /// Toneless pinyin of Hanzi names (`zhangwei`); the text itself for Latin names.
    pub pinyin: String,
    /// Pinyin with the dialect confusions folded (zh/z, ch/c, sh/s, n/l, ing/in, eng/en) for Hanzi
    /// names; a Soundex code for Latin names. Used for blocking and the fuzzy level.
    pub phonetic: String,
}

/// A record ready for comparison.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prepared {
    pub family: Option<Name>,
    pub given: Option<Name>,
    pub birth_date: Option<String>,
    pub sex: Option<char>,
    pub id_number: Option<String>,
    /// The ID number is a valid GB 11643 number (checksum, date and division shape).
    pub id_valid: bool,
    pub phone: Option<String>,
    pub street_number: Option<String>,
    pub address: Option<String>,
    pub locality: Option<String>,
    pub postcode: Option<String>,
    pub region: Option<String>,
}

fn clean(s: &Option<String>) -> Option<String> {
    let s = s.as_deref()?;
    let out: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '.' | ',' | '-' | '\'' | '·' | '•' | '，' | '、'))
        .flat_map(char::to_lowercase)
        .collect();
    (!out.is_empty()).then_some(out)
}

fn clean_text(s: &Option<String>) -> Option<String> {
    let s = s.as_deref()?;
    let out = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    (!out.is_empty()).then_some(out)
}

fn digits(s: &Option<String>) -> Option<String> {
    let out: String = s.as_deref()?.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_uppercase();
    (!out.is_empty()).then_some(out)
}

fn is_han(c: char) -> bool {
    ('\u{4e00}'..='\u{9fff}').contains(&c) || ('\u{3400}'..='\u{4dbf}').contains(&c)
}

/// Folds the confusions of southern and northern speakers into one spelling, syllable by syllable.
pub(crate) fn fold_syllable(s: &str) -> String {
    let (initial, rest) = if let Some(r) = s.strip_prefix("zh") {
        ("z", r)
    } else if let Some(r) = s.strip_prefix("ch") {
        ("c", r)
    } else if let Some(r) = s.strip_prefix("sh") {
        ("s", r)
    } else if let Some(r) = s.strip_prefix('n') {
        // "n" as a syllable initial (not the final -n): folded with l.
        ("l", r)
    } else {
        ("", s)
    };
    let rest = if let Some(r) = rest.strip_suffix("ing") {
        format!("{r}in")
    } else if let Some(r) = rest.strip_suffix("eng") {
        format!("{r}en")
    } else {
        rest.to_string()
    };
    format!("{initial}{rest}")
}

/// American Soundex, for Latin-script names.
pub(crate) fn soundex(s: &str) -> String {
    fn code(c: char) -> char {
        match c {
            'b' | 'f' | 'p' | 'v' => '1',
            'c' | 'g' | 'j' | 'k' | 'q' | 's' | 'x' | 'z' => '2',
            'd' | 't' => '3',
            'l' => '4',
            'm' | 'n' => '5',
            'r' => '6',
            'h' | 'w' => '-',
            _ => '0',
        }
    }
    let letters: Vec<char> = s.chars().filter(char::is_ascii_alphabetic).map(|c| c.to_ascii_lowercase()).collect();
    let Some(&first) = letters.first() else { return String::new() };
    let mut out = String::from(first.to_ascii_uppercase());
    let mut last = code(first);
    for &c in &letters[1..] {
        let d = code(c);
        if d == '-' {
            continue;
        }
        if d != '0' && d != last {
            out.push(d);
            if out.len() == 4 {
                break;
            }
        }
        last = d;
    }
    while out.len() < 4 {
        out.push('0');
    }
    out
}

fn name(s: &Option<String>) -> Option<Name> {
    let text = clean(s)?;
    if text.chars().any(is_han) {
        let mut pinyin = String::new();
        let mut phonetic = String::new();
        for (c, p) in text.chars().zip(text.as_str().to_pinyin()) {
            match p {
                Some(p) => {
                    pinyin.push_str(p.plain());
                    phonetic.push_str(&fold_syllable(p.plain()));
                }
                None => {
                    pinyin.push(c);
                    phonetic.push(c);
                }
            }
        }
        Some(Name { text, pinyin, phonetic })
    } else {
        let phonetic = soundex(&text);
        Some(Name { pinyin: text.clone(), text, phonetic })
    }
}

fn birth_date(s: &Option<String>) -> Option<String> {
    let d: String = s.as_deref()?.chars().filter(char::is_ascii_digit).collect();
    (d.len() == 8).then_some(d)
}

/// GB 11643 numbers in their canonical 18-character form (and `true`); anything else as its
/// letters and digits (and `false`): an invalid number is compared as written, never "fixed".
fn id_number(s: &Option<String>) -> Option<(String, bool)> {
    let raw = digits(s)?;
    Some(match crypto::idnum::normalize(&raw) {
        Ok(id) => (id.as_str().to_string(), true),
        Err(_) => (raw, false),
    })
}

fn phone(s: &Option<String>) -> Option<String> {
    let d: String = s.as_deref()?.chars().filter(char::is_ascii_digit).collect();
    // Mainland mobile numbers with a country code: keep the eleven digits.
    let d = d.strip_prefix("86").filter(|r| r.len() == 11).map(str::to_string).unwrap_or(d);
    (d.len() >= 5).then_some(d)
}

impl Record {
    pub(crate) fn prepare(&self) -> Prepared {
        let id = id_number(&self.id_number);
        Prepared {
            family: name(&self.family),
            given: name(&self.given),
            birth_date: birth_date(&self.birth_date),
            sex: self.sex.map(|c| c.to_ascii_uppercase()).filter(|c| matches!(c, 'M' | 'F')),
            id_number: id.as_ref().map(|(n, _)| n.clone()),
            id_valid: id.is_some_and(|(_, valid)| valid),
            phone: phone(&self.phone),
            street_number: digits(&self.street_number),
            address: clean_text(&self.address),
            locality: clean(&self.locality),
            postcode: digits(&self.postcode),
            region: clean(&self.region),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hanzi_names_get_pinyin_and_folded_pinyin() {
        let n = name(&Some("张 晓明".into())).unwrap();
        assert_eq!(n.text, "张晓明");
        assert_eq!(n.pinyin, "zhangxiaoming");
        assert_eq!(n.phonetic, "zangxiaomin");
        // Traditional characters read the same.
        assert_eq!(name(&Some("張曉明".into())).unwrap().pinyin, "zhangxiaoming");
        // Dialect confusions fold together.
        assert_eq!(name(&Some("刘宁".into())).unwrap().phonetic, name(&Some("牛林".into())).unwrap().phonetic);
    }

    #[test]
    fn soundex_matches_the_published_examples() {
        for (name, code) in
            [("Robert", "R163"), ("Rupert", "R163"), ("Ashcraft", "A261"), ("Tymczak", "T522"), ("Pfister", "P236")]
        {
            assert_eq!(soundex(name), code, "{name}");
        }
    }

    #[test]
    fn fifteen_digit_id_numbers_compare_in_their_eighteen_digit_form() {
        let r = Record { id_number: Some("110105491231002".into()), ..Default::default() };
        assert_eq!(r.prepare().id_number.as_deref(), Some("11010519491231002X"));
        let other = Record { id_number: Some("5304218".into()), ..Default::default() };
        assert_eq!(other.prepare().id_number.as_deref(), Some("5304218"));
    }
}
