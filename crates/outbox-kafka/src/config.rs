//! Producer configuration.

use std::collections::{BTreeMap, BTreeSet};

use crate::Error;

/// Producer properties the publisher sets unless overridden, with why.
pub const DEFAULT_PROPERTIES: [(&str, &str); 6] = [
    // No duplicates from the producer's own retries, and per-partition order kept across them.
    ("enable.idempotence", "true"),
    // A message counts as sent only when every in-sync replica has it.
    ("acks", "all"),
    // The relay enqueues each batch whole and then waits for it: waiting longer for more
    // messages only delays the acknowledgements (measured: 10x lower commit-to-ack latency and
    // a faster drain than with 5 ms, docs/benchmarks.md).
    ("linger.ms", "0"),
    // The Java client's partitioner: the same key lands on the same partition from any client.
    ("partitioner", "murmur2_random"),
    // Never give up on a message: while the broker is down the producer retries in order, so a
    // later message of a key can never overtake an earlier one that timed out. The relay's
    // shutdown timeout bounds how long `stop()` waits for such sends.
    ("message.timeout.ms", "0"),
    // librdkafka's default, stated because the publisher checks sizes against it.
    ("message.max.bytes", "1000000"),
];

/// A producer property the outbox's promises depend on: its names (librdkafka aliases included),
/// which values keep the promise, and which promise another value breaks.
#[derive(Debug, Clone, Copy)]
pub struct GuardedProperty {
    /// The property's names: librdkafka accepts each of them for the same setting.
    pub names: &'static [&'static str],
    /// The values that keep the promise, as text for error messages.
    pub allowed: &'static str,
    /// What another value breaks.
    pub breaks: &'static str,
    keeps: fn(&str) -> bool,
}

impl GuardedProperty {
    /// Whether `value` keeps the promise.
    pub fn keeps(&self, value: &str) -> bool {
        (self.keeps)(value.trim())
    }
}

/// The producer properties that [`KafkaPublisher::new`](crate::KafkaPublisher::new) refuses to
/// change unless [`KafkaConfig::with_unsafe_override`] says so.
pub const GUARDED_PROPERTIES: [GuardedProperty; 4] = [
    GuardedProperty {
        names: &["enable.idempotence"],
        allowed: "true",
        breaks: "per-key order and no duplicates from the producer's own retries \
                 (a retried batch can land twice, or behind a later one)",
        keeps: |v| v.eq_ignore_ascii_case("true"),
    },
    GuardedProperty {
        names: &["acks", "request.required.acks"],
        allowed: "all or -1",
        breaks: "nothing lost: an event counts as sent (and is deleted from the outbox) before \
                 every in-sync replica has it, so a leader failover can lose it",
        keeps: |v| v.eq_ignore_ascii_case("all") || v == "-1",
    },
    GuardedProperty {
        names: &["max.in.flight.requests.per.connection", "max.in.flight"],
        allowed: "1 to 5",
        breaks: "per-key order: the idempotent producer keeps order across retries only with at \
                 most 5 requests in flight per connection",
        keeps: |v| v.parse::<u32>().is_ok_and(|n| (1..=5).contains(&n)),
    },
    GuardedProperty {
        names: &["message.timeout.ms", "delivery.timeout.ms"],
        allowed: "0 (never time out)",
        breaks: "per-key order: an event that times out while the broker is away is retried by \
                 the relay later, behind events of its key that were sent after it",
        keeps: |v| v == "0",
    },
];

/// How to reach Kafka and how to produce.
///
/// Every librdkafka producer property can be set with [`with_property`](Self::with_property)
/// (TLS and SASL for managed clusters, compression, batching); the publisher's defaults
/// ([`DEFAULT_PROPERTIES`]) apply where a property is not set. The properties the outbox's
/// promises depend on ([`GUARDED_PROPERTIES`]: `enable.idempotence`, `acks`,
/// `max.in.flight.requests.per.connection`, `message.timeout.ms`) can only be set to a value that
/// keeps them; anything else needs [`with_unsafe_override`](Self::with_unsafe_override).
///
/// ```
/// use outbox_kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("broker-1:9093,broker-2:9093")
///     .with_property("security.protocol", "SASL_SSL")
///     .with_property("sasl.mechanisms", "SCRAM-SHA-512")
///     .with_property("compression.type", "lz4");
/// assert_eq!(config.property("acks"), Some("all"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Defaults to `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Producer properties that override the defaults.
    pub properties: BTreeMap<String, String>,
    /// Guarded properties whose value in [`properties`](Self::properties) is accepted although
    /// it breaks a promise (see [`with_unsafe_override`](Self::with_unsafe_override)).
    pub unsafe_overrides: BTreeSet<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::new("127.0.0.1:9092")
    }
}

