//! The PostgreSQL 15+ backend of the storage contract (production).
//!
//! Same schema and search SQL as the embedded backend (crate `store-sql`). A commit is one
//! database transaction whose statement count does not grow with its size: the current
//! versions are locked with one `SELECT … FOR UPDATE`, and every table is written with one
//! `INSERT … SELECT FROM UNNEST(arrays)`, so a 500-resource Bundle costs about twenty round
//! trips. Durability is PostgreSQL's (`synchronous_commit = on`).

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use store::audit;
use store::{
    AuditCheckpoint, AuditEntry, AuditRecord, Ctx, HistoryQuery, OutboxEvent, Page, ResourceStore, StoreError,
    StoreResult, StoredResource, WriteMethod, WriteOp,
};
use store_sql::rows::{self, Cell};
use store_sql::{Dialect, SqlValue, schema};
use tokio_postgres::NoTls;

pub mod testing {
    //! Throwaway databases for the test suites of every crate (scripts/test.sh starts the server).

    use super::{PgStore, StoreError};

    /// The test server's URL from `HUTONG_TEST_POSTGRES_URL`, or `None` (after printing a skip
    /// line) when it is not set. With `HUTONG_REQUIRE_POSTGRES=1`, as the README test command sets,
    /// a missing server is a failure instead, so PostgreSQL tests can never silently not run there.
    pub fn server_url() -> Option<String> {
        match std::env::var("HUTONG_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var("HUTONG_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "HUTONG_REQUIRE_POSTGRES=1 but HUTONG_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh"
                );
                eprintln!("skipped: HUTONG_TEST_POSTGRES_URL is not set, so the PostgreSQL part did not run");
                None
            }
        }
    }

    /// Creates a new, empty database on the server of `server_url` and returns its URL.
    pub async fn create_database(server_url: &str, prefix: &str) -> Result<String, StoreError> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(server_url, tokio_postgres::NoTls)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to the test server: {e}")))?;
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.map_err(super::backend)?;
        let base = server_url.rsplit_once('/').map_or(server_url, |(b, _)| b);
        Ok(format!("{base}/{name}"))
    }

    /// A store on a fresh database of the test server, or `None` when no server is configured.
    pub async fn fresh_store() -> Option<PgStore> {
        let url = server_url()?;
        let db = create_database(&url, "hutong_test").await.expect("create a test database");
        Some(PgStore::connect(&db).await.expect("open the test database"))
    }
}
use tokio_postgres::types::ToSql;

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("cannot get a PostgreSQL connection: {e}"))
}

impl PgStore {
    /// Connects (a pool of up to 16 connections) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "the database URL is not valid ({e}); expected postgres://user@host:port/database"
            ))
        })?;
        let target = format!(
            "{}:{}/{}",
            config.get_hosts().first().map_or("localhost".to_string(), |h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            }),
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_dbname().unwrap_or("postgres"),
        );
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot create the connection pool: {e}")))?;
        let client = pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {target}: {e}. Check that the server runs, accepts TCP connections \
                 there, and that the user and database exist"
            ))
        })?;
        for statement in schema::ddl(Dialect::Postgres) {
            client.batch_execute(&statement).await.map_err(backend)?;
        }
        let version: String = client
            .query_one("SELECT value FROM schema_meta WHERE key = 'schema_version'", &[])
            .await
            .map_err(backend)?
            .get(0);
        if version != schema::SCHEMA_VERSION.to_string() {
            return Err(StoreError::Unavailable(format!(
                "the database {target} holds schema version {version}, and this Hutong needs {}: import the data \
                 again into a new database",
                schema::SCHEMA_VERSION
            )));
        }
        Ok(PgStore { pool })
    }
}

const RESOURCE_COLUMNS: &str = "type, id, version, last_updated, deleted, method, body, patient_key";

