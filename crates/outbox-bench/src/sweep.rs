//! Phase 1b: what the size of an event costs, and the guard against Nagle's stall.
//!
//! The upload transaction of phase 1 with S (hand-written insert) and L (`add_event`) at event
//! payloads of 1 to 256 KiB, 1 and 8 clients, interleaved as in phase 1. A socket without
//! `TCP_NODELAY` makes every statement over about 16 KiB wait ~40 ms for the server's delayed
//! ACK (issue 10): that shows as a step between 16 and 32 KiB, and [`guard`] fails the run when
//! L's p50 at 32 KiB exceeds [`GUARD_RATIO`] times its p50 at 1 KiB.
//!
//! It also times the relay's acknowledgement of many ids as one `DELETE` against chunks of
//! 1,000 ids: the chunking `PostgresOutbox::acknowledge` did only because of the stall (it sends
//! one statement now).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::sqlx;
use serde_json::{Value, json};

use crate::env::{Env, Shape, load_average};
use crate::stats::{Summary, round3};
use crate::write::{CLIENTS, Variant, Writer, block};
use crate::{Context, Result, Sizes};

/// Most L(32 KiB) / L(1 KiB) p50 the guard accepts (issue 10's bound). With the stall a 32 KiB
/// statement waits about 40 ms more, a ratio of 30 or more. Without it, what is left is the
/// server's own work on a 32 KiB row: 3.2-3.5 while PostgreSQL compressed payloads with pglz,
/// about 1.3 with lz4 (`CompressPayloadsWithLz4`) on this project's 2-core machine.
pub(crate) const GUARD_RATIO: f64 = 3.0;

/// The payload sizes the guard compares, in KiB.
const GUARD_SMALL_KIB: usize = 1;
const GUARD_LARGE_KIB: usize = 32;

/// S and L at one payload size and client count.
#[derive(Debug, Clone)]
pub(crate) struct SweepPoint {
    pub(crate) payload_kib: usize,
    pub(crate) clients: usize,
    pub(crate) s: Summary,
    pub(crate) l: Summary,
}

impl SweepPoint {
    pub(crate) fn get(&self, variant: Variant) -> Summary {
        if variant == Variant::S {
            self.s
        } else {
            self.l
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "payload_kib": self.payload_kib,
            "clients": self.clients,
            "s": self.s.to_json(),
            "l": self.l.to_json(),
            "l_over_s_p50": round3(self.l.p50 / self.s.p50),
        })
    }
}

/// One acknowledgement of many ids: one statement against chunks of 1,000.
#[derive(Debug, Clone)]
pub(crate) struct AckWhatIf {
    pub(crate) ids: usize,
    pub(crate) one_statement: Summary,
    pub(crate) chunked: Summary,
}

impl AckWhatIf {
    pub(crate) fn ratio(&self) -> f64 {
        self.one_statement.p50 / self.chunked.p50
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "ids": self.ids,
            "one_statement": self.one_statement.to_json(),
            "chunks_of_1000": self.chunked.to_json(),
            "one_over_chunked_p50": round3(self.ratio()),
        })
    }
}

/// What phase 1b measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sweep {
    pub(crate) points: Vec<SweepPoint>,
    pub(crate) ack: Option<AckWhatIf>,
}

impl Sweep {
    pub(crate) fn point(&self, payload_kib: usize, clients: usize) -> Option<&SweepPoint> {
        self.points
            .iter()
            .find(|p| p.payload_kib == payload_kib && p.clients == clients)
    }

    /// p50 at `large` KiB over p50 at `small` KiB, for `variant` at `clients`.
    pub(crate) fn step(
        &self,
        variant: Variant,
        clients: usize,
        small: usize,
        large: usize,
    ) -> Option<f64> {
        let small = self.point(small, clients)?.get(variant).p50;
        let large = self.point(large, clients)?.get(variant).p50;
        (small > 0.0).then(|| large / small)
    }

    /// L(32 KiB) / L(1 KiB) at p50, one client: what the guard checks.
    pub(crate) fn guard_ratio(&self) -> Option<f64> {
        self.step(Variant::L, 1, GUARD_SMALL_KIB, GUARD_LARGE_KIB)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "points": self.points.iter().map(SweepPoint::to_json).collect::<Vec<_>>(),
            "guard": {
                "l_32kib_over_l_1kib_p50_1_client": self.guard_ratio().map(round3),
                "limit": GUARD_RATIO,
            },
            "acknowledge": self.ack.as_ref().map(AckWhatIf::to_json),
        })
    }
}

