//! The database file: a private data directory and file, redb's builder, and
//! open errors that say what the operator should do.

use std::path::Path;

use redb::{Builder, ConcurrencyMode, DatabaseError};

use super::DbSharing;
use crate::storage::StorageError;

/// Creates `dir` and its missing parents with mode 0700 (an existing
/// directory keeps its mode: it may be a mount point the operator set up).
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Opens `path` for reading and writing, creating it with mode 0600; an
/// existing file readable by others is narrowed to 0600.
pub(super) fn open_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0
            && let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot narrow the database file to mode 0600");
        }
    }
    Ok(file)
}

pub(super) fn builder(sharing: DbSharing, cache_size: usize) -> Builder {
    let mode = match sharing {
        DbSharing::Exclusive => ConcurrencyMode::ExclusiveWriter,
        DbSharing::MultiWriter => ConcurrencyMode::MultiWriter,
    };
    let mut b = Builder::new();
    b.set_concurrency_mode(mode).set_cache_size(cache_size);
    b
}

/// An error opening the file at `path`: [`StorageError::Locked`] when
/// another process holds it alone, else unavailable with the cause.
pub(super) fn open_error(path: &Path, e: DatabaseError) -> StorageError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StorageError::Locked {
            path: path.to_owned(),
        },
        other => StorageError::io(format!("cannot open {}", path.display()), other),
    }
}
