//! The subcommands: tokens, healthcheck, backup and restore, and start-up errors.

use std::path::Path;
use std::sync::Arc;

use devops_api::backup::{Line, TaskV1};
use devops_api::domain::{PrincipalName, StoredTask};
use devops_api::domain::{Task, parse_create};
use devops_api::storage::{Record, RedbConfig, RedbStore, Store};

use crate::helpers::{ALICE, Server, client, create, run};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn token_create_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run(&["token", "create", "ci"], &data, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert!(token.starts_with("dapi_") && token.len() > 40);
    let out = run(&["token", "create", "ci"], &data, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already has a token"));
    let out = run(&["token", "list"], &data, &[]);
    assert!(stdout(&out).starts_with("ci\t"));
    assert!(!stdout(&out).contains(&token), "list never shows tokens");
    assert!(
        !std::fs::read(data.join("devops-api.redb"))
            .unwrap()
            .windows(token.len())
            .any(|w| w == token.as_bytes()),
        "only the hash is stored"
    );
    let out = run(&["token", "create", "bad name"], &data, &[]);
    assert!(!out.status.success() && stderr(&out).contains("invalid principal name"));
    assert!(run(&["token", "revoke", "ci"], &data, &[]).status.success());
    let out = run(&["token", "revoke", "ci"], &data, &[]);
    assert!(!out.status.success() && stderr(&out).contains("has no token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_working_bootstrap_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(crate::helpers::BIN)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", &data)
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut token = None;
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0 {
        if let Some(t) = line.split_whitespace().find(|w| w.starts_with("dapi_")) {
            token = Some(t.trim_end_matches('`').trim_end_matches('.').to_owned());
            break;
        }
        line.clear();
    }
    let token = token.expect("bootstrap token printed");
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = loop {
        let l = lines.next().unwrap().unwrap();
        assert!(!l.contains(&token), "the token is never logged");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        if v["message"] == "ready" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    let r = client()
        .get(format!("http://{addr}/v1/tasks"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
    // Second start: tokens exist, nothing printed.
    let out = run(&["token", "list"], &data, &[]);
    assert!(stdout(&out).starts_with("admin\t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let ok = run(
        &["healthcheck", "--url", &server.url("/ready")],
        dir.path(),
        &[],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let listen = server.addr.to_string();
    let default = run(&["healthcheck"], dir.path(), &[("LISTEN_ADDR", &listen)]);
    assert!(
        default.status.success(),
        "defaults to /ready on LISTEN_ADDR's port"
    );
    let missing = run(
        &["healthcheck", "--url", &server.url("/nope")],
        dir.path(),
        &[],
    );
    assert_eq!(missing.status.code(), Some(1));
    drop(server);
    let down = run(
        &[
            "healthcheck",
            "--url",
            "http://127.0.0.1:9/ready",
            "--timeout",
            "1",
        ],
        dir.path(),
        &[],
    );
    assert_eq!(down.status.code(), Some(1));
    assert!(stderr(&down).contains("unhealthy"));
}

#[test]
fn startup_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = run(&[], &file.join("data"), &[("LISTEN_ADDR", "127.0.0.1:0")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot create data directory"),
        "{}",
        stderr(&out)
    );
    let out = run(&["serve", "--listen", "not-an-address"], dir.path(), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid value"), "{}", stderr(&out));
    let out = run(&["--help"], dir.path(), &[]);
    assert!(stdout(&out).contains("DATA_DIR") && stdout(&out).contains("DRAIN_SECONDS"));
}

async fn seed(data: &Path, owners: usize, per_owner: usize) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&RedbConfig::new(data)).unwrap());
    let mut records = Vec::with_capacity(owners * per_owner + 1);
    for o in 0..owners {
        for i in 0..per_owner {
            let fields = parse_create(&serde_json::json!({
                "title": format!("task {i} of owner {o}"),
                "tags": [format!("t{}", i % 7)],
                "description": "x".repeat(i % 50),
            }))
            .unwrap();
            records.push(Record::Task {
                owner: p(&format!("owner{o}")),
                task: Task::create(fields),
            });
        }
    }
    records.push(Record::Token(devops_api::storage::TokenInfo {
        principal: p("alice"),
        name: devops_api::domain::TokenName::default_name(),
        digest: [5u8; 32],
        created_at: devops_api::domain::now(),
        expires_at: None,
        last_used_at: None,
        replaced_at: None,
    }));
    store
        .import(devops_api::storage::ImportSet::validate(records).unwrap())
        .await
        .unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip_100k_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let store = seed(&src, 10, 10_000).await;
    let original = store.export().await.unwrap().records;
    store.close().await;
    drop(store);
    let file = dir.path().join("backup.jsonl");
    let out = run(&["backup", "--out", file.to_str().unwrap()], &src, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("100001/100001") && stderr(&out).contains("verified"),
        "progress shown: {}",
        stderr(&out)
    );
    let dst = dir.path().join("dst");
    let out = run(&["restore", file.to_str().unwrap()], &dst, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("verified"));
    let restored = RedbStore::open(&RedbConfig::new(&dst)).unwrap();
    let mut back = restored.export().await.unwrap().records;
    let mut orig = original;
    let key = |r: &Record| format!("{r:?}");
    back.sort_by_key(key);
    orig.sort_by_key(key);
    assert_eq!(back.len(), 100_001);
    assert!(back == orig, "restored data equals the original");
    restored.close().await;
    // Restoring again into the now non-empty directory is refused.
    drop(restored);
    let out = run(&["restore", file.to_str().unwrap()], &dst, &[]);
    assert!(!out.status.success() && stderr(&out).contains("empty"));
}

#[test]
fn damaged_backups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { seed(&src, 2, 10).await.close().await });
    let file = dir.path().join("b.jsonl");
    assert!(
        run(&["backup", "--out", file.to_str().unwrap()], &src, &[])
            .status
            .success()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cases = [
        ("truncated", lines[..lines.len() - 1].join("\n")),
        ("edited", text.replacen("task 1 of", "task 9 of", 1)),
        ("not a backup", "{}\n".to_owned()),
    ];
    for (name, content) in cases {
        std::fs::write(&file, content).unwrap();
        let out = run(
            &["restore", file.to_str().unwrap()],
            &dir.path().join(name.replace(' ', "-")),
            &[],
        );
        assert!(!out.status.success(), "{name} accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_while_the_server_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[("DB_SHARING", "multi-writer")]);
    let c = client();
    for i in 0..50 {
        create(&c, &server.url(""), &format!("t{i}")).await.unwrap();
    }
    let base = server.url("");
    let writer = tokio::spawn(async move {
        let c = client();
        for i in 0..200 {
            create(&c, &base, &format!("during {i}")).await.unwrap();
        }
    });
    let file = dir.path().join("online.jsonl");
    let f = file.clone();
    let d = data.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &["backup", "--out", f.to_str().unwrap()],
            &d,
            &[("DB_SHARING", "multi-writer")],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    writer.await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let tasks = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"task\""))
        .count();
    assert!(
        (50..=250).contains(&tasks),
        "a consistent snapshot between 50 and 250 tasks: {tasks}"
    );
    let _ = ALICE;
}

/// A backup file with `lines` as records and a correct checksum: what
/// someone who can edit the file can write (the checksum has no key).
fn crafted_backup(path: &Path, lines: &[String]) {
    use sha2::Digest;
    let mut out = String::from(
        "{\"format\":\"devops-api-backup\",\"version\":1,\"created_at\":\"2026-01-01T00:00:00.000000Z\"}\n",
    );
    let mut hash = sha2::Sha256::new();
    for line in lines {
        hash.update(line.as_bytes());
        hash.update(b"\n");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        "{{\"records\":{},\"sha256\":\"{}\"}}\n",
        lines.len(),
        hex::encode(hash.finalize())
    ));
    std::fs::write(path, out).unwrap();
}

fn token_line(name: &str, digest: u8) -> String {
    serde_json::to_string(&Line::Token {
        name: name.into(),
        token_name: None,
        digest: hex::encode([digest; 32]),
        created_at: devops_api::domain::now(),
        expires_at: None,
        last_used_at: None,
        replaced_at: None,
    })
    .unwrap()
}

fn task_line(owner: &str, task: &Task) -> String {
    serde_json::to_string(&Line::Task {
        owner: owner.into(),
        task: task_v1(task),
    })
    .unwrap()
}

/// `task` as a backup line holds it.
fn task_v1(task: &Task) -> TaskV1 {
    StoredTask::from(task).into()
}

/// The principal `name`.
fn p(name: &str) -> PrincipalName {
    PrincipalName::parse(name).unwrap()
}

/// Crafted backups with a valid checksum are refused record by record, leave
/// the target exactly as it was (empty), and the next valid restore into the
/// same directory works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_backups_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("crafted.jsonl");
    let task = Task::create(parse_create(&serde_json::json!({"title": "a"})).unwrap());
    let other = Task::create(parse_create(&serde_json::json!({"title": "b"})).unwrap());
    let mut v4 = serde_json::to_value(task_v1(&other)).unwrap();
    v4["id"] = "6ba7b810-9dad-41d1-80b4-00c04fd430c8".into();
    let mut future = serde_json::to_value(task_v1(&other)).unwrap();
    future["due_at"] = "9999-12-31T23:59:59-23:59".into();
    let mut bidi = serde_json::to_value(task_v1(&other)).unwrap();
    bidi["title"] = " padded ".into();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "a token named `bad name; rm -rf /`",
            vec![
                task_line("alice", &task),
                token_line("bad name; rm -rf /", 1),
            ],
            "invalid principal name",
        ),
        (
            "an owner with a NUL byte",
            vec![task_line("alice\0bob", &task)],
            "invalid principal name",
        ),
        (
            "two tokens for alice",
            vec![token_line("alice", 1), token_line("alice", 2)],
            "a second current token `default` for `alice`",
        ),
        (
            "two names with one digest",
            vec![token_line("alice", 1), token_line("bob", 1)],
            "same digest",
        ),
        (
            "a duplicate task record",
            vec![task_line("alice", &task), task_line("alice", &task)],
            "appears twice",
        ),
        (
            "one task under two owners",
            vec![task_line("alice", &task), task_line("bob", &task)],
            "appears twice",
        ),
        (
            "a task id that is not a UUIDv7",
            vec![format!(r#"{{"kind":"task","owner":"alice","task":{v4}}}"#)],
            "UUIDv7",
        ),
        (
            "a due date outside years 0000-9999",
            vec![format!(
                r#"{{"kind":"task","owner":"alice","task":{future}}}"#
            )],
            "outside years",
        ),
        (
            "an untrimmed title",
            vec![format!(
                r#"{{"kind":"task","owner":"alice","task":{bidi}}}"#
            )],
            "trimmed",
        ),
        (
            "an upper-case digest",
            vec![token_line("alice", 1).replace("01010101", "0A0A0A0A")],
            "lower-case hex",
        ),
    ];
    for (name, lines, reason) in cases {
        crafted_backup(&file, &lines);
        let out = run(&["restore", file.to_str().unwrap()], &data, &[]);
        assert!(!out.status.success(), "{name}: restored\n{}", stderr(&out));
        assert!(
            stderr(&out).contains(reason) && stderr(&out).contains("nothing was restored"),
            "{name}: {}",
            stderr(&out)
        );
        let store = RedbStore::open(&RedbConfig::new(&data)).unwrap();
        let export = store.export().await.unwrap();
        assert!(
            export.records.is_empty() && store.list_tokens().await.unwrap().is_empty(),
            "{name}: the target changed"
        );
        store.close().await;
    }
    crafted_backup(&file, &[task_line("alice", &task), token_line("alice", 1)]);
    let out = run(&["restore", file.to_str().unwrap()], &data, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = RedbStore::open(&RedbConfig::new(&data)).unwrap();
    assert_eq!(store.get_task(&p("alice"), task.id).await.unwrap(), task);
    assert_eq!(
        store.principal(&[1; 32]).await.unwrap().as_deref(),
        Some("alice")
    );
    store.close().await;
}

#[test]
fn backup_and_restore_help_say_what_the_checksum_is() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["backup", "restore"] {
        let out = run(&[cmd, "--help"], dir.path(), &[]);
        let text = stdout(&out)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            text.contains("integrity check") && text.contains("not an authenticity check"),
            "{cmd} --help: {text}"
        );
        assert!(text.contains("Exit status"), "{cmd} --help: {text}");
    }
}

/// `backup` of a store with an unreadable record writes everything else,
/// names the record, and exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_with_unreadable_records_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed(&data, 1, 3).await.close().await;
    let bad = devops_api::domain::TaskId::new();
    {
        let cfg = RedbConfig::new(&data);
        let db = redb::Database::create(cfg.db_path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let t: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("tasks_v1");
            let mut t = txn.open_table(t).unwrap();
            let mut key = b"owner0\0".to_vec();
            key.extend_from_slice(&bad.as_u128().to_be_bytes());
            t.insert(key.as_slice(), b"\x01{broken".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let file = dir.path().join("b.jsonl");
    let out = run(&["backup", "--out", file.to_str().unwrap()], &data, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("tasks_v1/owner0/{bad}"))
            && stderr(&out).contains("1 records could not be read"),
        "{}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"kind\":\"task\""))
            .count(),
        3
    );
    assert!(text.lines().last().unwrap().contains("\"unreadable\":1"));
    let out = run(
        &["restore", file.to_str().unwrap()],
        &dir.path().join("dst"),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("lacks 1 records"), "{}", stderr(&out));
}
