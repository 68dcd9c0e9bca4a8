//! Translation of a parsed FHIR search into SQL over the schema in [`crate::schema`].
//!
//! Each ANDed criterion becomes one condition on the outer `resource` row `r`, the ORed values of
//! a criterion sharing one subquery. The most selective criterion (by parameter type: references
//! and `_id` first, dates last; see [`selectivity_rank`]) drives the query: the page query joins
//! its index rows (`FROM idx_… i JOIN resource r ON r.rid = i.rid`, served by the value index,
//! whose rows for one value come in `rid` order, so the page stops after `LIMIT` rows; see
//! [`driver_join`]), the count query uses `r.rid IN (SELECT rid FROM idx_… …)`; every other
//! criterion is a correlated `EXISTS (… WHERE i.rid = r.rid AND i.param = …)` probe on the
//! `(rid, param)` index. Both databases then start from the few matching rows instead of
//! materialising every resource with, say, a common code.
//! Semantics follow FHIR R4 search: strings match by prefix on the folded form, dates compare
//! the stored range `[low, high]` with the searched range per prefix, numbers and quantities
//! compare the stored value with the searched value's precision range.
//!
//! `ap` (approximately) on dates accepts stored ranges that overlap the searched range widened
//! by 10% of its distance from now (at least one day); on numbers and quantities, values
//! within ±10% of the searched value.

use fhir::ParamType;
use fhir::search::{Criterion, Modifier, ParamRef, ParamValue, Prefix, SearchQuery};

use crate::{Dialect, Sql};

/// The page query (selecting `rid, type, id, version, last_updated, deleted, method, body`) and, when
/// the query asks for a total, the count query.
pub struct SearchSql {
    pub page: Sql,
    pub count: Option<Sql>,
}

/// Column list the page query selects, in order.
pub const SELECT_COLUMNS: &str =
    "r.rid, r.type, r.id, r.version, r.last_updated, r.deleted, r.method, r.body, r.patient_key";

/// Builds the SQL for `query`. `now_ms` anchors `ap` on dates.
pub fn build_search(query: &SearchQuery, dialect: Dialect, now_ms: i64) -> SearchSql {
    let types: Vec<String> = match &query.resource_type {
        Some(t) => vec![t.clone()],
        None => query.types.clone(),
    };
    let driver = query
        .criteria
        .iter()
        .enumerate()
        .filter_map(|(i, c)| selectivity_rank(c).map(|rank| (rank, i)))
        .min()
        .map(|(_, i)| i);
    // `skip`: the driver, when the page query joins its index rows instead.
    let where_clause = |sql: &mut Sql, skip: Option<usize>| {
        let mut parts = vec!["r.deleted = 0".to_string()];
        // A driving index subquery already restricts the type (index rows carry it); repeating
        // `r.type IN (…)` outside would tempt SQLite to scan every resource of the type instead
        // of fetching the few driver rows by rowid. `_id` drives through (type, id) and keeps it.
        let id_driver =
            driver.is_some_and(|d| matches!(&query.criteria[d], Criterion::Param { param, .. } if param.code == "_id"));
        if !types.is_empty() && (driver.is_none() || id_driver) {
            parts.push(format!("r.type IN ({})", in_list(sql, &types)));
        }
        for (i, criterion) in query.criteria.iter().enumerate() {
            if Some(i) != skip {
                parts.push(criterion_sql(sql, criterion, "r", &types, now_ms, Some(i) == driver));
            }
        }
        parts.join(" AND ")
    };
    let mut page = Sql::new(dialect);
    let joined = driver.and_then(|d| driver_join(&mut page, &query.criteria[d], &types, now_ms).map(|j| (d, j)));
    let filter = where_clause(&mut page, joined.as_ref().map(|(d, _)| *d));
    let mut order = Vec::new();
    for key in &query.sort {
        let expr = sort_expr(&mut page, &key.param, key.descending, &types);
        order.push(format!("{expr} {}", if key.descending { "DESC" } else { "ASC" }));
    }
    // Written as numbers, not bound: SQLite's planner reads a bound LIMIT's value and so marks
    // the statement to be compiled again whenever that parameter is bound, which a cached
    // statement then was on every search.
    let (limit, offset) = (query.count, query.offset);
    page.text = match joined {
        Some((_, (table, condition))) => {
            order.push("i.rid ASC".to_string());
            format!(
                "SELECT {SELECT_COLUMNS} FROM {table} i JOIN resource r ON r.rid = i.rid WHERE {condition} AND {filter} \
                 ORDER BY {} LIMIT {limit} OFFSET {offset}",
                order.join(", ")
            )
        }
        None => {
            order.push("r.rid ASC".to_string());
            format!(
                "SELECT {SELECT_COLUMNS} FROM resource r WHERE {filter} ORDER BY {} LIMIT {limit} OFFSET {offset}",
                order.join(", ")
            )
        }
    };
    let count = (query.total != fhir::search::TotalMode::None).then(|| {
        let mut count = Sql::new(dialect);
        let filter = where_clause(&mut count, None);
        count.text = format!("SELECT COUNT(*) FROM resource r WHERE {filter}");
        count
    });
    SearchSql { page, count }
}

