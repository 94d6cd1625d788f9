//! The quintet client library: talk to a cluster ([`Client`]), start one on
//! this machine ([`local::LocalCluster`]), and drive load against it
//! ([`workload`]). The `quintet` binary, the end-to-end tests, the benchmark
//! and the fault-injection runner are all built on these.

pub mod bench;
pub mod certs;
pub mod client;
pub mod local;
pub mod script;
pub mod workload;

pub use client::{Client, ClientError};
