//! Writes the seed corpora (`corpus/<target>/`) from the real encoders:
//! requests as a client sends them, WAL segments written by `Wal`, snapshot
//! files written by `write_snapshot`, and script lines. Run it from `fuzz/`
//! with plain stable cargo (`cargo run --example make-seeds`) after a change to
//! the wire or disk formats, and commit what changed. Damaged variants
//! (torn, flipped, oversized) are made here too, so every target starts at
//! its error paths as well as its happy path.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::pin::pin;

use quintet_common::net::MAX_FRAME;
use quintet_common::protocol::participant::{Record, Snapshot};
use quintet_common::protocol::view::{Member, View};
use quintet_common::rpc::{
    AdminOnlyRequest, AdminRequest, CatchupRequest, CatchupState, ChunkRequest, CoordPeerRequest,
    CoordRequest, CoordinatorRequest, DecisionRequest, KvRequest, ParticipantRequest, PeerRequest,
    PrepareRequest, ProbeRequest, RegisterRequest, RenewRequest, RevokeRequest,
};
use quintet_common::storage::Wal;
use quintet_common::storage::snapshot;
use quintet_common::store::{Entry, Store};
use quintet_common::types::{Batch, BatchId, ClusterId, Op, ReadLevel};
use serde::Serialize;
use tarpc::tokio_serde::Serializer as _;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{ClientMessage, Request, context};

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    frame(&root.join("frame"));
    let segments = wal(&root.join("wal"));
    wal_open(&root.join("wal_open"), &segments);
    snapshots(&root.join("snapshot"));
    script(&root.join("script"));
    peer(&root.join("peer"));
    coord(&root.join("coord"));
    println!("seeds written under {}", root.display());
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("create the corpus dir");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

/// One connection's worth of `calls`, as frames with ids 1, 2, ...
fn frames<Req: Serialize>(calls: Vec<Req>) -> Vec<u8> {
    calls
        .into_iter()
        .enumerate()
        .flat_map(|(i, c)| frame_of(i as u64 + 1, c))
        .collect()
}

