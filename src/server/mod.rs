//! Serving a router on a bound listener until a shutdown future resolves,
//! with the drain described in [`crate::lifecycle`] and the connection limits
//! of [`ConnLimits`].
//!
//! The accept loop is ours rather than `axum::serve`'s because that has no
//! knobs for slow clients: here every connection holds a permit of a
//! semaphore sized below the open-file limit, and a per-connection watchdog
//! closes connections that send a request head too slowly, sit idle, or stop
//! reading their response.
//!
//! When every permit is taken the loop stops accepting until a connection
//! closes, instead of accepting and closing at once: waiting connections stay
//! in the kernel's listen queue and are served as soon as a slot frees, which
//! the timeouts bound; accepting only to close would turn a short peak into
//! failed requests for well-behaved clients and spend a file descriptor per
//! refusal, the very resource the cap protects.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::lifecycle::{Lifecycle, ShutdownPolicy};

mod watchdog;

use self::watchdog::{ConnService, Progress, WatchedIo};

/// Limits on connections, so slow or idle clients cannot hold the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once; beyond it the server stops accepting.
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive completely
    /// within this time of its first byte, or of the connection's accept for
    /// the first request.
    pub header_read_timeout: Duration,
    /// A kept-alive connection may wait this long for its next request; a
    /// response whose client reads nothing for this long is abandoned. Keep it
    /// above the proxy's idle-connection timeout (Traefik: 90 s), so the proxy,
    /// not the server, closes a pooled connection.
    pub idle_timeout: Duration,
}

/// File descriptors kept free for everything but client connections:
/// standard streams, listeners, the database file, the runtime's own
/// descriptors, files opened at start-up. PostgreSQL connections and the
/// metrics listener's connections come on top (see [`ConnLimits::derive`]).
pub const RESERVED_FDS: u64 = 64;

/// Most connections by default however high the open-file limit. Measured
/// here, an open connection costs 12–15 KiB of memory idle or with a short
/// partial head, 34 KiB with a head just under [`MAX_HEAD_BYTES`]: 4096
/// connections take about 60 MiB, 140 MiB at worst, within the stack's 256 MiB.
pub const MAX_CONNECTIONS_CEILING: usize = 4_096;

/// Largest request head (request line, so the URI, and headers) in bytes;
/// larger ones are answered 431 and the connection is closed. It bounds the
/// memory a connection can make the server buffer before its head is
/// complete (hyper's own default is about 400 KiB). hyper's limit of 100
/// header lines stays as it is.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for ConnLimits {
    /// The defaults for this process's open-file limit, or a small fixed cap
    /// when the limit cannot be read or leaves no room.
    fn default() -> Self {
        Self::derive(open_file_limit(), 0).unwrap_or(Self {
            max_connections: 64,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        })
    }
}

impl ConnLimits {
    /// The default timeouts and a connection cap of `open_files` minus
    /// [`RESERVED_FDS`] and `extra_fds`, at most [`MAX_CONNECTIONS_CEILING`].
    /// `None` for `open_files` means no limit. Fails when nothing is left.
    pub fn derive(open_files: Option<u64>, extra_fds: u64) -> Result<Self, String> {
        let reserved = RESERVED_FDS + extra_fds;
        let max_connections = match open_files {
            None => MAX_CONNECTIONS_CEILING,
            Some(n) if n > reserved => usize::try_from(n - reserved)
                .map_or(MAX_CONNECTIONS_CEILING, |n| n.min(MAX_CONNECTIONS_CEILING)),
            Some(n) => {
                return Err(format!(
                    "the open-file limit ({n}) leaves no room for connections: {reserved} descriptors are reserved; raise it (ulimit -n, or `ulimits: nofile` in the stack)"
                ));
            }
        };
        Ok(Self {
            max_connections,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        })
    }

    /// The largest cap `open_files` allows with `extra_fds` more reserved.
    pub fn most_connections(open_files: Option<u64>, extra_fds: u64) -> usize {
        let reserved = RESERVED_FDS + extra_fds;
        open_files.map_or(usize::MAX, |n| {
            usize::try_from(n.saturating_sub(reserved)).unwrap_or(usize::MAX)
        })
    }
}

/// The soft open-file limit (`RLIMIT_NOFILE`), `None` if unlimited or unknown.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        // `rlim_t` is `u64` on Linux, narrower on some other systems.
        #[allow(clippy::unnecessary_cast)]
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// Serves `app` on `listener` with [`ConnLimits::default`]; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    lifecycle: Lifecycle,
    policy: ShutdownPolicy,
) -> io::Result<()> {
    serve_with(
        listener,
        app,
        shutdown,
        lifecycle,
        policy,
        ConnLimits::default(),
    )
    .await
}

