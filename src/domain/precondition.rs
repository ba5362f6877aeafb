//! Conditional writes: which stored versions a write may replace.

/// The versions of a task that a write may replace, checked by the store
/// against the version it holds when the write happens, so a condition and
/// its write are one atomic step. From `If-Match`: no header (or `*`) is
/// [`Precondition::Any`], a list of entity tags is [`Precondition::Versions`]
/// (a list with no valid tag admits nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    /// Whatever version is stored.
    #[default]
    Any,
    /// Only one of these versions.
    Versions(Vec<u64>),
}

impl Precondition {
    /// Only `version`.
    pub fn version(version: u64) -> Self {
        Self::Versions(vec![version])
    }

    /// Whether a task at `version` may be replaced.
    pub fn admits(&self, version: u64) -> bool {
        match self {
            Self::Any => true,
            Self::Versions(v) => v.contains(&version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_admits_all_and_a_list_only_its_versions() {
        assert!(Precondition::Any.admits(7));
        assert!(Precondition::version(7).admits(7));
        assert!(!Precondition::version(7).admits(8));
        assert!(Precondition::Versions(vec![2, 9]).admits(9));
        assert!(!Precondition::Versions(vec![]).admits(1));
    }
}
