//! A whole WAL directory, damaged any way, opened as a server opens it:
//! the input is split into segment files (a new one at every segment
//! magic), written to a fresh dir on tmpfs, and `Wal::open` must agree with
//! reading each segment on its own (the same records, or an error), never
//! panic, cut only the last segment's torn tail, and leave a log that
//! reopens to the same records and takes a new record after them.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use quintet_common::storage::Wal;
use quintet_common::storage::wal::{read_segment, segment_path};
use quintet_fuzz::{fix_wal_crcs, split_segments};

/// Small, so that over-long records are reachable.
const MAX_RECORD: usize = 4096;

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("quintet-fuzz-wal-open-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let segments = split_segments(data, 4);
    let dir = scratch();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("scratch dir");
    for (i, seg) in segments.iter().enumerate() {
        fs::write(segment_path(dir, i as u64 + 1), seg).expect("write a segment");
    }

    // What opening must find: every segment read on its own, in order.
    let mut expected = Ok(Vec::new());
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        match read_segment(Path::new("seg"), seg, MAX_RECORD, is_last) {
            Ok((records, _)) => {
                if let Ok(all) = expected.as_mut() {
                    all.extend(records);
                }
            }
            Err(e) => {
                expected = Err(e);
                break;
            }
        }
    }

    let opened = Wal::open(dir, MAX_RECORD);
    let (mut wal, records) = match (opened, expected) {
        (Ok(got), Ok(want)) => {
            assert_eq!(got.1, want);
            got
        }
        (Err(_), Err(_)) => return,
        (got, want) => panic!(
            "open and read_segment disagree: {:?} vs {:?}",
            got.map(|g| g.1),
            want
        ),
    };
    // The older segments are untouched; only the last may have been cut.
    for (i, seg) in segments.iter().enumerate().take(segments.len() - 1) {
        assert_eq!(&fs::read(segment_path(dir, i as u64 + 1)).unwrap(), seg);
    }
    wal.append(b"after").expect("append after open");
    wal.sync().expect("sync");
    drop(wal);
    let (_, again) = Wal::open(dir, MAX_RECORD).expect("a log opened once opens again");
    assert_eq!(again.len(), records.len() + 1);
    assert_eq!(&again[..records.len()], &records[..]);
    assert_eq!(again.last().map(Vec::as_slice), Some(b"after".as_slice()));
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    if seed.is_multiple_of(2) {
        // Segment by segment, as the target splits the input.
        let lens: Vec<usize> = split_segments(&data[..size], 4)
            .iter()
            .map(|s| s.len())
            .collect();
        let mut rest = &mut data[..size];
        for len in lens {
            let (segment, after) = rest.split_at_mut(len);
            fix_wal_crcs(segment);
            rest = after;
        }
    }
    size
});
