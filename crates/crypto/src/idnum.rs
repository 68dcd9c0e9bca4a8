//! GB 11643-1999 citizen identity numbers: 6-digit division code, 8-digit birth date, 3-digit
//! sequence (odd for men, even for women) and an ISO 7064 MOD 11-2 check character (`0`–`9`,
//! `X`). Old 15-digit numbers (two-digit year, no check character) convert to 18 digits.
//!
//! The division code is checked for shape only: its first two digits must be a province-level
//! code of GB/T 2260 (11–15, 21–23, 31–37, 41–46, 50–54, 61–65, 71, 81–83), or `9` followed by
//! one (the 2023 permanent-residence ID for foreigners). The birth date must be a real calendar
//! date between 1850 and 2100 (no clock is read: a future date within that range passes).

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK: &[u8; 11] = b"10X98765432";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an ID number has 18 characters (or 15 digits for old cards), not {0}")]
    Length(usize),
    #[error("the first 17 characters of an ID number are digits")]
    NotDigits,
    #[error("the birth date {0} in the ID number is not a real date")]
    BirthDate(String),
    #[error("the division code {0} in the ID number is not a GB/T 2260 code")]
    Division(String),
    #[error("the check character should be {expected}, not {found}: the number was mistyped")]
    Check { expected: char, found: char },
}

/// A valid 18-character ID number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdNumber(String);

/// The check character of the first 17 digits of an ID number (ISO 7064 MOD 11-2), for
/// generating test numbers; `None` unless `first17` is exactly 17 ASCII digits.
pub fn check_character(first17: &str) -> Option<char> {
    (first17.len() == 17 && first17.bytes().all(|b| b.is_ascii_digit())).then(|| check_char(first17))
}

fn check_char(first17: &str) -> char {
    let sum: u32 = first17.bytes().zip(WEIGHTS).map(|(b, w)| u32::from(b - b'0') * w).sum();
    CHECK[(sum % 11) as usize] as char
}

fn valid_date(y: u32, m: u32, d: u32) -> bool {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1850..=2100).contains(&y) && (1..=days).contains(&d)
}

fn is_province(code: &[u8]) -> bool {
    matches!(
        code,
        b"11"
            | b"12"
            | b"13"
            | b"14"
            | b"15"
            | b"21"
            | b"22"
            | b"23"
            | b"31"
            | b"32"
            | b"33"
            | b"34"
            | b"35"
            | b"36"
            | b"37"
            | b"41"
            | b"42"
            | b"43"
            | b"44"
            | b"45"
            | b"46"
            | b"50"
            | b"51"
            | b"52"
            | b"53"
            | b"54"
            | b"61"
            | b"62"
            | b"63"
            | b"64"
            | b"65"
            | b"71"
            | b"81"
            | b"82"
            | b"83"
    )
}

fn check_body(first17: &str) -> Result<(), IdError> {
    if first17.len() != 17 || !first17.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::NotDigits);
    }
    let division = &first17[..6];
    let d = division.as_bytes();
    let shaped = is_province(&d[..2]) || (d[0] == b'9' && is_province(&d[1..3]));
    if !shaped {
        return Err(IdError::Division(division.to_string()));
    }
    let date = &first17[6..14];
    let (y, m, d) = (date[..4].parse().unwrap_or(0), date[4..6].parse().unwrap_or(0), date[6..].parse().unwrap_or(0));
    if !valid_date(y, m, d) {
        return Err(IdError::BirthDate(date.to_string()));
    }
    Ok(())
}

/// Validates an 18-character number (a lower-case `x` is accepted and normalised).
pub fn validate(text: &str) -> Result<IdNumber, IdError> {
    let text = text.trim().to_ascii_uppercase();
    let n = text.chars().count();
    if n != 18 {
        return Err(IdError::Length(n));
    }
    if !text.is_ascii() {
        return Err(IdError::NotDigits);
    }
    let (first17, last) = text.split_at(17);
    check_body(first17)?;
    let expected = check_char(first17);
    let found = last.chars().next().unwrap_or(' ');
    if found != expected {
        return Err(IdError::Check { expected, found });
    }
    Ok(IdNumber(text))
}

