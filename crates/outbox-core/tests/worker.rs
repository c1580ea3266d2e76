//! Unit tests of the relay worker's logic over the in-memory doubles.
//!
//! The same behaviours are proven against the real PostgreSQL and Kafka in the adapters' and the
//! workspace's integration tests; these pin down the worker's decisions precisely.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outbox_core::testing::{MemoryPublisher, MemoryStore};
use outbox_core::{
    DeadLetterStore, EventRelayWorker, NewOutboxEvent, OutboxError, RelaySettings, RelayStore,
};

/// Every log line of the relay is built (its fields evaluated) and thrown away, as in a service
/// running at `debug`.
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

fn fast() -> RelaySettings {
    quiet_logs();
    RelaySettings::default()
        .with_batch_size(10)
        .with_min_poll_interval(Duration::from_millis(5))
        .with_poll_interval(Duration::from_millis(20))
        .with_retry_backoff_base(Duration::from_millis(20))
        .with_retry_backoff_max(Duration::from_millis(40))
        .with_transient_backoff_base(Duration::from_millis(20))
        .with_transient_backoff_max(Duration::from_millis(80))
        .with_leader_retry_interval(Duration::from_millis(20))
        .with_stats_interval(Duration::from_millis(20))
        .with_cleanup_interval(Duration::from_millis(20))
        .with_shutdown_timeout(Duration::from_secs(5))
}

fn event(key: &str, n: usize) -> NewOutboxEvent {
    NewOutboxEvent::new(
        "thing",
        key,
        "ThingHappened",
        format!("{key}:{n}").into_bytes(),
    )
    .with_topic("things")
}

/// Waits (up to 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

fn payloads(publisher: &MemoryPublisher) -> Vec<String> {
    publisher
        .delivered()
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn relays_everything_in_id_order_across_batches_and_deletes_it() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let mut expected = Vec::new();
    for n in 0..25 {
        for key in ["a", "b", "c"] {
            store.add(event(key, n));
            expected.push(format!("{key}:{n}"));
        }
    }
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("all delivered", || publisher.delivered().len() == 75).await;
    worker.stop().await.unwrap();

    assert_eq!(
        payloads(&publisher),
        expected,
        "id order, batch after batch"
    );
    assert!(store.rows().is_empty(), "acknowledged rows are deleted");
    assert!(
        publisher.publishes.load(Ordering::SeqCst) >= 8,
        "batches of at most 10"
    );
    assert_eq!(worker.status().relayed, 75);
}

#[tokio::test]
async fn retention_keeps_published_rows_until_cleanup_deletes_them() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    for n in 0..5 {
        store.add(event("a", n));
    }
    let settings = fast().with_retention(Some(Duration::from_millis(150)));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings)
        .unwrap()
        .with_cleanup(store.clone());
    worker.start().unwrap();
    until("delivered", || publisher.delivered().len() == 5).await;
    assert_eq!(store.rows().len(), 5, "published rows are kept");
    assert!(store.rows().iter().all(|r| r.published_at.is_some()));
    assert_eq!(store.pending(), 0);
    until("cleanup", || store.rows().is_empty()).await;
    worker.stop().await.unwrap();
    assert_eq!(
        publisher.delivered().len(),
        5,
        "kept rows are not sent again"
    );
}

#[tokio::test]
async fn transient_failures_back_off_forever_without_counting_attempts() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher.set_down(true);
    for n in 0..6 {
        store.add(event(if n % 2 == 0 { "a" } else { "b" }, n));
    }
    let settings = fast().with_max_attempts(2);
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();

    tokio::time::sleep(Duration::from_millis(600)).await;
    let publishes = publisher.publishes.load(Ordering::SeqCst);
    // Backoff capped at 80 ms: at most ~600/40 tries, not a spin.
    assert!(publishes >= 3, "it keeps retrying ({publishes})");
    assert!(
        publishes <= 20,
        "it backs off instead of spinning ({publishes})"
    );
    assert!(
        store
            .rows()
            .iter()
            .all(|r| r.event.attempts == 0 && r.dead_lettered_at.is_none()),
        "a broker outage never counts toward dead-lettering"
    );

    publisher.set_down(false);
    until("delivered after the outage", || {
        publisher.delivered().len() == 6
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(
        payloads(&publisher),
        ["a:0", "b:1", "a:2", "b:3", "a:4", "b:5"]
    );
}

#[tokio::test]
async fn an_event_that_can_never_be_sent_is_dead_lettered_while_other_keys_flow() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    *publisher.max_payload.lock().unwrap() = Some(100);
    let huge = store.add(
        NewOutboxEvent::new("thing", "a", "ThingHappened", vec![b'x'; 1000]).with_topic("things"),
    );
    store.add(event("a", 1));
    store.add(event("b", 1));
    let settings = fast().with_max_attempts(3);
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();

    until("b delivered", || {
        payloads(&publisher).contains(&"b:1".to_owned())
    })
    .await;
    until("a:1 delivered after the dead letter", || {
        payloads(&publisher).contains(&"a:1".to_owned())
    })
    .await;
    worker.stop().await.unwrap();

    let row = store
        .row(huge)
        .expect("the dead letter stays in the outbox");
    assert!(row.dead_lettered_at.is_some());
    assert_eq!(row.event.attempts, 3, "attempts counted up to max_attempts");
    assert!(row.last_error.unwrap().contains("larger than 100"));
    assert_eq!(
        payloads(&publisher),
        ["b:1", "a:1"],
        "a:1 waited behind the failing event of its key; b did not"
    );
    assert_eq!(worker.status().dead_lettered, 1);
}

