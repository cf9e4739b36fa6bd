//! One worker OS process and the threads that serve its pipes.
//!
//! The process runs in its own session and process group (`setsid`), so one
//! `kill(-pgid)` reaches it and every child it started. Three threads serve it:
//! - the reader: reads frames from stdout, hands them to the pool, and when
//!   stdout ends, reaps the process and reports its exit;
//! - the writer (see `writer.rs`): finishes writes too large to do inline;
//! - the stderr reader: forwards what the worker prints to the pool's owner.

use crate::atoms;
use crate::pool::PoolCore;
use crate::writer::Writer;
use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use rustler::env::OwnedEnv;
use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, OwnedBinary, Term};
use snakepit_wire::frame::{self, FrameError};
use snakepit_wire::protocol;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to start a worker.
pub struct WorkerSpec {
    pub id: u64,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

/// A running worker, shared by the pool and its threads.
pub struct Worker {
    pub id: u64,
    pub os_pid: u32,
    pub started: Instant,
    pub writer: Arc<Writer>,
    /// True until the process is reaped; guards `kill` against pid reuse.
    alive: Mutex<bool>,
}

impl Worker {
    /// SIGKILLs the worker's whole process group, if it has not been reaped.
    pub fn kill(&self) {
        let alive = self.alive.lock();
        if *alive {
            // SAFETY: plain syscall; the group leader is not reaped while
            // `alive` is true, so the pgid still names our group.
            unsafe { libc::kill(-(self.os_pid as i32), libc::SIGKILL) };
        }
    }
}

/// How a worker ended, as reported to its caller and to the pool's owner.
pub struct ExitInfo {
    pub status: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the worker was killed for breaking the protocol.
    pub protocol_error: Option<String>,
}

impl ExitInfo {
    pub fn describe(&self, worker: &Worker) -> String {
        let who = format!("worker {} (os pid {})", worker.id, worker.os_pid);
        match (&self.protocol_error, self.status, self.signal) {
            (Some(why), _, _) => format!("{who} broke the protocol: {why}"),
            (None, _, Some(sig)) => format!(
                "{who} was killed by signal {sig} ({}) during the call",
                signal_name(sig)
            ),
            (None, Some(code), None) => format!("{who} exited with status {code} during the call"),
            (None, None, None) => format!("{who} exited during the call"),
        }
    }

    pub fn details<'a>(&self, env: Env<'a>, worker: &Worker) -> Term<'a> {
        let nil = atoms::nil().encode(env);
        let status = self.status.map_or(nil, |s| s.encode(env));
        let signal = self.signal.map_or(nil, |s| s.encode(env));
        let reason = self
            .protocol_error
            .as_deref()
            .map_or(nil, |r| r.encode(env));
        Term::map_new(env)
            .map_put(atoms::worker_id(), worker.id)
            .and_then(|m| m.map_put(atoms::os_pid(), worker.os_pid))
            .and_then(|m| m.map_put(atoms::status(), status))
            .and_then(|m| m.map_put(atoms::signal(), signal))
            .and_then(|m| m.map_put(atoms::reason(), reason))
            .expect("map")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// Starts the process and its threads, and registers it with the pool.
pub fn spawn(core: &Arc<PoolCore>, spec: WorkerSpec) -> io::Result<Arc<Worker>> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: setsid is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let stdin: OwnedFd = child.stdin.take().expect("piped").into();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");

