//! A consumer process for the inbox fault tests: applies the messages of `INBOX_TOPIC` through
//! the `outbox` facade's inbox (group `INBOX_GROUP`) into the table `applied`, so a test can kill
//! it with SIGKILL and start it again.
//!
//! Each message is `{"key": K, "n": N}`, optionally with `"pause_ms"`: the handler then prints
//! `pausing N` and sleeps inside the transaction, before its commit, so a test knows when to
//! break something. On SIGTERM it stops gracefully and prints
//! `final consumed=C duplicates=D rejected=R`.

use std::time::Duration;

use async_trait::async_trait;
use outbox::prelude::*;
use outbox::{Inbox, InboxSettings};
use sea_orm::{DbBackend, Statement};
use tokio::io::AsyncWriteExt;

struct Apply;

#[async_trait]
impl InboxHandler<OutboxTransaction> for Apply {
    async fn handle(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let body: serde_json::Value = message.json()?;
        let n = body["n"].as_i64().unwrap_or(-1);
        if let Some(pause) = body["pause_ms"].as_u64() {
            let mut out = tokio::io::stdout();
            let _ = out.write_all(format!("pausing {n}\n").as_bytes()).await;
            let _ = out.flush().await;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let event_id = message.event_id()?;
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO applied (key, n, event_id) VALUES ($1, $2, $3)",
            [
                body["key"].as_str().unwrap_or("none").into(),
                n.into(),
                event_id.into(),
            ],
        ))
        .await
        .map_err(|e| HandlerError::from(outbox::Error::from(e)))?;
        Ok(Handled::applied())
    }
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = sea_orm::Database::connect(var("DATABASE_URL")).await?;
    let outbox = Outbox::builder(db).writer_only()?;
    let inbox: Inbox = outbox
        .inbox(
            KafkaConsumerConfig::new(var("KAFKA_BOOTSTRAP_SERVERS"), var("INBOX_GROUP"))
                .with_property("session.timeout.ms", "6000"),
        )
        .handler("e2e.apply", [var("INBOX_TOPIC")], Apply)
        .settings(
            InboxSettings::default()
                .with_transient_backoff_base(Duration::from_millis(50))
                .with_transient_backoff_max(Duration::from_millis(500)),
        )
        .start()?;
    println!("started");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    terminate.recv().await;
    inbox.stop().await?;
    let status = inbox.status();
    println!(
        "final consumed={} duplicates={} rejected={}",
        status.consumed, status.duplicates, status.rejected
    );
    Ok(())
}
