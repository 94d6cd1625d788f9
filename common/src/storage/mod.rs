//! Durable storage primitives: the write-ahead log and snapshot files.
