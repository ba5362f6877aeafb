//! The storage contract on PostgreSQL, plus PostgreSQL-only behaviour
//! (tests named `pg_*`): migrations, the list query's plan, and losing the
//! server under load.
//!
//! Every test gets a throwaway database created on the server at
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`;
//! `nix/test/postgres.sh` starts one). A missing server fails the tests: it
//! never skips them. The restart test starts its own private cluster with
//! `initdb` on a free loopback port, so stopping it disturbs nobody.

mod contract;
mod roundtrip;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use contract::{Fixture, p};
use devops_api::app::{Application, Settings};
use devops_api::auth::{self, StaticTokens};
use devops_api::domain::{ListQuery, Order, Precondition, Priority, Status};
use devops_api::http::ApiConfig;
use devops_api::storage::postgres::{self, MIGRATIONS, SCHEMA_VERSION};
use devops_api::storage::{ManualClock, PostgresConfig, PostgresStore, StorageError, Store};
use serde_json::json;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` with its database name replaced by `db`.
fn with_dbname(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let authority_start = main.find("://").map_or(0, |i| i + 3);
    let base = match main[authority_start..].find('/') {
        Some(i) => &main[..authority_start + i],
        None => main,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Settings for a test's own connections: the URL's TLS settings, and no
/// statement timeout (CREATE/DROP DATABASE may take seconds on a loaded machine).
fn admin_config(url: &str) -> PostgresConfig {
    let mut cfg = PostgresConfig::new(url);
    cfg.statement_timeout = Duration::ZERO;
    cfg
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    let cfg = admin_config(url);
    let pg = cfg.pg_config().expect("TEST_DATABASE_URL is a valid URL");
    match postgres::connect_one(&pg, &cfg.tls().expect("TLS set-up")).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach PostgreSQL at TEST_DATABASE_URL={url}: {e}\n\
             Start a throwaway server with nix/test/postgres.sh (these tests never skip)."
        ),
    }
}

/// A database that exists for one test and is dropped after it.
struct TestDb {
    name: String,
    server: String,
    url: String,
}

impl TestDb {
    async fn create() -> Self {
        Self::create_on(&server_url()).await
    }

    async fn create_on(server: &str) -> Self {
        let name = format!("devops_test_{}", hex::encode(rand_bytes()));
        let admin = admin_client(server).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE on {server}: {e}"));
        Self {
            url: with_dbname(server, &name),
            name,
            server: server.to_owned(),
        }
    }

    fn config(&self) -> PostgresConfig {
        let mut c = PostgresConfig::new(&self.url);
        c.pool_size = 4;
        c
    }

