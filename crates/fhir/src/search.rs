//! FHIR search queries: parsing of the query string of a search interaction into a typed,
//! validated [`SearchQuery`] (parameters resolved against the official definitions, values
//! parsed per parameter type, modifiers and prefixes checked, chains and `_has` resolved),
//! ready for a store to execute.

use crate::definitions::ParamType;

/// A parsed search. `criteria` are ANDed; the values inside one criterion are ORed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    /// `None` for a whole-system search (`GET /fhir?_type=...` or `GET /fhir?...`).
    pub resource_type: Option<String>,
    /// For system search: restrict to these types (`_type`); empty means all types.
    pub types: Vec<String>,
    pub criteria: Vec<Criterion>,
    pub sort: Vec<SortKey>,
    /// Page size (`_count`), already clamped to the server maximum.
    pub count: usize,
    /// Index of the first match of this page (`_offset`, used by paging links).
    pub offset: usize,
    pub total: TotalMode,
    pub summary: Option<SummaryMode>,
    /// `_elements`, top-level element names.
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
}

/// `_total`. `Estimate` (the default for searches without `_total`) reports the total only when
/// the page itself proves it (a first page that is not full, or any page that ends the results),
/// so that broad searches do not pay for a second, counting query; `accurate` always counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotalMode {
    None,
    Estimate,
    #[default]
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryMode {
    True,
    Text,
    Data,
    Count,
    False,
}

/// `_include` / `_revinclude`: `source_type:param[:target_type]`, `*` for all.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    /// `None` for the `*` wildcard.
    pub param: Option<String>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

/// A search parameter as resolved for one resource type (or, for system search, the common
/// `Resource` parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamRef {
    pub code: String,
    pub kind: ParamType,
    /// For reference parameters, the possible target types.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub param: ParamRef,
    pub descending: bool,
}

/// One ANDed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    /// `param[:modifier]=v1,v2` (values ORed). `_id` and `_lastUpdated` come through here too,
    /// as token and date parameters named `_id` and `_lastUpdated`; stores map them to columns.
    Param { param: ParamRef, modifier: Option<Modifier>, values: Vec<ParamValue> },
    /// `param:missing=true|false`.
    Missing { param: ParamRef, missing: bool },
    /// `ref[:Type].chained...=v`: resources whose `param` points at a resource of one of
    /// `target_types` that satisfies `criterion` (evaluated on that target type).
    Chain { param: ParamRef, target_types: Vec<String>, criterion: Box<Criterion> },
    /// `_has:Source:refParam:criterion=v`: resources pointed at (through `reference_param`) by a
    /// resource of `source_type` that satisfies `criterion`.
    Has { source_type: String, reference_param: ParamRef, criterion: Box<Criterion> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Modifier {
    Exact,
    Contains,
    Text,
    Not,
    Above,
    Below,
    In,
    NotIn,
    OfType,
    Identifier,
    /// A reference type modifier, `subject:Patient=123`.
    Type(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A parsed search value. Ranges follow [`crate::index::IndexValue`]'s conventions
/// (epoch-millisecond inclusive date ranges; precision ranges for numbers).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    String(String),
    /// `[system]|[code]`: `system: None` = any system; `Some(None)` = no system (`|code`).
    Token {
        system: Option<Option<String>>,
        code: Option<String>,
    },
    /// `Type/id`, `id` (type from targets), `Type/id/_history/v` or an absolute URL.
    Reference {
        resource_type: Option<String>,
        id: Option<String>,
        version: Option<String>,
        url: Option<String>,
    },
    Date {
        prefix: Prefix,
        low: i64,
        high: i64,
    },
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Uri(String),
    /// One value per component, in definition order.
    Composite(Vec<ParamValue>),
}

use crate::definitions::Definitions;
use crate::outcome::{Issue, IssueType};

/// Limits and switches for parsing.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// `Prefer: handling=lenient`: unknown or unsupported parameters become warnings.
    pub lenient: bool,
    pub default_count: usize,
    pub max_count: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { lenient: false, default_count: 20, max_count: 1000 }
    }
}

/// A parsed query plus the warnings to report in the Bundle (ignored parameters in lenient
/// mode, clamped `_count`).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub query: SearchQuery,
    pub warnings: Vec<Issue>,
}

