//! A learner's catch-up from one source member, step by step, free of I/O.
//!
//! [`CatchUp`] says what to fetch next ([`Next`]) and checks every answer;
//! the driver does the calls and the disk work. The steps:
//!
//! 1. **Ask** the source how to catch up, sending the learner's applied
//!    version and digest. If the source still holds its log from there and
//!    agrees on the digest, skip to 4.
//! 2. **Chunks** of the source's pinned snapshot, in key order, each bounded
//!    in bytes and with no deadline on the whole: keys must strictly
//!    increase, and at the end the count and a checksum over every entry
//!    must match what the source announced.
//! 3. **Install** the copy as the learner's own snapshot (the driver makes
//!    it durable first).
//! 4. **Log**: committed batches after the learner's applied version, each
//!    applied with [`Participant::learn`], which checks it follows on and
//!    yields the source's digest. The loop ends when one answer brings the
//!    learner to the source's applied version with the source's digest.
//!
//! Any mismatch or failed call ends the attempt ([`Next::Failed`]); the
//! learner reports it and the coordinator points it at another member.

use std::collections::BTreeMap;

use super::participant::{Participant, Record, Snapshot};
use crate::clock::Time;
use crate::rpc::{CatchupPlan, LogChunk, Progress, SnapshotChunk, SnapshotOffer};
use crate::store::{Checksum, Entry, Store, entry_size};
use crate::types::{NodeId, Version};

/// Most bytes asked for in one chunk or log answer.
pub const CHUNK_BYTES: u64 = 1 << 20;

/// What the driver does next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Call `catchup_begin` with the learner's applied version and digest.
    Ask,
    /// Call `catchup_chunk` for the entries after `after`.
    Chunk {
        /// The transfer.
        transfer: u64,
        /// The last key received.
        after: Option<Vec<u8>>,
    },
    /// Make this snapshot durable as the learner's own, then
    /// [`Participant::install`] it and call [`CatchUp::installed`].
    Install(Box<Snapshot>),
    /// Call `catchup_log` for the batches after `after`.
    Log {
        /// The transfer whose pin holds the log, if a snapshot was copied.
        transfer: Option<u64>,
        /// The learner's applied version.
        after: Version,
    },
    /// Caught up: [`Participant::finish_catch_up`].
    Done,
    /// The attempt failed; start over with another source.
    Failed(String),
}

/// The snapshot copy under way.
struct Copying {
    offer: SnapshotOffer,
    entries: BTreeMap<Vec<u8>, Entry>,
    last_key: Option<Vec<u8>>,
    checksum: Checksum,
}

enum Phase {
    Asking,
    Snapshot(Box<Copying>),
    Installing,
    Log,
    Over,
}

/// One catch-up attempt; see the module docs.
pub struct CatchUp {
    source: NodeId,
    started: Time,
    transfer: Option<u64>,
    progress: Progress,
    phase: Phase,
}

impl CatchUp {
    /// Starts an attempt from `source`; the first step is [`Next::Ask`].
    pub fn start(source: NodeId, now: Time) -> CatchUp {
        CatchUp {
            source,
            started: now,
            transfer: None,
            progress: Progress::default(),
            phase: Phase::Asking,
        }
    }

    /// The member copied.
    pub fn source(&self) -> NodeId {
        self.source
    }

    /// When the attempt started.
    pub fn started(&self) -> Time {
        self.started
    }

