//! The run's database and brokers, the events it writes, and what it reports about the machine.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use outbox_core::{EventEnvelope, NewOutboxEvent};
use outbox_seaorm::OutboxMigrator;
use outbox_test_harness::{TestDatabase, TestTopic};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use sea_orm::sqlx::{self, PgPool};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sea_orm_migration::MigratorTrait;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Context, Result};

/// The Kafka topic (and event type) of the File Service event the benchmark writes.
pub(crate) const EVENT_TYPE: &str = "huleedu.file.batch.file.added.v1";

/// Bytes the JSON envelope of every event is padded to.
pub(crate) const PAYLOAD_BYTES: usize = 1024;

/// Bytes of the `raw` column of every upload row.
pub(crate) const RAW_BYTES: usize = 1024;

/// The business table: the File Service's upload row, with the file's bytes beside it.
const FILE_UPLOADS: &str = "\
CREATE TABLE file_uploads (
    id          uuid PRIMARY KEY,
    batch_id    text        NOT NULL,
    user_id     text        NOT NULL,
    filename    text        NOT NULL,
    size_bytes  bigint      NOT NULL,
    md5         text        NOT NULL,
    status      text        NOT NULL,
    raw         bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX file_uploads_batch_idx ON file_uploads (batch_id);";

/// The business statement every write variant runs.
pub(crate) const INSERT_UPLOAD: &str = "INSERT INTO file_uploads \
     (id, batch_id, user_id, filename, size_bytes, md5, status, raw) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Pre-built events for backlogs: generated once, copied into `event_outbox` by one statement per
/// drain, so every drain reads the same rows.
const SEED_TABLE: &str = "\
CREATE TABLE bench_seed (
    seq            bigint PRIMARY KEY,
    event_id       uuid  NOT NULL,
    aggregate_type text  NOT NULL,
    aggregate_id   text  NOT NULL,
    event_type     text  NOT NULL,
    topic          text  NOT NULL,
    event_key      text  NOT NULL,
    payload        bytea NOT NULL,
    headers        jsonb NOT NULL
)";

const SEED_INSERT: &str = "\
INSERT INTO bench_seed
SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::bytea[], $9::text[]::jsonb[])";

const LOAD_BACKLOG: &str = "\
INSERT INTO event_outbox
    (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers)
SELECT event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers
FROM bench_seed WHERE seq < $1 ORDER BY seq";

/// The database and topics of one run, dropped (and deleted) with this value.
pub(crate) struct Env {
    pub(crate) conn: DatabaseConnection,
    pub(crate) bootstrap: String,
    /// Where backlogs are relayed (and the raw producer sends).
    pub(crate) relay_topic: TestTopic,
    /// Where the commit-to-ack runs send.
    pub(crate) latency_topic: TestTopic,
    pub(crate) partitions: i32,
    pub(crate) keys: usize,
    /// Rows in `bench_seed`.
    seeded: tokio::sync::Mutex<u64>,
    database: TestDatabase,
}

impl Drop for Env {
    fn drop(&mut self) {
        println!("dropping database {}", self.database.name());
    }
}

impl Env {
    /// Creates the run's database on `DATABASE_URL`'s server, migrates it and adds the business
    /// table.
    pub(crate) async fn create(partitions: i32, keys: usize) -> Result<Self> {
        let server = outbox_test_harness::database_url().await;
        let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
        let database = TestDatabase::create_on(&server).await;
        println!("database {} on {}", database.name(), redact(&server));
        let conn = database.connect_with(24).await;
        OutboxMigrator::up(&conn, None)
            .await
            .context("migrating the outbox table")?;
        conn.execute_unprepared(FILE_UPLOADS)
            .await
            .context("creating file_uploads")?;
        conn.execute_unprepared(SEED_TABLE)
            .await
            .context("creating bench_seed")?;
        let relay_topic = TestTopic::create_on(&bootstrap, "bench_relay", partitions).await;
        let latency_topic = TestTopic::create_on(&bootstrap, "bench_latency", partitions).await;
        println!(
            "topics {} and {} ({partitions} partitions) on {bootstrap}",
            relay_topic.name(),
            latency_topic.name()
        );
        Ok(Self {
            conn,
            bootstrap,
            relay_topic,
            latency_topic,
            partitions,
            keys,
            seeded: tokio::sync::Mutex::new(0),
            database,
        })
    }

