//! The JSON result and the markdown report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::env::{Machine, PAYLOAD_BYTES, RAW_BYTES, percent};
use crate::inbox::InboxResults;
use crate::latency::LatencyRun;
use crate::parked::ParkedResults;
use crate::relay::{Drain, Explain, LargeDrain, RelayResults, Scaling};
use crate::remote::{RemoteResults, Writers};
use crate::sweep::{GUARD_RATIO, Sweep};
use crate::upload::Uploads;
use crate::write::{Variant, WriteResult};
use crate::{Context, Phase, Result, Sizes};

/// Everything measured.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) write: Vec<WriteResult>,
    pub(crate) sweep: Option<Sweep>,
    pub(crate) uploads: Option<Uploads>,
    pub(crate) relay: Option<RelayResults>,
    pub(crate) large_drains: Vec<LargeDrain>,
    pub(crate) latency: Vec<LatencyRun>,
    pub(crate) remote: Option<RemoteResults>,
    pub(crate) scaling: Option<Scaling>,
    pub(crate) inbox: Option<InboxResults>,
    pub(crate) parked: Option<ParkedResults>,
}

/// How the run was made.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) duration: Duration,
    pub(crate) command: String,
    pub(crate) sizes: Sizes,
    /// The phases run and how long each took.
    pub(crate) phases: Vec<(Phase, Duration)>,
}

/// One target and where the run stands against it.
struct Target {
    name: &'static str,
    goal: &'static str,
    measured: String,
    met: Option<bool>,
}

impl Target {
    fn status(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        }
    }
}

