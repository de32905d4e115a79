//! Manifest edits for a release, line based so formatting and comments stay.

use anyhow::{bail, Result};

use super::version::Version;

/// Sets `version = "..."` in the `[package]` table.
pub(super) fn set_package_version(manifest: &str, version: &Version) -> Result<String> {
    let mut out = String::with_capacity(manifest.len());
    let mut table = String::new();
    let mut done = false;
    for line in manifest.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.to_string();
        }
        if !done && table == "[package]" {
            if let Some(rest) = t.strip_prefix("version") {
                let rest = rest.trim_start();
                if rest.starts_with('=') && rest.contains('"') {
                    out.push_str(&format!("version = \"{version}\"\n"));
                    done = true;
                    continue;
                }
                if rest.starts_with(".workspace") {
                    bail!("the crate inherits its version from the workspace; each crate needs its own");
                }
            }
        }
        out.push_str(line);
    }
    if !done {
        bail!("no `version = \"...\"` in [package]");
    }
    Ok(out)
}

/// Rewrites the version requirement of every inline dependency entry on
/// `name` that has one (`name = { path = "...", version = "..." }`), in any
/// dependency table. Returns the new text and the (old, new) lines.
pub(super) fn set_requirement(
    manifest: &str,
    name: &str,
    version: &Version,
) -> (String, Vec<(String, String)>) {
    let mut out = String::with_capacity(manifest.len());
    let mut changes = Vec::new();
    let mut table = String::new();
    for line in manifest.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.to_string();
        }
        let is_dep_table = table.contains("dependencies");
        let names_it = t
            .strip_prefix(name)
            .is_some_and(|r| r.trim_start().starts_with('='));
        if is_dep_table && names_it {
            if let Some(new) = replace_version_value(line, &version.to_string()) {
                if new != line {
                    changes.push((line.trim_end().to_string(), new.trim_end().to_string()));
                }
                out.push_str(&new);
                continue;
            }
        }
        out.push_str(line);
    }
    (out, changes)
}

/// `version = "x"` inside an inline table line, replaced; None without one.
fn replace_version_value(line: &str, new: &str) -> Option<String> {
    let key = line.find("version")?;
    let after = &line[key + "version".len()..];
    let eq = after.find('=')?;
    if !after[..eq].trim().is_empty() {
        return None;
    }
    let open = key + "version".len() + eq + after[eq..].find('"')?;
    let close = open + 1 + line[open + 1..].find('"')?;
    Some(format!("{}{new}{}", &line[..=open], &line[close..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_edits_keep_everything_else() {
        let m = "[package]\nname = \"a\"\nversion = \"0.1.0\" # c\nedition.workspace = true\n\n[dependencies]\nb = { version = \"0.1.0\" }\n";
        let out = set_package_version(m, &Version::parse("0.1.1").unwrap()).unwrap();
        assert_eq!(
            out,
            m.replace("version = \"0.1.0\" # c", "version = \"0.1.1\"")
        );
        let ws = "[workspace.dependencies]\nhydratecache-core = { path = \"crates/hydratecache-core\", version = \"0.1.0\", default-features = false }\nhydratecache-core-x = { version = \"9\" }\n";
        let (out, changes) =
            set_requirement(ws, "hydratecache-core", &Version::parse("0.2.0").unwrap());
        assert_eq!(changes.len(), 1);
        assert!(out.contains("version = \"0.2.0\", default-features = false"));
        assert!(out.contains("hydratecache-core-x = { version = \"9\" }"));
        let path_only = "[dev-dependencies]\nhydratecache-core = { workspace = true, features = [\"some-feature\"] }\n";
        assert!(set_requirement(
            path_only,
            "hydratecache-core",
            &Version::parse("0.2.0").unwrap()
        )
        .1
        .is_empty());
    }
}
