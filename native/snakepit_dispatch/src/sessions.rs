//! Sessions: which worker holds each session's state.
//!
//! A session is named by its id (any bytes, at most 256 in Elixir). Its first
//! call binds it to the worker that runs it; later calls go there, as their
//! [`Affinity`] says. Each worker a call of the session ran on holds state
//! for it (`seen`), so ending a session tells each of them.
//!
//! An entry lives until the session is ended (`Snakepit.end_session`), is
//! idle for the pool's `session_ttl`, or loses its worker and nothing is left
//! of it. `live` counts its requests still queued or in flight: an entry
//! with live requests is never expired.
//!
//! **Loss.** When the bound worker dies or is recycled, the session's state is
//! gone: the entry is unbound and marked `lost`, and the next `Strict` or
//! `FailFast` call learns it (a `:worker` error with `session_lost`), after
//! which the session starts afresh. See `Dispatcher::worker_down` for the
//! calls that were already waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a session's call picks its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Affinity {
    /// Only the bound worker; wait for it. Calls of the session run in the
    /// order they were submitted.
    Strict,
    /// The bound worker if it has room, else any.
    Hint,
    /// The bound worker if it is free, else refuse at once.
    FailFast,
}

impl Affinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Strict => "strict",
            Affinity::Hint => "hint",
            Affinity::FailFast => "fail_fast",
        }
    }

    pub fn parse(name: &str) -> Option<Affinity> {
        match name {
            "strict" => Some(Affinity::Strict),
            "hint" => Some(Affinity::Hint),
            "fail_fast" => Some(Affinity::FailFast),
            _ => None,
        }
    }
}

pub type Key = Box<[u8]>;

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The worker it is bound to.
    pub worker: Option<u64>,
    /// Workers that ran a call of it since it (re)started, so hold state.
    pub seen: Vec<u64>,
    pub created: Instant,
    /// Its last call submitted or answered.
    pub last_used: Instant,
    /// Calls submitted since it (re)started.
    pub calls: u64,
    /// Its requests queued or in flight.
    pub live: usize,
    /// Its worker is gone and no call has been told yet.
    pub lost: bool,
}

impl Session {
    fn new(now: Instant) -> Session {
        Session {
            worker: None,
            seen: Vec::new(),
            created: now,
            last_used: now,
            calls: 0,
            live: 0,
            lost: false,
        }
    }

    /// Starts it afresh: no worker holds state for it any more.
    fn restart(&mut self, now: Instant) {
        self.worker = None;
        self.seen.clear();
        self.calls = 0;
        self.created = now;
    }

    /// Nothing refers to it and nothing holds state for it.
    fn vacant(&self) -> bool {
        self.live == 0 && self.worker.is_none() && self.seen.is_empty() && !self.lost
    }
}

/// Why a session call was refused before it was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its worker is gone (the state with it); the session starts afresh.
    Lost,
    /// `FailFast` and the bound worker is busy.
    Busy,
    /// A new session past `max_sessions` (the number given).
    TooMany(usize),
}

/// One session, as `list_sessions` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: Vec<u8>,
    pub worker: Option<u64>,
    pub age: Duration,
    pub idle: Duration,
    pub calls: u64,
    pub pending: usize,
    pub lost: bool,
}

