//! Benchmarks of the outbox against the real PostgreSQL and Apache Kafka.
//!
//! Run with: `bash scripts/bench.sh` (or `just bench`; `just bench-smoke` for a quick check).
//!
//! Every run measures its own baselines on the same machine, in the same run, and reports the
//! library against them:
//!
//! 1. **write overhead**: one business transaction without an event (B), with the outbox row
//!    inserted by a hand-written statement (S), and through `OutboxWriter::add_event` (L), at 1 and
//!    8 clients, interleaved;
//!    1b. **event size**: S and L at payloads of 1 to 256 KiB, with the guard that fails the run
//!    when `add_event` of 32 KiB takes 3 times as long as one of 1 KiB (Nagle's stall), and one
//!    acknowledgement `DELETE` of many ids against chunks of 1,000;
//!    1c. **the File Service's upload path**: `POST /v1/files/batch` of one text file of 1 to
//!    100 KB to the `file-service` binary built beside this program;
//! 2. **relay throughput**: a backlog drained by `EventRelayWorker` into Kafka (R), beside a raw
//!    rdkafka producer (P) and the relay with a no-op publisher (D); and R with 16 and 64 KiB
//!    events;
//! 3. **commit-to-ack latency** at a steady offered load, with and without the in-process wake-up;
//!    3b. **writers in another process** (a child process of this program) at 1, 50 and 1,000
//!    events/s, with `wake_notifier()` and polling only, beside the in-process figure; and what
//!    `notify()` after each commit costs B, S and L at 1 and 8 clients;
//! 4. **scaling**: drain rate by backlog size, and peak memory;
//! 5. **inbox**: events/s consumed through the inbox with a trivial handler, beside a raw
//!    rdkafka consumer reading the same topic;
//! 6. **parked**: one claim's time while many rows are parked, beside the same claim with none.
//!
//! Each run creates its own database and topics and drops them at the end. Results go to
//! `benchmarks.json` and `benchmarks.md` in the output folder (`docs/` by default).

mod env;
mod inbox;
mod latency;
mod parked;
mod relay;
mod remote;
mod report;
mod stats;
mod sweep;
mod upload;
mod write;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::env::Env;

/// Any error, with the context it happened in.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The benchmark's result type.
pub(crate) type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}").into())
    }
}

/// The parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Write,
    Sweep,
    Upload,
    Relay,
    Latency,
    Remote,
    Scaling,
    Inbox,
    Parked,
}

impl Phase {
    const ALL: [Phase; 9] = [
        Phase::Write,
        Phase::Sweep,
        Phase::Upload,
        Phase::Relay,
        Phase::Latency,
        Phase::Remote,
        Phase::Scaling,
        Phase::Inbox,
        Phase::Parked,
    ];

    fn parse(name: &str) -> Result<Self> {
        match name {
            "write" => Ok(Self::Write),
            "sweep" => Ok(Self::Sweep),
            "upload" => Ok(Self::Upload),
            "relay" => Ok(Self::Relay),
            "latency" => Ok(Self::Latency),
            "remote" => Ok(Self::Remote),
            "scaling" => Ok(Self::Scaling),
            "inbox" => Ok(Self::Inbox),
            "parked" => Ok(Self::Parked),
            other => Err(format!(
                "unknown phase `{other}` (write, sweep, upload, relay, latency, remote, scaling, \
                 inbox, parked)"
            )
            .into()),
        }
    }
}

/// How much work each phase does.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub(crate) smoke: bool,
    /// Turn `TCP_NODELAY` off on the run's pooled connections before the event-size sweep, to
    /// show that the guard catches Nagle's stall.
    pub(crate) nagle: bool,
    /// Interleaved rounds of B, S, L.
    pub(crate) write_rounds: usize,
    /// Transactions per client per variant in one round, at 1 and at 8 clients.
    pub(crate) write_per_block: [usize; 2],
    /// Warm-up transactions per client per variant.
    pub(crate) write_warmup: usize,
    /// Event payloads of the size sweep, in KiB.
    pub(crate) sweep_payloads: Vec<usize>,
    /// Client counts of the size sweep.
    pub(crate) sweep_clients: Vec<usize>,
    /// Interleaved rounds of S and L per payload size.
    pub(crate) sweep_rounds: usize,
    /// Transactions per client per variant in one sweep round, at 1 and at 8 clients.
    pub(crate) sweep_per_block: [usize; 2],
    /// Ids in one acknowledgement of the what-if, and its repetitions per variant (none: not
    /// run).
    pub(crate) ack_ids: usize,
    pub(crate) ack_reps: usize,
    /// File sizes of the upload phase, in bytes.
    pub(crate) upload_bytes: Vec<usize>,
    /// Warm-up uploads per size, interleaved rounds, and uploads per size in one round.
    pub(crate) upload_warmup: usize,
    pub(crate) upload_rounds: usize,
    pub(crate) upload_per_block: usize,
    /// Payload bytes and backlog size of each large-event drain.
    pub(crate) large_drains: Vec<(usize, u64)>,
    /// Backlog drained in the throughput phase.
    pub(crate) backlog: u64,
    pub(crate) batch_sizes: Vec<usize>,
    /// Backlogs drained in the scaling phase.
    pub(crate) scaling: Vec<u64>,
    /// Largest backlog the scaling phase also drains with the no-op publisher.
    pub(crate) scaling_d_max: u64,
    /// What the report should say about the scaling sizes.
    pub(crate) scaling_note: Option<String>,
    /// Whole-run time the scaling phase keeps within, when set.
    pub(crate) budget: Option<Duration>,
    pub(crate) latency_secs: f64,
    pub(crate) latency_warmup_secs: f64,
    pub(crate) latency_writers: usize,
    /// Messages the inbox phase consumes, and its rounds (raw consumer, then inbox).
    pub(crate) inbox_events: u64,
    pub(crate) inbox_rounds: usize,
    /// Parked rows beside which the parked phase claims: none first (the baseline), and the
    /// largest ten times the one before it.
    pub(crate) parked: Vec<u64>,
    /// Distinct Kafka keys.
    pub(crate) keys: usize,
    pub(crate) partitions: i32,
}

