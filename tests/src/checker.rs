//! Linearizability checker for recorded histories.
//!
//! # What is checked
//!
//! Invariant 3 of the design: every client-visible history is linearizable.
//! Linearizability is local (Herlihy & Wing), so each key is checked on its
//! own against a sequential **register model** with put, get and delete. The
//! model state is `Option<(value, version)>`, initially absent (a history
//! must start from an empty store). In one valid order (a *linearization*):
//!
//! - a put sets the value; a delete removes it, and its `deleted` flag must
//!   say whether the key existed; a get must return the current value
//!   (`found = false` when absent);
//! - a get that returns a version must return the version of the put that
//!   wrote the value; the version reported for an absent key is not checked
//!   (it may be the deleting write's or 0);
//! - writes whose version is known are ordered by increasing version
//!   (versions are global, gap-free, never reused: the coordinator's order
//!   *is* the commit order). Across keys, a version reported by two writes is
//!   reported as well.
//!
//! Timing: an `Ok` operation takes effect at one instant between its
//! invocation and its completion. A `Failed` operation never takes effect and
//! is dropped, as is any `Unknown` get (it observed nothing). An `Unknown`
//! write may take effect at any instant **after its invocation with no upper
//! bound**, or never: the request may sit in a queue, be prepared and
//! committed long after the client timed out, or be resolved by a recovering
//! coordinator seconds later. Giving it the client's give-up time as a
//! deadline would report false violations. Equal timestamps count as
//! concurrent (microsecond clocks tie).
//!
//! The checker relies on **values written by puts being unique per run** (the
//! workload guarantees it): a read then names the put it observed, which
//! lets the checker (1) reject reads of values no surviving put wrote
//! (including values of failed puts) before searching, (2) learn the version
//! of an unknown put from a read of its value, and (3) drop unknown writes
//! that cannot matter (an unknown put whose value nobody read, when no delete
//! reported `deleted = true`; an unknown delete, when nothing observed
//! absence). If values repeat, these shortcuts are skipped where ambiguous
//! and the search still compares values, so the result stays sound.
//!
//! # How
//!
//! A Wing & Gong / Lowe style depth-first search over *configurations*: the
//! set of operations already linearized plus the register state. From a
//! configuration, an operation may go next if it is not linearized yet and
//! was invoked no later than the earliest completion among the pending `Ok`
//! operations (the one that must take effect first at the latest). The
//! search succeeds once every `Ok` operation is linearized; unknown ones left
//! over simply never took effect.
//!
//! Configurations are memoized, as Porcupine and Knossos do: the future of
//! the search depends only on *which* operations are linearized (a bitset)
//! and on the current state, not on the order that led there, so a
//! configuration reached twice is explored once. The version high-water mark
//! is a function of the set and needs no slot in the key. The bitset is
//! stored relative to the first unlinearized `Ok` operation, so a key is
//! small however long the history is.
//!
//! Unknown writes are what makes this expensive: with no deadline, each
//! could be placed at any point or nowhere, and the memo would hold every
//! subset of them. But such a write matters only through what a later
//! operation observes, so any linearization can be rewritten (moving the
//! write later, or dropping it) into one where it takes effect *just in
//! time*, immediately before its observer. The search therefore only tries:
//! an unknown put right before a pending read of its value; an unknown put
//! whose value nobody read right before a delete that reported
//! `deleted = true`; an unknown delete right before an operation that
//! observed absence. Unread puts are interchangeable among themselves, and
//! so are unknown deletes, so the earliest-invoked unused one is taken and
//! only *how many* were used is state. A configuration is also skipped when
//! one with the same set and state but no more of them used already failed.
//!
//! Two more prunings keep ordinary histories near-linear: a pending `Ok` get
//! that is legal in the current state is linearized at once without
//! branching (it changes nothing, and every other pending operation
//! completes no earlier than the get was invoked, so moving it first never
//! breaks an order); and `Ok` writes with known versions only go in version
//! order. A unit test checks the whole search against a brute-force
//! enumeration of orders on thousands of tiny random histories.
//!
//! A search budget (states per key) turns a pathological key into an
//! **inconclusive** result instead of a hang. Inconclusive is not a pass.
//!
//! On failure the report names the operation that could not be linearized
//! (the pending `Ok` operation with the earliest completion, in the deepest
//! configuration the search reached), why, the state at that point and the
//! write that produced it, and the operations concurrent with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::history::{Event, FINAL_READ_CLIENT, History, Op, Outcome, short};

/// Default search budget: configurations explored per key before giving up.
pub const DEFAULT_MAX_STATES: usize = 500_000;

/// Most concurrent operations listed in one violation.
const MAX_LISTED: usize = 12;

/// Operations shown from the end of the deepest order found.
const TAIL: usize = 4;

/// One replica's final view of one key: `(replica, key, Some((value, version)) or None if absent)`.
pub type FinalRead = (u32, String, Option<(String, u64)>);

/// Tuning of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Configurations explored per key before the key is declared inconclusive.
    pub max_states_per_key: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_states_per_key: DEFAULT_MAX_STATES,
        }
    }
}

/// The result for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists (see the violation).
    NotLinearizable,
    /// The search budget ran out; nothing is proven.
    Inconclusive,
    /// Some event of the key is malformed, so the key was not searched.
    Malformed,
}

/// Per-key summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations that took part in the search.
    pub ops: usize,
    /// Operations left out: failed ones, unknown gets, unknown writes that cannot matter.
    pub dropped: usize,
    /// Configurations explored.
    pub states: usize,
    /// The result.
    pub verdict: Verdict,
}

/// What kind of problem a [`Violation`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// The history of the key is not linearizable (or versions contradict it).
    NotLinearizable,
    /// The search budget ran out before an answer.
    Inconclusive,
    /// An event is malformed (a workload bug, not a store bug).
    Malformed,
}

/// One problem found, naming the key and the operations involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// What kind of problem.
    pub kind: ViolationKind,
    /// Ids of the operations involved, the culprit first.
    pub ops: Vec<u64>,
    /// One readable paragraph explaining it (without the key).
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ViolationKind::NotLinearizable => "not linearizable",
            ViolationKind::Inconclusive => "inconclusive",
            ViolationKind::Malformed => "malformed history",
        };
        write!(f, "key {}: {what}: {}", short(&self.key), self.message)
    }
}

/// The result of checking a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per key, in key order.
    pub keys: Vec<KeyReport>,
    /// Violations found (not linearizable, malformed, reused versions).
    pub violations: Vec<Violation>,
    /// Keys whose search ran out of budget; not a pass.
    pub inconclusive: Vec<Violation>,
}

impl Report {
    /// True only if every key was proven linearizable and nothing else was wrong.
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }

    /// Number of keys with the given verdict.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.keys.iter().filter(|k| k.verdict == verdict).count()
    }
}

impl fmt::Display for Report {
    /// A summary line, then one paragraph per violation and inconclusive key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: usize = self.keys.iter().map(|k| k.ops).sum();
        let dropped: usize = self.keys.iter().map(|k| k.dropped).sum();
        write!(
            f,
            "linearizability: {} keys, {ops} ops searched ({dropped} dropped): \
             {} linearizable, {} not linearizable, {} inconclusive, {} malformed; {} violations",
            self.keys.len(),
            self.count(Verdict::Linearizable),
            self.count(Verdict::NotLinearizable),
            self.count(Verdict::Inconclusive),
            self.count(Verdict::Malformed),
            self.violations.len(),
        )?;
        for v in self.violations.iter().chain(&self.inconclusive) {
            write!(f, "\n- {v}")?;
        }
        Ok(())
    }
}

/// Checks every key of `h` with the default budget.
pub fn check_history(h: &History) -> Report {
    check_history_with(h, &CheckOptions::default())
}

/// Checks every key of `h` with the given options.
pub fn check_history_with(h: &History, opts: &CheckOptions) -> Report {
    let events: Vec<&Event> = h.events.iter().collect();
    let mut report = check_events(&events, None, opts);
    report.violations.extend(reused_versions(&events));
    report
}

/// Checks that each replica's final `(replica, key, value-and-version)` is explained by `h`.
///
/// For every key in `finals`, one get per replica is appended, invoked after
/// every operation of the history completed (the reads are concurrent with
/// each other), and the key is checked again. A lost acknowledged write, a
/// failed write that was applied, or a replica left behind all show up here.
/// Violations of the key's history itself are reported too, and a key whose
/// search ran out of budget is returned as an [`ViolationKind::Inconclusive`]
/// violation, since it is not shown to be explained.
pub fn check_final_state(h: &History, finals: &[FinalRead]) -> Vec<Violation> {
    let report = check_final_state_with(h, finals, &CheckOptions::default());
    report
        .violations
        .into_iter()
        .chain(report.inconclusive)
        .collect()
}

