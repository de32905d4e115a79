//! `hydratecache-chaos drive`: one chaos run per backend.
//!
//! Starts a private PostgreSQL (the source of truth: a table of `keys` rows
//! `(key, version, value)`) and the backend under test (for PostgreSQL the
//! same cluster: the writer then publishes in the `UPDATE`'s transaction),
//! a writer that bumps rows and publishes each new version, and four
//! subscriber instances as separate processes. Faults follow a schedule
//! drawn from the seed. At the end the writer stops, the instances must
//! agree with the table within the quiet period, and their logs are checked
//! (see `check.rs`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hydratecache_core::{CborCodec, Channel, Error as CoreError, PublishOptions, Transport};
use hydratecache_postgres::PostgresTransport;
use hydratecache_testkit::kafka::TansuServer;
use hydratecache_testkit::nats::NatsServer;
use hydratecache_testkit::postgres::PostgresServer;
use hydratecache_testkit::redis::RedisServer;
use serde_json::{json, Value};
use sqlx::{PgPool, Row as _};
use tokio::sync::{mpsc as tmpsc, oneshot, watch};

use crate::check::{self, IncarnationRecord, RunFacts};
use crate::common::{
    connect_backend, key_name, now_us, truth_pool, value_for, FaultKind, Row, SplitMix64, Truth,
    TruthFile, WriterStats, Zipf, RING, TABLE, TOPIC, ZIPF_S,
};

/// Faults start after this warm-up.
const WARMUP_MS: u64 = 2500;
/// An instance silent this long (not paused) is hung.
const HUNG_AFTER_US: u64 = 5_000_000;
/// Bound on one writer publish; the writer goes on without it.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on one writer commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of the writer's heartbeats (they reveal a lost last message).
const HEARTBEAT: Duration = Duration::from_millis(200);

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
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) at_ms: u64,
    pub(crate) kind: FaultKind,
    pub(crate) target: usize,
    pub(crate) hold_ms: u64,
}

/// The fault schedule of `seed` for a run of `duration_ms`: every kind once
/// in a seeded order, then seeded picks, until the run's end.
pub(crate) fn schedule(seed: u64, duration_ms: u64, instances: usize) -> Vec<Fault> {
    let mut rng = SplitMix64(seed);
    let mut kinds = FaultKind::ALL.to_vec();
    for i in (1..kinds.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        kinds.swap(i, j);
    }
    let mut out = Vec::new();
    let mut t = WARMUP_MS;
    let end = duration_ms.saturating_sub(500);
    for i in 0.. {
        let kind = kinds
            .get(i)
            .copied()
            .unwrap_or_else(|| FaultKind::ALL[rng.range(0, 5) as usize]);
        let target = rng.range(0, instances.max(1) as u64 - 1) as usize;
        let (hold_ms, cost) = match kind {
            FaultKind::ServerKill => {
                let h = rng.range(500, 2000);
                (h, h + 800)
            }
            FaultKind::Pause => {
                let h = rng.range(1000, 3000);
                (h, h)
            }
            FaultKind::InstanceRestart => {
                let h = rng.range(0, 1000);
                (h, h + 1500)
            }
            FaultKind::ConnKill => (0, 300),
            FaultKind::Garbage | FaultKind::Oversize => (0, 50),
        };
        let spacing = rng.range(700, 2000);
        if t + cost > end {
            // The cheap kinds may still fit; stop at the first that does not.
            break;
        }
        out.push(Fault {
            at_ms: t,
            kind,
            target,
            hold_ms,
        });
        t += cost + spacing;
    }
    out
}

/// The processes' view of one instance process.
#[derive(Default)]
struct InstanceIo {
    ready: AtomicBool,
    bye: AtomicBool,
    last_seen: AtomicU64,
    status: Mutex<Option<Value>>,
}

struct Incarnation {
    id: usize,
    inc: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    io: Arc<InstanceIo>,
    dumps: mpsc::Receiver<Value>,
    log: PathBuf,
    started_us: u64,
    ended_us: Option<u64>,
    /// Killed on purpose (a fault), not crashed.
    killed: bool,
    exit: Option<String>,
    pauses: Vec<(u64, u64)>,
    paused_since: Option<u64>,
    resumed_at: u64,
    hung: bool,
    /// Reads counted in the last status line, and since when it has not moved.
    reads_seen: (u64, u64),
}

