//! The cargo subcommands release-check runs, pinned to one version each and
//! installed when missing.

use std::process::Stdio;
use std::time::Instant;

use anyhow::Result;

use super::common::SCRATCH;
use crate::common::{cargo, step};

/// A cargo subcommand that xtask installs, pinned to one version.
pub(super) struct Tool {
    krate: &'static str,
    subcommand: &'static str,
    version: &'static str,
}

/// 0.51 reads the rustdoc JSON formats 57 to 61 (Rust 1.95 writes 57).
pub(super) const SEMVER_CHECKS: Tool = Tool {
    krate: "cargo-semver-checks",
    subcommand: "semver-checks",
    version: "0.51.0",
};

/// Licenses, bans, sources and advisories.
pub(super) const CARGO_DENY: Tool = Tool {
    krate: "cargo-deny",
    subcommand: "deny",
    version: "0.20.2",
};

/// Installs `tool` unless `cargo <subcommand> --version` prints its pinned version.
pub(super) fn ensure_tool(tool: &Tool) -> Result<()> {
    let found = cargo(&[tool.subcommand, "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(v) = &found {
        if v.split_whitespace().any(|w| w == tool.version) {
            println!("==> {v} (pinned {}), already installed", tool.version);
            return Ok(());
        }
    }
    let spec = format!("{}@{}", tool.krate, tool.version);
    println!(
        "xtask: installing {spec} (pinned; found {}) with cargo install --locked: \
         a few minutes, once per machine",
        found.as_deref().unwrap_or("none")
    );
    let started = Instant::now();
    // Its own build directory, kept: an interrupted install resumes.
    let build_dir = std::env::current_dir()?.join(SCRATCH).join("tools-build");
    let build_dir = build_dir.to_string_lossy();
    let cmd = cargo(&["install", "--locked", "--target-dir", &build_dir, &spec]);
    step(&format!("install {spec}"), cmd)?;
    println!("xtask: installed {spec} in {:.0?}", started.elapsed());
    Ok(())
}
