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
//! the coordinator replicas and the five participants; a wipe hits one
//! participant; a partition-coordinator cuts one participant (a quarter of
//! the time two) off from every coordinator replica, in a direction drawn
//! uniformly from [`Cut`]; restart-all hits every node.
//!
//! The coordinator-replica kinds (kill-coordinator-leader,
//! partition-coordinator-leader, isolate-coordinator-leader,
//! wipe-coordinator; runs with three or more coordinator replicas only) hit
//! a replica that depends on who leads when
//! the fault comes: the schedule only draws a [`Pick`] (the leader; for
//! wipe-coordinator the leader half the time, else a follower by rank),
//! and the runner turns it into a replica at injection time from the
//! leader's status ([`pick_replica`]). Which replica that was, and who led
//! at the injection and after the heal, is in the [`FaultRecord`].
//!
//! Hold times are 1–4 s, so most pauses, partitions and cuts outlast the
//! 1 s lease: the coordinator drops the node from the view, and the heal
//! then waits for a real catch-up and rejoin, not just a resumed process.
//!
//! Every injection and heal is recorded in a [`FaultRecord`] with times
//! measured from the start of the run, on the same clock (to within a
//! millisecond) as the operation history, so a violation can be put next
//! to the faults around it; it also says how long each participant took to
//! answer as ready again after the heal began ([`Rejoin`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use quintet_client::local::Node;
use quintet_common::rpc::ReplicaStatus;
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
    /// Cut one or two participants off the coordinator only (both ways or
    /// one way), while clients and the other participants still reach them.
    PartitionCoordinator,
    /// Kill one participant, delete its data, start it again empty.
    Wipe,
    /// Stop every node gracefully, start them all again when healing.
    RestartAll,
    /// SIGKILL the coordinator replica that leads at injection time,
    /// restart it when healing (it rejoins as a follower).
    KillCoordinatorLeader,
    /// Cut the leading coordinator replica off from the other replicas and
    /// from every participant, both ways, while it keeps running; a
    /// majority elects another and the old one must stop granting leases.
    PartitionCoordinatorLeader,
    /// Kill a coordinator replica (the leader or a follower), delete its
    /// data, start it again empty: it must rejoin from the others.
    WipeCoordinator,
    /// Cut the leading coordinator replica off from the other replicas
    /// only, both ways: participants still reach it and it still hears
    /// them, so a deposed leader that kept granting leases would be found
    /// out here; it must stop by itself while the others elect a leader.
    IsolateCoordinatorLeader,
}

impl FaultKind {
    /// Every kind, in a fixed order (the order `--nemesis` lists sort to).
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::PartitionCoordinator,
        FaultKind::Wipe,
        FaultKind::RestartAll,
        FaultKind::KillCoordinatorLeader,
        FaultKind::PartitionCoordinatorLeader,
        FaultKind::WipeCoordinator,
        FaultKind::IsolateCoordinatorLeader,
    ];

    /// Fewest coordinator replicas a kind needs: the coordinator-replica
    /// kinds need a majority left when one replica is lost (3).
    pub fn min_coordinators(self) -> u32 {
        if self.hits_coordinator_replica() {
            3
        } else {
            1
        }
    }

    /// Whether the fault hits a coordinator replica picked at injection
    /// time (the leader, or a follower).
    pub fn hits_coordinator_replica(self) -> bool {
        matches!(
            self,
            FaultKind::KillCoordinatorLeader
                | FaultKind::PartitionCoordinatorLeader
                | FaultKind::WipeCoordinator
                | FaultKind::IsolateCoordinatorLeader
        )
    }

    /// Whether the fault hits chosen nodes (as opposed to all of them).
    pub fn has_target(self) -> bool {
        !matches!(self, FaultKind::RestartAll)
    }

    /// Whether its targets are participants only (the coordinator cannot be
    /// cut off from itself, and wiping its decision log is not survivable).
    pub fn participants_only(self) -> bool {
        matches!(self, FaultKind::PartitionCoordinator | FaultKind::Wipe)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::PartitionCoordinator => "partition-coordinator",
            FaultKind::Wipe => "wipe",
            FaultKind::RestartAll => "restart-all",
            FaultKind::KillCoordinatorLeader => "kill-coordinator-leader",
            FaultKind::PartitionCoordinatorLeader => "partition-coordinator-leader",
            FaultKind::WipeCoordinator => "wipe-coordinator",
            FaultKind::IsolateCoordinatorLeader => "isolate-coordinator-leader",
        })
    }
}

