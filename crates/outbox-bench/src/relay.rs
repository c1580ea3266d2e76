//! Phases 2 and 4: draining a backlog into Kafka, beside its baselines, and by backlog size.
//!
//! - **R**: `EventRelayWorker` over `PostgresOutbox` and `KafkaPublisher` (library defaults:
//!   idempotence, `acks=all`, `linger.ms=0`).
//! - **D**: the same relay with a publisher that returns `Ok` at once: the database side alone.
//! - **P**: a raw rdkafka `FutureProducer` with the publisher's producer properties sending the
//!   same kind of messages (key, 1 KiB value, the six headers the publisher sends) with
//!   everything in flight: the Kafka side alone.
//! - **Pb**: the same producer, one batch at a time (enqueue a batch, await all its acks, repeat):
//!   the Kafka side as a one-batch-at-a-time relay can use it.
//!
//! H = 1/(1/P + 1/D) is the rate of doing the database work and the Kafka work one after the
//! other; a relay that overlaps them beats it (R/H > 1), as the worker does by claiming the next
//! batch while it sends one.
//!
//! The relay's store and publisher are wrapped to time every claim, publish and acknowledgement,
//! which gives the time breakdown of a batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{
    AttemptFailure, ClaimCursor, ClaimedBatch, Delivery, EventId, EventPublisher, EventRelayWorker,
    OutboxError, OutboxEvent, OutboxStats, PublishError, RelaySettings, RelayStore,
};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::PostgresOutbox;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sea_orm::sqlx;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::env::{
    EVENT_TYPE, Env, Rss, ServerCounters, Shape, Upload, load_average, oldest_transaction,
    topic_messages,
};
use crate::stats::{Summary, round3};
use crate::{Context, Result, Sizes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Claim,
    Publish,
    Ack,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    step: Step,
    start: Instant,
    end: Instant,
}

/// What the wrapped store and publisher saw during one drain.
#[derive(Default)]
pub(crate) struct Probe {
    spans: Mutex<Vec<Span>>,
    acked: AtomicU64,
    max_acked_id: std::sync::atomic::AtomicI64,
    target: AtomicU64,
    finished: Mutex<Option<Instant>>,
    empty_claims: AtomicU64,
    done: Notify,
    /// Kafka acknowledgements by event, when recorded (commit-to-ack latency).
    acks: Option<Mutex<Vec<(EventId, Instant)>>>,
    /// When each event's claim returned, recorded with the acknowledgements.
    claims: Option<Mutex<Vec<(EventId, Instant)>>>,
}

impl Probe {
    pub(crate) fn new(target: u64) -> Arc<Self> {
        Arc::new(Self {
            target: AtomicU64::new(target),
            ..Self::default()
        })
    }

    /// A probe that also records when each event's publish returned.
    pub(crate) fn recording_acks() -> Arc<Self> {
        Arc::new(Self {
            target: AtomicU64::new(u64::MAX),
            acks: Some(Mutex::new(Vec::new())),
            claims: Some(Mutex::new(Vec::new())),
            ..Self::default()
        })
    }

    fn record(&self, step: Step, start: Instant) {
        let end = Instant::now();
        if let Ok(mut spans) = self.spans.lock() {
            spans.push(Span { step, start, end });
        }
    }

    /// Waits until `target` events were acknowledged (returning when), or `deadline` passes.
    async fn wait(&self, deadline: Instant) -> Option<Instant> {
        loop {
            if let Some(at) = self.finished.lock().ok().and_then(|f| *f) {
                return Some(at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(200)), self.done.notified())
                    .await;
        }
    }

    /// The per-batch times of everything recorded so far.
    pub(crate) fn breakdown(&self) -> Breakdown {
        self.spans
            .lock()
            .map(|spans| Breakdown::of(&spans))
            .unwrap_or_default()
    }

    /// Events acknowledged so far.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// The acknowledgement instants recorded so far.
    pub(crate) fn take_acks(&self) -> Vec<(EventId, Instant)> {
        take(&self.acks)
    }

    /// The claim instants recorded so far.
    pub(crate) fn take_claims(&self) -> Vec<(EventId, Instant)> {
        take(&self.claims)
    }
}

/// What `recorded` holds, leaving it empty.
fn take(recorded: &Option<Mutex<Vec<(EventId, Instant)>>>) -> Vec<(EventId, Instant)> {
    recorded
        .as_ref()
        .and_then(|a| a.lock().ok().map(|mut a| std::mem::take(&mut *a)))
        .unwrap_or_default()
}

/// The PostgreSQL store, timing each claim and acknowledgement.
pub(crate) struct TimedStore {
    inner: Arc<PostgresOutbox>,
    probe: Arc<Probe>,
}

impl TimedStore {
    pub(crate) fn new(inner: Arc<PostgresOutbox>, probe: Arc<Probe>) -> Arc<Self> {
        Arc::new(Self { inner, probe })
    }
}

#[async_trait]
impl RelayStore for TimedStore {
    async fn acquire_leadership(&self) -> Result<bool, OutboxError> {
        self.inner.acquire_leadership().await
    }