/// Like [`check_final_state`], with options and the full per-key report.
pub fn check_final_state_with(h: &History, finals: &[FinalRead], opts: &CheckOptions) -> Report {
    let first_id = h.events.iter().map(|e| e.id).max().map_or(0, |m| m + 1);
    let at = h.end_us() + 1;
    let reads: Vec<Event> = finals
        .iter()
        .enumerate()
        .map(|(i, (replica, key, value))| Event {
            id: first_id + i as u64,
            client: FINAL_READ_CLIENT,
            replica: Some(*replica),
            key: key.clone(),
            op: Op::Get,
            invoke_us: at,
            complete_us: at + 1,
            outcome: Outcome::Ok,
            found: Some(value.is_some()),
            value: value.as_ref().map(|(v, _)| v.clone()),
            deleted: None,
            version: value.as_ref().map(|(_, ver)| *ver),
        })
        .collect();
    let keys: BTreeSet<&str> = finals.iter().map(|(_, k, _)| k.as_str()).collect();
    let events: Vec<&Event> = h.events.iter().chain(&reads).collect();
    check_events(&events, Some(&keys), opts)
}

/// Validates `events`, then checks each key (all keys, or only those in `only`).
fn check_events(events: &[&Event], only: Option<&BTreeSet<&str>>, opts: &CheckOptions) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        if only.is_none_or(|keys| keys.contains(e.key.as_str())) {
            by_key.entry(e.key.as_str()).or_default().push(e);
        }
    }
    // Malformed events and duplicate ids, per key.
    let mut problems: BTreeMap<&str, Vec<(&Event, String)>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for e in events {
        if !seen.insert(e.id) {
            problems
                .entry(e.key.as_str())
                .or_default()
                .push((e, "its id is used by another event".into()));
        }
        if let Some(why) = malformed(e) {
            problems.entry(e.key.as_str()).or_default().push((e, why));
        }
    }

    let mut report = Report::default();
    for (key, evs) in by_key {
        if let Some(list) = problems.get(key) {
            let ops = list.iter().map(|(e, _)| e.id).collect();
            let parts: Vec<String> = list
                .iter()
                .take(MAX_LISTED)
                .map(|(e, why)| format!("{e}: {why}"))
                .collect();
            report.violations.push(Violation {
                key: key.to_string(),
                kind: ViolationKind::Malformed,
                ops,
                message: format!(
                    "not checked because of {} bad event(s): {}.",
                    list.len(),
                    parts.join("; ")
                ),
            });
            report.keys.push(KeyReport {
                key: key.to_string(),
                ops: 0,
                dropped: evs.len(),
                states: 0,
                verdict: Verdict::Malformed,
            });
            continue;
        }
        let (kr, violation) = check_key(key, &evs, opts);
        match (kr.verdict, violation) {
            (Verdict::Inconclusive, Some(v)) => report.inconclusive.push(v),
            (_, Some(v)) => report.violations.push(v),
            (_, None) => {}
        }
        report.keys.push(kr);
    }
    report
}

/// Why an event cannot be checked, if it cannot.
fn malformed(e: &Event) -> Option<String> {
    if e.complete_us < e.invoke_us {
        return Some("it completed before it was invoked".into());
    }
    if e.outcome == Outcome::Ok && e.op == Op::Get {
        match (e.found, &e.value) {
            (None, _) => return Some("an ok get without `found`".into()),
            (Some(true), None) => return Some("an ok get with found=true but no value".into()),
            (Some(false), Some(_)) => return Some("an ok get with found=false and a value".into()),
            _ => {}
        }
    }
    None
}

/// Versions reported by two different `Ok` writes (versions are never reused).
fn reused_versions(events: &[&Event]) -> Vec<Violation> {
    let mut first: HashMap<u64, &Event> = HashMap::new();
    let mut out = Vec::new();
    for e in events {
        let (true, Outcome::Ok, Some(v)) = (e.is_write(), e.outcome, e.version) else {
            continue;
        };
        if let Some(prev) = first.get(&v) {
            out.push(Violation {
                key: e.key.clone(),
                kind: ViolationKind::NotLinearizable,
                ops: vec![e.id, prev.id],
                message: format!(
                    "version {v} was reported by two writes, {e} and {prev} (key {}); \
                     versions are never reused.",
                    short(&prev.key)
                ),
            });
        } else {
            first.insert(v, e);
        }
    }
    out
}

/// Marks "no operation": an absent key, or no constraint.
const NONE: u32 = u32::MAX;

/// An operation as the search sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Writes the interned value.
    Put { val: u32 },
    /// Read the interned value, or `None` for not found.
    Get { read: Option<u32> },
    /// Removed the key; `deleted` is the reported flag, if any.
    Delete { deleted: Option<bool> },
}

/// One operation of a key, prepared for the search.
#[derive(Debug, Clone)]
struct KOp<'a> {
    ev: &'a Event,
    kind: Kind,
    /// Writes: the version if known (or learned from a read). Gets: the version returned.
    version: Option<u64>,
    /// The read a learned version of an unknown put came from.
    learned_from: Option<u64>,
    invoke: u64,
    /// `u64::MAX` for unknown operations: no deadline.
    complete: u64,
    unknown: bool,
    /// Its role in the search.
    class: Class,
}

/// The role of an operation in the search.
///
/// Unknown writes have no deadline, so a naive search may place each of
/// them at any point or nowhere, which is exponential in their number. But
/// an unknown write only matters through what a later operation observes,
/// so it may as well take effect immediately before that operation (a
/// *just-in-time* normal form: any linearization can be rewritten into one
/// where this holds, by moving the write later or dropping it):
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Completed ok: takes effect within its interval.
    Ok,
    /// Unknown put whose value a read returned, and no other put wrote: it
    /// goes right before a pending read of its value, or not at all.
    Read,
    /// Unknown put of a value another put also wrote: no shortcut.
    Free,
    /// Unknown put whose value nobody read: it goes right before a delete
    /// that reported `deleted = true`. Such puts are interchangeable, so the
    /// earliest-invoked unused one is taken and only their count is state.
    Unread,
    /// Unknown delete: goes right before an operation that observed
    /// absence. Interchangeable likewise; only their count is state.
    Delete,
}

impl KOp<'_> {
    fn is_write(&self) -> bool {
        !matches!(self.kind, Kind::Get { .. })
    }

    /// Whether the recorded intervals overlap (for unknown operations, up to
    /// when the client gave up, which keeps the listing of long-gone
    /// timeouts out of messages).
    fn overlaps(&self, other: &KOp<'_>) -> bool {
        self.invoke <= other.ev.complete_us && other.invoke <= self.ev.complete_us
    }

    fn describe(&self) -> String {
        match (self.learned_from, self.version) {
            (Some(g), Some(v)) => format!("{} (took effect as v{v}, per #{g})", self.ev),
            _ => self.ev.to_string(),
        }
    }
}

/// Interns a value, returning its small id.
fn intern<'a>(table: &mut HashMap<&'a str, u32>, s: &'a str) -> u32 {
    let next = table.len() as u32;
    *table.entry(s).or_insert(next)
}

