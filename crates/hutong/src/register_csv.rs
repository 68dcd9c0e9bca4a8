//! Population-register CSV files for `hutong import` (人口信息登记, issue 5): one resident per
//! row, with the national codes, turned into Patient resources. The layout (docs/DOCUMENTS.md):
//!
//! `organization,record_id,id_number,name,gender,birth_date,ethnicity,marital_status,phone,division,address`
//!
//! - a header row naming exactly these columns (in any order; unknown columns are an error);
//! - `organization` (the registering institution's code) and `record_id` (its local record
//!   number) are required: the Patient's id is derived from them, so importing a file again
//!   changes nothing, and the pair becomes an identifier;
//! - `id_number` GB 11643 (stored as given; the master patient index flags invalid ones),
//!   `gender` GB/T 2261.1 (0 unknown, 1 male, 2 female, 9 unspecified), `birth_date`
//!   `YYYY-MM-DD` or `YYYYMMDD`, `ethnicity` GB/T 3304 (two digits), `marital_status` GB/T
//!   2261.2 (two digits), `division` GB/T 2260 (six digits); empty cells mean unknown;
//! - UTF-8 (a byte-order mark is fine) or GB 18030 (as spreadsheets in China save it); quoted
//!   fields may hold commas, quotes (doubled) and line breaks.
//!
//! A file with any bad row is refused whole, every bad row named with its line number: nothing is
//! imported silently altered or silently skipped.

use anyhow::bail;
use serde_json::{Value, json};

pub const COLUMNS: &[&str] = &[
    "organization",
    "record_id",
    "id_number",
    "name",
    "gender",
    "birth_date",
    "ethnicity",
    "marital_status",
    "phone",
    "division",
    "address",
];
pub const RECORD_SYSTEM_PREFIX: &str = "urn:hutong:population-register:";
const ETHNICITY_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/ethnic-group";
const ETHNICITY_SYSTEM: &str = "http://hutong.health/fhir/CodeSystem/gb-t-3304-ethnic-group";
const MARITAL_SYSTEM: &str = "http://hutong.health/fhir/CodeSystem/gb-t-2261.2-marital-status";

/// The text of a file: UTF-8, else GB 18030.
pub fn decode(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => encoding_rs::GB18030.decode(bytes).0.into_owned(),
    }
}

fn date(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 8 || !(text.len() == 8 || text.len() == 10) {
        return None;
    }
    let d = format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..8]);
    chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok().map(|_| d)
}

/// Safe characters for ids derived from codes.
fn slug(text: &str) -> String {
    crypto::sm3::sm3_hex(text.as_bytes())[..40].to_string()
}

