//! The File Service's database pool runs on sockets with `TCP_NODELAY` on.
//!
//! Without it, an upload whose statement is larger than about 16 KiB (most student essays) waits
//! about 40 ms for the server's delayed ACK (Nagle's algorithm; issue 10). The test reads the
//! option back from the kernel for the socket the service's own pool (`app::connect`) uses.

mod common;

use common::config;
use outbox_test_harness::{TestDatabase, session_tcp_nodelay};
use sea_orm::TransactionTrait;

#[tokio::test]
async fn the_services_pool_connects_with_tcp_nodelay() {
    let db = TestDatabase::create().await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let pool = file_service::app::connect(&config(db.url(), &bootstrap, &[]))
        .await
        .unwrap();
    assert!(
        session_tcp_nodelay(&pool).await,
        "a pooled connection of the File Service has TCP_NODELAY off"
    );
    let txn = pool.begin().await.unwrap();
    assert!(
        session_tcp_nodelay(&txn).await,
        "the File Service's transaction runs on a socket with TCP_NODELAY off"
    );
    txn.commit().await.unwrap();
}
