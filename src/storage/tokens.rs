//! Stored tokens: what a store keeps of a token, and the token rules every
//! backend applies, decided here once (the backends only read and write):
//! when a token admits a request ([`token_admits`]), how a rotation retires
//! the old token ([`retire`]), which token a `revoke` without a name means
//! ([`pick_token`]), and how last-use times are noted in memory and written
//! at most once per [`TOKEN_USE_INTERVAL`] ([`TokenUses`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{StorageError, StoreResult};
use crate::domain::{PrincipalName, TokenDigest, TokenName};

/// How often last-use times are written: a store writes the uses noted in
/// memory at most once per interval (in the background, one transaction for
/// every token used), so a token's stored last use is at most this much
/// older than its real last use (plus the time until the next request that
/// triggers the write, or shutdown). Listings through a running server add
/// the uses noted in memory, so they are exact.
pub const TOKEN_USE_INTERVAL: Duration = Duration::from_secs(60);

/// How often a store whose file an earlier release may share takes expired
/// tokens out of the table that release reads (`storage::redb`'s token
/// sweep): that release knows no expiry and admits an expired token until
/// then.
pub const TOKEN_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How long a token replaced by `token rotate` stays valid by default.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// A stored token: never the token itself, only its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The principal the token authenticates.
    pub principal: PrincipalName,
    /// The token's name among the principal's tokens.
    pub name: TokenName,
    /// SHA-256 of the token (the store's key; not a secret that grants access).
    pub digest: TokenDigest,
    pub created_at: DateTime<Utc>,
    /// From this instant on the token is refused; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The last authenticated request, as last written (see [`TOKEN_USE_INTERVAL`]).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When a rotation replaced this token; it is then valid until `expires_at`.
    pub replaced_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// A new token record as `create_token` stores it.
    pub fn new(new: &NewToken, now: DateTime<Utc>) -> Self {
        Self {
            principal: new.principal.clone(),
            name: new.name.clone(),
            digest: new.digest,
            created_at: now,
            expires_at: new.expires_at,
            last_used_at: None,
            replaced_at: None,
        }
    }

    /// Whether this is the token its name stands for (not one a rotation replaced).
    pub fn is_current(&self) -> bool {
        self.replaced_at.is_none()
    }
}

/// What `create_token` and `rotate_token` store.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub principal: PrincipalName,
    pub name: TokenName,
    pub digest: TokenDigest,
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewToken {
    /// A token named [`TokenName::DEFAULT`] that never expires.
    pub fn default_for(principal: PrincipalName, digest: TokenDigest) -> Self {
        Self {
            principal,
            name: TokenName::default_name(),
            digest,
            expires_at: None,
        }
    }
}

/// Whether `token` authenticates a request at `now`: until its expiry, which
/// is exclusive (a token expiring now is refused).
pub fn token_admits(token: &TokenInfo, now: DateTime<Utc>) -> bool {
    token.expires_at.is_none_or(|at| now < at)
}

/// The expiry of a token replaced at `now` by a rotation with `grace`: the
/// end of the grace period, or its own expiry if that comes first.
pub fn retire(
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grace: Duration,
) -> DateTime<Utc> {
    let end = chrono::Duration::from_std(grace)
        .ok()
        .and_then(|g| now.checked_add_signed(g))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    expires_at.map_or(end, |e| e.min(end))
}

/// Why [`pick_token`] found no single token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("`{principal}` has no token{}", name.as_ref().map(|n| format!(" named `{n}`")).unwrap_or_default())]
    None {
        principal: String,
        name: Option<String>,
    },
    #[error("`{principal}` has {} tokens ({}); name the one to revoke", names.len(), names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    Several {
        principal: String,
        names: Vec<String>,
    },
}

/// The token name that an operation on `principal` given `name` (or none)
/// means, among `tokens` (any principal's): `name` if the principal has a
/// token of that name; without a name, the principal's one token name, and an
/// error that lists them when it has several.
pub fn pick_token(
    tokens: &[TokenInfo],
    principal: &PrincipalName,
    name: Option<&TokenName>,
) -> Result<TokenName, PickError> {
    let mut names: Vec<&TokenName> = tokens
        .iter()
        .filter(|t| t.principal == *principal)
        .map(|t| &t.name)
        .collect();
    names.sort_unstable();
    names.dedup();
    let none = || PickError::None {
        principal: principal.to_string(),
        name: name.map(ToString::to_string),
    };
    match (name, names.as_slice()) {
        (Some(n), names) if names.contains(&n) => Ok(n.clone()),
        (Some(_), _) | (None, []) => Err(none()),
        (None, [one]) => Ok((*one).clone()),
        (None, several) => Err(PickError::Several {
            principal: principal.to_string(),
            names: several.iter().map(ToString::to_string).collect(),
        }),
    }
}

/// Last-use times noted in memory by successful authentications, written by
/// the store at most once per [`TOKEN_USE_INTERVAL`], never on the request's
/// path. Memory is bounded by the number of tokens in use.
#[derive(Debug)]
pub struct TokenUses {
    inner: Mutex<Uses>,
    interval: Duration,
}

#[derive(Debug)]
struct Uses {
    pending: HashMap<TokenDigest, DateTime<Utc>>,
    last_write: Instant,
}

