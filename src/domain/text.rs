//! The character rules of task text, and the OpenAPI patterns built from them.
//!
//! One set of tables serves both the validators and the published patterns,
//! so the document says exactly what the API accepts (a property test checks
//! it). Patterns use `\uXXXX` escapes for the Basic Multilingual Plane, which
//! ECMA-262, Python's `re` and Rust's regex crates read alike; characters
//! beyond it appear literally (invisible ones among them, such as the tag
//! characters), since those engines share no escape syntax for them and JSON
//! surrogate-pair escapes would break YAML readers of the document.

use std::sync::OnceLock;

/// Inclusive ranges of characters.
type Ranges = &'static [(char, char)];

/// General category Cc: C0 and C1 controls and DEL.
pub const CONTROL: Ranges = &[('\u{0}', '\u{1f}'), ('\u{7f}', '\u{9f}')];

/// General category Cf (format characters: bidi controls, zero-width
/// characters, tag characters, the byte order mark, ...), Unicode 16.
pub const FORMAT: Ranges = &[
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR (categories Zl, Zp).
pub const LINE_SEPARATORS: Ranges = &[('\u{2028}', '\u{2029}')];

/// The explicit bidirectional embeddings, overrides and isolates (a subset of
/// [`FORMAT`]): they reorder how text is displayed, so what a reader sees can
/// differ from what is stored ("Trojan Source", CVE-2021-42574).
pub const BIDI_CONTROLS: Ranges = &[('\u{202a}', '\u{202e}'), ('\u{2066}', '\u{2069}')];

/// The Unicode White_Space property: what `str::trim` removes.
pub const WHITE_SPACE: Ranges = &[
    ('\t', '\r'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{a0}', '\u{a0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200a}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202f}', '\u{202f}'),
    ('\u{205f}', '\u{205f}'),
    ('\u{3000}', '\u{3000}'),
];

/// Line breaks and the tab, the only controls a description may hold.
const DESCRIPTION_CONTROLS: Ranges = &[('\t', '\n'), ('\r', '\r')];

fn contains(ranges: Ranges, c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Why `c` may not appear in a title or tag, if it may not.
pub fn label_refusal(c: char) -> Option<&'static str> {
    if contains(CONTROL, c) {
        Some("must not contain control characters")
    } else if contains(FORMAT, c) {
        Some("must not contain Unicode format characters (bidi controls, zero-width characters)")
    } else if contains(LINE_SEPARATORS, c) {
        Some("must not contain line or paragraph separators (U+2028, U+2029)")
    } else {
        None
    }
}

/// Why `c` may not appear in a description, if it may not.
pub fn description_refusal(c: char) -> Option<&'static str> {
    if contains(CONTROL, c) && !contains(DESCRIPTION_CONTROLS, c) {
        Some("must not contain control characters other than line breaks and tabs")
    } else if contains(BIDI_CONTROLS, c) {
        Some(
            "must not contain bidi embedding, override or isolate controls (U+202A-U+202E, U+2066-U+2069)",
        )
    } else {
        None
    }
}

pub fn is_white_space(c: char) -> bool {
    contains(WHITE_SPACE, c)
}

/// `ranges` as the inside of a regex character class.
fn class(ranges: &[(char, char)]) -> String {
    let one = |c: char| {
        if (c as u32) <= 0xffff {
            format!("\\u{:04x}", c as u32)
        } else {
            c.to_string()
        }
    };
    ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                one(lo)
            } else {
                format!("{}-{}", one(lo), one(hi))
            }
        })
        .collect()
}

fn concat(parts: &[Ranges]) -> Vec<(char, char)> {
    parts.iter().flat_map(|r| r.iter().copied()).collect()
}

/// A character of a title or tag that is not white space.
fn label_edge_class() -> String {
    class(&concat(&[CONTROL, FORMAT, LINE_SEPARATORS, WHITE_SPACE]))
}

/// Title input: white space around 1-200 characters that contain no control,
/// format or separator characters and start and end with a non-space.
pub fn title_pattern() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let ws = class(WHITE_SPACE);
        let inner = class(&concat(&[CONTROL, FORMAT, LINE_SEPARATORS]));
        let edge = label_edge_class();
        format!("^[{ws}]*[^{edge}](?:[^{inner}]{{0,198}}[^{edge}])?[{ws}]*$")
    })
}

/// Tag input: 1-50 characters without control, format or separator
/// characters, starting and ending with a non-space.
pub fn tag_pattern() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let inner = class(&concat(&[CONTROL, FORMAT, LINE_SEPARATORS]));
        let edge = label_edge_class();
        format!("^[^{edge}](?:[^{inner}]{{0,48}}[^{edge}])?$")
    })
}

