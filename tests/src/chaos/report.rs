//! Turning workload records into a checkable history, and the run's report.
//!
//! [`to_event`] maps one [`OpRecord`] of the workload engine to a history
//! [`Event`]: the outcome is `Ok` when the client got an answer,
//! `Failed` when [`quintet_client::ClientError::surely_not_applied`] says
//! nothing was applied, and `Unknown` otherwise. Replicas are numbered like
//! the participants (1..=5).
//!
//! [`ChaosReport`] is what a run prints: operations by kind and outcome,
//! errors by kind, faults by kind, availability around each fault, and
//! each of the three checks with its verdict; violations come with the
//! faults active around the operations they name, which is where to start
//! looking. [`ChaosReport::to_json`] is the same as one JSON document
//! (`--report-json`).
//!
//! Availability ([`fault_gaps`]): for every fault, within the window from
//! its injection to 2 s after its heal (clipped to the end of the
//! workload), the longest stretch with no successful write (a put or
//! delete that completed Ok, at any replica) and the longest with no
//! successful linearizable read at a live member (a get that completed
//! Ok at a replica the fault did not target), measured between completion
//! times and the window's ends; and how long each node the heal brought
//! back took to answer as ready (for a participant: caught up and
//! rejoined; for a coordinator replica: following the leader, a wiped one
//! with its log caught up). The longest gaps over the whole run are
//! reported too, and a summary by fault kind: its rejoin times are the
//! participants', and for the coordinator-replica kinds the replica's.
//! A coordinator replica hit by a fault is not a replica clients talk to,
//! so it excludes no read from the gaps.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use quintet_client::local::Node;
use quintet_client::workload::{OpKind, OpOutput, OpRecord};
use serde_json::json;

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

/// How long after a heal a fault's availability window still runs: the
/// time effects (a rejoin, a re-proposed round) get to settle.
pub const WINDOW_AFTER_HEAL: Duration = Duration::from_secs(2);

/// A stretch of time with nothing successful in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gap {
    /// Where it starts, since the start of the run.
    pub start: Duration,
    /// How long it is.
    pub len: Duration,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3}s from {:.3}s",
            self.len.as_secs_f64(),
            self.start.as_secs_f64()
        )
    }
}

/// The longest stretch of `[from, to]` (microseconds) with no time of
/// `times` in it; `times` need not be sorted and may reach
/// outside the window. An empty or inverted window is a gap of zero.
pub fn longest_gap(times: &[u64], from: u64, to: u64) -> Gap {
    if to <= from {
        return Gap {
            start: Duration::from_micros(from),
            len: Duration::ZERO,
        };
    }
    let mut inside: Vec<u64> = times
        .iter()
        .copied()
        .filter(|t| (from..=to).contains(t))
        .collect();
    inside.sort_unstable();
    let mut best = (from, 0);
    let mut prev = from;
    for t in inside.into_iter().chain(std::iter::once(to)) {
        if t - prev > best.1 {
            best = (prev, t - prev);
        }
        prev = t;
    }
    Gap {
        start: Duration::from_micros(best.0),
        len: Duration::from_micros(best.1),
    }
}

/// Completion times (µs) of the successful writes (puts and deletes).
pub fn write_times(h: &History) -> Vec<u64> {
    h.iter()
        .filter(|e| e.is_write() && e.outcome == Outcome::Ok)
        .map(|e| e.complete_us)
        .collect()
}

/// Completion times (µs) of the successful reads at replicas not in `exclude`.
pub fn read_times(h: &History, exclude: &[u32]) -> Vec<u64> {
    h.iter()
        .filter(|e| !e.is_write() && e.outcome == Outcome::Ok)
        .filter(|e| e.replica.is_none_or(|r| !exclude.contains(&r)))
        .map(|e| e.complete_us)
        .collect()
}

/// Availability around one fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultGaps {
    /// Index of the fault in the report's `faults`.
    pub fault: usize,
    /// The window looked at: from the injection ...
    pub from: Duration,
    /// ... to 2 s after the heal, or the end of the workload.
    pub to: Duration,
    /// Longest stretch of the window with no successful write.
    pub no_write: Gap,
    /// Longest stretch with no successful read at a member the fault did not hit.
    pub no_read: Gap,
}