/// Checks one key: preparation, value-level checks, then the search.
fn check_key<'a>(
    key: &str,
    events: &[&'a Event],
    opts: &CheckOptions,
) -> (KeyReport, Option<Violation>) {
    let mut report = KeyReport {
        key: key.to_string(),
        ops: 0,
        dropped: 0,
        states: 0,
        verdict: Verdict::Linearizable,
    };
    let mut interned: HashMap<&'a str, u32> = HashMap::new();
    let mut failed_puts: HashMap<&'a str, Vec<&'a Event>> = HashMap::new();
    let mut ops: Vec<KOp<'a>> = Vec::new();
    for &e in events {
        match (e.outcome, &e.op) {
            (Outcome::Failed, Op::Put { value }) => {
                failed_puts.entry(value.as_str()).or_default().push(e);
                report.dropped += 1;
                continue;
            }
            (Outcome::Failed, _) | (Outcome::Unknown, Op::Get) => {
                report.dropped += 1;
                continue;
            }
            _ => {}
        }
        let ok = e.outcome == Outcome::Ok;
        let kind = match &e.op {
            Op::Put { value } => Kind::Put {
                val: intern(&mut interned, value),
            },
            Op::Get => Kind::Get {
                read: match (e.found, e.value.as_deref()) {
                    (Some(true), Some(v)) => Some(intern(&mut interned, v)),
                    _ => None,
                },
            },
            Op::Delete => Kind::Delete {
                deleted: if ok { e.deleted } else { None },
            },
        };
        ops.push(KOp {
            ev: e,
            kind,
            version: if ok { e.version } else { None },
            learned_from: None,
            invoke: e.invoke_us,
            complete: if ok { e.complete_us } else { u64::MAX },
            unknown: !ok,
            class: Class::Ok,
        });
    }

    // Unknown writes that cannot matter (see the module docs) are dropped.
    let observed: HashSet<u32> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Get { read } => read,
            _ => None,
        })
        .collect();
    let absence_seen = ops.iter().any(|o| {
        matches!(
            o.kind,
            Kind::Get { read: None }
                | Kind::Delete {
                    deleted: Some(false)
                }
        )
    });
    let presence_needed = ops.iter().any(|o| {
        matches!(
            o.kind,
            Kind::Delete {
                deleted: Some(true)
            }
        )
    });
    let before = ops.len();
    ops.retain(|o| {
        !o.unknown
            || match o.kind {
                Kind::Put { val } => presence_needed || observed.contains(&val),
                Kind::Delete { .. } => absence_seen,
                Kind::Get { .. } => false,
            }
    });
    report.dropped += before - ops.len();
    report.ops = ops.len();

    if let Some((ids, message)) = value_checks(&mut ops, &failed_puts) {
        report.verdict = Verdict::NotLinearizable;
        let violation = Violation {
            key: key.to_string(),
            kind: ViolationKind::NotLinearizable,
            ops: ids,
            message,
        };
        return (report, Some(violation));
    }

    let mut puts_of: HashMap<u32, usize> = HashMap::new();
    for o in &ops {
        if let Kind::Put { val } = o.kind {
            *puts_of.entry(val).or_default() += 1;
        }
    }
    for o in ops.iter_mut().filter(|o| o.unknown) {
        o.class = match o.kind {
            Kind::Put { val } if !observed.contains(&val) => Class::Unread,
            Kind::Put { val } if puts_of.get(&val) == Some(&1) => Class::Read,
            Kind::Put { .. } | Kind::Get { .. } => Class::Free,
            Kind::Delete { .. } => Class::Delete,
        };
    }
    ops.sort_by_key(|o| (o.class, o.invoke, o.complete, o.ev.id));
    let search = Search::new(ops);
    let (end, states) = search.run(opts.max_states_per_key);
    report.states = states;
    match end {
        End::Pass => (report, None),
        End::Budget => {
            report.verdict = Verdict::Inconclusive;
            let violation = Violation {
                key: key.to_string(),
                kind: ViolationKind::Inconclusive,
                ops: Vec::new(),
                message: format!(
                    "the search explored {states} configurations of {} operations ({} ok, {} unknown) \
                     without an answer (budget {}); nothing is proven for this key.",
                    search.ops.len(),
                    search.m,
                    search.ops.len() - search.m,
                    opts.max_states_per_key
                ),
            };
            (report, Some(violation))
        }
        End::Fail(best) => {
            report.verdict = Verdict::NotLinearizable;
            let (ids, message) = search.explain(&best, states);
            let violation = Violation {
                key: key.to_string(),
                kind: ViolationKind::NotLinearizable,
                ops: ids,
                message,
            };
            (report, Some(violation))
        }
    }
}

/// Checks each read against the puts of its value, and learns versions of unknown puts.
///
/// Returns the ids involved and a message for the first read that no order
/// can explain: a value no surviving put wrote, a value read before its put
/// was invoked, or a version that differs from the put's.
fn value_checks(
    ops: &mut [KOp<'_>],
    failed_puts: &HashMap<&str, Vec<&Event>>,
) -> Option<(Vec<u64>, String)> {
    let mut writers: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, o) in ops.iter().enumerate() {
        if let Kind::Put { val } = o.kind {
            writers.entry(val).or_default().push(i);
        }
    }
    let mut reads: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].kind, Kind::Get { read: Some(_) }))
        .collect();
    reads.sort_by_key(|&i| (ops[i].complete, ops[i].invoke, ops[i].ev.id));
    for g in reads {
        let Kind::Get { read: Some(val) } = ops[g].kind else {
            continue;
        };
        let value = ops[g].ev.value.as_deref().unwrap_or_default();
        let gid = ops[g].ev.id;
        match writers.get(&val).map(Vec::as_slice).unwrap_or_default() {
            [] => {
                return Some(match failed_puts.get(value).and_then(|f| f.first()) {
                    Some(f) => (
                        vec![gid, f.id],
                        format!(
                            "{} returned {}, but the only put of that value, {f}, failed, \
                             so it must not have taken effect.",
                            ops[g].describe(),
                            short(value)
                        ),
                    ),
                    None => (
                        vec![gid],
                        format!(
                            "{} returned {}, a value no put on this key wrote.",
                            ops[g].describe(),
                            short(value)
                        ),
                    ),
                });
            }
            [w] => {
                let w = *w;
                let wid = ops[w].ev.id;
                if ops[w].invoke > ops[g].complete {
                    return Some((
                        vec![gid, wid],
                        format!(
                            "{} returned {}, but {}, which wrote it, was invoked only after that \
                             read completed.",
                            ops[g].describe(),
                            short(value),
                            ops[w].describe()
                        ),
                    ));
                }
                let Some(gv) = ops[g].version else { continue };
                match (ops[w].version, ops[w].learned_from) {
                    (Some(wv), Some(first)) if wv != gv => {
                        return Some((
                            vec![gid, first, wid],
                            format!(
                                "{} returned {} as version {gv}, but #{first} read the same \
                                 value as version {wv}; it was written once, by {}.",
                                ops[g].describe(),
                                short(value),
                                ops[w].ev
                            ),
                        ));
                    }
                    (Some(wv), None) if wv != gv => {
                        return Some((
                            vec![gid, wid],
                            format!(
                                "{} returned {} as version {gv}, but {} wrote it as version {wv}.",
                                ops[g].describe(),
                                short(value),
                                ops[w].describe()
                            ),
                        ));
                    }
                    (Some(_), _) => {}
                    (None, _) => {
                        ops[w].version = Some(gv);
                        ops[w].learned_from = Some(gid);
                    }
                }
            }
            // The value was put more than once: the search tells the puts apart.
            _ => {}
        }
    }
    None
}

/// How a search ended.
enum End {
    /// Every ok operation was linearized.
    Pass,
    /// No linearization; the deepest path found (op indices).
    Fail(Vec<u32>),
    /// The budget ran out.
    Budget,
}

/// Why an operation cannot go next in a configuration.
#[derive(Debug, Clone, Copy)]
enum Why {
    /// The get's result does not match the state.
    Read,
    /// Same value, but the get's version differs from the writer's.
    ReadVersion,
    /// The delete's `deleted` flag does not match the state.
    DeleteFlag,
    /// The write's version is not above one already in effect (of the given op).
    VersionNotAbove(u64, u32),
    /// An ok write with a smaller version has not taken effect yet.
    VersionOrder(u32),
    /// Taking this unknown write would leave a pending ok write with a smaller version stranded.
    WouldStrand(u32),
}

/// The mutable part of the search: what is linearized and the register state.
#[derive(Debug, Clone)]
struct Cfg {
    /// Linearized ok operations (indices `0..m`).
    lin_ok: Vec<u64>,
    /// Linearized `Read`/`Free` unknown operations (indices `m..u`, stored from 0).
    lin_unk: Vec<u64>,
    /// `Unread` puts used (always the earliest-invoked ones).
    unread_used: u32,
    /// Unknown deletes used (always the earliest-invoked ones).
    deletes_used: u32,
    /// First ok operation (by invocation) not linearized.
    wm: usize,
    /// First position in `by_complete` not linearized.
    cwm: usize,
    /// First position in `kv` not linearized.
    kwm: usize,
    /// One past the highest linearized ok operation.
    hi: usize,
    /// The put whose value the key holds, or `NONE` if absent.
    writer: u32,
    /// The last write linearized (for messages).
    last_write: u32,
    /// Highest known version in effect, and its write.
    max_ver: Option<(u64, u32)>,
    /// Number of ok operations linearized.
    ok_done: usize,
}

/// What `Search::apply` changed, for `Search::undo`.
#[derive(Debug, Clone, Copy)]
struct Undo {
    op: u32,
    writer: u32,
    last_write: u32,
    max_ver: Option<(u64, u32)>,
    hi: usize,
}

/// A move: one operation, or an unknown write and the operation that observes it.
type Move = [u32; 2];

/// One level of the depth-first search.
struct Frame {
    moves: Vec<Move>,
    next: usize,
    /// Undo records of the move that led here, last applied last.
    undo: Vec<Undo>,
}

fn bit(words: &[u64], i: usize) -> bool {
    words[i / 64] & (1 << (i % 64)) != 0
}

fn flip(words: &mut [u64], i: usize) {
    words[i / 64] ^= 1 << (i % 64);
}

/// The static part of the search over one key's operations.
struct Search<'a> {
    /// By class (`Ok`, `Read`/`Free`, `Unread`, `Delete`), each by invocation.
    ops: Vec<KOp<'a>>,
    /// End of the ok operations.
    m: usize,
    /// End of the `Read`/`Free` operations.
    u: usize,
    /// End of the `Unread` operations (the unknown deletes follow).
    g: usize,
    /// Ok operations sorted by completion.
    by_complete: Vec<u32>,
    /// Position of each ok operation in `by_complete`.
    cpos: Vec<u32>,
    /// Ok writes with a known version, by version.
    kv: Vec<u32>,
    /// Position of each ok operation in `kv`, or `NONE`.
    kpos: Vec<u32>,
}

