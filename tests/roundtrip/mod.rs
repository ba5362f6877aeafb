//! The "accepted means kept" property: every task body the API accepts is
//! stored, read back, listed (also through each filter), updated, exported and
//! restored unchanged, through the store, the real HTTP layer and a backup
//! file. Bodies are drawn from the whole input space: timestamps at both ends
//! of the range with every offset, leap seconds and long fractions, titles,
//! tags and descriptions of any Unicode at their maximum sizes, every status
//! and priority, 0 to 20 tags.
//!
//! A backend's test binary declares `mod roundtrip;` and calls
//! [`check_backend`] with a function that makes two fresh, empty stores.

#![allow(dead_code)]

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use devops_api::app::{Application, Settings};
use devops_api::auth::{self, StaticTokens};
use devops_api::domain::text::{description_refusal, is_white_space, label_refusal};
use devops_api::domain::{self, DueAt, rfc3339};
use devops_api::http::ApiConfig;
use devops_api::storage::{Record, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Two fresh, empty stores of one backend: the source and a restore target.
pub struct Stores {
    pub source: Arc<dyn Store>,
    pub target: Arc<dyn Store>,
    /// Dropped after the stores: temp dirs, throwaway databases.
    pub _guard: Box<dyn Any + Send>,
}

/// The real app on port 0 over `store`, with principals `alice` and `bob`.
pub struct Served {
    pub base: String,
    pub client: reqwest::Client,
    pub tokens: [String; 2],
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub const OWNERS: [&str; 2] = ["alice", "bob"];

/// The recorder of this test binary, installed on first use: metrics are
/// process-wide, so every app and every store in the binary share it.
pub fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| devops_api::telemetry::install_metrics().expect("install the recorder"))
        .clone()
}

pub async fn serve(store: Arc<dyn Store>) -> Served {
    let tokens = [auth::generate_token(), auth::generate_token()];
    let file = format!("alice:{}\nbob:{}\n", tokens[0], tokens[1]);
    let config = ApiConfig {
        rate_limit: None,
        ..ApiConfig::default()
    };
    let settings = Settings::local(config, StaticTokens::parse(&file).unwrap(), metrics());
    let application = Application::build(settings, store).await.unwrap();
    let base = format!("http://{}", application.addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async {
        let _ = stopped.await;
    }));
    Served {
        base,
        client: reqwest::Client::new(),
        tokens,
        stop: Some(stop),
        server,
    }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.server).await;
    }
}

/// A character from anywhere in Unicode, with the edges of every rule table
/// (and what lies beside them) and some usual suspects often.
fn any_char() -> impl Strategy<Value = char> {
    let edges: Vec<char> = [
        '\t',
        '\n',
        '\r',
        ' ',
        '\u{a0}',
        '\u{ad}',
        '\u{2028}',
        '\u{2029}',
        '\u{200d}',
        '\u{200c}',
        '\u{200e}',
        '\u{200f}',
        '\u{202a}',
        '\u{2066}',
        '\u{2069}',
        '\u{feff}',
        '\u{fffd}',
        '\u{ffff}',
        '\u{e0001}',
        '\u{e007f}',
        '\u{10ffff}',
        '\u{1f468}',
        '\u{0130}',
        '\u{1e9e}',
        '\u{3000}',
        '%',
        '_',
        '\\',
        '\'',
        '"',
        '{',
        '}',
        ',',
        '&',
        '#',
        '+',
        '?',
        '/',
        'ǅ',
        'ﬃ',
    ]
    .to_vec();
    prop_oneof![
        4 => any::<char>(),
        2 => (0x20u32..0x7f).prop_map(|c| char::from_u32(c).unwrap()),
        2 => prop::sample::select(edges),
    ]
}

fn label_char() -> impl Strategy<Value = char> {
    any_char().prop_filter("allowed in labels", |c| label_refusal(*c).is_none())
}

