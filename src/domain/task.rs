//! Task and its field types. Every constructor validates, so a value of one of
//! these types is always acceptable to store and to return.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::text;
use super::time::{DueAt, now};

/// A task's identifier: a UUIDv7, so that identifiers sort in creation order,
/// which keyset pagination relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh identifier, later than every identifier this process made before.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Big-endian integer form: sorts like the UUID and keys the storage tables.
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    pub fn from_u128(v: u128) -> Self {
        Self(Uuid::from_u128(v))
    }

    /// Parses the textual form; only UUIDv7 is a task identifier.
    pub fn parse(s: &str) -> Option<Self> {
        let uuid = Uuid::try_parse(s).ok()?;
        (uuid.get_version_num() == 7).then_some(Self(uuid))
    }
}

impl TaskId {
    /// A stored id: only a UUIDv7, like every id the API hands out; any other
    /// would be listed but never found by `GET /v1/tasks/{id}`.
    pub fn from_stored(uuid: Uuid) -> Result<Self, String> {
        if uuid.get_version_num() == 7 {
            Ok(Self(uuid))
        } else {
            Err(format!("task id {uuid} is not a UUIDv7"))
        }
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// 1–200 characters after trimming, without control characters, Unicode
/// format characters (general category Cf: bidi controls, zero-width
/// characters) or line and paragraph separators.
///
/// Two rules, on purpose: [`Title::parse`] is what clients may send now;
/// [`Title::from_stored`] (for stored records and backups, through
/// [`super::StoredTask`]) is what any release of the API has stored, so that tightening the
/// input rule never makes existing data unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Title(String);

impl Title {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let t = raw.trim();
        if t.is_empty() {
            return Err("must not be empty".into());
        }
        if t.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if let Some(why) = t.chars().find_map(text::label_refusal) {
            return Err(why.into());
        }
        Ok(Self(t.to_owned()))
    }

    /// A title as stored: trimmed, 1–200 characters, no control characters.
    pub fn from_stored(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty() || s.trim() != s {
            return Err("a stored title must be non-empty and trimmed".into());
        }
        if s.chars().count() > Self::MAX_CHARS || s.chars().any(char::is_control) {
            return Err(
                "a stored title must have at most 200 characters and no control characters".into(),
            );
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Up to 10 000 characters. Line breaks and tabs are allowed; other control
/// characters are not, since they break terminals and log viewers, and
/// neither are the bidi embedding, override and isolate controls, which make
/// displayed text differ from stored text. Other format characters (zero-width
/// joiners in emoji and Indic scripts, the marks of right-to-left text) are
/// part of ordinary prose and stay allowed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 10_000;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if let Some(why) = raw.chars().find_map(text::description_refusal) {
            return Err(why.into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// A description as stored: at most 10 000 characters, no control
    /// characters but line breaks and tabs.
    pub fn from_stored(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.chars().count() > Self::MAX_CHARS
            || s.chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err("a stored description must have at most 10000 characters and no control characters but line breaks and tabs".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Todo,
    InProgress,
    Done,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Todo, Status::InProgress, Status::Done];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A client's value; the error lists the values there are.
    pub fn parse_input(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| one_of(Self::ALL.map(|v| v.as_str())))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Todo => "todo",
            Self::InProgress => "in_progress",
            Self::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A client's value; the error lists the values there are.
    pub fn parse_input(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| one_of(Self::ALL.map(|v| v.as_str())))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// 1–50 characters without control, format or separator characters (as for
/// [`Title`]). A tag with white space around it is refused, not trimmed: a
/// tag is matched exactly by the `tag` filter, so what is stored is what the
/// client sent. (Stored tags from before this rule may have such padding;
/// [`Tag::from_stored`] keeps them readable.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    pub const MAX_CHARS: usize = 50;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let n = raw.chars().count();
        if n == 0 || n > Self::MAX_CHARS {
            return Err(format!("must be 1 to {} characters", Self::MAX_CHARS));
        }
        if let Some(why) = raw.chars().find_map(text::label_refusal) {
            return Err(why.into());
        }
        if raw.starts_with(text::is_white_space) || raw.ends_with(text::is_white_space) {
            return Err("must not start or end with white space".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// A tag as stored: 1–50 characters without control characters.
    pub fn from_stored(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let n = s.chars().count();
        if n == 0 || n > Self::MAX_CHARS || s.chars().any(char::is_control) {
            return Err(
                "a stored tag must have 1 to 50 characters and no control characters".into(),
            );
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const MAX_TAGS: usize = 20;

/// Up to [`MAX_TAGS`] distinct tags, in the order the client gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tags(Vec<Tag>);

impl Tags {
    pub fn new(tags: Vec<Tag>) -> Result<Self, String> {
        if tags.len() > MAX_TAGS {
            return Err(format!("must have at most {MAX_TAGS} tags"));
        }
        for (i, t) in tags.iter().enumerate() {
            if tags[..i].contains(t) {
                return Err(format!("tag `{}` is repeated", t.as_str()));
            }
        }
        Ok(Self(tags))
    }

    pub fn contains(&self, tag: &str) -> bool {
        self.0.iter().any(|t| t.as_str() == tag)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tag> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The fields a client controls. Validated as a whole: holding one means the
/// fields may be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskFields {
    pub title: Title,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Description>,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DueAt>,
    #[serde(default)]
    pub tags: Tags,
}

impl TaskFields {
    /// Fields with defaults for everything but the title.
    pub fn with_title(title: Title) -> Self {
        Self {
            title,
            description: None,
            status: Status::default(),
            priority: Priority::default(),
            due_at: None,
            tags: Tags::default(),
        }
    }
}

/// A stored task. Its wire forms are the API's (`http`), the stores'
/// (`storage::codec`, PostgreSQL columns) and the backup's (`backup::format`),
/// each its own type converted at the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: TaskId,
    pub fields: TaskFields,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Starts at 1 and grows by one with every change; the ETag is derived from it.
    pub version: u64,
}

impl Task {
    /// A new task at version 1, created now (by the system clock).
    pub fn create(fields: TaskFields) -> Self {
        Self::create_at(fields, now())
    }

    /// A new task at version 1, created at `now` (a store's clock).
    pub fn create_at(fields: TaskFields, now: DateTime<Utc>) -> Self {
        Self {
            id: TaskId::new(),
            fields,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// The task with `fields` applied at `now`: version and `updated_at` move
    /// only when something changed, so a no-op update is not a new version.
    pub fn with_fields(&self, fields: TaskFields, now: DateTime<Utc>) -> Self {
        if fields == self.fields {
            return self.clone();
        }
        Self {
            id: self.id,
            fields,
            created_at: self.created_at,
            updated_at: now.max(self.updated_at),
            version: self.version + 1,
        }
    }

    /// What a stored task must satisfy beyond its fields' own rules: a
    /// version both backends can hold (1..=i64::MAX) and `updated_at` not
    /// before `created_at`.
    pub fn check_stored(&self) -> Result<(), String> {
        if self.version == 0 || i64::try_from(self.version).is_err() {
            return Err(format!("version {} is not in 1..=2^63-1", self.version));
        }
        if self.updated_at < self.created_at {
            return Err("updated_at is before created_at".into());
        }
        Ok(())
    }

    /// The strong entity tag of this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// The message for a value that is none of `values`: "must be `a` or `b`",
/// "must be one of `a`, `b`, `c`".
pub(crate) fn one_of<const N: usize>(values: [&str; N]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
    match quoted.as_slice() {
        [a, b] => format!("must be {a} or {b}"),
        all => format!("must be one of {}", all.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rfc3339;
    use proptest::prelude::*;

    #[test]
    fn title_is_trimmed_and_bounded() {
        assert_eq!(Title::parse("  hi ").unwrap().as_str(), "hi");
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse(&"x".repeat(200)).is_ok());
        assert!(Title::parse(&"x".repeat(201)).is_err());
        assert!(Title::parse(&format!("  {}  ", "é".repeat(200))).is_ok());
        assert!(Title::parse("a\u{7}b").is_err());
        assert!(Title::parse("a\nb").is_err());
        for refused in [
            "a\u{202e}b",
            "a\u{200b}b",
            "a\u{2028}b",
            "\u{feff}a",
            "a\u{e0041}",
        ] {
            assert!(Title::parse(refused).is_err(), "{refused:?}");
        }
        // Stored before the rule: still readable.
        assert!(Title::from_stored("a\u{200b}b").is_ok());
        assert!(Title::from_stored(" a").is_err());
    }

    #[test]
    fn tags_must_be_distinct_and_few() {
        let t = |s: &str| Tag::parse(s).unwrap();
        assert!(Tags::new(vec![t("a"), t("a")]).is_err());
        assert!(Tags::new((0..20).map(|i| t(&i.to_string())).collect()).is_ok());
        assert!(Tags::new((0..21).map(|i| t(&i.to_string())).collect()).is_err());
        assert!(Tag::parse("").is_err());
        assert!(Tag::parse(&"x".repeat(51)).is_err());
        assert!(Tag::parse(" x").is_err() && Tag::parse("x\u{3000}").is_err());
        assert!(Tag::parse("a b").is_ok());
        assert!(
            Tag::from_stored(" x").is_ok(),
            "padded tags stored earlier stay readable"
        );
    }

    #[test]
    fn only_uuid_v7_is_a_task_id() {
        assert!(TaskId::parse(&TaskId::new().to_string()).is_some());
        assert!(TaskId::parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8").is_none());
        assert!(TaskId::parse("nope").is_none());
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<_> = (0..1000).map(|_| TaskId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn due_at_normalises_to_utc_micros() {
        let d = DueAt::parse("2026-01-31T18:00:00.123456789+01:00").unwrap();
        assert_eq!(
            rfc3339::format(&d.as_datetime()),
            "2026-01-31T17:00:00.123456Z"
        );
        assert!(DueAt::parse("tomorrow").is_err());
        for (raw, utc) in [
            (
                "9999-12-31T23:59:59.9999999Z",
                "9999-12-31T23:59:59.999999Z",
            ),
            ("0000-01-01T00:00:00-00:00", "0000-01-01T00:00:00.000000Z"),
            ("2026-06-30T23:59:60Z", "2026-06-30T23:59:59.999999Z"),
            ("0000-01-02t00:30:00+23:59", "0000-01-01T00:31:00.000000Z"),
            ("9999-12-30T23:59:00-23:59", "9999-12-31T23:58:00.000000Z"),
        ] {
            let d = DueAt::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(rfc3339::format(&d.as_datetime()), utc, "{raw}");
        }
        assert_eq!(
            DueAt::parse_bound("9999-12-31T23:59:59-23:59").unwrap(),
            DueAt::MAX + chrono::Duration::microseconds(1)
        );
        assert_eq!(
            DueAt::parse_bound("0000-01-01T00:00:00+23:59").unwrap(),
            DueAt::MIN
        );
        for refused in [
            "9999-12-31T23:59:59-23:59",
            "0000-01-01T00:00:00+23:59",
            "0000-01-01T12:00:00+01:00",
            "2026-01-31 17:00:00Z",
        ] {
            assert!(DueAt::parse(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn unchanged_fields_keep_the_version() {
        let t = Task::create(TaskFields::with_title(Title::parse("a").unwrap()));
        assert_eq!(t.with_fields(t.fields.clone(), now()).version, 1);
        let mut f = t.fields.clone();
        f.status = Status::Done;
        let t2 = t.with_fields(f, now());
        assert_eq!(t2.version, 2);
        assert!(t2.updated_at >= t.updated_at);
    }

    proptest! {
        #[test]
        fn description_parse_bounds(s in "\\PC{0,50}", n in 9_990usize..10_010) {
            let long: String = s.chars().cycle().take(n).collect();
            let ok = Description::parse(&long).is_ok();
            prop_assert_eq!(ok, s.is_empty() || long.chars().count() <= 10_000);
        }
    }
}
