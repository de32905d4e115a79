//! `cargo xtask loc [--cycles] [--json]`: the size of each workspace member's
//! `src/` (files, lines, code, doc and comments, blank, test modules, its
//! largest file) or, with `--cycles`, the import cycles between a crate's
//! files. How lines are told apart is in `scan.rs`, what counts as a use in
//! `cycles.rs`; both read the text, without compiling it.

mod cycles;
mod scan;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::workspace::Workspace;
use cycles::{Edge, Node};
use scan::{Kind, Scanned};

/// Line counts of one member's `src/`.
#[derive(Debug, Default, Clone)]
struct Counts {
    files: usize,
    lines: usize,
    /// Non-blank lines outside comments and test code.
    code: usize,
    /// Lines holding only doc or other comments, outside test code.
    comment: usize,
    /// Blank lines outside test code.
    blank: usize,
    /// Lines of test code (`#[cfg(test)]` items and their files).
    test: usize,
    /// The longest file: path relative to the member, lines.
    largest: Option<(String, usize)>,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.files += other.files;
        self.lines += other.lines;
        self.code += other.code;
        self.comment += other.comment;
        self.blank += other.blank;
        self.test += other.test;
    }

    fn json(&self) -> Value {
        json!({
            "files": self.files,
            "lines": self.lines,
            "code": self.code,
            "doc_comment": self.comment,
            "blank": self.blank,
            "test": self.test,
            "largest_file": self.largest.as_ref().map(|(p, _)| p),
            "largest_file_lines": self.largest.as_ref().map(|(_, n)| n),
        })
    }
}

/// One source file of a member, read.
struct File {
    /// Relative to the member's directory, `/`-separated.
    path: String,
    /// Relative to `src/`.
    module: Vec<String>,
    scanned: Scanned,
    /// Under a `#[cfg(test)] mod x;`: all of it is test code.
    test_only: bool,
}

/// Runs the task.
pub(crate) fn run(args: &[&str]) -> Result<()> {
    let mut cycles_mode = false;
    let mut json_mode = false;
    let mut at = None;
    let mut args = args.iter();
    while let Some(a) = args.next() {
        match *a {
            "--cycles" => cycles_mode = true,
            "--json" => json_mode = true,
            "--at" => at = Some(*args.next().context("--at needs a git revision")?),
            other => {
                bail!(
                    "unexpected argument {other:?}: expected `loc [--cycles] [--json] [--at REV]`"
                )
            }
        }
    }
    if let Some(rev) = at {
        // Another commit's tree, to compare: its files, read as they are there.
        std::env::set_current_dir(checkout(rev)?)?;
    }
    let ws = Workspace::load()?;
    let mut members: Vec<(String, PathBuf)> = ws
        .members
        .iter()
        .map(|m| (m.name.clone(), m.dir.clone()))
        .collect();
    members.sort_by(|a, b| a.1.cmp(&b.1));
    let mut read = Vec::new();
    for (name, dir) in members {
        let files = read_member(&ws.root.join(&dir))?;
        read.push((name, files));
    }
    if cycles_mode {
        report_cycles(&read, json_mode)
    } else {
        report_counts(&read, json_mode);
        Ok(())
    }
}

