//! The storage contract suite on the embedded SQLite backend, plus SQLite-specific checks.

use std::sync::Arc;

use store::ResourceStore;
use store_sqlite::SqliteStore;

async fn fresh() -> Arc<dyn ResourceStore> {
    // The folder must outlive the store: leak it for the duration of the test process.
    let dir = tempfile::tempdir().expect("temp dir").keep();
    Arc::new(SqliteStore::open(&dir).expect("open store"))
}

store::contract_suite!(fresh());

#[tokio::test]
async fn reopening_keeps_committed_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit(&store::Ctx::system(), vec![store::contract::op("Patient", "p1", 1, vec![], &["p1"])])
            .await
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let read = store.read(&store::Ctx::system(), "Patient", "p1").await.unwrap();
    assert_eq!(read.map(|r| r.version), Some(1));
}

#[tokio::test]
async fn unwritable_folder_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = SqliteStore::open(&file.path().join("sub")).err().expect("cannot create a folder inside a file");
    assert!(err.to_string().contains("cannot create the data folder"), "{err}");
}

#[tokio::test]
async fn a_data_folder_of_another_schema_version_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("hutong.db")).unwrap();
    conn.execute("UPDATE schema_meta SET value = '1' WHERE key = 'schema_version'", []).unwrap();
    drop(conn);
    let err = SqliteStore::open(dir.path()).err().expect("an older schema is refused");
    assert!(err.to_string().contains("holds schema version 1"), "{err}");
}
