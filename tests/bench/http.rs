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
//! (the same binary with `--group-commit false`). Then the configuration the
//! stack deploys: the static musl binary (when one is given or built), the
//! file shared in `--db-sharing multi-writer` mode, and two processes serving
//! one file at once (as during a start-first rolling update), and a second
//! file with 1 000 000 tasks for start-up and peak memory at that size. Every
//! phase also reports the server's CPU time per request (user + system µs /
//! requests, from /proc): steadier than req/s on a shared machine, and the
//! number to compare across runs. Prints the phases and the targets of issue
//! 15 and writes both as JSON (default `target/bench/http.json`).
//!
//! Options (after `--`):
//!   --quick              3 s phases instead of 10 s
//!   --duration SECS      length of each measured phase
//!   --concurrency N      connections (default 64)
//!   --tasks N            tasks to seed (default 100000)
//!   --out FILE           JSON output (default <target>/bench/http.json)
//!   --binary FILE        server binary (default: the release binary cargo built)
//!   --musl FILE          the static musl binary the image runs (default
//!                        <target>/x86_64-unknown-linux-musl/release/devops-api
//!                        when it exists; build it with `cargo build --release
//!                        --target x86_64-unknown-linux-musl`, needs musl-tools);
//!                        without one the musl rows say "not measured"
//!   --big-tasks N        tasks in the second file for start-up and peak RSS
//!                        (default 1000000; 0 skips it)
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
//!   --pg-pools N,N,...   PostgreSQL pool sizes to run the store phases with, one
//!                        server each (DATABASE_POOL_SIZE; default 10, the
//!                        server's default), and a table of them side by side
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
    /// `--pg-pools`: the pool sizes of the PostgreSQL runs, the first is the
    /// one compared with redb when 10 (the default) is not among them.
    pub pg_pools: Vec<usize>,
    pub musl: Option<PathBuf>,
    /// Whether `musl` was given (`--musl`) rather than found in the target dir.
    pub musl_given: bool,
    pub big_tasks: usize,
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
        pg_pools: vec![10],
        musl: None,
        musl_given: false,
        big_tasks: 1_000_000,
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
            "--pg-pools" => {
                o.pg_pools = value("--pg-pools")?
                    .split(',')
                    .map(|n| match n.trim().parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(anyhow::anyhow!(
                            "--pg-pools: `{n}` is not a pool size (1 or more)"
                        )),
                    })
                    .collect::<anyhow::Result<_>>()?;
                o.pg = true;
            }
            "--duration" => o.duration = value("--duration")?.parse()?,
            "--concurrency" => o.concurrency = value("--concurrency")?.parse()?,
            "--tasks" => o.tasks = value("--tasks")?.parse()?,
            "--out" => o.out = Some(value("--out")?.into()),
            "--binary" => o.binary = value("--binary")?.into(),
            "--musl" => {
                o.musl = Some(value("--musl")?.into());
                o.musl_given = true;
            }
            "--big-tasks" => o.big_tasks = value("--big-tasks")?.parse()?,
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
    if o.musl.is_none() {
        let built = target_dir()
            .join("x86_64-unknown-linux-musl")
            .join("release")
            .join("devops-api");
        o.musl = built.is_file().then_some(built);
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
    let mut opts = parse_args()?;
    if !opts.binary.is_file() {
        bail!(
            "server binary {} not found: run `cargo build --release`",
            opts.binary.display()
        );
    }
    if let Some(m) = &opts.musl {
        if !m.is_file() {
            bail!("musl binary {} not found", m.display());
        }
        // A musl binary left from another commit would compare two builds
        // of different code: both must say the same `--version` (commit and
        // whether the tree was dirty).
        let version = |b: &Path| -> anyhow::Result<String> {
            let out = Command::new(b).arg("--version").output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let (glibc, musl) = (version(&opts.binary)?, version(m)?);
        if glibc != musl && !opts.musl_given {
            eprintln!(
                "not measuring the musl binary found at {}: it is another build ({musl}) than \
                 {} ({glibc}); rebuild it with `cargo build --release --target x86_64-unknown-linux-musl`",
                m.display(),
                opts.binary.display()
            );
            opts.musl = None;
        } else if glibc != musl {
            bail!(
                "the musl binary {} is another build ({musl}) than {} ({glibc}): rebuild it with \
                 `cargo build --release --target x86_64-unknown-linux-musl`",
                m.display(),
                opts.binary.display()
            );
        }
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
    /// `TOKEN CURSOR` lines: a page cursor at each sampled task, so that
    /// pages start anywhere in their owner's tasks (records not read lately).
    pub cursors_file: PathBuf,
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
    let cursors_file = dir.join("cursors");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&cursors_file)?);
    for (owner, id) in &sample {
        let id = devops_api::domain::TaskId::parse(id).context("sampled id")?;
        writeln!(
            f,
            "{} {}",
            tokens[*owner],
            devops_api::domain::encode_cursor(id)
        )?;
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
        cursors_file,
        tokens,
        sample,
        seed_seconds,
        file_bytes,
        work_dir: dir.to_path_buf(),
        records,
    })
}

