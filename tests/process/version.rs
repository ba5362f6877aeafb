//! The revision built into the binary, wherever it shows.

use std::path::Path;
use std::process::Command;

use crate::helpers::{Server, client, run};

/// The commit this test was built from, found independently of the binary:
/// the revision a builder passed in, else git's answer for this checkout,
/// else `unknown` (a source tree without git, like the Nix sandbox).
fn expected_commit() -> String {
    if let Some(given) = option_env!("DEVOPS_API_REVISION").filter(|r| !r.is_empty()) {
        return given.trim_end_matches("-dirty").to_owned();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--show-toplevel"]) {
        Some(top) if Path::new(&top).canonicalize().ok() == dir.canonicalize().ok() => {
            git(&["rev-parse", "HEAD"]).expect("a checkout has a HEAD")
        }
        _ => "unknown".to_owned(),
    }
}

/// `COMMIT` or `COMMIT-dirty`.
fn assert_revision(shown: &str, what: &str) {
    let commit = expected_commit();
    assert!(
        shown == commit || shown == format!("{commit}-dirty"),
        "{what} shows revision {shown:?}, built from {commit}"
    );
}

#[test]
fn version_names_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--version"], dir.path(), &[]);
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let rest = line
        .trim()
        .strip_prefix(concat!("devops-api ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`--version` printed {line:?}"));
    assert_revision(rest, "--version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_line_health_header_and_build_info_agree() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let revision = server.ready["revision"]
        .as_str()
        .expect("ready line has revision");
    assert_revision(revision, "the ready log line");
    assert_eq!(server.ready["version"], env!("CARGO_PKG_VERSION"));

    let c = client();
    let health = c.get(server.url("/health")).send().await.unwrap();
    let served_by = health.headers()["x-served-by"].to_str().unwrap().to_owned();
    assert_eq!(
        served_by,
        format!("devops-api/{} {revision}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "healthy"}),
        "the body stays what it always was"
    );

    let metrics = c.get(server.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("build_info{"))
        .unwrap_or_else(|| panic!("no build_info in {text}"));
    let commit = revision.trim_end_matches("-dirty");
    assert!(line.contains(&format!("git_commit=\"{commit}\"")), "{line}");
    let dirty = revision.ends_with("-dirty");
    assert!(line.contains(&format!("dirty=\"{dirty}\"")), "{line}");
}