    /// The run's database URL (for the writer process of the cross-process runs).
    pub(crate) fn database_url(&self) -> &str {
        self.database.url()
    }

    pub(crate) fn pool(&self) -> &PgPool {
        self.conn.get_postgres_connection_pool()
    }

    /// Runs SQL outside any transaction (VACUUM, TRUNCATE).
    pub(crate) async fn sql(&self, sql: &str) -> Result<()> {
        sqlx::raw_sql(sql).execute(self.pool()).await.context(sql)?;
        Ok(())
    }

    /// Empties the business and outbox tables.
    pub(crate) async fn truncate(&self) -> Result<()> {
        self.sql("TRUNCATE file_uploads, event_outbox").await
    }

    /// Makes `bench_seed` hold at least `n` events for the relay topic, generating what is
    /// missing.
    async fn seed(&self, n: u64) -> Result<()> {
        use futures::StreamExt;
        const CHUNK: u64 = 2_000;
        let mut seeded = self.seeded.lock().await;
        if *seeded >= n {
            return Ok(());
        }
        let started = Instant::now();
        let shape = Shape::new(self.relay_topic.name());
        let shape = &shape;
        let keys = self.keys;
        let mut chunks = futures::stream::iter((*seeded..n).step_by(CHUNK as usize).map(
            |first| async move {
                let mut cols = SeedColumns::default();
                for seq in first..(first + CHUNK).min(n) {
                    cols.push(seq, shape.file_added(&Upload::new(seq, keys))?)?;
                }
                cols.insert(self.pool()).await
            },
        ))
        .buffer_unordered(2);
        while let Some(done) = chunks.next().await {
            done?;
        }
        self.sql("VACUUM ANALYZE bench_seed").await?;
        println!(
            "  generated {} seed events in {:.1} s",
            n - *seeded,
            started.elapsed().as_secs_f64()
        );
        *seeded = n;
        Ok(())
    }

    /// Empties the outbox and fills it with the first `n` seed events (vacuumed and
    /// analysed, as autovacuum would leave a backlog built up over time, and checkpointed, so the
    /// loading's write-ahead log is not flushed during the drain that follows). Returns how long
    /// the copy took.
    pub(crate) async fn load_backlog(&self, n: u64) -> Result<Duration> {
        self.seed(n).await?;
        self.truncate().await?;
        let started = Instant::now();
        sqlx::query(LOAD_BACKLOG)
            .bind(i64::try_from(n).context("backlog size")?)
            .execute(self.pool())
            .await
            .context("loading the backlog")?;
        self.sql("VACUUM ANALYZE event_outbox").await?;
        // Needs the pg_checkpoint role (scripts/services.sh grants it); without it the drain
        // may share the machine with a checkpoint of the load, which the report's checkpoint
        // column then shows.
        if let Err(e) = self.sql("CHECKPOINT").await {
            println!("  (no CHECKPOINT after loading the backlog: {e})");
        }
        Ok(started.elapsed())
    }

