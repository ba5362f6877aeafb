//! Command line and environment: one clap definition, each option with its
//! environment variable. Secrets come from `*_FILE` variables (Docker secrets).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::storage::DbSharing;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "devops-api",
    version = crate::build_info::LONG_VERSION,
    about = "Task-management REST API on an embedded redb file (default) or PostgreSQL",
    long_about = "Task-management REST API on an embedded redb file (default) or PostgreSQL.\n\n\
        Without a subcommand, `serve` runs. Every option can also be set through the \
        environment variable shown beside it.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve(ServeArgs),
    /// Exit 0 if the local server answers its readiness URL with 2xx, else 1
    /// (for Docker/Swarm healthchecks: the image has no shell and no curl).
    Healthcheck(HealthcheckArgs),
    /// Manage bearer tokens: several named tokens per principal, expiry,
    /// rotation with a grace period (also while the server runs).
    #[command(
        long_about = "Manage bearer tokens: several named tokens per principal, with optional \
        expiry, last-use times, and rotation with a grace period.\n\n\
        With the redb file, when a server runs on the data directory (any --db-sharing mode, \
        including the default exclusive one) the command goes through the server's control \
        socket (DATA_DIR/control.sock, mode 0600); otherwise it opens the file itself. With \
        PostgreSQL it talks to the database."
    )]
    Token(TokenArgs),
    /// Apply pending PostgreSQL schema migrations and exit (`serve` also applies them at start).
    Migrate(MigrateArgs),
    /// Write a consistent snapshot of all tasks and tokens to a file, also
    /// while the server runs, and verify it.
    #[command(
        long_about = "Write a consistent snapshot of all tasks and tokens (token digests, \
        never tokens) to a file, also while the server runs, and verify it. When a server \
        answers on the control socket of the data directory (DATA_DIR/control.sock, any \
        --db-sharing mode) the snapshot comes from it; otherwise the file (or PostgreSQL) is \
        opened directly. The file is created with mode 0600 and replaces OUT only when \
        complete.\n\n\
        The file ends with a SHA-256 over its records: an integrity check that detects a \
        truncated or damaged file, not an authenticity check (it has no key; anyone who can \
        edit the file can recompute it). Keep backups where only operators can write.\n\n\
        Records the store cannot read (damaged data) are left out, each listed on standard \
        error with its key, and counted in the file's trailer; everything else is still \
        backed up.\n\n\
        Exit status: 0 every record was written and verified; 1 no backup was written \
        (error); 3 the backup was written and verified but lacks the unreadable records listed."
    )]
    Backup(BackupArgs),
    /// Check the list filters' indexes against the task records; repair them with --repair.
    #[command(
        long_about = "Check the list filters' indexes against the task records, and with \
        --repair make them agree. A process of an earlier release that shares the redb file \
        (multi-writer: a rolling update, a rollback) writes tasks without index entries, so \
        filtered lists miss those tasks until a repair; servers repair by themselves after \
        opening and, in multi-writer mode, every 5 minutes. The deploy script runs \
        `index check --repair` once a rollout has converged.\n\n\
        When a server answers on the control socket of the data directory \
        (DATA_DIR/control.sock, any --db-sharing mode) it does the work; otherwise the file \
        (or PostgreSQL) is opened directly.\n\n\
        Exit status: 0 the indexes agree (or were repaired); 1 error; 4 check only, and \
        they disagree."
    )]
    Index(IndexArgs),
    /// Load a backup file into an empty data directory (or empty database) and verify it.
    #[command(
        long_about = "Load a backup file into an empty data directory (or empty \
        database; with --force, one that holds data, which is first saved to a backup file) \
        and verify it. The file is read and checked before any store is opened: a missing \
        or damaged file leaves nothing behind.\n\n\
        The file's SHA-256 is an integrity check (truncation, damage), not an authenticity \
        check: it has no key, so an edited file can carry a matching checksum. Every record is \
        therefore validated as the API would: principal names (owners and token names), \
        UUIDv7 task ids, every task field, timestamps, versions, token digests, and no task \
        id, token name or token digest twice. The import is one transaction that reads the \
        records back before it commits: on any error nothing is restored and the target stays \
        as it was.\n\n\
        Exit status: 0 restored and verified; 1 nothing was restored."
    )]
    Restore(RestoreArgs),
    /// Print the shell completion script for SHELL on standard output.
    #[command(
        long_about = "Print the shell completion script for SHELL on standard output.\n\n\
        bash: `devops-api completions bash > ~/.local/share/bash-completion/completions/devops-api`; \
        zsh: into a directory of $fpath as `_devops-api`; \
        fish: `devops-api completions fish > ~/.config/fish/completions/devops-api.fish`. \
        The Nix package installs them for bash, zsh and fish."
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on standard output, or write one page per
    /// subcommand into DIR.
    Man {
        /// Write devops-api.1 and devops-api-SUBCOMMAND.1 into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The command line as clap sees it: the derive definition, with the flags
/// of every command that has subcommands of its own (`token`, `index`) made
/// global, so the store flags are accepted after the subcommand too
/// (`token create me --data-dir X`, `index check --data-dir X`), not only
/// before it.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let cli = Cli::command();
    let nested: Vec<String> = cli
        .get_subcommands()
        .filter(|c| c.has_subcommands())
        .map(|c| c.get_name().to_owned())
        .collect();
    nested.iter().fold(cli, |cli, name| {
        cli.mut_subcommand(name, |c| c.mut_args(|a| a.global(true)))
    })
}

