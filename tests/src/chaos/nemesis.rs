//! The nemesis: which fault to inject next, where, and for how long.
//!
//! The schedule is a pure function of the seed and the enabled fault kinds,
//! so a failing run can be replayed with the same `--seed` (the faults come
//! in the same order, at the same targets, with the same gaps and hold
//! times; only the interleaving with the workload differs). [`Nemesis`] is
//! an endless, seeded generator of [`PlannedFault`]s; the runner executes
//! them one at a time: wait the gap, inject, hold, heal, so **at most one
//! fault is active at a time** and every fault is healed after a bounded
//! while. The gap is measured from the previous heal, so a slow heal (a
//! restart waiting for readiness) delays the next fault instead of
//! overlapping it.
//!
//! Targets: a kill, pause or partition hits one node drawn uniformly from
//! the coordinator and the five participants; restart-all hits all six.
//!
//! Every injection and heal is recorded in a [`FaultRecord`] with times
//! measured from the start of the run, on the same clock (to within a
//! millisecond) as the operation history, so a violation can be put next
//! to the faults around it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use quintet_client::local::Node;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Number of participants every backend runs.
pub const PARTICIPANTS: u32 = 5;

/// The kinds of fault the nemesis knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL one node, restart it when healing.
    Kill,
    /// Freeze one node (SIGSTOP / `docker pause`), resume it when healing.
    Pause,
    /// Cut one node off the network, reconnect it when healing.
    Partition,
    /// Stop all six nodes gracefully, start them all again when healing.
    RestartAll,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::RestartAll,
    ];

    /// Whether the fault hits a single node (as opposed to all of them).
    pub fn has_target(self) -> bool {
        !matches!(self, FaultKind::RestartAll)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::RestartAll => "restart-all",
        })
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultKind, String> {
        match s.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "restart-all" | "restart_all" => Ok(FaultKind::RestartAll),
            other => Err(format!(
                "unknown nemesis {other:?}: use kill, pause, partition, restart-all, all or none"
            )),
        }
    }
}

/// Parses `kill,pause,...`, `all` or `none` into a sorted list without duplicates.
pub fn parse_nemeses(s: &str) -> Result<Vec<FaultKind>, String> {
    match s.trim() {
        "all" => return Ok(FaultKind::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut kinds = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<FaultKind>, String>>()?;
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// Bounds of the random gaps and hold times, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Shortest quiet time between a heal and the next injection.
    pub gap_min: Duration,
    /// Longest quiet time between a heal and the next injection.
    pub gap_max: Duration,
    /// Shortest time a fault stays active.
    pub hold_min: Duration,
    /// Longest time a fault stays active.
    pub hold_max: Duration,
}

impl Default for Timing {
    /// Gaps of 1–3 s, faults held 1–4 s.
    fn default() -> Self {
        Timing {
            gap_min: Duration::from_secs(1),
            gap_max: Duration::from_secs(3),
            hold_min: Duration::from_secs(1),
            hold_max: Duration::from_secs(4),
        }
    }
}

/// One fault to run: wait `gap`, inject `kind` at `target`, hold, heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// Quiet time before the injection, from the previous heal.
    pub gap: Duration,
    /// What to inject.
    pub kind: FaultKind,
    /// The node hit; `None` for restart-all (every node).
    pub target: Option<Node>,
    /// How long the fault stays active before it is healed.
    pub hold: Duration,
}

impl fmt::Display for PlannedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(t) = self.target {
            write!(f, " {t}")?;
        }
        write!(
            f,
            " after {:.1}s, held {:.1}s",
            self.gap.as_secs_f64(),
            self.hold.as_secs_f64()
        )
    }
}

/// An endless seeded generator of faults drawn from the enabled kinds.
#[derive(Clone, Debug)]
pub struct Nemesis {
    rng: SmallRng,
    kinds: Vec<FaultKind>,
    timing: Timing,
}

impl Nemesis {
    /// A generator for `kinds` (nothing is generated when it is empty).
    pub fn new(seed: u64, kinds: &[FaultKind], timing: Timing) -> Nemesis {
        Nemesis {
            // Keep the nemesis stream apart from the workload's per-client streams.
            rng: SmallRng::seed_from_u64(seed ^ 0x6E65_6D65_7369_7321),
            kinds: kinds.to_vec(),
            timing,
        }
    }

    /// The next fault, or `None` when no kind is enabled.
    pub fn next_fault(&mut self) -> Option<PlannedFault> {
        if self.kinds.is_empty() {
            return None;
        }
        let gap = self.between(self.timing.gap_min, self.timing.gap_max);
        let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
        let target = kind
            .has_target()
            .then(|| match self.rng.random_range(0..=PARTICIPANTS) {
                0 => Node::Coordinator,
                i => Node::Participant(i),
            });
        let hold = self.between(self.timing.hold_min, self.timing.hold_max);
        Some(PlannedFault {
            gap,
            kind,
            target,
            hold,
        })
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_ms = lo.as_millis() as u64;
        let hi_ms = (hi.as_millis() as u64).max(lo_ms);
        Duration::from_millis(self.rng.random_range(lo_ms..=hi_ms))
    }

