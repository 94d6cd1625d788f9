//! Storage layer tests: WAL replay and torn-tail recovery, corruption
//! detection, segment removal, snapshots and the group-committing writer.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use quintet_common::storage::snapshot::{self, load_latest, snapshot_path, write_snapshot};
use quintet_common::storage::wal::{self, SEGMENT_MAGIC, remove_segments_before, segment_path};
use quintet_common::storage::{Corruption, LogWriter, StorageError, Wal};

const MAX: usize = 1024;

fn payload(i: usize) -> Vec<u8> {
    format!("record-{i}").into_bytes()
}

fn payloads(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(payload).collect()
}

/// The on-disk encoding of one record, built independently of the Wal.
fn encode(p: &[u8]) -> Vec<u8> {
    let mut v = (p.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&crc32c::crc32c(p).to_le_bytes());
    v.extend_from_slice(p);
    v
}

/// Writes `records` into a fresh log (one segment) and closes it.
fn write_log(dir: &Path, records: &[Vec<u8>]) -> PathBuf {
    let (mut w, replayed) = Wal::open(dir, MAX).unwrap();
    assert!(replayed.is_empty());
    for r in records {
        w.append(r).unwrap();
    }
    w.sync().unwrap();
    w.segment_path()
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn flip(path: &Path, offset: usize) {
    let mut data = fs::read(path).unwrap();
    data[offset] ^= 0x20;
    fs::write(path, data).unwrap();
}

/// Offset of record `i` in a segment holding `records`.
fn offset_of(records: &[Vec<u8>], i: usize) -> usize {
    SEGMENT_MAGIC.len() + records[..i].iter().map(|r| 8 + r.len()).sum::<usize>()
}

// ---------------------------------------------------------------- WAL basics

#[test]
fn append_reopen_roundtrip_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(w.current_segment(), 1);
    for p in payloads(0..10) {
        w.append(&p).unwrap();
    }
    assert_eq!(w.rotate().unwrap(), 2);
    assert_eq!(w.bytes_since_rotate(), 0);
    for p in payloads(10..20) {
        w.append(&p).unwrap();
    }
    assert_eq!(w.rotate().unwrap(), 3);
    for p in payloads(20..25) {
        w.append(&p).unwrap();
    }
    w.sync().unwrap();
    let tail_bytes = w.bytes_since_rotate();
    assert_eq!(
        tail_bytes,
        payloads(20..25)
            .iter()
            .map(|p| 8 + p.len() as u64)
            .sum::<u64>()
    );
    drop(w);

    for i in 1..=3 {
        assert!(segment_path(dir.path(), i).exists());
    }
    let (mut w, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed, payloads(0..25));
    assert_eq!(w.current_segment(), 3);
    assert_eq!(
        w.bytes_since_rotate(),
        tail_bytes,
        "counts what the segment already holds"
    );
    for p in payloads(25..30) {
        w.append(&p).unwrap();
    }
    w.sync().unwrap();
    drop(w);

    let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed, payloads(0..30));
}

#[test]
fn open_creates_missing_dir_and_first_segment() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/wal");
    let (w, replayed) = Wal::open(&dir, MAX).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(w.current_segment(), 1);
    assert_eq!(fs::read(segment_path(&dir, 1)).unwrap(), SEGMENT_MAGIC);
}

#[test]
fn open_reports_a_dir_that_cannot_be_created() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let dir = file.join("wal");
    let err = Wal::open(&dir, MAX).unwrap_err();
    assert!(matches!(err, StorageError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
}

#[test]
fn invalid_records_are_refused_and_leave_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), 16).unwrap();
    assert!(matches!(
        w.append(b""),
        Err(StorageError::InvalidRecord { len: 0, max: 16 })
    ));
    assert!(matches!(
        w.append(&[1; 17]),
        Err(StorageError::InvalidRecord { len: 17, .. })
    ));
    w.append(&[1; 16]).unwrap();
    w.sync().unwrap();
    drop(w);
    let (_, replayed) = Wal::open(dir.path(), 16).unwrap();
    assert_eq!(replayed, vec![vec![1; 16]]);
}

