//! Run with: `cargo run -p example-adoption` (after `scripts/services.sh up`)
//!
//! The invoicing service of the implementation guide: migrates (its table and the outbox's),
//! starts the relay, issues three invoices, shows the relay's metrics, and stops the relay.
//! With `--serve` it instead serves `/metrics` on 127.0.0.1:7002 until SIGTERM or ctrl-c.

use std::time::Duration;

use example_adoption::{
    INVOICE_ISSUED_TOPIC, Migrator, install_metrics, issue_invoice, metrics_routes,
    run_until_signal, start_outbox,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sea_orm_migration::MigratorTrait;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into());
    let brokers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let serve = std::env::args().any(|a| a == "--serve");

    let db = sea_orm::Database::connect(&database_url).await?;
    Migrator::up(&db, None).await?;
    // Topics are provisioned, not auto-created; this example provisions its own.
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let topic = NewTopic::new(INVOICE_ISSUED_TOPIC, 3, TopicReplication::Fixed(1));
    admin.create_topics(&[topic], &AdminOptions::new()).await?;

    let metrics = install_metrics();
    let outbox = start_outbox(db.clone(), &brokers, INVOICE_ISSUED_TOPIC)?;
    if serve {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:7002").await?;
        tokio::spawn(async move { axum::serve(listener, metrics_routes(metrics)).await });
        println!("serving /metrics on 127.0.0.1:7002 until SIGTERM or ctrl-c");
        run_until_signal(&outbox).await.map_err(|e| e.to_string())?;
        return Ok(());
    }

    for (customer, cents) in [
        ("customer-1", 1200),
        ("customer-2", 990),
        ("customer-1", 450),
    ] {
        let id = issue_invoice(&outbox, customer, cents).await?;
        println!("issued an invoice for {customer}: event {id}");
    }
    while outbox.status().map_or(0, |s| s.relayed) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    outbox.stop().await?;
    println!("\nthe relay's metrics:");
    for line in metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("outbox_events_relayed_total"))
    {
        println!("  {line}");
    }
    Ok(())
}
