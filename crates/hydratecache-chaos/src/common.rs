//! What the driver and the instances share: the PRNG, the key space, the
//! cached row, the wall clock, the truth file and the backend connections.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hydratecache_core::Transport;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// Backends the run knows, in the order `all` runs them.
pub(crate) const BACKENDS: &[&str] = &["redis", "nats", "postgres", "kafka"];

/// The topic every process of a run uses.
pub(crate) const TOPIC: &str = "chaos_kv";

/// The table of the source of truth.
pub(crate) const TABLE: &str = "chaos_kv";

/// Zipf exponent of reads and writes.
pub(crate) const ZIPF_S: f64 = 1.0;

/// Microseconds since the Unix epoch (CLOCK_REALTIME, shared by every
/// process on this machine).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// splitmix64: a small deterministic PRNG.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A seed derived from `seed` and a label, so that each backend (and
    /// each instance) has its own stream whatever else runs.
    pub(crate) fn derive(seed: u64, label: &str) -> u64 {
        let mut h = SplitMix64(seed);
        let mut acc = h.next_u64();
        for b in label.bytes() {
            acc = SplitMix64(acc ^ u64::from(b)).next_u64();
        }
        acc
    }
}

/// Zipf over key ranks 0..n (rank 0 the hottest), sampled from its CDF.
#[derive(Debug)]
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub(crate) fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

pub(crate) fn key_name(index: usize) -> String {
    format!("k{index:05}")
}

pub(crate) fn key_index(key: &str) -> Option<usize> {
    key.strip_prefix('k')?.parse().ok()
}

/// One row of the source of truth, as cached and as broadcast: the version
/// travels inside the value too, so a read knows which version it returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) version: u64,
    pub(crate) value: String,
}

pub(crate) fn value_for(key: usize, version: u64) -> String {
    format!("{}:{version}:{}", key_name(key), "v".repeat(48))
}

/// Commit instants kept per key in the truth file: versions w, w-1, ... w-(RING-1).
pub(crate) const RING: usize = 5;
const SLOT_WORDS: usize = 3 + RING;
const SLOT_BYTES: u64 = (SLOT_WORDS * 8) as u64;

/// The latest committed version of one key and the commit instants of the
/// last few versions, as the writer last recorded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truth {
    pub(crate) version: u64,
    /// `commits[i]` is the commit instant (µs) of version `version - i`; 0 when unknown.
    pub(crate) commits: [u64; RING],
}

impl Truth {
    /// The commit instant of `version` (at most the latest), or the oldest
    /// one kept when `version` is older than that: a lower bound on how long
    /// a read of `version - 1` has been stale.
    pub(crate) fn commit_of(&self, version: u64) -> u64 {
        let back = self.version.saturating_sub(version) as usize;
        self.commits[back.min(RING - 1)]
    }
}

/// A file of one fixed-size slot per key, written by the writer after each
/// commit and read by the instances on every cache hit (`pread`, no shared
/// mapping): how an instance knows, at the moment of a read, whether the
/// version it got was already superseded and since when.
///
/// A slot is `[seq, version, commit instants..., seq]`; a reader retries a
/// slot whose two sequence words differ (it raced with a write).
#[derive(Debug)]
pub(crate) struct TruthFile {
    file: File,
}

impl TruthFile {
    /// Creates the file with every key at version 1, commit instant unknown.
    pub(crate) fn create(path: &Path, keys: usize) -> Result<TruthFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("create {}", path.display()))?;
        let truth = TruthFile { file };
        for k in 0..keys {
            truth.write(
                k,
                1,
                Truth {
                    version: 1,
                    commits: [0; RING],
                },
            )?;
        }
        Ok(truth)
    }

    pub(crate) fn open(path: &Path) -> Result<TruthFile> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        Ok(TruthFile { file })
    }

    pub(crate) fn write(&self, key: usize, seq: u64, truth: Truth) -> Result<()> {
        let mut words = [0u64; SLOT_WORDS];
        words[0] = seq;
        words[1] = truth.version;
        words[2..2 + RING].copy_from_slice(&truth.commits);
        words[SLOT_WORDS - 1] = seq;
        let mut bytes = [0u8; SLOT_WORDS * 8];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        self.file
            .write_all_at(&bytes, key as u64 * SLOT_BYTES)
            .context("write the truth file")
    }

    pub(crate) fn read(&self, key: usize) -> Option<Truth> {
        let mut bytes = [0u8; SLOT_WORDS * 8];
        for _ in 0..100 {
            self.file
                .read_exact_at(&mut bytes, key as u64 * SLOT_BYTES)
                .ok()?;
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
                u64::from_le_bytes(w)
            };
            if word(0) != word(SLOT_WORDS - 1) {
                std::hint::spin_loop();
                continue;
            }
            let mut commits = [0u64; RING];
            for (i, c) in commits.iter_mut().enumerate() {
                *c = word(2 + i);
            }
            return Some(Truth {
                version: word(1),
                commits,
            });
        }
        None
    }
}

