//! `batch-orchestrator`: `serve` (the default) runs the service; `migrate up|down|status`
//! manages its database. Configuration comes from the environment (see the crate's README).

use std::process::ExitCode;

use batch_orchestrator::config::{Config, ProcessEnv};
use batch_orchestrator::db::Migrator;
use clap::{Parser, Subcommand, ValueEnum};
use sea_orm_migration::MigratorTrait;

/// The Batch Orchestrator.
#[derive(Debug, Parser)]
#[command(name = "batch-orchestrator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP, run the relay and the consumers (the default).
    Serve,
    /// Apply, revert or list database migrations (the outbox's included).
    Migrate {
        /// What to do.
        #[arg(value_enum)]
        action: MigrateAction,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Revert the last applied migration.
    Down,
    /// List migrations and whether each is applied.
    Status,
}

async fn migrate(config: &Config, action: MigrateAction) -> Result<(), Box<dyn std::error::Error>> {
    let db = batch_orchestrator::app::connect(config).await?;
    match action {
        MigrateAction::Up => {
            Migrator::up(&db, None).await?;
            println!("migrations applied");
        }
        MigrateAction::Down => {
            Migrator::down(&db, Some(1)).await?;
            println!("last migration reverted");
        }
        MigrateAction::Status => {
            for migration in Migrator::get_migration_with_status(&db).await? {
                println!("{:?}\t{}", migration.status(), migration.name());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("batch-orchestrator: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let config = match Config::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("batch-orchestrator: {e}");
            return ExitCode::from(2);
        }
    };
    outbox_cli::env::init_logging(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => batch_orchestrator::app::serve(config)
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
        Command::Migrate { action } => migrate(&config, action).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "batch-orchestrator failed");
            eprintln!("batch-orchestrator: {e}");
            ExitCode::FAILURE
        }
    }
}