fn targets(results: &Results) -> Vec<Target> {
    let mut targets = Vec::new();
    // Targets are judged at the relay's default batch size.
    let default_batch = outbox_core::RelaySettings::default().batch_size;
    let r_default = results.relay.as_ref().and_then(|r| {
        r.runs
            .iter()
            .find(|t| t.batch_size == default_batch)
            .or(r.runs.first())
    });
    targets.push(Target {
        name: "relay drain rate",
        goal: "R >= 20,000 events/s",
        measured: r_default.map_or("-".into(), |t| {
            format!("R = {:.0} events/s (batch {})", t.r.rate, t.batch_size)
        }),
        met: r_default.map(|t| t.r.rate >= 20_000.0),
    });
    targets.push(Target {
        name: "relay vs its parts",
        goal: "R/H >= 1.0",
        measured: r_default.map_or("-".into(), |t| {
            format!(
                "R/H = {:.3} (H = {:.0}, batch {})",
                t.r.rate / t.h(),
                t.h(),
                t.batch_size
            )
        }),
        met: r_default.map(|t| t.r.rate / t.h() >= 1.0),
    });
    let w8 = results.write.iter().find(|w| w.clients == 8);
    targets.push(Target {
        name: "writer: L vs hand-written insert, 8 clients",
        goal: "L/S <= 1.05 at p50, L tps >= 95% of S",
        measured: w8.map_or("-".into(), |w| {
            format!(
                "L/S p50 = {:.3}, L/S tps = {:.3}",
                w.p50_ratio(Variant::S).unwrap_or_default(),
                w.tps_ratio(Variant::S).unwrap_or_default()
            )
        }),
        met: w8.and_then(|w| {
            Some(w.p50_ratio(Variant::S)? <= 1.05 && w.tps_ratio(Variant::S)? >= 0.95)
        }),
    });
    for w in &results.write {
        let name = if w.clients == 1 {
            "writer: L adds to B, 1 client"
        } else {
            "writer: L adds to B, 8 clients"
        };
        let (p50, p99) = w.overhead().unwrap_or_default();
        targets.push(Target {
            name,
            goal: "L - B <= 0.25 ms at p50 and <= 1 ms at p99",
            measured: format!("{p50:+.3} ms at p50, {p99:+.3} ms at p99"),
            met: Some(p50 <= 0.25 && p99 <= 1.0),
        });
    }
    let sweep = results.sweep.as_ref();
    for variant in [Variant::S, Variant::L] {
        let steps: Vec<(usize, f64)> = crate::write::CLIENTS
            .iter()
            .filter_map(|&c| Some((c, sweep?.step(variant, c, 16, 32)?)))
            .collect();
        targets.push(Target {
            name: if variant == Variant::S {
                "no step from 16 to 32 KiB events, S"
            } else {
                "no step from 16 to 32 KiB events, L"
            },
            goal: "p50 at 32 KiB <= 1.5 x p50 at 16 KiB (1 and 8 clients)",
            measured: if steps.is_empty() {
                "-".into()
            } else {
                steps
                    .iter()
                    .map(|(c, r)| format!("{r:.3} ({c} client{})", if *c == 1 { "" } else { "s" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            met: (!steps.is_empty()).then(|| steps.iter().all(|(_, r)| *r <= 1.5)),
        });
    }
    let guard = sweep.and_then(Sweep::guard_ratio);
    targets.push(Target {
        name: "TCP_NODELAY guard (fails the run)",
        goal: "add_event p50 at 32 KiB < 3 x at 1 KiB, 1 client",
        measured: guard.map_or("-".into(), |r| format!("{r:.3}")),
        met: guard.map(|r| r < GUARD_RATIO),
    });
    let uploads = results.uploads.as_ref().filter(|u| u.skipped.is_none());
    let upload_step = uploads.and_then(|u| Some((u.p50(40_000)?, u.p50(1_000)?)));
    targets.push(Target {
        name: "File Service upload, 40 KB vs 1 KB",
        goal: "p50 at 40 KB <= 1.5 x p50 at 1 KB",
        measured: upload_step.map_or("-".into(), |(l, s)| {
            format!("{:.3} ({l:.3} ms vs {s:.3} ms)", l / s)
        }),
        met: upload_step.map(|(l, s)| l / s <= 1.5),
    });
    let half = results
        .latency
        .iter()
        .find(|l| l.wake && l.linger_ms.is_none() && l.offered_label == "R/2");
    targets.push(Target {
        name: "commit -> ack at R/2 with wake-up",
        goal: "p50 <= 5 ms, p99 <= 25 ms",
        measured: half.map_or("-".into(), |l| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms at {:.0}/s offered ({:.0}/s achieved)",
                l.latency.p50, l.latency.p99, l.offered, l.achieved
            )
        }),
        met: half.map(|l| l.latency.p50 <= 5.0 && l.latency.p99 <= 25.0),
    });
    remote_targets(results.remote.as_ref(), &mut targets);
    let scaling = results.scaling.as_ref();
    let has_million = scaling.is_some_and(|s| s.runs.iter().any(|run| run.events >= 1_000_000));
    targets.push(Target {
        name: "drain rate, 1M backlog vs 10k",
        goal: ">= 80%",
        measured: match scaling {
            Some(s) if has_million => format!(
                "{:.1}% ({:.0} vs {:.0} events/s)",
                s.ratio().unwrap_or_default() * 100.0,
                s.runs.last().map(|run| run.r.rate).unwrap_or_default(),
                s.runs.first().map(|run| run.r.rate).unwrap_or_default()
            ),
            Some(s) => s.notes.join("; "),
            None => "-".into(),
        },
        met: match scaling {
            Some(s) if has_million => s.ratio().map(|r| r >= 0.8),
            _ => None,
        },
    });
    let inbox = results.inbox.as_ref();
    targets.push(Target {
        name: "inbox, trivial handler",
        goal: ">= 10,000 events/s",
        measured: inbox.map_or("-".into(), |i| {
            format!(
                "{:.0} events/s (raw consumer {:.0}/s, ratio {:.2})",
                i.inbox_median(),
                i.raw_median(),
                i.inbox_median() / i.raw_median()
            )
        }),
        met: inbox.map(|i| i.inbox_median() >= 10_000.0),
    });
    let growth = results.parked.as_ref().and_then(ParkedResults::growth);
    targets.push(Target {
        name: "claim beside parked rows grows with them, not their square",
        goal: "p50 with 10x the parked rows <= 20x (in proportion: about 10x)",
        measured: growth.map_or("-".into(), |(ratio, tenth, most)| {
            format!("{ratio:.1}x from {tenth} to {most} parked rows")
        }),
        met: growth.map(|(ratio, _, _)| ratio <= 20.0),
    });
    targets
}

fn sizes_json(sizes: &Sizes) -> Value {
    json!({
        "smoke": sizes.smoke,
        "write_rounds": sizes.write_rounds,
        "write_per_client_per_round": {"1": sizes.write_per_block[0], "8": sizes.write_per_block[1]},
        "write_warmup_per_client": sizes.write_warmup,
        "backlog": sizes.backlog,
        "batch_sizes": sizes.batch_sizes,
        "scaling_backlogs": sizes.scaling,
        "latency_seconds": sizes.latency_secs,
        "latency_warmup_seconds": sizes.latency_warmup_secs,
        "latency_writers": sizes.latency_writers,
        "inbox_events": sizes.inbox_events,
        "inbox_rounds": sizes.inbox_rounds,
        "parked_rows": sizes.parked,
        "keys": sizes.keys,
        "partitions": sizes.partitions,
        "payload_bytes": PAYLOAD_BYTES,
        "upload_raw_bytes": RAW_BYTES,
        "sweep_payloads_kib": sizes.sweep_payloads,
        "sweep_clients": sizes.sweep_clients,
        "tcp_nodelay_turned_off_by_nagle_option": sizes.nagle,
        "sweep_rounds": sizes.sweep_rounds,
        "sweep_per_client_per_round": {"1": sizes.sweep_per_block[0], "8": sizes.sweep_per_block[1]},
        "acknowledge_ids": sizes.ack_ids,
        "acknowledge_repetitions": sizes.ack_reps,
        "upload_file_bytes": sizes.upload_bytes,
        "upload_rounds": sizes.upload_rounds,
        "upload_per_size_per_round": sizes.upload_per_block,
        "large_drains": sizes.large_drains.iter().map(|(b, n)| json!({"payload_bytes": b, "events": n})).collect::<Vec<_>>(),
    })
}

fn to_json(machine: &Machine, run: &Run, results: &Results) -> Value {
    json!({
        "started_at": run.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "duration_seconds": run.duration.as_secs(),
        "command": run.command,
        "phase_seconds": run
            .phases
            .iter()
            .map(|(p, d)| (format!("{p:?}").to_lowercase(), json!(d.as_secs())))
            .collect::<serde_json::Map<_, _>>(),
        "machine": machine.to_json(),
        "load_average_at_end": crate::env::load_average(),
        "sizes": sizes_json(&run.sizes),
        "write": results.write.iter().map(WriteResult::to_json).collect::<Vec<_>>(),
        "event_size_sweep": results.sweep.as_ref().map(Sweep::to_json),
        "file_service_uploads": results.uploads.as_ref().map(Uploads::to_json),
        "relay": results.relay.as_ref().map(RelayResults::to_json),
        "relay_large_events": results.large_drains.iter().map(LargeDrain::to_json).collect::<Vec<_>>(),
        "latency": results.latency.iter().map(LatencyRun::to_json).collect::<Vec<_>>(),
        "remote_writers": results.remote.as_ref().map(RemoteResults::to_json),
        "scaling": results.scaling.as_ref().map(Scaling::to_json),
        "inbox": results.inbox.as_ref().map(InboxResults::to_json),
        "claims_beside_parked_rows": results.parked.as_ref().map(ParkedResults::to_json),
        "targets": targets(results).iter().map(|t| json!({
            "name": t.name,
            "goal": t.goal,
            "measured": t.measured,
            "status": t.status(),
        })).collect::<Vec<_>>(),
    })
}

fn breakdown_row(out: &mut String, label: &str, d: &Drain) {
    let b = &d.breakdown;
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {:.0} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} → {:.2} | {} → {} | {:.0} | {} |",
        d.events,
        d.batch_size,
        d.rate,
        b.batches,
        b.claim.p50,
        b.claim.p99,
        b.publish.p50,
        b.publish.p99,
        b.ack.p50,
        b.ack.p99,
        b.other.p50,
        b.other.p99,
        b.claim_first_tenth_ms,
        b.claim_last_tenth_ms,
        d.rss_before_kib / 1024,
        d.rss.peak_kib / 1024,
        d.server.wal_bytes / d.events as f64,
        d.server.checkpoints,
    );
}

