//! What each kind of fault did: stale reads put down to it, reads the
//! instances sent to the loader while untrusted, and how long the instances
//! took to stop trusting their cache after it began and to trust it again
//! after it ended.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// How long after a fault ends what happens is still put down to it (unless
/// the next fault began).
const AFTERMATH_US: u64 = 5_000_000;

/// One fault of the run, in µs since the epoch.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) kind: String,
    pub(crate) start: u64,
    /// When the fault was over (the server back, the path forwarding again).
    pub(crate) end: u64,
    /// Until when what happens is put down to it.
    until: u64,
}

/// The faults of `fault_log`, in order.
pub(crate) fn windows(fault_log: &[Value]) -> Vec<Window> {
    let mut out: Vec<Window> = fault_log
        .iter()
        .map(|f| {
            let start = f["t_us"].as_u64().unwrap_or(0);
            let end = start + f["took_ms"].as_u64().unwrap_or(0) * 1000;
            Window {
                kind: f["kind"].as_str().unwrap_or("?").to_owned(),
                start,
                end,
                until: end + AFTERMATH_US,
            }
        })
        .collect();
    for i in 1..out.len() {
        let next = out[i].start;
        let w = &mut out[i - 1];
        w.until = w.until.min(next).max(w.end);
    }
    out
}

/// The fault `at` falls under, if any.
fn at(windows: &[Window], at: u64) -> Option<&Window> {
    windows
        .iter()
        .rev()
        .find(|w| w.start <= at && at <= w.until)
}

/// What one kind of fault did.
#[derive(Debug, Default)]
struct Stats {
    max_staleness_us: u64,
    beyond_bound: u64,
    loads_untrusted: u64,
    load_errors_untrusted: u64,
    /// Repairs the instances made (clear or reload).
    repairs: u64,
    /// Reads that went to the loader while the cache was trusted: keys it
    /// did not hold, most of them dropped by a repair.
    loads_trusted: u64,
    /// (fault, instance) pairs in which the instance stopped trusting.
    untrusted: u64,
    max_to_untrusted_us: u64,
    max_to_trusted_us: u64,
}

/// Per fault kind (`none` for what falls under no fault).
#[derive(Debug, Default)]
pub(crate) struct ByFault(BTreeMap<String, Stats>);

/// One instance's counters at one status line, cumulative.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Status {
    pub(crate) t: u64,
    pub(crate) untrusted_loads: u64,
    pub(crate) untrusted_load_errors: u64,
    /// Every read that went to the loader, trusted or not.
    pub(crate) loads: u64,
    pub(crate) repairs: u64,
}

impl ByFault {
    fn entry(&mut self, kind: Option<&Window>) -> &mut Stats {
        let kind = kind.map_or("none", |w| w.kind.as_str());
        self.0.entry(kind.to_owned()).or_default()
    }

    /// `n` reads from `first` on, `stale_us` stale at the last, `beyond`
    /// whether past the bound.
    pub(crate) fn stale(
        &mut self,
        windows: &[Window],
        first: u64,
        stale_us: u64,
        n: u64,
        beyond: bool,
    ) {
        let s = self.entry(at(windows, first));
        s.max_staleness_us = s.max_staleness_us.max(stale_us);
        if beyond {
            s.beyond_bound += n;
        }
    }

    /// One incarnation's status lines and trust changes `(when, trusted)`.
    pub(crate) fn instance(
        &mut self,
        windows: &[Window],
        statuses: &[Status],
        trust: &[(u64, bool)],
    ) {
        // The cumulative counters as of `t`: the last status line before it.
        let as_of = |t: u64| {
            statuses
                .iter()
                .take_while(|s| s.t <= t)
                .last()
                .copied()
                .unwrap_or_default()
        };
        for w in windows {
            let (from, to) = (as_of(w.start), as_of(w.until));
            let untrusted_loads = to.untrusted_loads.saturating_sub(from.untrusted_loads);
            let lost_trust = trust
                .iter()
                .find(|(t, trusted)| !trusted && *t >= w.start && *t <= w.until)
                .map(|(t, _)| *t);
            let regained = lost_trust.and_then(|lost| {
                trust
                    .iter()
                    .find(|(t, trusted)| *trusted && *t >= lost)
                    .map(|(t, _)| *t)
            });
            let s = self.entry(Some(w));
            s.loads_untrusted += untrusted_loads;
            s.load_errors_untrusted += to
                .untrusted_load_errors
                .saturating_sub(from.untrusted_load_errors);
            s.repairs += to.repairs.saturating_sub(from.repairs);
            s.loads_trusted += to
                .loads
                .saturating_sub(from.loads)
                .saturating_sub(untrusted_loads);
            if let Some(lost) = lost_trust {
                s.untrusted += 1;
                s.max_to_untrusted_us = s.max_to_untrusted_us.max(lost - w.start);
                if let Some(back) = regained {
                    s.max_to_trusted_us = s.max_to_trusted_us.max(back.saturating_sub(w.end));
                }
            }
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        let map: serde_json::Map<String, Value> = self
            .0
            .iter()
            .map(|(kind, s)| {
                (
                    kind.clone(),
                    json!({
                        "max_staleness_ms": ms(s.max_staleness_us),
                        "beyond_bound": s.beyond_bound,
                        "loads_while_untrusted": s.loads_untrusted,
                        "load_errors_while_untrusted": s.load_errors_untrusted,
                        "repairs": s.repairs,
                        "loads_while_trusted": s.loads_trusted,
                        "instances_untrusted": s.untrusted,
                        "max_fault_to_untrusted_ms": ms(s.max_to_untrusted_us),
                        "max_recovery_to_trusted_ms": ms(s.max_to_trusted_us),
                    }),
                )
            })
            .collect();
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(t: u64, untrusted_loads: u64, errors: u64, loads: u64, repairs: u64) -> Status {
        Status {
            t,
            untrusted_loads,
            untrusted_load_errors: errors,
            loads,
            repairs,
        }
    }

    #[test]
    fn faults_get_what_happens_until_the_next_begins() {
        let log = vec![
            json!({"t_us": 1_000_000, "took_ms": 1000, "kind": "server_kill"}),
            json!({"t_us": 4_000_000, "took_ms": 0, "kind": "garbage"}),
        ];
        let w = windows(&log);
        assert_eq!(at(&w, 500_000).map(|w| w.kind.as_str()), None);
        assert_eq!(
            at(&w, 3_999_999).map(|w| w.kind.as_str()),
            Some("server_kill")
        );
        assert_eq!(at(&w, 9_000_000).map(|w| w.kind.as_str()), Some("garbage"));
        assert_eq!(at(&w, 9_000_001).map(|w| w.kind.as_str()), None);
        let mut by = ByFault::default();
        by.instance(
            &w,
            &[
                status(900_000, 5, 0, 40, 0),
                status(2_500_000, 25, 1, 90, 2),
                status(5_000_000, 25, 1, 100, 2),
            ],
            &[(1_300_000, false), (2_400_000, true)],
        );
        let j = by.to_json();
        assert_eq!(j["server_kill"]["loads_while_untrusted"], 20);
        assert_eq!(j["server_kill"]["load_errors_while_untrusted"], 1);
        assert_eq!(j["server_kill"]["max_fault_to_untrusted_ms"], 300.0);
        assert_eq!(j["server_kill"]["max_recovery_to_trusted_ms"], 400.0);
        assert_eq!(j["garbage"]["instances_untrusted"], 0);
        assert_eq!(j["server_kill"]["repairs"], 2);
        assert_eq!(j["server_kill"]["loads_while_trusted"], 30);
    }
}