/// Fails when `add_event` of a 32 KiB event takes [`GUARD_RATIO`] times as long as one of 1 KiB
/// or more (p50, one client): the sign that a database socket lost `TCP_NODELAY`.
pub(crate) fn guard(sweep: &Sweep) -> Result<String> {
    let ratio = sweep.guard_ratio().ok_or_else(|| {
        format!(
            "TCP_NODELAY guard: the payload sweep has no L p50 at {GUARD_SMALL_KIB} and \
             {GUARD_LARGE_KIB} KiB for one client"
        )
    })?;
    let message = format!(
        "TCP_NODELAY guard: add_event p50 at {GUARD_LARGE_KIB} KiB / at {GUARD_SMALL_KIB} KiB = \
         {ratio:.2} (limit {GUARD_RATIO})"
    );
    if ratio < GUARD_RATIO {
        Ok(message)
    } else {
        Err(format!(
            "{message}: FAILED. Statements over ~16 KiB are stalling, as they do when a database \
             socket has Nagle's algorithm on (TCP_NODELAY off; see issue 10). Check that sqlx \
             still sets TCP_NODELAY (sqlx-core's net/socket code) and run \
             `cargo test -p outbox-seaorm --test tcp_nodelay`."
        )
        .into())
    }
}

/// Runs the payload sweep and the acknowledgement what-if.
pub(crate) async fn run(env: &Env, sizes: &Sizes) -> Result<Sweep> {
    println!(
        "\n== 1b. event size sweep (S: hand-written insert, L: add_event; {} interleaved rounds; \
         load {})",
        sizes.sweep_rounds,
        load_average()
    );
    pool_nodelay(env, sizes.nagle).await?;
    let mut sweep = Sweep::default();
    let writers: Vec<(usize, Arc<Writer>)> = sizes
        .sweep_payloads
        .iter()
        .map(|&kib| {
            let shape = Shape::with_payload(env.relay_topic.name(), kib * 1024);
            Ok((kib, Arc::new(Writer::new(env, shape)?)))
        })
        .collect::<Result<_>>()?;
    // Every size and variant runs in every round, in a rotating order, so a change in the load of
    // a shared machine touches all of them alike rather than one size.
    let combos: Vec<(usize, Variant)> = (0..writers.len())
        .flat_map(|w| [(w, Variant::S), (w, Variant::L)])
        .collect();
    for (index, &clients) in CLIENTS.iter().enumerate() {
        if !sizes.sweep_clients.contains(&clients) {
            continue;
        }
        env.truncate().await?;
        for &(w, variant) in &combos {
            block(&writers[w].1, variant, clients, sizes.write_warmup.min(5)).await?;
        }
        let per_client = sizes.sweep_per_block[index];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); combos.len()];
        for round in 0..sizes.sweep_rounds {
            for k in 0..combos.len() {
                let slot = (round + k) % combos.len();
                let (w, variant) = combos[slot];
                let (taken, _) = block(&writers[w].1, variant, clients, per_client).await?;
                samples[slot].extend(taken);
            }
        }
        for (w, &(kib, _)) in writers.iter().enumerate() {
            let point = SweepPoint {
                payload_kib: kib,
                clients,
                s: Summary::of(&mut samples[2 * w]),
                l: Summary::of(&mut samples[2 * w + 1]),
            };
            println!(
                "  {clients} client(s), {kib:>3} KiB: S p50 {:.3} ms p99 {:.3} ms | L p50 {:.3} ms \
                 p99 {:.3} ms  ({} tx each)",
                point.s.p50, point.s.p99, point.l.p50, point.l.p99, point.l.count
            );
            sweep.points.push(point);
        }
    }
    env.truncate().await?;
    if sizes.ack_reps > 0 {
        sweep.ack = Some(acknowledge_what_if(env, sizes).await?);
    }
    Ok(sweep)
}

