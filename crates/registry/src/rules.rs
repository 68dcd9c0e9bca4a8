//! What the registries' write rules report, and the small readers of FHIR JSON they share.

use chrono::NaiveDate;
use serde_json::Value;

/// One broken registry rule: the element (a FHIRPath-like location such as
/// `Organization.identifier[0].value`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { path: path.into(), message: message.into() }
    }
}

/// A code of one of the registry's CodeSystems that is not in it: a problem at `path` that lists
/// the known codes.
pub(crate) fn check_code(
    code: &str,
    known: &[&str],
    what: &str,
    system: &str,
    path: String,
    problems: &mut Vec<Problem>,
) {
    if !known.contains(&code) {
        problems.push(Problem::new(path, format!("'{code}' is not {what} of {system} ({})", known.join(", "))));
    }
}

/// The items of an array element with their index (none when absent or not an array).
pub(crate) fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v[key].as_array().into_iter().flatten().enumerate()
}

/// Whether `meta.profile` lists this profile.
pub(crate) fn claims_profile(resource: &Value, profile: &str) -> bool {
    items(&resource["meta"], "profile").any(|(_, p)| p == profile)
}

/// The codings of a CodeableConcept from one system: (index, code).
pub(crate) fn codes_in<'a>(concept: &'a Value, system: &'a str) -> impl Iterator<Item = (usize, &'a str)> {
    items(concept, "coding")
        .filter(move |(_, c)| c["system"] == system)
        .filter_map(|(i, c)| Some((i, c["code"].as_str()?)))
}

/// A FHIR date or dateTime as a day: `2020` and `2020-05` are their first day, or their last
/// day when `end` is set (a period that ends in `2020` lasts through 31 December).
pub(crate) fn fhir_date(text: &str, end: bool) -> Option<NaiveDate> {
    let day = text.get(..10).unwrap_or(text);
    let parts: Vec<&str> = day.split('-').collect();
    let number = |i: usize| parts.get(i).and_then(|p| p.parse::<u32>().ok());
    let year = parts.first()?.parse::<i32>().ok()?;
    match parts.len() {
        1 if end => NaiveDate::from_ymd_opt(year, 12, 31),
        1 => NaiveDate::from_ymd_opt(year, 1, 1),
        2 if end => {
            let first = NaiveDate::from_ymd_opt(year, number(1)?, 1)?;
            first.checked_add_months(chrono::Months::new(1))?.pred_opt()
        }
        2 => NaiveDate::from_ymd_opt(year, number(1)?, 1),
        3 => NaiveDate::from_ymd_opt(year, number(1)?, number(2)?),
        _ => None,
    }
}

/// A Period as days: (start, end), each open when absent.
pub(crate) fn period(p: &Value) -> (Option<NaiveDate>, Option<NaiveDate>) {
    (p["start"].as_str().and_then(|s| fhir_date(s, false)), p["end"].as_str().and_then(|s| fhir_date(s, true)))
}

/// A period that ends before it starts.
pub(crate) fn check_period(p: &Value, path: &str, problems: &mut Vec<Problem>) {
    if let (Some(start), Some(end)) = period(p)
        && end < start
    {
        problems.push(Problem::new(path, format!("the period ends ({end}) before it starts ({start})")));
    }
}

/// The id a reference names (`Organization/org-1` → `org-1`), when it is of that type.
pub(crate) fn reference_id<'a>(reference: &'a Value, resource_type: &str) -> Option<&'a str> {
    let text = reference["reference"].as_str()?;
    let id = text.strip_prefix(resource_type)?.strip_prefix('/')?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dates_cover_their_span() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day);
        assert_eq!(fhir_date("2020", false), d(2020, 1, 1));
        assert_eq!(fhir_date("2020", true), d(2020, 12, 31));
        assert_eq!(fhir_date("2024-02", true), d(2024, 2, 29));
        assert_eq!(fhir_date("2024-02-10T08:00:00+08:00", false), d(2024, 2, 10));
        assert_eq!(fhir_date("2024-13-01", false), None);
    }
}
