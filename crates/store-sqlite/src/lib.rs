//! The embedded SQLite backend of the storage contract, the zero-configuration default
//! (`./hutong-data/hutong.db`).
//!
//! Durability: WAL journal with `synchronous=NORMAL`. In WAL mode a committed transaction is in
//! the WAL file before `COMMIT` returns, so it survives the process being killed (`kill -9`);
//! only an operating-system crash or power loss can lose the most recent commits (use
//! PostgreSQL, or set `HUTONG_SQLITE_SYNCHRONOUS=FULL`, where that matters).
//!
//! Concurrency: one writer connection behind a mutex (SQLite has a single writer anyway) and a
//! pool of reader connections, which WAL lets run alongside the writer. Commits go to one
//! committer thread through a FIFO queue; it commits everything queued while it was busy together
//! in one transaction (group commit: a commit that fails is left out alone; each is answered after
//! the transaction holding it has committed). rusqlite is blocking, so reads and the other
//! writes run on tokio's blocking pool. Each connection keeps an 8 MiB page cache and no
//! memory map, so the server's resident memory stays bounded whatever the database size; the
//! operating system's page cache does the rest. A checkpointer thread copies the WAL into the
//! database file in the background (the writer does only when the WAL has grown large), so no
//! commit waits for a checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use store::audit;
use store::{
    AuditCheckpoint, AuditEntry, AuditRecord, Ctx, HistoryQuery, OutboxEvent, Page, ResourceStore, StoreError,
    StoreResult, StoredResource, WriteMethod, WriteOp,
};
use store_sql::rows::{self, Cell};
use store_sql::{Dialect, SqlValue, schema};

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Shared with the committer thread, which ends when `Inner` (and so `commits`) is dropped.
    writer: Arc<Mutex<Connection>>,
    /// The committer thread's queue (group commit, see [`committer`]).
    commits: std::sync::mpsc::Sender<PendingCommit>,
    readers: Mutex<Vec<Connection>>,
    /// Bounds the reads running at once (and so the connections and their page caches): on a
    /// small machine more parallel reads than a few per core only add memory and cache misses.
    reading: Arc<tokio::sync::Semaphore>,
}

/// Reader connections: `HUTONG_SQLITE_READERS`, else four per core (at least 4, at most 32).
fn reader_limit() -> usize {
    std::env::var("HUTONG_SQLITE_READERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) * 4)
        .clamp(1, 32)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open the SQLite database {}: {e}", path.display())))?;
    let synchronous = match std::env::var("HUTONG_SQLITE_SYNCHRONOUS").as_deref() {
        Ok("FULL") | Ok("full") => "FULL",
        _ => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA busy_timeout=10000; \
         PRAGMA cache_size=-8192; PRAGMA temp_store=MEMORY; PRAGMA mmap_size=0; \
         PRAGMA wal_autocheckpoint=10000;"
    ))
    .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/hutong.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create the data folder {}: {e}", dir.display())))?;
        let path = dir.join("hutong.db");
        let writer = open_connection(&path)?;
        // The checkpointer thread copies the WAL into the database file (see [`checkpointer`]);
        // the writer checkpoints itself only if the WAL has grown this far, as a backstop that
        // bounds the WAL should the checkpointer never find a moment between commits.
        writer.execute_batch(&format!("PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES};")).map_err(backend)?;
        for statement in schema::ddl(Dialect::Sqlite) {
            writer.execute_batch(&statement).map_err(backend)?;
        }
        let version: String = writer
            .query_row("SELECT value FROM schema_meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .map_err(backend)?;
        if version != schema::SCHEMA_VERSION.to_string() {
            return Err(StoreError::Unavailable(format!(
                "the data folder {} holds schema version {version}, and this Hutong needs {}: import the data again \
                 into a new data folder",
                dir.display(),
                schema::SCHEMA_VERSION
            )));
        }
        let writer = Arc::new(Mutex::new(writer));
        let (commits, queue) = std::sync::mpsc::channel();
        let (ticks, ticked) = std::sync::mpsc::sync_channel(1);
        let checkpoint_path = path.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(&checkpoint_path, &ticked))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the SQLite checkpointer thread: {e}")))?;
        let committer_writer = writer.clone();
        std::thread::Builder::new()
            .name("sqlite-commit".into())
            .spawn(move || committer(&committer_writer, &queue, &ticks))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the SQLite committer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer,
                commits,
                readers: Mutex::new(Vec::new()),
                reading: Arc::new(tokio::sync::Semaphore::new(reader_limit())),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn read_with<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        // The permit moves into the task, so a cancelled request still counts until its
        // read has finished and its connection is back in the pool.
        let permit = self
            .inner
            .reading
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite store is closing".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match inner.readers.lock().map_err(|_| poisoned())?.pop() {
                Some(c) => c,
                None => open_connection(&inner.path)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task failed: {e}")))?
    }

    async fn write_with<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| poisoned())?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task failed: {e}")))?
    }
}