#[tokio::test]
async fn a_replayed_dead_letter_is_delivered() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher
        .rejected_types
        .lock()
        .unwrap()
        .push("Secret".into());
    let id = store.add(NewOutboxEvent::new("s", "k", "Secret", b"1".to_vec()).with_topic("t"));
    let worker = EventRelayWorker::new(
        store.clone(),
        publisher.clone(),
        fast().with_max_attempts(2),
    )
    .unwrap();
    worker.start().unwrap();
    until("dead-lettered", || {
        store.row(id).is_some_and(|r| r.dead_lettered_at.is_some())
    })
    .await;
    assert_eq!(store.row(id).unwrap().event.attempts, 2);

    publisher.rejected_types.lock().unwrap().clear();
    assert_eq!(store.replay(&[id]).await.unwrap(), 1);
    until("replayed and delivered", || {
        publisher.delivered().len() == 1
    })
    .await;
    worker.stop().await.unwrap();
    assert!(store.rows().is_empty());
}

#[tokio::test]
async fn a_malformed_row_is_dead_lettered_without_failing_the_batch() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let bad = store.add(event("a", 0));
    store.corrupt(bad, "headers column is not a JSON object of strings");
    store.add(event("b", 0));
    let worker = EventRelayWorker::new(
        store.clone(),
        publisher.clone(),
        fast().with_max_attempts(1),
    )
    .unwrap();
    worker.start().unwrap();
    until("b delivered", || publisher.delivered().len() == 1).await;
    until("bad row parked", || {
        store.row(bad).is_some_and(|r| r.dead_lettered_at.is_some())
    })
    .await;
    worker.stop().await.unwrap();
    assert!(
        store
            .row(bad)
            .unwrap()
            .last_error
            .unwrap()
            .contains("headers column")
    );
}

#[tokio::test]
async fn stop_returns_only_after_the_batch_in_flight_is_acknowledged() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher.hang();
    for n in 0..5 {
        store.add(event("a", n));
    }
    let worker = Arc::new(EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap());
    worker.start().unwrap();
    until("a batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;

    let stopping = tokio::spawn({
        let worker = worker.clone();
        async move { worker.stop().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "stop() must wait for the acknowledgements"
    );
    publisher.release();
    stopping.await.unwrap().unwrap();

    assert_eq!(publisher.delivered().len(), 5);
    assert!(
        store.rows().is_empty(),
        "acknowledged before stop() returned"
    );
    assert!(
        publisher.flushes.load(Ordering::SeqCst) >= 1,
        "the publisher was flushed"
    );
    assert_eq!(
        publisher.publishes.load(Ordering::SeqCst),
        1,
        "no new claim after stop"
    );
    assert!(!worker.status().running);
}

#[tokio::test]
async fn stop_gives_up_after_its_timeout_and_leaves_the_events_in_the_outbox() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher.hang();
    for n in 0..4 {
        store.add(event("a", n));
    }
    let settings = fast().with_shutdown_timeout(Duration::from_millis(200));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    until("a batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;

    match worker.stop().await {
        Err(OutboxError::ShutdownTimedOut { unacknowledged, .. }) => assert_eq!(unacknowledged, 4),
        other => panic!("expected a shutdown timeout, got {other:?}"),
    }
    assert_eq!(
        store.pending(),
        4,
        "nothing acknowledged that Kafka did not acknowledge"
    );
}

#[tokio::test]
async fn a_standby_publishes_nothing_until_the_leadership_is_free() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let other_relay = store.handle();
    assert!(other_relay.acquire_leadership().await.unwrap());
    store.add(event("a", 0));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(publisher.delivered().is_empty());
    assert!(!worker.status().leader);
    assert_eq!(
        store.claims.load(Ordering::SeqCst),
        0,
        "a standby does not claim"
    );

    other_relay.release_leadership().await.unwrap();
    until("taken over", || publisher.delivered().len() == 1).await;
    assert!(worker.status().leader);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_relay_whose_session_dies_yields_to_the_standby() {
    let store = MemoryStore::new();
    let standby_store = store.handle();
    let publisher = MemoryPublisher::new();
    let active = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    active.start().unwrap();
    until("active leads", || active.status().leader).await;
    let standby = EventRelayWorker::new(standby_store.clone(), publisher.clone(), fast()).unwrap();
    standby.start().unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!standby.status().leader);

    store.revoke_leadership();
    until("the standby took over", || standby.status().leader).await;
    until("the old leader stepped down", || !active.status().leader).await;
    store.add(event("a", 0));
    until("delivered by the new leader", || {
        publisher.delivered().len() == 1
    })
    .await;
    assert_eq!(standby.status().relayed, 1);
    assert_eq!(active.status().relayed, 0);
    active.stop().await.unwrap();
    standby.stop().await.unwrap();
}

#[tokio::test]
async fn a_database_outage_is_survived_with_backoff() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    store.unavailable.store(true, Ordering::SeqCst);
    store.add(event("a", 0));
    let settings = fast().with_stats_interval(Duration::from_millis(200));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let calls = store.calls.load(Ordering::SeqCst);
    assert!(
        calls <= 25,
        "store calls are bounded while it is down ({calls})"
    );
    assert!(worker.status().last_error.is_some());

    store.unavailable.store(false, Ordering::SeqCst);
    until("delivered after the outage", || {
        publisher.delivered().len() == 1
    })
    .await;
    worker.stop().await.unwrap();
}

