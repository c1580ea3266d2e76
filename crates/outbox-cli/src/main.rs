//! `outbox`: the transactional outbox's binary for operators and for services in any language.
//! Run `outbox --help`; the crate README lists the commands, variables and exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outbox_cli::commands::{Exit, OutboxCommand};
use outbox_cli::env::{CommonConfig, ConfigError, ProcessEnv, RelayConfig, init_logging};
use outbox_seaorm::OutboxMigrator;
use outbox_seaorm::migration::{
    COMMIT_HORIZON_DOWN_SQL, COMMIT_HORIZON_UP_SQL, DOWN_SQL, INBOX_DOWN_SQL, INBOX_UP_SQL,
    PAYLOAD_LZ4_DOWN_SQL, PAYLOAD_LZ4_UP_SQL, UP_SQL,
};
use sea_orm_migration::MigratorTrait;

const AFTER_HELP: &str = "\
Configuration (environment):
  DATABASE_URL             the PostgreSQL database holding event_outbox (required, except for `migrate sql`)
  KAFKA_BOOTSTRAP_SERVERS  brokers for `relay` (default 127.0.0.1:9092)
  KAFKA_PRODUCER_*         librdkafka properties: KAFKA_PRODUCER_SECURITY_PROTOCOL=SSL sets security.protocol
  OUTBOX_*                 relay settings: OUTBOX_BATCH_SIZE, OUTBOX_MAX_ATTEMPTS, OUTBOX_POLL_INTERVAL_MS, ...
  OUTBOX_HTTP_ADDR         where `relay` serves /healthz, /metrics and the admin API (default 0.0.0.0:9090)
  OUTBOX_ADMIN_TOKEN       bearer token of the admin API under /admin/outbox (unset: no admin API)
  LOG_FORMAT               json (default) or pretty; logs go to stderr
  RUST_LOG                 log filter (default info)

Exit codes:
  0  done (a replay or discard that matched nothing prints a count of 0)
  1  the database, Kafka or the HTTP listener failed (see stderr)
  2  a bad flag, argument or environment variable; nothing was changed
  3  `dead-letters show` names an id that is not a dead letter";

/// The transactional outbox (PostgreSQL -> Kafka): a sidecar relay for services in any
/// language, the outbox table's migrations, and the tools to inspect, replay and discard dead
/// letters.
#[derive(Debug, Parser)]
#[command(name = "outbox", version, after_help = AFTER_HELP)]
struct Cli {
    /// Print one JSON document for scripts instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay as a sidecar: publish rows of event_outbox to Kafka in order per key, serve
    /// /healthz, /metrics and (with OUTBOX_ADMIN_TOKEN) the admin API, stop cleanly on SIGTERM.
    /// Run one beside every replica: an advisory lock elects one active relay.
    Relay,
    /// Create or drop the outbox table (and the consumers' inbox table, event_inbox), list their
    /// migrations, or print their plain SQL.
    Migrate {
        /// What to do.
        #[command(subcommand)]
        action: MigrateAction,
    },
    #[command(flatten)]
    Outbox(OutboxCommand),
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum MigrateAction {
    /// Apply every pending outbox migration.
    Up,
    /// Revert the last outbox migration, newest first: the inbox table, the commit horizon, then
    /// the outbox table and every event still in it.
    Down,
    /// List the outbox migrations and whether each is applied.
    Status,
    /// Print the plain SQL, for services on other migration tools (needs no database).
    Sql {
        /// Print the SQL that reverts it instead.
        #[arg(long)]
        down: bool,
    },
}

fn config_failed(error: &ConfigError) -> ExitCode {
    eprintln!("outbox: {error}");
    Exit::Usage.into()
}

async fn migrate(
    config: &CommonConfig,
    action: MigrateAction,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = outbox_cli::relay::connect(&config.database_url, 2).await?;
    match action {
        MigrateAction::Up => {
            let pending: Vec<String> = OutboxMigrator::get_pending_migrations(&db)
                .await?
                .iter()
                .map(|m| m.name().to_owned())
                .collect();
            OutboxMigrator::up(&db, None).await?;
            if json {
                println!("{}", serde_json::json!({ "applied": pending }));
            } else {
                println!("{} migration(s) applied", pending.len());
            }
        }
        MigrateAction::Down => {
            OutboxMigrator::down(&db, Some(1)).await?;
            if json {
                println!("{}", serde_json::json!({ "reverted": 1 }));
            } else {
                println!("last migration reverted");
            }
        }
        MigrateAction::Status => {
            let migrations = OutboxMigrator::get_migration_with_status(&db).await?;
            if json {
                let list: Vec<serde_json::Value> = migrations
                    .iter()
                    .map(|m| serde_json::json!({"name": m.name(), "status": format!("{:?}", m.status())}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for migration in migrations {
                    println!("{:?}\t{}", migration.status(), migration.name());
                }
            }
        }
        MigrateAction::Sql { .. } => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate {
            action: MigrateAction::Sql { down },
        } => {
            // Every migration in order (down: in reverse), each in a transaction of its own.
            if down {
                print!(
                    "BEGIN;\n{PAYLOAD_LZ4_DOWN_SQL}COMMIT;\n\n{INBOX_DOWN_SQL}\nBEGIN;\n\
                     {COMMIT_HORIZON_DOWN_SQL}COMMIT;\n\n{DOWN_SQL}"
                );
            } else {
                print!(
                    "{UP_SQL}\nBEGIN;\n{COMMIT_HORIZON_UP_SQL}COMMIT;\n\n{INBOX_UP_SQL}\nBEGIN;\n\
                     {PAYLOAD_LZ4_UP_SQL}COMMIT;\n"
                );
            }
            ExitCode::SUCCESS
        }
        Command::Relay => {
            let config = match RelayConfig::from_env(&ProcessEnv) {
                Ok(config) => config,
                Err(e) => return config_failed(&e),
            };
            init_logging(config.common.log_format);
            match outbox_cli::relay::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "outbox relay failed");
                    eprintln!("outbox: {e}");
                    Exit::Failure.into()
                }
            }
        }
        Command::Migrate { action } => {
            let config = match CommonConfig::from_env(&ProcessEnv) {
                Ok(config) => config,
                Err(e) => return config_failed(&e),
            };
            init_logging(config.log_format);
            match migrate(&config, action, cli.json).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("outbox: {e}");
                    Exit::Failure.into()
                }
            }
        }
        Command::Outbox(command) => {
            let config = match CommonConfig::from_env(&ProcessEnv) {
                Ok(config) => config,
                Err(e) => return config_failed(&e),
            };
            init_logging(config.log_format);
            let db = match outbox_cli::relay::connect(&config.database_url, 2).await {
                Ok(db) => db,
                Err(e) => {
                    eprintln!("outbox: database error: {e}");
                    return Exit::Failure.into();
                }
            };
            match outbox_cli::commands::run(db, &command, cli.json, &mut std::io::stdout()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("outbox: {e}");
                    Exit::of(&e).into()
                }
            }
        }
    }
}