fn in_list(sql: &mut Sql, values: &[String]) -> String {
    values.iter().map(|v| sql.text(v.clone())).collect::<Vec<_>>().join(", ")
}

/// The index table holding a parameter type's rows.
pub fn table_for(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "idx_string",
        ParamType::Token => "idx_token",
        ParamType::Reference => "idx_reference",
        ParamType::Date => "idx_date",
        ParamType::Number => "idx_number",
        ParamType::Quantity => "idx_quantity",
        ParamType::Uri => "idx_uri",
        ParamType::Composite | ParamType::Special => "idx_composite",
    }
}

fn sort_expr(sql: &mut Sql, param: &ParamRef, descending: bool, types: &[String]) -> String {
    match param.code.as_str() {
        "_id" => return "r.id".into(),
        "_lastUpdated" => return "r.last_updated".into(),
        _ => {}
    }
    let (column, agg) = match param.kind {
        ParamType::Date => (if descending { "high" } else { "low" }, if descending { "MAX" } else { "MIN" }),
        ParamType::String => ("norm", if descending { "MAX" } else { "MIN" }),
        ParamType::Token => ("code", if descending { "MAX" } else { "MIN" }),
        ParamType::Reference => ("target_id", "MIN"),
        ParamType::Number | ParamType::Quantity => ("value", if descending { "MAX" } else { "MIN" }),
        ParamType::Uri => ("uri", "MIN"),
        ParamType::Composite | ParamType::Special => ("c1_code", "MIN"),
    };
    let rows = param_rows(sql, "i", &param.code, types, false);
    let table = table_for(param.kind);
    // Resources without a value sort last in both directions.
    let null_sentinel = match (param.kind, descending) {
        (ParamType::Date, false) => i64::MAX.to_string(),
        (ParamType::Date, true) => i64::MIN.to_string(),
        (ParamType::Number | ParamType::Quantity, false) => "1e308".into(),
        (ParamType::Number | ParamType::Quantity, true) => "-1e308".into(),
        (_, false) => "'\u{10FFFF}'".into(),
        (_, true) => "''".into(),
    };
    format!("COALESCE((SELECT {agg}(i.{column}) FROM {table} i WHERE i.rid = r.rid AND {rows}), {null_sentinel})")
}

/// How selective a criterion usually is (lower drives the query); `None` if it cannot drive
/// (negations, `:missing`).
pub fn selectivity_rank(criterion: &Criterion) -> Option<u8> {
    match criterion {
        Criterion::Param { modifier: Some(Modifier::Not), .. } | Criterion::Missing { .. } => None,
        Criterion::Param { param, .. } if param.code == "_id" => Some(0),
        Criterion::Param { param, .. } if param.code == "_lastUpdated" => None,
        Criterion::Param { param, .. } => Some(match param.kind {
            ParamType::Reference => 1,
            ParamType::Token => 2,
            ParamType::String | ParamType::Uri | ParamType::Composite => 3,
            ParamType::Number | ParamType::Quantity => 4,
            ParamType::Date => 5,
            ParamType::Special => 9,
        }),
        Criterion::Chain { .. } | Criterion::Has { .. } => Some(6),
    }
}

