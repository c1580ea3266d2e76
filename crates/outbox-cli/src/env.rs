//! Configuration from the environment, shared by the `outbox` binary and the services that embed
//! its commands or mount its admin API. Every reader names the variable at fault.
//!
//! | variable | default | what |
//! |---|---|---|
//! | `DATABASE_URL` | required | the PostgreSQL database holding `event_outbox` |
//! | `KAFKA_BOOTSTRAP_SERVERS` | `127.0.0.1:9092` | the brokers (`outbox relay` only) |
//! | `KAFKA_PRODUCER_*` | | librdkafka properties: `KAFKA_PRODUCER_SECURITY_PROTOCOL=SSL` sets `security.protocol=SSL` |
//! | `OUTBOX_*` | see [`RelaySettings`] | `OUTBOX_BATCH_SIZE`, `OUTBOX_MAX_ATTEMPTS`, `OUTBOX_POLL_INTERVAL_MS`, ... |
//! | `OUTBOX_HTTP_ADDR` | `0.0.0.0:9090` | where `outbox relay` serves `/healthz`, `/metrics` and the admin API |
//! | `OUTBOX_ADMIN_TOKEN` | unset | the admin API's bearer token (16 characters or more); unset: no admin API |
//! | `LOG_FORMAT` | `json` | `json` or `pretty` (logs go to stderr) |
//! | `RUST_LOG` | `info` | log filter |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use outbox_core::RelaySettings;
use outbox_kafka::KafkaConfig;

use crate::api::AdminToken;

/// A variable that is missing or malformed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("configuration error: {variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A [`ConfigError`] for `variable`.
pub fn error(variable: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.to_owned(),
        problem: problem.into(),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default).
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Reads a value through a lookup function, so tests need not touch the process environment.
pub trait Env {
    /// The variable's value, if set.
    fn get(&self, name: &str) -> Option<String>;
    /// Every variable whose name starts with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Parses `name` when set; a value that does not parse names the variable and what it expects.
pub fn parse<T: std::str::FromStr>(
    env: &dyn Env,
    name: &str,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    match env.get(name) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| error(name, format!("expected {what}, got `{raw}`"))),
    }
}

/// A boolean variable: unset is false.
pub fn flag(env: &dyn Env, name: &str) -> Result<bool, ConfigError> {
    match env.get(name).as_deref().map(str::trim) {
        None => Ok(false),
        Some("1" | "true" | "TRUE" | "True" | "yes") => Ok(true),
        Some("0" | "false" | "FALSE" | "False" | "no" | "") => Ok(false),
        Some(other) => Err(error(
            name,
            format!("expected true or false, got `{other}`"),
        )),
    }
}

/// A duration in whole milliseconds.
pub fn millis(env: &dyn Env, name: &str) -> Result<Option<Duration>, ConfigError> {
    Ok(parse::<u64>(env, name, "a whole number of milliseconds")?.map(Duration::from_millis))
}

/// `DATABASE_URL`: required, a `postgres://` or `postgresql://` URL.
pub fn database_url(env: &dyn Env) -> Result<String, ConfigError> {
    let url = env
        .get("DATABASE_URL")
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| error("DATABASE_URL", "required (a PostgreSQL URL)"))?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(error(
            "DATABASE_URL",
            "expected a postgres:// or postgresql:// URL",
        ));
    }
    Ok(url)
}

/// `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`) and every `KAFKA_PRODUCER_*` property.
pub fn kafka_config(env: &dyn Env) -> Result<KafkaConfig, ConfigError> {
    let bootstrap = env
        .get("KAFKA_BOOTSTRAP_SERVERS")
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    if bootstrap.trim().is_empty() {
        return Err(error("KAFKA_BOOTSTRAP_SERVERS", "must not be empty"));
    }
    let mut kafka = KafkaConfig::new(bootstrap.trim());
    for (name, value) in env.with_prefix("KAFKA_PRODUCER_") {
        let property = name["KAFKA_PRODUCER_".len()..]
            .to_ascii_lowercase()
            .replace('_', ".");
        if property.is_empty() {
            return Err(error(&name, "names no producer property"));
        }
        kafka = kafka.with_property(property, value);
    }
    Ok(kafka)
}

