//! Time as tasks hold it: due dates ([`DueAt`]), the current time at the
//! precision both backends keep, and the one textual form of a timestamp
//! ([`rfc3339`]).

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, SubsecRound, Timelike, Utc};
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
        match Text::of(t) {
            Some(text) => text.as_str().to_owned(),
            None => t.to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }

    /// The text [`format`] gives, on the stack: every response and record
    /// holds two or three timestamps, and a list page fifty tasks, so this
    /// is on the hot path. `None` where chrono's own formatting must decide
    /// (a year outside 0000-9999, a leap second): a unit test holds the two
    /// equal over the whole range.
    struct Text([u8; 27]);

    impl Text {
        fn of(t: &DateTime<Utc>) -> Option<Self> {
            let nanos = t.nanosecond();
            let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
            if nanos >= 1_000_000_000 {
                return None;
            }
            let mut b = *b"0000-00-00T00:00:00.000000Z";
            let mut put = |range: std::ops::Range<usize>, mut v: u32| {
                for d in b[range].iter_mut().rev() {
                    *d = b'0' + (v % 10) as u8;
                    v /= 10;
                }
            };
            put(0..4, year);
            put(5..7, t.month());
            put(8..10, t.day());
            put(11..13, t.hour());
            put(14..16, t.minute());
            put(17..19, t.second());
            put(20..26, nanos / 1_000);
            Some(Self(b))
        }

        fn as_str(&self) -> &str {
            std::str::from_utf8(&self.0).expect("ASCII digits and separators")
        }
    }

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        match Text::of(t) {
            Some(text) => s.serialize_str(text.as_str()),
            None => s.serialize_str(&format(t)),
        }
    }

    /// A stored timestamp: RFC 3339, within years 0000-9999 in UTC and whole
    /// microseconds, as every timestamp this API writes. Anything else could
    /// not be written back unchanged (or not by both backends). Parsed from
    /// the input in place where the format allows it (no escapes).
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        struct Stored;
        impl serde::de::Visitor<'_> for Stored {
            type Value = DateTime<Utc>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let t = DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(E::custom)?;
                check_stored(t).map_err(E::custom)
            }
        }
        d.deserialize_str(Stored)
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
    use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
    use proptest::prelude::*;

    use super::rfc3339;

    /// The stack formatting is chrono's, over every instant of the range
    /// (and its edges), at every sub-second precision.
    fn chrono_text(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    fn json(t: &DateTime<Utc>) -> String {
        #[derive(serde::Serialize)]
        struct W(#[serde(with = "rfc3339")] DateTime<Utc>);
        serde_json::to_string(&W(*t)).unwrap()
    }

    proptest! {
        #[test]
        fn formats_as_chrono_does(
            secs in super::DueAt::MIN.timestamp()..=super::DueAt::MAX.timestamp(),
            nanos in prop_oneof![0u32..1_000_000_000, (0u32..1_000_000).prop_map(|u| u * 1_000)],
        ) {
            let t = Utc.timestamp_opt(secs, nanos).unwrap();
            prop_assert_eq!(rfc3339::format(&t), chrono_text(&t));
            prop_assert_eq!(json(&t), format!("\"{}\"", chrono_text(&t)));
        }
    }

    #[test]
    fn formats_the_edges_and_beyond_as_chrono_does() {
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 1_500_000)
            .unwrap()
            .and_utc();
        for t in [
            super::DueAt::MIN,
            super::DueAt::MAX,
            super::DueAt::MIN - chrono::Duration::microseconds(1),
            super::DueAt::MAX + chrono::Duration::microseconds(1),
            leap,
            Utc.timestamp_opt(0, 0).unwrap(),
        ] {
            assert_eq!(rfc3339::format(&t), chrono_text(&t), "{t:?}");
            assert_eq!(json(&t), format!("\"{}\"", chrono_text(&t)), "{t:?}");
        }
    }

    #[test]
    fn reads_escaped_and_plain_text_alike() {
        #[derive(serde::Deserialize)]
        struct W(#[serde(with = "rfc3339")] DateTime<Utc>);
        let plain: W = serde_json::from_str("\"2026-01-31T17:00:00.000001Z\"").unwrap();
        // `\u0032` is "2": an escape makes serde_json hand over an owned string
        let escaped: W = serde_json::from_str("\"\\u0032026-01-31T17:00:00.000001Z\"").unwrap();
        assert_eq!(plain.0, escaped.0);
        let err = serde_json::from_str::<W>("17").err().unwrap().to_string();
        assert!(err.contains("expected a string"), "{err}");
    }
}
