//! The command line, as clap reads it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backends::{parse_url, BackendUrl};

const URLS: &str = "\
URLs:
  redis://[:password@]host:port[/db]     rediss:// for TLS
  nats://[user:password@]host:port       tls:// for TLS
  postgres://user[:password]@host:port/database[?sslmode=require]
  kafka://host:port[,host:port...]";

/// See what is on a hydratecache channel, publish to it, check a backend.
#[derive(Debug, Parser)]
#[command(
    name = "hydratecache",
    version,
    about,
    long_about = "See what is on a hydratecache channel (decoded, with keys, TTLs, publishers, \
                  sequence numbers and gaps), publish to it, and check a backend connection.",
    after_help = URLS,
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print every message of a topic as it arrives: updates, deletes,
    /// heartbeats, gaps and unreadable messages.
    #[command(after_help = TAIL_HELP)]
    Tail(TailArgs),
    /// Publish one update (or delete) on a topic.
    #[command(after_help = PUBLISH_HELP)]
    Publish(PublishArgs),
    /// Connect, show the server and the adapter's limits, round-trip one
    /// message on a temporary topic.
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),
}

const TAIL_HELP: &str = "\
Examples:
  hydratecache tail redis://127.0.0.1:6379 users
  hydratecache tail nats://127.0.0.1:4222 users --format json | jq .key
  hydratecache tail kafka://127.0.0.1:9092 users --from-beginning --timeout 5s
  hydratecache tail postgres://app@db/app users --count 1 --timeout 30s

Text lines: local time, kind, then key=, publisher= (first 8 hex digits unless
--full), seq=, version=, ttl= (time left) and value= (JSON decoded from CBOR, or
hex: when the payload is not CBOR). Gaps (messages may have been missed) and
unreadable messages are always shown. `subscribed ...` goes to stderr once the
server has confirmed the subscription. Ctrl-C ends it with exit status 0.

Exit status: 0 on Ctrl-C, --count reached or --timeout passed; 1 when the
connection fails, the subscription ends, or --timeout passes before --count.";

const PUBLISH_HELP: &str = "\
Examples:
  hydratecache publish redis://127.0.0.1:6379 users user:42 '{\"name\":\"Ada\"}'
  hydratecache publish redis://127.0.0.1:6379 users user:42 '{\"name\":\"Ada\"}' --ttl 30s --version 7
  echo '[1,2,3]' | hydratecache publish nats://127.0.0.1:4222 lists l1 -
  hydratecache publish postgres://app@db/app users user:42 --delete
  printf 'raw bytes' | hydratecache publish kafka://127.0.0.1:9092 blobs b1 --raw

The value is JSON, sent CBOR-encoded (the default codec, what a
Channel<serde_json::Value> or a matching struct reads). Each run is a new
publisher with sequence 1.";

const CHECK_HELP: &str = "\
Examples:
  hydratecache check redis://127.0.0.1:6379
  hydratecache check postgres://app:secret@db:5432/app
  hydratecache check kafka://127.0.0.1:9092 --topic existing-topic

Exit status 0 when everything works; 1 with the reason (refused, authentication,
TLS, timeout...) and what to try otherwise.";

/// Options shared by every command.
#[derive(Debug, Args, Clone)]
pub(crate) struct Common {
    /// Bound on connecting to the server (and on each request).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One aligned line per event, for people.
    Text,
    /// One JSON object per line (schema in the README), for scripts.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Backend URL (see `hydratecache --help`).
    #[arg(value_parser = parse_url)]
    pub(crate) url: BackendUrl,
    /// Topic (channel) name.
    pub(crate) topic: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Start from the earliest retained message (backends that keep
    /// messages: Kafka).
    #[arg(long)]
    pub(crate) from_beginning: bool,
    /// Exit after N messages (updates, deletes, heartbeats and unreadable
    /// messages; gaps do not count).
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Exit this long after the subscription is active (500ms, 30s, 5m, 1h30m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Show payloads as hex, without decoding CBOR.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Do not truncate long values to the terminal width ($COLUMNS, else 120).
    #[arg(long)]
    pub(crate) full: bool,
    /// Kafka: create the topic (1 partition) when it does not exist.
    #[arg(long)]
    pub(crate) create_topic: bool,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Backend URL (see `hydratecache --help`).
    #[arg(value_parser = parse_url)]
    pub(crate) url: BackendUrl,
    /// Topic (channel) name.
    pub(crate) topic: String,
    /// Cache key.
    pub(crate) key: String,
    /// The value as JSON, or `-` to read it from stdin. Not with --delete;
    /// with --raw only `-` (or nothing).
    #[arg(value_name = "VALUE|-")]
    pub(crate) value: Option<String>,
    /// Send stdin's bytes as the payload, as they are (no CBOR).
    #[arg(long, conflicts_with = "delete")]
    pub(crate) raw: bool,
    /// Time to live of the value (30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ttl: Option<Duration>,
    /// Version of the value at the source of truth.
    #[arg(long, value_name = "N")]
    pub(crate) version: Option<u64>,
    /// Publish a delete of KEY instead of an update.
    #[arg(long, conflicts_with = "ttl")]
    pub(crate) delete: bool,
    /// Kafka: create the topic (1 partition) when it does not exist.
    #[arg(long)]
    pub(crate) create_topic: bool,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Backend URL (see `hydratecache --help`).
    #[arg(value_parser = parse_url)]
    pub(crate) url: BackendUrl,
    /// Round-trip on this topic instead of a new temporary one (on Kafka the
    /// temporary topic is created and stays).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// How long to wait for the round-trip message.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) round_trip_timeout: Duration,
    #[command(flatten)]
    pub(crate) common: Common,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_conflicts_are_checked_by_clap() {
        let ok = Cli::try_parse_from([
            "hydratecache",
            "tail",
            "redis://h:1",
            "t",
            "--timeout",
            "1m30s",
            "--count",
            "3",
        ]);
        if cfg!(feature = "redis") {
            let Command::Tail(args) = ok.expect("parses").command else {
                panic!("not tail")
            };
            assert_eq!(args.timeout, Some(Duration::from_secs(90)));
            assert_eq!(args.count, Some(3));
        }
        let bad = Cli::try_parse_from([
            "hydratecache",
            "tail",
            "redis://h:1",
            "t",
            "--timeout",
            "30",
        ]);
        assert!(bad.expect_err("no unit").to_string().contains("add a unit"));
        let bad = Cli::try_parse_from(["hydratecache", "tail", "ftp://h", "t"]);
        assert!(bad
            .expect_err("scheme")
            .to_string()
            .contains("unsupported URL scheme"));
    }
}
