//! Task and its field types. Every constructor validates, so a value of one of
//! these types is always acceptable to store and to return.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A task's identifier: a UUIDv7, so that identifiers sort in creation order,
/// which keyset pagination relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

/// 1–200 characters after trimming, without control characters.
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
        if t.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Title {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Title::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Up to 10 000 characters. Line breaks and tabs are allowed; other control
/// characters are not, since they break terminals and log viewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 10_000;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if raw
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(
                "must not contain control characters other than line breaks and tabs".into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Description {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Description::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Todo,
    InProgress,
    Done,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "todo" => Some(Self::Todo),
            "in_progress" => Some(Self::InProgress),
            "done" => Some(Self::Done),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Todo => "todo",
            Self::InProgress => "in_progress",
            Self::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Self::Low),
            "normal" => Some(Self::Normal),
            "high" => Some(Self::High),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// 1–50 characters, no control characters, no surrounding whitespace.
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
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tag::parse(&s).map_err(serde::de::Error::custom)
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

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<Tag>::deserialize(d)?;
        Tags::new(v).map_err(serde::de::Error::custom)
    }
}

/// A due date, normalised to UTC with microsecond precision (what PostgreSQL
/// stores), so both backends return the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DueAt(#[serde(with = "rfc3339")] DateTime<Utc>);

impl DueAt {
    pub fn parse(raw: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| Self(t.with_timezone(&Utc).trunc_subsecs(6)))
            .map_err(|_| "must be an RFC 3339 timestamp such as 2026-01-31T17:00:00Z".into())
    }

    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Self(t.trunc_subsecs(6))
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
}

/// The fields a client controls. Validated as a whole: holding one means the
/// fields may be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A stored task as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    #[serde(flatten)]
    pub fields: TaskFields,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// Starts at 1 and grows by one with every change; the ETag is derived from it.
    pub version: u64,
}

impl Task {
    /// A new task at version 1, created now.
    pub fn create(fields: TaskFields) -> Self {
        let now = now();
        Self {
            id: TaskId::new(),
            fields,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// The task with `fields` applied: version and `updated_at` move only when
    /// something changed, so a no-op update is not a new version.
    pub fn with_fields(&self, fields: TaskFields) -> Self {
        if fields == self.fields {
            return self.clone();
        }
        Self {
            id: self.id,
            fields,
            created_at: self.created_at,
            updated_at: now().max(self.updated_at),
            version: self.version + 1,
        }
    }

    /// The strong entity tag of this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// The current time at the precision both backends keep.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// RFC 3339 in UTC with a `Z` and microseconds: one textual form for every timestamp.
pub mod rfc3339 {
    use super::*;

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    }

    #[test]
    fn tags_must_be_distinct_and_few() {
        let t = |s: &str| Tag::parse(s).unwrap();
        assert!(Tags::new(vec![t("a"), t("a")]).is_err());
        assert!(Tags::new((0..20).map(|i| t(&i.to_string())).collect()).is_ok());
        assert!(Tags::new((0..21).map(|i| t(&i.to_string())).collect()).is_err());
        assert!(Tag::parse("").is_err());
        assert!(Tag::parse(&"x".repeat(51)).is_err());
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
    }

    #[test]
    fn unchanged_fields_keep_the_version() {
        let t = Task::create(TaskFields::with_title(Title::parse("a").unwrap()));
        assert_eq!(t.with_fields(t.fields.clone()).version, 1);
        let mut f = t.fields.clone();
        f.status = Status::Done;
        let t2 = t.with_fields(f);
        assert_eq!(t2.version, 2);
        assert!(t2.updated_at >= t.updated_at);
    }

    proptest! {
        #[test]
        fn title_parse_accepts_exactly_the_valid_strings(s in "\\PC{0,210}|[ \\t\\x00-\\x1f]{0,5}") {
            let trimmed = s.trim();
            let valid = !trimmed.is_empty()
                && trimmed.chars().count() <= 200
                && !trimmed.chars().any(char::is_control);
            prop_assert_eq!(Title::parse(&s).is_ok(), valid);
            if let Ok(t) = Title::parse(&s) {
                prop_assert_eq!(t.as_str(), trimmed);
            }
        }

        #[test]
        fn description_parse_bounds(s in "\\PC{0,50}", n in 9_990usize..10_010) {
            let long: String = s.chars().cycle().take(n).collect();
            let ok = Description::parse(&long).is_ok();
            prop_assert_eq!(ok, s.is_empty() || long.chars().count() <= 10_000);
        }
    }
}