#[test]
fn lock_prevents_a_second_open() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(dir.path(), MAX).unwrap();
    let err = Wal::open(dir.path(), MAX).unwrap_err();
    assert!(
        matches!(&err, StorageError::Locked { path } if path == dir.path()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    drop(w);
    Wal::open(dir.path(), MAX).unwrap();
}

// ------------------------------------------------------------- torn tails

/// Each case damages the tail of the last segment the way a crash can and
/// says how many of the written records must survive.
fn torn_case(name: &str, damage: impl FnOnce(&Path, &[Vec<u8>]) -> usize) {
    let dir = tempfile::tempdir().unwrap();
    let records = payloads(0..5);
    let seg = write_log(dir.path(), &records);
    let survivors = damage(&seg, &records);

    let (mut w, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed, records[..survivors], "{name}");
    let cut = offset_of(&records, survivors) as u64;
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        cut,
        "{name}: file cut at the torn record"
    );

    w.append(b"after-recovery").unwrap();
    w.sync().unwrap();
    drop(w);
    let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
    let mut expected = records[..survivors].to_vec();
    expected.push(b"after-recovery".to_vec());
    assert_eq!(
        replayed, expected,
        "{name}: appends after recovery are readable"
    );
}

#[test]
fn torn_partial_header_is_cut() {
    torn_case("partial header", |seg, r| {
        append_bytes(seg, &[9, 0, 0]);
        r.len()
    });
}

#[test]
fn torn_partial_payload_is_cut() {
    torn_case("partial payload", |seg, r| {
        let full = encode(&[7u8; 100]);
        append_bytes(seg, &full[..8 + 10]);
        r.len()
    });
}

#[test]
fn torn_bad_crc_on_last_record_is_cut() {
    torn_case("bad crc on last record", |seg, r| {
        let len = fs::metadata(seg).unwrap().len() as usize;
        flip(seg, len - 1);
        r.len() - 1
    });
}

#[test]
fn torn_zero_filled_tail_is_cut() {
    torn_case("zero-filled tail", |seg, r| {
        append_bytes(seg, &[0u8; 4096]);
        r.len()
    });
}

#[test]
fn torn_bad_crc_followed_by_zeros_is_cut() {
    torn_case("bad crc then zeros", |seg, r| {
        let mut rec = encode(b"half-written");
        rec[10] ^= 1;
        append_bytes(seg, &rec);
        append_bytes(seg, &[0u8; 512]);
        r.len()
    });
}

#[test]
fn interrupted_segment_creation_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), MAX).unwrap();
    w.append(b"one").unwrap();
    w.sync().unwrap();
    drop(w);
    // A crash right after creating segment 2, before its magic hit the disk.
    fs::write(segment_path(dir.path(), 2), &SEGMENT_MAGIC[..3]).unwrap();

    let (mut w, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed, vec![b"one".to_vec()]);
    assert_eq!(w.current_segment(), 2);
    assert_eq!(
        fs::read(segment_path(dir.path(), 2)).unwrap(),
        SEGMENT_MAGIC
    );
    w.append(b"two").unwrap();
    w.sync().unwrap();
    drop(w);
    let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed, vec![b"one".to_vec(), b"two".to_vec()]);
}

// ------------------------------------------------------------- corruption

