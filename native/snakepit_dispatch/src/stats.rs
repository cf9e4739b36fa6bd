//! A pool's counters.
//!
//! Every request the pool is given ends in exactly one [`Outcome`], counted
//! once, when its answer is decided. So once nothing is queued or in flight,
//!
//! ```text
//! requests == completed + python_errors + validation_errors + worker_errors
//!           + transport_errors + timeouts + queue_timeouts + cancelled
//!           + rejected + stopped
//! ```
//!
//! and at any moment `requests == settled() + queued + in flight (not given
//! up)`. A request that timed out while running is counted as a timeout when
//! its caller gives up; the worker's late answer is dropped and not counted
//! again.

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The worker answered with a result.
    Completed,
    /// The tool raised.
    PythonError,
    /// Refused before running: unknown tool, bad arguments, a value that
    /// cannot be sent, a frame over the size limit.
    Validation,
    /// Its worker died while running it.
    WorkerError,
    /// Its worker broke the protocol while running it.
    TransportError,
    /// Its caller timed out (queued or running).
    Timeout,
    /// Its caller's `queue_timeout` passed while it was queued.
    QueueTimeout,
    /// Its caller died.
    Cancelled,
    /// The queue was full (`max_queue`).
    Rejected,
    /// The pool was stopped before a worker took it.
    Stopped,
}

/// Counters of a pool since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests given to the pool, whatever became of them.
    pub requests: u64,
    pub completed: u64,
    pub python_errors: u64,
    pub validation_errors: u64,
    pub worker_errors: u64,
    pub transport_errors: u64,
    pub timeouts: u64,
    pub queue_timeouts: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub stopped: u64,
    /// Not an outcome: requests queued again because their worker died
    /// before starting them.
    pub requeued: u64,
    /// Workers that exited on their own or were killed, while the pool ran.
    pub restarts: u64,
    /// Workers retired by `max_requests`, `max_age` or `max_memory_mb`.
    pub recycles: u64,
    /// Lines of worker output (stderr, log records) dropped over the
    /// output budget (see [`crate::output`]).
    pub dropped_output_lines: u64,
    /// Chunks of streaming calls delivered to their callers.
    pub chunks: u64,
    /// Sessions ended by `session_ttl`.
    pub sessions_expired: u64,
    /// Sessions whose worker died or was recycled with their state.
    pub sessions_lost: u64,
}

impl Stats {
    /// Counts one ended request.
    pub fn record(&mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Completed => &mut self.completed,
            Outcome::PythonError => &mut self.python_errors,
            Outcome::Validation => &mut self.validation_errors,
            Outcome::WorkerError => &mut self.worker_errors,
            Outcome::TransportError => &mut self.transport_errors,
            Outcome::Timeout => &mut self.timeouts,
            Outcome::QueueTimeout => &mut self.queue_timeouts,
            Outcome::Cancelled => &mut self.cancelled,
            Outcome::Rejected => &mut self.rejected,
            Outcome::Stopped => &mut self.stopped,
        };
        *counter += 1;
    }

    /// Every counter with its name, which the NIF makes a key of
    /// `pool_stats/1`'s map. The pattern names every field: a new counter
    /// does not compile until it is listed here too.
    pub fn fields(&self) -> impl IntoIterator<Item = (&'static str, u64)> {
        let Stats {
            requests,
            completed,
            python_errors,
            validation_errors,
            worker_errors,
            transport_errors,
            timeouts,
            queue_timeouts,
            cancelled,
            rejected,
            stopped,
            requeued,
            restarts,
            recycles,
            dropped_output_lines,
            chunks,
            sessions_expired,
            sessions_lost,
        } = *self;
        [
            ("requests", requests),
            ("completed", completed),
            ("python_errors", python_errors),
            ("validation_errors", validation_errors),
            ("worker_errors", worker_errors),
            ("transport_errors", transport_errors),
            ("timeouts", timeouts),
            ("queue_timeouts", queue_timeouts),
            ("cancelled", cancelled),
            ("rejected", rejected),
            ("stopped", stopped),
            ("requeued", requeued),
            ("restarts", restarts),
            ("recycles", recycles),
            ("dropped_output_lines", dropped_output_lines),
            ("chunks", chunks),
            ("sessions_expired", sessions_expired),
            ("sessions_lost", sessions_lost),
        ]
    }

    /// Requests that have ended, all outcomes together.
    pub fn settled(&self) -> u64 {
        self.completed
            + self.python_errors
            + self.validation_errors
            + self.worker_errors
            + self.transport_errors
            + self.timeouts
            + self.queue_timeouts
            + self.cancelled
            + self.rejected
            + self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Outcome; 10] = [
        Outcome::Completed,
        Outcome::PythonError,
        Outcome::Validation,
        Outcome::WorkerError,
        Outcome::TransportError,
        Outcome::Timeout,
        Outcome::QueueTimeout,
        Outcome::Cancelled,
        Outcome::Rejected,
        Outcome::Stopped,
    ];

    #[test]
    fn every_outcome_has_its_own_counter_and_counts_in_settled() {
        let mut seen = Vec::new();
        for (i, outcome) in ALL.into_iter().enumerate() {
            let mut s = Stats::default();
            for _ in 0..=i {
                s.record(outcome);
            }
            assert_eq!(s.settled(), i as u64 + 1, "{outcome:?}");
            let fields = [
                s.completed,
                s.python_errors,
                s.validation_errors,
                s.worker_errors,
                s.transport_errors,
                s.timeouts,
                s.queue_timeouts,
                s.cancelled,
                s.rejected,
                s.stopped,
            ];
            let which = fields.iter().position(|&n| n > 0).unwrap();
            assert!(!seen.contains(&which), "{outcome:?} shares a counter");
            seen.push(which);
        }
    }

    #[test]
    fn bookkeeping_counters_are_not_outcomes() {
        let s = Stats {
            requeued: 3,
            restarts: 2,
            recycles: 1,
            dropped_output_lines: 4,
            ..Stats::default()
        };
        assert_eq!(s.settled(), 0);
    }

    /// The field names `{:?}` prints for a struct, in order.
    fn declared(debug: String) -> Vec<String> {
        let inner = &debug[debug.find('{').unwrap() + 1..debug.rfind('}').unwrap()];
        let names = inner.split(',').map(|f| f.split(':').next().unwrap());
        names.map(|name| name.trim().to_string()).collect()
    }

    #[test]
    fn fields_are_named_as_declared_and_apart_from_the_gauges() {
        let stats = Stats::default();
        let gauges = crate::dispatcher::Gauges::default();
        let counters: Vec<&str> = stats.fields().into_iter().map(|f| f.0).collect();
        let gauge_names: Vec<&str> = gauges.fields().into_iter().map(|f| f.0).collect();
        assert_eq!(counters, declared(format!("{stats:?}")));
        assert_eq!(gauge_names, declared(format!("{gauges:?}")));
        // The NIF returns both in one map.
        assert!(counters.iter().all(|name| !gauge_names.contains(name)));
    }
}
