//! The operations behind both the `outbox` commands and the admin API: stats, a paged and
//! filtered list of dead letters, one dead letter in full, and replay or discard (or a dry run
//! that only counts). The command line and the HTTP routes only parse and print.

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::{DeadLetterFilter, DeadLetterStore, OutboxError, RelayStore};
use outbox_seaorm::{PostgresOutbox, entity};
use sea_orm::{
    ColumnTrait, DatabaseConnection, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Select,
};
use serde::{Deserialize, Serialize};
use tracing::info;

/// The most dead letters one page lists.
pub const MAX_PAGE: u64 = 1000;
/// The most ids one replay or discard names.
pub const MAX_IDS: usize = 10_000;
/// The longest value a filter field may hold.
pub const MAX_FIELD_CHARS: usize = 1024;

/// A request that cannot be carried out as written; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The request is malformed (bad filter, too many ids, nothing selected).
    #[error("{0}")]
    Invalid(String),
    /// No dead letter has this id.
    #[error("no dead letter has id {0}")]
    NotFound(i64),
    /// The database failed or refused a statement.
    #[error("database error: {0}")]
    Database(String),
}

impl From<OutboxError> for OpsError {
    fn from(error: OutboxError) -> Self {
        OpsError::Database(error.to_string())
    }
}

impl From<sea_orm::DbErr> for OpsError {
    fn from(error: sea_orm::DbErr) -> Self {
        OpsError::Database(error.to_string())
    }
}

/// A length of time written as a whole number and a unit: `90s`, `15m`, `2h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(pub Duration);

impl std::str::FromStr for Age {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let bad = || {
            format!("expected a whole number and a unit (s, m, h, d), such as 30m; got `{text}`")
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "s" => Some(n),
            "m" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            "d" => n.checked_mul(86_400),
            _ => None,
        }
        .filter(|s| *s <= 100 * 365 * 86_400)
        .ok_or_else(bad)?;
        Ok(Age(Duration::from_secs(seconds)))
    }
}

impl<'de> Deserialize<'de> for Age {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Age {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}s", self.0.as_secs()))
    }
}

/// Which dead letters: unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only this Kafka key (the `event_key` column).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this event type.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only this aggregate type.
    #[arg(long)]
    pub aggregate_type: Option<String>,
    /// Only this aggregate.
    #[arg(long)]
    pub aggregate_id: Option<String>,
    /// Only rows dead-lettered at or after this RFC 3339 time (2026-11-30T08:00:00Z).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only rows dead-lettered before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Only rows dead-lettered longer ago than this (30m, 2h, 7d).
    #[arg(long)]
    #[serde(default)]
    pub older_than: Option<Age>,
}

impl clap::builder::ValueParserFactory for Age {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<Age>())
    }
}

impl Filter {
    /// Checks the fields (non-empty, bounded) and turns the filter into the store's, as of `now`.
    pub fn resolve(&self, now: DateTime<Utc>) -> Result<DeadLetterFilter, OpsError> {
        let fields = [
            ("topic", &self.topic),
            ("key", &self.key),
            ("event_type", &self.event_type),
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                if value.is_empty() {
                    return Err(OpsError::Invalid(format!("{name} must not be empty")));
                }
                if value.chars().count() > MAX_FIELD_CHARS {
                    return Err(OpsError::Invalid(format!(
                        "{name} is longer than {MAX_FIELD_CHARS} characters"
                    )));
                }
            }
        }
        let older = match self.older_than {
            Some(Age(age)) => Some(
                chrono::Duration::from_std(age)
                    .ok()
                    .and_then(|age| now.checked_sub_signed(age))
                    .ok_or_else(|| OpsError::Invalid("older_than is too large".into()))?,
            ),
            None => None,
        };
        let until = match (self.until, older) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(DeadLetterFilter {
            topic: self.topic.clone(),
            key: self.key.clone(),
            event_type: self.event_type.clone(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            since: self.since,
            until,
        })
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// The dead letters a replay or discard acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These rows (only those that are dead letters).
    Ids(Vec<i64>),
    /// Every dead letter matching the filter.
    Matching(Filter),
}

impl Target {
    /// Builds a target from ids or from `all` with a filter; exactly one of the two.
    pub fn new(ids: Vec<i64>, all: bool, filter: Filter) -> Result<Self, OpsError> {
        match (ids.is_empty(), all) {
            (false, false) if filter.is_empty() => {
                if ids.len() > MAX_IDS {
                    return Err(OpsError::Invalid(format!(
                        "at most {MAX_IDS} ids at once; select larger sets with a filter"
                    )));
                }
                Ok(Target::Ids(ids))
            }
            (false, _) => Err(OpsError::Invalid(
                "name dead letters by id or select them with all and a filter, not both".into(),
            )),
            (true, true) => Ok(Target::Matching(filter)),
            (true, false) => Err(OpsError::Invalid(
                "name dead letters by id, or select them with all (narrowed by filters)".into(),
            )),
        }
    }

