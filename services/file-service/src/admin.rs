//! `file-service outbox ...` and the admin API: the `outbox` binary's own implementation
//! (crate `outbox-cli`), so the service and the binary take the same arguments, print the same
//! tables and JSON, and exit with the same codes.
//!
//! - `file-service outbox stats`, `file-service outbox dead-letters list|show|replay|discard`
//!   ([`OutboxCommand`]), `--json` for scripts;
//! - the admin API under `/admin/outbox` ([`mount`]), only when `OUTBOX_ADMIN_TOKEN` is set.

pub use outbox_cli::api::{AdminToken, mount};
pub use outbox_cli::commands::{DeadLetterCommand, Exit, OutboxCommand, Selection, run};