    /// Empties the outbox and fills it with `n` events of about `payload_bytes` each for the relay
    /// topic, generated on the spot (not from `bench_seed`, whose events are 1 KiB), then
    /// vacuums, analyses and checkpoints as [`Env::load_backlog`] does. Returns how long the
    /// inserts took.
    pub(crate) async fn load_padded_backlog(
        &self,
        n: u64,
        payload_bytes: usize,
    ) -> Result<Duration> {
        self.truncate().await?;
        let started = Instant::now();
        let shape = Shape::with_payload(self.relay_topic.name(), payload_bytes);
        // About 4 MiB per statement.
        let chunk = (4 * 1024 * 1024 / payload_bytes.max(1)).clamp(1, 2_000) as u64;
        let mut first = 0;
        while first < n {
            let mut cols = SeedColumns::default();
            for seq in first..(first + chunk).min(n) {
                cols.push(seq, shape.file_added(&Upload::new(seq, self.keys))?)?;
            }
            cols.insert_into_outbox(self.pool()).await?;
            first += chunk;
        }
        let took = started.elapsed();
        self.sql("VACUUM ANALYZE event_outbox").await?;
        if let Err(e) = self.sql("CHECKPOINT").await {
            println!("  (no CHECKPOINT after loading the backlog: {e})");
        }
        Ok(took)
    }

    /// Rows left in the outbox.
    pub(crate) async fn outbox_rows(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT count(*) FROM event_outbox")
            .fetch_one(self.pool())
            .await
            .context("counting outbox rows")
    }

    /// What the report says about the machine and the servers.
    pub(crate) async fn machine(&self) -> Machine {
        let pg = |sql: &'static str| async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_one(self.pool())
                .await
                .unwrap_or_else(|e| format!("unknown ({e})"))
        };
        Machine {
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_gib: mem_total_kib().map(|kib| kib as f64 / 1024.0 / 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            postgres: pg("SELECT version()").await,
            postgres_settings: pg("SELECT (SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'wal_level', 'max_wal_size', 'checkpoint_timeout', 'ssl')) || ', this connection ' || (SELECT CASE WHEN ssl THEN 'over TLS' ELSE 'without TLS' END FROM pg_stat_ssl WHERE pid = pg_backend_pid())").await,
            kafka: kafka_version(),
            librdkafka: rdkafka::util::get_rdkafka_version().1,
            rustc: run("rustc", &["--version"]),
            git_commit: run("git", &["rev-parse", "HEAD"]),
            git_dirty: !run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty(),
            load_average: load_average(),
        }
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Columns of a chunk of seed rows, bound as arrays.
#[derive(Default)]
struct SeedColumns {
    seq: Vec<i64>,
    event_id: Vec<Uuid>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    event_type: Vec<String>,
    topic: Vec<String>,
    key: Vec<String>,
    payload: Vec<Vec<u8>>,
    headers: Vec<String>,
}

impl SeedColumns {
    fn push(&mut self, seq: u64, event: NewOutboxEvent) -> Result<()> {
        self.seq.push(i64::try_from(seq).context("sequence")?);
        self.key.push(event.key().to_owned());
        self.event_id.push(event.event_id.as_uuid());
        self.aggregate_type.push(event.aggregate_type);
        self.aggregate_id.push(event.aggregate_id);
        self.event_type.push(event.event_type);
        self.topic.push(event.topic.unwrap_or_default());
        self.payload.push(event.payload);
        self.headers
            .push(serde_json::to_string(&event.headers).context("headers")?);
        Ok(())
    }

    async fn insert(self, pool: &PgPool) -> Result<()> {
        sqlx::query(SEED_INSERT)
            .bind(self.seq)
            .bind(self.event_id)
            .bind(self.aggregate_type)
            .bind(self.aggregate_id)
            .bind(self.event_type)
            .bind(self.topic)
            .bind(self.key)
            .bind(self.payload)
            .bind(self.headers)
            .execute(pool)
            .await
            .context("seeding events")?;
        Ok(())
    }
}

/// The seed columns straight into `event_outbox`, in `seq` order.
const OUTBOX_INSERT: &str = "\
INSERT INTO event_outbox
    (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers)
SELECT event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers
FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::bytea[], $9::text[]::jsonb[])
     AS t(seq, event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers)
ORDER BY seq";

impl SeedColumns {
    async fn insert_into_outbox(self, pool: &PgPool) -> Result<()> {
        sqlx::query(OUTBOX_INSERT)
            .bind(self.seq)
            .bind(self.event_id)
            .bind(self.aggregate_type)
            .bind(self.aggregate_id)
            .bind(self.event_type)
            .bind(self.topic)
            .bind(self.key)
            .bind(self.payload)
            .bind(self.headers)
            .execute(pool)
            .await
            .context("inserting padded events")?;
        Ok(())
    }
}

/// One File Service upload: the business row every write variant inserts.
#[derive(Debug, Clone)]
pub(crate) struct Upload {
    pub(crate) id: Uuid,
    pub(crate) batch_id: String,
    pub(crate) user_id: String,
    pub(crate) filename: String,
    pub(crate) size_bytes: i64,
    pub(crate) md5: String,
    pub(crate) correlation_id: Uuid,
}

impl Upload {
    /// The `seq`-th upload, in one of `keys` batches (the batch id is the event's key).
    pub(crate) fn new(seq: u64, keys: usize) -> Self {
        let id = Uuid::now_v7();
        Self {
            id,
            batch_id: format!("batch-{:04}", seq % keys.max(1) as u64),
            user_id: format!("user-{:03}", seq % 97),
            filename: format!("essay-{seq:07}-final-draft.docx"),
            size_bytes: RAW_BYTES as i64,
            // Stands in for the hex MD5 of the bytes: same length, no hashing dependency.
            md5: id.simple().to_string(),
            correlation_id: Uuid::new_v4(),
        }
    }