/// The Patients of a register file, or every problem with its line.
pub fn patients(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut rows = terminology::csv::parse_csv_lines(text).map_err(|e| anyhow::anyhow!("{e}"))?.into_iter();
    let Some((_, header)) = rows.next() else {
        bail!("the file is empty: expected a header row ({})", COLUMNS.join(","))
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    for h in &header {
        if !COLUMNS.contains(&h.as_str()) {
            bail!("line 1: unknown column '{h}' (the columns are {})", COLUMNS.join(","));
        }
    }
    for required in ["organization", "record_id"] {
        if !header.iter().any(|h| h == required) {
            bail!("line 1: the column '{required}' is required");
        }
    }
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (line, fields) in rows {
        if fields.len() != header.len() {
            problems.push(format!("line {line}: {} fields, the header has {}", fields.len(), header.len()));
            continue;
        }
        let get =
            |name: &str| header.iter().position(|h| h == name).map(|i| fields[i].trim()).filter(|v| !v.is_empty());
        let (Some(org), Some(record)) = (get("organization"), get("record_id")) else {
            problems.push(format!("line {line}: organization and record_id are required"));
            continue;
        };
        if !seen.insert((org.to_string(), record.to_string())) {
            problems.push(format!("line {line}: {org}/{record} appears twice in the file"));
            continue;
        }
        let mut p = json!({"resourceType": "Patient", "id": format!("pr-{}", slug(&format!("{org}|{record}"))),
            "identifier": [{"system": format!("{RECORD_SYSTEM_PREFIX}{org}"), "value": record}]});
        let mut bad = |what: String| problems.push(format!("line {line}: {what}"));
        if let Some(id) = get("id_number")
            && let Some(ids) = p["identifier"].as_array_mut()
        {
            ids.push(json!({"system": crate::demo::ID_NUMBER_SYSTEM, "value": id}));
        }
        if let Some(name) = get("name") {
            p["name"] = json!([{"text": name}]);
        }
        match get("gender") {
            None => {}
            Some("1") => p["gender"] = json!("male"),
            Some("2") => p["gender"] = json!("female"),
            Some("0") => p["gender"] = json!("unknown"),
            Some("9") => p["gender"] = json!("other"),
            Some(other) => bad(format!("gender '{other}' is not a GB/T 2261.1 code (0, 1, 2, 9)")),
        }
        if let Some(b) = get("birth_date") {
            match date(b) {
                Some(d) => p["birthDate"] = json!(d),
                None => bad(format!("birth_date '{b}' is not a date (YYYY-MM-DD or YYYYMMDD)")),
            }
        }
        if let Some(e) = get("ethnicity") {
            if e.len() == 2 && e.bytes().all(|b| b.is_ascii_digit()) {
                p["extension"] =
                    json!([{"url": ETHNICITY_EXTENSION, "valueCoding": {"system": ETHNICITY_SYSTEM, "code": e}}]);
            } else {
                bad(format!("ethnicity '{e}' is not a GB/T 3304 code (two digits)"));
            }
        }
        if let Some(m) = get("marital_status") {
            if m.len() == 2 && m.bytes().all(|b| b.is_ascii_digit()) {
                p["maritalStatus"] = json!({"coding": [{"system": MARITAL_SYSTEM, "code": m}]});
            } else {
                bad(format!("marital_status '{m}' is not a GB/T 2261.2 code (two digits)"));
            }
        }
        if let Some(phone) = get("phone") {
            p["telecom"] = json!([{"system": "phone", "value": phone}]);
        }
        let mut address = json!({});
        if let Some(d) = get("division") {
            if d.len() == 6 && d.bytes().all(|b| b.is_ascii_digit()) {
                address["extension"] = json!([{"url": access::DIVISION_EXTENSION, "valueCode": d}]);
            } else {
                bad(format!("division '{d}' is not a GB/T 2260 code (six digits)"));
            }
        }
        if let Some(a) = get("address") {
            address["text"] = json!(a);
        }
        if address.as_object().is_some_and(|o| !o.is_empty()) {
            p["address"] = json!([address]);
        }
        out.push(p);
    }
    if !problems.is_empty() {
        bail!("{} row(s) refused, nothing imported from this file:\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "organization,record_id,id_number,name,gender,birth_date,ethnicity,marital_status,phone,division,address\n";

    #[test]
    fn rows_become_patients_with_national_codes() {
        let text = format!(
            "{HEADER}12350100MB0000001Y,R001,11010519491231002X,林测试,1,1980-02-03,01,20,13800000001,350102,\"鼓楼区示例路1号, 3单元\"\n\
             12350100MB0000001Y,R002,,王二,2,19900512,,,,,\n"
        );
        let p = patients(&text).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["gender"], "male");
        assert_eq!(p[0]["birthDate"], "1980-02-03");
        assert_eq!(p[0]["identifier"][1]["value"], "11010519491231002X");
        assert_eq!(p[0]["address"][0]["text"], "鼓楼区示例路1号, 3单元");
        assert_eq!(p[0]["address"][0]["extension"][0]["valueCode"], "350102");
        assert_eq!(p[0]["maritalStatus"]["coding"][0]["code"], "20");
        assert_eq!(p[1]["birthDate"], "1990-05-12");
        assert!(p[1].get("address").is_none() && p[1].get("telecom").is_none());
        // The id is stable across imports and distinct per record.
        assert_eq!(patients(&text).unwrap()[0]["id"], p[0]["id"]);
        assert_ne!(p[0]["id"], p[1]["id"]);
    }

    #[test]
    fn bad_rows_refuse_the_file_naming_every_line() {
        let text = format!("{HEADER}O,R1,,甲,3,1980-02-30,1,x,,3501,\nO,R1,,乙,1,,,,,,\nO,R3,,丙\n");
        let e = patients(&text).unwrap_err().to_string();
        for part in [
            "line 2: gender '3'",
            "birth_date '1980-02-30'",
            "ethnicity '1'",
            "marital_status 'x'",
            "division '3501'",
            "line 3: O/R1 appears twice",
            "line 4: 4 fields",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(patients("name,color\n").unwrap_err().to_string().contains("unknown column 'color'"));
        assert!(patients("name\nx\n").unwrap_err().to_string().contains("'organization' is required"));
        assert!(patients("organization,record_id\nO,\"R1\n").is_err(), "an unclosed quote");
    }

    #[test]
    fn gb18030_files_are_read() {
        let text = format!("{HEADER}O,R1,,林测试,1,,,,,,\n");
        let (bytes, _, _) = encoding_rs::GB18030.encode(&text);
        assert_eq!(patients(&decode(&bytes)).unwrap()[0]["name"][0]["text"], "林测试");
        assert_eq!(decode(b"\xEF\xBB\xBFabc"), "abc");
    }
}