/// One frame as a client writes it: a 4-byte big-endian length, then the
/// message in tarpc's bincode format.
fn frame_of<Req: Serialize>(id: u64, message: Req) -> Vec<u8> {
    let msg = ClientMessage::Request(Request {
        context: context::current(),
        id,
        message,
    });
    let mut format = pin!(Bincode::<(), ClientMessage<Req>>::default());
    let body = format.as_mut().serialize(&msg).expect("encode a request");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn cancel_frame(id: u64) -> Vec<u8> {
    let msg: ClientMessage<AdminOnlyRequest> = ClientMessage::Cancel {
        trace_context: Default::default(),
        request_id: id,
    };
    let mut format = pin!(Bincode::<(), ClientMessage<AdminOnlyRequest>>::default());
    let body = format.as_mut().serialize(&msg).expect("encode a cancel");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn view() -> View {
    View {
        epoch: 3,
        members: (1..=3)
            .map(|id| Member {
                id,
                incarnation: 0x1000 + u64::from(id),
            })
            .collect(),
    }
}

fn batch(seq: u64, first_version: u64) -> Batch {
    Batch {
        id: BatchId { epoch: 3, seq },
        first_version,
        ops: vec![
            Op::Put {
                key: b"user:1".to_vec(),
                value: b"alice".to_vec(),
            },
            Op::Delete {
                key: b"user:2".to_vec(),
            },
        ],
    }
}

fn frame(dir: &Path) {
    let cluster = ClusterId(0xfeed);
    let health = frame_of(1, AdminOnlyRequest::Admin(AdminRequest::Health {}));
    put(dir, "admin-health", &health);
    put(
        dir,
        "participant-get",
        &frame_of(
            2,
            ParticipantRequest::Kv(KvRequest::Get {
                token: Some("secret".into()),
                key: b"user:1".to_vec(),
                level: ReadLevel::Linearizable,
            }),
        ),
    );
    put(
        dir,
        "participant-write",
        &frame_of(
            3,
            ParticipantRequest::Kv(KvRequest::Write {
                token: None,
                op: Op::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                },
            }),
        ),
    );
    put(
        dir,
        "participant-prepare",
        &frame_of(
            4,
            ParticipantRequest::Peer(PeerRequest::Prepare {
                req: PrepareRequest {
                    cluster,
                    to: 2,
                    batch: batch(7, 11),
                    last_committed: Some(BatchId { epoch: 3, seq: 6 }),
                    view: view(),
                    prev: None,
                },
            }),
        ),
    );
    put(
        dir,
        "participant-commit",
        &frame_of(
            5,
            ParticipantRequest::Peer(PeerRequest::Commit {
                req: DecisionRequest {
                    cluster,
                    to: 2,
                    batch: BatchId { epoch: 3, seq: 7 },
                },
            }),
        ),
    );
    put(
        dir,
        "participant-catchup",
        &[
            frame_of(
                6,
                ParticipantRequest::Peer(PeerRequest::CatchupBegin {
                    req: CatchupRequest {
                        cluster,
                        from: 4,
                        applied: 10,
                        digest: 0xabcdef,
                    },
                }),
            ),
            frame_of(
                7,
                ParticipantRequest::Peer(PeerRequest::CatchupChunk {
                    req: ChunkRequest {
                        cluster,
                        transfer: 9,
                        after: Some(b"user:1".to_vec()),
                        max_bytes: 1 << 20,
                    },
                }),
            ),
        ]
        .concat(),
    );
    put(
        dir,
        "coordinator-register-renew",
        &[
            frame_of(
                8,
                CoordinatorRequest::Coord(CoordRequest::Register {
                    req: RegisterRequest {
                        id: 2,
                        cluster: Some(cluster),
                        incarnation: 0x1002,
                        applied: 10,
                        advertise: "127.0.0.1:7702".into(),
                    },
                }),
            ),
            frame_of(
                9,
                CoordinatorRequest::Coord(CoordRequest::Renew {
                    req: RenewRequest {
                        cluster,
                        id: 2,
                        incarnation: 0x1002,
                        epoch: 3,
                        applied: 10,
                        digest: 0xabcdef,
                        pending: None,
                        catchup: CatchupState::Following,
                        advertise: String::new(),
                    },
                }),
            ),
        ]
        .concat(),
    );
    put(
        dir,
        "coordinator-submit",
        &frame_of(
            10,
            CoordinatorRequest::Coord(CoordRequest::Submit {
                op: Op::Delete { key: b"k".to_vec() },
            }),
        ),
    );
    put(
        dir,
        "coordinator-raft",
        &frame_of(
            11,
            CoordinatorRequest::Raft(CoordPeerRequest::Raft {
                from: 2,
                cluster: 0xfeed,
                msgs: vec![vec![8, 1, 16, 2], vec![]],
            }),
        ),
    );
    put(
        dir,
        "cancel-after-request",
        &[health.clone(), cancel_frame(1)].concat(),
    );
    // A client call then a peer call on one connection: each participant
    // port decodes one of them and drops the connection at the other.
    put(
        dir,
        "client-then-peer",
        &[
            frame_of(
                12,
                ParticipantRequest::Kv(KvRequest::Get {
                    token: None,
                    key: b"k".to_vec(),
                    level: ReadLevel::Serializable,
                }),
            ),
            frame_of(
                13,
                ParticipantRequest::Peer(PeerRequest::Abort {
                    req: DecisionRequest {
                        cluster,
                        to: 2,
                        batch: BatchId { epoch: 3, seq: 8 },
                    },
                }),
            ),
        ]
        .concat(),
    );
    // Damaged: a length over MAX_FRAME, a truncated frame, trailing bytes.
    let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    huge.extend_from_slice(&health[4..]);
    put(dir, "too-long", &huge);
    put(dir, "truncated", &health[..health.len() - 3]);
    let mut trailing = health.clone();
    trailing.extend_from_slice(&[0, 0]);
    put(dir, "partial-header-after", &trailing);
}

fn encode(r: &Record) -> Vec<u8> {
    bincode::serialize(r).expect("encode a record")
}

fn records() -> Vec<Record> {
    vec![
        Record::View(view()),
        Record::Prepared(batch(1, 1)),
        Record::Committed(BatchId { epoch: 3, seq: 1 }),
        Record::Prepared(batch(2, 3)),
        Record::Aborted(BatchId { epoch: 3, seq: 2 }),
        Record::Learned(batch(3, 3)),
        Record::Prepared(batch(4, 5)),
        Record::Discarded(BatchId { epoch: 3, seq: 4 }),
    ]
}

/// Writes `recs` with a real `Wal` (rotating before the indices in
/// `rotate_before`) and returns the segment files' bytes.
fn written(recs: &[Record], rotate_before: &[usize]) -> Vec<Vec<u8>> {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let (mut wal, _) = Wal::open(tmp.path(), MAX_FRAME).expect("open a new log");
    for (i, r) in recs.iter().enumerate() {
        if rotate_before.contains(&i) {
            wal.rotate().expect("rotate");
        }
        wal.append(&encode(r)).expect("append");
    }
    wal.sync().expect("sync");
    let last = wal.current_segment();
    drop(wal);
    (1..=last)
        .map(|i| fs::read(quintet_common::storage::wal::segment_path(tmp.path(), i)).unwrap())
        .collect()
}

/// Seeds for `wal`; returns a few whole logs (segments) for `wal_open`.
fn wal(dir: &Path) -> Vec<(String, Vec<Vec<u8>>)> {
    let recs = records();
    let one = written(&recs, &[]).remove(0);
    put(dir, "clean", &one);
    put(dir, "magic-only", b"QNTWAL01");
    put(dir, "magic-torn", b"QNTW");
    put(dir, "empty", b"");
    // A torn tail: the last record cut in the middle.
    put(dir, "torn-payload", &one[..one.len() - 5]);
    // A torn header.
    let single = written(&recs[..1], &[]).remove(0);
    let mut torn_header = single.clone();
    torn_header.extend_from_slice(&[9, 0, 0]);
    put(dir, "torn-header", &torn_header);
    // The last record's payload damaged, then zeros (pre-extended file).
    let mut zeros = one.clone();
    let n = zeros.len();
    zeros[n - 2] ^= 0x55;
    zeros.extend_from_slice(&[0; 64]);
    put(dir, "bad-crc-then-zeros", &zeros);
    // A record in the middle damaged: corruption, not a tear.
    let mut middle = one.clone();
    middle[8 + 8 + 2] ^= 0x01;
    put(dir, "bad-crc-middle", &middle);
    // A length no writer produced.
    let mut too_long = single.clone();
    too_long.extend_from_slice(&u32::MAX.to_le_bytes());
    too_long.extend_from_slice(&[0; 8]);
    put(dir, "length-too-long", &too_long);
    // A zero header then data.
    let mut zero_then = single.clone();
    zero_then.extend_from_slice(&[0; 8]);
    zero_then.extend_from_slice(&single[8..]);
    put(dir, "zero-header-then-data", &zero_then);
    put(
        dir,
        "bad-magic",
        &[b"QNTWAL02".as_slice(), &one[8..]].concat(),
    );

    let rotated = written(&recs, &[3, 6]);
    let mut torn_last = rotated.clone();
    let last = torn_last.last_mut().unwrap();
    last.truncate(last.len() - 3);
    let mut damaged_older = rotated.clone();
    damaged_older[0][20] ^= 0x10;
    vec![
        ("one-segment".into(), vec![one.clone()]),
        ("three-segments".into(), rotated),
        ("three-segments-torn-last".into(), torn_last),
        ("three-segments-damaged-first".into(), damaged_older),
        ("empty-last".into(), vec![one, Vec::new()]),
    ]
}

/// `wal_open` takes a whole log as one input: the segments' bytes one
/// after another, each starting with its magic.
fn wal_open(dir: &Path, logs: &[(String, Vec<Vec<u8>>)]) {
    for (name, segments) in logs {
        put(dir, name, &segments.concat());
    }
}

fn snapshots(dir: &Path) {
    let mut map = BTreeMap::new();
    for i in 0..5u64 {
        map.insert(
            format!("user:{i}").into_bytes(),
            Entry {
                value: format!("value {i}").into_bytes(),
                version: i + 1,
            },
        );
    }
    let snap = Snapshot {
        store: Store::from_parts(map, 5, 0x1234_5678_9abc_def0),
        last_committed: Some(BatchId { epoch: 3, seq: 2 }),
        highest_seen: Some(BatchId { epoch: 3, seq: 3 }),
        view: Some(view()),
    };
    let empty = Snapshot {
        store: Store::default(),
        last_committed: None,
        highest_seen: None,
        view: None,
    };
    let tmp = tempfile::tempdir().expect("a temp dir");
    let file = |s: &Snapshot, seq| {
        let payload = bincode::serialize(s).expect("encode a snapshot");
        let path = snapshot::write_snapshot(tmp.path(), seq, &payload).expect("write");
        fs::read(path).expect("read it back")
    };
    let good = file(&snap, 7);
    put(dir, "five-keys", &good);
    put(dir, "empty-store", &file(&empty, 8));
    put(dir, "truncated", &good[..good.len() - 4]);
    put(dir, "header-only", &good[..snapshot::SNAPSHOT_HEADER_LEN]);
    let mut flipped = good.clone();
    flipped[30] ^= 0x04;
    put(dir, "bad-crc", &flipped);
    let mut trailing = good.clone();
    trailing.push(0);
    put(dir, "trailing", &trailing);
    let mut long = good.clone();
    long[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    put(dir, "length-huge", &long);
    put(dir, "magic-torn", b"QNTSN");
    // Start-up inputs: the snapshot, then the segment after it (the batches
    // after the snapshot's five versions, one still prepared).
    let after = [
        Record::Prepared(batch(3, 6)),
        Record::Committed(BatchId { epoch: 3, seq: 3 }),
        Record::Learned(batch(4, 8)),
        Record::Prepared(batch(5, 10)),
    ];
    let segment = written(&after, &[]).remove(0);
    put(
        dir,
        "five-keys-then-log",
        &[good.as_slice(), &segment].concat(),
    );
    put(
        dir,
        "five-keys-then-torn-log",
        &[good.as_slice(), &segment[..segment.len() - 3]].concat(),
    );
    // A log that does not follow on from the snapshot.
    let gap = written(&[Record::Learned(batch(3, 9))], &[]).remove(0);
    put(dir, "five-keys-then-gap", &[good.as_slice(), &gap].concat());
}

fn script(dir: &Path) {
    let seeds: &[(&str, &str)] = &[
        (
            "basic",
            "# a comment\nput user:1 alice\nget user:1\nget user:1 --serializable --at 4\ndelete user:2\nstatus\n",
        ),
        (
            "quoting",
            "put 'my key' \"v 1\" --at 3\nput k \"say \\\"hi\\\"\\n\\t\\0\"\nput k a\\ b\nput k ''\nput k \"\"\nput k a#b # trailing comment\n",
        ),
        ("help", "help\nget --help\nput --help\nstatus --help\n"),
        ("exit", "put k v\nexit\nput never run\nquit\n"),
        (
            "bad-lines",
            "frobnicate k\nget\nput k\nget k --at x\nget k extra\nput k \"open\nput k 'open\nput k trailing\\\n",
        ),
        ("crlf", "put k v\r\nget k\r\n"),
        ("unicode", "put clé «valeur» --at 1\nget 鍵\n"),
        (
            "flags",
            "get k --at 0\nget k --at 18446744073709551616\nget --at 2 k\nget -- --k\n",
        ),
    ];
    for (name, text) in seeds {
        put(dir, name, text.as_bytes());
    }
}

/// Sequences of peer calls to one replica (replica 2 of `view()`, or 4, a
/// learner): rounds committed and aborted, a pending batch settled by the
/// next prepare, a learner taking the batch it missed from `prev`, and the
/// overflowing versions the target once found.
fn peer(dir: &Path) {
    let cluster = ClusterId(0xfeed);
    let id = |seq| BatchId { epoch: 3, seq };
    let prepare = |to, b: Batch, last_committed: Option<u64>, prev: Option<Batch>| {
        ParticipantRequest::Peer(PeerRequest::Prepare {
            req: PrepareRequest {
                cluster,
                to,
                batch: b,
                last_committed: last_committed.map(id),
                view: view(),
                prev,
            },
        })
    };
    let decision = |to, seq| DecisionRequest {
        cluster,
        to,
        batch: id(seq),
    };
    let commit = |to, seq| {
        ParticipantRequest::Peer(PeerRequest::Commit {
            req: decision(to, seq),
        })
    };
    let abort = |to, seq| {
        ParticipantRequest::Peer(PeerRequest::Abort {
            req: decision(to, seq),
        })
    };
    put(
        dir,
        "member-rounds",
        &frames(vec![
            prepare(2, batch(1, 1), None, None),
            commit(2, 1),
            prepare(2, batch(2, 3), Some(1), None),
            abort(2, 2),
            prepare(2, batch(3, 3), Some(1), None),
            commit(2, 3),
            ParticipantRequest::Peer(PeerRequest::Probe {
                req: ProbeRequest {
                    cluster,
                    to: 2,
                    epoch: 3,
                },
            }),
            ParticipantRequest::Peer(PeerRequest::Revoke {
                req: RevokeRequest {
                    cluster,
                    to: 2,
                    incarnation: 0x1002,
                    epoch: 3,
                },
            }),
        ]),
    );
    put(
        dir,
        "settled-by-next-prepare",
        &frames(vec![
            prepare(2, batch(1, 1), None, None),
            prepare(2, batch(2, 3), Some(1), None),
            prepare(2, batch(3, 3), Some(1), None),
            commit(2, 3),
        ]),
    );
    put(
        dir,
        "learner-prev",
        &frames(vec![
            prepare(4, batch(2, 3), Some(1), Some(batch(1, 1))),
            commit(4, 2),
            prepare(4, batch(4, 7), Some(3), Some(batch(3, 5))),
        ]),
    );
    put(
        dir,
        "regress-version-overflow",
        &frames(vec![
            prepare(2, batch(1, u64::MAX), None, None),
            prepare(4, batch(2, 0), Some(1), Some(batch(1, u64::MAX))),
            prepare(4, batch(2, 1), None, None),
        ]),
    );
}

/// Participant calls to a fresh coordinator of five: the first start
/// (each registers, then renews as a learner until it joins), writes, a
/// question about a batch in doubt, and a replica coming back wiped (a new
/// incarnation) or failing its catch-up.
fn coord(dir: &Path) {
    let cluster = ClusterId(0xfeed);
    let renew = |id: u32, incarnation: u64, applied, catchup| {
        CoordinatorRequest::Coord(CoordRequest::Renew {
            req: RenewRequest {
                cluster,
                id,
                incarnation,
                epoch: 1,
                applied,
                digest: 0,
                pending: None,
                catchup,
                advertise: String::new(),
            },
        })
    };
    // Not Clone: built afresh for each seed.
    let start = || {
        let mut start: Vec<CoordinatorRequest> = (1..=5)
            .map(|id| {
                CoordinatorRequest::Coord(CoordRequest::Register {
                    req: RegisterRequest {
                        id,
                        cluster: None,
                        incarnation: 0x1000 + u64::from(id),
                        applied: 0,
                        advertise: format!("127.0.0.1:780{id}"),
                    },
                })
            })
            .collect();
        for _ in 0..3 {
            start.extend(
                (1..=5).map(|id| renew(id, 0x1000 + u64::from(id), 0, CatchupState::Following)),
            );
        }
        start
    };
    put(dir, "first-start", &frames(start()));
    let mut writes = start();
    writes.push(CoordinatorRequest::Coord(CoordRequest::Submit {
        op: Op::Put {
            key: b"user:1".to_vec(),
            value: b"alice".to_vec(),
        },
    }));
    writes.push(CoordinatorRequest::Coord(CoordRequest::Resolve {
        req: quintet_common::rpc::ResolveRequest {
            cluster,
            from: 2,
            incarnation: 0x1002,
            batch: BatchId { epoch: 2, seq: 1 },
            first_version: 1,
        },
    }));
    put(dir, "writes-and-resolve", &frames(writes));
    let mut wiped = start();
    wiped.push(renew(3, 0x2003, 0, CatchupState::Following));
    wiped.push(renew(3, 0x2003, 0, CatchupState::Failed { source: 1 }));
    wiped.push(renew(3, 0x2003, u64::MAX, CatchupState::Following));
    put(dir, "wiped-replica", &frames(wiped));
}
