//! The metric catalogue: every metric this process exports, with its type,
//! unit and `# HELP` text, in one place. [`describe`] registers the texts with
//! the recorder; [`register_zeroes`] creates the counters that have no sample
//! yet at 0, so a rate over them is defined from the first scrape and an
//! alert on them never waits for a series to appear. Values read at scrape
//! time (process figures, readiness, stored tasks, file sizes) are refreshed
//! by [`collect_process`], [`crate::storage::Store::publish_metrics`] and the
//! `/metrics` handler.
//!
//! Naming follows Prometheus conventions (`promtool check metrics` is clean):
//! base units in the name (`_seconds`, `_bytes`), `_total` on counters and
//! only on counters.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Stored tasks of every owner: a gauge, so no `_total` (which marks counters).
pub const TASKS_STORED: &str = "tasks_stored";
/// 1 while the process is draining after a stop signal, else 0.
pub const SERVER_DRAINING: &str = "server_draining";
/// 1 when `/ready` would answer 200 (not draining and storage answers).
pub const SERVER_READY: &str = "server_ready";

/// Every counter label value known in advance, created at 0.
const CLOSE_REASONS: &[&str] = &[
    "done",
    "idle_timeout",
    "header_timeout",
    "stalled_response",
    "error",
];
const RECORD_KINDS: &[&str] = &["task", "token", "idempotency"];

/// Registers the HELP text and unit of every metric of the process.
pub fn describe() {
    process();
    // HTTP.
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route template (or `unmatched`) and status class."
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time from receiving a request to its response head, by method, route template and status class."
    );
    describe_gauge!("http_requests_in_flight", "HTTP requests being served now.");
    describe_gauge!(
        "http_connections_open",
        "Client connections open now (the listener stops accepting at --max-connections)."
    );
    describe_counter!(
        "http_connections_closed_total",
        "Client connections closed, by reason (done, idle_timeout, header_timeout, stalled_response, error)."
    );
    describe_counter!(
        "http_connection_limit_reached_total",
        "Times the connection cap was reached and accepting paused."
    );
    describe_counter!(
        "http_accept_errors_total",
        "Failed accept() calls other than a reset connection (e.g. out of file descriptors)."
    );

    // Storage.
    describe_histogram!(
        "store_commit_batch_size",
        Unit::Count,
        "Writes committed together in one durable commit (group commit: every write waiting when the writer starts a commit joins it)."
    );
    describe_histogram!(
        "store_commit_seconds",
        Unit::Seconds,
        "Duration of one group commit: applying its writes and the durable flush."
    );
    describe_counter!(
        "store_fatal_errors_total",
        "Fatal storage errors (I/O, full disk): the store was not ready and reopened the database."
    );
    describe_counter!(
        "store_corrupt_records_total",
        "Reads that met a stored record that cannot be decoded, by kind (task, token, idempotency)."
    );
    describe_gauge!(
        "store_reads_in_flight",
        "Read transactions open now (requests, backups); each pins the snapshot it reads."
    );
    describe_gauge!(
        "store_file_size_bytes",
        Unit::Bytes,
        "Size of the embedded database file."
    );
    describe_gauge!(
        "store_filesystem_avail_bytes",
        Unit::Bytes,
        "Bytes available to this process on the file system of the data directory."
    );
    describe_gauge!(
        "store_filesystem_size_bytes",
        Unit::Bytes,
        "Size of the file system of the data directory."
    );
    describe_gauge!(
        "store_pool_connections",
        "PostgreSQL connections of the pool, by state (idle, in_use)."
    );
    describe_gauge!(
        "store_pool_waiting",
        "Requests waiting for a PostgreSQL connection from the pool."
    );

    // Process and service.
    describe_gauge!(
        TASKS_STORED,
        "Tasks stored, of every owner (read from the store at scrape time)."
    );
    describe_gauge!(
        SERVER_DRAINING,
        "1 while the process drains after a stop signal (not ready, still serving), else 0."
    );
    describe_gauge!(
        SERVER_READY,
        "1 when the readiness check passes (not draining and storage answers), else 0."
    );
    describe_gauge!(
        "build_info",
        "Always 1; the labels carry the version and git commit of the running binary."
    );
    describe_counter!(
        "store_index_verifications_total",
        "Verifications of the task index against the task records (after open, periodic in \
         multi-writer mode, on request), by outcome (ok, error)."
    );
    describe_counter!(
        "store_index_repaired_entries_total",
        "Task index entries repaired (added or removed): tasks written without their entries, \
         by a process of an earlier release sharing the file."
    );
    describe_counter!(
        "backups_total",
        "Online backups served through the control socket, by outcome (ok, error)."
    );
}

/// Creates the counters whose label values are known at 0.
pub fn register_zeroes() {
    for name in [
        "http_connection_limit_reached_total",
        "http_accept_errors_total",
        "store_fatal_errors_total",
        "store_index_repaired_entries_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in CLOSE_REASONS {
        metrics::counter!("http_connections_closed_total", "reason" => *reason).increment(0);
    }
    for kind in RECORD_KINDS {
        metrics::counter!("store_corrupt_records_total", "kind" => *kind).increment(0);
    }
    for outcome in ["ok", "error"] {
        metrics::counter!("backups_total", "outcome" => outcome).increment(0);
        metrics::counter!("store_index_verifications_total", "outcome" => outcome).increment(0);
    }
    metrics::gauge!(SERVER_DRAINING).set(0.0);
}

/// The process figures from `/proc` (CPU time, memory, file descriptors and
/// their limit, threads, start time), described once.
fn process() -> &'static metrics_process::Collector {
    static PROCESS: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    PROCESS.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
}

/// Refreshes the process metrics; called at each scrape.
pub fn collect_process() {
    process().collect();
}

/// `(available, size)` in bytes of the file system holding `path`.
pub fn filesystem_space(path: &std::path::Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: `statvfs` fills the zeroed struct through a valid pointer
        // from a NUL-terminated path.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        // Field widths differ between systems.
        #[allow(clippy::unnecessary_cast)]
        let frsize = s.f_frsize as u64;
        #[allow(clippy::unnecessary_cast)]
        Some((
            (s.f_bavail as u64).saturating_mul(frsize),
            (s.f_blocks as u64).saturating_mul(frsize),
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn filesystem_space_of_the_temp_dir() {
        let (avail, size) = super::filesystem_space(&std::env::temp_dir()).unwrap();
        assert!(size > 0 && avail <= size, "{avail} of {size}");
        assert!(super::filesystem_space(std::path::Path::new("/no/such/dir")).is_none());
    }
}