/// Asserts that opening fails and that no segment file was touched.
fn assert_refused(dir: &Path) -> StorageError {
    let snapshot = |d: &Path| {
        let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| {
                let data = fs::read(&p).unwrap();
                (p, data)
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(dir);
    let err = Wal::open(dir, MAX).unwrap_err();
    assert_eq!(
        snapshot(dir),
        before,
        "a refused open must not change the files"
    );
    // Refusing again gives the same answer (the lock was released).
    assert_eq!(
        Wal::open(dir, MAX).unwrap_err().to_string(),
        err.to_string()
    );
    err
}

#[test]
fn flipped_byte_in_a_middle_record_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let records = payloads(0..5);
    let seg = write_log(dir.path(), &records);
    let off = offset_of(&records, 2);
    flip(&seg, off + 8 + 3);

    let err = assert_refused(dir.path());
    match &err {
        StorageError::CorruptRecord {
            path,
            offset,
            reason,
        } => {
            assert_eq!(path, &seg);
            assert_eq!(*offset, off as u64);
            assert_eq!(*reason, Corruption::BadChecksum);
        }
        other => panic!("expected CorruptRecord, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&*seg.to_string_lossy()), "{msg}");
    assert!(msg.contains(&format!("at offset {off}")), "{msg}");
    assert!(msg.contains("restore it or wipe it"), "{msg}");
}

#[test]
fn bad_record_in_an_older_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), MAX).unwrap();
    for p in payloads(0..3) {
        w.append(&p).unwrap();
    }
    w.rotate().unwrap();
    for p in payloads(3..6) {
        w.append(&p).unwrap();
    }
    w.sync().unwrap();
    drop(w);
    let seg1 = segment_path(dir.path(), 1);

    // Damage at the end of segment 1 would be a torn tail in the last
    // segment; in an older one it is corruption.
    let len = fs::metadata(&seg1).unwrap().len() as usize;
    flip(&seg1, len - 1);
    let err = assert_refused(dir.path());
    assert!(
        matches!(&err, StorageError::CorruptRecord { path, reason: Corruption::BadChecksum, .. } if path == &seg1),
        "{err:?}"
    );

    // So is an older segment that ends in the middle of a record.
    flip(&seg1, len - 1);
    OpenOptions::new()
        .write(true)
        .open(&seg1)
        .unwrap()
        .set_len(len as u64 - 2)
        .unwrap();
    let err = assert_refused(dir.path());
    assert!(
        matches!(&err, StorageError::CorruptRecord { path, reason: Corruption::Truncated { .. }, .. } if path == &seg1),
        "{err:?}"
    );
}

#[test]
fn impossible_length_at_the_tail_is_corruption_not_a_tear() {
    let dir = tempfile::tempdir().unwrap();
    let records = payloads(0..2);
    let seg = write_log(dir.path(), &records);
    let mut header = (MAX as u32 + 1).to_le_bytes().to_vec();
    header.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3]);
    append_bytes(&seg, &header);
    let err = assert_refused(dir.path());
    assert!(
        matches!(
            err,
            StorageError::CorruptRecord {
                reason: Corruption::TooLong { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_magic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_log(dir.path(), &payloads(0..2));
    flip(&seg, 0);
    let err = assert_refused(dir.path());
    assert!(
        matches!(&err, StorageError::BadMagic { path, .. } if path == &seg),
        "{err:?}"
    );
    assert!(err.to_string().contains(&*seg.to_string_lossy()));
}

#[test]
fn missing_segment_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), MAX).unwrap();
    for i in 0..3 {
        w.append(&payload(i)).unwrap();
        w.rotate().unwrap();
    }
    drop(w);
    fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let err = assert_refused(dir.path());
    assert!(
        matches!(
            err,
            StorageError::SegmentGap {
                before: 1,
                after: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

// ------------------------------------------------- segment removal, replay from

#[test]
fn remove_segments_before_then_open_from() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), MAX).unwrap();
    for seg in 0..3 {
        for i in 0..4 {
            w.append(&payload(seg * 4 + i)).unwrap();
        }
        if seg < 2 {
            w.rotate().unwrap();
        }
    }
    w.sync().unwrap();
    assert_eq!(w.current_segment(), 3);

    // Replaying from an existing segment skips the older ones.
    drop(w);
    let (w, replayed) = Wal::open_from(dir.path(), MAX, 2).unwrap();
    assert_eq!(replayed, payloads(4..12));

    // Refuses to delete the live segment, deleting nothing.
    let err = remove_segments_before(dir.path(), 4).unwrap_err();
    assert!(
        matches!(err, StorageError::RemoveLiveSegment { newest: 3, .. }),
        "{err:?}"
    );
    assert!(segment_path(dir.path(), 1).exists());

    // Works while the log is open (the caller holds it).
    assert_eq!(remove_segments_before(dir.path(), 3).unwrap(), 2);
    assert_eq!(remove_segments_before(dir.path(), 3).unwrap(), 0);
    assert!(!segment_path(dir.path(), 1).exists());
    assert!(!segment_path(dir.path(), 2).exists());
    drop(w);

    let (_, replayed) = Wal::open_from(dir.path(), MAX, 3).unwrap();
    assert_eq!(replayed, payloads(8..12));
    let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed, payloads(8..12));

    // The snapshot's segment must exist.
    for missing in [2, 5] {
        let err = Wal::open_from(dir.path(), MAX, missing).unwrap_err();
        assert!(
            matches!(err, StorageError::MissingSegment { index, .. } if index == missing),
            "{err:?}"
        );
    }
}

