//! The coordinator's decision log, replicated with Raft (raft-rs).
//!
//! The coordinator runs as 1, 3 or 5 replicas. Their log holds exactly the
//! records the 2PC state machine asks to persist (views, COMMITs, acks; no
//! key-value data), as Raft entries: "durable" for the state machine means
//! committed in Raft, i.e. fsynced on a majority. Only the leader runs the
//! state machine; a new leader first applies everything before its term,
//! then starts it as a restart would, in a new epoch, which fences the old
//! leader's prepares at every participant.
//!
//! - [`store`]: the Raft log in memory and the WAL records that make it
//!   durable;
//! - [`node`]: raft-rs's node over it, the folded decision state, and the
//!   Ready cycle as data (persist, then send).
//!
//! A single replica is a group of one: it elects itself at start and every
//! entry commits as soon as it is fsynced, which is what the coordinator
//! did before replication existed.

pub mod node;
#[cfg(test)]
mod sim;
pub mod store;