    /// The statement values of the business row.
    pub(crate) fn values(&self, raw: &[u8]) -> Vec<sea_orm::Value> {
        vec![
            self.id.into(),
            self.batch_id.clone().into(),
            self.user_id.clone().into(),
            self.filename.clone().into(),
            self.size_bytes.into(),
            self.md5.clone().into(),
            "pending".into(),
            raw.to_vec().into(),
        ]
    }
}

/// `BatchFileAddedV1` as the File Service sends it, plus padding up to [`PAYLOAD_BYTES`].
#[derive(Serialize)]
struct BatchFileAdded<'a> {
    event: &'static str,
    batch_id: &'a str,
    file_upload_id: Uuid,
    filename: &'a str,
    user_id: &'a str,
    correlation_id: Uuid,
    timestamp: String,
    padding: &'a str,
}

/// How the benchmark's events look: their topic and the padding that makes them 1 KiB.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub(crate) topic: String,
    padding: String,
}

impl Shape {
    pub(crate) fn new(topic: &str) -> Self {
        let mut shape = Self {
            topic: topic.to_owned(),
            padding: String::new(),
        };
        let unpadded = shape
            .file_added(&Upload::new(0, 1000))
            .map(|e| e.payload.len())
            .unwrap_or(PAYLOAD_BYTES);
        shape.padding = "x".repeat(PAYLOAD_BYTES.saturating_sub(unpadded));
        shape
    }

    /// Events whose JSON envelope is about `payload_bytes` long, padded with essay-like text
    /// (words in a pseudo-random order, which PostgreSQL's compression shrinks about as much as
    /// it shrinks real prose, unlike a run of one letter).
    pub(crate) fn with_payload(topic: &str, payload_bytes: usize) -> Self {
        let mut shape = Self {
            topic: topic.to_owned(),
            padding: String::new(),
        };
        let unpadded = shape
            .file_added(&Upload::new(0, 1000))
            .map(|e| e.payload.len())
            .unwrap_or(PAYLOAD_BYTES);
        shape.padding = essay_text(payload_bytes.saturating_sub(unpadded), 1);
        shape
    }