/// The claim half-way through a drain, as the relay runs it and starting after the last
/// acknowledged id.
fn explain_pair(out: &mut String, what: &str, plain: &Explain, keyset: &Explain) {
    explain_block(
        out,
        &format!("\nThe claim half-way through the {what}"),
        plain,
    );
    explain_block(
        out,
        &format!(
            "\nAt the same moment, the claim above the cursor `{}` (the last acknowledged id), as \
             the relay runs it while batches come back full: the scan starts after the rows \
             already deleted",
            keyset.after.unwrap_or_default()
        ),
        keyset,
    );
}

const BREAKDOWN_HEADER: &str = "| run | events | batch | events/s | batches | claim ms p50 / p99 | publish ms p50 / p99 | ack ms p50 / p99 | other ms p50 / p99 | claim ms mean, first → last tenth | RSS MiB before → peak | WAL bytes/event (server-wide) | checkpoints |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn explain_block(out: &mut String, title: &str, e: &Explain) {
    let _ = writeln!(
        out,
        "\n{title}: {} pending, LIMIT {}: execution {:.2} ms for {} rows, planning {:.2} ms; the \
         bare query fetched through sqlx (rows not decoded into events) {:.2} ms for {} rows. \
         Oldest open transaction on the server then: {}.\n\n```text\n{}\n```",
        e.pending,
        e.limit,
        e.execution_ms,
        e.plan_rows,
        e.planning_ms,
        e.client_fetch_ms,
        e.fetched_rows,
        e.oldest_transaction,
        e.plan
    );
}