    let started = (|| {
        let writer = Writer::spawn(stdin, format!("snakepit-w{}", spec.id))?;
        let worker = Arc::new(Worker {
            id: spec.id,
            os_pid: child.id(),
            started: Instant::now(),
            writer,
            alive: Mutex::new(true),
        });
        core.add_worker(Arc::clone(&worker));
        let stderr_core = Arc::clone(core);
        let id = spec.id;
        let (stderr_done_tx, stderr_done) = crossbeam_channel::bounded::<()>(1);
        std::thread::Builder::new()
            .name(format!("snakepit-e{}", spec.id))
            .stack_size(256 * 1024)
            .spawn(move || {
                forward_stderr(&stderr_core, id, stderr);
                let _ = stderr_done_tx.send(());
            })?;
        Ok::<_, io::Error>((worker, stderr_done))
    })();
    let (worker, stderr_done) = match started {
        Ok(w) => w,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let reader_core = Arc::clone(core);
    let reader_worker = Arc::clone(&worker);
    let spawned = std::thread::Builder::new()
        .name(format!("snakepit-r{}", spec.id))
        // Decoding recurses up to codec::MAX_DEPTH levels.
        .stack_size(8 * 1024 * 1024)
        .spawn(move || read_loop(&reader_core, &reader_worker, stdout, child, stderr_done));
    if let Err(e) = spawned {
        // The closure (and the Child in it) is gone; kill by pid.
        worker.kill();
        return Err(e);
    }
    Ok(worker)
}

/// Reads frames until stdout ends or the worker breaks the protocol, then
/// reaps the process and reports the exit.
fn read_loop(
    core: &Arc<PoolCore>,
    worker: &Arc<Worker>,
    stdout: ChildStdout,
    child: Child,
    stderr_done: Receiver<()>,
) {
    let fd = stdout.as_raw_fd();
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut spin = false;
    let protocol_error = loop {
        if spin && reader.buffer().is_empty() {
            spin_until_readable(fd, SPIN);
        }
        let frame = frame::read_frame(&mut reader, core.config.max_frame, FrameBuf::new);
        let frame = match frame {
            Ok(f) => f.0,
            Err(FrameError::Eof) => break None,
            Err(e @ FrameError::TooLarge { .. }) => break Some(e.to_string()),
            Err(FrameError::Truncated { .. }) => break Some("stdout closed inside a frame".into()),
            Err(FrameError::Io(e)) => break Some(format!("stdout read failed: {e}")),
        };
        let envelope = match protocol::parse_envelope(frame.as_slice()) {
            Ok(env) => env,
            Err(e) => break Some(e.to_string()),
        };
        match core.on_frame(worker, envelope, frame) {
            Ok(now_idle) => spin = now_idle,
            Err(e) => break Some(e),
        }
    };
    let exit = reap(worker, child, protocol_error);
    // Let the last of its stderr reach the owner before the exit does (the
    // owner quotes it when a worker dies before its handshake). Bounded: a
    // grandchild that left the process group may hold stderr open.
    let _ = stderr_done.recv_timeout(Duration::from_millis(500));
    core.on_worker_down(worker, &exit);
}

/// How long a reader polls for the next frame before sleeping in read(2).
const SPIN: Duration = Duration::from_micros(50);

/// Polls `fd`, yielding the CPU between polls, for up to `limit`. Used only when the last answer left
/// the worker idle with nothing queued (low load, so a CPU is likely free):
/// a caller that just got its answer often sends the next call at once, and
/// that answer then arrives before a sleeping thread would even be woken
/// (tens of µs on machines whose idle vCPUs halt). Under load the worker is
/// refilled from the queue at once and the reader sleeps as usual, leaving
/// the CPU to the workers.
fn spin_until_readable(fd: std::os::fd::RawFd, limit: Duration) {
    let start = Instant::now();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    while start.elapsed() < limit {
        // SAFETY: one valid pollfd, zero timeout.
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
            return;
        }
        // Let any runnable thread on this CPU (a scheduler, a worker) go
        // first: the poll only uses time the CPU would otherwise idle.
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    }
}

/// Waits for the process to end (killing it if it broke the protocol or
/// lingers after closing stdout), kills what is left of its group, and
/// returns how it ended.
fn reap(worker: &Worker, mut child: Child, protocol_error: Option<String>) -> ExitInfo {
    // A broken worker is killed at once; one that closed stdout gets a moment
    // to exit by itself (so its own status is reported). Either way one
    // SIGKILL to the group then takes the leader if it still runs and every
    // child it left; the unreaped leader keeps the pgid from being reused.
    if protocol_error.is_none() {
        wait_exit(worker.os_pid, Duration::from_millis(2000));
    }
    worker.kill();
    let status = {
        let mut alive = worker.alive.lock();
        let status = child.wait().ok();
        *alive = false;
        status
    };
    worker.writer.close_now();
    ExitInfo {
        status: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        protocol_error,
    }
}

/// Waits until `pid` has exited (without reaping it), or `timeout` passes.
fn wait_exit(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    // SAFETY: pidfd_open returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if pidfd < 0 {
        return; // already gone
    }
    // SAFETY: pidfd is a fresh fd we own.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd) };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Sends what the worker writes to stderr to the pool's owner as
/// `{:snakepit_worker, id, :stderr, chunk}`, cut at line ends.
fn forward_stderr(core: &PoolCore, id: u64, mut stderr: impl Read) {
    const MAX_CHUNK: usize = 64 * 1024;
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_CHUNK);
    let mut chunk = [0u8; 8192];
    let mut env = OwnedEnv::new();
    loop {
        let n = match stderr.read(&mut chunk) {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Send complete lines; keep a partial one unless it is too long or the stream ended.
        let cut = if n == 0 || buf.len() >= MAX_CHUNK {
            buf.len()
        } else {
            buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        if cut > 0 {
            let _ = env.send_and_clear(&core.owner, |e| {
                let mut bin = rustler::NewBinary::new(e, cut);
                bin.as_mut_slice().copy_from_slice(&buf[..cut]);
                make_tuple(
                    e,
                    &[
                        atoms::snakepit_worker().encode(e),
                        id.encode(e),
                        atoms::stderr().encode(e),
                        rustler::Binary::from(bin).encode(e),
                    ],
                )
            });
            buf.drain(..cut);
        }
        if n == 0 {
            return;
        }
    }
}

/// A frame body read straight into a VM binary, so results can hand out
/// sub-binaries of it without copying.
struct FrameBuf(OwnedBinary);

impl FrameBuf {
    fn new(len: usize) -> FrameBuf {
        FrameBuf(OwnedBinary::new(len))
    }
}

impl AsMut<[u8]> for FrameBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}