/// A pool on the source of truth. Commits are synchronous (WAL written to
/// the OS before `COMMIT` returns) whatever the server's default, so that a
/// kill -9 of the server never takes back a commit the writer saw succeed.
pub(crate) async fn truth_pool(url: &str, connections: u32) -> Result<PgPool> {
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .context("parse the PostgreSQL URL")?
        .options([("synchronous_commit", "on")]);
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(options)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// The transport of `backend` at `url`. PostgreSQL publishes through `pool`
/// (the source of truth and the backend are then one cluster).
pub(crate) async fn connect_backend(
    backend: &str,
    url: &str,
    pool: Option<&PgPool>,
) -> Result<Arc<dyn Transport>> {
    Ok(match backend {
        "redis" => hydratecache_redis::RedisTransport::connect(url)
            .await?
            .into_arc(),
        "nats" => hydratecache_nats::NatsTransport::connect(url)
            .await?
            .into_arc(),
        "postgres" => {
            let pool = pool.context("the PostgreSQL transport needs the pool")?;
            hydratecache_postgres::PostgresTransport::from_pool(pool.clone()).into_arc()
        }
        "kafka" => hydratecache_kafka::KafkaTransport::builder()
            .create_topics(hydratecache_kafka::TopicSettings::default())
            .request_timeout(Duration::from_secs(5))
            .retry_backoff_max(Duration::from_millis(500))
            .connect(url)
            .await?
            .into_arc(),
        other => bail!("unknown backend {other:?}"),
    })
}

/// `VmHWM` and `VmRSS` of `pid` (`self` for this process), in KiB.
pub(crate) fn memory_kb(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Simple `--name value` arguments.
#[derive(Debug, Default)]
pub(crate) struct Args {
    pairs: Vec<(String, String)>,
    pub(crate) positional: Vec<String>,
}

impl Args {
    pub(crate) fn parse(args: &[String]) -> Result<Args> {
        let mut out = Args::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let value = it
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?;
                out.pairs.push((name.to_owned(), value.clone()));
            } else {
                out.positional.push(a.clone());
            }
        }
        Ok(out)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn need(&self, name: &str) -> Result<&str> {
        self.get(name).with_context(|| format!("missing --{name}"))
    }

    pub(crate) fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{name} {v:?} is not a number")),
        }
    }
}

/// Parses `60s`, `1500ms`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        other => bail!("unknown unit {other:?} in {s:?} (use ms, s or m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The kinds of fault a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FaultKind {
    ServerKill,
    ConnKill,
    Pause,
    Garbage,
    Oversize,
    InstanceRestart,
}

impl FaultKind {
    pub(crate) const ALL: [FaultKind; 6] = [
        FaultKind::ServerKill,
        FaultKind::ConnKill,
        FaultKind::Pause,
        FaultKind::Garbage,
        FaultKind::Oversize,
        FaultKind::InstanceRestart,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::ServerKill => "server kill -9 + restart",
            FaultKind::ConnKill => "subscriber connections killed",
            FaultKind::Pause => "instance SIGSTOP/SIGCONT",
            FaultKind::Garbage => "third-party garbage",
            FaultKind::Oversize => "oversize publish",
            FaultKind::InstanceRestart => "instance kill -9 + restart",
        }
    }

    pub(crate) fn id(self) -> &'static str {
        match self {
            FaultKind::ServerKill => "server_kill",
            FaultKind::ConnKill => "conn_kill",
            FaultKind::Pause => "pause",
            FaultKind::Garbage => "garbage",
            FaultKind::Oversize => "oversize",
            FaultKind::InstanceRestart => "instance_restart",
        }
    }
}

/// What the writer did.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) committed: u64,
    pub(crate) commit_errors: u64,
    pub(crate) uncertain_committed: u64,
    pub(crate) published: u64,
    pub(crate) publish_errors: u64,
    pub(crate) longest_publish_outage_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_derived_streams_differ() {
        let a: Vec<u64> = (0..4)
            .scan(SplitMix64(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(SplitMix64(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            SplitMix64::derive(7, "redis"),
            SplitMix64::derive(7, "nats")
        );
        assert_eq!(
            SplitMix64::derive(7, "redis"),
            SplitMix64::derive(7, "redis")
        );
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = SplitMix64(1);
        let mut hits = [0u32; 2];
        for _ in 0..10_000 {
            let k = z.sample(&mut rng);
            assert!(k < 1000);
            if k == 0 {
                hits[0] += 1;
            } else if k == 999 {
                hits[1] += 1;
            }
        }
        assert!(hits[0] > 100 * hits[1].max(1) / 2, "{hits:?}");
    }

    #[test]
    fn truth_file_round_trips_and_finds_commit_instants() {
        let dir = std::env::temp_dir().join(format!("chaos-truth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("truth.bin");
        let w = TruthFile::create(&path, 3).expect("create");
        let t = Truth {
            version: 9,
            commits: [90, 80, 70, 60, 50],
        };
        w.write(1, 2, t).expect("write");
        let r = TruthFile::open(&path).expect("open");
        assert_eq!(r.read(1), Some(t));
        assert_eq!(r.read(0).map(|t| t.version), Some(1));
        assert_eq!(t.commit_of(9), 90);
        assert_eq!(t.commit_of(8), 80);
        assert_eq!(t.commit_of(2), 50, "older than the ring: the oldest kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s").ok(), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("15").ok(), Some(Duration::from_secs(15)));
        assert_eq!(
            parse_duration("1500ms").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
    }
}