fn to_markdown(machine: &Machine, run: &Run, results: &Results) -> String {
    let mut out = String::new();
    let s = &run.sizes;
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `{}` on {} in {:.0} s ({}). Every number below was measured in that run, \
         baselines included; numbers from other machines or days compare through the ratios, not \
         the absolute values.\n",
        run.command,
        run.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        run.duration.as_secs_f64(),
        if s.smoke { "smoke sizes" } else { "full sizes" }
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let rows = [
        ("CPU", format!("{} × {}", machine.cores, machine.cpu_model)),
        (
            "memory",
            format!("{:.1} GiB", machine.memory_gib.unwrap_or_default()),
        ),
        ("kernel", machine.kernel.clone()),
        ("PostgreSQL", machine.postgres.clone()),
        ("PostgreSQL settings", machine.postgres_settings.clone()),
        (
            "Kafka",
            format!("{} (one KRaft node, loopback)", machine.kafka),
        ),
        ("librdkafka", machine.librdkafka.clone()),
        ("rustc", machine.rustc.clone()),
        (
            "commit",
            format!(
                "{}{}",
                machine.git_commit,
                if machine.git_dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            ),
        ),
        (
            "load average (1, 5, 15 min)",
            format!(
                "{} at start, {} at end",
                machine.load_average,
                crate::env::load_average()
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    let _ = writeln!(
        out,
        "\nThe machine is shared: PostgreSQL, Kafka, this program and other work run on the same \
         cores, so the database, the broker and the relay compete for CPU.\n"
    );

    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "| target | goal | measured | status |\n|---|---|---|---|"
    );
    for t in targets(results) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured,
            t.status()
        );
    }

    if !results.write.is_empty() {
        let _ = writeln!(out, "\n## 1. Write overhead\n");
        let _ = writeln!(
            out,
            "One File Service upload transaction on a SeaORM `DatabaseTransaction` (`BEGIN`, \
             statements, `COMMIT`, timed from before `BEGIN` to after `COMMIT`): an `INSERT` into \
             `file_uploads` (uuid key, batch id, user id, filename, size, md5 text, status and a \
             {RAW_BYTES}-byte `raw` bytea holding the file's bytes, plus an index on `batch_id`).\n\n\
             - **B**: the upload row only.\n\
             - **S**: plus the outbox row by a hand-written statement: the library's own `INSERT` \
             text and the same eight values (event id, aggregate type and id, event type, topic, \
             key, the ~{PAYLOAD_BYTES}-byte JSON envelope, headers as jsonb) through SeaORM's \
             `execute` on the same transaction (a prepared, cached statement), without the \
             library's code path.\n\
             - **L**: plus `OutboxWriter::add_event` of `PostgresOutbox`.\n\n\
             S and L build the same `BatchFileAddedV1` envelope (with a traceparent; padded to \
             ~{PAYLOAD_BYTES} bytes) inside the timed transaction. Variants run in {} interleaved \
             rounds (B S L, S L B, L B S, ...) of {} (1 client) and {} × 8 (8 clients) \
             transactions each, after a warm-up; a Prometheus recorder is installed, as in a \
             service. Percentiles are exact (sorted samples).\n",
            s.write_rounds, s.write_per_block[0], s.write_per_block[1]
        );
        let _ = writeln!(
            out,
            "| clients | variant | p50 ms | p99 ms | p99.9 ms | tx/s | transactions |\n|---|---|---|---|---|---|---|"
        );
        for w in &results.write {
            for v in &w.variants {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {} |",
                    w.clients,
                    v.variant.name(),
                    v.latency.p50,
                    v.latency.p99,
                    v.latency.p999,
                    v.tps,
                    v.latency.count
                );
            }
        }
        let _ = writeln!(
            out,
            "\n| clients | L/B p50 | L/S p50 | L/B tx/s | L/S tx/s | L − B p50 ms | L − B p99 ms |\n|---|---|---|---|---|---|---|"
        );
        for w in &results.write {
            let (p50, p99) = w.overhead().unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} |",
                w.clients,
                w.p50_ratio(Variant::B).unwrap_or_default(),
                w.p50_ratio(Variant::S).unwrap_or_default(),
                w.tps_ratio(Variant::B).unwrap_or_default(),
                w.tps_ratio(Variant::S).unwrap_or_default(),
                p50,
                p99
            );
        }
    }

    if let Some(sweep) = &results.sweep {
        sweep_markdown(&mut out, s, sweep);
    }
    if let Some(uploads) = &results.uploads {
        uploads_markdown(&mut out, s, uploads);
    }

    if let Some(relay) = &results.relay {
        let _ = writeln!(out, "\n## 2. Relay throughput\n");
        let _ = writeln!(
            out,
            "A backlog of {} events (~{PAYLOAD_BYTES}-byte values, {} keys, a topic of {} \
             partitions) is copied into `event_outbox` from a pre-generated table, vacuumed and \
             analysed, then drained. **R**: `EventRelayWorker` + `PostgresOutbox` + \
             `KafkaPublisher` with the library defaults (idempotence, acks=all, linger.ms=0). \
             **D**: the same relay with a publisher that returns `Ok` at once. **P**: a raw rdkafka \
             `FutureProducer` with the publisher's producer properties sending the same keys, \
             value size and six headers, everything in flight. **Pb**: the same producer one batch \
             at a time (enqueue the batch, await all its acks). H = 1/(1/P + 1/D): the rate of \
             doing the database work and the Kafka work one after the other. Drain time runs from \
             the first claim to the acknowledgement of the last event; the producers are warmed up \
             (connection, metadata) first.\n",
            relay.backlog, s.keys, s.partitions
        );
        let _ = writeln!(
            out,
            "| batch | R events/s | D events/s | P events/s | Pb events/s | H events/s | R/H | R/P | R/D | R/Pb |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for t in &relay.runs {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} |",
                t.batch_size,
                t.r.rate,
                t.d.rate,
                t.p.rate,
                t.pb.rate,
                t.h(),
                t.r.rate / t.h(),
                t.r.rate / t.p.rate,
                t.r.rate / t.d.rate,
                t.r.rate / t.pb.rate
            );
        }
        let _ = writeln!(
            out,
            "\n### Where a batch's time goes\n\nMeasured by wrapping the relay's store and publisher: \
             **claim** is `claim_batch` (query, transfer, rows turned into events), **publish** is \
             `publish` (enqueue and await every Kafka ack; no-op for D), **ack** is `acknowledge` \
             (the `DELETE`), **other** is the rest of the cycle from one claim to the next (the \
             worker's own work: `check`, cloning the batch, results, metrics, status). While \
             batches come back full the relay claims the next batch while it sends one, so claim \
             and publish overlap and the steps can add up to more than the cycle.\n"
        );
        let _ = writeln!(out, "{BREAKDOWN_HEADER}");
        for t in &relay.runs {
            breakdown_row(&mut out, "D", &t.d);
            breakdown_row(&mut out, "R", &t.r);
            if let Some(r0) = &t.r_linger_alt {
                breakdown_row(&mut out, "R, linger.ms=5", r0);
            }
        }
        let _ = writeln!(
            out,
            "\nThe raw producer one batch at a time (Pb), per batch:\n\n| batch | linger.ms | events/s | enqueue ms p50 / p99 | await acks ms p50 / p99 |\n|---|---|---|---|---|"
        );
        for t in &relay.runs {
            for (pb, linger) in [
                (Some(&t.pb), "0 (default)"),
                (t.pb_linger_alt.as_ref(), "5"),
            ] {
                let Some(pb) = pb else { continue };
                let _ = writeln!(
                    out,
                    "| {} | {linger} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} |",
                    t.batch_size,
                    pb.rate,
                    pb.enqueue.p50,
                    pb.enqueue.p99,
                    pb.await_acks.p50,
                    pb.await_acks.p99
                );
            }
        }
        if let Some(t) = relay.runs.iter().find(|t| t.r_linger_alt.is_some())
            && let Some(r0) = &t.r_linger_alt
        {
            let _ = writeln!(
                out,
                "\nWhat-if, batch {}: the relay with `linger.ms=5` (the publisher's earlier default; \
                 everything else the defaults) drained at **{:.0} events/s** against {:.0} with \
                 the default `linger.ms=0` (R'/H = {:.3}).",
                t.batch_size,
                r0.rate,
                t.r.rate,
                r0.rate / t.h()
            );
        }
        explain_block(
            &mut out,
            "\nThe claim query on the fresh backlog",
            &relay.explain_start,
        );
        for t in &relay.runs {
            if let Some((plain, keyset)) = &t.d.explain_midway {
                explain_pair(
                    &mut out,
                    &format!("D drain of {} (batch {})", t.d.events, t.batch_size),
                    plain,
                    keyset,
                );
            }
        }
    }

    if !results.large_drains.is_empty() {
        let _ = writeln!(
            out,
            "\n### Large events\n\nR (the relay into Kafka, default settings, batch {}) draining \
             backlogs of larger events: the same envelope padded with essay-like text, generated into `event_outbox`, vacuumed, analysed and checkpointed before the drain.\n\n\
             | payload | events | events/s | payload MiB/s | claim ms p50 / p99 | publish ms p50 / p99 | ack ms p50 / p99 | verified |\n|---|---|---|---|---|---|---|---|",
            outbox_core::RelaySettings::default().batch_size
        );
        for l in &results.large_drains {
            let b = &l.drain.breakdown;
            let _ = writeln!(
                out,
                "| {} KiB | {} | {:.0} | {:.1} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
                l.payload_bytes / 1024,
                l.drain.events,
                l.drain.rate,
                l.mib_per_second(),
                b.claim.p50,
                b.claim.p99,
                b.publish.p50,
                b.publish.p99,
                b.ack.p50,
                b.ack.p99,
                l.drain.verified
            );
        }
    }

    if !results.latency.is_empty() {
        let _ = writeln!(out, "\n## 3. Commit → Kafka ack latency\n");
        let _ = writeln!(
            out,
            "{} writer tasks run the upload transaction with `add_event` (one event per \
             transaction) paced to the offered rate; the instant after each commit returns is \
             noted, and a wrapper around `KafkaPublisher` notes when `publish` returned for each \
             event (every ack of its batch was in). Latency = ack − commit per event, for events \
             committed after the first {} s of each {} s run. Relay settings are the defaults \
             (batch {}, poll 10 ms → 500 ms); **wake-up** calls `notifier().notify()` after each \
             commit, **polling** does not. **CPU pressure**: the share of the writing span in \
             which at least one task on the machine waited for a CPU (`/proc/pressure/cpu`, \
             `some`), here and in section 3b; on two shared cores the writers' and the relay's \
             tails rise with it.\n",
            s.latency_writers,
            s.latency_warmup_secs,
            s.latency_secs,
            outbox_core::RelaySettings::default().batch_size
        );
        let _ = writeln!(
            out,
            "| offered | mode | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | events | missing | writer tx p50 ms | CPU pressure | relay batches | events per batch | claim / publish / ack p50 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for l in &results.latency {
            let mode = format!(
                "{}{}",
                if l.wake { "wake-up" } else { "polling" },
                l.linger_ms
                    .map(|m| format!(", linger.ms={m}"))
                    .unwrap_or_default()
            );
            let b = &l.breakdown;
            let _ = writeln!(
                out,
                "| {} | {mode} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {} | {} | {:.1} | {:.2} / {:.2} / {:.2} |",
                l.offered_label,
                l.offered,
                l.achieved,
                l.latency.p50,
                l.latency.p99,
                l.latency.p999,
                l.latency.max,
                l.measured,
                l.missing,
                l.writer_txn.p50,
                percent(l.cpu_pressure),
                b.batches,
                l.mean_batch,
                b.claim.p50,
                b.publish.p50,
                b.ack.p50
            );
        }
    }

    if let Some(remote) = &results.remote {
        remote_markdown(&mut out, s, remote);
    }

    if let Some(scaling) = &results.scaling {
        let _ = writeln!(out, "\n## 4. Scaling\n");
        let all_reset = scaling
            .runs
            .iter()
            .all(|run| run.r.rss_peak_reset && run.d.as_ref().is_none_or(|d| d.rss_peak_reset));
        let _ = writeln!(
            out,
            "Drain rate by backlog size at the default batch size ({}), R into Kafka and D into \
             the no-op publisher, with the process's resident memory before the drain and at its \
             peak during it (VmHWM, reset with `echo 5 > /proc/self/clear_refs` before each \
             drain: {}).\n",
            outbox_core::RelaySettings::default().batch_size,
            if all_reset {
                "the reset worked"
            } else {
                "the reset did NOT work on this kernel, so peaks include earlier phases"
            }
        );
        let _ = writeln!(
            out,
            "| backlog | R events/s | D events/s | R RSS MiB before → peak | R drained | verified |\n|---|---|---|---|---|---|"
        );
        for run in &scaling.runs {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} → {} | {} | {} |",
                run.events,
                run.r.rate,
                run.d
                    .as_ref()
                    .map_or("not run".into(), |d| format!("{:.0}", d.rate)),
                run.r.rss_before_kib / 1024,
                run.r.rss.peak_kib / 1024,
                if run.r.complete {
                    "all".to_owned()
                } else {
                    format!("{} (stopped at the time budget)", run.r.acked)
                },
                run.r.verified
            );
        }
        if let Some(ratio) = scaling.ratio() {
            let _ = writeln!(out, "\nR(largest) / R(smallest) = {ratio:.3}.");
        }
        for note in &scaling.notes {
            let _ = writeln!(out, "\nNote: {note}.");
        }
        let _ = writeln!(out, "\n{BREAKDOWN_HEADER}");
        for run in &scaling.runs {
            if let Some(d) = &run.d {
                breakdown_row(&mut out, "D", d);
            }
            breakdown_row(&mut out, "R", &run.r);
        }
        for run in &scaling.runs {
            for (label, drain) in [("D", run.d.as_ref()), ("R", Some(&run.r))] {
                if let Some((plain, keyset)) = drain.and_then(|d| d.explain_midway.as_ref()) {
                    explain_pair(
                        &mut out,
                        &format!("{label} drain of {}", run.events),
                        plain,
                        keyset,
                    );
                }
            }
        }
    }
    if let Some(inbox) = &results.inbox {
        let _ = writeln!(out, "\n## 5. The inbox\n");
        let _ = writeln!(
            out,
            "{} messages on {} partitions (small JSON envelopes with an `event_id` header), read \
             by a raw rdkafka consumer (async offset commits every 500 messages) and by the inbox \
             with a trivial handler (per batch: one transaction recording the event ids in \
             `event_inbox`, commit, then the offsets), each from a consumer group of its own, \
             rounds alternating. Rates count from each run's first message to its last, so \
             joining the group is left out of both.\n",
            inbox.events, inbox.partitions
        );
        let _ = writeln!(
            out,
            "| round | raw consumer (events/s) | inbox (events/s) | inbox / raw |"
        );
        let _ = writeln!(out, "|---|---|---|---|");
        for (round, (raw, through)) in inbox.raw.iter().zip(&inbox.inbox).enumerate() {
            let _ = writeln!(
                out,
                "| {} | {raw:.0} | {through:.0} | {:.2} |",
                round + 1,
                through / raw
            );
        }
        let _ = writeln!(
            out,
            "| median | {:.0} | {:.0} | {:.2} |",
            inbox.raw_median(),
            inbox.inbox_median(),
            inbox.inbox_median() / inbox.raw_median()
        );
    }
    if let Some(parked) = &results.parked {
        parked_section(&mut out, parked);
    }
    let _ = writeln!(
        out,
        "\n## Reproduce\n\n`bash scripts/bench.sh` (or `just bench`) builds in release and runs all \
         phases with these sizes; `--large` adds the 1,000,000-event backlogs, `--smoke` is a \
         quick check that writes to a temporary folder. Raw numbers: `benchmarks.json` beside \
         this file."
    );
    out
}

