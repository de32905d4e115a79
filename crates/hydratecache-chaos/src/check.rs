//! The invariants, checked from the instances' logs and the writer's commit
//! log after a run (the summary's table is in `report.rs`).
//!
//! Every read an instance logged as stale beyond the window (grouped by key,
//! version read and gap epoch) is classified with the exact commit instant
//! of the version that superseded it (`c1`):
//!
//! - **unrepaired** (violation): the instance had signalled a gap at or after
//!   `c1`, more than the window before the read, and still served the old
//!   version (it did not come from a message delivered after that gap);
//! - **ignored delivery** (violation): a newer version of the key had been
//!   delivered to the instance more than the window before the read;
//! - **late**: the very next version was delivered later, no gap needed
//!   (nothing was lost; delivery took longer than the window), split by
//!   whether the instance was paused (SIGSTOP) meanwhile;
//! - **signalled**: the next version never reached the instance (lost), and
//!   the instance signalled a gap after `c1`, before it got a newer version
//!   of the key and before any message published more than the window after
//!   `c1` (the contract: a gap comes before anything that arrives after the
//!   loss); a gap that comes only later is a violation (**gap too late**);
//! - **unresolved**: the instance was killed before anything resolved it;
//! - **silent** (violation): the instance received a later version without
//!   ever receiving the next one and without a gap in between, or never
//!   received anything newer and never signalled a gap.
//!
//! Whatever its class, a read staler than the bound (`--bound-ms`, 1 s by
//! default, as `LocalCache`'s `max_staleness`) is a violation (invariant 4),
//! and counted under the fault it falls in (`by_fault.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};
use hydratecache_testkit::workload::key_name;
use serde_json::{json, Value};

use crate::by_fault::{windows, ByFault, Status};
use crate::common::{compacted, ordered};
use crate::report::{table, Summary};
use crate::timeline::{svg, Lane, Picture};
use crate::writer::WriterStats;

/// One broken invariant.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    pub(crate) invariant: u8,
    pub(crate) what: String,
    pub(crate) detail: Value,
}

/// One process of one instance, as the driver saw it.
#[derive(Debug, Clone)]
pub(crate) struct IncarnationRecord {
    pub(crate) name: String,
    pub(crate) log: PathBuf,
    pub(crate) started_us: u64,
    pub(crate) ended_us: u64,
    pub(crate) killed: bool,
    pub(crate) pauses: Vec<(u64, u64)>,
}

