//! The driver's side of the instance processes: the settings and the state
//! the run's tasks share, spawning an instance, waiting until it is ready,
//! the crash and hang checks, and comparing the instances' entries with the
//! table.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hydratecache_testkit::workload::SplitMix64;
use serde_json::{json, Value};

use crate::check::Violation;
use crate::common::now_us;

/// An instance silent this long (not paused) is hung.
const HUNG_AFTER_US: u64 = 5_000_000;

/// Settings of a run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) backend: String,
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
    pub(crate) repair: String,
    pub(crate) out: PathBuf,
    pub(crate) keys: usize,
    pub(crate) instances: usize,
    pub(crate) write_rate: u32,
    pub(crate) reads_per_ms: u32,
    pub(crate) window_us: u64,
    pub(crate) quiet: Duration,
    pub(crate) memory_limit_kb: u64,
    /// The staleness bound reads are checked against.
    pub(crate) bound_us: u64,
    /// The adapters' keepalives and the caches' liveness checks.
    pub(crate) liveness: bool,
    /// Each adapter's resumable mode (Redis Streams, JetStream, the
    /// PostgreSQL outbox; Kafka as it is) instead of its broadcast one.
    pub(crate) resumable: bool,
}

/// The processes' view of one instance process.
#[derive(Default)]
struct InstanceIo {
    ready: AtomicBool,
    bye: AtomicBool,
    last_seen: AtomicU64,
    status: Mutex<Option<Value>>,
}

/// One process of one instance: instance `id`, started for the `inc`th time.
pub(crate) struct Incarnation {
    pub(crate) id: usize,
    pub(crate) inc: usize,
    pub(crate) child: Child,
    stdin: Option<ChildStdin>,
    io: Arc<InstanceIo>,
    dumps: mpsc::Receiver<Value>,
    pub(crate) log: PathBuf,
    pub(crate) started_us: u64,
    pub(crate) ended_us: Option<u64>,
    /// Killed on purpose (a fault), not crashed.
    pub(crate) killed: bool,
    pub(crate) exit: Option<String>,
    pub(crate) pauses: Vec<(u64, u64)>,
    pub(crate) paused_since: Option<u64>,
    pub(crate) resumed_at: u64,
    hung: bool,
    /// Reads counted in the last status line, and since when it has not moved.
    reads_seen: (u64, u64),
}

impl Incarnation {
    /// `instance <id>#<inc>`.
    pub(crate) fn name(&self) -> String {
        format!("instance {}#{}", self.id, self.inc)
    }

    /// Sends a command line to the instance; whether it was written.
    pub(crate) fn send(&mut self, command: &str) -> bool {
        match self.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{command}")
                .and_then(|()| stdin.flush())
                .is_ok(),
            None => false,
        }
    }

    /// The process id, as `kill` takes it.
    pub(crate) fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

/// Everything the run's tasks share.
pub(crate) struct Run {
    pub(crate) settings: Settings,
    pub(crate) dir: PathBuf,
    pub(crate) truth_url: String,
    pub(crate) backend_url: Mutex<String>,
    /// The backend as the instances reach it: through the proxy.
    pub(crate) instance_url: String,
    pub(crate) exe: PathBuf,
    pub(crate) fleet: Mutex<Vec<Vec<Incarnation>>>,
    pub(crate) violations: Mutex<Vec<Violation>>,
    pub(crate) notes: Mutex<Vec<String>>,
}

