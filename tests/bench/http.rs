//! HTTP benchmark of the release binary: `cargo bench --bench http [-- OPTIONS]`.
//!
//! Seeds a fresh redb file with 100 000 tasks across 10 principals (through
//! the library's `RedbStore::import`, one transaction, before the server
//! starts), starts the release binary on it with a tokens file and
//! `RATE_LIMIT=0` (logging and metrics on, as users run it), measures start-up
//! to ready, then drives each endpoint with `wrk` at fixed concurrency, one
//! phase at a time. In the same run it measures two baselines so the results
//! are ratios: the framework ceiling (a minimal axum handler built here,
//! served from its own runtime while the server idles) and the naive store
//! (the same binary with `--group-commit false`). Prints one table and writes
//! it as JSON (default `target/bench/http.json`).
//!
//! Options (after `--`):
//!   --quick              3 s phases instead of 10 s
//!   --duration SECS      length of each measured phase
//!   --concurrency N      connections (default 64)
//!   --tasks N            tasks to seed (default 100000)
//!   --out FILE           JSON output (default <target>/bench/http.json)
//!   --binary FILE        server binary (default: the release binary cargo built)
//!   --perf               record a CPU profile of the server (`perf record`) during
//!                        the GET id, list and POST phases into <target>/bench/;
//!                        use an unstripped binary (see the README) with --binary
//!   --pg                 also run the store phases (GET id, list, POST, PATCH)
//!                        against PostgreSQL: a throwaway cluster the bench
//!                        starts (needs Debian's `postgresql`), or --pg-url
//!   --pg-url URL         use this server instead (a fresh database is created
//!                        and dropped); default $TEST_DATABASE_URL if set, so
//!                        `nix/test/postgres.sh --exec cargo bench --bench http -- --pg`
//!                        works too (that cluster runs with fsync=off)
//!   --soak               instead: open-loop mixed load (90 % reads) at half the
//!                        measured capacity, p99/RSS/fds per minute (not for CI)
//!   --soak-minutes N     soak length (default 10)
//!
//! Needs `wrk` (Debian package `wrk`) for the closed-loop phases.

mod pg;
mod soak;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use devops_api::domain::PrincipalName;
use devops_api::domain::{Task, parse_create};
use devops_api::storage::{Record, RedbConfig, RedbStore, Store};
use serde_json::{Value, json};

const LUA: &str = include_str!("load.lua");
const PRINCIPALS: usize = 10;

pub struct Options {
    pub duration: u64,
    pub concurrency: usize,
    pub tasks: usize,
    pub out: Option<PathBuf>,
    pub binary: PathBuf,
    pub soak: bool,
    pub soak_minutes: u64,
    pub perf: bool,
    pub pg: bool,
    pub pg_url: Option<String>,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut o = Options {
        duration: 10,
        concurrency: 64,
        tasks: 100_000,
        out: None,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_devops-api")),
        soak: false,
        soak_minutes: 10,
        perf: false,
        pg: false,
        pg_url: std::env::var("TEST_DATABASE_URL").ok(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => o.duration = 3,
            "--soak" => o.soak = true,
            "--perf" => o.perf = true,
            "--pg" => o.pg = true,
            "--pg-url" => o.pg_url = Some(value("--pg-url")?),
            "--duration" => o.duration = value("--duration")?.parse()?,
            "--concurrency" => o.concurrency = value("--concurrency")?.parse()?,
            "--tasks" => o.tasks = value("--tasks")?.parse()?,
            "--out" => o.out = Some(value("--out")?.into()),
            "--binary" => o.binary = value("--binary")?.into(),
            "--soak-minutes" => o.soak_minutes = value("--soak-minutes")?.parse()?,
            // What cargo passes to every bench target.
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("http.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other if other.starts_with('-') => bail!("unknown option {other} (see --help)"),
            _ => {} // a libtest-style filter: ignored
        }
    }
    Ok(o)
}

/// The cargo target directory this bench was built in.
fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("own path");
    // <target>/release/deps/http-<hash>
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    if !opts.binary.is_file() {
        bail!(
            "server binary {} not found: run `cargo build --release`",
            opts.binary.display()
        );
    }
    if !opts.soak && Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: `apt-get install -y wrk`");
    }
    let dir = tempfile::Builder::new()
        .prefix("devops-api-bench")
        .tempdir()?;
    let fixture = seed(dir.path(), opts.tasks)?;
    if opts.soak {
        return soak::run(&opts, &fixture, &target_dir());
    }
    run_bench(&opts, &fixture)
}