/// Parses the (already percent-decoded) query pairs of a search on `resource_type`
/// (`None` = whole system). Errors name the parameter and what is wrong with it.
pub fn parse(
    defs: &Definitions,
    resource_type: Option<&str>,
    params: &[(String, String)],
    options: &ParseOptions,
) -> Result<Parsed, Vec<Issue>> {
    let mut parser = Parser { defs, options, warnings: Vec::new(), errors: Vec::new() };
    let mut query = SearchQuery {
        resource_type: resource_type.map(str::to_string),
        count: options.default_count,
        // Without `_total`, the total is given when it costs nothing (see TotalMode::Estimate).
        total: TotalMode::Estimate,
        ..SearchQuery::default()
    };
    // `_type` first: it decides which parameters a system search may use.
    for (name, value) in params.iter().filter(|(n, _)| n == "_type") {
        for t in split_escaped(value, ',') {
            if defs.is_resource_type(&t) {
                query.types.push(t);
            } else {
                parser.error(IssueType::Invalid, name, format!("'{t}' in _type is not a FHIR R4 resource type"));
            }
        }
    }
    let context: Vec<String> = match resource_type {
        Some(t) => vec![t.to_string()],
        None if !query.types.is_empty() => query.types.clone(),
        None => vec!["Resource".to_string()],
    };
    for (name, value) in params {
        parser.parameter(&mut query, &context, name, value);
    }
    if parser.errors.is_empty() { Ok(Parsed { query, warnings: parser.warnings }) } else { Err(parser.errors) }
}

struct Parser<'d> {
    defs: &'d Definitions,
    options: &'d ParseOptions,
    warnings: Vec<Issue>,
    errors: Vec<Issue>,
}

/// Splits at unescaped `sep`, removing the escapes of `,` `$` `|` `\`.
fn split_escaped(value: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == sep => parts.last_mut().map(|p| p.push(n)).unwrap_or_default(),
                Some(n) => {
                    if let Some(p) = parts.last_mut() {
                        p.push('\\');
                        p.push(n);
                    }
                }
                None => parts.last_mut().map(|p| p.push('\\')).unwrap_or_default(),
            }
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

/// Removes the remaining escapes once a value has been split at every separator.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

const RESULT_PARAMS: &[&str] = &["_format", "_pretty", "_type"];

