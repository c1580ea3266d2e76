//! Phase 1: what adding an event costs the writer's transaction.
//!
//! Three variants of the same File Service upload transaction, each on a SeaORM
//! `DatabaseTransaction` from the same pool (`BEGIN`, statements, `COMMIT`):
//!
//! - **B**: the upload row only;
//! - **S**: the upload row, then the outbox row by a hand-written statement: the library's own
//!   `INSERT` text and the same values, run with SeaORM's `execute` (a prepared, cached
//!   statement), without the library's code path;
//! - **L**: the upload row, then `OutboxWriter::add_event` of `PostgresOutbox`.
//!
//! S and L build the same event (a 1 KiB JSON envelope) inside the timed transaction, as a
//! service would. Variants run in interleaved rounds (B, S, L, then S, L, B, ...), so drift on a
//! shared machine touches all three alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{OutboxWriter, RelayNotifier};
use outbox_seaorm::PostgresOutbox;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use serde_json::{Value, json};

use crate::env::{Env, INSERT_UPLOAD, RAW_BYTES, Shape, Upload};
use crate::stats::{Summary, round3};
use crate::{Context, Result, Sizes};

/// The statement `PostgresOutbox::add_event` runs, character for character (the library keeps it
/// private): S must differ from L only in the code path around it.
const INSERT_EVENT: &str = "INSERT INTO event_outbox \
     (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Client counts measured.
pub(crate) const CLIENTS: [usize; 2] = [1, 8];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    B,
    S,
    L,
}

pub(crate) const VARIANTS: [Variant; 3] = [Variant::B, Variant::S, Variant::L];

impl Variant {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::B => "B",
            Self::S => "S",
            Self::L => "L",
        }
    }
}

/// One variant at one client count.
#[derive(Debug, Clone)]
pub(crate) struct VariantResult {
    pub(crate) variant: Variant,
    pub(crate) latency: Summary,
    pub(crate) tps: f64,
}

/// The three variants at one client count.
#[derive(Debug, Clone)]
pub(crate) struct WriteResult {
    pub(crate) clients: usize,
    pub(crate) variants: Vec<VariantResult>,
}

impl WriteResult {
    pub(crate) fn get(&self, variant: Variant) -> Option<&VariantResult> {
        self.variants.iter().find(|v| v.variant == variant)
    }

    /// L's p50 latency over `base`'s.
    pub(crate) fn p50_ratio(&self, base: Variant) -> Option<f64> {
        Some(self.get(Variant::L)?.latency.p50 / self.get(base)?.latency.p50)
    }

    /// L's throughput over `base`'s.
    pub(crate) fn tps_ratio(&self, base: Variant) -> Option<f64> {
        Some(self.get(Variant::L)?.tps / self.get(base)?.tps)
    }

    /// L minus B at p50 and p99, in ms.
    pub(crate) fn overhead(&self) -> Option<(f64, f64)> {
        let l = self.get(Variant::L)?.latency;
        let b = self.get(Variant::B)?.latency;
        Some((l.p50 - b.p50, l.p99 - b.p99))
    }

    pub(crate) fn to_json(&self) -> Value {
        let variants: Vec<Value> = self
            .variants
            .iter()
            .map(|v| {
                json!({
                    "variant": v.variant.name(),
                    "latency": v.latency.to_json(),
                    "tps": round3(v.tps),
                })
            })
            .collect();
        let (over50, over99) = self.overhead().unwrap_or_default();
        json!({
            "clients": self.clients,
            "variants": variants,
            "l_over_b_p50": self.p50_ratio(Variant::B).map(round3),
            "l_over_s_p50": self.p50_ratio(Variant::S).map(round3),
            "l_over_b_tps": self.tps_ratio(Variant::B).map(round3),
            "l_over_s_tps": self.tps_ratio(Variant::S).map(round3),
            "l_minus_b_p50_ms": round3(over50),
            "l_minus_b_p99_ms": round3(over99),
        })
    }
}

pub(crate) struct Writer {
    env_conn: sea_orm::DatabaseConnection,
    outbox: PostgresOutbox,
    shape: Shape,
    raw: Vec<u8>,
    keys: usize,
    seq: AtomicU64,
}

impl Writer {
    /// A writer on the run's pool whose events are built by `shape`.
    pub(crate) fn new(env: &Env, shape: Shape) -> Result<Self> {
        Ok(Self {
            env_conn: env.conn.clone(),
            outbox: PostgresOutbox::new(env.conn.clone()).context("repository")?,
            shape,
            raw: (0..RAW_BYTES).map(|i| (i * 31 % 251) as u8).collect(),
            keys: env.keys,
            seq: AtomicU64::new(0),
        })
    }

