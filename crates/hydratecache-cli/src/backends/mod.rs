//! Which adapter a URL needs, and the one place that connects it.
//!
//! Each backend's glue is one small module (`redis.rs`, `nats.rs`,
//! `postgres.rs`, `kafka.rs`), compiled only with its cargo feature.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use hydratecache_core::{Envelope, Transport};

use crate::diagnose::{Problem, CONNECT_CONTEXT};

#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

/// The backends the command line knows, whether compiled in or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Redis,
    Nats,
    Postgres,
    Kafka,
}

impl Scheme {
    /// The cargo feature (and backend name) of this scheme.
    pub(crate) fn feature(self) -> &'static str {
        match self {
            Scheme::Redis => "redis",
            Scheme::Nats => "nats",
            Scheme::Postgres => "postgres",
            Scheme::Kafka => "kafka",
        }
    }

    fn compiled_in(self) -> bool {
        match self {
            Scheme::Redis => cfg!(feature = "redis"),
            Scheme::Nats => cfg!(feature = "nats"),
            Scheme::Postgres => cfg!(feature = "postgres"),
            Scheme::Kafka => cfg!(feature = "kafka"),
        }
    }

    fn from_scheme(scheme: &str) -> Option<Scheme> {
        Some(match scheme.to_ascii_lowercase().as_str() {
            "redis" | "rediss" | "redis-cluster" | "redis-sentinel" => Scheme::Redis,
            "nats" | "tls" => Scheme::Nats,
            "postgres" | "postgresql" => Scheme::Postgres,
            "kafka" => Scheme::Kafka,
            _ => return None,
        })
    }
}

/// A backend URL from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendUrl {
    pub(crate) scheme: Scheme,
    url: String,
}

impl BackendUrl {
    /// The URL as given (with its password: for the adapter only).
    pub(crate) fn as_str(&self) -> &str {
        &self.url
    }
}

/// The URL with any password replaced by `***`, for messages.
impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

const SCHEMES: &str = "redis://, rediss://, nats://, tls://, postgres://, postgresql:// or kafka://host:port[,host:port]";

/// Reads a URL argument (clap value parser): known scheme, adapter compiled in.
pub(crate) fn parse_url(text: &str) -> Result<BackendUrl, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "{:?} is not a URL: expected {SCHEMES}",
            redact(text)
        ));
    };
    let Some(kind) = Scheme::from_scheme(scheme) else {
        return Err(format!(
            "unsupported URL scheme {scheme:?}: expected {SCHEMES}"
        ));
    };
    if rest.is_empty() {
        return Err(format!("{text:?} names no server"));
    }
    if !kind.compiled_in() {
        let feature = kind.feature();
        return Err(format!(
            "this hydratecache was built without the `{feature}` feature, so it cannot use {scheme}:// URLs; \
             rebuild it with the feature: cargo install hydratecache-cli --features {feature}"
        ));
    }
    Ok(BackendUrl {
        scheme: kind,
        url: text.to_owned(),
    })
}

/// `scheme://user:password@host` → `scheme://user:***@host`, and any
/// `password=` query value → `password=***`.
///
/// A password may hold `/`, `?`, `#` or `@` unencoded, which no URL parser
/// reads as a password (they end the authority), so this does not parse:
/// the user-info runs to the *last* `@`. That hides a little too much when
/// a query value holds an `@`, never too little.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Query parameters that carry secrets (Postgres `password=`) first: a
    // value may hold an '@', which must not be taken for the user-info's end.
    let rest = rest
        .split('&')
        .map(|part| match part.split_once("password=") {
            Some((before, _)) => format!("{before}password=***"),
            None => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    let Some(at) = rest.rfind('@') else {
        return format!("{scheme}://{rest}");
    };
    let (userinfo, host) = rest.split_at(at);
    let userinfo = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // NATS reads a lone user-info as a token.
        None if Scheme::from_scheme(scheme) == Some(Scheme::Nats) => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{userinfo}{host}")
}

/// Settings that apply to every backend.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    /// Bound on establishing the connection.
    pub(crate) timeout: Duration,
    /// Create missing topics (Kafka only; other backends need none).
    pub(crate) create_topics: bool,
}

/// What the server says about itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerInfo {
    /// Product and version, `None` when the backend does not tell.
    pub(crate) version: Option<String>,
    /// Anything else worth a line (mode, name, limits).
    pub(crate) details: Vec<(String, String)>,
}

/// How many bytes a message takes on the backend's wire.
#[derive(Debug, Clone)]
pub(crate) struct WireSize {
    pub(crate) bytes: usize,
    /// What those bytes are, when not simply the envelope.
    pub(crate) note: Option<&'static str>,
}

/// One connected adapter: its transport plus what the command line needs
/// beyond the `Transport` trait.
pub(crate) trait Adapter: Send + Sync {
    fn transport(&self) -> Arc<dyn Transport>;
    /// Asks the server for its product and version.
    fn server_info(&self) -> BoxFuture<'_, Result<ServerInfo>>;
    /// Size of `envelope` as the backend carries it.
    fn wire_size(&self, envelope: &Envelope) -> WireSize;
}

