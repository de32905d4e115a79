//! The workspace as `cargo metadata` sees it: its members, what they publish
//! and how they depend on each other. Every list of crates xtask needs comes
//! from here, so a new member is picked up without editing xtask.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::common::cargo;

/// The table a dependency is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DepKind {
    Normal,
    Dev,
    Build,
}

/// A dependency on another workspace member.
#[derive(Debug, Clone)]
pub(crate) struct MemberDep {
    pub(crate) name: String,
    pub(crate) kind: DepKind,
}

/// One workspace member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) version: String,
    /// The member's directory, relative to the workspace root.
    pub(crate) dir: PathBuf,
    pub(crate) publish: bool,
    /// Whether it has a library target (a binary-only crate's interface is
    /// its command line, which cargo-semver-checks does not see).
    pub(crate) has_lib: bool,
    /// Its bench targets (`benches/`), which CI builds.
    pub(crate) benches: Vec<String>,
    /// Whether it has integration tests (`tests/`).
    pub(crate) has_tests: bool,
    pub(crate) rust_version: Option<String>,
    pub(crate) features: BTreeMap<String, Vec<String>>,
    /// Dependencies on other workspace members.
    pub(crate) deps: Vec<MemberDep>,
}

impl Member {
    /// Its `Cargo.toml`, relative to the workspace root.
    pub(crate) fn manifest(&self) -> PathBuf {
        self.dir.join("Cargo.toml")
    }

    /// Its `CHANGELOG.md`, relative to the workspace root.
    pub(crate) fn changelog(&self) -> PathBuf {
        self.dir.join("CHANGELOG.md")
    }

    /// Dependencies that end up in the published crate's graph.
    pub(crate) fn shipped_deps(&self) -> impl Iterator<Item = &str> {
        self.deps
            .iter()
            .filter(|d| d.kind != DepKind::Dev)
            .map(|d| d.name.as_str())
    }
}

/// The workspace root and its members.
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    pub(crate) members: Vec<Member>,
}

impl Workspace {
    /// Reads the workspace of the current directory.
    pub(crate) fn load() -> Result<Workspace> {
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
                has_lib: !targets(p, "lib").is_empty() || !targets(p, "rlib").is_empty(),
                benches: targets(p, "bench"),
                has_tests: !targets(p, "test").is_empty(),
                rust_version: p["rust_version"].as_str().map(String::from),
                features,
                deps,
            });
        }
        Ok(Workspace { root, members })
    }

    /// The member called `name`.
    pub(crate) fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Publishable members, each after the members it depends on.
    pub(crate) fn publishable_in_order(&self) -> Result<Vec<&Member>> {
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
    pub(crate) fn dependents(&self, name: &str) -> Vec<&Member> {
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

/// The names of the package's targets of this kind.
fn targets(p: &Value, kind: &str) -> Vec<String> {
    p["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == kind))
        })
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("cargo metadata: missing {key}"))
}

fn cargo_json(args: &[&str]) -> Result<Value> {
    cargo_json_in(args, None, &[])
}

/// `cargo <args>` parsed as JSON, run in `dir` with `env` added.
pub(crate) fn cargo_json_in(
    args: &[&str],
    dir: Option<&Path>,
    env: &[(&str, &str)],
) -> Result<Value> {
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
