//! The per-connection watchdog: where a connection is in its request cycle
//! ([`Progress`]), updated by its IO, its service and its response body, so
//! that [`super::connection`] can close connections that send a request head
//! too slowly or stop reading their response.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body::Frame;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{Closed, ConnLimits};

/// Where a connection is in its request cycle, for the watchdog. Updated by
/// the connection's IO, its service and its response body, all polled by the
/// connection's one task; atomics only because the future must be `Send`.
pub(super) struct Progress {
    started: Instant,
    phase: AtomicU8,
    /// Milliseconds since `started` when the current phase began, or (while
    /// responding) when a byte was last written.
    since_ms: AtomicU64,
    changed: Notify,
}

/// Waiting for a request: no deadline of ours (hyper's idle timer runs).
const WAITING: u8 = 0;
/// A request head has begun: it must be complete within the header timeout.
const HEAD: u8 = 1;
/// The handler runs: the request timeout bounds it.
const HANDLING: u8 = 2;
/// The response is being written: the client must keep reading.
const RESPONDING: u8 = 3;

impl Progress {
    pub(super) fn new() -> Self {
        // The first request's head is due within the header timeout of the
        // accept: a client opens a connection to send a request.
        Self {
            started: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Moves to `phase`. Only phases with a deadline wake the watchdog, which
    /// may then have to wake sooner; leaving one needs no wake-up, a watchdog
    /// that wakes at a deadline no longer due just looks again.
    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
        if matches!(phase, HEAD | RESPONDING) {
            self.changed.notify_one();
        }
    }

    fn read_some(&self) {
        if self.phase.load(Ordering::Relaxed) == WAITING {
            self.enter(HEAD);
        }
    }

    fn wrote_some(&self) {
        if self.phase.load(Ordering::Relaxed) == RESPONDING {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Resolves when the connection is past a deadline of its phase.
    pub(super) async fn overdue(&self, limits: &ConnLimits) -> Closed {
        loop {
            let (limit, reason) = match self.phase.load(Ordering::Relaxed) {
                HEAD => (limits.header_read_timeout, Closed::HeaderTimeout),
                RESPONDING => (limits.idle_timeout, Closed::StalledResponse),
                _ => {
                    self.changed.notified().await;
                    continue;
                }
            };
            let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
            let deadline = self.started + since + limit;
            if deadline <= Instant::now() {
                return reason;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// The TCP stream, reporting bytes read and written to [`Progress`].
pub(super) struct WatchedIo {
    pub(super) inner: TcpStream,
    pub(super) progress: Arc<Progress>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress.read_some();
        }
        r
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.wrote_some();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.wrote_some();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: adds the peer address and
/// reports the request cycle to [`Progress`].
pub(super) struct ConnService {
    pub(super) app: Router,
    pub(super) peer: SocketAddr,
    pub(super) progress: Arc<Progress>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<WatchedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.progress.enter(HANDLING);
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let progress = self.progress.clone();
        let handled = self.app.clone().oneshot(req);
        Box::pin(async move {
            let resp = match handled.await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            progress.enter(RESPONDING);
            Ok(resp.map(|body| WatchedBody {
                body,
                _done: ResponseDone(progress),
            }))
        })
    }
}

/// A response body that returns its connection to waiting once hyper has
/// written it all (or given up on it) and drops it.
pub(super) struct WatchedBody {
    body: Body,
    _done: ResponseDone,
}

struct ResponseDone(Arc<Progress>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.enter(WAITING);
    }
}

impl http_body::Body for WatchedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
