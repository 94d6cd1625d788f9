//! The one clock the servers read: milliseconds since boot, counting suspend.
//!
//! Leases are only safe if the holder's clock cannot stand still while real
//! time passes. `Instant` on Linux is CLOCK_MONOTONIC, which stops while the
//! machine is suspended; CLOCK_BOOTTIME does not, so a laptop that sleeps
//! through a lease comes back to an expired one. Only the drivers call
//! [`now`]: the protocol state machines take a [`Time`] as an argument, so
//! tests can move time by hand.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point on the boot clock, in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Time(pub u64);

impl Time {
    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.as_millis() as u64))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// How long until `later` (zero if it has passed).
    pub fn until(self, later: Time) -> Duration {
        later.since(self)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Now, on CLOCK_BOOTTIME.
pub fn now() -> Time {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => Time(ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000),
        // CLOCK_BOOTTIME exists on every Linux since 2.6.39; failing here
        // would mean no safe lease can be taken at all.
        Err(e) => {
            tracing::error!(error = %e, "CLOCK_BOOTTIME cannot be read; stopping");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_moves_forward() {
        let a = now();
        std::thread::sleep(Duration::from_millis(5));
        let b = now();
        assert!(b.since(a) >= Duration::from_millis(4), "{a:?} then {b:?}");
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(
            a.plus(Duration::from_secs(1)).since(a),
            Duration::from_secs(1)
        );
    }
}