/// Turns `fx`'s file into one from a release before the list filters'
/// index: the index table is gone, the records are untouched.
fn drop_task_index(fx: &Fixture) -> anyhow::Result<()> {
    let db = redb::Database::open(RedbConfig::new(&fx.data_dir).db_path())?;
    let txn = db.begin_write()?;
    let index: redb::TableDefinition<&[u8], ()> = redb::TableDefinition::new("task_index_v1");
    anyhow::ensure!(txn.delete_table(index)?, "the file has no task_index_v1");
    txn.commit()?;
    Ok(())
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

/// How a server under test is started.
pub struct Launch<'a> {
    pub group_commit: bool,
    pub database_url: Option<&'a str>,
    /// `DATABASE_POOL_SIZE` on PostgreSQL; the server's default when `None`.
    pub pool_size: Option<usize>,
    /// `--db-sharing`: `exclusive` (the default) or `multi-writer` (the stack's).
    pub db_sharing: &'a str,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Self {
            group_commit: true,
            database_url: None,
            pool_size: None,
            db_sharing: "exclusive",
        }
    }
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
        Self::launch(
            binary,
            fx,
            &Launch {
                group_commit,
                database_url,
                ..Launch::default()
            },
            log,
        )
    }

    pub fn launch(
        binary: &Path,
        fx: &Fixture,
        how: &Launch<'_>,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::fs::File::create(log)?;
        let started = Instant::now();
        let mut cmd = Command::new(binary);
        match how.database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        match how.pool_size {
            Some(n) => cmd.env("DATABASE_POOL_SIZE", n.to_string()),
            None => cmd.env_remove("DATABASE_POOL_SIZE"),
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
            .arg(how.group_commit.to_string())
            .arg("--db-sharing")
            .arg(how.db_sharing)
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
    /// The server's CPU time (user + system) per request, in µs.
    cpu_us: Option<f64>,
}

impl Phase {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name, "requests_per_s": round(self.rps, 0), "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3), "p999_ms": round(self.p999_ms, 3),
            "requests": self.requests, "errors": self.errors,
            "ceiling_rps": self.ceiling.map(|c| round(c, 0)),
            "server_cpu_us_per_request": self.cpu_us.map(|c| round(c, 1)),
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// CPU time (user + system) a process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')'
    // start with field 3, so utime (14) and stime (15) are the 12th and 13th.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of /proc's CPU times: USER_HZ, 100 on every Linux
/// architecture this runs on (the kernel's own HZ is hidden behind it).
const TICKS_PER_S: f64 = 100.0;

/// Server CPU µs per request between two `cpu_ticks` readings.
fn cpu_us_per_request(before: u64, after: u64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| (after - before) as f64 / TICKS_PER_S * 1e6 / requests as f64)
}

/// Runs wrk in `mode` against `addr` for `seconds` over `conns` connections.
fn wrk(
    fx: &Fixture,
    name: &str,
    mode: &str,
    (addr, conns): (SocketAddr, usize),
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
        "pages" => &fx.cursors_file,
        _ => &fx.tokens_only_file,
    };
    let threads = conns.clamp(1, 2);
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
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
        cpu_us: None,
    })
}

/// Runs a phase after a short warm-up (connections open, caches warm), with
/// the CPU time of process `pid` (the server) per request.
fn measured(
    opts: &Options,
    fx: &Fixture,
    name: &str,
    mode: &str,
    addr: SocketAddr,
    pid: u32,
) -> anyhow::Result<Phase> {
    measured_profiled(opts, fx, name, mode, addr, pid, None)
}