/// Every session of a pool.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<Key, Session>,
    /// Most sessions at once; 0 for no limit.
    max: usize,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            map: HashMap::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The worker `key` is bound to.
    pub fn worker_of(&self, key: &[u8]) -> Option<u64> {
        self.map.get(key).and_then(|s| s.worker)
    }

    pub fn get(&self, key: &[u8]) -> Option<&Session> {
        self.map.get(key)
    }

    /// A call of `key` is submitted with `affinity`; `busy` says whether a
    /// worker cannot take it at once. Counts it as live (returning whether
    /// this made a new session), or says why not.
    pub fn admit(
        &mut self,
        key: &[u8],
        affinity: Affinity,
        busy: impl Fn(u64) -> bool,
        now: Instant,
    ) -> Result<bool, Refusal> {
        let created = !self.map.contains_key(key);
        if created {
            if self.max > 0 && self.map.len() >= self.max {
                return Err(Refusal::TooMany(self.max));
            }
            self.map.insert(key.into(), Session::new(now));
        }
        let session = self.map.get_mut(key).expect("inserted above");
        if session.lost {
            session.lost = false;
            if affinity != Affinity::Hint {
                if session.vacant() {
                    self.map.remove(key);
                }
                return Err(Refusal::Lost);
            }
        }
        if affinity == Affinity::FailFast && session.worker.is_some_and(busy) {
            return Err(Refusal::Busy);
        }
        session.live += 1;
        session.calls += 1;
        session.last_used = now;
        Ok(created)
    }

    /// A request of `key` left the queue or its worker.
    pub fn leave(&mut self, key: &[u8], now: Instant) {
        if let Some(s) = self.map.get_mut(key) {
            s.live = s.live.saturating_sub(1);
            s.last_used = now;
            if s.vacant() {
                self.map.remove(key);
            }
        }
    }

    /// A call of `key` was written to `worker`. Returns whether this bound
    /// the session to it.
    pub fn ran_on(&mut self, key: &[u8], worker: u64) -> bool {
        let Some(s) = self.map.get_mut(key) else {
            return false;
        };
        if !s.seen.contains(&worker) {
            s.seen.push(worker);
        }
        if s.worker.is_none() {
            s.worker = Some(worker);
            s.lost = false;
            return true;
        }
        false
    }

    /// `worker` is gone: the sessions bound to it are lost (returned), and
    /// it holds state for none.
    pub fn worker_gone(&mut self, worker: u64, now: Instant) -> Vec<Key> {
        let mut lost = Vec::new();
        self.map.retain(|key, s| {
            s.seen.retain(|&w| w != worker);
            if s.worker == Some(worker) {
                // Workers that ran its `Hint` calls still hold state for it.
                s.worker = None;
                s.calls = 0;
                s.created = now;
                s.lost = true;
                lost.push(key.clone());
            }
            !s.vacant()
        });
        lost
    }

    /// A call learnt that `key` was lost: it starts afresh from now on.
    pub fn told(&mut self, key: &[u8]) {
        if let Some(s) = self.map.get_mut(key) {
            s.lost = false;
            if s.vacant() {
                self.map.remove(key);
            }
        }
    }

    /// Ends `key`: returns the worker it was bound to and those holding
    /// state for it, or `None` if there is no such session. Calls of it
    /// still queued start it afresh.
    pub fn end(&mut self, key: &[u8], now: Instant) -> Option<(Option<u64>, Vec<u64>)> {
        let s = self.map.get_mut(key)?;
        let ended = (s.worker, std::mem::take(&mut s.seen));
        s.restart(now);
        s.lost = false;
        if s.vacant() {
            self.map.remove(key);
        }
        Some(ended)
    }

    /// Sessions with nothing live, idle for `ttl` or more.
    pub fn idle_for(&self, ttl: Duration, now: Instant) -> Vec<Key> {
        self.map
            .iter()
            .filter(|(_, s)| s.live == 0 && now.saturating_duration_since(s.last_used) >= ttl)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every session, ordered by id.
    pub fn rows(&self, now: Instant) -> Vec<SessionRow> {
        let mut rows: Vec<SessionRow> = self.map.iter().map(|(k, s)| row(k, s, now)).collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }

    pub fn row(&self, key: &[u8], now: Instant) -> Option<SessionRow> {
        self.map.get(key).map(|s| row(key, s, now))
    }
}

fn row(key: &[u8], s: &Session, now: Instant) -> SessionRow {
    SessionRow {
        id: key.to_vec(),
        worker: s.worker,
        age: now.saturating_duration_since(s.created),
        idle: now.saturating_duration_since(s.last_used),
        calls: s.calls,
        pending: s.live,
        lost: s.lost,
    }
}
