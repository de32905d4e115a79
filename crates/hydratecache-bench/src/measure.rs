//! The three end-to-end measurements, identical for the library and the raw
//! client: throughput (one publisher, one subscriber), latency (one message
//! in flight) and fan-out (one publisher, eight subscribers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hydratecache_testkit::memory_kib;
use tokio::sync::mpsc;

use crate::pipe::{Pipe, Received};

/// Publishes in flight at once during throughput runs (library and raw alike).
pub(crate) const WINDOW: usize = 64;

/// Result of a throughput or fan-out run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Flow {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) gaps: u64,
    pub(crate) errors: u64,
    pub(crate) receive_errors: u64,
    /// Deliveries per second over all subscribers.
    pub(crate) per_second: f64,
    /// Messages neither received nor covered by a gap event.
    pub(crate) lost_silently: u64,
    pub(crate) peak_rss_kib: Option<u64>,
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) rounds: usize,
}

fn payload(size: usize, n: u64) -> Vec<u8> {
    let mut p = vec![(n % 251) as u8; size.max(8)];
    p[..8].copy_from_slice(&n.to_be_bytes());
    p.truncate(size.max(8));
    p
}

fn index_of(payload: &[u8]) -> Option<u64> {
    payload
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Resets this process's peak RSS (Linux `clear_refs` 5), so the next read
/// covers only what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One publisher sends as fast as the API allows for `duration` (WINDOW in
/// flight); `subscribers` each count what they receive.
pub(crate) async fn flow(
    pipe: &dyn Pipe,
    topic: &str,
    size: usize,
    subscribers: usize,
    duration: Duration,
) -> Result<Flow> {
    pipe.prepare(topic).await?;
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    let (done_tx, _) = tokio::sync::watch::channel(u64::MAX);
    for _ in 0..subscribers {
        let mut stream = pipe.subscribe(topic).await?;
        let counts = Arc::new([
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        ]);
        let last = Arc::new(std::sync::Mutex::new(Instant::now()));
        counters.push((Arc::clone(&counts), Arc::clone(&last)));
        let mut done = done_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                let target = *done.borrow();
                if counts[0].load(Ordering::Relaxed) + counts[1].load(Ordering::Relaxed) >= target {
                    break;
                }
                let next = tokio::select! {
                    item = stream.next() => item,
                    _ = done.changed() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(3)), if target != u64::MAX => break,
                };
                match next {
                    Some(Received::Payload(_)) => {
                        counts[0].fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = last.lock() {
                            *l = Instant::now();
                        }
                    }
                    Some(Received::Gap(missed)) => {
                        counts[1].fetch_add(missed.unwrap_or(0), Ordering::Relaxed);
                        counts[2].fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Received::Error(e)) => {
                        if counts[3].fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first receive error: {e}");
                        }
                    }
                    None => break,
                }
            }
        }));
    }
    let publisher = pipe.publisher(topic).await?;
    reset_peak_rss();
    let start = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    futures::stream::iter(0..u64::MAX)
        .take_while(|_| futures::future::ready(start.elapsed() < duration))
        .for_each_concurrent(WINDOW, |n| {
            let (publisher, sent, errors) = (&publisher, &sent, &errors);
            async move {
                match publisher.publish(payload(size, n)).await {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
        .await;
    let sent = sent.load(Ordering::Relaxed);
    done_tx.send_replace(sent);
    for t in tasks {
        t.await.context("subscriber task")?;
    }
    let peak_rss_kib = memory_kib("self").0;
    let mut flow = Flow {
        sent,
        errors: errors.load(Ordering::Relaxed),
        peak_rss_kib,
        ..Flow::default()
    };
    let mut elapsed = Duration::ZERO;
    for (counts, last) in counters {
        let received = counts[0].load(Ordering::Relaxed);
        let missed = counts[1].load(Ordering::Relaxed);
        let gap_events = counts[2].load(Ordering::Relaxed);
        flow.received += received;
        flow.gaps += gap_events;
        flow.receive_errors += counts[3].load(Ordering::Relaxed);
        // Losses a gap event covered are signalled; anything else is silent.
        if received + missed < sent && gap_events == 0 {
            flow.lost_silently += sent - received;
        }
        let l = last.lock().map(|l| *l).unwrap_or_else(|_| Instant::now());
        elapsed = elapsed.max(l.saturating_duration_since(start));
    }
    flow.per_second = flow.received as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(flow)
}

/// One message in flight: publish, wait for the subscriber's receipt.
pub(crate) async fn latency(
    pipe: &dyn Pipe,
    topic: &str,
    size: usize,
    rounds: usize,
) -> Result<Latency> {
    pipe.prepare(topic).await?;
    let mut stream = pipe.subscribe(topic).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if let Received::Payload(p) = item {
                if let Some(n) = index_of(&p) {
                    if tx.send((n, Instant::now())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let publisher = pipe.publisher(topic).await?;
    let mut micros = Vec::with_capacity(rounds);
    // A few rounds to warm connections and caches, not counted.
    for n in 0..(rounds + 20) as u64 {
        let sent_at = Instant::now();
        publisher.publish(payload(size, n)).await?;
        let received_at = loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some((m, at))) if m == n => break at,
                Ok(Some(_)) => continue,
                Ok(None) => bail!("subscriber ended"),
                Err(_) => bail!("round {n}: no receipt within 5 s"),
            }
        };
        if n >= 20 {
            micros.push(received_at.duration_since(sent_at).as_secs_f64() * 1e6);
        }
    }
    task.abort();
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        p50: at(0.5),
        p99: at(0.99),
        max: micros[micros.len() - 1],
        rounds: micros.len(),
    })
}
