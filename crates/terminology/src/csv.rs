//! Code systems from CSV, for catalogues that are not freely published (the national clinical
//! ICD-10 edition 国家临床版 2.0, ICD-9-CM-3, drug catalogues) and that a region loads from its
//! licensed copy with `hutong terminology load`.
//!
//! Layout (RFC 4180: comma-separated, fields with commas, quotes or line breaks in double
//! quotes, `""` for a quote; UTF-8, an optional byte-order mark): the first row names the
//! columns. `code` and `display` are required and come first; `parent` (the parent code) builds
//! the is-a hierarchy; `designation:LANG` (e.g. `designation:en`) becomes a designation in that
//! language; any other column becomes a string property of that name. Empty cells are left out.

use serde_json::{Value, json};

use crate::TerminologyError;

/// Parses RFC 4180 CSV into rows of fields.
pub fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, TerminologyError> {
    Ok(parse_csv_lines(text)?.into_iter().map(|(_, row)| row).collect())
}

/// Parses RFC 4180 CSV into rows of fields, each with the line it starts on (1-based), for
/// messages that name the line. Blank lines are left out.
pub fn parse_csv_lines(text: &str) -> Result<Vec<(usize, Vec<String>)>, TerminologyError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let (mut line, mut start) = (1usize, 1usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push((start, std::mem::take(&mut row)));
                line += 1;
                start = line;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(TerminologyError::Invalid(format!(
            "CSV: a quoted field opened before line {line} is never closed"
        )));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((start, row));
    }
    rows.retain(|(_, r)| !(r.len() == 1 && r[0].trim().is_empty()));
    Ok(rows)
}

/// A CodeSystem resource (JSON) from CSV text in the layout above.
pub fn code_system_from_csv(
    text: &str,
    url: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Value, TerminologyError> {
    let rows = parse_csv(text)?;
    let Some((header, body)) = rows.split_first() else {
        return Err(TerminologyError::Invalid("CSV: the file is empty; expected a header row code,display,…".into()));
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    if header.len() < 2 || header[0] != "code" || header[1] != "display" {
        return Err(TerminologyError::Invalid(format!(
            "CSV: the header row must start with code,display (found {})",
            header.join(",")
        )));
    }
    let mut properties: Vec<Value> = Vec::new();
    for h in &header[2..] {
        if h == "parent" {
            properties.push(json!({"code": "parent", "type": "code"}));
        } else if !h.starts_with("designation:") {
            properties.push(json!({"code": h, "type": "string"}));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut concepts = Vec::with_capacity(body.len());
    for (i, row) in body.iter().enumerate() {
        let line = i + 2;
        if row.len() > header.len() {
            return Err(TerminologyError::Invalid(format!(
                "CSV line {line}: {} fields, but the header names {}",
                row.len(),
                header.len()
            )));
        }
        let code = row[0].trim();
        if code.is_empty() {
            return Err(TerminologyError::Invalid(format!("CSV line {line}: the code is empty")));
        }
        if !seen.insert(code.to_string()) {
            return Err(TerminologyError::Invalid(format!("CSV line {line}: the code '{code}' appears twice")));
        }
        let mut concept = json!({"code": code});
        if let Some(d) = row.get(1).map(|d| d.trim()).filter(|d| !d.is_empty()) {
            concept["display"] = json!(d);
        }
        let mut property = Vec::new();
        let mut designation = Vec::new();
        for (h, cell) in header.iter().zip(row.iter()).skip(2) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            if let Some(lang) = h.strip_prefix("designation:") {
                designation.push(json!({"language": lang, "value": cell}));
            } else if h == "parent" {
                property.push(json!({"code": "parent", "valueCode": cell}));
            } else {
                property.push(json!({"code": h, "valueString": cell}));
            }
        }
        if !designation.is_empty() {
            concept["designation"] = Value::Array(designation);
        }
        if !property.is_empty() {
            concept["property"] = Value::Array(property);
        }
        concepts.push(concept);
    }
    // Every parent must be a code of the file.
    for (i, c) in concepts.iter().enumerate() {
        for p in c["property"].as_array().into_iter().flatten().filter(|p| p["code"] == "parent") {
            let parent = p["valueCode"].as_str().unwrap_or_default();
            if !seen.contains(parent) {
                return Err(TerminologyError::Invalid(format!(
                    "CSV line {}: the parent '{parent}' of '{}' is not a code of the file",
                    i + 2,
                    c["code"].as_str().unwrap_or_default()
                )));
            }
        }
    }
    let mut cs = json!({
        "resourceType": "CodeSystem",
        "url": url,
        "name": name,
        "status": "active",
        "content": "complete",
        "caseSensitive": true,
        "count": concepts.len(),
    });
    if let Some(v) = version {
        cs["version"] = json!(v);
    }
    if header.iter().any(|h| h == "parent") {
        cs["hierarchyMeaning"] = json!("is-a");
    }
    if !properties.is_empty() {
        cs["property"] = Value::Array(properties);
    }
    cs["concept"] = Value::Array(concepts);
    Ok(cs)
}
