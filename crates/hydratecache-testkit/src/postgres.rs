//! A private PostgreSQL cluster for tests.
//!
//! `initdb` into its own temporary directory, then `postgres` in the
//! foreground on a free port (TCP on 127.0.0.1, Unix socket in the same
//! directory). The server refuses to run as root, so when the tests run as
//! root (CI does) the directory is handed to the `postgres` OS user and
//! `initdb`/`postgres` run as that user through `setpriv` (or `runuser`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{find_binary, free_port, run_quiet, wait_for_port, Process, TempDir};

/// Environment variable naming an existing PostgreSQL to use instead of a private one.
pub const URL_VAR: &str = "HYDRATECACHE_POSTGRES_URL";

/// The database the private cluster creates for tests.
pub const DATABASE: &str = "test";

const INSTALL_HINT: &str =
    "install the Debian package `postgresql` (cargo xtask itest postgres does)";

/// The OS user the server runs as when the tests run as root.
const OS_USER: &str = "postgres";

/// A `postgres` cluster on its own port and directory, killed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    postgres: PathBuf,
    psql: PathBuf,
    port: u16,
    /// `Some(user)` when the server runs as another OS user (tests run as root).
    run_as: Option<&'static str>,
    process: Option<Process>,
    /// Extra `-c name=value` settings.
    settings: Vec<String>,
    // Dropped last: the directory goes once the server is dead.
    dir: TempDir,
}

impl PostgresServer {
    /// Finds the PostgreSQL binaries, creates a cluster and starts it on a free port
    /// with a database [`DATABASE`].
    pub fn start() -> Result<PostgresServer> {
        PostgresServer::start_with(&[], &[])
    }

