//! Bearer tokens and principals.
//!
//! A token is 32 random bytes (256 bits), shown to its owner once as
//! `dapi_<base64url>`. Only its SHA-256 digest is stored. A fast hash suffices
//! because tokens are uniformly random: there is no dictionary to attack, and
//! looking a digest up by key leaks nothing useful about the token itself.
//! Tokens from a tokens file are held in memory as digests and compared in
//! constant time; the file's rules are on [`StaticTokens::parse`] and
//! [`check_token_strength`].

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{PrincipalName, TokenDigest};

const PREFIX: &str = "dapi_";

/// A new random token in its textual form.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Characters after the optional `dapi_` prefix a token needs at least:
/// 32 hex digits are 128 bits, 32 base64url characters 192.
pub const MIN_TOKEN_CHARS: usize = 32;

/// The lowest accepted [`estimated_bits`] of a token. Lower than the 128 bits
/// the length guarantees because the estimate counts only what a short string
/// shows: a random 32-digit hex token estimates at about 115 bits, rarely below
/// 100, while the mistakes it is meant to catch (one character repeated, a
/// run such as `0123…`, `abab…`) estimate far lower.
const MIN_ESTIMATED_BITS: f64 = 64.0;

/// Whether a token from a tokens file is strong enough: after an optional
/// `dapi_` prefix, at least [`MIN_TOKEN_CHARS`] characters of the base64url
/// alphabet (`A-Z a-z 0-9 - _`, which includes hex), an [`estimated_bits`] of
/// at least 64, and at least half of its 3-character substrings distinct
/// (catches a repeated word). This catches mistakes, not every weak secret: a
/// passphrase of words passes. Generate tokens with `devops-api token create`
/// or `openssl rand -hex 32`. The error never contains the token.
pub fn check_token_strength(token: &str) -> Result<(), String> {
    let secret = token.strip_prefix(PREFIX).unwrap_or(token).as_bytes();
    if secret.len() < MIN_TOKEN_CHARS {
        return Err(format!(
            "the token is too short: {} characters after the optional `{PREFIX}` prefix, at least {MIN_TOKEN_CHARS} needed",
            secret.len()
        ));
    }
    if let Some(at) = secret.iter().position(|b| base64url_index(*b).is_none()) {
        return Err(format!(
            "the token has a character outside A-Z a-z 0-9 - _ (base64url or hex) at position {}",
            at + 1
        ));
    }
    let bits = estimated_bits(secret);
    if bits < MIN_ESTIMATED_BITS {
        return Err(format!(
            "the token looks low-entropy (repeated characters or a sequence: an estimated {bits:.0} bits, at least {MIN_ESTIMATED_BITS:.0} needed)"
        ));
    }
    let trigrams: std::collections::HashSet<&[u8]> = secret.windows(3).collect();
    if trigrams.len() * 2 < secret.len() - 2 {
        return Err("the token looks low-entropy (a repeated pattern)".into());
    }
    Ok(())
}

/// A simple entropy estimate of a base64url string: its length times the
/// lower of two Shannon entropies per character, of the characters and of the
/// steps between neighbours (differences in base64url order, modulo 64). The
/// first is low for few distinct characters, the second for runs and cycles.
pub fn estimated_bits(secret: &[u8]) -> f64 {
    let idx: Vec<u8> = secret.iter().filter_map(|b| base64url_index(*b)).collect();
    let steps: Vec<u8> = idx
        .windows(2)
        .map(|w| w[1].wrapping_sub(w[0]) % 64)
        .collect();
    idx.len() as f64 * shannon(&idx).min(shannon(&steps))
}

fn shannon(symbols: &[u8]) -> f64 {
    if symbols.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 64];
    for s in symbols {
        counts[usize::from(*s % 64)] += 1;
    }
    let n = symbols.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

