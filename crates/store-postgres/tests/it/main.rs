//! The storage contract suite on PostgreSQL, each test in a fresh database.
//!
//! The server comes from `HUTONG_TEST_POSTGRES_URL` (scripts/test.sh starts a throwaway one).
//! Without it the tests print a skip line and pass, unless `HUTONG_REQUIRE_POSTGRES=1`, which
//! the README test command sets, so the suite can never silently not run there.

use std::sync::Arc;

use store::ResourceStore;
use store_postgres::PgStore;

async fn fresh_database() -> Option<Arc<dyn ResourceStore>> {
    let store: Arc<dyn ResourceStore> = Arc::new(store_postgres::testing::fresh_store().await?);
    Some(store)
}

store::contract_suite!(fresh_database());

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let err = PgStore::connect("postgres://nobody@127.0.0.1:1/none").await.err().expect("nothing listens on port 1");
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1/none") && message.contains("Check that the server runs"), "{message}");
    assert!(matches!(err, store::StoreError::Unavailable(_)));
}
