//! The replica's ordered map of committed data and its state digest.
//!
//! The store is a pure function of the batches applied to it, in order. The
//! digest is a hash chained over every applied operation (version, kind, key,
//! value), so two replicas at the same applied version have the same digest
//! exactly when they applied the same history; comparing digests is how
//! `quintet status` and the tests check invariant 2 without shipping data.
//! xxh3-128 is used because it is fast and stable across platforms; it is a
//! corruption and divergence detector, not a defence against an adversary.
//!
//! A replica that catches up copies another's entries instead of its
//! history, so it cannot recompute the chained digest; it takes the
//! source's digest with the entries ([`Store::from_parts`]) and checks the
//! copy itself with a content checksum over the entries ([`Checksum`]).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, Xxh3Default};

use crate::types::{Batch, Op, OpResult, Version};

/// A committed value and the version of its last write.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Entry {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Version of the write that set it.
    pub version: Version,
}

/// The committed key-value state of one replica.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Entry>,
    applied: Version,
    digest: u128,
}

impl Store {
    /// A store holding `entries` at `applied` with the chained `digest` of
    /// the history that produced them (copied from a peer).
    pub fn from_parts(entries: BTreeMap<Vec<u8>, Entry>, applied: Version, digest: u128) -> Store {
        Store {
            map: entries,
            applied,
            digest,
        }
    }

    /// The committed entry for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    /// Version of the last applied operation (0 when empty).
    pub fn applied(&self) -> Version {
        self.applied
    }

    /// The chained digest of everything applied so far.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Iterates live entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.map.iter()
    }

    /// Entries after `after` (from the first when `None`), in key order, up
    /// to about `max_bytes` (at least one); true when nothing follows them.
    pub fn entries_after(
        &self,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> (Vec<(Vec<u8>, Entry)>, bool) {
        let start = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut range = self
            .map
            .range::<[u8], _>((start, Bound::Unbounded))
            .peekable();
        while let Some((k, e)) = range.peek() {
            let size = entry_size(k, e);
            if !out.is_empty() && bytes + size > max_bytes {
                return (out, false);
            }
            bytes += size;
            out.push(((*k).clone(), (*e).clone()));
            range.next();
        }
        (out, true)
    }

    /// Approximate bytes of keys and values.
    pub fn bytes(&self) -> u64 {
        self.map.iter().map(|(k, e)| entry_size(k, e) as u64).sum()
    }

    /// The content checksum of every entry, in key order.
    pub fn checksum(&self) -> u64 {
        let mut c = Checksum::default();
        for (k, e) in &self.map {
            c.update(k, e);
        }
        c.finish()
    }

    /// The digest the store would have after applying `batch`, without
    /// applying it.
    pub fn digest_after(&self, batch: &Batch) -> u128 {
        batch
            .ops
            .iter()
            .enumerate()
            .fold(self.digest, |d, (i, op)| {
                chain(d, batch.first_version + i as u64, op)
            })
    }

    /// Computes what each operation of `batch` would return if applied now,
    /// without changing anything. Later operations see earlier ones.
    pub fn preview(&self, batch: &Batch) -> Vec<OpResult> {
        let mut overlay: BTreeMap<&[u8], bool> = BTreeMap::new();
        let mut results = Vec::with_capacity(batch.ops.len());
        for (i, op) in batch.ops.iter().enumerate() {
            let version = batch.first_version + i as u64;
            match op {
                Op::Put { key, .. } => {
                    overlay.insert(key, true);
                    results.push(OpResult::Put { version });
                }
                Op::Delete { key } => {
                    let existed = overlay
                        .get(key.as_slice())
                        .copied()
                        .unwrap_or_else(|| self.map.contains_key(key));
                    overlay.insert(key, false);
                    results.push(OpResult::Delete {
                        deleted: existed,
                        version,
                    });
                }
            }
        }
        results
    }

    /// Applies a batch that directly follows the applied version.
    ///
    /// # Panics
    /// If the batch does not start at `applied + 1`: the protocol checks the
    /// order at prepare time, so a gap here is a bug, not bad input.
    pub fn apply(&mut self, batch: Batch) {
        assert_eq!(
            batch.first_version,
            self.applied + 1,
            "batch {} applied out of order",
            batch.id
        );
        for (i, op) in batch.ops.into_iter().enumerate() {
            let version = batch.first_version + i as u64;
            self.digest = chain(self.digest, version, &op);
            match op {
                Op::Put { key, value } => {
                    self.map.insert(key, Entry { value, version });
                }
                Op::Delete { key } => {
                    self.map.remove(&key);
                }
            }
            self.applied = version;
        }
    }
}

