//! Phase 1c: the File Service's upload path, as its clients see it.
//!
//! Starts the `file-service` binary built beside this program (release for `scripts/bench.sh`)
//! on a database and topics of its own, and times `POST /v1/files/batch` with one text file of
//! 1 to 100 KB, one request at a time, sizes interleaved in rounds, from sending the request to
//! reading the whole 202 response. The upload's transaction stores the file's bytes and an
//! event, so a database socket with Nagle's algorithm on makes files over about 16 KB wait ~40 ms
//! (issue 10).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outbox_test_harness::{TestDatabase, TestTopic};
use serde_json::{Value, json};

use crate::env::{Env, essay_text, load_average};
use crate::stats::{Summary, round3};
use crate::{Context, Result, Sizes};

const BOUNDARY: &str = "outbox-bench-boundary-5c1e";

/// One file size.
#[derive(Debug, Clone)]
pub(crate) struct UploadPoint {
    pub(crate) bytes: usize,
    pub(crate) latency: Summary,
}

/// What phase 1c measured, or why it did not run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Uploads {
    pub(crate) binary: String,
    pub(crate) points: Vec<UploadPoint>,
    pub(crate) skipped: Option<String>,
}

impl Uploads {
    pub(crate) fn p50(&self, bytes: usize) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.bytes == bytes)
            .map(|p| p.latency.p50)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "binary": self.binary,
            "skipped": self.skipped,
            "points": self.points.iter().map(|p| json!({
                "file_bytes": p.bytes,
                "latency": p.latency.to_json(),
                "over_first_p50": self.points.first().map(|f| round3(p.latency.p50 / f.latency.p50)),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The `file-service` binary: `OUTBOX_BENCH_FILE_SERVICE`, else the one beside this program.
fn binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("OUTBOX_BENCH_FILE_SERVICE")
        && !path.is_empty()
    {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("this program's path")?;
    Ok(exe.with_file_name("file-service"))
}

/// The running service, killed when dropped.
struct Service {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn multipart(batch: &str, filename: &str, file: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(file.len() + 512);
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"batch_id\"\r\n\r\n{batch}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
             filename=\"{filename}\"\r\nContent-Type: text/plain\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn start(env: &Env, db: &TestDatabase, prefix: &str, bin: &PathBuf) -> Result<Service> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("a free port")?
        .port();
    let log = std::env::temp_dir().join(format!("outbox-bench-file-service-{port}.log"));
    let out = std::fs::File::create(&log).context("the service's log file")?;
    let err = out.try_clone().context("the service's log file")?;
    let child = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.bootstrap)
        .env("FILE_SERVICE_HTTP_PORT", port.to_string())
        .env("FILE_SERVICE_MIGRATE_ON_START", "true")
        .env("FILE_SERVICE_TOPIC_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .context(format!("starting {}", bin.display()))?;
    let mut service = Service { child, port, log };
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = service.child.try_wait() {
            return Err(format!("the File Service exited ({status}):\n{}", service.log()).into());
        }
        if let Ok(response) = client.get(service.url("/healthz")).send().await
            && response.status() == 200
        {
            return Ok(service);
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the File Service did not become healthy in 60 s:\n{}",
                service.log()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One upload of `file`, timed from sending the request to reading the whole response.
async fn upload(
    client: &reqwest::Client,
    service: &Service,
    seq: u64,
    file: &[u8],
) -> Result<Duration> {
    let body = multipart(&format!("bench-{seq:06}"), "essay.txt", file);
    let started = Instant::now();
    let response = client
        .post(service.url("/v1/files/batch"))
        .header("x-user-id", "bench-teacher")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .context("POST /v1/files/batch")?;
    let status = response.status();
    let text = response.text().await.context("reading the response")?;
    let took = started.elapsed();
    if status != 202 {
        return Err(format!("upload answered {status}: {text}").into());
    }
    Ok(took)
}

/// Runs phase 1c, or says why it cannot (no binary).
pub(crate) async fn run(env: &Env, sizes: &Sizes) -> Result<Uploads> {
    let bin = binary()?;
    println!(
        "\n== 1c. File Service upload path ({}; {} rounds of {} per size; load {})",
        bin.display(),
        sizes.upload_rounds,
        sizes.upload_per_block,
        load_average()
    );
    // Relative to the repository, so the report names no machine's folders.
    let root = outbox_test_harness::repo_root();
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let shown = bin
        .strip_prefix(&root)
        .unwrap_or(&bin)
        .display()
        .to_string();
    let mut result = Uploads {
        binary: shown,
        ..Uploads::default()
    };
    if !bin.is_file() {
        let why = format!(
            "no File Service binary at {} (build it with `cargo build --release -p file-service`, \
             or set OUTBOX_BENCH_FILE_SERVICE)",
            bin.display()
        );
        if sizes.smoke {
            println!("  skipped: {why}");
            result.skipped = Some(why);
            return Ok(result);
        }
        return Err(why.into());
    }
    let server = outbox_test_harness::database_url().await;
    let db = TestDatabase::create_on(&server).await;
    let prefix = format!("{}.", outbox_test_harness::unique_name("bench_fs"));
    let mut topics: Vec<TestTopic> = Vec::new();
    for topic in file_service::events::TOPICS {
        topics.push(TestTopic::create_named(&env.bootstrap, &format!("{prefix}{topic}"), 3).await);
    }
    let service = start(env, &db, &prefix, &bin).await?;
    let client = reqwest::Client::new();
    let files: Vec<(usize, Vec<u8>)> = sizes
        .upload_bytes
        .iter()
        .map(|&bytes| (bytes, essay_text(bytes, bytes as u64).into_bytes()))
        .collect();
    let mut seq = 0;
    for (_, file) in &files {
        for _ in 0..sizes.upload_warmup {
            upload(&client, &service, seq, file).await?;
            seq += 1;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); files.len()];
    for round in 0..sizes.upload_rounds {
        for k in 0..files.len() {
            let slot = (round + k) % files.len();
            for _ in 0..sizes.upload_per_block {
                samples[slot].push(upload(&client, &service, seq, &files[slot].1).await?);
                seq += 1;
            }
        }
    }
    for ((bytes, _), mut taken) in files.iter().zip(samples) {
        let latency = Summary::of(&mut taken);
        println!(
            "  {:>3} KB: p50 {:.3} ms  p99 {:.3} ms  ({} uploads)",
            bytes / 1000,
            latency.p50,
            latency.p99,
            latency.count
        );
        result.points.push(UploadPoint {
            bytes: *bytes,
            latency,
        });
    }
    drop(service);
    drop(topics);
    drop(db);
    Ok(result)
}
