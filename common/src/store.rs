//! The replica's ordered map of committed data and its state digest.
//!
//! The store is a pure function of the batches applied to it, in order. The
//! digest is a hash chained over every applied operation (version, kind, key,
//! value), so two replicas at the same applied version have the same digest
//! exactly when they applied the same history; comparing digests is how
//! `quintet status` and the tests check invariant 2 without shipping data.
//! xxh3-128 is used because it is fast and stable across platforms; it is a
//! corruption and divergence detector, not a defence against an adversary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

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
    fn apply_sets_versions_and_removes() {
        let mut s = Store::default();
        s.apply(batch(1, 1, vec![put("a", "x"), put("b", "y"), del("a")]));
        assert_eq!(s.applied(), 3);
        assert!(s.get(b"a").is_none());
        assert_eq!(s.get(b"b").map(|e| e.version), Some(2));
    }
}
