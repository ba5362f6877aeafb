//! HTTP integration tests: the real app on port 0, one fresh data directory per test.

mod helpers;

mod auth;
mod connections;
mod docs;
mod errors;
mod logs;
mod ops;
mod tasks;