/// Section 6: the claim's times by parked rows.
fn parked_section(out: &mut String, parked: &ParkedResults) {
    let _ = writeln!(out, "\n## 6. Claims beside parked rows\n");
    let _ = writeln!(
        out,
        "One claim of {} new events through the repository while rows are parked (the first \
         row of each of 1,000 keys not due yet, the rest due behind it, as a topic refusing \
         every event leaves them), with 10,000 new rows of other keys; the first line, nothing \
         parked, is the baseline. Each claim returns the same new events and changes nothing.\n",
        outbox_core::RelaySettings::default().batch_size
    );
    let _ = writeln!(
        out,
        "| parked rows | claim p50 (ms) | claim p99 (ms) | p50 / baseline | events returned |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let baseline = parked.runs.first().map(|r| r.claim.p50);
    for run in &parked.runs {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {} | {} |",
            run.parked,
            run.claim.p50,
            run.claim.p99,
            baseline.map_or("-".into(), |b| format!("{:.1}", run.claim.p50 / b)),
            run.returned
        );
    }
}

/// Writes `benchmarks.json` and `benchmarks.md` into `dir`.
pub(crate) fn write(
    dir: &Path,
    machine: &Machine,
    run: &Run,
    results: &Results,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).context(format!("creating {}", dir.display()))?;
    let json_path = dir.join("benchmarks.json");
    let json = serde_json::to_string_pretty(&to_json(machine, run, results)).context("json")?;
    std::fs::write(&json_path, json + "\n").context(format!("writing {}", json_path.display()))?;
    let md_path = dir.join("benchmarks.md");
    std::fs::write(&md_path, to_markdown(machine, run, results))
        .context(format!("writing {}", md_path.display()))?;
    Ok(vec![json_path, md_path])
}