/// Description input: no controls but line breaks and tabs, no bidi
/// embedding, override or isolate controls. (The length is `maxLength`.)
pub fn description_pattern() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let refused: Vec<(char, char)> = [
            ('\u{0}', '\u{8}'),
            ('\u{b}', '\u{c}'),
            ('\u{e}', '\u{1f}'),
            ('\u{7f}', '\u{9f}'),
        ]
        .into_iter()
        .chain(BIDI_CONTROLS.iter().copied())
        .collect();
        format!("^[^{}]*$", class(&refused))
    })
}

/// `due_at` input, together with `format: date-time`: a time written on
/// 0000-01-01 or 9999-12-31 must be in UTC (`Z` or `±00:00`), so that no
/// offset moves it outside years 0000-9999; every other date may carry any
/// offset. (No sign rule is needed elsewhere: an offset is under 24 hours.)
pub const DUE_AT_PATTERN: &str = "^(?:(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-|0000-(?:0[2-9]|1[0-9])-|0000-01-(?:0[2-9]|[1-3][0-9])|9999-(?:0[0-9]|1[01])-|9999-12-(?:[0-2][0-9]|30)|(?:0000-01-01|9999-12-31)[Tt].*(?:[Zz]|[+-]00:00)$)";

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

    fn all_chars() -> impl Iterator<Item = char> {
        (0..=0x10ffffu32).filter_map(char::from_u32)
    }

    #[test]
    fn tables_match_the_unicode_properties() {
        for c in all_chars() {
            let cat = c.general_category();
            assert_eq!(contains(FORMAT, c), cat == GeneralCategory::Format, "{c:?}");
            assert_eq!(
                contains(CONTROL, c),
                cat == GeneralCategory::Control,
                "{c:?}"
            );
            assert_eq!(
                contains(LINE_SEPARATORS, c),
                matches!(
                    cat,
                    GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
                ),
                "{c:?}"
            );
            assert_eq!(is_white_space(c), c.is_whitespace(), "{c:?}");
        }
        for &(lo, hi) in BIDI_CONTROLS {
            assert!(contains(FORMAT, lo) && contains(FORMAT, hi));
        }
    }

    #[test]
    fn patterns_compile() {
        for p in [
            title_pattern(),
            tag_pattern(),
            description_pattern(),
            DUE_AT_PATTERN,
        ] {
            regex_lite::Regex::new(p).unwrap();
        }
    }
}

/// The validators accept exactly what the published patterns describe (the
/// OpenAPI document serves these patterns; `maxLength` and `format:
/// date-time` are modelled here beside them).
#[cfg(test)]
mod documented {
    use super::*;
    use crate::domain::{Description, DueAt, Tag, Title};
    use proptest::prelude::*;
    use regex_lite::Regex;

    /// Edges of every table, and their neighbours.
    fn special_chars() -> Vec<char> {
        [CONTROL, FORMAT, LINE_SEPARATORS, BIDI_CONTROLS, WHITE_SPACE]
            .iter()
            .flat_map(|r| r.iter())
            .flat_map(|&(lo, hi)| [lo as u32 as i64 - 1, lo as i64, hi as i64, hi as i64 + 1])
            .filter_map(|c| u32::try_from(c).ok().and_then(char::from_u32))
            .collect()
    }