fn base64url_index(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Tokens given to the process in a file (a Docker secret), one `NAME:TOKEN`
/// per line; blank lines and lines starting with `#` are ignored.
///
/// Every name appears once, every token once, and every token passes
/// [`check_token_strength`]; a principal named here must not also have a
/// stored token (the server refuses to start, and ignores such a stored token
/// if one is created while it runs), so one name never means two token holders.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens(Vec<(PrincipalName, TokenDigest)>);

/// Why a tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("cannot read tokens file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A rule of [`StaticTokens::parse`] is broken; the reason names the line.
    #[error("tokens file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl StaticTokens {
    pub fn load(path: &Path) -> Result<Self, TokensFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| TokensFileError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the file. Errors name the line and never contain a token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out: Vec<(PrincipalName, TokenDigest)> = Vec::new();
        let mut lines: Vec<usize> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = line
                .split_once(':')
                .ok_or_else(|| format!("line {n}: expected NAME:TOKEN"))?;
            let name = PrincipalName::parse(name.trim()).map_err(|e| format!("line {n}: {e}"))?;
            let token = token.trim();
            check_token_strength(token)
                .map_err(|e| format!("line {n} (`{}`): {e}", name.as_str()))?;
            let d = digest(token);
            for ((other, other_digest), at) in out.iter().zip(&lines) {
                if *other == name {
                    return Err(format!(
                        "line {n}: principal `{other}` is already defined on line {at}; one line per principal"
                    ));
                }
                if *other_digest == d {
                    return Err(format!(
                        "line {n} (`{}`): the same token as line {at} (`{other}`); every principal needs its own token",
                        name.as_str()
                    ));
                }
            }
            out.push((name, d));
            lines.push(n);
        }
        Ok(Self(out))
    }

    /// Whether `name` is a principal of this file.
    pub fn has_name(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n.as_str() == name)
    }

    /// Refuses stored tokens (`stored`: their principals' names) for a name
    /// this file also defines: both token holders would own the same tasks.
    pub fn check_disjoint<'a>(
        &self,
        stored: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let mut clash: Vec<&str> = stored.into_iter().filter(|n| self.has_name(n)).collect();
        if clash.is_empty() {
            return Ok(());
        }
        clash.sort_unstable();
        clash.dedup();
        Err(format!(
            "principal(s) {} have a token in the tokens file and a stored token; both would own the same tasks. \
             Revoke the stored one (`devops-api token revoke NAME`) or rename the tokens-file entry",
            clash
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// The principal whose token has `d`, comparing every entry in constant time.
    pub fn principal(&self, d: &TokenDigest) -> Option<&PrincipalName> {
        let mut found = None;
        for (name, candidate) in &self.0 {
            if bool::from(candidate.ct_eq(d)) {
                found = Some(name);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_long() {
        let a = generate_token();
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        assert_ne!(a, generate_token());
    }

    #[test]
    fn tokens_file_parses_and_rejects() {
        let t = generate_token();
        let s = StaticTokens::parse(&format!("# comment\n\nci:{t}\n")).unwrap();
        assert_eq!(s.principal(&digest(&t)).map(|n| n.as_str()), Some("ci"));
        assert_eq!(s.principal(&digest("other")), None);
        assert!(s.has_name("ci") && !s.has_name("CI"));
        assert!(StaticTokens::parse("nocolon").is_err());
        assert!(StaticTokens::parse("ci:short").is_err());
        assert!(StaticTokens::parse(&format!("bad name:{t}")).is_err());
    }

    /// Each refusal names the line (and the principal) but never the token.
    #[test]
    fn tokens_file_refuses_duplicates_and_weak_tokens_by_line() {
        let (a, b) = (generate_token(), generate_token());
        let cases = [
            (
                format!("alice:{a}\nbob:{a}\n"),
                "line 2 (`bob`): the same token as line 1 (`alice`)",
                a.clone(),
            ),
            (
                format!("alice:{a}\n# x\nalice:{b}\n"),
                "line 3: principal `alice` is already defined on line 1",
                b.clone(),
            ),
            (
                "ci:dapi_0123456789abcdef0123456789abcdef\n".into(),
                "line 1 (`ci`): the token looks low-entropy",
                "0123456789abcdef".into(),
            ),
            (
                format!("ci:{}\n", "a".repeat(40)),
                "line 1 (`ci`): the token looks low-entropy",
                "aaaaaaaa".into(),
            ),
            (
                "ci:passwordpasswordpasswordpassword\n".into(),
                "line 1 (`ci`): the token looks low-entropy (a repeated pattern)",
                "password".into(),
            ),
            (
                "\n\nci:dapi_Zm9vYmFyYmF6cXV4\n".into(),
                "line 3 (`ci`): the token is too short: 16 characters",
                "Zm9vYmFy".into(),
            ),
            (
                format!("ci:{}+/=\n", &a[5..]),
                "line 1 (`ci`): the token has a character outside",
                a[5..].to_owned(),
            ),
        ];
        for (file, expected, secret) in cases {
            let err = StaticTokens::parse(&file).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
            assert!(!err.contains(&secret), "the error shows the token: {err}");
        }
    }

    /// Random tokens of the documented kinds always pass; the screen's false
    /// refusals would be start-up failures for a correct secret.
    #[test]
    fn random_tokens_pass_the_strength_rule() {
        let mut bytes = [0u8; 32];
        for _ in 0..5_000 {
            assert_eq!(check_token_strength(&generate_token()), Ok(()));
            getrandom::fill(&mut bytes).unwrap();
            // `openssl rand -hex 16` (the shortest accepted hex), `-hex 32`, base64url of 24 bytes.
            for t in [
                hex::encode(&bytes[..16]),
                hex::encode(bytes),
                URL_SAFE_NO_PAD.encode(&bytes[..24]),
            ] {
                let r = check_token_strength(&t);
                assert_eq!(r, Ok(()), "{t} ({:.0} bits)", estimated_bits(t.as_bytes()));
            }
        }
    }

    #[test]
    fn stored_and_file_principals_must_differ() {
        let s = StaticTokens::parse(&format!(
            "alice:{}\nci:{}\n",
            generate_token(),
            generate_token()
        ))
        .unwrap();
        assert!(s.check_disjoint(["bob", "Alice"]).is_ok());
        let err = s.check_disjoint(["bob", "ci", "alice"]).unwrap_err();
        assert!(
            err.starts_with(
                "principal(s) `alice`, `ci` have a token in the tokens file and a stored token"
            ),
            "{err}"
        );
    }
}
