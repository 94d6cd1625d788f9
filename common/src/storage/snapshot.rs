//! Whole-state snapshot files.
//!
//! A snapshot is one file `snapshot-{seq:020}.snap`:
//!
//! ```text
//! [8-byte magic "QNTSNAP1"][u64 LE payload length][u32 LE CRC32C of payload][payload]
//! ```
//!
//! `seq` is chosen by the caller (e.g. the last applied version) and only
//! orders snapshots; the zero padding makes names sort like numbers.
//!
//! Why it is shaped this way:
//!
//! - **Atomic replacement** (write `.tmp`, fsync it, rename, fsync the
//!   directory): after a crash there is either the old snapshot or the
//!   complete new one, never a half-written file under a real name. The WAL
//!   segments a snapshot covers are deleted only after this returns.
//! - **Length + CRC32C** (the same checksum as the WAL): a snapshot that was
//!   damaged after it was written (bit rot, a truncating copy) is detected
//!   instead of being loaded as wrong state.
//! - **No silent fallback**: [`load_latest`] reports a damaged newest snapshot
//!   as an error. Older snapshots are deleted once a newer one is durable and
//!   the WAL before the newest one may be gone, so "falling back" would
//!   quietly rebuild a replica with a hole in its history.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{Corruption, IoContext, StorageError};
use super::fsync_dir;

/// The 8 bytes every snapshot file starts with.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"QNTSNAP1";
/// Bytes before the payload: magic, length, CRC.
pub const SNAPSHOT_HEADER_LEN: usize = 8 + 8 + 4;

const MAGIC_STR: &str = "QNTSNAP1";
const TMP_SUFFIX: &str = ".tmp";

/// File name of the snapshot with sequence number `seq`.
pub fn snapshot_file_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

/// Path of the snapshot with sequence number `seq` inside `dir`.
pub fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(snapshot_file_name(seq))
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn is_tmp_name(name: &str) -> bool {
    name.starts_with("snapshot-") && name.ends_with(TMP_SUFFIX)
}

/// Snapshot sequence numbers in `dir` (ascending) and leftover temp files.
fn scan_dir(dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>), StorageError> {
    let mut seqs = Vec::new();
    let mut tmps = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_snapshot_name(name) {
            seqs.push(seq);
        } else if is_tmp_name(name) {
            tmps.push(entry.path());
        }
    }
    seqs.sort_unstable();
    Ok((seqs, tmps))
}