    async fn release_leadership(&self) -> Result<(), OutboxError> {
        self.inner.release_leadership().await
    }

    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<ClaimCursor>,
    ) -> Result<ClaimedBatch, OutboxError> {
        let start = Instant::now();
        let batch = self.inner.claim_batch(limit, after).await?;
        if batch.events.is_empty() {
            self.probe.empty_claims.fetch_add(1, Ordering::Relaxed);
        } else {
            self.probe.record(Step::Claim, start);
            if let Some(claims) = &self.probe.claims
                && let Ok(mut claims) = claims.lock()
            {
                let end = Instant::now();
                claims.extend(batch.events.iter().map(|e| (e.event_id, end)));
            }
        }
        Ok(batch)
    }

    async fn acknowledge(&self, ids: &[i64], keep: bool) -> Result<u64, OutboxError> {
        let start = Instant::now();
        let done = self.inner.acknowledge(ids, keep).await?;
        self.probe.record(Step::Ack, start);
        if let Some(&max) = ids.iter().max() {
            self.probe.max_acked_id.fetch_max(max, Ordering::SeqCst);
        }
        let acked = self
            .probe
            .acked
            .fetch_add(ids.len() as u64, Ordering::SeqCst)
            + ids.len() as u64;
        if acked >= self.probe.target.load(Ordering::SeqCst) {
            if let Ok(mut finished) = self.probe.finished.lock() {
                finished.get_or_insert_with(Instant::now);
            }
            self.probe.done.notify_one();
        }
        Ok(done)
    }

    async fn record_failures(&self, failures: &[AttemptFailure]) -> Result<(), OutboxError> {
        self.inner.record_failures(failures).await
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.inner.stats().await
    }

    async fn wait_for_wake_up(&self) {
        self.inner.wait_for_wake_up().await
    }

    fn remote_wake(&self) -> Option<Arc<dyn outbox_core::RemoteWake>> {
        self.inner.remote_wake()
    }
}

/// A publisher, timing each batch and, when the probe records them, when each event's publish
/// returned (that is when Kafka had acknowledged it).
pub(crate) struct TimedPublisher {
    inner: Arc<dyn EventPublisher>,
    probe: Arc<Probe>,
}

impl TimedPublisher {
    pub(crate) fn new(inner: Arc<dyn EventPublisher>, probe: Arc<Probe>) -> Arc<Self> {
        Arc::new(Self { inner, probe })
    }
}

#[async_trait]
impl EventPublisher for TimedPublisher {
    async fn prepare(&self, events: &[OutboxEvent]) {
        self.inner.prepare(events).await;
    }

    fn check(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        self.inner.check(event)
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>> {
        let start = Instant::now();
        let results = self.inner.publish(events).await;
        let end = Instant::now();
        self.probe.record(Step::Publish, start);
        if let Some(acks) = &self.probe.acks
            && let Ok(mut acks) = acks.lock()
        {
            for (event, result) in events.iter().zip(&results) {
                if result.is_ok() {
                    acks.push((event.event_id, end));
                }
            }
        }
        results
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.inner.flush(timeout).await
    }

    fn abort_in_flight(&self) {
        self.inner.abort_in_flight();
    }
}

/// Accepts every event at once: the relay's database work without a broker.
pub(crate) struct NoopPublisher;

#[async_trait]
impl EventPublisher for NoopPublisher {
    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>> {
        events
            .iter()
            .map(|_| {
                Ok(Delivery {
                    partition: 0,
                    offset: 0,
                })
            })
            .collect()
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), PublishError> {
        Ok(())
    }
}

/// Per-batch time of each step, in ms.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Breakdown {
    pub(crate) batches: usize,
    pub(crate) claim: Summary,
    pub(crate) publish: Summary,
    pub(crate) ack: Summary,
    /// The rest of a batch's cycle: the worker's own work between the steps.
    pub(crate) other: Summary,
    /// Mean claim time of the first and the last tenth of the batches.
    pub(crate) claim_first_tenth_ms: f64,
    pub(crate) claim_last_tenth_ms: f64,
}

impl Breakdown {
    fn of(spans: &[Span]) -> Self {
        let claims: Vec<&Span> = spans.iter().filter(|s| s.step == Step::Claim).collect();
        let mut claim = Vec::new();
        let mut publish = Vec::new();
        let mut ack = Vec::new();
        let mut other = Vec::new();
        for (i, c) in claims.iter().enumerate() {
            let cycle_end = claims.get(i + 1).map(|n| n.start);
            let inside: Vec<&Span> = spans
                .iter()
                .filter(|s| s.start >= c.start && cycle_end.is_none_or(|e| s.start < e))
                .collect();
            let sum = |step: Step| -> Duration {
                inside
                    .iter()
                    .filter(|s| s.step == step)
                    .map(|s| s.end - s.start)
                    .sum()
            };
            let (cl, pu, ac) = (sum(Step::Claim), sum(Step::Publish), sum(Step::Ack));
            let end =
                cycle_end.unwrap_or_else(|| inside.iter().map(|s| s.end).max().unwrap_or(c.end));
            let cycle = end - c.start;
            claim.push(cl);
            publish.push(pu);
            ack.push(ac);
            other.push(cycle.saturating_sub(cl + pu + ac));
        }
        let tenth = (claim.len() / 10).max(1);
        let mean_ms = |d: &[Duration]| {
            if d.is_empty() {
                0.0
            } else {
                d.iter().sum::<Duration>().as_secs_f64() * 1000.0 / d.len() as f64
            }
        };
        let first = mean_ms(&claim[..tenth.min(claim.len())]);
        let last = mean_ms(&claim[claim.len().saturating_sub(tenth)..]);
        Self {
            batches: claims.len(),
            claim: Summary::of(&mut claim),
            publish: Summary::of(&mut publish),
            ack: Summary::of(&mut ack),
            other: Summary::of(&mut other),
            claim_first_tenth_ms: first,
            claim_last_tenth_ms: last,
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "batches": self.batches,
            "claim_ms": self.claim.to_json(),
            "publish_ms": self.publish.to_json(),
            "ack_ms": self.ack.to_json(),
            "other_ms": self.other.to_json(),
            "claim_first_tenth_mean_ms": round3(self.claim_first_tenth_ms),
            "claim_last_tenth_mean_ms": round3(self.claim_last_tenth_ms),
        })
    }
}

