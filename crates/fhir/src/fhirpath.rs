//! A compiler and evaluator for the FHIRPath subset that the official R4 SearchParameter
//! expressions use: unions of paths rooted at a type name, with field navigation (choice types
//! resolved by suffix), `as T` / `as(T)` / `ofType(T)`, `where(...)` with `resolve() is T`,
//! `field = 'literal'` and `hasExtension('url')`, `extension('url')`, `first()` and `exists()`.
//!
//! An expression outside this subset fails to compile with a reason; the index reports such
//! parameters through [`crate::index::unsupported_params`], so the capability statement never
//! claims what the server does not do.

use serde_json::Value;

/// One compiled path: `Type.step.step...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// The root type name (`Patient`), or `None` for a path relative to the current item
    /// (composite components).
    pub root: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Navigate into a field; a choice element `value[x]` is found by its prefix.
    Field(String),
    /// Keep nodes of this type (`as`, `ofType`).
    As(String),
    Where(Condition),
    /// `extension('url')`.
    Extension(String),
    First,
    /// `exists()`: yields a boolean.
    Exists,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `resolve() is Patient`: the node is a Reference to a resource of this type.
    ResolvesTo(String),
    /// `system = 'email'`.
    FieldEquals(String, String),
    /// `hasExtension('url')`.
    HasExtension(String),
}

/// A compiled expression: the union of its paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    pub paths: Vec<Path>,
}

/// A value selected by an expression, with its FHIR type when the path tells it
/// (a choice suffix such as `Quantity` in `valueQuantity`).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub type_hint: Option<&'a str>,
}

/// Compiles an expression, or explains which construct is not supported.
pub fn compile(expression: &str) -> Result<Expression, String> {
    let parts = split_top_level(expression, '|');
    let mut paths = Vec::with_capacity(parts.len());
    for part in parts {
        paths.push(compile_path(part.trim())?);
    }
    Ok(Expression { paths })
}

/// Splits at `sep` outside parentheses and string literals.
fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut start) = (0i32, false, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => depth -= 1,
            c if c == sep && !in_string && depth == 0 => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn strip_parens(text: &str) -> &str {
    let t = text.trim();
    if !(t.starts_with('(') && t.ends_with(')')) {
        return t;
    }
    // Strip only when the opening parenthesis closes at the very end.
    let mut depth = 0;
    for (i, c) in t.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 && i != t.len() - 1 {
                    return t;
                }
            }
            _ => {}
        }
    }
    strip_parens(&t[1..t.len() - 1])
}

fn compile_path(text: &str) -> Result<Path, String> {
    let text = strip_parens(text);
    // `X as T` at the top level of this part.
    if let Some(pos) = find_top_level_word(text, " as ") {
        let mut path = compile_path(&text[..pos])?;
        let ty = text[pos + 4..].trim();
        if !is_identifier(ty) {
            return Err(format!("unsupported type name '{ty}' after 'as'"));
        }
        path.steps.push(Step::As(ty.to_string()));
        return Ok(path);
    }
    if find_top_level_word(text, " is ").is_some() {
        return Err("the 'is' operator outside where() is not supported".into());
    }
    let segments = split_top_level(text, '.');
    let mut iter = segments.into_iter();
    let first = iter.next().unwrap_or_default().trim();
    let mut path = Path { root: None, steps: Vec::new() };
    if first.starts_with(|c: char| c.is_ascii_uppercase()) && is_identifier(first) {
        path.root = Some(first.to_string());
    } else if first != "$this" {
        path.steps.push(compile_step(first)?);
    }
    for segment in iter {
        path.steps.push(compile_step(segment.trim())?);
    }
    Ok(path)
}

fn find_top_level_word(text: &str, word: &str) -> Option<usize> {
    let (mut depth, mut in_string) = (0i32, false);
    for (i, c) in text.char_indices() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => depth -= 1,
            _ if depth == 0 && !in_string && text[i..].starts_with(word) => return Some(i),
            _ => {}
        }
    }
    None
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn string_literal(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'')).then(|| s[1..s.len() - 1].to_string())
}

