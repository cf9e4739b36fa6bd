//! The pool's circuit breaker (off unless configured).
//!
//! **Closed**: calls go through. A call that ends in a worker fault (its
//! worker died or broke the protocol under it, or its caller timed out while
//! it ran or waited) counts as a failure; any answer from a worker (a result,
//! even a Python error) resets the count. `threshold` failures in a row, the
//! first of them within `window` of the last, **open** the circuit: calls
//! are refused at once until `cooldown` has passed. Then the next call is let
//! through as a probe (**half-open**), others still refused; the probe's
//! success closes the circuit, its failure opens it again for another
//! `cooldown`.

use crate::stats::Outcome;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub threshold: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

/// The breaker's state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Refusing calls until the given instant.
    Open(Instant),
    /// One probe call is running (its request id).
    HalfOpen(u64),
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open(_) => "open",
            State::HalfOpen(_) => "half_open",
        }
    }
}

/// A change of state, for telemetry and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Open { until: Instant, failures: u32 },
    HalfOpen,
    Close,
}

/// Why a call was refused: the circuit is open until then (or half-open,
/// with a probe running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub until: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    settings: Settings,
    state: State,
    /// Failures in a row, and when the first of them happened.
    failures: u32,
    first_failure: Option<Instant>,
    transitions: Vec<Transition>,
}

impl Breaker {
    pub fn new(settings: Settings) -> Breaker {
        assert!(settings.threshold > 0, "threshold must be positive");
        Breaker {
            settings,
            state: State::Closed,
            failures: 0,
            first_failure: None,
            transitions: Vec::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether request `id` may go through now.
    pub fn admit(&mut self, id: u64, now: Instant) -> Result<(), Refused> {
        match self.state {
            State::Closed => Ok(()),
            State::Open(until) if now < until => Err(Refused { until: Some(until) }),
            State::Open(_) => {
                self.state = State::HalfOpen(id);
                self.transitions.push(Transition::HalfOpen);
                Ok(())
            }
            State::HalfOpen(_) => Err(Refused { until: None }),
        }
    }

    /// Request `id` ended with `outcome`.
    pub fn observe(&mut self, id: u64, outcome: Outcome, now: Instant) {
        let failed = match outcome {
            Outcome::WorkerError | Outcome::TransportError | Outcome::Timeout => true,
            Outcome::Completed | Outcome::PythonError | Outcome::Validation => false,
            // Not the workers' doing.
            Outcome::QueueTimeout | Outcome::Cancelled | Outcome::Rejected | Outcome::Stopped => {
                if self.state == State::HalfOpen(id) {
                    // The probe never got an answer: let the next call probe.
                    self.state = State::Open(now);
                }
                return;
            }
        };
        match self.state {
            State::HalfOpen(probe) if probe == id => {
                if failed {
                    self.open(now, 1);
                } else {
                    self.close();
                }
            }
            State::Closed if failed => {
                let first = match self.first_failure {
                    Some(t) if now.saturating_duration_since(t) <= self.settings.window => t,
                    _ => {
                        self.failures = 0;
                        now
                    }
                };
                self.first_failure = Some(first);
                self.failures += 1;
                if self.failures >= self.settings.threshold {
                    let failures = self.failures;
                    self.open(now, failures);
                }
            }
            State::Closed => {
                self.failures = 0;
                self.first_failure = None;
            }
            // Calls admitted before the circuit opened end while it is open.
            State::Open(_) | State::HalfOpen(_) => {}
        }
    }

    fn open(&mut self, now: Instant, failures: u32) {
        let until = now + self.settings.cooldown;
        self.state = State::Open(until);
        self.failures = 0;
        self.first_failure = None;
        self.transitions.push(Transition::Open { until, failures });
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
        self.first_failure = None;
        self.transitions.push(Transition::Close);
    }

    /// The changes since the last call, oldest first.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        if self.transitions.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut self.transitions)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(Settings {
            threshold: 3,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
        })
    }

    #[test]
    fn opens_after_threshold_failures_in_a_row_within_the_window() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.observe(1, Outcome::WorkerError, t0);
        b.observe(2, Outcome::Timeout, t0);
        b.observe(3, Outcome::Completed, t0);
        assert_eq!(b.state(), State::Closed, "an answer resets the count");
        b.observe(4, Outcome::WorkerError, t0);
        b.observe(5, Outcome::TransportError, t0);
        b.observe(6, Outcome::WorkerError, t0 + Duration::from_secs(1));
        let until = t0 + Duration::from_secs(6);
        assert_eq!(b.state(), State::Open(until));
        assert_eq!(
            b.take_transitions(),
            [Transition::Open { until, failures: 3 }]
        );
        assert_eq!(
            b.admit(7, t0 + Duration::from_secs(2)),
            Err(Refused { until: Some(until) })
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_open_it() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.observe(1, Outcome::WorkerError, t0);
        b.observe(2, Outcome::WorkerError, t0 + Duration::from_secs(11));
        b.observe(3, Outcome::WorkerError, t0 + Duration::from_secs(12));
        assert_eq!(b.state(), State::Closed);
        b.observe(4, Outcome::WorkerError, t0 + Duration::from_secs(13));
        assert!(matches!(b.state(), State::Open(_)));
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_or_reopens_it() {
        let mut b = breaker();
        let t0 = Instant::now();
        for id in 1..=3 {
            b.observe(id, Outcome::WorkerError, t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(10, later), Ok(()));
        assert_eq!(b.state(), State::HalfOpen(10));
        assert_eq!(
            b.admit(11, later),
            Err(Refused { until: None }),
            "one probe"
        );
        b.observe(9, Outcome::Completed, later); // an old call: not the probe
        assert_eq!(b.state(), State::HalfOpen(10));
        b.observe(10, Outcome::WorkerError, later);
        assert!(matches!(b.state(), State::Open(_)));
        let again = later + Duration::from_secs(5);
        assert_eq!(b.admit(12, again), Ok(()));
        b.observe(12, Outcome::PythonError, again);
        assert_eq!(b.state(), State::Closed, "a Python error is an answer");
        let kinds: Vec<&str> = b
            .take_transitions()
            .iter()
            .map(|t| match t {
                Transition::Open { .. } => "open",
                Transition::HalfOpen => "half_open",
                Transition::Close => "close",
            })
            .collect();
        assert_eq!(kinds, ["open", "half_open", "open", "half_open", "close"]);
    }

    #[test]
    fn a_probe_that_never_ran_lets_the_next_call_probe() {
        let mut b = breaker();
        let t0 = Instant::now();
        for id in 1..=3 {
            b.observe(id, Outcome::WorkerError, t0);
        }
        let later = t0 + Duration::from_secs(6);
        b.admit(10, later).unwrap();
        b.observe(10, Outcome::QueueTimeout, later);
        assert_eq!(b.admit(11, later), Ok(()));
        assert_eq!(b.state(), State::HalfOpen(11));
    }
}
