//! Linearizability checker for recorded histories.