/// `rev`'s tree, unpacked under `target/loc/` (`git archive`).
fn checkout(rev: &str) -> Result<PathBuf> {
    let dir = std::env::current_dir()?
        .join("target/loc")
        .join(rev.replace('/', "_"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let archive = std::process::Command::new("git")
        .args(["archive", "--format=tar", rev])
        .output()
        .context("run git archive")?;
    if !archive.status.success() {
        bail!(
            "git archive {rev} failed: {}",
            String::from_utf8_lossy(&archive.stderr).trim()
        );
    }
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-C"])
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("run tar")?;
    std::io::Write::write_all(tar.stdin.as_mut().context("tar's stdin")?, &archive.stdout)?;
    drop(tar.stdin.take());
    if !tar.wait()?.success() {
        bail!("unpacking {rev} failed");
    }
    Ok(dir)
}

/// Every `.rs` file under `dir/src`, read, test files marked.
fn read_member(dir: &Path) -> Result<Vec<File>> {
    let src = dir.join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths)?;
    paths.sort();
    let mut files = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        let under_src = slash_path(p.strip_prefix(&src).unwrap_or(&p));
        files.push(File {
            path: format!("src/{under_src}"),
            module: cycles::module_path(&under_src),
            scanned: Scanned::new(&text),
            test_only: false,
        });
    }
    // Files of modules declared under `#[cfg(test)]`, and their children.
    let test_mods: Vec<Vec<String>> = files
        .iter()
        .flat_map(|f| {
            f.scanned.test_mods.iter().map(|m| {
                let mut path = f.module.clone();
                path.push(m.clone());
                path
            })
        })
        .collect();
    for f in &mut files {
        f.test_only = test_mods.iter().any(|t| f.module.starts_with(t));
    }
    Ok(files)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn slash_path(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn count(files: &[File]) -> Counts {
    let mut c = Counts::default();
    for f in files {
        let s = &f.scanned;
        let lines = s.kinds.len();
        c.files += 1;
        c.lines += lines;
        for (kind, test) in s.kinds.iter().zip(&s.test) {
            if *test || f.test_only {
                c.test += 1;
                continue;
            }
            match kind {
                Kind::Code => c.code += 1,
                Kind::Comment => c.comment += 1,
                Kind::Blank => c.blank += 1,
            }
        }
        if c.largest.as_ref().is_none_or(|(_, n)| lines > *n) {
            c.largest = Some((f.path.clone(), lines));
        }
    }
    c
}

fn report_counts(members: &[(String, Vec<File>)], json_mode: bool) {
    let rows: Vec<(&str, Counts)> = members
        .iter()
        .map(|(name, files)| (name.as_str(), count(files)))
        .collect();
    let mut total = Counts::default();
    for (_, c) in &rows {
        total.add(c);
    }
    if json_mode {
        let crates: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(name, c)| (name.to_string(), c.json()))
            .collect();
        let out = json!({ "crates": crates, "total": total.json() });
        println!("{out:#}");
        return;
    }
    println!(
        "| crate | files | lines | code | doc/comment | blank | test | largest file (lines) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (name, c) in &rows {
        let largest = c
            .largest
            .as_ref()
            .map_or_else(String::new, |(p, n)| format!("{p} ({n})"));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {largest} |",
            c.files, c.lines, c.code, c.comment, c.blank, c.test
        );
    }
    println!(
        "| total | {} | {} | {} | {} | {} | {} | |",
        total.files, total.lines, total.code, total.comment, total.blank, total.test
    );
}

fn report_cycles(members: &[(String, Vec<File>)], json_mode: bool) -> Result<()> {
    let mut all = serde_json::Map::new();
    let mut found = 0;
    for (name, files) in members {
        // Test code is left out: only what the crate builds into its users'.
        let nodes: Vec<Node> = files
            .iter()
            .filter(|f| !f.test_only)
            .map(|f| Node {
                path: f.path.clone(),
                module: f.module.clone(),
                clean: f.scanned.clean.clone(),
            })
            .collect();
        let edges = cycles::edges(&nodes);
        let components = cycles::cycles(nodes.len(), &edges);
        found += components.len();
        let described: Vec<Vec<String>> = components
            .iter()
            .map(|c| describe(c, &nodes, &edges))
            .collect();
        if json_mode {
            all.insert(name.clone(), json!(described));
            continue;
        }
        if described.is_empty() {
            println!("{name}: no import cycle between its {} files", nodes.len());
        }
        for lines in &described {
            println!("{name}: import cycle:");
            for l in lines {
                println!("    {l}");
            }
        }
    }
    if json_mode {
        println!("{:#}", Value::Object(all));
    }
    if found > 0 {
        bail!("{found} import cycle(s) between files");
    }
    Ok(())
}

/// The uses within one cycle, `a.rs -> b.rs (crate::b::X)`.
fn describe(component: &[usize], nodes: &[Node], edges: &[Edge]) -> Vec<String> {
    edges
        .iter()
        .filter(|e| component.contains(&e.from) && component.contains(&e.to))
        .map(|e| format!("{} -> {} ({})", nodes[e.from].path, nodes[e.to].path, e.via))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_test_code_apart() {
        let file = |path: &str, text: &str| File {
            path: path.to_string(),
            module: cycles::module_path(path.trim_start_matches("src/")),
            scanned: Scanned::new(text),
            test_only: false,
        };
        let files = [
            file(
                "src/lib.rs",
                "//! Doc.\n\nfn a() {}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n",
            ),
            File {
                test_only: true,
                ..file("src/helpers.rs", "fn h() {}\n")
            },
        ];
        let c = count(&files);
        assert_eq!(
            (c.files, c.lines, c.code, c.comment, c.blank, c.test),
            (2, 10, 1, 1, 2, 6)
        );
        assert_eq!(c.largest, Some(("src/lib.rs".to_string(), 9)));
    }
}