/// Bytes an entry is counted as, for chunking.
pub fn entry_size(key: &[u8], e: &Entry) -> usize {
    key.len() + e.value.len() + 16
}

/// A running xxh3-64 over entries in key order: what a snapshot copy is
/// checked against.
#[derive(Default)]
pub struct Checksum(Xxh3Default);

impl Checksum {
    /// Adds the next entry.
    pub fn update(&mut self, key: &[u8], e: &Entry) {
        self.0.update(&(key.len() as u64).to_le_bytes());
        self.0.update(key);
        self.0.update(&e.version.to_le_bytes());
        self.0.update(&(e.value.len() as u64).to_le_bytes());
        self.0.update(&e.value);
    }

    /// The checksum so far.
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

fn chain(prev: u128, version: Version, op: &Op) -> u128 {
    let mut h = Xxh3::new();
    h.update(&prev.to_le_bytes());
    h.update(&version.to_le_bytes());
    match op {
        Op::Put { key, value } => {
            h.update(&[1]);
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(key);
            h.update(value);
        }
        Op::Delete { key } => {
            h.update(&[2]);
            h.update(key);
        }
    }
    h.digest128()
}

/// Formats a digest the way status output shows it.
pub fn digest_hex(digest: u128) -> String {
    format!("{digest:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BatchId;

    fn batch(seq: u64, first: Version, ops: Vec<Op>) -> Batch {
        Batch {
            id: BatchId { epoch: 1, seq },
            first_version: first,
            ops,
        }
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn del(k: &str) -> Op {
        Op::Delete { key: k.into() }
    }

    #[test]
    fn preview_sees_earlier_ops_of_the_batch() {
        let store = Store::default();
        let b = batch(1, 1, vec![del("a"), put("a", "1"), del("a"), del("a")]);
        let r = store.preview(&b);
        assert_eq!(
            r,
            vec![
                OpResult::Delete {
                    deleted: false,
                    version: 1
                },
                OpResult::Put { version: 2 },
                OpResult::Delete {
                    deleted: true,
                    version: 3
                },
                OpResult::Delete {
                    deleted: false,
                    version: 4
                },
            ]
        );
    }

    #[test]
    fn digest_depends_on_history_not_only_on_final_state() {
        let mut a = Store::default();
        a.apply(batch(1, 1, vec![put("k", "1"), put("k", "2")]));
        let mut b = Store::default();
        b.apply(batch(1, 1, vec![put("k", "3"), put("k", "2")]));
        assert_eq!(a.get(b"k"), b.get(b"k"));
        assert_ne!(a.digest(), b.digest());
        let mut c = Store::default();
        c.apply(batch(1, 1, vec![put("k", "1")]));
        c.apply(batch(2, 2, vec![put("k", "2")]));
        assert_eq!(
            a.digest(),
            c.digest(),
            "batch boundaries do not change the digest"
        );
    }

    #[test]
    fn digest_after_predicts_apply_and_chunks_cover_every_entry_once() {
        let mut s = Store::default();
        let b = batch(
            1,
            1,
            (0..50).map(|i| put(&format!("k{i:02}"), "v")).collect(),
        );
        let predicted = s.digest_after(&b);
        s.apply(b);
        assert_eq!(predicted, s.digest());
        let mut after: Option<Vec<u8>> = None;
        let mut copy = BTreeMap::new();
        let mut c = Checksum::default();
        let mut chunks = 0;
        loop {
            let (entries, last) = s.entries_after(after.as_deref(), 100);
            chunks += 1;
            for (k, e) in &entries {
                c.update(k, e);
                copy.insert(k.clone(), e.clone());
            }
            after = entries.last().map(|(k, _)| k.clone());
            if last {
                break;
            }
        }
        assert!(chunks >= 10, "100-byte chunks split 50 entries");
        assert_eq!(c.finish(), s.checksum());
        let rebuilt = Store::from_parts(copy, s.applied(), s.digest());
        assert_eq!(rebuilt, s);
    }

    #[test]
    fn apply_sets_versions_and_removes() {
        let mut s = Store::default();
        s.apply(batch(1, 1, vec![put("a", "x"), put("b", "y"), del("a")]));
        assert_eq!(s.applied(), 3);
        assert!(s.get(b"a").is_none());
        assert_eq!(s.get(b"b").map(|e| e.version), Some(2));
    }
}
