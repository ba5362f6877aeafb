//! What this binary is: its version and the source revision it was built
//! from (set by `build.rs`), shown by `--version`, the `ready` log line, the
//! `build_info` metric and the `X-Served-By` header of `/health`.

/// The crate version from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `<commit>`, `<commit>-dirty` (built from a tree whose tracked files
/// differed from the commit) or `unknown` (built without git or a revision).
pub const REVISION: &str = env!("DEVOPS_API_BUILD_REVISION");

/// `VERSION (REVISION)`: what `--version` prints after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DEVOPS_API_BUILD_REVISION"),
    ")"
);

/// The commit without the dirty marker (`unknown` when not known).
pub fn commit() -> &'static str {
    REVISION.strip_suffix("-dirty").unwrap_or(REVISION)
}

/// Whether the tree had uncommitted changes to tracked files.
pub fn dirty() -> bool {
    REVISION.ends_with("-dirty")
}

/// The value of `X-Served-By`: `devops-api/VERSION REVISION`.
pub const SERVED_BY: &str = concat!(
    "devops-api/",
    env!("CARGO_PKG_VERSION"),
    " ",
    env!("DEVOPS_API_BUILD_REVISION")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_is_a_commit_or_unknown() {
        assert!(REVISION == "unknown" || commit().len() >= 7, "{REVISION}");
        assert!(commit().bytes().all(|b| b.is_ascii_hexdigit()) || commit() == "unknown");
        assert_eq!(dirty(), REVISION != commit());
        assert!(LONG_VERSION.starts_with(VERSION) && LONG_VERSION.contains(REVISION));
    }
}
