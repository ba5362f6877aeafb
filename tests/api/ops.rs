//! Health, readiness, metrics, request ids and the OpenAPI document.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn health_is_the_documented_body() {
    let app = spawn_app().await;
    let r = app.get_public("/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "healthy"})
    );
}

#[tokio::test]
async fn ready_fails_while_draining_and_when_storage_is_closed() {
    let app = spawn_app().await;
    assert_eq!(app.get_public("/ready").await.status(), 200);
    app.lifecycle.start_draining();
    let r = app.get_public("/ready").await;
    assert_eq!(
        r.headers()["connection"],
        "close",
        "draining responses close the connection"
    );
    problem(r, 503).await;
    // Liveness is unaffected.
    assert_eq!(app.get_public("/health").await.status(), 200);

    let app = crate::helpers::spawn_app().await;
    app.store.close().await;
    problem(app.get_public("/ready").await, 503).await;
    // Static tokens still authenticate; writes to the closed store are 503, not 500.
    problem(app.create(&app.alice, json!({"title": "late"})).await, 503).await;
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app.get_public("/health").await;
    assert_eq!(r.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn metrics_label_routes_by_template() {
    let app = spawn_app().await;
    let t = app.create_ok(&app.alice, json!({"title": "a"})).await;
    app.get(&app.alice, t["id"].as_str().unwrap()).await;
    app.get_public("/random/scan/path").await;
    let text = app.get_public("/metrics").await.text().await.unwrap();
    assert!(text.contains(r#"route="/v1/tasks/{id}""#), "{text}");
    assert!(text.contains(r#"route="unmatched""#));
    assert!(
        !text.contains("/random/scan/path"),
        "raw paths never become labels"
    );
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
        "tasks_stored",
        "build_info",
        "store_commit_seconds",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
}

/// `# TYPE` and `# HELP` of every metric family in `text`.
fn families(text: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                types.insert(name.to_owned(), kind.to_owned());
            }
            (Some("#"), Some("HELP"), Some(name), Some(_)) => {
                helps.insert(name.to_owned());
            }
            _ => {}
        }
    }
    (types, helps)
}

/// The value of the unlabelled sample `name`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_follow_prometheus_conventions() {
    let app = spawn_app().await;
    app.create_ok(&app.alice, json!({"title": "a"})).await;
    let text = app.get_public("/metrics").await.text().await.unwrap();
    let (types, helps) = families(&text);
    for (name, kind) in &types {
        assert!(helps.contains(name), "{name} has no HELP");
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}: `_total` is for counters only"
        );
    }
    // Process figures, the group commit, the file, readiness and drain.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "store_commit_batch_size",
        "store_commit_seconds",
        "store_reads_in_flight",
        "store_file_size_bytes",
        "store_filesystem_avail_bytes",
        "store_fatal_errors_total",
        "store_corrupt_records_total",
        "store_index_verifications_total",
        "store_index_repaired_entries_total",
        "server_ready",
        "server_draining",
        "tasks_stored",
    ] {
        assert!(types.contains_key(name), "missing {name}:\n{text}");
    }
    assert_eq!(sample(&text, "tasks_stored"), Some(1.0));
    assert_eq!(sample(&text, "server_ready"), Some(1.0));
    assert_eq!(sample(&text, "server_draining"), Some(0.0));
    assert!(sample(&text, "store_file_size_bytes").unwrap() > 0.0);
    assert!(sample(&text, "process_max_fds").unwrap() > 0.0);

    app.lifecycle.start_draining();
    let text = app.get_public("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&text, "server_ready"), Some(0.0));
    assert_eq!(sample(&text, "server_draining"), Some(1.0));
}

#[tokio::test]
async fn openapi_document_is_served_and_unchanged() {
    let app = spawn_app().await;
    let r = app.get_public("/openapi.json").await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<_> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    for p in [
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/v1/tasks",
        "/v1/tasks/{id}",
    ] {
        assert!(paths.contains(&p.to_owned()), "{p} documented");
    }
    let ops = &doc["paths"]["/v1/tasks/{id}"];
    for m in ["get", "put", "patch", "delete"] {
        assert!(ops[m].is_object(), "{m} documented");
        assert!(ops[m]["responses"]["401"].is_object() && ops[m]["responses"]["404"].is_object());
    }
    // Reviewed on change: `cargo insta review` after an intended change.
    insta::assert_snapshot!("openapi", devops_api::http::openapi::document_json());
}

#[tokio::test]
async fn shutdown_finishes_and_closes_the_listener() {
    let app = spawn_app().await;
    let url = app.url("/health");
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
    app.shutdown().await;
    let err = reqwest::Client::new().get(&url).send().await;
    assert!(err.is_err(), "nothing listens after shutdown");
}

