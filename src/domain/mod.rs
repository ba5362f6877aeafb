//! The task domain: types that are valid by construction, and the parsing of
//! client input into them with every problem reported per field.
//!
//! - `task`: the task and its field types; `time`: due dates and timestamps;
//!   `text`: the character rules of task text and the patterns built from them.
//! - `input`: client JSON into fields or a change; `query`: a listing request
//!   and its cursor; `precondition`: what `If-Match` admits.
//! - `principal`: the name of whoever a token stands for.
//! - `stored`: what a stored task may hold, for every format that carries one.

mod input;
mod precondition;
mod principal;
mod query;
mod stored;
mod task;
pub mod text;
mod time;

pub use input::{FieldError, TaskChange, parse_create, parse_merge_patch, parse_replace};
pub use precondition::Precondition;
pub use principal::{PRINCIPAL_NAME_MAX, PrincipalName, TokenDigest, TokenName};
pub use query::{
    CURSOR_PATTERN, DEFAULT_LIMIT, ListQuery, MAX_LIMIT, Order, Q_MAX_CHARS, SCAN_BUDGET,
    decode_cursor, encode_cursor,
};
pub use stored::StoredTask;
pub use task::{
    Description, MAX_TAGS, Priority, Status, Tag, Tags, Task, TaskFields, TaskId, Title,
};
pub use time::{DueAt, now, rfc3339};
