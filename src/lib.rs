//! devops-api: a task-management REST API on an embedded redb file or PostgreSQL.
//!
//! A tour of the modules, from the bottom layer up (no module imports one
//! above it):
//! - [`domain`]: tasks and their fields, valid by construction; client JSON
//!   into them with per-field errors; the listing query and its cursor; the
//!   principal's name; what a stored task may hold (`StoredTask`).
//! - [`lifecycle`], [`telemetry`], [`jsonlog`], [`metrics_catalog`]: readiness,
//!   drain and shutdown signals; logs (the JSON line format puts a request's
//!   span fields on every line) and the Prometheus recorder; every exported
//!   metric with its HELP text.
//! - [`storage`]: the [`storage::Store`] trait, the business rules decided
//!   above the backends (`storage::rules`: idempotency freshness, version
//!   checks, quota, import target), the record formats the stores own
//!   ([`storage::codec`], versioned and pinned by golden files), and the two
//!   backends: [`storage::redb`] (embedded, group commit: store, writer, keys,
//!   tables, files, ops) and [`storage::postgres`] (store, migrations, SQL,
//!   rows, ops). A contract suite in `tests/contract/` holds both to one
//!   behaviour.
//! - [`auth`], [`ratelimit`]: bearer tokens and the tokens file;
//!   per-principal limits and the limit on failed authentications.
//! - [`server`]: `server::serve` takes a bound listener and a shutdown future
//!   (tests bind port 0 and decide when to stop), with the connection limits.
//! - [`http`]: the router builder [`http::app`]; the task resource
//!   (`http::tasks`: handlers, the API's own body types, the query string);
//!   operations routes; extractors; the one error type mapped to RFC 9457
//!   problems; middleware; the OpenAPI document generated from the types
//!   handlers take and return.
//! - [`backup`]: the backup file format (its own versioned type), backup/restore
//!   with verification, and online backups through the control socket
//!   (`backup::online`); [`control`]: that socket, which also serves token
//!   commands while the server runs.
//! - [`app`]: the application builder ([`app::Application::build`]) that
//!   `serve` and the HTTP tests share: state, router, bound listener, limits.
//! - [`config`], [`cli`]: the command line (the only user of clap) and the
//!   subcommands; `main.rs` hands over to [`cli::run`]; [`build_info`]: the
//!   version and source revision built into the binary.

pub mod app;
pub mod auth;
pub mod backup;
pub mod build_info;
pub mod cli;
pub mod config;
#[cfg(unix)]
pub mod control;
pub mod domain;
pub mod http;
pub mod index_cmd;
pub mod jsonlog;
pub mod lifecycle;
pub mod metrics_catalog;
pub mod ratelimit;
pub mod server;
pub mod storage;
pub mod telemetry;
