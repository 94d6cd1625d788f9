//! Support code for quintet's end-to-end tests and the `quintet-chaos`
//! fault-injection runner: operation histories and their checker.

pub mod chaos;
pub mod checker;
pub mod cluster;
pub mod history;
