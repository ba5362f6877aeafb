//! Task and its field types. Every constructor validates, so a value of one of
//! these types is always acceptable to store and to return.

use chrono::{DateTime, NaiveDate, SecondsFormat, SubsecRound, Timelike, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::input::one_of;
use super::text;

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

/// Stored and backed-up ids are UUIDv7 like every id the API hands out: any
/// other would be listed but never found by `GET /v1/tasks/{id}`.
impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let uuid = Uuid::deserialize(d)?;
        TaskId::from_stored(uuid).map_err(serde::de::Error::custom)
    }
}

impl TaskId {
    /// A stored id: only a UUIDv7.
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
/// [`Title::from_stored`] (also behind `Deserialize`, for stored records and
/// backups) is what any release of the API has stored, so that tightening the
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

impl<'de> Deserialize<'de> for Title {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Title::from_stored(s).map_err(serde::de::Error::custom)
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

impl<'de> Deserialize<'de> for Description {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Description::from_stored(s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tag::from_stored(s).map_err(serde::de::Error::custom)
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
/// stores), so both backends return the same instant. It lies in
/// [`DueAt::MIN`]..=[`DueAt::MAX`], the instants that RFC 3339 can write in
/// UTC (four-digit years) and that both backends store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DueAt(#[serde(with = "rfc3339")] DateTime<Utc>);

impl DueAt {
    /// 0000-01-01T00:00:00Z.
    pub const MIN: DateTime<Utc> = NaiveDate::from_ymd_opt(0, 1, 1)
        .expect("a valid date")
        .and_hms_opt(0, 0, 0)
        .expect("a valid time")
        .and_utc();
    /// 9999-12-31T23:59:59.999999Z.
    pub const MAX: DateTime<Utc> = NaiveDate::from_ymd_opt(9999, 12, 31)
        .expect("a valid date")
        .and_hms_micro_opt(23, 59, 59, 999_999)
        .expect("a valid time")
        .and_utc();

    /// Client input: an RFC 3339 date-time (`T` or `t` between date and time,
    /// any offset, any number of fractional digits, `:60` leap seconds). It is
    /// converted to UTC and cut to microseconds; a leap second becomes the
    /// last microsecond of the second before it. On the first and the last day
    /// of the range (0000-01-01 and 9999-12-31 as written) the time must be in
    /// UTC (`Z` or `±00:00`), so that no offset can move it out of range: the
    /// OpenAPI pattern (`text::DUE_AT_PATTERN`) says the same.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || "must be an RFC 3339 timestamp such as 2026-01-31T17:00:00Z".to_owned();
        // chrono also takes a space between date and time; RFC 3339's grammar does not.
        if !matches!(raw.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(bad());
        }
        let t = DateTime::parse_from_rfc3339(raw).map_err(|_| bad())?;
        let day = t.naive_local().date();
        if t.offset().local_minus_utc() != 0
            && (day == Self::MIN.date_naive() || day == Self::MAX.date_naive())
        {
            return Err("on 0000-01-01 and 9999-12-31 the time must be given in UTC (Z)".into());
        }
        Self::from_utc(t.with_timezone(&Utc)).map_err(|_| {
            "must be between 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z".into()
        })
    }

    /// A bound to compare due dates with (the `due_before` filter): any RFC
    /// 3339 date-time, since it is never stored. It is held to
    /// [`Self::MIN`]..=[`Self::MAX`] plus a microsecond, which selects exactly
    /// what the instant itself would.
    pub fn parse_bound(raw: &str) -> Result<DateTime<Utc>, String> {
        let bad = || "must be an RFC 3339 timestamp such as 2026-01-31T17:00:00Z".to_owned();
        if !matches!(raw.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(bad());
        }
        let t = DateTime::parse_from_rfc3339(raw)
            .map_err(|_| bad())?
            .to_utc();
        Ok(t.clamp(Self::MIN, Self::MAX + chrono::Duration::microseconds(1)))
    }

    /// `t` in UTC, cut to microseconds; an error outside [`Self::MIN`]..=[`Self::MAX`].
    pub fn from_utc(t: DateTime<Utc>) -> Result<Self, String> {
        let t = if t.nanosecond() >= 1_000_000_000 {
            t.with_nanosecond(999_999_999).unwrap_or(t)
        } else {
            t
        };
        let t = t.trunc_subsecs(6);
        if (Self::MIN..=Self::MAX).contains(&t) {
            Ok(Self(t))
        } else {
            Err(format!(
                "{} is outside years 0000-9999",
                rfc3339::format(&t)
            ))
        }
    }

    /// A stored due date (a PostgreSQL row): see [`rfc3339::check_stored`].
    pub fn from_stored(t: DateTime<Utc>) -> Result<Self, String> {
        rfc3339::check_stored(t).map(Self)
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

/// A task as a storage or backup format holds it: plain values, before the
/// rules for stored values are applied. Every format converts to this and
/// back, and [`StoredTask::into_task`] applies the rules, so what any release
/// of the API may have stored is decided here once (see [`Title`] for why the
/// stored rules are wider than the input rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTask {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: String,
    pub priority: String,
    pub due_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

impl StoredTask {
    /// The task, if every value passes the rules for stored values; else why
    /// not, naming the field.
    pub fn into_task(self) -> Result<Task, String> {
        let tags = self
            .tags
            .into_iter()
            .map(Tag::from_stored)
            .collect::<Result<Vec<_>, _>>()
            .and_then(Tags::new)
            .map_err(|e| format!("tags: {e}"))?;
        let status = Status::parse(&self.status)
            .ok_or_else(|| format!("status `{}`", self.status.escape_debug()))?;
        let priority = Priority::parse(&self.priority)
            .ok_or_else(|| format!("priority `{}`", self.priority.escape_debug()))?;
        let task = Task {
            id: TaskId::from_stored(self.id)?,
            fields: TaskFields {
                title: Title::from_stored(self.title).map_err(|e| format!("title: {e}"))?,
                description: self
                    .description
                    .map(Description::from_stored)
                    .transpose()
                    .map_err(|e| format!("description: {e}"))?,
                status,
                priority,
                due_at: self
                    .due_at
                    .map(DueAt::from_stored)
                    .transpose()
                    .map_err(|e| format!("due_at: {e}"))?,
                tags,
            },
            created_at: rfc3339::check_stored(self.created_at)
                .map_err(|e| format!("created_at: {e}"))?,
            updated_at: rfc3339::check_stored(self.updated_at)
                .map_err(|e| format!("updated_at: {e}"))?,
            version: self.version,
        };
        task.check_stored()?;
        Ok(task)
    }
}

impl From<&Task> for StoredTask {
    fn from(task: &Task) -> Self {
        let f = &task.fields;
        Self {
            id: task.id.as_uuid(),
            title: f.title.as_str().to_owned(),
            description: f.description.as_ref().map(|d| d.as_str().to_owned()),
            status: f.status.as_str().to_owned(),
            priority: f.priority.as_str().to_owned(),
            due_at: f.due_at.map(|d| d.as_datetime()),
            tags: f.tags.iter().map(|t| t.as_str().to_owned()).collect(),
            created_at: task.created_at,
            updated_at: task.updated_at,
            version: task.version,
        }
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

    /// A stored timestamp: RFC 3339, within years 0000-9999 in UTC and whole
    /// microseconds, as every timestamp this API writes. Anything else could
    /// not be written back unchanged (or not by both backends).
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        let t = DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)?;
        check_stored(t).map_err(serde::de::Error::custom)
    }

    /// [`serialize`] and [`deserialize`] for an optional timestamp; `null`
    /// is `None`.
    pub mod option {
        use super::*;

        pub fn serialize<S: serde::Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Stored(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Stored>::deserialize(d)?.map(|t| t.0))
        }
    }

    /// `t` if it is a timestamp this API can have written.
    pub fn check_stored(t: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        if !t.nanosecond().is_multiple_of(1_000) || t.nanosecond() >= 1_000_000_000 {
            return Err(format!("{} is not in whole microseconds", format(&t)));
        }
        if !(DueAt::MIN..=DueAt::MAX).contains(&t) {
            return Err(format!("{} is outside years 0000-9999", format(&t)));
        }
        Ok(t)
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
