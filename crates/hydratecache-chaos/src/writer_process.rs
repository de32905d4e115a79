//! The driver's side of the writer process: starting it, asking it for an
//! oversize publish, killing it with -9 right after a commit and starting
//! another, stopping it, and reading what it committed from the commit log.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hydratecache_testkit::workload::{key_name, SplitMix64};
use serde_json::Value;
use tokio::sync::mpsc as tmpsc;

use crate::fleet::{lock, Run};
use crate::writer::WriterStats;

/// How long a writer may take to start (the backend may be restarting).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a writer may take to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One writer process.
struct WriterProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its lines but `stats`.
    lines: tmpsc::UnboundedReceiver<Value>,
    /// Its latest `stats` line.
    stats: Arc<Mutex<WriterStats>>,
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        // Never left running past the run (an error path included).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The writer of a run, across its incarnations.
pub(crate) struct Writers {
    run: Arc<Run>,
    current: WriterProcess,
    incarnation: usize,
    /// What the incarnations before `current` did.
    done: WriterStats,
    gone_reported: bool,
}

impl Writers {
    /// Starts the first writer and waits until it writes.
    pub(crate) async fn start(run: &Arc<Run>) -> Result<Writers> {
        let mut writers = Writers {
            run: Arc::clone(run),
            current: spawn(run, 0)?,
            incarnation: 0,
            done: WriterStats::default(),
            gone_reported: false,
        };
        writers.expect("ready", READY_TIMEOUT).await?;
        Ok(writers)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.current.stdin.as_mut().context("writer stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The next line of kind `e` from the current writer.
    async fn expect(&mut self, e: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.current.lines.recv()).await {
                Ok(Some(line)) if line["e"] == e => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the writer ended before `{e}`"),
                Err(_) => bail!("no `{e}` from the writer within {timeout:?}"),
            }
        }
    }

    /// Asks for an oversize publish: `Ok` with what happened when the
    /// publisher refused it as it should, `Err` with what went wrong.
    pub(crate) async fn oversize(&mut self) -> Result<Result<String, String>> {
        self.send("oversize")?;
        let answer = self.expect("oversize", ANSWER_TIMEOUT).await?;
        let note = answer["note"].as_str().unwrap_or("?").to_owned();
        Ok(if answer["ok"] == true {
            Ok(note)
        } else {
            Err(note)
        })
    }

    /// Whether the current writer ended on its own (it must not): what
    /// happened, once.
    pub(crate) fn gone(&mut self) -> Option<String> {
        if self.gone_reported {
            return None;
        }
        let status = self.current.child.try_wait().ok().flatten()?;
        self.gone_reported = true;
        Some(format!(
            "(incarnation {}) exited on its own with {status}",
            self.incarnation
        ))
    }

    /// Kills the writer with -9 right after a commit, before its publish;
    /// starts another after `hold`.
    pub(crate) async fn kill_after_commit(&mut self, hold: Duration) -> Result<String> {
        self.send("hold")?;
        let what = match self.expect("held", ANSWER_TIMEOUT).await {
            Ok(line) => {
                let _ = self.current.child.kill();
                let _ = self.current.child.wait();
                let mut stats: WriterStats =
                    serde_json::from_value(line["stats"].clone()).unwrap_or_default();
                stats.killed += 1;
                self.done.add(&stats);
                format!(
                    "writer killed -9 right after committing {} version {} ({})",
                    key_name(line["k"].as_u64().unwrap_or(0) as usize),
                    line["w"],
                    if self.run.settings.backend == "postgres" {
                        "published with the commit"
                    } else {
                        "never published"
                    }
                )
            }
            Err(e) => {
                // No commit to stop after (commits failing): a kill now
                // could fall between a commit and its record in the log.
                // Stop it cleanly instead.
                self.send("stop")?;
                let stopped = self.expect("stopped", ANSWER_TIMEOUT).await?;
                let stats: WriterStats =
                    serde_json::from_value(stopped["stats"].clone()).unwrap_or_default();
                self.done.add(&stats);
                let _ = self.current.child.wait();
                format!("no commit to kill the writer after ({e:#}): stopped it instead")
            }
        };
        tokio::time::sleep(hold).await;
        self.incarnation += 1;
        self.current = spawn(&self.run, self.incarnation)?;
        self.gone_reported = false;
        let started = Instant::now();
        self.expect("ready", READY_TIMEOUT).await?;
        Ok(format!(
            "{what}; down {} ms, a new writer writing {} ms later",
            hold.as_millis(),
            started.elapsed().as_millis()
        ))
    }

