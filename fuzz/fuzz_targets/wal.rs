//! One WAL segment's bytes, damaged any way, as opening a data dir reads
//! them: the reader returns an error or the good records (and where a torn
//! tail is cut), never panics; the records it keeps are exactly the bytes
//! before the cut; reading what is left after the cut gives the same
//! records and nothing to cut. The records are then decoded and replayed
//! as a participant's start-up does. The mutator fixes record CRCs half of
//! the time so that the payloads get past the checksum.
#![no_main]

use std::path::Path;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use quintet_common::net::MAX_FRAME;
use quintet_common::protocol::participant::{Participant, Record};
use quintet_common::storage::wal::{SEGMENT_MAGIC, read_segment};
use quintet_common::types::Limits;
use quintet_fuzz::{fix_wal_crcs, segment};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("wal-0000000000000001.log");
    let mut replayed = false;
    for max_record in [MAX_FRAME, 64] {
        let older = read_segment(path, data, max_record, false);
        let last = read_segment(path, data, max_record, true);
        if let Ok((records, torn)) = &older {
            // Only the last segment may have a tail cut.
            assert!(torn.is_none());
            assert_eq!(segment(records), data, "an older segment is read whole");
            let (same, none) = last
                .as_ref()
                .expect("a good older segment is a good last one");
            assert_eq!((same, none), (records, &None));
        }
        let Ok((records, torn)) = last else { continue };
        let kept = match torn {
            // The header itself was torn: opening rewrites the magic.
            Some(off) if (off as usize) < SEGMENT_MAGIC.len() => {
                assert!(records.is_empty());
                SEGMENT_MAGIC.to_vec()
            }
            Some(off) => data[..off as usize].to_vec(),
            None => data.to_vec(),
        };
        assert_eq!(
            segment(&records),
            kept,
            "the good prefix is exactly the kept bytes"
        );
        let again = read_segment(path, &kept, max_record, true).expect("the cut log reads");
        assert_eq!(
            again,
            (records.clone(), None),
            "a cut log has nothing more to cut"
        );
        if !replayed {
            replayed = true;
            replay(&records);
        }
    }
});

/// Decodes the payloads and rebuilds a participant from them, as
/// `participant::server::open_state` does; errors are fine, panics are not.
fn replay(payloads: &[Vec<u8>]) {
    let mut records = Vec::new();
    for p in payloads {
        match bincode::deserialize::<Record>(p) {
            Ok(r) => records.push(r),
            Err(_) => return,
        }
    }
    let _ = Participant::restore(1, 0x1001, Limits::default(), None, records);
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    if seed.is_multiple_of(2) {
        fix_wal_crcs(&mut data[..size]);
    }
    size
});