/// The relay's `OUTBOX_*` settings, validated together.
pub fn relay_settings(env: &dyn Env) -> Result<RelaySettings, ConfigError> {
    type Setter = fn(RelaySettings, Duration) -> RelaySettings;
    let mut relay = RelaySettings::default();
    if let Some(n) = parse::<usize>(env, "OUTBOX_BATCH_SIZE", "a whole number")? {
        relay = relay.with_batch_size(n);
    }
    if let Some(n) = parse::<u32>(env, "OUTBOX_MAX_ATTEMPTS", "a whole number")? {
        relay = relay.with_max_attempts(n);
    }
    let durations: [(&str, Setter); 11] = [
        ("OUTBOX_POLL_INTERVAL_MS", RelaySettings::with_poll_interval),
        (
            "OUTBOX_MIN_POLL_INTERVAL_MS",
            RelaySettings::with_min_poll_interval,
        ),
        (
            "OUTBOX_RETRY_BACKOFF_BASE_MS",
            RelaySettings::with_retry_backoff_base,
        ),
        (
            "OUTBOX_RETRY_BACKOFF_MAX_MS",
            RelaySettings::with_retry_backoff_max,
        ),
        (
            "OUTBOX_TRANSIENT_BACKOFF_BASE_MS",
            RelaySettings::with_transient_backoff_base,
        ),
        (
            "OUTBOX_TRANSIENT_BACKOFF_MAX_MS",
            RelaySettings::with_transient_backoff_max,
        ),
        (
            "OUTBOX_LEADER_RETRY_INTERVAL_MS",
            RelaySettings::with_leader_retry_interval,
        ),
        (
            "OUTBOX_STATS_INTERVAL_MS",
            RelaySettings::with_stats_interval,
        ),
        (
            "OUTBOX_HORIZON_WARN_AFTER_MS",
            RelaySettings::with_horizon_warn_after,
        ),
        (
            "OUTBOX_CLEANUP_INTERVAL_MS",
            RelaySettings::with_cleanup_interval,
        ),
        (
            "OUTBOX_SHUTDOWN_TIMEOUT_MS",
            RelaySettings::with_shutdown_timeout,
        ),
    ];
    for (name, set) in durations {
        if let Some(value) = millis(env, name)? {
            relay = set(relay, value);
        }
    }
    if let Some(secs) = parse::<u64>(env, "OUTBOX_RETENTION_SECS", "a whole number of seconds")? {
        relay = relay.with_retention((secs > 0).then(|| Duration::from_secs(secs)));
    }
    if let Some(n) = parse::<u64>(env, "OUTBOX_CLEANUP_BATCH_SIZE", "a whole number")? {
        relay = relay.with_cleanup_batch_size(n);
    }
    relay
        .validate()
        .map_err(|e| error("OUTBOX_*", e.to_string()))?;
    Ok(relay)
}

/// `LOG_FORMAT`: `json` (default) or `pretty`.
pub fn log_format(env: &dyn Env) -> Result<LogFormat, ConfigError> {
    match env.get("LOG_FORMAT").as_deref().map(str::trim) {
        None | Some("json") => Ok(LogFormat::Json),
        Some("pretty") => Ok(LogFormat::Pretty),
        Some(other) => Err(error(
            "LOG_FORMAT",
            format!("expected json or pretty, got `{other}`"),
        )),
    }
}

/// `OUTBOX_ADMIN_TOKEN`: unset or blank means no admin API; otherwise at least 16 characters
/// without spaces.
pub fn admin_token(env: &dyn Env) -> Result<Option<AdminToken>, ConfigError> {
    match env.get("OUTBOX_ADMIN_TOKEN") {
        None => Ok(None),
        Some(raw) if raw.trim().is_empty() => Ok(None),
        Some(raw) => AdminToken::new(raw)
            .map(Some)
            .map_err(|problem| error("OUTBOX_ADMIN_TOKEN", problem)),
    }
}

