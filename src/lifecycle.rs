//! Process lifecycle: readiness, drain and graceful stop.
//!
//! Traefik's swarm provider polls, so for a few seconds after Swarm starts to
//! stop a task, Traefik still sends it requests. The service therefore does not
//! stop listening at SIGTERM: it reports not-ready at once (so health checks
//! and the next poll take it out of rotation), keeps serving for a drain delay
//! longer than that window, and only then shuts down gracefully.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Shared readiness state.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    draining: Arc<AtomicBool>,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// How the server stops once asked to.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownPolicy {
    /// Keep serving (not ready) this long after the stop signal.
    pub drain: Duration,
    /// Then wait at most this long for in-flight requests.
    pub timeout: Duration,
}

impl Default for ShutdownPolicy {
    fn default() -> Self {
        Self {
            drain: Duration::ZERO,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT. A second one ends the process at
/// once (exit code 130), for an operator who does not want to wait for the drain.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it before announcing readiness, or an early SIGTERM
/// would still kill the process with the default disposition.
pub fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    let mut signals = Signals::install();
    async move {
        signals.recv().await;
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("second stop signal: exiting now");
            std::process::exit(130);
        });
    }
}

struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
                int: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
