//! The one error type of the storage layer.
//!
//! Storage errors are read by operators far more often than they are matched
//! by code, so every message says what happened, where (file and byte offset
//! when there is one) and what to do about it. A replica that finds its data
//! damaged must refuse to start rather than guess, and the message is the only
//! thing the operator sees at that moment.
//!
//! `StorageError` is `Clone` (I/O sources are kept behind an `Arc`) because
//! the log writer's failure is sticky: the same error is handed to every
//! waiter, current and later.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the operator should do when the on-disk data is damaged.
const DAMAGED: &str =
    "the data dir is damaged: restore it or wipe it and let the replica be rebuilt";

/// Why a WAL record or a snapshot was judged corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The CRC32C stored with the data does not match the data.
    BadChecksum,
    /// A record header declares an empty payload (never written by quintet).
    ZeroLength,
    /// A record header declares a payload larger than the configured maximum.
    TooLong {
        /// Declared payload length.
        len: u64,
        /// Largest payload this log accepts.
        max: u64,
    },
    /// The file ends before the record or header it announces is complete.
    Truncated {
        /// Bytes the record or header needs.
        needed: u64,
        /// Bytes that are left in the file.
        available: u64,
    },
    /// The file holds more bytes than its header announces.
    TrailingBytes {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::BadChecksum => write!(f, "bad checksum"),
            Corruption::ZeroLength => write!(f, "zero-length record"),
            Corruption::TooLong { len, max } => {
                write!(f, "declared length {len} exceeds the maximum of {max}")
            }
            Corruption::Truncated { needed, available } => write!(
                f,
                "truncated: needs {needed} bytes but only {available} are left"
            ),
            Corruption::TrailingBytes { expected, actual } => write!(
                f,
                "header announces {expected} bytes but {actual} are present"
            ),
        }
    }
}

/// Every way a storage operation can fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// An operating-system I/O call on `path` failed.
    #[error(
        "I/O error on {}: {source}; check that the disk is present, writable and not full, then restart the process",
        path.display()
    )]
    Io {
        /// File or directory the failed call was about.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The data directory does not exist and cannot be created.
    #[error(
        "cannot create data dir {}: {source}; create it by hand or pass a writable --data-dir",
        path.display()
    )]
    CreateDir {
        /// The directory that could not be created.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },

    /// Another process (or another open log in this process) holds the data dir.
    #[error(
        "data dir {} is locked by another process; stop the other quintet process that uses it or pass a different --data-dir",
        path.display()
    )]
    Locked {
        /// The locked data directory.
        path: PathBuf,
    },

    /// A file does not start with the magic bytes of its kind.
    #[error(
        "{} does not start with the {expected} magic (offset 0); it is not a quintet file or its header is damaged; {DAMAGED}",
        path.display()
    )]
    BadMagic {
        /// The file with the wrong header.
        path: PathBuf,
        /// The magic that was expected.
        expected: &'static str,
    },

    /// A WAL record that is not a torn tail failed validation.
    #[error(
        "corrupt WAL record in {} at offset {offset} ({reason}); {DAMAGED}",
        path.display()
    )]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record header in the file.
        offset: u64,
        /// What was wrong with it.
        reason: Corruption,
    },

    /// The WAL segments to replay are not numbered consecutively.
    #[error(
        "WAL segments in {} are not contiguous: segment {before} is followed by {after}, so at least one segment file is missing; {DAMAGED}",
        dir.display()
    )]
    SegmentGap {
        /// The WAL directory.
        dir: PathBuf,
        /// Last segment before the gap.
        before: u64,
        /// First segment after the gap.
        after: u64,
    },

    /// The segment replay must start from (named by the latest snapshot) is absent.
    #[error(
        "WAL segment {index} is missing in {} (replay after the snapshot must start there); {DAMAGED}",
        dir.display()
    )]
    MissingSegment {
        /// The WAL directory.
        dir: PathBuf,
        /// The segment that should exist.
        index: u64,
    },

    /// A snapshot file is damaged; quintet never falls back to an older one silently.
    #[error("corrupt snapshot {} ({reason}); {DAMAGED}", path.display())]
    CorruptSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What was wrong with it.
        reason: Corruption,
    },

    /// A caller tried to log a record that is empty or larger than the limit.
    #[error(
        "WAL record of {len} bytes is outside the allowed 1..={max} bytes; the caller must reject such data before logging it (this is a bug)"
    )]
    InvalidRecord {
        /// Payload length that was offered.
        len: usize,
        /// Largest payload this log accepts.
        max: usize,
    },

    /// A request to delete old segments would have deleted the live one.
    #[error(
        "refusing to delete WAL segments before {index} in {}: the newest segment is {newest} and must be kept (this is a bug in the caller)",
        dir.display()
    )]
    RemoveLiveSegment {
        /// The WAL directory.
        dir: PathBuf,
        /// The index passed by the caller.
        index: u64,
        /// The newest segment present.
        newest: u64,
    },

    /// The log writer thread is gone without reporting an error (it panicked).
    #[error(
        "the log writer thread stopped unexpectedly; nothing more can be made durable: restart the process"
    )]
    WriterStopped,
}

impl StorageError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// Adds the path to an `io::Result`, turning it into a storage result.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`StorageError::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_record_message_names_file_offset_and_remedy() {
        let e = StorageError::CorruptRecord {
            path: PathBuf::from("/x/wal-0000000000000003.log"),
            offset: 4096,
            reason: Corruption::BadChecksum,
        };
        assert_eq!(
            e.to_string(),
            "corrupt WAL record in /x/wal-0000000000000003.log at offset 4096 (bad checksum); \
             the data dir is damaged: restore it or wipe it and let the replica be rebuilt"
        );
    }

    #[test]
    fn io_error_keeps_its_source() {
        let e = StorageError::io("/d/f", io::Error::other("boom"));
        let src = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(src.as_deref(), Some("boom"));
        assert!(e.to_string().starts_with("I/O error on /d/f: boom;"));
    }
}