fn sweep_markdown(out: &mut String, s: &Sizes, sweep: &Sweep) {
    let _ = writeln!(
        out,
        "\n## 1b. Event size\n\nThe transaction of section 1 with S and L at larger events: the \
         same envelope padded with essay-like text (words in a pseudo-random order) to {} KiB. {} interleaved rounds \
         (every size and variant in each round, in a rotating order) of {} (1 client) and {} × 8 (8 clients) transactions per variant and \
         size, after a warm-up. A database socket with Nagle's algorithm on (`TCP_NODELAY` off) \
         makes every statement over about 16 KiB wait ~40 ms for the server's delayed ACK: that \
         would show as a step between 16 and 32 KiB. The run fails when L's p50 at 32 KiB is {} \
         times its p50 at 1 KiB or more (1 client).\n",
        s.sweep_payloads
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        s.sweep_rounds,
        s.sweep_per_block[0],
        s.sweep_per_block[1],
        GUARD_RATIO
    );
    if s.nagle {
        let _ = writeln!(
            out,
            "**This run turned `TCP_NODELAY` off on its pooled connections (`--nagle`) to show \
             the stall; its numbers are not the library's.**\n"
        );
    }
    let _ = writeln!(
        out,
        "| clients | payload KiB | S p50 ms | S p99 ms | L p50 ms | L p99 ms | L/S p50 | S p50 / S p50 at 1 KiB | L p50 / L p50 at 1 KiB | transactions per variant |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &sweep.points {
        let base = sweep.point(1, p.clients);
        let rel = |v: Variant| {
            base.map_or("-".into(), |b| {
                format!("{:.3}", p.get(v).p50 / b.get(v).p50)
            })
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            p.clients,
            p.payload_kib,
            p.s.p50,
            p.s.p99,
            p.l.p50,
            p.l.p99,
            p.l.p50 / p.s.p50,
            rel(Variant::S),
            rel(Variant::L),
            p.l.count
        );
    }
    if let Some(ack) = &sweep.ack {
        let _ = writeln!(
            out,
            "\nAcknowledging {} ids on one pooled connection (`DELETE FROM event_outbox WHERE id = \
             ANY($1)`, the relay's statement), alternately as one statement (~{} KiB of \
             parameters) and as chunks of 1,000 ids (what `PostgresOutbox::acknowledge` did while \
             Nagle's stall lasted; it sends one statement now), {} \
             times each after a warm-up: one statement p50 {:.3} ms (p99 {:.3}), chunks p50 \
             {:.3} ms (p99 {:.3}); one/chunked p50 = **{:.3}**.",
            ack.ids,
            ack.ids * 12 / 1024,
            ack.one_statement.count,
            ack.one_statement.p50,
            ack.one_statement.p99,
            ack.chunked.p50,
            ack.chunked.p99,
            ack.ratio()
        );
    }
}