    /// Stops the current writer (a goodbye); returns what every incarnation did.
    pub(crate) async fn stop(mut self) -> Result<WriterStats> {
        let last = match self.send("stop") {
            Ok(()) => self.expect("stopped", ANSWER_TIMEOUT).await,
            Err(e) => Err(e),
        };
        let stats = match &last {
            Ok(line) => serde_json::from_value(line["stats"].clone()).unwrap_or_default(),
            Err(e) => {
                self.run.violation(
                    3,
                    format!("the writer did not stop cleanly: {e:#}"),
                    serde_json::json!({"writer": self.incarnation}),
                );
                lock(&self.current.stats).clone()
            }
        };
        self.done.add(&stats);
        Ok(self.done.clone())
    }
}

fn spawn(run: &Run, incarnation: usize) -> Result<WriterProcess> {
    let s = &run.settings;
    let seed = SplitMix64::derive(s.seed, &format!("{}/writer/{incarnation}", s.backend));
    let err = std::fs::File::create(run.dir.join(format!("writer-{incarnation}.stderr")))?;
    let mut child = Command::new(&run.exe)
        .arg("writer")
        .args(["--backend", &s.backend])
        .args(["--url", &lock(&run.backend_url).clone()])
        .args(["--truth-url", &run.truth_url])
        .arg("--truth-file")
        .arg(run.dir.join("truth.bin"))
        .arg("--commit-log")
        .arg(run.dir.join("commits.log"))
        .args(["--keys", &s.keys.to_string()])
        .args(["--rate", &s.write_rate.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--mode", if s.resumable { "resumable" } else { "pubsub" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .context("start the writer")?;
    let stdout = child.stdout.take().context("writer stdout")?;
    let stdin = child.stdin.take();
    let (tx, lines) = tmpsc::unbounded_channel();
    let stats = Arc::new(Mutex::new(WriterStats::default()));
    {
        let stats = Arc::clone(&stats);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if value["e"] == "stats" {
                    if let Ok(s) = serde_json::from_value(value["stats"].clone()) {
                        *lock(&stats) = s;
                    }
                } else if tx.send(value).is_err() {
                    break;
                }
            }
        });
    }
    Ok(WriterProcess {
        child,
        stdin,
        lines,
        stats,
    })
}

/// The commit instants of the log at `path`: per key, that of version v at
/// index v - 1 (version 1, the table's start: 0).
pub(crate) fn read_commits(path: &Path, keys: usize) -> Result<Vec<Vec<u64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut commits = vec![vec![0u64]; keys];
    for line in text.lines() {
        let mut fields = line.split(' ').map(str::parse::<u64>);
        let (Some(Ok(k)), Some(Ok(version)), Some(Ok(at))) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(c) = commits.get_mut(k as usize) else {
            continue;
        };
        let index = (version as usize).saturating_sub(1);
        while c.len() < index {
            c.push(at);
        }
        if c.len() == index {
            c.push(at);
        } else if let Some(slot) = c.get_mut(index) {
            *slot = at;
        }
    }
    Ok(commits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_log_of_several_writers_reads_back_per_version() {
        let dir = std::env::temp_dir().join(format!("chaos-commits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("commits.log");
        // Two writers' lines; a line that is not one is skipped.
        std::fs::write(&path, "1 2 100\n1 3 200\nnot a line\n0 2 150\n1 4 30\n").expect("write");
        let commits = read_commits(&path, 2).expect("read");
        assert_eq!(commits[0], vec![0, 150]);
        assert_eq!(commits[1], vec![0, 100, 200, 30]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