/// The kinds `--nemesis` accepts, for messages.
pub const KIND_NAMES: &str = "kill, pause, partition, partition-coordinator, wipe, restart-all, \
     kill-coordinator-leader, partition-coordinator-leader, wipe-coordinator, \
     isolate-coordinator-leader";

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultKind, String> {
        match s.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "partition-coordinator" | "partition_coordinator" => {
                Ok(FaultKind::PartitionCoordinator)
            }
            "wipe" => Ok(FaultKind::Wipe),
            "restart-all" | "restart_all" => Ok(FaultKind::RestartAll),
            "kill-coordinator-leader" | "kill_coordinator_leader" => {
                Ok(FaultKind::KillCoordinatorLeader)
            }
            "partition-coordinator-leader" | "partition_coordinator_leader" => {
                Ok(FaultKind::PartitionCoordinatorLeader)
            }
            "wipe-coordinator" | "wipe_coordinator" => Ok(FaultKind::WipeCoordinator),
            "isolate-coordinator-leader" | "isolate_coordinator_leader" => {
                Ok(FaultKind::IsolateCoordinatorLeader)
            }
            other => Err(format!(
                "unknown nemesis {other:?}: use {KIND_NAMES} (comma-separated), all or none"
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

/// Which traffic a partition-coordinator loses. A direction is a kind of
/// connection, as a firewall sees it: "coordinator to participant" is the
/// coordinator's connections to the participant's port (prepares, commits,
/// status), "participant to coordinator" the participant's connections to
/// the coordinator's port (registration, lease renewals, resolve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cut {
    /// Both kinds of connection.
    Both,
    /// Only the coordinator's connections to the participant.
    CoordinatorToParticipant,
    /// Only the participant's connections to the coordinator.
    ParticipantToCoordinator,
}

impl Cut {
    /// Every direction, in a fixed order.
    pub const ALL: [Cut; 3] = [
        Cut::Both,
        Cut::CoordinatorToParticipant,
        Cut::ParticipantToCoordinator,
    ];

    /// Whether the coordinator's connections to the participant are lost.
    pub fn to_participant(self) -> bool {
        self != Cut::ParticipantToCoordinator
    }

    /// Whether the participant's connections to the coordinator are lost.
    pub fn to_coordinator(self) -> bool {
        self != Cut::CoordinatorToParticipant
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cut::Both => "both ways",
            Cut::CoordinatorToParticipant => "coordinator->participant lost",
            Cut::ParticipantToCoordinator => "participant->coordinator lost",
        })
    }
}

/// Which coordinator replica a coordinator-replica fault hits, drawn by
/// the schedule and resolved at injection time ([`pick_replica`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pick {
    /// The replica that leads.
    Leader,
    /// A follower: the one of this rank (modulo their number) among the
    /// followers in id order.
    Follower(u32),
}

impl fmt::Display for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pick::Leader => "the leader",
            Pick::Follower(_) => "a follower",
        })
    }
}

/// The id of the replica that leads, from the replica list of a
/// coordinator status (the leader lists itself as `leader`, the others as
/// `follower`); `None` unless exactly one says leader.
pub fn leader_of(replicas: &[ReplicaStatus]) -> Option<u32> {
    let mut leaders = replicas.iter().filter(|r| r.role == "leader");
    match (leaders.next(), leaders.next()) {
        (Some(l), None) => Some(l.id),
        _ => None,
    }
}

