//! The truth file: the latest committed version of each key and the commit
//! instants of its last few versions, written by the writer and read by the
//! instances on every cache hit.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Commit instants kept per key in the truth file: versions w, w-1, ... w-(RING-1).
pub(crate) const RING: usize = 5;
const SLOT_WORDS: usize = 3 + RING;
const SLOT_BYTES: u64 = (SLOT_WORDS * 8) as u64;

/// The latest committed version of one key and the commit instants of the
/// last few versions, as the writer last recorded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truth {
    pub(crate) version: u64,
    /// `commits[i]` is the commit instant (µs) of version `version - i`; 0 when unknown.
    pub(crate) commits: [u64; RING],
}

impl Truth {
    /// The commit instant of `version` (at most the latest), or the oldest
    /// one kept when `version` is older than that: a lower bound on how long
    /// a read of `version - 1` has been stale.
    pub(crate) fn commit_of(&self, version: u64) -> u64 {
        let back = self.version.saturating_sub(version) as usize;
        self.commits[back.min(RING - 1)]
    }
}

/// A file of one fixed-size slot per key, written by the writer after each
/// commit and read by the instances on every cache hit (`pread`, no shared
/// mapping): how an instance knows, at the moment of a read, whether the
/// version it got was already superseded and since when.
///
/// A slot is `[seq, version, commit instants..., seq]`; a reader retries a
/// slot whose two sequence words differ (it raced with a write).
#[derive(Debug)]
pub(crate) struct TruthFile {
    file: File,
}

impl TruthFile {
    /// Creates the file with every key at version 1, commit instant unknown.
    pub(crate) fn create(path: &Path, keys: usize) -> Result<TruthFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("create {}", path.display()))?;
        let truth = TruthFile { file };
        for k in 0..keys {
            truth.write(
                k,
                1,
                Truth {
                    version: 1,
                    commits: [0; RING],
                },
            )?;
        }
        Ok(truth)
    }

    /// Opens the file to go on writing it (a restarted writer).
    pub(crate) fn open_rw(path: &Path) -> Result<TruthFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(TruthFile { file })
    }

    pub(crate) fn open(path: &Path) -> Result<TruthFile> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        Ok(TruthFile { file })
    }

    pub(crate) fn write(&self, key: usize, seq: u64, truth: Truth) -> Result<()> {
        let mut words = [0u64; SLOT_WORDS];
        words[0] = seq;
        words[1] = truth.version;
        words[2..2 + RING].copy_from_slice(&truth.commits);
        words[SLOT_WORDS - 1] = seq;
        let mut bytes = [0u8; SLOT_WORDS * 8];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        self.file
            .write_all_at(&bytes, key as u64 * SLOT_BYTES)
            .context("write the truth file")
    }

    pub(crate) fn read(&self, key: usize) -> Option<Truth> {
        let mut bytes = [0u8; SLOT_WORDS * 8];
        for _ in 0..100 {
            self.file
                .read_exact_at(&mut bytes, key as u64 * SLOT_BYTES)
                .ok()?;
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
                u64::from_le_bytes(w)
            };
            if word(0) != word(SLOT_WORDS - 1) {
                std::hint::spin_loop();
                continue;
            }
            let mut commits = [0u64; RING];
            for (i, c) in commits.iter_mut().enumerate() {
                *c = word(2 + i);
            }
            return Some(Truth {
                version: word(1),
                commits,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_file_round_trips_and_finds_commit_instants() {
        let dir = std::env::temp_dir().join(format!("chaos-truth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("truth.bin");
        let w = TruthFile::create(&path, 3).expect("create");
        let t = Truth {
            version: 9,
            commits: [90, 80, 70, 60, 50],
        };
        w.write(1, 2, t).expect("write");
        let r = TruthFile::open(&path).expect("open");
        assert_eq!(r.read(1), Some(t));
        assert_eq!(r.read(0).map(|t| t.version), Some(1));
        assert_eq!(t.commit_of(9), 90);
        assert_eq!(t.commit_of(8), 80);
        assert_eq!(t.commit_of(2), 50, "older than the ring: the oldest kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