/// Connects the adapter for `url`, within `options.timeout`.
pub(crate) async fn connect(
    url: &BackendUrl,
    options: &ConnectOptions,
) -> Result<Box<dyn Adapter>> {
    // The adapters bound their own connection attempts; this is the
    // backstop so that nothing waits forever.
    let backstop = options.timeout.saturating_add(Duration::from_secs(2));
    let connecting = tokio::time::timeout(backstop, connect_inner(url, options));
    // Some clients retry a refused connection until their timeout and then
    // report only the timeout (sqlx's pool, rskafka). When the connection
    // takes a while, look at the TCP level: a refusal ends the wait at once.
    let refused_early = async {
        tokio::time::sleep(PROBE_AFTER).await;
        match probe(url).await {
            Probe::Refused(finding) => finding,
            Probe::Accepted | Probe::Failed(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = connecting => match result {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "no connection within {}",
                crate::duration::human(backstop)
            )),
        },
        finding = refused_early => Err(anyhow::anyhow!(finding)),
    };
    let result = match result {
        Ok(adapter) => Ok(adapter),
        Err(e) => match crate::diagnose::diagnose(&e) {
            Some(Problem::Refused | Problem::Auth | Problem::Tls | Problem::UnknownHost) => Err(e),
            // A timeout or something vague: add what TCP says.
            _ => match probe(url).await {
                Probe::Refused(finding) | Probe::Failed(finding) => Err(e.context(finding)),
                Probe::Accepted => Err(e),
            },
        },
    };
    result.with_context(|| format!("{CONNECT_CONTEXT}{url}"))
}

/// Adds what to do to a publish or subscribe error, where there is advice.
pub(crate) fn advise(url: &BackendUrl, topic: &str, error: anyhow::Error) -> anyhow::Error {
    let missing_topic = matches!(
        error.chain().find_map(|c| c.downcast_ref::<hydratecache_core::Error>()),
        Some(hydratecache_core::Error::InvalidTopic { reason, .. }) if reason.contains("does not exist")
    );
    if url.scheme == Scheme::Kafka && missing_topic {
        error.context(format!(
            "the Kafka topic {topic:?} does not exist: create it, or pass --create-topic"
        ))
    } else {
        error
    }
}

/// How long a connection may take before [`probe`] looks at the TCP level.
const PROBE_AFTER: Duration = Duration::from_millis(300);

/// The `host:port` pairs of a URL (the default port when it has none);
/// empty when the URL names no TCP host (a Unix socket).
fn hosts(url: &BackendUrl) -> Vec<(String, u16)> {
    let default_port = match url.scheme {
        Scheme::Redis => 6379,
        Scheme::Nats => 4222,
        Scheme::Postgres => 5432,
        Scheme::Kafka => 9092,
    };
    let Some((_, rest)) = url.url.split_once("://") else {
        return Vec::new();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .filter_map(|h| {
            // [v6]:port, host:port, host
            let (host, port) = if let Some(v6) = h.strip_prefix('[') {
                let (host, after) = v6.split_once(']')?;
                (host, after.strip_prefix(':'))
            } else {
                match h.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (h, None),
                }
            };
            let port = match port {
                Some(p) => p.parse().ok()?,
                None => default_port,
            };
            Some((host.to_owned(), port))
        })
        .collect()
}

/// What a plain TCP connection to a URL's hosts found.
enum Probe {
    /// One host accepted it (or the URL names no TCP host).
    Accepted,
    /// Every host refused it.
    Refused(String),
    /// No host accepted it, not all refused.
    Failed(String),
}

/// Tries a plain TCP connection to each host of `url`.
async fn probe(url: &BackendUrl) -> Probe {
    let hosts = hosts(url);
    if hosts.is_empty() {
        return Probe::Accepted;
    }
    let mut findings = Vec::new();
    let mut all_refused = true;
    for (host, port) in hosts {
        let addr = format!("{host}:{port}");
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        match attempt {
            Ok(Ok(_)) => return Probe::Accepted,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                findings.push(format!("connection refused by {addr}"));
            }
            Ok(Err(e)) => {
                all_refused = false;
                findings.push(format!("TCP connection to {addr} failed: {e}"));
            }
            Err(_) => {
                all_refused = false;
                findings.push(format!("TCP connection to {addr} timed out"));
            }
        }
    }
    let text = findings.join("; ");
    if all_refused {
        Probe::Refused(text)
    } else {
        Probe::Failed(text)
    }
}