#[test]
fn open_from_on_an_empty_dir_starts_at_segment_one_only() {
    let dir = tempfile::tempdir().unwrap();
    let err = Wal::open_from(dir.path(), MAX, 4).unwrap_err();
    assert!(
        matches!(err, StorageError::MissingSegment { index: 4, .. }),
        "{err:?}"
    );
    let (w, _) = Wal::open_from(dir.path(), MAX, 1).unwrap();
    assert_eq!(w.current_segment(), 1);
}

// ------------------------------------------------------------- snapshots

#[test]
fn snapshot_roundtrip_keeps_only_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(load_latest(dir.path()).unwrap(), None);
    assert_eq!(load_latest(&dir.path().join("missing")).unwrap(), None);

    let p5 = write_snapshot(dir.path(), 5, b"state at 5").unwrap();
    assert_eq!(p5, snapshot_path(dir.path(), 5));
    assert_eq!(
        load_latest(dir.path()).unwrap(),
        Some((5, b"state at 5".to_vec()))
    );

    let big: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    write_snapshot(dir.path(), 9, &big).unwrap();
    assert!(!p5.exists(), "older snapshot deleted");
    assert_eq!(load_latest(dir.path()).unwrap(), Some((9, big)));

    // Snapshots and a WAL can share a directory.
    let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(load_latest(dir.path()).unwrap().map(|s| s.0), Some(9));
}

#[test]
fn damaged_snapshot_is_an_error_naming_the_file_with_no_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_snapshot(dir.path(), 1, b"old state").unwrap();
    let old_bytes = fs::read(&old).unwrap();
    let new = write_snapshot(dir.path(), 2, b"new state").unwrap();
    // Put an intact older snapshot back: it must not be used instead.
    fs::write(&old, &old_bytes).unwrap();

    let good = fs::read(&new).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad crc", {
            let mut d = good.clone();
            *d.last_mut().unwrap() ^= 1;
            d
        }),
        ("short", good[..good.len() - 3].to_vec()),
        ("short header", good[..10].to_vec()),
        ("bad magic", {
            let mut d = good.clone();
            d[0] = b'X';
            d
        }),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in cases {
        fs::write(&new, &bytes).unwrap();
        let err = load_latest(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::CorruptSnapshot { .. } | StorageError::BadMagic { .. }
            ),
            "{name}: {err:?}"
        );
        assert!(
            err.to_string().contains(&*new.to_string_lossy()),
            "{name}: {err}"
        );
        assert_eq!(fs::read(&new).unwrap(), bytes, "{name}: file left alone");
    }
}

#[test]
fn leftover_tmp_files_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    write_snapshot(dir.path(), 3, b"three").unwrap();
    let tmp = dir
        .path()
        .join(format!("{}.tmp", snapshot::snapshot_file_name(4)));
    fs::write(&tmp, b"half a snapshot").unwrap();
    assert_eq!(
        load_latest(dir.path()).unwrap(),
        Some((3, b"three".to_vec()))
    );
    assert!(!tmp.exists());
}

