//! The application builder: the wiring `serve` runs and the tests call, so
//! tests exercise the real assembly of state, router, listener and limits.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::auth::StaticTokens;
use crate::http::{self, ApiConfig, AppState};
use crate::lifecycle::ShutdownPolicy;
use crate::server::{self, ConnLimits};
use crate::storage::Store;

/// Everything the application is built from, typed and validated (the
/// binary builds it from the command line once).
pub struct Settings {
    pub api: ApiConfig,
    pub static_tokens: StaticTokens,
    /// The handle of the recorder the process installed
    /// ([`crate::telemetry::install_metrics`]).
    pub metrics: PrometheusHandle,
    /// Where to listen; port 0 picks a free port (see [`Application::addr`]).
    pub listen: SocketAddr,
    pub limits: ConnLimits,
    pub policy: ShutdownPolicy,
}

impl Settings {
    /// `api` on 127.0.0.1, a free port, with the default connection limits
    /// and shutdown policy.
    pub fn local(api: ApiConfig, static_tokens: StaticTokens, metrics: PrometheusHandle) -> Self {
        Self {
            api,
            static_tokens,
            metrics,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            limits: ConnLimits::default(),
            policy: ShutdownPolicy::default(),
        }
    }
}

/// The API on its bound listener, not yet serving.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    limits: ConnLimits,
    policy: ShutdownPolicy,
}

impl Application {
    /// The state on `store`, and the listener bound: once this returns,
    /// requests can be served.
    pub async fn build(settings: Settings, store: Arc<dyn Store>) -> io::Result<Self> {
        let state = AppState::new(
            store,
            settings.api,
            settings.static_tokens,
            settings.metrics,
        );
        let listener = TcpListener::bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state,
            limits: settings.limits,
            policy: settings.policy,
        })
    }

    /// The bound address (the port chosen when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state: its lifecycle, store and metrics handle.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains and stops as
    /// [`server::serve_with`] describes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let lifecycle = self.state.lifecycle.clone();
        let app = http::app(self.state);
        server::serve_with(
            self.listener,
            app,
            shutdown,
            lifecycle,
            self.policy,
            self.limits,
        )
        .await
    }
}