fn uploads_markdown(out: &mut String, s: &Sizes, uploads: &Uploads) {
    let _ = writeln!(out, "\n## 1c. File Service upload path\n");
    if let Some(why) = &uploads.skipped {
        let _ = writeln!(out, "Not measured: {why}.");
        return;
    }
    let _ = writeln!(
        out,
        "`POST /v1/files/batch` with one text file (an essay-like ASCII text) to the \
         `file-service` binary (`{}`), started on a database and topics of its own with its \
         default settings; one request at a time, timed from sending it to reading the whole 202 \
         response. {} interleaved rounds of {} uploads per size, after {} warm-up uploads per \
         size. Each upload stores the file's bytes and its row with an event in one transaction; \
         the service also extracts the text and relays the events meanwhile.\n",
        uploads.binary, s.upload_rounds, s.upload_per_block, s.upload_warmup
    );
    let _ = writeln!(
        out,
        "| file KB | p50 ms | p99 ms | p50 / p50 at {} KB | uploads |\n|---|---|---|---|---|",
        uploads.points.first().map_or(0, |p| p.bytes / 1000)
    );
    let first = uploads.points.first().map(|p| p.latency.p50);
    for p in &uploads.points {
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3} | {} | {} |",
            p.bytes / 1000,
            p.latency.p50,
            p.latency.p99,
            first.map_or("-".into(), |f| format!("{:.3}", p.latency.p50 / f)),
            p.latency.count
        );
    }
}

