//! In-memory doubles of the inbox's store and message source.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use super::lock;
use crate::{
    InboxEntry, InboxMessage, InboxStore, MessagePosition, MessageSource, OutboxError,
    RejectedMessage, SourceError,
};

/// One row of the in-memory inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryInboxRow {
    /// The row's entry.
    pub entry: InboxEntry,
    /// `applied`, `rejected` or a handler's outcome.
    pub outcome: String,
    /// The error of a rejected row.
    pub error: Option<String>,
    /// When it was recorded.
    pub processed_at: DateTime<Utc>,
    /// The message of a rejected row.
    pub message: Option<InboxMessage>,
    /// Insertion order, to list rows recorded at the same instant in order.
    seq: u64,
}

type Key = (String, Uuid);

#[derive(Debug, Default)]
struct StoreState {
    rows: BTreeMap<Key, MemoryInboxRow>,
    effects: Vec<String>,
    seq: u64,
}

/// An in-memory [`InboxStore`] whose transactions really roll back: what a transaction records,
/// takes or changes, and the effects a handler stages on it with
/// [`MemoryInboxTransaction::effect`], are seen by the rest only once it commits.
///
/// Two transactions recording the same entry both see it as new; the second to commit fails
/// (as PostgreSQL would refuse the second insert).
#[derive(Debug, Default)]
pub struct MemoryInboxStore {
    state: Mutex<StoreState>,
    unavailable: AtomicBool,
    failing_commits: AtomicU64,
}

/// A transaction of a [`MemoryInboxStore`]: the changes it stages.
#[derive(Debug, Default)]
pub struct MemoryInboxTransaction {
    /// Rows written (`Some`) or deleted (`None`) by this transaction.
    rows: Mutex<BTreeMap<Key, Option<MemoryInboxRow>>>,
    /// Committed rows this transaction took out (a replay records them again).
    taken: Mutex<Vec<Key>>,
    effects: Mutex<Vec<String>>,
}

impl MemoryInboxTransaction {
    /// Stages a business effect, committed with the transaction: what a handler's writes are
    /// in a test.
    pub fn effect(&self, effect: impl Into<String>) {
        lock(&self.effects).push(effect.into());
    }
}

fn unavailable() -> OutboxError {
    OutboxError::database(std::io::Error::other("the in-memory inbox is unavailable"))
}

impl MemoryInboxStore {
    /// An empty inbox.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes every operation fail with a transient database error until called with `false`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Makes the next `n` commits fail (the transaction is rolled back).
    pub fn fail_commits(&self, n: u64) {
        self.failing_commits.store(n, Ordering::SeqCst);
    }

    /// The effects committed so far, in commit order.
    pub fn effects(&self) -> Vec<String> {
        lock(&self.state).effects.clone()
    }

    /// Every committed row.
    pub fn rows(&self) -> Vec<MemoryInboxRow> {
        let mut rows: Vec<_> = lock(&self.state).rows.values().cloned().collect();
        rows.sort_by_key(|r| r.seq);
        rows
    }

    /// The committed row of `(consumer, event_id)`.
    pub fn row(&self, consumer: &str, event_id: Uuid) -> Option<MemoryInboxRow> {
        lock(&self.state)
            .rows
            .get(&(consumer.to_owned(), event_id))
            .cloned()
    }

    /// Moves the row of `(consumer, event_id)` back in time by `by`, as if processed earlier.
    pub fn backdate(&self, consumer: &str, event_id: Uuid, by: Duration) {
        if let Some(row) = lock(&self.state)
            .rows
            .get_mut(&(consumer.to_owned(), event_id))
        {
            row.processed_at -= chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        }
    }