// --------------------------------------------------------------- LogWriter

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_all_durable_and_replayed() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), MAX).unwrap();
    let writer = Arc::new(Mutex::new(LogWriter::spawn(wal)));

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let writer = Arc::clone(&writer);
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let durable = {
                    let mut w = writer.lock().unwrap();
                    let lsn = w.append(format!("{t}:{i}").into_bytes());
                    w.wait_durable(lsn)
                };
                durable.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let writer = Arc::try_unwrap(writer).unwrap().into_inner().unwrap();
    let total = (TASKS * PER_TASK) as u64;
    assert_eq!(writer.durable_lsn(), total);
    let syncs = writer.syncs();
    assert!((1..=total).contains(&syncs), "syncs = {syncs}");
    writer.shutdown().unwrap();

    let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed.len(), TASKS * PER_TASK);
    for t in 0..TASKS {
        let mine: Vec<String> = replayed
            .iter()
            .map(|r| String::from_utf8(r.clone()).unwrap())
            .filter(|r| r.starts_with(&format!("{t}:")))
            .collect();
        let expected: Vec<String> = (0..PER_TASK).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(mine, expected, "task {t}'s records, in its order");
    }
}

#[tokio::test]
async fn burst_of_appends_is_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), MAX).unwrap();
    let mut w = LogWriter::spawn(wal);
    let n = 2000;
    let mut last = 0;
    for i in 0..n {
        last = w.append(payload(i));
    }
    w.wait_durable(last).await.unwrap();
    // Appends are enqueued far faster than one fsync completes, so the
    // thread finds them waiting and covers many with each fsync.
    assert!(w.syncs() < n as u64 / 2, "syncs = {}", w.syncs());
    w.shutdown().unwrap();
    let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
    assert_eq!(replayed, payloads(0..n));
}

#[tokio::test]
async fn writer_failure_is_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), 16).unwrap();
    let mut w = LogWriter::spawn(wal);
    let ok = w.append(b"fits".to_vec());
    w.wait_durable(ok).await.unwrap();

    let bad = w.append(vec![0; 17]);
    let pending = w.wait_durable(bad);
    let err = pending.await.unwrap_err();
    assert!(
        matches!(err, StorageError::InvalidRecord { len: 17, .. }),
        "{err:?}"
    );

    let later = w.append(b"later".to_vec());
    let err = w.wait_durable(later).await.unwrap_err();
    assert!(
        matches!(err, StorageError::InvalidRecord { .. }),
        "later waiters see it too: {err:?}"
    );
    // What was durable before the failure stays reported as durable.
    w.wait_durable(ok).await.unwrap();
    assert!(matches!(
        w.shutdown(),
        Err(StorageError::InvalidRecord { .. })
    ));

    let (_, replayed) = Wal::open(dir.path(), 16).unwrap();
    assert_eq!(replayed, vec![b"fits".to_vec()]);
}

#[tokio::test]
async fn writer_holds_the_lock_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), MAX).unwrap();
    let w = LogWriter::spawn(wal);
    assert!(matches!(
        Wal::open(dir.path(), MAX),
        Err(StorageError::Locked { .. })
    ));
    w.shutdown().unwrap();
    Wal::open(dir.path(), MAX).unwrap();
}

/// The snapshot cycle a participant runs: rotate with the carried records,
/// snapshot, delete the old segments; recovery = snapshot + replay from the
/// snapshot's segment.
#[tokio::test]
async fn rotate_snapshot_truncate_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), MAX).unwrap();
    let mut w = LogWriter::spawn(wal);
    for i in 0..10 {
        w.append(payload(i));
    }
    assert!(w.bytes_since_rotate() > 0);
    let (seg, lsn) = w.rotate(vec![b"pending-batch".to_vec()]);
    assert_eq!(seg, 2);
    assert_eq!(w.current_segment(), 2);
    let after = w.append(payload(10));
    assert!(after > lsn);
    w.wait_durable(lsn).await.unwrap();
    assert!(segment_path(dir.path(), 2).exists());

    write_snapshot(
        dir.path(),
        10,
        format!("applied through 9; replay from {seg}").as_bytes(),
    )
    .unwrap();
    assert_eq!(remove_segments_before(dir.path(), seg).unwrap(), 1);
    w.wait_durable(after).await.unwrap();
    w.shutdown().unwrap();

    let (snap_seq, snap) = load_latest(dir.path()).unwrap().unwrap();
    assert_eq!(snap_seq, 10);
    assert_eq!(snap, b"applied through 9; replay from 2");
    let (_, replayed) = Wal::open_from(dir.path(), MAX, seg).unwrap();
    assert_eq!(replayed, vec![b"pending-batch".to_vec(), payload(10)]);
}