/// Installs the log subscriber: `RUST_LOG` (default `info`), to stderr so that what a command
/// prints on stdout stays clean.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// What every `outbox` command reads: the database and the log format.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// Reads and validates `DATABASE_URL` and `LOG_FORMAT`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: database_url(env)?,
            log_format: log_format(env)?,
        })
    }
}

/// What `outbox relay` reads on top of [`CommonConfig`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The database and log format.
    pub common: CommonConfig,
    /// `KAFKA_BOOTSTRAP_SERVERS` and `KAFKA_PRODUCER_*`.
    pub kafka: KafkaConfig,
    /// `OUTBOX_*`.
    pub relay: RelaySettings,
    /// `OUTBOX_HTTP_ADDR`, default `0.0.0.0:9090`.
    pub http_addr: SocketAddr,
    /// `OUTBOX_ADMIN_TOKEN`.
    pub admin_token: Option<AdminToken>,
}

impl RelayConfig {
    /// Reads and validates everything the sidecar needs; the first bad variable stops it.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let http_addr = parse::<SocketAddr>(
            env,
            "OUTBOX_HTTP_ADDR",
            "an address and port such as 0.0.0.0:9090",
        )?
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9090)));
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            kafka: kafka_config(env)?,
            relay: relay_settings(env)?,
            http_addr,
            admin_token: admin_token(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const DB: (&str, &str) = ("DATABASE_URL", "postgres://u:p@localhost/db");

    #[test]
    fn defaults_and_overrides_come_through() {
        let config = RelayConfig::from_env(&env(&[DB])).unwrap();
        assert_eq!(config.http_addr.port(), 9090);
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.relay, RelaySettings::default());
        assert!(config.admin_token.is_none());
        assert_eq!(config.common.log_format, LogFormat::Json);

        let config = RelayConfig::from_env(&env(&[
            DB,
            ("KAFKA_BOOTSTRAP_SERVERS", "k1:9093"),
            ("KAFKA_PRODUCER_SECURITY_PROTOCOL", "SASL_SSL"),
            ("OUTBOX_BATCH_SIZE", "250"),
            ("OUTBOX_POLL_INTERVAL_MS", "100"),
            ("OUTBOX_HTTP_ADDR", "127.0.0.1:9999"),
            ("OUTBOX_ADMIN_TOKEN", "0123456789abcdef"),
            ("LOG_FORMAT", "pretty"),
        ]))
        .unwrap();
        assert_eq!(config.kafka.property("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.relay.batch_size, 250);
        assert_eq!(config.relay.poll_interval, Duration::from_millis(100));
        assert_eq!(config.http_addr.port(), 9999);
        assert!(config.admin_token.is_some());
        assert_eq!(config.common.log_format, LogFormat::Pretty);
        let blank = RelayConfig::from_env(&env(&[DB, ("OUTBOX_ADMIN_TOKEN", " ")])).unwrap();
        assert!(blank.admin_token.is_none(), "blank means unset");
    }

    #[test]
    fn every_bad_value_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "DATABASE_URL"),
            (&[("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
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
            (&[DB, ("OUTBOX_HTTP_ADDR", "9090")], "OUTBOX_HTTP_ADDR"),
            (&[DB, ("OUTBOX_ADMIN_TOKEN", "short")], "OUTBOX_ADMIN_TOKEN"),
            (
                &[DB, ("OUTBOX_ADMIN_TOKEN", "has a space in it!")],
                "OUTBOX_ADMIN_TOKEN",
            ),
        ];
        for (pairs, variable) in cases {
            let error = RelayConfig::from_env(&env(pairs)).unwrap_err();
            assert_eq!(error.variable, *variable, "{error}");
            assert!(error.to_string().contains(variable));
        }
    }
}
