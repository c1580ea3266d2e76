//! Configuration from the environment, validated at start: a bad value stops the service with
//! the variable's name.

use std::time::Duration;

use outbox::{KafkaConfig, RelaySettings};
use outbox_core::InboxSettings;
use outbox_kafka::KafkaConsumerConfig;

pub use outbox_cli::env::{ConfigError, Env, LogFormat, ProcessEnv};
use outbox_cli::env::{error, flag, parse};

/// The consumer group of the original service (`BOS/config.py:48`).
pub const DEFAULT_GROUP_ID: &str = "batch-orchestrator-consumers";
/// The consumer's client id, as the original's (`BOS/kafka_consumer.py`).
pub const CLIENT_ID: &str = "bos-pipeline-orchestrator";
/// The prefix of the service's own variables.
pub const PREFIX: &str = "BATCH_ORCHESTRATOR_SERVICE_";

/// Who decides that a batch's content is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The service's readiness module consumes the File Service's essay events, assigns slots
    /// and publishes the completion event (ELS's role).
    Internal,
    /// A real Essay Lifecycle Service does: only the provisioning-completed handler runs.
    Els,
}

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (required).
    pub database_url: String,
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`) and `KAFKA_PRODUCER_*` properties.
    pub kafka: KafkaConfig,
    /// The inbox's consumer: `KAFKA_BOOTSTRAP_SERVERS`, the group id, `client.id`
    /// `bos-pipeline-orchestrator`, and `KAFKA_CONSUMER_*` properties
    /// (`KAFKA_CONSUMER_SECURITY_PROTOCOL` gives `security.protocol`).
    pub consumer: KafkaConsumerConfig,
    /// `BATCH_ORCHESTRATOR_SERVICE_PORT`, default 5000.
    pub http_port: u16,
    /// `BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID`, default
    /// `batch-orchestrator-consumers`.
    pub group_id: String,
    /// `BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX`, default empty: put before every consumed and
    /// produced topic (the envelope's `event_type` stays the contract's topic name).
    pub topic_prefix: String,
    /// `BATCH_ORCHESTRATOR_SERVICE_READINESS`, `internal` (default) or `els`.
    pub readiness: Readiness,
    /// `BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS`, default 1,000, at most 5,000: the most essays one
    /// registration may expect. The cap keeps the largest event a batch causes (the
    /// student-matching command, at most about 170 bytes an essay) under Kafka's default 1 MB message
    /// limit, so no event of a registered batch can be refused by the broker.
    pub max_essays: u32,
    /// `BATCH_ORCHESTRATOR_SERVICE_MAX_REQUEST_BYTES`, default 1 MiB: the largest request body.
    pub max_request_bytes: usize,
    /// The inbox's settings: the library's defaults, with `retention` from
    /// `BATCH_ORCHESTRATOR_SERVICE_INBOX_RETENTION_HOURS` (default 168: how long inbox rows are
    /// kept to drop duplicates).
    pub inbox: InboxSettings,
    /// `BATCH_ORCHESTRATOR_SERVICE_MIGRATE_ON_START`, default false.
    pub migrate_on_start: bool,
    /// `BATCH_ORCHESTRATOR_SERVICE_CREATE_TOPICS`, default false: create the topics the service
    /// publishes and consumes at start when missing (development and demos; production topics
    /// are provisioned).
    pub create_topics: bool,
    /// `OUTBOX_*`: the relay's settings.
    pub relay: RelaySettings,
    /// `LOG_FORMAT`, `json` (default) or `pretty`.
    pub log_format: LogFormat,
}

impl Config {
    /// Reads and validates the configuration; the first bad variable stops it with its name.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let database_url = outbox_cli::env::database_url(env)?;
        let kafka = outbox_cli::env::kafka_config(env)?;
        let var = |name: &str| format!("{PREFIX}{name}");
        let http_port = parse::<u16>(env, &var("PORT"), "a port number (0-65535)")?.unwrap_or(5000);
        let group_id = match env.get(&var("KAFKA_CONSUMER_GROUP_ID")) {
            None => DEFAULT_GROUP_ID.to_owned(),
            Some(g) if g.trim().is_empty() || g.len() > 255 => {
                return Err(error(
                    &var("KAFKA_CONSUMER_GROUP_ID"),
                    "expected a group id of 1 to 255 characters",
                ));
            }
            Some(g) => g.trim().to_owned(),
        };
        let mut consumer = KafkaConsumerConfig::new(kafka.bootstrap_servers.clone(), &group_id)
            .with_property("client.id", CLIENT_ID);
        for (name, value) in env.with_prefix("KAFKA_CONSUMER_") {
            let property = name["KAFKA_CONSUMER_".len()..]
                .to_ascii_lowercase()
                .replace('_', ".");
            if property.is_empty() {
                return Err(error(&name, "names no consumer property"));
            }
            consumer = consumer.with_property(property, value);
            consumer
                .validate()
                .map_err(|e| error(&name, e.to_string()))?;
        }
        let topic_prefix = env.get(&var("TOPIC_PREFIX")).unwrap_or_default();
        if topic_prefix.len() > 100
            || !topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(error(
                &var("TOPIC_PREFIX"),
                "may hold only a-z A-Z 0-9 . _ - (at most 100)",
            ));
        }
        let readiness = match env.get(&var("READINESS")).as_deref().map(str::trim) {
            None | Some("internal") => Readiness::Internal,
            Some("els") => Readiness::Els,
            Some(other) => {
                return Err(error(
                    &var("READINESS"),
                    format!("expected internal or els, got `{other}`"),
                ));
            }
        };
        let max_essays = parse::<u32>(env, &var("MAX_ESSAYS"), "a whole number")?.unwrap_or(1000);
        if !(1..=5000).contains(&max_essays) {
            return Err(error(&var("MAX_ESSAYS"), "must be between 1 and 5000"));
        }
        let max_request_bytes =
            parse::<usize>(env, &var("MAX_REQUEST_BYTES"), "a number of bytes")?
                .unwrap_or(1024 * 1024);
        if max_request_bytes < 1024 {
            return Err(error(&var("MAX_REQUEST_BYTES"), "must be at least 1024"));
        }
        let retention_hours = parse::<u64>(
            env,
            &var("INBOX_RETENTION_HOURS"),
            "a whole number of hours",
        )?
        .unwrap_or(168);
        if !(1..=24 * 365).contains(&retention_hours) {
            return Err(error(
                &var("INBOX_RETENTION_HOURS"),
                "must be between 1 and 8760",
            ));
        }
        Ok(Self {
            database_url,
            kafka,
            consumer,
            http_port,
            group_id,
            topic_prefix,
            readiness,
            max_essays,
            max_request_bytes,
            inbox: InboxSettings::default()
                .with_retention(Duration::from_secs(retention_hours * 3600)),
            migrate_on_start: flag(env, &var("MIGRATE_ON_START"))?,
            create_topics: flag(env, &var("CREATE_TOPICS"))?,
            relay: outbox_cli::env::relay_settings(env)?,
            log_format: outbox_cli::env::log_format(env)?,
        })
    }

    /// `topic` with the configured prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
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
        assert_eq!(config.http_port, 5000);
        assert_eq!(config.group_id, "batch-orchestrator-consumers");
        assert_eq!(config.topic_prefix, "");
        assert_eq!(config.readiness, Readiness::Internal);
        assert_eq!(config.max_essays, 1000);
        assert_eq!(config.max_request_bytes, 1024 * 1024);
        assert_eq!(config.inbox, InboxSettings::default());
        assert_eq!(config.inbox.retention, Duration::from_secs(168 * 3600));
        assert_eq!(config.consumer.group_id, "batch-orchestrator-consumers");
        assert_eq!(config.consumer.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(
            config.consumer.property("client.id"),
            Some("bos-pipeline-orchestrator")
        );
        assert_eq!(
            config.consumer.property("auto.offset.reset"),
            Some("earliest")
        );
        assert!(!config.migrate_on_start);
        assert!(!config.create_topics);
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.relay, RelaySettings::default());
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn every_setting_comes_through() {
        let config = Config::from_env(&env(&[
            DB,
            ("KAFKA_BOOTSTRAP_SERVERS", "k1:9093"),
            ("KAFKA_PRODUCER_SECURITY_PROTOCOL", "SSL"),
            ("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "9000"),
            ("BATCH_ORCHESTRATOR_SERVICE_PORT", "5001"),
            ("BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID", "g1"),
            ("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", "test."),
            ("BATCH_ORCHESTRATOR_SERVICE_READINESS", "els"),
            ("BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS", "10"),
            ("BATCH_ORCHESTRATOR_SERVICE_INBOX_RETENTION_HOURS", "2"),
            ("BATCH_ORCHESTRATOR_SERVICE_MIGRATE_ON_START", "true"),
            ("OUTBOX_BATCH_SIZE", "50"),
            ("LOG_FORMAT", "pretty"),
        ]))
        .unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "k1:9093");
        assert_eq!(config.kafka.property("security.protocol"), Some("SSL"));
        assert_eq!(config.consumer.property("session.timeout.ms"), Some("9000"));
        assert_eq!(config.consumer.group_id, "g1");
        assert_eq!(config.consumer.bootstrap_servers, "k1:9093");
        assert_eq!(config.http_port, 5001);
        assert_eq!(config.group_id, "g1");
        assert_eq!(config.topic("huleedu.x.v1"), "test.huleedu.x.v1");
        assert_eq!(config.readiness, Readiness::Els);
        assert_eq!(config.max_essays, 10);
        assert_eq!(config.inbox.retention, Duration::from_secs(7200));
        assert!(config.migrate_on_start);
        assert_eq!(config.relay.batch_size, 50);
        assert_eq!(config.log_format, LogFormat::Pretty);
    }

    #[test]
    fn every_bad_value_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "DATABASE_URL"),
            (&[("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (
                &[DB, ("BATCH_ORCHESTRATOR_SERVICE_PORT", "five")],
                "BATCH_ORCHESTRATOR_SERVICE_PORT",
            ),
            (
                &[
                    DB,
                    ("BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID", " "),
                ],
                "BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID",
            ),
            (
                &[DB, ("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", "a b")],
                "BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX",
            ),
            (
                &[DB, ("BATCH_ORCHESTRATOR_SERVICE_READINESS", "external")],
                "BATCH_ORCHESTRATOR_SERVICE_READINESS",
            ),
            (
                &[DB, ("BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS", "0")],
                "BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS",
            ),
            (
                &[DB, ("BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS", "5001")],
                "BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS",
            ),
            (
                &[DB, ("BATCH_ORCHESTRATOR_SERVICE_MAX_REQUEST_BYTES", "10")],
                "BATCH_ORCHESTRATOR_SERVICE_MAX_REQUEST_BYTES",
            ),
            (
                &[
                    DB,
                    ("BATCH_ORCHESTRATOR_SERVICE_INBOX_RETENTION_HOURS", "0"),
                ],
                "BATCH_ORCHESTRATOR_SERVICE_INBOX_RETENTION_HOURS",
            ),
            (
                &[DB, ("BATCH_ORCHESTRATOR_SERVICE_MIGRATE_ON_START", "maybe")],
                "BATCH_ORCHESTRATOR_SERVICE_MIGRATE_ON_START",
            ),
            (
                &[DB, ("KAFKA_BOOTSTRAP_SERVERS", " ")],
                "KAFKA_BOOTSTRAP_SERVERS",
            ),
            (&[DB, ("OUTBOX_BATCH_SIZE", "x")], "OUTBOX_BATCH_SIZE"),
            (&[DB, ("LOG_FORMAT", "xml")], "LOG_FORMAT"),
        ];
        for (pairs, variable) in cases {
            let err = Config::from_env(&env(pairs)).unwrap_err();
            assert_eq!(err.variable, *variable, "{pairs:?}");
            assert!(err.to_string().contains(variable), "{err}");
        }
    }
}
