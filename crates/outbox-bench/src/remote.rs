//! Phase 3b (issue 16): writers in another process than the relay, and what the wake-up costs
//! them.
//!
//! **Commit to ack, cross-process.** This program re-executes itself with the hidden
//! [`CHILD_FLAG`] subcommand: the child connects to the run's database, writes the upload
//! transaction with `add_event` paced to the offered rate, calls
//! `PostgresOutbox::wake_notifier().notify()` after each commit (or not: polling only), and
//! prints each event's id and commit time (wall clock) on stdout. The parent runs the relay with
//! its publisher wrapped to note when each event's `publish` returned, converted to wall clock.
//! Latency = ack − commit per event; both clocks are the same machine's `SystemTime`. The
//! in-process figure (writers beside the relay, `notifier().notify()`) runs at the same rates.
//!
//! **The writer's cost.** B, S and L (see `write.rs`) at 1 and 8 clients, each without and with
//! `notify()` after the commit from a `wake_notifier()` (this process runs no relay, so every
//! call takes the remote path), interleaved in rounds; the notify is inside the timed span.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outbox_core::{EventId, EventRelayWorker, RelaySettings};
use outbox_seaorm::PostgresOutbox;
use serde_json::{Value, json};

use crate::env::{CpuPressure, Env, Shape, load_average, percent};
use crate::latency::{LatencyRun, Writer, run_one, write_paced, writers_for};
use crate::relay::{Probe, TimedPublisher, TimedStore, kafka_publisher, warm_up};
use crate::stats::{Summary, median, round3};
use crate::write::{CLIENTS, VARIANTS, Variant, VariantResult, block_notifying};
use crate::{BoxError, Context, Result, Sizes};

/// The hidden subcommand that runs the writers of a cross-process run.
pub(crate) const CHILD_FLAG: &str = "--remote-writer";

/// Offered rates of the cross-process runs, events/s.
pub(crate) fn rates(sizes: &Sizes) -> Vec<f64> {
    if sizes.smoke {
        vec![1000.0]
    } else {
        vec![1.0, 50.0, 1000.0]
    }
}

/// Where the writers ran and how they woke the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writers {
    /// Beside the relay, `notifier().notify()` after each commit.
    InProcess,
    /// In another process, `wake_notifier().notify()` after each commit.
    RemoteNotify,
    /// In another process, no notification: the relay polls.
    RemotePolling,
}

impl Writers {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::InProcess => "same process, wake-up",
            Self::RemoteNotify => "other process, wake_notifier()",
            Self::RemotePolling => "other process, polling only",
        }
    }
}

/// One commit-to-ack run of this phase.
#[derive(Debug, Clone)]
pub(crate) struct CrossRun {
    pub(crate) writers: Writers,
    pub(crate) run: LatencyRun,
}

/// One variant at one client count, without and with the wake-up.
#[derive(Debug, Clone)]
pub(crate) struct CostRow {
    pub(crate) clients: usize,
    pub(crate) without: VariantResult,
    pub(crate) with: VariantResult,
    /// Per round, p50 with minus p50 without (ms), and tps with over without: the two blocks of
    /// a round run minutes closer together than the rounds, so their difference carries less of
    /// the machine's drift than the pooled figures.
    pub(crate) round_p50_added: Vec<f64>,
    pub(crate) round_tps_ratio: Vec<f64>,
}

impl CostRow {
    /// The median over rounds of the added p50.
    pub(crate) fn paired_p50_added(&self) -> f64 {
        median(&self.round_p50_added)
    }

    /// The median over rounds of tps with over without.
    pub(crate) fn paired_tps_ratio(&self) -> f64 {
        median(&self.round_tps_ratio)
    }

    pub(crate) fn p50_added(&self) -> f64 {
        self.with.latency.p50 - self.without.latency.p50
    }

    pub(crate) fn p99_added(&self) -> f64 {
        self.with.latency.p99 - self.without.latency.p99
    }

    pub(crate) fn tps_ratio(&self) -> f64 {
        self.with.tps / self.without.tps
    }
}

/// Everything this phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteResults {
    pub(crate) runs: Vec<CrossRun>,
    pub(crate) cost: Vec<CostRow>,
}

impl RemoteResults {
    /// The run of `writers` at `offered`.
    pub(crate) fn find(&self, writers: Writers, offered: f64) -> Option<&LatencyRun> {
        self.runs
            .iter()
            .find(|r| r.writers == writers && r.run.offered == offered)
            .map(|r| &r.run)
    }

