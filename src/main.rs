//! The `devops-api` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    devops_api::cli::run(devops_api::config::Cli::parse())
}