impl Parser<'_> {
    fn error(&mut self, code: IssueType, param: &str, message: String) {
        self.errors.push(Issue::error(code, message).at(param.to_string()));
    }

    /// An unknown or unsupported parameter: an error, or a warning in lenient mode.
    fn reject(&mut self, code: IssueType, param: &str, message: String) {
        if self.options.lenient {
            let mut issue =
                Issue::error(code, format!("{message} (ignored: Prefer handling=lenient)")).at(param.to_string());
            issue.severity = crate::outcome::IssueSeverity::Warning;
            self.warnings.push(issue);
        } else {
            self.error(code, param, message);
        }
    }

    fn parameter(&mut self, query: &mut SearchQuery, context: &[String], name: &str, value: &str) {
        if RESULT_PARAMS.contains(&name) {
            return;
        }
        match name {
            "_count" => match value.parse::<usize>() {
                Ok(n) if n > self.options.max_count => {
                    query.count = self.options.max_count;
                    let mut w = Issue::error(
                        IssueType::TooCostly,
                        format!(
                            "_count={n} is larger than the server maximum {}; using {}",
                            self.options.max_count, self.options.max_count
                        ),
                    )
                    .at("_count");
                    w.severity = crate::outcome::IssueSeverity::Warning;
                    self.warnings.push(w);
                }
                Ok(n) => query.count = n,
                Err(_) => self.error(
                    IssueType::Invalid,
                    name,
                    format!("_count must be a non-negative whole number, not '{value}'"),
                ),
            },
            "_offset" => match value.parse::<usize>() {
                Ok(n) => query.offset = n,
                Err(_) => self.error(
                    IssueType::Invalid,
                    name,
                    format!("_offset must be a non-negative whole number, not '{value}'"),
                ),
            },
            "_total" => match value {
                "none" => query.total = TotalMode::None,
                "estimate" => query.total = TotalMode::Estimate,
                "accurate" => query.total = TotalMode::Accurate,
                _ => self.error(
                    IssueType::Invalid,
                    name,
                    format!("_total must be none, estimate or accurate, not '{value}'"),
                ),
            },
            "_summary" => {
                query.summary = Some(match value {
                    "true" => SummaryMode::True,
                    "text" => SummaryMode::Text,
                    "data" => SummaryMode::Data,
                    "count" => SummaryMode::Count,
                    "false" => SummaryMode::False,
                    _ => {
                        return self.error(
                            IssueType::Invalid,
                            name,
                            format!("_summary must be true, text, data, count or false, not '{value}'"),
                        );
                    }
                })
            }
            "_elements" => {
                query.elements =
                    Some(value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            }
            "_sort" => {
                for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    let (descending, code) = match key.strip_prefix('-') {
                        Some(c) => (true, c),
                        None => (false, key),
                    };
                    match self.resolve(context, code) {
                        Some(param) if param.kind != ParamType::Composite && param.kind != ParamType::Special => {
                            query.sort.push(SortKey { param, descending })
                        }
                        _ => self.error(
                            IssueType::Invalid,
                            name,
                            format!(
                                "cannot sort by '{code}': it is not a sortable search parameter of {}",
                                context.join(", ")
                            ),
                        ),
                    }
                }
            }
            "_contained" | "_containedType" | "_query" | "_filter" | "_list" | "_text" | "_content" => self.reject(
                IssueType::NotSupported,
                name,
                format!("the search parameter {name} is not supported by this server"),
            ),
            _ if name.starts_with("_include") || name.starts_with("_revinclude") => self.include(query, name, value),
            _ => {
                if let Some(criterion) = self.criterion(context, name, value) {
                    query.criteria.push(criterion);
                }
            }
        }
    }

    fn include(&mut self, query: &mut SearchQuery, name: &str, value: &str) {
        let (base, modifier) = name.split_once(':').unwrap_or((name, ""));
        let iterate = match modifier {
            "" => false,
            "iterate" | "recurse" => true,
            other => {
                return self.error(
                    IssueType::Invalid,
                    name,
                    format!("unknown modifier ':{other}' on {base} (use :iterate)"),
                );
            }
        };
        let parts: Vec<&str> = value.split(':').collect();
        let include = match parts.as_slice() {
            ["*"] => Include { source_type: "*".into(), param: None, target_type: None, iterate },
            [source, param] | [source, param, _] => {
                let target = parts.get(2).map(|t| t.to_string());
                if !self.defs.is_resource_type(source) {
                    return self.error(
                        IssueType::Invalid,
                        name,
                        format!("'{source}' in {name}={value} is not a resource type"),
                    );
                }
                if *param != "*" {
                    match self.defs.search_param(source, param) {
                        Some(p) if p.kind == ParamType::Reference => {}
                        _ => {
                            return self.error(
                                IssueType::Invalid,
                                name,
                                format!("'{param}' in {name}={value} is not a reference search parameter of {source}"),
                            );
                        }
                    }
                }
                if let Some(t) = &target
                    && !self.defs.is_resource_type(t)
                {
                    return self.error(
                        IssueType::Invalid,
                        name,
                        format!("'{t}' in {name}={value} is not a resource type"),
                    );
                }
                Include {
                    source_type: source.to_string(),
                    param: (*param != "*").then(|| param.to_string()),
                    target_type: target,
                    iterate,
                }
            }
            _ => {
                return self.error(
                    IssueType::Invalid,
                    name,
                    format!("{name}={value} must have the form SourceType:searchParam[:TargetType]"),
                );
            }
        };
        if base == "_include" {
            query.includes.push(include);
        } else {
            query.revincludes.push(include);
        }
    }

    /// Resolves a parameter code on every context type; `None` if it exists on none.
    fn resolve(&self, context: &[String], code: &str) -> Option<ParamRef> {
        match code {
            "_id" => return Some(ParamRef { code: "_id".into(), kind: ParamType::Token, targets: vec![] }),
            "_lastUpdated" => {
                return Some(ParamRef { code: "_lastUpdated".into(), kind: ParamType::Date, targets: vec![] });
            }
            _ => {}
        }
        let mut found: Option<ParamRef> = None;
        for t in context {
            let def = if t == "Resource" {
                self.defs.all_search_params().iter().find(|p| p.code == code && p.base.iter().any(|b| b == "Resource"))
            } else {
                self.defs.search_param(t, code)
            };
            let def = def?;
            match &mut found {
                None => found = Some(ParamRef { code: code.to_string(), kind: def.kind, targets: def.targets.clone() }),
                Some(f) => {
                    if f.kind != def.kind {
                        return None;
                    }
                    for target in &def.targets {
                        if !f.targets.contains(target) {
                            f.targets.push(target.clone());
                        }
                    }
                }
            }
        }
        found
    }

    fn known_params(&self, context: &[String]) -> String {
        let Some(t) = context.first() else { return String::new() };
        let mut codes: Vec<&str> = self.defs.search_params_for(t).iter().map(|p| p.code.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        let more = codes.len().saturating_sub(30);
        let mut list = codes.into_iter().take(30).collect::<Vec<_>>().join(", ");
        if more > 0 {
            list.push_str(&format!(" and {more} more"));
        }
        list
    }

    fn criterion(&mut self, context: &[String], name: &str, value: &str) -> Option<Criterion> {
        if let Some(rest) = name.strip_prefix("_has:") {
            return self.has(context, name, rest, value);
        }
        // Chain: `subject:Patient.name` or `subject.organization.name`.
        let (head, chain_rest) = match name.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (name, None),
        };
        let (code, modifier_text) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        let Some(param) = self.resolve(context, code) else {
            let known = self.known_params(context);
            self.reject(
                IssueType::Invalid,
                name,
                format!("Unknown search parameter '{code}' for {}. Known parameters: {known}", context.join(", ")),
            );
            return None;
        };
        if let Some(rest) = chain_rest {
            if param.kind != ParamType::Reference {
                self.error(
                    IssueType::Invalid,
                    name,
                    format!("'{code}' is a {} parameter and cannot be chained", param.kind.code()),
                );
                return None;
            }
            let mut targets = param.targets.clone();
            if let Some(t) = modifier_text {
                if !param.targets.iter().any(|x| x == t) {
                    self.error(
                        IssueType::Invalid,
                        name,
                        format!("'{code}' cannot refer to a {t} (allowed: {})", param.targets.join(", ")),
                    );
                    return None;
                }
                targets = vec![t.to_string()];
            }
            let chained_code = rest.split(['.', ':']).next().unwrap_or(rest);
            targets.retain(|t| self.resolve(std::slice::from_ref(t), chained_code).is_some());
            if targets.is_empty() {
                self.error(
                    IssueType::Invalid,
                    name,
                    format!(
                        "'{chained_code}' is not a search parameter of any resource type that '{code}' can refer to"
                    ),
                );
                return None;
            }
            let inner = self.criterion(&targets, rest, value)?;
            return Some(Criterion::Chain { param, target_types: targets, criterion: Box::new(inner) });
        }
        let modifier = match modifier_text {
            None => None,
            Some("missing") => {
                return match value {
                    "true" => Some(Criterion::Missing { param, missing: true }),
                    "false" => Some(Criterion::Missing { param, missing: false }),
                    _ => {
                        self.error(IssueType::Invalid, name, format!(":missing takes true or false, not '{value}'"));
                        None
                    }
                };
            }
            Some(m) => Some(self.modifier(&param, name, m)?),
        };
        let mut values = Vec::new();
        for raw in split_escaped(value, ',') {
            if raw.is_empty() {
                continue;
            }
            match self.value(&param, modifier.as_ref(), &raw) {
                Ok(v) => values.push(v),
                Err(message) => {
                    self.error(IssueType::Invalid, name, message);
                    return None;
                }
            }
        }
        if values.is_empty() {
            self.error(IssueType::Invalid, name, format!("the search parameter '{name}' has no value"));
            return None;
        }
        Some(Criterion::Param { param, modifier, values })
    }

    fn has(&mut self, context: &[String], name: &str, rest: &str, value: &str) -> Option<Criterion> {
        // rest = `Source:refParam:criterion` where criterion may itself be `_has:...`.
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(reference), Some(inner_name)) = (parts.next(), parts.next(), parts.next()) else {
            self.error(
                IssueType::Invalid,
                name,
                "_has must have the form _has:SourceType:referenceParam:searchParam=value".into(),
            );
            return None;
        };
        if !self.defs.is_resource_type(source) {
            self.error(IssueType::Invalid, name, format!("'{source}' in {name} is not a resource type"));
            return None;
        }
        let reference_param = match self.resolve(&[source.to_string()], reference) {
            Some(p) if p.kind == ParamType::Reference => p,
            _ => {
                self.error(
                    IssueType::Invalid,
                    name,
                    format!("'{reference}' is not a reference search parameter of {source}"),
                );
                return None;
            }
        };
        if let Some(target) = context.first()
            && target != "Resource"
            && !reference_param.targets.iter().any(|t| t == target || t == "Resource")
        {
            self.error(IssueType::Invalid, name, format!("{source}.{reference} cannot refer to a {target}"));
            return None;
        }
        let inner = self.criterion(&[source.to_string()], inner_name, value)?;
        Some(Criterion::Has { source_type: source.to_string(), reference_param, criterion: Box::new(inner) })
    }

    fn modifier(&mut self, param: &ParamRef, name: &str, text: &str) -> Option<Modifier> {
        use ParamType as T;
        let modifier = match (text, param.kind) {
            ("exact", T::String) => Modifier::Exact,
            ("contains", T::String | T::Uri) => Modifier::Contains,
            ("text", T::Token | T::Reference) => Modifier::Text,
            ("not", T::Token) => Modifier::Not,
            ("above", T::Uri) => Modifier::Above,
            ("below", T::Uri) => Modifier::Below,
            ("identifier", T::Reference) => Modifier::Identifier,
            ("of-type", T::Token) => Modifier::OfType,
            ("in" | "not-in" | "above" | "below", T::Token) => {
                self.reject(
                    IssueType::NotSupported,
                    name,
                    format!(":{text} needs value-set expansion, which this server does not support yet"),
                );
                return None;
            }
            (t, T::Reference) if self.defs.is_resource_type(t) => {
                if !param.targets.iter().any(|x| x == t) {
                    self.error(
                        IssueType::Invalid,
                        name,
                        format!("'{}' cannot refer to a {t} (allowed: {})", param.code, param.targets.join(", ")),
                    );
                    return None;
                }
                Modifier::Type(t.to_string())
            }
            _ => {
                self.error(
                    IssueType::Invalid,
                    name,
                    format!(
                        "the modifier ':{text}' cannot be used on the {} parameter '{}'",
                        param.kind.code(),
                        param.code
                    ),
                );
                return None;
            }
        };
        Some(modifier)
    }

    fn value(&self, param: &ParamRef, modifier: Option<&Modifier>, raw: &str) -> Result<ParamValue, String> {
        parse_value(self.defs, param.kind, &param.code, &param.targets, modifier, raw)
    }
}

