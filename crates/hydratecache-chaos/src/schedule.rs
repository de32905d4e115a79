//! The faults of a run: their kinds, and the schedule a seed draws.

use hydratecache_testkit::workload::SplitMix64;

/// Faults start after this warm-up.
const WARMUP_MS: u64 = 2500;

/// The kinds of fault a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FaultKind {
    ServerKill,
    ConnKill,
    Pause,
    Garbage,
    Oversize,
    InstanceRestart,
    HalfOpen,
    LongOutage,
    WriterKill,
}

impl FaultKind {
    pub(crate) const ALL: [FaultKind; 9] = [
        FaultKind::ServerKill,
        FaultKind::ConnKill,
        FaultKind::Pause,
        FaultKind::Garbage,
        FaultKind::Oversize,
        FaultKind::InstanceRestart,
        FaultKind::HalfOpen,
        FaultKind::LongOutage,
        FaultKind::WriterKill,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::ServerKill => "server kill -9 + restart",
            FaultKind::ConnKill => "subscriber connections killed",
            FaultKind::Pause => "instance SIGSTOP/SIGCONT",
            FaultKind::Garbage => "third-party garbage",
            FaultKind::Oversize => "oversize publish",
            FaultKind::InstanceRestart => "instance kill -9 + restart",
            FaultKind::HalfOpen => "half-open connections (proxy stops forwarding)",
            FaultKind::LongOutage => "server down 10 s",
            FaultKind::WriterKill => "writer kill -9 after a commit",
        }
    }

    pub(crate) fn id(self) -> &'static str {
        match self {
            FaultKind::ServerKill => "server_kill",
            FaultKind::ConnKill => "conn_kill",
            FaultKind::Pause => "pause",
            FaultKind::Garbage => "garbage",
            FaultKind::Oversize => "oversize",
            FaultKind::InstanceRestart => "instance_restart",
            FaultKind::HalfOpen => "half_open",
            FaultKind::LongOutage => "long_outage",
            FaultKind::WriterKill => "writer_kill",
        }
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) at_ms: u64,
    pub(crate) kind: FaultKind,
    pub(crate) target: usize,
    pub(crate) hold_ms: u64,
}

/// The fault schedule of `seed` for a run of `duration_ms`: every kind once
/// in a seeded order, then seeded picks, until the run's end.
pub(crate) fn schedule(seed: u64, duration_ms: u64, instances: usize) -> Vec<Fault> {
    let mut rng = SplitMix64::new(seed);
    let mut kinds = FaultKind::ALL.to_vec();
    for i in (1..kinds.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        kinds.swap(i, j);
    }
    // After each kind ran once, seeded picks among all but the long outage
    // (too long to repeat).
    let repeated: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|k| *k != FaultKind::LongOutage)
        .collect();
    let mut out = Vec::new();
    let mut t = WARMUP_MS;
    let end = duration_ms.saturating_sub(500);
    for i in 0.. {
        let kind = kinds
            .get(i)
            .copied()
            .unwrap_or_else(|| repeated[rng.range(0, repeated.len() as u64 - 1) as usize]);
        let target = rng.range(0, instances.max(1) as u64 - 1) as usize;
        let (hold_ms, cost) = match kind {
            FaultKind::ServerKill => {
                let h = rng.range(500, 2000);
                (h, h + 800)
            }
            FaultKind::Pause => {
                let h = rng.range(1000, 3000);
                (h, h)
            }
            FaultKind::InstanceRestart => {
                let h = rng.range(0, 1000);
                (h, h + 1500)
            }
            FaultKind::ConnKill => (0, 300),
            FaultKind::HalfOpen => {
                let h = rng.range(3000, 5000);
                (h, h + 1000)
            }
            FaultKind::LongOutage => (10_000, 11_000),
            FaultKind::WriterKill => {
                let h = rng.range(1000, 2500);
                (h, h + 1000)
            }
            FaultKind::Garbage | FaultKind::Oversize => (0, 50),
        };
        let spacing = rng.range(700, 2000);
        if t + cost > end {
            // The cheap kinds may still fit; stop at the first that does not.
            break;
        }
        out.push(Fault {
            at_ms: t,
            kind,
            target,
            hold_ms,
        });
        t += cost + spacing;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_seeded_and_has_every_kind_first() {
        let a = schedule(7, 60_000, 4);
        assert_eq!(a, schedule(7, 60_000, 4));
        assert_ne!(a, schedule(8, 60_000, 4));
        let mut first: Vec<FaultKind> = a
            .iter()
            .take(FaultKind::ALL.len())
            .map(|f| f.kind)
            .collect();
        first.sort();
        assert_eq!(first, FaultKind::ALL);
        assert!(a
            .iter()
            .all(|f| f.at_ms >= WARMUP_MS && f.at_ms < 60_000 && f.target < 4));
        assert!(
            schedule(7, 2_000, 4).is_empty(),
            "no fault fits before the warm-up ends"
        );
    }
}