/// Parses the process's arguments with [`command`].
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The backup file to write (replaced atomically when complete).
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file to read.
    pub file: PathBuf,
    /// Replace data the target holds, after saving it to
    /// `pre-restore-<time>.backup` beside FILE; the replacement is one
    /// transaction (the old data stays if the import fails).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Where the data lives; shared by every subcommand that opens storage.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Directory of the embedded database file (created if missing).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Whether other processes may open the same database file: `multi-writer`
    /// lets several tasks of one service on one host share it.
    #[arg(long, env = "DB_SHARING", value_enum, default_value_t = DbSharing::Exclusive)]
    pub db_sharing: DbSharing,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// PostgreSQL instead of redb: chosen when a database URL is given.
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (`postgres://user:password@host:5432/db`); when set, PostgreSQL
    /// is used instead of the redb file. TLS as libpq's `sslmode` in the URL says:
    /// disable, prefer (default), require, verify-ca, verify-full.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL URL (a Docker secret; a trailing newline is ignored).
    #[arg(long, env = "DATABASE_URL_FILE", conflicts_with = "database_url")]
    pub database_url_file: Option<PathBuf>,
    /// PEM file of the CA that signs the PostgreSQL server's certificate, for
    /// `sslmode=verify-ca` or `verify-full` (default: the URL's `sslrootcert`,
    /// else the Mozilla root store).
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Most PostgreSQL connections per process (replicas × this must stay below max_connections).
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 10)]
    pub database_pool_size: usize,
    /// Seconds a PostgreSQL statement may run before the server cancels it; 0 = no limit.
    #[arg(long, env = "STATEMENT_TIMEOUT", default_value_t = 5.0)]
    pub statement_timeout: f64,
}

impl DatabaseArgs {
    /// The URL from `--database-url` or the file, if either is set.
    pub fn url(&self) -> anyhow::Result<Option<String>> {
        if let Some(url) = &self.database_url {
            return Ok(Some(url.clone()));
        }
        let Some(path) = &self.database_url_file else {
            return Ok(None);
        };
        let raw = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read DATABASE_URL_FILE {}: {e}", path.display())
        })?;
        let url = raw.trim();
        anyhow::ensure!(
            !url.is_empty(),
            "DATABASE_URL_FILE {} is empty",
            path.display()
        );
        Ok(Some(url.to_owned()))
    }
}

