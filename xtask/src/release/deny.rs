//! Step 3 of release-check: dependencies' licenses, duplicates, sources and
//! RustSec advisories with cargo-deny.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::common::{cargo_home, Summary};
use super::tools::{ensure_tool, CARGO_DENY};
use crate::common::{cargo, step};

/// Set to 1 to fail, not skip, when the advisory database cannot be fetched.
const REQUIRE_ADVISORIES_ENV: &str = "HYDRATECACHE_REQUIRE_ADVISORIES";

pub(super) fn deny(summary: &mut Summary) -> Result<()> {
    let started = Instant::now();
    ensure_tool(&CARGO_DENY)?;
    step(
        "cargo-deny",
        cargo(&["deny", "check", "licenses", "bans", "sources"]),
    )?;
    summary.passed(
        "deny",
        "licenses, bans (duplicates), sources: clean with deny.toml",
        started,
    );

    let started = Instant::now();
    println!("==> advisories: fetching the RustSec advisory database");
    let fetched = cargo(&["deny", "fetch", "db"])
        .status()
        .context("run cargo deny fetch db")?
        .success();
    if fetched {
        step(
            "advisories",
            cargo(&["deny", "--offline", "check", "advisories"]),
        )?;
        summary.passed(
            "advisories",
            "RustSec advisories checked with a fresh database",
            started,
        );
        return Ok(());
    }
    if std::env::var(REQUIRE_ADVISORIES_ENV).is_ok_and(|v| v == "1") {
        bail!("the RustSec advisory database could not be fetched and {REQUIRE_ADVISORIES_ENV}=1");
    }
    // A copy fetched earlier (on a machine with access) is better than none,
    // as long as its age is said.
    if let Some(age) = advisory_db_age() {
        println!(
            "xtask release-check: the advisory database could not be fetched; using the copy fetched {} ago",
            human(age)
        );
        step(
            "advisories (cached database)",
            cargo(&["deny", "--offline", "check", "advisories"]),
        )?;
        summary.passed(
            "advisories",
            format!(
                "checked against a cached database {} old (fetch failed)",
                human(age)
            ),
            started,
        );
        return Ok(());
    }
    summary.skipped(
        "advisories: advisory database unreachable: skipped (RustSec advisories NOT checked; \
         run `cargo deny check advisories` where the database can be fetched)"
            .to_string(),
    );
    Ok(())
}

/// Age of the newest advisory database under `$CARGO_HOME/advisory-dbs`.
fn advisory_db_age() -> Option<Duration> {
    let home = cargo_home()?;
    let dbs = std::fs::read_dir(home.join("advisory-dbs")).ok()?;
    dbs.filter_map(|e| e.ok())
        .filter(|e| e.path().join("crates").is_dir())
        .filter_map(|e| {
            // FETCH_HEAD or HEAD is rewritten on every fetch.
            let git_dir = e.path().join(".git");
            ["FETCH_HEAD", "HEAD"]
                .iter()
                .filter_map(|f| std::fs::metadata(git_dir.join(f)).ok()?.modified().ok())
                .max()
        })
        .max()
        .and_then(|t| t.elapsed().ok())
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}
