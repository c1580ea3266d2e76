//! `file-service outbox ...`: the operator's commands for the outbox (backlog, dead letters).
//! Each prints JSON, one object per line, so it can be piped to `jq`.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use outbox_core::{DeadLetterFilter, DeadLetterStore, RelayStore};
use outbox_seaorm::PostgresOutbox;
use sea_orm::DatabaseConnection;

/// What to do with the outbox.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// The backlog: pending events, age of the oldest, dead letters.
    Stats,
    /// List dead letters, oldest first.
    DeadLetters {
        /// Which dead letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Most rows to list.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Make dead letters pending again (attempts reset); the relay sends them in order.
    Replay {
        /// Which dead letters.
        #[command(flatten)]
        select: Selection,
    },
    /// Delete dead letters for good.
    Discard {
        /// Which dead letters.
        #[command(flatten)]
        select: Selection,
    },
}

/// Selects dead letters by what they are; unset options match everything.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only this event type.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only this aggregate type.
    #[arg(long)]
    pub aggregate_type: Option<String>,
    /// Only this aggregate.
    #[arg(long)]
    pub aggregate_id: Option<String>,
    /// Only rows dead-lettered at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only rows dead-lettered before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
}

impl From<&FilterArgs> for DeadLetterFilter {
    fn from(args: &FilterArgs) -> Self {
        DeadLetterFilter {
            topic: args.topic.clone(),
            event_type: args.event_type.clone(),
            aggregate_type: args.aggregate_type.clone(),
            aggregate_id: args.aggregate_id.clone(),
            since: args.since,
            until: args.until,
        }
    }
}

/// Dead letters by row id, or every one matching a filter (`--all`).
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Row ids (the `id` column), repeatable.
    #[arg(long = "id")]
    pub ids: Vec<i64>,
    /// Every dead letter matching the filter options.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Narrows `--all`.
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// An operator command's failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The command line names nothing to act on.
    #[error("name dead letters with --id ID (repeatable) or select them with --all [filters]")]
    NothingSelected,
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] outbox_core::OutboxError),
}

/// Runs `command` against the outbox in `db`, writing its JSON lines to `out`.
pub async fn run(
    db: DatabaseConnection,
    command: &OutboxCommand,
    out: &mut dyn std::io::Write,
) -> Result<(), AdminError> {
    let outbox = PostgresOutbox::new(db)?;
    let line = |out: &mut dyn std::io::Write, value: serde_json::Value| {
        let _ = writeln!(out, "{value}");
    };
    match command {
        OutboxCommand::Stats => {
            let stats = outbox.stats().await?;
            line(
                out,
                serde_json::json!({
                    "pending": stats.pending,
                    "oldest_pending_age_seconds": stats.oldest_pending_age.map(|a| a.as_secs_f64()),
                    "dead_lettered": stats.dead_lettered,
                }),
            );
        }
        OutboxCommand::DeadLetters { filter, limit } => {
            for dead in outbox.dead_letters(&filter.into(), *limit).await? {
                line(
                    out,
                    serde_json::json!({
                        "id": dead.event.id,
                        "event_id": dead.event.event_id,
                        "topic": dead.event.topic,
                        "event_type": dead.event.event_type,
                        "key": dead.event.key,
                        "aggregate_type": dead.event.aggregate_type,
                        "aggregate_id": dead.event.aggregate_id,
                        "attempts": dead.event.attempts,
                        "payload_bytes": dead.event.payload.len(),
                        "created_at": dead.event.created_at,
                        "dead_lettered_at": dead.dead_lettered_at,
                        "last_error": dead.last_error,
                    }),
                );
            }
        }
        OutboxCommand::Replay { select } => {
            let replayed = match (select.all, select.ids.is_empty()) {
                (true, _) => outbox.replay_matching(&(&select.filter).into()).await?,
                (false, false) => outbox.replay(&select.ids).await?,
                (false, true) => return Err(AdminError::NothingSelected),
            };
            line(out, serde_json::json!({ "replayed": replayed }));
        }
        OutboxCommand::Discard { select } => {
            let discarded = match (select.all, select.ids.is_empty()) {
                (true, _) => outbox.discard_matching(&(&select.filter).into()).await?,
                (false, false) => outbox.discard(&select.ids).await?,
                (false, true) => return Err(AdminError::NothingSelected),
            };
            line(out, serde_json::json!({ "discarded": discarded }));
        }
    }
    Ok(())
}
