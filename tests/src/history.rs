//! Operation histories recorded by workloads.