    /// How far it has come.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// `snapshot` while copying entries, `log` otherwise.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Snapshot(_) | Phase::Installing => "snapshot",
            _ => "log",
        }
    }

    fn fail(&mut self, why: String) -> Next {
        self.phase = Phase::Over;
        Next::Failed(why)
    }

    /// The source's answer to [`Next::Ask`].
    pub fn plan(&mut self, plan: CatchupPlan, p: &Participant) -> Next {
        if !matches!(self.phase, Phase::Asking) {
            return self.fail("an unexpected catch-up plan".into());
        }
        match plan {
            CatchupPlan::Log => {
                self.phase = Phase::Log;
                Next::Log {
                    transfer: None,
                    after: p.store().applied(),
                }
            }
            CatchupPlan::Snapshot(offer) if offer.applied < p.store().applied() => {
                self.fail(format!(
                    "the source's snapshot is at version {} but this replica already applied {}",
                    offer.applied,
                    p.store().applied()
                ))
            }
            CatchupPlan::Snapshot(offer) => {
                self.transfer = Some(offer.transfer);
                self.progress.bytes_total = offer.bytes;
                self.progress.keys_total = offer.keys;
                self.phase = Phase::Snapshot(Box::new(Copying {
                    offer,
                    entries: BTreeMap::new(),
                    last_key: None,
                    checksum: Checksum::default(),
                }));
                Next::Chunk {
                    transfer: offer.transfer,
                    after: None,
                }
            }
        }
    }

    /// The source's answer to [`Next::Chunk`].
    pub fn chunk(&mut self, chunk: SnapshotChunk) -> Next {
        let Phase::Snapshot(copying) = &mut self.phase else {
            return self.fail("a snapshot chunk outside a snapshot copy".into());
        };
        let Copying {
            offer,
            entries,
            last_key,
            checksum,
        } = copying.as_mut();
        let offer = *offer;
        for (k, e) in chunk.entries {
            if last_key.as_ref().is_some_and(|last| *last >= k) {
                return self.fail("the source sent keys out of order".into());
            }
            checksum.update(&k, &e);
            self.progress.bytes_done += entry_size(&k, &e) as u64;
            self.progress.keys_done += 1;
            *last_key = Some(k.clone());
            entries.insert(k, e);
        }
        if !chunk.last {
            return Next::Chunk {
                transfer: offer.transfer,
                after: last_key.clone(),
            };
        }
        if self.progress.keys_done != offer.keys || checksum.finish() != offer.checksum {
            let why = format!(
                "the snapshot copy does not match the source's: {} keys with checksum {:016x}, announced {} with {:016x}",
                self.progress.keys_done,
                checksum.finish(),
                offer.keys,
                offer.checksum
            );
            return self.fail(why);
        }
        let entries = std::mem::take(entries);
        self.phase = Phase::Installing;
        Next::Install(Box::new(Snapshot {
            store: Store::from_parts(entries, offer.applied, offer.digest),
            last_committed: offer.last_committed,
            highest_seen: offer.highest_seen,
            view: None,
        }))
    }

    /// The copied snapshot is installed; fetch the log after it.
    pub fn installed(&mut self, p: &Participant) -> Next {
        if !matches!(self.phase, Phase::Installing) {
            return self.fail("an install outside a snapshot copy".into());
        }
        self.phase = Phase::Log;
        Next::Log {
            transfer: self.transfer,
            after: p.store().applied(),
        }
    }

    /// The source's answer to [`Next::Log`]: applies each batch to `p` and
    /// returns the records to make durable (before the next step) with it.
    pub fn log(&mut self, chunk: LogChunk, p: &mut Participant) -> (Vec<Record>, Next) {
        if !matches!(self.phase, Phase::Log) {
            return (
                Vec::new(),
                self.fail("a log chunk outside the log phase".into()),
            );
        }
        let mut records = Vec::new();
        for lb in chunk.batches {
            match p.learn(lb) {
                Ok(step) => records.extend(step.persist),
                Err(why) => return (records, self.fail(why)),
            }
            self.progress.batches += 1;
        }
        let applied = p.store().applied();
        if applied < chunk.source_applied {
            return (
                records,
                Next::Log {
                    transfer: self.transfer,
                    after: applied,
                },
            );
        }
        if applied > chunk.source_applied || p.store().digest() != chunk.source_digest {
            let why = format!(
                "after the copy this replica is at version {applied} with digest {:032x}, the source at {} with {:032x}",
                p.store().digest(),
                chunk.source_applied,
                chunk.source_digest
            );
            return (records, self.fail(why));
        }
        self.phase = Phase::Over;
        (records, Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::LearnedBatch;
    use crate::types::{Batch, BatchId, ClusterId, Limits, Op};

    fn source_with(n: u64) -> Participant {
        let mut records = Vec::new();
        for seq in 1..=n {
            let b = Batch {
                id: BatchId { epoch: 1, seq },
                first_version: seq,
                ops: vec![Op::Put {
                    key: format!("key-{seq:03}").into_bytes(),
                    value: vec![b'v'; 10],
                }],
            };
            records.push(Record::Prepared(b));
            records.push(Record::Committed(BatchId { epoch: 1, seq }));
        }
        Participant::restore(1, 1, Limits::default(), None, records).unwrap()
    }

    fn learner() -> Participant {
        let mut p = Participant::new(2, 2, Limits::default());
        p.registered(ClusterId(1), 0);
        let _ = p.begin_catch_up();
        p
    }

    fn offer_of(s: &Participant) -> SnapshotOffer {
        let img = s.image();
        SnapshotOffer {
            transfer: 1,
            applied: img.store.applied(),
            digest: img.store.digest(),
            last_committed: img.last_committed,
            highest_seen: img.highest_seen,
            keys: img.store.len() as u64,
            bytes: img.store.bytes(),
            checksum: img.store.checksum(),
        }
    }

    #[test]
    fn snapshot_then_log_reaches_the_source_state() {
        let source = source_with(40);
        let mut l = learner();
        let mut cu = CatchUp::start(1, Time(0));
        let mut next = cu.plan(CatchupPlan::Snapshot(offer_of(&source)), &l);
        let img = source.image();
        let mut chunks = 0;
        let snap = loop {
            match next {
                Next::Chunk { after, .. } => {
                    chunks += 1;
                    let (entries, last) = img.store.entries_after(after.as_deref(), 100);
                    next = cu.chunk(SnapshotChunk { entries, last });
                }
                Next::Install(s) => break s,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(chunks > 5);
        assert_eq!(cu.progress().keys_done, 40);
        l.install(*snap);
        // The source moved on by one batch meanwhile.
        let mut source = source;
        let b = Batch {
            id: BatchId { epoch: 1, seq: 41 },
            first_version: 41,
            ops: vec![Op::Delete {
                key: b"key-001".to_vec(),
            }],
        };
        let digest = source.store().digest_after(&b);
        let _ = source.learn(LearnedBatch { batch: b, digest }).unwrap();
        let Next::Log { after, .. } = cu.installed(&l) else {
            panic!("log next")
        };
        assert_eq!(after, 40);
        let (records, next) = cu.log(source.log_after(after, 1 << 20).unwrap(), &mut l);
        assert_eq!(next, Next::Done);
        assert_eq!(records.len(), 1);
        assert_eq!(l.store(), source.store());
    }

    #[test]
    fn a_corrupted_chunk_fails_the_attempt() {
        let source = source_with(5);
        let mut l = learner();
        let mut cu = CatchUp::start(1, Time(0));
        let next = cu.plan(CatchupPlan::Snapshot(offer_of(&source)), &l);
        assert!(matches!(next, Next::Chunk { .. }));
        let (mut entries, last) = source.image().store.entries_after(None, usize::MAX);
        entries[2].1.value[0] ^= 1;
        let Next::Failed(why) = cu.chunk(SnapshotChunk { entries, last }) else {
            panic!("must fail")
        };
        assert!(why.contains("does not match"), "{why}");
        // A log that does not follow on also fails.
        let mut cu = CatchUp::start(1, Time(0));
        let _ = cu.plan(CatchupPlan::Log, &l);
        let mut chunk = source.log_after(0, 1 << 20).unwrap();
        chunk.batches.remove(1);
        let (_, next) = cu.log(chunk, &mut l);
        assert!(matches!(next, Next::Failed(_)), "{next:?}");
    }
}
