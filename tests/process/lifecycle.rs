//! SIGTERM: not ready at once, keep serving for the drain, then exit 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{Server, client, create};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_without_failing_a_request_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        &dir.path().join("data"),
        &[("DRAIN_SECONDS", "2"), ("SHUTDOWN_TIMEOUT", "5")],
    );
    let base = server.url("");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Steady load on fresh connections and on kept-alive ones.
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, ok, failed, base) = (stop.clone(), ok.clone(), failed.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let keepalive = client();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let c = if w % 2 == 0 {
                    keepalive.clone()
                } else {
                    client()
                };
                match create(&c, &base, &format!("w{w}-{i}")).await {
                    Some(_) => ok.fetch_add(1, Ordering::SeqCst),
                    None => failed.fetch_add(1, Ordering::SeqCst),
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = client();
    assert_eq!(
        c.get(server.url("/ready")).send().await.unwrap().status(),
        200
    );

    server.signal("TERM");
    let signalled = Instant::now();
    // Not ready almost at once.
    let mut flipped = None;
    while signalled.elapsed() < Duration::from_secs(1) {
        if client()
            .get(server.url("/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == 503
        {
            flipped = Some(signalled.elapsed());
            break;
        }
    }
    let flipped = flipped.expect("/ready turned 503 within a second of SIGTERM");
    assert!(flipped < Duration::from_millis(500), "took {flipped:?}");
    // New connections are still accepted and served during the drain.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = create(&client(), &base, "during drain").await;
    assert!(
        during.is_some(),
        "a new connection during the drain is served"
    );
    let served_before_stop = ok.load(Ordering::SeqCst);
    // Stop the load before the drain ends, as a proxy would after its next poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let (status, log) = tokio::task::spawn_blocking(move || {
        let status = server.wait(Duration::from_secs(10));
        (status, server.log.try_iter().collect::<Vec<_>>().join("\n"))
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    for step in [
        "not ready, draining",
        "no longer accepting connections",
        "stopped",
    ] {
        assert!(log.contains(step), "log says `{step}`:\n{log}");
    }
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the drain lasted its delay"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed ({served_before_stop} served)"
    );
    assert!(served_before_stop > 50);
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[("DRAIN_SECONDS", "30")]);
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    server.signal("INT");
    let status = server.wait(Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(status.code(), Some(130));
}

#[test]
fn without_drain_sigterm_exits_0_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(5));
    assert!(status.success());
}