/// The availability window and gaps of every fault in `faults`, over the
/// history of a workload that ran until `end`.
pub fn fault_gaps(h: &History, faults: &[FaultRecord], end: Duration) -> Vec<FaultGaps> {
    let writes = write_times(h);
    faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let from = f.injected.min(end);
            let to = (f.healed.unwrap_or(end) + WINDOW_AFTER_HEAL).min(end);
            let faulted: Vec<u32> = f
                .fault
                .targets
                .iter()
                .filter_map(|t| match t {
                    Node::Participant(r) => Some(*r),
                    Node::Coordinator(_) => None,
                })
                .collect();
            let reads = read_times(h, &faulted);
            FaultGaps {
                fault: i,
                from,
                to,
                no_write: longest_gap(&writes, micros(from), micros(to)),
                no_read: longest_gap(&reads, micros(from), micros(to)),
            }
        })
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
    /// Coordinator replicas the cluster ran.
    pub coordinators: u32,
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
    /// Availability around each fault, in the order of `faults`.
    pub gaps: Vec<FaultGaps>,
    /// The longest stretch of the whole run with no successful write.
    pub longest_no_write: Gap,
    /// The longest stretch of the whole run with no successful read.
    pub longest_no_read: Gap,
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

    /// Works out the availability figures of `h` for a workload that
    /// issued operations until `end` (the faults must be set already).
    pub fn measure_availability(&mut self, h: &History, end: Duration) {
        self.gaps = fault_gaps(h, &self.faults, end);
        self.longest_no_write = longest_gap(&write_times(h), 0, micros(end));
        self.longest_no_read = longest_gap(&read_times(h, &[]), 0, micros(end));
    }

    /// The faults active during a gap, for naming them.
    fn faults_during(&self, g: Gap) -> String {
        let names: Vec<String> = self
            .faults
            .iter()
            .filter(|f| f.overlaps(g.start, g.start + g.len))
            .map(|f| f.fault.to_string())
            .collect();
        if names.is_empty() {
            "no fault active".to_string()
        } else {
            format!("during {}", names.join("; "))
        }
    }

    /// Per fault kind: (faults, longest no-write, longest no-read, the
    /// rejoin times: the participants', or for a coordinator-replica kind
    /// the coordinator replicas').
    pub fn availability_by_kind(
        &self,
    ) -> BTreeMap<FaultKind, (usize, Duration, Duration, Vec<Duration>)> {
        let mut m: BTreeMap<FaultKind, (usize, Duration, Duration, Vec<Duration>)> =
            BTreeMap::new();
        for g in &self.gaps {
            let Some(f) = self.faults.get(g.fault) else {
                continue;
            };
            let e = m.entry(f.kind()).or_default();
            e.0 += 1;
            e.1 = e.1.max(g.no_write.len);
            e.2 = e.2.max(g.no_read.len);
            let replica_kind = f.kind().hits_coordinator_replica();
            e.3.extend(
                f.rejoins
                    .iter()
                    .filter(|r| matches!(r.node, Node::Coordinator(_)) == replica_kind)
                    .map(|r| r.after),
            );
        }
        m
    }

    /// The report as one JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let secs = |d: Duration| d.as_secs_f64();
        let gap = |g: Gap| json!({"start_s": secs(g.start), "len_s": secs(g.len)});
        let faults: Vec<serde_json::Value> = self
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let g = self.gaps.iter().find(|g| g.fault == i);
                json!({
                    "kind": f.kind().to_string(),
                    "targets": f.fault.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    "cut": f.fault.cut.map(|c| c.to_string()),
                    "pick": f.fault.pick.map(|p| p.to_string()),
                    "leader_before": f.leader_before.map(|n| n.to_string()),
                    "leader_after": f.leader_after.map(|n| n.to_string()),
                    "injected_s": secs(f.injected),
                    "healed_s": f.healed.map(secs),
                    "errors": f.errors,
                    "window_s": g.map(|g| [secs(g.from), secs(g.to)]),
                    "longest_no_write": g.map(|g| gap(g.no_write)),
                    "longest_no_read_at_live_member": g.map(|g| gap(g.no_read)),
                    "rejoin_s": f.rejoins.iter().map(|r| json!({"node": r.node.to_string(), "after_s": secs(r.after)})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let ops: BTreeMap<&str, serde_json::Value> = self
            .ops
            .iter()
            .map(|(k, c)| {
                (
                    k.as_str(),
                    json!({"ok": c[0], "failed": c[1], "unknown": c[2]}),
                )
            })
            .collect();
        json!({
            "backend": self.backend,
            "coordinators": self.coordinators,
            "seed": self.seed,
            "ran_s": secs(self.ran),
            "clients": self.clients,
            "keys": self.keys,
            "ops": ops,
            "errors": self.errors,
            "faults": faults,
            "skipped": self.skipped.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            "warnings": self.warnings,
            "longest_no_write": gap(self.longest_no_write),
            "longest_no_read": gap(self.longest_no_read),
            "checks": self.checks.iter().map(|c| json!({"name": c.name, "passed": c.passed, "detail": c.detail})).collect::<Vec<_>>(),
            "history": self.history.display().to_string(),
            "history_len": self.history_len,
            "passed": self.passed(),
        })
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
            *m.entry(f.kind()).or_default() += 1;
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

impl ChaosReport {
    /// The availability table, the per-kind summary and the overall gaps.
    fn fmt_availability(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Duration| format!("{:.3}s", d.as_secs_f64());
        if !self.gaps.is_empty() {
            writeln!(
                f,
                "availability per fault (window: injected .. healed + {}s; reads at live members only):",
                WINDOW_AFTER_HEAL.as_secs()
            )?;
            let width = self
                .faults
                .iter()
                .map(|r| r.fault.to_string().len())
                .max()
                .unwrap_or(0)
                .max(5);
            writeln!(
                f,
                "  {:>3}  {:<width$}  {:>11}  {:>8}  {:>8}  ready after heal",
                "#", "fault", "window", "no write", "no read"
            )?;
            for g in &self.gaps {
                let Some(r) = self.faults.get(g.fault) else {
                    continue;
                };
                let rejoins: Vec<String> = r
                    .rejoins
                    .iter()
                    .map(|j| format!("{} {}", j.node, s(j.after)))
                    .collect();
                writeln!(
                    f,
                    "  {:>3}  {:<width$}  {:>11}  {:>8}  {:>8}  {}",
                    g.fault + 1,
                    r.fault.to_string(),
                    format!("{:.1}-{:.1}s", g.from.as_secs_f64(), g.to.as_secs_f64()),
                    s(g.no_write.len),
                    s(g.no_read.len),
                    if rejoins.is_empty() {
                        if r.errors.is_empty() {
                            "-".to_string()
                        } else {
                            "heal failed".to_string()
                        }
                    } else {
                        rejoins.join(", ")
                    }
                )?;
            }
            writeln!(
                f,
                "availability by fault kind (rejoin after heal: participants' catch-up; \
                 for the coordinator-replica kinds the replica's):"
            )?;
            for (kind, (n, w, rd, rejoins)) in self.availability_by_kind() {
                let rejoin = match rejoins.iter().max() {
                    Some(max) => {
                        let mean = rejoins.iter().sum::<Duration>() / rejoins.len() as u32;
                        format!(
                            "rejoin mean {} max {} ({} returns)",
                            s(mean),
                            s(*max),
                            rejoins.len()
                        )
                    }
                    None if kind.hits_coordinator_replica() => "no replica returned".to_string(),
                    None => "no participant returned".to_string(),
                };
                writeln!(
                    f,
                    "  {:<28} {n:>3} faults  longest no write {:>9}  no read {:>9}  {rejoin}",
                    kind.to_string(),
                    s(w),
                    s(rd)
                )?;
            }
        }
        writeln!(
            f,
            "longest gaps of the run: no successful write {} ({}); no successful read {} ({})",
            self.longest_no_write,
            self.faults_during(self.longest_no_write),
            self.longest_no_read,
            self.faults_during(self.longest_no_read)
        )
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "quintet-chaos: backend {}, {} coordinator replica(s), seed {}, ran {:.1}s, {} clients, {} keys",
            self.backend,
            self.coordinators.max(1),
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
        for (i, r) in self.faults.iter().enumerate() {
            for e in &r.errors {
                writeln!(f, "  fault #{} {}: {e}", i + 1, r.fault)?;
            }
        }
        for k in &self.skipped {
            writeln!(f, "  {k}: not available on this backend, skipped")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        self.fmt_availability(f)?;
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

    /// An Ok event of `op` at `replica` completing at `ms`.
    fn done(id: u64, op: Op, replica: u32, ms: u64) -> Event {
        Event {
            id,
            client: 0,
            replica: Some(replica),
            key: "k".into(),
            op,
            invoke_us: ms * 1000 - 500,
            complete_us: ms * 1000,
            outcome: Outcome::Ok,
            found: Some(false),
            value: None,
            deleted: None,
            version: None,
        }
    }

    #[test]
    fn longest_gap_within_a_window() {
        let ms = |m: u64| m * 1000;
        let g = longest_gap(&[ms(5), ms(1), ms(30), ms(12)], ms(0), ms(40));
        assert_eq!(
            g,
            Gap {
                start: Duration::from_millis(12),
                len: Duration::from_millis(18)
            }
        );
        // The window's ends count; times outside it do not.
        let g = longest_gap(&[ms(1), ms(50)], ms(10), ms(20));
        assert_eq!(g.start, Duration::from_millis(10));
        assert_eq!(g.len, Duration::from_millis(10));
        assert_eq!(longest_gap(&[], ms(3), ms(3)).len, Duration::ZERO);
        assert_eq!(longest_gap(&[], ms(5), ms(3)).len, Duration::ZERO);
        assert_eq!(
            longest_gap(&[ms(8)], ms(0), ms(10)),
            Gap {
                start: Duration::ZERO,
                len: Duration::from_millis(8)
            }
        );
    }

    #[test]
    fn fault_gaps_count_writes_anywhere_and_reads_at_live_members_only() {
        use super::super::nemesis::{Cut, Fault, Rejoin};
        let put = || Op::Put { value: "v".into() };
        let mut h = History::new();
        // Writes every 100 ms until 1.0 s, then none until 3.5 s.
        for (i, t) in [
            100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 3500, 4000,
        ]
        .into_iter()
        .enumerate()
        {
            h.push(done(i as u64 + 1, put(), 1, t));
        }
        // Reads at replica 2 (the faulted one) all along; at replica 3 only
        // until 1.2 s and from 2.7 s.
        let mut id = 100;
        for t in (100..=6000).step_by(100) {
            id += 1;
            h.push(done(id, Op::Get, 2, t));
            if !(1300..=2600).contains(&t) {
                id += 1;
                h.push(done(id, Op::Get, 3, t));
            }
        }
        // A failed write and an unknown read in the hole do not count.
        let mut failed = done(900, Op::Delete, 1, 2000);
        failed.outcome = Outcome::Failed;
        h.push(failed);
        let mut unknown = done(901, Op::Get, 3, 2000);
        unknown.outcome = Outcome::Unknown;
        h.push(unknown);

        let s = Duration::from_millis;
        let faults = vec![
            FaultRecord {
                fault: Fault {
                    kind: FaultKind::PartitionCoordinator,
                    targets: vec![Node::Participant(2)],
                    cut: Some(Cut::CoordinatorToParticipant),
                    pick: None,
                },
                leader_before: None,
                leader_after: None,
                injected: s(900),
                healed: Some(s(2500)),
                rejoins: vec![Rejoin {
                    node: Node::Participant(2),
                    after: s(1250),
                }],
                errors: vec![],
            },
            // Healed after the run: its window ends with the workload.
            FaultRecord {
                fault: Fault::at(FaultKind::Wipe, Node::Participant(3)),
                leader_before: None,
                leader_after: None,
                injected: s(5000),
                healed: None,
                rejoins: vec![],
                errors: vec!["heal: not ready".into()],
            },
        ];
        let g = fault_gaps(&h, &faults, s(6000));
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].from, g[0].to), (s(900), s(4500)));
        assert_eq!(
            g[0].no_write,
            Gap {
                start: s(1000),
                len: s(2500)
            }
        );
        // Replica 2's reads went on but it is the faulted node: excluded.
        assert_eq!(
            g[0].no_read,
            Gap {
                start: s(1200),
                len: s(1500)
            }
        );
        assert_eq!((g[1].from, g[1].to), (s(5000), s(6000)));
        assert_eq!(g[1].no_write.len, s(1000));
        assert_eq!(g[1].no_read.len, s(100), "replica 2 reads while 3 is wiped");

        let mut report = ChaosReport {
            faults,
            ..ChaosReport::default()
        };
        report.measure_availability(&h, s(6000));
        assert_eq!(report.gaps, g);
        assert_eq!(
            report.longest_no_write,
            Gap {
                start: s(1000),
                len: s(2500)
            }
        );
        // Over the whole run every replica's reads count.
        assert_eq!(report.longest_no_read.len, s(100));
        let by_kind = report.availability_by_kind();
        assert_eq!(
            by_kind.get(&FaultKind::PartitionCoordinator),
            Some(&(1, s(2500), s(1500), vec![s(1250)]))
        );
        assert_eq!(
            by_kind.get(&FaultKind::Wipe),
            Some(&(1, s(1000), s(100), vec![]))
        );

        let text = report.to_string();
        assert!(text.contains("availability per fault"), "{text}");
        assert!(
            text.contains("partition-coordinator participant-2 (coordinator->participant lost)"),
            "{text}"
        );
        assert!(text.contains("participant-2 1.250s"), "{text}");
        assert!(text.contains("heal failed"), "{text}");
        assert!(
            text.contains("  fault #2 wipe participant-3: heal: not ready"),
            "{text}"
        );
        assert!(
            text.contains("longest gaps of the run: no successful write 2.500s from 1.000s"),
            "{text}"
        );
        let j = report.to_json();
        assert_eq!(j["faults"][0]["longest_no_write"]["len_s"], 2.5);
        assert_eq!(
            j["faults"][0]["longest_no_read_at_live_member"]["len_s"],
            1.5
        );
        assert_eq!(j["faults"][0]["rejoin_s"][0]["after_s"], 1.25);
        assert_eq!(j["faults"][0]["window_s"][1], 4.5);
        assert_eq!(j["longest_no_write"]["start_s"], 1.0);
    }
}
