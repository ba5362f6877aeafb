//! `devops-api index check [--repair]`: through a running server's control
//! socket and on the file directly, against tasks written the way the
//! release before the filter index wrote them (records without entries).

use std::path::Path;

use redb::ReadableTable;

use crate::helpers::{Server, client, create, run};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes a task for `owner` as the release before the index did: the
/// record and the count, no index entries (3 of them: status, priority, tag).
fn old_release_create(data: &Path, owner: &str, title: &str) {
    const TASKS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("tasks_v1");
    const COUNTS: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("task_counts_v1");
    let task = devops_api::domain::Task::create(
        devops_api::domain::parse_create(&serde_json::json!({"title": title, "tags": ["old"]}))
            .unwrap(),
    );
    let mut key = owner.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&task.id.as_u128().to_be_bytes());
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    let db = b.create(data.join("devops-api.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut tasks = txn.open_table(TASKS).unwrap();
        tasks
            .insert(
                key.as_slice(),
                devops_api::storage::codec::encode_task(&task).as_slice(),
            )
            .unwrap();
        let mut counts = txn.open_table(COUNTS).unwrap();
        let n = counts.get(owner).unwrap().map_or(0, |v| v.value());
        counts.insert(owner, n + 1).unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_check_finds_and_repairs_an_old_release_s_tasks_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[("DB_SHARING", "multi-writer")]);
    create(&client(), &server.url(""), "new").await.unwrap();
    let d = data.clone();
    let cli = move |args: &'static [&'static str]| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || run(args, &d, &[("DB_SHARING", "multi-writer")]))
    };
    let out = cli(&["index", "check"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("control socket"),
        "{}",
        text(&out.stderr)
    );

    old_release_create(&data, "alice", "written by the old release");
    let out = cli(&["index", "check"]).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 index entries disagree"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["index", "check", "--repair"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 entries added, 0 removed"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["index", "check"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    drop(server);

    // No server: the command opens the file itself.
    old_release_create(&data, "alice", "written while no server ran");
    for (args, code, says) in [
        (&["index", "check"][..], 4, "3 index entries disagree"),
        (
            &["index", "check", "--repair"][..],
            0,
            "3 entries added, 0 removed",
        ),
        (&["index", "check"][..], 0, "agree"),
    ] {
        let out = run(args, &data, &[]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("control socket"));
        assert!(
            text(&out.stdout).contains(says),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
}
