//! The backup file format, version 1: a header line, one JSON object per
//! record, and a trailer line. Its types are its own: the API's response
//! bodies and the stores' records may change without changing this file
//! format, and a golden file (`tests/golden/backup_v1.jsonl`) pins it.
//!
//! ```text
//! {"format":"devops-api-backup","version":1,"created_at":"…"}
//! {"kind":"token","name":"alice","digest":"<64 hex digits>","created_at":"…"}
//! {"kind":"token","name":"alice","token_name":"ci","digest":"…","created_at":"…","expires_at":"…"}
//! {"kind":"task","owner":"alice","task":{"id":"…","title":"…",…,"version":1}}
//! {"records":2,"sha256":"<hex of the record lines>","unreadable":0}
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{PrincipalName, StoredTask, TokenDigest, TokenName, rfc3339};
use crate::storage::{Record, TokenInfo};

/// The `format` of a header.
pub const FORMAT: &str = "devops-api-backup";

/// The format version this release writes and reads.
pub const VERSION: u32 = 1;

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub created_at: String,
}

/// The last line: the record count and a SHA-256 over the record lines
/// (each followed by `\n`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub records: u64,
    pub sha256: String,
    /// Records of the source that could not be read and are not in the file.
    #[serde(default)]
    pub unreadable: u64,
}

/// One record line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    Task {
        owner: String,
        task: TaskV1,
    },
    /// A token. The fields after `created_at`, added with named tokens, are
    /// left out when they have their default, so a store with one token
    /// named `default` per principal writes what earlier releases wrote and
    /// read, and every earlier backup reads as such a store.
    Token {
        /// The principal.
        name: String,
        /// The token's name; absent: `default`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_name: Option<String>,
        /// Hex SHA-256 of the token: backups never contain tokens.
        digest: String,
        #[serde(with = "rfc3339")]
        created_at: DateTime<Utc>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "rfc3339::option"
        )]
        expires_at: Option<DateTime<Utc>>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "rfc3339::option"
        )]
        last_used_at: Option<DateTime<Utc>>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "rfc3339::option"
        )]
        replaced_at: Option<DateTime<Utc>>,
    },
}

/// A task in a backup line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskV1 {
    pub id: Uuid,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default = "default_priority")]
    pub priority: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub due_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

fn default_status() -> String {
    "todo".into()
}

fn default_priority() -> String {
    "normal".into()
}

impl From<StoredTask<'_>> for TaskV1 {
    fn from(t: StoredTask<'_>) -> Self {
        Self {
            id: t.id,
            title: t.title,
            description: t.description,
            status: t.status.into_owned(),
            priority: t.priority.into_owned(),
            due_at: t.due_at,
            tags: t.tags,
            created_at: t.created_at,
            updated_at: t.updated_at,
            version: t.version,
        }
    }
}

impl From<TaskV1> for StoredTask<'static> {
    fn from(t: TaskV1) -> Self {
        Self {
            id: t.id,
            title: t.title,
            description: t.description,
            status: t.status.into(),
            priority: t.priority.into(),
            due_at: t.due_at,
            tags: t.tags,
            created_at: t.created_at,
            updated_at: t.updated_at,
            version: t.version,
        }
    }
}

impl From<&Record> for Line {
    fn from(r: &Record) -> Self {
        match r {
            Record::Task { owner, task } => Line::Task {
                owner: owner.to_string(),
                task: StoredTask::from(task).into(),
            },
            Record::Token(t) => Line::Token {
                name: t.principal.to_string(),
                token_name: (t.name.as_str() != TokenName::DEFAULT).then(|| t.name.to_string()),
                digest: hex::encode(t.digest),
                created_at: t.created_at,
                expires_at: t.expires_at,
                last_used_at: t.last_used_at,
                replaced_at: t.replaced_at,
            },
        }
    }
}

impl Line {
    /// The record this line holds, if its names, digest and task pass the
    /// rules for stored values; else why not.
    pub fn into_record(self) -> Result<Record, String> {
        match self {
            Line::Task { owner, task } => {
                let owner = PrincipalName::parse(&owner).map_err(|e| format!("owner: {e}"))?;
                let id = task.id;
                let task = StoredTask::from(task)
                    .into_task()
                    .map_err(|e| format!("task {id}: {e}"))?;
                Ok(Record::Task { owner, task })
            }
            Line::Token {
                name,
                token_name,
                digest,
                created_at,
                expires_at,
                last_used_at,
                replaced_at,
            } => Ok(Record::Token(TokenInfo {
                principal: PrincipalName::parse(&name).map_err(|e| format!("token: {e}"))?,
                name: match token_name {
                    Some(n) => TokenName::parse(&n).map_err(|e| format!("token: {e}"))?,
                    None => TokenName::default_name(),
                },
                digest: parse_digest(&digest)?,
                created_at,
                expires_at,
                last_used_at,
                replaced_at,
            })),
        }
    }
}

/// A token digest as backups write it: 64 lower-case hex digits.
fn parse_digest(hex_digest: &str) -> Result<TokenDigest, String> {
    let ok = hex_digest.len() == 64
        && hex_digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut d = [0u8; 32];
    if !ok || hex::decode_to_slice(hex_digest, &mut d).is_err() {
        return Err("the token digest is not 64 lower-case hex digits".into());
    }
    Ok(d)
}
