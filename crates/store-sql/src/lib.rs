//! SQL shared by the SQL backends (`store-sqlite`, `store-postgres`): the schema, as DDL per
//! [`Dialect`] ([`schema::ddl`]), and the translation of a parsed FHIR search
//! ([`fhir::search::SearchQuery`]) into SQL text with dialect placeholders plus bind values
//! ([`query::build_search`]). A backend runs the text with its own driver, binding
//! [`SqlValue`]s in order.

pub mod query;
pub mod rows;
pub mod schema;

/// Which SQL dialect to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `?1, ?2, …` placeholders.
    Sqlite,
    /// `$1, $2, …` placeholders.
    Postgres,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Int(i64),
    Real(f64),
    Text(String),
}

/// SQL text being built, with its bind values.
#[derive(Debug, Clone)]
pub struct Sql {
    pub dialect: Dialect,
    pub text: String,
    pub binds: Vec<SqlValue>,
}

impl Sql {
    pub fn new(dialect: Dialect) -> Self {
        Sql { dialect, text: String::new(), binds: Vec::new() }
    }

    /// Adds a bind value and returns its placeholder.
    pub fn bind(&mut self, value: SqlValue) -> String {
        self.binds.push(value);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.binds.len()),
            Dialect::Postgres => format!("${}", self.binds.len()),
        }
    }

    pub fn text(&mut self, value: impl Into<String>) -> String {
        self.bind(SqlValue::Text(value.into()))
    }

    pub fn int(&mut self, value: i64) -> String {
        self.bind(SqlValue::Int(value))
    }

    pub fn real(&mut self, value: f64) -> String {
        self.bind(SqlValue::Real(value))
    }

    pub fn push(&mut self, fragment: &str) {
        self.text.push_str(fragment);
    }
}
