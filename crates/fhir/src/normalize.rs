//! Value normalisation shared by index extraction and search parsing, so that a stored value
//! and a searched value are always compared in the same form: strings folded for matching,
//! dates as inclusive epoch-millisecond ranges, decimals with their precision range.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// Folds a string for FHIR string matching: lower-case, common Latin accents removed,
/// runs of whitespace collapsed to one space, trimmed. CJK text is kept as is.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_space = true;
    for c in s.chars() {
        if c.is_whitespace() {
            if !last_space {
                out.push(' ');
                last_space = true;
            }
            continue;
        }
        last_space = false;
        for lc in c.to_lowercase() {
            out.push(strip_accent(lc));
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

fn strip_accent(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ǎ' => 'a',
        'ç' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ě' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'ǐ' => 'i',
        'ñ' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ǒ' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ǔ' | 'ǖ' | 'ǘ' | 'ǚ' | 'ǜ' => 'u',
        'ý' | 'ÿ' => 'y',
        _ => c,
    }
}

/// The inclusive range, in epoch milliseconds UTC, covered by a FHIR date, dateTime or
/// instant: `2020` → the whole year, `2020-03` → the month, `2020-03-04` → the day,
/// `2020-03-04T10:00:00+08:00` → that second (or millisecond, if fractional seconds are
/// given). A value without a time zone is taken as UTC. `None` if the text is not a valid
/// FHIR date/dateTime/instant.
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    let bytes = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| bytes.get(r.clone()).is_some_and(|b| b.iter().all(u8::is_ascii_digit));
    match s.len() {
        4 if digits(0..4) => {
            let y: i32 = s.parse().ok()?;
            let start = NaiveDate::from_ymd_opt(y, 1, 1)?;
            let end = NaiveDate::from_ymd_opt(y + 1, 1, 1)?;
            Some((day_start(start), day_start(end) - 1))
        }
        7 if digits(0..4) && bytes[4] == b'-' && digits(5..7) => {
            let y: i32 = s[0..4].parse().ok()?;
            let m: u32 = s[5..7].parse().ok()?;
            let start = NaiveDate::from_ymd_opt(y, m, 1)?;
            let end =
                if m == 12 { NaiveDate::from_ymd_opt(y + 1, 1, 1)? } else { NaiveDate::from_ymd_opt(y, m + 1, 1)? };
            Some((day_start(start), day_start(end) - 1))
        }
        10 => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            if !digits(0..4) {
                return None;
            }
            let start = day_start(d);
            Some((start, start + 86_400_000 - 1))
        }
        _ => {
            if s.len() < 16 || bytes[10] != b'T' {
                return None;
            }
            let fraction = s.find('.').is_some();
            let parsed: DateTime<Utc> = if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
                dt.with_timezone(&Utc)
            } else if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%:z") {
                dt.with_timezone(&Utc)
            } else if let Ok(naive) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                Utc.from_utc_datetime(&naive)
            } else if let Ok(naive) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M") {
                let ms = Utc.from_utc_datetime(&naive).timestamp_millis();
                return Some((ms, ms + 60_000 - 1));
            } else {
                return None;
            };
            let ms = parsed.timestamp_millis();
            let minute_precision = s.len() >= 16 && s.as_bytes().get(16) != Some(&b':');
            if minute_precision {
                Some((ms, ms + 60_000 - 1))
            } else if fraction {
                Some((ms, ms))
            } else {
                Some((ms, ms + 999))
            }
        }
    }
}

fn day_start(d: NaiveDate) -> i64 {
    Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)).timestamp_millis()
}

/// Formats epoch milliseconds as a FHIR instant (`2024-05-01T08:30:00.000Z`).
pub fn format_instant(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_default()
}

/// A decimal's value and the half-open range implied by its precision:
/// `100` → (100, 99.5, 100.5), `1.50` → (1.5, 1.495, 1.505), `1e2` → (100, 50, 150).
pub fn decimal_range(s: &str) -> Option<(f64, f64, f64)> {
    let s = s.trim();
    let value: f64 = s.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let (mantissa, exponent) = match lower.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (lower.as_str(), 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some((value, value - half, value + half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_fold() {
        assert_eq!(normalize_string("  Zoë  van   Dijk "), "zoe van dijk");
        assert_eq!(normalize_string("张 三"), "张 三");
        assert_eq!(normalize_string("ÉMILE"), "emile");
    }

    #[test]
    fn date_ranges() {
        let (lo, hi) = date_range("2020").unwrap();
        assert_eq!(format_instant(lo), "2020-01-01T00:00:00.000Z");
        assert_eq!(format_instant(hi), "2020-12-31T23:59:59.999Z");
        let (lo, hi) = date_range("2020-02").unwrap();
        assert_eq!(format_instant(hi), "2020-02-29T23:59:59.999Z");
        assert_eq!(format_instant(lo), "2020-02-01T00:00:00.000Z");
        let (lo, hi) = date_range("2020-03-04T10:00:00+08:00").unwrap();
        assert_eq!(format_instant(lo), "2020-03-04T02:00:00.000Z");
        assert_eq!(hi - lo, 999);
        let (lo, hi) = date_range("2020-03-04T10:00:00.123Z").unwrap();
        assert_eq!(lo, hi);
        assert!(date_range("2020-13-01").is_none());
        assert!(date_range("20200101").is_none());
        assert!(date_range("2020-02-30").is_none());
        assert!(date_range("yesterday").is_none());
    }

    #[test]
    fn decimal_ranges() {
        assert_eq!(decimal_range("100"), Some((100.0, 99.5, 100.5)));
        let (v, lo, hi) = decimal_range("1.50").unwrap();
        assert_eq!(v, 1.5);
        assert!((lo - 1.495).abs() < 1e-12 && (hi - 1.505).abs() < 1e-12);
        assert_eq!(decimal_range("1e2"), Some((100.0, 50.0, 150.0)));
        assert!(decimal_range("abc").is_none());
        assert!(decimal_range("NaN").is_none());
    }
}
