//! Backups: a JSON Lines file ([`format`]) with a header, one record per
//! line, and a trailer holding the record count and a SHA-256 over the record
//! lines, so a truncated or accidentally damaged file is detected before
//! anything is restored. The SHA-256 is unkeyed: it is an integrity check, not
//! an authenticity check. Whoever can write the file can write a matching
//! checksum, which is why a restore validates every record as the API would
//! ([`Line::into_record`], [`ImportSet::validate`]) and imports in one
//! transaction.
//!
//! The snapshot comes from one read transaction (redb) or one repeatable-read
//! transaction (PostgreSQL), so it is consistent while the server keeps writing.
//! Records that cannot be read are left out, listed and counted in the trailer
//! (`unreadable`); the backup of everything else still completes.
//!
//! Backup files are created with mode 0600: they hold every task and every
//! token digest.

pub mod format;
#[cfg(unix)]
pub mod online;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use self::format::{FORMAT, Header, Line, TaskV1, Trailer, VERSION};
use crate::storage::{ImportSet, InvalidRecord, Record, StorageError, Store, Unreadable};

/// Why a backup or a restore did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("reading the snapshot")]
    Export(#[source] StorageError),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a complete, undamaged backup of this format.
    #[error("{0}")]
    Format(String),
    #[error("verifying the backup just written")]
    Verify(#[source] Box<BackupError>),
    /// Nothing was restored: the file could not be read.
    #[error("nothing was restored")]
    Unreadable(#[source] Box<BackupError>),
    /// Nothing was restored: a record breaks a rule of the API.
    #[error("line {line} of {}: {reason}; nothing was restored", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("the target holds data already; restore only into an empty data directory or database")]
    TargetNotEmpty,
    #[error("the import failed; nothing was restored")]
    Import(#[source] StorageError),
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

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
    pub lines: Vec<Line>,
    /// How many records of its source the backup says it lacks.
    pub unreadable: u64,
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    pub records: u64,
    /// How many records of its source the backup said it lacks.
    pub lacking: u64,
}

/// Progress reports for long operations: `(done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Creates (or truncates) `path` for writing with mode 0600, also when it
/// existed with another mode.
fn create_private(path: &Path) -> io::Result<File> {
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

/// Writes `records` as a backup to `w`: header (dated `created_at`), one line
/// per record, trailer.
pub fn write_to(
    w: &mut impl Write,
    records: &[Record],
    unreadable: u64,
    created_at: &str,
    progress: Progress<'_>,
) -> io::Result<()> {
    let total = records.len() as u64;
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        created_at: created_at.into(),
    };
    serde_json::to_writer(&mut *w, &header)?;
    w.write_all(b"\n")?;
    let mut hash = Sha256::new();
    for (i, r) in records.iter().enumerate() {
        let line = serde_json::to_vec(&Line::from(r))?;
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
        unreadable,
    };
    serde_json::to_writer(&mut *w, &trailer)?;
    w.write_all(b"\n")
}

/// Writes every readable record of `store` to `out` (via a temporary file of
/// mode 0600 renamed into place, so `out` is never half-written), then reads it
/// back to verify. Unreadable records are left out and reported.
pub async fn backup(
    store: &dyn Store,
    out: &Path,
    progress: Progress<'_>,
) -> Result<BackupReport, BackupError> {
    let export = store.export().await.map_err(BackupError::Export)?;
    let (records, unreadable) = (export.records, export.unreadable);
    let total = records.len() as u64;
    let tmp = partial_path(out);
    {
        let file = create_private(&tmp).map_err(io_error("cannot create", &tmp))?;
        let mut w = BufWriter::new(file);
        let created_at = crate::domain::rfc3339::format(&crate::domain::now());
        write_to(
            &mut w,
            &records,
            unreadable.len() as u64,
            &created_at,
            progress,
        )
        .map_err(io_error("cannot write", &tmp))?;
        let file = w
            .into_inner()
            .map_err(|e| io_error("cannot write", &tmp)(e.into_error()))?;
        file.sync_all()
            .map_err(io_error("cannot flush to disk", &tmp))?;
    }
    progress("written", total, total);
    let back = verify_and_move(&tmp, out)?;
    if back.lines.len() as u64 != total {
        return Err(BackupError::Format(format!(
            "verification read {} records, wrote {total}",
            back.lines.len()
        )));
    }
    Ok(BackupReport {
        records: total,
        unreadable,
    })
}

/// Where a backup to `out` is written until it is complete and verified.
fn partial_path(out: &Path) -> PathBuf {
    out.with_extension("partial")
}

/// Reads the complete file `tmp` back ([`read`]) and renames it to `out`;
/// on a failed check `tmp` is removed and `out` left as it was.
fn verify_and_move(tmp: &Path, out: &Path) -> Result<BackupFile, BackupError> {
    let back = match read(tmp, &mut |_, _, _| {}) {
        Ok(back) => back,
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            return Err(BackupError::Verify(Box::new(e)));
        }
    };
    std::fs::rename(tmp, out).map_err(io_error("cannot move the backup to", out))?;
    Ok(back)
}

/// Reads and checks a backup file: format, version, record count and checksum
/// (an integrity check against truncation and damage, not against tampering).
pub fn read(path: &Path, progress: Progress<'_>) -> Result<BackupFile, BackupError> {
    let bad = |m: String| BackupError::Format(m);
    let file = File::open(path).map_err(io_error("cannot open", path))?;
    let mut lines = BufReader::new(file).lines();
    let next_line = |lines: &mut io::Lines<BufReader<File>>| {
        lines
            .next()
            .transpose()
            .map_err(io_error("cannot read", path))
    };
    let header: Header = match next_line(&mut lines)? {
        Some(line) => serde_json::from_str(&line)
            .map_err(|e| bad(format!("the first line is not a backup header: {e}")))?,
        None => return Err(bad(format!("{} is empty", path.display()))),
    };
    if header.format != FORMAT {
        return Err(bad(format!(
            "{} is not a devops-api backup",
            path.display()
        )));
    }
    if header.version != VERSION {
        return Err(bad(format!(
            "backup format version {} is not supported (expected {VERSION})",
            header.version
        )));
    }
    let mut hash = Sha256::new();
    let mut records = Vec::new();
    let mut trailer = None;
    let mut n = 1;
    while let Some(line) = next_line(&mut lines)? {
        n += 1;
        if trailer.is_some() {
            return Err(bad(format!("data after the trailer at line {n}")));
        }
        match serde_json::from_str::<Line>(&line) {
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
                Err(_) => {
                    return Err(bad(format!("line {n} is not a valid record: {record_err}")));
                }
            },
        }
    }
    let Some(trailer) = trailer else {
        return Err(bad(format!(
            "the backup is truncated: no trailer after {} records",
            records.len()
        )));
    };
    if trailer.records != records.len() as u64 {
        return Err(bad(format!(
            "the trailer counts {} records, the file has {}",
            trailer.records,
            records.len()
        )));
    }
    if trailer.sha256 != hex::encode(hash.finalize()) {
        return Err(bad(
            "the checksum does not match: the file was changed or damaged".into(),
        ));
    }
    Ok(BackupFile {
        lines: records,
        unreadable: trailer.unreadable,
    })
}

/// A backup file read, checked and validated: ready to import.
#[derive(Debug)]
pub struct Loaded {
    pub set: ImportSet,
    pub records: u64,
    /// How many records of its source the backup says it lacks.
    pub lacking: u64,
}

/// Reads `path` and validates every record ([`Line::into_record`],
/// [`ImportSet::validate`]) without touching any store: a file that is
/// missing, damaged or invalid fails here, before a target is opened.
pub fn load(path: &Path, progress: Progress<'_>) -> Result<Loaded, BackupError> {
    let file = read(path, progress).map_err(|e| BackupError::Unreadable(Box::new(e)))?;
    let total = file.lines.len() as u64;
    let invalid = |e: InvalidRecord| BackupError::Invalid {
        path: path.to_owned(),
        line: e.record + 1,
        reason: e.reason,
    };
    let records = file
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            line.into_record().map_err(|reason| InvalidRecord {
                record: i + 1,
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let set = ImportSet::validate(records).map_err(invalid)?;
    progress("checked", total, total);
    Ok(Loaded {
        set,
        records: total,
        lacking: file.unreadable,
    })
}

/// Imports what [`load`] read into `store` in one transaction that reads
/// the records back and compares them before it commits.
pub async fn import(
    store: &dyn Store,
    loaded: Loaded,
    progress: Progress<'_>,
) -> Result<RestoreReport, BackupError> {
    let total = loaded.records;
    let written = store.import(loaded.set).await.map_err(|e| match e {
        StorageError::AlreadyExists(_) => BackupError::TargetNotEmpty,
        e => BackupError::Import(e),
    })?;
    progress("imported and verified", written, total);
    Ok(RestoreReport {
        records: total,
        lacking: loaded.lacking,
    })
}

/// Restores `path` into `store`, which must be empty: [`load`], then
/// [`import`]. On any error nothing was written.
pub async fn restore(
    store: &dyn Store,
    path: &Path,
    progress: Progress<'_>,
) -> Result<RestoreReport, BackupError> {
    let loaded = load(path, progress)?;
    import(store, loaded, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PrincipalName;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/backup_v1.jsonl");

    fn golden_records() -> Vec<Record> {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let alice = PrincipalName::parse("alice").unwrap();
        let task = crate::storage::codec::golden_task();
        vec![
            Record::Token(crate::storage::TokenInfo {
                principal: alice.clone(),
                name: crate::domain::TokenName::default_name(),
                digest: [0xcd; 32],
                created_at: at("2026-01-02T03:04:05.123456Z"),
                expires_at: None,
                last_used_at: None,
                replaced_at: None,
            }),
            Record::Task { owner: alice, task },
        ]
    }

    /// Backups are read by later releases: a change to the API's bodies or
    /// the stores' records must not change this file format.
    #[test]
    fn the_backup_format_is_pinned() {
        let mut out = Vec::new();
        write_to(
            &mut out,
            &golden_records(),
            0,
            "2026-01-03T00:00:00.000000Z",
            &mut |_, _, _| {},
        )
        .unwrap();
        let golden = std::fs::read(GOLDEN).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(golden).unwrap(),
            "backup format v1 changed"
        );
        let back = read(Path::new(GOLDEN), &mut |_, _, _| {}).unwrap();
        let records: Vec<Record> = back
            .lines
            .into_iter()
            .map(|l| l.into_record().unwrap())
            .collect();
        assert_eq!(records, golden_records());
        assert_eq!(back.unreadable, 0);
    }
}