/// One backlog drained by the relay.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    pub(crate) publisher: String,
    pub(crate) events: u64,
    pub(crate) batch_size: usize,
    pub(crate) seconds: f64,
    pub(crate) rate: f64,
    pub(crate) breakdown: Breakdown,
    pub(crate) empty_claims: u64,
    pub(crate) rss: Rss,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_peak_reset: bool,
    pub(crate) load_copy_seconds: f64,
    pub(crate) verified: String,
    /// The claim half-way through, as the relay runs it and starting after the last acknowledged
    /// id.
    pub(crate) explain_midway: Option<(Explain, Explain)>,
    /// Events acknowledged, and whether that was all of them.
    pub(crate) acked: u64,
    pub(crate) complete: bool,
    /// WAL written and checkpoints completed on the server during the drain.
    pub(crate) server: ServerCounters,
    /// The oldest open transaction on the server when the drain ended.
    pub(crate) oldest_transaction: String,
}

impl Drain {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "publisher": self.publisher,
            "events": self.events,
            "batch_size": self.batch_size,
            "seconds": round3(self.seconds),
            "events_per_second": self.rate.round(),
            "breakdown": self.breakdown.to_json(),
            "empty_claims": self.empty_claims,
            "rss_before_kib": self.rss_before_kib,
            "rss_peak_kib": self.rss.peak_kib,
            "rss_peak_reset_before_drain": self.rss_peak_reset,
            "backlog_copy_seconds": round3(self.load_copy_seconds),
            "verified": self.verified,
            "acknowledged": self.acked,
            "complete": self.complete,
            "explain_claim_midway": self.explain_midway.as_ref().map(|e| e.0.to_json()),
            "explain_claim_midway_after_last_acked_id": self.explain_midway.as_ref().map(|e| e.1.to_json()),
            "server_wal_bytes_per_event": round3(self.server.wal_bytes / self.events as f64),
            "server_checkpoints": self.server.checkpoints,
            "oldest_transaction_at_end": self.oldest_transaction,
        })
    }
}

/// EXPLAIN ANALYZE of the claim, and the bare query timed from the client.
#[derive(Debug, Clone)]
pub(crate) struct Explain {
    /// `Some(id)` for the what-if claim that starts after `id`.
    pub(crate) after: Option<i64>,
    pub(crate) pending: u64,
    pub(crate) limit: usize,
    pub(crate) execution_ms: f64,
    pub(crate) planning_ms: f64,
    pub(crate) plan: String,
    /// The query through sqlx with rows fetched but not turned into events, median of 5 runs.
    pub(crate) client_fetch_ms: f64,
    /// Rows the explained query and the last timed fetch returned (the relay keeps draining
    /// meanwhile, so half-way through a drain they may differ from the limit).
    pub(crate) plan_rows: usize,
    pub(crate) fetched_rows: usize,
    /// The oldest open transaction on the server when the plan was taken.
    pub(crate) oldest_transaction: String,
}

impl Explain {
    /// The top node's buffer counts.
    pub(crate) fn buffers(&self) -> String {
        self.plan
            .lines()
            .find_map(|l| l.trim().strip_prefix("Buffers: "))
            .unwrap_or("buffers unknown")
            .to_owned()
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "after_id": self.after,
            "pending": self.pending,
            "limit": self.limit,
            "execution_ms": round3(self.execution_ms),
            "planning_ms": round3(self.planning_ms),
            "client_fetch_ms": round3(self.client_fetch_ms),
            "plan_rows": self.plan_rows,
            "fetched_rows": self.fetched_rows,
            "oldest_transaction": self.oldest_transaction,
            "plan": self.plan,
        })
    }
}