/// Atomically writes snapshot `seq` into `dir` (created if missing), then
/// deletes older snapshots; returns the new file's path.
pub fn write_snapshot(dir: &Path, seq: u64, payload: &[u8]) -> Result<PathBuf, StorageError> {
    fs::create_dir_all(dir).map_err(|e| StorageError::CreateDir {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    let path = snapshot_path(dir, seq);
    let mut tmp_name = path.clone().into_os_string();
    tmp_name.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);

    let mut header = [0u8; SNAPSHOT_HEADER_LEN];
    header[..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[16..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(&header)?;
        f.write_all(payload)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // Best effort: a leftover temp file is also removed by load_latest.
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::io(tmp, e));
    }
    fs::rename(&tmp, &path).at(&path)?;
    fsync_dir(dir)?;

    // The new snapshot is durable; older ones are now dead weight. Failing to
    // delete one is harmless (the newest is always the one loaded).
    let (seqs, _) = scan_dir(dir)?;
    for old in seqs.into_iter().filter(|&s| s < seq) {
        let old_path = snapshot_path(dir, old);
        if let Err(e) = fs::remove_file(&old_path) {
            tracing::warn!(file = %old_path.display(), error = %e, "could not delete an old snapshot");
        }
    }
    Ok(path)
}

/// Loads the snapshot with the highest sequence number in `dir`, if any.
///
/// Deletes leftover `.tmp` files from interrupted writes. A damaged newest
/// snapshot is an error naming the file; older ones are never tried instead.
/// A missing `dir` counts as empty.
pub fn load_latest(dir: &Path) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
    let (seqs, tmps) = match scan_dir(dir) {
        Ok(found) => found,
        Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    for tmp in tmps {
        fs::remove_file(&tmp).at(&tmp)?;
        tracing::info!(file = %tmp.display(), "deleted an unfinished snapshot left by an interrupted write");
    }
    let Some(&seq) = seqs.last() else {
        return Ok(None);
    };
    let path = snapshot_path(dir, seq);
    let data = fs::read(&path).at(&path)?;
    let payload = decode(&path, &data)?;
    Ok(Some((seq, payload.to_vec())))
}

/// Validates a snapshot file's bytes (`path` names it in errors) and
/// returns its payload, as [`load_latest`] does.
pub fn decode<'a>(path: &Path, data: &'a [u8]) -> Result<&'a [u8], StorageError> {
    let corrupt = |reason| StorageError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason,
    };
    let magic_len = SNAPSHOT_MAGIC.len().min(data.len());
    if !SNAPSHOT_MAGIC.starts_with(&data[..magic_len]) {
        return Err(StorageError::BadMagic {
            path: path.to_path_buf(),
            expected: MAGIC_STR,
        });
    }
    if data.len() < SNAPSHOT_HEADER_LEN {
        return Err(corrupt(Corruption::Truncated {
            needed: SNAPSHOT_HEADER_LEN as u64,
            available: data.len() as u64,
        }));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&data[8..16]);
    let len = u64::from_le_bytes(len);
    let crc = u32::from_le_bytes([data[16], data[17], data[18], data[19]]);
    let actual = (data.len() - SNAPSHOT_HEADER_LEN) as u64;
    if len > actual {
        return Err(corrupt(Corruption::Truncated {
            needed: len.saturating_add(SNAPSHOT_HEADER_LEN as u64),
            available: data.len() as u64,
        }));
    }
    if len < actual {
        return Err(corrupt(Corruption::TrailingBytes {
            expected: len,
            actual,
        }));
    }
    let payload = &data[SNAPSHOT_HEADER_LEN..];
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt(Corruption::BadChecksum));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(snapshot_file_name(7), "snapshot-00000000000000000007.snap");
        assert_eq!(
            parse_snapshot_name(&snapshot_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_snapshot_name("snapshot-7.snap"), None);
        assert!(is_tmp_name("snapshot-00000000000000000007.snap.tmp"));
        assert_eq!(
            parse_snapshot_name("snapshot-00000000000000000007.snap.tmp"),
            None
        );
    }

    #[test]
    fn decode_rejects_every_kind_of_damage() {
        let p = Path::new("/s");
        let mut good = SNAPSHOT_MAGIC.to_vec();
        good.extend_from_slice(&3u64.to_le_bytes());
        good.extend_from_slice(&crc32c::crc32c(b"abc").to_le_bytes());
        good.extend_from_slice(b"abc");
        assert_eq!(decode(p, &good).unwrap(), b"abc");

        assert!(matches!(
            decode(p, b"QNTSNAP"),
            Err(StorageError::CorruptSnapshot { .. })
        ));
        assert!(matches!(
            decode(p, b"garbage!"),
            Err(StorageError::BadMagic { .. })
        ));
        let short = &good[..good.len() - 1];
        assert!(matches!(
            decode(p, short),
            Err(StorageError::CorruptSnapshot {
                reason: Corruption::Truncated { .. },
                ..
            })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode(p, &long),
            Err(StorageError::CorruptSnapshot {
                reason: Corruption::TrailingBytes { .. },
                ..
            })
        ));
        let mut flipped = good.clone();
        flipped[21] ^= 0x40;
        assert!(matches!(
            decode(p, &flipped),
            Err(StorageError::CorruptSnapshot {
                reason: Corruption::BadChecksum,
                ..
            })
        ));
    }
}
