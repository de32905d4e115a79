//! `hydratecache`: tail, publish and check a hydratecache channel on any
//! backend. See the README for the commands, the JSON schema of
//! `tail --format json` and how to debug a channel.

mod backends;
mod check;
mod cli;
mod diagnose;
mod duration;
mod output;
mod publish;
mod signals;
mod tail;
mod value;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Bound on `close()` after a publish or a check, for adapters given
/// `connect_timeout` as their own limit. Above each adapter's own bounds
/// (NATS: up to `connect_timeout` to confirm the server has what was
/// published, then as long again to drain), so the adapter's answer, not
/// this timer, ends the close.
pub(crate) fn close_timeout(connect_timeout: std::time::Duration) -> std::time::Duration {
    connect_timeout
        .saturating_mul(2)
        .saturating_add(std::time::Duration::from_secs(5))
}

/// Wrong input that clap could not see (exit status 2, like clap's own).
#[derive(Debug)]
pub(crate) struct UsageError(String);

impl UsageError {
    pub(crate) fn new(message: impl Into<String>) -> UsageError {
        UsageError(message.into())
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The cause chain joined with `: ` (as `{:#}` does), leaving out a cause
/// whose text its parent already shows (many client errors print their
/// source in their own message).
pub(crate) fn chain_text(error: &anyhow::Error) -> String {
    error_text(error.as_ref())
}

/// [`chain_text`] for any error.
pub(crate) fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        next = cause.source();
        let message = cause.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

/// Writes one line to stdout; a closed stdout is not worth a panic.
pub(crate) fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Writes one line to stderr, ignoring a closed stderr.
pub(crate) fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        err(&format!("error: internal error (please report it): {info}"));
    }));
    // clap prints its own message and exits with 2 on usage errors (0 for
    // --help and --version).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            err(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Tail(args) => tail::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Check(args) => check::run(args).await,
        }
    });
    let code = match result {
        Ok(()) => 0,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            err(&format!(
                "error: {e}\n\nFor more information, try '--help'."
            ));
            2
        }
        Err(e) => {
            // The whole cause chain on one line.
            err(&format!("error: {}", chain_text(&e)));
            1
        }
    };
    let _ = std::io::stdout().flush();
    // Exit now: background tasks of the clients (reconnect loops, DNS
    // lookups on blocking threads) must not hold the process up.
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Client(std::io::Error);

    impl fmt::Display for Client {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "IO Error: {}", self.0)
        }
    }

    impl std::error::Error for Client {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_cause_chain_is_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(Client(io))
            .context("redis: connect")
            .context("cannot connect to redis://h:1");
        assert_eq!(
            chain_text(&e),
            "cannot connect to redis://h:1: redis: connect: IO Error: Connection refused"
        );
    }
}
