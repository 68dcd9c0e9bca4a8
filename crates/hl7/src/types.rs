//! HL7 v2 data types shared by the mappings: reading a field of any segment (not only the
//! first of its id), CE/CWE to CodeableConcept, XCN to a staff reference, EI to an Identifier,
//! NM to a JSON number with its written precision, TS to a dateTime or instant.

use serde_json::{Map, Value, json};

use crate::Hl7Error;
use crate::adt::{date_time, slug};
use crate::message::{Field, Message, Segment};

/// The first repetition of field `n` of this segment, if it has content.
pub fn field<'a>(message: &'a Message, segment: &'a Segment, n: usize) -> Option<Field<'a>> {
    message.repetitions(segment, n).into_iter().find(|f| !f.is_empty())
}

/// Component `c` of the first repetition of field `n` (empty when absent).
pub fn component(message: &Message, segment: &Segment, n: usize, c: usize) -> String {
    field(message, segment, n).map(|f| f.component(c)).unwrap_or_default()
}

/// `SEG-n` as a name for errors, with the segment's position among its kind when it repeats
/// (`OBX[3]-5`).
pub fn path(segment: &Segment, ordinal: usize, n: usize) -> String {
    if ordinal > 1 { format!("{}[{ordinal}]-{n}", segment.id()) } else { format!("{}-{n}", segment.id()) }
}

/// The URL of a coding system named in CE-3/CWE-3 (HL7 table 0396): LOINC, SNOMED CT, ICD-10,
/// UCUM and the HL7 tables by their canonical URLs; any other name (local codes, `L`, `99zzz`)
/// as a code system of the sending facility.
pub fn coding_system(name: &str, facility: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    match upper.as_str() {
        "LN" | "LOINC" => "http://loinc.org".to_string(),
        "SCT" | "SNM" | "SNOMED" | "SNOMEDCT" => "http://snomed.info/sct".to_string(),
        "I10" | "ICD10" | "ICD-10" => "http://hl7.org/fhir/sid/icd-10".to_string(),
        "UCUM" => "http://unitsofmeasure.org".to_string(),
        _ => match upper.strip_prefix("HL7").filter(|t| t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit())) {
            Some(table) => format!("http://terminology.hl7.org/CodeSystem/v2-{table}"),
            None => {
                let local = if upper.is_empty() { "local".to_string() } else { name.trim().to_ascii_lowercase() };
                format!("https://hutong.dev/fhir/CodeSystem/{}/{}", slug(facility), slug(&local))
            }
        },
    }
}

/// CE/CWE to a CodeableConcept: the identifier triplet (1–3) and the alternate triplet (4–6)
/// as codings, `text` the original text (CWE-9) or the first display. `None` when empty.
pub fn codeable(ce: &Field<'_>, facility: &str) -> Option<Value> {
    let mut codings = Vec::new();
    for first in [1, 4] {
        let (code, display, system) = (ce.component(first), ce.component(first + 1), ce.component(first + 2));
        if code.is_empty() {
            continue;
        }
        let mut coding = json!({"system": coding_system(&system, facility), "code": code});
        if !display.is_empty() {
            coding["display"] = json!(display);
        }
        codings.push(coding);
    }
    let text = Some(ce.component(9))
        .filter(|t| !t.is_empty())
        .or_else(|| [ce.component(2), ce.component(5)].into_iter().find(|t| !t.is_empty()));
    if codings.is_empty() && text.is_none() {
        return None;
    }
    let mut concept = Map::new();
    if !codings.is_empty() {
        concept.insert("coding".into(), Value::Array(codings));
    }
    if let Some(text) = text {
        concept.insert("text".into(), json!(text));
    }
    Some(Value::Object(concept))
}

/// XCN (staff) to a logical Reference: `identifier` in the facility's staff system (XCN-1),
/// `display` family + given (XCN-2.1, XCN-3). `None` when empty.
pub fn staff(xcn: &Field<'_>, facility: &str) -> Option<Value> {
    let mut reference = Map::new();
    let id = xcn.component(1);
    if !id.is_empty() {
        reference.insert("identifier".into(), json!({"system": staff_system(facility), "value": id}));
    }
    let display = format!("{}{}", xcn.subcomponent(2, 1), xcn.component(3));
    if !display.is_empty() {
        reference.insert("display".into(), json!(display));
    }
    (!reference.is_empty()).then_some(Value::Object(reference))
}

/// The identifier system of a facility's staff numbers.
pub fn staff_system(facility: &str) -> String {
    format!("https://hutong.dev/fhir/sid/{}/staff", slug(facility))
}

/// An identifier system of the sending facility: `https://hutong.dev/fhir/sid/{facility}/{kind}`.
pub fn facility_system(facility: &str, kind: &str) -> String {
    format!("https://hutong.dev/fhir/sid/{}/{kind}", slug(facility))
}

/// NM to a JSON number keeping the digits as written (`5.60` stays `5.60`); a leading `+`,
/// a leading or trailing `.` are accepted as HL7 allows.
pub fn number(text: &str, field: &str) -> Result<Value, Hl7Error> {
    let t = text.trim();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", t.strip_prefix('+').unwrap_or(t)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let valid = !(whole.is_empty() && fraction.is_empty())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(Hl7Error::InvalidField {
            field: field.into(),
            value: text.into(),
            why: "a number (NM) is digits with an optional sign and decimal point".into(),
        });
    }
    let whole = whole.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    let literal = if fraction.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{fraction}") };
    serde_json::from_str(&literal).map_err(|_| Hl7Error::InvalidField {
        field: field.into(),
        value: text.into(),
        why: "not a number".into(),
    })
}

