//! Tests of the real binary as a process: signals, crashes, two processes on
//! one data file, and the subcommands.

mod helpers;

mod abuse;
mod backup;
mod cli;
mod crash;
mod disk_full;
mod index;
mod lifecycle;
mod logs;
mod sharing;
mod tokens;
mod version;
