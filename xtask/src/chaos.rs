//! `cargo xtask chaos <redis|nats|postgres|kafka|all> [--duration 60s]
//! [--seed N] [--repair clear|reload|ignore] [--liveness on|off] [--mode pubsub|resumable]
//! [--bound-ms 1000]`: the chaos run of
//! `crates/hydratecache-chaos` (release build), on private servers; prints a
//! table per backend and writes `target/chaos/summary.json`. Fails, naming
//! the seed and the first violated invariant, when an invariant broke.
//!
//! [`smoke`] is the short run `cargo xtask ci` does (Redis and PostgreSQL,
//! 15 s each, a dev build that reuses the CI's test artifacts).

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::provision;

const OUT: &str = "target/chaos";

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo xtask chaos ...`.
pub(crate) fn run(args: &[&str]) -> Result<()> {
    let Some((backend, options)) = args.split_first() else {
        bail!("usage: cargo xtask chaos <redis|nats|postgres|kafka|all> [--duration 60s] [--seed N] [--repair clear|reload|ignore] [--liveness on|off] [--bound-ms 1000] [--mode pubsub|resumable]");
    };
    let backends = crate::common::selected(backend)?;
    if backends.is_empty() {
        bail!("no adapter crates in this checkout");
    }
    let mut pass = Vec::new();
    let mut it = options.iter();
    while let Some(option) = it.next() {
        match *option {
            "--duration" | "--seed" | "--repair" | "--keys" | "--instances" | "--write-rate"
            | "--reads-per-ms" | "--window-ms" | "--quiet" | "--memory-limit-mb" | "--bound-ms"
            | "--liveness" | "--mode" => {
                let value = it
                    .next()
                    .with_context(|| format!("{option} needs a value"))?;
                pass.push(option.to_string());
                pass.push(value.to_string());
            }
            other => bail!("unknown option {other:?} for cargo xtask chaos"),
        }
    }
    let command = format!("cargo xtask chaos {}", args.join(" "));
    drive(&backends, &pass, &command, true)
}

/// The CI smoke: about 15 s of faults on Redis and on PostgreSQL.
pub(crate) fn smoke() -> Result<()> {
    let backends: Vec<&str> = crate::common::selected("all")?
        .into_iter()
        .filter(|b| *b == "redis" || *b == "postgres")
        .collect();
    if backends.is_empty() {
        return Ok(());
    }
    let pass = ["--duration", "15s"].map(String::from).to_vec();
    drive(&backends, &pass, "cargo xtask ci (chaos smoke)", false)
}

fn drive(backends: &[&str], pass: &[String], command: &str, release: bool) -> Result<()> {
    // The source of truth is always a private PostgreSQL.
    provision::ensure("postgres")?;
    for b in backends {
        provision::ensure(b)?;
    }
    let mut build = Command::new(cargo());
    if release {
        build.args(["build", "--release", "-p", "hydratecache-chaos"]);
    } else {
        // The same features and profile as the CI's tests: their artifacts are reused.
        build.args([
            "build",
            "--workspace",
            "--all-features",
            "--bin",
            "hydratecache-chaos",
        ]);
    }
    println!("==> chaos build: {build:?}");
    if !build.status().context("run cargo build")?.success() {
        bail!("building hydratecache-chaos failed");
    }
    let binary = crate::common::built_binary(
        if release { "release" } else { "debug" },
        "hydratecache-chaos",
    );
    let mut cmd = Command::new(&binary);
    cmd.args(["drive", "--backend", &backends.join(","), "--out", OUT])
        .args(["--command", command])
        .args(pass);
    println!("==> chaos: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("run {}", binary.display()))?;
    if !status.success() {
        bail!("chaos run failed (see the seed and the first violated invariant above; {OUT}/summary.json)");
    }
    Ok(())
}
