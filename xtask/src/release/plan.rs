//! `cargo xtask release <crate> <version> [--execute]`: the edits a release
//! makes (changelog, version, requirements on it), the checks, and the
//! publish order, printed; made only with `--execute`; never publishes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::changelog::{changelog_release, is_breaking_entry, today, unreleased_entries};
use super::check::check;
use super::manifest::{set_package_version, set_requirement};
use super::semver::released_versions;
use super::version::Version;
use crate::common::{cargo, step as run_step};
use crate::workspace::{Member, Workspace};

/// One file a release changes.
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
