//! What the release-check steps share: their scratch space, the cargo home
//! and the summary they fill.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Scratch space under the target directory.
pub(super) const SCRATCH: &str = "target/release-check";

/// What each step passed or skipped, printed at the end of release-check.
#[derive(Default)]
pub(super) struct Summary {
    pub(super) rows: Vec<(String, String, Duration)>,
    pub(super) skipped: Vec<String>,
}

impl Summary {
    pub(super) fn passed(&mut self, name: &str, note: impl Into<String>, started: Instant) {
        self.rows
            .push((name.to_string(), note.into(), started.elapsed()));
    }

    pub(super) fn skipped(&mut self, what: String) {
        println!("xtask release-check: SKIPPED {what}");
        self.skipped.push(what);
    }
}

pub(super) fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}