fn compile_step(segment: &str) -> Result<Step, String> {
    if is_identifier(segment) {
        return Ok(Step::Field(segment.to_string()));
    }
    let Some(open) = segment.find('(') else {
        return Err(format!("unsupported path segment '{segment}'"));
    };
    if !segment.ends_with(')') {
        return Err(format!("unsupported path segment '{segment}'"));
    }
    let (name, arg) = (&segment[..open], segment[open + 1..segment.len() - 1].trim());
    match name {
        "as" | "ofType" if is_identifier(arg) => Ok(Step::As(arg.to_string())),
        "extension" => string_literal(arg).map(Step::Extension).ok_or_else(|| format!("unsupported extension({arg})")),
        "first" if arg.is_empty() => Ok(Step::First),
        "exists" if arg.is_empty() => Ok(Step::Exists),
        "where" => compile_condition(arg).map(Step::Where),
        _ => Err(format!("unsupported function '{name}({arg})'")),
    }
}

fn compile_condition(text: &str) -> Result<Condition, String> {
    let text = strip_parens(text);
    if let Some(rest) = text.strip_prefix("resolve()") {
        let rest = rest.trim();
        let ty = rest.strip_prefix("is ").map(str::trim).or_else(|| rest.strip_prefix(".is(")?.strip_suffix(')'));
        return match ty {
            Some(ty) if is_identifier(ty) => Ok(Condition::ResolvesTo(ty.to_string())),
            _ => Err(format!("unsupported condition '{text}'")),
        };
    }
    if let Some(arg) = text.strip_prefix("hasExtension(").and_then(|r| r.strip_suffix(')')) {
        return string_literal(arg).map(Condition::HasExtension).ok_or_else(|| format!("unsupported '{text}'"));
    }
    if let Some((field, literal)) = text.split_once('=') {
        let field = field.trim();
        if is_identifier(field)
            && let Some(lit) = string_literal(literal)
        {
            return Ok(Condition::FieldEquals(field.to_string(), lit));
        }
    }
    Err(format!("unsupported condition '{text}'"))
}

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

impl Expression {
    /// The paths that apply to a resource of `resource_type` (official expressions union the
    /// paths of every base type).
    pub fn paths_for<'e>(&'e self, resource_type: &'e str) -> impl Iterator<Item = &'e Path> + 'e {
        self.paths.iter().filter(move |p| match p.root.as_deref() {
            Some(root) => root == resource_type || root == "Resource" || root == "DomainResource",
            None => true,
        })
    }

    /// Evaluates over a resource of type `resource_type`.
    pub fn evaluate<'a>(&self, resource_type: &str, resource: &'a Value) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        for path in self.paths_for(resource_type) {
            path.evaluate_into(resource, &mut out);
        }
        out
    }
}

impl Path {
    /// Evaluates starting at `start` (the resource for rooted paths, the item for relative ones).
    pub fn evaluate_into<'a>(&self, start: &'a Value, out: &mut Vec<Node<'a>>) {
        let mut nodes = vec![Node { value: start, type_hint: None }];
        for step in &self.steps {
            nodes = apply(step, nodes);
            if nodes.is_empty() {
                return;
            }
        }
        out.extend(nodes);
    }
}

fn push_flat<'a>(value: &'a Value, hint: Option<&'a str>, out: &mut Vec<Node<'a>>) {
    match value {
        Value::Array(items) => out.extend(items.iter().map(|v| Node { value: v, type_hint: hint })),
        v => out.push(Node { value: v, type_hint: hint }),
    }
}

