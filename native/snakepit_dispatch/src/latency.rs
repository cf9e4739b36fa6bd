//! Percentiles of recent queue and run times.
//!
//! Each answered request's queue time (submitted → started on its worker)
//! and run time (started → answered) go into HDR histograms (3 significant
//! digits, 1 µs to 1 hour). "Recent" is the current period and the one
//! before it: periods are 60 s, so percentiles cover the last 60 to 120 s.

use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// How long a request waited and ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    pub queued: Duration,
    pub ran: Duration,
}

/// p50, p95 and p99 in microseconds; `None` with no samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p95: Option<u64>,
    pub p99: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub queue: Percentiles,
    pub run: Percentiles,
    /// Requests the percentiles are over.
    pub samples: u64,
}

const PERIOD: Duration = Duration::from_secs(60);
const MAX_US: u64 = 3_600_000_000;

struct Pair {
    queue: Histogram<u64>,
    run: Histogram<u64>,
}

impl Pair {
    fn new() -> Pair {
        let h = || Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds");
        Pair {
            queue: h(),
            run: h(),
        }
    }
}

pub struct Latency {
    current: Pair,
    previous: Pair,
    period_start: Instant,
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("samples", &self.current.run.len())
            .finish()
    }
}

impl Latency {
    pub fn new(now: Instant) -> Latency {
        Latency {
            current: Pair::new(),
            previous: Pair::new(),
            period_start: now,
        }
    }

    pub fn record(&mut self, timing: Timing, now: Instant) {
        self.rotate(now);
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, MAX_US);
        self.current.queue.saturating_record(us(timing.queued));
        self.current.run.saturating_record(us(timing.ran));
    }

    pub fn summary(&mut self, now: Instant) -> Summary {
        self.rotate(now);
        let merged = |a: &Histogram<u64>, b: &Histogram<u64>| {
            let mut m = a.clone();
            m.add(b).expect("same bounds");
            m
        };
        let queue = merged(&self.current.queue, &self.previous.queue);
        let run = merged(&self.current.run, &self.previous.run);
        Summary {
            queue: percentiles(&queue),
            run: percentiles(&run),
            samples: run.len(),
        }
    }

    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed < PERIOD {
            return;
        }
        if elapsed >= 2 * PERIOD {
            self.previous = Pair::new();
            self.current = Pair::new();
        } else {
            self.previous = std::mem::replace(&mut self.current, Pair::new());
        }
        self.period_start = now;
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50: Some(h.value_at_quantile(0.50)),
        p95: Some(h.value_at_quantile(0.95)),
        p99: Some(h.value_at_quantile(0.99)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(queue_us: u64, run_us: u64) -> Timing {
        Timing {
            queued: Duration::from_micros(queue_us),
            ran: Duration::from_micros(run_us),
        }
    }

    #[test]
    fn percentiles_of_what_was_recorded() {
        let t0 = Instant::now();
        let mut l = Latency::new(t0);
        assert_eq!(l.summary(t0), Summary::default());
        for i in 1..=100 {
            l.record(t(i, 1000 * i), t0);
        }
        let s = l.summary(t0);
        assert_eq!(s.samples, 100);
        assert_eq!(s.queue.p50, Some(50));
        assert_eq!(s.queue.p99, Some(99));
        let p95 = s.run.p95.unwrap();
        assert!((94_900..=95_100).contains(&p95), "{p95}");
    }

    #[test]
    fn old_periods_are_forgotten() {
        let t0 = Instant::now();
        let mut l = Latency::new(t0);
        l.record(t(5, 5), t0);
        assert_eq!(
            l.summary(t0 + PERIOD).samples,
            1,
            "the previous period counts"
        );
        l.record(t(7, 7), t0 + PERIOD);
        assert_eq!(l.summary(t0 + PERIOD).samples, 2);
        assert_eq!(
            l.summary(t0 + 2 * PERIOD).samples,
            1,
            "only the last period"
        );
        assert_eq!(l.summary(t0 + 5 * PERIOD).samples, 0);
    }
}
