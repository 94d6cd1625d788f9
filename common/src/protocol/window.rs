//! The committed batches a replica keeps in memory so a peer can catch up
//! from its log instead of copying all of its data.
//!
//! Each applied batch is kept with the digest after it, newest last, within
//! a byte budget. A learner that asks for "everything after version v"
//! gets the batches that follow v only if the window still starts at or
//! before v + 1 and the digests agree at v; otherwise it copies a snapshot.
//!
//! A snapshot copy takes time, and the log after the snapshot must still be
//! there when it ends: the transfer *pins* the window at the snapshot's
//! version, and pinned batches outlive the budget. Pins are bounded too
//! (`hard_cap`): past it they are dropped, the transfer fails when it next
//! asks for the log, and the learner starts over. A source never trades its
//! own memory for a slow learner without limit.

use std::collections::{BTreeMap, VecDeque};

use crate::rpc::LearnedBatch;
use crate::types::Version;

/// Default budget of unpinned batches, in bytes.
pub const DEFAULT_BUDGET: usize = 16 << 20;
/// Default cap with pins, in bytes.
pub const DEFAULT_HARD_CAP: usize = 256 << 20;

/// Recently committed batches; see the module docs.
#[derive(Debug, Clone)]
pub struct Window {
    batches: VecDeque<LearnedBatch>,
    bytes: usize,
    budget: usize,
    hard_cap: usize,
    pins: BTreeMap<u64, Version>,
}

impl Default for Window {
    fn default() -> Self {
        Window::new(DEFAULT_BUDGET, DEFAULT_HARD_CAP)
    }
}

fn size(b: &LearnedBatch) -> usize {
    b.batch.ops.iter().map(|op| op.size()).sum::<usize>() + 64
}

impl Window {
    /// An empty window with these bounds.
    pub fn new(budget: usize, hard_cap: usize) -> Window {
        Window {
            batches: VecDeque::new(),
            bytes: 0,
            budget,
            hard_cap: hard_cap.max(budget),
            pins: BTreeMap::new(),
        }
    }

    /// Changes the bounds, keeping what still fits.
    pub fn set_bounds(&mut self, budget: usize, hard_cap: usize) {
        self.budget = budget;
        self.hard_cap = hard_cap.max(budget);
        self.trim();
    }

    /// Adds the batch just applied.
    pub fn push(&mut self, b: LearnedBatch) {
        self.bytes += size(&b);
        self.batches.push_back(b);
        self.trim();
    }

    /// Forgets everything (the replica's state was replaced).
    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
        self.pins.clear();
    }

    /// Keeps every batch after `version` until [`Window::unpin`].
    pub fn pin(&mut self, transfer: u64, version: Version) {
        self.pins.insert(transfer, version);
    }

    /// Releases a pin.
    pub fn unpin(&mut self, transfer: u64) {
        self.pins.remove(&transfer);
        self.trim();
    }

    /// Whether a transfer's pin still holds.
    pub fn is_pinned(&self, transfer: u64) -> bool {
        self.pins.contains_key(&transfer)
    }

    /// The digest after the batch ending at `version`, if it is held.
    pub fn digest_at(&self, version: Version) -> Option<u128> {
        self.batches
            .iter()
            .rev()
            .find(|b| b.batch.last_version() == version)
            .map(|b| b.digest)
    }

    /// The batches right after `version`, up to about `max_bytes` (at least
    /// one); `None` when the window no longer starts at `version + 1`.
    pub fn after(&self, version: Version, max_bytes: usize) -> Option<Vec<LearnedBatch>> {
        let first = self.batches.front()?.batch.first_version;
        if first > version + 1 {
            return None;
        }
        let start = self
            .batches
            .iter()
            .position(|b| b.batch.first_version == version + 1);
        let Some(start) = start else {
            // Nothing after `version` (it is the newest) or it falls inside a
            // batch (not a batch boundary): only the former is servable.
            let newest = self.batches.back().map(|b| b.batch.last_version());
            return (newest == Some(version)).then(Vec::new);
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for b in self.batches.iter().skip(start) {
            let s = size(b);
            if !out.is_empty() && bytes + s > max_bytes {
                break;
            }
            bytes += s;
            out.push(b.clone());
        }
        Some(out)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn trim(&mut self) {
        if self.bytes > self.hard_cap {
            self.pins.clear();
        }
        let keep_after = self.pins.values().min().copied();
        while self.bytes > self.budget {
            let Some(front) = self.batches.front() else {
                break;
            };
            if keep_after.is_some_and(|v| front.batch.last_version() > v) {
                break;
            }
            self.bytes -= size(front);
            self.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Batch, BatchId, Op};

    fn lb(seq: u64, first: Version, n: usize) -> LearnedBatch {
        LearnedBatch {
            batch: Batch {
                id: BatchId { epoch: 1, seq },
                first_version: first,
                ops: (0..n)
                    .map(|i| Op::Put {
                        key: vec![b'k', i as u8],
                        value: vec![0; 100],
                    })
                    .collect(),
            },
            digest: seq as u128,
        }
    }

    #[test]
    fn serves_only_from_a_batch_boundary_it_still_holds() {
        let mut w = Window::new(1 << 20, 1 << 20);
        w.push(lb(1, 1, 2));
        w.push(lb(2, 3, 2));
        w.push(lb(3, 5, 1));
        assert_eq!(w.after(0, usize::MAX).map(|v| v.len()), Some(3));
        assert_eq!(w.after(2, usize::MAX).map(|v| v.len()), Some(2));
        assert_eq!(w.after(5, usize::MAX).map(|v| v.len()), Some(0));
        assert_eq!(w.after(3, usize::MAX), None, "inside a batch");
        assert_eq!(w.after(2, 1).map(|v| v.len()), Some(1), "at least one");
        assert_eq!(w.digest_at(4), Some(2));
        assert_eq!(w.digest_at(3), None);
    }

    #[test]
    fn trims_to_budget_but_keeps_what_a_pin_needs_until_the_hard_cap() {
        let one = size(&lb(1, 1, 1));
        let mut w = Window::new(2 * one, 4 * one);
        w.pin(9, 1);
        for seq in 1..=4 {
            w.push(lb(seq, seq, 1));
        }
        // Pinned at version 1: batches 2.. are kept beyond the budget.
        assert_eq!(w.after(1, usize::MAX).map(|v| v.len()), Some(3));
        assert!(w.after(0, usize::MAX).is_none(), "batch 1 was trimmed");
        w.push(lb(5, 5, 1));
        w.push(lb(6, 6, 1));
        assert!(!w.is_pinned(9), "past the hard cap the pin is dropped");
        assert!(w.after(1, usize::MAX).is_none());
        assert!(w.bytes() <= 2 * one);
        w.pin(10, 6);
        w.unpin(10);
        assert!(!w.is_pinned(10));
    }
}