/// Runs EXPLAIN (ANALYZE, BUFFERS) of the claim with `limit`, and times the bare query.
///
/// With `after`, the claim above that cursor, as the relay runs it while batches come back full
/// (the scan starts after the rows already deleted).
pub(crate) async fn explain_claim(
    env: &Env,
    limit: usize,
    pending: u64,
    after: Option<i64>,
) -> Result<Explain> {
    // The cursor as the relay holds it: the first pending row's transaction (a loaded backlog
    // is one transaction) and the last acknowledged id; from the start without one.
    let cursor_xid: String = match after {
        Some(_) => sqlx::query_scalar(
            "SELECT coalesce((SELECT xid::text FROM event_outbox \
             WHERE published_at IS NULL AND dead_lettered_at IS NULL \
             ORDER BY xid, id LIMIT 1), '0')",
        )
        .fetch_one(env.pool())
        .await
        .context("reading the cursor's transaction")?,
        None => "0".to_owned(),
    };
    let cursor_id = after.unwrap_or(0);
    let cursor = ClaimCursor {
        xid: cursor_xid.parse().context("the cursor's transaction id")?,
        id: cursor_id,
    };
    let plan = PostgresOutbox::new(env.conn.clone())
        .context("repository")?
        .explain_claim(limit, Some(cursor), true)
        .await
        .context("explaining the claim")?;
    // Timed bare, as the relay's session runs it (hidden from the crate's documentation).
    let claim = outbox_seaorm::CLAIM;
    let time = |label: &str| {
        plan.iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().trim_end_matches(" ms").parse::<f64>().ok())
            .unwrap_or_default()
    };
    let limit_i64 = i64::try_from(limit).context("limit")?;
    let mut fetches = Vec::new();
    let mut fetched_rows = 0;
    // The first run prepares the statement on its connection; it is not counted.
    for _ in 0..6 {
        let started = Instant::now();
        let rows = sqlx::query(claim)
            .bind(limit_i64)
            .bind(&cursor_xid)
            .bind(cursor_id)
            .fetch_all(env.pool())
            .await
            .context("timing the claim")?;
        fetches.push(started.elapsed());
        fetched_rows = rows.len();
    }
    // The rows the plan returned: "(actual time=... rows=N loops=1)" on its first line.
    let plan_rows = plan
        .first()
        .and_then(|l| l.split("rows=").nth(2))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    let fetch = Summary::of(&mut fetches[1..]).p50;
    Ok(Explain {
        after,
        pending,
        limit,
        execution_ms: time("Execution Time:"),
        planning_ms: time("Planning Time:"),
        plan: plan.join("\n"),
        client_fetch_ms: fetch,
        plan_rows,
        fetched_rows,
        oldest_transaction: oldest_transaction(env).await,
    })
}

/// `linger.ms` of the what-if runs: the publisher's earlier default, to show what lingering
/// costs a relay that awaits every batch (the default is now 0).
pub(crate) const ALT_LINGER_MS: u32 = 5;

/// The publisher's producer properties, with `linger.ms` overridden when given.
pub(crate) fn kafka_config(env: &Env, linger_ms: Option<u32>) -> KafkaConfig {
    let config = KafkaConfig::new(env.bootstrap.clone());
    match linger_ms {
        Some(linger) => config.with_property("linger.ms", linger.to_string()),
        None => config,
    }
}

pub(crate) fn kafka_publisher(env: &Env, linger_ms: Option<u32>) -> Result<Arc<KafkaPublisher>> {
    Ok(Arc::new(
        KafkaPublisher::new(kafka_config(env, linger_ms)).context("Kafka publisher")?,
    ))
}

/// Where a drain sends its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Noop,
    /// Kafka through `KafkaPublisher`, with `linger.ms` overridden when given.
    Kafka(Option<u32>),
}

impl Sink {
    fn name(self) -> String {
        match self {
            Self::Noop => "noop".into(),
            Self::Kafka(None) => "kafka".into(),
            Self::Kafka(Some(linger)) => format!("kafka, linger.ms={linger}"),
        }
    }
}

/// Sends a few events through `publisher` so the drain does not pay for connecting and fetching
/// the topic's metadata.
pub(crate) async fn warm_up(env: &Env, topic: &str, publisher: &KafkaPublisher) -> Result<()> {
    let shape = Shape::new(topic);
    let mut events = Vec::new();
    for i in 0..20u64 {
        let event = shape.file_added(&Upload::new(i, env.keys))?;
        events.push(OutboxEvent {
            id: -1,
            event_id: event.event_id,
            key: event.key().to_owned(),
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            event_type: event.event_type,
            topic: event.topic.unwrap_or_default(),
            payload: event.payload,
            headers: event.headers.into_iter().collect(),
            created_at: chrono::Utc::now(),
            attempts: 0,
            defect: None,
        });
    }
    for result in publisher.publish(&events).await {
        result.map_err(|e| format!("warm-up publish: {e}"))?;
    }
    Ok(())
}

/// Loads a backlog of `events` and drains it with the relay, into Kafka or into the no-op
/// publisher.
///
/// With `max_time`, a drain still running then is stopped and reported as partial (the rate of
/// what was acknowledged); without, it fails after a generous limit.
async fn drain(
    env: &Env,
    sink: Sink,
    events: u64,
    batch_size: usize,
    explain_midway: bool,
    max_time: Option<Duration>,
) -> Result<Drain> {
    let copy = env.load_backlog(events).await?;
    drain_loaded(
        env,
        sink,
        events,
        batch_size,
        explain_midway,
        max_time,
        copy,
    )
    .await
}

