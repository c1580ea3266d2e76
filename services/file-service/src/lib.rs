//! The File Service: receives essay files for a batch, extracts and validates their text, stores
//! it, and announces every outcome to the essay pipeline through the transactional outbox.
//!
//! - [`http`]: the routes (`POST /v1/files/batch`, `POST /v1/files/batch/{batch_id}/files`,
//!   `GET /v1/files/batch/{batch_id}/state`, `DELETE /v1/files/batch/{batch_id}/files/{id}`,
//!   `/healthz`, `/metrics`); [`http::app`] builds the router;
//! - [`events`]: the four contract events and [`events::FileEventWriter`], which writes them
//!   to the outbox in the caller's transaction;
//! - [`processing`]: background extraction, validation and outcome events, never leaving an
//!   upload behind;
//! - [`extract`]: `.txt`, `.docx` and `.pdf` text extraction, content sniffing and validation;
//! - [`isolate`]: `.docx` and `.pdf` extraction in a child process with time, memory and CPU
//!   limits;
//! - [`access`]: batch ownership and locks from the Batch Orchestrator, or local ownership;
//! - [`db`]: the tables, their migration and the migrator that includes the outbox's;
//! - [`module`]: the shaku module, with the outbox module as a submodule;
//! - [`config`] and [`app`]: configuration from the environment, wiring, and `serve`;
//! - [`admin`]: `file-service outbox ...` and the admin API under `/admin/outbox`, both the
//!   `outbox` binary's own implementation.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod admin;
pub mod app;
pub mod config;
pub mod db;
pub mod events;
pub mod extract;
pub mod http;
pub mod isolate;
pub mod metrics;
pub mod module;
pub mod processing;