    fn any_char() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => (0x20u32..0x7f).prop_map(|c| char::from_u32(c).unwrap()),
            3 => any::<char>(),
            2 => prop::sample::select(special_chars()),
        ]
    }

    fn clean_char(ok: fn(char) -> bool) -> impl Strategy<Value = char> {
        any_char().prop_filter("allowed", move |c| ok(*c))
    }

    fn string(chars: impl Strategy<Value = char>, max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(chars, 0..=max).prop_map(|v| v.into_iter().collect())
    }

    fn ws() -> impl Strategy<Value = String> {
        string(
            prop::sample::select(special_chars()).prop_filter("ws", |c| is_white_space(*c)),
            3,
        )
    }

    fn label_ok(c: char) -> bool {
        label_refusal(c).is_none()
    }

    fn desc_ok(c: char) -> bool {
        description_refusal(c).is_none()
    }

    fn title_input() -> impl Strategy<Value = String> {
        let core = prop_oneof![
            string(clean_char(label_ok), 205),
            string(any_char(), 205),
            string(any_char(), 3)
        ];
        (ws(), core, ws()).prop_map(|(a, b, c)| format!("{a}{b}{c}"))
    }

    fn tag_input() -> impl Strategy<Value = String> {
        let core = prop_oneof![
            string(clean_char(label_ok), 52),
            string(any_char(), 52),
            string(any_char(), 3)
        ];
        (
            prop_oneof![Just(String::new()), ws()],
            core,
            prop_oneof![Just(String::new()), ws()],
        )
            .prop_map(|(a, b, c)| format!("{a}{b}{c}"))
    }

    /// RFC 3339 `date-time` (section 5.6), what `format: date-time` means.
    fn is_date_time(s: &str) -> bool {
        let re = Regex::new(
            r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-]([0-9]{2}):([0-9]{2}))$",
        )
        .unwrap();
        let Some(c) = re.captures(s) else {
            return false;
        };
        let n = |i: usize| c.get(i).map_or(0, |m| m.as_str().parse::<u32>().unwrap());
        chrono::NaiveDate::from_ymd_opt(n(1) as i32, n(2), n(3)).is_some()
            && n(4) <= 23
            && n(5) <= 59
            && n(6) <= 60
            && n(9) <= 23
            && n(10) <= 59
    }

    fn due_at_input() -> impl Strategy<Value = String> {
        let year = prop_oneof![Just(0), Just(9999), Just(1), Just(9998), 0..=9999i32];
        let offset = prop_oneof![
            Just("Z".to_owned()),
            Just("z".to_owned()),
            Just("-00:00".to_owned()),
            Just("+00:00".to_owned()),
            (prop::bool::ANY, 0..=24u32, 0..=60u32)
                .prop_map(|(neg, h, m)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
        ];
        let frac = prop_oneof![Just(String::new()), "\\.[0-9]{1,12}", Just(".".to_owned())];
        let sep = prop_oneof![8 => Just('T'), 1 => Just('t'), 1 => Just(' ')];
        (
            year,
            prop_oneof![Just(1u32), Just(12), 1..=13u32],
            prop_oneof![Just(1u32), Just(31), Just(30), Just(29), 1..=32u32],
            sep,
            0..=24u32,
            0..=60u32,
            prop_oneof![Just(60u32), 0..=61u32],
            frac,
            offset,
        )
            .prop_map(|(y, mo, d, sep, h, mi, s, f, o)| {
                format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{f}{o}")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn titles(s in title_input()) {
            let re = Regex::new(title_pattern()).unwrap();
            let parsed = Title::parse(&s);
            prop_assert_eq!(parsed.is_ok(), re.is_match(&s), "{:?}: {:?}", s, parsed);
            if let Ok(t) = parsed {
                prop_assert_eq!(t.as_str(), s.trim());
                prop_assert!(Title::from_stored(t.as_str()).is_ok());
            }
        }

        #[test]
        fn tags(s in tag_input()) {
            let re = Regex::new(tag_pattern()).unwrap();
            let n = s.chars().count();
            let documented = re.is_match(&s) && (1..=50).contains(&n);
            let parsed = Tag::parse(&s);
            prop_assert_eq!(parsed.is_ok(), documented, "{:?}: {:?}", s, parsed);
            prop_assert_eq!(re.is_match(&s), documented, "the pattern bounds the length itself");
            if let Ok(t) = parsed {
                prop_assert_eq!(t.as_str(), s.as_str());
                prop_assert!(Tag::from_stored(t.as_str()).is_ok());
            }
        }

        #[test]
        fn descriptions(s in prop_oneof![string(any_char(), 300), string(clean_char(desc_ok), 300)], pad in prop_oneof![Just(0usize), 9_700..10_010usize]) {
            let s = if pad > 0 && !s.is_empty() { s.chars().cycle().take(pad).collect() } else { s };
            let re = Regex::new(description_pattern()).unwrap();
            let documented = re.is_match(&s) && s.chars().count() <= Description::MAX_CHARS;
            let parsed = Description::parse(&s);
            prop_assert_eq!(parsed.is_ok(), documented, "{:?}", parsed);
            if let Ok(d) = parsed {
                prop_assert!(Description::from_stored(d.as_str()).is_ok());
            }
        }

        #[test]
        fn due_dates(s in due_at_input()) {
            let re = Regex::new(DUE_AT_PATTERN).unwrap();
            let documented = is_date_time(&s) && re.is_match(&s);
            let parsed = DueAt::parse(&s);
            prop_assert_eq!(parsed.is_ok(), documented, "{}: {:?}", s, parsed);
            if let Ok(d) = parsed {
                prop_assert!(DueAt::from_stored(d.as_datetime()).is_ok());
                let text = crate::domain::rfc3339::format(&d.as_datetime());
                prop_assert_eq!(DueAt::parse(&text).ok(), Some(d), "{} writes as {}", s, text);
            }
        }
    }
}
