//! Producer configuration.

use std::collections::BTreeMap;

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

/// How to reach Kafka and how to produce.
///
/// Every librdkafka producer property can be set with [`with_property`](Self::with_property)
/// (TLS and SASL for managed clusters, compression, batching); the publisher's defaults
/// ([`DEFAULT_PROPERTIES`]) apply where a property is not set.
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
        }
    }

    /// Sets a librdkafka producer property (overriding a default).
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
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
}
