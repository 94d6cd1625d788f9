//! The 2PC state machines, free of I/O.
//!
//! [`participant::Participant`] and [`coordinator::Coordinator`] take
//! messages, decisions and ticks and return what to do as data: records to
//! persist, messages to send, replies to release. They never touch a socket,
//! a file or a clock. The drivers in the `quintet-coordinator` and
//! `quintet-participant` binaries execute those actions, always persisting
//! before they send (the `Ready` pattern of raft-rs). That split is what lets
//! the scenario tests in `testscripts/` replay lost, duplicated and reordered
//! messages and crashes at every step in microseconds.

pub mod coordinator;
pub mod participant;

#[cfg(test)]
mod scenarios;
