//! The cost of a filtered list page as one principal's task count grows
//! (issue 15, part 1): at 1 000, 100 000 and 1 000 000 tasks, a selective
//! filter (10 matches) through each index, a broad filter, `q` (bounded by the
//! scan budget) and no filter, through the redb store's API. Prints µs per
//! page, pages per second and the growth against the smallest size, then one
//! JSON line (also written to `--json PATH`).
//!
//! `cargo bench --bench filters [-- --sizes 1000,100000,1000000 --json PATH]`
//!
//! The target: a selective page at 10^6 tasks within 2x of the same page at
//! 10^3. Each size is filled by one import (one transaction), with progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devops_api::domain::{ListQuery, PrincipalName, Status, StoredTask};
use devops_api::storage::{ImportSet, Record, RedbConfig, RedbStore, Store};
use serde_json::json;

/// The cases, by name: each a query whose first page is timed.
fn cases() -> Vec<(&'static str, ListQuery)> {
    let q = |f: fn(&mut ListQuery)| {
        let mut q = ListQuery {
            limit: 50,
            ..ListQuery::default()
        };
        f(&mut q);
        q
    };
    vec![
        ("none", q(|_| {})),
        ("tag_selective", q(|q| q.tag = Some("rare".into()))),
        ("status_selective", q(|q| q.status = Some(Status::Done))),
        (
            "due_before_selective",
            q(|q| q.due_before = Some("2020-01-01T00:00:00Z".parse().unwrap())),
        ),
        ("tag_broad", q(|q| q.tag = Some("common".into()))),
        (
            "status_tag_broad",
            q(|q| {
                q.status = Some(Status::Todo);
                q.tag = Some("common".into());
            }),
        ),
        ("q_selective_budgeted", q(|q| q.q = Some("needle".into()))),
    ]
}

/// Task `i` of `n`: 10 tasks (spread over the range) are `done`, tagged
/// `rare`, due in 2019 and titled `needle`; half are tagged `common`.
fn task(i: usize, n: usize) -> StoredTask<'static> {
    let rare = i.is_multiple_of((n / 10).max(1));
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc()
        + chrono::Duration::milliseconds(i as i64);
    let mut tags = Vec::new();
    if i.is_multiple_of(2) {
        tags.push("common".to_owned());
    }
    if rare {
        tags.push("rare".to_owned());
    }
    StoredTask {
        // UUIDv7 in creation order: the time in the first 48 bits, `i` after.
        id: uuid::Uuid::from_u128(
            (u128::from(at.timestamp_millis() as u64) << 80)
                | (0x7u128 << 76)
                | (2u128 << 62)
                | i as u128,
        ),
        title: if rare {
            format!("needle {i}")
        } else {
            format!("task {i}")
        },
        description: None,
        status: if rare {
            "done"
        } else {
            ["todo", "in_progress"][i % 2]
        }
        .into(),
        priority: ["low", "normal", "high"][i % 3].into(),
        due_at: Some(if rare {
            at - chrono::Duration::days(3000)
        } else {
            at + chrono::Duration::days(30)
        }),
        tags,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

async fn fill(store: &RedbStore, owner: &PrincipalName, n: usize) -> f64 {
    let start = Instant::now();
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        records.push(Record::Task {
            owner: owner.clone(),
            task: task(i, n).into_task().expect("a valid task"),
        });
        if (i + 1) % 250_000 == 0 {
            eprintln!("  built {} of {n} tasks", i + 1);
        }
    }
    let set = ImportSet::validate(records).expect("a valid import");
    eprintln!("  importing {n} tasks in one transaction ...");
    store.import(set).await.expect("import");
    let secs = start.elapsed().as_secs_f64();
    eprintln!("  filled {n} tasks in {secs:.1} s");
    secs
}

/// Mean µs of the first page of `q`, over at least 0.5 s and 20 pages.
async fn time_page(store: &RedbStore, owner: &PrincipalName, q: &ListQuery) -> (f64, usize) {
    let items = store.list_tasks(owner, q).await.unwrap().items.len();
    let start = Instant::now();
    let mut pages = 0u32;
    while pages < 20 || start.elapsed() < Duration::from_millis(500) {
        std::hint::black_box(store.list_tasks(owner, q).await.unwrap());
        pages += 1;
    }
    (
        start.elapsed().as_secs_f64() * 1e6 / f64::from(pages),
        items,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "1000,100000,1000000".into())
        .split(',')
        .map(|s| s.parse().expect("--sizes: numbers separated by commas"))
        .collect();
    let owner = PrincipalName::parse("bench").unwrap();
    let mut results = Vec::new();
    for &n in &sizes {
        eprintln!("== {n} tasks");
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RedbConfig::new(dir.path());
        cfg.cache_size = 256 * 1024 * 1024;
        let store = Arc::new(RedbStore::open(&cfg).unwrap());
        let fill_seconds = fill(&store, &owner, n).await;
        let mut row = serde_json::Map::new();
        for (name, q) in cases() {
            let (us, items) = time_page(&store, &owner, &q).await;
            row.insert(name.into(), json!({ "us_per_page": us, "items": items }));
        }
        store.close().await;
        results.push(json!({ "tasks": n, "fill_seconds": fill_seconds, "pages": row }));
    }
    let base = &results[0]["pages"];
    println!(
        "{:<22} {}",
        "page (limit 50)",
        sizes
            .iter()
            .map(|n| format!("{:>24}", format!("{n} tasks")))
            .collect::<String>()
    );
    for (name, _) in cases() {
        let cells: String = results
            .iter()
            .map(|r| {
                let us = r["pages"][name]["us_per_page"].as_f64().unwrap();
                let growth = us / base[name]["us_per_page"].as_f64().unwrap();
                format!(
                    "{:>24}",
                    format!("{us:.0} µs {:.0}/s {growth:.2}x", 1e6 / us)
                )
            })
            .collect();
        println!("{name:<22} {cells}");
    }
    let out = json!({
        "bench": "filters",
        "date": chrono::Utc::now().to_rfc3339(),
        "sizes": results,
    });
    println!("{out}");
    if let Some(path) = arg("--json") {
        std::fs::write(path, out.to_string()).expect("write --json");
    }
}
