//! `cargo xtask release-check` and `cargo xtask release <crate> <version>
//! [--execute]`: what a crate must pass before it is published, and the
//! mechanical part of a release. The policy is `docs/releasing.md`.
//!
//! release-check, for every publishable workspace member (`publish` unset):
//!
//! 1. `cargo deny check` (pinned, installed when missing): licenses, bans,
//!    sources with `deny.toml`, and RustSec advisories when the advisory
//!    database can be fetched (otherwise said loudly, never passed silently).
//! 2. `cargo package --workspace`: every crate packaged and its tarball built
//!    on its own, in dependency order, unpublished workspace dependencies
//!    taken from a local overlay (as the registry will see them).
//! 3. `cargo semver-checks` (pinned, installed when missing) against the
//!    crate's last release tag `<crate>-v<version>`, or before the first
//!    release against the previous commit; a crate that did not exist at the
//!    baseline is skipped with the reason printed.
//! 4. MSRV without the MSRV toolchain: a copy of the workspace resolved the
//!    way a user on the declared `rust-version` resolves it
//!    (`CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback`), every dependency's
//!    declared `rust-version` compared with ours, each crate checked there with
//!    default, no-default and all features, and clippy's `incompatible_msrv`
//!    lint for standard library items newer than the declared version.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cargo;

/// A cargo subcommand that xtask installs, pinned to one version.
struct Tool {
    krate: &'static str,
    subcommand: &'static str,
    version: &'static str,
}

/// 0.51 reads the rustdoc JSON formats 57 to 61 (Rust 1.95 writes 57).
const SEMVER_CHECKS: Tool = Tool {
    krate: "cargo-semver-checks",
    subcommand: "semver-checks",
    version: "0.51.0",
};

const CARGO_DENY: Tool = Tool {
    krate: "cargo-deny",
    subcommand: "deny",
    version: "0.20.2",
};

/// Overrides the semver baseline (a git revision) for every crate.
const BASELINE_ENV: &str = "HYDRATECACHE_SEMVER_BASELINE";
/// Set to 1 to fail, not skip, when the advisory database cannot be fetched.
const REQUIRE_ADVISORIES_ENV: &str = "HYDRATECACHE_REQUIRE_ADVISORIES";
/// Scratch space under the target directory.
const SCRATCH: &str = "target/release-check";

// ---------------------------------------------------------------------------
// The workspace as `cargo metadata` sees it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DepKind {
    Normal,
    Dev,
    Build,
}

#[derive(Debug, Clone)]
struct MemberDep {
    name: String,
    kind: DepKind,
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    version: String,
    /// The member's directory, relative to the workspace root.
    dir: PathBuf,
    publish: bool,
    /// Whether it has a library target (a binary-only crate's interface is
    /// its command line, which cargo-semver-checks does not see).
    has_lib: bool,
    rust_version: Option<String>,
    features: BTreeMap<String, Vec<String>>,
    /// Dependencies on other workspace members.
    deps: Vec<MemberDep>,
}

impl Member {
    fn manifest(&self) -> PathBuf {
        self.dir.join("Cargo.toml")
    }

    fn changelog(&self) -> PathBuf {
        self.dir.join("CHANGELOG.md")
    }

    /// Dependencies that end up in the published crate's graph.
    fn shipped_deps(&self) -> impl Iterator<Item = &str> {
        self.deps
            .iter()
            .filter(|d| d.kind != DepKind::Dev)
            .map(|d| d.name.as_str())
    }
}

struct Workspace {
    root: PathBuf,
    members: Vec<Member>,
}