    fn check(&self) -> Result<(), OutboxError> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(unavailable())
        } else {
            Ok(())
        }
    }

    fn next_seq(state: &mut StoreState) -> u64 {
        state.seq += 1;
        state.seq
    }

    /// The row as `txn` sees it.
    fn visible(&self, txn: &MemoryInboxTransaction, key: &Key) -> Option<MemoryInboxRow> {
        match lock(&txn.rows).get(key) {
            Some(staged) => staged.clone(),
            None => lock(&self.state).rows.get(key).cloned(),
        }
    }
}

#[async_trait]
impl InboxStore for MemoryInboxStore {
    type Transaction = MemoryInboxTransaction;

    async fn begin(&self) -> Result<MemoryInboxTransaction, OutboxError> {
        self.check()?;
        Ok(MemoryInboxTransaction::default())
    }

    async fn record(
        &self,
        txn: &MemoryInboxTransaction,
        entries: &[InboxEntry],
    ) -> Result<Vec<bool>, OutboxError> {
        self.check()?;
        let mut fresh = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = (entry.consumer.clone(), entry.event_id);
            if self.visible(txn, &key).is_some() {
                fresh.push(false);
                continue;
            }
            let seq = Self::next_seq(&mut lock(&self.state));
            lock(&txn.rows).insert(
                key,
                Some(MemoryInboxRow {
                    entry: entry.clone(),
                    outcome: "applied".into(),
                    error: None,
                    processed_at: Utc::now(),
                    message: None,
                    seq,
                }),
            );
            fresh.push(true);
        }
        Ok(fresh)
    }

    async fn set_outcome(
        &self,
        txn: &MemoryInboxTransaction,
        consumer: &str,
        event_id: Uuid,
        outcome: &str,
    ) -> Result<(), OutboxError> {
        self.check()?;
        let key = (consumer.to_owned(), event_id);
        if let Some(mut row) = self.visible(txn, &key) {
            row.outcome = outcome.to_owned();
            lock(&txn.rows).insert(key, Some(row));
        }
        Ok(())
    }

    async fn commit(&self, txn: MemoryInboxTransaction) -> Result<(), OutboxError> {
        self.check()?;
        let failing = self.failing_commits.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_commits.store(failing - 1, Ordering::SeqCst);
            return Err(unavailable());
        }
        let staged = std::mem::take(&mut *lock(&txn.rows));
        let taken = std::mem::take(&mut *lock(&txn.taken));
        let mut state = lock(&self.state);
        for (key, row) in &staged {
            // A row this transaction inserted that another committed meanwhile: the unique key
            // refuses the whole transaction.
            if let Some(row) = row
                && !taken.contains(key)
                && state.rows.get(key).is_some_and(|r| r.seq != row.seq)
            {
                return Err(OutboxError::database(std::io::Error::other(format!(
                    "duplicate key ({}, {})",
                    key.0, key.1
                ))));
            }
        }
        for (key, row) in staged {
            match row {
                Some(row) => state.rows.insert(key, row),
                None => state.rows.remove(&key),
            };
        }
        let effects = std::mem::take(&mut *lock(&txn.effects));
        state.effects.extend(effects);
        Ok(())
    }

    async fn rollback(&self, _txn: MemoryInboxTransaction) -> Result<(), OutboxError> {
        Ok(())
    }

    async fn reject(
        &self,
        entry: &InboxEntry,
        message: &InboxMessage,
        error: &str,
    ) -> Result<bool, OutboxError> {
        self.check()?;
        let mut state = lock(&self.state);
        let key = (entry.consumer.clone(), entry.event_id);
        if state.rows.contains_key(&key) {
            return Ok(false);
        }
        let seq = Self::next_seq(&mut state);
        state.rows.insert(
            key,
            MemoryInboxRow {
                entry: entry.clone(),
                outcome: "rejected".into(),
                error: Some(error.to_owned()),
                processed_at: Utc::now(),
                message: Some(InboxMessage {
                    timestamp: None,
                    ..message.clone()
                }),
                seq,
            },
        );
        Ok(true)
    }

    async fn rejected(
        &self,
        consumer: Option<&str>,
        limit: u64,
    ) -> Result<Vec<RejectedMessage>, OutboxError> {
        self.check()?;
        let mut rows: Vec<MemoryInboxRow> = lock(&self.state)
            .rows
            .values()
            .filter(|r| r.outcome == "rejected")
            .filter(|r| consumer.is_none_or(|c| r.entry.consumer == c))
            .cloned()
            .collect();
        rows.sort_by_key(|r| (r.processed_at, r.seq));
        Ok(rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|r| RejectedMessage {
                error: r.error.unwrap_or_default(),
                rejected_at: r.processed_at,
                message: r.message.unwrap_or_default(),
                entry: r.entry,
            })
            .collect())
    }

    async fn take_rejected(
        &self,
        txn: &MemoryInboxTransaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<Option<InboxMessage>, OutboxError> {
        self.check()?;
        let key = (consumer.to_owned(), event_id);
        match self.visible(txn, &key) {
            Some(row) if row.outcome == "rejected" => {
                lock(&txn.rows).insert(key.clone(), None);
                lock(&txn.taken).push(key);
                Ok(Some(row.message.unwrap_or_default()))
            }
            _ => Ok(None),
        }
    }

    async fn update_rejected(
        &self,
        consumer: &str,
        event_id: Uuid,
        error: &str,
    ) -> Result<bool, OutboxError> {
        self.check()?;
        let mut state = lock(&self.state);
        match state.rows.get_mut(&(consumer.to_owned(), event_id)) {
            Some(row) if row.outcome == "rejected" => {
                row.error = Some(error.to_owned());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_expired(&self, older_than: Duration, limit: u64) -> Result<u64, OutboxError> {
        self.check()?;
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let mut state = lock(&self.state);
        let mut expired: Vec<(DateTime<Utc>, Key)> = state
            .rows
            .iter()
            .filter(|(_, r)| r.processed_at < cutoff)
            .map(|(k, r)| (r.processed_at, k.clone()))
            .collect();
        expired.sort();
        let mut deleted = 0;
        for (_, key) in expired
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            state.rows.remove(&key);
            deleted += 1;
        }
        Ok(deleted)
    }
}

type Partition = (String, i32);

#[derive(Debug, Default)]
struct SourceState {
    logs: BTreeMap<Partition, Vec<InboxMessage>>,
    /// The next offset delivered, per partition.
    next: BTreeMap<Partition, i64>,
    /// The committed offset (the next one to read after a restart), per partition.
    committed: BTreeMap<Partition, i64>,
    poll_errors: VecDeque<SourceError>,
    commit_errors: VecDeque<SourceError>,
    rewinds: Vec<MessagePosition>,
    delivered: u64,
}

/// An in-memory [`MessageSource`]: partitions holding messages at offsets, a delivery position
/// and a committed offset per partition, and ways to inject transient errors and revocations.
#[derive(Debug, Default)]
pub struct MemorySource {
    state: Mutex<SourceState>,
    arrived: Notify,
}

impl MemorySource {
    /// A source with no messages.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Appends a message to `topic`'s `partition` and returns its offset.
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        headers: Vec<(String, Vec<u8>)>,
        payload: &[u8],
    ) -> i64 {
        self.send_message(InboxMessage {
            topic: topic.to_owned(),
            partition,
            headers,
            payload: Some(payload.to_vec()),
            timestamp: Some(Utc::now()),
            ..InboxMessage::default()
        })
    }

    /// Appends `message` to its topic and partition (its offset is replaced by the next one)
    /// and returns its offset.
    pub fn send_message(&self, mut message: InboxMessage) -> i64 {
        let offset = {
            let mut state = lock(&self.state);
            let log = state
                .logs
                .entry((message.topic.clone(), message.partition))
                .or_default();
            let offset = i64::try_from(log.len()).unwrap_or(i64::MAX);
            message.offset = offset;
            log.push(message);
            offset
        };
        self.arrived.notify_one();
        offset
    }

    /// The committed offset of a partition: the offset a restarted consumer reads first.
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        lock(&self.state)
            .committed
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// The next offset the source delivers from a partition.
    pub fn position(&self, topic: &str, partition: i32) -> i64 {
        lock(&self.state)
            .next
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Messages delivered so far, redeliveries included.
    pub fn delivered(&self) -> u64 {
        lock(&self.state).delivered
    }

    /// The rewinds the worker asked for.
    pub fn rewinds(&self) -> Vec<MessagePosition> {
        lock(&self.state).rewinds.clone()
    }

    /// Makes the next `next_batch` fail with `error`.
    pub fn fail_next_poll(&self, error: SourceError) {
        lock(&self.state).poll_errors.push_back(error);
        self.arrived.notify_one();
    }

    /// Makes the next `commit` fail with `error`. A [`SourceError::Revoked`] also does what a
    /// rebalance that gives the partitions straight back does: the partitions of that commit
    /// are delivered again from their committed offsets.
    pub fn fail_next_commit(&self, error: SourceError) {
        lock(&self.state).commit_errors.push_back(error);
    }

    /// Forgets the errors queued by [`fail_next_poll`](Self::fail_next_poll) and
    /// [`fail_next_commit`](Self::fail_next_commit).
    pub fn clear_failures(&self) {
        let mut state = lock(&self.state);
        state.poll_errors.clear();
        state.commit_errors.clear();
    }

    /// Simulates a restart of the consumer: every partition is delivered again from its
    /// committed offset.
    pub fn restart(&self) {
        let mut state = lock(&self.state);
        state.next = state.committed.clone();
        drop(state);
        self.arrived.notify_one();
    }

    fn take(&self, max: usize) -> Result<Vec<InboxMessage>, SourceError> {
        let mut state = lock(&self.state);
        if let Some(error) = state.poll_errors.pop_front() {
            return Err(error);
        }
        let mut batch = Vec::new();
        let partitions: Vec<Partition> = state.logs.keys().cloned().collect();
        for partition in partitions {
            let from = state.next.get(&partition).copied().unwrap_or(0);
            let log = &state.logs[&partition];
            let start = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
            let taken: Vec<InboxMessage> = log[start..]
                .iter()
                .take(max - batch.len())
                .cloned()
                .collect();
            if !taken.is_empty() {
                let next = from + i64::try_from(taken.len()).unwrap_or(i64::MAX);
                state.next.insert(partition, next);
                batch.extend(taken);
            }
            if batch.len() == max {
                break;
            }
        }
        state.delivered += batch.len() as u64;
        Ok(batch)
    }
}

#[async_trait]
impl MessageSource for MemorySource {
    async fn next_batch(&self, max: usize) -> Result<Vec<InboxMessage>, SourceError> {
        loop {
            let arrived = self.arrived.notified();
            let batch = self.take(max.max(1))?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            arrived.await;
        }
    }

    async fn commit(&self, done: &[MessagePosition]) -> Result<(), SourceError> {
        let mut state = lock(&self.state);
        if let Some(error) = state.commit_errors.pop_front() {
            if matches!(error, SourceError::Revoked(_)) {
                for position in done {
                    let partition = (position.topic.clone(), position.partition);
                    let committed = state.committed.get(&partition).copied().unwrap_or(0);
                    state.next.insert(partition, committed);
                }
                drop(state);
                self.arrived.notify_one();
            }
            return Err(error);
        }
        for position in done {
            let committed = state
                .committed
                .entry((position.topic.clone(), position.partition))
                .or_insert(0);
            *committed = (*committed).max(position.offset + 1);
        }
        Ok(())
    }

    async fn rewind(&self, from: &MessagePosition) -> Result<(), SourceError> {
        let mut state = lock(&self.state);
        state.rewinds.push(from.clone());
        state
            .next
            .insert((from.topic.clone(), from.partition), from.offset);
        drop(state);
        self.arrived.notify_one();
        Ok(())
    }
}
