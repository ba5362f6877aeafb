//! Carries the source revision into the binary as `DEVOPS_API_BUILD_REVISION`:
//! `<commit>`, `<commit>-dirty` (tracked files differed from the commit when
//! this script ran) or `unknown`.
//!
//! Builders that have no git checkout pass it in `DEVOPS_API_REVISION` (the
//! Nix package sets it from the flake's `self.rev` / `self.dirtyRev`; the CI
//! image build from `git rev-parse`); a value that is not a revision fails the
//! build. Otherwise `git` is asked, but only about a checkout whose top level is
//! this crate (a crate unpacked inside some other repository is not that
//! repository's commit). No git, or no checkout: `unknown`. No C, no crates:
//! the script only runs `git` when it is there.

use std::path::{Path, PathBuf};
use std::process::Command;

const INPUT: &str = "DEVOPS_API_REVISION";

fn main() {
    println!("cargo:rerun-if-env-changed={INPUT}");
    let revision = match std::env::var(INPUT) {
        Ok(given) if !given.trim().is_empty() => {
            let given = given.trim().to_owned();
            assert!(
                valid(&given),
                "{INPUT}={given:?} is not a revision: want 7 to 64 hex digits, \
                 optionally followed by `-dirty`, or `unknown`"
            );
            given
        }
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=DEVOPS_API_BUILD_REVISION={revision}");
}

fn valid(rev: &str) -> bool {
    if rev == "unknown" {
        return true;
    }
    let commit = rev.strip_suffix("-dirty").unwrap_or(rev);
    (7..=64).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn from_git() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = git(&manifest_dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != manifest_dir.canonicalize().ok()? {
        return None;
    }
    // Rerun when HEAD moves (checkout, commit) or a tracked input of the
    // binary changes; edits elsewhere leave the dirty flag as last computed.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&manifest_dir, &["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={}", manifest_dir.join(p).display());
        }
    }
    if let Some(head_ref) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&manifest_dir, &["rev-parse", "--git-path", &head_ref])
    {
        println!("cargo:rerun-if-changed={}", manifest_dir.join(p).display());
    }
    for input in ["src", "build.rs", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={input}");
    }
    let commit = git(&manifest_dir, &["rev-parse", "--verify", "HEAD"])?;
    if !valid(&commit) {
        return None;
    }
    let dirty = !git(
        &manifest_dir,
        &["status", "--porcelain", "--untracked-files=no"],
    )?
    .is_empty();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
