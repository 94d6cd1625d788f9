//! Helpers the fuzz targets share: the on-disk framing written back from
//! payloads (to check what a reader keeps), and the mutator fix-ups that let
//! the fuzzer get past a checksum now and then, so that the decoders behind
//! it (bincode records, snapshots, replay) are fuzzed too.

use quintet_common::storage::snapshot::{SNAPSHOT_HEADER_LEN, SNAPSHOT_MAGIC};
use quintet_common::storage::wal::{RECORD_HEADER_LEN, SEGMENT_MAGIC};

/// A segment file holding `payloads`, as `Wal::append` writes them.
pub fn segment(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = SEGMENT_MAGIC.to_vec();
    for p in payloads {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(p).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Rewrites the CRC of every record whose length fits in `data`, from the
/// first record on, so the records' payloads reach the decoders.
pub fn fix_wal_crcs(data: &mut [u8]) {
    let mut off = SEGMENT_MAGIC.len();
    while off + RECORD_HEADER_LEN <= data.len() {
        let len = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        let start = off + RECORD_HEADER_LEN;
        let Some(end) = start.checked_add(len as usize).filter(|&e| e <= data.len()) else {
            return;
        };
        if len == 0 {
            return;
        }
        let crc = crc32c::crc32c(&data[start..end]);
        data[off + 4..start].copy_from_slice(&crc.to_le_bytes());
        off = end;
    }
}

/// Makes a snapshot file's header (magic, length, CRC) match its payload.
pub fn fix_snapshot_header(data: &mut [u8]) {
    if data.len() < SNAPSHOT_HEADER_LEN {
        return;
    }
    data[..8].copy_from_slice(SNAPSHOT_MAGIC);
    let len = (data.len() - SNAPSHOT_HEADER_LEN) as u64;
    data[8..16].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&data[SNAPSHOT_HEADER_LEN..]);
    data[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// Splits one input into a snapshot file and the log segment after it,
/// which starts at the first segment magic past the snapshot's header.
pub fn split_snapshot(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    let magic = SEGMENT_MAGIC.len();
    let at = (SNAPSHOT_HEADER_LEN..data.len().saturating_sub(magic - 1))
        .find(|&i| &data[i..i + magic] == SEGMENT_MAGIC);
    match at {
        Some(i) => (&data[..i], Some(&data[i..])),
        None => (data, None),
    }
}

/// Splits one input into segment files: a new segment starts at every
/// segment magic after the first byte. At most `max` segments; the rest of
/// the input stays in the last one.
pub fn split_segments(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut starts = vec![0];
    let mut i = 1;
    while i + SEGMENT_MAGIC.len() <= data.len() && starts.len() < max {
        if &data[i..i + SEGMENT_MAGIC.len()] == SEGMENT_MAGIC {
            starts.push(i);
            i += SEGMENT_MAGIC.len();
        } else {
            i += 1;
        }
    }
    starts.push(data.len());
    starts.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}
