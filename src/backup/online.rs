//! Online backups of a running server through its control socket
//! ([`crate::control`]).
//!
//! A client sends the request line `backup` and reads a backup file in the
//! format of [`super::format`], written from one read transaction of the
//! running store, so the snapshot is consistent while the server keeps
//! serving. This works in every `--db-sharing` mode, including the default
//! `exclusive`, where no other process can open the file.
//!
//! `devops-api backup` uses the socket when a server answers on it and opens
//! the file itself otherwise; the client checks the whole file (count and
//! checksum) before it moves it into place, as an offline backup does.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;

use super::{BackupError, Progress, create_private, io_error, partial_path, verify_and_move};
use crate::control::{BACKUP, SOCKET};
use crate::storage::{Chain, Store};

/// Answers a `backup` request on `write`, and counts and logs it.
pub(crate) async fn answer(write: OwnedWriteHalf, store: &dyn Store) -> io::Result<()> {
    let started = Instant::now();
    match send(write, store).await {
        Ok((records, bytes)) => {
            metrics::counter!("backups_total", "outcome" => "ok").increment(1);
            tracing::info!(
                records,
                bytes,
                seconds = started.elapsed().as_secs_f64(),
                "online backup served"
            );
            Ok(())
        }
        Err(e) => {
            metrics::counter!("backups_total", "outcome" => "error").increment(1);
            tracing::warn!(error = %e, "online backup failed");
            Ok(())
        }
    }
}

/// Writes a backup of `store` to `write`: `(records, bytes)`.
async fn send(mut write: OwnedWriteHalf, store: &dyn Store) -> io::Result<(u64, u64)> {
    let export = match store.export().await {
        Ok(export) => export,
        Err(e) => {
            let message = format!("error: reading the snapshot: {}\n", Chain(&e));
            write.write_all(message.as_bytes()).await?;
            return Err(io::Error::other(message.trim().to_owned()));
        }
    };
    let records = export.records.len() as u64;
    let unreadable = export.unreadable.len() as u64;
    // Serialised off the async workers: a large store takes a while.
    let bytes = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        let created_at = crate::domain::rfc3339::format(&crate::domain::now());
        super::write_to(
            &mut buf,
            &export.records,
            unreadable,
            &created_at,
            &mut |_, _, _| {},
        )
        .map(|()| buf)
    })
    .await
    .map_err(io::Error::other)??;
    write.write_all(&bytes).await?;
    write.shutdown().await?;
    Ok((records, bytes.len() as u64))
}

/// What [`fetch`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnlineReport {
    pub records: u64,
    /// Records the server could not read (their keys are in the server's log).
    pub unreadable: u64,
}

/// Asks the server on `stream` for a backup and writes it to `out` (via a
/// temporary file of mode 0600, verified, then renamed), reporting progress
/// as records arrive.
pub async fn fetch(
    stream: UnixStream,
    out: &Path,
    progress: Progress<'_>,
) -> Result<OnlineReport, BackupError> {
    let socket_error = |source| BackupError::Io {
        what: "the control socket",
        path: PathBuf::from(SOCKET),
        source,
    };
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{BACKUP}\n").as_bytes())
        .await
        .map_err(socket_error)?;
    let tmp = partial_path(out);
    let file = create_private(&tmp).map_err(io_error("cannot create", &tmp))?;
    let mut w = BufWriter::new(file);
    let mut lines = BufReader::new(read).lines();
    let mut n: u64 = 0;
    while let Some(line) = lines.next_line().await.map_err(socket_error)? {
        if n == 0
            && let Some(message) = line.strip_prefix("error: ")
        {
            drop(w);
            let _ = std::fs::remove_file(&tmp);
            return Err(BackupError::Format(format!("the server: {message}")));
        }
        w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .map_err(io_error("cannot write", &tmp))?;
        n += 1;
        if n.is_multiple_of(10_000) {
            progress("received", n, 0);
        }
    }
    let file = w
        .into_inner()
        .map_err(|e| io_error("cannot write", &tmp)(e.into_error()))?;
    file.sync_all()
        .map_err(io_error("cannot flush to disk", &tmp))?;
    let back = verify_and_move(&tmp, out)?;
    let records = back.lines.len() as u64;
    progress("received and verified", records, records);
    Ok(OnlineReport {
        records,
        unreadable: back.unreadable,
    })
}