/// What the driver knows after a run.
#[derive(Debug)]
pub(crate) struct RunFacts {
    pub(crate) backend: String,
    pub(crate) seed: u64,
    pub(crate) duration_s: f64,
    pub(crate) repair: String,
    pub(crate) window_us: u64,
    /// The staleness bound: a read staler than this is a violation.
    pub(crate) bound_us: u64,
    /// The adapters' resumable modes ran.
    pub(crate) resumable: bool,
    pub(crate) memory_limit_kb: u64,
    pub(crate) commits: Vec<Vec<u64>>,
    pub(crate) writer: WriterStats,
    pub(crate) fault_counts: BTreeMap<&'static str, u64>,
    pub(crate) fault_log: Vec<Value>,
    pub(crate) garbage_sent: u64,
    pub(crate) divergent: u64,
    pub(crate) converged_ms: Option<u64>,
    pub(crate) run_start_us: u64,
    pub(crate) faults_end_us: u64,
    pub(crate) violations: Vec<Violation>,
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct Episode {
    first: u64,
    last: u64,
    n: u64,
    max_us: u64,
    truth: u64,
    last_gap: u64,
    delivered: u64,
    delivered_at: u64,
}

#[derive(Debug, Default)]
struct Parsed {
    /// (when, latest publish instant delivered before it).
    gaps: Vec<(u64, u64)>,
    transport_gaps: u64,
    sequence_gaps: u64,
    /// First words from publishers already running (LocalCache invalidates
    /// what it stored before each).
    first_words: u64,
    /// Repairs for a publisher silent past its lease.
    lease_repairs: u64,
    deliveries: HashMap<usize, Vec<(u64, u64)>>,
    episodes: BTreeMap<(usize, u64, u64), Episode>,
    status: Option<Value>,
    /// Every status line's loads and load errors while untrusted.
    statuses: Vec<Status>,
    /// Changes of trust: (when, trusted).
    trust: Vec<(u64, bool)>,
    clean_exit: bool,
    stream_ended: bool,
}

fn parse(path: &PathBuf) -> Result<Parsed> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut p = Parsed::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let u = |name: &str| v[name].as_u64().unwrap_or(0);
        match v["e"].as_str() {
            Some("gap") => {
                p.gaps.push((u("t"), u("seen_pub")));
                match v["kind"].as_str() {
                    Some("sequence") => p.sequence_gaps += 1,
                    Some("first_word") => p.first_words += 1,
                    Some("lease") => p.lease_repairs += 1,
                    _ => p.transport_gaps += 1,
                }
            }
            Some("dlv") => p
                .deliveries
                .entry(u("k") as usize)
                .or_default()
                .push((u("t"), u("d"))),
            Some("stale") => {
                let fragment = Episode {
                    first: u("first"),
                    last: u("last"),
                    n: u("n"),
                    max_us: u("max_us"),
                    truth: u("w"),
                    last_gap: u("last_gap"),
                    delivered: u("dv"),
                    delivered_at: u("dvt"),
                };
                p.episodes
                    .entry((u("k") as usize, u("v"), u("epoch")))
                    .and_modify(|e| {
                        if fragment.first < e.first {
                            let (last, n, max) = (e.last, e.n, e.max_us);
                            *e = fragment.clone();
                            e.last = e.last.max(last);
                            e.n += n;
                            e.max_us = e.max_us.max(max);
                        } else {
                            e.last = e.last.max(fragment.last);
                            e.n += fragment.n;
                            e.max_us = e.max_us.max(fragment.max_us);
                        }
                    })
                    .or_insert(fragment);
            }
            Some("status") => {
                p.statuses.push(Status {
                    t: u("t"),
                    untrusted_loads: u("untrusted_loads"),
                    untrusted_load_errors: u("untrusted_load_errors"),
                    loads: u("loads"),
                    repairs: u("repairs_clear") + u("repairs_reload"),
                });
                p.status = Some(v);
            }
            Some("trust") => p.trust.push((u("t"), v["trusted"] == true)),
            Some("bye") => p.clean_exit = true,
            Some("stream_end") => p.stream_ended = true,
            _ => {}
        }
    }
    p.gaps.sort_unstable();
    Ok(p)
}

#[derive(Debug, Default)]
struct Tally {
    reads: u64,
    hits: u64,
    loads: u64,
    load_errors: u64,
    stale_within: u64,
    stale_beyond: u64,
    max_within_us: u64,
    max_stale_us: u64,
    signalled: u64,
    late_paused: u64,
    late_other: u64,
    max_late_paused_us: u64,
    max_late_other_us: u64,
    unresolved: u64,
    unrepaired: u64,
    ignored_delivery: u64,
    silent: u64,
    transport_gaps: u64,
    sequence_gaps: u64,
    first_words: u64,
    cache_first_words: u64,
    lease_repairs: u64,
    cache_gaps: u64,
    cache_sequence_gaps: u64,
    repairs_clear: u64,
    repairs_reload: u64,
    repairs_ignored: u64,
    malformed: u64,
    memory_peak_kb: u64,
    crashed: u64,
    hung: u64,
    /// Stale reads past the bound (violations whatever came before).
    beyond_bound: u64,
    /// What each kind of fault did.
    by_fault: ByFault,
}

fn overlaps(pauses: &[(u64, u64)], from: u64, to: u64) -> bool {
    pauses.iter().any(|&(a, b)| a <= to && b >= from)
}