/// A wake-up whose events are not claimable yet (an older transaction still holds the commit
/// horizon) must not be lost until the next poll: the relay looks again after its shortest wait,
/// and finds them once the horizon moves, although that transaction's commit sends no wake-up.
#[tokio::test]
async fn a_wake_up_behind_a_held_horizon_is_not_lost_until_the_poll() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let settings = fast()
        .with_min_poll_interval(Duration::from_millis(10))
        .with_poll_interval(Duration::from_secs(60));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    // Idle long enough for the wait between polls to grow to 5 s (10 ms doubled 9 times).
    until("idle polls", || store.claims.load(Ordering::SeqCst) >= 10).await;

    let holder = store.reserve_id();
    store.add(event("a", 1));
    let claims = store.claims.load(Ordering::SeqCst);
    worker.notifier().notify();
    until("the woken claim", || {
        store.claims.load(Ordering::SeqCst) > claims
    })
    .await;
    assert!(publisher.delivered().is_empty(), "the horizon is held");

    // The holder commits without waking anyone (a writer that cannot notify, or a lost
    // notification): the relay's next look, not the 5 s poll, delivers both.
    store.add_reserved(holder, event("a", 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while publisher.delivered().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wake-up was lost: nothing delivered before the next poll (10 s away)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(payloads(&publisher), ["a:0", "a:1"]);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_notifier_wakes_an_idle_relay_at_once() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let settings = fast()
        .with_min_poll_interval(Duration::from_secs(30))
        .with_poll_interval(Duration::from_secs(30));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    until("first (empty) poll", || {
        store.claims.load(Ordering::SeqCst) >= 1
    })
    .await;

    store.add(event("a", 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        publisher.delivered().is_empty(),
        "without a wake-up it waits for the poll"
    );
    worker.notifier().notify();
    until("woken and delivered", || publisher.delivered().len() == 1).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn idle_polling_backs_off_to_the_poll_interval() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let settings = fast()
        .with_min_poll_interval(Duration::from_millis(5))
        .with_poll_interval(Duration::from_millis(100));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    worker.stop().await.unwrap();
    let claims = store.claims.load(Ordering::SeqCst);
    // 5, 10, 20, 40, 80 ms then every 100 ms: about 14 polls in a second, never hundreds.
    assert!(
        (5..=25).contains(&claims),
        "{claims} polls in one idle second"
    );
}

#[tokio::test]
async fn start_twice_is_refused_and_stop_twice_is_harmless() {
    let worker = EventRelayWorker::new(MemoryStore::new(), MemoryPublisher::new(), fast()).unwrap();
    worker.start().unwrap();
    assert!(matches!(worker.start(), Err(OutboxError::AlreadyRunning)));
    worker.stop().await.unwrap();
    worker.stop().await.unwrap();
    // And it starts again after a stop.
    worker.start().unwrap();
    assert!(worker.status().running);
    worker.stop().await.unwrap();
}

#[test]
fn invalid_settings_are_refused_at_construction() {
    let error = EventRelayWorker::new(
        MemoryStore::new(),
        MemoryPublisher::new(),
        RelaySettings::default().with_batch_size(0),
    )
    .unwrap_err();
    assert!(error.to_string().contains("batch_size"));
}

#[tokio::test]
async fn an_aborted_relay_resends_at_most_its_batch_with_the_same_event_ids() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    for n in 0..30 {
        store.add(event("a", n));
    }
    publisher.hang();
    let first = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    first.start().unwrap();
    until("a batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    // The broker acknowledges, but the relay dies before writing that back.
    publisher.release();
    first.abort();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let second = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    second.start().unwrap();
    until("all delivered", || store.pending() == 0).await;
    second.stop().await.unwrap();

    let ids = publisher.delivered_ids();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 30, "nothing lost");
    assert!(
        ids.len() - 30 <= 10,
        "duplicates bounded by one batch: {}",
        ids.len() - 30
    );
}

/// Reads a metric from the Prometheus text exposition: the sum over series whose labels include
/// `label` (all series when `None`), or `None` when no such series exists.
fn metric(handle: &PrometheusHandle, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let text = handle.render();
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        if let Some((k, v)) = label
            && !labels.split(',').any(|l| l == format!("{k}=\"{v}\""))
        {
            continue;
        }
        *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
    }
    found
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_report_the_backlog_relays_errors_and_dead_letters() {
    use outbox_core::metrics as m;
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);

    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    *publisher.max_payload.lock().unwrap() = Some(100);
    store.add(NewOutboxEvent::new("t", "x", "T", vec![0; 500]).with_topic("big"));
    publisher.set_down(true);
    for n in 0..3 {
        store.add(event("a", n));
    }
    let worker = EventRelayWorker::new(
        store.clone(),
        publisher.clone(),
        fast().with_max_attempts(1),
    )
    .unwrap();
    worker.start().unwrap();
    until("backlog measured", || {
        metric(&handle, m::EVENTS_PENDING, None).is_some_and(|v| v > 0.0)
    })
    .await;
    until("transient errors counted", || {
        metric(&handle, m::RELAY_ERRORS_TOTAL, Some(("kind", "transient"))).is_some()
    })
    .await;
    publisher.set_down(false);
    until("relayed", || {
        metric(&handle, m::EVENTS_RELAYED_TOTAL, Some(("topic", "things"))) == Some(3.0)
    })
    .await;
    until("pending gauge back to zero", || {
        metric(&handle, m::EVENTS_PENDING, None) == Some(0.0)
    })
    .await;
    worker.stop().await.unwrap();

    assert_eq!(
        metric(&handle, m::RELAY_ERRORS_TOTAL, Some(("kind", "permanent"))),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &handle,
            m::EVENTS_DEAD_LETTERED_TOTAL,
            Some(("topic", "big"))
        ),
        Some(1.0)
    );
    assert_eq!(metric(&handle, m::EVENTS_DEAD_LETTERED, None), Some(1.0));
    assert_eq!(
        metric(&handle, m::RELAY_LEADER, None),
        Some(0.0),
        "0 once stopped"
    );
    assert!(metric(&handle, m::RELAY_LAST_POLL_TIMESTAMP_SECONDS, None).unwrap() > 1.7e9);
    assert!(metric(&handle, m::OLDEST_PENDING_AGE_SECONDS, None).is_some());
    for histogram in [m::PUBLISH_LAG_SECONDS, m::RELAY_BATCH_DURATION_SECONDS] {
        assert!(
            metric(&handle, &format!("{histogram}_count"), None).unwrap_or_default() >= 1.0,
            "{histogram} was never recorded"
        );
    }
}