    fn query(&self, now: DateTime<Utc>) -> Result<Select<entity::Entity>, OpsError> {
        Ok(match self {
            Target::Ids(ids) => entity::Entity::find_dead_letters(&DeadLetterFilter::default())
                .filter(entity::Column::Id.is_in(ids.iter().copied())),
            Target::Matching(filter) => entity::Entity::find_dead_letters(&filter.resolve(now)?),
        })
    }
}

/// What a replay or discard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Make dead letters pending again, attempts reset; the relay sends them in order.
    Replay,
    /// Delete dead letters for good.
    Discard,
}

/// What a replay or discard did, or would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The action.
    pub action: Action,
    /// True when nothing was changed and `count` says how many would have been.
    pub dry_run: bool,
    /// Dead letters changed (or, in a dry run, that would change).
    pub count: u64,
}

/// The backlog at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Events waiting to be published.
    pub pending: u64,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Events parked as dead letters.
    pub dead_lettered: u64,
}

/// One dead letter in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterSummary {
    /// The row id (`--id`).
    pub id: i64,
    /// The message id.
    pub event_id: String,
    /// The destination topic.
    pub topic: String,
    /// The Kafka key.
    pub key: String,
    /// The event type.
    pub event_type: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// Permanent failures.
    pub attempts: i32,
    /// Size of the payload in bytes.
    pub payload_bytes: usize,
    /// When the event was written.
    pub created_at: DateTime<Utc>,
    /// When it was parked.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// The last error.
    pub last_error: Option<String>,
}

/// One dead letter in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterDetail {
    /// Everything the list shows.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The `headers` column as stored.
    pub headers: serde_json::Value,
    /// The payload as text, when it is UTF-8.
    pub payload_text: Option<String>,
    /// The payload in hexadecimal, when it is not UTF-8.
    pub payload_hex: Option<String>,
}

/// A page of dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// The dead letters, in id order.
    pub dead_letters: Vec<DeadLetterSummary>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<i64>,
}

fn summary(model: &entity::Model) -> DeadLetterSummary {
    DeadLetterSummary {
        id: model.id,
        event_id: model.event_id.to_string(),
        topic: model.topic.clone(),
        key: model.event_key.clone(),
        event_type: model.event_type.clone(),
        aggregate_type: model.aggregate_type.clone(),
        aggregate_id: model.aggregate_id.clone(),
        attempts: model.attempts,
        payload_bytes: model.payload.len(),
        created_at: model.created_at.with_timezone(&Utc),
        dead_lettered_at: model.dead_lettered_at.map(|t| t.with_timezone(&Utc)),
        last_error: model.last_error.clone(),
    }
}

/// The operator's handle on one database's outbox.
#[derive(Debug)]
pub struct Operations {
    db: DatabaseConnection,
    outbox: PostgresOutbox,
}

impl Operations {
    /// Operations on the outbox in `db`.
    pub fn new(db: DatabaseConnection) -> Result<Self, OpsError> {
        let outbox = PostgresOutbox::new(db.clone())?;
        Ok(Self { db, outbox })
    }

