//! Listing tasks: the query (filters, order, page size, keyset cursor) as a
//! client sends it, parsed and validated here with every problem reported
//! per parameter, and the cursor format.
//!
//! Pages are keyset pages: a cursor names the last task of the previous page
//! (its id, which sorts in creation order), and the next page starts after
//! it. Unlike an offset, that position stays right while tasks are created
//! and deleted between two requests, and a page costs the same however deep
//! it is.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use super::input::FieldError;
use super::task::{Priority, Status, Task, TaskId, Title, one_of};
use super::time::DueAt;

/// Tasks per page when the client names no `limit`.
pub const DEFAULT_LIMIT: usize = 20;

/// The largest `limit`.
pub const MAX_LIMIT: usize = 100;

/// The longest `q`, in characters: no longer string can be in a title.
pub const Q_MAX_CHARS: usize = Title::MAX_CHARS;

/// The most candidate tasks one filtered page examines (see
/// [`ListQuery::scan_budget`]).
pub const SCAN_BUDGET: usize = 5_000;

/// Sort order of a listing, by creation (task id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

impl Order {
    pub const ALL: [Order; 2] = [Order::Asc, Order::Desc];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }
}

/// A listing request. All filters combine with AND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub priority: Option<Priority>,
    /// Tasks carrying exactly this tag.
    pub tag: Option<String>,
    /// Tasks due strictly before this instant (tasks without a due date never match).
    pub due_before: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the title, already lowercased.
    pub q: Option<String>,
    /// 1..=[`MAX_LIMIT`].
    pub limit: usize,
    pub order: Order,
    /// Keyset position: the listing continues after this id in `order`.
    pub after: Option<TaskId>,
    /// The most candidates (index entries or records) the store examines for
    /// this page. A filter that no index serves (`q`, or a combination
    /// whose driving index is broad) can reject every candidate: when the
    /// budget runs out first, the page holds the matches found so far (maybe
    /// none) and `next` is the position reached, so the client continues
    /// from there. Never below `limit + 1`. Not a client parameter:
    /// [`SCAN_BUDGET`] but in tests.
    pub scan_budget: usize,
}

impl Default for ListQuery {
    /// The first page, unfiltered, oldest first.
    fn default() -> Self {
        Self {
            status: None,
            priority: None,
            tag: None,
            due_before: None,
            q: None,
            limit: DEFAULT_LIMIT,
            order: Order::Asc,
            after: None,
            scan_budget: SCAN_BUDGET,
        }
    }
}

impl ListQuery {
    /// The query from a client's parameters (`status`, `priority`, `tag`,
    /// `due_before`, `q`, `limit`, `order`, `cursor`); every invalid one is
    /// reported. Other parameters are ignored.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut q = ListQuery::default();
        let mut check = |field: &str, r: Result<(), String>| {
            if let Err(m) = r {
                errs.push(FieldError::new(field, m));
            }
        };
        if let Some(s) = params.get("status") {
            check("status", Status::parse_input(s).map(|v| q.status = Some(v)));
        }
        if let Some(s) = params.get("priority") {
            check(
                "priority",
                Priority::parse_input(s).map(|v| q.priority = Some(v)),
            );
        }
        if let Some(s) = params.get("tag") {
            q.tag = Some(s.clone());
        }
        if let Some(s) = params.get("due_before") {
            check(
                "due_before",
                DueAt::parse_bound(s).map(|v| q.due_before = Some(v)),
            );
        }
        if let Some(s) = params.get("q") {
            if s.chars().count() > Q_MAX_CHARS {
                check(
                    "q",
                    Err(format!("must be at most {Q_MAX_CHARS} characters")),
                );
            }
            q.q = Some(s.to_lowercase());
        }
        if let Some(s) = params.get("limit") {
            match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                _ => check(
                    "limit",
                    Err(format!("must be an integer from 1 to {MAX_LIMIT}")),
                ),
            }
        }
        if let Some(s) = params.get("order") {
            match Order::parse(s) {
                Some(o) => q.order = o,
                None => check("order", Err(one_of(Order::ALL.map(|o| o.as_str())))),
            }
        }
        if let Some(s) = params.get("cursor") {
            match decode_cursor(s) {
                Some(after) => q.after = Some(after),
                None => check("cursor", Err("is not a cursor this API issued".into())),
            }
        }
        if errs.is_empty() { Ok(q) } else { Err(errs) }
    }

    /// Whether any filter is set.
    pub fn is_filtered(&self) -> bool {
        self.status.is_some()
            || self.priority.is_some()
            || self.tag.is_some()
            || self.due_before.is_some()
            || self.q.is_some()
    }

    /// [`Self::scan_budget`] as the store applies it: at least one page and
    /// the row that tells whether another follows.
    pub fn budget(&self) -> usize {
        self.scan_budget.max(self.limit + 1)
    }

    /// Whether `task` passes every filter.
    pub fn matches(&self, task: &Task) -> bool {
        let f = &task.fields;
        self.status.is_none_or(|s| f.status == s)
            && self.priority.is_none_or(|p| f.priority == p)
            && self.tag.as_deref().is_none_or(|t| f.tags.contains(t))
            && self
                .due_before
                .is_none_or(|b| f.due_at.is_some_and(|d| d.as_datetime() < b))
            && self
                .q
                .as_deref()
                .is_none_or(|q| f.title.as_str().to_lowercase().contains(q))
    }
}