#[tokio::test]
async fn the_worker_shows_its_settings_and_takes_a_notifier_made_before_it() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let notifier = outbox_core::RelayNotifier::new();
    let settings = fast()
        .with_min_poll_interval(Duration::from_secs(30))
        .with_poll_interval(Duration::from_secs(30));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings)
        .unwrap()
        .with_notifier(notifier.clone());
    assert_eq!(worker.settings().poll_interval, Duration::from_secs(30));
    assert!(format!("{worker:?}").contains("EventRelayWorker"));
    worker.start().unwrap();
    until("first poll", || store.claims.load(Ordering::SeqCst) >= 1).await;
    store.add(event("a", 0));
    notifier.notify();
    until("woken through the early notifier", || {
        publisher.delivered().len() == 1
    })
    .await;
    store.add(event("a", 1));
    worker.notifier().notify();
    until("woken through the worker's own notifier", || {
        publisher.delivered().len() == 2
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_a_running_worker_stops_it_and_frees_the_leadership() {
    let store = MemoryStore::new();
    let other = store.handle();
    let worker = EventRelayWorker::new(store.clone(), MemoryPublisher::new(), fast()).unwrap();
    worker.start().unwrap();
    until("leading", || worker.status().leader).await;
    drop(worker);
    let mut freed = false;
    for _ in 0..200 {
        if other.acquire_leadership().await.unwrap() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        freed,
        "the dropped worker released the leadership on its way out"
    );
}

#[tokio::test]
async fn stop_gives_up_on_a_publisher_that_ignores_the_abort() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher.get_stuck();
    store.add(event("a", 0));
    let settings = fast().with_shutdown_timeout(Duration::from_millis(100));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    until("a batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    let started = std::time::Instant::now();
    assert!(matches!(
        worker.stop().await,
        Err(OutboxError::ShutdownTimedOut {
            unacknowledged: 1,
            ..
        })
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(store.pending(), 1);
}

#[tokio::test]
async fn a_relay_that_loses_its_session_mid_batch_leaves_the_batch_to_the_new_leader() {
    let store = MemoryStore::new();
    let standby = store.handle();
    let publisher = MemoryPublisher::new();
    for n in 0..3 {
        store.add(event("a", n));
    }
    publisher.hang();
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("a batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    // The session dies while Kafka has the batch; a standby takes the lock at once.
    store.revoke_leadership();
    assert!(standby.acquire_leadership().await.unwrap());
    publisher.release();
    until("the old leader stepped down", || {
        publisher.delivered().len() == 3 && !worker.status().leader
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        store.pending(),
        3,
        "it could not acknowledge: the new leader sends them again"
    );
    standby.release_leadership().await.unwrap();
    until("sent again", || store.pending() == 0).await;
    worker.stop().await.unwrap();
    assert_eq!(
        publisher.delivered().len(),
        6,
        "one batch of duplicates, same event ids"
    );
    let ids = publisher.delivered_ids();
    assert_eq!(ids[..3], ids[3..]);
}

#[tokio::test]
async fn a_failed_acknowledgement_is_retried_before_anything_is_claimed_again() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    for n in 0..5 {
        store.add(event("a", n));
    }
    store.failing_acks.store(2, Ordering::SeqCst);
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("acknowledged in the end", || store.pending() == 0).await;
    worker.stop().await.unwrap();
    assert_eq!(
        publisher.delivered().len(),
        5,
        "no duplicates: nothing was claimed twice"
    );
    assert_eq!(publisher.publishes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stop_reports_a_batch_it_could_not_acknowledge() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    for n in 0..4 {
        store.add(event("a", n));
    }
    publisher.hang();
    store.failing_acks.store(1000, Ordering::SeqCst);
    let worker = Arc::new(EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap());
    worker.start().unwrap();
    until("a batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    let stopping = tokio::spawn({
        let worker = worker.clone();
        async move { worker.stop().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    publisher.release();
    match stopping.await.unwrap() {
        Err(OutboxError::ShutdownTimedOut { unacknowledged, .. }) => assert_eq!(unacknowledged, 4),
        other => panic!("expected the unacknowledged batch to be reported, got {other:?}"),
    }
    assert_eq!(store.pending(), 4, "the events stay for the next relay");
}

#[tokio::test]
async fn stop_reports_a_publisher_that_does_not_flush_and_survives_a_failed_release() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher.failing_flush.store(true, Ordering::SeqCst);
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("leading", || worker.status().leader).await;
    store.unavailable.store(true, Ordering::SeqCst);
    assert!(matches!(worker.stop().await, Err(OutboxError::Publish(_))));
    assert!(!worker.status().running);
}

#[tokio::test]
async fn a_publisher_that_returns_too_few_results_leaves_the_rest_pending() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher.missing_results.store(1, Ordering::SeqCst);
    for n in 0..3 {
        store.add(event("a", n));
    }
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("the first batch", || {
        publisher.publishes.load(Ordering::SeqCst) >= 1
    })
    .await;
    until("its error recorded", || {
        worker
            .status()
            .last_error
            .is_some_and(|e| e.contains("no result"))
    })
    .await;
    publisher.missing_results.store(0, Ordering::SeqCst);
    until("everything delivered", || store.pending() == 0).await;
    worker.stop().await.unwrap();
    assert_eq!(payloads(&publisher), ["a:0", "a:1", "a:2"]);
}

#[tokio::test]
async fn an_event_refused_after_sending_does_not_hold_back_what_was_already_sent() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher
        .rejected_types
        .lock()
        .unwrap()
        .push("Refused".into());
    let refused =
        store.add(NewOutboxEvent::new("t", "k", "Refused", b"x".to_vec()).with_topic("things"));
    store.add(NewOutboxEvent::new("t", "k", "Fine", b"y".to_vec()).with_topic("things"));
    let worker = EventRelayWorker::new(
        store.clone(),
        publisher.clone(),
        fast().with_max_attempts(1),
    )
    .unwrap();
    worker.start().unwrap();
    until("the refused one parked", || {
        store
            .row(refused)
            .is_some_and(|r| r.dead_lettered_at.is_some())
    })
    .await;
    until("the other delivered", || publisher.delivered().len() == 1).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn cleanup_deletes_in_bounded_batches_and_survives_a_database_blip() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    for n in 0..5 {
        store.add(event(&format!("k{n}"), n));
    }
    let settings = fast()
        .with_retention(Some(Duration::from_millis(50)))
        .with_cleanup_batch_size(2)
        .with_cleanup_interval(Duration::from_millis(20))
        .with_stats_interval(Duration::from_millis(20));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings)
        .unwrap()
        .with_cleanup(store.clone());
    worker.start().unwrap();
    until("published", || store.pending() == 0).await;
    store.unavailable.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.unavailable.store(false, Ordering::SeqCst);
    until("cleaned up", || store.rows().is_empty()).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_claim_that_fails_while_leading_backs_off_and_recovers() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("leading", || worker.status().leader).await;
    store.unavailable.store(true, Ordering::SeqCst);
    until("the failure seen", || worker.status().last_error.is_some()).await;
    assert!(
        worker.status().leader,
        "a database error is not a lost session"
    );
    store.unavailable.store(false, Ordering::SeqCst);
    store.add(event("a", 0));
    until("delivered", || publisher.delivered().len() == 1).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_delivered_before_the_ones_that_began_after_it() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    // A transaction took its id (and holds the commit horizon) before all of these.
    let late = store.reserve_id();
    for n in 0..40 {
        store.add(event(&format!("k{}", n % 4), n));
    }
    let worker =
        EventRelayWorker::new(store.clone(), publisher.clone(), fast().with_batch_size(4)).unwrap();
    worker.start().unwrap();
    until("the relay polled several times", || {
        store.claims.load(Ordering::SeqCst) >= 5
    })
    .await;
    assert_eq!(
        publisher.delivered().len(),
        0,
        "everything waits for the open one"
    );
    store.add_reserved(late, event("k0", 99));
    until("everything relayed", || publisher.delivered().len() == 41).await;
    assert!(
        store.claims_after.load(Ordering::SeqCst) >= 5,
        "full batches were claimed after the previous one"
    );
    worker.stop().await.unwrap();
    let delivered = payloads(&publisher);
    assert_eq!(delivered[0], "k0:99", "the earlier transaction first");
    let k0: Vec<&str> = delivered
        .iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("k0:"))
        .collect();
    assert_eq!(k0[..3], ["k0:99", "k0:0", "k0:4"]);
}

#[tokio::test]
async fn the_next_batch_is_claimed_while_one_is_sent_but_never_sent_before_its_ack() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    for n in 0..6 {
        store.add(event("a", n));
    }
    publisher.hang();
    let worker =
        EventRelayWorker::new(store.clone(), publisher.clone(), fast().with_batch_size(3)).unwrap();
    worker.start().unwrap();
    until("the first batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    until("the second claimed meanwhile", || {
        store.claims.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(store.pending(), 6, "nothing acknowledged yet");
    assert_eq!(
        publisher.publishes.load(Ordering::SeqCst),
        1,
        "the second waits for the ack"
    );
    publisher.release();
    until("both delivered", || store.pending() == 0).await;
    worker.stop().await.unwrap();
    assert_eq!(
        payloads(&publisher),
        ["a:0", "a:1", "a:2", "a:3", "a:4", "a:5"]
    );
}

#[tokio::test]
async fn stop_acknowledges_a_batch_whose_acknowledgement_failed_once() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    for n in 0..3 {
        store.add(event("a", n));
    }
    publisher.hang();
    store.failing_acks.store(1, Ordering::SeqCst);
    let settings = fast().with_transient_backoff_base(Duration::from_millis(50));
    let worker =
        Arc::new(EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap());
    worker.start().unwrap();
    until("a batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    let stopping = tokio::spawn({
        let worker = worker.clone();
        async move { worker.stop().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    publisher.release();
    stopping.await.unwrap().unwrap();
    assert_eq!(store.pending(), 0, "acknowledged on the way out");
    assert_eq!(publisher.delivered().len(), 3);
}

#[tokio::test]
async fn events_behind_a_retrying_event_are_parked_and_follow_it_in_order() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    // Refused before sending (too large for now), so nothing behind it is sent either.
    *publisher.max_payload.lock().unwrap() = Some(100);
    let mut big = b"a:bad".to_vec();
    big.resize(1000, b' ');
    let bad = store.add(NewOutboxEvent::new("thing", "a", "Bad", big).with_topic("things"));
    let mut behind = Vec::new();
    for n in 0..10 {
        behind.push(store.add(event("a", n)));
    }
    for n in 0..3 {
        store.add(event("b", n));
    }
    let settings = fast()
        .with_batch_size(4)
        .with_max_attempts(100)
        .with_retry_backoff_base(Duration::from_millis(100))
        .with_retry_backoff_max(Duration::from_millis(100));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    until("b delivered and a parked behind its failing event", || {
        payloads(&publisher) == ["b:0", "b:1", "b:2"]
            && behind
                .iter()
                .all(|id| store.row(*id).is_some_and(|r| r.next_attempt_at.is_some()))
    })
    .await;
    assert!(
        behind
            .iter()
            .all(|id| store.row(*id).unwrap().event.attempts == 0),
        "waiting is not an attempt"
    );
    assert!(store.row(bad).unwrap().event.attempts >= 1);
    *publisher.max_payload.lock().unwrap() = None;
    until("a delivered", || publisher.delivered().len() == 14).await;
    worker.stop().await.unwrap();
    let a: Vec<String> = payloads(&publisher)
        .into_iter()
        .filter(|p| p.starts_with("a:"))
        .map(|p| p.trim_end().to_owned())
        .collect();
    let mut expected = vec!["a:bad".to_owned()];
    expected.extend((0..10).map(|n| format!("a:{n}")));
    assert_eq!(a, expected);
}

#[tokio::test]
async fn a_horizon_held_too_long_is_reported_with_the_wait() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let open = store.reserve_id();
    store.add(event("a", 1));
    let settings = fast().with_horizon_warn_after(Duration::from_millis(30));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    until("the wait is measured past the warning", || {
        worker
            .status()
            .stats
            .and_then(|s| s.horizon_wait)
            .is_some_and(|w| w >= Duration::from_millis(30))
    })
    .await;
    assert!(publisher.delivered().is_empty(), "it keeps waiting");
    store.add_reserved(open, event("a", 0));
    until("both delivered", || publisher.delivered().len() == 2).await;
    worker.stop().await.unwrap();
    assert_eq!(payloads(&publisher), ["a:0", "a:1"]);
}

/// The store, noting each claim (its limit and what it returned) and each acknowledgement in
/// order; its acknowledgements can be made to hang (a database that stopped answering).
struct Recorded {
    inner: Arc<MemoryStore>,
    log: std::sync::Mutex<Vec<String>>,
    payloads: std::sync::Mutex<std::collections::HashMap<i64, String>>,
    hang_acks: std::sync::atomic::AtomicBool,
    /// Claims made so far, empty ones included.
    claims: AtomicUsize,
    /// The claim with this number (from 1) fails with a database error.
    fail_claim: AtomicUsize,
    /// Once this many claims were made, the next leadership check fails (the database
    /// unreachable) or finds another relay leading, once.
    fail_lead_after: AtomicUsize,
    lose_lead_after: AtomicUsize,
}

impl Recorded {
    fn new(inner: Arc<MemoryStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            log: Default::default(),
            payloads: Default::default(),
            hang_acks: Default::default(),
            claims: Default::default(),
            fail_claim: Default::default(),
            fail_lead_after: Default::default(),
            lose_lead_after: Default::default(),
        })
    }

    /// Whether the `after` switch is due now: set, and reached by the claims made; it resets.
    fn due(&self, after: &AtomicUsize) -> bool {
        let n = after.load(Ordering::SeqCst);
        n > 0 && self.claims.load(Ordering::SeqCst) >= n && after.swap(0, Ordering::SeqCst) > 0
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl RelayStore for Recorded {
    async fn acquire_leadership(&self) -> Result<bool, OutboxError> {
        if self.due(&self.fail_lead_after) {
            return Err(OutboxError::database(std::io::Error::other(
                "connection refused",
            )));
        }
        if self.due(&self.lose_lead_after) {
            return Ok(false);
        }
        self.inner.acquire_leadership().await
    }

    async fn release_leadership(&self) -> Result<(), OutboxError> {
        self.inner.release_leadership().await
    }

    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<outbox_core::ClaimCursor>,
    ) -> Result<outbox_core::ClaimedBatch, OutboxError> {
        let n = self.claims.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_claim.load(Ordering::SeqCst) == n {
            return Err(OutboxError::database(std::io::Error::other("claim failed")));
        }
        let batch = self.inner.claim_batch(limit, after).await?;
        if !batch.events.is_empty() {
            let mut payloads = self.payloads.lock().unwrap();
            let mut line = format!("claim {limit}:");
            for event in &batch.events {
                let payload = String::from_utf8(event.payload.clone()).unwrap();
                line.push(' ');
                line.push_str(&payload);
                payloads.insert(event.id, payload);
            }
            self.log.lock().unwrap().push(line);
        }
        Ok(batch)
    }

    async fn acknowledge(&self, ids: &[i64], keep: bool) -> Result<u64, OutboxError> {
        while self.hang_acks.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let line = {
            let payloads = self.payloads.lock().unwrap();
            let named: Vec<&str> = ids.iter().map(|id| payloads[id].as_str()).collect();
            format!("ack {}", named.join(" "))
        };
        self.log.lock().unwrap().push(line);
        self.inner.acknowledge(ids, keep).await
    }

    async fn record_failures(
        &self,
        failures: &[outbox_core::AttemptFailure],
    ) -> Result<(), OutboxError> {
        self.inner.record_failures(failures).await
    }

    async fn stats(&self) -> Result<outbox_core::OutboxStats, OutboxError> {
        self.inner.stats().await
    }
}

#[tokio::test]
async fn a_clean_batch_is_written_back_while_the_next_is_sent_within_one_batch_size() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let recorded = Recorded::new(store.clone());
    store.add(event("a", 0));
    publisher.hang();
    let worker = EventRelayWorker::new(
        recorded.clone(),
        publisher.clone(),
        fast().with_batch_size(3),
    )
    .unwrap();
    worker.start().unwrap();
    until("the first batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    for n in 1..=4 {
        store.add(event("a", n));
    }
    publisher.release();
    until("all delivered", || store.pending() == 0).await;
    worker.stop().await.unwrap();

    assert_eq!(payloads(&publisher), ["a:0", "a:1", "a:2", "a:3", "a:4"]);
    let log = recorded.log();
    assert_eq!(log[0], "claim 3: a:0", "{log:?}");
    // Right after Kafka acknowledged a:0, what committed meanwhile is claimed, only as much as
    // fits beside a:0 in one batch, and sent while a:0 is written back.
    assert_eq!(log[1], "claim 2: a:1 a:2", "{log:?}");
    let first_ack = log.iter().position(|l| l == "ack a:0");
    assert!(first_ack > Some(1), "{log:?}");
    assert!(log.contains(&"ack a:1 a:2".to_owned()), "{log:?}");
    assert!(log.contains(&"ack a:3 a:4".to_owned()), "{log:?}");
}

