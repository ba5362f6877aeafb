//! Starting the real binary: a `Server` on port 0 with a temp data directory,
//! found ready through its JSON `ready` log line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_devops-api");

/// A token for principal `alice`, written to a tokens file in each data dir.
pub const ALICE: &str = "dapi_test_token_for_alice_0123456789abcdef";

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// The `ready` log line.
    pub ready: serde_json::Value,
}

pub fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, format!("alice:{ALICE}\n")).unwrap();
    path
}

impl Server {
    pub fn start(data_dir: &Path, envs: &[(&str, &str)]) -> Server {
        Self::spawn(Command::new(BIN), data_dir, envs)
    }

    /// Under an open-file limit (soft and hard), set by util-linux `prlimit`,
    /// which then executes the server in its own process.
    pub fn start_with_nofile(data_dir: &Path, envs: &[(&str, &str)], nofile: u64) -> Server {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(BIN);
        Self::spawn(cmd, data_dir, envs)
    }

    fn spawn(mut cmd: Command, data_dir: &Path, envs: &[(&str, &str)]) -> Server {
        let tokens = tokens_file(data_dir.parent().unwrap_or(data_dir));
        let mut child = cmd
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("DATA_DIR", data_dir)
            .env("LOG_FORMAT", "json")
            .env("TOKENS_FILE", tokens)
            .env("RATE_LIMIT", "0")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!("server did not log `ready` (exit: {:?})", child.try_wait())
                });
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "ready" {
                break v;
            }
        };
        Server {
            child,
            addr: ready["addr"].as_str().unwrap().parse().unwrap(),
            log: rx,
            ready,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(10));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET url` with a bearer token.
pub async fn get(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
) -> reqwest::Response {
    c.get(url).bearer_auth(token).send().await.unwrap()
}

/// Creates a task; `Some(id)` only for a 201.
pub async fn create(c: &reqwest::Client, base: &str, title: &str) -> Option<String> {
    let r = c
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(ALICE)
        .json(&serde_json::json!({"title": title}))
        .send()
        .await
        .ok()?;
    if r.status() != 201 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    Some(v["id"].as_str()?.to_owned())
}

pub fn run(args: &[&str], data_dir: &Path, envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("DATA_DIR", data_dir)
        .envs(envs.iter().copied())
        .output()
        .expect("run devops-api")
}

/// Runs `serve` where it must refuse to start: its output once it exits,
/// failing the test if it is still running after `timeout`.
pub fn serve_refused(
    data_dir: &Path,
    envs: &[(&str, &str)],
    timeout: Duration,
) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", data_dir)
        .env("NO_BOOTSTRAP_TOKEN", "true")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start devops-api");
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the server started instead of refusing:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "exit status {:?}", out.status);
    out
}
