//! Semantic versions, as in manifests, tags and `rust-version`.

use anyhow::{bail, Context, Result};

/// A semantic version (pre-release and build metadata kept as text; a
/// pre-release sorts before its release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Version {
    pub(super) major: u64,
    pub(super) minor: u64,
    pub(super) patch: u64,
    pub(super) pre: String,
}

impl Version {
    /// `x.y.z`, with an optional pre-release and build metadata.
    pub(super) fn parse(s: &str) -> Result<Version> {
        let s = s.trim();
        let core = s.split('+').next().unwrap_or(s);
        let (nums, pre) = core.split_once('-').unwrap_or((core, ""));
        let parts: Vec<&str> = nums.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            bail!("{s:?} is not a version x.y.z");
        };
        let num = |p: &str| {
            p.parse::<u64>()
                .with_context(|| format!("{s:?} is not a version x.y.z"))
        };
        Ok(Version {
            major: num(major)?,
            minor: num(minor)?,
            patch: num(patch)?,
            pre: pre.to_string(),
        })
    }

    /// `1.85` or `1.85.0`, as in `rust-version`.
    pub(super) fn parse_partial(s: &str) -> Result<Version> {
        match s.split('.').count() {
            1 => Version::parse(&format!("{s}.0.0")),
            2 => Version::parse(&format!("{s}.0")),
            _ => Version::parse(s),
        }
    }

    /// Whether `next` may break what `self` offered, by Cargo's rules: the
    /// left-most non-zero component changed.
    pub(super) fn is_breaking_to(&self, next: &Version) -> bool {
        if self.major != next.major {
            return true;
        }
        if self.major == 0 && self.minor != next.minor {
            return true;
        }
        if self.major == 0 && self.minor == 0 && self.patch != next.patch {
            return true;
        }
        !next.pre.is_empty()
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_and_breaking() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("0.1.10") > v("0.1.9"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert!(v("0.1.0").is_breaking_to(&v("0.2.0")));
        assert!(!v("0.1.0").is_breaking_to(&v("0.1.1")));
        assert!(!v("1.2.0").is_breaking_to(&v("1.3.0")));
        assert!(v("1.2.0").is_breaking_to(&v("2.0.0")));
        assert!(v("0.0.1").is_breaking_to(&v("0.0.2")));
        assert_eq!(Version::parse_partial("1.85").unwrap(), v("1.85.0"));
        assert!(Version::parse("1.2").is_err());
    }
}