impl Workspace {
    fn load() -> Result<Workspace> {
        let root = std::env::current_dir()?;
        let meta = cargo_json(&["metadata", "--format-version", "1", "--no-deps"])?;
        let packages = meta["packages"]
            .as_array()
            .context("cargo metadata: no packages")?;
        let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
        let mut members = Vec::new();
        for p in packages {
            let name = str_field(p, "name")?;
            let manifest = PathBuf::from(str_field(p, "manifest_path")?);
            let dir = manifest
                .parent()
                .and_then(|d| d.strip_prefix(&root).ok())
                .with_context(|| format!("{name}: manifest outside the workspace"))?
                .to_path_buf();
            // `publish`: null = anywhere, [] = nowhere, [..] = those registries.
            let publish = match &p["publish"] {
                Value::Null => true,
                Value::Array(regs) => regs.iter().any(|r| r == "crates-io"),
                _ => false,
            };
            let features = p["features"]
                .as_object()
                .map(|f| {
                    f.iter()
                        .map(|(k, v)| {
                            let list = v
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|s| s.as_str().map(String::from))
                                        .collect()
                                })
                                .unwrap_or_default();
                            (k.clone(), list)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let deps = p["dependencies"]
                .as_array()
                .map(|deps| {
                    deps.iter()
                        .filter_map(|d| {
                            let dep_name = d["name"].as_str()?;
                            if !names.contains(dep_name) || d["path"].is_null() {
                                return None;
                            }
                            let kind = match d["kind"].as_str() {
                                Some("dev") => DepKind::Dev,
                                Some("build") => DepKind::Build,
                                _ => DepKind::Normal,
                            };
                            Some(MemberDep {
                                name: dep_name.to_string(),
                                kind,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            members.push(Member {
                name: name.to_string(),
                version: str_field(p, "version")?.to_string(),
                dir,
                publish,
                has_lib: p["targets"].as_array().is_some_and(|t| {
                    t.iter().any(|t| {
                        t["kind"]
                            .as_array()
                            .is_some_and(|k| k.iter().any(|k| k == "lib" || k == "rlib"))
                    })
                }),
                rust_version: p["rust_version"].as_str().map(String::from),
                features,
                deps,
            });
        }
        Ok(Workspace { root, members })
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Publishable members, each after the members it depends on.
    fn publishable_in_order(&self) -> Result<Vec<&Member>> {
        let publishable: Vec<&Member> = self.members.iter().filter(|m| m.publish).collect();
        let mut done: Vec<&Member> = Vec::new();
        let mut left: Vec<&Member> = publishable.clone();
        left.sort_by(|a, b| a.name.cmp(&b.name));
        while !left.is_empty() {
            let ready = left.iter().position(|m| {
                m.shipped_deps().all(|d| {
                    done.iter().any(|x| x.name == d) || !publishable.iter().any(|x| x.name == d)
                })
            });
            let Some(i) = ready else {
                let names: Vec<&str> = left.iter().map(|m| m.name.as_str()).collect();
                bail!("dependency cycle among {names:?}");
            };
            done.push(left.remove(i));
        }
        for m in &done {
            for d in m.shipped_deps() {
                if self.member(d).is_some_and(|x| !x.publish) {
                    bail!(
                        "{} is published but depends on {d}, which has publish = false",
                        m.name
                    );
                }
            }
        }
        Ok(done)
    }

    /// Workspace members (transitively) depending on `name`, outside dev-dependencies.
    fn dependents(&self, name: &str) -> Vec<&Member> {
        let mut found: Vec<&Member> = Vec::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            for m in &self.members {
                if m.shipped_deps().any(|d| d == n) && !found.iter().any(|f| f.name == m.name) {
                    found.push(m);
                    frontier.push(m.name.clone());
                }
            }
        }
        found
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("cargo metadata: missing {key}"))
}

fn cargo_json(args: &[&str]) -> Result<Value> {
    cargo_json_in(args, None, &[])
}

fn cargo_json_in(args: &[&str], dir: Option<&Path>, env: &[(&str, &str)]) -> Result<Value> {
    let mut cmd = cargo(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parse the output of {cmd:?}"))
}

// ---------------------------------------------------------------------------
// release-check

#[derive(Default)]
struct Summary {
    rows: Vec<(String, String, Duration)>,
    skipped: Vec<String>,
}

impl Summary {
    fn passed(&mut self, name: &str, note: impl Into<String>, started: Instant) {
        self.rows
            .push((name.to_string(), note.into(), started.elapsed()));
    }

    fn skipped(&mut self, what: String) {
        println!("xtask release-check: SKIPPED {what}");
        self.skipped.push(what);
    }
}

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
            if let Some(line) = line {
                if line.contains("path") && !line.contains("version") {
                    problems.push(format!(
                        "{}: dependency {d} has a path but no version",
                        m.name
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("release metadata incomplete:\n  {}", problems.join("\n  "));
    }
    println!("==> metadata: description, readme, license, repository, rust-version, docs.rs metadata, README.md, CHANGELOG.md and both license texts present");
    Ok(())
}

fn run_step(name: &str, mut cmd: Command) -> Result<()> {
    println!("==> {name}: {cmd:?}");
    let status = cmd.status().with_context(|| format!("start {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// 1. Package every publishable crate and build each tarball on its own.
fn package(ws: &Workspace, summary: &mut Summary) -> Result<()> {
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
    run_step("package", cmd)?;
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

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

// ---------------------------------------------------------------------------
// 2. Public API against the baseline.

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
fn released_versions(name: &str) -> Result<Vec<Version>> {
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

/// Published crates that promise no API stability, so the API check skips them.
const SEMVER_EXEMPT: &[&str] = &["hydratecache-conformance"];

fn semver(ws: &Workspace, crates: &[&Member], summary: &mut Summary) -> Result<()> {
    let started = Instant::now();
    ensure_tool(&SEMVER_CHECKS)?;
    // (baseline rev, release type) -> crates, so one run covers several crates.
    let mut groups: BTreeMap<(String, Option<&str>), Vec<&str>> = BTreeMap::new();
    let mut notes = Vec::new();
    for m in crates {
        if !m.has_lib {
            summary.skipped(format!(
                "semver {}: binary only; its interface is the command line, which \
                 cargo-semver-checks does not see (docs/releasing.md: reviewed by hand)",
                m.name
            ));
            continue;
        }
        if SEMVER_EXEMPT.contains(&m.name.as_str()) {
            summary.skipped(format!(
                "semver {}: exempt from semver (its README says so: a test suite may tighten in any release)",
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
        run_step("semver-checks", cmd)?;
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

// ---------------------------------------------------------------------------
// 3. Dependencies: licenses, duplicates, sources, advisories.

fn deny(summary: &mut Summary) -> Result<()> {
    let started = Instant::now();
    ensure_tool(&CARGO_DENY)?;
    run_step(
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
        run_step(
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
        run_step(
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

// ---------------------------------------------------------------------------
// 4. MSRV.

fn msrv(ws: &Workspace, crates: &[&Member], summary: &mut Summary) -> Result<()> {
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
    run_step(
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
            run_step(&format!("msrv: {} ({what})", m.name), cmd)?;
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
        run_step("msrv: clippy::incompatible_msrv", clippy)?;
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

// ---------------------------------------------------------------------------
// Pinned tools.

fn ensure_tool(tool: &Tool) -> Result<()> {
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
    run_step(&format!("install {spec}"), cmd)?;
    println!("xtask: installed {spec} in {:.0?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------
// Versions, changelogs, dates.

/// A semantic version (pre-release and build metadata kept as text; a
/// pre-release sorts before its release).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: String,
}

impl Version {
    fn parse(s: &str) -> Result<Version> {
        let s = s.trim();
        let core = s.split('+').next().unwrap_or(s);
        let (nums, pre) = core.split_once('-').unwrap_or((core, ""));
        let parts: Vec<&str> = nums.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            bail!("{s:?} is not a version x.y.z");
        };
        let num = |p: &str| {
            p.parse::<u64>()
                .with_context(|| format!("{s:?} is not a version x.y.z"))
        };
        Ok(Version {
            major: num(major)?,
            minor: num(minor)?,
            patch: num(patch)?,
            pre: pre.to_string(),
        })
    }

    /// `1.85` or `1.85.0`, as in `rust-version`.
    fn parse_partial(s: &str) -> Result<Version> {
        match s.split('.').count() {
            1 => Version::parse(&format!("{s}.0.0")),
            2 => Version::parse(&format!("{s}.0")),
            _ => Version::parse(s),
        }
    }

    /// Whether `next` may break what `self` offered, by Cargo's rules: the
    /// left-most non-zero component changed.
    fn is_breaking_to(&self, next: &Version) -> bool {
        if self.major != next.major {
            return true;
        }
        if self.major == 0 && self.minor != next.minor {
            return true;
        }
        if self.major == 0 && self.minor == 0 && self.patch != next.patch {
            return true;
        }
        !next.pre.is_empty()
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

/// The body of `## [Unreleased]`: (start of the heading line, start of the
/// body, end of the body) as byte offsets.
fn unreleased_section(text: &str) -> Option<(usize, usize, usize)> {
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
fn unreleased_entries(text: &str) -> Vec<String> {
    let Some((_, body, end)) = unreleased_section(text) else {
        return Vec::new();
    };
    text[body..end]
        .lines()
        .filter(|l| l.trim_start().starts_with("- ") || l.trim_start().starts_with("* "))
        .map(|l| l.trim().to_string())
        .collect()
}

fn is_breaking_entry(entry: &str) -> bool {
    let e = entry.trim_start();
    let item = e
        .strip_prefix("- ")
        .or_else(|| e.strip_prefix("* "))
        .unwrap_or(e);
    item.trim_start()
        .to_ascii_lowercase()
        .starts_with("**breaking")
}

fn changelog_declares_breaking(m: &Member) -> Result<bool> {
    let text = std::fs::read_to_string(m.changelog())
        .with_context(|| format!("read {}", m.changelog().display()))?;
    Ok(unreleased_entries(&text)
        .iter()
        .any(|e| is_breaking_entry(e)))
}

/// Moves the Unreleased entries under `## [version] - date`, leaving an empty
/// Unreleased section above it.
fn changelog_release(text: &str, version: &Version, date: &str) -> Result<String> {
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
fn today() -> String {
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

// ---------------------------------------------------------------------------
// Manifest edits (line based, so formatting and comments stay).

/// Sets `version = "..."` in the `[package]` table.
fn set_package_version(manifest: &str, version: &Version) -> Result<String> {
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
fn set_requirement(
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

// ---------------------------------------------------------------------------
// release <crate> <version> [--execute]

struct Edit {
    path: PathBuf,
    before: String,
    after: String,
    what: Vec<String>,
}

/// Bumps a crate, moves its changelog, checks, and prints the publish order.
pub(crate) fn release(krate: &str, version: &str, rest: &[&str]) -> Result<()> {
    let execute = match rest {
        [] => false,
        ["--execute"] => true,
        other => bail!(
            "unexpected arguments {other:?}: expected `release <crate> <version> [--execute]`"
        ),
    };
    if execute && std::env::var_os("CI").is_some() {
        bail!(
            "`release --execute` does not run in CI (CI is set): releases are made by a maintainer"
        );
    }
    let ws = Workspace::load()?;
    let Some(m) = ws.member(krate) else {
        let names: Vec<&str> = ws
            .members
            .iter()
            .filter(|m| m.publish)
            .map(|m| m.name.as_str())
            .collect();
        bail!("no crate {krate:?} in the workspace; publishable: {names:?}");
    };
    if !m.publish {
        bail!("{krate} has publish = false");
    }
    let new = Version::parse(version)?;
    let old = Version::parse(&m.version)?;
    let released = released_versions(krate)?;
    let old_released = released.contains(&old);
    if new < old || (new == old && old_released) {
        bail!(
            "{krate} is at {old}{}: the new version must be higher",
            if old_released { " (released)" } else { "" }
        );
    }
    if let Some(last) = released.last() {
        if &new <= last {
            bail!("{krate} {last} is already released (tag {krate}-v{last})");
        }
    }
    // Compared with the last release, or before the first one with the
    // version in the manifest (what cargo-semver-checks compares with too);
    // the first release of the manifest's version breaks nothing.
    let reference = released.last().unwrap_or(&old).clone();
    let first_release = released.is_empty() && new == old;
    let breaking = !first_release && reference.is_breaking_to(&new);

    // The changelog.
    let changelog_path = m.changelog();
    let changelog = std::fs::read_to_string(&changelog_path)
        .with_context(|| format!("read {}", changelog_path.display()))?;
    let entries = unreleased_entries(&changelog);
    if entries.is_empty() {
        bail!(
            "{}: the Unreleased section lists no change; write what this release changes first",
            changelog_path.display()
        );
    }
    let declares_breaking = entries.iter().any(|e| is_breaking_entry(e));
    if declares_breaking && !breaking && !first_release {
        let next = if reference.major == 0 {
            format!("{}.{}.0", reference.major, reference.minor + 1)
        } else {
            format!("{}.0.0", reference.major + 1)
        };
        bail!(
            "CHANGELOG.md records a **Breaking** change but {reference} -> {new} is not a \
             breaking version bump (next breaking version: {next})"
        );
    }
    let date = today();
    let mut edits = vec![Edit {
        path: changelog_path.clone(),
        after: changelog_release(&changelog, &new, &date)?,
        before: changelog,
        what: vec![format!(
            "move {} Unreleased entries under `## [{new}] - {date}`",
            entries.len()
        )],
    }];

    // The crate's version.
    if new != old {
        let path = m.manifest();
        let before = std::fs::read_to_string(&path)?;
        let after = set_package_version(&before, &new)?;
        edits.push(Edit {
            path,
            before,
            after,
            what: vec![format!("version {old} -> {new}")],
        });
        // Requirements on it: the workspace table and any member manifest.
        let mut manifests = vec![PathBuf::from("Cargo.toml")];
        manifests.extend(
            ws.members
                .iter()
                .filter(|x| x.name != krate)
                .map(Member::manifest),
        );
        for path in manifests {
            let before = std::fs::read_to_string(&path)?;
            let (after, changes) = set_requirement(&before, krate, &new);
            if changes.is_empty() {
                continue;
            }
            edits.push(Edit {
                path,
                before,
                after,
                what: changes
                    .iter()
                    .map(|(a, b)| format!("{a}  ->  {b}"))
                    .collect(),
            });
        }
    }

    // Publish order: unreleased workspace dependencies first.
    let order = ws.publishable_in_order()?;
    let needed: BTreeSet<String> = {
        let mut needed = BTreeSet::new();
        let mut stack = vec![krate.to_string()];
        while let Some(n) = stack.pop() {
            let Some(x) = ws.member(&n) else { continue };
            for d in x.shipped_deps() {
                let Some(dep) = ws.member(d) else { continue };
                let dep_version = Version::parse(&dep.version)?;
                if !released_versions(d)?.contains(&dep_version) && needed.insert(d.to_string()) {
                    stack.push(d.to_string());
                }
            }
        }
        needed
    };
    let dependents: Vec<&str> = ws
        .dependents(krate)
        .into_iter()
        .filter(|d| d.publish)
        .map(|d| d.name.as_str())
        .collect();

    println!(
        "release plan: {krate} {old} -> {new}{}{}",
        if breaking { " (breaking)" } else { "" },
        if execute {
            ""
        } else {
            "  [dry run: nothing is changed; add --execute]"
        }
    );
    println!();
    for e in &edits {
        println!("  edit {}:", e.path.display());
        for w in &e.what {
            println!("    {w}");
        }
    }
    println!("  then: cargo update --workspace (Cargo.lock: the workspace's own versions only)");
    println!("  then: cargo xtask release-check");
    println!();
    println!(
        "publish order (never run by xtask: a maintainer runs these from a clean, committed tree):"
    );
    let mut step = 1;
    for x in &order {
        if needed.contains(&x.name) {
            println!(
                "  {step}. cargo publish -p {}    # {} {} has no tag {}-v{}: not released yet",
                x.name, x.name, x.version, x.name, x.version
            );
            step += 1;
        }
    }
    println!("  {step}. cargo publish -p {krate}    # {new}");
    println!();
    println!(
        "afterwards: git tag {krate}-v{new} (and a tag per crate published above), push the tags"
    );
    if !dependents.is_empty() {
        if breaking {
            println!(
                "dependents {} now require {krate} {new}, a breaking release: release each of them \
                 once it builds against it, with a breaking version of its own if its public \
                 API exposes {krate}'s types (every adapter's exposes core's)",
                dependents.join(", ")
            );
        } else {
            println!(
                "dependents {} will require {krate} >= {new} from their next release on; they need no release now",
                dependents.join(", ")
            );
        }
    }
    if !execute {
        return Ok(());
    }

    for e in &edits {
        // Nothing else changed the file since the plan was made.
        if std::fs::read_to_string(&e.path)? != e.before {
            bail!("{} changed while planning; run again", e.path.display());
        }
    }
    for e in &edits {
        std::fs::write(&e.path, &e.after).with_context(|| format!("write {}", e.path.display()))?;
    }
    run_step("Cargo.lock", cargo(&["update", "--workspace"]))?;
    if let Err(err) = check() {
        println!(
            "xtask release: the checks failed; the edits above are left in place for you to fix \
             or revert (git diff shows them)"
        );
        return Err(err);
    }
    if needed.is_empty() {
        // Every workspace dependency is released: build the crate the way
        // the registry will, against the published versions only.
        run_step(
            "package alone, against published dependencies",
            cargo(&["package", "-p", krate, "--allow-dirty"]),
        )?;
    }
    println!("xtask release: {krate} {new} is ready; commit, then publish in the order above");
    Ok(())
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
    fn versions_order_and_breaking() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("0.1.10") > v("0.1.9"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert!(v("0.1.0").is_breaking_to(&v("0.2.0")));
        assert!(!v("0.1.0").is_breaking_to(&v("0.1.1")));
        assert!(!v("1.2.0").is_breaking_to(&v("1.3.0")));
        assert!(v("1.2.0").is_breaking_to(&v("2.0.0")));
        assert!(v("0.0.1").is_breaking_to(&v("0.0.2")));
        assert_eq!(Version::parse_partial("1.85").unwrap(), v("1.85.0"));
        assert!(Version::parse("1.2").is_err());
    }

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
        let path_only = "[dev-dependencies]\nhydratecache-core = { workspace = true, features = [\"local-cache\"] }\n";
        assert!(set_requirement(
            path_only,
            "hydratecache-core",
            &Version::parse("0.2.0").unwrap()
        )
        .1
        .is_empty());
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
