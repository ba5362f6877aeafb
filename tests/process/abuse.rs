//! What a hostile or careless client can do to the running binary: slow and
//! idle connections at a low open-file limit, unbounded values in log lines,
//! bad tokens; and tokens files the server must refuse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ALICE, Server, client, run, serve_refused};

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";

/// A connection that sends a request head one byte every 250 ms and never
/// finishes it. Returns how long after connecting the server closed it, or
/// `None` if it was still open after `give_up`.
async fn trickle(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let c = TcpStream::connect(addr).await.unwrap();
    let connected = Instant::now();
    let (mut rd, mut wr) = c.into_split();
    let writer = tokio::spawn(async move {
        if wr
            .write_all(b"GET /health HTTP/1.1\r\nx-slow: ")
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(give_up, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return connected.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok();
    writer.abort();
    closed
}

/// A kept-alive connection after one request: how long after its response
/// the server closed it, or `None` after `give_up`.
async fn idle(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(HEALTH).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("healthy") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        seen.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    tokio::time::timeout(give_up, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return answered.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// The issue's reproduction: with the open-file limit at 256, hundreds of
/// connections trickling headers plus idle kept-alive ones made `accept` fail
/// (EMFILE) and `/health` time out. Now the connection cap stays below the
/// limit, slow connections are closed at their timeouts, and a client probing
/// `/health` on fresh connections is always answered, quickly while the slow
/// ones fit under the cap, and within the timeouts once they exceed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_at_a_low_file_limit_do_not_starve_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_nofile(
        &dir.path().join("data"),
        &[("HEADER_READ_TIMEOUT", "2"), ("IDLE_TIMEOUT", "3")],
        256,
    );
    let addr = server.addr;
    let give_up = Duration::from_secs(14);
    let mut idlers = Vec::new();
    for _ in 0..50 {
        idlers.push(tokio::spawn(idle(addr, give_up)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (stop, url) = (stop.clone(), server.url("/health"));
        tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                // A new client each time: a new connection, as from a new user.
                let status = client()
                    .get(&url)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string());
                results.push((t, status, t.elapsed()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            results
        })
    };

    // Phase 1: 100 slow connections, 150 with the idle ones, under the cap (192).
    let phase1 = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..100 {
        slow.push(tokio::spawn(trickle(addr, give_up)));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Phase 2: 250 more, 400 connections in all, beyond the cap and the file limit.
    let phase2 = Instant::now();
    for _ in 0..250 {
        slow.push(tokio::spawn(trickle(addr, give_up)));
    }
    tokio::time::sleep(Duration::from_secs(9)).await;
    stop.store(true, Ordering::SeqCst);
    let probes = probe.await.unwrap();

    let failed: Vec<_> = probes.iter().filter(|p| p.1 != Ok(200)).collect();
    assert!(failed.is_empty(), "failed probes: {failed:?}");
    let slowest = |from: Instant, to: Instant| {
        probes
            .iter()
            .filter(|p| p.0 >= from && p.0 < to)
            .map(|p| p.2)
            .max()
            .unwrap()
    };
    let under_cap = slowest(phase1, phase2);
    assert!(
        under_cap < Duration::from_millis(500),
        "under the cap: {under_cap:?}"
    );
    let over_cap = slowest(phase2, Instant::now());
    assert!(
        over_cap < Duration::from_secs(6),
        "over the cap: {over_cap:?}"
    );
    assert!(probes.len() > 50, "{} probes", probes.len());

    let mut closed = Vec::new();
    for s in slow {
        closed.push(s.await.unwrap().expect("a slow connection was closed"));
    }
    let first = closed.iter().min().unwrap();
    eprintln!(
        "{} probes, slowest {under_cap:?} under the cap, {over_cap:?} over it; slow connections closed after {first:?} to {:?}",
        probes.len(),
        closed.iter().max().unwrap()
    );
    assert!(
        *first >= Duration::from_millis(1_900),
        "closed early: {first:?}"
    );
    for i in idlers {
        let after = i.await.unwrap().expect("an idle connection was closed");
        assert!(
            (Duration::from_millis(2_900)..Duration::from_millis(4_500)).contains(&after),
            "idle connection closed {after:?} after its response"
        );
    }
    let log: Vec<String> = server.log.try_iter().collect();
    assert!(
        !log.iter().any(|l| l.contains("accept failed")),
        "accept failed:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("connection limit reached")),
        "the cap was reached"
    );
}

/// The log line of a request holds what a client sent only within bounds:
/// the method cut to 16 bytes, the request id replaced unless it fits the rule.
#[tokio::test]
async fn request_log_lines_stay_small_whatever_the_client_sends() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let long_method = reqwest::Method::from_bytes(&[b'X'; 4 * 1024]).unwrap();
    let r = client()
        .request(long_method, server.url("/health"))
        .header("x-request-id", "r".repeat(8_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let echoed = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(echoed.len(), 36, "a generated id comes back");
    let line = loop {
        let line = server
            .log
            .recv_timeout(Duration::from_secs(5))
            .expect("a request log line");
        if line.contains(r#""message":"request""#) {
            break line;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], format!("{}...", "X".repeat(16)));
    assert_eq!(v["request_id"], echoed.as_str());
    assert!(line.len() < 1024, "{} bytes: {line:.200}", line.len());
}

/// Bad tokens spend a budget per client address (60 a minute by default);
/// behind a trusted proxy the budget is per forwarded address.
#[tokio::test]
async fn bad_tokens_are_answered_429_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let c = client();
    let bad = |i: usize| {
        c.get(server.url("/v1/tasks"))
            .bearer_auth(format!("dapi_guess_{i}"))
            .send()
    };
    // The budget refills at one a second while the loop runs.
    let mut limited = None;
    for i in 0..80 {
        let r = bad(i).await.unwrap();
        if r.status() == 429 {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status(), 401, "failure {i}");
    }
    let (i, r) = limited.expect("429 within 80 bad tokens");
    assert!(i >= 60, "limited after {i}");
    assert_eq!(r.headers()["retry-after"], "1");

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("AUTH_FAILURE_LIMIT", "2"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
        ],
    );
    let from = |who: &str, token: &str| {
        c.get(server.url("/v1/tasks"))
            .bearer_auth(token)
            .header("x-forwarded-for", who)
            .send()
    };
    for expected in [401, 401, 429] {
        let r = from("198.51.100.1", "dapi_guess").await.unwrap();
        assert_eq!(r.status(), expected);
    }
    assert_eq!(from("198.51.100.2", ALICE).await.unwrap().status(), 200);
}

#[test]
fn weak_or_duplicate_tokens_files_are_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let strong = "dapi_Q2hvb3NlIGEgcmFuZG9tIHRva2VuIGFsd2F5cyE4Nw";
    let cases = [
        (
            format!("ci:{strong}\nops:{strong}\n"),
            "line 2 (`ops`): the same token as line 1 (`ci`)",
            strong,
        ),
        (
            format!("ci:{strong}\n\nci:{ALICE}\n"),
            "line 3: principal `ci` is already defined on line 1",
            ALICE,
        ),
        (
            "ci:hunter2hunter2hunter2\n".to_owned(),
            "line 1 (`ci`): the token is too short",
            "hunter2",
        ),
        (
            format!("ci:{}\n", "ab".repeat(20)),
            "line 1 (`ci`): the token looks low-entropy",
            "abab",
        ),
    ];
    for (content, expected, secret) in cases {
        std::fs::write(&path, &content).unwrap();
        let out = serve_refused(
            &dir.path().join("data"),
            &[("TOKENS_FILE", path.to_str().unwrap())],
            Duration::from_secs(10),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(!err.contains(secret), "the token is shown: {err}");
    }
}

/// A name in the tokens file and in the store would be two token holders
/// sharing one principal's tasks: the server refuses to start, and `token
/// create` refuses the name while it knows the tokens file.
#[test]
fn a_principal_cannot_have_a_file_token_and_a_stored_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tokens = crate::helpers::tokens_file(dir.path());
    let tokens = tokens.to_str().unwrap();
    let out = run(
        &["token", "create", "alice"],
        &data,
        &[("TOKENS_FILE", tokens)],
    );
    assert!(
        !out.status.success(),
        "created a stored token for a file principal"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`alice` is defined in the tokens file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the tokens file at hand, `token create` cannot know: start-up refuses.
    let out = run(&["token", "create", "alice"], &data, &[]);
    assert!(out.status.success());
    let out = serve_refused(&data, &[("TOKENS_FILE", tokens)], Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`alice` have a token in the tokens file and a stored token")
            && err.contains("token revoke"),
        "{err}"
    );
    let out = run(&["token", "revoke", "alice"], &data, &[]);
    assert!(out.status.success());
    let mut ok = Server::start(&data, &[]);
    ok.signal("TERM");
    assert!(ok.wait(Duration::from_secs(10)).success());
}