/// The page query's driver as a join: `(index table, condition on its rows i)` for a
/// parameter criterion over the value index (not `_id`, `_lastUpdated` or a negation). The page
/// then walks the driver's index rows, which for one value come in `rid` order, and stops after
/// the page, instead of first collecting every matching `rid` (as `rid IN (…)` does: 100,000
/// pending review Tasks cost 30 ms before the first row). A resource with several matching
/// rows of the parameter is joined through its first one only (the `NOT EXISTS` on a lower
/// `n`), so it appears once.
fn driver_join(sql: &mut Sql, criterion: &Criterion, types: &[String], now_ms: i64) -> Option<(&'static str, String)> {
    let Criterion::Param { param, modifier, values } = criterion else { return None };
    if matches!(param.code.as_str(), "_id" | "_lastUpdated") || matches!(modifier, Some(Modifier::Not)) {
        return None;
    }
    let conds: Vec<String> =
        values.iter().filter_map(|v| value_condition(sql, param, modifier.as_ref(), v, now_ms)).collect();
    if conds.is_empty() {
        return None;
    }
    let table = table_for(param.kind);
    let scope = index_scope(sql, table, &param.code, types);
    let on_i = conds.join(" OR ");
    let on_i2 = rename_index_alias(&on_i, "i2");
    // The first matching row: by `n` within a parameter, by parameter then `n` across the
    // parameters that hold the rows of one answered from theirs.
    let earlier = if stored_elsewhere(&param.code, types) {
        let rows = param_rows(sql, "i2", &param.code, types, false);
        format!("{rows} AND (i2.param < i.param OR (i2.param = i.param AND i2.n < i.n))")
    } else {
        "i2.param = i.param AND i2.n < i.n".to_string()
    };
    Some((
        table,
        format!(
            "{scope} AND ({on_i}) AND NOT EXISTS (SELECT 1 FROM {table} i2 WHERE i2.rid = i.rid AND {earlier} \
             AND ({on_i2}))"
        ),
    ))
}

/// A value condition on the index row `i` (as [`value_condition`] writes it: columns `i.x`,
/// values only as placeholders) rewritten for the row `alias`.
fn rename_index_alias(condition: &str, alias: &str) -> String {
    let mut out = String::with_capacity(condition.len() + 16);
    let mut previous: Option<char> = None;
    let mut chars = condition.chars().peekable();
    while let Some(c) = chars.next() {
        let starts_word = !previous.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '.');
        if c == 'i' && starts_word && chars.peek() == Some(&'.') {
            out.push_str(alias);
        } else {
            out.push(c);
        }
        previous = Some(c);
    }
    out
}

