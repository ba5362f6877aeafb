//! devops-api: a task-management REST API on an embedded redb file or PostgreSQL.
//!
//! A tour of the modules:
//! - [`domain`]: tasks and their fields, valid by construction, and the parsing
//!   of client JSON into them with per-field errors.
//! - [`storage`]: the [`storage::Store`] trait and its backends (redb with group
//!   commit). A shared contract suite in `tests/contract/` holds them to one behaviour.
//! - [`http`]: the router builder [`http::app`], extractors, the one error type
//!   mapped to RFC 9457 problems, middleware, and the OpenAPI document.
//! - [`auth`] and [`ratelimit`]: bearer tokens, principals, the tokens file's
//!   rules, per-principal limits and the limit on failed authentications.
//! - [`lifecycle`] and [`server`]: readiness, drain on SIGTERM, graceful stop,
//!   and the connection limits (cap, header and idle timeouts); `server::serve`
//!   takes a bound listener and a shutdown future, so tests bind port 0 and
//!   decide when to stop.
//! - [`config`], [`cli`], [`telemetry`]: the command line, subcommands, logs and metrics;
//!   [`build_info`]: the version and source revision built into the binary.

pub mod auth;
pub mod backup;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod lifecycle;
pub mod ratelimit;
pub mod server;
pub mod storage;
pub mod telemetry;