    /// One upload transaction of `variant`, timed from before `BEGIN` to after `COMMIT`.
    async fn transaction(
        &self,
        variant: Variant,
        notifier: Option<&RelayNotifier>,
    ) -> Result<Duration> {
        let upload = Upload::new(self.seq.fetch_add(1, Ordering::Relaxed), self.keys);
        let started = Instant::now();
        let txn = self.env_conn.begin().await.context("begin")?;
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            INSERT_UPLOAD,
            upload.values(&self.raw),
        ))
        .await
        .context("inserting the upload")?;
        match variant {
            Variant::B => {}
            Variant::S => {
                let event = self.shape.file_added(&upload)?;
                let key = event.key().to_owned();
                let headers = serde_json::to_value(&event.headers).context("headers")?;
                let values: Vec<sea_orm::Value> = vec![
                    event.event_id.as_uuid().into(),
                    event.aggregate_type.into(),
                    event.aggregate_id.into(),
                    event.event_type.into(),
                    event.topic.unwrap_or_default().into(),
                    key.into(),
                    event.payload.into(),
                    headers.into(),
                ];
                txn.execute(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    INSERT_EVENT,
                    values,
                ))
                .await
                .context("inserting the event by hand")?;
            }
            Variant::L => {
                let event = self.shape.file_added(&upload)?;
                self.outbox
                    .add_event(&txn, event)
                    .await
                    .context("add_event")?;
            }
        }
        txn.commit().await.context("commit")?;
        if let Some(notifier) = notifier {
            notifier.notify();
        }
        Ok(started.elapsed())
    }
}

/// `clients` tasks running `per_client` transactions of `variant` each. Returns the latencies and
/// the wall time of the whole block.
pub(crate) async fn block(
    writer: &Arc<Writer>,
    variant: Variant,
    clients: usize,
    per_client: usize,
) -> Result<(Vec<Duration>, Duration)> {
    block_notifying(writer, variant, clients, per_client, None).await
}

/// [`block`], calling `notifier.notify()` after each commit when given (inside the timed span:
/// what the wake-up costs the writer).
pub(crate) async fn block_notifying(
    writer: &Arc<Writer>,
    variant: Variant,
    clients: usize,
    per_client: usize,
    notifier: Option<&RelayNotifier>,
) -> Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let writer = writer.clone();
            let notifier = notifier.cloned();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    samples.push(writer.transaction(variant, notifier.as_ref()).await?);
                }
                Ok::<_, crate::BoxError>(samples)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(clients * per_client);
    for task in tasks {
        samples.extend(task.await.context("writer task")??);
    }
    Ok((samples, started.elapsed()))
}

/// Runs phase 1 at 1 and 8 clients.
pub(crate) async fn run(env: &Env, sizes: &Sizes) -> Result<Vec<WriteResult>> {
    println!("\n== 1. write overhead (B: no event, S: hand-written insert, L: add_event)");
    let writer = Arc::new(Writer::new(env, Shape::new(env.relay_topic.name()))?);
    let mut results = Vec::new();
    for (index, &clients) in CLIENTS.iter().enumerate() {
        env.truncate().await?;
        for variant in VARIANTS {
            block(&writer, variant, clients, sizes.write_warmup).await?;
        }
        let per_client = sizes.write_per_block[index];
        let mut samples: [Vec<Duration>; 3] = Default::default();
        let mut walls = [Duration::ZERO; 3];
        for round in 0..sizes.write_rounds {
            for k in 0..VARIANTS.len() {
                let slot = (round + k) % VARIANTS.len();
                let (latencies, wall) = block(&writer, VARIANTS[slot], clients, per_client).await?;
                samples[slot].extend(latencies);
                walls[slot] += wall;
            }
        }
        let variants: Vec<VariantResult> = VARIANTS
            .iter()
            .enumerate()
            .map(|(slot, &variant)| {
                let count = samples[slot].len();
                VariantResult {
                    variant,
                    latency: Summary::of(&mut samples[slot]),
                    tps: count as f64 / walls[slot].as_secs_f64(),
                }
            })
            .collect();
        let result = WriteResult { clients, variants };
        for v in &result.variants {
            println!(
                "  {clients} client(s) {}: p50 {:.3} ms  p99 {:.3} ms  {:.0} tx/s  ({} tx)",
                v.variant.name(),
                v.latency.p50,
                v.latency.p99,
                v.tps,
                v.latency.count
            );
        }
        let (over50, over99) = result.overhead().unwrap_or_default();
        println!(
            "  {clients} client(s) L/B p50 {:.3}  L/S p50 {:.3}  L/B tps {:.3}  L/S tps {:.3}  L-B p50 {:+.3} ms  p99 {:+.3} ms",
            result.p50_ratio(Variant::B).unwrap_or_default(),
            result.p50_ratio(Variant::S).unwrap_or_default(),
            result.tps_ratio(Variant::B).unwrap_or_default(),
            result.tps_ratio(Variant::S).unwrap_or_default(),
            over50,
            over99
        );
        results.push(result);
    }
    env.truncate().await?;
    Ok(results)
}