/// Serves `app` on `listener` until `shutdown` resolves; then reports not
/// ready, keeps serving for `policy.drain`, stops accepting, and waits up to
/// `policy.timeout` for requests in flight. Returns once stopped.
///
/// Each request carries its peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    lifecycle: Lifecycle,
    policy: ShutdownPolicy,
    limits: ConnLimits,
) -> io::Result<()> {
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (close_tx, close_rx) = watch::channel(());
    let drained = async move {
        shutdown.await;
        lifecycle.start_draining();
        tracing::info!(
            drain_seconds = policy.drain.as_secs_f64(),
            "stop requested: not ready, draining"
        );
        tokio::time::sleep(policy.drain).await;
        tracing::info!("drain over: no longer accepting connections");
    };
    tokio::pin!(drained);
    let mut backoff = Backoff::default();
    // The cap is reported once per episode in the metric, and at most every
    // ten seconds in the log, however often the count touches it.
    let mut at_cap = false;
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                at_cap = false;
                p
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    metrics::counter!("http_connection_limit_reached_total").increment(1);
                    if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(10)) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            max_connections = max,
                            "connection limit reached: not accepting until a connection closes"
                        );
                    }
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    () = &mut drained => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    drop(permit);
                    tokio::select! {
                        () = backoff.wait(e) => continue,
                        () = &mut drained => break,
                    }
                }
            },
            () = &mut drained => break,
        };
        backoff.reset();
        tokio::spawn(connection(
            stream,
            peer,
            permit,
            app.clone(),
            close_rx.clone(),
            limits,
        ));
    }
    drop(listener);
    drop(close_rx);
    // Kept-alive connections close now; those with a request finish it first.
    let _ = close_tx.send(());
    match tokio::time::timeout(policy.timeout, slots.acquire_many(max)).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            timeout_seconds = policy.timeout.as_secs_f64(),
            "requests still in flight at the shutdown deadline; stopping anyway"
        ),
    }
    Ok(())
}

/// Waits after a failed `accept`. Errors about one connection (it was reset
/// before we took it) cost nothing; the others, such as EMFILE when the
/// process is out of descriptors, fail again at once until something closes,
/// so the loop sleeps 5 ms, then twice as long each time, up to 1 s.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    async fn wait(&mut self, e: io::Error) {
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return;
        }
        let delay = self.delay.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.delay = Some(delay);
        metrics::counter!("http_accept_errors_total").increment(1);
        tracing::error!(error = %e, retry_ms = delay.as_millis() as u64, "accept failed");
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        self.delay = None;
    }
}

/// Why the server closed a connection (a label of `http_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it, or asked to (`Connection: close`), or shutdown.
    Done,
    /// hyper's header-read timer: no request within the idle timeout.
    IdleTimeout,
    HeaderTimeout,
    StalledResponse,
    Error,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::Done => "done",
            Closed::IdleTimeout => "idle_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::StalledResponse => "stalled_response",
            Closed::Error => "error",
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    app: Router,
    mut close: watch::Receiver<()>,
    limits: ConnLimits,
) {
    let _permit = permit;
    let open = metrics::gauge!("http_connections_open");
    open.increment(1.0);
    let progress = Arc::new(Progress::new());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        progress: progress.clone(),
    });
    let service = ConnService {
        app,
        peer,
        progress: progress.clone(),
    };
    // hyper's header-read timer runs from the moment a connection waits for
    // a request, so it is the idle timeout; the tighter deadline once a head
    // has begun is the watchdog's.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    let closed = loop {
        tokio::select! {
            r = conn.as_mut() => break match r {
                Ok(()) => Closed::Done,
                Err(e) if e.is_timeout() => Closed::IdleTimeout,
                Err(e) if e.is_incomplete_message() || e.is_canceled() => Closed::Done,
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "connection error");
                    Closed::Error
                }
            },
            reason = progress.overdue(&limits) => break reason,
            _ = close.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    metrics::counter!("http_connections_closed_total", "reason" => closed.label()).increment(1);
    open.decrement(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_below_the_open_file_limit() {
        let l = ConnLimits::derive(Some(256), 0).unwrap();
        assert_eq!(l.max_connections, 256 - 64);
        assert_eq!(
            ConnLimits::derive(Some(256), 10).unwrap().max_connections,
            182
        );
        assert_eq!(
            ConnLimits::derive(Some(1 << 20), 0)
                .unwrap()
                .max_connections,
            MAX_CONNECTIONS_CEILING
        );
        assert_eq!(
            ConnLimits::derive(None, 0).unwrap().max_connections,
            MAX_CONNECTIONS_CEILING
        );
        let err = ConnLimits::derive(Some(64), 0).unwrap_err();
        assert!(err.contains("open-file limit (64)"), "{err}");
        assert_eq!(ConnLimits::most_connections(Some(256), 6), 186);
    }

    #[test]
    fn the_process_limit_is_read() {
        let n = open_file_limit().expect("a limit is set in tests");
        assert!(n >= 64, "{n}");
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_up_to_a_second() {
        let mut b = Backoff::default();
        let t = Instant::now();
        b.wait(io::Error::from(io::ErrorKind::ConnectionReset))
            .await;
        assert_eq!(
            t.elapsed(),
            Duration::ZERO,
            "a reset connection costs no wait"
        );
        let mut waits = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            b.wait(io::Error::from_raw_os_error(24)).await; // EMFILE
            waits.push(t.elapsed().as_millis());
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        let t = Instant::now();
        b.wait(io::Error::from_raw_os_error(24)).await;
        assert_eq!(t.elapsed().as_millis(), 5);
    }
}
