//! A private `redis-server` for tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{find_binary, free_port, wait_for_port, Process, TempDir};
use crate::tls::TestCerts;

/// Environment variable naming an existing Redis to use instead of a private one.
pub const URL_VAR: &str = "HYDRATECACHE_REDIS_URL";

/// A `redis-server` on its own port and directory, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    process: Option<Process>,
    tls: Option<TestCerts>,
}

impl RedisServer {
    /// Finds `redis-server` and starts it on a free port.
    pub fn start() -> Result<RedisServer> {
        RedisServer::start_with(None)
    }

    /// Starts a server that speaks TLS only (`--tls-port`, no plaintext
    /// port), with a CA and certificate generated here by the `openssl`
    /// command (clients are not asked for certificates).
    pub fn start_tls() -> Result<RedisServer> {
        RedisServer::start_with(Some(TestCerts::generate()?))
    }

    fn start_with(tls: Option<TestCerts>) -> Result<RedisServer> {
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
            tls,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        let port = self.port.to_string();
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(tls.cert())
                    .arg("--tls-key-file")
                    .arg(tls.key())
                    .arg("--tls-ca-cert-file")
                    .arg(tls.ca())
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
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

    /// `rediss://127.0.0.1:<port>` for a server from
    /// [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The certificates of a server from [`start_tls`](Self::start_tls).
    pub fn tls_certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    /// SIGSTOP: the server keeps its connections open but answers nothing
    /// until [`resume`](Self::resume).
    pub fn pause(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("the server is not running")?
            .signal("STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("the server is not running")?
            .signal("CONT")
    }

    /// kill -9 (of its pid only): the server is gone until
    /// [`start_again`](Self::start_again).
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

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
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

/// Finds `redis-cli` (`HYDRATECACHE_REDIS_CLI_BIN`, else `PATH`); the error
/// names the package to install.
pub fn cli_binary() -> Result<PathBuf> {
    find_binary(
        "redis-cli",
        "HYDRATECACHE_REDIS_CLI_BIN",
        &[],
        "install the Debian package `redis-tools` (it comes with `redis-server`; cargo xtask itest redis installs it)",
    )
}

/// Runs `redis-cli -u <url> <args>` and returns its standard output. With
/// `last_arg_stdin`, the bytes are passed on standard input as the last
/// argument (`redis-cli -x`): binary safe, NUL bytes included.
pub fn cli(url: &str, args: &[&str], last_arg_stdin: Option<&[u8]>) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;

    let bin = cli_binary()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["-u", url]);
    if last_arg_stdin.is_some() {
        cmd.arg("-x");
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("start {cmd:?}"))?;
    {
        let mut stdin = child.stdin.take().context("redis-cli stdin")?;
        if let Some(bytes) = last_arg_stdin {
            stdin.write_all(bytes).context("write to redis-cli")?;
        }
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("run {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stdout.starts_with("ERR") || stdout.starts_with("(error)") {
        bail!("{cmd:?} failed ({}): {stdout}{stderr}", out.status);
    }
    Ok(stdout)
}

/// `CLIENT KILL TYPE pubsub`: cuts every subscriber connection of the server
/// at `url`. Returns how many were killed.
pub fn kill_pubsub_clients(url: &str) -> Result<u64> {
    kill_clients(url, "pubsub")
}

/// `CLIENT KILL TYPE <kind> SKIPME yes` (`normal`, `pubsub`, ...): how many
/// connections the server at `url` closed.
pub fn kill_clients(url: &str, kind: &str) -> Result<u64> {
    let out = cli(
        url,
        &["CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes"],
        None,
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("CLIENT KILL answered {out:?}"))
}

/// `PUBSUB NUMSUB <channel>`: subscribers of `channel` on the server at `url`.
pub fn numsub(url: &str, channel: &str) -> Result<u64> {
    let out = cli(url, &["PUBSUB", "NUMSUB", channel], None)?;
    // Two lines: the channel, then the count.
    out.lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("PUBSUB NUMSUB answered {out:?}"))
}

/// The Redis at [`URL_VAR`] if set, else a private one.
pub fn shared_or_private() -> Result<Redis> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(Redis::External(url)),
        _ => Ok(Redis::Private(RedisServer::start()?)),
    }
}