/// What the seeding produced.
pub struct Fixture {
    pub data_dir: PathBuf,
    pub tokens_file: PathBuf,
    /// `TOKEN TASK_ID` lines: a sample of seeded tasks with their owner's token.
    pub ids_file: PathBuf,
    /// `TOKEN` lines, one per principal.
    pub tokens_only_file: PathBuf,
    pub tokens: Vec<String>,
    pub sample: Vec<(usize, String)>,
    pub seed_seconds: f64,
    pub file_bytes: u64,
    pub work_dir: PathBuf,
    /// What was seeded, for seeding PostgreSQL the same way (`--pg`).
    pub records: Vec<Record>,
}

fn seed(dir: &Path, tasks: usize) -> anyhow::Result<Fixture> {
    let data_dir = dir.join("data");
    let tokens: Vec<String> = (0..PRINCIPALS)
        .map(|_| devops_api::auth::generate_token())
        .collect();
    let tokens_file = dir.join("tokens");
    let mut f = std::fs::File::create(&tokens_file)?;
    for (i, t) in tokens.iter().enumerate() {
        writeln!(f, "bench{i:02}:{t}")?;
    }
    let started = Instant::now();
    let mut records = Vec::with_capacity(tasks);
    let mut sample = Vec::new();
    let statuses = ["todo", "in_progress", "done"];
    let priorities = ["low", "normal", "high"];
    for n in 0..tasks {
        let owner = n % PRINCIPALS;
        let body = json!({
            "title": format!("Seeded task number {n} of the benchmark"),
            "description": "A task created by the benchmark seed, about as long as a real one.",
            "status": statuses[n % 3],
            "priority": priorities[(n / 3) % 3],
            "tags": ["bench", format!("group-{}", n % 17)],
        });
        let task = Task::create(parse_create(&body).map_err(|e| anyhow::anyhow!("{e:?}"))?);
        if n % 5 == 0 {
            sample.push((owner, task.id.to_string()));
        }
        records.push(Record::Task {
            owner: PrincipalName::parse(&format!("bench{owner:02}")).map_err(anyhow::Error::msg)?,
            task,
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = RedbStore::open(&RedbConfig::new(&data_dir))?;
        store
            .import(devops_api::storage::ImportSet::validate(records.clone())?)
            .await?;
        store.close().await;
        anyhow::Ok(())
    })?;
    let seed_seconds = started.elapsed().as_secs_f64();
    let ids_file = dir.join("ids");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&ids_file)?);
    for (owner, id) in &sample {
        writeln!(f, "{} {id}", tokens[*owner])?;
    }
    f.flush()?;
    let tokens_only_file = dir.join("token-lines");
    std::fs::write(
        &tokens_only_file,
        tokens.iter().map(|t| format!("{t}\n")).collect::<String>(),
    )?;
    let file_bytes = std::fs::metadata(RedbConfig::new(&data_dir).db_path())?.len();
    eprintln!(
        "seeded {tasks} tasks in {seed_seconds:.2} s ({:.1} MiB file)",
        file_bytes as f64 / 1048576.0
    );
    Ok(Fixture {
        data_dir,
        tokens_file,
        ids_file,
        tokens_only_file,
        tokens,
        sample,
        seed_seconds,
        file_bytes,
        work_dir: dir.to_path_buf(),
        records,
    })
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One GET over a fresh connection; the status code, or None if it failed.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// A GET over a fresh connection; the whole response, headers and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Mean writes per commit and commits so far, from the server's metrics.
fn commit_batches(addr: SocketAddr) -> Option<(f64, f64)> {
    let text = http_get(addr, "/metrics")?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let (sum, count) = (
        value("store_commit_batch_size_sum")?,
        value("store_commit_batch_size_count")?,
    );
    Some((sum / count.max(1.0), count))
}