#[tokio::test]
async fn a_relay_killed_beside_a_carried_write_back_resends_at_most_one_batch_size() {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let recorded = Recorded::new(store.clone());
    store.add(event("a", 0));
    publisher.hang();
    let settings = fast().with_batch_size(3);
    let first =
        EventRelayWorker::new(recorded.clone(), publisher.clone(), settings.clone()).unwrap();
    first.start().unwrap();
    until("the first batch in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    for n in 1..=5 {
        store.add(event("a", n));
    }
    // The database stops answering acknowledgements: a:0's write-back hangs beside the send of
    // the next batch, which Kafka acknowledges; then the relay dies.
    recorded.hang_acks.store(true, Ordering::SeqCst);
    publisher.release();
    until("the next batch sent", || {
        publisher.publishes.load(Ordering::SeqCst) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    first.abort();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let second = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    second.start().unwrap();
    until("all delivered", || store.pending() == 0).await;
    second.stop().await.unwrap();

    let delivered = payloads(&publisher);
    let unique: std::collections::BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(unique.len(), 6, "nothing lost: {delivered:?}");
    assert_eq!(
        delivered,
        [
            "a:0", "a:1", "a:2", "a:0", "a:1", "a:2", "a:3", "a:4", "a:5"
        ],
        "the duplicates are at most one batch size (3), in order"
    );
}

/// a:0 in flight on a hanging broker; a:1 and a:2 committed meanwhile; `recorded` set up by
/// `arrange`; then the broker acknowledges, and the relay claims a:1 and a:2 at once (claim 2)
/// to send them beside a:0's write-back. Returns when everything is delivered.
async fn after_a_carry(
    arrange: impl FnOnce(&Recorded, &MemoryStore),
) -> (Arc<Recorded>, Arc<MemoryPublisher>) {
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let recorded = Recorded::new(store.clone());
    store.add(event("a", 0));
    publisher.hang();
    let worker = EventRelayWorker::new(recorded.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("a:0 in flight", || {
        publisher.publishes.load(Ordering::SeqCst) == 1
    })
    .await;
    store.add(event("a", 1));
    store.add(event("a", 2));
    arrange(&recorded, &store);
    publisher.release();
    until("all delivered", || store.pending() == 0).await;
    worker.stop().await.unwrap();
    (recorded, publisher)
}

#[tokio::test]
async fn a_carried_write_back_that_fails_is_written_with_the_next_batch() {
    let (recorded, publisher) = after_a_carry(|_, store| {
        store.failing_acks.store(1, Ordering::SeqCst);
    })
    .await;
    assert_eq!(payloads(&publisher), ["a:0", "a:1", "a:2"], "no duplicate");
    let log = recorded.log();
    assert!(log.contains(&"ack a:0 a:1 a:2".to_owned()), "{log:?}");
}

#[tokio::test]
async fn a_claim_that_fails_right_after_a_batch_leaves_the_usual_write_back() {
    let (recorded, publisher) = after_a_carry(|recorded, _| {
        recorded.fail_claim.store(2, Ordering::SeqCst);
    })
    .await;
    assert_eq!(payloads(&publisher), ["a:0", "a:1", "a:2"]);
    let log = recorded.log();
    assert_eq!(
        log[..3],
        ["claim 10: a:0", "ack a:0", "claim 10: a:1 a:2"],
        "{log:?}"
    );
}

#[tokio::test]
async fn a_failed_leadership_check_after_a_carry_writes_it_back_before_claiming_again() {
    let (recorded, publisher) = after_a_carry(|recorded, _| {
        recorded.fail_lead_after.store(2, Ordering::SeqCst);
    })
    .await;
    assert_eq!(payloads(&publisher), ["a:0", "a:1", "a:2"], "no duplicate");
    let log = recorded.log();
    assert_eq!(
        log[..4],
        [
            "claim 10: a:0",
            "claim 9: a:1 a:2",
            "ack a:0",
            "claim 10: a:1 a:2"
        ],
        "{log:?}"
    );
}

#[tokio::test]
async fn a_leadership_lost_after_a_carry_leaves_the_unacknowledged_batch_to_the_next_leader() {
    let (recorded, publisher) = after_a_carry(|recorded, _| {
        recorded.lose_lead_after.store(2, Ordering::SeqCst);
    })
    .await;
    assert_eq!(
        payloads(&publisher),
        ["a:0", "a:0", "a:1", "a:2"],
        "a:0 was sent but never acknowledged: the next leader sends it again"
    );
    let log = recorded.log();
    assert_eq!(
        log[..3],
        ["claim 10: a:0", "claim 9: a:1 a:2", "claim 10: a:0 a:1 a:2"],
        "{log:?}"
    );
}
