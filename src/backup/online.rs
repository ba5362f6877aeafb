//! Online backups of a running server through its control socket.
//!
//! A server on the embedded redb file listens on a Unix socket in its data
//! directory ([`SOCKET`], mode 0600 in a 0700 directory: only the server's
//! own user and root can connect, which is the authentication). A client
//! sends one command line, `backup`, and reads a backup file in the format of
//! [`super::format`], written from one read transaction of the running
//! store, so the snapshot is consistent while the server keeps serving.
//! This works in every `--db-sharing` mode, including the default
//! `exclusive`, where no other process can open the file.
//!
//! `devops-api backup` uses the socket when a server answers on it and opens
//! the file itself otherwise; the client checks the whole file (count and
//! checksum) before it moves it into place, as an offline backup does.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{BackupError, Progress, create_private, io_error, partial_path, verify_and_move};
use crate::storage::{Chain, Store};

/// The control socket's name inside the data directory.
pub const SOCKET: &str = "control.sock";

/// The one command the socket understands.
const BACKUP: &str = "backup";

/// The control socket of the data directory `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Binds the control socket in `data_dir` with mode 0600. `None` when
/// another live process already answers on it (tasks sharing the file in
/// multi-writer mode: one socket serves them all, as they share the data).
/// A socket file nobody answers on is stale and replaced.
pub fn bind(data_dir: &Path) -> io::Result<Option<UnixListener>> {
    let path = socket_path(data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Ok(None);
        }
        std::fs::remove_file(&path)?;
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        // Another process bound it since we looked.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Ok(None),
        Err(e) => return Err(e),
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Some(listener))
}

/// How often a process without the socket checks whether it is free.
const RETAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the control socket of `data_dir` from a task that removes the
/// socket file when it ends or is aborted, if this process bound it. While another process on
/// the same data directory holds the socket, checks every [`RETAKE`] and
/// takes it over once that process is gone, so some task of a service that
/// shares a file always answers. A socket that cannot be created (a path
/// longer than the system allows, a read-only directory) is logged and
/// retried; the server works without it.
///
/// The first attempt is made before this returns, so a server that reports
/// ready already answers on its socket.
pub fn start(data_dir: PathBuf, store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
    let first = bind(&data_dir);
    tokio::spawn(run(data_dir, store, first))
}

async fn run(data_dir: PathBuf, store: Arc<dyn Store>, first: io::Result<Option<UnixListener>>) {
    let mut warned = false;
    let mut attempt = Some(first);
    loop {
        let bound = match attempt.take() {
            Some(first) => first,
            None => bind(&data_dir),
        };
        match bound {
            Ok(Some(listener)) => {
                let _owned = Owned(socket_path(&data_dir));
                tracing::info!(socket = %socket_path(&data_dir).display(), "control socket for online backups");
                serve(listener, store).await;
                return;
            }
            Ok(None) => {}
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    socket = %socket_path(&data_dir).display(),
                    error = %e,
                    "cannot create the control socket: online backups through it are unavailable; retrying"
                );
            }
            Err(_) => {}
        }
        tokio::time::sleep(RETAKE).await;
    }
}

/// Removes the socket file of the process that bound it.
struct Owned(PathBuf);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves backups on `listener`; one connection at a time is enough for a
/// backup job.
async fn serve(listener: UnixListener, store: Arc<dyn Store>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let started = Instant::now();
        match answer(stream, store.as_ref()).await {
            Ok(Some((records, bytes))) => {
                metrics::counter!("backups_total", "outcome" => "ok").increment(1);
                tracing::info!(
                    records,
                    bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "online backup served"
                );
            }
            Ok(None) => {}
            Err(e) => {
                metrics::counter!("backups_total", "outcome" => "error").increment(1);
                tracing::warn!(error = %e, "online backup failed");
            }
        }
    }
}

/// Answers one connection: `Some((records, bytes))` for a backup sent.
async fn answer(stream: UnixStream, store: &dyn Store) -> io::Result<Option<(u64, u64)>> {
    let (read, mut write) = stream.into_split();
    let mut command = String::new();
    BufReader::new(read.take(64))
        .read_line(&mut command)
        .await?;
    if let Some(reply) = crate::index_cmd::answer(command.trim(), store).await {
        write.write_all(&reply).await?;
        write.shutdown().await?;
        return Ok(None);
    }
    if command.trim() != BACKUP {
        write
            .write_all(format!("error: unknown command `{}`\n", command.trim()).as_bytes())
            .await?;
        return Ok(None);
    }
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
    Ok(Some((records, bytes.len() as u64)))
}

/// What [`fetch`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnlineReport {
    pub records: u64,
    /// Records the server could not read (their keys are in the server's log).
    pub unreadable: u64,
}

/// Connects to the control socket of `data_dir`; `None` when there is no
/// socket or no server answers on it.
pub async fn connect(data_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(data_dir)).await.ok()
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
