//! The local control socket of a server on the embedded redb file, and the
//! requests it answers: online backups ([`crate::backup::online`]) and token
//! management ([`TokenRequest`]).
//!
//! The server listens on `DATA_DIR/control.sock` ([`SOCKET`], mode 0600 in a
//! 0700 directory: only the server's own user and root can connect, which is
//! the authentication, the same as for opening the database file). A client
//! sends one request line and reads the answer:
//!
//! - `backup`: a backup file in the format of [`crate::backup::format`];
//! - `token <JSON TokenRequest>`: one JSON line, [`TokenReply`].
//!
//! This works in every `--db-sharing` mode, including the default
//! `exclusive`, where no other process can open the file. The subcommands
//! `backup` and `token` use the socket when a server answers on it and open
//! the store themselves otherwise; both paths run the same code
//! ([`execute`] for tokens), so they behave the same. Token secrets never
//! cross the socket: the client generates the token and sends its digest.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::domain::{PrincipalName, TokenName, rfc3339};
use crate::storage::{NewToken, StorageError, Store, TokenInfo, pick_token, retire, token_admits};

/// The control socket's name inside the data directory.
pub const SOCKET: &str = "control.sock";

/// The request line that asks for a backup.
pub const BACKUP: &str = "backup";

/// The prefix of a token request line.
const TOKEN: &str = "token ";

/// The longest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// The control socket of the data directory `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Binds the control socket in `data_dir` with mode 0600. `None` when
/// another live process already answers on it (tasks sharing the file in
/// multi-writer mode: one socket serves them all, as they share the data).
/// A socket file nobody answers on is stale and replaced.
pub fn bind(data_dir: &Path) -> io::Result<Option<UnixListener>> {
    let path = socket_path(data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Ok(None);
        }
        std::fs::remove_file(&path)?;
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        // Another process bound it since we looked.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Ok(None),
        Err(e) => return Err(e),
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Some(listener))
}

/// How often a process without the socket checks whether it is free.
const RETAKE: Duration = Duration::from_secs(10);

/// Serves the control socket of `data_dir` from a task that removes the
/// socket file when it ends or is aborted, if this process bound it. While
/// another process on the same data directory holds the socket, checks every
/// [`RETAKE`] and takes it over once that process is gone, so some task of a
/// service that shares a file always answers. A socket that cannot be
/// created (a path longer than the system allows, a read-only directory) is
/// logged and retried; the server works without it.
///
/// The first attempt is made before this returns, so a server that reports
/// ready already answers on its socket.
pub fn start(data_dir: PathBuf, store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
    let first = bind(&data_dir);
    tokio::spawn(run(data_dir, store, first))
}

async fn run(data_dir: PathBuf, store: Arc<dyn Store>, first: io::Result<Option<UnixListener>>) {
    let mut warned = false;
    let mut attempt = Some(first);
    loop {
        let bound = match attempt.take() {
            Some(first) => first,
            None => bind(&data_dir),
        };
        match bound {
            Ok(Some(listener)) => {
                let _owned = Owned(socket_path(&data_dir));
                tracing::info!(socket = %socket_path(&data_dir).display(), "control socket for online backups and tokens");
                serve(listener, store).await;
                return;
            }
            Ok(None) => {}
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    socket = %socket_path(&data_dir).display(),
                    error = %e,
                    "cannot create the control socket: online backups and token commands through it are unavailable; retrying"
                );
            }
            Err(_) => {}
        }
        tokio::time::sleep(RETAKE).await;
    }
}

/// Removes the socket file of the process that bound it.
struct Owned(PathBuf);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves requests on `listener`, one connection at a time: operators'
/// commands are rare, and a backup is one read transaction anyway.
async fn serve(listener: UnixListener, store: Arc<dyn Store>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = answer(stream, store.as_ref()).await {
            tracing::warn!(error = %e, "control socket: request failed");
        }
    }
}

