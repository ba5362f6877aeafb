//! Token traps of the command line: when the bootstrap token is made, where
//! store flags may stand, and which subcommands may create a database.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::helpers::{BIN, run};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Starts `serve` with no tokens file and returns its standard output up to
/// the `ready` line (or until it exits), then stops it.
fn serve_stdout(data: &std::path::Path, listen: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .env("LISTEN_ADDR", listen)
        .env("DATA_DIR", data)
        .env("LOG_FORMAT", "json")
        .env_remove("TOKENS_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    let mut ready = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if line.contains(r#""message":"ready""#) {
            ready = true;
            break;
        }
    }
    if ready {
        // Standard output is written before the ready line is logged.
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (if ready { None } else { status.code() }, out, log)
}

#[test]
fn bootstrap_token_only_once_the_listener_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    let (code, out, log) = serve_stdout(&data, &addr);
    assert_eq!(code, Some(1), "the start fails: {log}");
    assert!(log.contains("cannot listen on"), "{log}");
    assert!(!out.contains("dapi_"), "no token printed: {out}");
    let list = run(&["token", "list"], &data, &[]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert_eq!(text(&list.stdout), "", "no token created");
    drop(taken);

    let (code, out, _) = serve_stdout(&data, "127.0.0.1:0");
    assert_eq!(code, None, "the second start comes up");
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("dapi_"))
        .unwrap_or_else(|| panic!("the first successful start shows the token: {out}"));
    assert!(token.len() > 40);
    let list = run(&["token", "list"], &data, &[]);
    assert!(text(&list.stdout).starts_with("admin\t"));

    let (code, out, _) = serve_stdout(&data, "127.0.0.1:0");
    assert_eq!(code, None);
    assert!(!out.contains("dapi_"), "shown only once: {out}");
    assert!(
        out.contains("no token was created or shown")
            && out.contains(&format!(
                "devops-api token create NAME --data-dir {}",
                data.display()
            )),
        "a later start says how to get one: {out}"
    );
}

#[test]
fn store_flags_are_accepted_after_the_token_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("DATA_DIR")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = cli(&["token", "create", "me", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).trim().starts_with("dapi_"));
    for args in [
        &["token", "list", "--data-dir", data][..],
        &["token", "--data-dir", data, "list"],
        &[
            "token",
            "list",
            "--data-dir",
            data,
            "--db-sharing",
            "exclusive",
        ],
    ] {
        let out = cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("me\t"), "{args:?}");
    }
    let out = cli(&["token", "revoke", "me", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only --data-dir was used, not the default ./data"
    );
}

#[test]
fn a_mistyped_data_dir_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("dta");
    let out_file = dir.path().join("backup.jsonl");
    for args in [
        &["token", "list"][..],
        &["token", "revoke", "me"],
        &["backup", "--out", out_file.to_str().unwrap()],
    ] {
        let out = run(args, &missing, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("no database at") && err.contains(missing.to_str().unwrap()),
            "{args:?}: {err}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    assert!(!out_file.exists());
    // `token create` is how a fresh directory gets its first token.
    let out = run(&["token", "create", "me"], &missing, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["token", "list"], &missing, &[]);
    assert!(text(&out.stdout).starts_with("me\t"));
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _devops__api"),
        ("zsh", "#compdef devops-api"),
        ("fish", "complete -c devops-api"),
    ] {
        let out = run(&["completions", shell], dir.path(), &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for word in [
            "healthcheck",
            "token",
            "revoke",
            "data-dir",
            "drain-seconds",
        ] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    let out = run(&["completions", "tcsh"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "unknown shells are refused");

    let out = run(&["man"], dir.path(), &[]);
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH devops-api 1"));
    assert!(page.contains(".TH devops-api 1") && page.contains("DRAIN_SECONDS"));
    assert!(page.contains(env!("CARGO_PKG_VERSION")));

    let pages = dir.path().join("man1");
    let out = run(&["man", "--dir", pages.to_str().unwrap()], dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in [
        "devops-api.1",
        "devops-api-serve.1",
        "devops-api-token.1",
        "devops-api-token-create.1",
        "devops-api-backup.1",
    ] {
        let body = std::fs::read_to_string(pages.join(page)).unwrap_or_default();
        assert!(body.contains(".TH"), "{page} written");
    }
    // Token store flags are documented where they are accepted.
    let create = std::fs::read_to_string(pages.join("devops-api-token-create.1")).unwrap();
    assert!(create.contains("data\\-dir"), "{create}");
}
