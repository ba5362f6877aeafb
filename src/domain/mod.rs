//! The task domain: types that are valid by construction, and the parsing of
//! client input into them with every problem reported per field.

mod input;
mod task;
pub mod text;

pub use input::{FieldError, TaskChange, parse_create, parse_merge_patch, parse_replace};
pub use task::{
    Description, DueAt, MAX_TAGS, Priority, Status, Tag, Tags, Task, TaskFields, TaskId, Title,
    now, rfc3339,
};

/// The owner of a task: the name of the principal whose token created it.
/// Names are validated where principals are created (`auth::PrincipalName`).
pub type Owner = str;