    /// The event of `upload`, built the way a service builds it: an envelope with a traceparent,
    /// stored with key = batch id.
    pub(crate) fn file_added(&self, upload: &Upload) -> Result<NewOutboxEvent> {
        let data = BatchFileAdded {
            event: "batch.file.added",
            batch_id: &upload.batch_id,
            file_upload_id: upload.id,
            filename: &upload.filename,
            user_id: &upload.user_id,
            correlation_id: upload.correlation_id,
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            padding: &self.padding,
        };
        let trace = Uuid::new_v4().simple().to_string();
        let span = &Uuid::new_v4().simple().to_string()[..16];
        let envelope = EventEnvelope::new(EVENT_TYPE, "file-service", data)
            .with_correlation_id(upload.correlation_id)
            .with_traceparent(Some(format!("00-{trace}-{span}-01")));
        Ok(envelope
            .to_outbox_event("batch", upload.batch_id.clone())
            .context("building the event")?
            .with_topic(&self.topic))
    }
}

/// An essay-like ASCII text of exactly `bytes` bytes: words in a pseudo-random order (seeded by
/// `seed`), in sentences.
pub(crate) fn essay_text(bytes: usize, seed: u64) -> String {
    const WORDS: [&str; 32] = [
        "the",
        "student",
        "argues",
        "that",
        "climate",
        "policy",
        "should",
        "reflect",
        "evidence",
        "from",
        "several",
        "independent",
        "studies",
        "and",
        "careful",
        "reasoning",
        "although",
        "critics",
        "suggest",
        "otherwise",
        "because",
        "economic",
        "growth",
        "matters",
        "to",
        "communities",
        "in",
        "rural",
        "regions",
        "where",
        "farmers",
        "live",
    ];
    let mut text = String::with_capacity(bytes + 16);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut words = 0;
    while text.len() < bytes {
        // xorshift64: cheap and deterministic.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        words += 1;
        text.push_str(if words % 14 == 0 { ". " } else { " " });
    }
    text.truncate(bytes);
    text
}

/// The sum of the high watermarks of `topic`'s partitions: how many messages it holds.
pub(crate) async fn topic_messages(bootstrap: &str, topic: &str, partitions: i32) -> Result<i64> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> Result<i64> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("log_level", "3")
            .create()
            .context("watermark client")?;
        let mut total = 0;
        for partition in 0..partitions {
            let (_, high) = producer
                .client()
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .context("fetching watermarks")?;
            total += high;
        }
        Ok(total)
    })
    .await
    .context("watermark task")?
}

/// The machine and servers a result was measured on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cpu_model: String,
    pub(crate) cores: usize,
    pub(crate) memory_gib: Option<f64>,
    pub(crate) kernel: String,
    pub(crate) postgres: String,
    pub(crate) postgres_settings: String,
    pub(crate) kafka: String,
    pub(crate) librdkafka: String,
    pub(crate) rustc: String,
    pub(crate) git_commit: String,
    pub(crate) git_dirty: bool,
    pub(crate) load_average: String,
}

impl Machine {
    pub(crate) fn one_line(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB, {}, Kafka {}, librdkafka {}, {}",
            self.cores,
            self.cpu_model,
            self.memory_gib.unwrap_or_default(),
            self.postgres.split(" on ").next().unwrap_or(&self.postgres),
            self.kafka,
            self.librdkafka,
            self.rustc
        )
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "memory_gib": self.memory_gib.map(crate::stats::round3),
            "kernel": self.kernel,
            "postgres": self.postgres,
            "postgres_settings": self.postgres_settings,
            "kafka": self.kafka,
            "librdkafka": self.librdkafka,
            "rustc": self.rustc,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "load_average_at_start": self.load_average,
        })
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn mem_total_kib() -> Option<u64> {
    proc_field("/proc/meminfo", "MemTotal:")
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The share of wall time in which at least one task on this machine waited for a CPU, over a
/// span: the kernel's pressure stall information (`/proc/pressure/cpu`, its `some` line). On two
/// shared cores a latency tail often follows this share rather than the code under test, so the
/// latency runs report it beside their percentiles.
pub(crate) struct CpuPressure {
    stalled_micros: Option<u64>,
    started: Instant,
}

impl CpuPressure {
    /// Starts the span now.
    pub(crate) fn start() -> Self {
        Self {
            stalled_micros: cpu_stalled_micros(),
            started: Instant::now(),
        }
    }

    /// The share (0 to 1) of the span until now, or `None` where the kernel reports no pressure.
    pub(crate) fn share(&self) -> Option<f64> {
        let stalled = cpu_stalled_micros()?.checked_sub(self.stalled_micros?)?;
        let elapsed = self.started.elapsed().as_micros().max(1) as f64;
        Some((stalled as f64 / elapsed).min(1.0))
    }
}

/// Microseconds in which some task waited for a CPU since boot (`some ... total=`).
fn cpu_stalled_micros() -> Option<u64> {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()?
        .lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// A share as a percentage for the report, or `-` where unknown.
pub(crate) fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |s| format!("{:.0}%", s * 100.0))
}