/// A TS/DTM to a FHIR dateTime (a time without zone is China Standard Time).
pub fn date_time_of(ts: &str, field: &str) -> Result<String, Hl7Error> {
    date_time(ts.split('^').next().unwrap_or_default(), field)
}

/// A TS/DTM to a FHIR instant, when it is precise to the second; `None` when it is not.
pub fn instant_of(ts: &str, field: &str) -> Result<Option<String>, Hl7Error> {
    let value = date_time_of(ts, field)?;
    let digits = ts.chars().take_while(char::is_ascii_digit).count();
    Ok((value.contains('T') && digits >= 14).then_some(value))
}

/// Base64 (standard alphabet, padded) of bytes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// FNV-1a (64 bits) as 16 hex digits: stable ids derived from business keys.
pub fn stable_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// ED (encapsulated data: source, type of data, subtype, encoding, data) to an Attachment with
/// `contentType` and base64 `data`. Encodings: `Base64` (checked), `A` (text, encoded here),
/// `Hex` (decoded).
pub fn attachment(ed: &Field<'_>, field: &str) -> Result<Value, Hl7Error> {
    let (kind, subtype, encoding, data) =
        (ed.component(2).to_ascii_uppercase(), ed.component(3), ed.component(4).to_ascii_uppercase(), ed.component(5));
    let bad = |why: &str| Hl7Error::InvalidField { field: field.into(), value: ed.component(4), why: why.into() };
    let sub = subtype.to_ascii_uppercase();
    let content_type = match (kind.as_str(), sub.as_str()) {
        (_, "PDF") => "application/pdf".to_string(),
        (_, "JPEG" | "JPG") => "image/jpeg".to_string(),
        (_, "PNG") => "image/png".to_string(),
        (_, "GIF") => "image/gif".to_string(),
        (_, "TIFF" | "TIF") => "image/tiff".to_string(),
        (_, "RTF") => "text/rtf".to_string(),
        (_, "HTML") => "text/html".to_string(),
        (_, "XML") => "application/xml".to_string(),
        (_, s) if s.contains('/') => subtype.to_ascii_lowercase(),
        ("TEXT" | "TX", _) => "text/plain; charset=utf-8".to_string(),
        _ => "application/octet-stream".to_string(),
    };
    let data = match encoding.as_str() {
        "BASE64" => {
            let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let ok = clean.len().is_multiple_of(4)
                && clean.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
            if !ok {
                return Err(bad("the data is not valid base64"));
            }
            clean
        }
        "A" | "" => base64(data.as_bytes()),
        "HEX" => {
            let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            if !clean.len().is_multiple_of(2) || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the data is not valid hexadecimal"));
            }
            let bytes: Vec<u8> =
                (0..clean.len()).step_by(2).map(|i| u8::from_str_radix(&clean[i..i + 2], 16).unwrap_or(0)).collect();
            base64(&bytes)
        }
        _ => return Err(bad("the encoding (ED-4) must be Base64, A or Hex (table 0299)")),
    };
    if data.is_empty() {
        return Err(Hl7Error::MissingField { field: field.into(), why: "encapsulated data (ED-5) is empty".into() });
    }
    Ok(json!({"contentType": content_type, "data": data}))
}

/// A fullUrl for the `n`th entry of a mapped Bundle.
pub fn urn(n: usize) -> String {
    format!("urn:uuid:9b7c1a4e-0000-4000-8000-{n:012}")
}

/// A transaction Bundle of `entries`, moved in (`json!` would serialise every entry into a new
/// `Value`: a deep copy of the whole Bundle).
pub(crate) fn transaction(entries: Vec<Value>) -> Value {
    let mut bundle = Map::with_capacity(3);
    bundle.insert("resourceType".into(), Value::String("Bundle".into()));
    bundle.insert("type".into(), Value::String("transaction".into()));
    bundle.insert("entry".into(), Value::Array(entries));
    Value::Object(bundle)
}

/// A transaction entry: `fullUrl`, the resource and the request, moved in.
pub(crate) fn entry(full_url: impl Into<String>, resource: Value, request: Value) -> Value {
    let mut entry = Map::with_capacity(3);
    entry.insert("fullUrl".into(), Value::String(full_url.into()));
    entry.insert("resource".into(), resource);
    entry.insert("request".into(), request);
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_precision() {
        for (text, want) in [("5.60", "5.60"), ("+7", "7"), (".5", "0.5"), ("-0.25", "-0.25"), ("007.10", "7.10")] {
            assert_eq!(number(text, "OBX-5").unwrap().to_string(), want, "{text}");
        }
        for bad in ["", "1e5", "abc", "1.2.3", "."] {
            assert!(number(bad, "OBX-5").is_err(), "{bad}");
        }
    }

    #[test]
    fn coding_systems_by_table_0396_name() {
        assert_eq!(coding_system("LN", "H"), "http://loinc.org");
        assert_eq!(coding_system("HL70078", "H"), "http://terminology.hl7.org/CodeSystem/v2-0078");
        assert_eq!(coding_system("99LAB", "FZ HOSP"), "https://hutong.dev/fhir/CodeSystem/FZ%20HOSP/99lab");
        assert_eq!(coding_system("", "H"), "https://hutong.dev/fhir/CodeSystem/H/local");
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
