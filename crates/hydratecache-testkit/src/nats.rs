//! A private `nats-server` for tests, with its HTTP monitoring port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{find_binary, free_port, wait_for_port, Process, TempDir};
use crate::tls::TestCerts;

/// Environment variable naming an existing NATS server to use instead of a private one.
pub const URL_VAR: &str = "HYDRATECACHE_NATS_URL";
/// Optional: the monitoring base URL (`http://host:8222`) of the server at [`URL_VAR`].
pub const MONITOR_URL_VAR: &str = "HYDRATECACHE_NATS_MONITOR_URL";

/// A `nats-server` on its own client and monitoring ports and directory,
/// killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    config: Option<PathBuf>,
    process: Option<Process>,
}

impl NatsServer {
    /// Finds `nats-server` and starts it on free ports.
    pub fn start() -> Result<NatsServer> {
        NatsServer::start_with_config(None)
    }

    /// Starts it with `config` (nats-server configuration syntax, for example
    /// `max_payload: 4096`) written to a file in its directory. The address
    /// and ports from the command line win over the file.
    pub fn start_with_config(config: Option<&str>) -> Result<NatsServer> {
        let bin = find_binary(
            "nats-server",
            "HYDRATECACHE_NATS_SERVER_BIN",
            &[],
            "install the Debian package `nats-server` (cargo xtask itest nats does)",
        )?;
        let dir = TempDir::new("nats")?;
        let config = match config {
            Some(text) => {
                let path = dir.path().join("nats.conf");
                std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let port = free_port()?;
        let mut monitor_port = free_port()?;
        while monitor_port == port {
            monitor_port = free_port()?;
        }
        let mut server = NatsServer {
            bin,
            port,
            monitor_port,
            dir,
            config,
            process: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()]);
        if self.config.is_none() {
            // JetStream on, its store in the server's own directory (kept
            // across `start_again`, as a real server's disk is). Not with a
            // configuration file: a cluster's would need a server name.
            cmd.arg("-js")
                .arg("-sd")
                .arg(self.dir.path().join("jetstream"));
        }
        cmd.current_dir(self.dir.path());
        let process = Process::spawn("nats-server", cmd, &self.dir.path().join("nats.log"))?;
        self.process = Some(process);
        wait_for_port(self.port, Duration::from_secs(10))
            .and_then(|()| wait_for_port(self.monitor_port, Duration::from_secs(10)))
            .with_context(|| format!("nats-server did not come up; its log: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        log.get(start..).unwrap_or_default().to_owned()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<monitor port>`: `/connz?subs=1` lists every
    /// connection with its subscriptions.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// kill -9: the server is gone until [`start_again`](Self::start_again).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Starts it again on the same ports (empty: core NATS keeps nothing).
    pub fn start_again(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }
}

/// A NATS server for tests that do not stop the server.
#[derive(Debug)]
pub enum Nats {
    /// The one at [`URL_VAR`], with the monitoring URL from [`MONITOR_URL_VAR`] if set.
    External {
        /// Client URL.
        url: String,
        /// Monitoring base URL, if known.
        monitor_url: Option<String>,
    },
    /// A private one.
    Private(NatsServer),
}

impl Nats {
    /// Its client URL.
    pub fn url(&self) -> String {
        match self {
            Nats::External { url, .. } => url.clone(),
            Nats::Private(server) => server.url(),
        }
    }

    /// Its monitoring base URL, when known.
    pub fn monitor_url(&self) -> Option<String> {
        match self {
            Nats::External { monitor_url, .. } => monitor_url.clone(),
            Nats::Private(server) => Some(server.monitor_url()),
        }
    }
}

/// The NATS server at [`URL_VAR`] if set, else a private one.
pub fn shared_or_private() -> Result<Nats> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(Nats::External {
            url,
            monitor_url: std::env::var(MONITOR_URL_VAR)
                .ok()
                .filter(|u| !u.is_empty()),
        }),
        _ => Ok(Nats::Private(NatsServer::start()?)),
    }
}

/// The body of `GET <monitor_url><path>` (for example `/connz?subs=1`), over
/// a plain HTTP/1.0 connection. Only `http://host:port` URLs.
pub fn monitor_get(monitor_url: &str, path: &str) -> Result<String> {
    let authority = monitor_url
        .strip_prefix("http://")
        .with_context(|| format!("{monitor_url}: only http:// monitoring URLs are supported"))?
        .trim_end_matches('/');
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("read the answer to GET {path} from {addr}"))?;
    let response = String::from_utf8(response).context("monitoring answer is not UTF-8")?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("malformed HTTP answer from {addr}: {response:.200}");
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("GET {path} from {addr}: {status}");
    }
    Ok(body.to_owned())
}

impl TestCerts {
    /// A nats-server `tls {}` block serving these (quoted paths); with
    /// `allow_non_tls`, clients may also connect without TLS.
    pub fn nats_config(&self, allow_non_tls: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n{}",
            self.cert(),
            self.key(),
            if allow_non_tls {
                "allow_non_tls: true\n"
            } else {
                ""
            }
        )
    }
}
