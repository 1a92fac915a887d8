//! Lets a repeated warning through once per interval and counts the ones held back.
//!
//! Why: when every request of a volume fails for one reason (metadata unreachable, the
//! lease not renewed), a guest at queue depth 32 sends thousands a second, and one log
//! line each would bury the line that says why, and the disk under it.

use std::time::{Duration, Instant};

/// How often one volume's failed NBD requests are logged while they keep failing.
pub const FAILED_REQUEST_LOG_EVERY: Duration = Duration::from_secs(5);

/// The state of one throttled warning. Pure: the caller passes the time in.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last_logged_at: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    /// A throttle that lets one warning through per `every`.
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last_logged_at: None,
            held_back: 0,
        }
    }

    /// Whether the warning due at `now` is to be logged: `Some(n)` with the number held
    /// back since the last one logged, `None` when this one is held back too.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due {
            self.held_back += 1;
            return None;
        }
        self.last_logged_at = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_warning_goes_through_and_the_next_within_the_interval_are_counted() {
        let t0 = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(5));
        assert_eq!(throttle.admit(t0), Some(0));
        assert_eq!(throttle.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit(t0 + Duration::from_millis(4999)), None);
        assert_eq!(throttle.admit(t0 + Duration::from_secs(5)), Some(2));
        assert_eq!(throttle.admit(t0 + Duration::from_secs(60)), Some(0));
    }

    proptest! {
        /// Every warning is either logged or counted in the next one logged, and no two
        /// logged ones are closer than the interval.
        #[test]
        fn no_warning_is_lost_and_none_comes_early(
            gaps_ms in proptest::collection::vec(0u64..3000, 1..200),
        ) {
            let every = Duration::from_secs(1);
            let t0 = Instant::now();
            let mut throttle = LogThrottle::new(every);
            let (mut now, mut accounted, mut last_logged) = (t0, 0u64, None::<Instant>);
            for gap in &gaps_ms {
                now += Duration::from_millis(*gap);
                if let Some(held_back) = throttle.admit(now) {
                    if let Some(at) = last_logged {
                        prop_assert!(now - at >= every);
                    }
                    accounted += held_back + 1;
                    last_logged = Some(now);
                }
            }
            prop_assert_eq!(accounted + throttle.held_back, gaps_ms.len() as u64);
        }
    }
}
