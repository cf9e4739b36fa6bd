//! The maps and tuples the NIF hands to Elixir, each declared once as a
//! struct. Keys are atoms named after the fields; `None` becomes `nil`.

use crate::atoms;
use rustler::{Atom, Encoder, Env, NifMap, Term};
use snakepit_dispatch::dispatcher::{Gauges, State};
use snakepit_dispatch::latency::{Percentiles, Summary};
use snakepit_dispatch::stats::Stats;

/// `Snakepit.Native.pool_stats/1`: one map of the dispatcher's gauges (now)
/// and counters (since start), keyed by their field names (their one
/// declaration is in `snakepit_dispatch`), and of what the NIF adds.
pub struct PoolStats {
    pub gauges: Gauges,
    pub counters: Stats,
    pub native: NativeStats,
}

/// What `pool_stats/1` knows beyond the dispatcher.
#[derive(NifMap)]
pub struct NativeStats {
    /// Bytes of shared-memory segments in flight (see `shm.rs`).
    pub shm_bytes: u64,
    /// The circuit breaker's state: `:closed`, `:open`, `:half_open`, or
    /// `nil` without a breaker.
    pub circuit: Option<Atom>,
    pub latency: LatencyStats,
}

/// Percentiles of recent queue and run times, in microseconds.
#[derive(NifMap)]
pub struct LatencyStats {
    pub queue: PercentileStats,
    pub run: PercentileStats,
    pub samples: u64,
}

#[derive(NifMap)]
pub struct PercentileStats {
    pub p50: Option<u64>,
    pub p95: Option<u64>,
    pub p99: Option<u64>,
}

impl From<Percentiles> for PercentileStats {
    fn from(p: Percentiles) -> Self {
        PercentileStats {
            p50: p.p50,
            p95: p.p95,
            p99: p.p99,
        }
    }
}

impl PoolStats {
    pub fn new(gauges: Gauges, counters: &Stats, circuit: Option<Atom>, latency: Summary) -> Self {
        PoolStats {
            gauges,
            counters: counters.clone(),
            native: NativeStats {
                shm_bytes: 0,
                circuit,
                latency: LatencyStats {
                    queue: latency.queue.into(),
                    run: latency.run.into(),
                    samples: latency.samples,
                },
            },
        }
    }
}

impl Encoder for PoolStats {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let dispatcher = self.gauges.fields().into_iter();
        let fields = dispatcher.chain(self.counters.fields());
        fields.fold(self.native.encode(env), |map, (name, n)| {
            let key = Atom::from_str(env, name).expect("a field name is an atom");
            assert!(map.map_get(key).is_err(), "two stats named {name}");
            map.map_put(key, n).expect("a map")
        })
    }
}

/// One row of `Snakepit.Native.pool_workers/1`.
#[derive(NifMap)]
pub struct WorkerInfo {
    pub worker_id: u64,
    pub os_pid: u32,
    pub state: Atom,
    pub in_flight: u64,
    /// Its calls running now (at most the pool's `concurrency`).
    pub running: u64,
    pub requests: u64,
    pub age_ms: u64,
    pub rss_bytes: Option<u64>,
    /// Sessions bound to it.
    pub sessions: u64,
}

/// A binary made from bytes (a `Vec<u8>` would encode as a list).
pub struct Bytes(pub Vec<u8>);

impl Encoder for Bytes {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let mut bin = rustler::NewBinary::new(env, self.0.len());
        bin.as_mut_slice().copy_from_slice(&self.0);
        rustler::Binary::from(bin).encode(env)
    }
}

impl<'a> rustler::Decoder<'a> for Bytes {
    fn decode(term: Term<'a>) -> rustler::NifResult<Self> {
        Ok(Bytes(rustler::Binary::decode(term)?.as_slice().to_vec()))
    }
}

/// One row of `Snakepit.Native.pool_sessions/1`.
#[derive(NifMap)]
pub struct SessionInfo {
    pub session_id: Bytes,
    /// The worker it is bound to (`nil` until its first call runs, or once
    /// it is lost).
    pub worker_id: Option<u64>,
    pub os_pid: Option<u32>,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub calls: u64,
    /// Its calls queued or running.
    pub pending: u64,
    /// Its worker is gone and no call has been told yet.
    pub lost: bool,
}

