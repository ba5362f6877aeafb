//! `spawn_app()`: the real application on port 0 with a fresh data directory,
//! and one helper method per endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use devops_api::app::{Application, Settings};
use devops_api::auth::{self, StaticTokens};
use devops_api::http::ApiConfig;
use devops_api::lifecycle::Lifecycle;
use devops_api::storage::{RedbConfig, RedbStore, Store};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::Value;
use tokio::sync::oneshot;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    /// From the tokens file.
    pub alice: String,
    /// Stored in the database, as `devops-api token create` does.
    pub bob: String,
    pub store: Arc<dyn Store>,
    pub lifecycle: Lifecycle,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// The principal `name`.
pub fn p(name: &str) -> devops_api::domain::PrincipalName {
    devops_api::domain::PrincipalName::parse(name).expect("a principal name")
}

/// The recorder of this test binary, installed on first use: metrics are
/// process-wide, so every test app renders the same one.
pub fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| devops_api::telemetry::install_metrics().expect("install the recorder"))
        .clone()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(ApiConfig::default()).await
}

pub async fn spawn_app_with(config: ApiConfig) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&RedbConfig::new(dir.path())).expect("open store"));
    let alice = auth::generate_token();
    let bob = auth::generate_token();
    store
        .create_token(devops_api::storage::NewToken::default_for(
            p("bob"),
            auth::digest(&bob),
        ))
        .await
        .expect("token");
    let tokens = StaticTokens::parse(&format!("alice:{alice}\n")).expect("tokens");
    let application = Application::build(Settings::local(config, tokens, metrics()), store.clone())
        .await
        .expect("build the app");
    let addr = application.addr();
    let lifecycle = application.state().lifecycle.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        alice,
        bob,
        store,
        lifecycle,
        stop: Some(stop),
        server: Some(server),
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET path` without a token.
    pub async fn get_public(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    pub async fn create(&self, token: &str, body: Value) -> Response {
        self.req(Method::POST, "/v1/tasks", token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a task and returns its JSON (asserting 201).
    pub async fn create_ok(&self, token: &str, body: Value) -> Value {
        let r = self.create(token, body).await;
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    pub async fn get(&self, token: &str, id: &str) -> Response {
        self.req(Method::GET, &format!("/v1/tasks/{id}"), token)
            .send()
            .await
            .unwrap()
    }

    pub async fn list(&self, token: &str, query: &str) -> Response {
        self.req(Method::GET, &format!("/v1/tasks{query}"), token)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, token: &str, id: &str, body: Value) -> Response {
        self.req(Method::PATCH, &format!("/v1/tasks/{id}"), token)
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, token: &str, id: &str, body: Value) -> Response {
        self.req(Method::PUT, &format!("/v1/tasks/{id}"), token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, token: &str, id: &str) -> Response {
        self.req(Method::DELETE, &format!("/v1/tasks/{id}"), token)
            .send()
            .await
            .unwrap()
    }

    /// Stops the server the way SIGTERM does, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self.store.close().await;
    }
}

/// Asserts a problem response and returns its body.
pub async fn problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "problem content type"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status);
    for key in ["type", "title", "detail"] {
        assert!(body[key].is_string(), "problem has {key}: {body}");
    }
    body
}

/// The fields named in a validation problem's `errors`.
pub fn error_fields(body: &Value) -> Vec<String> {
    let mut f: Vec<String> = body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    f.sort();
    f
}