    async fn client(&self) -> tokio_postgres::Client {
        admin_client(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let cfg = admin_config(&server);
                let c = postgres::connect_one(&cfg.pg_config().ok()?, &cfg.tls().ok()?)
                    .await
                    .ok()?;
                c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random bytes");
    b
}

async fn pg_fixture() -> Fixture {
    let db = TestDb::create().await;
    let clock = ManualClock::new();
    let mut config = db.config();
    config.clock = clock.clone();
    let store = PostgresStore::connect(&config)
        .await
        .expect("connect to the test database");
    Fixture {
        store: Arc::new(store),
        clock,
        _guard: Box::new(db),
    }
}

store_contract_tests!(pg_fixture);
token_contract_tests!(pg_fixture);

/// Every accepted body is kept unchanged through PostgreSQL, HTTP and a
/// backup/restore round trip (see `tests/roundtrip`); the server must be there.
#[test]
fn pg_accepted_values_round_trip() {
    roundtrip::check_backend(24, || async {
        let (a, b) = (TestDb::create().await, TestDb::create().await);
        roundtrip::Stores {
            source: Arc::new(PostgresStore::connect(&a.config()).await.unwrap()),
            target: Arc::new(PostgresStore::connect(&b.config()).await.unwrap()),
            _guard: Box::new((a, b)),
        }
    });
}

async fn versions(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query(
        "SELECT version FROM schema_migrations ORDER BY version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn all_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

#[tokio::test]
async fn pg_migrations_from_empty() {
    let db = TestDb::create().await;
    assert_eq!(
        postgres::run_migrations(&db.config()).await.unwrap(),
        all_versions()
    );
    assert_eq!(
        postgres::run_migrations(&db.config()).await.unwrap(),
        Vec::<i32>::new(),
        "a second run does nothing"
    );
    let c = db.client().await;
    assert_eq!(versions(&c).await, all_versions());
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "idempotency_keys",
            "schema_migrations",
            "task_counts",
            "task_tags",
            "tasks",
            "tokens"
        ]
    );
}

#[tokio::test]
async fn pg_migrations_from_previous_version() {
    let db = TestDb::create().await;
    let mut c = db.client().await;
    let previous = SCHEMA_VERSION - 1;
    assert_eq!(
        postgres::migrate(&mut c, Some(previous)).await.unwrap(),
        (1..=previous).collect::<Vec<_>>()
    );
    // Data written by the previous release.
    let id = uuid::Uuid::now_v7();
    c.execute(
        "INSERT INTO tasks (owner, id, title, title_lower, status, priority, tags, created_at, updated_at, version)
         VALUES ('alice', $1, 'Old Task', 'old task', 'todo', 'high', ARRAY['ops'], now(), now(), 3)",
        &[&id],
    )
    .await
    .unwrap();
    c.execute("INSERT INTO task_counts VALUES ('alice', 1)", &[])
        .await
        .unwrap();
    c.execute(
        "INSERT INTO tokens VALUES ($1, 'alice', now())",
        &[&[5u8; 32].as_slice()],
    )
    .await
    .unwrap();
    // The current release starts: it applies the rest and reads the old data.
    let store = PostgresStore::connect(&db.config()).await.unwrap();
    assert_eq!(versions(&c).await, all_versions());
    let t = store
        .get_task(&p("alice"), devops_api::domain::TaskId::from_uuid(id))
        .await
        .unwrap();
    assert_eq!(
        (t.fields.title.as_str(), t.fields.priority, t.version),
        ("Old Task", Priority::High, 3)
    );
    assert_eq!(
        store.principal(&[5; 32]).await.unwrap().as_deref(),
        Some("alice")
    );
    // The old token is alice's token named `default`; a second name is free,
    // and an older binary's insert (during a rolling update) still works.
    let old = store.token(&[5; 32]).await.unwrap().unwrap();
    assert_eq!((old.name.as_str(), old.expires_at), ("default", None));
    store
        .create_token(devops_api::storage::NewToken {
            name: devops_api::domain::TokenName::parse("ci").unwrap(),
            ..devops_api::storage::NewToken::default_for(p("alice"), [6; 32])
        })
        .await
        .unwrap();
    c.execute(
        "INSERT INTO tokens (digest, name, created_at) VALUES ($1, 'bob', now())",
        &[&[7u8; 32].as_slice()],
    )
    .await
    .unwrap();
    assert_eq!(store.list_tokens().await.unwrap().len(), 3);
    assert_eq!(store.count_tasks().await.unwrap(), 1);
    let idx: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'idempotency_keys_created_at_idx'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idx, 1);
    // The old task's tags were indexed by the migration.
    let page = store
        .list_tasks(
            &p("alice"),
            &ListQuery {
                tag: Some("ops".into()),
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items, vec![t]);
    let check = store.check_indexes().await.unwrap();
    assert!(check.is_consistent(), "{check:?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_concurrent_migrators_migrate_once() {
    let db = TestDb::create().await;
    let runs = (0..3).map(|_| {
        let cfg = db.config();
        tokio::spawn(async move { postgres::run_migrations(&cfg).await })
    });
    let mut applied: Vec<Vec<i32>> = Vec::new();
    for r in futures_join(runs.collect()).await {
        applied.push(r.expect("migration succeeds"));
    }
    applied.sort();
    assert_eq!(
        applied,
        [vec![], vec![], all_versions()],
        "exactly one replica migrates"
    );
    assert_eq!(versions(&db.client().await).await, all_versions());

    // Three stores starting together (what three replicas do) also agree.
    let db = TestDb::create().await;
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let cfg = db.config();
            tokio::spawn(async move { PostgresStore::connect(&cfg).await })
        })
        .collect();
    for s in futures_join(starts).await {
        s.expect("store starts").close().await;
    }
    assert_eq!(versions(&db.client().await).await, all_versions());
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// The list statements on a table of 20 000 tasks: each walks the index that
/// `storage::plan` chose to drive it, in page order (no sort), never the
/// whole table, with custom and generic plans.
#[tokio::test]
async fn pg_list_query_uses_the_index() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(&db.config()).await.unwrap();
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (owner, id, title, title_lower, status, priority, tags, due_at, created_at, updated_at, version)
         SELECT 'owner' || (g % 20), overlay(gen_random_uuid()::text placing '7' from 15 for 1)::uuid,
                'Task ' || g, 'task ' || g,
                (ARRAY['todo', 'in_progress', 'done'])[1 + g % 3], (ARRAY['low', 'normal', 'high'])[1 + g % 3],
                ARRAY['t' || (g % 7)], now() + g * interval '1 minute', now(), now(), 1
         FROM generate_series(1, 20000) AS g;
         ANALYZE tasks; ANALYZE task_tags;",
    )
    .await
    .unwrap();
    let after = store
        .list_tasks(
            &p("owner3"),
            &ListQuery {
                limit: 50,
                ..ListQuery::default()
            },
        )
        .await
        .unwrap()
        .next
        .expect("a second page");
    let queries = [
        ListQuery {
            limit: 20,
            ..ListQuery::default()
        },
        ListQuery {
            limit: 20,
            order: Order::Desc,
            after: Some(after),
            ..ListQuery::default()
        },
        // Budgets below the driving ranges' sizes (333 tasks per status or
        // priority, 143 per tag): with a budget above a range's estimated
        // size, the planner may read the range with a bitmap and sort it
        // (bounded by the budget, but not lazy).
        ListQuery {
            limit: 100,
            after: Some(after),
            status: Some(Status::Done),
            tag: Some("t3".into()),
            scan_budget: 50,
            ..ListQuery::default()
        },
        ListQuery {
            limit: 20,
            order: Order::Desc,
            priority: Some(Priority::High),
            q: Some("task 1".into()),
            due_before: Some(chrono::Utc::now() + chrono::Duration::days(3)),
            scan_budget: 50,
            ..ListQuery::default()
        },
    ];
    // Every statement a page may run, with the index that must drive it.
    let due = queries[3].due_before.unwrap();
    let ids: Vec<uuid::Uuid> = c
        .query(
            "SELECT id FROM tasks WHERE owner = 'owner3' ORDER BY id LIMIT 40",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut statements = vec![
        (postgres::list_sql("owner3", &queries[0]), "tasks_pkey"),
        (postgres::list_sql("owner3", &queries[1]), "tasks_pkey"),
        (postgres::list_sql("owner3", &queries[2]), "task_tags_pkey"),
        (
            postgres::budget_end_sql("owner3", &queries[2]),
            "task_tags_pkey",
        ),
        (
            postgres::list_sql("owner3", &queries[3]),
            "tasks_owner_priority_id_idx",
        ),
        (
            postgres::budget_end_sql("owner3", &queries[3]),
            "tasks_owner_priority_id_idx",
        ),
        (
            postgres::due_ids_sql("owner3", due, 5_001),
            "tasks_owner_due_at_idx",
        ),
        (
            postgres::ids_page_sql("owner3", &queries[3], ids),
            "id = ANY", // the key or the priority index, with the ids as condition
        ),
    ];
    for status in [Status::Todo, Status::Done] {
        let q = ListQuery {
            status: Some(status),
            after: Some(after),
            q: Some("task".into()),
            scan_budget: 50,
            ..ListQuery::default()
        };
        statements.push((
            postgres::list_sql("owner3", &q),
            "tasks_owner_status_id_idx",
        ));
    }
    for mode in ["force_custom_plan", "force_generic_plan"] {
        c.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await
            .unwrap();
        for ((sql, params), index) in &statements {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            // A named prepared statement, as the store's statement cache makes:
            // plan_cache_mode decides between a custom and the generic plan.
            c.batch_execute(&format!("DEALLOCATE ALL; PREPARE list_page AS {sql}"))
                .await
                .unwrap();
            // EXECUTE takes literals: the parameters' text forms, quoted.
            let typed = c.prepare(sql).await.unwrap();
            let casts = (1..=refs.len())
                .map(|i| format!("${i}::text"))
                .collect::<Vec<_>>()
                .join(", ");
            let as_text = c
                .prepare_typed(&format!("SELECT {casts}"), typed.params())
                .await
                .unwrap();
            let row = c.query_one(&as_text, &refs).await.unwrap();
            let args = (0..refs.len())
                .map(|i| format!("'{}'", row.get::<_, String>(i).replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ");
            let plan: Vec<String> = c
                .query(&format!("EXPLAIN EXECUTE list_page({args})"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            println!("-- {mode}\n{sql}\n{plan}\n");
            assert!(
                !plan.contains("Seq Scan"),
                "a list query scanned the table:\n{sql}\n{plan}"
            );
            assert!(
                plan.contains(index),
                "a list query did not use {index}:\n{sql}\n{plan}"
            );
            // No page sorts what its driving index already orders (a sort
            // reads every candidate before the first row), nor joins the tag
            // table by hashing (which reads every task of the owner). The
            // planner may sort the tag entries themselves when it expects
            // few.
            if !sql.contains("= ANY") {
                assert!(
                    !plan.contains("Sort Key: c.")
                        && !plan.contains("Sort Key: tasks.")
                        && !plan.contains("Sort Key: t.")
                        && !plan.contains("Hash"),
                    "a list query sorted or hashed its candidates:\n{sql}\n{plan}"
                );
            }
        }
    }
    // And the pages themselves agree with the filters.
    let page = store.list_tasks(&p("owner3"), &queries[2]).await.unwrap();
    assert!(!page.items.is_empty());
    assert!(page.items.iter().all(|t| queries[2].matches(t)));
    store.close().await;
}

#[tokio::test]
async fn pg_q_matches_like_the_embedded_backend() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(&db.config()).await.unwrap();
    let titles = [
        "ÉCOLE d'été",
        "Straße",
        "100% done",
        "snake_case",
        "back\\slash",
        "ΣΟΦΟΣ",
    ];
    for t in titles {
        contract::create(&store, "alice", json!({ "title": t })).await;
    }
    for q in [
        "école",
        "été",
        "straße",
        "100%",
        "%",
        "_",
        "e_c",
        "\\",
        "σοφος",
        "σοφοσ",
        "ss",
    ] {
        let query = ListQuery {
            limit: 100,
            q: Some(q.to_lowercase()),
            ..ListQuery::default()
        };
        let got: Vec<String> = store
            .list_tasks(&p("alice"), &query)
            .await
            .unwrap()
            .items
            .iter()
            .map(|t| t.fields.title.as_str().to_owned())
            .collect();
        let want: Vec<String> = titles
            .iter()
            .filter(|t| t.to_lowercase().contains(&q.to_lowercase()))
            .map(|t| (*t).to_owned())
            .collect();
        assert_eq!(got, want, "q = {q:?}");
    }
    store.close().await;
}

#[tokio::test]
async fn pg_unreachable_server_is_unavailable() {
    let port = free_port();
    let mut cfg = PostgresConfig::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    cfg.connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = PostgresStore::connect(&cfg)
        .await
        .err()
        .expect("no server there");
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn pg_statement_timeout_is_set_per_connection() {
    let db = TestDb::create().await;
    let mut cfg = db.config();
    cfg.statement_timeout = Duration::from_millis(1234);
    let c = postgres::connect_one(&cfg.pg_config().unwrap(), &cfg.tls().unwrap())
        .await
        .unwrap();
    let v: String = c
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "1234ms");
    let err = c.batch_execute("SELECT pg_sleep(3)").await.unwrap_err();
    let db_err = err.as_db_error().expect("a server error");
    assert!(db_err.message().contains("statement timeout"), "{db_err}");
}

/// A store comes up with its whole pool open: a replica that has just become
/// ready serves its first burst without opening connections under load.
#[tokio::test]
async fn pg_pool_is_open_before_the_store_is_returned() {
    let db = TestDb::create().await;
    let mut cfg = db.config();
    cfg.pool_size = 6;
    let store = PostgresStore::connect(&cfg).await.expect("connect");
    let admin = db.client().await;
    let count = || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'devops-api' AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    assert_eq!(count().await, 6, "pooled connections right after connect");
    store
        .list_tasks(&p("warm"), &ListQuery::default())
        .await
        .expect("list");
    assert_eq!(count().await, 6, "a read reuses a pooled connection");
    store.close().await;
}

/// `devops-api migrate` with the URL in a Docker-secret file (trailing newline).
#[tokio::test]
async fn pg_migrate_subcommand_reads_database_url_file() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("database_url");
    std::fs::write(&secret, format!("{}\n", db.url)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_devops-api"))
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &secret)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("schema is at version {SCHEMA_VERSION}")),
        "{stderr}"
    );
    assert_eq!(versions(&db.client().await).await, all_versions());
    assert!(
        !stderr.contains(&db.name),
        "the URL is not printed: {stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_devops-api"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env_remove("DATABASE_URL_FILE")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("up to date"));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private PostgreSQL cluster in a temp dir on a free loopback port, which
/// this test may stop and start. Stopped (immediately) when dropped.
struct PrivateCluster {
    bindir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).expect(
        "PostgreSQL server binaries not found (install Debian's `postgresql` or set PG_BINDIR)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root
/// (the server refuses to run as root).
fn run_pg(bindir: &Path, program: &str, args: &[&str]) {
    let exe = bindir.join(program);
    let status = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&exe)
            .args(args)
            .status()
    } else {
        Command::new(&exe).args(args).status()
    }
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

impl PrivateCluster {
    fn start() -> Self {
        let bindir = pg_bindir();
        let dir = tempfile::Builder::new()
            .prefix("devops-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown of the cluster directory");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        run_pg(
            &bindir,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let cluster = Self {
            bindir,
            data,
            log,
            port: free_port(),
            _dir: dir,
        };
        cluster.pg_ctl_start();
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        run_pg(
            &self.bindir,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self, mode: &str) {
        run_pg(
            &self.bindir,
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bindir.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .status();
    }
}

/// PostgreSQL stops under steady load: requests get 503 problems (never a
/// panic or a dropped connection), `/ready` is 503, and once the server is
/// back both recover without restarting the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_restart_under_load_gives_503_then_recovers() {
    let cluster = PrivateCluster::start();
    let db = TestDb::create_on(&cluster.url()).await;
    let mut cfg = db.config();
    cfg.connect_timeout = Duration::from_secs(2);
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&cfg).await.unwrap());
    let token = auth::generate_token();
    store
        .create_token(devops_api::storage::NewToken::default_for(
            p("alice"),
            auth::digest(&token),
        ))
        .await
        .unwrap();
    let config = ApiConfig {
        rate_limit: None,
        ..ApiConfig::default()
    };
    let settings = Settings::local(config, StaticTokens::default(), roundtrip::metrics());
    let application = Application::build(settings, store.clone()).await.unwrap();
    let base = format!("http://{}", application.addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();

    // Steady load: creates and readiness checks, bounded in time.
    let running = Arc::new(AtomicBool::new(true));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u16, bool)>::new()));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (client, base, token, running, statuses) = (
            client.clone(),
            base.clone(),
            token.clone(),
            running.clone(),
            statuses.clone(),
        );
        load.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0u32;
            while running.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let (status, is_problem) = if worker == 0 {
                    let r = client
                        .get(format!("{base}/ready"))
                        .send()
                        .await
                        .expect("the API answers");
                    let p = r.status() != 200
                        && r.headers()["content-type"]
                            .to_str()
                            .unwrap()
                            .starts_with("application/problem+json");
                    (r.status().as_u16(), p)
                } else {
                    let r = client
                        .post(format!("{base}/v1/tasks"))
                        .bearer_auth(&token)
                        .json(&json!({ "title": format!("w{worker} #{i}") }))
                        .send()
                        .await
                        .expect("the API answers");
                    let p = r.status() != 201
                        && r.headers()["content-type"]
                            .to_str()
                            .unwrap()
                            .starts_with("application/problem+json");
                    (r.status().as_u16(), p)
                };
                statuses
                    .lock()
                    .unwrap()
                    .push((Instant::now(), status, is_problem));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = Instant::now();
    cluster.stop("fast");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503, "/ready while PostgreSQL is down");
    let r = client
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(&token)
        .json(&json!({"title": "while down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a create while PostgreSQL is down");
    assert!(matches!(
        store.ping().await,
        Err(StorageError::Unavailable { .. })
    ));
    let restarted_at = Instant::now();
    cluster.pg_ctl_start();

    // Recovery: ready again, and writes succeed, without restarting the API.
    let recovered = loop {
        let r = client.get(format!("{base}/ready")).send().await.unwrap();
        if r.status() == 200 {
            break Instant::now();
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(20),
            "no recovery within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, Ordering::Relaxed);
    while let Some(r) = load.join_next().await {
        r.expect("a load worker panicked: the API did not answer");
    }
    let r = client
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(&token)
        .json(&json!({"title": "after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a create after recovery");

    let statuses = std::mem::take(&mut *statuses.lock().unwrap());
    let before: Vec<_> = statuses.iter().filter(|(t, ..)| *t < stopped_at).collect();
    let down: Vec<_> = statuses
        .iter()
        .filter(|(t, ..)| *t > stopped_at + Duration::from_millis(500) && *t < restarted_at)
        .collect();
    let after: Vec<_> = statuses
        .iter()
        .filter(|(t, ..)| *t > recovered + Duration::from_millis(200))
        .collect();
    println!(
        "requests: {} before the stop, {} while down, {} after recovery ({:?} to recover)",
        before.len(),
        down.len(),
        after.len(),
        recovered - restarted_at
    );
    assert!(!before.is_empty() && !down.is_empty() && !after.is_empty());
    assert!(
        before.iter().all(|(_, s, _)| *s == 200 || *s == 201),
        "all served before the stop"
    );
    assert!(
        down.iter().all(|(_, s, p)| *s == 503 && *p),
        "only 503 problems while down: {down:?}"
    );
    assert!(
        after.iter().all(|(_, s, _)| *s == 200 || *s == 201),
        "all served after recovery: {after:?}"
    );
    // Everything acknowledged (and the create above) survived the restart.
    let acknowledged = statuses.iter().filter(|(_, s, _)| *s == 201).count() as u64;
    assert!(
        store.count_tasks().await.unwrap() > acknowledged,
        "an acknowledged create was lost"
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    store.close().await;
    drop(db);
}

/// Rows the domain rejects (written with SQL, as a damaged table or a manual
/// edit would leave them) do not take down a list page or a backup: they are
/// left out and reported; only a request for one of them fails. Among them
/// the case: a due date past year 9999, which timestamptz holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_undecodable_rows_are_isolated() {
    let db = TestDb::create().await;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&db.config()).await.unwrap());
    let mut good = Vec::new();
    for i in 0..4 {
        good.push(
            contract::create(store.as_ref(), "alice", json!({"title": format!("t{i}")})).await,
        );
    }
    let c = db.client().await;
    let bad_ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    for (id, (title, due)) in bad_ids.iter().zip([
        ("far future", "'10000-01-01 23:58:59+00'"),
        ("", "NULL"),
        ("bell\u{7}", "NULL"),
    ]) {
        c.execute(
            &format!(
                "INSERT INTO tasks (owner, id, title, title_lower, status, priority, due_at, created_at, updated_at, version)
                 VALUES ('alice', $1, $2, lower($2), 'todo', 'normal', {due}, now(), now(), 1)"
            ),
            &[id, &title],
        )
        .await
        .unwrap();
    }
    // A task whose owner no token can have.
    c.execute(
        "INSERT INTO tasks (owner, id, title, title_lower, status, priority, created_at, updated_at, version)
         VALUES (E'alice\\x01', $1, 'x', 'x', 'todo', 'normal', now(), now(), 1)",
        &[&uuid::Uuid::now_v7()],
    )
    .await
    .unwrap();
    for limit in [1, 3, 100] {
        let mut q = ListQuery {
            limit,
            ..ListQuery::default()
        };
        let mut ids = Vec::new();
        loop {
            let page = store
                .list_tasks(&p("alice"), &q)
                .await
                .expect("a list page");
            ids.extend(page.items.iter().map(|t| t.id));
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        ids.sort();
        let mut want: Vec<_> = good.iter().map(|t| t.id).collect();
        want.sort();
        assert_eq!(ids, want, "limit {limit}");
    }
    for id in &bad_ids {
        let id = devops_api::domain::TaskId::from_uuid(*id);
        assert!(matches!(
            store.get_task(&p("alice"), id).await,
            Err(StorageError::Corrupt { .. })
        ));
        for expected in [
            Precondition::Any,
            Precondition::version(1),
            Precondition::version(2),
        ] {
            assert!(matches!(
                store.delete_task(&p("alice"), id, expected).await,
                Err(StorageError::Corrupt { .. })
            ));
        }
        let change =
            devops_api::domain::TaskChange::Replace(contract::fields(json!({"title": "x"})));
        assert!(matches!(
            store
                .update_task(&p("alice"), id, change, Precondition::Any)
                .await,
            Err(StorageError::Corrupt { .. })
        ));
    }
    let export = store.export().await.unwrap();
    assert_eq!(export.records.len(), 4);
    assert_eq!(export.unreadable.len(), 4, "{:?}", export.unreadable);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.jsonl");
    let report = devops_api::backup::backup(store.as_ref(), &file, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!((report.records, report.unreadable.len()), (4, 4));
    store.close().await;
}

/// A restore that fails validation leaves the database as it was, and the
/// next (valid) restore into it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_refused_restore_leaves_the_database_empty() {
    let db = TestDb::create().await;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&db.config()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let task = devops_api::domain::Task::create(contract::fields(json!({"title": "a"})));
    let token = |name: &str, d: u8| devops_api::backup::Line::Token {
        name: name.into(),
        token_name: None,
        digest: hex::encode([d; 32]),
        created_at: devops_api::domain::now(),
        expires_at: None,
        last_used_at: None,
        replaced_at: None,
    };
    let ok_task = devops_api::backup::Line::Task {
        owner: "alice".into(),
        task: devops_api::domain::StoredTask::from(&task).into(),
    };
    for (name, records) in [
        ("duplicate task", vec![ok_task.clone(), ok_task.clone()]),
        (
            "two tokens for alice",
            vec![token("alice", 1), token("alice", 2), ok_task.clone()],
        ),
        (
            "bad token name",
            vec![ok_task.clone(), token("bad name; rm -rf /", 3)],
        ),
    ] {
        let file = dir.path().join("crafted.jsonl");
        crafted_backup(&file, &records);
        let r = devops_api::backup::restore(store.as_ref(), &file, &mut |_, _, _| {}).await;
        assert!(r.is_err(), "{name} restored");
        assert!(
            store.export().await.unwrap().records.is_empty(),
            "{name}: nothing written"
        );
    }
    let file = dir.path().join("good.jsonl");
    crafted_backup(&file, &[ok_task, token("alice", 1)]);
    devops_api::backup::restore(store.as_ref(), &file, &mut |_, _, _| {})
        .await
        .expect("a valid restore after refused ones");
    assert_eq!(store.get_task(&p("alice"), task.id).await.unwrap(), task);
    store.close().await;
}

/// A backup file with `records` and a correct checksum, as an attacker who
/// can edit the file would write it.
fn crafted_backup(path: &Path, records: &[devops_api::backup::Line]) {
    use sha2::Digest;
    let mut out = String::from(
        "{\"format\":\"devops-api-backup\",\"version\":1,\"created_at\":\"2026-01-01T00:00:00.000000Z\"}\n",
    );
    let mut hash = sha2::Sha256::new();
    for r in records {
        let line = serde_json::to_string(r).unwrap();
        hash.update(line.as_bytes());
        hash.update(b"\n");
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!(
        "{{\"records\":{},\"sha256\":\"{}\"}}\n",
        records.len(),
        hex::encode(hash.finalize())
    ));
    std::fs::write(path, out).unwrap();
}

/// An idempotency record that cannot be decoded (a damaged snapshot, a
/// digest of the wrong length) frees its key, as on redb: the create makes a
/// new task and the key answers for it from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_unreadable_idempotency_records_free_their_keys() {
    let db = TestDb::create().await;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&db.config()).await.unwrap());
    let c = db.client().await;
    for (key, damage) in [
        (
            "k1",
            "UPDATE idempotency_keys SET task = '\"nope\"'::jsonb WHERE key = 'k1'",
        ),
        (
            "k2",
            "UPDATE idempotency_keys SET request_digest = '\\x01' WHERE key = 'k2'",
        ),
    ] {
        let first = store
            .create_task(&p("alice"), contract::keyed_new_task("a", key))
            .await
            .unwrap();
        c.batch_execute(damage).await.unwrap();
        let again = store
            .create_task(&p("alice"), contract::keyed_new_task("a", key))
            .await
            .unwrap();
        let devops_api::storage::Created::New(t) = again else {
            panic!("{key}: an unreadable record replayed: {again:?}")
        };
        assert_ne!(t.id, first.task().id, "{key}");
        assert_eq!(
            store
                .create_task(&p("alice"), contract::keyed_new_task("a", key))
                .await
                .unwrap(),
            devops_api::storage::Created::Replayed(t),
            "{key}: the key answers for the new task"
        );
    }
    store.close().await;
}

/// A path the throwaway cluster's script exports (nix/test/postgres.sh
/// generates a CA, a server certificate for `localhost` and an unrelated CA).
fn cert_env(name: &str) -> std::path::PathBuf {
    std::env::var_os(name).map(Into::into).unwrap_or_else(|| {
        panic!("{name} is not set: run the tests through nix/test/postgres.sh, which generates the server certificate")
    })
}

/// Connects with `cfg` and says whether the connection is encrypted.
async fn ssl_in_use(cfg: &PostgresConfig) -> Result<bool, StorageError> {
    let c = postgres::connect_one(&cfg.pg_config()?, &cfg.tls()?).await?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

fn with_query(url: &str, query: &str, ca: Option<&std::path::Path>) -> PostgresConfig {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut c = PostgresConfig::new(format!("{url}{sep}{query}"));
    c.ca_file = ca.map(Into::into);
    c
}

fn refused(err: StorageError, what: &str) {
    let text = devops_api::storage::Chain(&err).to_string();
    assert!(
        matches!(err, StorageError::Unavailable { .. }) && text.contains("certificate"),
        "{what}: {text}"
    );
}

#[tokio::test]
async fn pg_tls_modes_encrypt_and_verify_as_libpq_does() {
    let ca = cert_env("TEST_PG_CA_FILE");
    let wrong = cert_env("TEST_PG_WRONG_CA_FILE");
    // The script's URL disables TLS for the rest of the suite.
    let (by_ip, _) = postgres::tls::split_url(&server_url()).unwrap();
    assert!(
        by_ip.contains("127.0.0.1"),
        "the cluster listens on 127.0.0.1: {by_ip}"
    );
    // The certificate names `localhost` only.
    let by_name = by_ip.replace("127.0.0.1", "localhost");

    assert!(
        !ssl_in_use(&with_query(&by_ip, "sslmode=disable", None))
            .await
            .unwrap()
    );
    // prefer (the default) and require encrypt without checking the certificate.
    assert!(ssl_in_use(&PostgresConfig::new(&by_ip)).await.unwrap());
    assert!(
        ssl_in_use(&with_query(&by_ip, "sslmode=require", None))
            .await
            .unwrap()
    );
    // verify-full: the right CA and name.
    assert!(
        ssl_in_use(&with_query(&by_name, "sslmode=verify-full", Some(&ca)))
            .await
            .unwrap()
    );
    let rootcert = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    assert!(
        ssl_in_use(&with_query(&by_name, &rootcert, None))
            .await
            .unwrap()
    );
    // A wrong CA, the public roots (no CA file), or a name the certificate
    // does not hold are refused.
    refused(
        ssl_in_use(&with_query(&by_name, "sslmode=verify-full", Some(&wrong)))
            .await
            .unwrap_err(),
        "wrong CA",
    );
    refused(
        ssl_in_use(&with_query(&by_name, "sslmode=verify-full", None))
            .await
            .unwrap_err(),
        "public roots",
    );
    refused(
        ssl_in_use(&with_query(&by_ip, "sslmode=verify-full", Some(&ca)))
            .await
            .unwrap_err(),
        "host name mismatch",
    );
    // verify-ca checks the chain only.
    assert!(
        ssl_in_use(&with_query(&by_ip, "sslmode=verify-ca", Some(&ca)))
            .await
            .unwrap()
    );
    refused(
        ssl_in_use(&with_query(&by_ip, "sslmode=verify-ca", Some(&wrong)))
            .await
            .unwrap_err(),
        "verify-ca, wrong CA",
    );

    // The whole store over verify-full: migrations, the pool, a write.
    let db = TestDb::create().await;
    let (db_url, _) = postgres::tls::split_url(&db.url).unwrap();
    let mut cfg = with_query(
        &db_url.replace("127.0.0.1", "localhost"),
        "sslmode=verify-full",
        Some(&ca),
    );
    cfg.pool_size = 2;
    let store = PostgresStore::connect(&cfg).await.unwrap();
    store.ping().await.unwrap();
    store
        .create_token(devops_api::storage::NewToken::default_for(
            devops_api::domain::PrincipalName::parse("tls").unwrap(),
            [7; 32],
        ))
        .await
        .unwrap();
    assert_eq!(store.list_tokens().await.unwrap().len(), 1);
    store.close().await;
    let err = PostgresStore::connect(&with_query(
        &db_url.replace("127.0.0.1", "localhost"),
        "sslmode=verify-full",
        Some(&wrong),
    ))
    .await
    .err()
    .expect("a wrong CA is refused");
    refused(err, "store with a wrong CA");
}

/// PostgreSQL keeps its filter indexes for every writer: the indexes on
/// `tasks` are PostgreSQL's own, and `task_tags` is written by triggers. So
/// the statements of the release before migration 0003 (which knows no
/// `task_tags`: the INSERT, UPDATE and DELETE of its `ops.rs`), run while
/// this release serves the same database, leave every filter right. A
/// writer that bypasses the triggers (`session_replication_role = replica`)
/// is what `check_indexes` finds and `repair_indexes` fixes.
#[tokio::test]
async fn pg_an_old_release_s_writes_keep_the_tag_index() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(&db.config()).await.unwrap();
    let kept = contract::create(&store, "alice", json!({"title": "kept", "tags": ["ops"]})).await;
    let c = db.client().await;
    let insert = "INSERT INTO tasks (owner, id, title, title_lower, description, status, priority,
                                     due_at, tags, created_at, updated_at, version)
                  VALUES ($1, $2, $3, lower($3), NULL, $4, 'normal', NULL, $5, now(), now(), 1)";
    let (fresh, moved) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    c.execute(
        insert,
        &[
            &"alice",
            &fresh,
            &"fresh",
            &"done",
            &tags(&["fresh", "ops"]),
        ],
    )
    .await
    .unwrap();
    c.execute(
        insert,
        &[&"alice", &moved, &"moved", &"todo", &tags(&["ops"])],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE tasks SET title = $3, title_lower = lower($3), description = NULL, status = 'done',
             priority = 'high', due_at = NULL, tags = $4, updated_at = now(), version = version + 1
         WHERE owner = $1 AND id = $2",
        &[&"alice", &moved, &"moved", &tags(&["moved"])],
    )
    .await
    .unwrap();
    c.execute(
        "DELETE FROM tasks WHERE owner = $1 AND id = $2",
        &[&"alice", &kept.id.as_uuid()],
    )
    .await
    .unwrap();
    assert!(store.check_indexes().await.unwrap().is_consistent());
    let ids = |q: ListQuery| {
        let store = &store;
        async move {
            let q = ListQuery { limit: 100, ..q };
            let page = store.list_tasks(&p("alice"), &q).await.unwrap();
            page.items
                .iter()
                .map(|t| t.id.as_uuid())
                .collect::<Vec<_>>()
        }
    };
    let tag = |t: &str| ListQuery {
        tag: Some(t.into()),
        order: Order::Asc,
        ..ListQuery::default()
    };
    assert_eq!(ids(tag("ops")).await, vec![fresh]);
    assert_eq!(ids(tag("fresh")).await, vec![fresh]);
    assert_eq!(ids(tag("moved")).await, vec![moved]);
    let done = ListQuery {
        status: Some(Status::Done),
        order: Order::Asc,
        ..ListQuery::default()
    };
    assert_eq!(ids(done).await, vec![fresh, moved]);
    let high = ListQuery {
        priority: Some(Priority::High),
        ..ListQuery::default()
    };
    assert_eq!(ids(high).await, vec![moved]);

    // Bypassing the triggers is what makes task_tags disagree.
    c.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    c.execute(
        "UPDATE tasks SET tags = $2 WHERE id = $1",
        &[&fresh, &tags(&["other"])],
    )
    .await
    .unwrap();
    c.batch_execute("SET session_replication_role = origin")
        .await
        .unwrap();
    let check = store.check_indexes().await.unwrap();
    assert_eq!(check.disagreements, 3, "{check:?}");
    let done = store.repair_indexes().await.unwrap();
    assert_eq!((done.added, done.removed), (1, 2));
    assert!(store.check_indexes().await.unwrap().is_consistent());
    assert_eq!(ids(tag("other")).await, vec![fresh]);
    store.close().await;
}
