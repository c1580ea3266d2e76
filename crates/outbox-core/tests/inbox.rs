//! The inbox worker over the in-memory doubles: duplicates, transient and permanent failures,
//! revocations, graceful stop, replay, cleanup. The in-memory store itself passes the inbox
//! conformance suite here, as the PostgreSQL one does in `outbox-seaorm`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::conformance::inbox::MemoryInboxTarget;
use outbox_core::testing::{MemoryInboxStore, MemoryInboxTransaction, MemorySource};
use outbox_core::{
    Handled, HandlerError, InboxHandler, InboxMessage, InboxSettings, InboxStore, InboxWorker,
    MessagePosition, OutboxError, Replayed, SourceError,
};
use tokio::sync::Notify;
use uuid::Uuid;

outbox_core::inbox_store_conformance!(MemoryInboxTarget::new());

const TOPIC: &str = "things";

/// What the test handler does with a payload.
#[derive(Clone)]
enum Rule {
    Transient,
    Permanent,
    /// Waits for the notify before applying.
    Block(Arc<Notify>),
    Outcome(&'static str),
    Panic,
}

/// Stages `consumer:payload` as its effect, then follows the rule for the payload, if any.
#[derive(Default)]
struct Recorder {
    rules: Mutex<HashMap<String, Rule>>,
    calls: Mutex<HashMap<String, u32>>,
    entered: AtomicBool,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn rule(&self, payload: &str, rule: Rule) {
        self.rules.lock().unwrap().insert(payload.into(), rule);
    }

    fn clear(&self, payload: &str) {
        self.rules.lock().unwrap().remove(payload);
    }

