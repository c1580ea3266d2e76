//! The inbox's Kafka source against the real broker: order per partition, offsets committed only
//! when asked, rewinds, and partitions taken away by a rebalance.

use std::time::Duration;

use outbox_core::{MessagePosition, MessageSource, SourceError};
use outbox_kafka::{KafkaConsumerConfig, KafkaSource};
use outbox_test_harness::{TestTopic, kafka_bootstrap_servers, unique_name};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

async fn produce(topic: &str, partition: i32, count: usize, tag: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap_servers().await)
        .create()
        .unwrap();
    for i in 0..count {
        let payload = format!("{tag}-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "event_id",
            value: Some(uuid::Uuid::now_v7().to_string().as_bytes()),
        });
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key("k")
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

async fn source(topic: &str, group: &str) -> KafkaSource {
    let config = KafkaConsumerConfig::new(kafka_bootstrap_servers().await, group)
        .with_property("session.timeout.ms", "6000")
        .with_property("heartbeat.interval.ms", "500");
    KafkaSource::new(config, &[topic.to_owned()]).unwrap()
}

/// Reads until `count` messages came, with a deadline.
async fn read(source: &KafkaSource, count: usize) -> Vec<outbox_core::InboxMessage> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while all.len() < count {
            all.extend(source.next_batch(count - all.len()).await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", all.len()));
    all
}

fn payloads(messages: &[outbox_core::InboxMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.payload.clone().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_order_with_their_bytes_and_batches_stay_bounded() {
    let topic = TestTopic::create("source_order", 1).await;
    produce(topic.name(), 0, 50, "m").await;
    let source = source(topic.name(), &unique_name("g")).await;
    let mut all = Vec::new();
    while all.len() < 50 {
        let batch = tokio::time::timeout(Duration::from_secs(60), source.next_batch(7))
            .await
            .unwrap()
            .unwrap();
        assert!(!batch.is_empty() && batch.len() <= 7, "{}", batch.len());
        all.extend(batch);
    }
    let expected: Vec<String> = (0..50).map(|i| format!("m-{i}")).collect();
    assert_eq!(payloads(&all), expected);
    let offsets: Vec<i64> = all.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..50).collect::<Vec<i64>>());
    let first = &all[0];
    assert_eq!(first.key.as_deref(), Some(&b"k"[..]));
    assert!(first.event_id().is_ok());
    assert!(first.timestamp.is_some());
    assert_eq!(source.assignment(), vec![(topic.name().to_owned(), 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_offsets_survive_a_restart() {
    let topic = TestTopic::create("source_commit", 1).await;
    produce(topic.name(), 0, 10, "m").await;
    let group = unique_name("g");
    {
        let source = source(topic.name(), &group).await;
        let all = read(&source, 10).await;
        // The first four are done; the rest were read but never applied.
        let done: Vec<MessagePosition> = all[..4].iter().map(MessagePosition::from).collect();
        source.commit(&done).await.unwrap();
        source.close().await;
    }
    let again = source(topic.name(), &group).await;
    let all = read(&again, 6).await;
    assert_eq!(
        all[0].offset, 4,
        "the consumer resumes after the committed offset"
    );
    assert_eq!(payloads(&all)[0], "m-4");
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_delivers_the_partition_again_from_the_message() {
    let topic = TestTopic::create("source_rewind", 1).await;
    produce(topic.name(), 0, 6, "m").await;
    let source = source(topic.name(), &unique_name("g")).await;
    let all = read(&source, 6).await;
    source
        .rewind(&MessagePosition::from(&all[2]))
        .await
        .unwrap();
    let again = read(&source, 4).await;
    assert_eq!(payloads(&again), vec!["m-2", "m-3", "m-4", "m-5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_for_a_partition_taken_by_a_rebalance_is_reported_revoked() {
    let topic = TestTopic::create("source_revoke", 2).await;
    produce(topic.name(), 0, 3, "p0").await;
    produce(topic.name(), 1, 3, "p1").await;
    let group = unique_name("g");
    let first = source(topic.name(), &group).await;
    let held = read(&first, 6).await;
    assert_eq!(first.assignment().len(), 2);

    // A second consumer joins; the first gives a partition up when it next polls.
    let second = source(topic.name(), &group).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while first.assignment().len() != 1 || second.assignment().len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no rebalance");
        let _ = tokio::time::timeout(Duration::from_millis(200), first.next_batch(10)).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), second.next_batch(10)).await;
    }
    let done: Vec<MessagePosition> = held.iter().map(MessagePosition::from).collect();
    match first.commit(&done).await {
        Err(SourceError::Revoked(which)) => {
            let (lost, _) = &second.assignment()[0];
            assert!(which.contains(lost.as_str()), "{which}");
        }
        other => panic!("expected a revoked partition, got {other:?}"),
    }
    let (topic_name, owned) = first.assignment()[0].clone();
    let mine: Vec<MessagePosition> = held
        .iter()
        .filter(|m| m.topic == topic_name && m.partition == owned)
        .map(MessagePosition::from)
        .collect();
    first.commit(&mine).await.unwrap();
    assert!(matches!(
        first
            .rewind(&MessagePosition::from(
                held.iter().find(|m| m.partition != owned).unwrap()
            ))
            .await,
        Err(SourceError::Revoked(_))
    ));
}
