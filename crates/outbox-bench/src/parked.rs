//! 6. Claims beside parked rows: what one claim of a full batch of new events costs while many
//!    rows are parked (backing off after a failure, or waiting behind one of their key), as a
//!    topic that refuses every event leaves them. The baseline is the same claim with nothing
//!    parked, in the same run; the claim's work must grow in proportion to the parked rows, not
//!    to their product with the batch (it once did: 5 s a claim for 100,000 parked rows).
//!
//! Each size loads the parked rows (the first row of each of 1,000 keys not due yet, the rest
//! due behind it, so none is sent) and 10,000 new rows of other keys, vacuums and analyses, then
//! times `RelayStore::claim_batch` of the default batch size through the repository: each claim
//! returns the same batch of new rows and changes nothing.

use std::time::Instant;

use outbox_core::{RelaySettings, RelayStore};
use outbox_seaorm::PostgresOutbox;
use sea_orm::sqlx;
use serde_json::{Value, json};

use crate::env::Env;
use crate::stats::Summary;
use crate::{Context, Result, Sizes};

/// New rows beside the parked ones: more than a claim takes.
const FRESH: u64 = 10_000;

/// Claims timed at each size, after two untimed ones.
const CLAIMS: usize = 15;

/// `$1` parked rows over 1,000 keys: the first row of each key not due yet, the rest due behind
/// it (so the claim sends none of them).
const LOAD: &str = "
INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key,
                          payload, attempts, next_attempt_at, last_error)
SELECT gen_random_uuid(), 'bench', 'p' || (n % 1000), 'Parked', 'bench_parked', 'p' || (n % 1000),
       '\\x7b7d', 1,
       CASE WHEN n <= 1000 THEN now() + interval '1 hour' ELSE now() - interval '1 second' END,
       'bench: parked'
FROM generate_series(1, $1::bigint) AS n;
";

/// `$1` new rows over 1,000 other keys, after the parked ones.
const LOAD_FRESH: &str = "
INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key,
                          payload)
SELECT gen_random_uuid(), 'bench', 'f' || (n % 1000), 'Fresh', 'bench_parked', 'f' || (n % 1000),
       '\\x7b7d'
FROM generate_series(1, $1::bigint) AS n;
";

/// One size: parked rows and the claim's times.
#[derive(Debug, Clone)]
pub(crate) struct ParkedRun {
    pub(crate) parked: u64,
    pub(crate) claim: Summary,
    /// Events each claim returned.
    pub(crate) returned: usize,
}

/// What the phase measured, the baseline (nothing parked) first.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParkedResults {
    pub(crate) runs: Vec<ParkedRun>,
}

impl ParkedResults {
    /// The claim's p50 with the most parked rows over its p50 with a tenth of them, and the two
    /// counts: about 10 when its work is in proportion to the parked rows, 100 when it is in
    /// proportion to their square.
    pub(crate) fn growth(&self) -> Option<(f64, u64, u64)> {
        let most = self.runs.last()?;
        let tenth = self
            .runs
            .iter()
            .find(|r| r.parked > 0 && r.parked * 10 == most.parked)?;
        Some((most.claim.p50 / tenth.claim.p50, tenth.parked, most.parked))
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "fresh_rows": FRESH,
            "claims_per_size": CLAIMS,
            "runs": self.runs.iter().map(|r| json!({
                "parked": r.parked,
                "returned": r.returned,
                "claim_ms": r.claim.to_json(),
            })).collect::<Vec<_>>(),
            "growth_p50_most_over_tenth": self.growth().map(|g| g.0),
        })
    }
}

pub(crate) async fn run(env: &Env, sizes: &Sizes) -> Result<ParkedResults> {
    let batch_size = RelaySettings::default().batch_size;
    println!(
        "\n== 6. claims beside parked rows: {batch_size}-event claims with {:?} rows parked and \
         {FRESH} new; load {}",
        sizes.parked,
        crate::env::load_average()
    );
    let store = PostgresOutbox::new(env.conn.clone()).context("the repository")?;
    let mut results = ParkedResults::default();
    for &parked in &sizes.parked {
        env.truncate().await?;
        for (sql, rows) in [(LOAD, parked), (LOAD_FRESH, FRESH)] {
            sqlx::query(sql)
                .bind(i64::try_from(rows).context("rows")?)
                .execute(env.pool())
                .await
                .context("loading parked and new rows")?;
        }
        env.sql("VACUUM ANALYZE event_outbox").await?;
        if !store.acquire_leadership().await.context("leadership")? {
            return Err("another relay leads the benchmark's database".into());
        }
        let mut times = Vec::with_capacity(CLAIMS);
        let mut returned = 0;
        for i in 0..CLAIMS + 2 {
            let started = Instant::now();
            let claimed = store
                .claim_batch(batch_size, None)
                .await
                .context("claiming")?;
            let took = started.elapsed();
            if claimed.retries > 0 || claimed.events.len() != batch_size {
                return Err(format!(
                    "a claim beside {parked} parked rows returned {} events, {} of them retries; \
                     expected {batch_size} new ones",
                    claimed.events.len(),
                    claimed.retries
                )
                .into());
            }
            returned = claimed.events.len();
            if i >= 2 {
                times.push(took);
            }
        }
        let claim = Summary::of(&mut times);
        println!(
            "  {parked:>7} parked: claim p50 {:.2} ms  p99 {:.2} ms",
            claim.p50, claim.p99
        );
        results.runs.push(ParkedRun {
            parked,
            claim,
            returned,
        });
    }
    store
        .release_leadership()
        .await
        .context("releasing leadership")?;
    env.truncate().await?;
    Ok(results)
}
