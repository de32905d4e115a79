//! Helpers every task shares: starting cargo, running a step, finding the
//! adapters and the binaries cargo built. Kept out of `main.rs` so the tasks'
//! files use this one and `main.rs` uses them, with no file using another
//! back.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Backends in the order `all` runs them.
pub(crate) const BACKENDS: &[&str] = &["redis", "nats", "postgres", "kafka"];

/// Adapters that exist in this checkout, among `backend` (`all` or one name).
pub(crate) fn selected(backend: &str) -> Result<Vec<&'static str>> {
    let existing = |b: &&str| Path::new(&format!("crates/hydratecache-{b}")).is_dir();
    if backend == "all" {
        return Ok(BACKENDS.iter().copied().filter(existing).collect());
    }
    let Some(b) = BACKENDS.iter().copied().find(|b| *b == backend) else {
        bail!("unknown backend {backend:?}; expected one of {BACKENDS:?} or all");
    };
    if !existing(&b) {
        bail!("there is no crates/hydratecache-{b} in this checkout");
    }
    Ok(vec![b])
}

/// A binary cargo built for this workspace, in `profile` (`debug`, `release`),
/// honouring `CARGO_TARGET_DIR`.
pub(crate) fn built_binary(profile: &str, name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join(profile).join(name)
}

/// `cargo <args>`, with the cargo that runs xtask.
pub(crate) fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    cmd
}

/// Runs `cmd`, said first; fails naming the step when it fails.
pub(crate) fn step(name: &str, mut cmd: Command) -> Result<()> {
    println!("==> {name}: {cmd:?}");
    let status = cmd.status().with_context(|| format!("start {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
