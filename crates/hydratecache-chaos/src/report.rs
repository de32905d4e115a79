//! The summary of a run as people read it: the table of one backend's run
//! and the rows the overview of all backends shares.

use serde_json::{json, Value};

use crate::schedule::FaultKind;

/// The outcome of one backend's run.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) backend: String,
    pub(crate) passed: bool,
    pub(crate) json: Value,
    pub(crate) table: String,
    /// The run as an SVG timeline.
    pub(crate) timeline: Option<String>,
}

fn n(v: &Value) -> String {
    let Some(x) = v.as_u64() else {
        return match v.as_f64() {
            Some(f) => format!("{f:.1}"),
            None => "-".into(),
        };
    };
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The rows of a run's table: (metric, value).
pub(crate) fn rows(j: &Value) -> Vec<(&'static str, String)> {
    let faults = FaultKind::ALL
        .iter()
        .map(|k| format!("{} {}", k.id().replace('_', " "), n(&j["faults"][k.id()])))
        .map(|s| s.replace(" -", " 0"))
        .collect::<Vec<_>>()
        .join(", ");
    let st = &j["stale_reads"];
    vec![
        ("result", if j["passed"] == true { "PASS".into() } else { "FAIL".into() }),
        ("faults injected", format!("{} ({faults})", n(&j["faults_total"]))),
        (
            "writer",
            format!(
                "{} commits, {} publish errors (longest outage {} ms)",
                n(&j["writer"]["committed"]),
                n(&j["writer"]["publish_errors"]),
                n(&j["writer"]["longest_publish_outage_ms"])
            ),
        ),
        (
            "gaps signalled",
            format!(
                "{} (transport {}, sequence {}); writers silent past their lease {}; first words from running writers {}",
                n(&j["gaps_signalled"]["total"]),
                n(&j["gaps_signalled"]["transport"]),
                n(&j["gaps_signalled"]["sequence"]),
                n(&j["lease_repairs"]),
                n(&j["first_words"]["cache"])
            ),
        ),
        (
            "repairs",
            format!(
                "clear {}, reload {}, ignored {}",
                n(&j["repairs"]["clear"]),
                n(&j["repairs"]["reload"]),
                n(&j["repairs"]["ignored"])
            ),
        ),
        (
            "reads",
            format!(
                "{} (hits {}, read-through loads {}, load errors {})",
                n(&j["reads"]),
                n(&j["hits"]),
                n(&j["loads"]),
                n(&j["load_errors"])
            ),
        ),
        (
            "stale within window",
            format!(
                "{} (max {} ms)",
                n(&st["within_window"]),
                n(&j["max_within_window_ms"])
            ),
        ),
        (
            "stale beyond window",
            format!(
                "{}: signalled {}, late while paused {}, late otherwise {} (max {} ms), unresolved (killed) {}",
                n(&st["beyond_window"]),
                n(&st["beyond_signalled"]),
                n(&st["beyond_late_paused"]),
                n(&st["beyond_late_other"]),
                n(&j["max_late_other_ms"]),
                n(&st["beyond_unresolved_killed"])
            ),
        ),
        (
            "silent stale reads",
            format!(
                "{} (unrepaired {}, ignored delivery {}, silent loss {})",
                n(&json!(st["beyond_unrepaired"].as_u64().unwrap_or(0)
                    + st["beyond_ignored_delivery"].as_u64().unwrap_or(0)
                    + st["beyond_silent"].as_u64().unwrap_or(0))),
                n(&st["beyond_unrepaired"]),
                n(&st["beyond_ignored_delivery"]),
                n(&st["beyond_silent"])
            ),
        ),
        ("max staleness", format!("{} ms", n(&j["max_staleness_ms"]))),
        (
            "reads past the bound",
            format!("{} (bound {} ms)", n(&j["beyond_bound"]), n(&j["bound_ms"])),
        ),
        (
            "max staleness by fault",
            j["by_fault"]
                .as_object()
                .map(|faults| {
                    faults
                        .iter()
                        .map(|(kind, f)| {
                            format!(
                                "{kind} {} ms ({} past the bound)",
                                n(&f["max_staleness_ms"]),
                                n(&f["beyond_bound"])
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        ),
        (
            "divergent entries at the end",
            match j["converged_after_ms"].as_u64() {
                Some(ms) => format!("{} (all agree {ms} ms after writes stopped)", n(&j["divergent_entries"])),
                None => n(&j["divergent_entries"]),
            },
        ),
        (
            "memory peak (VmHWM, max instance)",
            format!("{} MiB", n(&j["memory_peak_mib"])),
        ),
        (
            "crashed / hung",
            format!("{} / {}", n(&j["crashed"]), n(&j["hung"])),
        ),
        (
            "garbage seen as malformed",
            format!(
                "{} items for {} garbage messages",
                n(&j["malformed_seen"]),
                n(&j["garbage_messages"])
            ),
        ),
    ]
}

/// Per fault kind: what it did to the reads and to trust.
pub(crate) fn fault_table(j: &Value) -> String {
    let mut out = String::from(
        "\n| fault | max staleness | reads past the bound | loads while untrusted (errors) | repairs | loads while trusted | instances untrusted | fault to untrusted (max) | recovery to trusted (max) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let Some(faults) = j["by_fault"].as_object() else {
        return out;
    };
    for (kind, f) in faults {
        let untrusted = f["instances_untrusted"].as_u64().unwrap_or(0);
        let timing = |name: &str| {
            if untrusted == 0 {
                "-".to_owned()
            } else {
                format!("{} ms", n(&f[name]))
            }
        };
        out.push_str(&format!(
            "| {kind} | {} ms | {} | {} ({}) | {} | {} | {} | {} | {} |\n",
            n(&f["max_staleness_ms"]),
            n(&f["beyond_bound"]),
            n(&f["loads_while_untrusted"]),
            n(&f["load_errors_while_untrusted"]),
            n(&f["repairs"]),
            n(&f["loads_while_trusted"]),
            n(&f["instances_untrusted"]),
            timing("max_fault_to_untrusted_ms"),
            timing("max_recovery_to_trusted_ms"),
        ));
    }
    out
}

/// The printed summary of a run: a title, its table, the first violation
/// and the notes.
pub(crate) fn table(j: &Value) -> String {
    let mut out = format!(
        "\n== chaos {}: {} (seed {}, {} s, repair {}, window {} ms)\n",
        j["backend"].as_str().unwrap_or("?"),
        if j["passed"] == true { "PASS" } else { "FAIL" },
        j["seed"],
        j["duration_s"],
        j["repair"].as_str().unwrap_or("?"),
        j["window_ms"]
    );
    out.push_str("| metric | value |\n| --- | --- |\n");
    for (metric, value) in rows(j) {
        out.push_str(&format!("| {metric} | {value} |\n"));
    }
    out.push_str(&fault_table(j));
    if let Some(first) = j["first_violation"].as_object() {
        out.push_str(&format!(
            "FIRST VIOLATION (invariant {}): {}\n  seed {} reproduces the schedule: cargo xtask chaos {} --seed {} --duration {}s --repair {}\n",
            first.get("invariant").cloned().unwrap_or_default(),
            first.get("what").and_then(Value::as_str).unwrap_or("?"),
            j["seed"],
            j["backend"].as_str().unwrap_or("?"),
            j["seed"],
            j["duration_s"].as_f64().unwrap_or(0.0),
            j["repair"].as_str().unwrap_or("?"),
        ));
        out.push_str(&format!(
            "  violations: invariant 1: {}, invariant 2: {}, invariant 3: {}, invariant 4: {}\n",
            j["violations"]["invariant_1"],
            j["violations"]["invariant_2"],
            j["violations"]["invariant_3"],
            j["violations"]["invariant_4"]
        ));
    }
    for note in j["notes"].as_array().into_iter().flatten() {
        out.push_str(&format!("note: {}\n", note.as_str().unwrap_or("")));
    }
    out
}