/// Reads one request line and answers it.
async fn answer(stream: UnixStream, store: &dyn Store) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let line = line.trim();
    if line == BACKUP {
        return crate::backup::online::answer(write, store).await;
    }
    if let Some(reply) = crate::index_cmd::answer(line, store).await {
        write.write_all(&reply).await?;
        return write.shutdown().await;
    }
    let reply = match line.strip_prefix(TOKEN) {
        Some(json) => match serde_json::from_str::<TokenRequest>(json) {
            Ok(req) => {
                let what = req.what();
                let reply = execute(store, req).await;
                match &reply {
                    TokenReply::Error { message } => {
                        tracing::warn!(request = what, error = %message, "token request through the control socket refused");
                    }
                    _ => tracing::info!(request = what, "token request through the control socket"),
                }
                reply
            }
            Err(e) => TokenReply::error(format!("invalid token request: {e}")),
        },
        None => {
            let word = line.split_whitespace().next().unwrap_or("");
            write
                .write_all(format!("error: unknown command `{word}`\n").as_bytes())
                .await?;
            return Ok(());
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Connects to the control socket of `data_dir`; `None` when there is no
/// socket or no server answers on it.
pub async fn connect(data_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(data_dir)).await.ok()
}

/// Sends `req` to the server on `stream` and reads its reply.
pub async fn send_token_request(stream: UnixStream, req: &TokenRequest) -> io::Result<TokenReply> {
    let (read, mut write) = stream.into_split();
    let mut line = TOKEN.as_bytes().to_vec();
    serde_json::to_writer(&mut line, req).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    if let Some(message) = answer.strip_prefix("error: ") {
        // A server of a release without token commands.
        return Ok(TokenReply::error(format!(
            "the server on the control socket: {}",
            message.trim()
        )));
    }
    serde_json::from_str(&answer)
        .map_err(|e| io::Error::other(format!("unreadable answer from the control socket: {e}")))
}

/// A token command, as the `token` subcommand sends it (or runs it itself
/// on a store it opened). Names are checked again where it is executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TokenRequest {
    /// Store a token with this digest (hex) for `principal` under `name`.
    Create {
        principal: String,
        name: String,
        digest: String,
        #[serde(default, with = "rfc3339::option")]
        expires_at: Option<DateTime<Utc>>,
    },
    List,
    /// Revoke `principal`'s tokens named `name`; without a name, its only
    /// token name.
    Revoke {
        principal: String,
        #[serde(default)]
        name: Option<String>,
    },
    /// Replace the current token `name` with one of this digest; the old one
    /// stays valid for `grace_seconds` (and never past its own expiry).
    Rotate {
        principal: String,
        name: String,
        digest: String,
        grace_seconds: u64,
        #[serde(default, with = "rfc3339::option")]
        expires_at: Option<DateTime<Utc>>,
    },
}

impl TokenRequest {
    fn what(&self) -> &'static str {
        match self {
            TokenRequest::Create { .. } => "create",
            TokenRequest::List => "list",
            TokenRequest::Revoke { .. } => "revoke",
            TokenRequest::Rotate { .. } => "rotate",
        }
    }
}

/// A stored token as a reply lists it: never the token or its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLine {
    pub principal: String,
    pub name: String,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "rfc3339::option")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, with = "rfc3339::option")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default, with = "rfc3339::option")]
    pub replaced_at: Option<DateTime<Utc>>,
    /// Whether it admits requests now (not expired).
    pub valid: bool,
}

impl TokenLine {
    fn of(t: &TokenInfo, now: DateTime<Utc>) -> Self {
        Self {
            principal: t.principal.to_string(),
            name: t.name.to_string(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            replaced_at: t.replaced_at,
            valid: token_admits(t, now),
        }
    }

    /// `active`, `rotated` (replaced, valid until its grace ends) or `expired`.
    pub fn state(&self) -> &'static str {
        match (self.valid, self.replaced_at.is_some()) {
            (false, _) => "expired",
            (true, true) => "rotated",
            (true, false) => "active",
        }
    }
}

/// The answer to a [`TokenRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum TokenReply {
    Created {
        token: TokenLine,
    },
    Listed {
        tokens: Vec<TokenLine>,
    },
    Revoked {
        principal: String,
        name: String,
        /// Tokens removed: the current one and any a rotation replaced.
        count: u64,
    },
    Rotated {
        token: TokenLine,
        /// Until when the replaced token stays valid.
        #[serde(with = "rfc3339")]
        old_valid_until: DateTime<Utc>,
    },
    Error {
        message: String,
    },
}

