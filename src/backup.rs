//! Backups: a JSON Lines file with a header, one record per line, and a
//! trailer holding the record count and a SHA-256 over the record lines, so a
//! truncated or edited file is detected before anything is restored.
//!
//! The snapshot comes from one read transaction (redb) or one repeatable-read
//! transaction (PostgreSQL), so it is consistent while the server keeps writing.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::{BackupRecord, Store};

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
}

/// Progress reports for long operations: `(done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Writes every record of `store` to `out` (via a temporary file renamed into
/// place, so `out` is never half-written), then reads it back to verify.
pub async fn backup(store: &dyn Store, out: &Path, progress: Progress<'_>) -> anyhow::Result<u64> {
    let records = store.export().await.context("reading the snapshot")?;
    let total = records.len() as u64;
    let tmp = out.with_extension("partial");
    {
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
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
        };
        serde_json::to_writer(&mut w, &trailer)?;
        w.write_all(b"\n")?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().context("flushing the backup to disk")?;
    }
    progress("written", total, total);
    let back = read(&tmp, &mut |_, _, _| {}).context("verifying the backup just written")?;
    ensure!(
        back.len() as u64 == total,
        "verification read {} records, wrote {total}",
        back.len()
    );
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot move the backup to {}", out.display()))?;
    Ok(total)
}

/// Reads and checks a backup file: format, version, record count and checksum.
pub fn read(path: &Path, progress: Progress<'_>) -> anyhow::Result<Vec<BackupRecord>> {
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
    Ok(records)
}

/// Restores `path` into `store`, which must be empty, and verifies by reading
/// everything back.
pub async fn restore(
    store: &dyn Store,
    path: &Path,
    progress: Progress<'_>,
) -> anyhow::Result<u64> {
    let records = read(path, progress)?;
    let total = records.len() as u64;
    progress("checked", total, total);
    let expected = digest_of(&records);
    let written = store.import(records).await.map_err(|e| match e {
        crate::storage::StorageError::AlreadyExists(_) => {
            anyhow::anyhow!("the target holds data already; restore only into an empty data directory or database")
        }
        e => e.into(),
    })?;
    progress("imported", written, total);
    let back = store
        .export()
        .await
        .context("reading back the restored data")?;
    ensure!(
        digest_of(&back) == expected,
        "verification failed: the restored data differs from the backup"
    );
    progress("verified", total, total);
    Ok(total)
}

/// An order-independent digest of records.
fn digest_of(records: &[BackupRecord]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = records
        .iter()
        .map(|r| serde_json::to_vec(r).expect("records serialise"))
        .collect();
    lines.sort();
    let mut h = Sha256::new();
    for l in lines {
        h.update(&l);
        h.update(b"\n");
    }
    h.finalize().to_vec()
}