impl Default for TokenUses {
    fn default() -> Self {
        Self::with_interval(TOKEN_USE_INTERVAL)
    }
}

impl TokenUses {
    pub fn with_interval(interval: Duration) -> Self {
        Self {
            inner: Mutex::new(Uses {
                pending: HashMap::new(),
                last_write: Instant::now(),
            }),
            interval,
        }
    }

    /// Notes a use of `digest` at `at`; true when a write is due (the
    /// caller starts it in the background and [`TokenUses::take`]s the notes).
    pub fn note(&self, digest: TokenDigest, at: DateTime<Utc>) -> bool {
        let mut u = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let e = u.pending.entry(digest).or_insert(at);
        *e = (*e).max(at);
        if u.last_write.elapsed() >= self.interval {
            u.last_write = Instant::now();
            true
        } else {
            false
        }
    }

    /// The uses noted since the last take.
    pub fn take(&self) -> Vec<(TokenDigest, DateTime<Utc>)> {
        let mut u = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        u.pending.drain().collect()
    }

    /// Puts back uses whose write failed, unless newer ones were noted since.
    pub fn restore(&self, uses: Vec<(TokenDigest, DateTime<Utc>)>) {
        let mut u = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (d, at) in uses {
            let e = u.pending.entry(d).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Adds the uses noted but not yet written to `tokens`.
    pub fn overlay(&self, tokens: &mut [TokenInfo]) {
        let u = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for t in tokens {
            if let Some(at) = u.pending.get(&t.digest) {
                t.last_used_at = Some(t.last_used_at.map_or(*at, |l| l.max(*at)));
            }
        }
    }
}

/// The tokens a store lists, from its token records: a corrupt record
/// (already reported where it was read) is left out, any other error ends
/// the listing.
pub(crate) fn token_infos(
    records: impl IntoIterator<Item = StoreResult<TokenInfo>>,
) -> StoreResult<Vec<TokenInfo>> {
    let mut out = Vec::new();
    for r in records {
        match r {
            Ok(t) => out.push(t),
            Err(StorageError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn token(principal: &str, name: &str, digest: u8) -> TokenInfo {
        TokenInfo {
            principal: PrincipalName::parse(principal).unwrap(),
            name: TokenName::parse(name).unwrap(),
            digest: [digest; 32],
            created_at: at("2026-01-01T00:00:00Z"),
            expires_at: None,
            last_used_at: None,
            replaced_at: None,
        }
    }

    #[test]
    fn expiry_is_exclusive_and_retiring_never_extends() {
        let now = at("2026-01-01T00:00:00Z");
        let mut t = token("a", "x", 1);
        assert!(token_admits(&t, now));
        t.expires_at = Some(now);
        assert!(!token_admits(&t, now));
        assert!(token_admits(&t, now - chrono::Duration::microseconds(1)));
        let hour = Duration::from_secs(3600);
        assert_eq!(retire(None, now, hour), now + chrono::Duration::hours(1));
        let soon = now + chrono::Duration::minutes(5);
        assert_eq!(retire(Some(soon), now, hour), soon);
        assert_eq!(retire(None, now, Duration::ZERO), now);
        assert_eq!(retire(None, now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn a_name_is_needed_only_when_there_are_several() {
        let p = |s: &str| PrincipalName::parse(s).unwrap();
        let n = |s: &str| TokenName::parse(s).unwrap();
        let mut tokens = vec![token("a", "ci", 1), token("b", "x", 2)];
        assert_eq!(pick_token(&tokens, &p("a"), None), Ok(n("ci")));
        assert_eq!(pick_token(&tokens, &p("a"), Some(&n("ci"))), Ok(n("ci")));
        assert!(matches!(
            pick_token(&tokens, &p("a"), Some(&n("x"))),
            Err(PickError::None { .. })
        ));
        assert!(matches!(
            pick_token(&tokens, &p("c"), None),
            Err(PickError::None { .. })
        ));
        // A rotated token shares its name: still one name.
        let mut old = token("a", "ci", 3);
        old.replaced_at = Some(old.created_at);
        tokens.push(old);
        assert_eq!(pick_token(&tokens, &p("a"), None), Ok(n("ci")));
        tokens.push(token("a", "laptop", 4));
        let err = pick_token(&tokens, &p("a"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`a` has 2 tokens (`ci`, `laptop`); name the one to revoke"
        );
    }

    #[test]
    fn uses_are_noted_kept_newest_and_due_once_per_interval() {
        let uses = TokenUses::with_interval(Duration::from_secs(3600));
        let t0 = at("2026-01-01T00:00:00Z");
        assert!(!uses.note([1; 32], t0 + chrono::Duration::seconds(5)));
        assert!(!uses.note([1; 32], t0));
        let mut listed = vec![token("a", "x", 1)];
        uses.overlay(&mut listed);
        assert_eq!(
            listed[0].last_used_at,
            Some(t0 + chrono::Duration::seconds(5))
        );
        assert_eq!(
            uses.take(),
            vec![([1; 32], t0 + chrono::Duration::seconds(5))]
        );
        assert!(uses.take().is_empty());
        let due = TokenUses::with_interval(Duration::ZERO);
        assert!(due.note([2; 32], t0));
    }
}
