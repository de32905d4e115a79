//! Step 2 of release-check: each crate's public API against its baseline
//! (last release tag, or the previous commit before the first release) with
//! cargo-semver-checks; also the release tags themselves.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use super::changelog::changelog_declares_breaking;
use super::common::{Summary, SCRATCH};
use super::tools::{ensure_tool, SEMVER_CHECKS};
use super::version::Version;
use crate::common::{cargo, step};
use crate::workspace::{Member, Workspace};

/// Overrides the semver baseline (a git revision) for every crate.
const BASELINE_ENV: &str = "HYDRATECACHE_SEMVER_BASELINE";

/// Publishable crates whose API is not held to semver, each with the reason
/// printed when it is skipped (docs/releasing.md).
const SEMVER_EXEMPT: &[(&str, &str)] = &[(
    "hydratecache-conformance",
    "exempt from semver: a test suite for transport authors (docs/releasing.md)",
)];

fn git(args: &[&str]) -> Result<Option<String>> {
    let out = Command::new("git")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .context("run git")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// Versions released so far, from the tags `<crate>-v<version>`.
pub(super) fn released_versions(name: &str) -> Result<Vec<Version>> {
    let tags = git(&["tag", "--list", &format!("{name}-v*")])?.unwrap_or_default();
    let mut versions: Vec<Version> = tags
        .lines()
        .filter_map(|t| t.strip_prefix(&format!("{name}-v")))
        .filter_map(|v| Version::parse(v).ok())
        .collect();
    versions.sort();
    Ok(versions)
}

/// The git revision a crate's API is compared with, and why.
fn baseline(m: &Member) -> Result<std::result::Result<(String, String), String>> {
    if let Ok(rev) = std::env::var(BASELINE_ENV) {
        return Ok(Ok((rev.clone(), format!("{BASELINE_ENV}={rev}"))));
    }
    // The newest release tag reachable from HEAD.
    let merged = git(&[
        "tag",
        "--merged",
        "HEAD",
        "--list",
        &format!("{}-v*", m.name),
    ])?
    .unwrap_or_default();
    let newest = merged
        .lines()
        .filter_map(|t| {
            Some((
                Version::parse(t.strip_prefix(&format!("{}-v", m.name))?).ok()?,
                t,
            ))
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    if let Some((v, tag)) = newest {
        return Ok(Ok((
            tag.to_string(),
            format!("last release {v} (tag {tag})"),
        )));
    }
    match git(&["rev-parse", "--verify", "--quiet", "HEAD~1^{commit}"])? {
        Some(sha) => Ok(Ok((
            "HEAD~1".to_string(),
            format!(
                "never released: the previous commit {}",
                sha.get(..10).unwrap_or(&sha)
            ),
        ))),
        None => Ok(Err(
            "no release tag and no previous commit (first commit or shallow clone)".into(),
        )),
    }
}

pub(super) fn semver(ws: &Workspace, crates: &[&Member], summary: &mut Summary) -> Result<()> {
    let started = Instant::now();
    ensure_tool(&SEMVER_CHECKS)?;
    // (baseline rev, release type) -> crates, so one run covers several crates.
    let mut groups: BTreeMap<(String, Option<&str>), Vec<&str>> = BTreeMap::new();
    let mut notes = Vec::new();
    for m in crates {
        if let Some((_, why)) = SEMVER_EXEMPT.iter().find(|(name, _)| *name == m.name) {
            summary.skipped(format!("semver {}: {why}", m.name));
            continue;
        }
        if !m.has_lib {
            summary.skipped(format!(
                "semver {}: binary only; its interface is the command line, which \
                 cargo-semver-checks does not see (docs/releasing.md: reviewed by hand)",
                m.name
            ));
            continue;
        }
        let (rev, why) = match baseline(m)? {
            Ok(b) => b,
            Err(reason) => {
                summary.skipped(format!("semver {}: {reason}", m.name));
                continue;
            }
        };
        let manifest = m.manifest();
        let at_baseline = format!("{rev}:{}", manifest.display());
        if git(&["cat-file", "-e", &at_baseline])?.is_none() {
            summary.skipped(format!(
                "semver {}: it did not exist at the baseline ({why}), so it has no earlier API to break",
                m.name
            ));
            continue;
        }
        let baseline_text = git(&["show", &at_baseline])?.unwrap_or_default();
        if baseline_text
            .lines()
            .any(|l| l.trim().replace(' ', "") == "publish=false")
        {
            summary.skipped(format!(
                "semver {}: it was not publishable at the baseline ({why})",
                m.name
            ));
            continue;
        }
        let breaking = changelog_declares_breaking(m)?;
        let release_type = breaking.then_some("major");
        println!(
            "==> semver {}: baseline {why}{}",
            m.name,
            if breaking {
                "; CHANGELOG's Unreleased section records a **Breaking** change, so breaking changes are allowed"
            } else {
                ""
            }
        );
        notes.push(format!(
            "{} vs {rev}{}",
            m.name,
            if breaking {
                " (breaking allowed by CHANGELOG)"
            } else {
                ""
            }
        ));
        groups.entry((rev, release_type)).or_default().push(&m.name);
    }
    for ((rev, release_type), names) in &groups {
        let mut cmd = cargo(&["semver-checks", "check-release", "--baseline-rev", rev]);
        for n in names {
            cmd.args(["--package", n]);
        }
        if let Some(rt) = release_type {
            cmd.args(["--release-type", rt]);
        }
        // One target directory for every crate and both sides, apart from
        // the main one (rustdoc JSON needs different flags): dependencies are
        // checked once, not once per crate.
        cmd.env(
            "CARGO_TARGET_DIR",
            ws.root.join(SCRATCH).join("semver-target"),
        );
        step("semver-checks", cmd)?;
    }
    summary.passed(
        "semver",
        if notes.is_empty() {
            "no crate had a baseline".to_string()
        } else {
            format!("no unrecorded breaking change ({})", notes.join(", "))
        },
        started,
    );
    Ok(())
}