    fn calls(&self, payload: &str) -> u32 {
        self.calls
            .lock()
            .unwrap()
            .get(payload)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl InboxHandler<MemoryInboxTransaction> for Recorder {
    async fn handle(
        &self,
        txn: &MemoryInboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let payload = String::from_utf8(message.payload.clone().unwrap_or_default()).unwrap();
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(payload.clone()).or_default();
            *n += 1;
            *n
        };
        txn.effect(payload.clone());
        let rule = self.rules.lock().unwrap().get(&payload).cloned();
        match rule {
            None => Ok(Handled::applied()),
            Some(Rule::Transient) => Err(HandlerError::transient(format!(
                "{payload} not yet (call {calls})"
            ))),
            Some(Rule::Permanent) => Err(HandlerError::permanent(format!(
                "{payload} refused (call {calls})"
            ))),
            Some(Rule::Block(gate)) => {
                self.entered.store(true, Ordering::SeqCst);
                gate.notified().await;
                Ok(Handled::applied())
            }
            Some(Rule::Outcome(outcome)) => Ok(Handled::outcome(outcome)),
            Some(Rule::Panic) => panic!("{payload} broke the handler"),
        }
    }
}

type Worker = InboxWorker<MemoryInboxStore, MemorySource>;

fn settings() -> InboxSettings {
    InboxSettings::default()
        .with_transient_backoff_base(Duration::from_millis(1))
        .with_transient_backoff_max(Duration::from_millis(10))
        .with_shutdown_timeout(Duration::from_secs(10))
}

fn setup() -> (
    Arc<MemoryInboxStore>,
    Arc<MemorySource>,
    Arc<Recorder>,
    Worker,
) {
    setup_with(settings())
}

fn setup_with(
    settings: InboxSettings,
) -> (
    Arc<MemoryInboxStore>,
    Arc<MemorySource>,
    Arc<Recorder>,
    Worker,
) {
    let store = MemoryInboxStore::new();
    let source = MemorySource::new();
    let handler = Recorder::new();
    let worker = InboxWorker::new(store.clone(), source.clone(), settings)
        .unwrap()
        .handler("things", [TOPIC], handler.clone())
        .unwrap();
    (store, source, handler, worker)
}

/// Sends `payload` on `partition` with a new event id (or `id`), returning the id.
fn send(source: &MemorySource, partition: i32, payload: &str, id: Option<Uuid>) -> Uuid {
    let id = id.unwrap_or_else(Uuid::now_v7);
    source.send(
        TOPIC,
        partition,
        vec![("event_id".into(), id.to_string().into_bytes())],
        payload.as_bytes(),
    );
    id
}

/// Waits until `done` holds (bounded, so a broken worker fails the test instead of hanging it).
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting for: {what}");
}

#[tokio::test]
async fn duplicates_are_applied_once_and_their_offsets_committed() {
    let (store, source, _, worker) = setup();
    let a = send(&source, 0, "a", None);
    let b = send(&source, 0, "b", None);
    send(&source, 0, "a", Some(a));
    worker.start().unwrap();
    until("3 committed", || source.committed(TOPIC, 0) == Some(3)).await;
    assert_eq!(store.effects(), ["a", "b"]);

    // Across batches too: b again, in a batch of its own.
    send(&source, 0, "b", Some(b));
    until("4 committed", || source.committed(TOPIC, 0) == Some(4)).await;
    worker.stop().await.unwrap();
    assert_eq!(store.effects(), ["a", "b"]);
    let status = worker.status();
    assert_eq!((status.consumed, status.duplicates), (2, 2));
    assert!(!status.running);
    assert!(status.last_message_at.is_some());
}

#[tokio::test]
async fn a_transient_error_is_retried_in_place_without_moving_the_offset() {
    let (store, source, handler, worker) = setup();
    handler.rule("m2", Rule::Transient);
    for n in 0..5 {
        send(&source, 0, &format!("m{n}"), None);
    }
    worker.start().unwrap();
    until("m2 retried", || handler.calls("m2") >= 4).await;
    assert_eq!(
        source.committed(TOPIC, 0),
        None,
        "no offset is committed past the message that waits"
    );
    assert_eq!(store.effects(), ["m0", "m1"], "nothing after m2 is applied");
    assert_eq!(handler.calls("m3"), 0, "nothing after m2 ran");
    assert!(worker.status().last_error.unwrap().contains("m2 not yet"));

    handler.clear("m2");
    until("5 committed", || source.committed(TOPIC, 0) == Some(5)).await;
    worker.stop().await.unwrap();
    assert_eq!(
        store.effects(),
        ["m0", "m1", "m2", "m3", "m4"],
        "in order, once each"
    );
    assert_eq!(worker.status().rejected, 0);
}

#[tokio::test]
async fn a_permanent_error_rejects_the_message_and_its_partition_goes_on() {
    let (store, source, handler, worker) = setup();
    handler.rule("m1", Rule::Permanent);
    let ids: Vec<Uuid> = (0..4)
        .map(|n| send(&source, 0, &format!("m{n}"), None))
        .collect();
    send(&source, 1, "n0", None);
    worker.start().unwrap();
    until("both partitions committed", || {
        source.committed(TOPIC, 0) == Some(4) && source.committed(TOPIC, 1) == Some(1)
    })
    .await;
    worker.stop().await.unwrap();
    // m0 applied once although its first batch was rolled back with m1's staged effect.
    assert_eq!(store.effects(), ["m0", "m2", "m3", "n0"]);
    let rejected = store.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].entry.event_id, ids[1]);
    assert_eq!(rejected[0].entry.consumer, "things");
    assert_eq!(rejected[0].message.payload.as_deref(), Some(&b"m1"[..]));
    assert!(
        rejected[0].error.contains("m1 refused"),
        "{}",
        rejected[0].error
    );
    let status = worker.status();
    assert_eq!((status.consumed, status.rejected), (4, 1));
}

/// A handler that panics rejects its message like a permanent error; the worker, its other
/// partitions and the later messages go on.
#[tokio::test]
async fn a_panicking_handler_rejects_its_message_and_the_worker_goes_on() {
    let (store, source, handler, worker) = setup();
    handler.rule("m1", Rule::Panic);
    for n in 0..3 {
        send(&source, 0, &format!("m{n}"), None);
    }
    worker.start().unwrap();
    until("the partition committed", || {
        source.committed(TOPIC, 0) == Some(3)
    })
    .await;
    assert!(worker.status().running);
    worker.stop().await.unwrap();
    assert_eq!(store.effects(), ["m0", "m2"]);
    let rejected = store.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].error.contains("panicked: m1 broke the handler"),
        "{}",
        rejected[0].error
    );
}

