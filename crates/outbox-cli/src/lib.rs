//! The `outbox` binary's library: the operator's commands and the admin API, shared by the
//! binary and by every service that embeds them.
//!
//! - [`commands`]: `stats` and `dead-letters list|show|replay|discard` as clap subcommands a
//!   service adds to its own command line (`file-service outbox ...` does), printing a table or
//!   JSON, with documented [exit codes](commands::Exit);
//! - [`api`]: an axum router with the same operations behind a bearer token, to mount under
//!   `/admin/outbox`; without a token it is not mounted;
//! - [`ops`]: the operations both call: stats, a paged and filtered list, show, replay and
//!   discard (or a dry run that counts), each replay and discard logged with its caller;
//! - [`relay`]: `outbox relay`, the relay as a sidecar with `/healthz` and `/metrics`;
//! - [`env`](mod@env): configuration from the environment (`DATABASE_URL`, `KAFKA_*`, `OUTBOX_*`,
//!   `LOG_FORMAT`).
//!
//! # Example
//!
//! A service adds the commands to its own command line:
//!
//! ```no_run
//! use clap::Parser;
//! use outbox_cli::commands::{Exit, OutboxCommand};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[arg(long, global = true)]
//!     json: bool,
//!     #[command(subcommand)]
//!     outbox: OutboxCommand,
//! }
//!
//! # async fn example(db: sea_orm::DatabaseConnection) -> std::process::ExitCode {
//! let cli = Cli::parse();
//! match outbox_cli::commands::run(db, &cli.outbox, cli.json, &mut std::io::stdout()).await {
//!     Ok(()) => std::process::ExitCode::SUCCESS,
//!     Err(e) => {
//!         eprintln!("{e}");
//!         Exit::of(&e).into()
//!     }
//! }
//! # }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod commands;
pub mod env;
pub mod ops;
pub mod relay;
