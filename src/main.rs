//! The `devops-api` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// mimalloc rather than the C library's allocator. musl's (the static image)
/// serialises every thread on one lock and returns memory to the kernel
/// eagerly; with it, every phase of the benchmark ran several times slower
/// than on glibc. mimalloc keeps per-thread heaps on both C libraries, so the
/// image and a glibc build perform alike (`docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    devops_api::cli::run(devops_api::config::parse())
}
