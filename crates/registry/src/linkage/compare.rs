//! Field comparisons: each turns a pair of prepared records into one agreement level per
//! comparison (0 = strongest agreement), or [`NULL`] when either side lacks the field.

use strsim::jaro_winkler;

use super::record::{Name, Prepared};

/// The level of a comparison that cannot be made (a field is missing); it weighs nothing.
pub const NULL: u8 = u8::MAX;

/// The comparisons, in the order of a comparison vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    IdNumber,
    Family,
    Given,
    BirthDate,
    Sex,
    Phone,
    StreetNumber,
    /// Address, locality and region together: a move changes them all at once, and counting
    /// them as three independent disagreements would weigh one move three times.
    Residence,
    Postcode,
}

impl Comparison {
    pub const ALL: [Comparison; 9] = [
        Comparison::IdNumber,
        Comparison::Family,
        Comparison::Given,
        Comparison::BirthDate,
        Comparison::Sex,
        Comparison::Phone,
        Comparison::StreetNumber,
        Comparison::Residence,
        Comparison::Postcode,
    ];

    /// How many agreement levels the comparison has.
    pub const fn levels(self) -> usize {
        match self {
            Comparison::IdNumber | Comparison::Family | Comparison::Given | Comparison::BirthDate => 4,
            Comparison::Residence => 5,
            Comparison::Sex | Comparison::StreetNumber => 2,
            _ => 3,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Comparison::IdNumber => "id_number",
            Comparison::Family => "family",
            Comparison::Given => "given",
            Comparison::BirthDate => "birth_date",
            Comparison::Sex => "sex",
            Comparison::Phone => "phone",
            Comparison::StreetNumber => "street_number",
            Comparison::Residence => "residence",
            Comparison::Postcode => "postcode",
        }
    }

    /// What each level means, for explanations and documentation.
    pub const fn level_names(self) -> &'static [&'static str] {
        match self {
            Comparison::Family | Comparison::Given => &[
                "exact",
                "same pinyin or Jaro-Winkler ≥ 0.94",
                "same folded pinyin or Jaro-Winkler ≥ 0.88",
                "different",
            ],
            Comparison::BirthDate => &["exact", "one edit or day and month swapped", "two edits", "different"],
            Comparison::Sex | Comparison::StreetNumber => &["same", "different"],
            Comparison::IdNumber => &[
                "exact",
                "one edit",
                "different (one is not a valid GB 11643 number)",
                "different valid GB 11643 numbers",
            ],
            Comparison::Phone | Comparison::Postcode => &["exact", "one edit", "different"],
            Comparison::Residence => &[
                "same address (Jaro-Winkler ≥ 0.92)",
                "similar address (≥ 0.75), or same locality in the same region",
                "same region",
                "same city (first four digits of the division)",
                "different",
            ],
        }
    }
}

pub const COMPARISONS: usize = Comparison::ALL.len();

/// A comparison vector.
pub type Gamma = [u8; COMPARISONS];

fn both<'a, T: ?Sized>(a: Option<&'a T>, b: Option<&'a T>) -> Option<(&'a T, &'a T)> {
    Some((a?, b?))
}

/// Whether `a` and `b` are at most `n` edits apart (insertions, deletions, substitutions and
/// swaps of neighbours: optimal string alignment distance). Works on bytes for ASCII (the
/// identifiers, phones and dates it is used for), on characters otherwise; stops as soon as
/// the distance must exceed `n`.
fn edits_at_most(a: &str, b: &str, n: usize) -> bool {
    if a.is_ascii() && b.is_ascii() {
        osa_within(a.as_bytes(), b.as_bytes(), n)
    } else {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        osa_within(&a, &b, n)
    }
}

