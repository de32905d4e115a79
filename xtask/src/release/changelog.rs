//! The `## [Unreleased]` section of a crate's CHANGELOG.md (Keep a Changelog)
//! and the date a release moves it under.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::version::Version;
use crate::workspace::Member;

/// The body of `## [Unreleased]`: (start of the heading line, start of the
/// body, end of the body) as byte offsets.
pub(super) fn unreleased_section(text: &str) -> Option<(usize, usize, usize)> {
    let mut offset = 0;
    let mut found: Option<(usize, usize)> = None;
    for line in text.split_inclusive('\n') {
        let heading = line.trim_end();
        if let Some((start, body)) = found {
            if heading.starts_with("## ") {
                return Some((start, body, offset));
            }
        } else if let Some(title) = heading.strip_prefix("## ") {
            let title = title.trim().trim_start_matches('[').trim_end_matches(']');
            if title.eq_ignore_ascii_case("unreleased") {
                found = Some((offset, offset + line.len()));
            }
        }
        offset += line.len();
    }
    found.map(|(start, body)| (start, body, text.len()))
}

/// Entries (list items) in the Unreleased section.
pub(super) fn unreleased_entries(text: &str) -> Vec<String> {
    let Some((_, body, end)) = unreleased_section(text) else {
        return Vec::new();
    };
    text[body..end]
        .lines()
        .filter(|l| l.trim_start().starts_with("- ") || l.trim_start().starts_with("* "))
        .map(|l| l.trim().to_string())
        .collect()
}

pub(super) fn is_breaking_entry(entry: &str) -> bool {
    let e = entry.trim_start();
    let item = e
        .strip_prefix("- ")
        .or_else(|| e.strip_prefix("* "))
        .unwrap_or(e);
    item.trim_start()
        .to_ascii_lowercase()
        .starts_with("**breaking")
}

pub(super) fn changelog_declares_breaking(m: &Member) -> Result<bool> {
    let text = std::fs::read_to_string(m.changelog())
        .with_context(|| format!("read {}", m.changelog().display()))?;
    Ok(unreleased_entries(&text)
        .iter()
        .any(|e| is_breaking_entry(e)))
}

/// Moves the Unreleased entries under `## [version] - date`, leaving an empty
/// Unreleased section above it.
pub(super) fn changelog_release(text: &str, version: &Version, date: &str) -> Result<String> {
    let Some((start, body, end)) = unreleased_section(text) else {
        bail!("no `## [Unreleased]` section");
    };
    let entries = text[body..end].trim_matches('\n');
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str(&text[..start]);
    out.push_str("## [Unreleased]\n\n");
    let _ = write!(out, "## [{version}] - {date}\n\n{entries}\n");
    if end < text.len() {
        out.push('\n');
        out.push_str(&text[end..]);
    }
    Ok(out)
}

/// Today in UTC as YYYY-MM-DD (civil-from-days, proleptic Gregorian).
pub(super) fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGELOG: &str = "# Changelog\n\nIntro.\n\n## [Unreleased]\n\n### Added\n\n- New thing.\n- **Breaking**: renamed `x`.\n\n## [0.1.0] - 2024-01-01\n\n### Added\n\n- First.\n";

    #[test]
    fn changelog_moves_unreleased_under_the_version() {
        let v = Version::parse("0.2.0").unwrap();
        let out = changelog_release(CHANGELOG, &v, "2025-02-03").unwrap();
        assert_eq!(
            out,
            "# Changelog\n\nIntro.\n\n## [Unreleased]\n\n## [0.2.0] - 2025-02-03\n\n### Added\n\n- New thing.\n- **Breaking**: renamed `x`.\n\n## [0.1.0] - 2024-01-01\n\n### Added\n\n- First.\n"
        );
        assert!(unreleased_entries(&out).is_empty());
        assert_eq!(unreleased_entries(CHANGELOG).len(), 2);
        assert!(unreleased_entries(CHANGELOG)
            .iter()
            .any(|e| is_breaking_entry(e)));
    }

    #[test]
    fn changelog_with_only_unreleased() {
        let text = "# Changelog\n\n## [Unreleased]\n\n- One.\n";
        let out = changelog_release(text, &Version::parse("0.1.0").unwrap(), "2025-01-01").unwrap();
        assert_eq!(
            out,
            "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2025-01-01\n\n- One.\n"
        );
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