/// The SQL condition for one criterion on the resource row aliased `alias`, whose type is one
/// of `types` (empty = any). A `driver` criterion is an uncorrelated `rid IN (…)` over the value
/// index; the others are correlated probes.
fn criterion_sql(
    sql: &mut Sql,
    criterion: &Criterion,
    alias: &str,
    types: &[String],
    now_ms: i64,
    driver: bool,
) -> String {
    match criterion {
        Criterion::Param { param, modifier, values } => {
            if param.code == "_id" {
                let ids: Vec<String> = values
                    .iter()
                    .filter_map(|v| match v {
                        ParamValue::Token { code: Some(c), .. } => Some(c.clone()),
                        ParamValue::String(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                if ids.is_empty() {
                    return "1 = 0".into();
                }
                let not = if matches!(modifier, Some(Modifier::Not)) { "NOT " } else { "" };
                return format!("{alias}.id {not}IN ({})", in_list(sql, &ids));
            }
            if param.code == "_lastUpdated" {
                let conds: Vec<String> = values
                    .iter()
                    .filter_map(|v| match v {
                        ParamValue::Date { prefix, low, high } => Some(date_condition(
                            sql,
                            *prefix,
                            *low,
                            *high,
                            &format!("{alias}.last_updated"),
                            &format!("{alias}.last_updated"),
                            now_ms,
                        )),
                        _ => None,
                    })
                    .collect();
                return or_join(conds);
            }
            let negate = matches!(modifier, Some(Modifier::Not));
            let table = table_for(param.kind);
            let mut conds = Vec::new();
            for value in values {
                if let Some(c) = value_condition(sql, param, modifier.as_ref(), value, now_ms) {
                    conds.push(c);
                }
            }
            if conds.is_empty() {
                return if negate { "1 = 1".into() } else { "1 = 0".into() };
            }
            if driver && !negate {
                let scope = index_scope(sql, table, &param.code, types);
                return format!(
                    "{alias}.rid IN (SELECT i.rid FROM {table} i WHERE {scope} AND ({}))",
                    conds.join(" OR ")
                );
            }
            let rows = param_rows(sql, "i", &param.code, types, false);
            let exists = if negate { "NOT EXISTS" } else { "EXISTS" };
            format!(
                "{exists} (SELECT 1 FROM {table} i WHERE i.rid = {alias}.rid AND {rows} AND ({}))",
                conds.join(" OR ")
            )
        }
        Criterion::Missing { param, missing } => {
            if matches!(param.code.as_str(), "_id" | "_lastUpdated") {
                return if *missing { "1 = 0".into() } else { "1 = 1".into() };
            }
            let table = table_for(param.kind);
            let rows = param_rows(sql, "i", &param.code, types, false);
            let exists = if *missing { "NOT EXISTS" } else { "EXISTS" };
            format!("{exists} (SELECT 1 FROM {table} i WHERE i.rid = {alias}.rid AND {rows})")
        }
        Criterion::Chain { param, target_types, criterion } => {
            // Nested chains need distinct aliases: `rt`, `rtt`, …
            let t = format!("{alias}t");
            if driver {
                let scope = index_scope(sql, "idx_reference", &param.code, types);
                let targets = in_list(sql, target_types);
                let inner = criterion_sql(sql, criterion, &t, target_types, now_ms, false);
                return format!(
                    "{alias}.rid IN (SELECT i.rid FROM idx_reference i JOIN resource {t} ON {t}.type = i.target_type \
                     AND {t}.id = i.target_id WHERE {scope} AND {t}.deleted = 0 AND {t}.type IN ({targets}) AND {inner})"
                );
            }
            let rows = param_rows(sql, "i", &param.code, types, false);
            let targets = in_list(sql, target_types);
            let inner = criterion_sql(sql, criterion, &t, target_types, now_ms, false);
            format!(
                "EXISTS (SELECT 1 FROM idx_reference i JOIN resource {t} ON {t}.type = i.target_type AND {t}.id = i.target_id \
                 WHERE i.rid = {alias}.rid AND {rows} AND {t}.deleted = 0 AND {t}.type IN ({targets}) AND {inner})"
            )
        }
        Criterion::Has { source_type, reference_param, criterion } => {
            let src = format!("{alias}s");
            let source = vec![source_type.clone()];
            let scope = index_scope(sql, "idx_reference", &reference_param.code, &source);
            let inner = criterion_sql(sql, criterion, &src, &source, now_ms, false);
            format!(
                "EXISTS (SELECT 1 FROM idx_reference i JOIN resource {src} ON {src}.rid = i.rid WHERE {scope} \
                 AND i.target_type = {alias}.type AND i.target_id = {alias}.id AND {src}.deleted = 0 AND {inner})"
            )
        }
    }
}

fn or_join(conds: Vec<String>) -> String {
    if conds.is_empty() { "1 = 0".into() } else { format!("({})", conds.join(" OR ")) }
}

/// `i.type IN (…) AND i.param = …`: the rows of parameter `code` of resources of `types`.
fn index_scope(sql: &mut Sql, _table: &str, code: &str, types: &[String]) -> String {
    param_rows(sql, "i", code, types, true)
}

/// Whether any of `types` keeps no rows of its own for `code` (`fhir::index::stored_as`).
fn stored_elsewhere(code: &str, types: &[String]) -> bool {
    types.iter().any(|t| fhir::index::stored_as(t, code).is_some())
}

/// The condition selecting, on index rows aliased `a`, the rows of parameter `code` for
/// resources of `types`: `a.param = code`, or for a parameter answered from other parameters'
/// rows (`fhir::index::stored_as`) theirs, only those pointing to its target type for a typed
/// subset (`Observation.patient`: the `subject` rows whose target is a Patient). With
/// `with_types` (or when the types differ in how they keep `code`), the types are named too;
/// a probe correlated on `rid` needs no type otherwise.
fn param_rows(sql: &mut Sql, a: &str, code: &str, types: &[String], with_types: bool) -> String {
    if !stored_elsewhere(code, types) {
        let p = sql.text(code.to_string());
        return if with_types && !types.is_empty() {
            format!("{a}.type IN ({}) AND {a}.param = {p}", in_list(sql, types))
        } else {
            format!("{a}.param = {p}")
        };
    }
    let mut groups: Vec<(Option<&'static fhir::index::StoredAs>, Vec<String>)> = Vec::new();
    for t in types {
        let stored = fhir::index::stored_as(t, code);
        match groups.iter_mut().find(|(s, _)| *s == stored) {
            Some((_, list)) => list.push(t.clone()),
            None => groups.push((stored, vec![t.clone()])),
        }
    }
    let name_types = with_types || groups.len() > 1;
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(stored, group)| {
            let mut part = Vec::new();
            if name_types {
                part.push(format!("{a}.type IN ({})", in_list(sql, &group)));
            }
            match stored {
                None => part.push(format!("{a}.param = {}", sql.text(code.to_string()))),
                Some(s) => {
                    part.push(format!("{a}.param IN ({})", in_list(sql, &s.params)));
                    if let Some(target) = &s.target_type {
                        part.push(format!("{a}.target_type = {}", sql.text(target.clone())));
                    }
                }
            }
            part.join(" AND ")
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("(({}))", parts.join(") OR ("))
    }
}

/// The upper bound for a prefix range scan: every string starting with `prefix` sorts below it.
fn prefix_upper(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// One value's condition on the index row `i`.
fn value_condition(
    sql: &mut Sql,
    param: &ParamRef,
    modifier: Option<&Modifier>,
    value: &ParamValue,
    now_ms: i64,
) -> Option<String> {
    Some(match (param.kind, value) {
        (ParamType::String, ParamValue::String(s)) => match modifier {
            Some(Modifier::Exact) => format!("i.exact = {}", sql.text(s.clone())),
            Some(Modifier::Contains) => {
                let pattern = format!("%{}%", like_escape(&fhir::normalize::normalize_string(s)));
                format!("i.norm LIKE {} ESCAPE '\\'", sql.text(pattern))
            }
            _ => {
                let norm = fhir::normalize::normalize_string(s);
                let upper = prefix_upper(&norm);
                format!("(i.norm >= {} AND i.norm < {})", sql.text(norm), sql.text(upper))
            }
        },
        (ParamType::Token, ParamValue::String(text)) => {
            // `:text`: the display text starts with (or, failing that, contains) the words.
            let pattern = format!("%{}%", like_escape(&fhir::normalize::normalize_string(text)));
            format!("LOWER(i.text) LIKE {} ESCAPE '\\'", sql.text(pattern))
        }
        (ParamType::Token, ParamValue::Token { system, code }) => {
            token_condition(sql, "i.system", "i.code", system, code)
        }
        (ParamType::Token, ParamValue::Composite(parts)) => {
            // `:of-type`: identifier type coding + value. The type coding is not indexed
            // separately, so the value alone decides; the type narrows nothing.
            let ParamValue::Token { code, .. } = parts.get(1)? else { return None };
            token_condition(sql, "i.system", "i.code", &None, code)
        }
        (ParamType::Reference, ParamValue::Token { system, code }) => {
            token_condition(sql, "i.ident_system", "i.ident_value", system, code)
        }
        (ParamType::Reference, ParamValue::Reference { resource_type, id, version, url }) => {
            let mut parts = Vec::new();
            if let Some(id) = id {
                parts.push(format!("i.target_id = {}", sql.text(id.clone())));
                match resource_type {
                    Some(t) => parts.push(format!("i.target_type = {}", sql.text(t.clone()))),
                    None if !param.targets.is_empty() && !param.targets.iter().any(|t| t == "Resource") => {
                        let list = in_list(sql, &param.targets);
                        parts.push(format!("i.target_type IN ({list})"));
                    }
                    None => {}
                }
                if let Some(v) = version {
                    parts.push(format!("i.version = {}", sql.text(v.clone())));
                }
                if let Some(u) = url {
                    // An absolute URL also matches when stored as written.
                    let u = sql.text(u.clone());
                    return Some(format!("(({}) OR i.url = {u})", parts.join(" AND ")));
                }
            } else if let Some(u) = url {
                parts.push(format!("i.url = {}", sql.text(u.clone())));
            } else {
                return None;
            }
            format!("({})", parts.join(" AND "))
        }
        (ParamType::Reference, ParamValue::String(text)) => {
            let pattern = format!("%{}%", like_escape(text));
            format!("i.url LIKE {} ESCAPE '\\'", sql.text(pattern))
        }
        (ParamType::Date, ParamValue::Date { prefix, low, high }) => {
            date_condition(sql, *prefix, *low, *high, "i.low", "i.high", now_ms)
        }
        (ParamType::Number, ParamValue::Number { prefix, value, low, high }) => {
            number_condition(sql, *prefix, *value, *low, *high, "i.value")
        }
        (ParamType::Quantity, ParamValue::Quantity { prefix, value, low, high, system, code }) => {
            let mut c = number_condition(sql, *prefix, *value, *low, *high, "i.value");
            match (system, code) {
                (Some(s), Some(cd)) => {
                    c = format!("{c} AND i.system = {} AND i.code = {}", sql.text(s.clone()), sql.text(cd.clone()))
                }
                (None, Some(cd)) => {
                    let p = sql.text(cd.clone());
                    c = format!("{c} AND (i.code = {p} OR i.unit = {p})")
                }
                (Some(s), None) => c = format!("{c} AND i.system = {}", sql.text(s.clone())),
                (None, None) => {}
            }
            format!("({c})")
        }
        (ParamType::Uri, ParamValue::Uri(u)) => match modifier {
            Some(Modifier::Below) => {
                let upper = prefix_upper(u);
                format!("(i.uri >= {} AND i.uri < {})", sql.text(u.clone()), sql.text(upper))
            }
            Some(Modifier::Above) => {
                let p = sql.text(u.clone());
                format!("SUBSTR({p}, 1, LENGTH(i.uri)) = i.uri")
            }
            Some(Modifier::Contains) => {
                let pattern = format!("%{}%", like_escape(u));
                format!("i.uri LIKE {} ESCAPE '\\'", sql.text(pattern))
            }
            _ => format!("i.uri = {}", sql.text(u.clone())),
        },
        (ParamType::Composite, ParamValue::Composite(parts)) => {
            let [first, second] = parts.as_slice() else { return None };
            let c1 = component_key_condition(sql, "i.c1_system", "i.c1_code", first)?;
            let c2 = match second {
                ParamValue::Quantity { prefix, value, low, high, system, code } => {
                    let mut c = number_condition(sql, *prefix, *value, *low, *high, "i.c2_value");
                    if let Some(s) = system {
                        c = format!("{c} AND i.c2_system = {}", sql.text(s.clone()));
                    }
                    if let Some(cd) = code {
                        c = format!("{c} AND i.c2_code = {}", sql.text(cd.clone()));
                    }
                    c
                }
                ParamValue::Number { prefix, value, low, high } => {
                    number_condition(sql, *prefix, *value, *low, *high, "i.c2_value")
                }
                ParamValue::Date { prefix, low, high } => date_condition(
                    sql,
                    *prefix,
                    *low,
                    *high,
                    "CAST(i.c2_low AS BIGINT)",
                    "CAST(i.c2_high AS BIGINT)",
                    now_ms,
                ),
                other => component_key_condition(sql, "i.c2_system", "i.c2_code", other)?,
            };
            format!("({c1} AND {c2})")
        }
        _ => return None,
    })
}

fn component_key_condition(sql: &mut Sql, system_col: &str, code_col: &str, value: &ParamValue) -> Option<String> {
    Some(match value {
        ParamValue::Token { system, code } => token_condition(sql, system_col, code_col, system, code),
        ParamValue::Reference { resource_type, id: Some(id), .. } => {
            let mut c = format!("{code_col} = {}", sql.text(id.clone()));
            if let Some(t) = resource_type {
                c = format!("{c} AND {system_col} = {}", sql.text(t.clone()));
            }
            c
        }
        ParamValue::String(s) => {
            let norm = fhir::normalize::normalize_string(s);
            let upper = prefix_upper(&norm);
            format!("({code_col} >= {} AND {code_col} < {})", sql.text(norm), sql.text(upper))
        }
        ParamValue::Uri(u) => format!("{code_col} = {}", sql.text(u.clone())),
        _ => return None,
    })
}

fn token_condition(
    sql: &mut Sql,
    system_col: &str,
    code_col: &str,
    system: &Option<Option<String>>,
    code: &Option<String>,
) -> String {
    let mut parts = Vec::new();
    if let Some(c) = code {
        parts.push(format!("{code_col} = {}", sql.text(c.clone())));
    }
    match system {
        None => {}
        Some(None) => parts.push(format!("{system_col} IS NULL")),
        Some(Some(s)) => parts.push(format!("{system_col} = {}", sql.text(s.clone()))),
    }
    if parts.is_empty() { "1 = 1".into() } else { format!("({})", parts.join(" AND ")) }
}

/// A stored range `[lo_col, hi_col]` against the searched range `[low, high]`.
fn date_condition(
    sql: &mut Sql,
    prefix: Prefix,
    low: i64,
    high: i64,
    lo_col: &str,
    hi_col: &str,
    now_ms: i64,
) -> String {
    let mut b = |v: i64| sql.int(v);
    match prefix {
        Prefix::Eq => format!("({lo_col} >= {} AND {hi_col} <= {})", b(low), b(high)),
        Prefix::Ne => format!("NOT ({lo_col} >= {} AND {hi_col} <= {})", b(low), b(high)),
        Prefix::Gt => format!("{hi_col} > {}", b(high)),
        Prefix::Lt => format!("{lo_col} < {}", b(low)),
        Prefix::Ge => format!("({hi_col} > {} OR ({lo_col} >= {} AND {hi_col} <= {}))", b(high), b(low), b(high)),
        Prefix::Le => format!("({lo_col} < {} OR ({lo_col} >= {} AND {hi_col} <= {}))", b(low), b(low), b(high)),
        Prefix::Sa => format!("{lo_col} > {}", b(high)),
        Prefix::Eb => format!("{hi_col} < {}", b(low)),
        Prefix::Ap => {
            let delta = ((now_ms - low).abs() / 10).max(86_400_000);
            format!("({lo_col} <= {} AND {hi_col} >= {})", b(high.saturating_add(delta)), b(low.saturating_sub(delta)))
        }
    }
}

/// A stored value column against a searched value with its precision range `[low, high)`.
fn number_condition(sql: &mut Sql, prefix: Prefix, value: f64, low: f64, high: f64, col: &str) -> String {
    let mut b = |v: f64| sql.real(v);
    match prefix {
        Prefix::Eq => format!("({col} >= {} AND {col} < {})", b(low), b(high)),
        Prefix::Ne => format!("NOT ({col} >= {} AND {col} < {})", b(low), b(high)),
        Prefix::Gt | Prefix::Sa => format!("{col} > {}", b(value)),
        Prefix::Lt | Prefix::Eb => format!("{col} < {}", b(value)),
        Prefix::Ge => format!("{col} >= {}", b(value)),
        Prefix::Le => format!("{col} <= {}", b(value)),
        Prefix::Ap => {
            let delta = (value * 0.1).abs();
            format!("({col} >= {} AND {col} <= {})", b(value - delta), b(value + delta))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir::search::{ParseOptions, parse};

    fn build(ty: &str, pairs: &[(&str, &str)], dialect: Dialect) -> SearchSql {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let parsed = parse(fhir::Definitions::r4(), Some(ty), &pairs, &ParseOptions::default()).unwrap();
        build_search(&parsed.query, dialect, 0)
    }

    #[test]
    fn placeholders_follow_the_dialect() {
        let s = build("Patient", &[("gender", "male")], Dialect::Sqlite);
        assert!(s.page.text.contains("?1") && !s.page.text.contains("$1"));
        let p = build("Patient", &[("gender", "male")], Dialect::Postgres);
        assert!(p.page.text.contains("$1") && !p.page.text.contains("?1"));
        assert_eq!(s.page.binds, p.page.binds);
        // Every placeholder has a bind value.
        let n = p.page.binds.len();
        assert!(p.page.text.contains(&format!("${n}")) && !p.page.text.contains(&format!("${}", n + 1)));
    }

    #[test]
    fn the_most_selective_criterion_drives() {
        let s = build("Observation", &[("date", "ge2020"), ("code", "x"), ("subject", "Patient/1")], Dialect::Sqlite);
        let text = &s.page.text;
        assert!(text.contains("FROM idx_reference i JOIN resource r ON r.rid = i.rid"), "{text}");
        assert!(text.contains("EXISTS (SELECT 1 FROM idx_token i WHERE i.rid = r.rid"), "{text}");
        assert!(text.contains("EXISTS (SELECT 1 FROM idx_date i WHERE i.rid = r.rid"), "{text}");
        let negated = build("Patient", &[("gender:not", "male")], Dialect::Sqlite);
        assert!(negated.page.text.contains("NOT EXISTS"), "a negation never drives");
    }

    #[test]
    fn a_parameter_driver_is_joined_in_rid_order_once_per_resource() {
        let s = build("Task", &[("owner", "Organization/h1"), ("status", "requested")], Dialect::Sqlite);
        let text = &s.page.text;
        assert!(text.contains("FROM idx_reference i JOIN resource r ON r.rid = i.rid"), "{text}");
        assert!(text.contains("i2.n < i.n AND ((i2.target_id = "), "{text}");
        assert!(text.ends_with("ORDER BY i.rid ASC LIMIT 20 OFFSET 0"), "{text}");
        // The count keeps the uncorrelated form; `_id` drivers keep theirs.
        assert!(s.count.unwrap().text.contains("r.rid IN (SELECT i.rid FROM idx_reference"));
        let by_id = build("Task", &[("_id", "a"), ("status", "requested")], Dialect::Sqlite);
        assert!(by_id.page.text.starts_with(&format!("SELECT {SELECT_COLUMNS} FROM resource r WHERE")));
    }

    #[test]
    fn the_index_alias_is_renamed_only_where_it_is_the_alias() {
        assert_eq!(
            rename_index_alias("(i.code = ?1 AND LOWER(i.text) LIKE ?2) OR ui.x = ?3 OR pi.code", "i2"),
            "(i2.code = ?1 AND LOWER(i2.text) LIKE ?2) OR ui.x = ?3 OR pi.code"
        );
    }

    #[test]
    fn total_none_skips_the_count() {
        assert!(build("Patient", &[("_total", "none")], Dialect::Sqlite).count.is_none());
        assert!(build("Patient", &[], Dialect::Sqlite).count.is_some());
    }
}
