//! Configuration from the environment, validated at start.

use std::path::PathBuf;
use std::time::Duration;

use outbox_core::RelaySettings;
use outbox_kafka::KafkaConfig;

use crate::isolate::ExtractLimits;

pub use outbox_cli::env::{ConfigError, Env, LogFormat, ProcessEnv};
use outbox_cli::env::{error, flag, millis, parse};

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (required).
    pub database_url: String,
    /// `KAFKA_BOOTSTRAP_SERVERS` and `KAFKA_PRODUCER_*` properties.
    pub kafka: KafkaConfig,
    /// `FILE_SERVICE_HTTP_PORT`, default 7001.
    pub http_port: u16,
    /// `FILE_SERVICE_MAX_FILE_BYTES`, default 10 MiB.
    pub max_file_bytes: usize,
    /// `FILE_SERVICE_MAX_REQUEST_BYTES`, default 100 MiB: the whole multipart body.
    pub max_request_bytes: usize,
    /// `FILE_SERVICE_MIGRATE_ON_START`, default false.
    pub migrate_on_start: bool,
    /// `BATCH_ORCHESTRATOR_URL`; unset means local ownership.
    pub orchestrator_url: Option<String>,
    /// `BATCH_ORCHESTRATOR_TIMEOUT_MS`, default 5,000.
    pub orchestrator_timeout: Duration,
    /// `FILE_SERVICE_PROCESSING_CONCURRENCY`, default 2: files processed at once.
    pub processing_concurrency: usize,
    /// `FILE_SERVICE_TOPIC_PREFIX`, default empty: put before every topic name (isolated
    /// environments and tests; the envelope's `event_type` stays the contract's topic name).
    pub topic_prefix: String,
    /// `FILE_SERVICE_CREATE_TOPICS`, default false: create the four topics at start when missing
    /// (development and demos; production topics are provisioned).
    pub create_topics: bool,
    /// `FILE_SERVICE_EXTRACT_TIMEOUT_MS` (default 30,000), `FILE_SERVICE_EXTRACT_MEMORY_BYTES`
    /// (default 512 MiB, at least 64 MiB) and `FILE_SERVICE_EXTRACT_CPU_SECONDS` (default 20):
    /// the limits of each `.docx`/`.pdf` extraction child.
    pub extract_limits: ExtractLimits,
    /// The program run as the extraction child: this binary (`std::env::current_exe`). Not read
    /// from the environment; tests that build the service inside a test binary point it at the
    /// real `file-service`.
    pub extract_program: PathBuf,
    /// `FILE_SERVICE_MAX_PROCESSING_ATTEMPTS`, default 3: times an upload is taken up for
    /// processing (a crash of the whole service included) before it is failed for good.
    pub max_processing_attempts: u32,
    /// `FILE_SERVICE_MAX_CONCURRENT_UPLOADS`, default 8: upload requests handled at once; more
    /// get 503 with `Retry-After`.
    pub max_concurrent_uploads: usize,
    /// `FILE_SERVICE_MAX_FILES_PER_REQUEST`, default 50.
    pub max_files_per_request: usize,
    /// `FILE_SERVICE_MAX_FILENAME_BYTES`, default 255: longest file name, in bytes.
    pub max_filename_bytes: usize,
    /// `FILE_SERVICE_REQUEST_READ_TIMEOUT_MS`, default 30,000: time allowed to receive an upload's
    /// body; slower requests get 408.
    pub request_read_timeout: Duration,
    /// `FILE_SERVICE_MAX_EVENT_BYTES`, default 1,000,000 (under Kafka's default
    /// `message.max.bytes` of 1,048,588): an event whose serialized envelope is larger is refused
    /// before it is written.
    pub max_event_bytes: usize,
    /// `OUTBOX_*`: the relay's settings.
    pub relay: RelaySettings,
    /// `LOG_FORMAT`, `json` (default) or `pretty`.
    pub log_format: LogFormat,
    /// `OUTBOX_ADMIN_TOKEN`: the admin API's bearer token; unset, the API is not mounted.
    pub admin_token: Option<outbox_cli::api::AdminToken>,
}

