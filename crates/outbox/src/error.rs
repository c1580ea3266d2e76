//! The one error type of the facade.

use outbox_core::OutboxError;

/// Errors of the outbox and of the database work done on its transactions, so a function that
/// writes business rows and events returns one type and uses `?` on both.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The outbox refused or failed: an invalid event or setting, the database or the broker.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A SeaORM statement failed (the service's own statements, begin, commit).
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
}

impl From<outbox_kafka::Error> for Error {
    fn from(error: outbox_kafka::Error) -> Self {
        Self::Outbox(error.into())
    }
}

impl From<sea_orm::TransactionError<Error>> for Error {
    fn from(error: sea_orm::TransactionError<Error>) -> Self {
        match error {
            sea_orm::TransactionError::Connection(e) => Self::Database(e),
            sea_orm::TransactionError::Transaction(e) => e,
        }
    }
}

impl From<Error> for OutboxError {
    /// For code whose error type speaks `OutboxError`: a SeaORM error becomes
    /// [`OutboxError::Database`].
    fn from(error: Error) -> Self {
        match error {
            Error::Outbox(e) => e,
            Error::Database(e) => Self::Database(Box::new(e)),
        }
    }
}
