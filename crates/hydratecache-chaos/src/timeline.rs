//! A run as a picture: an SVG timeline of one backend's run, with the
//! faults as bands, each instance's trust in its cache as a strip, and the
//! staleness of the stale reads over time against the bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::by_fault::Window;

/// One instance process (an incarnation) as the timeline shows it.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    /// The instance it is an incarnation of.
    pub(crate) instance: String,
    pub(crate) started: u64,
    pub(crate) ended: u64,
    /// Changes of trust: (when, trusted).
    pub(crate) trust: Vec<(u64, bool)>,
    /// Reads of a stale version: (first read, last read, when that version
    /// was superseded).
    pub(crate) stale: Vec<(u64, u64, u64)>,
}

/// What the picture shows.
pub(crate) struct Picture<'a> {
    pub(crate) title: String,
    pub(crate) from_us: u64,
    pub(crate) to_us: u64,
    pub(crate) bound_us: u64,
    pub(crate) faults: &'a [Window],
    pub(crate) lanes: &'a [Lane],
}

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const FAULT_ROW: f64 = 16.0;
const LANE_ROW: f64 = 16.0;
const PLOT: f64 = 260.0;
/// Stale-read segments drawn at most (the stalest kept).
const MAX_SEGMENTS: usize = 4000;
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];

