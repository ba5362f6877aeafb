//! Backups: a JSON Lines file with a header, one record per line, and a
//! trailer holding the record count and a SHA-256 over the record lines, so a
//! truncated or accidentally damaged file is detected before anything is
//! restored. The SHA-256 is unkeyed: it is an integrity check, not an
//! authenticity check. Whoever can write the file can write a matching
//! checksum, which is why a restore validates every record as the API would
//! ([`ImportSet::validate`]) and imports in one transaction.
//!
//! The snapshot comes from one read transaction (redb) or one repeatable-read
//! transaction (PostgreSQL), so it is consistent while the server keeps writing.
//! Records that cannot be read are left out, listed and counted in the trailer
//! (`unreadable`); the backup of everything else still completes.
//!
//! Backup files are created with mode 0600: they hold every task and every
//! token digest.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::{BackupRecord, ImportSet, Store, Unreadable};

const FORMAT: &str = "devops-api-backup";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    records: u64,
    sha256: String,
    /// Records of the source that could not be read and are not in the file.
    #[serde(default)]
    unreadable: u64,
}

/// Exit status of `devops-api backup` when the file was written and verified
/// but records of the store could not be read and are missing from it.
pub const EXIT_INCOMPLETE: u8 = 3;

/// What [`backup`] wrote.
#[derive(Debug)]
pub struct BackupReport {
    pub records: u64,
    /// Records of the store that could not be read (already logged).
    pub unreadable: Vec<Unreadable>,
}

/// A backup file as read back.
#[derive(Debug)]
pub struct BackupFile {
    pub records: Vec<BackupRecord>,
    /// How many records of its source the backup says it lacks.
    pub unreadable: u64,
}

/// Progress reports for long operations: `(done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Creates (or truncates) `path` for writing with mode 0600, also when it
/// existed with another mode.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Writes every readable record of `store` to `out` (via a temporary file of
/// mode 0600 renamed into place, so `out` is never half-written), then reads it
/// back to verify. Unreadable records are left out and reported.
pub async fn backup(
    store: &dyn Store,
    out: &Path,
    progress: Progress<'_>,
) -> anyhow::Result<BackupReport> {
    let export = store.export().await.context("reading the snapshot")?;
    let (records, unreadable) = (export.records, export.unreadable);
    let total = records.len() as u64;
    let tmp = out.with_extension("partial");
    {
        let file =
            create_private(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            created_at: crate::domain::rfc3339::format(&crate::domain::now()),
        };
        serde_json::to_writer(&mut w, &header)?;
        w.write_all(b"\n")?;
        let mut hash = Sha256::new();
        for (i, r) in records.iter().enumerate() {
            let line = serde_json::to_vec(r)?;
            hash.update(&line);
            hash.update(b"\n");
            w.write_all(&line)?;
            w.write_all(b"\n")?;
            if (i + 1) % 10_000 == 0 {
                progress("written", i as u64 + 1, total);
            }
        }
        let trailer = Trailer {
            records: total,
            sha256: hex::encode(hash.finalize()),
            unreadable: unreadable.len() as u64,
        };
        serde_json::to_writer(&mut w, &trailer)?;
        w.write_all(b"\n")?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().context("flushing the backup to disk")?;
    }
    progress("written", total, total);
    let back = read(&tmp, &mut |_, _, _| {}).context("verifying the backup just written")?;
    ensure!(
        back.records.len() as u64 == total,
        "verification read {} records, wrote {total}",
        back.records.len()
    );
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot move the backup to {}", out.display()))?;
    Ok(BackupReport {
        records: total,
        unreadable,
    })
}

/// Reads and checks a backup file: format, version, record count and checksum
/// (an integrity check against truncation and damage, not against tampering).
pub fn read(path: &Path, progress: Progress<'_>) -> anyhow::Result<BackupFile> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let header: Header = match lines.next() {
        Some(line) => {
            serde_json::from_str(&line?).context("the first line is not a backup header")?
        }
        None => bail!("{} is empty", path.display()),
    };
    ensure!(
        header.format == FORMAT,
        "{} is not a devops-api backup",
        path.display()
    );
    ensure!(
        header.version == VERSION,
        "backup format version {} is not supported (expected {VERSION})",
        header.version
    );
    let mut hash = Sha256::new();
    let mut records = Vec::new();
    let mut trailer = None;
    for (n, line) in lines.enumerate() {
        let line = line?;
        if trailer.is_some() {
            bail!("data after the trailer at line {}", n + 2);
        }
        match serde_json::from_str::<BackupRecord>(&line) {
            Ok(r) => {
                hash.update(line.as_bytes());
                hash.update(b"\n");
                records.push(r);
                if records.len() % 10_000 == 0 {
                    progress("read", records.len() as u64, 0);
                }
            }
            Err(record_err) => match serde_json::from_str::<Trailer>(&line) {
                Ok(t) => trailer = Some(t),
                Err(_) => bail!("line {} is not a valid record: {record_err}", n + 2),
            },
        }
    }
    let Some(trailer) = trailer else {
        bail!(
            "the backup is truncated: no trailer after {} records",
            records.len()
        );
    };
    ensure!(
        trailer.records == records.len() as u64,
        "the trailer counts {} records, the file has {}",
        trailer.records,
        records.len()
    );
    ensure!(
        trailer.sha256 == hex::encode(hash.finalize()),
        "the checksum does not match: the file was changed or damaged"
    );
    Ok(BackupFile {
        records,
        unreadable: trailer.unreadable,
    })
}

/// Restores `path` into `store`, which must be empty: every record is
/// validated first ([`ImportSet::validate`]), then imported in one transaction
/// that reads the records back and compares them before it commits. On any
/// error nothing was written. Returns the number of records restored.
pub async fn restore(
    store: &dyn Store,
    path: &Path,
    progress: Progress<'_>,
) -> anyhow::Result<u64> {
    let file = read(path, progress).context("nothing was restored")?;
    let total = file.records.len() as u64;
    if file.unreadable > 0 {
        eprintln!(
            "warning: this backup lacks {} records that its source could not read",
            file.unreadable
        );
    }
    let set = ImportSet::validate(file.records).map_err(|e| {
        anyhow::anyhow!(
            "line {} of {}: {}; nothing was restored",
            e.record + 1,
            path.display(),
            e.reason
        )
    })?;
    progress("checked", total, total);
    let written = store.import(set).await.map_err(|e| match e {
        crate::storage::StorageError::AlreadyExists(_) => {
            anyhow::anyhow!("the target holds data already; restore only into an empty data directory or database")
        }
        e => anyhow::Error::new(e).context("the import failed; nothing was restored"),
    })?;
    progress("imported and verified", written, total);
    Ok(total)
}