    /// Like [`start`](Self::start), with `files` (name, contents) written into
    /// the data directory before the server starts, owned by the server's OS
    /// user with mode 0600 (as a TLS key file must be), and `settings` passed
    /// as `-c name=value` (for example `ssl=on`, `ssl_cert_file=server.crt`:
    /// relative names are found in the data directory).
    pub fn start_with(
        settings: &[(&str, &str)],
        files: &[(&str, &[u8])],
    ) -> Result<PostgresServer> {
        let postgres = find_pg_binary("postgres", "HYDRATECACHE_POSTGRES_BIN")?;
        // initdb from the same installation as the server when possible.
        let initdb = sibling(&postgres, "initdb")
            .map_or_else(|| find_pg_binary("initdb", "HYDRATECACHE_INITDB_BIN"), Ok)?;
        let psql = find_psql()?;
        let run_as = if is_root() { Some(OS_USER) } else { None };
        let dir = TempDir::new("postgres")?;
        if let Some(user) = run_as {
            run_quiet(
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(dir.path()),
            )
            .with_context(|| {
                format!(
                    "hand {} to the `{user}` OS user (the server refuses to run as root)",
                    dir.path().display()
                )
            })?;
        }
        let mut server = PostgresServer {
            postgres,
            psql,
            port: free_port()?,
            run_as,
            process: None,
            settings: settings.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            dir,
        };

        let mut cmd = server.command(&initdb);
        cmd.arg("-D").arg(server.data_dir()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (name, contents) in files {
            server.install_file(name, contents)?;
        }
        server.spawn()?;
        server
            .psql_at("postgres", &format!("CREATE DATABASE {DATABASE}"))
            .context("create the test database")?;
        Ok(server)
    }

    /// Writes `contents` to `name` in the data directory, readable only by
    /// the server's OS user.
    fn install_file(&self, name: &str, contents: &[u8]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        if let Some(user) = self.run_as {
            run_quiet(Command::new("chown").arg(format!("{user}:")).arg(&path))
                .with_context(|| format!("hand {} to `{user}`", path.display()))?;
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running `bin` as the server's OS user, in the cluster's directory.
    fn command(&self, bin: &Path) -> Command {
        let mut cmd = match self.run_as {
            Some(user) => as_user(user, bin),
            None => Command::new(bin),
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = self.command(&self.postgres);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=16MB"]);
        for setting in &self.settings {
            cmd.arg("-c").arg(setting);
        }
        let log = self.dir.path().join("postgres.log");
        self.process = Some(Process::spawn("postgres", cmd, &log)?);
        let deadline = Instant::now() + Duration::from_secs(60);
        wait_for_port(self.port, Duration::from_secs(60))
            .with_context(|| format!("postgres did not start; see {}", log.display()))?;
        // The port opens before the server accepts queries.
        loop {
            match self.psql_at("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("postgres is not ready; see {}", log.display())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs `sql` with `psql` against `database`; returns its unaligned output.
    fn psql_at(&self, database: &str, sql: &str) -> Result<String> {
        psql_with(&self.psql, &self.url_for(database), sql)
    }

    fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `postgres://postgres@127.0.0.1:<port>/test`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data in `data/`, log in `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// kill -9 of the postmaster and every backend (they sit in their own
    /// process groups): the server is gone until [`start_again`](Self::start_again).
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
    }

    /// Starts it again on the same port and data directory (after crash
    /// recovery the data is still there; notifications and sessions are not).
    pub fn start_again(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// SIGSTOP of the postmaster and every backend: connections stay open and
    /// nothing answers, as with a hung server or a half-open connection;
    /// new connections are accepted by the kernel and never served.
    /// [`thaw`](Self::thaw) resumes it (dropping it kills it either way).
    pub fn freeze(&self) -> Result<()> {
        self.signal_tree("STOP")
    }

    /// SIGCONT of the postmaster and every backend, after [`freeze`](Self::freeze).
    pub fn thaw(&self) -> Result<()> {
        self.signal_tree("CONT")
    }

    fn signal_tree(&self, signal: &str) -> Result<()> {
        let root = self.pid().context("the server is not running")?;
        let mut pids = vec![root];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(children(pids[i]));
            i += 1;
        }
        for pid in pids {
            run_quiet(
                Command::new("kill")
                    .args(["-s", signal, "--"])
                    .arg(pid.to_string()),
            )
            .with_context(|| format!("kill -s {signal} {pid}"))?;
        }
        Ok(())
    }

    /// Process id of the running postmaster.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A PostgreSQL for tests that do not stop the server.
#[derive(Debug)]
pub enum Postgres {
    /// The one at [`URL_VAR`].
    External(String),
    /// A private one.
    Private(PostgresServer),
}

impl Postgres {
    /// Its URL.
    pub fn url(&self) -> String {
        match self {
            Postgres::External(url) => url.clone(),
            Postgres::Private(server) => server.url(),
        }
    }
}

/// The PostgreSQL at [`URL_VAR`] if set, else a private one.
pub fn shared_or_private() -> Result<Postgres> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(Postgres::External(url)),
        _ => Ok(Postgres::Private(PostgresServer::start()?)),
    }
}

/// Runs `sql` with `psql` (as a foreign client would) against `url`; returns
/// its unaligned, tuples-only output. Fails with psql's message on an error.
pub fn psql(url: &str, sql: &str) -> Result<String> {
    psql_with(&find_psql()?, url, sql)
}

fn psql_with(psql: &Path, url: &str, sql: &str) -> Result<String> {
    let out = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", psql.display()))?;
    if !out.status.success() {
        bail!(
            "psql -c {sql:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn find_psql() -> Result<PathBuf> {
    find_pg_binary("psql", "HYDRATECACHE_PSQL_BIN")
}

/// `/usr/lib/postgresql/<version>/bin`, newest first.
fn pg_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, d)| d).collect()
}

fn find_pg_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    find_binary(name, env_var, &pg_dirs(), INSTALL_HINT)
}

/// `name` in the same directory as `bin` (following symlinks).
fn sibling(bin: &Path, name: &str) -> Option<PathBuf> {
    let real = std::fs::canonicalize(bin).ok()?;
    let path = real.parent()?.join(name);
    path.is_file().then_some(path)
}

/// Direct children of `pid`, from `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn is_root() -> bool {
    // Effective uid: the second field of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `bin` run as `user`: `setpriv` execs it directly (the child is the server
/// itself); `runuser` is the fallback.
fn as_user(user: &str, bin: &Path) -> Command {
    if let Ok(setpriv) = find_binary("setpriv", "HYDRATECACHE_SETPRIV_BIN", &[], "") {
        let mut cmd = Command::new(setpriv);
        cmd.arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--init-groups")
            .arg("--")
            .arg(bin);
        cmd
    } else {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--"]).arg(bin);
        cmd
    }
}