/// The replica `pick` names in a coordinator status's replica list:
/// the leader, or the follower of that rank (modulo the number of
/// followers) in id order. `None` when there is no single leader, or no
/// follower to pick.
pub fn pick_replica(replicas: &[ReplicaStatus], pick: Pick) -> Option<u32> {
    let leader = leader_of(replicas)?;
    match pick {
        Pick::Leader => Some(leader),
        Pick::Follower(rank) => {
            let mut followers: Vec<u32> = replicas
                .iter()
                .map(|r| r.id)
                .filter(|&id| id != leader)
                .collect();
            followers.sort_unstable();
            followers.dedup();
            let n = followers.len() as u32;
            (n > 0).then(|| followers[(rank % n) as usize])
        }
    }
}

/// What a backend does: a kind of fault, where, and (for a cut) which way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What to inject.
    pub kind: FaultKind,
    /// The nodes hit; empty for restart-all (every node), and for a
    /// coordinator-replica kind until its pick is resolved.
    pub targets: Vec<Node>,
    /// Which way a partition-coordinator loses traffic; `None` for the other kinds.
    pub cut: Option<Cut>,
    /// Which coordinator replica a coordinator-replica kind hits; `None`
    /// for the other kinds.
    pub pick: Option<Pick>,
}

impl Fault {
    /// A fault of `kind` at one node.
    pub fn at(kind: FaultKind, node: Node) -> Fault {
        Fault {
            kind,
            targets: vec![node],
            cut: (kind == FaultKind::PartitionCoordinator).then_some(Cut::Both),
            pick: kind.hits_coordinator_replica().then_some(Pick::Leader),
        }
    }

    /// The targets, comma-separated, or `all nodes` (or the pick, not yet
    /// resolved: `the leader`, `a follower`).
    pub fn target_names(&self) -> String {
        if self.targets.is_empty() {
            match self.pick {
                Some(p) => p.to_string(),
                None => "all nodes".to_string(),
            }
        } else {
            self.targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.target_names())?;
        if let Some(c) = self.cut {
            write!(f, " ({c})")?;
        }
        // Only a wipe-coordinator can hit either; the others name the leader.
        if let (FaultKind::WipeCoordinator, Some(p), false) =
            (self.kind, self.pick, self.targets.is_empty())
        {
            write!(
                f,
                " ({})",
                if p == Pick::Leader {
                    "leader"
                } else {
                    "follower"
                }
            )?;
        }
        Ok(())
    }
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

/// One fault to run: wait `gap`, inject `fault`, hold, heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// Quiet time before the injection, from the previous heal.
    pub gap: Duration,
    /// What to inject, where.
    pub fault: Fault,
    /// How long the fault stays active before it is healed.
    pub hold: Duration,
}

impl fmt::Display for PlannedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} after {:.1}s, held {:.1}s",
            self.fault,
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
    coordinators: u32,
}

impl Nemesis {
    /// A generator for `kinds` (nothing is generated when it is empty).
    pub fn new(seed: u64, kinds: &[FaultKind], timing: Timing) -> Nemesis {
        Nemesis {
            // Keep the nemesis stream apart from the workload's per-client streams.
            rng: SmallRng::seed_from_u64(seed ^ 0x6E65_6D65_7369_7321),
            kinds: kinds.to_vec(),
            timing,
            coordinators: 1,
        }
    }

    /// The same for a cluster of `n` coordinator replicas (1 by default):
    /// kill, pause and partition draw from all of them, and a
    /// wipe-coordinator follower rank from the `n - 1` followers. With one
    /// replica the schedule is the one `new` gives.
    pub fn with_coordinators(mut self, n: u32) -> Nemesis {
        self.coordinators = n.max(1);
        self
    }