    /// The backlog: pending events, the oldest one's age, dead letters.
    pub async fn stats(&self) -> Result<Stats, OpsError> {
        let stats = self.outbox.stats().await?;
        Ok(Stats {
            pending: stats.pending,
            oldest_pending_age_seconds: stats.oldest_pending_age.map(|a| a.as_secs_f64()),
            dead_lettered: stats.dead_lettered,
        })
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) dead letters matching `filter` with an id above
    /// `after`, in id order.
    pub async fn list(
        &self,
        filter: &Filter,
        after: Option<i64>,
        limit: u64,
    ) -> Result<Page, OpsError> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(OpsError::Invalid(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        let mut query = entity::Entity::find_dead_letters(&filter.resolve(Utc::now())?);
        if let Some(after) = after {
            query = query.filter(entity::Column::Id.gt(after));
        }
        let models = query
            .order_by_asc(entity::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let dead_letters: Vec<DeadLetterSummary> = models.iter().map(summary).collect();
        let next_after = (dead_letters.len() as u64 == limit)
            .then(|| dead_letters.last().map(|d| d.id))
            .flatten();
        Ok(Page {
            dead_letters,
            next_after,
        })
    }

    /// The dead letter with this row id, in full.
    pub async fn show(&self, id: i64) -> Result<DeadLetterDetail, OpsError> {
        let model = entity::Entity::find_dead_letters(&DeadLetterFilter::default())
            .filter(entity::Column::Id.eq(id))
            .one(&self.db)
            .await?
            .ok_or(OpsError::NotFound(id))?;
        let (payload_text, payload_hex) = match std::str::from_utf8(&model.payload) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(hex::encode(&model.payload))),
        };
        Ok(DeadLetterDetail {
            summary: summary(&model),
            headers: model.headers.clone(),
            payload_text,
            payload_hex,
        })
    }

    /// Replays or discards the dead letters `target` names, or with `dry_run` only counts them.
    /// Every call is logged with `caller` and the count.
    pub async fn apply(
        &self,
        action: Action,
        target: &Target,
        dry_run: bool,
        caller: &str,
    ) -> Result<Outcome, OpsError> {
        let now = Utc::now();
        let count = if dry_run {
            target.query(now)?.count(&self.db).await?
        } else {
            match (action, target) {
                (Action::Replay, Target::Ids(ids)) => self.outbox.replay(ids).await?,
                (Action::Discard, Target::Ids(ids)) => self.outbox.discard(ids).await?,
                (Action::Replay, Target::Matching(filter)) => {
                    self.outbox.replay_matching(&filter.resolve(now)?).await?
                }
                (Action::Discard, Target::Matching(filter)) => {
                    self.outbox.discard_matching(&filter.resolve(now)?).await?
                }
            }
        };
        info!(
            caller,
            action = ?action,
            dry_run,
            count,
            target = ?target,
            "outbox dead letters {}",
            match (action, dry_run) {
                (_, true) => "counted for a dry run",
                (Action::Replay, false) => "replayed by an operator",
                (Action::Discard, false) => "discarded by an operator",
            }
        );
        Ok(Outcome {
            action,
            dry_run,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_their_unit() {
        assert_eq!("90s".parse::<Age>().unwrap().0, Duration::from_secs(90));
        assert_eq!("15m".parse::<Age>().unwrap().0, Duration::from_secs(900));
        assert_eq!("2h".parse::<Age>().unwrap().0, Duration::from_secs(7200));
        assert_eq!("7d".parse::<Age>().unwrap().0, Duration::from_secs(604_800));
        for bad in ["", "5", "h", "-1h", "1.5h", "3w", "99999999999999999999d"] {
            assert!(bad.parse::<Age>().is_err(), "{bad}");
        }
    }

    #[test]
    fn older_than_tightens_until() {
        let now = Utc::now();
        let filter = Filter {
            older_than: Some(Age(Duration::from_secs(3600))),
            until: Some(now),
            ..Filter::default()
        };
        let resolved = filter.resolve(now).unwrap();
        assert_eq!(resolved.until, Some(now - chrono::Duration::hours(1)));
        let empty = Filter {
            key: Some(String::new()),
            ..Filter::default()
        };
        assert!(matches!(empty.resolve(now), Err(OpsError::Invalid(_))));
    }

    #[test]
    fn a_target_is_ids_or_all_never_both_never_neither() {
        let topic = Filter {
            topic: Some("t".into()),
            ..Filter::default()
        };
        assert_eq!(
            Target::new(vec![1], false, Filter::default()).unwrap(),
            Target::Ids(vec![1])
        );
        assert!(matches!(
            Target::new(vec![], true, topic.clone()).unwrap(),
            Target::Matching(_)
        ));
        assert!(Target::new(vec![], false, Filter::default()).is_err());
        assert!(Target::new(vec![], false, topic.clone()).is_err());
        assert!(Target::new(vec![1], true, Filter::default()).is_err());
        assert!(Target::new(vec![1], false, topic).is_err());
        assert!(Target::new(vec![1; MAX_IDS + 1], false, Filter::default()).is_err());
    }
}