impl SqliteStore {
    /// Hands a commit to the committer thread and waits for its outcome. A commit once queued
    /// is committed (or refused) even if the caller stops waiting.
    async fn enqueue(&self, ops: Vec<WriteOp>, object: Option<KvPut>, audit: Vec<AuditRecord>) -> StoreResult<()> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.inner
            .commits
            .send(PendingCommit { ops, object, audit, done })
            .map_err(|_| StoreError::Unavailable("the SQLite committer thread has stopped".into()))?;
        outcome.await.map_err(|_| StoreError::Backend("the commit was dropped by the writer".into()))?
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend("sqlite connection lock poisoned by an earlier panic".into())
}

const RESOURCE_COLUMNS: &str = "type, id, version, last_updated, deleted, method, body, patient_key";

/// History rows of the current version carry no body (it is in `resource`, written once); older
/// versions carry their own.
const HISTORY_COLUMNS: &str = "h.type, h.id, h.version, h.last_updated, h.deleted, h.method, \
     COALESCE(h.body, (SELECT r.body FROM resource r WHERE r.rid = h.rid AND r.version = h.version)), h.patient_key";

fn stored_from_row(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<StoredResource> {
    let method: String = row.get(offset + 5)?;
    Ok(StoredResource {
        resource_type: row.get(offset)?,
        id: row.get(offset + 1)?,
        version: row.get(offset + 2)?,
        last_updated: row.get(offset + 3)?,
        deleted: row.get::<_, i64>(offset + 4)? != 0,
        method: WriteMethod::parse(&method).unwrap_or(WriteMethod::Update),
        body: row.get(offset + 6)?,
        patient_key: row.get(offset + 7)?,
    })
}

fn to_sql(values: &[SqlValue]) -> Vec<rusqlite::types::Value> {
    values
        .iter()
        .map(|v| match v {
            SqlValue::Int(i) => rusqlite::types::Value::Integer(*i),
            SqlValue::Real(r) => rusqlite::types::Value::Real(*r),
            SqlValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
        })
        .collect()
}

/// A commit waiting for the committer thread, and where its outcome goes.
struct PendingCommit {
    ops: Vec<WriteOp>,
    /// A security object stored in the same transaction (`kv_put_audited`).
    object: Option<KvPut>,
    audit: Vec<AuditRecord>,
    done: tokio::sync::oneshot::Sender<StoreResult<()>>,
}

/// A security object and its unique lookups, as [`ResourceStore::kv_put`] stores them.
struct KvPut {
    kind: String,
    id: String,
    body: String,
    lookups: Vec<String>,
}

/// Most commits in one group: bounds how long the first of them waits for the last.
const MAX_GROUP: usize = 512;

/// The committer thread: takes the first queued commit and everything queued behind it (up to
/// [`MAX_GROUP`]), commits them as one group, and goes on until the store is dropped. One thread
/// owns the queue, so commits wait in one FIFO line rather than as blocked threads on the
/// writer's mutex, and there is one thread hand-off per commit.
fn committer(
    writer: &Mutex<Connection>,
    queue: &std::sync::mpsc::Receiver<PendingCommit>,
    checkpoint: &std::sync::mpsc::SyncSender<()>,
) {
    while let Ok(first) = queue.recv() {
        let mut group = Vec::with_capacity(16);
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let Ok(mut conn) = writer.lock() else {
            for p in group {
                let _ = p.done.send(Err(poisoned()));
            }
            continue;
        };
        // A panic drops the group's senders (its callers get an error) and rolls back the open
        // transaction (as it unwinds, or here); the thread lives on for the next group.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_group(&mut conn, group)));
        if outcome.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        drop(conn);
        // Full: a checkpoint is already due.
        let _ = checkpoint.try_send(());
    }
}

/// WAL pages after which the writer checkpoints inline (the backstop; 80 MB of 4 KiB pages).
const BACKSTOP_CHECKPOINT_PAGES: u32 = 20_000;

/// The checkpointer thread: after each group commit (or, when a pass takes longer than a commit,
/// as soon as the pass ends), copies the WAL's committed pages into the database file with a
/// `PASSIVE` checkpoint on its own connection, which neither waits for nor blocks the writer and
/// the readers. With SQLite's automatic checkpoint, the commit that crossed the threshold copied
/// thousands of pages before it (and every commit queued behind it) was answered: the longest
/// waits of a busy server. Ends when the committer does.
///
/// Under a steady stream of commits a background pass never catches up with the last frame, so
/// the WAL only starts over after the writer's backstop checkpoint, which copies what the passes
/// have not and then syncs the database file. That sync used to flush every page the passes had
/// copied since the last complete checkpoint (20–40 ms with all commits waiting, every half
/// second under the MLLP benchmark: its slowest ACKs). So each pass that leaves frames behind
/// syncs the database file itself, and passes follow the commits without a pause, leaving the
/// backstop little to copy and little to flush (under `hutong bench hl7`, a 50 ms pause between
/// passes gave an ACK p99 of 95–100 ms, 20 ms 76–78 ms, 5 ms 48–72 ms, none 40–46 ms).
fn checkpointer(path: &Path, ticks: &std::sync::mpsc::Receiver<()>) {
    let conn = match open_connection(path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "no background checkpoints: the writer checkpoints when the WAL is large");
            return;
        }
    };
    // A handle of our own on the database file, for `fdatasync` (SQLite does not lend its own).
    let database = std::fs::File::open(path)
        .map_err(|e| tracing::warn!(error = %e, "background checkpoints will not sync the database file"))
        .ok();
    while ticks.recv().is_ok() {
        // (busy, frames in the WAL, frames copied into the database file)
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))) {
            // A complete pass has synced the database file already.
            Ok((frames, copied)) if copied > 0 && copied < frames => {
                if let Some(Err(e)) = database.as_ref().map(std::fs::File::sync_data) {
                    tracing::warn!(error = %e, "could not sync the database file after a background checkpoint");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
        }
    }
}

