//! Capped exponential backoff with jitter, as a pure function of the attempt number.

use std::time::Duration;

/// Reconnect delays: `initial * 2^(attempt-1)`, capped at `max`, with "equal jitter": the
/// delay is drawn uniformly from `[d * (1 - jitter), d]`, so a fleet of controllers restarted
/// together does not reconnect in lockstep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
    /// Fraction of the delay that is random, 0.0..=1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based), given `random` uniform in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let random = random.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter + jitter * random)
    }

    /// The delay before attempt `attempt`, with a fresh random draw.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        use rand::RngExt as _;
        self.delay(attempt, rand::rng().random_range(0.0..1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: 0.5,
        };
        let cases = [
            (1, 0.999_999, 100),
            (2, 0.999_999, 200),
            (3, 0.999_999, 400),
            (5, 0.999_999, 1600),
            (6, 0.999_999, 2000),
            (60, 0.999_999, 2000),
            (1, 0.0, 50),
            (6, 0.0, 1000),
        ];
        for (attempt, random, want_ms) in cases {
            let got = backoff.delay(attempt, random).as_millis();
            assert!(
                got.abs_diff(want_ms) <= 1,
                "attempt {attempt}, random {random}: got {got} ms, want {want_ms} ms"
            );
        }
        for attempt in 0..100 {
            let delay = backoff.next_delay(attempt);
            assert!(delay <= backoff.max, "{delay:?}");
        }
    }
}
