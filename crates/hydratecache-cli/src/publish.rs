//! `hydratecache publish`: send one update or delete.

use std::io::Read;
use std::time::SystemTime;

use anyhow::{Context, Result};
use bytes::Bytes;
use hydratecache_core::{Envelope, Kind, PublisherId, Ttl};

use crate::backends::{self, ConnectOptions};
use crate::cli::PublishArgs;
use crate::UsageError;

/// The payload from VALUE / stdin, as the arguments ask.
fn payload(args: &PublishArgs, stdin: impl FnOnce() -> Result<Vec<u8>>) -> Result<Bytes> {
    if args.delete {
        if args.value.is_some() {
            return Err(
                UsageError::new("a delete carries no value: drop VALUE or --delete").into(),
            );
        }
        return Ok(Bytes::new());
    }
    if args.raw {
        return match args.value.as_deref() {
            None | Some("-") => Ok(Bytes::from(stdin()?)),
            Some(_) => Err(UsageError::new(
                "with --raw the payload comes from stdin: give `-` or no VALUE",
            )
            .into()),
        };
    }
    let text = match args.value.as_deref() {
        None => return Err(UsageError::new(
            "VALUE is missing: give JSON, `-` to read it from stdin, --raw for bytes, or --delete",
        )
        .into()),
        Some("-") => String::from_utf8(stdin()?)
            .map_err(|_| UsageError::new("stdin is not UTF-8 text: use --raw to send bytes"))?,
        Some(text) => text.to_owned(),
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        UsageError::new(format!(
            "VALUE is not JSON ({e}); a string needs JSON quotes, for example '\"text\"'"
        ))
    })?;
    let cbor = crate::value::json_to_cbor(&json).context("encode the value as CBOR")?;
    Ok(Bytes::from(cbor))
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .context("read stdin")?;
    Ok(buf)
}

/// The envelope a fresh publisher sends: random id, sequence 1.
fn envelope(args: &PublishArgs, payload: Bytes) -> Envelope {
    let now = SystemTime::now();
    Envelope {
        kind: if args.delete {
            Kind::Delete
        } else {
            Kind::Update
        },
        key: args.key.clone(),
        payload,
        ttl: args.ttl.map(|duration| Ttl {
            start: now,
            duration,
        }),
        version: args.version,
        publisher: PublisherId::random(),
        sequence: 1,
        published_at: now,
    }
}

pub(crate) async fn run(args: PublishArgs) -> Result<()> {
    // Arguments and stdin first: a usage error must not need a server.
    let payload = payload(&args, read_stdin)?;
    let options = ConnectOptions {
        timeout: args.common.connect_timeout,
        create_topics: args.create_topic,
    };
    let adapter = backends::connect(&args.url, &options).await?;
    let transport = adapter.transport();
    // Stamped now, once connected: publish time and TTL start are accurate.
    let envelope = envelope(&args, payload);
    let result = transport
        .publish(&args.topic, &envelope)
        .await
        .with_context(|| format!("publish to {:?} on {}", args.topic, args.url))
        .map_err(|e| backends::advise(&args.url, &args.topic, e));
    let close_timeout = crate::close_timeout(options.timeout);
    let closed = tokio::time::timeout(close_timeout, transport.close()).await;
    result?;
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => crate::err(&format!(
            "warning: closing the connection failed: {}",
            crate::error_text(&e)
        )),
        Err(_) => crate::err(&format!(
            "warning: closing the connection took over {close_timeout:?}"
        )),
    }
    let wire = adapter.wire_size(&envelope);
    let mut line = format!(
        "published {} topic={} key={} publisher={} seq={}",
        if args.delete { "delete" } else { "update" },
        args.topic,
        envelope.key,
        envelope.publisher,
        envelope.sequence
    );
    if let Some(version) = envelope.version {
        line.push_str(&format!(" version={version}"));
    }
    if let Some(ttl) = args.ttl {
        line.push_str(&format!(" ttl={}", crate::duration::human(ttl)));
    }
    line.push_str(&format!(
        " payload={}B envelope={}B wire={}B",
        envelope.payload.len(),
        envelope.encoded_len(),
        wire.bytes
    ));
    if let Some(note) = wire.note {
        line.push_str(&format!(" ({note})"));
    }
    crate::out(&line);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> Option<PublishArgs> {
        if !cfg!(feature = "redis") {
            return None;
        }
        let mut argv = vec!["hydratecache", "publish", "redis://h:1", "t", "k"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Publish(a) => Some(a),
            _ => None,
        }
    }

    fn no_stdin() -> Result<Vec<u8>> {
        panic!("stdin read")
    }

    #[test]
    fn values_are_json_encoded_as_cbor() {
        let Some(a) = args(&[r#"{"a":1}"#]) else {
            return;
        };
        let p = payload(&a, no_stdin).expect("payload");
        assert_eq!(
            crate::value::show(&p, false),
            crate::value::Shown::Json(serde_json::json!({"a": 1}))
        );
        let Some(a) = args(&["-"]) else { return };
        let p = payload(&a, || Ok(b"[1, 2]\n".to_vec())).expect("payload");
        assert_eq!(&p[..], &[0x82, 0x01, 0x02]);
    }

    #[test]
    fn raw_and_delete() {
        let Some(a) = args(&["--raw"]) else { return };
        assert_eq!(
            &payload(&a, || Ok(vec![0, 159])).expect("raw")[..],
            &[0, 159]
        );
        let Some(a) = args(&["--delete", "--version", "3"]) else {
            return;
        };
        assert!(payload(&a, no_stdin).expect("delete").is_empty());
        let env = envelope(&a, Bytes::new());
        assert_eq!(
            (env.kind, env.version, env.sequence),
            (Kind::Delete, Some(3), 1)
        );
        let Some(a) = args(&["5", "--ttl", "30s"]) else {
            return;
        };
        let env = envelope(&a, Bytes::new());
        assert_eq!(
            env.ttl.map(|t| t.duration),
            Some(std::time::Duration::from_secs(30))
        );
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for extra in [&["not json"][..], &[], &["--delete", "1"], &["--raw", "x"]] {
            let Some(a) = args(extra) else { return };
            let err = payload(&a, no_stdin).expect_err("refused");
            assert!(
                err.downcast_ref::<UsageError>().is_some(),
                "{extra:?}: {err:#}"
            );
        }
        let Some(a) = args(&["-"]) else { return };
        let err = payload(&a, || Ok(vec![0xff])).expect_err("not utf-8");
        assert!(err.to_string().contains("--raw"));
    }
}