/// Details of a session call refused or failed for its session.
#[derive(NifMap)]
pub struct SessionDetails {
    pub session_id: Bytes,
    pub affinity: Atom,
    pub session_lost: bool,
}

#[derive(NifMap)]
pub struct SessionLimitDetails {
    pub max_sessions: u64,
}

/// Details of a call refused by the open circuit breaker.
#[derive(NifMap)]
pub struct CircuitDetails {
    pub circuit: Atom,
    /// Until the circuit half-opens; `nil` while a probe runs.
    pub retry_after_ms: Option<u64>,
}

pub fn state_atom(state: State) -> Atom {
    match state {
        State::Starting => atoms::starting(),
        State::Idle => atoms::idle(),
        State::Busy => atoms::busy(),
        State::Stopping => atoms::stopping(),
    }
}

/// How a worker ended: the details of a `:worker`/`:transport` error and of
/// the owner's `:exit` event.
#[derive(NifMap, Clone)]
pub struct ExitDetails {
    pub worker_id: u64,
    pub os_pid: u32,
    pub status: Option<i32>,
    pub signal: Option<i32>,
    /// Why it was killed or broke the protocol.
    pub reason: Option<String>,
    /// Which limit retired it (`"max_requests"`, ...).
    pub recycled: Option<String>,
}

/// Details of a refused handshake.
#[derive(NifMap)]
pub struct HandshakeDetails {
    pub worker_id: u64,
    pub os_pid: u32,
    pub expected_protocol: u64,
    pub protocol: Option<u64>,
}

#[derive(NifMap)]
pub struct PathDetails {
    pub path: String,
}

#[derive(NifMap)]
pub struct SizeDetails {
    pub limit: u64,
    /// The encoded size, when encoding got that far.
    pub bytes: Option<u64>,
}

#[derive(NifMap)]
pub struct QueueDetails {
    pub queued: u64,
    pub limit: u64,
}

#[derive(NifMap)]
pub struct NoDetails {}

/// What an error's details map holds.
pub enum Details {
    None,
    Path(PathDetails),
    Size(SizeDetails),
    Queue(QueueDetails),
    Exit(ExitDetails),
    /// The worker died with the session's state.
    ExitLost(Box<(ExitDetails, Bytes)>),
    Handshake(HandshakeDetails),
    Session(SessionDetails),
    SessionLimit(SessionLimitDetails),
    Circuit(CircuitDetails),
}

/// A failure found on the native side: `{category, message, details}`,
/// which `Snakepit.Error.from_native/1` turns into a `%Snakepit.Error{}`.
pub struct Failure {
    pub category: Atom,
    pub message: String,
    pub details: Details,
    /// The call never started: retrying it cannot repeat a side effect
    /// (`details.retryable: true`, read by `Snakepit.Error.retryable?/1`).
    pub retryable: bool,
}

impl Failure {
    pub fn new(category: Atom, message: impl Into<String>, details: Details) -> Failure {
        Failure {
            category,
            message: message.into(),
            details,
            retryable: false,
        }
    }

    /// Marks a failure of a call that never started.
    pub fn retryable(mut self) -> Failure {
        self.retryable = true;
        self
    }

    /// The pool was stopped before the call could run.
    pub fn stopped() -> Failure {
        Failure::new(atoms::pool(), "the pool was stopped", Details::None).retryable()
    }
}

impl Encoder for Failure {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let details = match &self.details {
            Details::None => NoDetails {}.encode(env),
            Details::Path(d) => d.encode(env),
            Details::Size(d) => d.encode(env),
            Details::Queue(d) => d.encode(env),
            Details::Exit(d) => d.encode(env),
            Details::ExitLost(lost) => {
                let (d, session_id) = lost.as_ref();
                let map = d.encode(env);
                map.map_put(atoms::session_lost(), true)
                    .and_then(|m| m.map_put(atoms::session_id(), session_id))
                    .unwrap_or(map)
            }
            Details::Handshake(d) => d.encode(env),
            Details::Session(d) => d.encode(env),
            Details::SessionLimit(d) => d.encode(env),
            Details::Circuit(d) => d.encode(env),
        };
        let details = if self.retryable {
            details.map_put(atoms::retryable(), true).unwrap_or(details)
        } else {
            details
        };
        (self.category, self.message.as_str(), details).encode(env)
    }
}
