//! `devops-api index check [--repair]` and its request on the control
//! socket (`index check`, `index repair`): the list filters' indexes
//! compared with the task records ([`Store::check_indexes`]) or made to
//! agree with them ([`Store::repair_indexes`]). A server answers the request
//! on the store it runs, so the command also works on a file a server holds
//! exclusively; both paths run [`execute`].

use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::storage::{Chain, Store};

/// The request lines.
pub const CHECK: &str = "index check";
pub const REPAIR: &str = "index repair";

/// The answer to an index request, one JSON line on the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum IndexReply {
    /// `index check`: how many entries disagree, and the first of them.
    Checked {
        disagreements: u64,
        examples: Vec<String>,
    },
    /// `index repair`: entries added and removed.
    Repaired {
        added: u64,
        removed: u64,
    },
    Error {
        message: String,
    },
}

/// Runs a check or a repair on `store`.
pub async fn execute(store: &dyn Store, repair: bool) -> IndexReply {
    let result = if repair {
        store.repair_indexes().await.map(|r| IndexReply::Repaired {
            added: r.added,
            removed: r.removed,
        })
    } else {
        store.check_indexes().await.map(|c| IndexReply::Checked {
            disagreements: c.disagreements,
            examples: c.examples,
        })
    };
    result.unwrap_or_else(|e| IndexReply::Error {
        message: Chain(&e).to_string(),
    })
}

/// The server's answer to `line` if it is an index request, else `None`.
pub async fn answer(line: &str, store: &dyn Store) -> Option<Vec<u8>> {
    let repair = match line {
        CHECK => false,
        REPAIR => true,
        _ => return None,
    };
    let reply = execute(store, repair).await;
    tracing::info!(request = line, reply = ?reply, "index request through the control socket");
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    Some(out)
}

/// Sends an index request to the server on `stream` and reads its reply.
pub async fn request(stream: UnixStream, repair: bool) -> io::Result<IndexReply> {
    let (read, mut write) = stream.into_split();
    let line = if repair { REPAIR } else { CHECK };
    write.write_all(format!("{line}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(read).read_line(&mut reply).await?;
    if let Some(message) = reply.trim().strip_prefix("error: ") {
        // A server of a release without index requests.
        return Ok(IndexReply::Error {
            message: format!("the server: {message}"),
        });
    }
    serde_json::from_str(reply.trim()).map_err(|e| {
        io::Error::other(format!(
            "unexpected answer from the server `{}`: {e}",
            reply.trim()
        ))
    })
}