    /// The nominal schedule of a run of `duration`, assuming injections and
    /// heals take no time: the faults that would start before the end.
    pub fn plan(&mut self, duration: Duration) -> Vec<PlannedFault> {
        let mut at = Duration::ZERO;
        let mut out = Vec::new();
        while let Some(f) = self.next_fault() {
            at += f.gap;
            if at >= duration {
                break;
            }
            at += f.hold;
            out.push(f);
        }
        out
    }
}

/// What happened to one fault during the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// What was injected.
    pub kind: FaultKind,
    /// The node hit; `None` for every node.
    pub target: Option<Node>,
    /// When it was injected, since the start of the run.
    pub injected: Duration,
    /// When the heal completed (the node was back), if it was healed.
    pub healed: Option<Duration>,
    /// Errors while injecting or healing, if any.
    pub errors: Vec<String>,
}

impl FaultRecord {
    /// Whether the fault was active at some time in `[from, to]`.
    pub fn overlaps(&self, from: Duration, to: Duration) -> bool {
        self.injected <= to && self.healed.is_none_or(|h| h >= from)
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        match self.target {
            Some(t) => write!(f, " {t}")?,
            None => write!(f, " (all nodes)")?,
        }
        write!(f, " at {:.3}s", self.injected.as_secs_f64())?;
        match self.healed {
            Some(h) => write!(f, ", healed at {:.3}s", h.as_secs_f64())?,
            None => write!(f, ", healed after the run")?,
        }
        for e in &self.errors {
            write!(f, " [error: {e}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemeses_parse() {
        assert_eq!(
            parse_nemeses("kill,pause,partition,restart-all"),
            Ok(FaultKind::ALL.to_vec())
        );
        assert_eq!(parse_nemeses("all"), Ok(FaultKind::ALL.to_vec()));
        assert_eq!(parse_nemeses("none"), Ok(vec![]));
        assert_eq!(
            parse_nemeses("pause, kill,pause"),
            Ok(vec![FaultKind::Kill, FaultKind::Pause])
        );
        assert!(parse_nemeses("kill,netem").is_err());
        for k in FaultKind::ALL {
            assert_eq!(k.to_string().parse(), Ok(k));
        }
    }

    #[test]
    fn schedule_is_deterministic_per_seed() {
        let kinds = FaultKind::ALL;
        let plan =
            |seed| Nemesis::new(seed, &kinds, Timing::default()).plan(Duration::from_secs(120));
        let a = plan(42);
        assert_eq!(a, plan(42));
        assert_ne!(a, plan(43));
        // About one fault every 2 + 2.5 s on average.
        assert!((15..=45).contains(&a.len()), "{} faults", a.len());
        // Every kind and every node shows up in a long enough run.
        for k in kinds {
            assert!(a.iter().any(|f| f.kind == k), "{k} never planned");
        }
        let long = Nemesis::new(42, &kinds, Timing::default()).plan(Duration::from_secs(600));
        assert_eq!(long[..a.len()], a[..], "a longer run starts the same");
        let mut targets: Vec<Node> = long.iter().filter_map(|f| f.target).collect();
        targets.sort();
        targets.dedup();
        assert_eq!(targets.len(), 6, "{targets:?}");
    }

    #[test]
    fn schedule_respects_kinds_and_bounds() {
        let t = Timing::default();
        let mut n = Nemesis::new(7, &[FaultKind::Pause, FaultKind::RestartAll], t);
        for _ in 0..500 {
            let f = n.next_fault().expect("kinds are enabled");
            assert!(matches!(f.kind, FaultKind::Pause | FaultKind::RestartAll));
            assert_eq!(f.target.is_some(), f.kind == FaultKind::Pause);
            assert!((t.gap_min..=t.gap_max).contains(&f.gap), "{f}");
            assert!((t.hold_min..=t.hold_max).contains(&f.hold), "{f}");
            if let Some(Node::Participant(i)) = f.target {
                assert!((1..=PARTICIPANTS).contains(&i));
            }
        }
        assert_eq!(Nemesis::new(7, &[], t).next_fault(), None);
        assert!(
            Nemesis::new(7, &[], t)
                .plan(Duration::from_secs(60))
                .is_empty()
        );
    }

    #[test]
    fn fault_windows_overlap() {
        let r = FaultRecord {
            kind: FaultKind::Kill,
            target: Some(Node::Participant(2)),
            injected: Duration::from_secs(10),
            healed: Some(Duration::from_secs(12)),
            errors: vec![],
        };
        let s = Duration::from_secs;
        assert!(r.overlaps(s(9), s(10)));
        assert!(r.overlaps(s(11), s(11)));
        assert!(r.overlaps(s(12), s(20)));
        assert!(!r.overlaps(s(13), s(20)));
        assert!(!r.overlaps(s(0), s(9)));
        assert_eq!(
            r.to_string(),
            "kill participant-2 at 10.000s, healed at 12.000s"
        );
    }
}