/// Converts an old 15-digit number (born 19xx) to its 18-character form.
pub fn upgrade_15_to_18(text: &str) -> Result<IdNumber, IdError> {
    let text = text.trim();
    if text.len() != 15 {
        return Err(IdError::Length(text.chars().count()));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::NotDigits);
    }
    let first17 = format!("{}19{}", &text[..6], &text[6..]);
    check_body(&first17)?;
    let check = check_char(&first17);
    Ok(IdNumber(format!("{first17}{check}")))
}

/// Validates either form, returning the 18-character number.
pub fn normalize(text: &str) -> Result<IdNumber, IdError> {
    if text.trim().len() == 15 { upgrade_15_to_18(text) } else { validate(text) }
}

impl IdNumber {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// GB/T 2260 division code of registration.
    pub fn division(&self) -> &str {
        &self.0[..6]
    }

    /// `YYYY-MM-DD`.
    pub fn birth_date(&self) -> String {
        format!("{}-{}-{}", &self.0[6..10], &self.0[10..12], &self.0[12..14])
    }

    /// `male` or `female` (FHIR administrative gender).
    pub fn sex(&self) -> &'static str {
        if (self.0.as_bytes()[16] - b'0') % 2 == 1 { "male" } else { "female" }
    }

    /// The number with the middle hidden, for display (`110105********002X`).
    pub fn masked(&self) -> String {
        format!("{}********{}", &self.0[..6], &self.0[14..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_numbers() {
        let id = validate("11010519491231002x").unwrap();
        assert_eq!(id.as_str(), "11010519491231002X");
        assert_eq!((id.division(), id.birth_date().as_str(), id.sex()), ("110105", "1949-12-31", "female"));
        assert_eq!(id.masked(), "110105********002X");
        // Synthetic, check character computed: a man born on 2000-02-29 in Fuzhou.
        let man = validate("350102200002290019").unwrap();
        assert_eq!((man.sex(), man.birth_date().as_str(), man.division()), ("male", "2000-02-29", "350102"));
        assert_eq!(validate("350102190002290012"), Err(IdError::BirthDate("19000229".into())), "1900 was not leap");
    }

    #[test]
    fn invalid_numbers_say_why() {
        assert_eq!(validate("110105194912310021"), Err(IdError::Check { expected: 'X', found: '1' }));
        assert_eq!(validate("1101051949123100"), Err(IdError::Length(16)));
        assert_eq!(validate("11010519491331002X"), Err(IdError::BirthDate("19491331".into())));
        assert_eq!(validate("11010519490229002X").map(|_| ()), Err(IdError::BirthDate("19490229".into())));
        assert_eq!(validate("1101051949123100AX"), Err(IdError::NotDigits));
        assert_eq!(validate("01010519491231002X"), Err(IdError::Division("010105".into())));
        assert_eq!(validate("99010519491231002X").map(|_| ()), Err(IdError::Division("990105".into())));
        // Multi-byte characters are an error, not a panic (18 characters, 20 bytes).
        assert_eq!(validate("1101051949123100中X"), Err(IdError::NotDigits));
        assert_eq!(validate("11010519491231002中"), Err(IdError::NotDigits));
        assert!(normalize("一二三四五").is_err());
        assert!(normalize("").is_err());
        assert_eq!(
            IdError::Check { expected: 'X', found: '1' }.to_string(),
            "the check character should be X, not 1: the number was mistyped"
        );
    }

    #[test]
    fn fifteen_to_eighteen() {
        // 110105491231002 is the 15-digit form of 11010519491231002X.
        assert_eq!(upgrade_15_to_18("110105491231002").unwrap().as_str(), "11010519491231002X");
        assert_eq!(normalize("110105491231002").unwrap(), validate("11010519491231002X").unwrap());
        assert!(upgrade_15_to_18("110105491331002").is_err());
    }
}