/// Drains the backlog of `events` already in the outbox (loaded in `copy`).
async fn drain_loaded(
    env: &Env,
    sink: Sink,
    events: u64,
    batch_size: usize,
    explain_midway: bool,
    max_time: Option<Duration>,
    copy: Duration,
) -> Result<Drain> {
    let probe = Probe::new(events);
    let outbox = Arc::new(PostgresOutbox::new(env.conn.clone()).context("repository")?);
    let store = TimedStore::new(outbox, probe.clone());
    let (inner, before): (Arc<dyn EventPublisher>, i64) = if let Sink::Kafka(linger) = sink {
        let publisher = kafka_publisher(env, linger)?;
        warm_up(env, env.relay_topic.name(), &publisher).await?;
        let before = topic_messages(&env.bootstrap, env.relay_topic.name(), env.partitions).await?;
        (publisher, before)
    } else {
        (Arc::new(NoopPublisher), 0)
    };
    let publisher = TimedPublisher::new(inner, probe.clone());
    let worker = EventRelayWorker::new(
        store,
        publisher,
        RelaySettings::default().with_batch_size(batch_size),
    )
    .context("relay worker")?;

    let rss_reset = Rss::reset_peak();
    let rss_before = Rss::now().current_kib;
    let counters = ServerCounters::read(env).await?;
    worker.start().context("starting the relay")?;
    let deadline = Instant::now() + max_time.unwrap_or(Duration::from_secs(120 + events / 500));
    let mut midway = None;
    if explain_midway {
        // Half-way through, the claim has the dead index entries of half the backlog before the
        // first pending row.
        while probe.acked() < events / 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if probe.acked() >= events / 2 {
            let pending = events - probe.acked();
            let plain = explain_claim(env, batch_size, pending, None).await?;
            let after = probe.max_acked_id.load(Ordering::SeqCst);
            let keyset = explain_claim(env, batch_size, pending, Some(after)).await?;
            midway = Some((plain, keyset));
        }
    }
    let finished = probe.wait(deadline).await;
    let rss = Rss::now();
    let oldest = oldest_transaction(env).await;
    worker.stop().await.context("stopping the relay")?;
    let server = ServerCounters::read(env).await?.since(counters);
    let (finished, complete) = match finished {
        Some(at) => (at, true),
        None if max_time.is_some() => {
            println!(
                "  stopped after {:?}: {} of {events} acknowledged",
                max_time.unwrap_or_default(),
                probe.acked()
            );
            (Instant::now(), false)
        }
        None => {
            return Err(format!(
                "drain did not finish in time: {} of {events} acknowledged",
                probe.acked()
            )
            .into());
        }
    };
    let acked = probe.acked().min(events);

    let spans = probe.spans.lock().map_err(|_| "probe lock")?.clone();
    let first = spans
        .iter()
        .find(|s| s.step == Step::Claim)
        .map(|s| s.start)
        .ok_or("the relay claimed nothing")?;
    let seconds = (finished - first).as_secs_f64();
    let left = env.outbox_rows().await?;
    let expected = if complete { events } else { acked };
    let verified = if sink != Sink::Noop {
        let after = topic_messages(&env.bootstrap, env.relay_topic.name(), env.partitions).await?;
        format!(
            "{left} rows left in the outbox; Kafka topic grew by {} messages (expected {expected})",
            after - before
        )
    } else {
        format!("{left} rows left in the outbox")
    };
    Ok(Drain {
        publisher: sink.name(),
        events,
        batch_size,
        seconds,
        rate: acked as f64 / seconds,
        acked,
        complete,
        breakdown: Breakdown::of(&spans),
        empty_claims: probe.empty_claims.load(Ordering::Relaxed),
        rss,
        rss_before_kib: rss_before,
        rss_peak_reset: rss_reset,
        load_copy_seconds: copy.as_secs_f64(),
        verified,
        explain_midway: midway,
        server,
        oldest_transaction: oldest,
    })
}

/// A raw producer run.
#[derive(Debug, Clone)]
pub(crate) struct ProducerRun {
    pub(crate) events: u64,
    /// `None`: everything in flight; `Some(n)`: batches of n, one at a time.
    pub(crate) batch: Option<usize>,
    /// `linger.ms` when overridden.
    pub(crate) linger_ms: Option<u32>,
    pub(crate) seconds: f64,
    pub(crate) rate: f64,
    /// Per batch (serial runs): time to enqueue, and to get every ack after that.
    pub(crate) enqueue: Summary,
    pub(crate) await_acks: Summary,
}

impl ProducerRun {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "events": self.events,
            "batch": self.batch,
            "linger_ms_override": self.linger_ms,
            "seconds": round3(self.seconds),
            "events_per_second": self.rate.round(),
            "enqueue_ms_per_batch": self.batch.map(|_| self.enqueue.to_json()),
            "await_acks_ms_per_batch": self.batch.map(|_| self.await_acks.to_json()),
        })
    }
}

/// What the raw producer sends: the relay's messages, built as the publisher builds them.
struct Messages {
    keys: Vec<String>,
    payload: Vec<u8>,
    traceparent: String,
}

