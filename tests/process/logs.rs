//! The log as the binary writes it to a pipe.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{BIN, tokens_file};

/// Standard error is a pipe here, not a terminal: the pretty format must not
/// colour it (escape sequences in a log file or collector are noise).
#[test]
fn the_pretty_format_writes_no_ansi_escapes_to_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", dir.path().join("data"))
        .env("TOKENS_FILE", tokens_file(dir.path()))
        .env("LOG_FORMAT", "pretty")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let ready = line.contains("ready");
        seen.push(line);
        if ready || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(text.contains("ready"), "no `ready` line: {text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes on a pipe: {text:?}");
}