impl Config {
    /// Reads and validates the configuration; the first bad variable stops it with its name.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let database_url = outbox_cli::env::database_url(env)?;
        let kafka = outbox_cli::env::kafka_config(env)?;
        let http_port =
            parse::<u16>(env, "FILE_SERVICE_HTTP_PORT", "a port number (0-65535)")?.unwrap_or(7001);
        let max_file_bytes =
            parse::<usize>(env, "FILE_SERVICE_MAX_FILE_BYTES", "a number of bytes")?
                .unwrap_or(10 * 1024 * 1024);
        if max_file_bytes == 0 {
            return Err(error("FILE_SERVICE_MAX_FILE_BYTES", "must be above zero"));
        }
        let max_request_bytes =
            parse::<usize>(env, "FILE_SERVICE_MAX_REQUEST_BYTES", "a number of bytes")?
                .unwrap_or(100 * 1024 * 1024);
        if max_request_bytes < max_file_bytes {
            return Err(error(
                "FILE_SERVICE_MAX_REQUEST_BYTES",
                "must be at least FILE_SERVICE_MAX_FILE_BYTES",
            ));
        }
        let orchestrator_url = match env.get("BATCH_ORCHESTRATOR_URL") {
            Some(url) if url.trim().is_empty() => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.trim().trim_end_matches('/').to_owned())
            }
            Some(_) => {
                return Err(error(
                    "BATCH_ORCHESTRATOR_URL",
                    "expected an http:// or https:// URL",
                ));
            }
            None => None,
        };
        let processing_concurrency =
            parse::<usize>(env, "FILE_SERVICE_PROCESSING_CONCURRENCY", "a whole number")?
                .unwrap_or(2);
        if processing_concurrency == 0 {
            return Err(error(
                "FILE_SERVICE_PROCESSING_CONCURRENCY",
                "must be at least 1",
            ));
        }
        let topic_prefix = env.get("FILE_SERVICE_TOPIC_PREFIX").unwrap_or_default();
        if !topic_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(error(
                "FILE_SERVICE_TOPIC_PREFIX",
                "may hold only a-z A-Z 0-9 . _ -",
            ));
        }
        let log_format = outbox_cli::env::log_format(env)?;
        let at_least = |name: &str, value: u64, min: u64| {
            if value < min {
                Err(error(name, format!("must be at least {min}")))
            } else {
                Ok(value)
            }
        };
        let defaults = ExtractLimits::default();
        let extract_limits = ExtractLimits {
            timeout: at_least(
                "FILE_SERVICE_EXTRACT_TIMEOUT_MS",
                millis(env, "FILE_SERVICE_EXTRACT_TIMEOUT_MS")?
                    .unwrap_or(defaults.timeout)
                    .as_millis() as u64,
                100,
            )
            .map(Duration::from_millis)?,
            memory_bytes: at_least(
                "FILE_SERVICE_EXTRACT_MEMORY_BYTES",
                parse::<u64>(
                    env,
                    "FILE_SERVICE_EXTRACT_MEMORY_BYTES",
                    "a number of bytes",
                )?
                .unwrap_or(defaults.memory_bytes),
                64 * 1024 * 1024,
            )?,
            cpu_seconds: at_least(
                "FILE_SERVICE_EXTRACT_CPU_SECONDS",
                parse::<u64>(env, "FILE_SERVICE_EXTRACT_CPU_SECONDS", "a whole number")?
                    .unwrap_or(defaults.cpu_seconds),
                1,
            )?,
        };
        let max_processing_attempts = at_least(
            "FILE_SERVICE_MAX_PROCESSING_ATTEMPTS",
            parse::<u32>(
                env,
                "FILE_SERVICE_MAX_PROCESSING_ATTEMPTS",
                "a whole number",
            )?
            .unwrap_or(3)
            .into(),
            1,
        )? as u32;
        let max_concurrent_uploads = at_least(
            "FILE_SERVICE_MAX_CONCURRENT_UPLOADS",
            parse::<u64>(env, "FILE_SERVICE_MAX_CONCURRENT_UPLOADS", "a whole number")?
                .unwrap_or(8),
            1,
        )? as usize;
        let max_files_per_request = at_least(
            "FILE_SERVICE_MAX_FILES_PER_REQUEST",
            parse::<u64>(env, "FILE_SERVICE_MAX_FILES_PER_REQUEST", "a whole number")?
                .unwrap_or(50),
            1,
        )? as usize;
        let max_filename_bytes = at_least(
            "FILE_SERVICE_MAX_FILENAME_BYTES",
            parse::<u64>(env, "FILE_SERVICE_MAX_FILENAME_BYTES", "a number of bytes")?
                .unwrap_or(255),
            5,
        )? as usize;
        let request_read_timeout = at_least(
            "FILE_SERVICE_REQUEST_READ_TIMEOUT_MS",
            millis(env, "FILE_SERVICE_REQUEST_READ_TIMEOUT_MS")?
                .unwrap_or(Duration::from_secs(30))
                .as_millis() as u64,
            100,
        )
        .map(Duration::from_millis)?;
        let max_event_bytes = at_least(
            "FILE_SERVICE_MAX_EVENT_BYTES",
            parse::<u64>(env, "FILE_SERVICE_MAX_EVENT_BYTES", "a number of bytes")?
                .unwrap_or(1_000_000),
            4096,
        )? as usize;
        Ok(Self {
            extract_limits,
            extract_program: std::env::current_exe().unwrap_or_else(|_| "file-service".into()),
            max_processing_attempts,
            max_concurrent_uploads,
            max_files_per_request,
            max_filename_bytes,
            request_read_timeout,
            max_event_bytes,
            database_url,
            kafka,
            http_port,
            max_file_bytes,
            max_request_bytes,
            migrate_on_start: flag(env, "FILE_SERVICE_MIGRATE_ON_START")?,
            orchestrator_url,
            orchestrator_timeout: millis(env, "BATCH_ORCHESTRATOR_TIMEOUT_MS")?
                .unwrap_or(Duration::from_secs(5)),
            processing_concurrency,
            topic_prefix,
            create_topics: flag(env, "FILE_SERVICE_CREATE_TOPICS")?,
            relay: outbox_cli::env::relay_settings(env)?,
            log_format,
            admin_token: outbox_cli::env::admin_token(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const DB: (&str, &str) = ("DATABASE_URL", "postgres://u:p@localhost/db");

    #[test]
    fn defaults_follow_the_contract() {
        let config = Config::from_env(&env(&[DB])).unwrap();
        assert_eq!(config.http_port, 7001);
        assert_eq!(config.max_file_bytes, 10 * 1024 * 1024);
        assert!(!config.migrate_on_start);
        assert_eq!(config.orchestrator_url, None);
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.relay, RelaySettings::default());
        assert_eq!(config.extract_limits, ExtractLimits::default());
        assert_eq!(config.extract_limits.timeout, Duration::from_secs(30));
        assert_eq!(config.max_processing_attempts, 3);
        assert_eq!(config.max_concurrent_uploads, 8);
        assert_eq!(config.max_files_per_request, 50);
        assert_eq!(config.max_filename_bytes, 255);
        assert_eq!(config.request_read_timeout, Duration::from_secs(30));
        assert_eq!(config.max_event_bytes, 1_000_000);
    }

    #[test]
    fn limits_come_through() {
        let config = Config::from_env(&env(&[
            DB,
            ("FILE_SERVICE_EXTRACT_TIMEOUT_MS", "1500"),
            ("FILE_SERVICE_EXTRACT_MEMORY_BYTES", "134217728"),
            ("FILE_SERVICE_EXTRACT_CPU_SECONDS", "3"),
            ("FILE_SERVICE_MAX_PROCESSING_ATTEMPTS", "5"),
            ("FILE_SERVICE_MAX_CONCURRENT_UPLOADS", "2"),
            ("FILE_SERVICE_MAX_FILES_PER_REQUEST", "4"),
            ("FILE_SERVICE_MAX_FILENAME_BYTES", "40"),
            ("FILE_SERVICE_REQUEST_READ_TIMEOUT_MS", "2000"),
            ("FILE_SERVICE_MAX_EVENT_BYTES", "65536"),
        ]))
        .unwrap();
        assert_eq!(
            config.extract_limits,
            ExtractLimits {
                timeout: Duration::from_millis(1500),
                memory_bytes: 128 * 1024 * 1024,
                cpu_seconds: 3,
            }
        );
        assert_eq!(config.max_processing_attempts, 5);
        assert_eq!(config.max_concurrent_uploads, 2);
        assert_eq!(config.max_files_per_request, 4);
        assert_eq!(config.max_filename_bytes, 40);
        assert_eq!(config.request_read_timeout, Duration::from_secs(2));
        assert_eq!(config.max_event_bytes, 65536);
    }

    #[test]
    fn producer_properties_and_relay_settings_come_through() {
        let config = Config::from_env(&env(&[
            DB,
            ("KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093"),
            ("KAFKA_PRODUCER_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_PRODUCER_SASL_MECHANISMS", "PLAIN"),
            ("OUTBOX_BATCH_SIZE", "250"),
            ("OUTBOX_POLL_INTERVAL_MS", "100"),
            ("OUTBOX_RETENTION_SECS", "3600"),
            ("BATCH_ORCHESTRATOR_URL", "http://bos:5000/"),
            ("LOG_FORMAT", "pretty"),
            ("FILE_SERVICE_MIGRATE_ON_START", "true"),
        ]))
        .unwrap();
        assert_eq!(config.kafka.property("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.kafka.property("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(config.kafka.bootstrap_servers, "k1:9093,k2:9093");
        assert_eq!(config.relay.batch_size, 250);
        assert_eq!(config.relay.poll_interval, Duration::from_millis(100));
        assert_eq!(config.relay.retention, Some(Duration::from_secs(3600)));
        assert_eq!(config.orchestrator_url.as_deref(), Some("http://bos:5000"));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert!(config.migrate_on_start);
    }

    #[test]
    fn every_bad_value_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "DATABASE_URL"),
            (&[("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (
                &[DB, ("FILE_SERVICE_HTTP_PORT", "seventy")],
                "FILE_SERVICE_HTTP_PORT",
            ),
            (
                &[DB, ("FILE_SERVICE_HTTP_PORT", "70000")],
                "FILE_SERVICE_HTTP_PORT",
            ),
            (
                &[DB, ("FILE_SERVICE_MAX_FILE_BYTES", "0")],
                "FILE_SERVICE_MAX_FILE_BYTES",
            ),
            (
                &[DB, ("FILE_SERVICE_MIGRATE_ON_START", "maybe")],
                "FILE_SERVICE_MIGRATE_ON_START",
            ),
            (
                &[DB, ("BATCH_ORCHESTRATOR_URL", "bos:5000")],
                "BATCH_ORCHESTRATOR_URL",
            ),
            (&[DB, ("OUTBOX_BATCH_SIZE", "-1")], "OUTBOX_BATCH_SIZE"),
            (&[DB, ("OUTBOX_BATCH_SIZE", "0")], "OUTBOX_*"),
            (
                &[DB, ("OUTBOX_POLL_INTERVAL_MS", "soon")],
                "OUTBOX_POLL_INTERVAL_MS",
            ),
            (&[DB, ("LOG_FORMAT", "xml")], "LOG_FORMAT"),
            (
                &[DB, ("KAFKA_BOOTSTRAP_SERVERS", " ")],
                "KAFKA_BOOTSTRAP_SERVERS",
            ),
            (
                &[DB, ("FILE_SERVICE_TOPIC_PREFIX", "a b")],
                "FILE_SERVICE_TOPIC_PREFIX",
            ),
            (
                &[DB, ("FILE_SERVICE_PROCESSING_CONCURRENCY", "0")],
                "FILE_SERVICE_PROCESSING_CONCURRENCY",
            ),
            (
                &[DB, ("FILE_SERVICE_MAX_REQUEST_BYTES", "10")],
                "FILE_SERVICE_MAX_REQUEST_BYTES",
            ),
            (
                &[DB, ("FILE_SERVICE_EXTRACT_TIMEOUT_MS", "0")],
                "FILE_SERVICE_EXTRACT_TIMEOUT_MS",
            ),
            (
                &[DB, ("FILE_SERVICE_EXTRACT_MEMORY_BYTES", "1024")],
                "FILE_SERVICE_EXTRACT_MEMORY_BYTES",
            ),
            (
                &[DB, ("FILE_SERVICE_EXTRACT_CPU_SECONDS", "0")],
                "FILE_SERVICE_EXTRACT_CPU_SECONDS",
            ),
            (
                &[DB, ("FILE_SERVICE_MAX_PROCESSING_ATTEMPTS", "0")],
                "FILE_SERVICE_MAX_PROCESSING_ATTEMPTS",
            ),
            (
                &[DB, ("FILE_SERVICE_MAX_CONCURRENT_UPLOADS", "none")],
                "FILE_SERVICE_MAX_CONCURRENT_UPLOADS",
            ),
            (
                &[DB, ("FILE_SERVICE_MAX_FILES_PER_REQUEST", "0")],
                "FILE_SERVICE_MAX_FILES_PER_REQUEST",
            ),
            (
                &[DB, ("FILE_SERVICE_MAX_FILENAME_BYTES", "2")],
                "FILE_SERVICE_MAX_FILENAME_BYTES",
            ),
            (
                &[DB, ("FILE_SERVICE_REQUEST_READ_TIMEOUT_MS", "-5")],
                "FILE_SERVICE_REQUEST_READ_TIMEOUT_MS",
            ),
            (
                &[DB, ("FILE_SERVICE_MAX_EVENT_BYTES", "100")],
                "FILE_SERVICE_MAX_EVENT_BYTES",
            ),
        ];
        for (pairs, variable) in cases {
            let error = Config::from_env(&env(pairs)).unwrap_err();
            assert_eq!(error.variable, *variable, "{error}");
            assert!(error.to_string().contains(variable));
        }
    }
}
