//! Turning workload records into a checkable history, and the run's report.
//!
//! [`to_event`] maps one [`OpRecord`] of the workload engine to a history
//! [`Event`]: the outcome is `Ok` when the client got an answer,
//! `Failed` when [`quintet_client::ClientError::surely_not_applied`] says
//! nothing was applied, and `Unknown` otherwise. Replicas are numbered like
//! the participants (1..=5).
//!
//! [`ChaosReport`] is what a run prints: operations by kind and outcome,
//! errors by kind, faults by kind, and each of the three checks with its
//! verdict; violations come with the faults active around the operations
//! they name, which is where to start looking.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use quintet_client::workload::{OpKind, OpOutput, OpRecord};

use super::nemesis::{FaultKind, FaultRecord};
use crate::checker::Violation;
use crate::history::{Event, History, Op, Outcome};

/// Converts one workload record into a history event with id `id`.
pub fn to_event(id: u64, r: &OpRecord) -> Event {
    let op = match r.kind {
        OpKind::Put => Op::Put {
            value: r.value.clone().unwrap_or_default(),
        },
        OpKind::Get => Op::Get,
        OpKind::Delete => Op::Delete,
    };
    let mut e = Event {
        id,
        client: r.client,
        replica: r.replica.map(|i| i as u32 + 1),
        key: r.key.clone(),
        op,
        invoke_us: micros(r.invoke),
        complete_us: micros(r.complete),
        outcome: Outcome::Ok,
        found: None,
        value: None,
        deleted: None,
        version: None,
    };
    match &r.outcome {
        Ok(OpOutput::Put { version }) => e.version = Some(*version),
        Ok(OpOutput::Get { value }) => {
            e.found = Some(value.is_some());
            if let Some((v, ver)) = value {
                e.value = Some(v.clone());
                e.version = Some(*ver);
            }
        }
        Ok(OpOutput::Delete { deleted, version }) => {
            e.deleted = Some(*deleted);
            e.version = Some(*version);
        }
        Err(err) if err.surely_not_applied() => e.outcome = Outcome::Failed,
        Err(_) => e.outcome = Outcome::Unknown,
    }
    e
}

/// Index of an outcome in the per-kind counts.
fn slot(o: Outcome) -> usize {
    match o {
        Outcome::Ok => 0,
        Outcome::Failed => 1,
        Outcome::Unknown => 2,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Builds the history of a run: records sorted by invocation, ids from 1.
pub fn history_of(records: &[OpRecord]) -> History {
    let mut sorted: Vec<&OpRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.invoke, r.client, r.seq));
    sorted
        .iter()
        .enumerate()
        .map(|(i, r)| to_event(i as u64 + 1, r))
        .collect()
}

/// One of the three checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// One line when it passed; the violations when it did not.
    pub detail: String,
}

/// Everything a run reports.
#[derive(Clone, Debug, Default)]
pub struct ChaosReport {
    /// `local` or `docker`.
    pub backend: String,
    /// The seed of the workload and the nemesis.
    pub seed: u64,
    /// How long the workload ran.
    pub ran: Duration,
    /// Concurrent clients.
    pub clients: u32,
    /// Size of the key space.
    pub keys: u64,
    /// Operations by kind (`put`, `get`, `delete`): counts of ok, failed, unknown.
    pub ops: BTreeMap<String, [u64; 3]>,
    /// Failed and unknown operations by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Every fault, in injection order.
    pub faults: Vec<FaultRecord>,
    /// Fault kinds asked for but not available on this backend.
    pub skipped: Vec<FaultKind>,
    /// Unexpected things seen while healing (a node that died by itself).
    pub warnings: Vec<String>,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Where the history was written.
    pub history: PathBuf,
    /// Number of events in it.
    pub history_len: usize,
    /// Where the node logs are.
    pub logs: String,
}

impl ChaosReport {
    /// Counts the operations of `h` by kind and outcome.
    pub fn count_ops(&mut self, h: &History) {
        for e in h {
            let kind = match e.op {
                Op::Put { .. } => "put",
                Op::Get => "get",
                Op::Delete => "delete",
            };
            self.ops.entry(kind.to_string()).or_default()[slot(e.outcome)] += 1;
        }
    }

    /// True when every check passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// Operations with the given outcome, all kinds.
    pub fn outcome_count(&self, outcome: Outcome) -> u64 {
        self.ops.values().map(|c| c[slot(outcome)]).sum()
    }

    /// Operations of one kind with the given outcome.
    pub fn count(&self, kind: &str, outcome: Outcome) -> u64 {
        self.ops.get(kind).map_or(0, |c| c[slot(outcome)])
    }

    /// Faults injected, by kind.
    pub fn faults_by_kind(&self) -> BTreeMap<FaultKind, usize> {
        let mut m = BTreeMap::new();
        for f in &self.faults {
            *m.entry(f.kind).or_default() += 1;
        }
        m
    }
}

