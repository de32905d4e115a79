//! Step 4 of release-check: the declared `rust-version`, checked without its
//! toolchain (dependencies resolved for it, every feature set checked there,
//! no standard library item newer than declared).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::common::{Summary, SCRATCH};
use super::version::Version;
use crate::common::{cargo, step};
use crate::workspace::{cargo_json_in, Member, Workspace};

pub(super) fn msrv(ws: &Workspace, crates: &[&Member], summary: &mut Summary) -> Result<()> {
    let started = Instant::now();
    let mut declared: BTreeMap<&str, Version> = BTreeMap::new();
    for m in crates {
        let Some(rv) = &m.rust_version else {
            bail!("{} declares no rust-version", m.name);
        };
        declared.insert(&m.name, Version::parse_partial(rv)?);
    }

    // A copy of the workspace, so the repository's Cargo.lock stays as it is.
    let copy = ws.root.join(SCRATCH).join("msrv-workspace");
    copy_workspace(ws, &copy)?;
    let fallback = [("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback")];
    let mut resolve = cargo(&["generate-lockfile"]);
    resolve.current_dir(&copy).envs(fallback);
    step(
        "msrv: resolve as a user on the declared rust-version would",
        resolve,
    )?;

    let meta = cargo_json_in(
        &["metadata", "--format-version", "1", "--all-features"],
        Some(&copy),
        &fallback,
    )?;
    let (checked, undeclared, too_new) = dependency_rust_versions(&meta, &declared)?;
    if !too_new.is_empty() {
        bail!(
            "dependencies that need a newer Rust than the crates using them declare \
             (no compatible version exists, or the requirement excludes it):\n  {}",
            too_new.join("\n  ")
        );
    }
    println!(
        "==> msrv: {checked} dependencies of the publishable crates (normal and build, all features, all targets): \
         none declares a rust-version above ours; {} declare none: {}",
        undeclared.len(),
        undeclared.join(", ")
    );

    // Our code against those versions, in every feature set that matters.
    let target_dir = ws.root.join("target");
    for m in crates {
        let mut sets: Vec<(&str, Vec<&str>)> = vec![("default features", vec![])];
        let has_features = m.features.keys().any(|k| k != "default");
        let default_empty = m.features.get("default").is_none_or(|d| d.is_empty());
        if has_features {
            if !default_empty {
                sets.push(("no default features", vec!["--no-default-features"]));
            }
            sets.push(("all features", vec!["--all-features"]));
        }
        for (what, flags) in sets {
            let target = if m.has_lib { "--lib" } else { "--bins" };
            let mut args = vec!["check", "--quiet", target, "-p", m.name.as_str()];
            args.extend(flags);
            let mut cmd = cargo(&args);
            cmd.current_dir(&copy)
                .envs(fallback)
                .env("CARGO_TARGET_DIR", &target_dir);
            step(&format!("msrv: {} ({what})", m.name), cmd)?;
        }
        if has_features && default_empty {
            println!(
                "    {}: no default features, so --no-default-features is the default build",
                m.name
            );
        }
    }

    // Standard library items stabilised after the declared rust-version.
    for (target, group) in [("--lib", true), ("--bins", false)] {
        let members: Vec<&&Member> = crates.iter().filter(|m| m.has_lib == group).collect();
        if members.is_empty() {
            continue;
        }
        let mut clippy = cargo(&["clippy", "--quiet", target, "--all-features"]);
        for m in members {
            clippy.args(["-p", &m.name]);
        }
        clippy.args(["--", "-A", "warnings", "-D", "clippy::incompatible_msrv"]);
        step("msrv: clippy::incompatible_msrv", clippy)?;
    }

    let versions: BTreeSet<String> = declared.values().map(ToString::to_string).collect();
    summary.passed(
        "msrv",
        format!(
            "rust-version {}: {checked} dependencies resolved for it declare no newer Rust; \
             every crate checks there with default/no-default/all features; no std API newer \
             than declared (not built with that compiler: see docs/releasing.md)",
            versions.into_iter().collect::<Vec<_>>().join(", ")
        ),
        started,
    );
    Ok(())
}

/// Copies the manifest and every member's directory (without `target/`).
fn copy_workspace(ws: &Workspace, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("remove {}", to.display()))?;
    }
    std::fs::create_dir_all(to)?;
    for file in ["Cargo.toml", "Cargo.lock", "README.md"] {
        let from = ws.root.join(file);
        if from.is_file() {
            std::fs::copy(&from, to.join(file))?;
        }
    }
    for m in &ws.members {
        copy_dir(&ws.root.join(&m.dir), &to.join(&m.dir))?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Walks the resolved graph from each publishable crate (normal and build
/// edges) and compares each dependency's `rust-version` with the crate's.
/// Returns (dependencies seen, those declaring none, those needing more).
fn dependency_rust_versions(
    meta: &Value,
    declared: &BTreeMap<&str, Version>,
) -> Result<(usize, Vec<String>, Vec<String>)> {
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("metadata: no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("metadata: no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let workspace: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("metadata: no workspace members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut seen_all: BTreeSet<&str> = BTreeSet::new();
    let mut undeclared: BTreeSet<String> = BTreeSet::new();
    let mut too_new: BTreeSet<String> = BTreeSet::new();
    for (id, p) in &packages {
        let Some(ours) = p["name"].as_str().and_then(|n| declared.get(n)) else {
            continue;
        };
        if !workspace.contains(id) {
            continue;
        }
        let mut stack = vec![*id];
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        while let Some(cur) = stack.pop() {
            let Some(node) = nodes.get(cur) else { continue };
            for dep in node["deps"].as_array().into_iter().flatten() {
                let shipped = dep["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].as_str() != Some("dev"));
                let Some(dep_id) = dep["pkg"].as_str() else {
                    continue;
                };
                if shipped && seen.insert(dep_id) {
                    stack.push(dep_id);
                }
            }
        }
        for dep_id in seen {
            if workspace.contains(dep_id) {
                continue;
            }
            seen_all.insert(dep_id);
            let Some(dep) = packages.get(dep_id) else {
                continue;
            };
            let label = format!(
                "{} {}",
                dep["name"].as_str().unwrap_or("?"),
                dep["version"].as_str().unwrap_or("?")
            );
            match dep["rust_version"].as_str() {
                None => {
                    undeclared.insert(label);
                }
                Some(rv) => {
                    if Version::parse_partial(rv)? > *ours {
                        too_new.insert(format!(
                            "{label} needs Rust {rv}, {} declares {ours}",
                            p["name"].as_str().unwrap_or("?")
                        ));
                    }
                }
            }
        }
    }
    Ok((
        seen_all.len(),
        undeclared.into_iter().collect(),
        too_new.into_iter().collect(),
    ))
}
