//! Step 1 of release-check: `cargo package` of every publishable crate, each
//! tarball built on its own against a local overlay of the others.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::common::{cargo_home, Summary, SCRATCH};
use crate::common::{cargo, step};
use crate::workspace::Workspace;

/// 1. Package every publishable crate and build each tarball on its own.
pub(super) fn package(ws: &Workspace, summary: &mut Summary) -> Result<()> {
    let started = Instant::now();
    // --allow-dirty: `release --execute` checks its own edits before they are
    // committed; `cargo publish` itself still refuses a dirty tree.
    // Its own target directory: other `cargo package` runs sharing the main
    // one (and its `package/tmp-registry` overlay) cannot interfere.
    let target_dir = ws.root.join(SCRATCH).join("package-target");
    let target = target_dir.to_string_lossy();
    let mut cmd = cargo(&[
        "package",
        "--workspace",
        "--allow-dirty",
        "--target-dir",
        &target,
    ]);
    // `--workspace` packages publish = false members too (and fails on their
    // path-only dependencies): leave them out, so every other member,
    // including one added later, is packaged.
    for m in ws.members.iter().filter(|m| !m.publish) {
        cmd.args(["--exclude", &m.name]);
    }
    forget_overlay_sources(ws, &target_dir)?;
    step("package", cmd)?;
    summary.passed(
        "package",
        "every publishable crate packaged and its tarball built on its own",
        started,
    );
    Ok(())
}

/// Cargo extracts each tarball of the local overlay into
/// `$CARGO_HOME/registry/src/-<hash>/<crate>-<version>` and, when that
/// directory is already there, reuses it: a second `cargo package` of the same
/// version would build the dependents against the *first* run's sources of
/// their workspace dependencies. Those extractions (only local registries'
/// directories start with `-`; only this workspace's publishable crates) go
/// before each run. So do the compiled overlay builds of those crates in
/// `target_dir`: Cargo takes a registry package's sources as immutable and
/// does not look at them again to decide whether its build is fresh.
fn forget_overlay_sources(ws: &Workspace, target_dir: &Path) -> Result<()> {
    for profile in ["debug", "release"] {
        let Ok(entries) = std::fs::read_dir(target_dir.join(profile).join(".fingerprint")) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            let ours = ws.members.iter().filter(|m| m.publish).any(|m| {
                name.strip_prefix(&m.name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
            });
            if ours {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("remove {}", e.path().display()))?;
            }
        }
    }
    let Some(src) = cargo_home().map(|h| h.join("registry").join("src")) else {
        return Ok(());
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(());
    };
    for registry in registries.filter_map(|e| e.ok()) {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for m in ws.members.iter().filter(|m| m.publish) {
            let stale = registry.path().join(format!("{}-{}", m.name, m.version));
            if stale.is_dir() {
                println!(
                    "==> package: removing the stale overlay extraction {}",
                    stale.display()
                );
                std::fs::remove_dir_all(&stale)
                    .with_context(|| format!("remove {}", stale.display()))?;
            }
        }
    }
    Ok(())
}
