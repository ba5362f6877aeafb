//! PostgreSQL for the benchmark (`--pg`): a database to run the server on.
//!
//! With `--pg-url URL` (or `TEST_DATABASE_URL`, which `nix/test/postgres.sh
//! --exec` exports) the bench creates a fresh database on that server, seeds
//! it, and drops it at the end. Otherwise it starts its own throwaway cluster
//! the way `nix/test/postgres.sh` does (initdb in a temporary directory, on
//! 127.0.0.1, run as `postgres` when root) but with PostgreSQL's durable
//! defaults (`fsync=on`, `synchronous_commit=on`), so its writes are as
//! durable as redb's; the script's cluster runs with `fsync=off`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use devops_api::storage::{PostgresConfig, PostgresStore, Record, Store};
use serde_json::{Value, json};

/// A seeded database; dropped (or its cluster stopped) with this value.
pub struct Database {
    pub url: String,
    pub seed_seconds: f64,
    pub settings: Value,
    admin_url: String,
    dbname: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    as_pg: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(self.as_pg.first().map_or("env", String::as_str))
            .args(self.as_pg.iter().skip(1))
            .arg(self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.cluster.is_some() {
            return; // the whole cluster goes
        }
        let (admin, name) = (self.admin_url.clone(), self.dbname.clone());
        let _ = rt().and_then(|rt| {
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        });
    }
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return Ok(d.into());
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install -y postgresql), or pass --pg-url")?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, p)| p)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn run(as_pg: &[String], program: &Path, args: &[&str], what: &str) -> anyhow::Result<()> {
    let mut cmd = match as_pg.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = cmd
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts a throwaway cluster with durable settings; returns it and its URL.
fn start_cluster() -> anyhow::Result<(Cluster, String)> {
    let bindir = find_bindir()?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let as_pg: Vec<String> = if root {
        ["runuser", "-u", "postgres", "--"]
            .map(String::from)
            .to_vec()
    } else {
        Vec::new()
    };
    let dir = tempfile::Builder::new()
        .prefix("devops-api-bench-pg")
        .tempdir()?;
    if root {
        let ok = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()?
            .success();
        if !ok {
            bail!("cannot chown the cluster directory to postgres");
        }
    }
    let data = dir.path().join("data");
    let data_s = data.to_str().context("temp path is UTF-8")?;
    run(
        &as_pg,
        &bindir.join("initdb"),
        &[
            "-D",
            data_s,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        "initdb",
    )?;
    let port = super::free_port()?;
    let log = dir.path().join("server.log");
    let cluster = Cluster {
        bindir: bindir.clone(),
        dir,
        as_pg: as_pg.clone(),
    };
    run(
        &as_pg,
        &bindir.join("pg_ctl"),
        &[
            "-D",
            data_s,
            "-l",
            log.to_str().context("temp path is UTF-8")?,
            "-w",
            "-t",
            "60",
            "-o",
            &format!("-p {port} -c listen_addresses=127.0.0.1 -k {data_s} -c max_connections=100"),
            "start",
        ],
        "pg_ctl start",
    )?;
    Ok((
        cluster,
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    ))
}

/// `url` with its database name replaced (a `postgres://` URL).
fn with_dbname(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .context("--pg-url must be a postgres:// URL")?
        + 3;
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A database holding `records`, from `url` (a fresh database created on that
/// server) or from a cluster of our own when `url` is `None`.
pub fn prepare(url: Option<&str>, records: Vec<Record>) -> anyhow::Result<Database> {
    let (cluster, admin_url) = match url {
        Some(u) => (None, u.to_owned()),
        None => {
            let (c, u) = start_cluster()?;
            (Some(c), u)
        }
    };
    let dbname = format!("devops_bench_{}", std::process::id());
    let db_url = with_dbname(&admin_url, &dbname)?;
    let mut db = Database {
        url: db_url.clone(),
        seed_seconds: 0.0,
        settings: Value::Null,
        admin_url: admin_url.clone(),
        dbname: dbname.clone(),
        cluster,
    };
    let rt = rt()?;
    let (seconds, settings) = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .context("cannot connect to PostgreSQL")?;
        tokio::spawn(conn);
        // Separate statements: neither may run inside a transaction block.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
            .await?;
        client
            .batch_execute(&format!("CREATE DATABASE {dbname}"))
            .await?;
        let mut settings = serde_json::Map::new();
        for name in [
            "server_version",
            "fsync",
            "synchronous_commit",
            "shared_buffers",
            "max_connections",
        ] {
            let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
            settings.insert(name.into(), json!(row.get::<_, String>(0)));
        }
        let started = Instant::now();
        let store = PostgresStore::connect(&PostgresConfig::new(&db_url)).await?;
        store
            .import(devops_api::storage::ImportSet::validate(records)?)
            .await?;
        store.close().await;
        // Fresh statistics for the planner, as autovacuum would have by now.
        let (seeded, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        seeded.batch_execute("VACUUM ANALYZE").await?;
        anyhow::Ok((started.elapsed().as_secs_f64(), Value::Object(settings)))
    })?;
    db.seed_seconds = seconds;
    db.settings = settings;
    eprintln!("PostgreSQL: seeded in {seconds:.2} s ({})", db.settings);
    Ok(db)
}