    /// L's row at `clients`.
    pub(crate) fn cost_of_l(&self, clients: usize) -> Option<&CostRow> {
        self.cost
            .iter()
            .find(|c| c.clients == clients && c.without.variant == Variant::L)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "commit_to_ack": self.runs.iter().map(|r| {
                let mut v = r.run.to_json();
                v["writers"] = json!(r.writers.label());
                v
            }).collect::<Vec<_>>(),
            "wake_up_cost": self.cost.iter().map(|c| json!({
                "clients": c.clients,
                "variant": c.without.variant.name(),
                "without": {"latency": c.without.latency.to_json(), "tps": round3(c.without.tps)},
                "with": {"latency": c.with.latency.to_json(), "tps": round3(c.with.tps)},
                "added_p50_ms": round3(c.p50_added()),
                "added_p50_ms_paired_median": round3(c.paired_p50_added()),
                "tps_with_over_without_paired_median": round3(c.paired_tps_ratio()),
                "rounds": c.round_p50_added.len(),
                "added_p99_ms": round3(c.p99_added()),
                "tps_with_over_without": round3(c.tps_ratio()),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The child: `--remote-writer URL TOPIC RATE SECONDS WARMUP WRITERS NOTIFY KEYS`. Prints
/// `e <event id> <commit, ns since the epoch> <transaction ns>` per event committed after the
/// warm-up, then `done <commits> <seconds>`.
pub(crate) async fn child(args: &[String]) -> Result<()> {
    let [url, topic, rate, secs, warmup, writers, notify, keys] = args else {
        return Err(format!("{CHILD_FLAG} needs 8 arguments, got {}", args.len()).into());
    };
    let rate: f64 = rate.parse().context("rate")?;
    let secs: f64 = secs.parse().context("seconds")?;
    let warmup: f64 = warmup.parse().context("warm-up")?;
    let writers: usize = writers.parse().context("writers")?;
    let keys: usize = keys.parse().context("keys")?;
    let mut options = sea_orm::ConnectOptions::new(url.clone());
    options
        .max_connections(writers as u32 + 2)
        .sqlx_logging(false);
    let conn = sea_orm::Database::connect(options)
        .await
        .context("connecting the writer process")?;
    let writer = Arc::new(Writer::new(conn.clone(), topic, keys)?);
    let notifier = (notify == "1")
        .then(|| PostgresOutbox::new(conn).map(|o| o.wake_notifier()))
        .transpose()
        .context("repository")?;
    let period = Duration::from_secs_f64(writers as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let until = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let first = start + period.mul_f64(i as f64 / writers as f64);
            tokio::spawn(write_paced(
                writer.clone(),
                period,
                first,
                until,
                notifier.clone(),
            ))
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
    let (wall, mono) = (SystemTime::now(), Instant::now());
    let cutoff = start + Duration::from_secs_f64(warmup);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for ((id, at), took) in commits.iter().zip(&txns) {
        if *at < cutoff {
            continue;
        }
        let nanos = unix_nanos(wall, mono, *at)?;
        writeln!(out, "e {} {nanos} {}", id.as_uuid(), took.as_nanos()).context("stdout")?;
    }
    writeln!(out, "done {} {seconds}", commits.len()).context("stdout")?;
    out.flush().context("stdout")?;
    Ok(())
}

/// `at` on the wall clock, in ns since the epoch, from a (`SystemTime`, `Instant`) pair read
/// together.
fn unix_nanos(wall: SystemTime, mono: Instant, at: Instant) -> Result<i128> {
    let base = wall.duration_since(UNIX_EPOCH).context("clock")?.as_nanos() as i128;
    Ok(if at >= mono {
        base + (at - mono).as_nanos() as i128
    } else {
        base - (mono - at).as_nanos() as i128
    })
}

/// One cross-process run: the relay here, the writers in a child process.
async fn run_remote(env: &Env, sizes: &Sizes, offered: f64, notify: bool) -> Result<LatencyRun> {
    env.truncate().await?;
    let topic = env.latency_topic.name();
    let probe = Probe::recording_acks();
    let outbox = Arc::new(PostgresOutbox::new(env.conn.clone()).context("repository")?);
    let kafka = kafka_publisher(env, None)?;
    warm_up(env, topic, &kafka).await?;
    let worker = EventRelayWorker::new(
        TimedStore::new(outbox, probe.clone()),
        TimedPublisher::new(kafka, probe.clone()),
        RelaySettings::default(),
    )
    .context("relay worker")?;
    worker.start().context("starting the relay")?;
    // Let the relay take the leadership and LISTEN before the writers start.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let writers = writers_for(sizes, offered);
    let exe = std::env::current_exe().context("this program's path")?;
    let args: Vec<String> = vec![
        CHILD_FLAG.into(),
        env.database_url().into(),
        topic.into(),
        offered.to_string(),
        sizes.latency_secs.to_string(),
        sizes.latency_warmup_secs.to_string(),
        writers.to_string(),
        if notify { "1" } else { "0" }.into(),
        env.keys.to_string(),
    ];
    let pressure = CpuPressure::start();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
    })
    .await
    .context("writer process")?
    .context("running the writer process")?;
    if !output.status.success() {
        worker.stop().await.context("stopping the relay")?;
        return Err(format!("the writer process failed: {}", output.status).into());
    }
    let cpu_pressure = pressure.share();
    let stdout = String::from_utf8(output.stdout).context("writer output")?;
    let mut commits: Vec<(EventId, i128)> = Vec::new();
    let mut txns = Vec::new();
    let mut total = 0usize;
    let mut seconds: f64 = 0.0;
    for line in stdout.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["e", id, at, took] => {
                let id = EventId::from_uuid(id.parse().context("event id")?);
                commits.push((id, at.parse().context("commit time")?));
                txns.push(Duration::from_nanos(took.parse().context("txn time")?));
            }
            ["done", n, s] => {
                total = n.parse().context("commits")?;
                seconds = s.parse().context("seconds")?;
            }
            _ => return Err(format!("unexpected writer output `{line}`").into()),
        }
    }

    let (wall, mono) = (SystemTime::now(), Instant::now());
    let mut acks: HashMap<EventId, Instant> = HashMap::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        acks.extend(probe.take_acks());
        if commits.iter().all(|(id, _)| acks.contains_key(id)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await.context("stopping the relay")?;
    acks.extend(probe.take_acks());
    let claims: HashMap<EventId, Instant> = probe.take_claims().into_iter().collect();

    let mut latencies = Vec::new();
    let mut to_claim = Vec::new();
    let mut missing = 0;
    let mut early = 0;
    for (id, committed) in &commits {
        if let Some(claimed) = claims.get(id) {
            let claimed = unix_nanos(wall, mono, *claimed)?;
            to_claim.push(Duration::from_nanos((claimed - committed).max(0) as u64));
        }
        match acks.get(id) {
            Some(acked) => {
                let acked = unix_nanos(wall, mono, *acked)?;
                if acked < *committed {
                    early += 1;
                }
                let nanos = (acked - committed).max(0) as u64;
                latencies.push(Duration::from_nanos(nanos));
            }
            None => missing += 1,
        }
    }
    let breakdown = probe.breakdown();
    let run = LatencyRun {
        linger_ms: None,
        mean_batch: acks.len() as f64 / breakdown.batches.max(1) as f64,
        breakdown,
        offered,
        offered_label: format!("{offered}/s"),
        wake: notify,
        achieved: total as f64 / seconds.max(f64::EPSILON),
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
        "  {offered}/s, other process, {}: commit->ack p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  \
         ({} events, {} missing, {} acked before the commit returned); commit->claim p50 {:.2} ms  \
         p99 {:.2} ms; writer txn p50 {:.2} ms  p99 {:.2} ms; CPU pressure {}; {} batches of {:.1} on average, claim p50 {:.2} \
         ms, publish p50 {:.2} ms, ack p50 {:.2} ms",
        if notify {
            "wake_notifier()"
        } else {
            "polling only"
        },
        run.latency.p50,
        run.latency.p99,
        run.latency.max,
        run.measured,
        run.missing,
        run.ack_before_commit,
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

/// B, S and L without and with the wake-up at 1 and 8 clients.
async fn wake_cost(env: &Env, sizes: &Sizes) -> Result<Vec<CostRow>> {
    println!(
        "  writer's cost of the wake-up (B, S, L without and with wake_notifier().notify()); load {}",
        load_average()
    );
    let writer = Arc::new(crate::write::Writer::new(
        env,
        Shape::new(env.relay_topic.name()),
    )?);
    let notifier = PostgresOutbox::new(env.conn.clone())
        .context("repository")?
        .wake_notifier();
    let slots: Vec<(Variant, bool)> = VARIANTS
        .iter()
        .flat_map(|&v| [(v, false), (v, true)])
        .collect();
    // A block at 8 clients lasts about 0.1 s. Over 15 rounds the paired median at 8 clients
    // came out at -0.03 (B), +0.03 (S) and +0.12 ms (L) in one run, although the three send the
    // same notifications: a spread as wide as the bound (0.1 ms). Three times the rounds narrow
    // the median's spread by about the square root of three.
    let rounds = (sizes.write_rounds * 3 / 2).max(2);
    let mut rows = Vec::new();
    for (index, &clients) in CLIENTS.iter().enumerate() {
        env.truncate().await?;
        for &(variant, on) in &slots {
            let n = on.then_some(&notifier);
            block_notifying(&writer, variant, clients, sizes.write_warmup, n).await?;
        }
        let per_client = sizes.write_per_block[index];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); slots.len()];
        let mut walls = vec![Duration::ZERO; slots.len()];
        // Per slot and round: (p50 ms, tps).
        let mut per_round: Vec<Vec<(f64, f64)>> = vec![Vec::new(); slots.len()];
        for round in 0..rounds {
            for k in 0..slots.len() {
                let slot = (round + k) % slots.len();
                let (variant, on) = slots[slot];
                let n = on.then_some(&notifier);
                let (mut latencies, wall) =
                    block_notifying(&writer, variant, clients, per_client, n).await?;
                let tps = latencies.len() as f64 / wall.as_secs_f64();
                samples[slot].extend(latencies.iter().copied());
                per_round[slot].push((Summary::of(&mut latencies).p50, tps));
                walls[slot] += wall;
            }
        }
        let mut results: Vec<VariantResult> = Vec::new();
        for (slot, &(variant, _)) in slots.iter().enumerate() {
            let count = samples[slot].len();
            results.push(VariantResult {
                variant,
                latency: Summary::of(&mut samples[slot]),
                tps: count as f64 / walls[slot].as_secs_f64(),
            });
        }
        for (i, pair) in results.chunks(2).enumerate() {
            let (without, with) = (&per_round[2 * i], &per_round[2 * i + 1]);
            let row = CostRow {
                clients,
                without: pair[0].clone(),
                with: pair[1].clone(),
                round_p50_added: without.iter().zip(with).map(|(a, b)| b.0 - a.0).collect(),
                round_tps_ratio: without.iter().zip(with).map(|(a, b)| b.1 / a.1).collect(),
            };
            println!(
                "  {clients} client(s) {}: p50 {:.3} -> {:.3} ms ({:+.3}; paired median {:+.3})  p99 \
                 {:.3} -> {:.3} ms ({:+.3})  {:.0} -> {:.0} tx/s ({:.3}; paired median {:.3})",
                row.without.variant.name(),
                row.without.latency.p50,
                row.with.latency.p50,
                row.p50_added(),
                row.paired_p50_added(),
                row.without.latency.p99,
                row.with.latency.p99,
                row.p99_added(),
                row.without.tps,
                row.with.tps,
                row.tps_ratio(),
                row.paired_tps_ratio()
            );
            rows.push(row);
        }
    }
    env.truncate().await?;
    Ok(rows)
}

/// Runs phase 3b.
pub(crate) async fn run(env: &Env, sizes: &Sizes) -> Result<RemoteResults> {
    println!(
        "\n== 3b. writers in another process (issue 16): commit -> Kafka ack, {} s per run, first \
         {} s not counted; load {}",
        sizes.latency_secs,
        sizes.latency_warmup_secs,
        load_average()
    );
    let mut results = RemoteResults::default();
    for offered in rates(sizes) {
        let label = format!("{offered}/s");
        let run = run_one(env, sizes, offered, &label, true, None).await?;
        results.runs.push(CrossRun {
            writers: Writers::InProcess,
            run,
        });
        for (writers, notify) in [
            (Writers::RemoteNotify, true),
            (Writers::RemotePolling, false),
        ] {
            let run = run_remote(env, sizes, offered, notify).await?;
            results.runs.push(CrossRun { writers, run });
        }
    }
    results.cost = wake_cost(env, sizes).await?;
    Ok::<_, BoxError>(results)
}
