//! The one schema of the SQL backends.
//!
//! - `resource`: the current version of every resource (one row per type+id, tombstones kept
//!   with `deleted = 1`), with an integer surrogate key `rid` that every other table uses.
//! - `resource_history`: every version ever written, the current one included; the JSON of the
//!   current version lives only in `resource` (its history row's `body` is NULL until the next
//!   write moves it there), so each version's JSON is stored once.
//! - `compartment`: which Patient compartments hold a resource (for `$everything`).
//! - `idx_*`: one narrow table per search-parameter type, rows of the current version only, keyed
//!   by `(rid, param, n)` (`WITHOUT ROWID` on SQLite, so a row costs one B-tree for its key and one
//!   for its value index) with a value index for searches.
//! - `outbox` / `consumer_cursor`: the transactional outbox and its consumers' cursors.
//! - `audit_log` (+ `audit_patient`, `audit_checkpoint`): the hash-chained audit trail
//!   (`store::audit`), appended in the same transaction as the writes it records.
//! - `security_object` / `security_lookup`: accounts, clients, tokens and one-time codes as JSON
//!   documents with unique lookup keys (user name, blind index of an ID number, token hash).
//!
//! Every table that holds patient data carries `patient_key` (the first Patient-compartment id,
//! empty for shared data such as Organization): on PostgreSQL it is the partitioning and Citus
//! distribution column (ARCHITECTURE.md, "Scaling path"). Strings compared by range
//! (`idx_string.norm`, `idx_uri.uri`) use binary ordering (`COLLATE "C"` on PostgreSQL).

use crate::Dialect;

/// The schema version this code writes; stored in `schema_meta`.
pub const SCHEMA_VERSION: i64 = 2;

/// DDL statements, idempotent (`IF NOT EXISTS`), in order.
pub fn ddl(dialect: Dialect) -> Vec<String> {
    let (pk, real, bin, clustered) = match dialect {
        Dialect::Sqlite => ("INTEGER PRIMARY KEY", "REAL", "", " WITHOUT ROWID"),
        Dialect::Postgres => ("BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION", " COLLATE \"C\"", ""),
    };
    let int = "BIGINT";
    let mut statements = vec![
        "CREATE TABLE IF NOT EXISTS schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS resource (rid {pk}, type TEXT NOT NULL, id TEXT NOT NULL, version {int} NOT NULL, \
             last_updated {int} NOT NULL, deleted SMALLINT NOT NULL, method TEXT NOT NULL, patient_key TEXT NOT NULL, body TEXT, \
             UNIQUE (type, id))"
        ),
        "CREATE INDEX IF NOT EXISTS resource_type_updated ON resource (type, last_updated)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS resource_history (rid {int} NOT NULL, version {int} NOT NULL, type TEXT NOT NULL, \
             id TEXT NOT NULL, last_updated {int} NOT NULL, deleted SMALLINT NOT NULL, method TEXT NOT NULL, \
             patient_key TEXT NOT NULL, body TEXT, PRIMARY KEY (rid, version))"
        ),
        "CREATE INDEX IF NOT EXISTS history_updated ON resource_history (last_updated)".to_string(),
        "CREATE INDEX IF NOT EXISTS history_type_updated ON resource_history (type, last_updated)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS compartment (patient_key TEXT NOT NULL, rid {int} NOT NULL, PRIMARY KEY (patient_key, rid))"
        ),
        "CREATE INDEX IF NOT EXISTS compartment_rid ON compartment (rid)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_string (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             norm TEXT{bin} NOT NULL, exact TEXT NOT NULL, patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_string_value ON idx_string (type, param, norm)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_token (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             system TEXT, code TEXT, text TEXT, patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_token_value ON idx_token (type, param, code, system)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_reference (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             target_type TEXT, target_id TEXT, version TEXT, url TEXT, ident_system TEXT, ident_value TEXT, \
             patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_reference_value ON idx_reference (type, param, target_id, target_type)"
            .to_string(),
        "CREATE INDEX IF NOT EXISTS idx_reference_target ON idx_reference (target_type, target_id)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_date (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             low {int} NOT NULL, high {int} NOT NULL, patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_date_value ON idx_date (type, param, low, high)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_number (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             value {real} NOT NULL, low {real} NOT NULL, high {real} NOT NULL, patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_number_value ON idx_number (type, param, value)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_quantity (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             value {real} NOT NULL, low {real} NOT NULL, high {real} NOT NULL, system TEXT, code TEXT, unit TEXT, \
             patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_quantity_value ON idx_quantity (type, param, value)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_uri (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             uri TEXT{bin} NOT NULL, patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_uri_value ON idx_uri (type, param, uri)".to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS idx_composite (rid {int} NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, n {int} NOT NULL, \
             c1_system TEXT, c1_code TEXT, c2_system TEXT, c2_code TEXT, c2_value {real}, c2_low {real}, c2_high {real}, \
             patient_key TEXT NOT NULL, PRIMARY KEY (rid, param, n)){clustered}"
        ),
        "CREATE INDEX IF NOT EXISTS idx_composite_value ON idx_composite (type, param, c1_code, c2_code)".to_string(),
        match dialect {
            Dialect::Sqlite => {
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, \
                 id TEXT NOT NULL, version BIGINT NOT NULL, method TEXT NOT NULL, last_updated BIGINT NOT NULL)"
                    .to_string()
            }
            Dialect::Postgres => "CREATE TABLE IF NOT EXISTS outbox (seq BIGSERIAL PRIMARY KEY, type TEXT NOT NULL, \
                 id TEXT NOT NULL, version BIGINT NOT NULL, method TEXT NOT NULL, last_updated BIGINT NOT NULL)"
                .to_string(),
        },
        format!("CREATE TABLE IF NOT EXISTS consumer_cursor (name TEXT PRIMARY KEY, position {int} NOT NULL)"),
        format!(
            "CREATE TABLE IF NOT EXISTS audit_log (seq {int} PRIMARY KEY, recorded {int} NOT NULL, action TEXT NOT NULL, \
             outcome TEXT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL, organization TEXT NOT NULL, purpose TEXT NOT NULL, \
             entity TEXT NOT NULL, patients TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS audit_patient (patient_key TEXT NOT NULL, seq {int} NOT NULL, PRIMARY KEY (patient_key, seq))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS audit_checkpoint (seq {int} PRIMARY KEY, hash TEXT NOT NULL, signed_at {int} NOT NULL, \
             key_id TEXT NOT NULL, signature TEXT NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS security_object (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, \
             updated {int} NOT NULL, PRIMARY KEY (kind, id))"
        ),
        "CREATE TABLE IF NOT EXISTS security_lookup (kind TEXT NOT NULL, lookup TEXT NOT NULL, id TEXT NOT NULL, \
         PRIMARY KEY (kind, lookup))"
            .to_string(),
        "CREATE INDEX IF NOT EXISTS security_lookup_id ON security_lookup (kind, id)".to_string(),
    ];
    statements.push(format!(
        "INSERT INTO schema_meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') ON CONFLICT (key) DO NOTHING"
    ));
    statements
}

/// The index tables, for deleting a resource's rows before writing a new version.
pub const INDEX_TABLES: &[&str] =
    &["idx_string", "idx_token", "idx_reference", "idx_date", "idx_number", "idx_quantity", "idx_uri", "idx_composite"];
