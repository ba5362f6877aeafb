//! [`StorageError`]: what a store reports, grouped by what the caller can do
//! about it, with the cause kept as its `source` (an operator needs the
//! driver's or the file system's own words), and the conversions from the
//! backends' errors that let their code use `?`.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

/// The cause of an unavailable store: the backend's own error, shared so
/// that every write of a failed batch can report it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a storage operation did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// No such record (for this owner).
    #[error("not found")]
    NotFound,

    // Preconditions: the request is well formed, the stored state refuses it.
    /// The caller's expected version is not the stored one.
    #[error("version mismatch: stored version is {current}")]
    VersionMismatch { current: u64 },
    /// The same idempotency key was used with a different request body.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    #[error("the principal already has {max} tasks")]
    QuotaExceeded { max: u64 },
    /// What was to be created exists (a principal's token, data in an import
    /// target).
    #[error("{0} already exists")]
    AlreadyExists(String),

    /// A stored record could not be decoded: the data is damaged, from an
    /// unknown format version, or a value no rule of the API admits. Never a
    /// panic. Made with [`StorageError::corrupt`], which reports it.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },

    /// Other work holds what this operation needs (a record changing under
    /// it, every pooled connection); the store works, retry shortly.
    #[error("busy: {what}")]
    Busy { what: Cow<'static, str> },
    /// The database file is held by a process that opened it alone.
    #[error(
        "{} is locked by another process; every process that shares a database file must open it in multi-writer mode",
        path.display()
    )]
    Locked { path: PathBuf },
    /// The backend cannot be reached or has stopped: I/O, a lost connection,
    /// a closed store.
    #[error("storage unavailable: {context}")]
    Unavailable {
        context: Cow<'static, str>,
        #[source]
        source: Option<Cause>,
    },
}

pub type StoreResult<T> = Result<T, StorageError>;

impl StorageError {
    /// Unavailable, for a reason of our own.
    pub fn unavailable(context: impl Into<Cow<'static, str>>) -> Self {
        Self::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    /// Unavailable because of `source`, while doing `context`.
    pub fn io(
        context: impl Into<Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A stored record of `kind` (`task`, `token`, `idempotency`) at `key`
    /// that cannot be decoded. It is logged with its key and counted in
    /// `store_corrupt_records_total{kind}` each time a read meets it; list
    /// pages and backups skip it, a request for that one record fails.
    pub fn corrupt(
        kind: &'static str,
        key: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        let (key, reason) = (key.to_string(), reason.into());
        tracing::error!(kind, %key, %reason, "unreadable stored record");
        metrics::counter!("store_corrupt_records_total", "kind" => kind).increment(1);
        Self::Corrupt { key, reason }
    }
}

/// `e` with its chain of causes, `: `-separated, for a log line.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// Every error of the redb crate reaching the store is the file being
/// unusable (I/O, a lost lock, a previous I/O error): the store is
/// unavailable until the writer has reopened it.
macro_rules! redb_errors {
    ($($e:ty),*) => {$(
        impl From<$e> for StorageError {
            fn from(e: $e) -> Self {
                StorageError::io("the database file", e)
            }
        }
    )*};
}

redb_errors!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError
);

/// A driver error is the database being unavailable (the server's reason is
/// in the source), except where a caller matches a SQLSTATE first.
impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        StorageError::io("the database", e)
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        match e {
            PoolError::Closed => StorageError::unavailable("the store is closed"),
            PoolError::Timeout(TimeoutType::Wait) => StorageError::Busy {
                what: "every database connection is in use".into(),
            },
            PoolError::Backend(e) => e.into(),
            other => StorageError::io("no database connection", other),
        }
    }
}

/// A blocking read that panicked or was cancelled.
impl From<tokio::task::JoinError> for StorageError {
    fn from(e: tokio::task::JoinError) -> Self {
        StorageError::io("a storage task", e)
    }
}
