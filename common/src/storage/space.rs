//! Free space on a data dir's file system, checked before a server takes
//! on a write: a full disk is refused up front (a NO vote, an
//! "unavailable" answer), because once a write or an fsync has failed the
//! log's state is unknown and the process must stop. Keeping a reserve
//! free also leaves room for the records that settle batches already
//! prepared (COMMITTED, aborts) and for the next log segment.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes available to unprivileged writers on the file system holding
/// `dir`, or `None` if it cannot be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Why a write must be refused, if the file system holding `dir` has less
/// than `reserve` bytes free; `None` when there is room (or the check
/// itself failed: then the write path reports any real error).
pub fn shortage(dir: &Path, reserve: u64) -> Option<String> {
    let free = free_bytes(dir)?;
    (free < reserve).then(|| {
        format!(
            "disk full: {} MiB free on the file system of {}, below the {} MiB kept in reserve (--min-free-mib); free some space and writes resume by themselves",
            free >> 20,
            dir.display(),
            reserve >> 20
        )
    })
}

/// How long a [`Reserve`] check stands before the file system is asked
/// again: writes come many times a second, and the free space changes
/// slowly.
pub const RECHECK: Duration = Duration::from_millis(100);

/// A change in a [`Reserve`]'s verdict, for the one log line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Space fell below the reserve.
    Short,
    /// Space is back above it.
    Recovered,
}

/// The reserve a server keeps on its data dir's file system, checked at
/// most every [`RECHECK`]: the shared check behind a participant's
/// "disk full" NO vote and the coordinator leader's refusal of writes.
pub struct Reserve {
    dir: PathBuf,
    reserve: u64,
    last: Mutex<Option<(Instant, Option<String>)>>,
}

impl Reserve {
    /// Keeps `reserve` bytes free on the file system holding `dir`.
    pub fn new(dir: &Path, reserve: u64) -> Self {
        Reserve {
            dir: dir.to_path_buf(),
            reserve,
            last: Mutex::new(None),
        }
    }

    /// Why a write must be refused now (see [`shortage`]), and whether the
    /// verdict just changed.
    pub fn check(&self) -> (Option<String>, Option<Change>) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, why)) = last.as_ref()
            && at.elapsed() < RECHECK
        {
            return (why.clone(), None);
        }
        let why = shortage(&self.dir, self.reserve);
        let was = last.as_ref().is_some_and(|(_, w)| w.is_some());
        let change = match (why.is_some(), was) {
            (true, false) => Some(Change::Short),
            (false, true) => Some(Change::Recovered),
            _ => None,
        };
        *last = Some((Instant::now(), why.clone()));
        (why, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_shortage_only_below_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("statvfs works on a temp dir");
        assert!(shortage(dir.path(), 0).is_none());
        let why = shortage(dir.path(), free + (1 << 30)).expect("below the reserve");
        assert!(why.starts_with("disk full:"), "{why}");
    }

    #[test]
    fn a_reserve_reports_each_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let short = Reserve::new(dir.path(), free + (1 << 30));
        let (why, change) = short.check();
        assert!(why.is_some());
        assert_eq!(change, Some(Change::Short));
        let (why, change) = short.check();
        assert!(why.is_some(), "the verdict stands");
        assert_eq!(change, None, "said once");
        let (why, change) = Reserve::new(dir.path(), 0).check();
        assert_eq!(
            (why, change),
            (None, None),
            "room from the start is no change"
        );
    }
}
