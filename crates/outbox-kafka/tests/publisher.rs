//! The publisher against the real Apache Kafka broker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use outbox_core::{ErrorClass, EventId, EventPublisher, OutboxEvent};
use outbox_kafka::{Error, KafkaConfig, KafkaPublisher};
use outbox_test_harness::{KafkaNode, TestTopic, consume};

fn event(topic: &str, key: &str, n: usize) -> OutboxEvent {
    OutboxEvent {
        id: n as i64,
        event_id: EventId::new(),
        aggregate_type: "order".into(),
        aggregate_id: format!("agg-{key}"),
        event_type: "OrderPlaced".into(),
        topic: topic.into(),
        key: key.into(),
        payload: format!("{key}:{n}").into_bytes(),
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            (
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
            ("x-tenant".into(), "essays".into()),
        ],
        created_at: Utc::now(),
        attempts: 0,
        defect: None,
    }
}

fn publisher(bootstrap: &str) -> KafkaPublisher {
    KafkaPublisher::new(KafkaConfig::new(bootstrap)).unwrap()
}

#[tokio::test]
async fn a_bulk_batch_arrives_with_keys_headers_and_per_key_order() {
    let topic = TestTopic::create("publisher", 3).await;
    let publisher = publisher(&topic.bootstrap());
    let keys = ["k1", "k2", "k3", "k4", "k5"];
    let events: Vec<OutboxEvent> = (0..500)
        .map(|n| event(topic.name(), keys[n % keys.len()], n))
        .collect();
    let results = publisher.publish(&events).await;
    assert_eq!(results.len(), 500);
    let mut partition_of = HashMap::new();
    for (event, result) in events.iter().zip(&results) {
        let delivery = result.as_ref().unwrap();
        assert_eq!(
            *partition_of
                .entry(event.key.clone())
                .or_insert(delivery.partition),
            delivery.partition
        );
    }

    let received = consume(
        &topic.bootstrap(),
        topic.name(),
        500,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(received.len(), 500);
    let by_id: HashMap<String, &OutboxEvent> =
        events.iter().map(|e| (e.event_id.to_string(), e)).collect();
    let mut last_seen: HashMap<String, i64> = HashMap::new();
    for message in &received {
        let sent = by_id[message.header("event_id").unwrap()];
        assert_eq!(message.key.as_deref(), Some(sent.key.as_str()));
        assert_eq!(message.payload, sent.payload);
        assert_eq!(message.header("event_type"), Some("OrderPlaced"));
        assert_eq!(message.header("aggregate_type"), Some("order"));
        assert_eq!(
            message.header("aggregate_id"),
            Some(sent.aggregate_id.as_str())
        );
        assert_eq!(message.header("content-type"), Some("text/plain"));
        assert_eq!(
            message.header("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(message.header("x-tenant"), Some("essays"));
        let previous = last_seen.insert(sent.key.clone(), sent.id);
        assert!(
            previous.is_none_or(|p| p < sent.id),
            "key {} out of order",
            sent.key
        );
    }
}

/// Kafka's Java client: `(murmur2(key) & 0x7fffffff) % partitions`, with the hashes from Kafka's
/// own `UtilsTest`.
#[tokio::test]
async fn keys_land_on_the_partitions_the_java_client_chooses() {
    let vectors: [(&str, i32); 6] = [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ];
    let topic = TestTopic::create("murmur", 7).await;
    let publisher = publisher(&topic.bootstrap());
    let events: Vec<OutboxEvent> = vectors
        .iter()
        .enumerate()
        .map(|(n, (key, _))| event(topic.name(), key, n))
        .collect();
    let results = publisher.publish(&events).await;
    for ((key, hash), result) in vectors.iter().zip(results) {
        let expected = (hash & 0x7fff_ffff) % 7;
        assert_eq!(result.unwrap().partition, expected, "key {key}");
    }
}

#[tokio::test]
async fn an_oversized_event_is_refused_before_sending() {
    let publisher = publisher("127.0.0.1:9092");
    let mut big = event("t", "k", 1);
    big.payload = vec![b'x'; 1_000_001];
    let error = publisher.check(&big).unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(error.message.contains("message.max.bytes"), "{error}");
    assert!(publisher.check(&event("t", "k", 1)).is_ok());

    let small_limit = KafkaPublisher::new(
        KafkaConfig::new("127.0.0.1:9092").with_property("message.max.bytes", "2000"),
    )
    .unwrap();
    let mut medium = event("t", "k", 1);
    medium.payload = vec![b'x'; 5000];
    assert!(small_limit.check(&medium).is_err());
}

#[tokio::test]
async fn a_topic_that_does_not_exist_is_a_permanent_failure() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let publisher = KafkaPublisher::new(
        KafkaConfig::new(&bootstrap).with_property("topic.metadata.propagation.max.ms", "1000"),
    )
    .unwrap();
    let missing = outbox_test_harness::unique_name("test_missing");
    let results = publisher.publish(&[event(&missing, "k", 1)]).await;
    let error = results[0].as_ref().unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent, "{error}");
}

#[tokio::test]
async fn while_the_broker_is_down_sends_wait_and_complete_in_order_when_it_returns() {
    let node = KafkaNode::start().await;
    let topic = TestTopic::create_on(&node.bootstrap(), "outage", 2).await;
    let publisher = std::sync::Arc::new(publisher(&node.bootstrap()));
    publisher.publish(&[event(topic.name(), "warm", 0)]).await[0]
        .as_ref()
        .unwrap();

    node.stop().await;
    let events: Vec<OutboxEvent> = (1..=200)
        .map(|n| event(topic.name(), ["a", "b"][n % 2], n))
        .collect();
    let sending = tokio::spawn({
        let publisher = publisher.clone();
        let events = events.clone();
        async move { publisher.publish(&events).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !sending.is_finished(),
        "nothing can be acknowledged while the broker is down"
    );

    node.start_again().await;
    let results = sending.await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let received = consume(
        &node.bootstrap(),
        topic.name(),
        201,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        received.len(),
        201,
        "each once: idempotence drops the producer's own retries"
    );
    let mut last: HashMap<String, usize> = HashMap::new();
    for message in received
        .iter()
        .skip_while(|m| m.key.as_deref() == Some("warm"))
    {
        let text = String::from_utf8(message.payload.clone()).unwrap();
        let (key, n) = text.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        if let Some(previous) = last.insert(key.to_owned(), n) {
            assert!(previous < n, "key {key}: {n} after {previous}");
        }
    }
}

#[tokio::test]
async fn aborting_in_flight_sends_fails_them_as_transient() {
    let node = KafkaNode::start().await;
    let topic = TestTopic::create_on(&node.bootstrap(), "abort", 1).await;
    let publisher = std::sync::Arc::new(publisher(&node.bootstrap()));
    node.kill().await;
    let sending = tokio::spawn({
        let publisher = publisher.clone();
        let events: Vec<OutboxEvent> = (0..10).map(|n| event(topic.name(), "k", n)).collect();
        async move { publisher.publish(&events).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    publisher.abort_in_flight();
    let results = tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .expect("purged sends return")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    for result in results {
        assert_eq!(result.unwrap_err().class, ErrorClass::Transient);
    }
}

#[test]
fn an_unknown_producer_property_is_refused_by_name() {
    let error = KafkaPublisher::new(KafkaConfig::new("x:1").with_property("no.such.property", "1"))
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)));
    assert!(error.to_string().contains("no.such.property"), "{error}");
    let bad_size =
        KafkaPublisher::new(KafkaConfig::new("x:1").with_property("message.max.bytes", "lots"))
            .unwrap_err();
    assert!(bad_size.to_string().contains("message.max.bytes"));
}

#[tokio::test]
async fn check_connection_answers_once_brokers_do() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    publisher(&bootstrap)
        .check_connection(Duration::from_secs(10))
        .await
        .unwrap();
    let nowhere = publisher("127.0.0.1:1");
    assert!(
        nowhere
            .check_connection(Duration::from_millis(500))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn batches_stay_under_a_topic_limit_and_only_an_event_too_large_for_it_is_refused() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let topic = TestTopic::create_with(
        &bootstrap,
        "small_limit",
        2,
        &[("max.message.bytes", "20000")],
    )
    .await;
    let publisher = publisher(&bootstrap);
    let events: Vec<OutboxEvent> = (0..100)
        .map(|n| {
            let mut e = event(topic.name(), &format!("k{}", n % 10), n);
            e.payload = vec![b'a' + (n % 26) as u8; 1000];
            e
        })
        .collect();
    publisher.prepare(&events).await;
    for e in &events {
        publisher.check(e).unwrap();
    }
    let results = publisher.publish(&events).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut big = event(topic.name(), "k0", 100);
    big.payload = vec![b'x'; 25_000];
    let error = publisher.check(&big).unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(
        error.message.contains(topic.name()) && error.message.contains("max.message.bytes=20000"),
        "{error}"
    );
    let mut other = event(
        &outbox_test_harness::unique_name("test_no_such_topic"),
        "k",
        1,
    );
    other.payload = vec![b'x'; 25_000];
    assert!(
        publisher.check(&other).is_ok(),
        "a topic whose limits were not read is checked against the producer's defaults"
    );
    publisher.prepare(std::slice::from_ref(&other)).await;
    assert!(
        publisher.check(&other).is_ok(),
        "a topic whose limits cannot be read (it does not exist) is not cached as known"
    );
    let received = consume(&bootstrap, topic.name(), 100, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 100);
}