impl Messages {
    fn new(env: &Env) -> Result<Self> {
        let shape = Shape::new(env.relay_topic.name());
        let event = shape.file_added(&Upload::new(0, env.keys))?;
        Ok(Self {
            keys: (0..env.keys as u64)
                .map(|k| Upload::new(k, env.keys).batch_id)
                .collect(),
            payload: event.payload,
            traceparent: event
                .headers
                .get(outbox_core::TRACEPARENT_HEADER)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// The headers `KafkaPublisher` sends for an event of this shape.
    fn headers(&self, key: &str) -> OwnedHeaders {
        let event_id = EventId::new().to_string();
        let pairs: [(&str, &str); 6] = [
            ("event_id", &event_id),
            ("event_type", EVENT_TYPE),
            ("aggregate_type", "batch"),
            ("aggregate_id", key),
            ("content-type", "application/json"),
            ("traceparent", &self.traceparent),
        ];
        pairs
            .iter()
            .fold(OwnedHeaders::new_with_capacity(6), |headers, (k, v)| {
                headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            })
    }
}

async fn settle(delivery: DeliveryFuture) -> Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(format!("raw producer delivery failed: {error}").into()),
        Err(_) => Err("raw producer dropped a delivery".into()),
    }
}

/// Sends `events` messages with the publisher's producer properties: everything in flight when
/// `batch` is `None`, else batch by batch.
async fn raw_producer(
    env: &Env,
    events: u64,
    batch: Option<usize>,
    linger_ms: Option<u32>,
) -> Result<ProducerRun> {
    let mut config = ClientConfig::new();
    for (name, value) in kafka_config(env, linger_ms).effective_properties() {
        config.set(name, value);
    }
    let producer: FutureProducer = config.create().context("raw producer")?;
    let messages = Messages::new(env)?;
    let topic = env.relay_topic.name();
    let send = |i: u64| -> Result<DeliveryFuture, (KafkaError, u64)> {
        let key = &messages.keys[(i % messages.keys.len() as u64) as usize];
        let record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(messages.payload.as_slice())
            .headers(messages.headers(key));
        producer.send_result(record).map_err(|(e, _)| (e, i))
    };
    // Warm-up: connection and topic metadata, as for the relay's publisher.
    for i in 0..20 {
        settle(send(i).map_err(|(e, _)| format!("warm-up send: {e}"))?).await?;
    }

    let started = Instant::now();
    let mut enqueue = Vec::new();
    let mut await_acks = Vec::new();
    let chunk = batch.unwrap_or(usize::MAX) as u64;
    let mut next = 0u64;
    while next < events {
        let end = next.saturating_add(chunk).min(events);
        let enqueue_started = Instant::now();
        let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::new();
        for i in next..end {
            loop {
                match send(i) {
                    Ok(delivery) => {
                        in_flight.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // The local queue is full: an ack makes room.
                        match in_flight.pop_front() {
                            Some(oldest) => settle(oldest).await?,
                            None => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                    Err((e, _)) => return Err(format!("raw producer send: {e}").into()),
                }
            }
        }
        let enqueued = Instant::now();
        for delivery in in_flight {
            settle(delivery).await?;
        }
        enqueue.push(enqueued - enqueue_started);
        await_acks.push(enqueued.elapsed());
        next = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ProducerRun {
        events,
        batch,
        linger_ms,
        seconds,
        rate: events as f64 / seconds,
        enqueue: Summary::of(&mut enqueue),
        await_acks: Summary::of(&mut await_acks),
    })
}

/// R, D, P and Pb at one batch size.
#[derive(Debug, Clone)]
pub(crate) struct Throughput {
    pub(crate) batch_size: usize,
    pub(crate) r: Drain,
    pub(crate) d: Drain,
    pub(crate) p: ProducerRun,
    pub(crate) pb: ProducerRun,
    /// Pb and R with `linger.ms` = [`ALT_LINGER_MS`] (first batch size only).
    pub(crate) pb_linger_alt: Option<ProducerRun>,
    pub(crate) r_linger_alt: Option<Drain>,
}

impl Throughput {
    /// The rate of the database work and the Kafka work done one after the other.
    pub(crate) fn h(&self) -> f64 {
        1.0 / (1.0 / self.p.rate + 1.0 / self.d.rate)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "batch_size": self.batch_size,
            "r_events_per_second": self.r.rate.round(),
            "d_events_per_second": self.d.rate.round(),
            "p_events_per_second": self.p.rate.round(),
            "pb_events_per_second": self.pb.rate.round(),
            "h_events_per_second": self.h().round(),
            "r_over_h": round3(self.r.rate / self.h()),
            "r_over_p": round3(self.r.rate / self.p.rate),
            "r_over_d": round3(self.r.rate / self.d.rate),
            "r_over_pb": round3(self.r.rate / self.pb.rate),
            "r": self.r.to_json(),
            "d": self.d.to_json(),
            "p": self.p.to_json(),
            "pb": self.pb.to_json(),
            "pb_linger_ms_alt": self.pb_linger_alt.as_ref().map(ProducerRun::to_json),
            "r_linger_ms_alt": self.r_linger_alt.as_ref().map(Drain::to_json),
        })
    }
}

/// Phase 2's results.
#[derive(Debug, Clone)]
pub(crate) struct RelayResults {
    pub(crate) backlog: u64,
    pub(crate) explain_start: Explain,
    pub(crate) runs: Vec<Throughput>,
}

impl RelayResults {
    /// R at `batch_size`, else at the first batch size tried.
    pub(crate) fn relay_rate_at(&self, batch_size: usize) -> Option<f64> {
        self.runs
            .iter()
            .find(|t| t.batch_size == batch_size)
            .or(self.runs.first())
            .map(|t| t.r.rate)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "backlog": self.backlog,
            "explain_claim_at_start": self.explain_start.to_json(),
            "runs": self.runs.iter().map(Throughput::to_json).collect::<Vec<_>>(),
        })
    }
}

