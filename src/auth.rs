//! Bearer tokens and principals.
//!
//! A token is 32 random bytes (256 bits), shown to its owner once as
//! `dapi_<base64url>`. Only its SHA-256 digest is stored. A fast hash suffices
//! because tokens are uniformly random: there is no dictionary to attack, and
//! looking a digest up by key leaks nothing useful about the token itself.
//! Tokens from a tokens file are held in memory as digests and compared in
//! constant time.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::storage::TokenDigest;

const PREFIX: &str = "dapi_";

/// A principal's name: 1–64 of `A-Z a-z 0-9 _ . -`, starting with a letter or
/// digit. The restriction keeps names safe in storage keys, logs and shells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalName(String);

impl PrincipalName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_first = raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_rest = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok_first && ok_rest && raw.len() <= 64 {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "invalid principal name `{raw}`: use 1 to 64 letters, digits, `_`, `.` or `-`, starting with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new random token in its textual form.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Tokens given to the process in a file (a Docker secret), one `NAME:TOKEN`
/// per line; blank lines and lines starting with `#` are ignored.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens(Vec<(String, TokenDigest)>);

impl StaticTokens {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read tokens file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("tokens file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected NAME:TOKEN", n + 1))?;
            let name =
                PrincipalName::parse(name.trim()).map_err(|e| format!("line {}: {e}", n + 1))?;
            let token = token.trim();
            if token.len() < 22 {
                return Err(format!(
                    "line {}: the token is too short (at least 128 bits of randomness, 22+ characters)",
                    n + 1
                ));
            }
            out.push((name.0, digest(token)));
        }
        Ok(Self(out))
    }

    /// The principal whose token has `d`, comparing every entry in constant time.
    pub fn principal(&self, d: &TokenDigest) -> Option<&str> {
        let mut found = None;
        for (name, candidate) in &self.0 {
            if bool::from(candidate.ct_eq(d)) {
                found = Some(name.as_str());
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
        assert_eq!(s.principal(&digest(&t)), Some("ci"));
        assert_eq!(s.principal(&digest("other")), None);
        assert!(StaticTokens::parse("nocolon").is_err());
        assert!(StaticTokens::parse("ci:short").is_err());
        assert!(StaticTokens::parse(&format!("bad name:{t}")).is_err());
    }

    #[test]
    fn principal_names() {
        assert!(PrincipalName::parse("ci-bot.1").is_ok());
        for bad in ["", "-x", "a b", "a:b", &"a".repeat(65), "é"] {
            assert!(PrincipalName::parse(bad).is_err(), "{bad}");
        }
    }
}
