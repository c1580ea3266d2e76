//! Hostile files end to end: the real `file-service` binary, real PostgreSQL and Kafka, and
//! files made by the tests to crash, exhaust or stall a parser. Whatever the file, the service
//! stays up and answers `/healthz`, every upload ends with exactly one outcome event, the
//! service's own memory stays under [`RSS_BOUND_KIB`], and a restart in the middle of processing
//! neither crash-loops nor announces an upload twice.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::hostile::*;
use common::*;
use file_service::events::{ESSAY_CONTENT_PROVISIONED_TOPIC, ESSAY_VALIDATION_FAILED_TOPIC};
use outbox_test_harness::{Received, TestDatabase, TestTopic, consume_until_quiet};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use serde_json::Value;

/// The most resident memory (VmHWM, the peak) the service's own process may reach while it
/// takes and processes every hostile file below: 256 MiB. The extraction children have their
/// own limit (`FILE_SERVICE_EXTRACT_MEMORY_BYTES`, 256 MiB here) and are not counted.
const RSS_BOUND_KIB: u64 = 256 * 1024;

struct Setup {
    db: TestDatabase,
    bootstrap: String,
    prefix: String,
    _topics: Vec<TestTopic>,
}

struct Running {
    child: Child,
    port: u16,
    log: PathBuf,
    client: reqwest::Client,
}

impl Setup {
    async fn new() -> Self {
        let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
        let db = TestDatabase::create().await;
        let (prefix, topics) = topics(&bootstrap).await;
        Self {
            db,
            bootstrap,
            prefix,
            _topics: topics,
        }
    }