/// Checks a run; returns its summary (printed table and JSON).
pub(crate) fn evaluate(mut facts: RunFacts, records: &[IncarnationRecord]) -> Result<Summary> {
    let w = facts.window_us;
    let faults = windows(&facts.fault_log);
    let mut t = Tally::default();
    let mut lanes = Vec::new();
    let mut violations = std::mem::take(&mut facts.violations);
    for v in &violations {
        match v.invariant {
            3 if v.what.contains("hung") || v.what.contains("did not exit") => t.hung += 1,
            3 if v.what.contains("exited") => t.crashed += 1,
            _ => {}
        }
    }
    for record in records {
        let p = parse(&record.log)?;
        if let Some(s) = &p.status {
            let u = |name: &str| s[name].as_u64().unwrap_or(0);
            t.reads += u("reads");
            t.hits += u("hits");
            t.loads += u("loads");
            t.load_errors += u("load_errors");
            t.stale_within += u("stale_within");
            t.stale_beyond += u("stale_beyond");
            t.max_within_us = t.max_within_us.max(u("max_within_us"));
            t.max_stale_us = t.max_stale_us.max(u("max_stale_us"));
            t.cache_gaps += u("gaps");
            t.cache_first_words += u("first_words");
            t.cache_sequence_gaps += u("sequence_gaps");
            t.repairs_clear += u("repairs_clear");
            t.repairs_reload += u("repairs_reload");
            t.repairs_ignored += u("repairs_ignored");
            t.malformed += u("malformed");
            t.memory_peak_kb = t.memory_peak_kb.max(u("vmhwm_kb"));
            if u("vmhwm_kb") > facts.memory_limit_kb {
                violations.push(Violation {
                    invariant: 3,
                    what: format!(
                        "{}: peak resident memory {} MiB over the bound of {} MiB",
                        record.name,
                        u("vmhwm_kb") / 1024,
                        facts.memory_limit_kb / 1024
                    ),
                    detail: json!({"instance": record.name, "vmhwm_kb": u("vmhwm_kb")}),
                });
            }
        }
        t.by_fault.instance(&faults, &p.statuses, &p.trust);
        let mut lane = Lane {
            instance: record.name.split('#').next().unwrap_or("?").to_owned(),
            started: record.started_us,
            ended: record.ended_us,
            trust: p.trust.clone(),
            stale: Vec::new(),
        };
        t.transport_gaps += p.transport_gaps;
        t.first_words += p.first_words;
        t.lease_repairs += p.lease_repairs;
        t.sequence_gaps += p.sequence_gaps;
        if p.stream_ended {
            violations.push(Violation {
                invariant: 3,
                what: format!("{}: its subscription stream ended", record.name),
                detail: json!({"instance": record.name}),
            });
        }
        for (&(k, v, epoch), e) in &p.episodes {
            let Some(&c1) = facts.commits.get(k).and_then(|c| c.get(v as usize)) else {
                facts.notes.push(format!(
                    "{}: {} read at version {v}, whose successor the writer never logged",
                    record.name,
                    key_name(k)
                ));
                continue;
            };
            let stale_last = e.last.saturating_sub(c1);
            lane.stale.push((e.first, e.last, c1));
            t.max_stale_us = t.max_stale_us.max(stale_last);
            let beyond = stale_last > facts.bound_us;
            t.by_fault.stale(&faults, e.first, stale_last, e.n, beyond);
            if beyond {
                t.beyond_bound += e.n;
            }
            let detail = |class: &str| {
                json!({
                    "class": class, "instance": record.name, "key": key_name(k), "version_read": v,
                    "superseded_by": v + 1, "table_version_at_read": e.truth,
                    "superseded_at_us": c1, "first_read_us": e.first, "last_read_us": e.last,
                    "reads": e.n, "staleness_ms": stale_last as f64 / 1000.0,
                    "gap_epoch": epoch, "last_gap_before_read_us": e.last_gap,
                    "newest_delivered_before_read": e.delivered, "delivered_at_us": e.delivered_at,
                    "t_us": e.first,
                })
            };
            // 4. Whatever was signalled before: past the bound.
            if beyond {
                violations.push(Violation {
                    invariant: 4,
                    what: format!(
                        "{}: {} read at version {v}, {} ms after version {} committed: past the staleness bound of {} ms",
                        record.name, key_name(k), stale_last / 1000, v + 1, facts.bound_us / 1000
                    ),
                    detail: detail("beyond-bound"),
                });
            }
            // 1. A gap had been signalled after the update, yet the old version was served.
            let acquired_after_gap = e.delivered == v && e.delivered_at >= e.last_gap;
            if e.last_gap >= c1 && e.first > e.last_gap + w && !acquired_after_gap {
                t.unrepaired += e.n;
                violations.push(Violation {
                    invariant: 2,
                    what: format!(
                        "{}: {} read at version {v} ({} ms stale) {} ms after a gap signal that came after version {} committed: the gap was not repaired",
                        record.name, key_name(k), e.first.saturating_sub(c1) / 1000,
                        (e.first - e.last_gap) / 1000, v + 1
                    ),
                    detail: detail("unrepaired"),
                });
                continue;
            }
            // 2. A newer version had been delivered, yet the old one was served.
            if e.delivered > v && e.delivered_at + w < e.first {
                t.ignored_delivery += e.n;
                violations.push(Violation {
                    invariant: 2,
                    what: format!(
                        "{}: {} read at version {v} although version {} was delivered {} ms before",
                        record.name,
                        key_name(k),
                        e.delivered,
                        (e.first - e.delivered_at) / 1000
                    ),
                    detail: detail("ignored-delivery"),
                });
                continue;
            }
            // 3. How did the staleness end?
            let next = p
                .deliveries
                .get(&k)
                .and_then(|d| d.iter().find(|(at, d)| *at >= e.first && *d > v).copied());
            let resolved_at = next.map_or(record.ended_us, |(at, _)| at);
            let late = if e.delivered > v {
                Some(e.delivered_at)
            } else {
                match next {
                    Some((at, d)) if d == v + 1 => Some(at),
                    // Version v + 1 was superseded before it was read.
                    Some((at, _)) if compacted(&facts.backend, facts.resumable) => Some(at),
                    _ => None,
                }
            };
            if let Some(at) = late {
                let lateness = at.saturating_sub(c1);
                if overlaps(&record.pauses, c1, at) {
                    t.late_paused += e.n;
                    t.max_late_paused_us = t.max_late_paused_us.max(lateness);
                } else {
                    t.late_other += e.n;
                    t.max_late_other_us = t.max_late_other_us.max(lateness);
                }
                continue;
            }
            // Version v + 1 never reached the instance: lost. The first gap
            // after it must come before anything published after it, on a
            // transport that keeps order; across Kafka's partitions a later
            // message may come first, and only the key's own order (a newer
            // version of it, checked above) holds.
            let gap = p.gaps.iter().find(|(g, _)| *g >= c1 && *g <= resolved_at);
            match gap {
                Some(&(_, seen)) if seen <= c1 + w || !ordered(&facts.backend, facts.resumable) => {
                    t.signalled += e.n;
                    continue;
                }
                Some(&(g, seen)) => {
                    t.silent += e.n;
                    violations.push(Violation {
                        invariant: 2,
                        what: format!(
                            "{}: {} read at version {v} ({} ms stale): version {} was lost and the gap came {} ms after it, only after messages published {} ms after it had been delivered",
                            record.name, key_name(k), stale_last / 1000, v + 1,
                            g.saturating_sub(c1) / 1000, seen.saturating_sub(c1) / 1000
                        ),
                        detail: detail("gap-too-late"),
                    });
                    continue;
                }
                None => {}
            }
            if next.is_none() && (record.killed || !p.clean_exit) {
                t.unresolved += e.n;
                continue;
            }
            t.silent += e.n;
            let what = match next {
                Some((_, d)) => format!(
                    "{}: {} read at version {v} ({} ms stale); the instance later received version {d} but never version {}, and no gap was signalled in between",
                    record.name, key_name(k), stale_last / 1000, v + 1
                ),
                None => format!(
                    "{}: {} read at version {v} ({} ms stale); no newer version ever reached the instance and no gap was signalled",
                    record.name, key_name(k), stale_last / 1000
                ),
            };
            violations.push(Violation {
                invariant: 2,
                what,
                detail: detail("silent"),
            });
        }
        lanes.push(lane);
    }
    if t.transport_gaps != t.cache_gaps
        || t.sequence_gaps != t.cache_sequence_gaps
        || t.first_words != t.cache_first_words
    {
        facts.notes.push(format!(
            "gap counts differ between the witness (transport {}, sequence {}, first words {}) and LocalCache::stats (gaps {}, sequence_gaps {}, first_words {}); killed instances report up to 500 ms late",
            t.transport_gaps, t.sequence_gaps, t.first_words, t.cache_gaps, t.cache_sequence_gaps, t.cache_first_words
        ));
    }
    violations.sort_by_key(|v| (v.detail["t_us"].as_u64().unwrap_or(u64::MAX), v.invariant));
    let passed = violations.is_empty();
    let first = violations
        .first()
        .map(|v| json!({"invariant": v.invariant, "what": v.what, "detail": v.detail}));
    let mut by_invariant = [0u64; 5];
    for v in &violations {
        by_invariant[usize::from(v.invariant.min(4))] += 1;
    }
    let faults_total: u64 = facts.fault_counts.values().sum();
    let json = json!({
        "backend": facts.backend, "passed": passed, "seed": facts.seed,
        "duration_s": facts.duration_s, "repair": facts.repair,
        "window_ms": w as f64 / 1000.0,
        "bound_ms": facts.bound_us as f64 / 1000.0,
        "beyond_bound": t.beyond_bound,
        "by_fault": t.by_fault.to_json(),
        "faults": facts.fault_counts, "faults_total": faults_total, "fault_log": facts.fault_log,
        "garbage_messages": facts.garbage_sent,
        "writer": {
            "committed": facts.writer.committed, "commit_errors": facts.writer.commit_errors,
            "uncertain_then_committed": facts.writer.uncertain_committed,
            "published": facts.writer.published, "publish_errors": facts.writer.publish_errors,
            "longest_publish_outage_ms": facts.writer.longest_publish_outage_ms,
        },
        "instances": records.len(),
        "reads": t.reads, "hits": t.hits, "loads": t.loads, "load_errors": t.load_errors,
        "gaps_signalled": {"transport": t.transport_gaps, "sequence": t.sequence_gaps,
                           "total": t.transport_gaps + t.sequence_gaps},
        "first_words": {"witness": t.first_words, "cache": t.cache_first_words},
        "lease_repairs": t.lease_repairs,
        "repairs": {"clear": t.repairs_clear, "reload": t.repairs_reload,
                    "ignored": t.repairs_ignored},
        "malformed_seen": t.malformed,
        "stale_reads": {
            "within_window": t.stale_within, "beyond_window": t.stale_beyond,
            "beyond_signalled": t.signalled, "beyond_late_paused": t.late_paused,
            "beyond_late_other": t.late_other, "beyond_unresolved_killed": t.unresolved,
            "beyond_unrepaired": t.unrepaired, "beyond_ignored_delivery": t.ignored_delivery,
            "beyond_silent": t.silent,
        },
        "max_staleness_ms": t.max_stale_us as f64 / 1000.0,
        "max_within_window_ms": t.max_within_us as f64 / 1000.0,
        "max_late_paused_ms": t.max_late_paused_us as f64 / 1000.0,
        "max_late_other_ms": t.max_late_other_us as f64 / 1000.0,
        "divergent_entries": facts.divergent, "converged_after_ms": facts.converged_ms,
        "memory_peak_mib": t.memory_peak_kb as f64 / 1024.0,
        "crashed": t.crashed, "hung": t.hung,
        "violations": {"invariant_1": by_invariant[1], "invariant_2": by_invariant[2],
                       "invariant_3": by_invariant[3], "invariant_4": by_invariant[4],
                       "total": violations.len()},
        "first_violation": first,
        "violation_samples": violations.iter().take(20).map(|v| json!({"invariant": v.invariant, "what": v.what})).collect::<Vec<_>>(),
        "notes": facts.notes,
        "incarnations": records.iter().map(|r| json!({
            "name": r.name, "started_us": r.started_us, "ended_us": r.ended_us,
            "killed": r.killed, "pauses": r.pauses,
        })).collect::<Vec<_>>(),
        "run_start_us": facts.run_start_us, "faults_end_us": facts.faults_end_us,
    });
    let table = table(&json);
    let timeline = svg(&Picture {
        title: format!(
            "chaos {}: {} (seed {}, {} s, repair {}, bound {} ms)",
            facts.backend,
            if passed { "PASS" } else { "FAIL" },
            facts.seed,
            facts.duration_s,
            facts.repair,
            facts.bound_us / 1000
        ),
        from_us: facts.run_start_us,
        to_us: lanes
            .iter()
            .map(|l| l.ended)
            .max()
            .unwrap_or(facts.faults_end_us),
        bound_us: facts.bound_us,
        faults: &faults,
        lanes: &lanes,
    });
    Ok(Summary {
        backend: facts.backend,
        passed,
        json,
        table,
        timeline: Some(timeline),
    })
}