fn split_prefix(raw: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = raw.strip_prefix(text)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, raw)
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| unescape(s))
}

fn parse_value(
    defs: &Definitions,
    kind: ParamType,
    code: &str,
    targets: &[String],
    modifier: Option<&Modifier>,
    raw: &str,
) -> Result<ParamValue, String> {
    match kind {
        ParamType::String => Ok(ParamValue::String(unescape(raw))),
        ParamType::Uri => Ok(ParamValue::Uri(unescape(raw))),
        ParamType::Token => {
            if matches!(modifier, Some(Modifier::Text)) {
                return Ok(ParamValue::String(unescape(raw)));
            }
            if matches!(modifier, Some(Modifier::OfType)) {
                // `system|code|value`: the identifier type coding and the identifier value,
                // carried as a two-component composite (type token, value token).
                let parts = split_escaped(raw, '|');
                let [system, type_code, value] = parts.as_slice() else {
                    return Err(format!("'{raw}' for {code}:of-type must be system|code|value"));
                };
                return Ok(ParamValue::Composite(vec![
                    ParamValue::Token { system: Some(opt(system)), code: opt(type_code) },
                    ParamValue::Token { system: None, code: opt(value) },
                ]));
            }
            Ok(parse_token(raw))
        }
        ParamType::Reference => {
            if matches!(modifier, Some(Modifier::Identifier)) {
                return Ok(parse_token(raw));
            }
            if matches!(modifier, Some(Modifier::Text)) {
                return Ok(ParamValue::String(unescape(raw)));
            }
            let value = unescape(raw);
            if value.contains("://") || value.starts_with("urn:") {
                let parsed = crate::index::reference_value(&value, None);
                if let crate::index::IndexValue::Reference { target_type, target_id, version, .. } = parsed {
                    return Ok(ParamValue::Reference {
                        resource_type: target_type,
                        id: target_id,
                        version,
                        url: Some(value),
                    });
                }
            }
            let (path, version) = match value.split_once("/_history/") {
                Some((p, v)) => (p, Some(v.to_string())),
                None => (value.as_str(), None),
            };
            let (ty, id) = match path.split_once('/') {
                Some((t, i)) => (Some(t.to_string()), i.to_string()),
                None => (None, path.to_string()),
            };
            if let Some(t) = &ty {
                if !defs.is_resource_type(t) {
                    return Err(format!(
                        "'{value}' for {code} must be [Type/]id with a FHIR resource type, and '{t}' is not one"
                    ));
                }
                if !targets.is_empty() && !targets.iter().any(|x| x == t || x == "Resource") {
                    return Err(format!("{code} cannot refer to a {t} (allowed: {})", targets.join(", ")));
                }
            }
            if id.is_empty() || id.contains('/') {
                return Err(format!("'{value}' for {code} must be an id, Type/id or an absolute URL"));
            }
            let resource_type = match (ty, modifier) {
                (Some(t), _) => Some(t),
                (None, Some(Modifier::Type(t))) => Some(t.clone()),
                (None, _) => None,
            };
            Ok(ParamValue::Reference { resource_type, id: Some(id), version, url: None })
        }
        ParamType::Date => {
            let (prefix, rest) = split_prefix(raw);
            let (low, high) = crate::normalize::date_range(rest).ok_or_else(|| {
                format!("'{rest}' for {code} is not a valid date (expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.sss]+zz:zz)")
            })?;
            Ok(ParamValue::Date { prefix, low, high })
        }
        ParamType::Number => {
            let (prefix, rest) = split_prefix(raw);
            let (value, low, high) = crate::normalize::decimal_range(rest)
                .ok_or_else(|| format!("'{rest}' for {code} is not a number (expected e.g. 5, 5.40 or 1e3, optionally prefixed by eq, ne, gt, lt, ge, le, sa, eb or ap)"))?;
            Ok(ParamValue::Number { prefix, value, low, high })
        }
        ParamType::Quantity => {
            let parts = split_escaped(raw, '|');
            let (prefix, number) = split_prefix(&parts[0]);
            let (value, low, high) = crate::normalize::decimal_range(number)
                .ok_or_else(|| format!("'{raw}' for {code} is not a quantity (expected [prefix]number[|system|code], e.g. gt5.4|http://unitsofmeasure.org|mg)"))?;
            let (system, unit_code) = match parts.as_slice() {
                [_] => (None, None),
                [_, system, code] => (opt(system), opt(code)),
                _ => return Err(format!("'{raw}' for {code} must be number, number|system|code or number||code")),
            };
            Ok(ParamValue::Quantity { prefix, value, low, high, system, code: unit_code })
        }
        ParamType::Composite => {
            let Some(def) = defs.all_search_params().iter().find(|p| p.code == code && p.kind == ParamType::Composite)
            else {
                return Err(format!("{code} has no composite definition"));
            };
            let parts = split_escaped(raw, '$');
            if parts.len() != def.components.len() {
                return Err(format!("'{raw}' for {code} must have {} parts separated by $", def.components.len()));
            }
            let mut values = Vec::with_capacity(parts.len());
            for (component, part) in def.components.iter().zip(&parts) {
                let cdef = defs
                    .search_param_by_url(&component.definition)
                    .ok_or_else(|| format!("{code}: component {} is unknown", component.definition))?;
                values.push(parse_value(defs, cdef.kind, &cdef.code, &cdef.targets, None, part)?);
            }
            Ok(ParamValue::Composite(values))
        }
        ParamType::Special => Err(format!("the special search parameter {code} is not supported by this server")),
    }
}

fn parse_token(raw: &str) -> ParamValue {
    let parts = split_escaped(raw, '|');
    match parts.as_slice() {
        [code] => ParamValue::Token { system: None, code: opt(code) },
        [system, code, ..] => ParamValue::Token { system: Some(opt(system)), code: opt(code) },
        [] => ParamValue::Token { system: None, code: None },
    }
}

#[cfg(test)]
mod tests;
