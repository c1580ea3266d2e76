//! Per-test Kafka topics and reading them back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::{kafka_bootstrap_servers, unique_name};

/// A topic of one test's own, created through the admin API with the given partition count and
/// deleted when this value is dropped.
#[derive(Debug)]
pub struct TestTopic {
    name: String,
    bootstrap: String,
}

impl TestTopic {
    /// Creates a uniquely named topic (`test_<prefix>_...`) on the test brokers.
    pub async fn create(prefix: &str, partitions: i32) -> Self {
        let bootstrap = kafka_bootstrap_servers().await;
        Self::create_on(&bootstrap, prefix, partitions).await
    }

    /// Creates a uniquely named topic on the brokers at `bootstrap`.
    pub async fn create_on(bootstrap: &str, prefix: &str, partitions: i32) -> Self {
        Self::create_with(bootstrap, prefix, partitions, &[]).await
    }

    /// Creates the topic `name` exactly (the caller makes it unique), deleted when dropped.
    pub async fn create_named(bootstrap: &str, name: &str, partitions: i32) -> Self {
        create_topic_with(bootstrap, name, partitions, &[]).await;
        Self {
            name: name.to_owned(),
            bootstrap: bootstrap.to_owned(),
        }
    }

    /// Creates a uniquely named topic with topic-level configuration (for example
    /// `("max.message.bytes", "4194304")`).
    pub async fn create_with(
        bootstrap: &str,
        prefix: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Self {
        let name = unique_name(&format!("test_{prefix}"));
        create_topic_with(bootstrap, &name, partitions, config).await;
        Self {
            name,
            bootstrap: bootstrap.to_owned(),
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The brokers it lives on.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        let bootstrap = self.bootstrap.clone();
        let name = self.name.clone();
        // Best effort: a private broker may already be gone when its topics drop.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = admin(&bootstrap).ok()?;
                let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
                admin.delete_topics(&[&name], &options).await.ok()
            })
        })
        .join();
    }
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
}

/// Creates `name` with `partitions` partitions (replication factor 1) and waits until every
/// partition has a leader, so a producer can send to it at once.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with(bootstrap, name, partitions, &[]).await;
}

async fn create_topic_with(bootstrap: &str, name: &str, partitions: i32, config: &[(&str, &str)]) {
    let admin = admin(bootstrap).expect("kafka admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&[topic], &options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create topic {name} at {bootstrap}: {e}\n\
                 start the services with `scripts/services.sh up`, or set KAFKA_BOOTSTRAP_SERVERS"
            )
        });
    for result in results {
        if let Err((topic, code)) = result {
            panic!("cannot create topic {topic}: {code}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if topic_partitions(bootstrap, name).is_some_and(|leaders| leaders == partitions as usize) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} has no leader for every partition after 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many partitions of `topic` have a leader, or `None` when the topic is unknown.
fn topic_partitions(bootstrap: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
    if topic.error().is_some() {
        return None;
    }
    Some(
        topic
            .partitions()
            .iter()
            .filter(|p| p.leader() >= 0 && p.error().is_none())
            .count(),
    )
}

/// Waits until the brokers at `bootstrap` answer a metadata request, up to `timeout`.
pub async fn wait_for_broker(bootstrap: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let bootstrap = bootstrap.to_owned();
        let answered = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("log_level", "0")
                .create()
                .ok()?;
            consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .ok()
                .filter(|m| !m.brokers().is_empty())
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if answered {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// One message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Received {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its key as UTF-8 (lossy), if it had one.
    pub key: Option<String>,
    /// Its value.
    pub payload: Vec<u8>,
    /// Its headers in order, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its timestamp, in milliseconds since the epoch, when set.
    pub timestamp_ms: Option<i64>,
}

impl Received {
    /// The first header called `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The value parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.payload).expect("message value is not the expected JSON")
    }
}

/// Reads `topic` from the beginning of every partition until `expected` messages have arrived or
/// `timeout` has passed, and returns what arrived (in per-partition order, partitions in turn).
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Received> {
    read(bootstrap, topic, expected, timeout, Duration::ZERO).await
}

/// Like [`consume`], but after `expected` messages have arrived keeps reading until the topic has
/// been quiet for `quiet`, so duplicates and strays are seen too.
pub async fn consume_until_quiet(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    quiet: Duration,
) -> Vec<Received> {
    read(bootstrap, topic, expected, timeout, quiet).await
}

async fn read(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    quiet: Duration,
) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("test_reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("log_level", "3")
        .create()
        .expect("kafka consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition offset");
        }
    }
    consumer.assign(&assignment).expect("assign partitions");

    let mut by_partition: BTreeMap<i32, Vec<Received>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + timeout;
    let mut stream = consumer.stream();
    loop {
        let now = Instant::now();
        let wait = if count >= expected {
            if quiet.is_zero() {
                break;
            }
            quiet
        } else if now >= deadline {
            break;
        } else {
            deadline - now
        };
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(message))) => {
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                let received = Received {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                    timestamp_ms: message.timestamp().to_millis(),
                };
                by_partition
                    .entry(received.partition)
                    .or_default()
                    .push(received);
                count += 1;
            }
            Ok(Some(Err(e))) => panic!("error reading {topic}: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    by_partition.into_values().flatten().collect()
}
