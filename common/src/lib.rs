//! quintet's shared core: wire types, the 2PC state machines and the storage
//! primitives both server binaries build on.
//!
//! Nothing in here opens a socket or reads a clock except the storage module,
//! which owns the files; the protocol state machines are pure so that scenario
//! tests can drive them message by message.

pub mod error;
pub mod frame;
pub mod rpc;
pub mod storage;
pub mod store;
pub mod types;

pub use error::Error;
pub mod auth;
pub mod clock;
pub mod duration;
pub mod identity;
pub mod net;
pub mod protocol;
pub mod server_id;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