/// How a commit's rows failed: `Clean` when nothing of it was written yet (its version checks
/// and unique lookups are checked before any row is), `Dirty` when some rows were.
enum Failure {
    Clean(StoreError),
    Dirty(StoreError),
}

impl Failure {
    fn error(self) -> StoreError {
        match self {
            Failure::Clean(e) | Failure::Dirty(e) => e,
        }
    }
}

/// Group commit: the commits queued while the writer was busy go into one database transaction,
/// so that one transaction's cost (its WAL frames, the pages every small commit dirties again)
/// is paid once. A commit that fails its checks (a version conflict, a lookup held by another
/// object) wrote nothing and is simply left out; the others still commit. Should a commit fail
/// after writing rows (an I/O or constraint error, not expected), the transaction is rolled back
/// and the group is redone with a savepoint per commit, so it is rolled back alone. Each commit is
/// answered only after the transaction that holds it has committed, so the durability of an
/// answered commit is unchanged. Write transactions begin `IMMEDIATE`: they take the write lock
/// before their first read, so another process writing the same file (an admin command while
/// `serve` runs) makes them wait (`busy_timeout`) instead of failing with "database is locked"
/// when its commit lands between their checks and their writes.
fn commit_group(conn: &mut Connection, group: Vec<PendingCommit>) {
    if group.len() == 1 {
        let PendingCommit { ops, object, audit, done } = group.into_iter().next().expect("one");
        let _ = done.send(commit_ops(conn, &ops, object.as_ref(), &audit));
        return;
    }
    let outcomes = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => {
            let mut outcomes = Vec::with_capacity(group.len());
            let mut dirty = false;
            for p in &group {
                match apply_ops(&tx, &p.ops, p.object.as_ref(), &p.audit) {
                    Ok(()) => outcomes.push(Ok(())),
                    Err(Failure::Clean(e)) => outcomes.push(Err(e)),
                    Err(Failure::Dirty(e)) => {
                        // A create that conflicts (see [`Current::Absent`]) is expected; anything
                        // else is not.
                        if matches!(e, StoreError::VersionConflict { .. }) {
                            tracing::debug!(error = %e, "a grouped create conflicted: redoing the group with savepoints");
                        } else {
                            tracing::warn!(error = %e, "a grouped commit failed after writing rows: redoing the group with savepoints");
                        }
                        dirty = true;
                        break;
                    }
                }
            }
            if dirty {
                None // the transaction is rolled back as it is dropped
            } else {
                Some(match tx.commit() {
                    Ok(()) => outcomes,
                    Err(e) => group.iter().map(|_| Err(StoreError::Backend(format!("sqlite: {e}")))).collect(),
                })
            }
        }
        Err(e) => Some(group.iter().map(|_| Err(StoreError::Backend(format!("sqlite: {e}")))).collect()),
    };
    let Some(outcomes) = outcomes else { return commit_group_savepoints(conn, group) };
    for (p, outcome) in group.into_iter().zip(outcomes) {
        let _ = p.done.send(outcome);
    }
}

/// The slow path of [`commit_group`]: each commit in its own savepoint.
fn commit_group_savepoints(conn: &mut Connection, group: Vec<PendingCommit>) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let message = format!("sqlite: {e}");
            for p in group {
                let _ = p.done.send(Err(StoreError::Backend(message.clone())));
            }
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(group.len());
    for PendingCommit { ops, object, audit, done } in group {
        let outcome = tx.execute_batch("SAVEPOINT one_commit").map_err(backend).and_then(|()| {
            let applied = apply_ops(&tx, &ops, object.as_ref(), &audit).map_err(Failure::error);
            let end = if applied.is_ok() { "RELEASE one_commit" } else { "ROLLBACK TO one_commit; RELEASE one_commit" };
            tx.execute_batch(end).map_err(backend)?;
            applied
        });
        outcomes.push((outcome, done));
    }
    let committed = tx.commit().map_err(|e| format!("sqlite: {e}"));
    for (outcome, done) in outcomes {
        let outcome = match &committed {
            Ok(()) => outcome,
            Err(message) => Err(StoreError::Backend(message.clone())),
        };
        let _ = done.send(outcome);
    }
}