    /// The next fault, or `None` when no kind is enabled.
    pub fn next_fault(&mut self) -> Option<PlannedFault> {
        if self.kinds.is_empty() {
            return None;
        }
        let gap = self.between(self.timing.gap_min, self.timing.gap_max);
        let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
        let mut targets = Vec::new();
        let mut cut = None;
        let mut pick = None;
        if kind.hits_coordinator_replica() {
            pick = Some(
                if kind == FaultKind::WipeCoordinator && self.rng.random_range(0..2) == 1 {
                    Pick::Follower(self.rng.random_range(0..(self.coordinators - 1).max(1)))
                } else {
                    Pick::Leader
                },
            );
        } else if kind.participants_only() {
            let first = self.rng.random_range(1..=PARTICIPANTS);
            targets.push(Node::Participant(first));
            if kind == FaultKind::PartitionCoordinator {
                if self.rng.random_range(0..4) == 0 {
                    // A second one, different from the first.
                    let second =
                        (first + self.rng.random_range(1..PARTICIPANTS) - 1) % PARTICIPANTS + 1;
                    targets.push(Node::Participant(second));
                    targets.sort();
                }
                cut = Some(Cut::ALL[self.rng.random_range(0..Cut::ALL.len())]);
            }
        } else if kind.has_target() {
            // Coordinator replicas first: with one, 0 is the coordinator.
            let n = self.coordinators;
            targets.push(match self.rng.random_range(0..=PARTICIPANTS + n - 1) {
                i if i < n => Node::Coordinator(i + 1),
                i => Node::Participant(i - n + 1),
            });
        }
        let hold = self.between(self.timing.hold_min, self.timing.hold_max);
        Some(PlannedFault {
            gap,
            fault: Fault {
                kind,
                targets,
                cut,
                pick,
            },
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

/// How long one node took, from the start of a heal, to answer `health`
/// as ready again: for a participant, to be a member holding a lease, i.e.
/// caught up and rejoined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejoin {
    /// The node brought back.
    pub node: Node,
    /// From the start of the heal (restart, resume, reconnect) to ready.
    pub after: Duration,
}

/// What happened to one fault during the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// What was injected, where (a pick resolved to its replica).
    pub fault: Fault,
    /// The coordinator replica that led just before the injection, when
    /// the run has several and one could be found.
    pub leader_before: Option<Node>,
    /// The one that led once the heal was done, likewise.
    pub leader_after: Option<Node>,
    /// When it was injected, since the start of the run.
    pub injected: Duration,
    /// When the heal completed (the node was back), if it was healed.
    pub healed: Option<Duration>,
    /// How long each node the heal brought back took to be ready again.
    pub rejoins: Vec<Rejoin>,
    /// Errors while injecting or healing, if any.
    pub errors: Vec<String>,
}

impl FaultRecord {
    /// The kind of fault.
    pub fn kind(&self) -> FaultKind {
        self.fault.kind
    }

    /// Whether the fault was active at some time in `[from, to]`.
    pub fn overlaps(&self, from: Duration, to: Duration) -> bool {
        self.injected <= to && self.healed.is_none_or(|h| h >= from)
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {:.3}s", self.fault, self.injected.as_secs_f64())?;
        match self.healed {
            Some(h) => write!(f, ", healed at {:.3}s", h.as_secs_f64())?,
            None => write!(f, ", healed after the run")?,
        }
        match (self.leader_before, self.leader_after) {
            (Some(b), Some(a)) if a == b => write!(f, " (leader {b})")?,
            (Some(b), Some(a)) => write!(f, " (leader {b}, then {a})")?,
            (Some(b), None) => write!(f, " (leader {b} before)")?,
            (None, Some(a)) => write!(f, " (leader {a} after)")?,
            (None, None) => {}
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
            parse_nemeses("kill,pause,partition,partition-coordinator,wipe,restart-all"),
            Ok(FaultKind::ALL[..6].to_vec())
        );
        assert_eq!(
            parse_nemeses(
                "wipe-coordinator,kill-coordinator-leader,partition-coordinator-leader,kill"
            ),
            Ok(vec![
                FaultKind::Kill,
                FaultKind::KillCoordinatorLeader,
                FaultKind::PartitionCoordinatorLeader,
                FaultKind::WipeCoordinator
            ])
        );
        assert_eq!(
            parse_nemeses("isolate-coordinator-leader,kill-coordinator-leader"),
            Ok(vec![
                FaultKind::KillCoordinatorLeader,
                FaultKind::IsolateCoordinatorLeader
            ])
        );
        assert!(FaultKind::IsolateCoordinatorLeader.hits_coordinator_replica());
        assert!(parse_nemeses("isolate-coordinator").is_err());
        assert_eq!(parse_nemeses("all"), Ok(FaultKind::ALL.to_vec()));
        // Only the coordinator-replica kinds need several replicas.
        for k in FaultKind::ALL {
            assert_eq!(
                k.min_coordinators(),
                if k.hits_coordinator_replica() { 3 } else { 1 },
                "{k}"
            );
        }
        assert!(parse_nemeses("kill-coordinator").is_err());
        assert!(parse_nemeses("all").is_ok_and(|k| {
            k.contains(&FaultKind::PartitionCoordinator) && k.contains(&FaultKind::Wipe)
        }));
        assert_eq!(parse_nemeses("none"), Ok(vec![]));
        assert_eq!(
            parse_nemeses("pause, kill,pause"),
            Ok(vec![FaultKind::Kill, FaultKind::Pause])
        );
        assert_eq!(
            parse_nemeses("wipe,restart-all,partition-coordinator,kill"),
            Ok(vec![
                FaultKind::Kill,
                FaultKind::PartitionCoordinator,
                FaultKind::Wipe,
                FaultKind::RestartAll
            ])
        );
        assert!(parse_nemeses("kill,netem").is_err());
        assert!(parse_nemeses("partition-coord").is_err());
        let err = parse_nemeses("flood").expect_err("unknown kind");
        assert!(
            err.contains("partition-coordinator")
                && err.contains("wipe-coordinator")
                && err.contains("isolate-coordinator-leader"),
            "{err}"
        );
        for k in FaultKind::ALL {
            assert_eq!(k.to_string().parse(), Ok(k));
        }
    }

    #[test]
    fn schedule_is_deterministic_per_seed() {
        // The kinds a single coordinator runs; the replica kinds have their own test.
        let kinds: [FaultKind; 6] = FaultKind::ALL[..6].try_into().expect("six kinds");
        let plan =
            |seed| Nemesis::new(seed, &kinds, Timing::default()).plan(Duration::from_secs(120));
        let a = plan(42);
        assert_eq!(a, plan(42));
        assert_ne!(a, plan(43));
        // About one fault every 2 + 2.5 s on average.
        assert!((15..=45).contains(&a.len()), "{} faults", a.len());
        let long = Nemesis::new(42, &kinds, Timing::default()).plan(Duration::from_secs(600));
        assert_eq!(long[..a.len()], a[..], "a longer run starts the same");
        // Every kind, every node and every direction shows up in a long run.
        for k in kinds {
            assert!(long.iter().any(|f| f.fault.kind == k), "{k} never planned");
        }
        let mut targets: Vec<Node> = long.iter().flat_map(|f| f.fault.targets.clone()).collect();
        targets.sort();
        targets.dedup();
        assert_eq!(targets.len(), 6, "{targets:?}");
        for c in Cut::ALL {
            assert!(
                long.iter().any(|f| f.fault.cut == Some(c)),
                "{c} never planned"
            );
        }
        assert!(
            long.iter().any(|f| f.fault.targets.len() == 2),
            "no cut of two participants planned"
        );
    }

    #[test]
    fn schedule_respects_kinds_and_bounds() {
        let t = Timing::default();
        let mut n = Nemesis::new(7, &[FaultKind::Pause, FaultKind::RestartAll], t);
        for _ in 0..500 {
            let f = n.next_fault().expect("kinds are enabled");
            assert!(matches!(
                f.fault.kind,
                FaultKind::Pause | FaultKind::RestartAll
            ));
            assert_eq!(
                f.fault.targets.len(),
                usize::from(f.fault.kind == FaultKind::Pause)
            );
            assert_eq!(f.fault.cut, None);
            assert!((t.gap_min..=t.gap_max).contains(&f.gap), "{f}");
            assert!((t.hold_min..=t.hold_max).contains(&f.hold), "{f}");
            for t in &f.fault.targets {
                if let Node::Participant(i) = t {
                    assert!((1..=PARTICIPANTS).contains(i));
                }
            }
        }
        // The new kinds hit participants only; a cut always says which way,
        // and two targets are two different participants.
        let mut n = Nemesis::new(9, &[FaultKind::PartitionCoordinator, FaultKind::Wipe], t);
        for _ in 0..500 {
            let f = n.next_fault().expect("kinds are enabled");
            assert!(!f.fault.targets.is_empty(), "{f}");
            assert!(
                f.fault
                    .targets
                    .iter()
                    .all(|t| matches!(t, Node::Participant(i) if (1..=PARTICIPANTS).contains(i))),
                "{f}"
            );
            match f.fault.kind {
                FaultKind::Wipe => {
                    assert_eq!(f.fault.targets.len(), 1, "{f}");
                    assert_eq!(f.fault.cut, None, "{f}");
                }
                _ => {
                    assert!(f.fault.cut.is_some(), "{f}");
                    assert!(f.fault.targets.len() <= 2, "{f}");
                    assert!(f.fault.targets.windows(2).all(|w| w[0] < w[1]), "{f}");
                }
            }
            // Held past the 1 s lease at least some of the time, never below it.
            assert!(f.hold >= Duration::from_secs(1), "{f}");
        }
        assert_eq!(Nemesis::new(7, &[], t).next_fault(), None);
        assert!(
            Nemesis::new(7, &[], t)
                .plan(Duration::from_secs(60))
                .is_empty()
        );
    }

    #[test]
    fn faults_describe_themselves() {
        let f = Fault {
            kind: FaultKind::PartitionCoordinator,
            targets: vec![Node::Participant(2), Node::Participant(4)],
            cut: Some(Cut::ParticipantToCoordinator),
            pick: None,
        };
        assert_eq!(
            f.to_string(),
            "partition-coordinator participant-2,participant-4 (participant->coordinator lost)"
        );
        assert!(Cut::Both.to_coordinator() && Cut::Both.to_participant());
        assert!(!Cut::CoordinatorToParticipant.to_coordinator());
        assert!(!Cut::ParticipantToCoordinator.to_participant());
        let all = Fault {
            kind: FaultKind::RestartAll,
            targets: vec![],
            cut: None,
            pick: None,
        };
        assert_eq!(all.to_string(), "restart-all all nodes");
        assert_eq!(
            Fault::at(FaultKind::Wipe, Node::Participant(3)).to_string(),
            "wipe participant-3"
        );
        // A pick reads as such until resolved, then as the replica.
        let mut w = Fault {
            kind: FaultKind::WipeCoordinator,
            targets: vec![],
            cut: None,
            pick: Some(Pick::Follower(1)),
        };
        assert_eq!(w.to_string(), "wipe-coordinator a follower");
        w.targets = vec![Node::Coordinator(3)];
        assert_eq!(w.to_string(), "wipe-coordinator coordinator-3 (follower)");
        let k = Fault::at(FaultKind::KillCoordinatorLeader, Node::Coordinator(1));
        assert_eq!(k.pick, Some(Pick::Leader));
        assert_eq!(k.to_string(), "kill-coordinator-leader coordinator");
    }

    fn replica(id: u32, role: &str) -> ReplicaStatus {
        ReplicaStatus {
            id,
            address: format!("127.0.0.1:{}", 7700 + 10 * (id - 1)),
            reachable: true,
            role: role.into(),
            term: 4,
            applied: 17,
        }
    }

    #[test]
    fn the_leader_and_a_follower_are_picked_from_a_status() {
        let s = vec![
            replica(1, "follower"),
            replica(2, "leader"),
            replica(3, "follower"),
        ];
        assert_eq!(leader_of(&s), Some(2));
        assert_eq!(pick_replica(&s, Pick::Leader), Some(2));
        // Followers by rank in id order, the rank wrapping around.
        assert_eq!(pick_replica(&s, Pick::Follower(0)), Some(1));
        assert_eq!(pick_replica(&s, Pick::Follower(1)), Some(3));
        assert_eq!(pick_replica(&s, Pick::Follower(2)), Some(1));
        // Out of order in the list: same answer.
        let shuffled = vec![s[2].clone(), s[0].clone(), s[1].clone()];
        assert_eq!(pick_replica(&shuffled, Pick::Follower(0)), Some(1));
        assert_eq!(leader_of(&shuffled), Some(2));
        // No leader, or two claiming it: nothing is picked.
        let none = vec![replica(1, "follower"), replica(2, "follower")];
        assert_eq!(leader_of(&none), None);
        assert_eq!(pick_replica(&none, Pick::Follower(0)), None);
        let two = vec![replica(1, "leader"), replica(2, "leader")];
        assert_eq!(leader_of(&two), None);
        assert_eq!(leader_of(&[]), None);
        // A lone leader has no follower to pick.
        let lone = vec![replica(1, "leader")];
        assert_eq!(pick_replica(&lone, Pick::Leader), Some(1));
        assert_eq!(pick_replica(&lone, Pick::Follower(0)), None);
    }

    #[test]
    fn schedule_with_coordinator_replicas() {
        let t = Timing::default();
        // One replica: the same schedule as without saying so.
        let kinds = FaultKind::ALL;
        assert_eq!(
            Nemesis::new(5, &kinds, t).plan(Duration::from_secs(300)),
            Nemesis::new(5, &kinds, t)
                .with_coordinators(1)
                .plan(Duration::from_secs(300))
        );
        let long = Nemesis::new(5, &kinds, t)
            .with_coordinators(3)
            .plan(Duration::from_secs(1200));
        let mut hit: Vec<Node> = long
            .iter()
            .filter(|f| f.fault.kind == FaultKind::Kill)
            .flat_map(|f| f.fault.targets.clone())
            .collect();
        hit.sort();
        hit.dedup();
        assert_eq!(
            hit.len(),
            8,
            "kill hits every replica and participant: {hit:?}"
        );
        let mut picks = Vec::new();
        for f in &long {
            if f.fault.kind.hits_coordinator_replica() {
                // Resolved at injection time: no target yet.
                assert!(f.fault.targets.is_empty(), "{f}");
                let p = f.fault.pick.expect("a pick");
                if f.fault.kind != FaultKind::WipeCoordinator {
                    assert_eq!(p, Pick::Leader, "{f}");
                }
                if f.fault.kind == FaultKind::WipeCoordinator {
                    picks.push(p);
                }
            } else {
                assert_eq!(f.fault.pick, None, "{f}");
            }
        }
        picks.sort();
        picks.dedup();
        assert_eq!(
            picks,
            [Pick::Leader, Pick::Follower(0), Pick::Follower(1)],
            "wipe-coordinator picks the leader and both followers"
        );
    }

    #[test]
    fn fault_windows_overlap() {
        let mut r = FaultRecord {
            fault: Fault::at(FaultKind::Kill, Node::Participant(2)),
            leader_before: None,
            leader_after: None,
            injected: Duration::from_secs(10),
            healed: Some(Duration::from_secs(12)),
            rejoins: vec![],
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
        r.leader_before = Some(Node::Coordinator(2));
        r.leader_after = Some(Node::Coordinator(3));
        assert!(
            r.to_string()
                .ends_with("(leader coordinator-2, then coordinator-3)"),
            "{r}"
        );
    }
}
