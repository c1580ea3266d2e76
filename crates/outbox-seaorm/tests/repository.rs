//! The PostgreSQL repository's own behaviour on the real server: atomic writes, validation,
//! topic mapping, defective rows, key partitions, the claim's index, and the leadership handover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::{
    ClaimCursor, ClaimedBatch, FailureOutcome, NewOutboxEvent, OutboxError, OutboxWriter,
    RelayStore, TRACEPARENT_HEADER, TopicMap,
};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox, entity};
use outbox_test_harness::{PostgresNode, TestDatabase};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    Statement, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

/// Every log line of the repository is built (its fields evaluated) and thrown away, as in a
/// service running at `trace`.
fn quiet_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(std::io::sink)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

async fn migrated() -> (TestDatabase, DatabaseConnection) {
    quiet_logs();
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    OutboxMigrator::up(&conn, None).await.unwrap();
    (db, conn)
}

async fn count(conn: &DatabaseConnection) -> u64 {
    entity::Entity::find().count(conn).await.unwrap()
}

fn event(key: &str) -> NewOutboxEvent {
    NewOutboxEvent::json("order", key, "OrderPlaced", &serde_json::json!({"id": key}))
        .unwrap()
        .with_topic("orders")
}

#[tokio::test]
async fn an_event_exists_only_if_its_transaction_commits() {
    let (_db, conn) = migrated().await;
    conn.execute_unprepared("CREATE TABLE orders (id text PRIMARY KEY)")
        .await
        .unwrap();
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();

    let txn = conn.begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO orders VALUES ('o-1')")
        .await
        .unwrap();
    outbox.add_event(&txn, event("o-1")).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(count(&conn).await, 0, "rolled back: no event");

    let txn = conn.begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO orders VALUES ('o-2')")
        .await
        .unwrap();
    let id = outbox.add_event(&txn, event("o-2")).await.unwrap();
    assert_eq!(count(&conn).await, 0, "invisible before the commit");
    txn.commit().await.unwrap();
    let row = entity::Entity::find().one(&conn).await.unwrap().unwrap();
    assert_eq!(row.event_id, id.as_uuid());
    assert_eq!(row.event_key, "o-2");
    assert_eq!(row.headers["content-type"], "application/json");

    // A business failure after the insert takes the event with it.
    let txn = conn.begin().await.unwrap();
    outbox.add_event(&txn, event("o-3")).await.unwrap();
    let duplicate = txn
        .execute_unprepared("INSERT INTO orders VALUES ('o-2')")
        .await;
    assert!(duplicate.is_err());
    drop(txn);
    assert_eq!(count(&conn).await, 1);
}

#[tokio::test]
async fn adding_an_event_takes_no_lock_beyond_the_insert() {
    let (_db, conn) = migrated().await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let txn = conn.begin().await.unwrap();
    outbox.add_event(&txn, event("o-1")).await.unwrap();
    let locks = txn
        .query_all(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT locktype, mode, coalesce(relation::regclass::text, '') AS rel
             FROM pg_locks WHERE pid = pg_backend_pid() AND locktype <> 'virtualxid'",
        ))
        .await
        .unwrap();
    for lock in locks {
        let locktype: String = lock.try_get("", "locktype").unwrap();
        let mode: String = lock.try_get("", "mode").unwrap();
        let rel: String = lock.try_get("", "rel").unwrap();
        assert_ne!(locktype, "advisory", "no advisory lock");
        if locktype == "relation" && rel.starts_with("event_outbox") {
            assert_eq!(
                mode, "RowExclusiveLock",
                "{rel}: only the insert's own lock"
            );
        }
    }
    txn.commit().await.unwrap();
}

