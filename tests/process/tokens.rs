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

/// The status and body of `GET /v1/tasks` with `token`.
async fn list_with(server: &crate::helpers::Server, token: &str) -> (u16, String) {
    let r = crate::helpers::get(&crate::helpers::client(), server.url("/v1/tasks"), token).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `token ARGS` on `data`: (success, stdout, stderr).
fn token_cli(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let out = run(&all, data, &[]);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The listed line of `principal`'s token `name` (the first, when rotated).
fn listed<'a>(list: &'a str, principal: &str, name: &str) -> Vec<&'a str> {
    list.lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|c| c[0] == principal && c[1] == name)
        .unwrap_or_else(|| panic!("`{principal}` `{name}` not listed: {list}"))
}

/// Every token command works while a server holds the file in the default
/// exclusive mode (through its control socket): several named tokens,
/// expiry, rotation with its grace, last use, revoke by name; and the last
/// uses are on disk once the server has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_managed_while_an_exclusive_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = crate::helpers::Server::start(
        &data,
        &[("DB_SHARING", "exclusive"), ("DRAIN_SECONDS", "0")],
    );

    let (ok, ci, err) = token_cli(&data, &["create", "bob", "--name", "ci"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("control socket"),
        "went through the server: {err}"
    );
    let ci = ci.trim().to_owned();
    let (ok, laptop, err) = token_cli(&data, &["create", "bob", "--name", "laptop"]);
    assert!(ok, "{err}");
    let laptop = laptop.trim().to_owned();
    let (ok, short, err) = token_cli(
        &data,
        &["create", "bob", "--name", "short", "--expires-in", "2s"],
    );
    assert!(ok && err.contains("expires"), "{err}");
    let short = short.trim().to_owned();
    let (ok, _, err) = token_cli(&data, &["create", "bob", "--name", "ci"]);
    assert!(
        !ok && err.contains("already has a token named `ci`"),
        "{err}"
    );

    for t in [&ci, &laptop, &short] {
        assert_eq!(list_with(&server, t).await.0, 200);
    }
    let unknown = list_with(&server, "dapi_not_a_token_at_all_0123456789abcdef").await;
    assert_eq!(unknown.0, 401);

    let (ok, rotated, err) = token_cli(&data, &["rotate", "bob", "ci", "--grace", "2s"]);
    assert!(ok && err.contains("the old one stays valid until"), "{err}");
    let rotated = rotated.trim().to_owned();
    assert_ne!(rotated, ci);
    assert_eq!(
        list_with(&server, &ci).await.0,
        200,
        "old token within its grace"
    );
    assert_eq!(list_with(&server, &rotated).await.0, 200);

    let (ok, list, err) = token_cli(&data, &["list"]);
    assert!(ok, "{err}");
    assert!(!list.contains("dapi_"), "never the tokens: {list}");
    let used = listed(&list, "bob", "laptop");
    assert_eq!(used.len(), 6, "{list}");
    assert_ne!(used[3], "never", "last use shown: {list}");
    assert_eq!((used[4], used[5]), ("never", "active"));
    assert_eq!(
        list.lines().filter(|l| l.starts_with("bob\tci\t")).count(),
        2
    );
    assert!(list.contains("\trotated\n"), "{list}");

    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    assert_eq!(
        list_with(&server, &short).await,
        unknown,
        "expired: as unknown"
    );
    assert_eq!(
        list_with(&server, &ci).await,
        unknown,
        "the grace has ended"
    );
    assert_eq!(list_with(&server, &rotated).await.0, 200);
    let (_, list, _) = token_cli(&data, &["list"]);
    assert_eq!(listed(&list, "bob", "short")[5], "expired", "{list}");

    let (ok, _, err) = token_cli(&data, &["revoke", "bob"]);
    assert!(
        !ok && err.contains("`bob` has 3 tokens (`ci`, `laptop`, `short`); name the one to revoke"),
        "{err}"
    );
    let (ok, _, err) = token_cli(&data, &["revoke", "bob", "laptop"]);
    assert!(ok, "{err}");
    assert_eq!(list_with(&server, &laptop).await, unknown);
    assert_eq!(list_with(&server, &rotated).await.0, 200);
    let (ok, _, err) = token_cli(&data, &["revoke", "bob", "laptop"]);
    assert!(!ok && err.contains("no token named `laptop`"), "{err}");

    // A graceful stop writes the noted uses: the file shows them.
    server.signal("TERM");
    assert!(server.wait(std::time::Duration::from_secs(30)).success());
    assert!(!data.join("control.sock").exists());
    let (ok, list, err) = token_cli(&data, &["list"]);
    assert!(ok && !err.contains("control socket"), "{err}");
    assert_ne!(listed(&list, "bob", "ci")[3], "never", "{list}");
    let (ok, _, err) = token_cli(&data, &["revoke", "bob", "short"]);
    assert!(ok, "offline too: {err}");
    let (ok, _, err) = token_cli(&data, &["revoke", "bob"]);
    assert!(ok, "one name left (`ci`): {err}");
}