fn commit_ops(
    conn: &mut Connection,
    ops: &[WriteOp],
    object: Option<&KvPut>,
    audit: &[AuditRecord],
) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
    apply_ops(&tx, ops, object, audit).map_err(Failure::error)?;
    tx.commit().map_err(backend)
}

/// The current `(rid, version)` of a resource.
fn current_row(tx: &rusqlite::Transaction<'_>, resource_type: &str, id: &str) -> StoreResult<Option<(i64, i64)>> {
    tx.prepare_cached("SELECT rid, version FROM resource WHERE type = ?1 AND id = ?2")
        .map_err(backend)?
        .query_row(params![resource_type, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(backend)
}

/// What the checks found of an op's resource before its commit wrote anything.
#[derive(Clone, Copy)]
enum Current {
    /// A create (version 1): no row was looked up; the `UNIQUE (type, id)` of `resource` turns
    /// an insert over an existing row into a version conflict.
    Absent,
    /// The row `(rid, version)` the op replaces.
    Row(i64, i64),
    /// An earlier op of the same commit writes this resource: looked up when written.
    Earlier,
}

/// The checks of one commit, before any of its rows is written: each op replaces the version
/// it names (an op may follow an earlier op of the same commit on the same resource), and the
/// security object's lookups are not held by another object of its kind. A create is checked by
/// the insert itself (see [`Current::Absent`]), so a conflicting create fails after rows were
/// written; [`commit_group`] then redoes its group with a savepoint per commit.
fn check_ops(tx: &rusqlite::Transaction<'_>, ops: &[WriteOp], object: Option<&KvPut>) -> StoreResult<Vec<Current>> {
    let mut written: HashMap<(&str, &str), i64> = HashMap::new();
    let mut currents = Vec::with_capacity(ops.len());
    for op in ops {
        let (actual, current) = match written.get(&(op.resource_type.as_str(), op.id.as_str())) {
            Some(version) => (*version, Current::Earlier),
            None if op.version == 1 => (0, Current::Absent),
            None => match current_row(tx, &op.resource_type, &op.id)? {
                Some((rid, version)) => (version, Current::Row(rid, version)),
                None => (0, Current::Absent),
            },
        };
        if actual != op.version - 1 {
            return Err(StoreError::VersionConflict {
                resource_type: op.resource_type.clone(),
                id: op.id.clone(),
                expected: op.version - 1,
                actual,
            });
        }
        written.insert((&op.resource_type, &op.id), op.version);
        currents.push(current);
    }
    if let Some(object) = object {
        for lookup in &object.lookups {
            let holder: Option<String> = tx
                .prepare_cached("SELECT id FROM security_lookup WHERE kind = ?1 AND lookup = ?2")
                .map_err(backend)?
                .query_row(params![object.kind, lookup], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if holder.is_some_and(|h| h != object.id) {
                return Err(StoreError::Duplicate { kind: object.kind.clone(), lookup: lookup.clone() });
            }
        }
    }
    Ok(currents)
}

/// The rows of one commit, inside the caller's transaction: checked first ([`check_ops`]), then
/// written.
fn apply_ops(
    tx: &rusqlite::Transaction<'_>,
    ops: &[WriteOp],
    object: Option<&KvPut>,
    audit: &[AuditRecord],
) -> Result<(), Failure> {
    let currents = check_ops(tx, ops, object).map_err(Failure::Clean)?;
    write_ops(tx, ops, &currents).map_err(Failure::Dirty)?;
    if let Some(object) = object {
        put_object(tx, object).map_err(Failure::Dirty)?;
    }
    if !audit.is_empty() {
        append_audit(tx, audit.to_vec()).map_err(Failure::Dirty)?;
    }
    Ok(())
}

/// Stores a security object and replaces its lookups (checked by [`check_ops`] or the caller).
fn put_object(tx: &rusqlite::Transaction<'_>, object: &KvPut) -> StoreResult<()> {
    let KvPut { kind, id, body, lookups } = object;
    tx.prepare_cached("DELETE FROM security_lookup WHERE kind = ?1 AND id = ?2")
        .map_err(backend)?
        .execute(params![kind, id])
        .map_err(backend)?;
    for lookup in lookups {
        tx.prepare_cached("INSERT INTO security_lookup (kind, lookup, id) VALUES (?1, ?2, ?3)")
            .map_err(backend)?
            .execute(params![kind, lookup, id])
            .map_err(backend)?;
    }
    tx.prepare_cached(
        "INSERT INTO security_object (kind, id, body, updated) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body, updated = excluded.updated",
    )
    .map_err(backend)?
    .execute(params![kind, id, body, now_ms()])
    .map_err(backend)?;
    Ok(())
}

/// The statements [`write_ops`] runs for every op, prepared once per commit rather than looked
/// up in the connection's statement cache for every row.
struct RowStatements<'c> {
    insert: rusqlite::CachedStatement<'c>,
    history: rusqlite::CachedStatement<'c>,
    compartment: rusqlite::CachedStatement<'c>,
    outbox: rusqlite::CachedStatement<'c>,
    /// One per [`schema::INDEX_TABLES`] entry, prepared when first used.
    index: Vec<Option<rusqlite::CachedStatement<'c>>>,
}

impl<'c> RowStatements<'c> {
    fn new(tx: &'c rusqlite::Transaction<'_>) -> StoreResult<Self> {
        Ok(RowStatements {
            insert: tx
                .prepare_cached(
                    "INSERT INTO resource (type, id, version, last_updated, deleted, method, patient_key, body) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(backend)?,
            history: tx
                .prepare_cached(
                    "INSERT INTO resource_history (rid, version, type, id, last_updated, deleted, method, patient_key, \
                     body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
                )
                .map_err(backend)?,
            compartment: tx
                .prepare_cached("INSERT OR IGNORE INTO compartment (patient_key, rid) VALUES (?1, ?2)")
                .map_err(backend)?,
            outbox: tx
                .prepare_cached(
                    "INSERT INTO outbox (type, id, version, method, last_updated) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(backend)?,
            index: schema::INDEX_TABLES.iter().map(|_| None).collect(),
        })
    }

    /// Writes one index row, binding its values in place (no copies).
    fn index_row(
        &mut self,
        tx: &'c rusqlite::Transaction<'_>,
        row: &rows::Row<'_>,
        rid: i64,
        resource_type: &str,
        n: usize,
        patient_key: &str,
    ) -> StoreResult<()> {
        let slot = schema::INDEX_TABLES.iter().position(|t| *t == row.table).expect("an index table");
        let statement = match &mut self.index[slot] {
            Some(statement) => statement,
            empty => empty.insert(tx.prepare_cached(rows::sqlite_insert_sql(row.table)).map_err(backend)?),
        };
        statement.raw_bind_parameter(1, rid).map_err(backend)?;
        statement.raw_bind_parameter(2, resource_type).map_err(backend)?;
        statement.raw_bind_parameter(3, row.param).map_err(backend)?;
        statement.raw_bind_parameter(4, n as i64).map_err(backend)?;
        for (i, cell) in row.values.iter().enumerate() {
            match cell {
                Cell::Text(t) => statement.raw_bind_parameter(5 + i, t),
                Cell::Int(v) => statement.raw_bind_parameter(5 + i, v),
                Cell::Real(r) => statement.raw_bind_parameter(5 + i, r),
            }
            .map_err(backend)?;
        }
        statement.raw_bind_parameter(5 + row.values.len(), patient_key).map_err(backend)?;
        statement.raw_execute().map_err(backend)?;
        Ok(())
    }
}

/// The rows of checked ops (`currents` as [`check_ops`] found them).
fn write_ops(tx: &rusqlite::Transaction<'_>, ops: &[WriteOp], currents: &[Current]) -> StoreResult<()> {
    let mut statements = RowStatements::new(tx)?;
    for (op, current) in ops.iter().zip(currents) {
        let current = match current {
            Current::Absent => None,
            Current::Row(rid, version) => Some((*rid, *version)),
            Current::Earlier => current_row(tx, &op.resource_type, &op.id)?,
        };
        let deleted = i64::from(op.method == WriteMethod::Delete);
        let patient_key = op.compartments.first().map(String::as_str).unwrap_or("");
        let rid = match current {
            Some((rid, version)) => {
                // The current version's JSON lives only in `resource`; keep it in history
                // before it is replaced.
                tx.prepare_cached(
                    "UPDATE resource_history SET body = (SELECT body FROM resource WHERE rid = ?1) \
                     WHERE rid = ?1 AND version = ?2",
                )
                .map_err(backend)?
                .execute(params![rid, version])
                .map_err(backend)?;
                tx.prepare_cached(
                    "UPDATE resource SET version = ?1, last_updated = ?2, deleted = ?3, method = ?4, patient_key = ?5, \
                     body = ?6 WHERE rid = ?7",
                )
                .map_err(backend)?
                .execute(params![op.version, op.last_updated, deleted, op.method.code(), patient_key, op.body, rid])
                .map_err(backend)?;
                for table in schema::INDEX_TABLES {
                    tx.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))
                        .map_err(backend)?
                        .execute([rid])
                        .map_err(backend)?;
                }
                tx.prepare_cached("DELETE FROM compartment WHERE rid = ?1")
                    .map_err(backend)?
                    .execute([rid])
                    .map_err(backend)?;
                rid
            }
            None => {
                let inserted = statements.insert.execute(params![
                    op.resource_type,
                    op.id,
                    op.version,
                    op.last_updated,
                    deleted,
                    op.method.code(),
                    patient_key,
                    op.body
                ]);
                match inserted {
                    Ok(_) => tx.last_insert_rowid(),
                    // A create over a resource that exists (see [`Current::Absent`]).
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
                    {
                        let actual = current_row(tx, &op.resource_type, &op.id)?.map_or(0, |c| c.1);
                        return Err(StoreError::VersionConflict {
                            resource_type: op.resource_type.clone(),
                            id: op.id.clone(),
                            expected: op.version - 1,
                            actual,
                        });
                    }
                    Err(e) => return Err(backend(e)),
                }
            }
        };
        statements
            .history
            .execute(params![
                rid,
                op.version,
                op.resource_type,
                op.id,
                op.last_updated,
                deleted,
                op.method.code(),
                patient_key
            ])
            .map_err(backend)?;
        if deleted == 0 {
            for (n, entry) in op.index.iter().enumerate() {
                let Some(row) = rows::row(entry) else { continue };
                statements.index_row(tx, &row, rid, &op.resource_type, n, patient_key)?;
            }
            for patient in &op.compartments {
                statements.compartment.execute(params![patient, rid]).map_err(backend)?;
            }
        }
        statements
            .outbox
            .execute(params![op.resource_type, op.id, op.version, op.method.code(), op.last_updated])
            .map_err(backend)?;
    }
    Ok(())
}

/// Appends audit records after the current head (the writer connection serialises appends).
fn append_audit(tx: &rusqlite::Transaction<'_>, records: Vec<AuditRecord>) -> StoreResult<()> {
    let (seq, hash) = audit_head(tx)?;
    for entry in audit::link(seq, &hash, records) {
        let r = &entry.record;
        tx.prepare_cached(
            "INSERT INTO audit_log (seq, recorded, action, outcome, actor, role, organization, purpose, entity, patients, \
             detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .map_err(backend)?
        .execute(params![
            entry.seq,
            r.recorded,
            r.action,
            r.outcome,
            r.actor,
            r.role,
            r.organization,
            r.purpose,
            r.entity,
            r.patients.join(" "),
            r.detail,
            entry.prev_hash,
            entry.hash
        ])
        .map_err(backend)?;
        for patient in &r.patients {
            tx.prepare_cached("INSERT OR IGNORE INTO audit_patient (patient_key, seq) VALUES (?1, ?2)")
                .map_err(backend)?
                .execute(params![patient, entry.seq])
                .map_err(backend)?;
        }
    }
    Ok(())
}

fn audit_head(conn: &Connection) -> StoreResult<(i64, String)> {
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .map_err(backend)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(backend)?
        .unwrap_or((0, audit::GENESIS_HASH.to_string())))
}

/// [`ResourceStore::audit_prune`]. The write lock is taken up front (`IMMEDIATE`), so a
/// server writing in another process cannot invalidate the head read here.
fn prune_audit(conn: &mut Connection, through_seq: i64) -> StoreResult<u64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
    let (head, _) = audit_head(&tx)?;
    let through = through_seq.min(head - 1);
    if through < 1 {
        return Ok(0);
    }
    // Patient index rows go by primary key, named by each entry's `patients`, so the cost
    // follows the entries pruned rather than the size of the index (which has no `seq` index).
    {
        let mut entries =
            tx.prepare("SELECT seq, patients FROM audit_log WHERE seq <= ?1 AND patients <> ''").map_err(backend)?;
        let mut delete =
            tx.prepare("DELETE FROM audit_patient WHERE patient_key = ?1 AND seq = ?2").map_err(backend)?;
        let mut rows = entries.query(params![through]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let seq: i64 = row.get(0).map_err(backend)?;
            let patients: String = row.get(1).map_err(backend)?;
            for patient in patients.split(' ').filter(|p| !p.is_empty()) {
                delete.execute(params![patient, seq]).map_err(backend)?;
            }
        }
    }
    let deleted = tx.execute("DELETE FROM audit_log WHERE seq <= ?1", params![through]).map_err(backend)?;
    tx.execute("DELETE FROM audit_checkpoint WHERE seq < ?1", params![through]).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(deleted as u64)
}

const AUDIT_COLUMNS: &str = "seq, recorded, action, outcome, actor, role, organization, purpose, entity, patients, \
     detail, prev_hash, hash";

fn audit_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let patients: String = row.get(9)?;
    Ok(AuditEntry {
        seq: row.get(0)?,
        record: AuditRecord {
            recorded: row.get(1)?,
            action: row.get(2)?,
            outcome: row.get(3)?,
            actor: row.get(4)?,
            role: row.get(5)?,
            organization: row.get(6)?,
            purpose: row.get(7)?,
            entity: row.get(8)?,
            patients: patients.split(' ').filter(|p| !p.is_empty()).map(str::to_string).collect(),
            detail: row.get(10)?,
        },
        prev_hash: row.get(11)?,
        hash: row.get(12)?,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl ResourceStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn commit_audited(&self, _ctx: &Ctx, ops: Vec<WriteOp>, audit: Vec<AuditRecord>) -> StoreResult<()> {
        if ops.is_empty() && audit.is_empty() {
            return Ok(());
        }
        self.enqueue(ops, None, audit).await
    }

    async fn audit_read(&self, after: i64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        self.read_with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
                .map_err(backend)?;
            let rows = stmt.query_map(params![after, limit as i64], audit_from_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn audit_for_patient(&self, patient_id: &str, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let patient = patient_id.to_string();
        self.read_with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq IN \
                     (SELECT seq FROM audit_patient WHERE patient_key = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq DESC"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map(params![patient, limit as i64], audit_from_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn audit_head(&self) -> StoreResult<(i64, String)> {
        self.read_with(audit_head).await
    }

    async fn audit_checkpoint_put(&self, cp: &AuditCheckpoint) -> StoreResult<()> {
        let cp = cp.clone();
        self.write_with(move |conn| {
            conn.prepare_cached(
                "INSERT INTO audit_checkpoint (seq, hash, signed_at, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (seq) DO NOTHING",
            )
            .map_err(backend)?
            .execute(params![cp.seq, cp.hash, cp.signed_at, cp.key_id, cp.signature])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn audit_prune(&self, through_seq: i64) -> StoreResult<u64> {
        self.write_with(move |conn| prune_audit(conn, through_seq)).await
    }

    async fn audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>> {
        self.read_with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoint ORDER BY seq")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(AuditCheckpoint {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                        signed_at: r.get(2)?,
                        key_id: r.get(3)?,
                        signature: r.get(4)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
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
        let object =
            KvPut { kind: kind.to_string(), id: id.to_string(), body: body.to_string(), lookups: lookups.to_vec() };
        self.enqueue(Vec::new(), Some(object), audit).await
    }

    async fn kv_get(&self, kind: &str, id: &str) -> StoreResult<Option<String>> {
        let (kind, id) = (kind.to_string(), id.to_string());
        self.read_with(move |conn| {
            conn.prepare_cached("SELECT body FROM security_object WHERE kind = ?1 AND id = ?2")
                .map_err(backend)?
                .query_row(params![kind, id], |r| r.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn kv_find(&self, kind: &str, lookup: &str) -> StoreResult<Option<(String, String)>> {
        let (kind, lookup) = (kind.to_string(), lookup.to_string());
        self.read_with(move |conn| {
            conn.prepare_cached(
                "SELECT o.id, o.body FROM security_lookup l JOIN security_object o ON o.kind = l.kind AND o.id = l.id \
                 WHERE l.kind = ?1 AND l.lookup = ?2",
            )
            .map_err(backend)?
            .query_row(params![kind, lookup], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn kv_delete(&self, kind: &str, id: &str) -> StoreResult<bool> {
        let (kind, id) = (kind.to_string(), id.to_string());
        self.write_with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
            tx.execute("DELETE FROM security_lookup WHERE kind = ?1 AND id = ?2", params![kind, id])
                .map_err(backend)?;
            let n = tx
                .execute("DELETE FROM security_object WHERE kind = ?1 AND id = ?2", params![kind, id])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn kv_list(&self, kind: &str, after: &str, limit: usize) -> StoreResult<Vec<(String, String)>> {
        let (kind, after) = (kind.to_string(), after.to_string());
        self.read_with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id, body FROM security_object WHERE kind = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
                .map_err(backend)?;
            let rows =
                stmt.query_map(params![kind, after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn current_versions(&self, _ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<Option<(i64, bool)>>> {
        let keys = keys.to_vec();
        self.read_with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT version, deleted FROM resource WHERE type = ?1 AND id = ?2")
                .map_err(backend)?;
            keys.iter()
                .map(|(t, i)| {
                    stmt.query_row(params![t, i], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? != 0)))
                        .optional()
                        .map_err(backend)
                })
                .collect()
        })
        .await
    }

    async fn read(&self, _ctx: &Ctx, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>> {
        let (t, i) = (resource_type.to_string(), id.to_string());
        self.read_with(move |conn| {
            conn.prepare_cached(&format!("SELECT {RESOURCE_COLUMNS} FROM resource WHERE type = ?1 AND id = ?2"))
                .map_err(backend)?
                .query_row(params![t, i], |r| stored_from_row(r, 0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn read_many(&self, _ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<StoredResource>> {
        let keys = keys.to_vec();
        self.read_with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resource WHERE type = ?1 AND id = ?2 AND deleted = 0"
                ))
                .map_err(backend)?;
            let mut out = Vec::with_capacity(keys.len());
            for (t, i) in &keys {
                if let Some(r) = stmt.query_row(params![t, i], |r| stored_from_row(r, 0)).optional().map_err(backend)? {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn vread(
        &self,
        _ctx: &Ctx,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<Option<StoredResource>> {
        let (t, i) = (resource_type.to_string(), id.to_string());
        self.read_with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {HISTORY_COLUMNS} FROM resource_history h WHERE rid = (SELECT rid FROM resource WHERE type = ?1 \
                 AND id = ?2) AND version = ?3"
            ))
            .map_err(backend)?
            .query_row(params![t, i, version], |r| stored_from_row(r, 0))
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn history(&self, _ctx: &Ctx, query: &HistoryQuery) -> StoreResult<Page> {
        let query = query.clone();
        self.read_with(move |conn| {
            let mut filter = vec!["1 = 1".to_string()];
            let mut binds: Vec<rusqlite::types::Value> = Vec::new();
            match (&query.resource_type, &query.id) {
                (Some(t), Some(i)) => {
                    binds.push(t.clone().into());
                    binds.push(i.clone().into());
                    filter.push("rid = (SELECT rid FROM resource WHERE type = ?1 AND id = ?2)".into());
                }
                (Some(t), None) => {
                    binds.push(t.clone().into());
                    filter.push("type = ?1".into());
                }
                _ => {}
            }
            if let Some(since) = query.since {
                binds.push(since.into());
                filter.push(format!("last_updated >= ?{}", binds.len()));
            }
            let filter = filter.join(" AND ");
            let total: i64 = conn
                .prepare_cached(&format!("SELECT COUNT(*) FROM resource_history WHERE {filter}"))
                .map_err(backend)?
                .query_row(params_from_iter(binds.iter()), |r| r.get(0))
                .map_err(backend)?;
            // LIMIT and OFFSET as numbers: a bound LIMIT recompiles the statement at each use.
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {HISTORY_COLUMNS} FROM resource_history h WHERE {filter} \
                     ORDER BY last_updated DESC, rid DESC, version DESC LIMIT {} OFFSET {}",
                    query.count, query.offset
                ))
                .map_err(backend)?;
            let resources = stmt
                .query_map(params_from_iter(binds.iter()), |r| stored_from_row(r, 0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(Page { resources, total: Some(total as u64) })
        })
        .await
    }

    async fn search(&self, _ctx: &Ctx, query: &fhir::search::SearchQuery) -> StoreResult<Page> {
        let built = store_sql::query::build_search(query, Dialect::Sqlite, now_ms());
        self.read_with(move |conn| {
            let total = match &built.count {
                Some(count) => Some(
                    conn.prepare_cached(&count.text)
                        .map_err(backend)?
                        .query_row(params_from_iter(to_sql(&count.binds)), |r| r.get::<_, i64>(0))
                        .map_err(backend)? as u64,
                ),
                None => None,
            };
            let mut stmt = conn.prepare_cached(&built.page.text).map_err(backend)?;
            let resources = stmt
                .query_map(params_from_iter(to_sql(&built.page.binds)), |r| stored_from_row(r, 1))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(Page { resources, total })
        })
        .await
    }

    async fn patient_compartment(
        &self,
        _ctx: &Ctx,
        patient_id: &str,
        since: Option<i64>,
        types: &[String],
    ) -> StoreResult<Vec<StoredResource>> {
        let patient = patient_id.to_string();
        let types = types.to_vec();
        self.read_with(move |conn| {
            let mut binds: Vec<rusqlite::types::Value> = vec![patient.into()];
            let mut filter = String::from("c.patient_key = ?1 AND r.deleted = 0");
            if let Some(s) = since {
                binds.push(s.into());
                filter.push_str(&format!(" AND r.last_updated >= ?{}", binds.len()));
            }
            if !types.is_empty() {
                let mut list = Vec::new();
                for t in &types {
                    binds.push(t.clone().into());
                    list.push(format!("?{}", binds.len()));
                }
                filter.push_str(&format!(" AND r.type IN ({})", list.join(", ")));
            }
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT r.type, r.id, r.version, r.last_updated, r.deleted, r.method, r.body, r.patient_key FROM compartment c \
                     JOIN resource r ON r.rid = c.rid WHERE {filter} ORDER BY r.type, r.rid"
                ))
                .map_err(backend)?;
            stmt.query_map(params_from_iter(binds.iter()), |r| stored_from_row(r, 0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)
        })
        .await
    }

    async fn outbox_read(&self, after: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        self.read_with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT seq, type, id, version, method, last_updated FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT {limit}"
                ))
                .map_err(backend)?;
            stmt.query_map(params![after], |r| {
                let method: String = r.get(4)?;
                Ok(OutboxEvent {
                    seq: r.get(0)?,
                    resource_type: r.get(1)?,
                    id: r.get(2)?,
                    version: r.get(3)?,
                    method: WriteMethod::parse(&method).unwrap_or(WriteMethod::Update),
                    last_updated: r.get(5)?,
                })
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
        .await
    }

    async fn cursor_get(&self, consumer: &str) -> StoreResult<i64> {
        let consumer = consumer.to_string();
        self.read_with(move |conn| {
            conn.prepare_cached("SELECT position FROM consumer_cursor WHERE name = ?1")
                .map_err(backend)?
                .query_row([consumer], |r| r.get(0))
                .optional()
                .map(|p| p.unwrap_or(0))
                .map_err(backend)
        })
        .await
    }

    async fn cursor_set(&self, consumer: &str, position: i64) -> StoreResult<()> {
        let consumer = consumer.to_string();
        self.write_with(move |conn| {
            conn.prepare_cached(
                "INSERT INTO consumer_cursor (name, position) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET position = MAX(position, excluded.position)",
            )
            .map_err(backend)?
            .execute(params![consumer, position])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
