//! Run with: `cargo run -p example-quickstart` (after `scripts/services.sh up`)
//!
//! The outbox in one program (see the crate's library): reads `DATABASE_URL` and
//! `KAFKA_BOOTSTRAP_SERVERS` (defaults: the services of `scripts/services.sh`), creates the topic
//! `quickstart.orders.v1` if it is missing, and prints what Kafka received.

use std::time::Duration;

use example_quickstart::{BoxError, Quickstart, run};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

const TOPIC: &str = "quickstart.orders.v1";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,outbox_core=info".into()),
        )
        .init();
    let config = Quickstart {
        database_url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into()),
        bootstrap: std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| "127.0.0.1:9092".into()),
        topic: TOPIC.into(),
    };
    ensure_topic(&config.bootstrap).await?;
    let report = run(&config).await?;
    for message in &report.received {
        println!("\nKafka received on {TOPIC}:");
        println!("  key:     {}", message.key);
        for (name, value) in &message.headers {
            println!("  header:  {name} = {value}");
        }
        println!("  value:   {}", message.value);
    }
    if report.count(report.committed) != 1 || report.count(report.rolled_back) != 0 {
        return Err("the committed event should arrive once and the rolled-back one never".into());
    }
    println!("\nok: the committed event arrived once; the rolled-back one did not");
    Ok(())
}

async fn ensure_topic(bootstrap: &str) -> Result<(), BoxError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create {topic}: {code}").into()),
        }
    }
    Ok(())
}
