//! The binary's subcommands. Errors here are `anyhow` with a message for the
//! operator; the library below returns typed errors.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use tokio::net::TcpListener;

use crate::app::{Application, Settings};
use crate::auth::{self, StaticTokens};
use crate::config::{
    Cli, Command, DatabaseArgs, HealthcheckArgs, IndexAction, IndexArgs, MigrateArgs, ServeArgs,
    StorageArgs, TokenAction, TokenArgs,
};
use crate::domain::PrincipalName;
use crate::http::{self, ApiConfig, TrustedProxies};
use crate::lifecycle::{self, Lifecycle, ShutdownPolicy};
use crate::server::ConnLimits;
use crate::storage::{PostgresConfig, PostgresStore, RedbConfig, RedbStore, StorageError, Store};
use crate::{server, telemetry};

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        None => runtime().and_then(|rt| rt.block_on(serve(cli.serve))),
        Some(Command::Serve(args)) => runtime().and_then(|rt| rt.block_on(serve(args))),
        Some(Command::Healthcheck(args)) => return healthcheck(&args),
        Some(Command::Token(args)) => runtime().and_then(|rt| rt.block_on(token(args))),
        Some(Command::Backup(args)) => {
            return match runtime().and_then(|rt| rt.block_on(backup(args))) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Index(args)) => {
            return match runtime().and_then(|rt| rt.block_on(index(args))) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Restore(args)) => runtime().and_then(|rt| rt.block_on(restore(args))),
        Some(Command::Migrate(args)) => runtime().and_then(|rt| rt.block_on(migrate(args))),
        Some(Command::Completions { shell }) => {
            let mut cmd = crate::config::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "devops-api", &mut script);
            write_stdout(&script)
        }
        Some(Command::Man { dir }) => man(dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("{name} must be a non-negative number of seconds, got {v}"))
}

/// Writes generated text to standard output; a reader that went away early
/// (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to standard output"))
        }
        _ => Ok(()),
    }
}

/// `devops-api man`: the main page on standard output, or every page into `dir`.
fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = crate::config::command();
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            write_stdout(&page)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))
        }
    }
}

/// Whether opening the store may create an empty redb database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// `serve`, `token create`, `restore`: a fresh data directory is their job.
    Allowed,
    /// Subcommands that read or change existing data: a missing database file
    /// is a mistyped `--data-dir`, reported with the path instead of creating
    /// an empty database that would then answer "no tokens" or back up nothing.
    Refused,
}

/// The storage backend, chosen once from the flags: PostgreSQL when a
/// database URL is configured (flag, variable or file), else the redb file.
enum Backend {
    Postgres(PostgresConfig),
    Redb(RedbConfig),
}

