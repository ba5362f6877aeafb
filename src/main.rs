//! The `devops-api` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    devops_api::cli::run(devops_api::config::parse())
}