#[tokio::test]
async fn invalid_events_are_refused_and_nothing_is_written() {
    let (_db, conn) = migrated().await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let txn = conn.begin().await.unwrap();
    let refused = [
        NewOutboxEvent::new("", "a", "T", vec![]).with_topic("t"),
        event("a").with_topic("no spaces allowed"),
        event("a").with_header("event_id", "forged"),
    ];
    for bad in refused {
        assert!(matches!(
            outbox.add_event(&txn, bad).await,
            Err(OutboxError::InvalidEvent(_))
        ));
    }
    let unmapped = NewOutboxEvent::new("order", "a", "Unmapped", vec![]);
    assert!(matches!(
        outbox.add_event(&txn, unmapped).await,
        Err(OutboxError::UnknownEventType(t)) if t == "Unmapped"
    ));
    txn.commit().await.unwrap();
    assert_eq!(count(&conn).await, 0);
}

#[tokio::test]
async fn the_mapper_chooses_topics_and_add_events_writes_them_in_order() {
    let (_db, conn) = migrated().await;
    let topics = TopicMap::new().with("OrderPlaced", "orders.v1").unwrap();
    let outbox = PostgresOutbox::new(conn.clone())
        .unwrap()
        .with_mapper(Arc::new(topics));
    let txn = conn.begin().await.unwrap();
    let events: Vec<NewOutboxEvent> = (0..5)
        .map(|n| {
            NewOutboxEvent::new("order", format!("o-{n}"), "OrderPlaced", vec![n]).with_traceparent(
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            )
        })
        .collect();
    let ids = outbox.add_events(&txn, events).await.unwrap();
    txn.commit().await.unwrap();
    assert!(
        outbox
            .add_events(&conn, Vec::new())
            .await
            .unwrap()
            .is_empty()
    );

    let rows = entity::Entity::find().all(&conn).await.unwrap();
    assert_eq!(rows.len(), 5);
    for (n, (row, id)) in rows.iter().zip(&ids).enumerate() {
        assert_eq!(row.event_id, id.as_uuid(), "ids in the order given");
        assert_eq!(row.topic, "orders.v1");
        assert_eq!(row.payload, vec![n as u8]);
        assert_eq!(
            row.headers[TRACEPARENT_HEADER],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }
}

#[tokio::test]
async fn rows_edited_into_a_bad_shape_are_claimed_as_defective() {
    let (_db, conn) = migrated().await;
    let outbox = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    outbox.add_event(&conn, event("good")).await.unwrap();
    outbox.add_event(&conn, event("bad")).await.unwrap();
    conn.execute_unprepared(
        "UPDATE event_outbox SET headers = '{\"x\": [1, 2]}' WHERE event_key = 'bad'",
    )
    .await
    .unwrap();
    // The table refuses what cannot be a header map at all.
    assert!(
        conn.execute_unprepared("UPDATE event_outbox SET headers = '[]' WHERE event_key = 'bad'")
            .await
            .is_err()
    );
    assert!(outbox.acquire_leadership().await.unwrap());
    let batch = settled_claim(&outbox, 10, None).await.events;
    assert_eq!(batch.len(), 2, "one bad row does not fail the claim");
    assert_eq!(batch[0].defect, None);
    assert!(batch[1].defect.as_deref().unwrap().contains("header `x`"));
}

#[tokio::test]
async fn the_partition_column_hashes_the_key_into_256_slots() {
    let (_db, conn) = migrated().await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    for n in 0..200 {
        outbox
            .add_event(&conn, event(&format!("key-{}", n % 50)))
            .await
            .unwrap();
    }
    let rows = entity::Entity::find().all(&conn).await.unwrap();
    let mut slot_of = std::collections::HashMap::new();
    for row in &rows {
        assert!((0..256).contains(&row.partition));
        assert_eq!(
            *slot_of
                .entry(row.event_key.clone())
                .or_insert(row.partition),
            row.partition,
            "same key, same partition"
        );
    }
    let distinct: std::collections::HashSet<_> = slot_of.values().collect();
    assert!(distinct.len() > 30, "50 keys spread over many slots");
}

#[tokio::test]
async fn the_claim_reads_the_pending_index_on_a_large_backlog() {
    let (_db, conn) = migrated().await;
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'a', 'k' || (n % 1000), 'T', 't', 'k' || (n % 1000), '\\x00'
         FROM generate_series(1, 50000) AS n;
         UPDATE event_outbox SET published_at = now() WHERE id <= 40000;
         ANALYZE event_outbox;",
    )
    .await
    .unwrap();
    let lines = PostgresOutbox::new(conn.clone())
        .unwrap()
        .explain_claim(500, None, false)
        .await
        .unwrap()
        .join("\n");
    assert!(
        lines.contains("event_outbox_claim_idx"),
        "the claim should scan the claim index:\n{lines}"
    );
}