impl Backend {
    fn from_args(storage: &StorageArgs, group_commit: bool) -> anyhow::Result<Self> {
        if let Some(config) = postgres_config(&storage.database)? {
            return Ok(Self::Postgres(config));
        }
        let mut cfg = RedbConfig::new(&storage.data_dir);
        cfg.sharing = storage.db_sharing;
        cfg.group_commit = group_commit;
        Ok(Self::Redb(cfg))
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// Opens the configured store: PostgreSQL when a database URL is configured
/// (migrating it first), else the redb file. Used by `serve` and the storage subcommands.
pub async fn open_store(
    storage: &StorageArgs,
    group_commit: bool,
    create: Create,
) -> anyhow::Result<Arc<dyn Store>> {
    let mut backend = Backend::from_args(storage, group_commit)?;
    if let Backend::Redb(cfg) = &mut backend {
        // A subcommand runs briefly: no background index repair (`serve`
        // runs it; `index check --repair` does it on request).
        cfg.index_upkeep = crate::storage::IndexUpkeep::Off;
    }
    open_backend(&backend, storage, create).await
}

async fn open_backend(
    backend: &Backend,
    storage: &StorageArgs,
    create: Create,
) -> anyhow::Result<Arc<dyn Store>> {
    let cfg = match backend {
        Backend::Postgres(config) => {
            let store = PostgresStore::connect(config)
                .await
                .context("cannot open the PostgreSQL database")?;
            return Ok(Arc::new(store));
        }
        Backend::Redb(cfg) => cfg,
    };
    if create == Create::Refused && !cfg.db_path().exists() {
        anyhow::bail!(
            "no database at {} (--data-dir / DATA_DIR is {}): check the path; \
             only `serve`, `token create` and `restore` create a new one",
            cfg.db_path().display(),
            storage.data_dir.display()
        );
    }
    let store = RedbStore::open(cfg).map_err(|e| match e {
        StorageError::Locked { .. } => anyhow::anyhow!(
            "{e}: stop the other process, or run every process on this file with --db-sharing multi-writer"
        ),
        e => anyhow::Error::new(e),
    })?;
    Ok(Arc::new(store))
}

/// The PostgreSQL settings, when a database URL is given (flag, variable or file).
fn postgres_config(db: &DatabaseArgs) -> anyhow::Result<Option<PostgresConfig>> {
    let Some(url) = db.url()? else {
        return Ok(None);
    };
    anyhow::ensure!(
        db.database_pool_size > 0,
        "--database-pool-size must be at least 1"
    );
    let mut config = PostgresConfig::new(url);
    config.ca_file = db.database_ca_file.clone();
    config.pool_size = db.database_pool_size;
    config.statement_timeout = seconds("--statement-timeout", db.statement_timeout)?;
    Ok(Some(config))
}

/// `devops-api migrate`: brings the PostgreSQL schema to this binary's version.
async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = postgres_config(&args.database)?.ok_or_else(|| {
        anyhow::anyhow!("migrate needs --database-url, DATABASE_URL or DATABASE_URL_FILE")
    })?;
    let applied = crate::storage::postgres::run_migrations(&config)
        .await
        .context("migration failed")?;
    let version = crate::storage::postgres::SCHEMA_VERSION;
    if applied.is_empty() {
        eprintln!("schema is up to date (version {version})");
    } else {
        eprintln!("applied migrations {applied:?}; schema is at version {version}");
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Held to the end of `serve`: dropping it flushes the last log lines.
    let _log = telemetry::init_logging(&args.log.log_level, args.log.log_format)?;
    // Before the store opens, so what it records at start-up is exported.
    let metrics = telemetry::install_metrics()?;
    let started = std::time::Instant::now();
    let policy = ShutdownPolicy {
        drain: seconds("--drain-seconds", args.drain_seconds)?,
        timeout: seconds("--shutdown-timeout", args.shutdown_timeout)?,
    };
    let static_tokens = match &args.tokens_file {
        Some(path) => StaticTokens::load(path)?,
        None => StaticTokens::default(),
    };
    let cors_origins = args
        .cors_origins
        .iter()
        .filter(|o| !o.is_empty())
        .map(|o| HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("invalid CORS origin `{o}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trusted_proxies =
        TrustedProxies::parse(&args.trusted_proxies).map_err(anyhow::Error::msg)?;
    let config = ApiConfig {
        max_tasks_per_principal: args.max_tasks_per_principal,
        request_timeout: seconds("--request-timeout", args.request_timeout)?,
        rate_limit: (args.rate_limit > 0).then_some(args.rate_limit),
        cors_origins,
        metrics_on_main: args.metrics_listen.is_none(),
        auth_failure_limit: (args.auth_failure_limit > 0).then_some(args.auth_failure_limit),
        trusted_proxies,
        docs: args.docs,
    };
    let backend = Backend::from_args(&args.storage, args.group_commit)?;
    let limits = conn_limits(&args, &backend)?;

    // Storage first: the listener is bound only once requests can be served.
    let store = open_backend(&backend, &args.storage, Create::Allowed).await?;
    let stored = store.list_tokens().await?;
    static_tokens
        .check_disjoint(stored.iter().map(|t| t.principal.as_str()))
        .map_err(|e| {
            anyhow::anyhow!(
                "tokens file {}: {e}",
                args.tokens_file
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            )
        })?;
    let bootstrap = !args.no_bootstrap_token && static_tokens.is_empty();
    #[cfg(unix)]
    let control = start_control_socket(&args, &backend, &store);
    let settings = Settings {
        api: config,
        static_tokens,
        metrics,
        listen: args.listen,
        limits,
        policy,
    };
    let application = Application::build(settings, store.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let state = application.state().clone();
    if let Some(addr) = args.metrics_listen {
        let metrics_listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let metrics_app = http::metrics_app(state.clone());
        let metrics_limits = ConnLimits {
            max_connections: METRICS_CONNECTIONS,
            ..limits
        };
        // Lives as long as the process: no drain, scrapes may come until the end.
        tokio::spawn(async move {
            let forever = std::future::pending::<()>();
            let r = server::serve_with(
                metrics_listener,
                metrics_app,
                forever,
                Lifecycle::new(),
                ShutdownPolicy::default(),
                metrics_limits,
            )
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    // Only once both listeners are bound: a start that fails (port taken) must
    // not consume the one-time display of a token nobody will see working.
    if bootstrap {
        bootstrap_token(store.as_ref(), &backend, &args.storage).await?;
    }
    // Before announcing readiness: from here on SIGTERM drains instead of killing.
    let stop = lifecycle::stop_signal();
    let addr = application.addr();
    tracing::info!(
        %addr,
        version = crate::build_info::VERSION,
        revision = crate::build_info::REVISION,
        metrics = %args.metrics_listen.map_or_else(|| "on the main listener".to_owned(), |a| a.to_string()),
        postgres = backend.is_postgres(),
        data_file = %match &backend {
            Backend::Redb(cfg) => cfg.db_path().display().to_string(),
            Backend::Postgres(_) => "none (PostgreSQL)".to_owned(),
        },
        db_sharing = ?args.storage.db_sharing,
        max_connections = limits.max_connections,
        header_read_timeout_s = limits.header_read_timeout.as_secs_f64(),
        idle_timeout_s = limits.idle_timeout.as_secs_f64(),
        startup_ms = started.elapsed().as_secs_f64() * 1000.0,
        "ready"
    );
    application.run_until(stop).await?;
    #[cfg(unix)]
    if let Some(control) = control {
        // The aborted task removes the socket file if this process owns it.
        control.abort();
        let _ = control.await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The control socket for online backups and token commands (redb only: a
/// PostgreSQL server is reached through the database); see [`crate::control`].
#[cfg(unix)]
fn start_control_socket(
    args: &ServeArgs,
    backend: &Backend,
    store: &Arc<dyn Store>,
) -> Option<tokio::task::JoinHandle<()>> {
    (!backend.is_postgres())
        .then(|| crate::control::start(args.storage.data_dir.clone(), store.clone()))
}

/// Connections the metrics listener may hold (scrapers are few).
const METRICS_CONNECTIONS: usize = 16;

/// The connection limits from the flags, the cap checked against the
/// process's open-file limit and what else needs descriptors.
fn conn_limits(args: &ServeArgs, backend: &Backend) -> anyhow::Result<ConnLimits> {
    let positive = |name: &str, v: f64| {
        let d = seconds(name, v)?;
        anyhow::ensure!(!d.is_zero(), "{name} must be more than 0 seconds");
        Ok(d)
    };
    let header_read_timeout = positive("--header-read-timeout", args.header_read_timeout)?;
    let idle_timeout = positive("--idle-timeout", args.idle_timeout)?;
    let extra = match backend {
        Backend::Postgres(config) => config.pool_size as u64,
        Backend::Redb(_) => 0,
    } + if args.metrics_listen.is_some() {
        METRICS_CONNECTIONS as u64
    } else {
        0
    };
    let open_files = server::open_file_limit();
    let mut limits = ConnLimits::derive(open_files, extra).map_err(anyhow::Error::msg)?;
    if let Some(max) = args.max_connections {
        let most = ConnLimits::most_connections(open_files, extra);
        anyhow::ensure!(max > 0, "--max-connections must be at least 1");
        anyhow::ensure!(
            max <= most,
            "--max-connections {max} is more than the open-file limit allows ({} minus {} reserved = {most}); \
             raise the limit (ulimit -n, or `ulimits: nofile` in the stack) or lower the cap",
            open_files.unwrap_or(0),
            server::RESERVED_FDS + extra,
        );
        limits.max_connections = max;
    }
    limits.header_read_timeout = header_read_timeout;
    limits.idle_timeout = idle_timeout;
    Ok(limits)
}

/// On first start with no token anywhere, creates `admin` and prints its token
/// once on standard output (never in the log), so one command gives a user a
/// working credential. Called once the listeners are bound. When tokens
/// exist, says on standard output how to get one, since none is printed.
async fn bootstrap_token(
    store: &dyn Store,
    backend: &Backend,
    storage: &StorageArgs,
) -> anyhow::Result<()> {
    let existing = store.list_tokens().await?;
    if !existing.is_empty() {
        let target = if backend.is_postgres() {
            "--database-url ...".to_owned()
        } else {
            format!("--data-dir {}", storage.data_dir.display())
        };
        println!(
            "\n{} stored token(s) exist, so no token was created or shown.\n\
             To get one: devops-api token create NAME {target}\n\
             (it works while this server runs).\n",
            existing.len()
        );
        return Ok(());
    }
    let token = auth::generate_token();
    let admin = PrincipalName::parse("admin").expect("`admin` is a principal name");
    let new = crate::storage::NewToken {
        principal: admin,
        name: crate::domain::TokenName::default_name(),
        digest: auth::digest(&token),
        expires_at: None,
    };
    match store.create_token(new).await {
        Ok(_) => {
            println!(
                "\nNo tokens existed, so a token for principal `admin` was created.\n\
                 It is shown only this once (only its hash is stored):\n\n  {token}\n\n\
                 Use it as `Authorization: Bearer {token}`.\n\
                 Manage tokens with `devops-api token create|list|rotate|revoke`.\n"
            );
            tracing::warn!(
                "created the bootstrap token for `admin`; it was printed on standard output"
            );
            Ok(())
        }
        // Another process on the same file won the race: it printed the token.
        Err(StorageError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `devops-api token ...`: builds the request (a new token is generated
/// here, and only its digest leaves this process), sends it to the server on
/// the data directory's control socket when one answers, else runs it on the
/// store opened here (the file, or PostgreSQL), and prints the reply.
async fn token(args: TokenArgs) -> anyhow::Result<()> {
    use crate::control::{TokenReply, TokenRequest};
    let mut secret = None;
    let mut fresh = || {
        let t = auth::generate_token();
        let d = hex::encode(auth::digest(&t));
        secret = Some(t);
        d
    };
    let expiry =
        |e: &crate::config::ExpiryArgs| -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
            Ok(match (e.expires_in, e.expires_at) {
                (Some(d), _) => Some(
                    chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| crate::domain::now().checked_add_signed(d))
                        .ok_or_else(|| anyhow::anyhow!("--expires-in is too far in the future"))?,
                ),
                (None, at) => at,
            })
        };
    let request = match &args.action {
        TokenAction::Create {
            principal,
            name,
            expiry: e,
        } => {
            if let Some(path) = &args.tokens_file {
                anyhow::ensure!(
                    !StaticTokens::load(path)?.has_name(principal),
                    "`{principal}` is defined in the tokens file {}; a stored token would share its tasks",
                    path.display()
                );
            }
            TokenRequest::Create {
                principal: principal.clone(),
                name: name.clone(),
                expires_at: expiry(e)?,
                digest: fresh(),
            }
        }
        TokenAction::List => TokenRequest::List,
        TokenAction::Revoke { principal, name } => TokenRequest::Revoke {
            principal: principal.clone(),
            name: name.clone(),
        },
        TokenAction::Rotate {
            principal,
            name,
            grace,
            expiry: e,
        } => TokenRequest::Rotate {
            principal: principal.clone(),
            name: name.clone(),
            grace_seconds: grace.as_secs(),
            expires_at: expiry(e)?,
            digest: fresh(),
        },
    };
    let reply = token_reply(&args, request).await?;
    let when = |t: Option<chrono::DateTime<chrono::Utc>>, none: &str| {
        t.map_or_else(|| none.to_owned(), |t| crate::domain::rfc3339::format(&t))
    };
    match reply {
        TokenReply::Error { message } => anyhow::bail!(message),
        TokenReply::Created { token } => {
            eprintln!(
                "Token `{}` for `{}`{} (shown only now; store it safely):",
                token.name,
                token.principal,
                token
                    .expires_at
                    .map(|t| format!(", expires {}", crate::domain::rfc3339::format(&t)))
                    .unwrap_or_default()
            );
            println!("{}", secret.unwrap_or_default());
        }
        TokenReply::Rotated {
            token,
            old_valid_until,
        } => {
            eprintln!(
                "New token `{}` for `{}` (shown only now; store it safely); the old one stays valid until {}:",
                token.name,
                token.principal,
                crate::domain::rfc3339::format(&old_valid_until)
            );
            println!("{}", secret.unwrap_or_default());
        }
        TokenReply::Listed { tokens } => {
            if tokens.is_empty() {
                eprintln!("no tokens");
            } else {
                eprintln!("PRINCIPAL\tNAME\tCREATED\tLAST USED\tEXPIRES\tSTATE");
            }
            for t in tokens {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    t.principal,
                    t.name,
                    crate::domain::rfc3339::format(&t.created_at),
                    when(t.last_used_at, "never"),
                    when(t.expires_at, "never"),
                    t.state()
                );
            }
        }
        TokenReply::Revoked {
            principal,
            name,
            count,
        } => {
            if count > 1 {
                eprintln!(
                    "revoked the token `{name}` of `{principal}` and {} it replaced",
                    count - 1
                );
            } else {
                eprintln!("revoked the token `{name}` of `{principal}`");
            }
        }
    }
    Ok(())
}

/// Runs `request` through the control socket of a server on the data
/// directory, or on the store opened here.
async fn token_reply(
    args: &TokenArgs,
    request: crate::control::TokenRequest,
) -> anyhow::Result<crate::control::TokenReply> {
    #[cfg(unix)]
    if args.storage.database.url()?.is_none()
        && let Some(stream) = crate::control::connect(&args.storage.data_dir).await
    {
        eprintln!(
            "a server runs on {}: using its control socket",
            args.storage.data_dir.display()
        );
        return crate::control::send_token_request(stream, &request)
            .await
            .context("the control socket");
    }
    let create = match request {
        crate::control::TokenRequest::Create { .. } => Create::Allowed,
        _ => Create::Refused,
    };
    let store = open_store(&args.storage, true, create).await?;
    let reply = crate::control::execute(store.as_ref(), request).await;
    store.close().await;
    Ok(reply)
}

/// Progress on standard error: what happened, how many of how many.
fn report(what: &str, done: u64, total: u64) {
    if total > 0 {
        eprintln!("{what} {done}/{total} records");
    } else {
        eprintln!("{what} {done} records");
    }
}

/// Exit status of `devops-api backup` when the file was written and verified
/// but records of the store could not be read and are missing from it.
pub const EXIT_INCOMPLETE: u8 = 3;

/// `devops-api backup`: exit 0 when every record was written, 1 when no
/// backup was written, [`EXIT_INCOMPLETE`] when the file was written but
/// records the store could not read are missing from it.
async fn backup(args: crate::config::BackupArgs) -> anyhow::Result<ExitCode> {
    #[cfg(unix)]
    if args.storage.database.url()?.is_none()
        && let Some(stream) = crate::control::connect(&args.storage.data_dir).await
    {
        eprintln!(
            "a server runs on {}: backing up through its control socket",
            args.storage.data_dir.display()
        );
        let done = crate::backup::online::fetch(stream, &args.out, &mut report).await?;
        eprintln!(
            "backup of {} records written to {} and verified",
            done.records,
            args.out.display()
        );
        if done.unreadable == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "error: {} records could not be read and are NOT in the backup (the server's log lists them); \
             the backup holds everything else",
            done.unreadable
        );
        return Ok(ExitCode::from(EXIT_INCOMPLETE));
    }
    let store = open_store(&args.storage, true, Create::Refused).await?;
    let result = crate::backup::backup(store.as_ref(), &args.out, &mut report).await;
    store.close().await;
    let done = result?;
    eprintln!(
        "backup of {} records written to {} and verified",
        done.records,
        args.out.display()
    );
    if done.unreadable.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for u in &done.unreadable {
        eprintln!("unreadable: {}: {}", u.key, u.reason);
    }
    eprintln!(
        "error: {} records could not be read and are NOT in the backup (listed above); \
         the backup holds everything else",
        done.unreadable.len()
    );
    Ok(ExitCode::from(EXIT_INCOMPLETE))
}

/// Exit status of `devops-api index check` (without `--repair`) when the
/// indexes disagree with the records.
pub const EXIT_INDEX_DISAGREES: u8 = 4;

/// `devops-api index check [--repair]`: through the control socket when a
/// server answers on it, else on the store opened here.
async fn index(args: IndexArgs) -> anyhow::Result<ExitCode> {
    use crate::index_cmd::{IndexReply, execute, request};
    let IndexAction::Check { repair } = args.action;
    #[cfg(unix)]
    let online = if args.storage.database.url()?.is_none()
        && let Some(stream) = crate::control::connect(&args.storage.data_dir).await
    {
        eprintln!(
            "a server runs on {}: asking it through its control socket",
            args.storage.data_dir.display()
        );
        Some(request(stream, repair).await?)
    } else {
        None
    };
    #[cfg(not(unix))]
    let online = None;
    let reply = match online {
        Some(reply) => reply,
        None => {
            let store = open_store(&args.storage, true, Create::Refused).await?;
            let reply = execute(store.as_ref(), repair).await;
            store.close().await;
            reply
        }
    };
    match reply {
        IndexReply::Checked {
            disagreements: 0, ..
        } => {
            println!("the indexes agree with the task records");
            Ok(ExitCode::SUCCESS)
        }
        IndexReply::Checked {
            disagreements,
            examples,
        } => {
            for e in &examples {
                println!("{e}");
            }
            println!(
                "{disagreements} index entries disagree with the task records; \
                 `devops-api index check --repair` fixes them"
            );
            Ok(ExitCode::from(EXIT_INDEX_DISAGREES))
        }
        IndexReply::Repaired { added, removed } => {
            println!("index repaired: {added} entries added, {removed} removed");
            Ok(ExitCode::SUCCESS)
        }
        IndexReply::Error { message } => anyhow::bail!("{message}"),
    }
}

/// `devops-api restore`: the file is read and validated before any store is
/// opened, so a missing or damaged file leaves nothing behind; a data file
/// this command created is removed again when the import fails.
async fn restore(args: crate::config::RestoreArgs) -> anyhow::Result<()> {
    let loaded = crate::backup::load(&args.file, &mut report)?;
    let redb = args.storage.database.url()?.is_none();
    let db_file = RedbConfig::new(&args.storage.data_dir).db_path();
    let dir_existed = args.storage.data_dir.exists();
    let file_existed = db_file.exists();
    let store = open_store(&args.storage, true, Create::Allowed).await?;
    let result = async {
        let set = if args.force {
            keep_old_data(store.as_ref(), &args.file).await?;
            loaded.set.replacing()
        } else {
            loaded.set
        };
        let loaded = crate::backup::Loaded { set, ..loaded };
        anyhow::Ok(crate::backup::import(store.as_ref(), loaded, &mut report).await?)
    }
    .await;
    store.close().await;
    if result.is_err() && redb && !file_existed {
        let _ = std::fs::remove_file(&db_file);
        if !dir_existed {
            let _ = std::fs::remove_dir(&args.storage.data_dir);
        }
    }
    let restored = result.map_err(|e| match e.downcast::<crate::backup::BackupError>() {
        Ok(crate::backup::BackupError::TargetNotEmpty) => anyhow::anyhow!(
            "{}; or pass --force to replace it (the current data is first saved to a backup file)",
            crate::backup::BackupError::TargetNotEmpty
        ),
        Ok(e) => e.into(),
        Err(e) => e,
    })?;
    if restored.lacking > 0 {
        eprintln!(
            "warning: this backup lacks {} records that its source could not read",
            restored.lacking
        );
    }
    eprintln!(
        "restored {} records from {} and verified",
        restored.records,
        args.file.display()
    );
    Ok(())
}

/// `restore --force`: saves what `store` holds to `pre-restore-<time>.backup`
/// beside `file` before it is replaced. Nothing is saved for an empty store.
async fn keep_old_data(store: &dyn Store, file: &Path) -> anyhow::Result<()> {
    if store.count_tasks().await? == 0 && store.list_tokens().await?.is_empty() {
        return Ok(());
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let keep = file
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("pre-restore-{stamp}.backup"));
    let done = crate::backup::backup(store, &keep, &mut report)
        .await
        .with_context(|| {
            format!(
                "cannot keep the current data in {}; nothing was restored",
                keep.display()
            )
        })?;
    eprintln!(
        "the current data ({} records) is kept in {}",
        done.records,
        keep.display()
    );
    Ok(())
}

fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}/ready", args.listen.port()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unhealthy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::try_from_secs_f64(args.timeout).unwrap_or(Duration::from_secs(3));
    match rt.block_on(async { tokio::time::timeout(timeout, get_status(&url)).await }) {
        Ok(Ok(status)) if (200..300).contains(&status) => {
            println!("healthy: {url} answered {status}");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("unhealthy: {url} answered {status}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {url}: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("unhealthy: {url} did not answer within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}

async fn get_status(url: &str) -> anyhow::Result<u16> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("invalid URL `{url}`"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let resp = client.get(uri).await.context("request failed")?;
    Ok(resp.status().as_u16())
}