fn apply<'a>(step: &Step, nodes: Vec<Node<'a>>) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    match step {
        Step::Field(name) => {
            for node in nodes {
                let Value::Object(map) = node.value else { continue };
                if let Some(v) = map.get(name.as_str()) {
                    push_flat(v, None, &mut out);
                    continue;
                }
                // A choice element: `value` matches `valueQuantity`, `valueString`, ...
                for (key, v) in map {
                    if let Some(suffix) = key.strip_prefix(name.as_str())
                        && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                    {
                        push_flat(v, Some(suffix), &mut out);
                    }
                }
            }
        }
        Step::As(ty) => {
            out.extend(nodes.into_iter().filter(|n| match n.type_hint {
                Some(hint) => hint.eq_ignore_ascii_case(ty),
                None => shape_matches(n.value, ty),
            }));
        }
        Step::Where(condition) => out.extend(nodes.into_iter().filter(|n| holds(condition, n.value))),
        Step::Extension(url) => {
            for node in nodes {
                if let Some(Value::Array(exts)) = node.value.get("extension") {
                    out.extend(
                        exts.iter()
                            .filter(|e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
                            .map(|e| Node { value: e, type_hint: Some("Extension") }),
                    );
                }
            }
        }
        Step::First => out.extend(nodes.into_iter().take(1)),
        Step::Exists => {
            out.push(Node { value: if nodes.is_empty() { &FALSE } else { &TRUE }, type_hint: Some("boolean") })
        }
    }
    out
}

/// Without a type hint, decides whether a value can be of FHIR type `ty` from its JSON shape.
fn shape_matches(value: &Value, ty: &str) -> bool {
    match ty {
        "Reference" => {
            value.get("reference").is_some() || value.get("identifier").is_some() || value.get("display").is_some()
        }
        "Identifier" => value.get("value").is_some() || value.get("system").is_some(),
        "CodeableConcept" => value.get("coding").is_some() || value.get("text").is_some(),
        "Quantity" => value.get("value").is_some() && value.get("low").is_none(),
        "Range" => value.get("low").is_some() || value.get("high").is_some(),
        "Period" => value.get("start").is_some() || value.get("end").is_some(),
        "boolean" => value.is_boolean(),
        "string" | "uri" | "canonical" | "date" | "dateTime" | "code" => value.is_string(),
        _ => false,
    }
}

fn holds(condition: &Condition, value: &Value) -> bool {
    match condition {
        Condition::ResolvesTo(ty) => reference_type(value).is_some_and(|t| t == ty),
        Condition::FieldEquals(field, literal) => value.get(field).and_then(Value::as_str) == Some(literal.as_str()),
        Condition::HasExtension(url) => value
            .get("extension")
            .and_then(Value::as_array)
            .is_some_and(|exts| exts.iter().any(|e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))),
    }
}

/// The target type of a Reference value (`{"reference": "Patient/1"}` or an absolute URL
/// ending in `Patient/1`, or `Reference.type`).
pub fn reference_type(value: &Value) -> Option<&str> {
    if let Some(reference) = value.get("reference").and_then(Value::as_str) {
        let without_history = reference.split("/_history/").next().unwrap_or(reference);
        let mut parts = without_history.rsplit('/');
        let _id = parts.next()?;
        if let Some(ty) = parts.next()
            && ty.starts_with(|c: char| c.is_ascii_uppercase())
        {
            return Some(ty);
        }
    }
    value.get("type").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_every_official_expression_or_explains() {
        let defs = crate::Definitions::r4();
        let mut failures = Vec::new();
        for p in defs.all_search_params() {
            if let Some(e) = &p.expression
                && let Err(reason) = compile(e)
            {
                failures.push((p.code.clone(), reason));
            }
        }
        // The whole official set is within the subset, bar a handful listed as unsupported.
        assert!(failures.len() <= 5, "{failures:?}");
    }

    #[test]
    fn navigates_choices_and_filters() {
        let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 5}, "subject": {"reference": "Patient/1"}});
        let e = compile("(Observation.value as Quantity) | (Observation.value as CodeableConcept)").unwrap();
        let nodes = e.evaluate("Observation", &obs);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].type_hint, Some("Quantity"));
        let e = compile("Observation.subject.where(resolve() is Patient)").unwrap();
        assert_eq!(e.evaluate("Observation", &obs).len(), 1);
        let e = compile("Observation.subject.where(resolve() is Group)").unwrap();
        assert!(e.evaluate("Observation", &obs).is_empty());
        let p = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
        let e = compile("Patient.telecom.where(system='email') | Practitioner.telecom.where(system='email')").unwrap();
        let nodes = e.evaluate("Patient", &p);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].value["value"], "a@b");
    }

    #[test]
    fn rejects_unknown_constructs() {
        assert!(compile("Patient.name.select(given)").is_err());
        assert!(compile("Patient.x.where(a > 1)").is_err());
    }
}
