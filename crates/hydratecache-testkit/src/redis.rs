//! A private `redis-server` for tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{find_binary, free_port, wait_for_port, Process, TempDir};

/// Environment variable naming an existing Redis to use instead of a private one.
pub const URL_VAR: &str = "HYDRATECACHE_REDIS_URL";

/// A `redis-server` on its own port and directory, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    process: Option<Process>,
}

impl RedisServer {
    /// Finds `redis-server` and starts it on a free port.
    pub fn start() -> Result<RedisServer> {
        let bin = find_binary(
            "redis-server",
            "HYDRATECACHE_REDIS_SERVER_BIN",
            &[],
            "install the Debian package `redis-server` (cargo xtask itest redis does)",
        )?;
        let mut server = RedisServer {
            bin,
            port: free_port()?,
            dir: TempDir::new("redis")?,
            process: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        let process = Process::spawn("redis-server", cmd, &self.dir.path().join("redis.log"))?;
        self.process = Some(process);
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// kill -9: the server is gone until [`start_again`](Self::start_again).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Starts it again on the same port (empty: Redis keeps nothing here).
    pub fn start_again(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// The running process.
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }
}

/// A Redis for tests that do not stop the server.
#[derive(Debug)]
pub enum Redis {
    /// The one at [`URL_VAR`].
    External(String),
    /// A private one.
    Private(RedisServer),
}

impl Redis {
    /// Its URL.
    pub fn url(&self) -> String {
        match self {
            Redis::External(url) => url.clone(),
            Redis::Private(server) => server.url(),
        }
    }
}

/// The Redis at [`URL_VAR`] if set, else a private one.
pub fn shared_or_private() -> Result<Redis> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(Redis::External(url)),
        _ => Ok(Redis::Private(RedisServer::start()?)),
    }
}
