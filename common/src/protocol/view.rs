//! Views and leases: who votes on a batch, and for how long a replica may
//! answer linearizable reads on its own.
//!
//! A [`View`] is `(epoch, members)`. The coordinator bumps the epoch at every
//! view change and at every start, makes the VIEW record durable before the
//! first prepare of that epoch, and commits a batch only when every member
//! of the batch's view voted YES. A member is an `(id, incarnation)`: a data
//! dir gets a random incarnation when it is created, so a wiped replica
//! comes back as somebody new and its old votes do not count for it.
//!
//! Leases make a member's local reads safe without asking anyone: the
//! holder's lease always ends before the grantor stops counting it. The
//! holder notes `t0` before it asks and ends its lease at `t0 + 0.9 D`; the
//! grantor, which noted `t_g` after the request arrived, counts it as live
//! until `t_g + D'` with `D' = D (1+rho)/(1-rho) + eps` ([`grantor_bound`]).
//! Only the *rate* of the two clocks is assumed to be within `rho` of real
//! time; a paused process or a slow network only makes the holder's lease
//! end earlier relative to what the grantor assumes.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Time;
use crate::types::NodeId;

/// A data dir's random identity, drawn when the dir is created.
pub type Incarnation = u64;

/// Bound on how far a clock's rate may drift from real time.
pub const RHO: f64 = 1e-3;

/// Slack added to the grantor's bound for timer granularity.
pub const EPS: Duration = Duration::from_millis(10);

/// Fraction of `D` the holder keeps after `t0`.
pub const HOLDER_FRACTION: f64 = 0.9;

/// One voting member of a view.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct Member {
    /// The participant id.
    pub id: NodeId,
    /// Its data dir's incarnation.
    pub incarnation: Incarnation,
}

/// Who votes on the batches of one epoch.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub struct View {
    /// The epoch; batch ids of this view are `(epoch, seq)`.
    pub epoch: u64,
    /// The members, sorted by id, one per id.
    pub members: Vec<Member>,
}

impl View {
    /// The member with this id, if any.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Whether `(id, incarnation)` is a member.
    pub fn contains(&self, id: NodeId, incarnation: Incarnation) -> bool {
        self.member(id)
            .is_some_and(|m| m.incarnation == incarnation)
    }

    /// Member ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|m| m.id)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when nobody is a member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.ids().map(|i| i.to_string()).collect();
        write!(f, "view {} [{}]", self.epoch, ids.join(","))
    }
}

/// The end of a lease of length `d` requested at `t0` on the holder's clock.
pub fn holder_end(t0: Time, d: Duration) -> Time {
    t0.plus(d.mul_f64(HOLDER_FRACTION))
}

/// How long after a grant at `t_g` the grantor must assume the lease may
/// still be held: `D' = D (1+rho)/(1-rho) + eps`.
pub fn grantor_bound(d: Duration) -> Duration {
    d.mul_f64((1.0 + RHO) / (1.0 - RHO)) + EPS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holder's lease, run on a clock `rho` fast from a `t0` before the
    /// grant, still ends before the grantor's bound run on a clock `rho`
    /// slow from the grant.
    #[test]
    fn holder_lease_ends_before_the_grantors_bound_at_the_worst_drift() {
        for d_ms in [100u64, 1000, 5000, 60_000] {
            let d = Duration::from_millis(d_ms);
            // Real time the holder's lease may last: its 0.9 D measured on a
            // clock running slow by rho lasts longer in real time.
            let holder_real = d.mul_f64(HOLDER_FRACTION).as_secs_f64() / (1.0 - RHO);
            // Real time the grantor waits: D' measured on a clock running fast.
            let grantor_real = grantor_bound(d).as_secs_f64() / (1.0 + RHO);
            assert!(holder_real < grantor_real, "D = {d:?}");
        }
        assert_eq!(holder_end(Time(1000), Duration::from_secs(1)), Time(1900));
        assert_eq!(
            grantor_bound(Duration::from_secs(1)).as_millis(),
            1012,
            "D' for a 1 s lease"
        );
    }

    #[test]
    fn membership_is_by_id_and_incarnation() {
        let v = View {
            epoch: 4,
            members: vec![
                Member {
                    id: 1,
                    incarnation: 11,
                },
                Member {
                    id: 3,
                    incarnation: 33,
                },
            ],
        };
        assert!(v.contains(1, 11));
        assert!(
            !v.contains(1, 12),
            "a wiped replica is not the member it replaced"
        );
        assert!(!v.contains(2, 11));
        assert_eq!(v.to_string(), "view 4 [1,3]");
    }
}