fn fault_color(kind: &str) -> &'static str {
    match kind {
        "server_kill" | "long_outage" => "#d62728",
        "conn_kill" => "#ff9896",
        "half_open" => "#9467bd",
        "pause" => "#8c564b",
        "instance_restart" => "#7f7f7f",
        "writer_kill" => "#ff7f0e",
        _ => "#bcbd22",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG of `p`.
pub(crate) fn svg(p: &Picture<'_>) -> String {
    let span = p.to_us.saturating_sub(p.from_us).max(1) as f64;
    let x = |t: u64| LEFT + (t.saturating_sub(p.from_us) as f64 / span) * (WIDTH - LEFT - RIGHT);
    let mut instances: BTreeMap<&str, Vec<&Lane>> = BTreeMap::new();
    for lane in p.lanes {
        instances.entry(&lane.instance).or_default().push(lane);
    }
    let faults_top = TOP;
    let lanes_top = faults_top + FAULT_ROW * 2.0 + 10.0;
    let plot_top = lanes_top + LANE_ROW * instances.len() as f64 + 30.0;
    let plot_bottom = plot_top + PLOT;
    let height = plot_bottom + 50.0;
    let mut segments: Vec<(usize, u64, u64, u64)> = Vec::new();
    for (i, lanes) in instances.values().enumerate() {
        for lane in lanes {
            segments.extend(lane.stale.iter().map(|&(a, b, c)| (i, a, b, c)));
        }
    }
    let stalest = |s: &(usize, u64, u64, u64)| s.2.saturating_sub(s.3);
    if segments.len() > MAX_SEGMENTS {
        segments.sort_by_key(|s| std::cmp::Reverse(stalest(s)));
        segments.truncate(MAX_SEGMENTS);
    }
    let max_stale = segments.iter().map(stalest).max().unwrap_or(0);
    let y_max = (p.bound_us + p.bound_us / 4)
        .max(max_stale + max_stale / 10)
        .max(1) as f64;
    let y = |us: u64| plot_bottom - (us as f64 / y_max).min(1.0) * PLOT;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(&p.title)
    );
    // Faults: bands over the whole picture, labelled on two rows.
    for (i, f) in p.faults.iter().enumerate() {
        let (x0, x1) = (x(f.start), x(f.end).max(x(f.start) + 2.0));
        let color = fault_color(&f.kind);
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{faults_top}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="0.12"/>"#,
            x1 - x0,
            plot_bottom - faults_top
        );
        let row = faults_top + FAULT_ROW * (i % 2) as f64 + 11.0;
        let _ = writeln!(
            out,
            r#"<text x="{x0:.1}" y="{row:.1}" fill="{color}">{}</text>"#,
            escape(&f.kind.replace('_', " "))
        );
    }
    // Trust: a strip per instance (green trusted, red not, blank not running).
    let _ = writeln!(
        out,
        r#"<text x="4" y="{:.1}" font-weight="bold">trust</text>"#,
        lanes_top - 3.0
    );
    for (i, (name, lanes)) in instances.iter().enumerate() {
        let top = lanes_top + LANE_ROW * i as f64;
        let _ = writeln!(
            out,
            r#"<text x="4" y="{:.1}" fill="{}">{}</text>"#,
            top + 11.0,
            COLORS[i % COLORS.len()],
            escape(name)
        );
        for lane in lanes {
            let mut at = lane.started;
            let mut trusted = false;
            // The end of the process closes the last span.
            for &(t, now_trusted) in lane.trust.iter().chain(&[(lane.ended, false)]) {
                let t = t.max(lane.started).min(lane.ended);
                if t > at {
                    let color = if trusted { "#2ca02c" } else { "#d62728" };
                    let _ = writeln!(
                        out,
                        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                        x(at),
                        top + 2.0,
                        (x(t) - x(at)).max(0.5),
                        LANE_ROW - 4.0
                    );
                }
                at = t;
                trusted = now_trusted;
            }
        }
    }
    // Staleness of the stale reads, against the bound.
    let _ = writeln!(
        out,
        r#"<text x="4" y="{:.1}" font-weight="bold">staleness of reads</text>"#,
        plot_top - 8.0
    );
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{plot_bottom}" x2="{:.1}" y2="{plot_bottom}" stroke="#000"/>"##,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{plot_top}" x2="{LEFT}" y2="{plot_bottom}" stroke="#000"/>"##
    );
    let step_ms: u32 = if y_max > 4_000_000.0 { 1000 } else { 250 };
    let mut ms: u32 = 0;
    while f64::from(ms) * 1000.0 <= y_max {
        let yy = y(u64::from(ms) * 1000);
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text><line x1="{:.1}" y1="{yy:.1}" x2="{LEFT}" y2="{yy:.1}" stroke="#000"/>"##,
            LEFT - 6.0,
            yy + 4.0,
            LEFT - 3.0
        );
        ms += step_ms;
    }
    let by = y(p.bound_us);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{by:.1}" x2="{:.1}" y2="{by:.1}" stroke="#d62728" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d62728">bound {} ms</text>"##,
        WIDTH - RIGHT,
        WIDTH - RIGHT,
        by - 4.0,
        p.bound_us / 1000
    );
    for (i, first, last, superseded) in &segments {
        let color = COLORS[i % COLORS.len()];
        let (x0, x1) = (x(*first), x(*last).max(x(*first) + 1.0));
        let (y0, y1) = (
            y(first.saturating_sub(*superseded)),
            y(last.saturating_sub(*superseded)),
        );
        let _ = writeln!(
            out,
            r#"<line x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y1:.1}" stroke="{color}" stroke-width="1.5"/>"#
        );
    }
    // Time axis: seconds since the run began.
    let seconds = (span / 1e6).floor() as u64;
    let tick = if seconds > 120 { 30 } else { 5 };
    for s in (0..=seconds).step_by(tick as usize) {
        let xx = x(p.from_us + s * 1_000_000);
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" y1="{plot_bottom}" x2="{xx:.1}" y2="{:.1}" stroke="#000"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{s} s</text>"##,
            plot_bottom + 4.0,
            plot_bottom + 16.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" fill="#555">bands: faults; strips: each instance's trust in its cache (green trusted, red not: reads go to the loader); lines: each stale read's staleness (time since its successor was committed)</text>"##,
        plot_bottom + 36.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_has_its_faults_strips_and_reads() {
        let faults = crate::by_fault::windows(&[serde_json::json!(
            {"t_us": 2_000_000, "took_ms": 1000, "kind": "half_open"}
        )]);
        let lanes = [Lane {
            instance: "instance 0".into(),
            started: 1_000_000,
            ended: 9_000_000,
            trust: vec![(1_100_000, true), (2_400_000, false), (3_200_000, true)],
            stale: vec![(2_100_000, 2_300_000, 2_000_000)],
        }];
        let svg = svg(&Picture {
            title: "chaos <nats>".into(),
            from_us: 1_000_000,
            to_us: 10_000_000,
            bound_us: 1_000_000,
            faults: &faults,
            lanes: &lanes,
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("chaos &lt;nats&gt;"));
        assert!(svg.contains(">half open<"));
        assert_eq!(
            svg.matches(r##"fill="#2ca02c""##).count(),
            2,
            "two trusted spans"
        );
        assert_eq!(
            svg.matches(r##"fill="#d62728"/>"##).count(),
            2,
            "starting, and the fault"
        );
        assert!(svg.contains("bound 1000 ms"));
        assert!(svg.contains(r#"stroke-width="1.5""#), "the stale reads");
    }
}
