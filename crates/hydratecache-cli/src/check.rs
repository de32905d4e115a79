//! `hydratecache check`: connect, describe, round-trip one message.

use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use hydratecache_core::{Envelope, Event, PublisherId, SubscribeOptions};

use crate::backends::{self, ConnectOptions};
use crate::cli::CheckArgs;
use crate::diagnose::diagnose;
use crate::duration::{human, latency};

/// Key of the round-trip message, as long as a typical cache key.
const CHECK_KEY: &str = "hydratecache:check";

fn field(name: &str, value: impl std::fmt::Display) {
    crate::out(&format!("{name:<13}{value}"));
}

pub(crate) async fn run(args: CheckArgs) -> Result<()> {
    field("backend", args.url.scheme.feature());
    field("url", &args.url);
    let options = ConnectOptions {
        timeout: args.common.connect_timeout,
        // The temporary topic must exist on Kafka; an existing one is used as is.
        create_topics: args.topic.is_none(),
    };
    let started = Instant::now();
    let adapter = match backends::connect(&args.url, &options).await {
        Ok(adapter) => adapter,
        Err(e) => {
            report_failure(&e);
            return Err(e);
        }
    };
    field("connected", format!("in {}", latency(started.elapsed())));

    match adapter.server_info().await {
        Ok(info) => {
            field(
                "server",
                info.version
                    .unwrap_or_else(|| format!("not reported by {}", args.url.scheme.feature())),
            );
            for (name, value) in info.details {
                field(&format!("  {name}"), value);
            }
        }
        Err(e) => field("server", format!("unknown ({})", crate::chain_text(&e))),
    }

    let transport = adapter.transport();
    let caps = transport.capabilities();
    match caps.max_message_size {
        Some(limit) => field(
            "max message",
            format!(
                "{limit} bytes encoded (largest value for a {}-byte key with TTL and version: {} bytes)",
                CHECK_KEY.len(),
                caps.max_payload(CHECK_KEY).unwrap_or(0)
            ),
        ),
        None => field("max message", "no limit of the adapter's own"),
    }
    field(
        "replay",
        if caps.replay {
            "yes (tail --from-beginning works)"
        } else {
            "no (subscribers see only what is published while they listen)"
        },
    );

    let topic = args.topic.clone().unwrap_or_else(|| {
        format!(
            "hydratecache-check-{}",
            &PublisherId::random().to_string()[..12]
        )
    });
    let round_trip = tokio::time::timeout(args.round_trip_timeout, async {
        let mut subscription = transport
            .subscribe(&topic, SubscribeOptions::default())
            .await
            .with_context(|| format!("subscribe to {topic:?}"))?;
        let payload = crate::value::json_to_cbor(&serde_json::json!({"check": true}))
            .context("encode the check value")?;
        let mut envelope = Envelope::update(CHECK_KEY, Bytes::from(payload));
        envelope.publisher = PublisherId::random();
        envelope.sequence = 1;
        envelope.published_at = SystemTime::now();
        let sent = Instant::now();
        transport
            .publish(&topic, &envelope)
            .await
            .with_context(|| format!("publish to {topic:?}"))?;
        let mut gaps = 0;
        while let Some(item) = subscription.next().await {
            match item {
                Ok(Event::Message(got)) if got.publisher == envelope.publisher => {
                    if got.payload != envelope.payload {
                        bail!("the message came back altered");
                    }
                    return Ok((sent.elapsed(), gaps));
                }
                Ok(Event::Gap(_)) => gaps += 1,
                // Someone else's traffic on a given topic.
                Ok(_) | Err(_) => {}
            }
        }
        Err(anyhow!(
            "the subscription ended before the message came back"
        ))
    })
    .await;
    let result = match round_trip {
        Ok(Ok((took, gaps))) => {
            let mut text = format!("{} on topic {topic}", latency(took));
            if gaps > 0 {
                text.push_str(&format!(", {gaps} gap(s) on the way"));
            }
            field("round trip", text);
            if args.topic.is_none() && args.url.scheme == backends::Scheme::Kafka {
                field(
                    "note",
                    format!("the Kafka topic {topic} was created for this check and stays; delete it when done"),
                );
            }
            Ok(())
        }
        Ok(Err(e)) => Err(e.context("round trip")),
        Err(_) => {
            field("problem", "the message did not come back");
            field(
                "try",
                "the publish was accepted but the subscription received nothing: check that this user may \
                 subscribe (ACLs, permissions), that nothing between client and server drops Pub/Sub \
                 traffic, or give --round-trip-timeout more time",
            );
            return Err(anyhow!(
                "round trip on topic {topic}: nothing came back within {}",
                human(args.round_trip_timeout)
            ));
        }
    };
    let _ = tokio::time::timeout(crate::close_timeout(options.timeout), transport.close()).await;
    match result {
        Ok(()) => {
            crate::out("ok");
            Ok(())
        }
        Err(e) => {
            report_failure(&e);
            Err(e)
        }
    }
}

fn report_failure(error: &anyhow::Error) {
    match diagnose(error) {
        Some(problem) => {
            field("problem", problem.label());
            field("try", problem.advice());
        }
        None => field("problem", "see the error below"),
    }
}
