//! Connection failures in plain words: what went wrong and what to try.

use std::io;

/// How the context of a connection failure starts (the URL follows, which
/// the diagnosis leaves out).
pub(crate) const CONNECT_CONTEXT: &str = "cannot connect to ";

/// What kind of failure an error chain shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Nothing accepts connections at that address.
    Refused,
    /// The host name does not resolve.
    UnknownHost,
    /// The server refused the credentials.
    Auth,
    /// TLS could not be set up (certificate, handshake, TLS not enabled).
    Tls,
    /// No answer in time.
    Timeout,
    /// The server hung up during the handshake.
    Reset,
    /// The database, topic or other named thing does not exist.
    Missing,
}

impl Problem {
    /// One word or two for the first line.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Problem::Refused => "connection refused",
            Problem::UnknownHost => "unknown host",
            Problem::Auth => "authentication failed",
            Problem::Tls => "TLS failed",
            Problem::Timeout => "timed out",
            Problem::Reset => "connection closed by the server",
            Problem::Missing => "does not exist",
        }
    }

    /// What the user can try.
    pub(crate) fn advice(self) -> &'static str {
        match self {
            Problem::Refused => {
                "nothing accepts connections at that host and port: check that the server is running, \
                 that the port is right and that a firewall does not reject it"
            }
            Problem::UnknownHost => "the host name does not resolve: check its spelling and your DNS",
            Problem::Auth => {
                "check the user name and password (or token) in the URL, and that this user may connect"
            }
            Problem::Tls => {
                "check whether the server expects TLS (rediss://, tls://, sslmode=require) or plain TCP, \
                 and that its certificate is valid for this host name and trusted here"
            }
            Problem::Timeout => {
                "no answer in time: check the host and port, that a firewall does not drop the packets, \
                 and try a longer --connect-timeout"
            }
            Problem::Reset => {
                "the server closed the connection: is this port the right service, \
                 and does the server expect TLS?"
            }
            Problem::Missing => "check the name in the URL (database) or create it first",
        }
    }
}

/// The most likely [`Problem`] behind `error`, from the types and messages
/// of its cause chain.
pub(crate) fn diagnose(error: &anyhow::Error) -> Option<Problem> {
    for cause in error.chain() {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return Some(Problem::Refused),
                io::ErrorKind::TimedOut => return Some(Problem::Timeout),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
                    return Some(Problem::Reset)
                }
                _ => {}
            }
        }
    }
    // Our own context names the URL (`tls://`, `password=***`): leave it out.
    let text: Vec<String> = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|message| !message.starts_with(CONNECT_CONTEXT))
        .collect();
    classify(&text.join(": ").to_lowercase())
}

/// [`diagnose`] on the text of a cause chain (lowercase).
fn classify(text: &str) -> Option<Problem> {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["connection refused", "refused"]) {
        Some(Problem::Refused)
    } else if has(&[
        "failed to lookup address",
        "name or service not known",
        "nodename nor servname",
        "no such host",
        "temporary failure in name resolution",
        "dns error",
    ]) {
        Some(Problem::UnknownHost)
    } else if has(&[
        "noauth",
        "wrongpass",
        "invalid username-password",
        "authentication",
        "authorization violation",
        "password authentication",
        "no password",
        "no pg_hba.conf entry",
        "sasl",
        "not authorized",
    ]) {
        Some(Problem::Auth)
    } else if has(&["tls", "ssl", "certificate", "handshake", "x509"]) {
        Some(Problem::Tls)
    } else if has(&[
        "timed out",
        "timeout",
        "no connection within",
        "no answer within",
        "deadline",
    ]) {
        Some(Problem::Timeout)
    } else if has(&[
        "connection reset",
        "broken pipe",
        "unexpected eof",
        "unexpected end of file",
        "connection closed",
    ]) {
        Some(Problem::Reset)
    } else if has(&["does not exist"]) {
        Some(Problem::Missing)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_win() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionRefused))
            .context("cannot connect");
        assert_eq!(diagnose(&e), Some(Problem::Refused));
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(diagnose(&e), Some(Problem::Timeout));
    }

    #[test]
    fn client_messages_are_recognised() {
        for (text, problem) in [
            ("redis: connect the publishing client: IO Error: Connection refused (os error 111)", Problem::Refused),
            ("WRONGPASS invalid username-password pair or user is disabled.", Problem::Auth),
            ("postgres: connect: error returned from database: password authentication failed for user \"x\"", Problem::Auth),
            ("nats: connect: authorization violation", Problem::Auth),
            ("invalid peer certificate: UnknownIssuer", Problem::Tls),
            ("no connection within 5.0s", Problem::Timeout),
            ("failed to lookup address information: Name or service not known", Problem::UnknownHost),
            ("database \"nope\" does not exist", Problem::Missing),
            ("something else", Problem::Refused),
        ] {
            let got = classify(&text.to_lowercase());
            if text == "something else" {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(problem), "{text}");
            }
        }
    }
}