fn print_serial(label: &str, pb: &ProducerRun) {
    println!(
        "  {label}, {} at a time): {:.0} events/s; per batch enqueue p50 {:.2} ms, acks p50 {:.2} ms",
        pb.batch.unwrap_or_default(),
        pb.rate,
        pb.enqueue.p50,
        pb.await_acks.p50
    );
}

fn print_drain(label: &str, d: &Drain) {
    let b = &d.breakdown;
    println!(
        "  {label}: {} events in {:.2} s = {:.0} events/s; per batch ({}): claim p50 {:.2} ms \
         (first/last tenth mean {:.2}/{:.2}), publish p50 {:.2} ms, ack p50 {:.2} ms, other p50 \
         {:.2} ms; RSS {} -> peak {} MiB; WAL {:.0} B/event, {} checkpoints; {}",
        d.events,
        d.seconds,
        d.rate,
        b.batches,
        b.claim.p50,
        b.claim_first_tenth_ms,
        b.claim_last_tenth_ms,
        b.publish.p50,
        b.ack.p50,
        b.other.p50,
        d.rss_before_kib / 1024,
        d.rss.peak_kib / 1024,
        d.server.wal_bytes / d.events as f64,
        d.server.checkpoints,
        d.verified
    );
    if let Some((e, k)) = &d.explain_midway {
        println!(
            "    half-way: claim EXPLAIN ANALYZE {:.2} ms ({} rows, {}), bare fetch {:.2} ms ({} \
             rows); with `id > last acknowledged` {:.2} ms ({} rows, {}), bare fetch {:.2} ms ({} \
             rows); oldest open transaction: {}",
            e.execution_ms,
            e.plan_rows,
            e.buffers(),
            e.client_fetch_ms,
            e.fetched_rows,
            k.execution_ms,
            k.plan_rows,
            k.buffers(),
            k.client_fetch_ms,
            k.fetched_rows,
            e.oldest_transaction
        );
    }
}

/// Phase 2: R, D, P and Pb at each batch size.
pub(crate) async fn throughput(env: &Env, sizes: &Sizes) -> Result<RelayResults> {
    println!(
        "\n== 2. relay throughput ({} events of ~1 KiB, {} keys, {} partitions; load {})",
        sizes.backlog,
        sizes.keys,
        sizes.partitions,
        load_average()
    );
    env.load_backlog(sizes.backlog).await?;
    let first_batch = sizes
        .batch_sizes
        .first()
        .copied()
        .unwrap_or(RelaySettings::default().batch_size);
    let explain_start = explain_claim(env, first_batch, sizes.backlog, None).await?;
    println!(
        "  claim of {first_batch} on a {} backlog: EXPLAIN ANALYZE {:.2} ms (planning {:.2} ms), \
         bare fetch from the client {:.2} ms",
        sizes.backlog,
        explain_start.execution_ms,
        explain_start.planning_ms,
        explain_start.client_fetch_ms
    );
    let mut runs = Vec::new();
    for &batch_size in &sizes.batch_sizes {
        println!("  -- batch size {batch_size}");
        let p = raw_producer(env, sizes.backlog, None, None).await?;
        println!("  P  (raw producer, all in flight): {:.0} events/s", p.rate);
        let pb = raw_producer(env, sizes.backlog, Some(batch_size), None).await?;
        print_serial("Pb (raw producer", &pb);
        let d = drain(
            env,
            Sink::Noop,
            sizes.backlog,
            batch_size,
            batch_size == first_batch,
            None,
        )
        .await?;
        print_drain("D  (relay, no-op publisher)", &d);
        let r = drain(
            env,
            Sink::Kafka(None),
            sizes.backlog,
            batch_size,
            false,
            None,
        )
        .await?;
        print_drain("R  (relay, Kafka)", &r);
        // What-if runs on the first batch size: the same with the earlier default linger.ms, to
        // show what lingering costs a relay that awaits every batch.
        let (pb_linger_alt, r_linger_alt) = if batch_size == first_batch {
            let pb0 =
                raw_producer(env, sizes.backlog, Some(batch_size), Some(ALT_LINGER_MS)).await?;
            print_serial("Pb' (raw producer, linger.ms=5", &pb0);
            let r0 = drain(
                env,
                Sink::Kafka(Some(ALT_LINGER_MS)),
                sizes.backlog,
                batch_size,
                false,
                None,
            )
            .await?;
            print_drain("R' (relay, Kafka, linger.ms=5)", &r0);
            (Some(pb0), Some(r0))
        } else {
            (None, None)
        };
        let t = Throughput {
            batch_size,
            r,
            d,
            p,
            pb,
            pb_linger_alt,
            r_linger_alt,
        };
        println!(
            "  batch {batch_size}: R {:.0}  D {:.0}  P {:.0}  H {:.0}  R/H {:.3}  R/P {:.3}  R/D \
             {:.3}  R/Pb {:.3}",
            t.r.rate,
            t.d.rate,
            t.p.rate,
            t.h(),
            t.r.rate / t.h(),
            t.r.rate / t.p.rate,
            t.r.rate / t.d.rate,
            t.r.rate / t.pb.rate
        );
        runs.push(t);
    }
    env.truncate().await?;
    Ok(RelayResults {
        backlog: sizes.backlog,
        explain_start,
        runs,
    })
}