/// Reads `TCP_NODELAY` on every connection of the run's pool (the benchmark's own connections:
/// they must not stall either), and with `--nagle` turns it off, as sqlx 0.9.0 left it, so the
/// sweep shows the stall and the guard fails. Without `--nagle`, a connection with the option
/// off fails the run.
async fn pool_nodelay(env: &Env, turn_off: bool) -> Result<()> {
    let size = env.pool().options().get_max_connections() as usize;
    let mut held = Vec::with_capacity(size);
    let mut on = 0;
    for _ in 0..size {
        let mut conn = env.pool().acquire().await.context("a connection")?;
        let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
            .fetch_one(&mut *conn)
            .await
            .context("the client port")?;
        let Some(port) = port else {
            println!("  the pool is not on TCP (DATABASE_URL is a Unix socket): no TCP_NODELAY");
            return Ok(());
        };
        let port = u16::try_from(port).context("the client port")?;
        if outbox_test_harness::tcp_nodelay_of_local_port(port).context("reading TCP_NODELAY")? {
            on += 1;
        }
        if turn_off {
            outbox_test_harness::set_tcp_nodelay_of_local_port(port, false)
                .context("turning TCP_NODELAY off")?;
        }
        held.push(conn);
    }
    println!("  TCP_NODELAY on for {on} of {size} pooled connections");
    if turn_off {
        println!("  --nagle: turned it off on all {size}");
    } else if on < size {
        return Err(format!(
            "TCP_NODELAY is off on {} of the benchmark's {size} pooled connections: statements \
             over ~16 KiB will stall ~40 ms (issue 10)",
            size - on
        )
        .into());
    }
    Ok(())
}

/// The relay's acknowledgement statement (`PostgresOutbox::acknowledge` without `keep`).
const DELETE_PUBLISHED: &str = "DELETE FROM event_outbox WHERE id = ANY($1)";

/// Inserts `n` small rows and returns their ids.
async fn small_rows(conn: &mut sqlx::PgConnection, n: usize) -> Result<Vec<i64>> {
    sqlx::query_scalar(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, \
         event_key, payload) SELECT gen_random_uuid(), 'a', 'k', 'T', 't', 'k' || n, '\\x00' \
         FROM generate_series(1, $1) AS n RETURNING id",
    )
    .bind(i32::try_from(n).context("ids")?)
    .fetch_all(conn)
    .await
    .context("inserting rows to acknowledge")
}

/// Deletes `ids` by [`DELETE_PUBLISHED`] in statements of at most `chunk` ids, as the relay's
/// session does; returns how long that took.
async fn delete_in_chunks(
    conn: &mut sqlx::PgConnection,
    ids: &[i64],
    chunk: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let mut deleted = 0;
    for part in ids.chunks(chunk) {
        deleted += sqlx::query(DELETE_PUBLISHED)
            .bind(part)
            .execute(&mut *conn)
            .await
            .context("acknowledging")?
            .rows_affected();
    }
    let took = started.elapsed();
    if deleted != ids.len() as u64 {
        return Err(format!("deleted {deleted} of {} rows", ids.len()).into());
    }
    Ok(took)
}

/// `sizes.ack_ids` ids acknowledged by one statement and by chunks of 1,000, alternately, on
/// one pooled connection (a socket like the relay's session).
async fn acknowledge_what_if(env: &Env, sizes: &Sizes) -> Result<AckWhatIf> {
    let mut conn = env.pool().acquire().await.context("a connection")?;
    let n = sizes.ack_ids;
    let mut one = Vec::new();
    let mut chunked = Vec::new();
    for rep in 0..sizes.ack_reps + 2 {
        for single in [rep % 2 == 0, rep % 2 != 0] {
            let ids = small_rows(&mut conn, n).await?;
            let took = delete_in_chunks(&mut conn, &ids, if single { n } else { 1000 }).await?;
            // The first two repetitions warm up (statement cache, buffers).
            if rep >= 2 {
                if single { &mut one } else { &mut chunked }.push(took);
            }
        }
    }
    let result = AckWhatIf {
        ids: n,
        one_statement: Summary::of(&mut one),
        chunked: Summary::of(&mut chunked),
    };
    println!(
        "  acknowledging {n} ids: one statement p50 {:.3} ms p99 {:.3} ms, chunks of 1,000 p50 \
         {:.3} ms p99 {:.3} ms (one/chunked p50 {:.3}, {} each)",
        result.one_statement.p50,
        result.one_statement.p99,
        result.chunked.p50,
        result.chunked.p99,
        result.ratio(),
        result.one_statement.count
    );
    env.truncate().await?;
    Ok(result)
}