/// History rows of the current version carry no body (it is in `resource`, written once); older
/// versions carry their own.
const HISTORY_COLUMNS: &str = "h.type, h.id, h.version, h.last_updated, h.deleted, h.method, \
     COALESCE(h.body, (SELECT r.body FROM resource r WHERE r.rid = h.rid AND r.version = h.version)), h.patient_key";

fn stored(row: &tokio_postgres::Row, offset: usize) -> StoredResource {
    let method: String = row.get(offset + 5);
    StoredResource {
        resource_type: row.get(offset),
        id: row.get(offset + 1),
        version: row.get(offset + 2),
        last_updated: row.get(offset + 3),
        deleted: row.get::<_, i16>(offset + 4) != 0,
        method: WriteMethod::parse(&method).unwrap_or(WriteMethod::Update),
        body: row.get(offset + 6),
        patient_key: row.get(offset + 7),
    }
}

fn params(values: &[SqlValue]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    values
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync + Send> {
            match v {
                SqlValue::Int(i) => Box::new(*i),
                SqlValue::Real(r) => Box::new(*r),
                SqlValue::Text(t) => Box::new(t.clone()),
            }
        })
        .collect()
}

fn refs(boxed: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    boxed.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// Column arrays of one index table, filled row by row.
#[derive(Default)]
struct Columns {
    rid: Vec<i64>,
    ty: Vec<String>,
    param: Vec<String>,
    n: Vec<i64>,
    texts: Vec<Vec<Option<String>>>,
    ints: Vec<Vec<i64>>,
    reals: Vec<Vec<Option<f64>>>,
    patient_key: Vec<String>,
    /// Per value column: 't' text, 'i' int, 'r' real, and its index in the typed vectors.
    layout: Vec<(char, usize)>,
}

impl Columns {
    fn push(&mut self, rid: i64, ty: &str, n: usize, row: &rows::Row<'_>, patient_key: &str) {
        if self.layout.is_empty() {
            let (mut t, mut i, mut r) = (0, 0, 0);
            for cell in &row.values {
                match cell {
                    Cell::Text(_) => {
                        self.layout.push(('t', t));
                        t += 1;
                    }
                    Cell::Int(_) => {
                        self.layout.push(('i', i));
                        i += 1;
                    }
                    Cell::Real(_) => {
                        self.layout.push(('r', r));
                        r += 1;
                    }
                }
            }
            self.texts = vec![Vec::new(); t];
            self.ints = vec![Vec::new(); i];
            self.reals = vec![Vec::new(); r];
        }
        self.rid.push(rid);
        self.ty.push(ty.to_string());
        self.param.push(row.param.to_string());
        self.n.push(n as i64);
        self.patient_key.push(patient_key.to_string());
        for (cell, (_, slot)) in row.values.iter().zip(self.layout.clone()) {
            match cell {
                Cell::Text(v) => self.texts[slot].push(v.map(str::to_string)),
                Cell::Int(v) => self.ints[slot].push(*v),
                Cell::Real(v) => self.reals[slot].push(*v),
            }
        }
    }

    async fn insert(&self, tx: &tokio_postgres::Transaction<'_>, table: &str) -> StoreResult<()> {
        if self.rid.is_empty() {
            return Ok(());
        }
        let cols = rows::columns(table);
        let mut binds: Vec<&(dyn ToSql + Sync)> = vec![&self.rid, &self.ty, &self.param, &self.n];
        let mut casts =
            vec!["$1::bigint[]".to_string(), "$2::text[]".into(), "$3::text[]".into(), "$4::bigint[]".into()];
        for (kind, slot) in &self.layout {
            let n = binds.len() + 1;
            match kind {
                't' => {
                    binds.push(&self.texts[*slot]);
                    casts.push(format!("${n}::text[]"));
                }
                'i' => {
                    binds.push(&self.ints[*slot]);
                    casts.push(format!("${n}::bigint[]"));
                }
                _ => {
                    binds.push(&self.reals[*slot]);
                    casts.push(format!("${n}::float8[]"));
                }
            }
        }
        binds.push(&self.patient_key);
        casts.push(format!("${}::text[]", binds.len()));
        let sql = format!(
            "INSERT INTO {table} (rid, type, param, n, {}, patient_key) SELECT * FROM UNNEST({})",
            cols.join(", "),
            casts.join(", ")
        );
        tx.execute(&sql, &binds).await.map_err(backend)?;
        Ok(())
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// `(type, id)` of a unique violation's detail, "Key (type, id)=(Basic, b1) already exists."
/// (FHIR types and ids hold neither commas nor parentheses).
fn conflicting_key(detail: &str) -> Option<(&str, &str)> {
    let values = detail.strip_prefix("Key (type, id)=(")?.split_once(')')?.0;
    values.split_once(", ")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Writes the versions, index rows, compartments and outbox events of one commit.
async fn write_ops(tx: &tokio_postgres::Transaction<'_>, ops: &[WriteOp]) -> StoreResult<()> {
    let types: Vec<&str> = ops.iter().map(|o| o.resource_type.as_str()).collect();
    let ids: Vec<&str> = ops.iter().map(|o| o.id.as_str()).collect();
    let current: HashMap<(String, String), (i64, i64)> = tx
        .query(
            "SELECT r.type, r.id, r.rid, r.version FROM resource r JOIN UNNEST($1::text[], $2::text[]) AS k(type, id) \
                 ON r.type = k.type AND r.id = k.id FOR UPDATE OF r",
            &[&types, &ids],
        )
        .await
        .map_err(backend)?
        .into_iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect();
    for op in ops {
        let actual = current.get(&(op.resource_type.clone(), op.id.clone())).map_or(0, |c| c.1);
        if actual != op.version - 1 {
            return Err(StoreError::VersionConflict {
                resource_type: op.resource_type.clone(),
                id: op.id.clone(),
                expected: op.version - 1,
                actual,
            });
        }
    }
    // New resources: one INSERT … RETURNING rid.
    let new_ops: Vec<&WriteOp> =
        ops.iter().filter(|o| !current.contains_key(&(o.resource_type.clone(), o.id.clone()))).collect();
    let mut rids: HashMap<(String, String), i64> = current.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let column =
        |f: &dyn Fn(&WriteOp) -> String, set: &[&WriteOp]| -> Vec<String> { set.iter().map(|o| f(o)).collect() };
    let patient_key = |o: &WriteOp| o.compartments.first().cloned().unwrap_or_default();
    if !new_ops.is_empty() {
        let (t, i) = (column(&|o| o.resource_type.clone(), &new_ops), column(&|o| o.id.clone(), &new_ops));
        let version: Vec<i64> = new_ops.iter().map(|o| o.version).collect();
        let updated: Vec<i64> = new_ops.iter().map(|o| o.last_updated).collect();
        let deleted: Vec<i16> = new_ops.iter().map(|o| i16::from(o.method == WriteMethod::Delete)).collect();
        let method = column(&|o| o.method.code().to_string(), &new_ops);
        let keys = column(&patient_key, &new_ops);
        let bodies: Vec<Option<String>> = new_ops.iter().map(|o| o.body.clone()).collect();
        let inserted = tx
                .query(
                    "INSERT INTO resource (type, id, version, last_updated, deleted, method, patient_key, body) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::smallint[], $6::text[], \
                     $7::text[], $8::text[]) RETURNING type, id, rid",
                    &[&t, &i, &version, &updated, &deleted, &method, &keys, &bodies],
                )
                .await;
        match inserted {
            Ok(rows) => {
                for row in rows {
                    rids.insert((row.get(0), row.get(1)), row.get(2));
                }
            }
            Err(e) if is_unique_violation(&e) => {
                // Another transaction created one of them since the check: the one the
                // violated key names.
                let key = e.as_db_error().and_then(|d| d.detail()).and_then(conflicting_key);
                let op = key
                    .and_then(|(t, i)| new_ops.iter().find(|o| o.resource_type == t && o.id == i))
                    .unwrap_or(&new_ops[0]);
                return Err(StoreError::VersionConflict {
                    resource_type: op.resource_type.clone(),
                    id: op.id.clone(),
                    expected: 0,
                    actual: 1,
                });
            }
            Err(e) => return Err(backend(e)),
        }
    }
    // Existing resources: one UPDATE … FROM UNNEST, then clear their index rows.
    let old_ops: Vec<&WriteOp> =
        ops.iter().filter(|o| current.contains_key(&(o.resource_type.clone(), o.id.clone()))).collect();
    if !old_ops.is_empty() {
        let rid: Vec<i64> = old_ops.iter().map(|o| rids[&(o.resource_type.clone(), o.id.clone())]).collect();
        let version: Vec<i64> = old_ops.iter().map(|o| o.version).collect();
        let updated: Vec<i64> = old_ops.iter().map(|o| o.last_updated).collect();
        let deleted: Vec<i16> = old_ops.iter().map(|o| i16::from(o.method == WriteMethod::Delete)).collect();
        let method = column(&|o| o.method.code().to_string(), &old_ops);
        let keys = column(&patient_key, &old_ops);
        let bodies: Vec<Option<String>> = old_ops.iter().map(|o| o.body.clone()).collect();
        // The current versions' JSON lives only in `resource`; keep it in history first.
        tx.execute(
            "UPDATE resource_history h SET body = r.body FROM resource r \
                 WHERE r.rid = ANY($1) AND h.rid = r.rid AND h.version = r.version",
            &[&rid],
        )
        .await
        .map_err(backend)?;
        tx.execute(
                "UPDATE resource r SET version = u.version, last_updated = u.last_updated, deleted = u.deleted, \
                 method = u.method, patient_key = u.patient_key, body = u.body FROM UNNEST($1::bigint[], $2::bigint[], \
                 $3::bigint[], $4::smallint[], $5::text[], $6::text[], $7::text[]) AS u(rid, version, last_updated, deleted, \
                 method, patient_key, body) WHERE r.rid = u.rid",
                &[&rid, &version, &updated, &deleted, &method, &keys, &bodies],
            )
            .await
            .map_err(backend)?;
        for table in schema::INDEX_TABLES.iter().chain(["compartment"].iter()) {
            tx.execute(&format!("DELETE FROM {table} WHERE rid = ANY($1)"), &[&rid]).await.map_err(backend)?;
        }
    }
    // History, index rows, compartments, outbox.
    let all: Vec<&WriteOp> = ops.iter().collect();
    let rid: Vec<i64> = all.iter().map(|o| rids[&(o.resource_type.clone(), o.id.clone())]).collect();
    let version: Vec<i64> = all.iter().map(|o| o.version).collect();
    let t = column(&|o| o.resource_type.clone(), &all);
    let i = column(&|o| o.id.clone(), &all);
    let updated: Vec<i64> = all.iter().map(|o| o.last_updated).collect();
    let deleted: Vec<i16> = all.iter().map(|o| i16::from(o.method == WriteMethod::Delete)).collect();
    let method = column(&|o| o.method.code().to_string(), &all);
    let keys = column(&patient_key, &all);
    tx.execute(
        "INSERT INTO resource_history (rid, version, type, id, last_updated, deleted, method, patient_key) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::smallint[], \
             $7::text[], $8::text[])",
        &[&rid, &version, &t, &i, &updated, &deleted, &method, &keys],
    )
    .await
    .map_err(backend)?;
    let mut tables: HashMap<&'static str, Columns> = HashMap::new();
    let (mut comp_key, mut comp_rid) = (Vec::new(), Vec::new());
    for (op, rid) in ops.iter().zip(&rid) {
        if op.method == WriteMethod::Delete {
            continue;
        }
        let key = patient_key(op);
        for (n, entry) in op.index.iter().enumerate() {
            if let Some(row) = rows::row(entry) {
                tables.entry(row.table).or_default().push(*rid, &op.resource_type, n, &row, &key);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &op.compartments {
            if seen.insert(p) {
                comp_key.push(p.clone());
                comp_rid.push(*rid);
            }
        }
    }
    for (table, columns) in &tables {
        columns.insert(tx, table).await?;
    }
    if !comp_rid.is_empty() {
        tx.execute(
                "INSERT INTO compartment (patient_key, rid) SELECT * FROM UNNEST($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
                &[&comp_key, &comp_rid],
            )
            .await
            .map_err(backend)?;
    }
    tx.execute(
        "INSERT INTO outbox (type, id, version, method, last_updated) \
             SELECT t, i, v, m, u FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[]) \
             WITH ORDINALITY AS x(t, i, v, m, u, n) ORDER BY n",
        &[&t, &i, &version, &method, &updated],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Appends audit records after the current head. The transaction-scoped advisory lock
/// serialises appenders across connections and processes; it is taken last, just before
/// COMMIT, so it is held only for the commit itself.
async fn append_audit(tx: &tokio_postgres::Transaction<'_>, records: Vec<AuditRecord>) -> StoreResult<()> {
    tx.execute("SELECT pg_advisory_xact_lock(4851127)", &[]).await.map_err(backend)?;
    let (seq, hash) = audit_head(tx).await?;
    let entries = audit::link(seq, &hash, records);
    let mut cols: [Vec<String>; 10] = Default::default();
    let mut seqs = Vec::with_capacity(entries.len());
    let mut recorded = Vec::with_capacity(entries.len());
    let (mut ap_key, mut ap_seq) = (Vec::new(), Vec::new());
    for e in &entries {
        let r = &e.record;
        seqs.push(e.seq);
        recorded.push(r.recorded);
        for (col, v) in cols.iter_mut().zip([
            &r.action,
            &r.outcome,
            &r.actor,
            &r.role,
            &r.organization,
            &r.purpose,
            &r.entity,
            &r.patients.join(" "),
            &r.detail,
            &e.prev_hash,
        ]) {
            col.push(v.clone());
        }
        for p in &r.patients {
            ap_key.push(p.clone());
            ap_seq.push(e.seq);
        }
    }
    let hashes: Vec<&str> = entries.iter().map(|e| e.hash.as_str()).collect();
    tx.execute(
        "INSERT INTO audit_log (seq, recorded, action, outcome, actor, role, organization, purpose, entity, patients, \
         detail, prev_hash, hash) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])",
        &[
            &seqs, &recorded, &cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &cols[6], &cols[7], &cols[8],
            &cols[9], &hashes,
        ],
    )
    .await
    .map_err(backend)?;
    if !ap_key.is_empty() {
        tx.execute(
            "INSERT INTO audit_patient (patient_key, seq) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT DO NOTHING",
            &[&ap_key, &ap_seq],
        )
        .await
        .map_err(backend)?;
    }
    Ok(())
}

async fn audit_head(client: &impl tokio_postgres::GenericClient) -> StoreResult<(i64, String)> {
    Ok(client
        .query_opt("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[])
        .await
        .map_err(backend)?
        .map_or((0, audit::GENESIS_HASH.to_string()), |r| (r.get(0), r.get(1))))
}

const AUDIT_COLUMNS: &str = "seq, recorded, action, outcome, actor, role, organization, purpose, entity, patients, \
     detail, prev_hash, hash";

fn audit_entry(r: &tokio_postgres::Row) -> AuditEntry {
    let patients: String = r.get(9);
    AuditEntry {
        seq: r.get(0),
        record: AuditRecord {
            recorded: r.get(1),
            action: r.get(2),
            outcome: r.get(3),
            actor: r.get(4),
            role: r.get(5),
            organization: r.get(6),
            purpose: r.get(7),
            entity: r.get(8),
            patients: patients.split(' ').filter(|p| !p.is_empty()).map(str::to_string).collect(),
            detail: r.get(10),
        },
        prev_hash: r.get(11),
        hash: r.get(12),
    }
}

#[async_trait]
impl ResourceStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn commit_audited(&self, _ctx: &Ctx, ops: Vec<WriteOp>, audit: Vec<AuditRecord>) -> StoreResult<()> {
        if ops.is_empty() && audit.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(backend)?;
        if !ops.is_empty() {
            write_ops(&tx, &ops).await?;
        }
        if !audit.is_empty() {
            append_audit(&tx, audit).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn current_versions(&self, _ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<Option<(i64, bool)>>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let found: HashMap<(String, String), (i64, bool)> = client
            .query(
                "SELECT r.type, r.id, r.version, r.deleted FROM resource r JOIN UNNEST($1::text[], $2::text[]) AS k(type, id) \
                 ON r.type = k.type AND r.id = k.id",
                &[&types, &ids],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get::<_, i16>(3) != 0)))
            .collect();
        Ok(keys.iter().map(|k| found.get(k).copied()).collect())
    }

    async fn read(&self, _ctx: &Ctx, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client
            .prepare_cached(&format!("SELECT {RESOURCE_COLUMNS} FROM resource WHERE type = $1 AND id = $2"))
            .await
            .map_err(backend)?;
        Ok(client.query_opt(&statement, &[&resource_type, &id]).await.map_err(backend)?.map(|r| stored(&r, 0)))
    }

    async fn read_many(&self, _ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<StoredResource>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await.map_err(pool_error)?;
        let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        Ok(client
            .query(
                "SELECT r.type, r.id, r.version, r.last_updated, r.deleted, r.method, r.body, r.patient_key FROM resource r \
                 JOIN UNNEST($1::text[], $2::text[]) AS k(type, id) ON r.type = k.type AND r.id = k.id WHERE r.deleted = 0",
                &[&types, &ids],
            )
            .await
            .map_err(backend)?
            .iter()
            .map(|r| stored(r, 0))
            .collect())
    }

    async fn vread(
        &self,
        _ctx: &Ctx,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<Option<StoredResource>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        Ok(client
            .query_opt(
                &format!(
                    "SELECT {HISTORY_COLUMNS} FROM resource_history h WHERE rid = (SELECT rid FROM resource WHERE type = $1 \
                     AND id = $2) AND version = $3"
                ),
                &[&resource_type, &id, &version],
            )
            .await
            .map_err(backend)?
            .map(|r| stored(&r, 0)))
    }

    async fn history(&self, _ctx: &Ctx, query: &HistoryQuery) -> StoreResult<Page> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let mut filter = vec!["TRUE".to_string()];
        let mut binds: Vec<SqlValue> = Vec::new();
        match (&query.resource_type, &query.id) {
            (Some(t), Some(i)) => {
                binds.push(SqlValue::Text(t.clone()));
                binds.push(SqlValue::Text(i.clone()));
                filter.push("rid = (SELECT rid FROM resource WHERE type = $1 AND id = $2)".into());
            }
            (Some(t), None) => {
                binds.push(SqlValue::Text(t.clone()));
                filter.push("type = $1".into());
            }
            _ => {}
        }
        if let Some(since) = query.since {
            binds.push(SqlValue::Int(since));
            filter.push(format!("last_updated >= ${}", binds.len()));
        }
        let filter = filter.join(" AND ");
        let boxed = params(&binds);
        let total: i64 = client
            .query_one(&format!("SELECT COUNT(*) FROM resource_history WHERE {filter}"), &refs(&boxed))
            .await
            .map_err(backend)?
            .get(0);
        let n = binds.len();
        binds.push(SqlValue::Int(query.count as i64));
        binds.push(SqlValue::Int(query.offset as i64));
        let boxed = params(&binds);
        let rows = client
            .query(
                &format!(
                    "SELECT {HISTORY_COLUMNS} FROM resource_history h WHERE {filter} \
                     ORDER BY last_updated DESC, rid DESC, version DESC LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ),
                &refs(&boxed),
            )
            .await
            .map_err(backend)?;
        Ok(Page { resources: rows.iter().map(|r| stored(r, 0)).collect(), total: Some(total as u64) })
    }

    async fn search(&self, _ctx: &Ctx, query: &fhir::search::SearchQuery) -> StoreResult<Page> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let built = store_sql::query::build_search(query, Dialect::Postgres, now);
        let client = self.pool.get().await.map_err(pool_error)?;
        let total = match &built.count {
            Some(count) => {
                let boxed = params(&count.binds);
                let statement = client.prepare_cached(&count.text).await.map_err(backend)?;
                Some(client.query_one(&statement, &refs(&boxed)).await.map_err(backend)?.get::<_, i64>(0) as u64)
            }
            None => None,
        };
        let boxed = params(&built.page.binds);
        let statement = client.prepare_cached(&built.page.text).await.map_err(backend)?;
        let rows = client.query(&statement, &refs(&boxed)).await.map_err(backend)?;
        Ok(Page { resources: rows.iter().map(|r| stored(r, 1)).collect(), total })
    }

    async fn patient_compartment(
        &self,
        _ctx: &Ctx,
        patient_id: &str,
        since: Option<i64>,
        types: &[String],
    ) -> StoreResult<Vec<StoredResource>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let since = since.unwrap_or(i64::MIN);
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        let rows = client
            .query(
                "SELECT r.type, r.id, r.version, r.last_updated, r.deleted, r.method, r.body, r.patient_key FROM compartment c \
                 JOIN resource r ON r.rid = c.rid WHERE c.patient_key = $1 AND r.deleted = 0 AND r.last_updated >= $2 \
                 AND (cardinality($3::text[]) = 0 OR r.type = ANY($3)) ORDER BY r.type, r.rid",
                &[&patient_id, &since, &types],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| stored(r, 0)).collect())
    }

    async fn outbox_read(&self, after: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT seq, type, id, version, method, last_updated FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| {
                let method: String = r.get(4);
                OutboxEvent {
                    seq: r.get(0),
                    resource_type: r.get(1),
                    id: r.get(2),
                    version: r.get(3),
                    method: WriteMethod::parse(&method).unwrap_or(WriteMethod::Update),
                    last_updated: r.get(5),
                }
            })
            .collect())
    }

    async fn cursor_get(&self, consumer: &str) -> StoreResult<i64> {
        let client = self.pool.get().await.map_err(pool_error)?;
        Ok(client
            .query_opt("SELECT position FROM consumer_cursor WHERE name = $1", &[&consumer])
            .await
            .map_err(backend)?
            .map_or(0, |r| r.get(0)))
    }

    async fn cursor_set(&self, consumer: &str, position: i64) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO consumer_cursor (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = GREATEST(consumer_cursor.position, EXCLUDED.position)",
                &[&consumer, &position],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn audit_read(&self, after: i64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"),
                &[&after, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(audit_entry).collect())
    }

    async fn audit_for_patient(&self, patient_id: &str, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq IN \
                     (SELECT seq FROM audit_patient WHERE patient_key = $1 ORDER BY seq DESC LIMIT $2) ORDER BY seq DESC"
                ),
                &[&patient_id, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(audit_entry).collect())
    }

    async fn audit_head(&self) -> StoreResult<(i64, String)> {
        let client = self.pool.get().await.map_err(pool_error)?;
        audit_head(&**client).await
    }

    async fn audit_checkpoint_put(&self, cp: &AuditCheckpoint) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO audit_checkpoint (seq, hash, signed_at, key_id, signature) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (seq) DO NOTHING",
                &[&cp.seq, &cp.hash, &cp.signed_at, &cp.key_id, &cp.signature],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn audit_prune(&self, through_seq: i64) -> StoreResult<u64> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(backend)?;
        let (head, _) = audit_head(&*tx).await?;
        let through = through_seq.min(head - 1);
        if through < 1 {
            return Ok(0);
        }
        // Patient index rows by primary key, named by each entry's `patients`, so the cost
        // follows the entries pruned rather than the size of the index (which has no `seq` index).
        tx.execute(
            "DELETE FROM audit_patient p USING (SELECT seq, unnest(string_to_array(patients, ' ')) AS patient_key \
             FROM audit_log WHERE seq <= $1) d WHERE p.patient_key = d.patient_key AND p.seq = d.seq",
            &[&through],
        )
        .await
        .map_err(backend)?;
        let deleted = tx.execute("DELETE FROM audit_log WHERE seq <= $1", &[&through]).await.map_err(backend)?;
        tx.execute("DELETE FROM audit_checkpoint WHERE seq < $1", &[&through]).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(deleted)
    }

    async fn audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query("SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoint ORDER BY seq", &[])
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| AuditCheckpoint {
                seq: r.get(0),
                hash: r.get(1),
                signed_at: r.get(2),
                key_id: r.get(3),
                signature: r.get(4),
            })
            .collect())
    }

    async fn kv_put(&self, kind: &str, id: &str, body: &str, lookups: &[String]) -> StoreResult<()> {
        self.kv_put_audited(kind, id, body, lookups, Vec::new()).await
    }

    async fn kv_put_audited(
        &self,
        kind: &str,
        id: &str,
        body: &str,
        lookups: &[String],
        audit: Vec<AuditRecord>,
    ) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock(4851128)", &[]).await.map_err(backend)?;
        let taken = tx
            .query(
                "SELECT lookup FROM security_lookup WHERE kind = $1 AND lookup = ANY($2) AND id <> $3",
                &[&kind, &lookups, &id],
            )
            .await
            .map_err(backend)?;
        if let Some(row) = taken.first() {
            return Err(StoreError::Duplicate { kind: kind.to_string(), lookup: row.get(0) });
        }
        tx.execute("DELETE FROM security_lookup WHERE kind = $1 AND id = $2", &[&kind, &id]).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO security_lookup (kind, lookup, id) SELECT $1, l, $3 FROM UNNEST($2::text[]) AS l",
            &[&kind, &lookups, &id],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO security_object (kind, id, body, updated) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, id) DO UPDATE SET body = EXCLUDED.body, updated = EXCLUDED.updated",
            &[&kind, &id, &body, &now_ms()],
        )
        .await
        .map_err(backend)?;
        if !audit.is_empty() {
            append_audit(&tx, audit).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn kv_get(&self, kind: &str, id: &str) -> StoreResult<Option<String>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        Ok(client
            .query_opt("SELECT body FROM security_object WHERE kind = $1 AND id = $2", &[&kind, &id])
            .await
            .map_err(backend)?
            .map(|r| r.get(0)))
    }

    async fn kv_find(&self, kind: &str, lookup: &str) -> StoreResult<Option<(String, String)>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        Ok(client
            .query_opt(
                "SELECT o.id, o.body FROM security_lookup l JOIN security_object o ON o.kind = l.kind AND o.id = l.id \
                 WHERE l.kind = $1 AND l.lookup = $2",
                &[&kind, &lookup],
            )
            .await
            .map_err(backend)?
            .map(|r| (r.get(0), r.get(1))))
    }

    async fn kv_delete(&self, kind: &str, id: &str) -> StoreResult<bool> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("DELETE FROM security_lookup WHERE kind = $1 AND id = $2", &[&kind, &id]).await.map_err(backend)?;
        let n = tx
            .execute("DELETE FROM security_object WHERE kind = $1 AND id = $2", &[&kind, &id])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(n > 0)
    }

    async fn kv_list(&self, kind: &str, after: &str, limit: usize) -> StoreResult<Vec<(String, String)>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT id, body FROM security_object WHERE kind = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&kind, &after, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_unique_violation_names_the_resource() {
        assert_eq!(super::conflicting_key("Key (type, id)=(Basic, b-1.x) already exists."), Some(("Basic", "b-1.x")));
        assert_eq!(super::conflicting_key("Key (kind, lookup)=(user, a) already exists."), None);
    }
}