/// One backlog size of phase 4.
#[derive(Debug, Clone)]
pub(crate) struct ScaleRun {
    pub(crate) events: u64,
    pub(crate) r: Drain,
    /// The no-op drain, when run for this size.
    pub(crate) d: Option<Drain>,
}

/// Phase 4's results: R (and D) by backlog size, at the default batch size.
#[derive(Debug, Clone)]
pub(crate) struct Scaling {
    pub(crate) runs: Vec<ScaleRun>,
    pub(crate) notes: Vec<String>,
}

impl Scaling {
    /// R with the largest backlog over R with the smallest.
    pub(crate) fn ratio(&self) -> Option<f64> {
        let first = self.runs.first()?;
        let last = self.runs.last()?;
        (self.runs.len() > 1).then(|| last.r.rate / first.r.rate)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "batch_size": RelaySettings::default().batch_size,
            "runs": self.runs.iter().map(|run| json!({
                "events": run.events,
                "r": run.r.to_json(),
                "d": run.d.as_ref().map(Drain::to_json),
            })).collect::<Vec<_>>(),
            "largest_over_smallest_r": self.ratio().map(round3),
            "notes": self.notes,
        })
    }
}

/// Phase 4: drain rate and peak memory by backlog size. Backlogs above `sizes.scaling_d_max`
/// are drained only by R; under a time budget, the largest drain is cut short (and reported as
/// partial) rather than overrun it.
pub(crate) async fn scaling(env: &Env, sizes: &Sizes, run_started: Instant) -> Result<Scaling> {
    println!(
        "\n== 4. scaling (default batch size; load {})",
        load_average()
    );
    let batch_size = RelaySettings::default().batch_size;
    let mut runs = Vec::new();
    let mut notes: Vec<String> = sizes.scaling_note.iter().cloned().collect();
    for &events in &sizes.scaling {
        let max_time = match sizes.budget {
            Some(budget) if events >= 100_000 => {
                // Generating and copying a 1M backlog takes about 40 s; the report a few more.
                let left = budget
                    .saturating_sub(run_started.elapsed())
                    .saturating_sub(Duration::from_secs(60));
                if left < Duration::from_secs(60) {
                    let note = format!(
                        "{events}-event backlog skipped: less than a minute of the {} s budget \
                         left",
                        budget.as_secs()
                    );
                    println!("  {note}");
                    notes.push(note);
                    continue;
                }
                Some(left)
            }
            _ => None,
        };
        let d = if events <= sizes.scaling_d_max {
            let d = drain(env, Sink::Noop, events, batch_size, events >= 100_000, None).await?;
            print_drain(&format!("D {events}"), &d);
            Some(d)
        } else {
            None
        };
        let explain = d.is_none() && events >= 100_000;
        let r = drain(
            env,
            Sink::Kafka(None),
            events,
            batch_size,
            explain,
            max_time,
        )
        .await?;
        print_drain(&format!("R {events}"), &r);
        if !r.complete {
            notes.push(format!(
                "the {events}-event drain was stopped after {:.0} s to stay within the time \
                 budget, with {} events acknowledged: its rate is that of the part drained",
                r.seconds, r.acked
            ));
        }
        runs.push(ScaleRun { events, r, d });
    }
    let scaling = Scaling { runs, notes };
    if let Some(ratio) = scaling.ratio() {
        println!("  R(largest)/R(smallest) = {ratio:.3}");
    }
    env.truncate().await?;
    Ok(scaling)
}

/// The relay draining a backlog of large events into Kafka.
#[derive(Debug, Clone)]
pub(crate) struct LargeDrain {
    pub(crate) payload_bytes: usize,
    pub(crate) drain: Drain,
}

impl LargeDrain {
    /// Payload megabytes (MiB) per second.
    pub(crate) fn mib_per_second(&self) -> f64 {
        self.drain.rate * self.payload_bytes as f64 / (1024.0 * 1024.0)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "payload_bytes": self.payload_bytes,
            "payload_mib_per_second": round3(self.mib_per_second()),
            "drain": self.drain.to_json(),
        })
    }
}

/// The relay (R, Kafka, default settings) draining backlogs of 16 KiB and 64 KiB events.
pub(crate) async fn large_events(env: &Env, sizes: &Sizes) -> Result<Vec<LargeDrain>> {
    println!(
        "\n== 2b. relay drain of large events (default batch size; load {})",
        load_average()
    );
    let batch_size = RelaySettings::default().batch_size;
    let mut runs = Vec::new();
    for &(payload_bytes, events) in &sizes.large_drains {
        let copy = env.load_padded_backlog(events, payload_bytes).await?;
        let drain = drain_loaded(
            env,
            Sink::Kafka(None),
            events,
            batch_size,
            false,
            None,
            copy,
        )
        .await?;
        let run = LargeDrain {
            payload_bytes,
            drain,
        };
        print_drain(
            &format!("R, {} KiB events", payload_bytes / 1024),
            &run.drain,
        );
        println!("    = {:.1} MiB/s of payload", run.mib_per_second());
        runs.push(run);
    }
    env.truncate().await?;
    Ok(runs)
}
