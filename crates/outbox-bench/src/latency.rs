//! Phase 3: from a writer's commit to Kafka's acknowledgement, at a steady offered load.
//!
//! Writer tasks run the File Service upload transaction (upload row plus `add_event`), paced by
//! a timer to the offered rate, one event per transaction, and note the instant right after each
//! commit returned. The relay's publisher is wrapped to note the instant its `publish` returned
//! for each event (Kafka had acknowledged the whole batch then). Latency = ack - commit, per
//! event. Each rate runs twice: with `notifier().notify()` after every commit, and with polling
//! only (default poll settings).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{EventId, EventRelayWorker, OutboxWriter, RelayNotifier, RelaySettings};
use outbox_seaorm::PostgresOutbox;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;

use crate::env::{
    CpuPressure, Env, INSERT_UPLOAD, RAW_BYTES, Shape, Upload, load_average, percent,
};
use crate::relay::{Breakdown, Probe, TimedPublisher, TimedStore, kafka_publisher, warm_up};
use crate::stats::{Summary, round3};
use crate::{BoxError, Context, Result, Sizes};

/// One latency run.
#[derive(Debug, Clone)]
pub(crate) struct LatencyRun {
    pub(crate) offered: f64,
    pub(crate) offered_label: String,
    pub(crate) wake: bool,
    pub(crate) achieved: f64,
    pub(crate) seconds: f64,
    pub(crate) measured: usize,
    pub(crate) missing: usize,
    /// Acks noted before the writer had seen its commit return (clamped to 0 in the latency).
    pub(crate) ack_before_commit: usize,
    pub(crate) latency: Summary,
    /// From the commit to the relay's claim that returned the event: the wait for a wake-up and
    /// for the commit horizon to pass the event; the rest of `latency` is the batch's claim,
    /// send and Kafka's acknowledgement.
    pub(crate) to_claim: Summary,
    pub(crate) writer_txn: Summary,
    /// The share of the writing span in which some task on the machine waited for a CPU.
    pub(crate) cpu_pressure: Option<f64>,
    /// `linger.ms` when overridden.
    pub(crate) linger_ms: Option<u32>,
    /// The relay's batches during the run.
    pub(crate) breakdown: Breakdown,
    pub(crate) mean_batch: f64,
}

impl LatencyRun {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "offered_events_per_second": self.offered.round(),
            "offered": self.offered_label,
            "wake_up": self.wake,
            "achieved_events_per_second": self.achieved.round(),
            "seconds": round3(self.seconds),
            "events_measured": self.measured,
            "events_missing": self.missing,
            "acks_before_commit_returned": self.ack_before_commit,
            "commit_to_ack": self.latency.to_json(),
            "commit_to_claim": self.to_claim.to_json(),
            "writer_transaction": self.writer_txn.to_json(),
            "cpu_pressure_some": self.cpu_pressure.map(round3),
            "linger_ms_override": self.linger_ms,
            "relay_batches": self.breakdown.to_json(),
            "mean_events_per_batch": round3(self.mean_batch),
        })
    }
}

pub(crate) struct Writer {
    conn: DatabaseConnection,
    outbox: PostgresOutbox,
    shape: Shape,
    raw: Vec<u8>,
    keys: usize,
    seq: AtomicU64,
}

impl Writer {
    /// A writer of File Service uploads on `conn`, its events for `topic`.
    pub(crate) fn new(conn: DatabaseConnection, topic: &str, keys: usize) -> Result<Self> {
        Ok(Self {
            outbox: PostgresOutbox::new(conn.clone()).context("repository")?,
            conn,
            shape: Shape::new(topic),
            raw: vec![7u8; RAW_BYTES],
            keys,
            seq: AtomicU64::new(0),
        })
    }

    /// One upload with its event. Returns the event id and when the commit returned.
    async fn upload(&self) -> Result<(EventId, Instant, Duration)> {
        let upload = Upload::new(self.seq.fetch_add(1, Ordering::Relaxed), self.keys);
        let started = Instant::now();
        let txn = self.conn.begin().await.context("begin")?;
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            INSERT_UPLOAD,
            upload.values(&self.raw),
        ))
        .await
        .context("inserting the upload")?;
        let event = self.shape.file_added(&upload)?;
        let id = self
            .outbox
            .add_event(&txn, event)
            .await
            .context("add_event")?;
        txn.commit().await.context("commit")?;
        let committed = Instant::now();
        Ok((id, committed, committed - started))
    }
}

pub(crate) type Commits = (Vec<(EventId, Instant)>, Vec<Duration>);

pub(crate) async fn write_paced(
    writer: Arc<Writer>,
    period: Duration,
    first: Instant,
    until: Instant,
    notifier: Option<RelayNotifier>,
) -> Result<Commits> {
    let mut ticks = tokio::time::interval_at(first.into(), period);
    // Catch up after a slow transaction, so the offered rate holds on average.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut commits = Vec::new();
    let mut txns = Vec::new();
    loop {
        let tick = ticks.tick().await;
        // Stop at the end of the run even when behind schedule: the achieved rate then shows
        // that the writers could not offer the load.
        if tick.into_std() >= until || Instant::now() >= until {
            break;
        }
        let (id, at, took) = writer.upload().await?;
        if let Some(notifier) = &notifier {
            notifier.notify();
        }
        commits.push((id, at));
        txns.push(took);
    }
    Ok((commits, txns))
}

