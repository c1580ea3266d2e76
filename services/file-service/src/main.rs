//! `file-service`: `serve` (the default) runs the service; `migrate up|down|status` manages its
//! database; `outbox ...` runs the `outbox` binary's stats and dead-letter commands.
//! Configuration comes from the environment (see the README of this crate).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use file_service::admin::{Exit, OutboxCommand};
use file_service::config::{Config, LogFormat, ProcessEnv};
use file_service::db::Migrator;
use sea_orm_migration::MigratorTrait;

/// The File Service.
#[derive(Debug, Parser)]
#[command(name = "file-service", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP, run the relay and process uploads (the default).
    Serve,
    /// Apply, revert or list database migrations (the outbox table included).
    Migrate {
        /// What to do.
        #[arg(value_enum)]
        action: MigrateAction,
    },
    /// Inspect the outbox and list, show, replay or discard dead letters: the same commands,
    /// output and exit codes as the `outbox` binary (`outbox --help`).
    Outbox {
        /// Print one JSON document for scripts instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Internal: extract one file's text (stdin) as a JSON line (stdout) under resource limits.
    /// The service runs it as a child process for `.docx` and `.pdf`.
    #[command(name = "extract-text", hide = true)]
    ExtractText {
        /// Address space limit in bytes.
        #[arg(long)]
        memory_bytes: u64,
        /// CPU limit in seconds.
        #[arg(long)]
        cpu_seconds: u64,
        /// Most bytes read from stdin.
        #[arg(long)]
        max_input_bytes: u64,
        /// The upload's file name (its extension picks the parser).
        #[arg(allow_hyphen_values = true)]
        filename: String,
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr, so the JSON the `outbox` commands print on stdout stays clean.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn migrate(config: &Config, action: MigrateAction) -> Result<(), Box<dyn std::error::Error>> {
    let db = file_service::app::connect(config).await?;
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

async fn outbox(config: &Config, command: &OutboxCommand, json: bool) -> ExitCode {
    let db = match file_service::app::connect(config).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("file-service: {e}");
            return Exit::Failure.into();
        }
    };
    match file_service::admin::run(db, command, json, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("file-service: {e}");
            Exit::of(&e).into()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The extraction child limits itself before anything else runs: no runtime, no threads.
    if let Some(Command::ExtractText {
        memory_bytes,
        cpu_seconds,
        max_input_bytes,
        filename,
    }) = &cli.command
    {
        let limits = file_service::isolate::ExtractLimits {
            memory_bytes: *memory_bytes,
            cpu_seconds: *cpu_seconds,
            ..Default::default()
        };
        return file_service::isolate::run_child(filename, limits, *max_input_bytes);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("file-service: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let config = match Config::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("file-service: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Outbox { json, command } = &command {
        return outbox(&config, command, *json).await;
    }
    let result = match command {
        Command::Serve => file_service::app::serve(config)
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
        Command::Migrate { action } => migrate(&config, action).await,
        Command::Outbox { .. } | Command::ExtractText { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "file-service failed");
            eprintln!("file-service: {e}");
            ExitCode::FAILURE
        }
    }
}
