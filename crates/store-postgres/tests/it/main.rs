//! The storage contract suite on PostgreSQL, each test in a fresh database.
//!
//! The server comes from `HUTONG_TEST_POSTGRES_URL` (scripts/test.sh starts a throwaway one).
//! Without it the tests print a skip line and pass, unless `HUTONG_REQUIRE_POSTGRES=1`, which
//! the README test command sets, so the suite can never silently not run there.

use std::sync::Arc;

use store::ResourceStore;
use store_postgres::PgStore;

async fn fresh_database() -> Option<Arc<dyn ResourceStore>> {
    let Ok(url) = std::env::var("HUTONG_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("HUTONG_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "HUTONG_REQUIRE_POSTGRES=1 but HUTONG_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh"
        );
        eprintln!("skipped: HUTONG_TEST_POSTGRES_URL is not set, so the PostgreSQL contract tests did not run");
        return None;
    };
    let name = format!("hutong_test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    Some(Arc::new(PgStore::connect(&format!("{base}/{name}")).await.expect("open store")))
}

store::contract_suite!(fresh_database());

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let err = PgStore::connect("postgres://nobody@127.0.0.1:1/none").await.err().expect("nothing listens on port 1");
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1/none") && message.contains("Check that the server runs"), "{message}");
    assert!(matches!(err, store::StoreError::Unavailable(_)));
}