impl<'a> Search<'a> {
    /// Takes the operations sorted by (class, invocation).
    fn new(ops: Vec<KOp<'a>>) -> Self {
        let end = |c: Class| ops.iter().take_while(|o| o.class <= c).count();
        let (m, u, g) = (end(Class::Ok), end(Class::Free), end(Class::Unread));
        let mut by_complete: Vec<u32> = (0..m as u32).collect();
        by_complete.sort_by_key(|&i| (ops[i as usize].complete, i));
        let mut cpos = vec![0; m];
        for (p, &i) in by_complete.iter().enumerate() {
            cpos[i as usize] = p as u32;
        }
        let mut kv: Vec<u32> = (0..m as u32)
            .filter(|&i| ops[i as usize].is_write() && ops[i as usize].version.is_some())
            .collect();
        kv.sort_by_key(|&i| (ops[i as usize].version, i));
        let mut kpos = vec![NONE; m];
        for (p, &i) in kv.iter().enumerate() {
            kpos[i as usize] = p as u32;
        }
        Self {
            ops,
            m,
            u,
            g,
            by_complete,
            cpos,
            kv,
            kpos,
        }
    }

    fn start(&self) -> Cfg {
        Cfg {
            lin_ok: vec![0; self.m.div_ceil(64)],
            lin_unk: vec![0; (self.u - self.m).div_ceil(64)],
            unread_used: 0,
            deletes_used: 0,
            wm: 0,
            cwm: 0,
            kwm: 0,
            hi: 0,
            writer: NONE,
            last_write: NONE,
            max_ver: None,
            ok_done: 0,
        }
    }

