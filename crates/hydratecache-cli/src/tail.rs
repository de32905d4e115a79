//! `hydratecache tail`: print a topic's events as they arrive.

use std::io::{self, Write};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hydratecache_core::{Event, StartFrom, SubscribeOptions};

use crate::backends::{self, ConnectOptions};
use crate::cli::{Format, TailArgs};
use crate::output::{Body, Line, Printer};
use crate::signals::Signals;

enum Outcome {
    Interrupted,
    Counted,
    TimedOut { seen: u64 },
    StdoutClosed,
}

pub(crate) async fn run(args: TailArgs) -> Result<()> {
    // Installed first, so that Ctrl-C during the connection is a clean exit too.
    let mut signals = Signals::install()?;
    let options = ConnectOptions {
        timeout: args.common.connect_timeout,
        create_topics: args.create_topic,
    };
    let adapter = tokio::select! {
        adapter = backends::connect(&args.url, &options) => adapter?,
        () = signals.recv() => return Ok(()),
    };
    let transport = adapter.transport();
    let start = if args.from_beginning {
        StartFrom::Earliest
    } else {
        StartFrom::Latest
    };
    let subscribing = transport.subscribe(&args.topic, SubscribeOptions::starting(start));
    let mut subscription = tokio::select! {
        sub = subscribing => sub
            .with_context(|| format!("subscribe to {:?} on {}", args.topic, args.url))
            .map_err(|e| backends::advise(&args.url, &args.topic, e))?,
        () = signals.recv() => return Ok(()),
    };
    crate::err(&format!(
        "subscribed to {} on {} at {}; Ctrl-C to stop",
        args.topic,
        transport.backend(),
        args.url
    ));

    let printer = Printer::new(args.format == Format::Json, args.raw, args.full);
    // A timeout past the clock's range is no timeout.
    let deadline = args
        .timeout
        .and_then(|t| tokio::time::Instant::now().checked_add(t));
    let mut seen = 0u64;
    let outcome = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break Outcome::Counted;
        }
        let next = tokio::select! {
            biased;
            () = signals.recv() => break Outcome::Interrupted,
            () = sleep_until(deadline) => break Outcome::TimedOut { seen },
            next = subscription.next() => next,
        };
        let body = match next {
            None => {
                bail!(
                    "the subscription to {:?} ended: the {} connection was closed",
                    args.topic,
                    transport.backend()
                );
            }
            Some(Ok(Event::Message(envelope))) => {
                seen += 1;
                Body::Message(Box::new(envelope))
            }
            Some(Ok(Event::Gap(gap))) => Body::Gap(gap),
            Some(Ok(Event::Interrupted(interruption))) => Body::Interrupted(interruption.reason),
            Some(Ok(Event::Resumed)) => Body::Resumed,
            Some(Ok(other)) => Body::Error(format!("unknown event: {other:?}")),
            Some(Err(e)) => {
                if e.is_per_message() {
                    seen += 1;
                }
                Body::Error(crate::error_text(&e))
            }
        };
        let line = Line {
            time: SystemTime::now(),
            topic: args.topic.clone(),
            body,
        };
        let text = printer.format(&line);
        match writeln!(io::stdout().lock(), "{text}") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Outcome::StdoutClosed,
            Err(e) => return Err(e).context("write to stdout"),
        }
    };
    drop(subscription);
    // No close(): tail publishes nothing, and the process exits right after,
    // which closes every connection (Ctrl-C must end it at once).
    match outcome {
        Outcome::Interrupted | Outcome::Counted | Outcome::StdoutClosed => Ok(()),
        Outcome::TimedOut { seen } => match args.count {
            Some(count) if seen < count => bail!(
                "timed out after {}: {seen} of {count} messages",
                crate::duration::human(args.timeout.unwrap_or_default())
            ),
            _ => Ok(()),
        },
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
