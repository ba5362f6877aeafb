//! The task domain: types that are valid by construction, and the parsing of
//! client input into them with every problem reported per field.

mod input;
mod precondition;
mod principal;
mod query;
mod task;
pub mod text;

pub use input::{FieldError, TaskChange, parse_create, parse_merge_patch, parse_replace};
pub use precondition::Precondition;
pub use principal::{PRINCIPAL_NAME_MAX, PrincipalName, TokenDigest};
pub use query::{
    CURSOR_PATTERN, DEFAULT_LIMIT, ListQuery, MAX_LIMIT, Order, Q_MAX_CHARS, decode_cursor,
    encode_cursor,
};
pub use task::{
    Description, DueAt, MAX_TAGS, Priority, Status, StoredTask, Tag, Tags, Task, TaskFields,
    TaskId, Title, now, rfc3339,
};