impl Sizes {
    fn new(smoke: bool, large: bool) -> Self {
        if smoke {
            return Self {
                smoke,
                nagle: false,
                write_rounds: 4,
                write_per_block: [10, 2],
                write_warmup: 2,
                // What the guard compares.
                sweep_payloads: vec![1, 32],
                sweep_clients: vec![1],
                sweep_rounds: 8,
                sweep_per_block: [4, 1],
                ack_ids: 5_000,
                ack_reps: 0,
                upload_bytes: vec![1_000, 40_000],
                upload_warmup: 1,
                upload_rounds: 2,
                upload_per_block: 3,
                large_drains: vec![(16 * 1024, 100), (64 * 1024, 100)],
                backlog: 2_000,
                batch_sizes: vec![1000],
                scaling: vec![1_000, 2_000],
                scaling_d_max: 2_000,
                scaling_note: Some("smoke run: 1,000 and 2,000 events only".into()),
                budget: None,
                latency_secs: 3.0,
                latency_warmup_secs: 0.5,
                latency_writers: 4,
                inbox_events: 2_000,
                inbox_rounds: 1,
                parked: vec![0, 100, 1_000],
                keys: 1_000,
                partitions: 6,
            };
        }
        Self {
            smoke,
            nagle: false,
            write_rounds: 30,
            write_per_block: [150, 40],
            write_warmup: 30,
            sweep_payloads: SWEEP_PAYLOADS_KIB.to_vec(),
            sweep_clients: vec![1, 8],
            sweep_rounds: 15,
            sweep_per_block: [10, 2],
            ack_ids: 5_000,
            ack_reps: 15,
            upload_bytes: UPLOAD_BYTES.to_vec(),
            upload_warmup: 5,
            upload_rounds: 6,
            upload_per_block: 10,
            large_drains: vec![(16 * 1024, 5_000), (64 * 1024, 2_000)],
            backlog: if large { 1_000_000 } else { 100_000 },
            // The default batch size first: the what-if runs use it.
            batch_sizes: vec![1000, 500, 2000],
            scaling: vec![10_000, 1_000_000],
            scaling_d_max: if large { 1_000_000 } else { 10_000 },
            scaling_note: (!large).then(|| {
                "the 1,000,000-event backlog is drained by R only (pass --large for D too), \
                 within the 10-minute budget of a default run"
                    .into()
            }),
            budget: (!large).then_some(Duration::from_secs(570)),
            latency_secs: 20.0,
            latency_warmup_secs: 2.0,
            latency_writers: 16,
            inbox_events: 50_000,
            inbox_rounds: 3,
            parked: if large {
                vec![0, 100_000, 1_000_000]
            } else {
                vec![0, 10_000, 100_000]
            },
            keys: 1_000,
            partitions: 6,
        }
    }
}

/// Event payloads of the size sweep, in KiB.
const SWEEP_PAYLOADS_KIB: [usize; 6] = [1, 4, 16, 32, 64, 256];

/// File sizes of the upload phase, in bytes.
const UPLOAD_BYTES: [usize; 5] = [1_000, 10_000, 20_000, 40_000, 100_000];

struct Args {
    sizes: Sizes,
    phases: Vec<Phase>,
    out: PathBuf,
}

const USAGE: &str = "\
usage: outbox-bench [--smoke] [--large] [--nagle] [--backlog N] [--batch-sizes 500,1000] \
[--latency-secs S] [--only write,sweep,upload,relay,latency,remote,scaling,inbox,parked] [--out DIR]

  --smoke         tiny sizes (well under a minute); writes to a temporary folder unless --out
  --large         1,000,000-event backlogs (throughput and scaling)
  --nagle         turn TCP_NODELAY off on the run's database connections before the event-size
                  sweep: shows that the guard fails the run when Nagle's stall returns
  --backlog N     events in the throughput phase's backlog
  --batch-sizes   relay batch sizes to try in the throughput phase
  --latency-secs  length of each commit-to-ack run
  --only          run only these phases
  --out DIR       where benchmarks.json and benchmarks.md go (default: docs/)";

