//! Serving a router on a bound listener until a shutdown future resolves,
//! with the drain described in [`crate::lifecycle`].

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

use crate::lifecycle::{Lifecycle, ShutdownPolicy};

/// Serves `app` on `listener` until `shutdown` resolves; then reports not
/// ready, keeps serving for `policy.drain`, stops accepting, and waits up to
/// `policy.timeout` for requests in flight. Returns once stopped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    lifecycle: Lifecycle,
    policy: ShutdownPolicy,
) -> std::io::Result<()> {
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        shutdown.await;
        lifecycle.start_draining();
        tracing::info!(
            drain_seconds = policy.drain.as_secs_f64(),
            "stop requested: not ready, draining"
        );
        tokio::time::sleep(policy.drain).await;
        tracing::info!("drain over: no longer accepting connections");
        let _ = drained_tx.send(());
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let deadline = async move {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(policy.timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server.into_future() => r,
        () = deadline => {
            tracing::warn!(timeout_seconds = policy.timeout.as_secs_f64(), "requests still in flight at the shutdown deadline; stopping anyway");
            Ok(())
        }
    }
}