impl KafkaConfig {
    /// A configuration for the given brokers with the publisher's defaults.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            unsafe_overrides: BTreeSet::new(),
        }
    }

    /// Sets a librdkafka producer property (overriding a default). A guarded property
    /// ([`GUARDED_PROPERTIES`]) set to a value that breaks a promise makes
    /// [`KafkaPublisher::new`](crate::KafkaPublisher::new) fail, naming it.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Sets a guarded property to a value that breaks one of the outbox's promises, on purpose.
    ///
    /// - `enable.idempotence` other than `true` breaks per-key order and lets the producer's own
    ///   retries write duplicates;
    /// - `acks` other than `all`/`-1` breaks "nothing lost": an event is deleted from the outbox
    ///   once the partition leader has it, and a failover can lose it;
    /// - `max.in.flight.requests.per.connection` above 5 breaks per-key order across retries;
    /// - `message.timeout.ms` other than `0` breaks per-key order: an event that timed out while
    ///   the broker was away is retried behind later events of its key.
    ///
    /// Any other property behaves as with [`with_property`](Self::with_property). librdkafka adds
    /// its own rule: while `enable.idempotence` is `true` it insists on `acks=all` and at most 5
    /// requests in flight, so weakening those needs idempotence overridden as well.
    ///
    /// ```
    /// use outbox_kafka::KafkaConfig;
    ///
    /// // Knowingly: an event that cannot be sent for five minutes is retried by the relay,
    /// // behind later events of its key.
    /// let config = KafkaConfig::new("127.0.0.1:9092")
    ///     .with_unsafe_override("message.timeout.ms", "300000");
    /// assert!(config.validate().is_ok());
    /// let silent = KafkaConfig::new("127.0.0.1:9092").with_property("message.timeout.ms", "300000");
    /// assert!(silent.validate().is_err());
    /// ```
    pub fn with_unsafe_override(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        let name = name.into();
        self.unsafe_overrides.insert(name.clone());
        self.properties.insert(name, value.into());
        self
    }

    /// Refuses a guarded property ([`GUARDED_PROPERTIES`], under any of its names) set to a
    /// value that breaks a promise, unless it was set with
    /// [`with_unsafe_override`](Self::with_unsafe_override). The error names the property, the
    /// values that keep the promise, and what the value would break.
    pub fn validate(&self) -> Result<(), Error> {
        for guarded in &GUARDED_PROPERTIES {
            for name in guarded.names {
                let Some(value) = self.properties.get(*name) else {
                    continue;
                };
                if guarded.keeps(value) || self.unsafe_overrides.contains(*name) {
                    continue;
                }
                return Err(Error::Config(format!(
                    "producer property {name}={value} is refused: the outbox needs {allowed}, \
                     otherwise it breaks {breaks}; set it with \
                     KafkaConfig::with_unsafe_override(\"{name}\", ...) to accept that",
                    allowed = guarded.allowed,
                    breaks = guarded.breaks,
                )));
            }
        }
        Ok(())
    }

    /// The value a property will have: set explicitly, else the publisher's default.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str).or_else(|| {
            DEFAULT_PROPERTIES
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
        })
    }

    /// Every property the producer is created with.
    pub fn effective_properties(&self) -> BTreeMap<String, String> {
        let mut all: BTreeMap<String, String> = DEFAULT_PROPERTIES
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert("bootstrap.servers".into(), self.bootstrap_servers.clone());
        all.extend(self.properties.clone());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_properties_override_the_defaults() {
        let config = KafkaConfig::new("k:9092")
            .with_property("linger.ms", "20")
            .with_property("security.protocol", "SSL");
        let all = config.effective_properties();
        assert_eq!(all["linger.ms"], "20");
        assert_eq!(all["security.protocol"], "SSL");
        assert_eq!(all["enable.idempotence"], "true");
        assert_eq!(all["bootstrap.servers"], "k:9092");
        assert_eq!(config.property("partitioner"), Some("murmur2_random"));
        assert_eq!(config.property("nope"), None);
    }

    fn refused(name: &str, value: &str) -> String {
        match KafkaConfig::new("k:9092")
            .with_property(name, value)
            .validate()
        {
            Err(Error::Config(message)) => message,
            other => panic!("{name}={value} must be refused, got {other:?}"),
        }
    }

    fn accepted(name: &str, value: &str) {
        let config = KafkaConfig::new("k:9092").with_property(name, value);
        assert!(config.validate().is_ok(), "{name}={value}");
    }

    fn overridable(name: &str, value: &str) {
        let config = KafkaConfig::new("k:9092").with_unsafe_override(name, value);
        assert!(
            config.validate().is_ok(),
            "{name}={value} with an explicit override"
        );
        assert_eq!(config.property(name), Some(value));
    }

    #[test]
    fn the_defaults_pass_the_guard() {
        assert!(KafkaConfig::default().validate().is_ok());
        for guarded in &GUARDED_PROPERTIES {
            let name = guarded.names[0];
            let default = KafkaConfig::default().property(name).map(str::to_owned);
            if let Some(default) = default {
                assert!(guarded.keeps(&default), "default {name}={default}");
            }
        }
    }

    #[test]
    fn idempotence_cannot_be_turned_off_silently() {
        let message = refused("enable.idempotence", "false");
        assert!(message.contains("enable.idempotence=false"), "{message}");
        assert!(message.contains("duplicates"), "{message}");
        assert!(message.contains("with_unsafe_override"), "{message}");
        accepted("enable.idempotence", "true");
        overridable("enable.idempotence", "false");
    }

    #[test]
    fn acks_below_all_are_refused_under_either_name() {
        for value in ["0", "1"] {
            let message = refused("acks", value);
            assert!(message.contains(&format!("acks={value}")), "{message}");
            assert!(message.contains("lose"), "{message}");
        }
        let message = refused("request.required.acks", "1");
        assert!(message.contains("request.required.acks=1"), "{message}");
        accepted("acks", "all");
        accepted("acks", "-1");
        accepted("request.required.acks", "all");
        overridable("acks", "1");
        overridable("request.required.acks", "0");
    }

    #[test]
    fn more_than_five_requests_in_flight_are_refused() {
        let message = refused("max.in.flight.requests.per.connection", "6");
        assert!(
            message.contains("max.in.flight.requests.per.connection=6"),
            "{message}"
        );
        assert!(message.contains("order"), "{message}");
        refused("max.in.flight", "1000000");
        refused("max.in.flight.requests.per.connection", "many");
        refused("max.in.flight.requests.per.connection", "0");
        accepted("max.in.flight.requests.per.connection", "5");
        accepted("max.in.flight", "1");
        overridable("max.in.flight.requests.per.connection", "20");
    }

    #[test]
    fn a_message_timeout_is_refused_under_either_name() {
        let message = refused("message.timeout.ms", "300000");
        assert!(message.contains("message.timeout.ms=300000"), "{message}");
        assert!(message.contains("order"), "{message}");
        let message = refused("delivery.timeout.ms", "120000");
        assert!(message.contains("delivery.timeout.ms=120000"), "{message}");
        accepted("message.timeout.ms", "0");
        overridable("message.timeout.ms", "300000");
        overridable("delivery.timeout.ms", "120000");
    }

    #[test]
    fn an_override_covers_only_the_name_it_was_given() {
        let config = KafkaConfig::new("k:9092")
            .with_unsafe_override("acks", "1")
            .with_property("enable.idempotence", "false");
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("enable.idempotence"), "{message}");
    }
}