/// A `Name: value kB` field of a /proc file.
fn proc_field(path: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The Kafka version the services script runs: `kafka.version` in `scripts/kafka/pom.xml`.
fn kafka_version() -> String {
    let pom = outbox_test_harness::repo_root().join("scripts/kafka/pom.xml");
    std::fs::read_to_string(&pom)
        .ok()
        .and_then(|xml| {
            let start = xml.find("<kafka.version>")? + "<kafka.version>".len();
            let end = start + xml[start..].find("</kafka.version>")?;
            Some(format!(
                "{} (scripts/kafka/pom.xml)",
                xml[start..end].trim()
            ))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn run(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(outbox_test_harness::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Cluster-wide PostgreSQL counters read before and after a drain. They include whatever else
/// the server did meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerCounters {
    /// WAL position in bytes (exact, unlike `pg_stat_wal`, which backends flush lazily).
    pub(crate) wal_bytes: f64,
    pub(crate) checkpoints: i64,
}

impl ServerCounters {
    pub(crate) async fn read(env: &Env) -> Result<Self> {
        let (wal_bytes, checkpoints): (f64, i64) = sqlx::query_as(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
                    checkpoints_timed + checkpoints_req \
             FROM pg_stat_bgwriter",
        )
        .fetch_one(env.pool())
        .await
        .context("reading the WAL position")?;
        Ok(Self {
            wal_bytes,
            checkpoints,
        })
    }

    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            wal_bytes: self.wal_bytes - before.wal_bytes,
            checkpoints: self.checkpoints - before.checkpoints,
        }
    }
}

/// The oldest transaction open on the server (any database) for more than a second: it holds
/// back the horizon below which deleted rows count as dead to everyone, so the claim's index
/// scan cannot mark their entries dead and must visit them again.
pub(crate) async fn oldest_transaction(env: &Env) -> String {
    let row: std::result::Result<Option<(String, f64, String)>, _> = sqlx::query_as(
        "SELECT coalesce(datname, '-'), extract(epoch FROM now() - xact_start)::float8, \
                coalesce(left(query, 60), '') \
         FROM pg_stat_activity \
         WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND pid <> pg_backend_pid() \
           AND xact_start < now() - interval '1 second' \
         ORDER BY xact_start LIMIT 1",
    )
    .fetch_optional(env.pool())
    .await;
    match row {
        Ok(Some((db, age, query))) => {
            let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{age:.1} s old, database {db}: {query}")
        }
        Ok(None) => "none older than 1 s".into(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The process's resident memory now and at its peak, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rss {
    pub(crate) current_kib: u64,
    pub(crate) peak_kib: u64,
}

impl Rss {
    pub(crate) fn now() -> Self {
        Self {
            current_kib: proc_field("/proc/self/status", "VmRSS:").unwrap_or_default(),
            peak_kib: proc_field("/proc/self/status", "VmHWM:").unwrap_or_default(),
        }
    }

    /// Resets the peak to the current size (`echo 5 > /proc/self/clear_refs`). Returns whether
    /// the kernel allowed it.
    pub(crate) fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }
}
