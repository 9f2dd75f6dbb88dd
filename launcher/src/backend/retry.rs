//! When a failed launcher API request is tried again. Pure, so the schedule is unit-tested.

use std::time::Duration;

/// How a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// How many attempts in all; `None` retries until the caller's own deadline.
    pub attempts: Option<u32>,
    /// The wait after the first failure; it doubles each time, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Retry only when the request never reached the backend (connect errors). For requests
    /// that are not safe to repeat, like a state lock: a lock that did reach the backend must
    /// not be asked for again.
    pub connect_only: bool,
}

impl Retry {
    /// For most requests: connect errors, timeouts and 5xx, six attempts over about 15 s.
    pub const STANDARD: Retry = Retry {
        attempts: Some(6),
        first_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(8),
        connect_only: false,
    };
    /// For log batches, which must get through: until the caller gives up.
    pub const UNTIL_ACCEPTED: Retry = Retry {
        attempts: None,
        first_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(5),
        connect_only: false,
    };
    /// For requests that must not be repeated once they reached the backend.
    pub const CONNECT_ONLY: Retry = Retry {
        attempts: Some(4),
        first_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(2),
        connect_only: true,
    };

    /// The wait after failed attempt `attempt` (from 1), or `None` when no attempt is left.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if self.attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(16);
        Some(
            self.first_delay
                .saturating_mul(1 << doublings)
                .min(self.max_delay),
        )
    }
}

/// Whether a status is worth another attempt: the backend failed or is overloaded, not the
/// request.
pub fn is_transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_stop_after_the_last_attempt() {
        let delays: Vec<_> = (1..=7).map(|a| Retry::STANDARD.delay_after(a)).collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(
            delays,
            [ms(500), ms(1000), ms(2000), ms(4000), ms(8000), None, None]
        );
        assert_eq!(
            Retry::UNTIL_ACCEPTED.delay_after(1000),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn only_server_side_failures_are_transient() {
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(is_transient_status(status), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 413, 423] {
            assert!(!is_transient_status(status), "{status}");
        }
    }
}