    fn start(&self, extra: &[(&str, &str)]) -> Running {
        let port = outbox_test_harness::free_port();
        let log = std::env::temp_dir().join(format!("file-service-hostile-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_file-service"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", self.db.url())
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("FILE_SERVICE_HTTP_PORT", port.to_string())
            .env("FILE_SERVICE_MIGRATE_ON_START", "true")
            .env("FILE_SERVICE_TOPIC_PREFIX", &self.prefix)
            .env("FILE_SERVICE_EXTRACT_MEMORY_BYTES", (256 << 20).to_string())
            .env("FILE_SERVICE_EXTRACT_TIMEOUT_MS", "30000")
            .env("FILE_SERVICE_EXTRACT_CPU_SECONDS", "15")
            .env("OUTBOX_POLL_INTERVAL_MS", "100")
            .env("OUTBOX_SHUTDOWN_TIMEOUT_MS", "10000")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json");
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Running {
            child,
            port,
            log,
            client: reqwest::Client::new(),
        }
    }

    async fn read(&self, topic: &str, expected: usize) -> Vec<Received> {
        consume_until_quiet(
            &self.bootstrap,
            &format!("{}{topic}", self.prefix),
            expected,
            Duration::from_secs(60),
            Duration::from_millis(1500),
        )
        .await
    }

    /// Every outcome event (provisioned or failed) per upload id.
    async fn outcomes(&self, expected: usize) -> HashMap<String, Vec<Value>> {
        let mut per_upload: HashMap<String, Vec<Value>> = HashMap::new();
        let provisioned = self.read(ESSAY_CONTENT_PROVISIONED_TOPIC, 0).await;
        let failed = self
            .read(
                ESSAY_VALIDATION_FAILED_TOPIC,
                expected.saturating_sub(provisioned.len()),
            )
            .await;
        for message in provisioned.iter().chain(&failed) {
            let envelope: Value = message.json();
            per_upload
                .entry(
                    envelope["data"]["file_upload_id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
                .or_default()
                .push(envelope);
        }
        per_upload
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            assert!(self.still_running(), "the service exited:\n{}", self.log());
            if let Ok(response) = self.client.get(self.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the service did not become healthy:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn upload(&self, batch: &str, files: &[(&str, Vec<u8>)]) -> Vec<String> {
        let mut parts = vec![Part::Text("batch_id", batch)];
        for (name, bytes) in files {
            parts.push(Part::File(name, bytes));
        }
        let response = self
            .client
            .post(self.url("/v1/files/batch"))
            .header("x-user-id", "teacher")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(multipart(&parts))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["file_upload_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls `/healthz` every 100 ms until `stop`; counts the answers that were not 200.
    fn watch_health(&self, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
        let client = self.client.clone();
        let url = self.url("/healthz");
        tokio::spawn(async move {
            let (mut ok, mut bad) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => bad += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ok, bad)
        })
    }

    /// The service process's peak resident memory (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn pending(conn: &DatabaseConnection, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        let row = conn
            .query_one(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT status FROM file_uploads WHERE file_upload_id = $1::uuid",
                [id.clone().into()],
            ))
            .await
            .unwrap()
            .unwrap();
        let status: String = row.try_get("", "status").unwrap();
        n += usize::from(status == "pending");
    }
    n
}

async fn wait_processed(conn: &DatabaseConnection, ids: &[String], service: &mut Running) {
    let started = Instant::now();
    while pending(conn, ids).await > 0 {
        assert!(
            service.still_running(),
            "the service died:\n{}",
            service.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "uploads still pending:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn attempts(conn: &DatabaseConnection, id: &str) -> i32 {
    conn.query_one(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT processing_attempts FROM file_uploads WHERE file_upload_id = $1::uuid",
        [id.into()],
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "processing_attempts")
    .unwrap()
}

/// What an upload must come to: provisioned, or failed with this code (`None`: any code).
#[derive(Debug, Clone, Copy)]
enum Expect {
    Provisioned,
    Failed(Option<&'static str>),
}

const ESSAY: &str = "Cities cover a small part of the planet but produce most of its emissions; \
                     better public transport and trees along streets can cut them.";

fn hostile_files() -> Vec<(&'static str, Vec<u8>, Expect)> {
    vec![
        (
            "self-referencing-xobject.pdf",
            self_referencing_xobject_pdf(),
            Expect::Failed(Some("TEXT_EXTRACTION_FAILED")),
        ),
        (
            "nested-xobjects.pdf",
            nested_xobject_chain_pdf(50_000),
            Expect::Failed(None),
        ),
        (
            "double-flate-bomb.pdf",
            double_flate_bomb_pdf(1 << 30),
            Expect::Failed(None),
        ),
        (
            "zip-bomb.docx",
            docx_zip_bomb(512 << 20),
            Expect::Failed(None),
        ),
        (
            "ten-thousand-pages.pdf",
            many_pages_pdf(10_000),
            Expect::Failed(None),
        ),
        (
            "header-then-garbage.pdf",
            pdf_header_then_garbage(200_000),
            Expect::Failed(Some("TEXT_EXTRACTION_FAILED")),
        ),
        ("utf16le.txt", utf16le_with_bom(ESSAY), Expect::Provisioned),
        ("utf16be.txt", utf16be_with_bom(ESSAY), Expect::Provisioned),
        (
            "utf16-without-bom.txt",
            utf16le_without_bom(ESSAY),
            Expect::Failed(Some("TEXT_EXTRACTION_FAILED")),
        ),
    ]
}

fn check_outcomes(
    per_upload: &HashMap<String, Vec<Value>>,
    ids: &[String],
    files: &[(&str, Vec<u8>, Expect)],
    log: &str,
) {
    for (id, (name, _, expect)) in ids.iter().zip(files) {
        let events = per_upload.get(id).cloned().unwrap_or_default();
        assert_eq!(
            events.len(),
            1,
            "{name}: exactly one outcome event, got {events:?}\n{log}"
        );
        let event = &events[0];
        let data = &event["data"];
        println!(
            "{name}: {} {} {}",
            event["event_type"],
            data["validation_error_code"],
            data["validation_error_detail"]["details"]
        );
        match expect {
            Expect::Provisioned => assert_eq!(
                event["event_type"], ESSAY_CONTENT_PROVISIONED_TOPIC,
                "{name}: {event}"
            ),
            Expect::Failed(code) => {
                assert_eq!(
                    event["event_type"], ESSAY_VALIDATION_FAILED_TOPIC,
                    "{name}: {event}"
                );
                if let Some(code) = code {
                    assert_eq!(data["validation_error_code"], *code, "{name}: {event}");
                }
            }
        }
    }
}

#[test]
fn the_generated_deflate_inflates_to_what_it_says() {
    use std::io::Read;
    let packed = zlib_run(b"head ", b'x', 100_000, b" tail");
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&packed[..])
        .read_to_end(&mut out)
        .unwrap();
    let expected = [b"head ".to_vec(), vec![b'x'; 100_000], b" tail".to_vec()].concat();
    assert_eq!(out, expected);
    assert!(packed.len() < 10_000, "{}", packed.len());
}

#[test]
fn the_extraction_child_names_why_it_refused_each_hostile_pdf() {
    // The child on its own, as the service runs it: each file is refused, never hangs.
    let cases = [
        ("self.pdf", self_referencing_xobject_pdf()),
        ("garbage.pdf", pdf_header_then_garbage(10_000)),
    ];
    for (name, bytes) in cases {
        let mut child = Command::new(env!("CARGO_BIN_EXE_file-service"))
            .args([
                "extract-text",
                "--memory-bytes",
                &(256u64 << 20).to_string(),
                "--cpu-seconds",
                "10",
                "--max-input-bytes",
                &bytes.len().to_string(),
                "--",
                name,
            ])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(&bytes);
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() {
            let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(
                answer["rejected"]["code"], "TEXT_EXTRACTION_FAILED",
                "{name}: {answer}"
            );
        } else {
            // Killed by a signal (stack overflow, memory limit): the service turns that into
            // TEXT_EXTRACTION_FAILED; here it must at least not have answered text.
            assert!(!stdout.contains("\"text\""), "{name}: {stdout}");
        }
    }
}

#[tokio::test]
async fn every_hostile_file_ends_with_one_outcome_while_the_service_stays_up_and_small() {
    let setup = Setup::new().await;
    let mut service = setup.start(&[("FILE_SERVICE_PROCESSING_CONCURRENCY", "2")]);
    service.ready().await;
    let conn = setup.db.connect().await;

    let stop = Arc::new(AtomicBool::new(false));
    let health = service.watch_health(stop.clone());
    let files = hostile_files();
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b, _)| (*n, b.clone())).collect();
    let ids = service.upload("hostile", &named).await;
    wait_processed(&conn, &ids, &mut service).await;

    let per_upload = setup.outcomes(ids.len()).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = health.await.unwrap();
    let log = service.log();
    check_outcomes(&per_upload, &ids, &files, &log);
    assert!(ok > 0);
    assert_eq!(bad, 0, "/healthz answered 200 throughout ({ok} times)");
    assert!(service.still_running(), "{log}");
    let peak = service.peak_rss_kib();
    println!("service peak RSS (VmHWM): {peak} KiB; bound {RSS_BOUND_KIB} KiB");
    assert!(
        peak < RSS_BOUND_KIB,
        "the service's own memory peaked at {peak} KiB"
    );
    let exit = service.terminate();
    assert!(exit.success(), "{}", service.log());
}

/// Holds every outcome event (not `BatchFileAddedV1`) at its insert into the outbox until the
/// returned transaction ends: processing then stops in the middle, after extraction.
async fn hold_outcomes(conn: &DatabaseConnection) -> sea_orm::DatabaseTransaction {
    conn.execute_unprepared(
        "CREATE OR REPLACE FUNCTION hold_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.event_type LIKE '%essay%' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
           RETURN NEW;
         END $$;
         DROP TRIGGER IF EXISTS hold_outcomes ON event_outbox;
         CREATE TRIGGER hold_outcomes BEFORE INSERT ON event_outbox
           FOR EACH ROW EXECUTE FUNCTION hold_outcomes();",
    )
    .await
    .unwrap();
    let blocker = conn.begin().await.unwrap();
    blocker
        .execute_unprepared("SELECT pg_advisory_xact_lock(4242)")
        .await
        .unwrap();
    blocker
}

/// Waits until `n` outcome transactions are blocked writing to the held outbox.
async fn wait_blocked_outcomes(conn: &DatabaseConnection, n: i64, service: &mut Running) {
    let started = Instant::now();
    loop {
        let row = conn
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query ILIKE '%insert%event_outbox%'",
            ))
            .await
            .unwrap()
            .unwrap();
        let blocked: i64 = row.try_get("", "n").unwrap();
        if blocked >= n {
            return;
        }
        assert!(service.still_running(), "{}", service.log());
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{blocked} of {n} outcomes blocked:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restart_in_the_middle_of_processing_hostile_files_does_not_crash_loop() {
    let setup = Setup::new().await;
    let files: Vec<_> = hostile_files()
        .into_iter()
        .filter(|(n, _, _)| n.ends_with(".pdf") || n.ends_with(".docx"))
        .collect();
    let concurrency = files.len().to_string();
    let extra = [("FILE_SERVICE_PROCESSING_CONCURRENCY", concurrency.as_str())];
    let mut service = setup.start(&extra);
    service.ready().await;
    let conn = setup.db.connect().await;
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b, _)| (*n, b.clone())).collect();

    // Every file is extracted, then its outcome waits at the outbox: the service is killed in
    // the middle of processing all of them.
    let blocker = hold_outcomes(&conn).await;
    let ids = service.upload("restart", &named).await;
    wait_blocked_outcomes(&conn, ids.len() as i64, &mut service).await;
    service.kill();
    blocker.rollback().await.unwrap();
    assert_eq!(
        pending(&conn, &ids).await,
        ids.len(),
        "nothing was finished"
    );

    let mut restarted = setup.start(&extra);
    restarted.ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let health = restarted.watch_health(stop.clone());
    wait_processed(&conn, &ids, &mut restarted).await;
    let per_upload = setup.outcomes(ids.len()).await;
    stop.store(true, Ordering::Relaxed);
    let (_, bad) = health.await.unwrap();
    check_outcomes(&per_upload, &ids, &files, &restarted.log());
    assert_eq!(bad, 0);
    for id in &ids {
        assert_eq!(attempts(&conn, id).await, 2, "the killed attempt counted");
    }
    assert!(restarted.still_running(), "{}", restarted.log());
    assert!(restarted.terminate().success());
}

#[tokio::test]
async fn an_upload_whose_processing_keeps_dying_is_failed_once_and_never_requeued() {
    let setup = Setup::new().await;
    let extra = [("FILE_SERVICE_MAX_PROCESSING_ATTEMPTS", "2")];
    let conn = setup.db.connect().await;
    // Migrated before the first start, so the outcomes can be held from the very beginning.
    <file_service::db::Migrator as sea_orm_migration::MigratorTrait>::up(&conn, None)
        .await
        .unwrap();
    let mut ids = Vec::new();
    // Two attempts, each ended by killing the whole service in the middle of processing.
    for round in 0..2 {
        let blocker = hold_outcomes(&conn).await;
        let mut service = setup.start(&extra);
        service.ready().await;
        if round == 0 {
            ids = service
                .upload("poison", &[("essay.txt", ESSAY.as_bytes().to_vec())])
                .await;
        }
        wait_blocked_outcomes(&conn, 1, &mut service).await;
        service.kill();
        blocker.rollback().await.unwrap();
        assert_eq!(attempts(&conn, &ids[0]).await, round + 1);
    }
    // The third start finds the attempts used up: failed, with one event, for good.
    let mut service = setup.start(&extra);
    service.ready().await;
    wait_processed(&conn, &ids, &mut service).await;
    let per_upload = setup.outcomes(1).await;
    let events = &per_upload[&ids[0]];
    assert_eq!(events.len(), 1, "{events:?}");
    let data = &events[0]["data"];
    assert_eq!(data["validation_error_code"], "UNKNOWN_VALIDATION_ERROR");
    assert_eq!(
        data["validation_error_detail"]["details"]["reason"],
        "attempts_exhausted"
    );
    assert_eq!(data["validation_error_detail"]["details"]["attempts"], 2);
    // Another start does not take it up again.
    service.terminate();
    let mut again = setup.start(&extra);
    again.ready().await;
    assert_eq!(attempts(&conn, &ids[0]).await, 3);
    assert_eq!(setup.outcomes(1).await[&ids[0]].len(), 1);
    assert_eq!(attempts(&conn, &ids[0]).await, 3, "never taken up again");
    again.terminate();
}

#[tokio::test]
async fn two_replicas_sweeping_the_same_pending_uploads_never_process_one_twice() {
    let setup = Setup::new().await;
    let conn = setup.db.connect().await;
    // Leave twenty uploads pending: the first process dies with their outcomes blocked.
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("essay-{i}.txt"), ESSAY.as_bytes().to_vec()))
        .collect();
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let mut first = setup.start(&[("FILE_SERVICE_PROCESSING_CONCURRENCY", "20")]);
    first.ready().await;
    let blocker = hold_outcomes(&conn).await;
    let ids = first.upload("replicas", &named).await;
    wait_blocked_outcomes(&conn, 20, &mut first).await;
    first.kill();
    blocker.rollback().await.unwrap();

    // Two replicas start together; both queue all twenty at start.
    let mut a = setup.start(&[("FILE_SERVICE_PROCESSING_CONCURRENCY", "4")]);
    let mut b = setup.start(&[("FILE_SERVICE_PROCESSING_CONCURRENCY", "4")]);
    a.ready().await;
    b.ready().await;
    wait_processed(&conn, &ids, &mut a).await;
    let per_upload = setup.outcomes(20).await;
    let skipped = AtomicUsize::new(0);
    for id in &ids {
        assert_eq!(per_upload[id].len(), 1, "one outcome for {id}");
        // One attempt before the kill, exactly one after: no replica took it up while the
        // other had it.
        assert_eq!(attempts(&conn, id).await, 2, "{id}");
    }
    for log in [a.log(), b.log()] {
        skipped.fetch_add(
            log.matches("being processed by another process").count(),
            Ordering::Relaxed,
        );
    }
    println!(
        "uploads one replica left to the other: {}",
        skipped.load(Ordering::Relaxed)
    );
    a.terminate();
    b.terminate();
}

/// A stand-in for the extraction child: a shell script that ignores its arguments.
fn script(name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(outbox_test_harness::unique_name("fs-child"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_child_that_hangs_dies_or_babbles_is_a_text_extraction_failure_saying_which() {
    use file_service::isolate::{ExtractLimits, extract_in_child};
    let limits = ExtractLimits {
        timeout: Duration::from_millis(500),
        ..ExtractLimits::default()
    };
    let cases = [
        ("hang.sh", "exec sleep 600", "timeout"),
        ("segv.sh", "kill -SEGV $$", "crashed"),
        ("exit.sh", "exit 7", "crashed"),
        ("babble.sh", "cat >/dev/null; echo 'not json'", "bad_output"),
    ];
    for (name, body, reason) in cases {
        let program = script(name, body);
        let rejection = extract_in_child(&program, "essay.pdf", b"%PDF-1.7", limits)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(rejection.code.as_str(), "TEXT_EXTRACTION_FAILED", "{name}");
        assert_eq!(rejection.details["reason"], reason, "{name}: {rejection:?}");
        assert_eq!(rejection.details["isolated"], true);
        let _ = std::fs::remove_dir_all(program.parent().unwrap());
    }
}