pub(crate) async fn run_one(
    env: &Env,
    sizes: &Sizes,
    offered: f64,
    offered_label: &str,
    wake: bool,
    linger_ms: Option<u32>,
) -> Result<LatencyRun> {
    env.truncate().await?;
    let topic = env.latency_topic.name();
    let probe = Probe::recording_acks();
    let outbox = Arc::new(PostgresOutbox::new(env.conn.clone()).context("repository")?);
    let kafka = kafka_publisher(env, linger_ms)?;
    warm_up(env, topic, &kafka).await?;
    let worker = EventRelayWorker::new(
        TimedStore::new(outbox, probe.clone()),
        TimedPublisher::new(kafka, probe.clone()),
        RelaySettings::default(),
    )
    .context("relay worker")?;
    worker.start().context("starting the relay")?;

    let writer = Arc::new(Writer::new(env.conn.clone(), topic, env.keys)?);
    let writers = writers_for(sizes, offered);
    let period = Duration::from_secs_f64(writers as f64 / offered);
    let start = Instant::now() + Duration::from_millis(50);
    let until = start + Duration::from_secs_f64(sizes.latency_secs);
    let pressure = CpuPressure::start();
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            // Writers start spread over one period, so the load is smooth rather than in bursts.
            let first = start + period.mul_f64(i as f64 / writers as f64);
            let notifier = wake.then(|| worker.notifier());
            tokio::spawn(write_paced(writer.clone(), period, first, until, notifier))
        })
        .collect();
    let mut commits = Vec::new();
    let mut txns = Vec::new();
    for task in tasks {
        let (c, t) = task.await.context("writer task")??;
        commits.extend(c);
        txns.extend(t);
    }
    let seconds = (Instant::now() - start).as_secs_f64();
    let cpu_pressure = pressure.share();

    let mut acks: HashMap<EventId, Instant> = HashMap::with_capacity(commits.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.len() < commits.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        acks.extend(probe.take_acks());
    }
    worker.stop().await.context("stopping the relay")?;
    acks.extend(probe.take_acks());
    let claims: HashMap<EventId, Instant> = probe.take_claims().into_iter().collect();

    let cutoff = start + Duration::from_secs_f64(sizes.latency_warmup_secs);
    let mut latencies = Vec::new();
    let mut to_claim = Vec::new();
    let mut missing = 0;
    let mut early = 0;
    for (id, committed) in commits.iter().filter(|(_, at)| *at >= cutoff) {
        if let Some(claimed) = claims.get(id) {
            to_claim.push(claimed.saturating_duration_since(*committed));
        }
        match acks.get(id) {
            Some(acked) => {
                if acked < committed {
                    early += 1;
                }
                latencies.push(acked.saturating_duration_since(*committed));
            }
            None => missing += 1,
        }
    }
    let breakdown = probe.breakdown();
    let acked_events: usize = acks.len();
    let run = LatencyRun {
        linger_ms,
        mean_batch: acked_events as f64 / breakdown.batches.max(1) as f64,
        breakdown,
        offered,
        offered_label: offered_label.to_owned(),
        wake,
        achieved: commits.len() as f64 / seconds,
        seconds,
        measured: latencies.len(),
        missing,
        ack_before_commit: early,
        latency: Summary::of(&mut latencies),
        to_claim: Summary::of(&mut to_claim),
        writer_txn: Summary::of(&mut txns),
        cpu_pressure,
    };
    println!(
        "  {offered_label} ({:.0}/s offered, {:.0}/s achieved), {}{}: commit->ack p50 {:.2} ms  p99 \
         {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  ({} events, {} missing); commit->claim p50 {:.2} \
         ms  p99 {:.2} ms; writer txn p50 {:.2} ms  p99 {:.2} ms; CPU pressure {}; {} batches of {:.1} on average, claim p50 \
         {:.2} ms, publish p50 {:.2} ms, ack p50 {:.2} ms",
        offered,
        run.achieved,
        if wake { "wake-up" } else { "polling only" },
        linger_ms
            .map(|l| format!(", linger.ms={l}"))
            .unwrap_or_default(),
        run.latency.p50,
        run.latency.p99,
        run.latency.p999,
        run.latency.max,
        run.measured,
        run.missing,
        run.to_claim.p50,
        run.to_claim.p99,
        run.writer_txn.p50,
        run.writer_txn.p99,
        percent(run.cpu_pressure),
        run.breakdown.batches,
        run.mean_batch,
        run.breakdown.claim.p50,
        run.breakdown.publish.p50,
        run.breakdown.ack.p50,
    );
    Ok(run)
}

/// Writer tasks for `offered` events/s: at most one event per second each, so that a slow rate
/// is still paced as one steady stream.
pub(crate) fn writers_for(sizes: &Sizes, offered: f64) -> usize {
    sizes.latency_writers.min(offered.floor() as usize).max(1)
}

/// Runs phase 3 at 1,000 events/s and at half of R (when phase 2 measured it).
pub(crate) async fn run(env: &Env, sizes: &Sizes, half_r: Option<f64>) -> Result<Vec<LatencyRun>> {
    println!(
        "\n== 3. commit -> Kafka ack latency ({} writers, {} s per run, first {} s not counted; load {})",
        sizes.latency_writers,
        sizes.latency_secs,
        sizes.latency_warmup_secs,
        load_average()
    );
    let mut rates = vec![(1000.0, "1000/s".to_owned())];
    match half_r {
        Some(rate) if rate > 0.0 => rates.push((rate, "R/2".to_owned())),
        _ => println!("  half of R unknown (throughput phase not run): 1000/s only"),
    }
    let mut runs = Vec::new();
    for (rate, label) in rates {
        for wake in [true, false] {
            runs.push(run_one(env, sizes, rate, &label, wake, None).await?);
        }
        // What-if: the wake-up with the earlier default linger.ms, to show what lingering costs.
        runs.push(
            run_one(
                env,
                sizes,
                rate,
                &label,
                true,
                Some(crate::relay::ALT_LINGER_MS),
            )
            .await?,
        );
    }
    env.truncate().await?;
    Ok::<_, BoxError>(runs)
}
