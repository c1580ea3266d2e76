//! The operator's commands, `outbox stats` and `outbox dead-letters ...`, shared by the `outbox`
//! binary and every service that embeds them (`file-service outbox ...` runs this code).
//!
//! Each prints a table for people, or with `--json` one JSON document for scripts (the same body
//! the admin API answers with).

use std::io::Write;

use clap::{Args, Subcommand};
use sea_orm::DatabaseConnection;

use crate::ops::{Action, Filter, Operations, OpsError, Outcome, Target};

/// The process exit codes of every `outbox` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done (a replay or discard that matched nothing is done too; it prints a count of 0).
    Success = 0,
    /// 1: the database, Kafka or the HTTP listener failed; see stderr.
    Failure = 1,
    /// 2: a bad flag, argument or environment variable; nothing was changed.
    Usage = 2,
    /// 3: `dead-letters show` names an id that is not a dead letter.
    NotFound = 3,
}

impl Exit {
    /// The exit code for an operation's error.
    pub fn of(error: &OpsError) -> Self {
        match error {
            OpsError::Invalid(_) => Exit::Usage,
            OpsError::NotFound(_) => Exit::NotFound,
            _ => Exit::Failure,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// Inspect the outbox and repair dead letters.
#[derive(Debug, Clone, Subcommand)]
pub enum OutboxCommand {
    /// The backlog: pending events, age of the oldest, dead letters.
    Stats,
    /// Inspect, replay or discard dead letters (events parked after max_attempts permanent
    /// failures).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

/// What to do with dead letters.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters in id order, a page at a time.
    List {
        /// Which dead letters.
        #[command(flatten)]
        filter: Filter,
        /// Only ids above this one (the `next_after` of the previous page).
        #[arg(long)]
        after: Option<i64>,
        /// Most rows to list (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Show one dead letter in full: headers, payload, last error. Exits 3 when the id is not a
    /// dead letter.
    Show {
        /// The row id (the `id` column, as `list` prints it).
        id: i64,
    },
    /// Make dead letters pending again (attempts reset); the relay sends them in id order.
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

/// Dead letters by row id, or every one matching a filter (`--all`), and whether to only count.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// A row id (the `id` column), repeatable.
    #[arg(long = "id")]
    pub ids: Vec<i64>,
    /// Every dead letter matching the filter options (all of them without any).
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Narrows `--all`.
    #[command(flatten)]
    pub filter: Filter,
    /// Change nothing; say how many dead letters would change.
    #[arg(long)]
    pub dry_run: bool,
}

impl Selection {
    fn target(&self) -> Result<Target, OpsError> {
        Target::new(self.ids.clone(), self.all, self.filter.clone())
    }
}

/// Who runs a command, for the log line of every replay and discard.
pub fn local_caller() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{}", sanitize(&user, 64))
}

/// Runs `command` against the outbox in `db`, printing to `out` (a table, or JSON with `json`).
pub async fn run(
    db: DatabaseConnection,
    command: &OutboxCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let ops = Operations::new(db)?;
    let result = match command {
        OutboxCommand::Stats => {
            let stats = ops.stats().await?;
            if json {
                print_json(out, &stats)
            } else {
                let age = stats
                    .oldest_pending_age_seconds
                    .map_or_else(|| "-".to_owned(), |a| format!("{a:.1} s"));
                writeln!(
                    out,
                    "pending:              {}\noldest pending age:   {age}\ndead letters:         {}",
                    stats.pending, stats.dead_lettered
                )
            }
        }
        OutboxCommand::DeadLetters(DeadLetterCommand::List {
            filter,
            after,
            limit,
        }) => {
            let page = ops.list(filter, *after, *limit).await?;
            if json {
                print_json(out, &page)
            } else {
                print_table(out, &page)
            }
        }
        OutboxCommand::DeadLetters(DeadLetterCommand::Show { id }) => {
            let detail = ops.show(*id).await?;
            if json {
                print_json(out, &detail)
            } else {
                let s = &detail.summary;
                let mut text = String::new();
                for (name, value) in [
                    ("id", s.id.to_string()),
                    ("event_id", s.event_id.clone()),
                    ("topic", s.topic.clone()),
                    ("key", s.key.clone()),
                    ("event_type", s.event_type.clone()),
                    (
                        "aggregate",
                        format!("{} {}", s.aggregate_type, s.aggregate_id),
                    ),
                    ("attempts", s.attempts.to_string()),
                    ("created_at", s.created_at.to_rfc3339()),
                    (
                        "dead_lettered_at",
                        s.dead_lettered_at.map_or("-".into(), |t| t.to_rfc3339()),
                    ),
                    ("last_error", s.last_error.clone().unwrap_or_default()),
                    ("headers", detail.headers.to_string()),
                    ("payload_bytes", s.payload_bytes.to_string()),
                    (
                        "payload",
                        detail
                            .payload_text
                            .clone()
                            .or_else(|| detail.payload_hex.as_ref().map(|h| format!("hex {h}")))
                            .unwrap_or_default(),
                    ),
                ] {
                    text.push_str(&format!("{name:<17} {}\n", sanitize(&value, 100_000)));
                }
                out.write_all(text.as_bytes())
            }
        }
        OutboxCommand::DeadLetters(DeadLetterCommand::Replay { select }) => {
            let outcome = ops
                .apply(
                    Action::Replay,
                    &select.target()?,
                    select.dry_run,
                    &local_caller(),
                )
                .await?;
            print_outcome(out, &outcome, json)
        }
        OutboxCommand::DeadLetters(DeadLetterCommand::Discard { select }) => {
            let outcome = ops
                .apply(
                    Action::Discard,
                    &select.target()?,
                    select.dry_run,
                    &local_caller(),
                )
                .await?;
            print_outcome(out, &outcome, json)
        }
    };
    // A closed stdout (a pipe to `head`) is not the outbox's failure.
    let _ = result;
    Ok(())
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")
}

fn print_outcome(out: &mut dyn Write, outcome: &Outcome, json: bool) -> std::io::Result<()> {
    if json {
        return print_json(out, outcome);
    }
    let verb = match (outcome.action, outcome.dry_run) {
        (Action::Replay, false) => "replayed",
        (Action::Discard, false) => "discarded",
        (Action::Replay, true) => "would replay",
        (Action::Discard, true) => "would discard",
    };
    let note = if outcome.dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    writeln!(out, "{verb} {} dead letter(s){note}", outcome.count)
}

/// Database contents are untrusted: control characters (terminal escapes among them) are shown
/// as `?`, and long values are cut to `max` characters.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut shown: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        shown.push('…');
    }
    shown
}

fn print_table(out: &mut dyn Write, page: &crate::ops::Page) -> std::io::Result<()> {
    let header = [
        "ID",
        "TOPIC",
        "KEY",
        "EVENT TYPE",
        "ATTEMPTS",
        "DEAD-LETTERED AT",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 7]> = page
        .dead_letters
        .iter()
        .map(|d| {
            [
                d.id.to_string(),
                sanitize(&d.topic, 48).replace('\n', " "),
                sanitize(&d.key, 32).replace('\n', " "),
                sanitize(&d.event_type, 40).replace('\n', " "),
                d.attempts.to_string(),
                d.dead_lettered_at
                    .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                sanitize(d.last_error.as_deref().unwrap_or(""), 60).replace('\n', " "),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(&header.map(str::to_owned));
    for row in &rows {
        text.push_str(&line(row));
    }
    match page.next_after {
        Some(next) => text.push_str(&format!(
            "{} dead letter(s) shown; more with --after {next}\n",
            rows.len()
        )),
        None => text.push_str(&format!("{} dead letter(s)\n", rows.len())),
    }
    out.write_all(text.as_bytes())
}