/// Issue 16's bounds: commit to ack from another process, and the writer's cost of the wake-up.
fn remote_targets(remote: Option<&RemoteResults>, targets: &mut Vec<Target>) {
    for (rate, name) in [
        (1.0, "commit -> ack, writers in another process, 1/s"),
        (50.0, "commit -> ack, writers in another process, 50/s"),
        (1000.0, "commit -> ack, writers in another process, 1000/s"),
    ] {
        let run = remote.and_then(|r| r.find(Writers::RemoteNotify, rate));
        let polling = remote.and_then(|r| r.find(Writers::RemotePolling, rate));
        let same = remote.and_then(|r| r.find(Writers::InProcess, rate));
        targets.push(Target {
            name,
            goal: "p50 <= 5 ms, p99 <= 25 ms",
            measured: run.map_or("-".into(), |l| {
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms ({} events, CPU pressure {}; same process p50 \
                     {}, polling only p50 {})",
                    l.latency.p50,
                    l.latency.p99,
                    l.measured,
                    percent(l.cpu_pressure),
                    same.map_or("-".into(), |s| format!("{:.2} ms", s.latency.p50)),
                    polling.map_or("-".into(), |p| format!("{:.2} ms", p.latency.p50)),
                )
            }),
            met: run.map(|l| l.missing == 0 && l.latency.p50 <= 5.0 && l.latency.p99 <= 25.0),
        });
    }
    for (clients, name) in [
        (1, "wake-up cost to the writer (L), 1 client"),
        (8, "wake-up cost to the writer (L), 8 clients"),
    ] {
        let row = remote.and_then(|r| r.cost_of_l(clients));
        let tps = clients == 8;
        targets.push(Target {
            name,
            goal: if tps {
                "+ <= 0.1 ms at p50, tps with >= 95% of without"
            } else {
                "+ <= 0.1 ms at p50"
            },
            measured: row.map_or("-".into(), |c| {
                format!(
                    "{:+.3} ms at p50 (paired; pooled {:+.3}), {:+.3} ms at p99, tps \
                     with/without {:.3} (paired; pooled {:.3})",
                    c.paired_p50_added(),
                    c.p50_added(),
                    c.p99_added(),
                    c.paired_tps_ratio(),
                    c.tps_ratio()
                )
            }),
            met: row.map(|c| c.paired_p50_added() <= 0.1 && (!tps || c.paired_tps_ratio() >= 0.95)),
        });
    }
}

fn remote_markdown(out: &mut String, s: &Sizes, remote: &RemoteResults) {
    let _ = writeln!(out, "\n## 3b. Writers in another process\n");
    let _ = writeln!(
        out,
        "The writers run in a child process of the benchmark (`{}`), paced to the offered \
         rate, one event per upload transaction; each prints its event id and commit time \
         (wall clock). The relay runs in the benchmark's process; a wrapper around \
         `KafkaPublisher` notes when `publish` returned for each event, on the same wall clock. \
         Latency = ack − commit, for events committed after the first {} s of each {} s run. \
         **wake_notifier()**: the child calls `PostgresOutbox::wake_notifier().notify()` after \
         each commit (a coalesced `pg_notify` outside the transaction; the leader `LISTEN`s); \
         **polling only**: it does not. **same process**: writers beside the relay with \
         `notifier().notify()`, as in section 3. **to claim**: from the commit to the end of \
         the relay's claim that returned the event (the wait for a wake-up, for the batch in \
         flight, and for older transactions still running: the commit horizon); the rest is \
         the send and Kafka's acknowledgement.\n",
        crate::remote::CHILD_FLAG,
        s.latency_warmup_secs,
        s.latency_secs,
    );
    let _ = writeln!(
        out,
        "| offered/s | writers | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | to claim p50 / p99 ms | events | missing | writer tx p50 / p99 ms | CPU pressure | relay batches | events per batch |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &remote.runs {
        let l = &r.run;
        let _ = writeln!(
            out,
            "| {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {} | {} | {:.2} / {:.2} | {} | {} | {:.1} |",
            l.offered,
            r.writers.label(),
            l.achieved,
            l.latency.p50,
            l.latency.p99,
            l.latency.p999,
            l.latency.max,
            l.to_claim.p50,
            l.to_claim.p99,
            l.measured,
            l.missing,
            l.writer_txn.p50,
            l.writer_txn.p99,
            percent(l.cpu_pressure),
            l.breakdown.batches,
            l.mean_batch,
        );
    }
    let _ = writeln!(
        out,
        "\n**The writer's cost of the wake-up.** B, S and L (section 1) without and with \
         `wake_notifier().notify()` after each commit, inside the timed span (this process runs \
         no relay, so every call takes the remote path), interleaved in rounds. **Pooled**: the \
         percentiles over every round's transactions. **Paired**: the median over rounds of the \
         difference (or ratio) between the two blocks of one round, which run seconds apart \
         while the rounds span minutes, so the machine's drift weighs less; the targets use it.\n"
    );
    let _ = writeln!(
        out,
        "| clients | variant | p50 ms without → with | added p50 ms, pooled | added p50 ms, paired | p99 ms without → with | added p99 ms | tx/s without → with | with/without tps, pooled | with/without tps, paired |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in &remote.cost {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} → {:.3} | {:+.3} | {:+.3} | {:.3} → {:.3} | {:+.3} | {:.0} → {:.0} | {:.3} | {:.3} |",
            c.clients,
            c.without.variant.name(),
            c.without.latency.p50,
            c.with.latency.p50,
            c.p50_added(),
            c.paired_p50_added(),
            c.without.latency.p99,
            c.with.latency.p99,
            c.p99_added(),
            c.without.tps,
            c.with.tps,
            c.tps_ratio(),
            c.paired_tps_ratio(),
        );
    }
}
