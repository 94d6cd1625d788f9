//! Free space on a data dir's file system, checked before a server takes
//! on a write: a full disk is refused up front (a NO vote, an
//! "unavailable" answer), because once a write or an fsync has failed the
//! log's state is unknown and the process must stop. Keeping a reserve
//! free also leaves room for the records that settle batches already
//! prepared (COMMITTED, aborts) and for the next log segment.

use std::path::Path;

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
}
