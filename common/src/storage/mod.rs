//! Durable storage primitives: the write-ahead log and snapshot files.
//!
//! Both servers keep their state as "latest snapshot + the WAL after it":
//!
//! - [`wal::Wal`] is a segmented, append-only log of opaque, checksummed
//!   records. Segments let old history be deleted file by file once a
//!   snapshot covers it, which keeps disk use and restart time bounded.
//! - [`snapshot`] writes and loads whole-state snapshots atomically
//!   (temp file, fsync, rename, fsync dir).
//! - [`space`] checks the free space a server keeps in reserve before it
//!   takes on a write.
//! - [`writer::LogWriter`] puts a dedicated thread in front of a `Wal` so
//!   async request handlers can log without blocking the runtime and get
//!   group commit (one fsync for many records) for free.
//!
//! The layer knows nothing about the protocol: payloads are bytes that the
//! callers encode (with bincode). Everything here is synchronous `std::fs`
//! except the writer's durability notification. Damage is never repaired by
//! guessing: only a torn tail (the last, interrupted append) is cut off;
//! anything else is a [`StorageError`] that names the file and offset.

pub mod error;
pub mod snapshot;
pub mod space;
pub mod wal;
pub mod writer;

pub use error::{Corruption, StorageError};
pub use wal::Wal;
pub use writer::{LogWriter, Lsn};

use std::fs::File;
use std::path::Path;

use error::IoContext;

/// Fsyncs a directory so that file creations, renames and deletions in it
/// survive a crash.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