// --------------------------------------------------------------- properties

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Rotate,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Op::Append),
        1 => Just(Op::Rotate),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any mix of appends, rotations and reopens replays exactly what was appended.
    #[test]
    fn replay_matches_appends(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), MAX).unwrap();
        let mut model: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            match op {
                Op::Append(p) => {
                    w.append(&p).unwrap();
                    model.push(p);
                }
                Op::Rotate => {
                    w.rotate().unwrap();
                }
                Op::Reopen => {
                    w.sync().unwrap();
                    drop(w);
                    let (w2, replayed) = Wal::open(dir.path(), MAX).unwrap();
                    prop_assert_eq!(&replayed, &model);
                    w = w2;
                }
            }
        }
        w.sync().unwrap();
        drop(w);
        let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
        prop_assert_eq!(replayed, model);
    }

    /// Cutting the last segment at any byte (a crash mid-append) recovers
    /// exactly the records that are wholly before the cut.
    #[test]
    fn any_truncation_of_the_tail_recovers_a_prefix(
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..12),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let seg = write_log(dir.path(), &records);
        let len = fs::metadata(&seg).unwrap().len() as usize;
        let cut = cut_at.index(len);
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut as u64).unwrap();

        let (_, replayed) = Wal::open(dir.path(), MAX).unwrap();
        let whole = (0..=records.len())
            .take_while(|&i| offset_of(&records, i) <= cut)
            .last()
            .unwrap_or(0);
        prop_assert_eq!(&replayed[..], &records[..whole]);
        prop_assert_eq!(
            fs::metadata(&seg).unwrap().len() as usize,
            offset_of(&records, whole)
        );
    }

    /// A flipped byte anywhere never yields data that was not written: the
    /// open fails, or (damage at the tail of the last segment only) returns a
    /// prefix of the records. Damage in the older segment always fails.
    #[test]
    fn a_flipped_byte_never_yields_wrong_data(
        first in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..6),
        second in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..6),
        in_first in any::<bool>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), MAX).unwrap();
        for r in &first { w.append(r).unwrap(); }
        w.rotate().unwrap();
        for r in &second { w.append(r).unwrap(); }
        w.sync().unwrap();
        drop(w);

        let seg = segment_path(dir.path(), if in_first { 1 } else { 2 });
        let mut data = fs::read(&seg).unwrap();
        let i = at.index(data.len());
        data[i] ^= mask;
        fs::write(&seg, &data).unwrap();

        let all: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();
        match Wal::open(dir.path(), MAX) {
            Err(_) => {}
            Ok((_, replayed)) => {
                prop_assert!(!in_first, "damage in an older segment must be refused");
                prop_assert!(i >= SEGMENT_MAGIC.len());
                prop_assert!(replayed.len() < all.len());
                prop_assert_eq!(&replayed[..], &all[..replayed.len()]);
            }
        }
    }
}

#[test]
fn wal_module_constants_match_the_documented_format() {
    assert_eq!(SEGMENT_MAGIC, b"QNTWAL01");
    assert_eq!(snapshot::SNAPSHOT_MAGIC, b"QNTSNAP1");
    assert_eq!(wal::segment_file_name(3), "wal-0000000000000003.log");
    assert_eq!(
        snapshot::snapshot_file_name(3),
        "snapshot-00000000000000000003.snap"
    );
}