fn chars(
    c: impl Strategy<Value = char>,
    n: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = String> {
    prop::collection::vec(c, n).prop_map(|v| v.into_iter().collect())
}

fn title() -> impl Strategy<Value = String> {
    let core = prop_oneof![3 => chars(label_char(), 1..=12), 1 => chars(label_char(), 195..=200)];
    let pad = || {
        chars(
            any_char().prop_filter("white space", |c| is_white_space(*c)),
            0..=2,
        )
    };
    (pad(), core, pad()).prop_map(|(a, b, c)| format!("{a}{b}{c}"))
}

fn description_char() -> impl Strategy<Value = char> {
    any_char().prop_filter("allowed in descriptions", |c| {
        description_refusal(*c).is_none()
    })
}

fn description() -> impl Strategy<Value = Option<String>> {
    let text = prop_oneof![
        3 => chars(description_char(), 0..=40),
        1 => chars(description_char(), 9_990..=10_000)
    ];
    prop::option::of(text)
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![chars(label_char(), 1..=6), chars(label_char(), 48..=50)]
        .prop_filter("no padding", |t| {
            !t.starts_with(is_white_space) && !t.ends_with(is_white_space)
        })
}

fn due_at() -> impl Strategy<Value = Option<String>> {
    let offset = prop_oneof![
        Just("Z".to_owned()),
        Just("z".to_owned()),
        Just("-00:00".to_owned()),
        (prop::bool::ANY, 0..=23u32, 0..=59u32)
            .prop_map(|(neg, h, m)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
    ];
    let stamp = (
        prop_oneof![Just(0), Just(9999), Just(1), Just(1970), 0..=9999i32],
        prop_oneof![Just((1u32, 1u32)), Just((12, 31)), (1..=12u32, 1..=28u32)],
        prop_oneof![Just('T'), Just('t')],
        prop_oneof![
            Just((0u32, 0u32, 0u32)),
            Just((23, 59, 59)),
            Just((23, 59, 60)),
            (0..24u32, 0..60u32, 0..=60u32)
        ],
        prop_oneof![Just(String::new()), "\\.[0-9]{1,12}"],
        offset,
    )
        .prop_map(|(y, (mo, d), sep, (h, mi, s), frac, off)| {
            format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
        .prop_filter("accepted", |s| DueAt::parse(s).is_ok());
    prop::option::of(stamp)
}

/// A body `POST /v1/tasks` accepts.
pub fn accepted_body() -> impl Strategy<Value = Value> {
    (
        title(),
        description(),
        prop::option::of(prop::sample::select(vec!["todo", "in_progress", "done"])),
        prop::option::of(prop::sample::select(vec!["low", "normal", "high"])),
        due_at(),
        prop::collection::vec(tag(), 0..=20),
    )
        .prop_map(|(title, description, status, priority, due_at, mut tags)| {
            let mut seen = std::collections::HashSet::new();
            tags.retain(|t| seen.insert(t.clone()));
            let mut body = json!({ "title": title, "tags": tags });
            for (k, v) in [
                ("description", description.map(Value::from)),
                ("status", status.map(Value::from)),
                ("priority", priority.map(Value::from)),
                ("due_at", due_at.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            body
        })
        .prop_filter("accepted", |b| domain::parse_create(b).is_ok())
}

/// What the API answers for `body`: its fields as validated and normalised.
fn expected_fields(body: &Value) -> Value {
    let fields = domain::parse_create(body).expect("an accepted body");
    serde_json::to_value(fields).unwrap()
}

fn fields_of(task: &Value) -> Value {
    let mut t = task.clone();
    let o = t.as_object_mut().unwrap();
    for k in ["id", "created_at", "updated_at", "version"] {
        o.remove(k);
    }
    t
}

/// One case: `bodies[i]` is created by owner `i % 2`, then replaced by
/// `bodies[i + 1]` (PUT) and patched back to itself (PATCH).
async fn one_case(stores: Stores, bodies: Vec<Value>) {
    let served = serve(stores.source.clone()).await;
    let c = &served.client;
    let mut tasks: Vec<(usize, Value)> = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let who = i % 2;
        let token = &served.tokens[who];
        let r = c
            .post(served.url("/v1/tasks"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create {body}: {:?}", r.text().await);
        let created: Value = r.json().await.unwrap();
        assert_eq!(fields_of(&created), expected_fields(body), "as created");
        let id = created["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/tasks/{id}");

        // PUT the next body, then PATCH every field back.
        let other = &bodies[(i + 1) % bodies.len()];
        let r = c
            .put(served.url(&path))
            .bearer_auth(token)
            .json(other)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "replace with {other}");
        let replaced: Value = r.json().await.unwrap();
        assert_eq!(fields_of(&replaced), expected_fields(other), "as replaced");
        let mut patch = body.clone();
        for k in ["description", "due_at", "status", "priority", "tags"] {
            if patch.get(k).is_none() {
                patch[k] = if k == "status" {
                    json!("todo")
                } else if k == "priority" {
                    json!("normal")
                } else {
                    Value::Null
                };
            }
        }
        let r = c
            .patch(served.url(&path))
            .bearer_auth(token)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "patch {patch}");
        let task: Value = r.json().await.unwrap();
        assert_eq!(fields_of(&task), expected_fields(body), "as patched back");

        let r = c
            .get(served.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), task, "read back");
        let stored = stores
            .source
            .get_task(
                &domain::PrincipalName::parse(OWNERS[who]).unwrap(),
                domain::TaskId::parse(&id).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(devops_api::http::TaskBody::from(&stored)).unwrap(),
            task,
            "from the store"
        );
        tasks.push((who, task));
    }

    // Listed, on every page and through every filter that selects it.
    for (who, task) in &tasks {
        let token = &served.tokens[*who];
        let list = |query: Vec<(&'static str, String)>| {
            let req = c
                .get(served.url("/v1/tasks"))
                .bearer_auth(token)
                .query(&query);
            async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200, "list {query:?}");
                let page: Value = r.json().await.unwrap();
                page["items"].as_array().unwrap().clone()
            }
        };
        let id = task["id"].as_str().unwrap();
        let mut filters = vec![vec![("limit", "100".to_owned())]];
        for t in task["tags"].as_array().unwrap() {
            filters.push(vec![("tag", t.as_str().unwrap().to_owned())]);
        }
        if let Some(d) = task["due_at"].as_str() {
            let d = chrono::DateTime::parse_from_rfc3339(d).unwrap().to_utc();
            if d < DueAt::MAX {
                let next = d + chrono::Duration::microseconds(1);
                filters.push(vec![("due_before", rfc3339::format(&next))]);
            }
        }
        let lower: String = task["title"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .chars()
            .take(200)
            .collect();
        filters.push(vec![("q", lower)]);
        filters.push(vec![
            ("status", task["status"].as_str().unwrap().to_owned()),
            ("priority", task["priority"].as_str().unwrap().to_owned()),
            ("order", "desc".to_owned()),
        ]);
        for f in filters {
            let items = list(f.clone()).await;
            let found: Vec<&Value> = items.iter().filter(|t| t["id"] == id).collect();
            assert_eq!(found, vec![task], "listed with {f:?}");
        }
    }

    // Exported, backed up to a file, restored elsewhere, served again.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.jsonl");
    let report = devops_api::backup::backup(stores.source.as_ref(), &file, &mut |_, _, _| {})
        .await
        .unwrap();
    assert!(report.unreadable.is_empty());
    assert_eq!(report.records as usize, tasks.len());
    devops_api::backup::restore(stores.target.as_ref(), &file, &mut |_, _, _| {})
        .await
        .unwrap();
    let key = |r: &Record| format!("{r:?}");
    let mut a = stores.source.export().await.unwrap().records;
    let mut b = stores.target.export().await.unwrap().records;
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b, "restored as exported");
    served.stop().await;
    let restored = serve(stores.target.clone()).await;
    for (who, task) in &tasks {
        let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
        let r = restored
            .client
            .get(restored.url(&path))
            .bearer_auth(&restored.tokens[*who])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            &r.json::<Value>().await.unwrap(),
            task,
            "read back after restore"
        );
    }
    restored.stop().await;
    stores.source.close().await;
    stores.target.close().await;
}

/// Runs `cases` cases of 1 to 4 bodies on stores from `make`.
pub fn check_backend<F, Fut>(cases: u32, make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Stores>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(accepted_body(), 1..=4), |bodies| {
        rt.block_on(async {
            let stores = make().await;
            one_case(stores, bodies).await;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
