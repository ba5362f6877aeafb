//! Time as tasks hold it: due dates ([`DueAt`]), the current time at the
//! precision both backends keep, and the one textual form of a timestamp
//! ([`rfc3339`]).

use chrono::{DateTime, NaiveDate, SecondsFormat, SubsecRound, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// A due date, normalised to UTC with microsecond precision (what PostgreSQL
/// stores), so both backends return the same instant. It lies in
/// [`DueAt::MIN`]..=[`DueAt::MAX`], the instants that RFC 3339 can write in
/// UTC (four-digit years) and that both backends store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