fn parse_args() -> Result<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let smoke = raw.iter().any(|a| a == "--smoke");
    let large = raw.iter().any(|a| a == "--large");
    let mut sizes = Sizes::new(smoke, large);
    let mut phases = Phase::ALL.to_vec();
    let mut out = None;
    let mut args = raw.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| BoxError::from(format!("{arg} needs a value\n{USAGE}")))
        };
        match arg.as_str() {
            "--smoke" | "--large" => {}
            "--nagle" => sizes.nagle = true,
            "--backlog" => {
                sizes.backlog = value()?.parse().context("--backlog")?;
            }
            "--batch-sizes" => {
                sizes.batch_sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .context("--batch-sizes")?;
            }
            "--latency-secs" => {
                sizes.latency_secs = value()?.parse().context("--latency-secs")?;
            }
            "--only" => {
                phases = value()?
                    .split(',')
                    .map(|s| Phase::parse(s.trim()))
                    .collect::<Result<_>>()?;
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
        }
    }
    let out = out.unwrap_or_else(|| {
        if smoke {
            std::env::temp_dir().join("outbox-bench-smoke")
        } else {
            let root = outbox_test_harness::repo_root();
            std::fs::canonicalize(&root).unwrap_or(root).join("docs")
        }
    });
    Ok(Args { sizes, phases, out })
}

#[tokio::main]
async fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(remote::CHILD_FLAG) {
        return remote::child(&raw[1..]).await;
    }
    let args = parse_args()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // A service exports the library's metrics; recording them is part of what it pays per event.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let env = Env::create(args.sizes.partitions, args.sizes.keys).await?;
    let machine = env.machine().await;
    println!("{}", machine.one_line());
    let mut results = report::Results::default();

    let mut phase_seconds = Vec::new();
    // Time the event-size and upload phases took: the scaling phase's budget leaves it out, so
    // its drains keep the time they had before those phases existed.
    let mut outside_budget = Duration::ZERO;
    for phase in Phase::ALL {
        if !args.phases.contains(&phase) {
            continue;
        }
        let phase_started = Instant::now();
        match phase {
            Phase::Write => results.write = write::run(&env, &args.sizes).await?,
            Phase::Sweep => results.sweep = Some(sweep::run(&env, &args.sizes).await?),
            Phase::Upload => results.uploads = Some(upload::run(&env, &args.sizes).await?),
            Phase::Relay => {
                results.relay = Some(relay::throughput(&env, &args.sizes).await?);
                results.large_drains = relay::large_events(&env, &args.sizes).await?;
            }
            Phase::Latency => {
                let half_r = results.relay.as_ref().and_then(|r| {
                    r.relay_rate_at(outbox_core::RelaySettings::default().batch_size)
                });
                results.latency = latency::run(&env, &args.sizes, half_r.map(|r| r / 2.0)).await?;
            }
            Phase::Remote => results.remote = Some(remote::run(&env, &args.sizes).await?),
            Phase::Inbox => results.inbox = Some(inbox::run(&env, &args.sizes).await?),
            Phase::Parked => results.parked = Some(parked::run(&env, &args.sizes).await?),
            Phase::Scaling => {
                let budget_start = started.checked_add(outside_budget).unwrap_or(started);
                results.scaling = Some(relay::scaling(&env, &args.sizes, budget_start).await?)
            }
        }
        let took = phase_started.elapsed();
        if matches!(phase, Phase::Sweep | Phase::Upload | Phase::Remote) {
            outside_budget += took;
        }
        println!("  ({phase:?} phase took {:.1} s)", took.as_secs_f64());
        phase_seconds.push((phase, took));
    }

    let run = report::Run {
        started_at,
        duration: started.elapsed(),
        command: command_line(),
        sizes: args.sizes.clone(),
        phases: phase_seconds,
    };
    let written = report::write(&args.out, &machine, &run, &results)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    drop(env);
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    // The guard against Nagle's stall, after the report is written so a failing run keeps it.
    // A busy machine can push one measurement over the limit: a failing guard measures again,
    // and fails the run only when the stall shows twice (it shows every time).
    if let Some(sweep) = &results.sweep
        && let Err(first) = sweep::guard(sweep)
    {
        eprintln!("{first}\nmeasuring the event-size sweep again before failing");
        let env = Env::create(args.sizes.partitions, args.sizes.keys).await?;
        let again = sweep::run(&env, &args.sizes).await?;
        match sweep::guard(&again) {
            Ok(message) => println!("{message}: ok on the second measurement"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    } else if let Some(sweep) = &results.sweep
        && let Ok(message) = sweep::guard(sweep)
    {
        println!("{message}: ok");
    }
    Ok(())
}

/// The command that produced the results: what the bench script says it ran, else this
/// program's own arguments.
fn command_line() -> String {
    if let Ok(command) = std::env::var("OUTBOX_BENCH_COMMAND")
        && !command.trim().is_empty()
    {
        return command;
    }
    std::env::args().collect::<Vec<_>>().join(" ")
}
