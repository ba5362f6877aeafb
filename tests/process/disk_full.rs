//! A full disk under the real binary: the data directory on a small tmpfs
//! (mounted here, as root). When writes fail with ENOSPC the server turns
//! not-ready at once and answers writes with 503; once space is freed it
//! reopens its database and serves writes again, and no acknowledged write
//! is lost, also across a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{ALICE, Server, client, get};

/// A tmpfs mounted on a temp dir; unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a loud message) only where mounting is impossible here.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                path: dir.path().to_owned(),
                _dir: dir,
            }),
            other => {
                eprintln!(
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                     SKIPPED: cannot mount a tmpfs here ({other:?}).\n\
                     The full-disk test of the real binary needs root (CAP_SYS_ADMIN).\n\
                     !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
                );
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0x5a; bytes]).unwrap();
}

async fn ready_status(c: &reqwest::Client, server: &Server) -> u16 {
    c.get(server.url("/ready"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_then_space_freed_recovers_without_losing_writes() {
    let Some(fs) = Tmpfs::mount("3m") else {
        return;
    };
    let data = fs.path.join("data");
    // The tokens file lives outside the small file system.
    let home = tempfile::tempdir().unwrap();
    let tokens = crate::helpers::tokens_file(home.path());
    let tokens = tokens.to_str().unwrap().to_owned();
    let mut server = Server::start(&data, &[("TOKENS_FILE", &tokens)]);
    let c = client();
    assert_eq!(ready_status(&c, &server).await, 200);
    let filler = fs.path.join("filler");
    fill(&filler, 2_200_000);

    // Write until the disk is full.
    let mut acked: Vec<(String, String)> = Vec::new();
    let description = "d".repeat(8_000);
    let mut refused = false;
    for i in 0..2_000 {
        let title = format!("task {i}");
        let r = c
            .post(server.url("/v1/tasks"))
            .bearer_auth(ALICE)
            .json(&serde_json::json!({"title": title, "description": description}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => {
                let v: serde_json::Value = r.json().await.unwrap();
                acked.push((v["id"].as_str().unwrap().to_owned(), title));
            }
            503 => {
                refused = true;
                break;
            }
            other => panic!("unexpected {other}: {:?}", r.text().await),
        }
    }
    assert!(refused, "the disk never filled");
    assert!(!acked.is_empty());
    assert_eq!(ready_status(&c, &server).await, 503, "not ready at once");
    // While the filler stays, writes that still fit may be served (the
    // database reopens at once when it can): none acknowledged may be lost,
    // and every refused one keeps the server out of rotation.
    for i in 0..5 {
        let title = format!("while full {i}");
        let r = c
            .post(server.url("/v1/tasks"))
            .bearer_auth(ALICE)
            .json(&serde_json::json!({"title": title, "description": description}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => {
                let v: serde_json::Value = r.json().await.unwrap();
                acked.push((v["id"].as_str().unwrap().to_owned(), title));
            }
            503 => assert_eq!(ready_status(&c, &server).await, 503),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server keeps running"
    );

    // Space again: ready and writable without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while ready_status(&c, &server).await != 200 {
        assert!(
            freed.elapsed() < Duration::from_secs(20),
            "no recovery within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = crate::helpers::create(&c, &server.url(""), "after").await;
    acked.push((after.expect("a create after recovery"), "after".into()));
    let check = |server_url: String, acked: Vec<(String, String)>| async move {
        let c = client();
        for (id, title) in acked {
            let r = get(&c, format!("{server_url}/v1/tasks/{id}"), ALICE).await;
            assert_eq!(r.status(), 200, "acknowledged {title} lost");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["title"], title.as_str());
        }
    };
    check(server.url(""), acked.clone()).await;
    eprintln!(
        "{} writes acknowledged; ready again {:?} after space was freed",
        acked.len() - 1,
        freed.elapsed()
    );

    server.signal("TERM");
    assert!(server.wait(Duration::from_secs(15)).success());
    let server = Server::start(&data, &[("TOKENS_FILE", &tokens)]);
    check(server.url(""), acked).await;
    drop(server);
}
