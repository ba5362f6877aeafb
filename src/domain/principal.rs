//! Principals: who a bearer token authenticates, and who owns tasks.

use std::fmt;
use std::sync::Arc;

/// A principal's name: 1–64 of `A-Z a-z 0-9 _ . -`, starting with a letter or
/// digit; case matters (`Alice` and `alice` are two principals). The
/// restriction keeps names safe in storage keys, logs and shells. A name is
/// one principal whichever token source holds it, and it may be in only one:
/// the tokens file or the store (see `auth::StaticTokens`).
///
/// The one type for a principal from the request's extractor to the store's
/// keys; cloning it is cheap (a shared string).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrincipalName(Arc<str>);

/// The longest principal name.
pub const PRINCIPAL_NAME_MAX: usize = 64;

impl PrincipalName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_first = raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_rest = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok_first && ok_rest && raw.len() <= PRINCIPAL_NAME_MAX {
            Ok(Self(raw.into()))
        } else {
            Err(format!(
                "invalid principal name `{raw}`: use 1 to {PRINCIPAL_NAME_MAX} letters, digits, `_`, `.` or `-`, starting with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for PrincipalName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PrincipalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PrincipalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for PrincipalName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for PrincipalName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// SHA-256 of a bearer token: what is stored and compared instead of the token.
pub type TokenDigest = [u8; 32];

/// The name of one of a principal's tokens (`ci`, `laptop-2026`): the same
/// characters as a [`PrincipalName`]. A principal's current tokens have
/// distinct names; a token replaced by a rotation keeps its name until its
/// grace period ends.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenName(Arc<str>);

impl TokenName {
    /// The name of a token created without one, and of every token stored
    /// before tokens had names.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(raw: &str) -> Result<Self, String> {
        PrincipalName::parse(raw)
            .map(|p| Self(p.0))
            .map_err(|_| format!(
                "invalid token name `{raw}`: use 1 to {PRINCIPAL_NAME_MAX} letters, digits, `_`, `.` or `-`, starting with a letter or digit"
            ))
    }

    /// [`TokenName::DEFAULT`].
    pub fn default_name() -> Self {
        Self(Self::DEFAULT.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<&str> for TokenName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_names() {
        assert!(PrincipalName::parse("ci-bot.1").is_ok());
        assert!(PrincipalName::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "-x", "a b", "a:b", &"a".repeat(65), "é"] {
            assert!(PrincipalName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(PrincipalName::parse("Alice").unwrap(), "Alice");
        assert_ne!(PrincipalName::parse("Alice").unwrap(), "alice");
    }
}
