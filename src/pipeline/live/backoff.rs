//! Reconnect back-off for live sources: the first retry comes quickly, each further failure
//! doubles the wait up to a ceiling, and a success starts over.

use std::time::Duration;

/// Exponential back-off between `initial` and `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// `max` below `initial` is raised to it.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The wait before the next attempt after a failure; the one after it doubles.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// The source works again: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn doubles_from_the_first_delay_up_to_the_ceiling() {
        let mut b = Backoff::new(ms(500), ms(8000));
        let waits: Vec<u64> = (0..7).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(ms(100), ms(1000));
        b.failed();
        b.failed();
        b.failed();
        b.reset();
        assert_eq!(b.failed(), ms(100));
        assert_eq!(b.failed(), ms(200));
    }

    #[test]
    fn a_ceiling_not_a_power_of_two_times_the_start_is_still_the_ceiling() {
        let mut b = Backoff::new(ms(300), ms(1000));
        let waits: Vec<u64> = (0..4).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [300, 600, 1000, 1000]);
    }

    #[test]
    fn a_ceiling_below_the_start_and_huge_delays_do_not_misbehave() {
        let mut low = Backoff::new(ms(500), ms(10));
        assert_eq!(low.failed(), ms(500));
        assert_eq!(low.failed(), ms(500));
        let mut huge = Backoff::new(Duration::MAX / 2 + ms(1), Duration::MAX);
        huge.failed();
        assert_eq!(huge.failed(), Duration::MAX);
        assert_eq!(huge.failed(), Duration::MAX);
    }
}
