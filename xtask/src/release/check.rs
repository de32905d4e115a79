//! `cargo xtask release-check`: the metadata every published crate needs,
//! then each step, quickest first, and a summary.

use anyhow::{bail, Context, Result};
use std::time::Instant;

use super::changelog::unreleased_section;
use super::common::Summary;
use super::deny::deny;
use super::msrv::msrv;
use super::package::package;
use super::semver::semver;
use crate::workspace::{Member, Workspace};

/// Runs every release check on every publishable crate.
pub(crate) fn check() -> Result<()> {
    let started = Instant::now();
    let ws = Workspace::load()?;
    let crates = ws.publishable_in_order()?;
    if crates.is_empty() {
        bail!("no publishable crate in the workspace");
    }
    let names: Vec<&str> = crates.iter().map(|m| m.name.as_str()).collect();
    println!(
        "==> release-check of {} crates, in publish order: {}",
        names.len(),
        names.join(", ")
    );
    let mut summary = Summary::default();
    // Quickest first.
    check_metadata(&crates)?;
    deny(&mut summary)?;
    package(&ws, &mut summary)?;
    semver(&ws, &crates, &mut summary)?;
    msrv(&ws, &crates, &mut summary)?;

    println!("release-check summary:");
    for (name, note, took) in &summary.rows {
        println!("  {name:<10} {:>6.0?}  {note}", took);
    }
    for s in &summary.skipped {
        println!("  skipped: {s}");
    }
    println!(
        "xtask release-check: every check passed in {:.0?}{}",
        started.elapsed(),
        if summary.skipped.is_empty() {
            String::new()
        } else {
            format!(" ({} skipped, listed above)", summary.skipped.len())
        }
    );
    Ok(())
}

/// What each crate's registry page and docs.rs build need, read from the
/// manifests: fails with every missing piece at once.
fn check_metadata(crates: &[&Member]) -> Result<()> {
    let mut problems = Vec::new();
    let root = std::fs::read_to_string("Cargo.toml").context("read Cargo.toml")?;
    for m in crates {
        let manifest = std::fs::read_to_string(m.manifest())
            .with_context(|| format!("read {}", m.manifest().display()))?;
        let has = |key: &str| manifest.lines().any(|l| l.trim_start().starts_with(key));
        for key in [
            "description",
            "readme",
            "license",
            "repository",
            "rust-version",
        ] {
            if !has(key) {
                problems.push(format!("{}: no `{key}` in Cargo.toml", m.name));
            }
        }
        if !manifest.contains("[package.metadata.docs.rs]") {
            problems.push(format!("{}: no [package.metadata.docs.rs]", m.name));
        }
        if !m.dir.join("README.md").is_file() {
            problems.push(format!("{}: no README.md", m.name));
        }
        // MIT and Apache-2.0 both require the license text to travel with
        // the code; a crate's package holds only its own directory.
        for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
            if !m.dir.join(license).is_file() {
                problems.push(format!(
                    "{}: no {license} in the crate directory (link ../../{license})",
                    m.name
                ));
            }
        }
        match std::fs::read_to_string(m.changelog()) {
            Ok(text) if unreleased_section(&text).is_some() => {}
            Ok(_) => problems.push(format!(
                "{}: CHANGELOG.md has no `## [Unreleased]` section",
                m.name
            )),
            Err(_) => problems.push(format!("{}: no CHANGELOG.md", m.name)),
        }
        // A dependency on a workspace crate must carry a version requirement,
        // or `cargo package` strips it (dev) or fails (normal).
        for d in m.shipped_deps() {
            let line = manifest.lines().find(|l| {
                l.trim_start().starts_with(&format!("{d} "))
                    || l.trim_start().starts_with(&format!("{d}."))
            });
            let Some(line) = line else { continue };
            if line.contains("path") && !line.contains("version") {
                problems.push(format!(
                    "{}: dependency {d} has a path but no version",
                    m.name
                ));
            }
            // Inherited: the requirement is the workspace table's.
            let inherited = line.contains("workspace") && !line.contains("path");
            let entry = inherited.then(|| workspace_dependency(&root, d)).flatten();
            if entry.is_some_and(|e| e.contains("path") && !e.contains("version")) {
                problems.push(format!(
                    "{}: dependency {d} comes from [workspace.dependencies], where it has a \
                     path but no version",
                    m.name
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!("release metadata incomplete:\n  {}", problems.join("\n  "));
    }
    println!("==> metadata: description, readme, license, repository, rust-version, docs.rs metadata, README.md, CHANGELOG.md, both license texts and version requirements present");
    Ok(())
}

/// The line of `[workspace.dependencies]` declaring `name`, if any.
fn workspace_dependency<'a>(root_manifest: &'a str, name: &str) -> Option<&'a str> {
    let mut in_table = false;
    for line in root_manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = t == "[workspace.dependencies]";
        } else if in_table
            && t.strip_prefix(name)
                .is_some_and(|r| r.trim_start().starts_with('='))
        {
            return Some(line);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::workspace_dependency;

    #[test]
    fn finds_workspace_dependencies() {
        let root = "[workspace]\nmembers = []\n\n[workspace.dependencies]\na-core = { path = \"crates/a-core\", version = \"0.1.0\" }\na = { path = \"crates/a\" }\n\n[profile.release]\nb = 1\n";
        assert!(workspace_dependency(root, "a-core").is_some_and(|l| l.contains("0.1.0")));
        assert!(workspace_dependency(root, "a").is_some_and(|l| !l.contains("version")));
        assert_eq!(workspace_dependency(root, "b"), None);
    }
}