fn osa_within<T: PartialEq>(a: &[T], b: &[T], n: usize) -> bool {
    if a.len().abs_diff(b.len()) > n {
        return false;
    }
    if n == 1 && a.len() == b.len() {
        // One edit between strings of one length is a substitution or a swap of neighbours
        // (an insertion needs a deletion too): at most two differing positions, and two only
        // when they are neighbours holding each other's characters.
        let mut diff = (0..a.len()).filter(|&i| a[i] != b[i]);
        return match (diff.next(), diff.next(), diff.next()) {
            (None, _, _) | (Some(_), None, _) => true,
            (Some(i), Some(j), None) => j == i + 1 && a[i] == b[j] && a[j] == b[i],
            _ => false,
        };
    }
    if a.len() > 64 || b.len() > 64 {
        return false;
    }
    // Three rows of the dynamic programme, on the stack.
    let w = b.len() + 1;
    let mut prev2 = [0usize; 65];
    let mut prev = [0usize; 65];
    let mut cur = [0usize; 65];
    for (j, v) in prev.iter_mut().enumerate().take(w) {
        *v = j;
    }
    for i in 1..=a.len() {
        cur[0] = i;
        let mut row_min = cur[0];
        for j in 1..w {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
            row_min = row_min.min(d);
        }
        if row_min > n {
            return false;
        }
        prev2[..w].copy_from_slice(&prev[..w]);
        prev[..w].copy_from_slice(&cur[..w]);
    }
    prev[w - 1] <= n
}

fn name_level(a: &Name, b: &Name) -> u8 {
    if a.text == b.text {
        0
    } else if a.pinyin == b.pinyin || jaro_winkler(&a.text, &b.text) >= 0.94 {
        1
    } else if a.phonetic == b.phonetic || jaro_winkler(&a.pinyin, &b.pinyin) >= 0.88 {
        2
    } else {
        3
    }
}

fn exact_edit(a: Option<&str>, b: Option<&str>) -> u8 {
    match both(a, b) {
        None => NULL,
        Some((a, b)) if a == b => 0,
        Some((a, b)) if edits_at_most(a, b, 1) => 1,
        Some(_) => 2,
    }
}

fn birth_level(a: &str, b: &str) -> u8 {
    if a == b {
        return 0;
    }
    // YYYYMMDD with day and month swapped.
    let swapped = a.len() == 8 && b.len() == 8 && a[..4] == b[..4] && a[4..6] == b[6..8] && a[6..8] == b[4..6];
    if swapped || edits_at_most(a, b, 1) {
        1
    } else if edits_at_most(a, b, 2) {
        2
    } else {
        3
    }
}

fn residence(a: &Prepared, b: &Prepared) -> u8 {
    let region = both(a.region.as_deref(), b.region.as_deref()).map(|(x, y)| {
        if x == y {
            2
        } else if x.len() == 6 && y.len() == 6 && x.is_ascii() && y.is_ascii() && x[..4] == y[..4] {
            1
        } else {
            0
        }
    });
    let same_region = region.is_none_or(|r| r == 2);
    // Addresses and localities count only within one region: in another, the similarity of
    // their text is not computed at all (most candidate pairs live in different regions).
    let address = both(a.address.as_deref(), b.address.as_deref()).map(|(x, y)| {
        if x == y {
            1.0
        } else if same_region {
            jaro_winkler(x, y)
        } else {
            0.0
        }
    });
    let locality = both(a.locality.as_deref(), b.locality.as_deref())
        .map(|(x, y)| x == y || (same_region && jaro_winkler(x, y) >= 0.88));
    if address.is_none() && locality.is_none() && region.is_none() {
        return NULL;
    }
    match (address, locality, region) {
        (Some(s), _, _) if s >= 0.92 && same_region => 0,
        (Some(s), _, _) if s >= 0.75 && same_region => 1,
        (_, Some(true), _) if same_region => 1,
        (_, _, Some(2)) => 2,
        (_, _, Some(1)) => 3,
        _ => 4,
    }
}