impl Incarnation {
    fn name(&self) -> String {
        format!("instance {}#{}", self.id, self.inc)
    }

    fn send(&mut self, command: &str) -> bool {
        match self.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{command}")
                .and_then(|()| stdin.flush())
                .is_ok(),
            None => false,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

/// Everything the run's tasks share.
struct Run {
    settings: Settings,
    dir: PathBuf,
    truth_url: String,
    backend_url: Mutex<String>,
    exe: PathBuf,
    fleet: Mutex<Vec<Vec<Incarnation>>>,
    violations: Mutex<Vec<check::Violation>>,
    notes: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Run {
    fn violation(&self, invariant: u8, what: String, detail: Value) {
        eprintln!("chaos: VIOLATION of invariant {invariant}: {what}");
        lock(&self.violations).push(check::Violation {
            invariant,
            what,
            detail,
        });
    }

    fn note(&self, note: String) {
        println!("chaos:   {note}");
        lock(&self.notes).push(note);
    }

    /// Spawns incarnation `inc` of instance `id`.
    fn spawn_instance(&self, id: usize, inc: usize) -> Result<Incarnation> {
        let s = &self.settings;
        let log = self.dir.join(format!("instance-{id}-{inc}.jsonl"));
        let err = std::fs::File::create(self.dir.join(format!("instance-{id}-{inc}.stderr")))?;
        let seed = SplitMix64::derive(s.seed, &format!("{}/instance/{id}/{inc}", s.backend));
        let mut child = Command::new(&self.exe)
            .arg("instance")
            .args(["--backend", &s.backend])
            .args(["--url", &lock(&self.backend_url)])
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
    async fn wait_ready(&self, id: usize, timeout: Duration) -> Result<()> {
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
    fn monitor(&self) {
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

/// The servers of a run.
struct Servers {
    truth: PostgresServer,
    backend: Backend,
}

enum Backend {
    Redis(RedisServer),
    Nats(NatsServer),
    Kafka(TansuServer),
    /// PostgreSQL: the source of truth is the backend.
    Truth,
}

impl Servers {
    fn start(backend: &str) -> Result<Servers> {
        let truth = PostgresServer::start().context("start the PostgreSQL source of truth")?;
        let backend = match backend {
            "redis" => Backend::Redis(RedisServer::start()?),
            "nats" => Backend::Nats(NatsServer::start()?),
            "kafka" => {
                let server = TansuServer::start()?;
                server.create_topic(TOPIC, 1)?;
                Backend::Kafka(server)
            }
            "postgres" => Backend::Truth,
            other => bail!("unknown backend {other:?}"),
        };
        Ok(Servers { truth, backend })
    }

    fn url(&self) -> String {
        match &self.backend {
            Backend::Redis(s) => s.url(),
            Backend::Nats(s) => s.url(),
            Backend::Kafka(s) => s.url(),
            Backend::Truth => self.truth.url(),
        }
    }

    fn kill9(&mut self) {
        match &mut self.backend {
            Backend::Redis(s) => s.kill9(),
            Backend::Nats(s) => s.kill9(),
            Backend::Kafka(s) => s.kill9(),
            Backend::Truth => self.truth.kill9(),
        }
    }

    fn start_again(&mut self) -> Result<()> {
        match &mut self.backend {
            Backend::Redis(s) => s.start_again(),
            Backend::Nats(s) => s.start_again(),
            Backend::Kafka(s) => {
                s.start_again()?;
                // Memory storage lost every topic: recreate it (the clients'
                // `create_topics` may have been quicker).
                match s.create_topic(TOPIC, 1) {
                    Err(e) if format!("{e:#}").contains("already exists") => Ok(()),
                    other => other,
                }
            }
            Backend::Truth => self.truth.start_again(),
        }
    }
}

enum WriterCommand {
    Oversize(oneshot::Sender<Result<String, String>>),
}

struct Writer {
    backend: String,
    pool: PgPool,
    channel: Channel<Row>,
    truth: TruthFile,
    versions: Vec<u64>,
    rings: Vec<[u64; RING]>,
    seqs: Vec<u64>,
    /// Per key, commit instant of version v at index v - 1 (version 1: 0).
    commits: Vec<Vec<u64>>,
    stats: WriterStats,
}

impl Writer {
    fn record_commit(&mut self, k: usize, version: u64, at: u64) -> Result<()> {
        self.versions[k] = version;
        let ring = &mut self.rings[k];
        ring.rotate_right(1);
        ring[0] = at;
        self.seqs[k] += 1;
        while self.commits[k].len() < (version as usize).saturating_sub(1) {
            self.commits[k].push(at);
        }
        self.commits[k].push(at);
        self.truth.write(
            k,
            self.seqs[k],
            Truth {
                version,
                commits: *ring,
            },
        )
    }

    /// Commits version `w` of key `k`; for PostgreSQL with its notification
    /// in the same transaction.
    async fn commit(&self, k: usize, w: u64, row: &Row) -> Result<()> {
        let key = key_name(k);
        let update = format!("UPDATE {TABLE} SET version = $1, value = $2 WHERE key = $3");
        let version = i64::try_from(w)?;
        if self.backend == "postgres" {
            let mut tx = self.pool.begin().await?;
            sqlx::query(&update)
                .bind(version)
                .bind(&row.value)
                .bind(&key)
                .execute(&mut *tx)
                .await?;
            PostgresTransport::publish_value_tx(
                &mut *tx,
                TOPIC,
                &CborCodec::new(),
                &key,
                row,
                PublishOptions::new().version(w),
            )
            .await?;
            tx.commit().await?;
        } else {
            sqlx::query(&update)
                .bind(version)
                .bind(&row.value)
                .bind(&key)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// After a failed commit: was it committed? Asks the table until it answers.
    async fn resolve(&mut self, k: usize, w: u64, sent_at: u64, stop: &watch::Receiver<bool>) {
        let sql = format!("SELECT version FROM {TABLE} WHERE key = $1");
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                sqlx::query(&sql).bind(key_name(k)).fetch_one(&self.pool),
            )
            .await;
            if let Ok(Ok(row)) = answer {
                let version: i64 = row.try_get(0).unwrap_or(0);
                if u64::try_from(version).unwrap_or(0) == w {
                    // Committed, answer lost: when exactly is unknown, so the
                    // earliest possible instant (conservative for staleness).
                    self.stats.uncertain_committed += 1;
                    let _ = self.record_commit(k, w, sent_at);
                }
                return;
            }
            if *stop.borrow() && Instant::now() > give_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn oversize(&self) -> Result<String, String> {
        let limit = self
            .channel
            .transport()
            .capabilities()
            .max_message_size
            .unwrap_or(1 << 20);
        let before = self.channel.last_sequence();
        let row = Row {
            version: 0,
            value: "x".repeat(limit + 1),
        };
        let result = self.channel.publish(&key_name(0), &row).await;
        let after = self.channel.last_sequence();
        match result {
            Err(CoreError::PayloadTooLarge { size, limit, .. }) if before == after => Ok(format!(
                "refused at the publisher: PayloadTooLarge (size {size}, limit {limit}), no sequence number spent"
            )),
            Err(CoreError::PayloadTooLarge { .. }) => Err(format!(
                "PayloadTooLarge, but the sequence moved from {before} to {after}"
            )),
            Err(e) => Err(format!("failed with another error than PayloadTooLarge: {e}")),
            Ok(receipt) => Err(format!(
                "an oversize publish ({} bytes over a limit of {limit}) was accepted: {receipt:?}",
                limit + 1
            )),
        }
    }

    async fn run(
        mut self,
        rate: u32,
        seed: u64,
        mut stop: watch::Receiver<bool>,
        mut commands: tmpsc::Receiver<WriterCommand>,
    ) -> Writer {
        let keys = self.versions.len();
        let zipf = Zipf::new(keys, ZIPF_S);
        let mut rng = SplitMix64(seed);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some(command) = commands.recv() => match command {
                    WriterCommand::Oversize(reply) => {
                        let _ = reply.send(self.oversize().await);
                    }
                },
                _ = tick.tick() => {
                    if *stop.borrow() {
                        break;
                    }
                    let k = zipf.sample(&mut rng);
                    let w = self.versions[k] + 1;
                    let row = Row { version: w, value: value_for(k, w) };
                    let sent_at = now_us();
                    match tokio::time::timeout(COMMIT_TIMEOUT, self.commit(k, w, &row)).await {
                        Ok(Ok(())) => {
                            self.stats.committed += 1;
                            if let Err(e) = self.record_commit(k, w, now_us()) {
                                eprintln!("chaos: truth file: {e:#}");
                            }
                        }
                        _ => {
                            self.stats.commit_errors += 1;
                            let stop_rx = stop.clone();
                            self.resolve(k, w, sent_at, &stop_rx).await;
                            continue;
                        }
                    }
                    if self.backend == "postgres" {
                        // Published in the transaction.
                        continue;
                    }
                    let published = tokio::time::timeout(
                        PUBLISH_TIMEOUT,
                        self.channel.publish_with(&key_name(k), &row, PublishOptions::new().version(w)),
                    )
                    .await;
                    match published {
                        Ok(Ok(_)) => {
                            self.stats.published += 1;
                            if let Some(since) = failing_since.take() {
                                let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                                self.stats.longest_publish_outage_ms = self.stats.longest_publish_outage_ms.max(ms);
                            }
                        }
                        _ => {
                            self.stats.publish_errors += 1;
                            failing_since.get_or_insert_with(Instant::now);
                        }
                    }
                }
            }
        }
        if let Some(since) = failing_since {
            let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.stats.longest_publish_outage_ms = self.stats.longest_publish_outage_ms.max(ms);
        }
        self
    }
}

/// Installs a `kill` that forwards `kill -9 -PID` as a real process-group
/// kill. procps-ng 4.0.2's `kill` parses `kill -9 -PID` as `kill(-1, SIGKILL)`
/// (every process on the machine), and the testkit's `Process::kill9` ran
/// exactly that; with this shim first on this process's `PATH`, a testkit
/// with that bug kills the servers this run starts and nothing else. It
/// passes every other `kill` through unchanged.
fn install_kill_shim(dir: &Path) -> Result<()> {
    let real = ["/usr/bin/kill", "/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("no kill binary in /usr/bin or /bin")?;
    let shim_dir = dir.join("bin");
    std::fs::create_dir_all(&shim_dir)?;
    let shim = shim_dir.join("kill");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n# hydratecache-chaos: procps-ng 4.0.2 runs `kill -9 -PID` as kill(-1, SIGKILL).\n\
             if [ \"$#\" -eq 2 ] && [ \"$1\" = \"-9\" ]; then\n  case \"$2\" in -[0-9]*) exec {real} -s KILL -- \"$2\";; esac\nfi\nexec {real} \"$@\"\n"
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![shim_dir];
    dirs.extend(std::env::split_paths(&path));
    // Set before any other thread or child exists.
    std::env::set_var("PATH", std::env::join_paths(dirs)?);
    Ok(())
}

pub(crate) fn main(settings: Settings) -> Result<check::Summary> {
    let dir = settings.out.join(&settings.backend);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    install_kill_shim(&settings.out)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let servers = Servers::start(&settings.backend)?;
    let result = runtime.block_on(run(settings, dir, servers));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn setup_table(pool: &PgPool, keys: usize) -> Result<()> {
    sqlx::query(&format!(
        "CREATE TABLE {TABLE} (key text PRIMARY KEY, version bigint NOT NULL, value text NOT NULL)"
    ))
    .execute(pool)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {TABLE} SELECT 'k' || lpad(i::text, 5, '0'), 1, 'k' || lpad(i::text, 5, '0') || ':1:' \
         FROM generate_series(0, $1 - 1) AS i"
    ))
    .bind(i32::try_from(keys)?)
    .execute(pool)
    .await?;
    Ok(())
}

async fn read_table(pool: &PgPool, keys: usize) -> Result<Vec<u64>> {
    let rows = sqlx::query(&format!("SELECT key, version FROM {TABLE}"))
        .fetch_all(pool)
        .await?;
    let mut out = vec![0u64; keys];
    for row in rows {
        let key: String = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        if let Some(k) = crate::common::key_index(&key).filter(|k| *k < keys) {
            out[k] = u64::try_from(version).unwrap_or(0);
        }
    }
    Ok(out)
}

async fn run(settings: Settings, dir: PathBuf, servers: Servers) -> Result<check::Summary> {
    let s = settings.clone();
    let truth_url = servers.truth.url();
    let backend_url = servers.url();
    let servers = Arc::new(Mutex::new(servers));
    println!(
        "chaos: {} for {:?}, seed {}, repair {}, {} keys, {} instances; truth {truth_url}, backend {backend_url}",
        s.backend, s.duration, s.seed, s.repair, s.keys, s.instances
    );
    let pool = truth_pool(&truth_url, 4).await?;
    setup_table(&pool, s.keys).await?;
    let truth = TruthFile::create(&dir.join("truth.bin"), s.keys)?;
    let transport: Arc<dyn Transport> = connect_backend(&s.backend, &backend_url, Some(&pool))
        .await
        .context("connect the writer's transport")?;
    let channel = Channel::<Row>::new(Arc::clone(&transport), TOPIC);
    let run = Arc::new(Run {
        settings: s.clone(),
        dir: dir.clone(),
        truth_url: truth_url.clone(),
        backend_url: Mutex::new(backend_url.clone()),
        exe: std::env::current_exe()?,
        fleet: Mutex::new((0..s.instances).map(|_| Vec::new()).collect()),
        violations: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
    });
    for id in 0..s.instances {
        let incarnation = run.spawn_instance(id, 0)?;
        lock(&run.fleet)[id].push(incarnation);
    }
    for id in 0..s.instances {
        run.wait_ready(id, Duration::from_secs(60)).await?;
    }
    let faults = schedule(
        SplitMix64::derive(s.seed, &format!("{}/faults", s.backend)),
        u64::try_from(s.duration.as_millis())?,
        s.instances,
    );
    println!("chaos: fault schedule (seed {}):", s.seed);
    for f in &faults {
        println!(
            "chaos:   at {:>6} ms  {:<32} target instance {}  hold {} ms",
            f.at_ms,
            f.kind.name(),
            f.target,
            f.hold_ms
        );
    }

    // The writer.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (command_tx, command_rx) = tmpsc::channel(4);
    let (heartbeat_stop, heartbeat_stopped) = oneshot::channel::<()>();
    let heartbeats = (s.backend != "postgres").then(|| {
        tokio::spawn(channel.clone().run_heartbeats(HEARTBEAT, async move {
            let _ = heartbeat_stopped.await;
        }))
    });
    let writer = Writer {
        backend: s.backend.clone(),
        pool: pool.clone(),
        channel: channel.clone(),
        truth,
        versions: vec![1; s.keys],
        rings: vec![[0; RING]; s.keys],
        seqs: vec![1; s.keys],
        commits: vec![vec![0]; s.keys],
        stats: WriterStats::default(),
    };
    let writer_task = tokio::spawn(writer.run(
        s.write_rate,
        SplitMix64::derive(s.seed, &format!("{}/writer", s.backend)),
        stop_rx,
        command_rx,
    ));
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (run, stop) = (Arc::clone(&run), Arc::clone(&monitor_stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                run.monitor();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Faults.
    let origin = Instant::now();
    let run_start_us = now_us();
    let mut fault_log = Vec::new();
    let mut garbage_sent = 0u64;
    for fault in &faults {
        tokio::time::sleep_until((origin + Duration::from_millis(fault.at_ms)).into()).await;
        let started = origin.elapsed();
        let t_us = now_us();
        let outcome = execute(&run, &servers, &command_tx, fault, &mut garbage_sent).await;
        let note = match outcome {
            Ok(note) => note,
            Err(e) => {
                let note = format!("fault failed: {e:#}");
                eprintln!("chaos: {} at {:?}: {note}", fault.kind.name(), started);
                note
            }
        };
        println!(
            "chaos: {:>6} ms  {:<32} -> {note}",
            started.as_millis(),
            fault.kind.name()
        );
        fault_log.push(json!({
            "at_ms": fault.at_ms, "started_ms": started.as_millis() as u64, "t_us": t_us,
            "kind": fault.kind.id(), "target": fault.target, "hold_ms": fault.hold_ms,
            "took_ms": (origin.elapsed() - started).as_millis() as u64, "note": note,
        }));
    }
    tokio::time::sleep_until((origin + s.duration).into()).await;
    let faults_end_us = now_us();

    // Faults stop; the writer stops; the quiet period begins.
    let _ = stop_tx.send(true);
    let writer = writer_task.await.context("the writer task failed")?;
    println!(
        "chaos: faults and writes stopped after {:?}; writer: {:?}",
        origin.elapsed(),
        writer.stats
    );
    let quiet_start = Instant::now();
    let mut divergent = Vec::new();
    let mut converged_ms = None;
    let mut checks = 0u32;
    while quiet_start.elapsed() < s.quiet {
        tokio::time::sleep(Duration::from_millis(250)).await;
        checks += 1;
        let table = match read_table(&pool, s.keys).await {
            Ok(t) => t,
            Err(e) => {
                run.note(format!("reading the table failed: {e:#}"));
                continue;
            }
        };
        divergent = compare(&run, &table, Duration::from_secs(2));
        if divergent.is_empty() {
            converged_ms = Some(u64::try_from(quiet_start.elapsed().as_millis())?);
            break;
        }
    }
    if let Some(first) = divergent.first() {
        run.violation(
            1,
            format!(
                "{} entries still differ from the table {:?} after the writes stopped; first: {} holds {} at version {} but the table has {}",
                divergent.len(),
                s.quiet,
                first.0,
                key_name(first.1),
                first.2,
                first.3
            ),
            json!({"divergent": divergent.iter().take(20).map(|d| json!({"instance": d.0, "key": key_name(d.1), "held": d.2, "table": d.3})).collect::<Vec<_>>()}),
        );
    }
    println!(
        "chaos: convergence: {} after {checks} checks",
        match converged_ms {
            Some(ms) => format!("every instance agrees with the table after {ms} ms"),
            None => format!("{} divergent entries at the deadline", divergent.len()),
        }
    );

    // Stop the fleet.
    monitor_stop.store(true, Ordering::Release);
    let _ = monitor.await;
    {
        let mut fleet = lock(&run.fleet);
        for slot in fleet.iter_mut() {
            if let Some(current) = slot.last_mut() {
                if current.ended_us.is_none() {
                    current.send("quit");
                }
            }
        }
    }
    let quit_deadline = Instant::now() + Duration::from_secs(5);
    let mut hung = Vec::new();
    {
        let mut fleet = lock(&run.fleet);
        for slot in fleet.iter_mut() {
            if let Some(current) = slot.last_mut() {
                if current.ended_us.is_some() {
                    continue;
                }
                loop {
                    match current.child.try_wait() {
                        Ok(Some(status)) => {
                            current.exit = Some(status.to_string());
                            if !status.success() {
                                hung.push((
                                    current.name(),
                                    format!("exited with {status} at quit"),
                                ));
                            }
                            break;
                        }
                        Ok(None) if Instant::now() < quit_deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            let _ = current.child.kill();
                            let _ = current.child.wait();
                            hung.push((current.name(), "did not exit within 5 s of quit".into()));
                            break;
                        }
                    }
                }
                current.ended_us = Some(now_us());
            }
        }
    }
    for (name, what) in hung {
        run.violation(3, format!("{name} {what}"), json!({"instance": name}));
    }
    let _ = heartbeat_stop.send(());
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    let _ = transport.close().await;

    // Check the logs.
    let records: Vec<IncarnationRecord> = {
        let fleet = lock(&run.fleet);
        fleet
            .iter()
            .flatten()
            .map(|i| IncarnationRecord {
                name: i.name(),
                log: i.log.clone(),
                started_us: i.started_us,
                ended_us: i.ended_us.unwrap_or_else(now_us),
                killed: i.killed,
                pauses: i.pauses.clone(),
            })
            .collect()
    };
    let mut fault_counts = BTreeMap::new();
    for f in &faults {
        *fault_counts.entry(f.kind.id()).or_insert(0u64) += 1;
    }
    let facts = RunFacts {
        backend: s.backend.clone(),
        seed: s.seed,
        duration_s: s.duration.as_secs_f64(),
        repair: s.repair.clone(),
        window_us: s.window_us,
        memory_limit_kb: s.memory_limit_kb,
        commits: writer.commits,
        writer: writer.stats,
        fault_counts,
        fault_log,
        garbage_sent,
        divergent: divergent.len() as u64,
        converged_ms,
        run_start_us,
        faults_end_us,
        violations: std::mem::take(&mut *lock(&run.violations)),
        notes: std::mem::take(&mut *lock(&run.notes)),
    };
    let summary = check::evaluate(facts, &records)?;
    drop(servers);
    Ok(summary)
}

/// Asks every live instance for its entries and compares them with `table`:
/// `(instance, key, held, table)` of each difference.
fn compare(run: &Run, table: &[u64], timeout: Duration) -> Vec<(String, usize, u64, u64)> {
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

/// Runs one fault; returns what happened.
async fn execute(
    run: &Arc<Run>,
    servers: &Arc<Mutex<Servers>>,
    writer: &tmpsc::Sender<WriterCommand>,
    fault: &Fault,
    garbage_sent: &mut u64,
) -> Result<String> {
    let backend = run.settings.backend.clone();
    let url = lock(&run.backend_url).clone();
    match fault.kind {
        FaultKind::ServerKill => {
            let s = Arc::clone(servers);
            tokio::task::spawn_blocking(move || lock(&s).kill9()).await?;
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            let s = Arc::clone(servers);
            let started = Instant::now();
            tokio::task::spawn_blocking(move || lock(&s).start_again()).await??;
            Ok(format!(
                "down {} ms, restarted on the same port in {} ms",
                fault.hold_ms,
                started.elapsed().as_millis()
            ))
        }
        FaultKind::ConnKill => match backend.as_str() {
            "redis" => {
                let n = tokio::task::spawn_blocking(move || {
                    hydratecache_testkit::redis::kill_pubsub_clients(&url)
                })
                .await??;
                Ok(format!("CLIENT KILL TYPE pubsub: {n} connections"))
            }
            "postgres" => {
                let out = tokio::task::spawn_blocking(move || {
                    hydratecache_testkit::postgres::psql(
                        &url,
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE pid <> pg_backend_pid() \
                         AND (application_name = 'hydratecache-listener' OR query LIKE 'LISTEN%')",
                    )
                })
                .await??;
                Ok(format!(
                    "pg_terminate_backend of {out} listener connections"
                ))
            }
            _ => {
                // No server-side kill of one connection: restart the server at once.
                let s = Arc::clone(servers);
                let started = Instant::now();
                tokio::task::spawn_blocking(move || {
                    let mut s = lock(&s);
                    s.kill9();
                    s.start_again()
                })
                .await??;
                Ok(format!(
                    "no per-connection kill on {backend}: server restarted at once ({} ms)",
                    started.elapsed().as_millis()
                ))
            }
        },
        FaultKind::Pause => {
            let pid = {
                let mut fleet = lock(&run.fleet);
                let current = fleet[fault.target].last_mut().context("no instance")?;
                if current.ended_us.is_some() {
                    bail!("{} is not running", current.name());
                }
                current.paused_since = Some(now_us());
                current.pid()
            };
            signal(&pid, "STOP")?;
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            signal(&pid, "CONT")?;
            let mut fleet = lock(&run.fleet);
            if let Some(current) = fleet[fault.target].last_mut() {
                let now = now_us();
                if let Some(since) = current.paused_since.take() {
                    current.pauses.push((since, now));
                }
                current.resumed_at = now;
            }
            Ok(format!(
                "instance {} stopped for {} ms",
                fault.target, fault.hold_ms
            ))
        }
        FaultKind::Garbage => {
            let note = garbage(&backend, &url).await?;
            *garbage_sent += 1;
            Ok(note)
        }
        FaultKind::Oversize => {
            let (reply, answer) = oneshot::channel();
            writer
                .send(WriterCommand::Oversize(reply))
                .await
                .map_err(|_| anyhow::anyhow!("the writer is gone"))?;
            match answer.await? {
                Ok(note) => Ok(note),
                Err(what) => {
                    run.violation(
                        3,
                        format!("oversize publish: {what}"),
                        json!({"fault": "oversize"}),
                    );
                    Ok(what)
                }
            }
        }
        FaultKind::InstanceRestart => {
            let (id, inc) = {
                let mut fleet = lock(&run.fleet);
                let current = fleet[fault.target].last_mut().context("no instance")?;
                if current.ended_us.is_none() {
                    let _ = current.child.kill();
                    let _ = current.child.wait();
                    current.killed = true;
                    current.ended_us = Some(now_us());
                }
                (current.id, current.inc + 1)
            };
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            let incarnation = run.spawn_instance(id, inc)?;
            lock(&run.fleet)[id].push(incarnation);
            let started = Instant::now();
            run.wait_ready(id, Duration::from_secs(60)).await?;
            Ok(format!(
                "instance {id} killed, down {} ms, cold start ready in {} ms",
                fault.hold_ms,
                started.elapsed().as_millis()
            ))
        }
    }
}

/// `kill -s SIGNAL PID` (a positive pid: never a group).
fn signal(pid: &str, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", name, pid])
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("kill -s {name} {pid} failed ({status})");
    }
    Ok(())
}

/// Bytes that are not an envelope, published on the topic by a third-party client.
const GARBAGE: &str = "chaos: not a hydratecache envelope";

async fn garbage(backend: &str, url: &str) -> Result<String> {
    match backend {
        "redis" => {
            let url = url.to_owned();
            let out = tokio::task::spawn_blocking(move || {
                hydratecache_testkit::redis::cli(&url, &["PUBLISH", TOPIC, GARBAGE], None)
            })
            .await??;
            Ok(format!(
                "redis-cli PUBLISH {TOPIC}: {} receivers",
                out.trim()
            ))
        }
        "postgres" => {
            let url = url.to_owned();
            tokio::task::spawn_blocking(move || {
                hydratecache_testkit::postgres::psql(
                    &url,
                    &format!("SELECT pg_notify('{TOPIC}', '{GARBAGE}')"),
                )
            })
            .await??;
            Ok(format!("psql pg_notify('{TOPIC}', ...)"))
        }
        "nats" => {
            let client = async_nats::connect(url).await?;
            client
                .publish(TOPIC, bytes::Bytes::from_static(GARBAGE.as_bytes()))
                .await?;
            client.flush().await?;
            Ok(format!("raw async-nats PUB {TOPIC}"))
        }
        "kafka" => {
            use rskafka::client::partition::{Compression, UnknownTopicHandling};
            let bootstrap = url.strip_prefix("kafka://").unwrap_or(url).to_owned();
            let client = rskafka::client::ClientBuilder::new(vec![bootstrap])
                .build()
                .await?;
            let partition = client
                .partition_client(TOPIC, 0, UnknownTopicHandling::Retry)
                .await?;
            let record = rskafka::record::Record {
                key: Some(b"junk".to_vec()),
                value: Some(GARBAGE.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_micros(
                    i64::try_from(now_us()).unwrap_or(0),
                )
                .unwrap_or_default(),
            };
            let offsets = tokio::time::timeout(
                Duration::from_secs(5),
                partition.produce(vec![record], Compression::NoCompression),
            )
            .await??;
            Ok(format!("raw rskafka record at offset {offsets:?}"))
        }
        other => bail!("unknown backend {other:?}"),
    }
}