/// Describes violations, each followed by the faults active around its operations.
pub fn describe_violations(
    violations: &[Violation],
    h: &History,
    faults: &[FaultRecord],
) -> String {
    let by_id: BTreeMap<u64, &Event> = h.iter().map(|e| (e.id, e)).collect();
    let mut out = String::new();
    for v in violations {
        out.push_str(&format!("\n  - {v}"));
        let evs: Vec<&Event> = v
            .ops
            .iter()
            .filter_map(|id| by_id.get(id).copied())
            .collect();
        let (Some(from), Some(to)) = (
            evs.iter().map(|e| e.invoke_us).min(),
            evs.iter().map(|e| e.end_us()).max(),
        ) else {
            continue;
        };
        // A second of slack on each side: effects outlive the faults.
        let from = Duration::from_micros(from).saturating_sub(Duration::from_secs(1));
        let to = Duration::from_micros(to) + Duration::from_secs(1);
        let around: Vec<String> = faults
            .iter()
            .filter(|f| f.overlaps(from, to))
            .map(|f| f.to_string())
            .collect();
        if around.is_empty() {
            out.push_str("\n    no fault active around these operations");
        } else {
            out.push_str("\n    faults around these operations:");
            for f in around {
                out.push_str(&format!("\n      {f}"));
            }
        }
    }
    out
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "quintet-chaos: backend {}, seed {}, ran {:.1}s, {} clients, {} keys",
            self.backend,
            self.seed,
            self.ran.as_secs_f64(),
            self.clients,
            self.keys
        )?;
        let total: u64 = self.ops.values().flatten().sum();
        writeln!(
            f,
            "operations: {total}: {} ok, {} failed (surely not applied), {} unknown",
            self.outcome_count(Outcome::Ok),
            self.outcome_count(Outcome::Failed),
            self.outcome_count(Outcome::Unknown)
        )?;
        for kind in ["put", "get", "delete"] {
            let n = |o| self.count(kind, o);
            writeln!(
                f,
                "  {kind:<7} ok {:>7}  failed {:>6}  unknown {:>6}",
                n(Outcome::Ok),
                n(Outcome::Failed),
                n(Outcome::Unknown)
            )?;
        }
        if !self.errors.is_empty() {
            let errs: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "  errors by kind: {}", errs.join(", "))?;
        }
        let by_kind: Vec<String> = self
            .faults_by_kind()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let failed_faults = self.faults.iter().filter(|r| !r.errors.is_empty()).count();
        writeln!(
            f,
            "faults injected: {} ({}){}",
            self.faults.len(),
            if by_kind.is_empty() {
                "none".to_string()
            } else {
                by_kind.join(", ")
            },
            if failed_faults > 0 {
                format!("; {failed_faults} with errors")
            } else {
                String::new()
            }
        )?;
        for k in &self.skipped {
            writeln!(f, "  {k}: not available on this backend, skipped")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        writeln!(f, "checks:")?;
        for c in &self.checks {
            writeln!(
                f,
                "  [{}] {}: {}",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        writeln!(
            f,
            "history: {} ({} operations)",
            self.history.display(),
            self.history_len
        )?;
        if !self.passed() {
            // A passing local run removes its temp dir; logs matter on failure.
            writeln!(f, "node logs: {}", self.logs)?;
        }
        write!(f, "RESULT: {}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quintet_client::ClientError;
    use quintet_common::error::Error;

    fn rec(kind: OpKind, invoke_ms: u64, outcome: Result<OpOutput, ClientError>) -> OpRecord {
        OpRecord {
            client: 2,
            seq: invoke_ms,
            replica: Some(0),
            kind,
            key: "k".into(),
            value: (kind == OpKind::Put).then(|| "c2-1-".to_string()),
            invoke: Duration::from_millis(invoke_ms),
            complete: Duration::from_millis(invoke_ms + 1),
            outcome,
            warmup: false,
        }
    }

    #[test]
    fn records_map_to_events_by_outcome() {
        let records = vec![
            rec(
                OpKind::Get,
                5,
                Ok(OpOutput::Get {
                    value: Some(("c2-1-".into(), 3)),
                }),
            ),
            rec(OpKind::Put, 1, Ok(OpOutput::Put { version: 3 })),
            rec(
                OpKind::Delete,
                7,
                Err(ClientError::Server {
                    endpoint: "e".into(),
                    error: Error::Aborted("no".into()),
                }),
            ),
            rec(
                OpKind::Delete,
                9,
                Err(ClientError::Unknown {
                    endpoint: "e".into(),
                    detail: "timeout".into(),
                }),
            ),
        ];
        let h = history_of(&records);
        let ids: Vec<u64> = h.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(
            h.events[0].op,
            Op::Put {
                value: "c2-1-".into()
            }
        );
        assert_eq!(h.events[0].version, Some(3));
        assert_eq!(h.events[0].replica, Some(1));
        assert_eq!(h.events[0].invoke_us, 1000);
        assert_eq!(h.events[1].found, Some(true));
        assert_eq!(h.events[1].value.as_deref(), Some("c2-1-"));
        assert_eq!(h.events[2].outcome, Outcome::Failed);
        assert_eq!(h.events[3].outcome, Outcome::Unknown);
        assert!(crate::checker::check_history(&h).is_linearizable());

        let mut report = ChaosReport::default();
        report.count_ops(&h);
        assert_eq!(report.outcome_count(Outcome::Ok), 2);
        assert_eq!(report.count("delete", Outcome::Failed), 1);
        assert!(!report.passed(), "no checks is not a pass");
    }
}
