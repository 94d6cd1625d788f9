//! The segmented write-ahead log.
//!
//! A WAL directory holds segment files `wal-{index:016}.log` (indices are
//! consecutive, starting at 1) and a `LOCK` file. Each segment starts with
//! the 8-byte magic `QNTWAL01` followed by records:
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC32C of payload][payload]
//! ```
//!
//! Why it is shaped this way:
//!
//! - **Length prefix**: records are opaque bytes (callers encode with
//!   bincode), so the log needs its own framing; a fixed 8-byte header makes
//!   replay a simple forward scan and lets a bogus length be recognised (it
//!   exceeds `max_record` or runs past the end of the file) before anything is
//!   allocated for it. Empty payloads are refused so that an all-zero header,
//!   what a crash typically leaves behind in a pre-extended file, is never a
//!   valid record.
//! - **CRC32C** per record: it detects torn and bit-rotted records, is
//!   hardware-accelerated on x86-64 and aarch64 (so checksumming costs far less
//!   than the fsync it guards) and is the checksum used by ext4, iSCSI and
//!   many logs, so its error-detection properties are well known.
//! - **Torn-tail-only truncation**: an append interrupted by a crash can only
//!   damage the end of the newest segment, and such a record was never
//!   acknowledged (acknowledgement waits for fsync), so cutting it off loses
//!   nothing that was promised. Damage anywhere else (the middle of a segment,
//!   an older segment, a bad magic, an impossible length) cannot come from a
//!   crash; the records after it may have been acknowledged, so silently
//!   dropping them would lose committed data. Opening therefore fails with an
//!   error naming file and offset and leaves the files exactly as they were.
//! - **Segments** let history covered by a snapshot be deleted a file at a
//!   time ([`remove_segments_before`]) without rewriting anything.
//! - **LOCK file** (`File::try_lock`): two processes appending to the same log
//!   would interleave records; the lock turns that mistake into a clear error.
//!
//! `Wal` itself is synchronous and single-owner; [`super::writer::LogWriter`]
//! is the async, group-committing front end the servers use.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::{Corruption, IoContext, StorageError};
use super::fsync_dir;

/// The 8 bytes every segment file starts with.
pub const SEGMENT_MAGIC: &[u8; 8] = b"QNTWAL01";
/// Bytes of the per-record header (length + CRC).
pub const RECORD_HEADER_LEN: usize = 8;
/// Name of the lock file inside the WAL directory.
pub const LOCK_FILE: &str = "LOCK";

const MAGIC_STR: &str = "QNTWAL01";
const WRITE_BUFFER: usize = 64 * 1024;

/// File name of segment `index`, e.g. `wal-0000000000000003.log`.
pub fn segment_file_name(index: u64) -> String {
    format!("wal-{index:016}.log")
}

/// Path of segment `index` inside `dir`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(segment_file_name(index))
}

/// Parses a segment file name back into its index.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Indices of all segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some(index) => out.push(index),
            None if name.starts_with("wal-") => tracing::warn!(
                file = %entry.path().display(),
                "ignoring a file that looks like a WAL segment but is not named wal-<16 digits>.log"
            ),
            None => {}
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates segment `index` with its magic, fsyncs it and the directory.
fn create_segment(dir: &Path, index: u64) -> Result<File, StorageError> {
    let path = segment_path(dir, index);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .at(&path)?;
    file.write_all(SEGMENT_MAGIC).at(&path)?;
    file.sync_all().at(&path)?;
    fsync_dir(dir)?;
    Ok(file)
}

/// Deletes every segment file with an index below `index` and fsyncs the
/// directory; returns how many were deleted.
///
/// Used after a snapshot that covers those segments is durable. Refuses
/// (without deleting anything) if it would delete the newest segment.
pub fn remove_segments_before(dir: &Path, index: u64) -> Result<usize, StorageError> {
    let segments = list_segments(dir)?;
    if let Some(&newest) = segments.last()
        && newest < index
    {
        return Err(StorageError::RemoveLiveSegment {
            dir: dir.to_path_buf(),
            index,
            newest,
        });
    }
    let mut removed = 0;
    for &i in segments.iter().filter(|&&i| i < index) {
        let path = segment_path(dir, i);
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(path, e)),
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// A torn write found at the end of the last segment.
struct Torn {
    offset: u64,
    reason: String,
}

/// Checks the record at the start of `buf`; returns its payload length.
fn check_record(buf: &[u8], max_record: usize) -> Result<usize, Corruption> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(Corruption::Truncated {
            needed: RECORD_HEADER_LEN as u64,
            available: buf.len() as u64,
        });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 {
        return Err(Corruption::ZeroLength);
    }
    if len > max_record {
        return Err(Corruption::TooLong {
            len: len as u64,
            max: max_record as u64,
        });
    }
    let end = RECORD_HEADER_LEN + len;
    if end > buf.len() {
        return Err(Corruption::Truncated {
            needed: end as u64,
            available: buf.len() as u64,
        });
    }
    if crc32c::crc32c(&buf[RECORD_HEADER_LEN..end]) != crc {
        return Err(Corruption::BadChecksum);
    }
    Ok(len)
}

