//! Two processes on one data file (`--db-sharing multi-writer`), as two tasks
//! of one service during a start-first rolling update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{ALICE, Server, client, create, get, run, serve_refused};

const MULTI: (&str, &str) = ("DB_SHARING", "multi-writer");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_share_one_file_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = Server::start(&data, &[MULTI]);
    let b = Server::start(&data, &[MULTI]);
    let c = client();
    // Each sees the other's writes at once.
    let from_a = create(&c, &a.url(""), "from a").await.unwrap();
    let from_b = create(&c, &b.url(""), "from b").await.unwrap();
    for (server, id) in [(&b, &from_a), (&a, &from_b)] {
        let r = get(&c, server.url(&format!("/v1/tasks/{id}")), ALICE).await;
        assert_eq!(r.status(), 200);
    }
    // Mixed load on both; then kill -9 one of them mid-load.
    let acked: Arc<Mutex<HashMap<String, String>>> = Default::default();
    let mut load = Vec::new();
    for (n, base) in [a.url(""), b.url(""), a.url(""), b.url("")]
        .into_iter()
        .enumerate()
    {
        let acked = acked.clone();
        load.push(tokio::spawn(async move {
            let c = client();
            for i in 0..150 {
                let title = format!("l{n}-{i}");
                match create(&c, &base, &title).await {
                    Some(id) => {
                        let r = c
                            .get(format!("{base}/v1/tasks/{id}"))
                            .bearer_auth(ALICE)
                            .send()
                            .await;
                        assert!(r.is_err() || r.unwrap().status() == 200);
                        acked.lock().unwrap().insert(id, title);
                    }
                    None => {
                        // Only the killed server's clients may fail.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::task::spawn_blocking(move || b.kill9())
        .await
        .unwrap();
    for l in load {
        l.await.unwrap();
    }
    // Every acknowledged write, from either server, is on the survivor.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100);
    for (id, title) in &acked {
        let v: serde_json::Value = get(&c, a.url(&format!("/v1/tasks/{id}")), ALICE)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["title"], title.as_str());
    }
    // A restarted second server sees everything too.
    let b2 = Server::start(&data, &[MULTI]);
    let some = acked.keys().next().unwrap();
    let r = get(&c, b2.url(&format!("/v1/tasks/{some}")), ALICE).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_created_by_the_cli_works_on_both_running_servers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = Server::start(&data, &[MULTI]);
    let b = Server::start(&data, &[MULTI]);
    let out = run(&["token", "create", "carol"], &data, &[MULTI]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let c = client();
    for s in [&a, &b] {
        let r = get(&c, s.url("/v1/tasks"), &token).await;
        assert_eq!(r.status(), 200);
    }
    let out = run(&["token", "revoke", "carol"], &data, &[MULTI]);
    assert!(out.status.success());
    for s in [&a, &b] {
        let r = get(&c, s.url("/v1/tasks"), &token).await;
        assert_eq!(r.status(), 401);
    }
}

#[test]
fn exclusive_mode_refuses_a_second_process_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _a = Server::start(&data, &[]);
    // A second server (token commands would use the first one's control
    // socket instead of opening the file).
    let out = serve_refused(&data, &[], Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("locked by another process") && err.contains("multi-writer"),
        "{err}"
    );
}
