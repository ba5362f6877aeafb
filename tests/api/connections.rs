//! Connection limits of `server::serve_with`: the header-read deadline, the
//! idle keep-alive timeout, abandoned responses, and the connection cap. Raw
//! TCP clients, so the tests control every byte and see every close.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use devops_api::lifecycle::{Lifecycle, ShutdownPolicy};
use devops_api::server::{ConnLimits, serve_with};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n";

struct Served {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn serve(limits: ConnLimits) -> Served {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/huge", get(|| async { axum::body::Body::new(Huge(256)) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_with(
        listener,
        app,
        async {
            let _ = stopped.await;
        },
        Lifecycle::new(),
        ShutdownPolicy::default(),
        limits,
    ));
    Served { addr, _stop: stop }
}

/// A body of this many MiB, far more than socket buffers hold.
struct Huge(usize);

impl http_body::Body for Huge {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        static MIB: [u8; 1 << 20] = [b'x'; 1 << 20];
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        self.0 -= 1;
        Poll::Ready(Some(Ok(Frame::data(axum::body::Bytes::from_static(&MIB)))))
    }
}

fn limits(header_read: u64, idle: u64, max_connections: usize) -> ConnLimits {
    ConnLimits {
        max_connections,
        header_read_timeout: Duration::from_millis(header_read),
        idle_timeout: Duration::from_millis(idle),
    }
}

/// Reads one `hello` response (it fits one read on loopback).
async fn read_hello(c: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("a response")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("hello"),
        "{text}"
    );
}

/// Waits until the server closes `c` (EOF or reset) and returns when,
/// discarding whatever it still sends.
async fn closed_after(c: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection")
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let s = serve(limits(500, 5_000, 16)).await;
    let t = Instant::now();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let after = closed_after(&mut c, t, Duration::from_secs(3)).await;
    assert!(
        after >= Duration::from_millis(450),
        "closed after {after:?}"
    );
}

#[tokio::test]
async fn a_trickled_head_is_closed_at_the_header_timeout_from_its_first_byte() {
    let s = serve(limits(800, 5_000, 16)).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(REQUEST).await.unwrap();
    read_hello(&mut c).await;
    // Idle longer than the header timeout: still open (the idle timeout applies).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let t = Instant::now();
    let (mut rd, mut wr) = c.into_split();
    let trickle = tokio::spawn(async move {
        for b in REQUEST.iter().take(REQUEST.len() - 2) {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(4), rd.read(&mut buf))
        .await
        .expect("closed before the trickle ends")
        .unwrap_or(0);
    assert_eq!(n, 0, "no response to an incomplete head");
    let after = t.elapsed();
    assert!(
        (Duration::from_millis(750)..Duration::from_millis(2_500)).contains(&after),
        "closed {after:?} after the first byte"
    );
    trickle.abort();
}

#[tokio::test]
async fn kept_alive_connections_wait_the_idle_timeout_not_the_header_timeout() {
    let s = serve(limits(300, 1_500, 16)).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    for _ in 0..3 {
        c.write_all(REQUEST).await.unwrap();
        read_hello(&mut c).await;
        // Three times the header timeout between requests.
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    c.write_all(REQUEST).await.unwrap();
    read_hello(&mut c).await;
    let t = Instant::now();
    let after = closed_after(&mut c, t, Duration::from_secs(5)).await;
    assert!(
        (Duration::from_millis(1_400)..Duration::from_millis(3_000)).contains(&after),
        "idle connection closed after {after:?}"
    );
}

#[tokio::test]
async fn a_response_the_client_does_not_read_is_abandoned() {
    let s = serve(limits(5_000, 1_000, 16)).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /huge HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Read nothing until the server has given up, then drain what it sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server closed the connection");
    assert!(
        total < 128 << 20,
        "{total} bytes: the server stopped writing"
    );
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_wait_for_a_free_slot() {
    let s = serve(limits(10_000, 10_000, 3)).await;
    // Three connections hold every slot without sending a request.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth connects (the kernel queues it) but is not served...
    let mut waiting = TcpStream::connect(s.addr).await.unwrap();
    waiting.write_all(REQUEST).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the cap");
    // ...until a slot frees.
    let t = Instant::now();
    drop(held.pop());
    read_hello(&mut waiting).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn silent_connections_beyond_the_cap_only_delay_other_clients() {
    let s = serve(limits(300, 300, 4)).await;
    // Ten connections that never send a byte: four hold every slot, six wait
    // in the listen queue behind them.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(s.addr).await.unwrap());
    }
    let t = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let addr = s.addr;
        clients.spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(REQUEST).await.unwrap();
            read_hello(&mut c).await;
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    // The silent ones are closed a header timeout after their accept, a few
    // rounds of four at most.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for mut c in silent {
        closed_after(&mut c, t, Duration::from_secs(3)).await;
    }
}

#[tokio::test]
async fn request_heads_are_limited_to_16_kib() {
    let s = serve(limits(5_000, 5_000, 16)).await;
    let head = |filler: usize| {
        format!(
            "GET /hello HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
            "f".repeat(filler)
        )
    };
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(head(15 * 1024).as_bytes()).await.unwrap();
    read_hello(&mut c).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let _ = c.write_all(head(17 * 1024).as_bytes()).await;
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "the server closes the connection");
    let answer = String::from_utf8_lossy(&answer);
    // 431, or a reset when the server closes with bytes still unread.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
}
