//! Who owns a batch and whether it is locked: the Batch Orchestrator when configured, otherwise
//! the service's own `batches` table (the first uploader owns the batch; never locked).

use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement};
use serde::Deserialize;

use crate::db::batch;

/// Phase states in which a batch no longer accepts changes.
pub const LOCKING_STATES: [&str; 4] = [
    "dispatch_initiated",
    "in_progress",
    "completed_successfully",
    "completed_with_partial_success",
];

/// Why a request may not touch a batch.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Another user owns the batch.
    #[error("batch {batch_id} belongs to another user")]
    Forbidden {
        /// The batch.
        batch_id: String,
    },
    /// A pipeline phase has started, so files can no longer change.
    #[error("batch {batch_id} is locked: {reason}")]
    Locked {
        /// The batch.
        batch_id: String,
        /// Which phase locks it.
        reason: String,
    },
    /// No such batch.
    #[error("batch {batch_id} does not exist")]
    NotFound {
        /// The batch.
        batch_id: String,
    },
    /// The Batch Orchestrator could not answer.
    #[error("the Batch Orchestrator is unavailable: {0}")]
    Unavailable(String),
    /// The service's database failed.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
}

/// What a request learns about a batch it may access.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchView {
    /// Whether files can no longer change.
    pub locked: bool,
    /// Which phase locks it, when locked.
    pub lock_reason: Option<String>,
}

/// Decides whether a user may read or change a batch.
#[async_trait]
pub trait BatchAccess: Send + Sync {
    /// May `user_id` add files to `batch_id`? A batch that does not exist yet may be created by
    /// the upload when ownership is local.
    async fn check_upload(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError>;

    /// May `user_id` remove files from `batch_id` (it must exist and be unlocked)?
    async fn check_remove(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError>;

    /// May `user_id` read `batch_id`? Returns its lock state.
    async fn check_read(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError>;

    /// Whether the upload's transaction must claim ownership in the local `batches` table.
    fn claims_locally(&self) -> bool;
}

/// Ownership from the service's `batches` table: the first uploader owns a batch; batches are
/// never locked.
#[derive(Debug, Clone)]
pub struct LocalOwnership {
    db: DatabaseConnection,
}

impl LocalOwnership {
    /// Ownership read from `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn owner(&self, batch_id: &str) -> Result<Option<String>, AccessError> {
        Ok(batch::Entity::find_by_id(batch_id.to_owned())
            .one(&self.db)
            .await?
            .map(|b| b.user_id))
    }

    async fn existing(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        match self.owner(batch_id).await? {
            None => Err(AccessError::NotFound {
                batch_id: batch_id.to_owned(),
            }),
            Some(owner) if owner != user_id => Err(AccessError::Forbidden {
                batch_id: batch_id.to_owned(),
            }),
            Some(_) => Ok(BatchView::default()),
        }
    }
}

/// Claims `batch_id` for `user_id` inside the upload's transaction, or confirms the user already
/// owns it. Another owner is [`AccessError::Forbidden`], decided under the row's lock so two
/// first uploads cannot both win.
pub async fn claim_locally(
    txn: &impl ConnectionTrait,
    batch_id: &str,
    user_id: &str,
) -> Result<(), AccessError> {
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO batches (batch_id, user_id) VALUES ($1, $2) ON CONFLICT (batch_id) DO NOTHING",
        [batch_id.into(), user_id.into()],
    ))
    .await?;
    let owner: Option<String> = txn
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT user_id FROM batches WHERE batch_id = $1 FOR SHARE",
            [batch_id.into()],
        ))
        .await?
        .map(|row| row.try_get("", "user_id"))
        .transpose()?;
    match owner {
        Some(owner) if owner == user_id => Ok(()),
        _ => Err(AccessError::Forbidden {
            batch_id: batch_id.to_owned(),
        }),
    }
}

#[async_trait]
impl BatchAccess for LocalOwnership {
    async fn check_upload(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        match self.owner(batch_id).await? {
            Some(owner) if owner != user_id => Err(AccessError::Forbidden {
                batch_id: batch_id.to_owned(),
            }),
            _ => Ok(BatchView::default()),
        }
    }

    async fn check_remove(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        self.existing(batch_id, user_id).await
    }

    async fn check_read(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        self.existing(batch_id, user_id).await
    }

    fn claims_locally(&self) -> bool {
        true
    }
}

/// The Batch Orchestrator's answer.
#[derive(Debug, Deserialize)]
struct PipelineState {
    user_id: String,
    #[serde(default)]
    pipeline_state: serde_json::Map<String, serde_json::Value>,
}

/// Ownership and lock state from the Batch Orchestrator:
/// `GET {url}/internal/v1/batches/{batch_id}/pipeline-state`.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    base_url: String,
    client: reqwest::Client,
}

impl Orchestrator {
    /// A client for the orchestrator at `base_url`, giving up after `timeout`.
    pub fn new(base_url: impl Into<String>, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            base_url: base_url.into(),
            client: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    async fn state(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        let mut url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| AccessError::Unavailable(format!("bad orchestrator URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| {
                AccessError::Unavailable("the orchestrator URL cannot have a path".into())
            })?
            .pop_if_empty()
            .extend(["internal", "v1", "batches", batch_id, "pipeline-state"]);
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| AccessError::Unavailable(e.to_string()))?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => {
                return Err(AccessError::NotFound {
                    batch_id: batch_id.to_owned(),
                });
            }
            status if !status.is_success() => {
                return Err(AccessError::Unavailable(format!("it answered {status}")));
            }
            _ => {}
        }
        let state: PipelineState = response
            .json()
            .await
            .map_err(|e| AccessError::Unavailable(format!("unreadable answer: {e}")))?;
        if state.user_id != user_id {
            return Err(AccessError::Forbidden {
                batch_id: batch_id.to_owned(),
            });
        }
        let lock_reason = state.pipeline_state.iter().find_map(|(phase, value)| {
            let status = value.get("status")?.as_str()?;
            LOCKING_STATES
                .contains(&status)
                .then(|| format!("phase {phase} is {status}"))
        });
        Ok(BatchView {
            locked: lock_reason.is_some(),
            lock_reason,
        })
    }

    async fn unlocked(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        let view = self.state(batch_id, user_id).await?;
        match view.lock_reason {
            Some(reason) => Err(AccessError::Locked {
                batch_id: batch_id.to_owned(),
                reason,
            }),
            None => Ok(view),
        }
    }
}

#[async_trait]
impl BatchAccess for Orchestrator {
    async fn check_upload(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        self.unlocked(batch_id, user_id).await
    }

    async fn check_remove(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        self.unlocked(batch_id, user_id).await
    }

    async fn check_read(&self, batch_id: &str, user_id: &str) -> Result<BatchView, AccessError> {
        self.state(batch_id, user_id).await
    }

    fn claims_locally(&self) -> bool {
        false
    }
}
