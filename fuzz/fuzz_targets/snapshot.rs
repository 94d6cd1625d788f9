//! A participant's start-up from a damaged data dir: a snapshot file and
//! the log segment after it. The input is the snapshot file's bytes,
//! optionally followed by a segment (from the first segment magic after
//! the snapshot's header on). The snapshot is checked (magic, length, CRC)
//! and decoded with bincode, the segment read as the newest one, its
//! records decoded, and a participant restored from both, as
//! `participant::server::open_state` does. Errors are fine, panics are
//! not; a decoded snapshot encodes back to one that decodes equal. The
//! mutator fixes the header and the record CRCs half of the time so that
//! the payloads reach the decoders.
#![no_main]

use std::path::Path;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use quintet_common::net::MAX_FRAME;
use quintet_common::protocol::participant::{Participant, Record, Snapshot};
use quintet_common::storage::snapshot::{SNAPSHOT_HEADER_LEN, decode};
use quintet_common::storage::wal::read_segment;
use quintet_common::types::Limits;
use quintet_fuzz::{fix_snapshot_header, fix_wal_crcs, split_snapshot};

fuzz_target!(|data: &[u8]| {
    let (file, segment) = split_snapshot(data);
    let Ok(payload) = decode(Path::new("snapshot-00000000000000000007.snap"), file) else {
        return;
    };
    assert_eq!(payload.len() + SNAPSHOT_HEADER_LEN, file.len());
    let Ok(snap) = bincode::deserialize::<Snapshot>(payload) else {
        return;
    };
    let again = bincode::serialize(&snap).expect("a decoded snapshot encodes");
    let back: Snapshot = bincode::deserialize(&again).expect("an encoded snapshot decodes");
    assert_eq!(back, snap);

    let mut records = Vec::new();
    if let Some(segment) = segment {
        let Ok((payloads, _)) = read_segment(Path::new("wal-7.log"), segment, MAX_FRAME, true)
        else {
            return;
        };
        for p in &payloads {
            match bincode::deserialize::<Record>(p) {
                Ok(r) => records.push(r),
                Err(_) => return,
            }
        }
    }
    let _ = Participant::restore(1, 0x1001, Limits::default(), Some(snap), records);
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    if seed.is_multiple_of(2) {
        let data = &mut data[..size];
        let cut = split_snapshot(data).0.len();
        let (file, segment) = data.split_at_mut(cut);
        fix_snapshot_header(file);
        fix_wal_crcs(segment);
    }
    size
});