/// Cursor format v1: base64url of a version byte and the last task id seen.
/// Opaque to clients, so its layout can change behind the version byte.
const CURSOR_V1: u8 = 1;

pub fn encode_cursor(id: TaskId) -> String {
    let mut raw = [0u8; 17];
    raw[0] = CURSOR_V1;
    raw[1..].copy_from_slice(&id.as_u128().to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode_cursor(s: &str) -> Option<TaskId> {
    let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
    let (&version, id) = raw.split_first()?;
    if version != CURSOR_V1 || id.len() != 16 {
        return None;
    }
    // Any 128-bit value is a valid keyset position; the store never trusts it further.
    Some(TaskId::from_u128(u128::from_be_bytes(id.try_into().ok()?)))
}

/// Exactly the strings [`decode_cursor`] accepts: 17 bytes in unpadded
/// base64url whose first byte is [`CURSOR_V1`] and whose unused trailing bits are 0.
pub const CURSOR_PATTERN: &str = "^A[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]$";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cursor_round_trips() {
        let id = TaskId::new();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
    }

    #[test]
    fn queries_parse_with_defaults_and_report_every_bad_parameter() {
        assert_eq!(
            ListQuery::parse(&params(&[])).unwrap(),
            ListQuery::default()
        );
        let id = TaskId::new();
        let q = ListQuery::parse(&params(&[
            ("status", "done"),
            ("priority", "high"),
            ("tag", " Ops "),
            ("q", "DePloy"),
            ("limit", "100"),
            ("order", "desc"),
            ("cursor", &encode_cursor(id)),
            ("unknown", "ignored"),
        ]))
        .unwrap();
        assert_eq!(
            (q.status, q.priority, q.tag.as_deref(), q.q.as_deref()),
            (
                Some(Status::Done),
                Some(Priority::High),
                Some(" Ops "),
                Some("deploy")
            )
        );
        assert_eq!((q.limit, q.order, q.after), (100, Order::Desc, Some(id)));
        let errs = ListQuery::parse(&params(&[
            ("status", "later"),
            ("priority", "urgent"),
            ("due_before", "tomorrow"),
            ("q", &"x".repeat(201)),
            ("limit", "0"),
            ("order", "up"),
            ("cursor", "nope"),
        ]))
        .unwrap_err();
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("status", "must be one of `todo`, `in_progress`, `done`"),
                ("priority", "must be one of `low`, `normal`, `high`"),
                (
                    "due_before",
                    "must be an RFC 3339 timestamp such as 2026-01-31T17:00:00Z"
                ),
                ("q", "must be at most 200 characters"),
                ("limit", "must be an integer from 1 to 100"),
                ("order", "must be `asc` or `desc`"),
                ("cursor", "is not a cursor this API issued"),
            ]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_cursors_never_panic(s in "\\PC{0,40}") {
            let _ = decode_cursor(&s);
        }

        #[test]
        fn the_pattern_is_exactly_what_decodes(s in "[A-Za-z0-9_-]{21,24}|A[Q-Za-f][A-Za-z0-9_-]{20}[A-Za-z0-9_-]") {
            let pattern = regex_lite::Regex::new(CURSOR_PATTERN).unwrap();
            prop_assert_eq!(pattern.is_match(&s), decode_cursor(&s).is_some(), "{}", s);
        }

        #[test]
        fn encoded_cursors_match_the_pattern(v in any::<u128>()) {
            let pattern = regex_lite::Regex::new(CURSOR_PATTERN).unwrap();
            prop_assert!(pattern.is_match(&encode_cursor(TaskId::from_u128(v))));
        }
    }
}