/// Locks `m`, also when a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Run {
    /// Records (and prints) a broken invariant.
    pub(crate) fn violation(&self, invariant: u8, what: String, detail: Value) {
        eprintln!("chaos: VIOLATION of invariant {invariant}: {what}");
        lock(&self.violations).push(Violation {
            invariant,
            what,
            detail,
        });
    }

    /// Records (and prints) a note for the summary.
    pub(crate) fn note(&self, note: String) {
        println!("chaos:   {note}");
        lock(&self.notes).push(note);
    }

    /// Spawns incarnation `inc` of instance `id`.
    pub(crate) fn spawn_instance(&self, id: usize, inc: usize) -> Result<Incarnation> {
        let s = &self.settings;
        let log = self.dir.join(format!("instance-{id}-{inc}.jsonl"));
        let err = std::fs::File::create(self.dir.join(format!("instance-{id}-{inc}.stderr")))?;
        let seed = SplitMix64::derive(s.seed, &format!("{}/instance/{id}/{inc}", s.backend));
        let mut child = Command::new(&self.exe)
            .arg("instance")
            .args(["--url", &self.instance_url])
            .args(["--truth-url", &self.truth_url])
            .arg("--truth-file")
            .arg(self.dir.join("truth.bin"))
            .arg("--log")
            .arg(&log)
            .args(["--keys", &s.keys.to_string()])
            .args(["--repair", &s.repair])
            .args(["--seed", &seed.to_string()])
            .args(["--reads-per-ms", &s.reads_per_ms.to_string()])
            .args(["--window-us", &s.window_us.to_string()])
            .args(["--liveness", if s.liveness { "on" } else { "off" }])
            .args(["--mode", if s.resumable { "resumable" } else { "pubsub" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .context("start an instance")?;
        let stdout = child.stdout.take().context("instance stdout")?;
        let stdin = child.stdin.take();
        let io = Arc::new(InstanceIo::default());
        let (dump_tx, dumps) = mpsc::channel();
        {
            let io = Arc::clone(&io);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Ok(value) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    io.last_seen.store(now_us(), Ordering::Release);
                    match value["e"].as_str() {
                        Some("ready") => io.ready.store(true, Ordering::Release),
                        Some("bye") => io.bye.store(true, Ordering::Release),
                        Some("status") => *lock(&io.status) = Some(value),
                        Some("dump") => {
                            let _ = dump_tx.send(value);
                        }
                        _ => {}
                    }
                }
            });
        }
        let now = now_us();
        io.last_seen.store(now, Ordering::Release);
        Ok(Incarnation {
            id,
            inc,
            child,
            stdin,
            io,
            dumps,
            log,
            started_us: now,
            ended_us: None,
            killed: false,
            exit: None,
            pauses: Vec::new(),
            paused_since: None,
            resumed_at: now,
            hung: false,
            reads_seen: (0, now),
        })
    }

    /// Waits until the current incarnation of `id` is ready.
    pub(crate) async fn wait_ready(&self, id: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (ready, exited) = {
                let mut fleet = lock(&self.fleet);
                let current = fleet[id].last_mut().context("no incarnation")?;
                let exited = current.child.try_wait().ok().flatten();
                (current.io.ready.load(Ordering::Acquire), exited)
            };
            if ready {
                return Ok(());
            }
            if let Some(status) = exited {
                bail!("instance {id} exited before it was ready ({status}); see its .stderr file in {}", self.dir.display());
            }
            if Instant::now() > deadline {
                bail!("instance {id} not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Crash and hang checks, every half second.
    pub(crate) fn monitor(&self) {
        let now = now_us();
        let mut respawn = Vec::new();
        {
            let mut fleet = lock(&self.fleet);
            for slot in fleet.iter_mut() {
                let Some(current) = slot.last_mut() else {
                    continue;
                };
                if current.ended_us.is_some() {
                    continue;
                }
                if let Ok(Some(status)) = current.child.try_wait() {
                    current.ended_us = Some(now);
                    current.exit = Some(status.to_string());
                    let name = current.name();
                    let stderr = std::fs::read_to_string(
                        self.dir
                            .join(format!("instance-{}-{}.stderr", current.id, current.inc)),
                    )
                    .unwrap_or_default();
                    let tail: String = stderr
                        .chars()
                        .rev()
                        .take(600)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    self.violation(
                        3,
                        format!("{name} exited on its own ({status})"),
                        json!({"instance": name, "stderr_tail": tail}),
                    );
                    respawn.push((current.id, current.inc + 1));
                    continue;
                }
                let ready = current.io.ready.load(Ordering::Acquire);
                let quiet_since = current
                    .io
                    .last_seen
                    .load(Ordering::Acquire)
                    .max(current.resumed_at);
                let reads = lock(&current.io.status)
                    .as_ref()
                    .and_then(|s| s["reads"].as_u64())
                    .unwrap_or(0);
                if reads != current.reads_seen.0 {
                    current.reads_seen = (reads, now);
                }
                let reads_since = current.reads_seen.1.max(current.resumed_at);
                if ready
                    && current.paused_since.is_none()
                    && !current.hung
                    && now.saturating_sub(reads_since) > HUNG_AFTER_US
                {
                    current.hung = true;
                    let name = current.name();
                    self.violation(
                        3,
                        format!(
                            "{name} hung: its reads stopped at {reads} for {} ms",
                            now.saturating_sub(reads_since) / 1000
                        ),
                        json!({"instance": name}),
                    );
                }
                if ready
                    && current.paused_since.is_none()
                    && !current.hung
                    && now.saturating_sub(quiet_since) > HUNG_AFTER_US
                {
                    current.hung = true;
                    let name = current.name();
                    self.violation(
                        3,
                        format!(
                            "{name} hung: no status line for {} ms",
                            now.saturating_sub(quiet_since) / 1000
                        ),
                        json!({"instance": name}),
                    );
                }
            }
        }
        for (id, inc) in respawn {
            match self.spawn_instance(id, inc) {
                Ok(incarnation) => lock(&self.fleet)[id].push(incarnation),
                Err(e) => self.note(format!("could not restart instance {id}: {e:#}")),
            }
        }
    }
}

/// Asks every live instance for its entries and compares them with `table`:
/// `(instance, key, held, table)` of each difference.
pub(crate) fn compare(
    run: &Run,
    table: &[u64],
    timeout: Duration,
) -> Vec<(String, usize, u64, u64)> {
    let mut out = Vec::new();
    let mut fleet = lock(&run.fleet);
    for slot in fleet.iter_mut() {
        let Some(current) = slot.last_mut() else {
            continue;
        };
        if current.ended_us.is_some() {
            continue;
        }
        while current.dumps.try_recv().is_ok() {}
        if !current.send("dump") {
            continue;
        }
        let name = current.name();
        match current.dumps.recv_timeout(timeout) {
            Ok(dump) => {
                for entry in dump["entries"].as_array().into_iter().flatten() {
                    let k = entry[0].as_u64().unwrap_or(u64::MAX) as usize;
                    let held = entry[1].as_u64().unwrap_or(0);
                    match table.get(k) {
                        Some(&want) if want == held => {}
                        Some(&want) => out.push((name.clone(), k, held, want)),
                        None => out.push((name.clone(), k, held, 0)),
                    }
                }
            }
            Err(_) => out.push((name, usize::MAX, 0, 0)),
        }
    }
    out
}