async fn connect_inner(url: &BackendUrl, options: &ConnectOptions) -> Result<Box<dyn Adapter>> {
    let adapter: Box<dyn Adapter> = match url.scheme {
        #[cfg(feature = "redis")]
        Scheme::Redis => Box::new(redis::connect(url.as_str(), options).await?),
        #[cfg(feature = "nats")]
        Scheme::Nats => Box::new(nats::connect(url.as_str(), options).await?),
        #[cfg(feature = "postgres")]
        Scheme::Postgres => Box::new(postgres::connect(url.as_str(), options).await?),
        #[cfg(feature = "kafka")]
        Scheme::Kafka => Box::new(kafka::connect(url.as_str(), options).await?),
        // Unreachable when every feature is on; parse_url refuses the rest.
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "this hydratecache was built without the `{}` feature",
            other.feature()
        ),
    };
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_backend() {
        for (url, scheme) in [
            ("redis://127.0.0.1:6379", Scheme::Redis),
            ("rediss://cache.example:6380/0", Scheme::Redis),
            ("nats://127.0.0.1:4222", Scheme::Nats),
            ("tls://nats.example:4222", Scheme::Nats),
            ("postgres://u@h/db", Scheme::Postgres),
            ("postgresql://u@h/db", Scheme::Postgres),
            ("kafka://a:9092,b:9092", Scheme::Kafka),
            ("REDIS://h:1", Scheme::Redis),
        ] {
            if scheme.compiled_in() {
                assert_eq!(parse_url(url).expect(url).scheme, scheme, "{url}");
            } else {
                let err = parse_url(url).expect_err(url);
                assert!(
                    err.contains(&format!("--features {}", scheme.feature())),
                    "{err}"
                );
            }
        }
        assert!(parse_url("http://h")
            .expect_err("http")
            .contains("unsupported URL scheme"));
        assert!(parse_url("localhost:6379")
            .expect_err("no scheme")
            .contains("not a URL"));
        assert!(parse_url("redis://").is_err());
    }

    #[test]
    fn hosts_of_urls() {
        let h = |url: &str, scheme| {
            hosts(&BackendUrl {
                scheme,
                url: url.to_owned(),
            })
        };
        let pair = |host: &str, port| (host.to_owned(), port);
        assert_eq!(
            h("redis://:pw@10.0.0.1:7000/0", Scheme::Redis),
            [pair("10.0.0.1", 7000)]
        );
        assert_eq!(h("redis://cache", Scheme::Redis), [pair("cache", 6379)]);
        assert_eq!(
            h("postgres://u:p@[::1]:5433/db", Scheme::Postgres),
            [pair("::1", 5433)]
        );
        assert_eq!(
            h("postgres://u@/db?host=/run/postgresql", Scheme::Postgres),
            Vec::<(String, u16)>::new()
        );
        assert_eq!(
            h("kafka://a:1, b", Scheme::Kafka),
            [pair("a", 1), pair("b", 9092)]
        );
        assert_eq!(h("nats://t@n", Scheme::Nats), [pair("n", 4222)]);
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(
            redact("postgres://app:pw@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact("postgres://app@db/x?user=a&password=pw"),
            "postgres://app@db/x?user=a&password=***"
        );
        assert_eq!(redact("nats://token@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("kafka://a:1,b:2"), "kafka://a:1,b:2");
        assert_eq!(redact("redis://u:p@ss@h"), "redis://u:***@h");
        let url = parse_url("redis://:pw@127.0.0.1:1").expect("parses");
        assert_eq!(url.to_string(), "redis://:***@127.0.0.1:1");
        assert_eq!(url.as_str(), "redis://:pw@127.0.0.1:1");
    }

    #[test]
    fn passwords_with_url_delimiters_never_show() {
        // A password may hold '/', '?', '#' or '@' unencoded: the user-info
        // then runs to the last '@', so nothing of it shows.
        for secret in [
            "Zq1/Xw2",
            "Zq1?Xw2",
            "Zq1#Xw2",
            "Zq1/Xw2?Vb3#Nm4",
            "Zq1@Xw2/Vb3",
            "Zq1/",
            "/?#Zq1",
        ] {
            for (url, user) in [
                (format!("redis://:{secret}@h:6379/0"), ":"),
                (format!("rediss://default:{secret}@h:6380"), "default:"),
                (
                    format!("postgres://app:{secret}@db:5432/x?sslmode=require"),
                    "app:",
                ),
                (format!("nats://{secret}@h:4222"), ""),
                (format!("nats://u:{secret}@h:4222"), "u:"),
            ] {
                let shown = redact(&url);
                for part in secret.split(['/', '?', '#', '@']).filter(|p| p.len() > 1) {
                    assert!(!shown.contains(part), "{url} shows {part:?}: {shown}");
                }
                assert!(shown.contains(&format!("//{user}***@")), "{url}: {shown}");
            }
            let query = format!("postgres://app@db/x?user=a&password={secret}&sslmode=require");
            let shown = redact(&query);
            for part in secret.split(['/', '?', '#', '@']).filter(|p| p.len() > 1) {
                assert!(!shown.contains(part), "{query} shows {part:?}: {shown}");
            }
        }
        assert_eq!(
            redact("redis://:pa/ss@h:6379/0"),
            "redis://:***@h:6379/0",
            "the path after the host stays"
        );
        assert_eq!(
            redact("postgres://app:pw@db/x?password=p%26w&sslmode=require"),
            "postgres://app:***@db/x?password=***&sslmode=require"
        );
        let url = parse_url("redis://:pw@127.0.0.1:1").expect("parses");
        assert_eq!(url.to_string(), "redis://:***@127.0.0.1:1");
        assert_eq!(url.as_str(), "redis://:pw@127.0.0.1:1");
    }
}