    fn op(&self, o: u32) -> &KOp<'a> {
        &self.ops[o as usize]
    }

    /// The earliest completion among pending ok operations (one must be pending).
    fn bound(&self, cfg: &Cfg) -> u64 {
        self.op(self.by_complete[cfg.cwm]).complete
    }

    /// Ok and `Read`/`Free` operations that may go next by real time: not
    /// linearized, and invoked no later than [`Search::bound`].
    fn candidates(&self, cfg: &Cfg) -> Vec<u32> {
        let bound = self.bound(cfg);
        let mut out = Vec::new();
        for i in cfg.wm..self.m {
            if self.ops[i].invoke > bound {
                break;
            }
            if !bit(&cfg.lin_ok, i) {
                out.push(i as u32);
            }
        }
        for i in self.m..self.u {
            if self.ops[i].invoke > bound {
                break;
            }
            if !bit(&cfg.lin_unk, i - self.m) {
                out.push(i as u32);
            }
        }
        out
    }

    /// The next unused operation of an interchangeable class, if already invoked.
    fn next_of(&self, start: usize, end: usize, used: u32, bound: u64) -> Option<u32> {
        let i = start + used as usize;
        (i < end && self.ops[i].invoke <= bound).then_some(i as u32)
    }

    /// Why `o` cannot take effect next in `cfg`, or `None` if it can.
    fn why_not(&self, cfg: &Cfg, o: u32) -> Option<Why> {
        self.why_not_with(cfg, cfg.writer, o)
    }

    /// Like [`Search::why_not`], as if the key held what `writer` wrote.
    fn why_not_with(&self, cfg: &Cfg, writer: u32, o: u32) -> Option<Why> {
        let op = self.op(o);
        match op.kind {
            Kind::Get { read } => {
                let (Some(val), false) = (read, writer == NONE) else {
                    // Legal only if both say absent.
                    return (read.is_some() || writer != NONE).then_some(Why::Read);
                };
                let w = self.op(writer);
                if w.kind != (Kind::Put { val }) {
                    return Some(Why::Read);
                }
                match (op.version, w.version) {
                    (Some(gv), Some(wv)) if gv != wv => Some(Why::ReadVersion),
                    _ => None,
                }
            }
            Kind::Put { .. } | Kind::Delete { .. } => {
                if matches!(op.kind, Kind::Delete { deleted: Some(d) } if d != (writer != NONE)) {
                    return Some(Why::DeleteFlag);
                }
                let v = op.version?;
                if let Some((max, by)) = cfg.max_ver.filter(|&(max, _)| v <= max) {
                    return Some(Why::VersionNotAbove(max, by));
                }
                let pending = self.kv.get(cfg.kwm).copied();
                if op.unknown {
                    match pending {
                        Some(p) if self.op(p).version.is_some_and(|pv| v >= pv) => {
                            Some(Why::WouldStrand(p))
                        }
                        _ => None,
                    }
                } else {
                    match pending {
                        Some(p) if p != o => Some(Why::VersionOrder(p)),
                        _ => None,
                    }
                }
            }
        }
    }

    /// The moves worth trying from `cfg`, most promising first.
    fn moves(&self, cfg: &Cfg) -> Vec<Move> {
        let cands = self.candidates(cfg);
        let is_ok_get = |o: u32| (o as usize) < self.m && !self.op(o).is_write();
        // A legal pending ok get can go first without loss (module docs).
        if let Some(&g) = cands
            .iter()
            .find(|&&o| is_ok_get(o) && self.why_not(cfg, o).is_none())
        {
            return vec![[g, NONE]];
        }
        let wanted: Vec<u32> = cands
            .iter()
            .filter_map(|&o| match self.op(o).kind {
                Kind::Get { read: Some(val) } if is_ok_get(o) => Some(val),
                _ => None,
            })
            .collect();
        let bound = self.bound(cfg);
        let unread = self.next_of(self.u, self.g, cfg.unread_used, bound);
        let delete = self.next_of(self.g, self.ops.len(), cfg.deletes_used, bound);
        let (mut first, mut ok, mut paired, mut free) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &o in &cands {
            let op = self.op(o);
            let why = self.why_not(cfg, o);
            match (op.class, why) {
                (Class::Ok, None) => ok.push([o, NONE]),
                // An unknown write right before it may explain what it saw.
                (Class::Ok, Some(Why::Read | Why::DeleteFlag)) => {
                    let helper = if cfg.writer != NONE {
                        delete
                    } else if matches!(op.kind, Kind::Delete { .. }) {
                        unread
                    } else {
                        None
                    };
                    if let Some(h) = helper {
                        let writer = if h as usize >= self.g { NONE } else { h };
                        if self.why_not_with(cfg, writer, o).is_none() {
                            paired.push([h, o]);
                        }
                    }
                }
                (Class::Read, None) => {
                    if matches!(op.kind, Kind::Put { val } if wanted.contains(&val)) {
                        first.push([o, NONE]);
                    }
                }
                (Class::Free, None) => free.push([o, NONE]),
                _ => {}
            }
        }
        first.extend(ok);
        first.extend(paired);
        first.extend(free);
        first
    }

    fn apply(&self, cfg: &mut Cfg, o: u32) -> Undo {
        let undo = Undo {
            op: o,
            writer: cfg.writer,
            last_write: cfg.last_write,
            max_ver: cfg.max_ver,
            hi: cfg.hi,
        };
        let op = self.op(o);
        match op.kind {
            Kind::Put { .. } => cfg.writer = o,
            Kind::Delete { .. } => cfg.writer = NONE,
            Kind::Get { .. } => {}
        }
        if op.is_write() {
            cfg.last_write = o;
            let higher = op
                .version
                .filter(|&v| cfg.max_ver.is_none_or(|(max, _)| v > max));
            if let Some(v) = higher {
                cfg.max_ver = Some((v, o));
            }
        }
        let i = o as usize;
        match op.class {
            Class::Ok => {
                flip(&mut cfg.lin_ok, i);
                cfg.ok_done += 1;
                cfg.hi = cfg.hi.max(i + 1);
                while cfg.wm < self.m && bit(&cfg.lin_ok, cfg.wm) {
                    cfg.wm += 1;
                }
                while cfg.cwm < self.m && bit(&cfg.lin_ok, self.by_complete[cfg.cwm] as usize) {
                    cfg.cwm += 1;
                }
                while cfg.kwm < self.kv.len() && bit(&cfg.lin_ok, self.kv[cfg.kwm] as usize) {
                    cfg.kwm += 1;
                }
            }
            Class::Read | Class::Free => flip(&mut cfg.lin_unk, i - self.m),
            Class::Unread => cfg.unread_used += 1,
            Class::Delete => cfg.deletes_used += 1,
        }
        undo
    }

    fn undo(&self, cfg: &mut Cfg, u: Undo) {
        cfg.writer = u.writer;
        cfg.last_write = u.last_write;
        cfg.max_ver = u.max_ver;
        cfg.hi = u.hi;
        let i = u.op as usize;
        match self.ops[i].class {
            Class::Ok => {
                flip(&mut cfg.lin_ok, i);
                cfg.ok_done -= 1;
                cfg.wm = cfg.wm.min(i);
                cfg.cwm = cfg.cwm.min(self.cpos[i] as usize);
                if self.kpos[i] != NONE {
                    cfg.kwm = cfg.kwm.min(self.kpos[i] as usize);
                }
            }
            Class::Read | Class::Free => flip(&mut cfg.lin_unk, i - self.m),
            Class::Unread => cfg.unread_used -= 1,
            Class::Delete => cfg.deletes_used -= 1,
        }
    }

    /// The memo key: the linearized set (ok part relative to `wm`) and the
    /// writer. The counts of interchangeable unknown writes used are kept
    /// beside it (see [`Search::run`]).
    fn key(&self, cfg: &Cfg) -> Box<[u64]> {
        let lo = cfg.wm / 64;
        let hi = cfg.hi.div_ceil(64).max(lo);
        let ok = &cfg.lin_ok[lo..hi];
        let unk = cfg
            .lin_unk
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |p| p + 1);
        let mut key = Vec::with_capacity(3 + ok.len() + unk);
        key.push(cfg.wm as u64);
        key.push(u64::from(cfg.writer));
        key.push(ok.len() as u64);
        key.extend_from_slice(ok);
        key.extend_from_slice(&cfg.lin_unk[..unk]);
        key.into_boxed_slice()
    }

    /// Depth-first search with memoization; returns how it ended and the states explored.
    ///
    /// A configuration is skipped if one with the same key and no more
    /// interchangeable unknown writes used was already explored: having more
    /// of them left can only help, and that one failed.
    fn run(&self, budget: usize) -> (End, usize) {
        let mut cfg = self.start();
        if self.m == 0 {
            return (End::Pass, 1);
        }
        let mut memo: HashMap<Box<[u64]>, Vec<(u32, u32)>> = HashMap::new();
        memo.insert(self.key(&cfg), vec![(0, 0)]);
        let mut states = 1;
        let mut stack = vec![Frame {
            moves: self.moves(&cfg),
            next: 0,
            undo: Vec::new(),
        }];
        // The current path, and the deepest one (by ok operations) seen so
        // far; `shared` is the length of their common prefix, which keeps
        // the bookkeeping proportional to the search itself.
        let mut path: Vec<u32> = Vec::new();
        let mut best: Vec<u32> = Vec::new();
        let mut best_ok = 0;
        let mut shared = 0;
        while let Some(top) = stack.last_mut() {
            if top.next < top.moves.len() {
                let mv = top.moves[top.next];
                top.next += 1;
                let undo: Vec<Undo> = mv
                    .iter()
                    .filter(|&&o| o != NONE)
                    .map(|&o| self.apply(&mut cfg, o))
                    .collect();
                if cfg.ok_done == self.m {
                    return (End::Pass, states);
                }
                let used = (cfg.unread_used, cfg.deletes_used);
                let seen = memo.entry(self.key(&cfg)).or_default();
                if seen.iter().any(|&(a, b)| a <= used.0 && b <= used.1) {
                    for &u in undo.iter().rev() {
                        self.undo(&mut cfg, u);
                    }
                    continue;
                }
                seen.push(used);
                states += 1;
                if states > budget {
                    return (End::Budget, states);
                }
                path.extend(undo.iter().map(|u| u.op));
                if cfg.ok_done > best_ok {
                    best.truncate(shared);
                    best.extend_from_slice(&path[shared..]);
                    shared = path.len();
                    best_ok = cfg.ok_done;
                }
                stack.push(Frame {
                    moves: self.moves(&cfg),
                    next: 0,
                    undo,
                });
            } else if let Some(frame) = stack.pop() {
                for &u in frame.undo.iter().rev() {
                    self.undo(&mut cfg, u);
                    path.pop();
                }
                shared = shared.min(path.len());
            }
        }
        (End::Fail(best), states)
    }

    /// The other operation a reason refers to, if any.
    fn why_op(&self, why: Why) -> Option<u32> {
        match why {
            Why::VersionNotAbove(_, o) | Why::VersionOrder(o) | Why::WouldStrand(o) => Some(o),
            Why::Read | Why::ReadVersion | Why::DeleteFlag => None,
        }
    }

    /// "the key held "b" v2, written by #2" and the like.
    fn state_text(&self, cfg: &Cfg) -> String {
        if cfg.writer != NONE {
            let w = self.op(cfg.writer);
            let value = match &w.ev.op {
                Op::Put { value } => short(value),
                _ => String::new(),
            };
            let ver = w.version.map(|v| format!(" v{v}")).unwrap_or_default();
            return format!("the key held {value}{ver}, written by #{}", w.ev.id);
        }
        if cfg.last_write != NONE {
            return format!(
                "the key was absent, deleted by #{}",
                self.op(cfg.last_write).ev.id
            );
        }
        "the key was absent (never written)".into()
    }

    /// "it returned "a" v1, but the key held "b" v2, written by #2" and the like.
    fn why_text(&self, cfg: &Cfg, o: u32, why: Why) -> String {
        let op = self.op(o);
        let ver = op.version.map(|v| format!(" v{v}")).unwrap_or_default();
        match why {
            Why::Read => {
                let got = match op.ev.value.as_deref() {
                    Some(v) if op.ev.found == Some(true) => format!("{}{ver}", short(v)),
                    _ => "not found".into(),
                };
                format!("it returned {got}, but {}", self.state_text(cfg))
            }
            Why::ReadVersion => format!("it returned version{ver}, but {}", self.state_text(cfg)),
            Why::DeleteFlag => format!(
                "it reported deleted={}, but {}",
                op.ev.deleted.unwrap_or_default(),
                self.state_text(cfg)
            ),
            Why::VersionNotAbove(max, by) => format!(
                "its version{ver} is not above v{max} of #{}, which already took effect",
                self.op(by).ev.id
            ),
            Why::VersionOrder(p) => format!(
                "#{} has the smaller version v{} and has not taken effect yet",
                self.op(p).ev.id,
                self.op(p).version.unwrap_or_default()
            ),
            Why::WouldStrand(p) => format!(
                "its version{ver} is not below that of #{}, which has not taken effect yet",
                self.op(p).ev.id
            ),
        }
    }

    /// Ids involved and a one-paragraph explanation of a failed search.
    fn explain(&self, best: &[u32], states: usize) -> (Vec<u64>, String) {
        let mut cfg = self.start();
        for &o in best {
            self.apply(&mut cfg, o);
        }
        let b = self.by_complete[cfg.cwm];
        let bop = self.op(b);
        let mut ids = vec![bop.ev.id];
        let reason = match self.why_not(&cfg, b) {
            Some(why) => {
                ids.extend(self.why_op(why).map(|o| self.op(o).ev.id));
                self.why_text(&cfg, b, why)
            }
            None => "every order that places it there fails later".into(),
        };
        let mut msg = format!(
            "{} cannot take effect at any point before it completed: {reason}. \
             The longest consistent order found places {} of {} ok operations",
            bop.describe(),
            cfg.ok_done,
            self.m
        );
        // The end of that order: what pinned the state before the culprit.
        let tail = &best[best.len().saturating_sub(TAIL)..];
        if !tail.is_empty() {
            let listed: Vec<String> = tail.iter().map(|&o| self.op(o).describe()).collect();
            msg.push_str(&format!(" and ends with {}", listed.join(", then ")));
            ids.extend(tail.iter().rev().map(|&o| self.op(o).ev.id));
        }
        if cfg.last_write != NONE && !tail.contains(&cfg.last_write) {
            let w = self.op(cfg.last_write);
            ids.push(w.ev.id);
            msg.push_str(&format!("; its last write is {}", w.describe()));
        }
        if cfg.writer != NONE && cfg.writer != cfg.last_write {
            ids.push(self.op(cfg.writer).ev.id);
        }
        msg.push('.');
        let blocked: Vec<(u32, Why)> = self
            .candidates(&cfg)
            .into_iter()
            .filter(|&o| o != b)
            .filter_map(|o| Some((o, self.why_not(&cfg, o)?)))
            .take(MAX_LISTED)
            .collect();
        ids.extend(blocked.iter().map(|&(o, _)| self.op(o).ev.id));
        let others: Vec<String> = blocked
            .iter()
            .map(|&(o, why)| format!("{}: {}", self.op(o).describe(), self.why_text(&cfg, o, why)))
            .collect();
        if !others.is_empty() {
            msg.push_str(&format!(
                " Other operations that could go next cannot either: {}.",
                others.join("; ")
            ));
        }
        let mut concurrent: Vec<&KOp<'_>> = self
            .ops
            .iter()
            .enumerate()
            .filter(|&(i, o)| i != b as usize && !tail.contains(&(i as u32)) && o.overlaps(bop))
            .map(|(_, o)| o)
            .collect();
        concurrent.sort_by_key(|o| (o.invoke, o.ev.id));
        if concurrent.is_empty() {
            msg.push_str(&format!(
                " No other operation was concurrent with #{}.",
                bop.ev.id
            ));
        } else {
            let listed: Vec<String> = concurrent
                .iter()
                .take(MAX_LISTED)
                .map(|o| o.describe())
                .collect();
            let more = concurrent.len().saturating_sub(MAX_LISTED);
            msg.push_str(&format!(
                " Also concurrent with #{}: {}{}.",
                bop.ev.id,
                listed.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            ));
            ids.extend(concurrent.iter().take(MAX_LISTED).map(|o| o.ev.id));
        }
        msg.push_str(&format!(" ({states} configuration(s) searched.)"));
        let mut seen = HashSet::new();
        ids.retain(|id| seen.insert(*id));
        (ids, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Builds histories tersely; ids are assigned in order from 1.
    #[derive(Default)]
    struct Hb {
        h: History,
    }

    impl Hb {
        fn ev(&mut self, key: &str, op: Op, t: (u64, u64), outcome: Outcome) -> &mut Event {
            let id = self.h.len() as u64 + 1;
            self.h.push(Event {
                id,
                client: (id % 4) as u32,
                replica: Some((id % 5) as u32 + 1),
                key: key.into(),
                op,
                invoke_us: t.0,
                complete_us: t.1,
                outcome,
                found: None,
                value: None,
                deleted: None,
                version: None,
            });
            self.h.events.last_mut().expect("just pushed")
        }

        /// An ok put with its version.
        fn put(&mut self, key: &str, value: &str, t: (u64, u64), v: u64) -> u64 {
            let e = self.ev(key, put_op(value), t, Outcome::Ok);
            e.version = Some(v);
            e.id
        }

        /// A put that failed or whose outcome is unknown.
        fn put_as(&mut self, key: &str, value: &str, t: (u64, u64), outcome: Outcome) -> u64 {
            self.ev(key, put_op(value), t, outcome).id
        }

        /// An ok get that found `value` at version `v`.
        fn get(&mut self, key: &str, t: (u64, u64), value: &str, v: u64) -> u64 {
            let e = self.ev(key, Op::Get, t, Outcome::Ok);
            e.found = Some(true);
            e.value = Some(value.into());
            e.version = Some(v);
            e.id
        }

        /// An ok get that found nothing.
        fn absent(&mut self, key: &str, t: (u64, u64)) -> u64 {
            let e = self.ev(key, Op::Get, t, Outcome::Ok);
            e.found = Some(false);
            e.id
        }

        /// An ok delete.
        fn del(&mut self, key: &str, t: (u64, u64), deleted: bool, v: u64) -> u64 {
            let e = self.ev(key, Op::Delete, t, Outcome::Ok);
            e.deleted = Some(deleted);
            e.version = Some(v);
            e.id
        }

        /// A delete that failed or whose outcome is unknown.
        fn del_as(&mut self, key: &str, t: (u64, u64), outcome: Outcome) -> u64 {
            self.ev(key, Op::Delete, t, outcome).id
        }
    }

    fn put_op(value: &str) -> Op {
        Op::Put {
            value: value.into(),
        }
    }

    fn assert_passes(h: &History) -> Report {
        let r = check_history(h);
        assert!(r.is_linearizable(), "expected linearizable:\n{r}");
        assert!(
            r.keys.iter().all(|k| k.verdict == Verdict::Linearizable),
            "{r:?}"
        );
        r
    }

    /// Asserts exactly one violation, on `key`, naming every id in `ids`.
    fn assert_caught(h: &History, key: &str, ids: &[u64]) -> Violation {
        let r = check_history(h);
        assert_eq!(r.violations.len(), 1, "expected one violation:\n{r}");
        let v = r.violations[0].clone();
        assert_eq!(v.key, key, "{v}");
        assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
        for id in ids {
            assert!(
                v.ops.contains(id),
                "op #{id} not named in: {v}\n{:?}",
                v.ops
            );
        }
        assert!(!r.is_linearizable());
        v
    }

    fn finals(key: &str, values: &[Option<(&str, u64)>]) -> Vec<FinalRead> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    i as u32 + 1,
                    key.to_string(),
                    v.map(|(s, n)| (s.to_string(), n)),
                )
            })
            .collect()
    }

    #[test]
    fn linearizable_history_with_concurrency_and_unknowns_passes() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        b.put("k", "b", (5, 30), 2);
        b.get("k", (12, 20), "a", 1); // put b not yet in effect
        b.get("k", (15, 40), "b", 2);
        b.put_as("k", "c", (35, 50), Outcome::Unknown);
        b.get("k", (45, 55), "b", 2); // c not yet in effect...
        b.get("k", (60, 70), "c", 3); // ...but it is after the client gave up
        b.put_as("k", "d", (75, 80), Outcome::Unknown); // never seen
        b.del("k", (90, 100), true, 5);
        b.absent("k", (110, 120));
        b.del_as("k", (130, 140), Outcome::Unknown);
        b.put("k", "e", (150, 160), 7);
        b.get("k", (150, 170), "e", 7);
        b.put_as("k", "f", (155, 165), Outcome::Failed);
        b.ev("k", Op::Get, (160, 170), Outcome::Failed);
        b.ev("k", Op::Get, (160, 900), Outcome::Unknown);
        b.put("j", "x", (50, 95), 4);
        b.absent("j", (51, 60));
        b.get("j", (96, 99), "x", 4);
        let r = assert_passes(&b.h);
        assert_eq!(r.count(Verdict::Linearizable), 2);
        let mut fin = finals("k", &[Some(("e", 7)); 5]);
        fin.extend(finals("j", &[Some(("x", 4)); 5]));
        let v = check_final_state(&b.h, &fin);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn stale_read_is_caught() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let pb = b.put("k", "b", (20, 30), 2);
        let g = b.get("k", (40, 50), "a", 1);
        let v = assert_caught(&b.h, "k", &[g, pb]);
        assert_eq!(v.ops[0], g, "the stale read is the culprit: {v}");
        assert!(
            v.message.contains("the key held \"b\" v2, written by #2"),
            "{v}"
        );

        // Control: the same history reading the new value passes.
        let mut ok = b.h.clone();
        ok.events[2].value = Some("b".into());
        ok.events[2].version = Some(2);
        assert_passes(&ok);
    }

    #[test]
    fn lost_write_is_caught_by_final_state() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let pb = b.put("k", "b", (20, 30), 2);
        b.get("k", (40, 50), "b", 2);
        assert_passes(&b.h);
        // All replicas agree with the history.
        assert!(check_final_state(&b.h, &finals("k", &[Some(("b", 2)); 5])).is_empty());
        // Replica 3 still shows the old value: the acked write was lost there.
        let lagging = finals(
            "k",
            &[
                Some(("b", 2)),
                Some(("b", 2)),
                Some(("a", 1)),
                Some(("b", 2)),
                Some(("b", 2)),
            ],
        );
        let v = check_final_state(&b.h, &lagging);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].ops.contains(&6),
            "final read of replica 3 is #6: {}",
            v[0]
        );
        assert!(
            v[0].to_string().contains("final read via replica 3"),
            "{}",
            v[0]
        );
        assert!(v[0].ops.contains(&pb), "{}", v[0]);
        // Every replica lost the key.
        let v = check_final_state(&b.h, &finals("k", &[None; 5]));
        assert_eq!(v.len(), 1, "{v:?}");
        // A write that was never acked nor recorded shows up.
        let v = check_final_state(&b.h, &finals("k", &[Some(("zz", 3)); 5]));
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn new_old_inversion_is_caught() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let pb = b.put("k", "b", (20, 100), 2);
        let g1 = b.get("k", (30, 40), "b", 2);
        let g2 = b.get("k", (50, 60), "a", 1);
        let v = assert_caught(&b.h, "k", &[g2, pb, g1]);
        assert_eq!(v.ops[0], g2, "{v}");

        // Controls: new then new, and old then new, are both fine.
        let mut h = b.h.clone();
        h.events[3].value = Some("b".into());
        h.events[3].version = Some(2);
        assert_passes(&h);
        let mut h = b.h.clone();
        h.events[2].value = Some("a".into());
        h.events[2].version = Some(1);
        h.events[3].value = Some("b".into());
        h.events[3].version = Some(2);
        assert_passes(&h);
    }

    #[test]
    fn unknown_put_that_shows_up_later_is_accepted() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        b.put_as("k", "b", (20, 30), Outcome::Unknown);
        b.get("k", (40, 50), "a", 1);
        b.get("k", (1000, 1010), "b", 2);
        b.get("k", (1100, 1110), "b", 2);
        assert_passes(&b.h);

        // One that shows up only in the final state is accepted too...
        let mut f = Hb::default();
        f.put("m", "a", (0, 10), 1);
        f.put_as("m", "b", (20, 30), Outcome::Unknown);
        f.get("m", (40, 50), "a", 1);
        assert_passes(&f.h);
        assert!(check_final_state(&f.h, &finals("m", &[Some(("b", 2)); 5])).is_empty());
        assert!(check_final_state(&f.h, &finals("m", &[Some(("a", 1)); 5])).is_empty());

        // ...but not after a newer acked write, as its version shows.
        let mut n = Hb::default();
        n.put("k", "a", (0, 10), 1);
        let u = n.put_as("k", "b", (20, 30), Outcome::Unknown);
        let c = n.put("k", "c", (40, 50), 3);
        let g = n.get("k", (60, 70), "b", 2);
        let v = assert_caught(&n.h, "k", &[g, c]);
        assert!(
            v.message.contains(&format!("per #{g}")),
            "learned version shown: {v}"
        );
        assert!(
            v.ops.contains(&u) || v.message.contains(&format!("#{u}")),
            "{v}"
        );
    }

    #[test]
    fn failed_put_that_shows_up_is_caught() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let f = b.put_as("k", "b", (20, 30), Outcome::Failed);
        let g = b.get("k", (40, 50), "b", 2);
        let v = assert_caught(&b.h, "k", &[g, f]);
        assert!(v.message.contains("failed"), "{v}");

        // Also when it only shows up in the final state.
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        b.put_as("k", "b", (20, 30), Outcome::Failed);
        assert_passes(&b.h);
        let v = check_final_state(&b.h, &finals("k", &[Some(("b", 2)); 5]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("failed"), "{}", v[0]);
    }

    #[test]
    fn delete_semantics() {
        // Put, delete, read absent, delete again (absent), all sequential.
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        b.del("k", (20, 30), true, 2);
        b.absent("k", (40, 50));
        b.del("k", (60, 70), false, 3);
        b.put("k", "b", (80, 90), 4);
        b.get("k", (100, 110), "b", 4);
        assert_passes(&b.h);

        // A delete that says the key was absent while it held a value.
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let d = b.del("k", (20, 30), false, 2);
        assert_caught(&b.h, "k", &[d]);

        // A delete of a key never written that says it deleted something.
        let mut b = Hb::default();
        let d = b.del("k", (0, 10), true, 1);
        assert_caught(&b.h, "k", &[d]);

        // A read that still finds the value after the delete completed.
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let d = b.del("k", (20, 30), true, 2);
        let g = b.get("k", (40, 50), "a", 1);
        let v = assert_caught(&b.h, "k", &[g, d]);
        assert!(v.message.contains("deleted by #2"), "{v}");

        // Reads concurrent with a delete may see either side, in order.
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        b.del("k", (20, 50), true, 2);
        b.get("k", (25, 30), "a", 1);
        b.absent("k", (35, 40));
        assert_passes(&b.h);

        // An unknown delete explains a later absence; without it, it is a violation.
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        b.del_as("k", (20, 30), Outcome::Unknown);
        b.absent("k", (100, 110));
        assert_passes(&b.h);
        b.h.events[1].outcome = Outcome::Failed;
        assert_caught(&b.h, "k", &[3]);
    }

    #[test]
    fn version_mismatch_is_caught() {
        // A read reports a version other than the put's.
        let mut b = Hb::default();
        let p = b.put("k", "a", (0, 10), 5);
        let g = b.get("k", (20, 30), "a", 4);
        let v = assert_caught(&b.h, "k", &[g, p]);
        assert!(v.message.contains("version 4"), "{v}");

        // Two reads of an unknown put disagree on its version.
        let mut b = Hb::default();
        b.put_as("k", "a", (0, 10), Outcome::Unknown);
        b.get("k", (20, 30), "a", 1);
        let g = b.get("k", (40, 50), "a", 2);
        assert_caught(&b.h, "k", &[g, 2]);

        // Sequential writes whose versions go backwards.
        let mut b = Hb::default();
        let p1 = b.put("k", "a", (0, 10), 5);
        let p2 = b.put("k", "b", (20, 30), 3);
        assert_caught(&b.h, "k", &[p1, p2]);

        // Concurrent writes: versions fix their order, so only the later one may be read.
        let mut b = Hb::default();
        b.put("k", "a", (0, 100), 2);
        b.put("k", "b", (0, 100), 1);
        let g = b.get("k", (200, 210), "a", 2);
        assert_passes(&b.h);
        b.h.events[2].value = Some("b".into());
        b.h.events[2].version = Some(1);
        assert_caught(&b.h, "k", &[g]);

        // A version reported by writes on two keys.
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let p = b.put("j", "b", (20, 30), 1);
        let r = check_history(&b.h);
        assert_eq!(r.violations.len(), 1, "{r}");
        assert!(r.violations[0].ops.contains(&p), "{r}");
        assert!(
            r.to_string()
                .contains("version 1 was reported by two writes"),
            "{r}"
        );
    }

    #[test]
    fn malformed_event_is_reported_not_searched() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        let g = b.ev("k", Op::Get, (20, 30), Outcome::Ok).id; // no `found`
        b.put("j", "x", (50, 40), 2); // completes before invocation
        let r = check_history(&b.h);
        assert_eq!(r.count(Verdict::Malformed), 2, "{r}");
        assert!(
            r.violations
                .iter()
                .all(|v| v.kind == ViolationKind::Malformed)
        );
        assert!(r.violations.iter().any(|v| v.ops == [g]), "{r}");
        assert!(!r.is_linearizable());
    }

    #[test]
    fn violation_reads_as_one_paragraph() {
        let mut b = Hb::default();
        b.put("k", "a", (0, 10), 1);
        b.put("k", "b", (20, 30), 2);
        b.get("k", (25, 35), "b", 2);
        b.get("k", (40, 50), "a", 1);
        let r = check_history(&b.h);
        let text = r.violations[0].to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with("key \"k\": not linearizable: #4 get"),
            "{text}"
        );
        for needle in [
            "#2 put \"b\"",
            "#3 get",
            "it returned \"a\" v1",
            "held \"b\" v2",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in: {text}");
        }
        let summary = r.to_string();
        assert!(summary.contains("1 not linearizable"), "{summary}");
    }

    /// splitmix64: a tiny deterministic generator for test histories.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A linearizable history by construction: each client runs operations
    /// back to back with random durations; each operation that takes effect
    /// gets a random instant inside its interval (an unknown write: anywhere
    /// up to three durations after invocation, or never), and a sequential
    /// register applied in that order decides the results and versions.
    /// Returns the history and each key's final value.
    fn random_history(
        seed: u64,
        clients: u32,
        per_client: usize,
        keys: u64,
    ) -> (History, BTreeMap<String, (String, u64)>) {
        let mut rng = Rng(seed);
        let mut planned: Vec<(Event, Option<(u64, u64)>)> = Vec::new();
        let mut next_val = 0;
        for client in 0..clients {
            let mut t = rng.below(50);
            for _ in 0..per_client {
                let dur = 1 + rng.below(100);
                let r = rng.below(100);
                let op = if r < 45 {
                    next_val += 1;
                    put_op(&format!("v{next_val}"))
                } else if r < 85 {
                    Op::Get
                } else {
                    Op::Delete
                };
                let r = rng.below(100);
                let outcome = match r {
                    0..90 => Outcome::Ok,
                    90..95 => Outcome::Failed,
                    _ => Outcome::Unknown,
                };
                let point = match outcome {
                    Outcome::Ok => Some(t + rng.below(dur + 1)),
                    Outcome::Failed => None,
                    Outcome::Unknown => (rng.below(2) == 0).then(|| t + rng.below(3 * dur + 1)),
                };
                let event = Event {
                    id: planned.len() as u64 + 1,
                    client,
                    replica: Some(1 + rng.below(5) as u32),
                    key: format!("k{}", rng.below(keys)),
                    op,
                    invoke_us: t,
                    complete_us: t + dur,
                    outcome,
                    found: None,
                    value: None,
                    deleted: None,
                    version: None,
                };
                planned.push((event, point.map(|p| (p, rng.next()))));
                t += dur + rng.below(20);
            }
        }
        let mut order: Vec<usize> = (0..planned.len())
            .filter(|&i| planned[i].1.is_some())
            .collect();
        order.sort_by_key(|&i| planned[i].1);
        let mut state: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut version = 0;
        for i in order {
            let ev = &mut planned[i].0;
            let ok = ev.outcome == Outcome::Ok;
            match &ev.op {
                Op::Put { value } => {
                    version += 1;
                    state.insert(ev.key.clone(), (value.clone(), version));
                    ev.version = ok.then_some(version);
                }
                Op::Get if ok => {
                    let cur = state.get(&ev.key);
                    ev.found = Some(cur.is_some());
                    ev.value = cur.map(|c| c.0.clone());
                    ev.version = cur.map(|c| c.1);
                }
                Op::Get => {}
                Op::Delete => {
                    version += 1;
                    let existed = state.remove(&ev.key).is_some();
                    if ok {
                        ev.deleted = Some(existed);
                        ev.version = Some(version);
                    }
                }
            }
        }
        (planned.into_iter().map(|(e, _)| e).collect(), state)
    }

    #[test]
    fn random_linearizable_histories_pass_quickly() {
        for (seed, clients, per_client, keys) in [(1, 8, 400, 1), (2, 8, 500, 4), (3, 16, 100, 1)] {
            let (h, state) = random_history(seed, clients, per_client, keys);
            let started = Instant::now();
            let r = check_history(&h);
            let took = started.elapsed();
            assert!(r.is_linearizable(), "seed {seed}: {r}");
            let ops: usize = r.keys.iter().map(|k| k.ops).sum();
            let states: usize = r.keys.iter().map(|k| k.states).sum();
            eprintln!(
                "seed {seed}: {} events, {ops} searched, {states} states, {took:?}",
                h.len()
            );
            // Deterministic stand-in for "fast": the search stays near-linear.
            assert!(
                states <= 3 * ops,
                "seed {seed}: {states} states for {ops} ops"
            );

            let mut fin = Vec::new();
            for key in r.keys.iter().map(|k| k.key.clone()) {
                let value = state.get(&key).cloned();
                fin.extend((1..=5).map(|replica| (replica, key.clone(), value.clone())));
            }
            let v = check_final_state(&h, &fin);
            assert!(v.is_empty(), "seed {seed}: {v:?}");
        }
    }

    #[test]
    fn stale_read_in_a_large_random_history_is_caught() {
        let (h, _) = random_history(4, 8, 400, 1);
        let mut b = Hb { h };
        // After everything, one more acked put, then a read of an older acked put.
        let old =
            b.h.iter()
                .find(|e| e.outcome == Outcome::Ok && matches!(e.op, Op::Put { .. }))
                .cloned()
                .expect("an acked put");
        let Op::Put { value } = &old.op else {
            unreachable!()
        };
        let end = b.h.end_us();
        let top = b.h.iter().filter_map(|e| e.version).max().unwrap_or(0);
        b.put("k0", "fresh", (end + 10, end + 20), top + 1);
        let id = b.get("k0", (end + 30, end + 40), value, old.version.unwrap_or(0));
        let h = b.h;
        let started = Instant::now();
        let r = check_history(&h);
        eprintln!("caught in {:?}: {r}", started.elapsed());
        assert_eq!(r.violations.len(), 1, "{r}");
        assert_eq!(r.violations[0].ops[0], id, "{r}");
    }

    #[test]
    fn exhausted_budget_is_inconclusive_not_a_pass() {
        let (h, _) = random_history(5, 8, 100, 1);
        assert!(check_history(&h).is_linearizable());
        let r = check_history_with(
            &h,
            &CheckOptions {
                max_states_per_key: 10,
            },
        );
        assert!(!r.is_linearizable(), "{r}");
        assert!(r.violations.is_empty(), "{r}");
        assert_eq!(r.inconclusive.len(), 1, "{r}");
        assert_eq!(r.count(Verdict::Inconclusive), 1);
        assert!(r.to_string().contains("1 inconclusive"), "{r}");
    }

    /// The specification, by brute force: every subset of the unknown writes,
    /// every order consistent with real time. Only for tiny histories.
    fn brute_force_linearizable(h: &History) -> bool {
        let ops: Vec<&Event> = h
            .iter()
            .filter(|e| match e.outcome {
                Outcome::Ok => true,
                Outcome::Failed => false,
                Outcome::Unknown => e.is_write(),
            })
            .collect();
        // The version of each put: its own, or for an unknown put the one
        // its readers report (they must agree).
        let mut versions: Vec<Option<u64>> = Vec::new();
        for e in &ops {
            let mut v = e.version;
            if let (Op::Put { value }, Outcome::Unknown) = (&e.op, e.outcome) {
                let seen: BTreeSet<Option<u64>> = ops
                    .iter()
                    .filter(|g| g.op == Op::Get && g.value.as_ref() == Some(value))
                    .map(|g| g.version)
                    .filter(Option::is_some)
                    .collect();
                if seen.len() > 1 {
                    return false;
                }
                v = seen.into_iter().next().flatten();
            }
            versions.push(v);
        }
        let unknown: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].outcome == Outcome::Unknown)
            .collect();
        let end = |i: usize| match ops[i].outcome {
            Outcome::Ok => ops[i].complete_us,
            _ => u64::MAX,
        };
        for mask in 0..(1u32 << unknown.len()) {
            let chosen: Vec<usize> = (0..ops.len())
                .filter(|i| match unknown.iter().position(|u| u == i) {
                    Some(p) => mask & (1 << p) != 0,
                    None => true,
                })
                .collect();
            // DFS over orders: (placed mask, writer, max version).
            fn go(
                ops: &[&Event],
                versions: &[Option<u64>],
                chosen: &[usize],
                end: &dyn Fn(usize) -> u64,
                placed: u32,
                writer: Option<usize>,
                max: Option<u64>,
            ) -> bool {
                if placed.count_ones() as usize == chosen.len() {
                    return true;
                }
                for (k, &i) in chosen.iter().enumerate() {
                    if placed & (1 << k) != 0 {
                        continue;
                    }
                    let blocked = chosen.iter().enumerate().any(|(k2, &j)| {
                        placed & (1 << k2) == 0 && j != i && end(j) < ops[i].invoke_us
                    });
                    if blocked {
                        continue;
                    }
                    let e = ops[i];
                    let (mut w, mut mx) = (writer, max);
                    let legal = match &e.op {
                        Op::Get => match (e.found, writer) {
                            (Some(false), None) => true,
                            (Some(true), Some(wi)) => {
                                ops[wi].op == put_op(e.value.as_deref().unwrap_or_default())
                                    && match (e.version, versions[wi]) {
                                        (Some(a), Some(b)) => a == b,
                                        _ => true,
                                    }
                            }
                            _ => false,
                        },
                        Op::Put { .. } | Op::Delete => {
                            let flag_ok = match (&e.op, e.deleted) {
                                (Op::Delete, Some(d)) => d == writer.is_some(),
                                _ => true,
                            };
                            let ver_ok = match (versions[i], max) {
                                (Some(v), Some(m)) => v > m,
                                _ => true,
                            };
                            if let Some(v) = versions[i] {
                                mx = Some(max.map_or(v, |m| m.max(v)));
                            }
                            w = if e.op == Op::Delete { None } else { Some(i) };
                            flag_ok && ver_ok
                        }
                    };
                    if legal && go(ops, versions, chosen, end, placed | (1 << k), w, mx) {
                        return true;
                    }
                }
                false
            }
            if go(&ops, &versions, &chosen, &end, 0, None, None) {
                return true;
            }
        }
        false
    }

    /// A tiny one-key history: simulated from a valid execution, then
    /// perhaps corrupted in one field.
    fn tiny_history(rng: &mut Rng) -> History {
        let (mut h, _) = random_history(rng.next(), 4, 1 + rng.below(3) as usize, 1);
        for e in &mut h.events {
            // Squeeze times so that operations overlap a lot.
            e.invoke_us /= 8;
            e.complete_us /= 8;
        }
        for e in &mut h.events {
            // More unknown writes: a write that took effect, or failed, may
            // as well have been reported as unknown.
            if e.is_write() && rng.below(4) == 0 {
                e.outcome = Outcome::Unknown;
                e.version = None;
                e.deleted = None;
            }
        }
        if rng.below(2) == 0 {
            let n = h.len() as u64;
            let e = &mut h.events[rng.below(n) as usize];
            match rng.below(6) {
                0 => e.version = e.version.map(|v| v + 1),
                1 => e.found = e.found.map(|f| !f),
                2 => e.deleted = e.deleted.map(|d| !d),
                3 => {
                    e.outcome = match e.outcome {
                        Outcome::Ok => Outcome::Failed,
                        _ => Outcome::Unknown,
                    }
                }
                4 => e.value = Some(format!("v{}", 1 + rng.below(4))),
                _ => {
                    e.invoke_us += 30;
                    e.complete_us += 30;
                }
            }
            if e.found == Some(false) {
                e.value = None;
            } else if e.op == Op::Get && e.outcome == Outcome::Ok && e.value.is_none() {
                e.found = Some(false);
            }
        }
        h
    }

    #[test]
    fn agrees_with_brute_force_on_tiny_histories() {
        const CASES: usize = 3000;
        let mut rng = Rng(7);
        let (mut pass, mut fail) = (0, 0);
        for case in 0..CASES {
            let h = tiny_history(&mut rng);
            let expected = brute_force_linearizable(&h);
            let r = check_history(&h);
            let got = r.keys.iter().all(|k| k.verdict == Verdict::Linearizable);
            let jsonl = {
                let mut buf = Vec::new();
                h.write_to(&mut buf).expect("write");
                String::from_utf8(buf).expect("utf8")
            };
            assert_eq!(got, expected, "case {case}: checker says {r}\n{jsonl}");
            if expected {
                pass += 1;
            } else {
                fail += 1;
            }
        }
        eprintln!("{pass} linearizable, {fail} not");
        assert!(pass > 300 && fail > 300, "{pass} linearizable, {fail} not");
    }
}