/// A message whose headers the source could not read is rejected, even with a usable id in its
/// payload: its `event_id` header cannot be trusted.
#[tokio::test]
async fn a_message_with_unreadable_headers_is_rejected() {
    let (store, source, handler, worker) = setup();
    let id = Uuid::now_v7();
    source.send(
        TOPIC,
        0,
        vec![(outbox_core::UNREADABLE_HEADERS.into(), Vec::new())],
        format!(r#"{{"event_id":"{id}"}}"#).as_bytes(),
    );
    send(&source, 0, "after", None);
    worker.start().unwrap();
    until("the partition committed", || {
        source.committed(TOPIC, 0) == Some(2)
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(store.effects(), ["after"]);
    assert_eq!(handler.calls("after"), 1);
    let rejected = store.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].error.contains("cannot be read"),
        "{}",
        rejected[0].error
    );
}

#[tokio::test]
async fn messages_without_an_id_or_a_handler_are_rejected_without_running_one() {
    let (store, source, handler, worker) = setup();
    source.send(TOPIC, 0, vec![], b"junk");
    send(&source, 0, "good", None);
    source.send(
        "nobody.handles",
        0,
        vec![("event_id".into(), Uuid::now_v7().to_string().into_bytes())],
        b"stray",
    );
    worker.start().unwrap();
    until("all committed", || {
        source.committed(TOPIC, 0) == Some(2) && source.committed("nobody.handles", 0) == Some(1)
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(handler.calls("junk"), 0);
    assert_eq!(store.effects(), ["good"]);
    let rejected = store.rejected(None, 10).await.unwrap();
    let junk = rejected
        .iter()
        .find(|r| r.entry.consumer == "things")
        .unwrap();
    let probe = InboxMessage {
        topic: TOPIC.into(),
        partition: 0,
        offset: 0,
        ..InboxMessage::default()
    };
    assert_eq!(
        junk.entry.event_id,
        probe.position_id(),
        "a deterministic id"
    );
    assert!(junk.error.contains("things/0@0"), "{}", junk.error);
    let stray = rejected
        .iter()
        .find(|r| r.entry.consumer == outbox_core::inbox::UNROUTED_CONSUMER)
        .unwrap();
    assert!(stray.error.contains("nobody.handles"), "{}", stray.error);
    assert_eq!(worker.status().rejected, 2);
}

#[tokio::test]
async fn a_failed_store_commit_applies_the_batch_again_one_by_one() {
    let (store, source, _, worker) = setup();
    store.fail_commits(2);
    for n in 0..3 {
        send(&source, 0, &format!("m{n}"), None);
    }
    worker.start().unwrap();
    until("3 committed", || source.committed(TOPIC, 0) == Some(3)).await;
    worker.stop().await.unwrap();
    assert_eq!(store.effects(), ["m0", "m1", "m2"]);
}

#[tokio::test]
async fn an_unavailable_store_or_broker_is_waited_for_and_nothing_is_lost() {
    let (store, source, _, worker) = setup();
    store.set_unavailable(true);
    source.fail_next_poll(SourceError::Transient("broker down".into()));
    send(&source, 0, "m0", None);
    send(&source, 0, "m1", None);
    worker.start().unwrap();
    until("the store error is seen", || {
        worker
            .status()
            .last_error
            .is_some_and(|e| e.contains("unavailable"))
    })
    .await;
    assert_eq!(source.committed(TOPIC, 0), None);
    store.set_unavailable(false);
    source.fail_next_commit(SourceError::Transient("coordinator moving".into()));
    until("2 committed", || source.committed(TOPIC, 0) == Some(2)).await;
    worker.stop().await.unwrap();
    assert_eq!(store.effects(), ["m0", "m1"]);
}

#[tokio::test]
async fn a_revoked_commit_forgets_the_batch_and_redelivery_applies_nothing_twice() {
    let (store, source, _, worker) = setup();
    source.fail_next_commit(SourceError::Revoked("rebalance".into()));
    for n in 0..3 {
        send(&source, 0, &format!("m{n}"), None);
    }
    worker.start().unwrap();
    until("3 committed", || source.committed(TOPIC, 0) == Some(3)).await;
    worker.stop().await.unwrap();
    assert_eq!(store.effects(), ["m0", "m1", "m2"]);
    assert_eq!(source.delivered(), 6, "the batch was delivered again");
    assert_eq!(worker.status().duplicates, 3);
}

#[tokio::test]
async fn a_graceful_stop_finishes_the_batch_in_flight() {
    let (store, source, handler, worker) = setup();
    let gate = Arc::new(Notify::new());
    handler.rule("m2", Rule::Block(gate.clone()));
    for n in 0..5 {
        send(&source, 0, &format!("m{n}"), None);
    }
    worker.start().unwrap();
    until("m2 in its handler", || {
        handler.entered.load(Ordering::SeqCst)
    })
    .await;
    let (stopped, ()) = tokio::join!(worker.stop(), async {
        // Let the stop be requested while m2's handler runs.
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
    });
    stopped.unwrap();
    assert_eq!(
        source.committed(TOPIC, 0),
        Some(5),
        "the whole batch is committed"
    );
    assert_eq!(store.effects(), ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn a_stop_during_retries_commits_what_is_done_and_rewinds_the_rest() {
    let (store, source, handler, worker) = setup();
    handler.rule("m2", Rule::Transient);
    for n in 0..5 {
        send(&source, 0, &format!("m{n}"), None);
    }
    worker.start().unwrap();
    until("m2 retried", || handler.calls("m2") >= 3).await;
    worker.stop().await.unwrap();
    assert_eq!(source.committed(TOPIC, 0), Some(2), "m0 and m1 are done");
    assert_eq!(
        source.rewinds(),
        [MessagePosition {
            topic: TOPIC.into(),
            partition: 0,
            offset: 2
        }]
    );
    assert_eq!(source.position(TOPIC, 0), 2, "m2 comes again");

    handler.clear("m2");
    worker.start().unwrap();
    until("5 committed", || source.committed(TOPIC, 0) == Some(5)).await;
    worker.stop().await.unwrap();
    assert_eq!(store.effects(), ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn an_operator_replays_a_rejected_message_once_its_cause_is_fixed() {
    let (store, source, handler, worker) = setup();
    handler.rule("m1", Rule::Permanent);
    send(&source, 0, "m0", None);
    let id = send(&source, 0, "m1", None);
    send(&source, 0, "m2", None);
    worker.start().unwrap();
    until("3 committed", || source.committed(TOPIC, 0) == Some(3)).await;

    // Still broken: it stays rejected, with the new error.
    let again = worker.replay("things", id).await.unwrap();
    assert!(
        matches!(again, Replayed::Failed(HandlerError::Permanent(_))),
        "{again:?}"
    );
    let rejected = store.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 1);
    let calls = handler.calls("m1");
    assert!(
        rejected[0].error.contains(&format!("call {calls}")),
        "{}",
        rejected[0].error
    );

    handler.clear("m1");
    assert_eq!(
        worker.replay("things", id).await.unwrap(),
        Replayed::Applied(Handled::applied())
    );
    assert_eq!(store.effects(), ["m0", "m2", "m1"]);
    assert!(store.rejected(None, 10).await.unwrap().is_empty());
    assert_eq!(store.row("things", id).unwrap().outcome, "applied");
    assert_eq!(
        worker.replay("things", id).await.unwrap(),
        Replayed::NotRejected
    );
    worker.stop().await.unwrap();

    // A consumer that does not handle the message's topic cannot replay it.
    let other = Uuid::now_v7();
    let message = InboxMessage {
        topic: "elsewhere".into(),
        ..InboxMessage::default()
    };
    let entry = outbox_core::InboxEntry::for_rejection("things", &message);
    store.reject(&entry, &message, "x").await.unwrap();
    assert!(matches!(
        worker.replay("things", entry.event_id).await,
        Err(OutboxError::Config(_))
    ));
    assert_eq!(
        worker.replay("things", other).await.unwrap(),
        Replayed::NotRejected
    );
}

#[tokio::test]
async fn a_handler_outcome_is_recorded_with_the_row() {
    let (store, source, handler, worker) = setup();
    handler.rule("late", Rule::Outcome("stale"));
    handler.rule("bad", Rule::Outcome("rejected"));
    let late = send(&source, 0, "late", None);
    let bad = send(&source, 0, "bad", None);
    worker.start().unwrap();
    until("2 committed", || source.committed(TOPIC, 0) == Some(2)).await;
    worker.stop().await.unwrap();
    assert_eq!(store.row("things", late).unwrap().outcome, "stale");
    let bad = store.row("things", bad).unwrap();
    assert_eq!(bad.outcome, "rejected", "a handler cannot fake a rejection");
    assert!(bad.error.unwrap().contains("outcome"));
}

#[tokio::test]
async fn expired_rows_are_cleaned_up() {
    let (store, source, _, worker) = setup_with(
        settings()
            .with_retention(Duration::from_secs(3600))
            .with_cleanup_interval(Duration::from_millis(10)),
    );
    let old = send(&source, 0, "old", None);
    let new = send(&source, 0, "new", None);
    worker.start().unwrap();
    until("2 committed", || source.committed(TOPIC, 0) == Some(2)).await;
    store.backdate("things", old, Duration::from_secs(7200));
    until("the old row is gone", || store.row("things", old).is_none()).await;
    worker.stop().await.unwrap();
    assert!(store.row("things", new).is_some());
}

#[tokio::test]
async fn the_builder_refuses_what_cannot_work() {
    let store = MemoryInboxStore::new();
    let source = MemorySource::new();
    let worker = || InboxWorker::new(store.clone(), source.clone(), settings()).unwrap();
    let handler = Recorder::new();
    let configs: Vec<(&str, Vec<&str>)> = vec![
        ("", vec!["a"]),
        ("  ", vec!["a"]),
        ("c", vec![]),
        ("c", vec!["a", "a"]),
        ("c", vec!["bad topic!"]),
        (outbox_core::inbox::UNROUTED_CONSUMER, vec!["a"]),
    ];
    for (consumer, topics) in configs {
        let result = worker().handler(consumer, topics.clone(), handler.clone());
        assert!(result.is_err(), "{consumer:?} {topics:?}");
    }
    let twice = worker()
        .handler("one", ["a"], handler.clone())
        .unwrap()
        .handler("two", ["b", "a"], handler.clone());
    let error = twice.unwrap_err().to_string();
    assert!(error.contains("`a` already has a handler"), "{error}");

    assert!(matches!(worker().start(), Err(OutboxError::Config(_))));
    assert!(matches!(
        InboxWorker::new(store.clone(), source.clone(), settings().with_max_batch(0)),
        Err(OutboxError::Config(_))
    ));
    let running = worker()
        .handler("one", ["a", "b"], handler.clone())
        .unwrap()
        .handler("one", ["c"], handler.clone())
        .unwrap();
    assert_eq!(running.topics(), ["a", "b", "c"]);
    running.start().unwrap();
    assert!(matches!(running.start(), Err(OutboxError::AlreadyRunning)));
    running.stop().await.unwrap();
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_fatal_source_error_stops_the_worker_with_it() {
    let (_, source, _, worker) = setup();
    source.fail_next_poll(SourceError::Fatal("bad credentials".into()));
    worker.start().unwrap();
    until("stopped", || !worker.status().running).await;
    let error = worker.stop().await.unwrap_err();
    assert!(
        matches!(&error, OutboxError::Source(SourceError::Fatal(m)) if m == "bad credentials"),
        "{error}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_stop_that_cannot_finish_in_time_abandons_the_batch() {
    let (store, source, handler, worker) =
        setup_with(settings().with_shutdown_timeout(Duration::from_millis(50)));
    handler.rule("stuck", Rule::Block(Arc::new(Notify::new())));
    send(&source, 0, "m0", None);
    send(&source, 0, "stuck", None);
    worker.start().unwrap();
    until("stuck in its handler", || {
        handler.entered.load(Ordering::SeqCst)
    })
    .await;
    let error = worker.stop().await.unwrap_err();
    assert!(
        matches!(error, OutboxError::InboxStopTimedOut { in_flight: 2, .. }),
        "{error}"
    );
    assert_eq!(source.committed(TOPIC, 0), None, "nothing committed");
    assert!(store.effects().is_empty(), "nothing applied");
    assert!(!worker.status().running);
}

/// The sum of a metric's series whose labels include `label`, from the Prometheus text.
fn metric(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    name: &str,
    label: (&str, &str),
) -> f64 {
    let wanted = format!("{}=\"{}\"", label.0, label.1);
    handle
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = series.split_once('{')?;
            (series_name == name && labels.trim_end_matches('}').split(',').any(|l| l == wanted))
                .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_count_consumed_duplicates_rejected_and_handler_errors() {
    use outbox_core::metrics as m;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);

    let (_, source, handler, worker) = setup();
    handler.rule("bad", Rule::Permanent);
    handler.rule("old", Rule::Outcome("stale"));
    let a = send(&source, 0, "a", None);
    send(&source, 0, "a", Some(a));
    send(&source, 0, "bad", None);
    send(&source, 0, "old", None);
    worker.start().unwrap();
    until("4 committed", || source.committed(TOPIC, 0) == Some(4)).await;
    worker.stop().await.unwrap();

    let consumer = ("consumer", "things");
    assert_eq!(
        metric(&handle, m::INBOX_CONSUMED_TOTAL, ("outcome", "applied")),
        1.0
    );
    assert_eq!(
        metric(&handle, m::INBOX_CONSUMED_TOTAL, ("outcome", "stale")),
        1.0
    );
    assert_eq!(metric(&handle, m::INBOX_DUPLICATES_TOTAL, consumer), 1.0);
    assert_eq!(metric(&handle, m::INBOX_REJECTED_TOTAL, consumer), 1.0);
    // Once in the batch, once alone.
    assert_eq!(
        metric(
            &handle,
            m::INBOX_HANDLER_ERRORS_TOTAL,
            ("kind", "permanent")
        ),
        2.0
    );
    let text = handle.render();
    assert!(text.contains(m::INBOX_HANDLER_DURATION_SECONDS), "{text}");
    assert!(text.contains(m::INBOX_BATCH_SIZE), "{text}");
    assert!(
        text.contains(&format!("{}{{topic=\"{TOPIC}\"}}", m::INBOX_LAG_SECONDS)),
        "{text}"
    );
}

#[tokio::test]
async fn a_crash_between_the_store_commit_and_the_offset_commit_applies_nothing_twice() {
    let (store, source, handler, first) = setup();
    for _ in 0..1000 {
        source.fail_next_commit(SourceError::Transient("coordinator unavailable".into()));
    }
    for n in 0..3 {
        send(&source, 0, &format!("m{n}"), None);
    }
    first.start().unwrap();
    until("applied", || store.effects().len() == 3).await;
    first.abort();
    assert_eq!(
        source.committed(TOPIC, 0),
        None,
        "the offsets never made it"
    );

    source.clear_failures();
    source.restart();
    let second = InboxWorker::new(store.clone(), source.clone(), settings())
        .unwrap()
        .handler("things", [TOPIC], handler.clone())
        .unwrap();
    second.start().unwrap();
    until("3 committed", || source.committed(TOPIC, 0) == Some(3)).await;
    second.stop().await.unwrap();
    assert_eq!(store.effects(), ["m0", "m1", "m2"]);
    assert_eq!(second.status().duplicates, 3);
    assert_eq!(handler.calls("m0"), 1);
}