/// The URL holds a password: never print it.
impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("database_url_file", &self.database_url_file)
            .field("database_ca_file", &self.database_ca_file)
            .field("database_pool_size", &self.database_pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter: a level (`info`, `debug`) or directives (`devops_api=debug,info`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// `pretty` for terminals, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve /metrics only on this separate address (keep it off the proxy).
    #[arg(long = "metrics-listen", env = "METRICS_ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Seconds to keep serving, not ready, after SIGTERM (set above the proxy's refresh interval).
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 0.0)]
    pub drain_seconds: f64,
    /// Seconds to wait for in-flight requests after the drain.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 10.0)]
    pub shutdown_timeout: f64,
    /// File of `NAME:TOKEN` lines (a Docker secret) accepted besides stored tokens.
    #[arg(long, env = "TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Seconds after which a request is abandoned with 503.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value_t = 30.0)]
    pub request_timeout: f64,
    /// Requests per second per principal (burst: twice that); 0 turns the limit off.
    #[arg(long, env = "RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,
    /// Most tasks one principal may hold.
    #[arg(long, env = "MAX_TASKS_PER_PRINCIPAL", default_value_t = 100_000)]
    pub max_tasks_per_principal: u64,
    /// Comma-separated origins allowed by CORS (none by default: cross-origin calls are denied).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Commit concurrent writes together (on); `false` commits each write alone.
    #[arg(long, env = "GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub group_commit: bool,
    /// Do not create and print an `admin` token on first start with no tokens.
    #[arg(long, env = "NO_BOOTSTRAP_TOKEN")]
    pub no_bootstrap_token: bool,
    /// Most client connections open at once; at the cap the server stops
    /// accepting until one closes. Default: the open-file limit minus 64,
    /// minus the PostgreSQL pool size and 16 for --metrics-listen, at most 4096.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client may take to send a request's line and headers,
    /// counted from their first byte (from connecting, for a connection's first request).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub header_read_timeout: f64,
    /// Seconds a kept-alive connection may wait for its next request, and a
    /// response for its client to read on; keep it above the proxy's idle timeout (Traefik: 90).
    #[arg(long, env = "IDLE_TIMEOUT", default_value_t = 120.0)]
    pub idle_timeout: f64,
    /// Failed authentications (401) per minute per client address, also the
    /// burst; beyond it that address gets 429 for every token until it refills. 0 turns the limit off.
    #[arg(long, env = "AUTH_FAILURE_LIMIT", default_value_t = 60)]
    pub auth_failure_limit: u32,
    /// Who may open the interactive API docs at /docs: `public`, `token`
    /// (a valid bearer token is required) or `off`.
    #[arg(long, env = "DOCS", value_enum, default_value_t = crate::http::DocsAccess::Public)]
    pub docs: crate::http::DocsAccess,
    /// Comma-separated addresses or CIDRs of proxies whose X-Forwarded-For
    /// names the client (e.g. the proxy's overlay network); none by default.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// URL to call; defaults to /ready on the port of LISTEN_ADDR.
    #[arg(long, env = "HEALTHCHECK_URL")]
    pub url: Option<String>,
    /// Used to find the port when --url is not given.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub action: IndexAction,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IndexAction {
    /// Compare the indexes with the records (one snapshot); with --repair, fix what disagrees.
    Check {
        /// Make the indexes agree with the records, in short transactions, while writes go on.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The server's tokens file: `create` refuses a NAME it already defines.
    #[arg(long, env = "TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenAction {
    /// Create a token for PRINCIPAL and print it once.
    Create {
        principal: String,
        /// The token's name among PRINCIPAL's tokens.
        #[arg(long, default_value = "default")]
        name: String,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// List stored tokens, tab-separated: principal, name, created, last
    /// used, expires, state (never the tokens).
    List,
    /// Revoke PRINCIPAL's token NAME (and any token a rotation replaced under
    /// that name); without NAME, only if PRINCIPAL has just one.
    Revoke {
        principal: String,
        name: Option<String>,
    },
    /// Replace PRINCIPAL's token NAME by a new one, printed once; the old one
    /// stays valid for the grace period.
    Rotate {
        principal: String,
        name: String,
        /// How long the old token stays valid (e.g. 30m, 24h, 7d; 0 ends it now).
        #[arg(long, default_value = "24h", value_parser = duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
}

/// When a new token expires (never, without either flag).
#[derive(Debug, Clone, Args)]
pub struct ExpiryArgs {
    /// The token expires this long after its creation (e.g. 90d, 12h, 1w2d).
    #[arg(long, value_parser = duration, conflicts_with = "expires_at")]
    pub expires_in: Option<std::time::Duration>,
    /// The token expires at this instant (RFC 3339, e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_parser = instant)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An RFC 3339 date-time, cut to whole microseconds (what stores keep).
pub fn instant(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp_micros(t.timestamp_micros()))
        .ok_or_else(|| {
            format!("invalid date-time `{raw}`: use RFC 3339, e.g. 2027-01-01T00:00:00Z")
        })
}

/// A duration as `token` flags take it: one or more `<number><unit>` with
/// units `s`, `m`, `h`, `d` (24 h), `w` (7 d), e.g. `90d`, `1h30m`; `0` alone is zero.
pub fn duration(raw: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration `{raw}`: use e.g. 30m, 24h, 7d, 1h30m");
    if raw == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in raw.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || raw.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

// The command line's names for the values of lower layers' enums: storage
// and telemetry do not know about clap.

impl clap::ValueEnum for DbSharing {
    fn value_variants<'a>() -> &'a [Self] {
        &[DbSharing::Exclusive, DbSharing::MultiWriter]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            DbSharing::Exclusive => {
                PossibleValue::new("exclusive").help("This process alone; the fastest commits")
            }
            DbSharing::MultiWriter => PossibleValue::new("multi-writer").help(
                "Several processes on one host read and write the file, one write transaction \
                 at a time (tasks of one service sharing a volume)",
            ),
        })
    }
}

impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Pretty, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            LogFormat::Pretty => PossibleValue::new("pretty").help("Human-readable, for terminals"),
            LogFormat::Json => {
                PossibleValue::new("json").help("One JSON object per line, for log collectors")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every leaf of a command with subcommands (`token create`, `index
    /// check`, …) accepts its parent's flags after it as well as before it:
    /// whatever else the parse says (a missing PRINCIPAL), never that the
    /// flag is unknown where users write it.
    #[test]
    fn parent_flags_are_accepted_after_every_nested_subcommand() {
        let cli = command();
        let mut checked = 0;
        for parent in cli.get_subcommands().filter(|c| c.has_subcommands()) {
            let flags: Vec<String> = parent
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "help")
                .map(|l| format!("--{l}"))
                .collect();
            assert!(
                flags.contains(&"--data-dir".to_owned()),
                "{}",
                parent.get_name()
            );
            for leaf in parent.get_subcommands() {
                for flag in &flags {
                    for args in [
                        vec![parent.get_name(), leaf.get_name(), flag.as_str(), "x"],
                        vec![parent.get_name(), flag.as_str(), "x", leaf.get_name()],
                    ] {
                        let argv = std::iter::once("devops-api").chain(args.iter().copied());
                        if let Err(e) = command().try_get_matches_from(argv) {
                            assert_ne!(
                                e.kind(),
                                clap::error::ErrorKind::UnknownArgument,
                                "{args:?}: {e}"
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 20, "{checked}");
    }

    #[test]
    fn durations_and_instants() {
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("1w2d"), Ok(Duration::from_secs(9 * 86_400)));
        for bad in ["", "h", "10", "5x", "1.5h", "-1h", "99999999999999999999w"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        let t = instant("2027-01-01T00:00:00.1234567+01:00").unwrap();
        assert_eq!(
            crate::domain::rfc3339::format(&t),
            "2026-12-31T23:00:00.123456Z"
        );
        assert!(instant("2027-01-01").is_err());
    }
}
