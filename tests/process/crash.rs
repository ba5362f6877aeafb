//! Crash safety: a server killed with SIGKILL mid-load loses no write it
//! acknowledged, and its filter index agrees with its records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{ALICE, Server, client, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // id -> title of every acknowledged create, over all cycles.
    let acked: Arc<Mutex<HashMap<String, String>>> = Default::default();
    for cycle in 0..20u64 {
        let server = Server::start(&data, &[]);
        let base = server.url("");
        let mut writers = Vec::new();
        for w in 0..8 {
            let (base, acked) = (base.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                let c = client();
                for i in 0.. {
                    let title = format!("c{cycle}-w{w}-{i}");
                    let r = c
                        .post(format!("{base}/v1/tasks"))
                        .bearer_auth(ALICE)
                        .json(&serde_json::json!({
                            "title": title,
                            // Every create also writes filter index entries.
                            "status": (["todo", "in_progress", "done"][i % 3]),
                            "priority": (["low", "normal", "high"][(i / 3) % 3]),
                            "tags": [format!("w{w}"), format!("t{}", i % 5)],
                            "due_at": format!("2030-01-{:02}T00:00:00Z", 1 + i % 28),
                        }))
                        .send()
                        .await;
                    let Ok(r) = r else { break };
                    if r.status() != 201 {
                        break;
                    }
                    let Ok(v) = r.json::<serde_json::Value>().await else {
                        break;
                    };
                    acked
                        .lock()
                        .unwrap()
                        .insert(v["id"].as_str().unwrap().to_owned(), title);
                }
            }));
        }
        // Kill at a varying moment while writes are in flight.
        tokio::time::sleep(Duration::from_millis(150 + (cycle * 37) % 200)).await;
        tokio::task::spawn_blocking(move || server.kill9())
            .await
            .unwrap();
        for w in writers {
            w.await.unwrap();
        }
        // Before the next server opens the file and repairs its index
        // (which would hide a disagreement the crash left).
        check_index(&data, &format!("after kill -9 number {}", cycle + 1)).await;
    }
    let server = Server::start(&data, &[]);
    let c = client();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 200,
        "the load wrote something ({})",
        acked.len()
    );
    for (id, title) in &acked {
        let r = get(&c, server.url(&format!("/v1/tasks/{id}")), ALICE).await;
        assert_eq!(r.status(), 200, "acknowledged task {id} is missing");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["title"], title.as_str(), "task {id} intact");
    }
    drop(server);
    let db = data.join("devops-api.redb");
    assert!(
        devops_api::storage::RedbStore::check_integrity(&db).unwrap(),
        "file passes check_integrity"
    );
    check_index(&data, "at the end").await;
}

/// The filter index agrees with the records, as the file is: opened without
/// the repair a store runs after opening.
async fn check_index(data: &std::path::Path, when: &str) {
    use devops_api::storage::{IndexUpkeep, RedbConfig, RedbStore, Store};
    let mut cfg = RedbConfig::new(data);
    cfg.index_upkeep = IndexUpkeep::Off;
    let store = RedbStore::open(&cfg).unwrap();
    let check = store.check_indexes().await.unwrap();
    assert!(check.is_consistent(), "{when}: {check:?}");
    store.close().await;
}
