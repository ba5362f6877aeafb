//! Logging and metrics set-up, built from parts so tests can leave logging off.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Keeps the log writer thread running; dropping it writes out every line
/// still queued and stops the thread. Hold it until the process is done.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as
/// `info` or `devops_api=debug,tower_http=info`.
///
/// Lines are formatted on the calling thread and written to standard error by
/// a dedicated thread, so a request never waits for a `write` system call.
/// The queue is bounded and blocks when full instead of dropping lines: every
/// request keeps its log line. The pretty format colours its output only when
/// standard error is a terminal.
pub fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("invalid log level `{level}`: {e}"))?;
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(false)
        // About 2 MiB of queued lines at most (the default, 128 000 lines, is
        // ~30 MiB when standard error is slow to drain); beyond it the caller
        // waits, as it did for a direct write.
        .buffered_lines_limit(8_192)
        .thread_name("log-writer")
        // The worker flushes whenever its queue runs empty.
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let ansi = std::io::stderr().is_terminal();
    tracing::subscriber::set_global_default(subscriber(filter, format, ansi, writer))
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))?;
    Ok(LogGuard { _worker: worker })
}

/// The subscriber `init_logging` installs, writing to `writer` (tests pass a
/// buffer). `ansi`: colour the pretty format (never the JSON one).
///
/// Both formats carry the fields of every span an event happens in: the
/// pretty one as a `span{field=value}:` prefix, the JSON one as top-level
/// keys beside the event's own (the event's win on a clash). So every line
/// logged while a request is served carries the request span's `request_id`
/// (see `http::middleware::observe`).
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Pretty => Box::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_span_events(FmtSpan::NONE)
                .with_ansi(ansi)
                .with_writer(writer)
                .finish(),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::registry()
                .with(filter)
                .with(crate::jsonlog::JsonLines::new(writer)),
        ),
    }
}

/// Installs the process-wide Prometheus recorder and returns its handle:
/// describes every metric of [`crate::metrics_catalog`] (so each is exported
/// with its HELP line), registers the zero series, sets `build_info`, and
/// starts the upkeep thread. The binary calls it once at start-up; tests that
/// read metrics install it once per test binary. Fails when a recorder is
/// already installed.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    const LATENCY: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)?
        .set_buckets_for_metric(
            Matcher::Full("store_commit_batch_size".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        )?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    crate::metrics_catalog::describe();
    crate::metrics_catalog::register_zeroes();
    metrics::gauge!(
        "build_info",
        "version" => crate::build_info::VERSION,
        "git_commit" => crate::build_info::commit(),
        "dirty" => if crate::build_info::dirty() { "true" } else { "false" },
    )
    .set(1.0);
    // Histograms buffer every sample until upkeep folds them into their
    // buckets; without it memory grows with traffic between scrapes.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })?;
    Ok(handle)
}