fn all_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// Validates one segment's bytes, appending its payloads to `out`.
///
/// Returns the torn tail to cut, if `is_last` and the damage is a torn
/// write; any other damage is an error. Touches nothing on disk.
fn scan_segment(
    path: &Path,
    data: &[u8],
    max_record: usize,
    is_last: bool,
    out: &mut Vec<Vec<u8>>,
) -> Result<Option<Torn>, StorageError> {
    let magic_len = SEGMENT_MAGIC.len();
    if data.len() < magic_len || &data[..magic_len] != SEGMENT_MAGIC {
        // A crash while a segment was being created leaves it empty, with a
        // prefix of the magic, or zero-filled: a torn write of the magic.
        let interrupted_create =
            (data.len() < magic_len && SEGMENT_MAGIC.starts_with(data)) || all_zero(data);
        if is_last && interrupted_create {
            return Ok(Some(Torn {
                offset: 0,
                reason: "segment header incomplete".to_string(),
            }));
        }
        if data.len() < magic_len && SEGMENT_MAGIC.starts_with(data) {
            return Err(StorageError::CorruptRecord {
                path: path.to_path_buf(),
                offset: 0,
                reason: Corruption::Truncated {
                    needed: magic_len as u64,
                    available: data.len() as u64,
                },
            });
        }
        return Err(StorageError::BadMagic {
            path: path.to_path_buf(),
            expected: MAGIC_STR,
        });
    }

    let mut off = magic_len;
    while off < data.len() {
        let rest = &data[off..];
        let reason = match check_record(rest, max_record) {
            Ok(len) => {
                let start = off + RECORD_HEADER_LEN;
                out.push(data[start..start + len].to_vec());
                off = start + len;
                continue;
            }
            Err(reason) => reason,
        };
        let torn = is_last
            && match reason {
                // A header or payload that runs past the end of the file.
                Corruption::Truncated { .. } => true,
                // The final record (or one followed only by zeros) whose
                // bytes did not all reach the disk.
                Corruption::BadChecksum => {
                    let end = RECORD_HEADER_LEN
                        + u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    all_zero(&rest[end..])
                }
                // Zero-filled space past the last complete record.
                Corruption::ZeroLength => all_zero(rest),
                // A length that no writer produced is damage, not a tear.
                Corruption::TooLong { .. } | Corruption::TrailingBytes { .. } => false,
            };
        if torn {
            return Ok(Some(Torn {
                offset: off as u64,
                reason: reason.to_string(),
            }));
        }
        return Err(StorageError::CorruptRecord {
            path: path.to_path_buf(),
            offset: off as u64,
            reason,
        });
    }
    Ok(None)
}

/// Checks one segment's bytes as [`Wal::open`] does, touching nothing on
/// disk: the payloads of its good records and, only when `is_last`, the
/// offset of a torn tail that opening would cut off. Any other damage is
/// the error opening would refuse with. For tests and the fuzz targets.
pub fn read_segment(
    path: &Path,
    data: &[u8],
    max_record: usize,
    is_last: bool,
) -> Result<(Vec<Vec<u8>>, Option<u64>), StorageError> {
    let mut out = Vec::new();
    let torn = scan_segment(
        path,
        data,
        max_record.min(u32::MAX as usize),
        is_last,
        &mut out,
    )?;
    Ok((out, torn.map(|t| t.offset)))
}

/// Cuts a torn tail off the last segment (rewriting the magic if the header
/// itself was torn) and makes the cut durable.
fn cut_torn_tail(path: &Path, torn: &Torn) -> Result<(), StorageError> {
    let mut file = OpenOptions::new().write(true).open(path).at(path)?;
    if torn.offset < SEGMENT_MAGIC.len() as u64 {
        file.set_len(0).at(path)?;
        file.write_all(SEGMENT_MAGIC).at(path)?;
    } else {
        file.set_len(torn.offset).at(path)?;
    }
    file.sync_all().at(path)?;
    tracing::warn!(
        file = %path.display(),
        offset = torn.offset,
        reason = %torn.reason,
        "cut a torn record off the end of the WAL (an append interrupted by a crash; it was never acknowledged)"
    );
    Ok(())
}