impl TokenReply {
    pub fn error(message: impl Into<String>) -> Self {
        TokenReply::Error {
            message: message.into(),
        }
    }
}

/// Runs `req` on `store`: the one implementation behind the control socket
/// and the subcommand working on a store it opened. Errors are messages for
/// the operator.
pub async fn execute(store: &dyn Store, req: TokenRequest) -> TokenReply {
    match run_request(store, req).await {
        Ok(reply) => reply,
        Err(message) => TokenReply::Error { message },
    }
}

async fn run_request(store: &dyn Store, req: TokenRequest) -> Result<TokenReply, String> {
    let now = store.clock().now();
    let storage = |e: StorageError| format!("{}", crate::storage::Chain(&e));
    match req {
        TokenRequest::Create {
            principal,
            name,
            digest,
            expires_at,
        } => {
            let new = new_token(&principal, &name, &digest, expires_at, now)?;
            let info = store.create_token(new).await.map_err(|e| match e {
                StorageError::AlreadyExists(_) => format!(
                    "`{principal}` already has a token named `{name}`: choose another --name, \
                     or `token rotate {principal} {name}` to replace it"
                ),
                e => storage(e),
            })?;
            Ok(TokenReply::Created {
                token: TokenLine::of(&info, now),
            })
        }
        TokenRequest::List => {
            let tokens = store.list_tokens().await.map_err(storage)?;
            Ok(TokenReply::Listed {
                tokens: tokens.iter().map(|t| TokenLine::of(t, now)).collect(),
            })
        }
        TokenRequest::Revoke { principal, name } => {
            let tokens = store.list_tokens().await.map_err(storage)?;
            let none = || format!("`{principal}` has no token");
            // A name that is not a principal's has no token either.
            let p = PrincipalName::parse(&principal).map_err(|_| none())?;
            let n = match &name {
                Some(n) => Some(
                    TokenName::parse(n)
                        .map_err(|_| format!("`{principal}` has no token named `{n}`"))?,
                ),
                None => None,
            };
            let n = pick_token(&tokens, &p, n.as_ref()).map_err(|e| e.to_string())?;
            let count = store.revoke_token(&p, &n).await.map_err(|e| match e {
                StorageError::NotFound => format!("`{principal}` has no token named `{n}`"),
                e => storage(e),
            })?;
            Ok(TokenReply::Revoked {
                principal,
                name: n.to_string(),
                count,
            })
        }
        TokenRequest::Rotate {
            principal,
            name,
            digest,
            grace_seconds,
            expires_at,
        } => {
            let new = new_token(&principal, &name, &digest, expires_at, now)?;
            let grace = Duration::from_secs(grace_seconds);
            let old = store
                .list_tokens()
                .await
                .map_err(storage)?
                .into_iter()
                .find(|t| t.principal == new.principal && t.name == new.name && t.is_current());
            let info = store.rotate_token(new, grace).await.map_err(|e| match e {
                StorageError::NotFound => {
                    format!("`{principal}` has no current token named `{name}` to rotate")
                }
                e => storage(e),
            })?;
            Ok(TokenReply::Rotated {
                token: TokenLine::of(&info, now),
                old_valid_until: retire(old.and_then(|o| o.expires_at), info.created_at, grace),
            })
        }
    }
}

fn new_token(
    principal: &str,
    name: &str,
    digest: &str,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<NewToken, String> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(digest, &mut d).map_err(|_| "the token digest is not 64 hex digits")?;
    if let Some(at) = expires_at {
        rfc3339::check_stored(at).map_err(|e| format!("expiry: {e}"))?;
        if at <= now {
            return Err(format!(
                "the expiry {} is not in the future",
                rfc3339::format(&at)
            ));
        }
    }
    Ok(NewToken {
        principal: PrincipalName::parse(principal)?,
        name: TokenName::parse(name)?,
        digest: d,
        expires_at,
    })
}