/// Compares two prepared records.
pub(crate) fn gamma(a: &Prepared, b: &Prepared) -> Gamma {
    let mut g = [NULL; COMPARISONS];
    g[0] = match both(a.id_number.as_deref(), b.id_number.as_deref()) {
        None => NULL,
        Some((x, y)) if x == y => 0,
        Some((x, y)) if edits_at_most(x, y, 1) => 1,
        Some(_) if a.id_valid && b.id_valid => 3,
        Some(_) => 2,
    };
    // Names, allowing family and given names recorded the other way round.
    if let (Some(af), Some(bf)) = (&a.family, &b.family) {
        g[1] = name_level(af, bf);
    }
    if let (Some(ag), Some(bg)) = (&a.given, &b.given) {
        g[2] = name_level(ag, bg);
    }
    if let (Some(af), Some(ag), Some(bf), Some(bg)) = (&a.family, &a.given, &b.family, &b.given)
        && g[1] > 1
        && g[2] > 1
    {
        let swapped = name_level(af, bg).max(name_level(ag, bf));
        if swapped <= 1 {
            g[1] = 1;
            g[2] = 1;
        }
    }
    g[3] = match both(a.birth_date.as_deref(), b.birth_date.as_deref()) {
        None => NULL,
        Some((a, b)) => birth_level(a, b),
    };
    g[4] = match (a.sex, b.sex) {
        (Some(x), Some(y)) => u8::from(x != y),
        _ => NULL,
    };
    g[5] = exact_edit(a.phone.as_deref(), b.phone.as_deref());
    g[6] = match both(a.street_number.as_deref(), b.street_number.as_deref()) {
        None => NULL,
        Some((x, y)) => u8::from(x != y),
    };
    g[7] = residence(a, b);
    g[8] = exact_edit(a.postcode.as_deref(), b.postcode.as_deref());
    g
}

#[cfg(test)]
mod tests {
    use super::super::record::Record;
    use super::*;

    fn rec(family: &str, given: &str, birth: &str) -> Prepared {
        Record {
            family: Some(family.into()),
            given: Some(given.into()),
            birth_date: Some(birth.into()),
            ..Default::default()
        }
        .prepare()
    }

    #[test]
    fn levels_of_names_and_dates() {
        let cases = [
            (("王", "芳", "19800102"), ("王", "芳", "19800102"), [0, 0, 0]),
            (("王", "芳", "19800102"), ("汪", "方", "19800201"), [1, 1, 1]), // homophones, day/month swapped
            (("刘", "宁", "19800102"), ("刘", "林", "19800112"), [0, 2, 1]), // n/l and ing/in, one edit
            (("王", "芳", "19800102"), ("芳", "王", "19800102"), [1, 1, 0]), // swapped names
            (("smith", "john", "19800102"), ("smyth", "jon", "19811102"), [2, 2, 2]), // Soundex; two edits
            (("王", "芳", "19800102"), ("李", "强", "19650923"), [3, 3, 3]),
        ];
        for (a, b, want) in cases {
            let g = gamma(&rec(a.0, a.1, a.2), &rec(b.0, b.1, b.2));
            assert_eq!([g[1], g[2], g[3]], want, "{a:?} vs {b:?}");
            assert_eq!(g[0], NULL, "no ID on either side weighs nothing");
        }
    }

    #[test]
    fn edit_distance_bounds() {
        for (a, b, n, want) in [
            ("11010519491231002X", "11010519491231002X", 0, true),
            ("11010519491231002X", "11010519491231003X", 1, true),
            ("11010519491231002X", "11010519491213002X", 1, true), // swapped neighbours
            ("11010519491231002X", "11010519491213003X", 1, false),
            ("19800102", "1980012", 1, true),
            ("19800102", "19811102", 1, false),
            ("19800102", "19811102", 2, true),
            ("", "", 0, true),
            ("张伟", "张玮", 1, true),
            ("张伟", "李玮", 1, false),
        ] {
            assert_eq!(edits_at_most(a, b, n), want, "{a} {b} {n}");
            assert_eq!(edits_at_most(b, a, n), want, "{b} {a} {n}");
        }
    }

    #[test]
    fn level_names_cover_every_level() {
        for c in Comparison::ALL {
            assert_eq!(c.level_names().len(), c.levels(), "{}", c.name());
        }
    }
}
