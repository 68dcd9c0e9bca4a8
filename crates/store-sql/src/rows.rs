//! Flattening of [`fhir::IndexEntry`] values into the rows of the index tables, shared by the
//! backends' write paths so both store exactly the same thing.

use fhir::{IndexEntry, IndexValue};

/// One row for one index table: the table name and its value columns after
/// `(rid, type, param, …, patient_key)`, in the order of [`columns`].
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub table: &'static str,
    pub param: &'a str,
    pub values: Vec<Cell<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Text(Option<&'a str>),
    Int(i64),
    Real(Option<f64>),
}

/// The value columns of each index table, between `n` and `patient_key`.
pub fn columns(table: &str) -> &'static [&'static str] {
    match table {
        "idx_string" => &["norm", "exact"],
        "idx_token" => &["system", "code", "text"],
        "idx_reference" => &["target_type", "target_id", "version", "url", "ident_system", "ident_value"],
        "idx_date" => &["low", "high"],
        "idx_number" => &["value", "low", "high"],
        "idx_quantity" => &["value", "low", "high", "system", "code", "unit"],
        "idx_uri" => &["uri"],
        "idx_composite" => &["c1_system", "c1_code", "c2_system", "c2_code", "c2_value", "c2_low", "c2_high"],
        _ => &[],
    }
}

/// The cached [`insert_sql`] text for SQLite (built once per table).
pub fn sqlite_insert_sql(table: &str) -> &'static str {
    static CACHE: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        crate::schema::INDEX_TABLES.iter().map(|t| (*t, insert_sql(t, crate::Dialect::Sqlite))).collect()
    });
    cache.iter().find(|(t, _)| *t == table).map_or("", |(_, sql)| sql.as_str())
}

/// `INSERT INTO table (rid, type, param, n, cols…, patient_key) VALUES (…)` with placeholders;
/// `n` numbers a resource's rows (the key is `(rid, param, n)`).
pub fn insert_sql(table: &str, dialect: crate::Dialect) -> String {
    let cols = columns(table);
    let n = cols.len() + 5;
    let placeholders: Vec<String> = (1..=n)
        .map(|i| match dialect {
            crate::Dialect::Sqlite => format!("?{i}"),
            crate::Dialect::Postgres => format!("${i}"),
        })
        .collect();
    format!(
        "INSERT INTO {table} (rid, type, param, n, {}, patient_key) VALUES ({})",
        cols.join(", "),
        placeholders.join(", ")
    )
}

fn t(s: &Option<String>) -> Cell<'_> {
    Cell::Text(s.as_deref())
}

/// The row for one entry, or `None` for a composite whose shape the table cannot hold.
pub fn row(entry: &IndexEntry) -> Option<Row<'_>> {
    let param = entry.param.as_str();
    let (table, values) = match &entry.value {
        IndexValue::String { normalized, exact } => {
            ("idx_string", vec![Cell::Text(Some(normalized)), Cell::Text(Some(exact))])
        }
        IndexValue::Token { system, code, text } => ("idx_token", vec![t(system), t(code), t(text)]),
        IndexValue::Reference { target_type, target_id, version, url, identifier_system, identifier_value } => (
            "idx_reference",
            vec![t(target_type), t(target_id), t(version), t(url), t(identifier_system), t(identifier_value)],
        ),
        IndexValue::Date { low, high } => ("idx_date", vec![Cell::Int(*low), Cell::Int(*high)]),
        IndexValue::Number { value, low, high } => {
            ("idx_number", vec![Cell::Real(Some(*value)), Cell::Real(Some(*low)), Cell::Real(Some(*high))])
        }
        IndexValue::Quantity { value, low, high, system, code, unit } => (
            "idx_quantity",
            vec![
                Cell::Real(Some(*value)),
                Cell::Real(Some(*low)),
                Cell::Real(Some(*high)),
                t(system),
                t(code),
                t(unit),
            ],
        ),
        IndexValue::Uri { uri } => ("idx_uri", vec![Cell::Text(Some(uri))]),
        IndexValue::Composite { components } => {
            let [first, second] = components.as_slice() else { return None };
            let (c1_system, c1_code) = key_pair(first)?;
            let (c2_system, c2_code, value, low, high) = match second {
                IndexValue::Quantity { value, low, high, system, code, .. } => {
                    (system.as_deref(), code.as_deref(), Some(*value), Some(*low), Some(*high))
                }
                IndexValue::Number { value, low, high } => (None, None, Some(*value), Some(*low), Some(*high)),
                IndexValue::Date { low, high } => (None, None, None, Some(*low as f64), Some(*high as f64)),
                other => {
                    let (s, c) = key_pair(other)?;
                    (s, c, None, None, None)
                }
            };
            (
                "idx_composite",
                vec![
                    Cell::Text(c1_system),
                    Cell::Text(c1_code),
                    Cell::Text(c2_system),
                    Cell::Text(c2_code),
                    Cell::Real(value),
                    Cell::Real(low),
                    Cell::Real(high),
                ],
            )
        }
    };
    Some(Row { table, param, values })
}

/// A (system, code)-like key for token, reference and string components.
pub fn key_pair(value: &IndexValue) -> Option<(Option<&str>, Option<&str>)> {
    match value {
        IndexValue::Token { system, code, .. } => Some((system.as_deref(), code.as_deref())),
        IndexValue::Reference { target_type, target_id, .. } => Some((target_type.as_deref(), target_id.as_deref())),
        IndexValue::String { normalized, .. } => Some((None, Some(normalized))),
        IndexValue::Uri { uri } => Some((None, Some(uri))),
        _ => None,
    }
}
