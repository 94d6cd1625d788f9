//! The nouns every process shares: node and batch ids, versions, the write
//! operations a batch carries and the limits a request must respect.
//!
//! Keys and values are raw bytes on the wire and on disk; only the CLI treats
//! them as text. Limits live here so the participant (which rejects oversized
//! writes before they reach 2PC) and the prepare check (which refuses them
//! again, in case a coordinator is misconfigured) agree on one definition.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A global, gap-free write version: one per committed operation.
pub type Version = u64;

/// A participant id, 1..=7 (the order of `--participants` on the coordinator).
pub type NodeId = u32;

/// Largest accepted cluster size (ids 1..=MAX_PARTICIPANTS).
pub const MAX_PARTICIPANTS: usize = 7;

/// Largest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// Default largest value accepted, in bytes (`--max-value-size`).
pub const DEFAULT_MAX_VALUE_LEN: usize = 1 << 20;

/// Identifies one 2PC round. Epochs grow at every coordinator start, so an id
/// is never reused even though `seq` restarts at 1 in each epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct BatchId {
    /// The coordinator's epoch when it proposed the batch.
    pub epoch: u64,
    /// Position of the batch within its epoch, from 1.
    pub seq: u64,
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// Identifies a cluster; created at the coordinator's first start.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(ClusterId)
    }
}

/// A single write.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` (a no-op that still takes a version if it is absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl Op {
    /// The key this operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    /// Approximate encoded size, used to bound batches in bytes.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 16,
        }
    }

    /// Checks the operation against the limits; the error says which one.
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        validate_key(self.key())?;
        if let Op::Put { value, .. } = self
            && value.len() > limits.max_value_len
        {
            return Err(Error::InvalidArgument(format!(
                "value of {} bytes is too large: the limit is {} bytes (participant --max-value-size)",
                value.len(),
                limits.max_value_len
            )));
        }
        Ok(())
    }
}

/// Checks a key's length (1..=4096 bytes); the error says what is allowed.
pub fn validate_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(
            "empty key: keys must be 1 to 4096 bytes".into(),
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "key of {} bytes is too long: keys must be 1 to {MAX_KEY_LEN} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// The outcome of one operation, identical on every replica.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum OpResult {
    /// The put was applied at `version`.
    Put {
        /// Version of the new value.
        version: Version,
    },
    /// The delete was applied at `version`; `deleted` tells whether the key existed.
    Delete {
        /// Whether a value was removed.
        deleted: bool,
        /// Version taken by the delete.
        version: Version,
    },
}

impl OpResult {
    /// The version the operation took.
    pub fn version(&self) -> Version {
        match self {
            OpResult::Put { version } | OpResult::Delete { version, .. } => *version,
        }
    }
}

/// A group of writes committed (or aborted) together, holding the versions
/// `first_version .. first_version + ops.len()` in order.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Batch {
    /// Round id.
    pub id: BatchId,
    /// Version of `ops[0]`.
    pub first_version: Version,
    /// The writes, in version order. Never empty.
    pub ops: Vec<Op>,
}

impl Batch {
    /// Version of the last operation, for a batch already checked with
    /// [`Batch::checked_last_version`] (or built by this process): it
    /// overflows on a batch that leaves no room for its versions.
    pub fn last_version(&self) -> Version {
        // Grouped so that a batch ending at the very last version fits.
        match self.ops.len() as u64 {
            0 => self.first_version - 1,
            n => self.first_version + (n - 1),
        }
    }

    /// Version of the last operation (`first_version - 1` when empty), or
    /// `None` when the versions do not fit in a [`Version`]: how a batch
    /// from the network or a disk is checked before any sum on it.
    pub fn checked_last_version(&self) -> Option<Version> {
        match self.ops.len() as u64 {
            0 => self.first_version.checked_sub(1),
            n => self.first_version.checked_add(n - 1),
        }
    }

    /// Whether any operation writes `key`.
    pub fn touches(&self, key: &[u8]) -> bool {
        self.ops.iter().any(|op| op.key() == key)
    }
}

/// Request limits enforced by participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest value, in bytes.
    pub max_value_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_len: DEFAULT_MAX_VALUE_LEN,
        }
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub enum ReadLevel {
    /// Waits for an undecided write of the key; never stale.
    #[default]
    Linearizable,
    /// The local committed value at once; may be stale.
    Serializable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_reject_empty_and_oversized() {
        let limits = Limits { max_value_len: 8 };
        let empty = Op::Delete { key: vec![] };
        assert!(matches!(
            empty.validate(&limits),
            Err(Error::InvalidArgument(_))
        ));
        let long_key = Op::Delete {
            key: vec![b'k'; MAX_KEY_LEN + 1],
        };
        assert!(long_key.validate(&limits).is_err());
        let max_key = Op::Delete {
            key: vec![b'k'; MAX_KEY_LEN],
        };
        assert!(max_key.validate(&limits).is_ok());
        let big = Op::Put {
            key: b"k".to_vec(),
            value: vec![0; 9],
        };
        assert!(big.validate(&limits).is_err());
        let fits = Op::Put {
            key: b"k".to_vec(),
            value: vec![0; 8],
        };
        assert!(fits.validate(&limits).is_ok());
    }

    #[test]
    fn batch_ids_order_by_epoch_then_seq() {
        let a = BatchId { epoch: 1, seq: 9 };
        let b = BatchId { epoch: 2, seq: 1 };
        assert!(a < b);
        assert_eq!(b.to_string(), "2.1");
    }
}
