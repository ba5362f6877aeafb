//! Soak mode: open-loop mixed load (90 % reads) at half the measured capacity.
//!
//! Capacity is measured first with the same mix, closed-loop, for 15 s. Then
//! every one of `concurrency` connections sends on its own fixed schedule
//! (rate / connections each), and a request's latency counts from the moment
//! the schedule meant to send it, so a stalled server shows as latency rather
//! than as a slower schedule (no coordinated omission). Reported per minute:
//! requests, errors, p50/p99/max latency, the server's RSS and open fds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{Fixture, Options, Server, machine, open_fds, proc_kib};

#[derive(Default)]
struct Minute {
    latencies_us: Vec<u32>,
    errors: u64,
}

struct Mix {
    tokens: Vec<String>,
    sample: Vec<(usize, String)>,
}

impl Mix {
    /// 70 % GET by id, 20 % list, 5 % POST, 5 % PATCH.
    fn request(&self, rng: &mut u64, counter: u64) -> Request<Full<Bytes>> {
        let r = next(rng);
        let pick = r % 100;
        let (owner, id) = &self.sample[(r >> 8) as usize % self.sample.len()];
        let auth = format!("Bearer {}", self.tokens[*owner]);
        let b = Request::builder()
            .header("host", "bench")
            .header("authorization", auth);
        let (b, body) = match pick {
            0..70 => (
                b.method(Method::GET).uri(format!("/v1/tasks/{id}")),
                Bytes::new(),
            ),
            70..90 => (
                b.method(Method::GET).uri("/v1/tasks?limit=50"),
                Bytes::new(),
            ),
            90..95 => (
                b.method(Method::POST)
                    .uri("/v1/tasks")
                    .header("content-type", "application/json"),
                Bytes::from(format!(
                    r#"{{"title":"soak task {counter}","tags":["soak"]}}"#
                )),
            ),
            _ => (
                b.method(Method::PATCH)
                    .uri(format!("/v1/tasks/{id}"))
                    .header("content-type", "application/merge-patch+json"),
                Bytes::from(format!(r#"{{"title":"soak patch {counter}"}}"#)),
            ),
        };
        b.body(Full::new(body)).expect("valid request")
    }
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request; true when it got a 2xx and its whole body.
async fn send(sender: &mut Option<Sender>, addr: SocketAddr, req: Request<Full<Bytes>>) -> bool {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr).await.ok();
    }
    let Some(s) = sender.as_mut() else {
        return false;
    };
    if s.ready().await.is_err() {
        *sender = None;
        return false;
    }
    match s.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            ok & resp.into_body().collect().await.is_ok()
        }
        Err(_) => {
            *sender = None;
            false
        }
    }
}

/// Closed loop for `secs`: requests per second the server sustains with this mix.
async fn capacity(addr: SocketAddr, mix: Arc<Mix>, conns: usize, secs: u64) -> (f64, u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..conns {
        let mix = mix.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = None;
            let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1);
            let (mut n, mut errors) = (0u64, 0u64);
            while Instant::now() < end {
                let ok = send(&mut sender, addr, mix.request(&mut rng, n)).await;
                n += 1;
                errors += u64::from(!ok);
            }
            (n, errors)
        }));
    }
    let (mut n, mut errors) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap_or_default();
        n += a;
        errors += b;
    }
    (n as f64 / secs as f64, errors)
}

pub fn run(opts: &Options, fx: &Fixture, target: &std::path::Path) -> anyhow::Result<()> {
    let machine = machine();
    let server = Server::start(&opts.binary, fx, true, &fx.work_dir.join("server-soak.log"))?;
    let addr = server.addr;
    let pid = server.pid();
    let mix = Arc::new(Mix {
        tokens: fx.tokens.clone(),
        sample: fx.sample.clone(),
    });
    let conns = opts.concurrency;
    let minutes = opts.soak_minutes as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (cap, cap_errors) = rt.block_on(capacity(addr, mix.clone(), conns, 15));
    if cap_errors > 0 {
        bail!("{cap_errors} errors while measuring capacity");
    }
    let rate = cap / 2.0;
    eprintln!(
        "mixed capacity {cap:.0} req/s; soaking at {rate:.0} req/s for {minutes} min over {conns} connections"
    );

    let stats: Arc<Mutex<Vec<Minute>>> = Arc::new(Mutex::new(
        (0..minutes).map(|_| Minute::default()).collect(),
    ));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let total = Duration::from_secs(60 * minutes as u64);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let samples = rt.block_on(async {
        let mut workers = Vec::new();
        for w in 0..conns {
            let (mix, stats) = (mix.clone(), stats.clone());
            workers.push(tokio::spawn(async move {
                let mut sender = None;
                let mut rng = 0xD1B5_4A32_D192_ED03 ^ (w as u64 + 1);
                // Connections are staggered across one interval.
                let mut due = start + interval.mul_f64(w as f64 / conns as f64);
                let mut i = 0u64;
                while due < start + total {
                    tokio::time::sleep_until(due).await;
                    let ok = send(&mut sender, addr, mix.request(&mut rng, i)).await;
                    let latency = due.elapsed();
                    let minute = ((due - start).as_secs() / 60) as usize;
                    {
                        let mut s = stats.lock().expect("stats");
                        let m = &mut s[minute.min(minutes - 1)];
                        m.latencies_us
                            .push(latency.as_micros().min(u32::MAX as u128) as u32);
                        m.errors += u64::from(!ok);
                    }
                    i += 1;
                    due += interval;
                }
            }));
        }
        // Server RSS and fds at the end of every minute.
        let mut samples = Vec::new();
        for m in 1..=minutes {
            // Just before the minute ends, while every connection is open.
            tokio::time::sleep_until(
                start + Duration::from_secs(60 * m as u64) - Duration::from_millis(500),
            )
            .await;
            samples.push((
                proc_kib(pid, "VmRSS").unwrap_or(0),
                open_fds(pid).unwrap_or(0),
            ));
            eprintln!(
                "  minute {m}: rss {} KiB, fds {}",
                samples[m - 1].0,
                samples[m - 1].1
            );
        }
        for w in workers {
            let _ = w.await;
        }
        samples
    });
    let peak_kib = proc_kib(pid, "VmHWM").unwrap_or(0);
    server.stop()?;

    println!();
    println!(
        "devops-api soak: {} cores, {}; mixed 70 % GET id / 20 % list / 5 % POST / 5 % PATCH, open loop at {rate:.0} req/s (capacity {cap:.0})",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?")
    );
    println!();
    println!("| minute | requests | errors | p50 ms | p99 ms | max ms | RSS MiB | open fds |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut stats = stats.lock().expect("stats");
    for (i, m) in stats.iter_mut().enumerate() {
        m.latencies_us.sort_unstable();
        let pct = |p: f64| {
            let v = &m.latencies_us;
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
            }
        };
        let (rss, fds) = samples.get(i).copied().unwrap_or_default();
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            i + 1,
            m.latencies_us.len(),
            m.errors,
            pct(0.5),
            pct(0.99),
            pct(1.0),
            rss as f64 / 1024.0,
            fds
        );
        rows.push(json!({
            "minute": i + 1, "requests": m.latencies_us.len(), "errors": m.errors,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "rss_mib": rss as f64 / 1024.0, "open_fds": fds,
        }));
    }
    println!("\npeak RSS {:.1} MiB", peak_kib as f64 / 1024.0);
    let report = json!({
        "machine": machine, "capacity_rps": cap, "rate_rps": rate, "connections": conns,
        "peak_rss_mib": peak_kib as f64 / 1024.0, "minutes": rows,
    });
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| target.join("bench").join("soak.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