/// Takes the exclusive lock on `dir/LOCK`.
///
/// `File::try_lock` is stable since Rust 1.89 while the workspace still
/// declares `rust-version = "1.85"`; the toolchain in use is 1.95. The allow
/// goes once the workspace's rust-version is raised to 1.89.
fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StorageError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(StorageError::io(path, e)),
    }
}

/// An open, locked write-ahead log positioned at the end of its newest segment.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    max_record: usize,
    out: BufWriter<File>,
    segment: u64,
    bytes_since_rotate: u64,
    syncs: u64,
    /// Sticky: after a failed write or fsync the file state is unknown.
    failed: Option<StorageError>,
    /// Held for the lifetime of the log; dropping it releases the lock.
    _lock: File,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, replays every segment and
    /// returns the log with all record payloads in order.
    pub fn open(dir: &Path, max_record: usize) -> Result<(Wal, Vec<Vec<u8>>), StorageError> {
        Self::open_from(dir, max_record, 0)
    }

    /// Like [`Wal::open`] but replays only segments with index >=
    /// `first_segment` (the segment a snapshot says replay starts at).
    ///
    /// With `first_segment` >= 1 that segment must exist; 0 means "replay
    /// whatever is there". An empty directory gets segment 1 when
    /// `first_segment` <= 1.
    pub fn open_from(
        dir: &Path,
        max_record: usize,
        first_segment: u64,
    ) -> Result<(Wal, Vec<Vec<u8>>), StorageError> {
        let max_record = max_record.min(u32::MAX as usize);
        fs::create_dir_all(dir).map_err(|e| StorageError::CreateDir {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        let lock = lock_dir(dir)?;

        let all = list_segments(dir)?;
        let replay: Vec<u64> = all
            .iter()
            .copied()
            .filter(|&i| i >= first_segment)
            .collect();
        let Some((&first, &last)) = replay.first().zip(replay.last()) else {
            if all.is_empty() && first_segment <= 1 {
                let file = create_segment(dir, 1)?;
                return Ok((Self::new(dir, max_record, lock, file, 1, 0), Vec::new()));
            }
            return Err(StorageError::MissingSegment {
                dir: dir.to_path_buf(),
                index: first_segment.max(1),
            });
        };
        if first_segment >= 1 && first != first_segment {
            return Err(StorageError::MissingSegment {
                dir: dir.to_path_buf(),
                index: first_segment,
            });
        }
        for pair in replay.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(StorageError::SegmentGap {
                    dir: dir.to_path_buf(),
                    before: pair[0],
                    after: pair[1],
                });
            }
        }

        // Validate everything before changing anything on disk.
        let mut records = Vec::new();
        let mut torn = None;
        let mut last_len = 0u64;
        for &index in &replay {
            let path = segment_path(dir, index);
            let data = fs::read(&path).at(&path)?;
            let is_last = index == last;
            torn = scan_segment(&path, &data, max_record, is_last, &mut records)?;
            if is_last {
                last_len = data.len() as u64;
            }
        }

        let path = segment_path(dir, last);
        if let Some(torn) = &torn {
            cut_torn_tail(&path, torn)?;
            last_len = torn.offset.max(SEGMENT_MAGIC.len() as u64);
        }
        let file = OpenOptions::new().append(true).open(&path).at(&path)?;
        let bytes = last_len - SEGMENT_MAGIC.len() as u64;
        Ok((Self::new(dir, max_record, lock, file, last, bytes), records))
    }

    fn new(dir: &Path, max_record: usize, lock: File, file: File, segment: u64, bytes: u64) -> Wal {
        Wal {
            dir: dir.to_path_buf(),
            max_record,
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            segment,
            bytes_since_rotate: bytes,
            syncs: 0,
            failed: None,
            _lock: lock,
        }
    }

    /// Returns the sticky error if an earlier write or fsync failed.
    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records `e` as sticky (the file state is unknown after it) and returns it.
    fn fail(&mut self, e: StorageError) -> StorageError {
        self.failed = Some(e.clone());
        e
    }

    /// Buffers one record; it is durable only after the next [`Wal::sync`].
    ///
    /// The payload must be 1..=`max_record` bytes ([`StorageError::InvalidRecord`]
    /// otherwise, which leaves the log usable). An I/O error is sticky.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), StorageError> {
        self.check_failed()?;
        if payload.is_empty() || payload.len() > self.max_record {
            return Err(StorageError::InvalidRecord {
                len: payload.len(),
                max: self.max_record,
            });
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        let written = self
            .out
            .write_all(&header)
            .and_then(|()| self.out.write_all(payload));
        if let Err(e) = written {
            let path = self.segment_path();
            return Err(self.fail(StorageError::io(path, e)));
        }
        self.bytes_since_rotate += (RECORD_HEADER_LEN + payload.len()) as u64;
        Ok(())
    }

    /// Writes out buffered records and fsyncs the current segment.
    ///
    /// A failure is sticky: fsync is never retried, because after a failed
    /// fsync the kernel may have dropped the dirty pages and a retry that
    /// "succeeds" would lie.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_failed()?;
        let result = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        if let Err(e) = result {
            let path = self.segment_path();
            return Err(self.fail(StorageError::io(path, e)));
        }
        self.syncs += 1;
        Ok(())
    }

    /// Syncs the current segment, starts the next one (fsyncing the
    /// directory) and returns its index.
    pub fn rotate(&mut self) -> Result<u64, StorageError> {
        self.sync()?;
        let next = self.segment + 1;
        let file = match create_segment(&self.dir, next) {
            Ok(f) => f,
            Err(e) => return Err(self.fail(e)),
        };
        self.out = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.segment = next;
        self.bytes_since_rotate = 0;
        Ok(next)
    }

    /// Index of the segment appends go to.
    pub fn current_segment(&self) -> u64 {
        self.segment
    }

    /// Record bytes (headers included) in the current segment, counting
    /// those that were already there when the log was opened.
    pub fn bytes_since_rotate(&self) -> u64 {
        self.bytes_since_rotate
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the segment appends go to.
    pub fn segment_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segment)
    }

    /// Largest payload accepted by [`Wal::append`].
    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// Number of successful [`Wal::sync`] calls (rotations included), for tests and metrics.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_roundtrip_and_reject_lookalikes() {
        assert_eq!(segment_file_name(3), "wal-0000000000000003.log");
        assert_eq!(parse_segment_name("wal-0000000000000003.log"), Some(3));
        assert_eq!(parse_segment_name("wal-3.log"), None);
        assert_eq!(parse_segment_name("wal-000000000000000x.log"), None);
        assert_eq!(parse_segment_name("wal-0000000000000003.log.bak"), None);
        assert_eq!(parse_segment_name("LOCK"), None);
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn segment(records: &[&[u8]]) -> Vec<u8> {
        let mut v = SEGMENT_MAGIC.to_vec();
        for r in records {
            v.extend(record(r));
        }
        v
    }

    fn scan(data: &[u8], is_last: bool) -> Result<(Vec<Vec<u8>>, Option<u64>), StorageError> {
        let mut out = Vec::new();
        let torn = scan_segment(Path::new("/t/seg"), data, 64, is_last, &mut out)?;
        Ok((out, torn.map(|t| t.offset)))
    }

    #[test]
    fn scan_classifies_tails() {
        let good = segment(&[b"a", b"bb"]);
        let end = good.len() as u64;
        assert_eq!(
            scan(&good, true).unwrap(),
            (vec![b"a".to_vec(), b"bb".to_vec()], None)
        );

        // Too long is corruption even at the very end.
        let mut too_long = good.clone();
        too_long.extend_from_slice(&1000u32.to_le_bytes());
        too_long.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(
            scan(&too_long, true),
            Err(StorageError::CorruptRecord { offset, reason: Corruption::TooLong { .. }, .. }) if offset == end
        ));

        // A zero-length header followed by non-zero data is corruption.
        let mut zero_then_data = good.clone();
        zero_then_data.extend_from_slice(&[0u8; 8]);
        zero_then_data.extend(record(b"c"));
        assert!(matches!(
            scan(&zero_then_data, true),
            Err(StorageError::CorruptRecord {
                reason: Corruption::ZeroLength,
                ..
            })
        ));

        // Bad checksum on the final record followed by zeros is torn.
        let mut bad_then_zeros = good.clone();
        let mut r = record(b"ccc");
        r[9] ^= 1;
        bad_then_zeros.extend(r);
        bad_then_zeros.extend_from_slice(&[0u8; 100]);
        assert_eq!(scan(&bad_then_zeros, true).unwrap().1, Some(end));
        // ...but not in an older segment.
        assert!(scan(&bad_then_zeros, false).is_err());

        // An interrupted segment creation is torn at offset 0.
        assert_eq!(scan(b"QNT", true).unwrap().1, Some(0));
        assert_eq!(scan(b"", true).unwrap().1, Some(0));
        assert_eq!(scan(&[0u8; 12], true).unwrap().1, Some(0));
        assert!(matches!(
            scan(b"NOTAWAL!", true),
            Err(StorageError::BadMagic { .. })
        ));
        assert!(scan(b"QNT", false).is_err());
    }
}