/// The rows every node of an `EXPLAIN ANALYZE` plan produced or filtered out, over all its
/// loops: the work the statement did, the same on a fast machine and a slow one.
fn rows_handled(plan: &[String]) -> u64 {
    fn number_after(text: &str, field: &str) -> Option<u64> {
        let start = text.find(field)? + field.len();
        let digits: String = text[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }
    let mut loops = 1;
    let mut handled = 0;
    for line in plan {
        if let Some(at) = line.find("(actual ") {
            let actual = &line[at..];
            loops = number_after(actual, " loops=").unwrap_or(1);
            handled += number_after(actual, " rows=").unwrap_or(0) * loops;
        } else if line.contains("Rows Removed by") {
            // An average per loop of the node above.
            handled += number_after(line, ": ").unwrap_or(0) * loops;
        }
    }
    handled
}

#[tokio::test]
async fn a_claim_reads_each_parked_row_a_bounded_number_of_times() {
    // 6,000 rows over 300 keys, 4,000 of them parked: keys 0-99 not due yet, keys 100-149 due
    // but behind their first row (not due), keys 150-199 due; keys 200-299 new. `work_mem` is
    // cut to its least, so these 4,000 parked rows do not fit in the memory of a hash table, as
    // 100,000 do not at the default 4 MB. A claim that checked each new row against every parked
    // one then (as it once did: 5 s for 100,000 parked rows among 1,000,000) handles millions of
    // rows over its plan; one in proportion to the rows handles tens of thousands.
    let (db, conn) = migrated().await;
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'a', 'k' || (n % 300), 'T', 't', 'k' || (n % 300), '\\x00'
         FROM generate_series(1, 6000) AS n;
         UPDATE event_outbox SET next_attempt_at = now() + interval '1 hour', attempts = 1
         WHERE id % 300 < 100 OR (id % 300 < 150 AND id <= 300);
         UPDATE event_outbox SET next_attempt_at = now() - interval '1 second', attempts = 1
         WHERE id % 300 BETWEEN 100 AND 199 AND next_attempt_at IS NULL;
         ANALYZE event_outbox;
         DO $$ BEGIN
             EXECUTE format('ALTER DATABASE %I SET work_mem = ''64kB''', current_database());
         END $$;",
    )
    .await
    .unwrap();
    let store = PostgresOutbox::new(db.connect().await).unwrap();
    let plan = store.explain_claim(1000, None, true).await.unwrap();
    let handled = rows_handled(&plan);
    assert!(
        (1000..=20 * 6000).contains(&handled),
        "the claim handled {handled} rows over its plan:\n{}",
        plan.join("\n")
    );

    // What it returns: the due retries not held back, those of keys 150-199, in order.
    assert!(store.acquire_leadership().await.unwrap());
    let claimed = settled_claim(&store, 1000, None).await;
    assert_eq!((claimed.retries, claimed.events.len()), (1000, 1000));
    let retries = &claimed.events;
    assert!(retries.iter().all(|e| {
        let key: u32 = e.key[1..].parse().unwrap();
        (150..200).contains(&key)
    }));
    assert!(retries.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leaders_session_dies() {
    let (_db, conn) = migrated().await;
    let active = PostgresOutbox::new(conn.clone()).unwrap();
    let standby = PostgresOutbox::new(conn.clone()).unwrap();
    outbox_writer(&conn).await;
    assert!(active.acquire_leadership().await.unwrap());
    assert!(!standby.acquire_leadership().await.unwrap());
    assert_eq!(settled_claim(&active, 10, None).await.events.len(), 1);

    // Kill the leader's session from outside, as a network failure or a DBA would.
    let killed = conn
        .query_one(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(killed, 1);

    let started = Instant::now();
    while !standby.acquire_leadership().await.unwrap() {
        assert!(started.elapsed() < Duration::from_secs(5), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        active.claim_batch(10, None).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(matches!(
        active.acknowledge(&[1], false).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(
        !active.acquire_leadership().await.unwrap(),
        "the old leader is a standby now"
    );
    assert_eq!(settled_claim(&standby, 10, None).await.events.len(), 1);
}

async fn outbox_writer(conn: &DatabaseConnection) {
    PostgresOutbox::new(conn.clone())
        .unwrap()
        .add_event(conn, event("o-1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_migration_goes_down_and_up_again() {
    let (_db, conn) = migrated().await;
    OutboxMigrator::down(&conn, None).await.unwrap();
    let tables = conn
        .query_all(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'event_outbox'",
        ))
        .await
        .unwrap();
    assert!(tables.is_empty());
    OutboxMigrator::up(&conn, None).await.unwrap();
    assert_eq!(count(&conn).await, 0);
    let status = entity::Entity::find()
        .filter(entity::Column::Attempts.gt(0))
        .count(&conn)
        .await
        .unwrap();
    assert_eq!(status, 0);
}

async fn text(conn: &DatabaseConnection, sql: &str) -> String {
    conn.query_one(Statement::from_string(sea_orm::DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<Option<String>>(0)
        .unwrap()
        .unwrap_or_default()
}

#[tokio::test]
async fn large_payloads_are_compressed_with_lz4_and_the_migration_reverts_to_the_default() {
    let (_db, conn) = migrated().await;
    let column = "SELECT attcompression::text FROM pg_attribute \
                  WHERE attrelid = 'event_outbox'::regclass AND attname = 'payload'";
    assert_eq!(text(&conn, column).await, "l");
    let essay = "a student's essay, paragraph after paragraph. ".repeat(700);
    let big = NewOutboxEvent::json(
        "order",
        "big",
        "OrderPlaced",
        &serde_json::json!({ "essay": essay }),
    )
    .unwrap()
    .with_topic("orders");
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    outbox.add_event(&conn, big).await.unwrap();
    let stored = "SELECT pg_column_compression(payload) FROM event_outbox";
    assert_eq!(text(&conn, stored).await, "lz4");

    // Down: new payloads take the server's default again (pglz here); the stored one is kept.
    OutboxMigrator::down(&conn, Some(1)).await.unwrap();
    assert_eq!(text(&conn, column).await, "");
    assert_eq!(count(&conn).await, 1);
    OutboxMigrator::up(&conn, None).await.unwrap();
    assert_eq!(text(&conn, column).await, "l");
}

#[test]
fn a_non_postgres_connection_is_refused() {
    let disconnected = sea_orm::DatabaseConnection::default();
    assert!(matches!(
        PostgresOutbox::new(disconnected),
        Err(OutboxError::Config(_))
    ));
}

/// Claims once no committed event waits behind the commit horizon: other tests' transactions on
/// the same server hold it for moments.
async fn settled_claim(
    store: &PostgresOutbox,
    limit: usize,
    after: Option<ClaimCursor>,
) -> ClaimedBatch {
    for _ in 0..500 {
        if store.stats().await.unwrap().horizon_wait.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.claim_batch(limit, after).await.unwrap()
}

async fn claim_ids(store: &PostgresOutbox, limit: usize, after: Option<ClaimCursor>) -> Vec<i64> {
    settled_claim(store, limit, after)
        .await
        .events
        .iter()
        .map(|e| e.id)
        .collect()
}

async fn id_of(conn: &DatabaseConnection, event_id: outbox_core::EventId) -> i64 {
    entity::Entity::find()
        .filter(entity::Column::EventId.eq(event_id.as_uuid()))
        .one(conn)
        .await
        .unwrap()
        .unwrap()
        .id
}

#[tokio::test]
async fn an_event_committed_late_holds_back_the_transactions_that_began_after_it() {
    let (_db, conn) = migrated().await;
    let writer = PostgresOutbox::new(conn.clone()).unwrap();
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(store.acquire_leadership().await.unwrap());
    writer.add_event(&conn, event("before")).await.unwrap();
    let before = settled_claim(&store, 10, None).await;
    assert_eq!(before.events.len(), 1);
    store
        .acknowledge(&[before.events[0].id], false)
        .await
        .unwrap();

    let late_txn = conn.begin().await.unwrap();
    let late = writer.add_event(&late_txn, event("late")).await.unwrap();
    for n in 0..4 {
        writer
            .add_event(&conn, event(&format!("k{n}")))
            .await
            .unwrap();
    }
    let held = store.claim_batch(10, before.cursor).await.unwrap();
    assert_eq!(
        held.events,
        [],
        "everything after the open transaction waits"
    );
    assert_eq!(held.cursor, None);
    let stats = store.stats().await.unwrap();
    let wait = stats.horizon_wait.expect("events wait behind the horizon");
    assert!(wait < Duration::from_secs(60));
    let holder = stats.horizon_holder.expect("the holder is named");
    assert!(holder.pid.is_some() && holder.age.is_some(), "{holder:?}");

    late_txn.commit().await.unwrap();
    let late_id = id_of(&conn, late).await;
    let batch = settled_claim(&store, 10, before.cursor).await;
    let keys: Vec<&str> = batch.events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["late", "k0", "k1", "k2", "k3"]);
    assert_eq!(batch.events[0].id, late_id);
    assert!(batch.cursor > before.cursor);
}

#[tokio::test]
async fn while_an_event_backs_off_no_event_of_its_key_is_skipped() {
    let (_db, conn) = migrated().await;
    let writer = PostgresOutbox::new(conn.clone()).unwrap();
    let mut ids = Vec::new();
    for key in ["a", "a", "b", "b", "a"] {
        let event_id = writer.add_event(&conn, event(key)).await.unwrap();
        ids.push(id_of(&conn, event_id).await);
    }
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(store.acquire_leadership().await.unwrap());
    let first = settled_claim(&store, 2, None).await;
    assert_eq!(
        first.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..2]
    );
    // a's first event fails; a's second waits behind it.
    let failure = |id, outcome| outbox_core::AttemptFailure {
        id,
        event_id: outbox_core::EventId::new(),
        topic: "orders".into(),
        error: "refused".into(),
        outcome,
    };
    store
        .record_failures(&[
            failure(
                ids[0],
                FailureOutcome::RetryAfter(Duration::from_millis(300)),
            ),
            failure(ids[1], FailureOutcome::Held),
        ])
        .await
        .unwrap();
    let b = settled_claim(&store, 10, first.cursor).await;
    assert_eq!(
        b.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[2..4],
        "b flows while a backs off; a's third event is parked behind it"
    );
    assert_eq!(b.cursor.map(|c| c.id), Some(ids[4]));
    store.acknowledge(&ids[2..4], false).await.unwrap();
    assert!(claim_ids(&store, 10, b.cursor).await.is_empty(), "a waits");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        claim_ids(&store, 10, b.cursor).await,
        [ids[0], ids[1], ids[4]],
        "a in order"
    );
}

#[tokio::test]
async fn retry_times_are_counted_on_the_database_clock() {
    let (_db, conn) = migrated().await;
    let writer = PostgresOutbox::new(conn.clone()).unwrap();
    let event_id = writer.add_event(&conn, event("a")).await.unwrap();
    let id = id_of(&conn, event_id).await;
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(store.acquire_leadership().await.unwrap());
    store
        .record_failures(&[outbox_core::AttemptFailure {
            id,
            event_id,
            topic: "orders".into(),
            error: "refused".into(),
            outcome: FailureOutcome::RetryAfter(Duration::from_secs(600)),
        }])
        .await
        .unwrap();
    let row = conn
        .query_one(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float8 AS wait FROM event_outbox",
        ))
        .await
        .unwrap()
        .unwrap();
    let wait: f64 = row.try_get("", "wait").unwrap();
    assert!(
        (590.0..=600.0).contains(&wait),
        "{wait} s from the database's now()"
    );
}

#[tokio::test]
async fn add_events_writes_more_events_than_one_statement_can_carry() {
    let (_db, conn) = migrated().await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let events: Vec<NewOutboxEvent> = (0..20_000).map(|n| event(&format!("k{n}"))).collect();
    let txn = conn.begin().await.unwrap();
    let ids = outbox.add_events(&txn, events).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(ids.len(), 20_000);
    assert_eq!(count(&conn).await, 20_000);
    let last = id_of(&conn, ids[19_999]).await;
    let first = id_of(&conn, ids[0]).await;
    assert_eq!(last - first, 19_999, "ids in the order given");
}

#[tokio::test]
async fn the_relay_session_has_keepalives_and_timeouts() {
    let (_db, conn) = migrated().await;
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(store.acquire_leadership().await.unwrap());
    let settings = store.session_settings().await.unwrap();
    let get = |name: &str| {
        settings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} in {settings:?}"))
    };
    assert_eq!(get("tcp_keepalives_idle"), "5");
    assert_eq!(get("tcp_keepalives_interval"), "5");
    assert_eq!(get("tcp_keepalives_count"), "3");
    assert_eq!(get("tcp_user_timeout"), "20000");
    assert_eq!(get("statement_timeout"), "30000");
    assert_eq!(get("application_name"), "outbox-relay");
}

#[tokio::test]
async fn acknowledging_more_ids_than_one_statement_carries_deletes_them_all() {
    let (_db, conn) = migrated().await;
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'a', 'k', 'T', 't', 'k' || n, '\\x00' FROM generate_series(1, 2500) AS n",
    )
    .await
    .unwrap();
    let store = PostgresOutbox::new(conn.clone()).unwrap().with_lock_key(7);
    assert!(store.acquire_leadership().await.unwrap());
    let batch = claim_ids(&store, 2500, None).await;
    assert_eq!(batch.len(), 2500);
    assert_eq!(store.acknowledge(&batch, false).await.unwrap(), 2500);
    assert_eq!(count(&conn).await, 0);
}

#[tokio::test]
async fn relays_with_the_same_lock_key_exclude_each_other_and_others_do_not() {
    let (_db, conn) = migrated().await;
    let first = PostgresOutbox::new(conn.clone()).unwrap().with_lock_key(42);
    let same = PostgresOutbox::new(conn.clone()).unwrap().with_lock_key(42);
    let other = PostgresOutbox::new(conn.clone()).unwrap().with_lock_key(43);
    assert!(first.acquire_leadership().await.unwrap());
    assert!(!same.acquire_leadership().await.unwrap());
    assert!(other.acquire_leadership().await.unwrap());
    assert!(format!("{first:?}").contains("lock_key: Some(42)"));
    assert!(first.connection().ping().await.is_ok());
}

#[tokio::test]
async fn dead_letters_are_filtered_by_every_field_and_malformed_ones_are_listed() {
    use outbox_core::{DeadLetterFilter, DeadLetterStore};
    let (_db, conn) = migrated().await;
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers)
         VALUES (gen_random_uuid(), 'order', 'o-1', 'Placed', 'orders', 'o-1', '\\x00', '{}'),
                (gen_random_uuid(), 'order', 'o-2', 'Placed', 'orders', 'o-2', '\\x00', '{\"x\": [1]}'),
                (gen_random_uuid(), 'user', 'u-1', 'Joined', 'users', 'u-1', '\\x00', '{}');
         UPDATE event_outbox SET dead_lettered_at = now() - interval '1 hour', last_error = 'e';",
    )
    .await
    .unwrap();
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    let now = chrono::Utc::now();
    let filter = DeadLetterFilter {
        topic: Some("orders".into()),
        key: Some("o-2".into()),
        event_type: Some("Placed".into()),
        aggregate_type: Some("order".into()),
        aggregate_id: Some("o-2".into()),
        since: Some(now - chrono::Duration::hours(2)),
        until: Some(now),
    };
    let found = store.dead_letters(&filter, 10).await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        found[0]
            .event
            .defect
            .as_deref()
            .unwrap()
            .contains("header `x`")
    );
    assert_eq!(store.replay(&[]).await.unwrap(), 0);
    assert_eq!(store.discard(&[]).await.unwrap(), 0);
    let none = DeadLetterFilter {
        until: Some(now - chrono::Duration::hours(3)),
        ..DeadLetterFilter::default()
    };
    assert!(store.dead_letters(&none, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn database_errors_are_reported_as_such_and_close_the_relay_session() {
    use outbox_core::{DeadLetterStore, OutboxCleanup};
    // A database without the outbox table: every statement on it fails.
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(matches!(
        store.add_event(&conn, event("o-1")).await,
        Err(OutboxError::Database(_))
    ));
    assert!(matches!(store.stats().await, Err(OutboxError::Database(_))));
    assert!(matches!(
        store.dead_letters(&Default::default(), 10).await,
        Err(OutboxError::Database(_))
    ));
    assert!(matches!(
        store.delete_expired(Duration::from_secs(60), 10).await,
        Err(OutboxError::Database(_))
    ));
    assert!(
        store.acquire_leadership().await.unwrap(),
        "the lock needs no table"
    );
    assert!(matches!(
        store.claim_batch(10, None).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(
        store.acquire_leadership().await.unwrap(),
        "a new session takes the lock again"
    );
}

#[tokio::test]
async fn a_relay_session_that_stops_answering_gives_up_the_leadership() {
    let (_db, conn) = migrated().await;
    let store = PostgresOutbox::new(conn.clone())
        .unwrap()
        .with_session_checks(Duration::from_secs(5), Duration::from_millis(300));
    assert!(store.acquire_leadership().await.unwrap());
    // Something holds the table: the claim waits, and the relay stops waiting for it.
    let blocker = conn.begin().await.unwrap();
    blocker
        .execute_unprepared("LOCK TABLE event_outbox IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    assert!(matches!(
        store.claim_batch(10, None).await,
        Err(OutboxError::LeadershipLost)
    ));
    blocker.rollback().await.unwrap();
    assert!(
        store.acquire_leadership().await.unwrap(),
        "a new session leads again"
    );
}

#[tokio::test]
async fn a_claim_behind_due_retries_takes_only_the_fresh_events_that_fit_and_skips_none() {
    let (_db, conn) = migrated().await;
    let writer = PostgresOutbox::new(conn.clone()).unwrap();
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(store.acquire_leadership().await.unwrap());
    let retried = writer.add_event(&conn, event("r")).await.unwrap();
    let first = settled_claim(&store, 10, None).await;
    assert_eq!(first.events.len(), 1);
    store
        .record_failures(&[outbox_core::AttemptFailure {
            id: first.events[0].id,
            event_id: retried,
            topic: "orders".into(),
            error: "refused".into(),
            outcome: FailureOutcome::RetryAfter(Duration::ZERO),
        }])
        .await
        .unwrap();
    let mut fresh = Vec::new();
    for key in ["b", "c", "d"] {
        let event_id = writer.add_event(&conn, event(key)).await.unwrap();
        fresh.push(id_of(&conn, event_id).await);
    }

    // The claim reads up to 3 due retries and up to 3 fresh rows; only 2 fresh ones fit.
    let batch = settled_claim(&store, 3, first.cursor).await;
    let ids: Vec<i64> = batch.events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [first.events[0].id, fresh[0], fresh[1]]);
    assert_eq!(batch.retries, 1);
    assert!(batch.full);
    let cursor = batch
        .cursor
        .expect("a cursor after the last fresh event taken");
    assert_eq!(cursor.id, fresh[1], "not after the fresh row left out");
    let xid: String = conn
        .query_one(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT xid::text AS xid FROM event_outbox WHERE id = {}",
                fresh[1]
            ),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "xid")
        .unwrap();
    assert_eq!(
        cursor.xid.to_string(),
        xid,
        "the cursor holds the row's xid exactly"
    );

    store.acknowledge(&ids, false).await.unwrap();
    assert_eq!(
        claim_ids(&store, 3, batch.cursor).await,
        [fresh[2]],
        "the fresh event left out comes next"
    );
}

#[tokio::test]
async fn acknowledging_or_recording_nothing_runs_no_statement_and_needs_no_leadership() {
    let (_db, conn) = migrated().await;
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(matches!(
        store.claim_batch(10, None).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert_eq!(store.acknowledge(&[], false).await.unwrap(), 0);
    store.record_failures(&[]).await.unwrap();
}

/// The pid of the session holding this database's advisory lock.
async fn lock_holder(conn: &DatabaseConnection) -> Option<i32> {
    conn.query_one(Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    ))
    .await
    .unwrap()
    .map(|row| row.try_get("", "pid").unwrap())
}

#[tokio::test]
async fn a_leader_whose_session_dies_before_its_backend_check_gives_up_and_leads_again() {
    let (_db, conn) = migrated().await;
    // Every acquire_leadership checks the session's backend.
    let store = PostgresOutbox::new(conn.clone())
        .unwrap()
        .with_session_checks(Duration::ZERO, Duration::from_secs(10));
    assert!(store.acquire_leadership().await.unwrap());
    assert!(
        store.acquire_leadership().await.unwrap(),
        "checked and held"
    );
    let pid = lock_holder(&conn).await.expect("the lock is held");
    conn.execute_unprepared(&format!("SELECT pg_terminate_backend({pid}, 10000)"))
        .await
        .unwrap();

    assert!(matches!(
        store.acquire_leadership().await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(matches!(
        store.claim_batch(10, None).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(
        store.acquire_leadership().await.unwrap(),
        "a new session takes the lock"
    );
    let new_pid = lock_holder(&conn).await.expect("the lock is held again");
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn a_prepared_transaction_holding_the_horizon_is_reported_without_a_session_to_name() {
    quiet_logs();
    // Two-phase commit is off on the shared server (max_prepared_transactions = 0).
    let node = PostgresNode::start().await;
    let admin = sea_orm::Database::connect(node.url()).await.unwrap();
    admin
        .execute_unprepared("ALTER SYSTEM SET max_prepared_transactions = 2")
        .await
        .unwrap();
    admin.close().await.unwrap();
    node.stop(false).await;
    node.start_again().await;
    let conn = sea_orm::Database::connect(node.url()).await.unwrap();
    OutboxMigrator::up(&conn, None).await.unwrap();
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    assert!(store.acquire_leadership().await.unwrap());

    conn.execute_unprepared(
        "BEGIN; SELECT pg_current_xact_id(); PREPARE TRANSACTION 'holds-the-horizon'",
    )
    .await
    .unwrap();
    let waiting = store.add_event(&conn, event("waiting")).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert!(
        stats.horizon_wait.is_some(),
        "the committed event waits: {stats:?}"
    );
    assert_eq!(
        stats.horizon_holder, None,
        "no session holds a prepared transaction"
    );
    assert_eq!(store.claim_batch(10, None).await.unwrap().events, []);

    conn.execute_unprepared("COMMIT PREPARED 'holds-the-horizon'")
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.horizon_wait, stats.horizon_holder), (None, None));
    let batch = store.claim_batch(10, None).await.unwrap();
    assert_eq!(
        batch.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [waiting]
    );
}
