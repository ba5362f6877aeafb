//! Log lines of a request: all of them carry its request id (cause lines
//! too), the request line names the principal, the client address and, for
//! unmatched routes, the path; draining is not a storage problem.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devops_api::http::{ApiConfig, TrustedProxies};
use devops_api::telemetry::{LogFormat, subscriber};
use serde_json::{Value, json};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::helpers::{spawn_app, spawn_app_with};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

impl Buf {
    /// Every JSON line logged so far.
    fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// Captures the JSON log of this (current-thread) test at `level`: the app
/// and the client run on the test's one thread.
fn capture(level: &str) -> (Buf, tracing::subscriber::DefaultGuard) {
    let buf = Buf::default();
    let sub = subscriber(EnvFilter::new(level), LogFormat::Json, false, buf.clone());
    (buf, tracing::subscriber::set_default(sub))
}

fn request_line(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|l| l["message"] == "request")
        .unwrap_or_else(|| panic!("no request line in {lines:#?}"))
}

#[tokio::test]
async fn every_line_of_a_request_carries_its_id_including_causes() {
    // At `warn` the request line is off; the cause line must still carry the id.
    for level in ["info", "warn"] {
        let app = spawn_app().await;
        let (buf, _guard) = capture(level);
        app.store.close().await;
        let r = app
            .create(&app.alice, json!({"title": "after close"}))
            .await;
        assert_eq!(r.status(), 503);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let lines = buf.lines();
        let cause = lines
            .iter()
            .find(|l| l["message"] == "storage unavailable")
            .unwrap_or_else(|| panic!("no cause line at {level}: {lines:#?}"));
        assert!(
            cause["cause"].as_str().unwrap().contains("closed"),
            "{cause}"
        );
        for line in &lines {
            assert_eq!(line["request_id"], id.as_str(), "{level}: {line}");
            assert_eq!(line["principal"], "alice", "{level}: {line}");
        }
    }
}

#[tokio::test]
async fn request_lines_name_principal_client_and_unmatched_path() {
    let app = spawn_app().await;
    let (buf, _guard) = capture("info");
    app.create_ok(&app.bob, json!({"title": "a"})).await;
    let lines = buf.lines();
    let line = request_line(&lines);
    assert_eq!(line["principal"], "bob");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["route"], "/v1/tasks");
    assert!(
        line.get("path").is_none(),
        "matched routes log the template only: {line}"
    );

    let (buf, _guard) = capture("info");
    let long = format!("/wp-admin/{}", "a".repeat(4_000));
    assert_eq!(app.get_public(&long).await.status(), 404);
    let lines = buf.lines();
    let line = request_line(&lines);
    assert_eq!(line["route"], "unmatched");
    let path = line["path"].as_str().unwrap();
    assert!(
        path.starts_with("/wp-admin/aaa") && path.ends_with("..."),
        "{path}"
    );
    assert!(path.len() <= 256 + 3, "{} bytes", path.len());
    assert!(
        line.get("principal").is_none(),
        "no token, no principal: {line}"
    );
}

#[tokio::test]
async fn the_client_is_the_forwarded_address_only_behind_a_trusted_proxy() {
    for (trusted, expected) in [(None, "127.0.0.1"), (Some("127.0.0.1/32"), "203.0.113.9")] {
        let mut config = ApiConfig::default();
        if let Some(t) = trusted {
            config.trusted_proxies = TrustedProxies::parse(&[t]).unwrap();
        }
        let app = spawn_app_with(config).await;
        let (buf, _guard) = capture("info");
        app.client
            .get(app.url("/health"))
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap();
        let lines = buf.lines();
        assert_eq!(
            request_line(&lines)["client"],
            expected,
            "trusted: {trusted:?}"
        );
    }
}

#[tokio::test]
async fn draining_is_not_reported_as_a_storage_problem() {
    let app = spawn_app().await;
    let (buf, _guard) = capture("devops_api=debug");
    app.lifecycle.start_draining();
    assert_eq!(app.get_public("/ready").await.status(), 503);
    // Requests in flight during the drain are served as usual.
    assert_eq!(
        app.create(&app.alice, json!({"title": "d"})).await.status(),
        201
    );
    for line in buf.lines() {
        let text = line.to_string();
        assert!(!text.contains("storage"), "{text}");
        assert_eq!(line["level"], "INFO", "{text}");
    }
}