/// Like `measured`; with `profile` (the name of the profile's files) and
/// `--perf`, records a CPU profile of `pid`.
fn measured_profiled(
    opts: &Options,
    fx: &Fixture,
    name: &str,
    mode: &str,
    addr: SocketAddr,
    pid: u32,
    profile: Option<&str>,
) -> anyhow::Result<Phase> {
    if matches!(mode, "health" | "get" | "list" | "pages") {
        wrk(
            fx,
            &format!("{name}-warmup"),
            mode,
            (addr, opts.concurrency),
            1,
        )?;
    }
    let perf = match profile.filter(|_| opts.perf) {
        Some(profile) => {
            let dir = target_dir().join("bench");
            std::fs::create_dir_all(&dir)?;
            let data = dir.join(format!("perf-{profile}.data"));
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
    let cpu_before = cpu_ticks(pid);
    let mut p = wrk(fx, name, mode, (addr, opts.concurrency), opts.duration)?;
    if let (Some(b), Some(a)) = (cpu_before, cpu_ticks(pid)) {
        p.cpu_us = cpu_us_per_request(b, a, p.requests);
    }
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
    log_phase(&p);
    Ok(p)
}

fn log_phase(p: &Phase) {
    eprintln!(
        "  {:<28} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}  cpu {:.1} µs/req",
        p.name,
        p.rps,
        p.p50_ms,
        p.p99_ms,
        p.p999_ms,
        p.errors,
        p.cpu_us.unwrap_or(f64::NAN)
    );
}

/// One phase against several servers sharing one file at once (as during a
/// start-first rolling update): `opts.concurrency` connections split evenly,
/// one wrk per server, started together. Requests and req/s are summed,
/// latencies are the worst server's, CPU is all servers' per request.
fn measured_shared(
    opts: &Options,
    fx: &Fixture,
    name: &str,
    mode: &str,
    servers: &[&Server],
) -> anyhow::Result<Phase> {
    let conns = (opts.concurrency / servers.len()).max(1);
    let run = |seconds: u64, tag: &str| -> anyhow::Result<Vec<Phase>> {
        std::thread::scope(|scope| {
            let runs: Vec<_> = servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let phase_name = format!("{name}{tag}-{i}");
                    scope.spawn(move || wrk(fx, &phase_name, mode, (s.addr, conns), seconds))
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("wrk thread"))
                .collect()
        })
    };
    if matches!(mode, "get" | "list") {
        run(1, "-warmup")?;
    }
    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_ticks(*p)).sum::<Option<u64>>();
    let before = cpu(&pids);
    let parts = run(opts.duration, "")?;
    let after = cpu(&pids);
    let worst = |f: fn(&Phase) -> f64| parts.iter().map(f).fold(0.0, f64::max);
    let requests = parts.iter().map(|p| p.requests).sum();
    let p = Phase {
        name: name.to_owned(),
        rps: parts.iter().map(|p| p.rps).sum(),
        p50_ms: worst(|p| p.p50_ms),
        p99_ms: worst(|p| p.p99_ms),
        p999_ms: worst(|p| p.p999_ms),
        requests,
        errors: parts.iter().map(|p| p.errors).sum(),
        ceiling: None,
        cpu_us: match (before, after) {
            (Some(b), Some(a)) => cpu_us_per_request(b, a, requests),
            _ => None,
        },
    };
    log_phase(&p);
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
    // The ceiling runs on a runtime in this process: its CPU is ours.
    let p = measured(opts, fx, name, "health", ceiling.addr, std::process::id())?;
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

/// Three cold starts of `binary` on `fx`'s file: the median time from exec to
/// the first 200 from `/ready`, and every run.
fn startups(
    binary: &Path,
    fx: &Fixture,
    how: &Launch<'_>,
    tag: &str,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut runs = Vec::new();
    for i in 0..3 {
        let log = fx.work_dir.join(format!("startup{tag}-{i}.log"));
        let s = Server::launch(binary, fx, how, &log)?;
        runs.push(s.startup_ms);
        s.stop()?;
    }
    runs.sort_by(f64::total_cmp);
    eprintln!(
        "start-up to ready{tag}: {runs:?} ms (median {:.1})",
        runs[1]
    );
    Ok((runs[1], runs))
}

fn push_ceiling(opts: &Options, fx: &Fixture, ceilings: &mut Vec<Phase>) -> anyhow::Result<()> {
    let name = format!("ceiling /health #{}", ceilings.len() + 1);
    ceilings.push(ceiling_phase(opts, fx, &name)?);
    Ok(())
}

/// A read phase compared with the ceilings around it: the last one in
/// `ceilings` (measured before it) and one more measured right after it. On a
/// shared 2-core machine the available CPU drifts within a run; bracketing
/// keeps the drift out of the ratios. The server idles while the in-bench
/// ceiling runs, and the other way round.
fn bracketed(
    opts: &Options,
    fx: &Fixture,
    ceilings: &mut Vec<Phase>,
    (name, mode): (&str, &str),
    server: &Server,
    profile: Option<&str>,
) -> anyhow::Result<Phase> {
    let mut p = measured_profiled(opts, fx, name, mode, server.addr, server.pid(), profile)?;
    push_ceiling(opts, fx, ceilings)?;
    let n = ceilings.len();
    p.ceiling = Some((ceilings[n - 2].rps + ceilings[n - 1].rps) / 2.0);
    Ok(p)
}

/// The store phases of one configuration on `server`, each named with
/// `label`: a fresh ceiling, GET by id and list bracketed by ceilings, POST,
/// and PATCH when `patch`.
fn store_phases(
    opts: &Options,
    fx: &Fixture,
    ceilings: &mut Vec<Phase>,
    server: &Server,
    label: &str,
    patch: bool,
) -> anyhow::Result<Vec<Phase>> {
    push_ceiling(opts, fx, ceilings)?;
    let mut phases = Vec::new();
    for (name, mode) in [
        ("GET /v1/tasks/{id}", "get"),
        ("GET /v1/tasks?limit=50", "list"),
    ] {
        let name = format!("{name} ({label})");
        // The deployed configuration's reads are profiled too (`perf-get-mw`).
        let profile = (label == "multi-writer").then(|| format!("{mode}-mw"));
        phases.push(bracketed(
            opts,
            fx,
            ceilings,
            (&name, mode),
            server,
            profile.as_deref(),
        )?);
    }
    let writes: &[(&str, &str)] = if patch {
        &[
            ("POST /v1/tasks", "post"),
            ("PATCH /v1/tasks/{id}", "patch"),
        ]
    } else {
        &[("POST /v1/tasks", "post")]
    };
    for (name, mode) in writes {
        let name = format!("{name} ({label})");
        phases.push(measured(opts, fx, &name, mode, server.addr, server.pid())?);
    }
    Ok(phases)
}

/// One configuration against another, phase by phase: read phases by their
/// ratios to their own ceilings (drift-free), write phases by req/s (they
/// wait for the disk more than for the CPU), and CPU µs per request for both.
fn compare(title: &str, pairs: &[(&Phase, &Phase)], ceiling_rps: f64) -> (Option<f64>, Value) {
    println!();
    println!("{title}:");
    println!("| phase | base req/s | req/s | ratio | base cpu µs/req | cpu µs/req |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut worst: Option<f64> = None;
    let mut rows = Vec::new();
    for (base, other) in pairs {
        let ratio = match (base.ceiling, other.ceiling) {
            (Some(_), Some(_)) => vs_ceiling(other, ceiling_rps) / vs_ceiling(base, ceiling_rps),
            _ => other.rps / base.rps,
        };
        worst = Some(worst.map_or(ratio, |w| w.min(ratio)));
        println!(
            "| {} | {:.0} | {:.0} | {:.2}× | {:.1} | {:.1} |",
            other.name,
            base.rps,
            other.rps,
            ratio,
            base.cpu_us.unwrap_or(f64::NAN),
            other.cpu_us.unwrap_or(f64::NAN)
        );
        rows.push(json!({
            "phase": other.name, "base": base.name, "ratio": round(ratio, 3),
            "base_cpu_us": base.cpu_us.map(|c| round(c, 1)), "cpu_us": other.cpu_us.map(|c| round(c, 1)),
        }));
    }
    (worst, json!({ "title": title, "rows": rows }))
}

fn vs_ceiling(p: &Phase, ceiling_rps: f64) -> f64 {
    p.rps / p.ceiling.unwrap_or(ceiling_rps)
}

fn run_bench(opts: &Options, fx: &Fixture) -> anyhow::Result<()> {
    let machine = machine();
    eprintln!("machine: {machine}");
    let logs = &fx.work_dir;
    let exclusive = Launch::default();

    // Start-up to ready with the seeded file: three cold process starts.
    let (startup_ms, startup_runs) = startups(&opts.binary, fx, &exclusive, "")?;

    // The read phases are bracketed by ceiling phases (C0 health C1 get C2
    // list C3 pages C4), each ratio taken against the mean of the two around it.
    let server = Server::launch(&opts.binary, fx, &exclusive, &logs.join("server-group.log"))?;
    let addr = server.addr;
    let mut ceilings = Vec::new();
    push_ceiling(opts, fx, &mut ceilings)?;
    let mut reads = Vec::new();
    for phase in [
        ("GET /health", "health"),
        ("GET /v1/tasks/{id}", "get"),
        ("GET /v1/tasks?limit=50", "list"),
        // Pages anywhere in the owner's tasks: records mostly not read
        // lately, so mostly decoded afresh (the list above polls one page).
        ("GET /v1/tasks?limit=50&cursor=…", "pages"),
    ] {
        reads.push(bracketed(
            opts,
            fx,
            &mut ceilings,
            phase,
            &server,
            Some(phase.1),
        )?);
    }
    eprintln!("server, group commit on:");
    // No write yet: the histogram does not exist yet.
    let before = commit_batches(addr).or(Some((0.0, 0.0)));
    let post = measured_profiled(
        opts,
        fx,
        "POST /v1/tasks",
        "post",
        addr,
        server.pid(),
        Some("post"),
    )?;
    let after = commit_batches(addr);
    let patch = measured(
        opts,
        fx,
        "PATCH /v1/tasks/{id}",
        "patch",
        addr,
        server.pid(),
    )?;
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
    let naive = Server::launch(
        &opts.binary,
        fx,
        &Launch {
            group_commit: false,
            ..Launch::default()
        },
        &logs.join("server-naive.log"),
    )?;
    let post_naive = measured(
        opts,
        fx,
        "POST /v1/tasks (naive)",
        "post",
        naive.addr,
        naive.pid(),
    )?;
    let patch_naive = measured(
        opts,
        fx,
        "PATCH /v1/tasks/{id} (naive)",
        "patch",
        naive.addr,
        naive.pid(),
    )?;
    let naive_peak_kib = proc_kib(naive.pid(), "VmHWM").unwrap_or(0);
    naive.stop()?;

    // The static musl binary of the image, same phases as above.
    let mut musl_phases = Vec::new();
    if let Some(musl) = &opts.musl {
        eprintln!("server, static musl binary {}:", musl.display());
        let s = Server::launch(musl, fx, &exclusive, &logs.join("server-musl.log"))?;
        musl_phases = store_phases(opts, fx, &mut ceilings, &s, "musl", true)?;
        s.stop()?;
    }

    // The deployed configuration: the image's binary (musl when there is
    // one), the file shared in multi-writer mode; then two processes serving
    // the one file at once, as during a start-first rolling update.
    let (deployed, deployed_label) = match &opts.musl {
        Some(m) => (m.as_path(), "musl"),
        None => (opts.binary.as_path(), "glibc"),
    };
    eprintln!("server, {deployed_label} binary, --db-sharing multi-writer:");
    let mw = Launch {
        db_sharing: "multi-writer",
        ..Launch::default()
    };
    let first = Server::launch(deployed, fx, &mw, &logs.join("server-mw-0.log"))?;
    let mut mw_phases = store_phases(opts, fx, &mut ceilings, &first, "multi-writer", false)?;
    let second = Server::launch(deployed, fx, &mw, &logs.join("server-mw-1.log"))?;
    for (name, mode) in [
        ("GET /v1/tasks/{id} (2 processes, one file)", "get"),
        ("POST /v1/tasks (2 processes, one file)", "post"),
    ] {
        mw_phases.push(measured_shared(opts, fx, name, mode, &[&first, &second])?);
    }
    first.stop()?;
    second.stop()?;

    // PostgreSQL (`--pg`): the same store phases against the same binary on a
    // database seeded with the same tasks, read phases bracketed by ceilings
    // like the redb ones.
    // With several pool sizes (`--pg-pools`), one server per size on the same
    // database, one after the other; the redb comparison uses pool 10 (the
    // default) or else the first size.
    let mut pg_sweep: Vec<(usize, Vec<Phase>)> = Vec::new();
    let mut pg_report = Value::Null;
    let compared_pool = if opts.pg_pools.contains(&10) {
        10
    } else {
        opts.pg_pools[0]
    };
    if opts.pg {
        let db = pg::prepare(opts.pg_url.as_deref(), fx.records.clone())?;
        let at = |pool| Launch {
            database_url: Some(&db.url),
            pool_size: Some(pool),
            ..Launch::default()
        };
        let (_, pg_startups) = startups(&opts.binary, fx, &at(compared_pool), "-pg")?;
        let mut pg_peak = 0;
        for &pool in &opts.pg_pools {
            let log = logs.join(format!("server-pg-{pool}.log"));
            let server = Server::launch(&opts.binary, fx, &at(pool), &log)?;
            eprintln!("server on PostgreSQL, pool {pool}:");
            let label = if opts.pg_pools.len() == 1 {
                "PostgreSQL".to_owned()
            } else {
                format!("PostgreSQL, pool {pool}")
            };
            let phases = store_phases(opts, fx, &mut ceilings, &server, &label, true)?;
            if pool == compared_pool {
                pg_peak = proc_kib(server.pid(), "VmHWM").unwrap_or(0);
            }
            server.stop()?;
            pg_sweep.push((pool, phases));
        }
        pg_report = json!({
            "settings": db.settings,
            "pool_size": compared_pool,
            "pool_sizes": opts.pg_pools,
            "own_cluster": opts.pg_url.is_none(),
            "seed_seconds": round(db.seed_seconds, 2),
            "startup_ms": { "median": round(pg_startups[1], 1), "runs": pg_startups.iter().map(|v| round(*v, 1)).collect::<Vec<_>>() },
            "peak_rss_mib": round(pg_peak as f64 / 1024.0, 1),
        });
        drop(db);
    }

    // Start-up and peak memory with a big file (default 10^6 tasks), the
    // same load phases on it.
    let mut big_phases = Vec::new();
    let mut big = None;
    if opts.big_tasks > 0 {
        let dir = fx.work_dir.join("big");
        std::fs::create_dir_all(&dir)?;
        let mut bfx = seed(&dir, opts.big_tasks)?;
        bfx.records = Vec::new();
        let (big_startup, big_runs) = startups(&opts.binary, &bfx, &exclusive, "-big")?;
        let s = Server::launch(&opts.binary, &bfx, &exclusive, &dir.join("server-big.log"))?;
        let label = opts.big_tasks;
        for (name, mode) in [
            (format!("GET /v1/tasks/{{id}} ({label} tasks)"), "get"),
            (format!("GET /v1/tasks?limit=50 ({label} tasks)"), "list"),
            (format!("POST /v1/tasks ({label} tasks)"), "post"),
        ] {
            big_phases.push(measured(opts, &bfx, &name, mode, s.addr, s.pid())?);
        }
        let peak = proc_kib(s.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        s.stop()?;
        // The first start after an upgrade from a release before the list
        // filters' index: the store builds it from every record before it
        // is ready (`tables::init_tables`).
        drop_task_index(&bfx)?;
        let s = Server::launch(
            &opts.binary,
            &bfx,
            &exclusive,
            &dir.join("server-backfill.log"),
        )?;
        let (backfill_ms, backfill_peak) = (
            s.startup_ms,
            proc_kib(s.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0,
        );
        s.stop()?;
        eprintln!(
            "start-up to ready building the index: {backfill_ms:.0} ms, peak RSS {backfill_peak:.1} MiB"
        );
        big = Some(json!({
            "tasks": opts.big_tasks, "seed_seconds": round(bfx.seed_seconds, 2),
            "db_file_mib": round(bfx.file_bytes as f64 / 1048576.0, 1),
            "startup_ms": { "median": round(big_startup, 1), "runs": big_runs.iter().map(|v| round(*v, 1)).collect::<Vec<_>>() },
            "peak_rss_mib": round(peak, 1),
            "index_backfill": { "startup_ms": round(backfill_ms, 0), "peak_rss_mib": round(backfill_peak, 1) },
        }));
    }

    let ceiling_rps = ceilings.iter().map(|c| c.rps).sum::<f64>() / ceilings.len() as f64;
    let (get_ratio, list_ratio) = (
        vs_ceiling(&reads[1], ceiling_rps),
        vs_ceiling(&reads[2], ceiling_rps),
    );
    let peak_mib = peak_kib as f64 / 1024.0;
    let post_ratio = post.rps / ceiling_rps;

    let mut phases = ceilings;
    phases.extend(reads.iter().cloned());
    phases.extend([post.clone(), patch.clone(), post_naive.clone(), patch_naive]);
    phases.extend(musl_phases.iter().cloned());
    phases.extend(mw_phases.iter().cloned());
    phases.extend(pg_sweep.iter().flat_map(|(_, p)| p.iter().cloned()));
    // The phases compared with redb: those of `compared_pool`.
    let pg_phases: &[Phase] = pg_sweep
        .iter()
        .find(|(pool, _)| *pool == compared_pool)
        .map_or(&[], |(_, p)| p.as_slice());
    phases.extend(big_phases.iter().cloned());
    print_table(
        opts,
        fx,
        &machine,
        &phases,
        ceiling_rps,
        peak_mib,
        startup_ms,
    );
    if let (Some(b), Some(c)) = (post_batch, post_commits_per_s) {
        println!(
            "POST with group commit: {b:.1} writes per commit, {c:.0} commits/s, {:.1}× the naive store",
            post.rps / post_naive.rps
        );
    }

    let mut comparisons = Vec::new();
    let glibc = [&reads[1], &reads[2], &post, &patch];
    let musl_worst = if musl_phases.is_empty() {
        None
    } else {
        let pairs: Vec<_> = glibc.iter().copied().zip(&musl_phases).collect();
        let (worst, table) = compare("static musl vs glibc (exclusive)", &pairs, ceiling_rps);
        comparisons.push(table);
        worst
    };
    let exclusive_reads: [&Phase; 2] = match musl_phases.as_slice() {
        [g, l, ..] => [g, l],
        _ => [&reads[1], &reads[2]],
    };
    let pairs: Vec<_> = exclusive_reads.into_iter().zip(&mw_phases[..2]).collect();
    let (mw_worst, table) = compare(
        &format!("multi-writer vs exclusive reads ({deployed_label} binary)"),
        &pairs,
        ceiling_rps,
    );
    comparisons.push(table);
    if !pg_phases.is_empty() {
        let pairs: Vec<_> = glibc.iter().copied().zip(pg_phases).collect();
        comparisons.push(compare("PostgreSQL vs redb", &pairs, ceiling_rps).1);
        println!();
        if pg_sweep.len() > 1 {
            println!();
            println!("PostgreSQL pool sizes (req/s, p99 ms, server cpu µs/req):");
            println!(
                "| pool | GET id | GET id p99 | list | list p99 | POST | POST p99 | PATCH | PATCH p99 | POST cpu |"
            );
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for (pool, p) in &pg_sweep {
                println!(
                    "| {pool} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} |",
                    p[0].rps,
                    p[0].p99_ms,
                    p[1].rps,
                    p[1].p99_ms,
                    p[2].rps,
                    p[2].p99_ms,
                    p[3].rps,
                    p[3].p99_ms,
                    p[2].cpu_us.unwrap_or(f64::NAN)
                );
            }
        }
        println!();
        println!(
            "PostgreSQL: {} (pool {compared_pool}{}); start-up to ready {} ms; peak RSS {} MiB; seed {} s",
            pg_report["settings"],
            if compared_pool == 10 {
                ", the default"
            } else {
                ""
            },
            pg_report["startup_ms"]["median"],
            pg_report["peak_rss_mib"],
            pg_report["seed_seconds"]
        );
    }
    if let Some(b) = &big {
        println!();
        println!(
            "{} tasks: start-up to ready {} ms (median of 3), peak RSS {} MiB, seed {} s, file {} MiB",
            b["tasks"],
            b["startup_ms"]["median"],
            b["peak_rss_mib"],
            b["seed_seconds"],
            b["db_file_mib"]
        );
        println!(
            "{} tasks, first start building the filters' index (a file from before it): start-up to ready {} ms, peak RSS {} MiB",
            b["tasks"], b["index_backfill"]["startup_ms"], b["index_backfill"]["peak_rss_mib"]
        );
    }

    let big_of = |key: &str| big.as_ref().and_then(|b| b[key].as_f64());
    let (big_rss, big_startup) = (big_of("peak_rss_mib"), {
        big.as_ref()
            .and_then(|b| b["startup_ms"]["median"].as_f64())
    });
    let at = opts.big_tasks;
    let targets = vec![
        target(
            "GET /v1/tasks/{id} vs ceiling",
            Some(get_ratio),
            ">= 0.70",
            |v| v >= 0.70,
        ),
        target(
            "GET /v1/tasks?limit=50 vs ceiling",
            Some(list_ratio),
            ">= 0.35",
            |v| v >= 0.35,
        ),
        target(
            "POST /v1/tasks (group commit) vs ceiling",
            Some(post_ratio),
            ">= 0.45",
            |v| v >= 0.45,
        ),
        target(
            "POST /v1/tasks p99 ms (c=64)",
            Some(post.p99_ms),
            "<= 10",
            |v| v <= 10.0,
        ),
        target(
            "selective filtered page, 10^6 vs 10^3 tasks",
            None,
            "<= 2 (the filters benchmark)",
            |v| v <= 2.0,
        ),
        target("musl vs glibc, worst phase", musl_worst, ">= 0.90", |v| {
            v >= 0.90
        }),
        target(
            "multi-writer vs exclusive reads, worst",
            mw_worst,
            ">= 0.80",
            |v| v >= 0.80,
        ),
        target(
            &format!("peak RSS MiB at {at} tasks"),
            big_rss,
            "<= 64",
            |v| v <= 64.0,
        ),
        target(
            &format!("start-up to ready ms at {at} tasks"),
            big_startup,
            "<= 200",
            |v| v <= 200.0,
        ),
    ];
    print_targets(&targets);

    let report = json!({
        "machine": machine,
        "config": {
            "concurrency": opts.concurrency, "phase_seconds": opts.duration, "tasks": opts.tasks,
            "principals": PRINCIPALS, "load_generator": "wrk -t2", "seed": "RedbStore::import, one transaction",
            "server_env": "RATE_LIMIT=0 LOG_FORMAT=json LOG_LEVEL=info, group commit on unless marked naive",
            "binary": opts.binary, "musl_binary": opts.musl, "deployed_binary": deployed_label,
        },
        "seed_seconds": round(fx.seed_seconds, 2),
        "db_file_mib": round(fx.file_bytes as f64 / 1048576.0, 1),
        "startup_ms": { "median": round(startup_ms, 1), "runs": startup_runs.iter().map(|v| round(*v, 1)).collect::<Vec<_>>() },
        "peak_rss_mib": round(peak_mib, 1),
        "rss_at_end_mib": round(rss_kib as f64 / 1024.0, 1),
        "open_fds_at_end": fds,
        "naive_peak_rss_mib": round(naive_peak_kib as f64 / 1024.0, 1),
        "post_writes_per_commit": post_batch.map(|b| round(b, 1)),
        "post_commits_per_s": post_commits_per_s.map(|c| round(c, 0)),
        "post_group_vs_naive": round(post.rps / post_naive.rps, 2),
        "ceiling_rps": round(ceiling_rps, 0),
        "phases": phases.iter().map(Phase::to_json).collect::<Vec<_>>(),
        "comparisons": comparisons,
        "big": big,
        "targets": targets,
        "postgres": pg_report,
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

/// A target row; `value` None when this run did not measure it.
fn target(name: &str, value: Option<f64>, goal: &str, met: impl Fn(f64) -> bool) -> Value {
    json!({ "target": name, "value": value.map(|v| round(v, 3)), "goal": goal, "met": value.map(met) })
}

fn print_targets(targets: &[Value]) {
    println!();
    println!("| target | value | goal | met |");
    println!("|---|---:|---|---|");
    for t in targets {
        let (value, met) = match t["met"].as_bool() {
            None => ("not measured".to_owned(), "-"),
            Some(m) => (t["value"].to_string(), if m { "yes" } else { "NO" }),
        };
        println!(
            "| {} | {value} | {} | {met} |",
            t["target"].as_str().unwrap_or(""),
            t["goal"].as_str().unwrap_or(""),
        );
    }
}

fn print_table(
    opts: &Options,
    fx: &Fixture,
    machine: &Value,
    phases: &[Phase],
    ceiling_rps: f64,
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
    println!(
        "| phase | req/s | p50 ms | p99 ms | p99.9 ms | errors | vs ceiling* | server cpu µs/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in phases {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2}× | {:.1} |",
            p.name,
            p.rps,
            p.p50_ms,
            p.p99_ms,
            p.p999_ms,
            p.errors,
            vs_ceiling(p, ceiling_rps),
            p.cpu_us.unwrap_or(f64::NAN)
        );
    }
    println!();
    println!(
        "* read phases: against the mean of the two ceiling phases around them; others: the mean of all ceiling phases ({ceiling_rps:.0} req/s); the ceilings' cpu is the bench process's"
    );
    println!(
        "peak RSS {peak_mib:.1} MiB; start-up to ready {startup_ms:.1} ms (median of 3); seed {:.1} s, file {:.1} MiB",
        fx.seed_seconds,
        fx.file_bytes as f64 / 1048576.0
    );
}