/// A deterministic stream of pseudo-random numbers (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random HTTP method token of `len` characters.
    fn method(&mut self, len: usize) -> reqwest::Method {
        const TCHAR: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";
        let raw: Vec<u8> = (0..len)
            .map(|_| TCHAR[(self.next() % TCHAR.len() as u64) as usize])
            .collect();
        reqwest::Method::from_bytes(&raw).unwrap()
    }
}

/// The `http_requests_total` series and the method labels in a scrape.
fn request_series(text: &str) -> (usize, std::collections::BTreeSet<String>) {
    let re = regex_lite::Regex::new(r#"method="([^"]*)""#).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .collect();
    let methods = lines
        .iter()
        .filter_map(|l| re.captures(l).map(|c| c[1].to_owned()))
        .collect();
    (lines.len(), methods)
}

/// Any method string becomes a label value only if it is a standard method:
/// thousands of random (and 12 KiB) methods, unauthenticated, add one `other`
/// label per route and status class, and the scrape stays small. Methods of
/// 32 KiB exceed the request-head limit and are refused before routing (431,
/// or a reset if the server closes while the client still writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_methods_do_not_grow_the_metrics() {
    let app = spawn_app().await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut requests = Vec::new();
    for i in 0..3_000 {
        let len = match i % 100 {
            0 => 12 * 1024,
            1 => 32 * 1024,
            _ => 1 + (rng.next() % 24) as usize,
        };
        let path = ["/health", "/v1/tasks", "/no/such/path"][i % 3];
        requests.push((rng.method(len), path));
    }
    let mut statuses = std::collections::BTreeSet::new();
    for chunk in requests.chunks(50) {
        let mut sent = tokio::task::JoinSet::new();
        for (method, path) in chunk {
            let len = method.as_str().len();
            let request = app.client.request(method.clone(), app.url(path));
            sent.spawn(async move {
                match request.send().await {
                    Ok(r) => (len > 16 * 1024, Some(r.status().as_u16())),
                    Err(_) => (len > 16 * 1024, None),
                }
            });
        }
        while let Some(result) = sent.join_next().await {
            statuses.insert(result.unwrap());
        }
    }
    for (too_large, status) in &statuses {
        match status {
            Some(431) => assert!(too_large, "431 for a head within the limit"),
            Some(s) => assert!((400..500).contains(s) && !too_large, "{statuses:?}"),
            None => assert!(too_large, "a request within the limit failed"),
        }
    }
    let text = app.get_public("/metrics").await.text().await.unwrap();
    let (series, methods) = request_series(&text);
    let allowed = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "other",
    ];
    assert!(
        methods.iter().all(|m| allowed.contains(&m.as_str())),
        "method labels: {:?}",
        methods
            .iter()
            .map(|m| &m[..m.len().min(20)])
            .collect::<Vec<_>>()
    );
    assert!(series <= 20, "{series} http_requests_total series");
    let histograms = text
        .lines()
        .filter(|l| l.starts_with("http_request_duration_seconds_count{"))
        .count();
    assert!(histograms <= 20, "{histograms} histogram series");
    assert!(text.len() < 64 * 1024, "/metrics is {} bytes", text.len());
}

/// The documented rule for a client's request id: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
fn fits(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(b))
}

/// Whatever a client sends as `x-request-id`, the id that comes back (and is
/// logged) is the client's only when it follows the rule, else a fresh UUID.
#[test]
fn client_request_ids_are_bounded() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_app());
    // Every byte a header value may hold, and values that almost fit the rule.
    let any = proptest::collection::vec(
        prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
        0..300,
    );
    let near = "[A-Za-z0-9._:-]{0,70}[ /%\\\\\"<>é]?[A-Za-z0-9._:-]{0,4}"
        .prop_map(|s: String| s.into_bytes());
    let mut runner = TestRunner::new(Config::with_cases(512));
    runner
        .run(&prop_oneof![any, near], |sent| {
            let Ok(value) = reqwest::header::HeaderValue::from_bytes(&sent) else {
                return Ok(());
            };
            let echoed = rt.block_on(async {
                let r = app
                    .client
                    .get(app.url("/health"))
                    .header("x-request-id", value)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.headers()["x-request-id"].as_bytes().to_vec()
            });
            // The server sees the value without surrounding whitespace.
            let trimmed = sent.trim_ascii();
            prop_assert!(fits(&echoed));
            if fits(trimmed) {
                prop_assert_eq!(&echoed[..], trimmed);
            } else {
                let id = std::str::from_utf8(&echoed).unwrap();
                let uuid = uuid::Uuid::parse_str(id).expect("a generated UUID");
                prop_assert_eq!(uuid.get_version_num(), 4);
            }
            Ok(())
        })
        .unwrap();
}
