//! The protocol state machines, free of I/O.
//!
//! - [`coordinator::Coordinator`]: sequencing, group commit, the 2PC
//!   decision, and the view: leases, dropping members, learners joining;
//! - [`participant::Participant`]: voting, applying, linearizable-read
//!   checks, and both sides of catch-up;
//! - [`catchup::CatchUp`]: a learner's copy from one member, step by step;
//! - [`view`]: views, members and the lease bounds; [`window`]: the recent
//!   committed batches a member serves to learners.
//!
//! They take messages, decisions, ticks and the current [`crate::clock::Time`]
//! and return what to do as data: records to persist, messages to send,
//! replies to release. They never touch a socket, a file or a clock. The
//! drivers in the `quintet-coordinator` and `quintet-participant` binaries
//! execute those actions, always persisting before they send (the `Ready`
//! pattern of raft-rs). That split is what lets the scenario tests
//! (`scenarios.rs` in Rust, `testscripts/` as text) replay lost, duplicated
//! and reordered messages, crashes, partitions and clock jumps at every step
//! in microseconds.

pub mod catchup;
pub mod coordinator;
pub mod participant;
pub mod view;
pub mod window;

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod script;
