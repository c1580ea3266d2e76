//! The Batch Orchestrator slice (ARCH-014), the outbox library's second adopter and its first
//! consumer: it registers batches, assigns essay content to their slots, and readies batches,
//! publishing every event through the outbox and consuming every event through the inbox, each
//! in the same transaction as the business change.
//!
//! - [`http`]: the routes (`POST /v1/batches/register`,
//!   `GET /internal/v1/batches/{id}/pipeline-state`, `GET /v1/batches/{id}/status`, `/healthz`,
//!   `/metrics`); [`http::app`] builds the router;
//! - [`registration`]: the registration request, its validation and its one transaction;
//! - [`readiness`]: the readiness module (ELS's role): slots, excess content, completion;
//! - [`provisioning`]: BOS's provisioning-completed handler (guarded transitions, the
//!   student-matching command);
//! - [`consumers`]: the consumers `serve` runs ([`consumers::handlers`]);
//! - [`events`]: topics, the envelope, payloads; [`pipeline`]: the pipeline state;
//! - [`db`]: the tables, their migration and the migrator that includes the outbox's;
//! - [`config`] and [`app`]: configuration from the environment, wiring, and `serve`.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod config;
pub mod consumers;
pub mod db;
pub mod events;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod provisioning;
pub mod readiness;
pub mod registration;
