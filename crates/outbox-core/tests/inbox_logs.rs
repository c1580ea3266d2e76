//! Log lines of the inbox worker, in a test binary of its own (see `logs.rs` for why).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::testing::{MemoryInboxStore, MemoryInboxTransaction, MemorySource};
use outbox_core::{Handled, HandlerError, InboxHandler, InboxMessage, InboxSettings, InboxWorker};
use uuid::Uuid;

/// Refuses `poison` for good and `flaky` once.
#[derive(Default)]
struct Picky {
    flaky: AtomicU32,
}

#[async_trait]
impl InboxHandler<MemoryInboxTransaction> for Picky {
    async fn handle(
        &self,
        _txn: &MemoryInboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        match message.payload.as_deref() {
            Some(b"poison") => Err(HandlerError::permanent("poison refused")),
            Some(b"flaky") if self.flaky.fetch_add(1, Ordering::SeqCst) < 2 => {
                Err(HandlerError::transient("database busy"))
            }
            _ => Ok(Handled::applied()),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rejections_retries_and_batches_are_structured_log_lines() {
    let (lines, _guard) = common::capture();

    let store = MemoryInboxStore::new();
    let source = MemorySource::new();
    let settings = InboxSettings::default()
        .with_transient_backoff_base(Duration::from_millis(1))
        .with_transient_backoff_max(Duration::from_millis(5));
    let worker = InboxWorker::new(store.clone(), source.clone(), settings)
        .unwrap()
        .handler("orders", ["orders"], Arc::new(Picky::default()))
        .unwrap();
    let poison = Uuid::now_v7();
    let header = |id: Uuid| vec![("event_id".to_owned(), id.to_string().into_bytes())];
    source.send("orders", 3, header(Uuid::now_v7()), b"fine");
    source.send("orders", 3, header(poison), b"poison");
    source.send("orders", 3, header(Uuid::now_v7()), b"flaky");
    worker.start().unwrap();
    for _ in 0..2000 {
        if source.committed("orders", 3) == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.stop().await.unwrap();
    assert_eq!(source.committed("orders", 3), Some(3));

    let text = lines.text();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |needle: &str| {
        records
            .iter()
            .find(|r| {
                r["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
            })
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    };
    let rejected = find("rejected a message");
    assert_eq!(rejected["level"], "WARN");
    let fields = &rejected["fields"];
    assert_eq!(fields["consumer"], "orders");
    assert_eq!(fields["event_id"], poison.to_string());
    assert_eq!(fields["topic"], "orders");
    assert_eq!(fields["partition"], 3);
    assert_eq!(fields["offset"], 1);
    assert!(fields["error"].as_str().unwrap().contains("poison refused"));

    let retry = find("failed transiently");
    assert_eq!(retry["level"], "WARN");
    assert_eq!(retry["fields"]["offset"], 2);
    assert!(
        retry["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("database busy")
    );
    assert!(retry["fields"]["retry_in_ms"].is_u64());

    let batch = find("batch applied");
    assert_eq!(batch["level"], "DEBUG");
    assert_eq!(batch["fields"]["count"], 3);
    assert_eq!(batch["fields"]["first"], "orders/3@0");
    assert_eq!(batch["fields"]["last"], "orders/3@2");
    assert!(batch["fields"]["duration_ms"].is_u64());
}
