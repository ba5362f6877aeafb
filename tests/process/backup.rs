//! Online backups of a running server in every sharing mode, and restores
//! that leave nothing behind on failure and keep the old data on `--force`.

use std::path::Path;
use std::time::Duration;

use devops_api::storage::{Record, RedbConfig, RedbStore, Store};

use crate::helpers::{Server, client, create, run};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every record of the redb file in `data`, sorted (the file must be closed).
async fn records(data: &Path) -> Vec<Record> {
    let store = RedbStore::open(&RedbConfig::new(data)).unwrap();
    let mut r = store.export().await.unwrap().records;
    store.close().await;
    r.sort_by_key(|r| format!("{r:?}"));
    r
}

fn restore_into(file: &Path, data: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args, data, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_of_a_serving_server_in_every_mode_restores_equal() {
    for mode in ["exclusive", "multi-writer"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut server = Server::start(&data, &[("DB_SHARING", mode)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(data.join("control.sock")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{mode}");
        }
        let c = client();
        for i in 0..50 {
            create(&c, &server.url(""), &format!("before {i}"))
                .await
                .unwrap();
        }
        // Load while the backup runs: writes and reads from four clients.
        let base = server.url("");
        let load: Vec<_> = (0..4)
            .map(|w| {
                let base = base.clone();
                tokio::spawn(async move {
                    let c = client();
                    for i in 0..100 {
                        create(&c, &base, &format!("during {w}/{i}")).await.unwrap();
                    }
                })
            })
            .collect();
        let file = dir.path().join("online.backup");
        let (f, d) = (file.clone(), data.clone());
        let out = tokio::task::spawn_blocking(move || {
            run(&["backup", "--out", f.to_str().unwrap()], &d, &[])
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("control socket") && stderr(&out).contains("verified"),
            "{mode}: {}",
            stderr(&out)
        );
        for l in load {
            l.await.unwrap();
        }
        let in_file = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"kind\":\"task\""))
            .count();
        assert!(
            (50..=450).contains(&in_file),
            "{mode}: a snapshot: {in_file}"
        );

        // Quiet now: a second online backup must equal the source exactly.
        let out = run(&["backup", "--out", file.to_str().unwrap()], &data, &[]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let restored = dir.path().join("restored");
        let out = restore_into(&file, &restored, &[]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        server.signal("TERM");
        assert!(server.wait(Duration::from_secs(20)).success());
        assert!(
            !data.join("control.sock").exists(),
            "{mode}: the socket is removed at stop"
        );
        let source = records(&data).await;
        assert_eq!(
            source.len(),
            450,
            "{mode}: every task (the tokens are in the tokens file)"
        );
        assert!(
            records(&restored).await == source,
            "{mode}: restored equals source"
        );
    }
}

#[test]
fn a_failed_restore_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = restore_into(&dir.path().join("no-such.backup"), &data, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such.backup"), "{}", stderr(&out));
    assert!(!data.exists(), "a missing file created {}", data.display());

    let damaged = dir.path().join("damaged.backup");
    std::fs::write(
        &damaged,
        "{\"format\":\"devops-api-backup\",\"version\":1,\"created_at\":\"x\"}\n",
    )
    .unwrap();
    let out = restore_into(&damaged, &data, &[]);
    assert!(!out.status.success());
    assert!(!data.exists(), "a damaged file created {}", data.display());

    // An existing, empty data directory stays as it was.
    std::fs::create_dir(&data).unwrap();
    let out = restore_into(&damaged, &data, &[]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_force_replaces_data_and_keeps_the_old_data_as_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    for (data, n) in [(&src, 20), (&dst, 3)] {
        let server = Server::start(data, &[]);
        let c = client();
        for i in 0..n {
            create(&c, &server.url(""), &format!("task {i}"))
                .await
                .unwrap();
        }
        drop(server);
    }
    let (src_records, dst_records) = (records(&src).await, records(&dst).await);
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let file = backups.join("src.backup");
    let out = run(&["backup", "--out", file.to_str().unwrap()], &src, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = restore_into(&file, &dst, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(records(&dst).await == dst_records, "refused: unchanged");

    let out = restore_into(&file, &dst, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(records(&dst).await == src_records, "replaced by the backup");
    let kept: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("pre-restore-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        stderr(&out).contains(kept[0].to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    // The kept file restores the data that was replaced.
    let again = dir.path().join("again");
    let out = restore_into(&kept[0], &again, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(records(&again).await == dst_records, "the old data is kept");
}

/// Tasks sharing a file in multi-writer mode: one serves the socket; when it
/// stops, another takes the socket over, so online backups keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_passes_to_a_remaining_task() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shared = [("DB_SHARING", "multi-writer")];
    let mut first = Server::start(&data, &shared);
    let second = Server::start(&data, &shared);
    create(&client(), &second.url(""), "kept").await.unwrap();
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(20)).success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !data.join("control.sock").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no task took the socket over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let file = dir.path().join("b.backup");
    let out = run(&["backup", "--out", file.to_str().unwrap()], &data, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("control socket"), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"kept\""));
    drop(second);
}