/// The server under test.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub startup_ms: f64,
}

impl Server {
    pub fn start(
        binary: &Path,
        fx: &Fixture,
        group_commit: bool,
        log: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_on(binary, fx, group_commit, None, log)
    }

    /// Like `start`, on PostgreSQL when `database_url` is given.
    pub fn start_on(
        binary: &Path,
        fx: &Fixture,
        group_commit: bool,
        database_url: Option<&str>,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::fs::File::create(log)?;
        let started = Instant::now();
        let mut cmd = Command::new(binary);
        match database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        let child = cmd
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&fx.data_dir)
            .arg("--tokens-file")
            .arg(&fx.tokens_file)
            .arg("--group-commit")
            .arg(group_commit.to_string())
            .env("RATE_LIMIT", "0")
            .env("MAX_TASKS_PER_PRINCIPAL", "100000000")
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .env_remove("METRICS_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Server {
            child,
            addr,
            startup_ms: 0.0,
        };
        loop {
            if http_status(addr, "/ready") == Some(200) {
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited during start-up: {status}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the server was not ready within 60 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        server.startup_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the graceful stop.
    pub fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("the server did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `/proc/PID/status` field in KiB (VmHWM: peak RSS, VmRSS: current).
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The result of one closed-loop phase.
#[derive(Debug, Clone, Default)]
struct Phase {
    name: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    requests: u64,
    errors: u64,
    /// The ceiling this phase is compared with (the ones measured around it).
    ceiling: Option<f64>,
}

impl Phase {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name, "requests_per_s": round(self.rps, 0), "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3), "p999_ms": round(self.p999_ms, 3),
            "requests": self.requests, "errors": self.errors,
            "ceiling_rps": self.ceiling.map(|c| round(c, 0)),
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Runs wrk in `mode` against `addr` for `seconds`.
fn wrk(
    opts: &Options,
    fx: &Fixture,
    name: &str,
    mode: &str,
    addr: SocketAddr,
    seconds: u64,
) -> anyhow::Result<Phase> {
    let script = fx.work_dir.join("load.lua");
    if !script.exists() {
        std::fs::write(&script, LUA)?;
    }
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let out = fx.work_dir.join(format!("wrk-{slug}.json"));
    let ids = match mode {
        "get" | "patch" => &fx.ids_file,
        _ => &fx.tokens_only_file,
    };
    let threads = opts.concurrency.clamp(1, 2);
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{}", opts.concurrency))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}"))
        .env("BENCH_MODE", mode)
        .env("BENCH_IDS", ids)
        .env("BENCH_OUT", &out)
        .output()
        .context("cannot run wrk")?;
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let v: Value = serde_json::from_slice(&std::fs::read(&out)?).context("wrk result")?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let errors = n("errors_connect")
        + n("errors_read")
        + n("errors_write")
        + n("errors_status")
        + n("errors_timeout");
    Ok(Phase {
        name: name.to_owned(),
        rps: n("requests") as f64 / (n("duration_us") as f64 / 1e6),
        p50_ms: n("p50_us") as f64 / 1000.0,
        p99_ms: n("p99_us") as f64 / 1000.0,
        p999_ms: n("p999_us") as f64 / 1000.0,
        requests: n("requests"),
        errors,
        ceiling: None,
    })
}

/// Runs a phase after a short warm-up (connections open, caches warm).
fn measured(
    opts: &Options,
    fx: &Fixture,
    name: &str,
    mode: &str,
    addr: SocketAddr,
) -> anyhow::Result<Phase> {
    measured_profiled(opts, fx, name, mode, addr, None)
}

fn measured_profiled(
    opts: &Options,
    fx: &Fixture,
    name: &str,
    mode: &str,
    addr: SocketAddr,
    profile_pid: Option<u32>,
) -> anyhow::Result<Phase> {
    if matches!(mode, "health" | "get" | "list") {
        wrk(opts, fx, &format!("{name}-warmup"), mode, addr, 1)?;
    }
    let perf = match profile_pid.filter(|_| opts.perf) {
        Some(pid) => {
            let dir = target_dir().join("bench");
            std::fs::create_dir_all(&dir)?;
            let data = dir.join(format!("perf-{mode}.data"));
            let child = Command::new("perf")
                .args(["record", "-F", "499", "-g", "-o"])
                .arg(&data)
                .arg("-p")
                .arg(pid.to_string())
                .arg("--")
                .arg("sleep")
                .arg(opts.duration.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run perf")?;
            Some((child, data))
        }
        None => None,
    };
    let p = wrk(opts, fx, name, mode, addr, opts.duration)?;
    if let Some((mut child, data)) = perf {
        child.wait()?;
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "dso,symbol",
                "--percent-limit",
                "0.7",
                "-g",
                "none",
                "-i",
            ])
            .arg(&data)
            .output()?;
        let txt = data.with_extension("txt");
        std::fs::write(&txt, &report.stdout)?;
        eprintln!("  profile: {}", txt.display());
    }
    eprintln!(
        "  {:<28} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}",
        p.name, p.rps, p.p50_ms, p.p99_ms, p.p999_ms, p.errors
    );
    Ok(p)
}

/// The framework ceiling: a minimal axum handler answering `/health` with the
/// same JSON, on its own multi-threaded runtime (one worker per core, as the
/// server's), in a thread of this process. Stopped when the guard drops.
struct Ceiling {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ceiling {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                #[derive(serde::Serialize)]
                struct Health {
                    status: &'static str,
                }
                let app = axum::Router::new().route(
                    "/health",
                    axum::routing::get(|| async { axum::Json(Health { status: "healthy" }) }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("ceiling server");
            });
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ceiling_phase(opts: &Options, fx: &Fixture, name: &str) -> anyhow::Result<Phase> {
    let ceiling = Ceiling::start()?;
    let p = measured(opts, fx, name, "health", ceiling.addr)?;
    drop(ceiling);
    Ok(p)
}

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({ "cores": cores, "cpu": model, "loadavg_at_start": load.trim() })
}

fn run_bench(opts: &Options, fx: &Fixture) -> anyhow::Result<()> {
    let machine = machine();
    eprintln!("machine: {machine}");
    let logs = &fx.work_dir;

    // Start-up to ready with the seeded file: three cold process starts.
    let mut startups = Vec::new();
    for i in 0..3 {
        let s = Server::start(
            &opts.binary,
            fx,
            true,
            &logs.join(format!("startup-{i}.log")),
        )?;
        startups.push(s.startup_ms);
        s.stop()?;
    }
    startups.sort_by(f64::total_cmp);
    let startup_ms = startups[1];
    eprintln!("start-up to ready: {startups:?} ms (median {startup_ms:.1})");

    // The read phases are bracketed by ceiling phases (C0 health C1 get C2
    // list C3), each ratio taken against the mean of the two ceilings around
    // it: on a shared 2-core machine the available CPU drifts within a run,
    // and bracketing keeps the drift out of the ratios. The server idles while
    // the in-bench ceiling runs, and the other way round.
    let server = Server::start(&opts.binary, fx, true, &logs.join("server-group.log"))?;
    let addr = server.addr;
    let pid = Some(server.pid());
    let mut ceilings = vec![ceiling_phase(opts, fx, "ceiling /health #1")?];
    let mut reads = Vec::new();
    for (name, mode) in [
        ("GET /health", "health"),
        ("GET /v1/tasks/{id}", "get"),
        ("GET /v1/tasks?limit=50", "list"),
    ] {
        let mut p = measured_profiled(opts, fx, name, mode, addr, pid)?;
        ceilings.push(ceiling_phase(
            opts,
            fx,
            &format!("ceiling /health #{}", ceilings.len() + 1),
        )?);
        p.ceiling =
            Some((ceilings[ceilings.len() - 2].rps + ceilings[ceilings.len() - 1].rps) / 2.0);
        reads.push(p);
    }
    eprintln!("server, group commit on:");
    // No write yet: the histogram does not exist yet.
    let before = commit_batches(addr).or(Some((0.0, 0.0)));
    let post = measured_profiled(opts, fx, "POST /v1/tasks", "post", addr, pid)?;
    let after = commit_batches(addr);
    let patch = measured(opts, fx, "PATCH /v1/tasks/{id}", "patch", addr)?;
    // Writes per commit during the POST phase.
    let post_batch = match (before, after) {
        (Some((m0, c0)), Some((m1, c1))) if c1 > c0 => Some((m1 * c1 - m0 * c0) / (c1 - c0)),
        _ => None,
    };
    let post_commits_per_s = match (before, after) {
        (Some((_, c0)), Some((_, c1))) => Some((c1 - c0) / opts.duration as f64),
        _ => None,
    };
    if let (Some(b), Some(c)) = (post_batch, post_commits_per_s) {
        eprintln!("  POST phase: {b:.1} writes per commit, {c:.0} commits/s");
    }
    let peak_kib = proc_kib(server.pid(), "VmHWM").unwrap_or(0);
    let rss_kib = proc_kib(server.pid(), "VmRSS").unwrap_or(0);
    let fds = open_fds(server.pid()).unwrap_or(0);
    server.stop()?;

    eprintln!("server, group commit off (naive store):");
    let naive = Server::start(&opts.binary, fx, false, &logs.join("server-naive.log"))?;
    let post_naive = measured(opts, fx, "POST /v1/tasks (naive)", "post", naive.addr)?;
    let patch_naive = measured(
        opts,
        fx,
        "PATCH /v1/tasks/{id} (naive)",
        "patch",
        naive.addr,
    )?;
    let naive_peak_kib = proc_kib(naive.pid(), "VmHWM").unwrap_or(0);
    naive.stop()?;

    // PostgreSQL (`--pg`): the same store phases against the same binary on a
    // database seeded with the same tasks, read phases bracketed by ceilings
    // like the redb ones.
    let mut pg_phases = Vec::new();
    let mut pg_report = Value::Null;
    if opts.pg {
        let db = pg::prepare(opts.pg_url.as_deref(), fx.records.clone())?;
        let mut startups = Vec::new();
        for i in 0..3 {
            let s = Server::start_on(
                &opts.binary,
                fx,
                true,
                Some(&db.url),
                &logs.join(format!("startup-pg-{i}.log")),
            )?;
            startups.push(s.startup_ms);
            s.stop()?;
        }
        startups.sort_by(f64::total_cmp);
        eprintln!("PostgreSQL start-up to ready: {startups:?} ms");
        let server = Server::start_on(
            &opts.binary,
            fx,
            true,
            Some(&db.url),
            &logs.join("server-pg.log"),
        )?;
        eprintln!("server on PostgreSQL:");
        ceilings.push(ceiling_phase(
            opts,
            fx,
            &format!("ceiling /health #{}", ceilings.len() + 1),
        )?);
        for (name, mode) in [
            ("GET /v1/tasks/{id} (PostgreSQL)", "get"),
            ("GET /v1/tasks?limit=50 (PostgreSQL)", "list"),
        ] {
            let mut p = measured(opts, fx, name, mode, server.addr)?;
            ceilings.push(ceiling_phase(
                opts,
                fx,
                &format!("ceiling /health #{}", ceilings.len() + 1),
            )?);
            p.ceiling =
                Some((ceilings[ceilings.len() - 2].rps + ceilings[ceilings.len() - 1].rps) / 2.0);
            pg_phases.push(p);
        }
        pg_phases.push(measured(
            opts,
            fx,
            "POST /v1/tasks (PostgreSQL)",
            "post",
            server.addr,
        )?);
        pg_phases.push(measured(
            opts,
            fx,
            "PATCH /v1/tasks/{id} (PostgreSQL)",
            "patch",
            server.addr,
        )?);
        let pg_peak = proc_kib(server.pid(), "VmHWM").unwrap_or(0);
        server.stop()?;
        pg_report = json!({
            "settings": db.settings,
            "pool_size": 10,
            "own_cluster": opts.pg_url.is_none(),
            "seed_seconds": round(db.seed_seconds, 2),
            "startup_ms": { "median": round(startups[1], 1), "runs": startups.iter().map(|v| round(*v, 1)).collect::<Vec<_>>() },
            "peak_rss_mib": round(pg_peak as f64 / 1024.0, 1),
        });
        drop(db);
    }

    let ceiling_rps = ceilings.iter().map(|c| c.rps).sum::<f64>() / ceilings.len() as f64;
    let ratio = |p: &Phase| p.rps / p.ceiling.unwrap_or(ceiling_rps);
    let (get_ratio, list_ratio) = (ratio(&reads[1]), ratio(&reads[2]));
    let peak_mib = peak_kib as f64 / 1024.0;
    let post_ratio = post.rps / post_naive.rps;
    let targets = vec![
        target(
            "GET /v1/tasks/{id} vs ceiling",
            get_ratio,
            ">= 0.6",
            get_ratio >= 0.6,
        ),
        target(
            "GET /v1/tasks?limit=50 vs ceiling",
            list_ratio,
            ">= 0.25",
            list_ratio >= 0.25,
        ),
        target(
            "POST group vs naive",
            post_ratio,
            ">= 12",
            post_ratio >= 12.0,
        ),
        target(
            "POST group p99 ms (c=64)",
            post.p99_ms,
            "<= 25",
            post.p99_ms <= 25.0,
        ),
        target("peak RSS MiB", peak_mib, "<= 64", peak_mib <= 64.0),
        target(
            "start-up to ready ms",
            startup_ms,
            "<= 200",
            startup_ms <= 200.0,
        ),
    ];

    let mut phases = ceilings;
    phases.extend(reads);
    phases.extend([post, patch, post_naive, patch_naive]);
    // GET id, list, POST, PATCH on redb (group commit), beside PostgreSQL.
    let redb_store_phases: Vec<Phase> = phases
        .iter()
        .filter(|p| !p.name.starts_with("ceiling"))
        .skip(1)
        .take(4)
        .cloned()
        .collect();
    phases.extend(pg_phases.iter().cloned());
    print_table(
        opts,
        fx,
        &machine,
        &phases,
        ceiling_rps,
        &targets,
        peak_mib,
        startup_ms,
    );
    if let (Some(b), Some(c)) = (post_batch, post_commits_per_s) {
        println!("POST with group commit: {b:.1} writes per commit, {c:.0} commits/s");
    }
    let mut store_comparison = Vec::new();
    if !pg_phases.is_empty() {
        println!();
        println!(
            "| phase | redb req/s | PostgreSQL req/s | PostgreSQL / redb | redb p99 ms | PostgreSQL p99 ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (r, p) in redb_store_phases.iter().zip(&pg_phases) {
            println!(
                "| {} | {:.0} | {:.0} | {:.2}× | {:.2} | {:.2} |",
                r.name,
                r.rps,
                p.rps,
                p.rps / r.rps,
                r.p99_ms,
                p.p99_ms
            );
            store_comparison.push(json!({
                "phase": r.name, "redb_rps": round(r.rps, 0), "postgres_rps": round(p.rps, 0),
                "postgres_vs_redb": round(p.rps / r.rps, 3),
                "redb_p99_ms": round(r.p99_ms, 3), "postgres_p99_ms": round(p.p99_ms, 3),
            }));
        }
        println!();
        println!(
            "PostgreSQL: {} (pool 10, the default); start-up to ready {} ms; peak RSS {} MiB; seed {} s",
            pg_report["settings"],
            pg_report["startup_ms"]["median"],
            pg_report["peak_rss_mib"],
            pg_report["seed_seconds"]
        );
    }

    let report = json!({
        "machine": machine,
        "config": {
            "concurrency": opts.concurrency, "phase_seconds": opts.duration, "tasks": opts.tasks,
            "principals": PRINCIPALS, "load_generator": "wrk -t2", "seed": "RedbStore::import, one transaction",
            "server_env": "RATE_LIMIT=0 LOG_FORMAT=json LOG_LEVEL=info, group commit on unless marked naive",
        },
        "seed_seconds": round(fx.seed_seconds, 2),
        "db_file_mib": round(fx.file_bytes as f64 / 1048576.0, 1),
        "startup_ms": { "median": round(startup_ms, 1), "runs": startups.iter().map(|v| round(*v, 1)).collect::<Vec<_>>() },
        "peak_rss_mib": round(peak_mib, 1),
        "rss_at_end_mib": round(rss_kib as f64 / 1024.0, 1),
        "open_fds_at_end": fds,
        "naive_peak_rss_mib": round(naive_peak_kib as f64 / 1024.0, 1),
        "post_writes_per_commit": post_batch.map(|b| round(b, 1)),
        "post_commits_per_s": post_commits_per_s.map(|c| round(c, 0)),
        "ceiling_rps": round(ceiling_rps, 0),
        "phases": phases.iter().map(Phase::to_json).collect::<Vec<_>>(),
        "targets": targets,
        "postgres": pg_report,
        "redb_vs_postgres": store_comparison,
    });
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench").join("http.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn target(name: &str, value: f64, goal: &str, met: bool) -> Value {
    json!({ "target": name, "value": round(value, 3), "goal": goal, "met": met })
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    opts: &Options,
    fx: &Fixture,
    machine: &Value,
    phases: &[Phase],
    ceiling_rps: f64,
    targets: &[Value],
    peak_mib: f64,
    startup_ms: f64,
) {
    println!();
    println!(
        "devops-api HTTP benchmark: {} cores, {}; c={}, {} s phases, {} tasks / {} principals",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        opts.concurrency,
        opts.duration,
        opts.tasks,
        PRINCIPALS
    );
    println!();
    println!("| phase | req/s | p50 ms | p99 ms | p99.9 ms | errors | vs ceiling* |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for p in phases {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2}× |",
            p.name,
            p.rps,
            p.p50_ms,
            p.p99_ms,
            p.p999_ms,
            p.errors,
            p.rps / p.ceiling.unwrap_or(ceiling_rps)
        );
    }
    println!();
    println!(
        "* read phases: against the mean of the two ceiling phases around them; others: the mean of all ceiling phases ({ceiling_rps:.0} req/s)"
    );
    println!(
        "peak RSS {peak_mib:.1} MiB; start-up to ready {startup_ms:.1} ms (median of 3); seed {:.1} s, file {:.1} MiB",
        fx.seed_seconds,
        fx.file_bytes as f64 / 1048576.0
    );
    println!();
    println!("| target | value | goal | met |");
    println!("|---|---:|---|---|");
    for t in targets {
        println!(
            "| {} | {} | {} | {} |",
            t["target"].as_str().unwrap_or(""),
            t["value"],
            t["goal"].as_str().unwrap_or(""),
            if t["met"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            }
        );
    }
}
