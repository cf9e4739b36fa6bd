//! One worker OS process and the threads that serve its pipes.
//!
//! Every worker runs under its own *shepherd* (`native/snakepit_shepherd`),
//! a tiny parent process that starts it in its own process group, reaps it,
//! reports its exit status, and kills it and everything it started when
//! asked, when it exits, or when the BEAM dies (see the shepherd's docs).
//! This side talks to the shepherd over the *lifeline*, a Unix socket.
//!
//! Three threads serve a worker:
//! - the reader: reads frames from stdout, hands them to the pool, and when
//!   stdout ends, collects the exit status from the shepherd and reports it;
//! - the writer (see `writer.rs`): finishes writes too large to do inline;
//! - the stderr reader: forwards what the worker prints to the pool's owner.
//!
//! A fourth pipe, the *control* pipe (the worker's fd 3), carries `cancel`,
//! `heartbeat`, `ack`, `reclaim` and `elixir_reply` frames, so the worker
//! can act on them while a call runs. It is written like stdin, through a
//! [`Writer`] with its own thread: a reply of any size is queued whole and
//! finished by that thread if the pipe fills, never dropped and never
//! written on a scheduler beyond what the pipe takes at once.
//!
//! This module knows nothing of pools: a worker's threads report what
//! happens through the [`Events`] its owner passes to [`Launched::serve`].

use crate::spawn;
use crate::terms::ExitDetails;
use crate::writer::{OutFrame, Writer};
use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use rustler::OwnedBinary;
use snakepit_dispatch::output::{Admit, Budget, Lines};
use snakepit_dispatch::recycle::Reason;
use snakepit_dispatch::Pipe;
use snakepit_wire::frame::{self, FrameError};
use snakepit_wire::protocol::{self, Envelope, Kind};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to start a worker.
pub struct WorkerSpec {
    pub id: u64,
    pub shepherd: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// Where the segments of calls wait to be sent (see `shm.rs`).
    pub outbox: Arc<crate::shm::Outbox>,
}

/// What a worker's threads report, to whoever serves it (the pool).
pub trait Events: Send + Sync + 'static {
    /// Largest frame accepted from the worker.
    fn max_frame(&self) -> usize;
    /// A frame from the worker. `Ok(true)` means its reader may poll
    /// briefly for the next frame instead of sleeping: at a quiet moment
    /// (the worker is idle, nothing queued), or when the worker holds a
    /// pipelined call behind the one it runs. `Err` means it broke the
    /// protocol; it is then killed.
    fn frame(
        &self,
        worker: &Worker,
        envelope: Envelope,
        frame: OwnedBinary,
    ) -> Result<bool, String>;
    /// Complete lines of the worker's stderr, within its output budget.
    fn stderr(&self, worker_id: u64, chunk: &[u8]);
    /// `lines` of the worker's output were dropped over its output budget.
    fn output_dropped(&self, worker_id: u64, lines: u64);
    /// The worker is gone and reaped; the last event of a worker.
    fn exited(&self, worker: &Worker, exit: ExitInfo);
}

/// Why the pool ended a worker on purpose.
#[derive(Clone)]
pub enum Retire {
    /// Drained and replaced.
    Recycled(Reason),
    /// Killed: it missed heartbeats, ignored a cancel, or was told to.
    Killed(String),
}

/// A running worker, shared by the pool and its threads.
pub struct Worker {
    pub id: u64,
    pub os_pid: u32,
    writer: Arc<Writer>,
    /// To the shepherd: `T`/`K` requests go out, the exit line comes back.
    lifeline: UnixStream,
    /// The worker's control pipe (its fd 3); closed once it is gone.
    control: Arc<Writer>,
    /// Its `elixir_call`s waiting for their reply (see `elixir.rs`).
    pub elixir: crate::elixir::Pending,
    retire: Mutex<Option<Retire>>,
    /// How much of its stderr and log output goes on to Elixir.
    output: Mutex<Budget>,
    /// Its segment socket (shared memory, the worker's fd 4; see `shm.rs`).
    pub shm: crate::shm::Port,
}

impl Worker {
    /// Takes one line (or log record) of `bytes` from the output budget.
    pub fn admit_output(&self, bytes: usize) -> Admit {
        self.output.lock().admit(bytes, Instant::now())
    }

    /// Takes the output lines dropped and not reported yet.
    pub fn unreported_drops(&self) -> u64 {
        self.output.lock().take_unreported()
    }

    /// Output lines dropped and not reported yet, left in place.
    pub fn pending_drops(&self) -> u64 {
        self.output.lock().unreported()
    }

    /// SIGKILLs the worker's whole process group (through its shepherd,
    /// so there is no pid-reuse race), giving `why` as the reason.
    pub fn kill(&self, why: &str) {
        self.set_retire(Retire::Killed(why.to_string()));
        self.signal(b'K');
    }

    /// SIGTERMs the worker's process group.
    pub fn terminate(&self) {
        self.signal(b'T');
    }

    fn signal(&self, request: u8) {
        // A closed lifeline means the shepherd is gone and took the group along.
        let _ = (&self.lifeline).write(&[request]);
    }

    /// Takes no more frames on stdin; the worker exits once it has read
    /// those queued. `why` is reported with its exit.
    pub fn recycle(&self, why: Reason) {
        self.set_retire(Retire::Recycled(why));
        self.writer.close();
    }

    /// Closes stdin once queued frames are written (the pool is stopping).
    pub fn close_stdin(&self) {
        self.writer.close();
    }

    /// Writes the frames enqueued so far, without blocking.
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// Gives up a worker whose start failed: its writer thread ends and the
    /// worker is killed.
    pub fn abandon(&self) {
        self.writer.close_now();
        self.control.close_now();
        self.kill("it could not be started");
    }

    /// Records why the worker ends, unless a reason is already set.
    fn set_retire(&self, retire: Retire) {
        let mut slot = self.retire.lock();
        if slot.is_none() {
            *slot = Some(retire);
        }
    }

    /// Sends a control frame (`cancel`, `heartbeat`, `ack`) without blocking. A
    /// control pipe with [`CONTROL_BACKLOG`] frames waiting means the worker
    /// is not reading it: the frame is dropped, and a missed heartbeat will
    /// tell.
    pub fn control(&self, kind: Kind, request_id: u64) {
        self.send_control(&protocol::control_frame(kind, request_id));
    }

    /// Asks for `request_id` back (a `reclaim` on the control pipe), naming
    /// where its frame starts in stdin: the worker gives it back only if it
    /// has not read that far.
    pub fn reclaim(&self, request_id: u64, offset: u64) {
        self.send_control(&protocol::reclaim_frame(request_id, offset));
    }

    /// Gives a streaming call `n` more credits (an `ack` on the control pipe).
    pub fn ack(&self, request_id: u64, n: u32) {
        self.send_control(&protocol::ack_frame(request_id, n));
    }

    fn send_control(&self, frame: &[u8]) {
        if self
            .control
            .enqueue_droppable(OutFrame::from(frame.to_vec()), CONTROL_BACKLOG)
        {
            self.control.flush();
        }
    }

    /// Writes an `elixir_reply` frame on the control pipe if `call_id` still
    /// waits for one (see [`crate::elixir::Pending::claim`]), and returns
    /// whether it did. Never dropped: the control pipe's writer thread
    /// finishes what a full pipe does not take at once.
    pub fn elixir_reply(&self, call_id: u64, frame: OutFrame) -> bool {
        if !self.elixir.claim(call_id) {
            return false;
        }
        if self.control.enqueue(frame).is_ok() {
            self.control.flush();
        }
        true
    }
}

/// Droppable control frames (heartbeats, cancels, acks, reclaims) that may
/// wait to be written before more are dropped: far more than a worker that
/// reads its control pipe ever leaves unread.
const CONTROL_BACKLOG: usize = 256;

impl Pipe for Worker {
    fn enqueue(&self, frame: OutFrame) -> Result<u64, OutFrame> {
        self.shm.before_enqueue(&frame.bytes);
        self.writer.enqueue(frame)
    }
}

/// How a worker ended, as reported to its caller and to the pool's owner.
pub struct ExitInfo {
    pub status: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the worker was killed for breaking the protocol.
    pub protocol_error: Option<String>,
    pub retire: Option<Retire>,
}

impl ExitInfo {
    pub fn describe(&self, worker: &Worker) -> String {
        let who = format!("worker {} (os pid {})", worker.id, worker.os_pid);
        let how = match (self.status, self.signal) {
            (_, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
            (Some(code), None) => format!("exited with status {code}"),
            (None, None) => "exited".to_string(),
        };
        match (&self.protocol_error, &self.retire) {
            (Some(why), _) => format!("{who} broke the protocol: {why}"),
            (None, Some(Retire::Killed(why))) => {
                format!("{who} was killed during the call: {why}")
            }
            (None, _) => format!("{who} {how} during the call"),
        }
    }

    pub fn details(&self, worker: &Worker) -> ExitDetails {
        let (reason, recycled) = match (&self.protocol_error, &self.retire) {
            (Some(why), _) => (Some(why.clone()), None),
            (None, Some(Retire::Killed(why))) => (Some(why.clone()), None),
            (None, Some(Retire::Recycled(why))) => (None, Some(why.as_str().to_string())),
            (None, None) => (None, None),
        };
        ExitDetails {
            worker_id: worker.id,
            os_pid: worker.os_pid,
            status: self.status,
            signal: self.signal,
            reason,
            recycled,
        }
    }

    /// The worker was retired and drained, not lost.
    pub fn recycled(&self) -> bool {
        self.protocol_error.is_none() && matches!(self.retire, Some(Retire::Recycled(_)))
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

/// How long a shepherd may take to report the worker's pid.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A worker whose process runs, not yet served: nothing reads its stdout.
pub struct Launched {
    worker: Arc<Worker>,
    stdout: File,
    stderr: File,
}

/// Starts the shepherd and the worker under it, and the worker's writer
/// thread. The caller registers the worker, then calls [`Launched::serve`].
pub fn launch(spec: WorkerSpec) -> io::Result<Launched> {
    let (lifeline, shepherd_end) = UnixStream::pair()?;
    let (control_in, control) = pipe()?;
    let (stdin_in, stdin) = pipe()?;
    let (stdout, stdout_out) = pipe()?;
    widen(&stdin);
    widen(&stdout);
    widen(&control);
    let (stderr, stderr_out) = pipe()?;
    let (shm_socket, shm_in) = crate::shm::socketpair()?;
    // The child's ends, numbered above the fds they become (0 to 5).
    let child_fds = [
        (dup_high(stdin_in.as_raw_fd())?, 0),
        (dup_high(stdout_out.as_raw_fd())?, 1),
        (dup_high(stderr_out.as_raw_fd())?, 2),
        (dup_high(shepherd_end.as_raw_fd())?, 3),
        (dup_high(control_in.as_raw_fd())?, 4),
        (dup_high(shm_in.as_raw_fd())?, 5),
    ];
    drop((
        stdin_in,
        stdout_out,
        stderr_out,
        shepherd_end,
        control_in,
        shm_in,
    ));
    let mut args = vec![spec.program.as_str()];
    args.extend(spec.args.iter().map(String::as_str));
    let mut env: Vec<(&str, &str)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push((crate::orphans::MARK_VAR, crate::orphans::mark()));
    env.push(("SNAKEPIT_CONTROL_FD", "3"));
    env.push(("SNAKEPIT_SHM_FD", "4"));
    // The shepherd closes what it inherits beyond these six fds, sets its
    // own signal handling, and puts the worker in its own process group.
    spawn::spawn(&spawn::Spec {
        path: &spec.shepherd,
        args,
        env,
        cwd: spec.cwd.as_deref(),
        fds: child_fds
            .iter()
            .map(|(fd, to)| (fd.as_raw_fd(), *to))
            .collect(),
    })?;
    // The BEAM ignores SIGCHLD, so the kernel reaps the shepherd itself; the
    // worker's status comes over the lifeline.
    drop(child_fds);
    let (stdout, stderr) = (File::from(stdout), File::from(stderr));

    // From here on, an early return drops the lifeline, and the shepherd
    // kills the worker.
    lifeline.set_read_timeout(Some(START_LIMIT))?;
    let os_pid = match read_line(&lifeline)?.split_once(' ') {
        Some(("pid", pid)) => pid.parse::<u32>().map_err(|_| bad_shepherd(pid))?,
        Some(("error", errno)) => {
            let errno = errno.parse().map_err(|_| bad_shepherd(errno))?;
            let e = io::Error::from_raw_os_error(errno);
            return Err(io::Error::new(e.kind(), format!("{}: {e}", spec.program)));
        }
        _ => return Err(bad_shepherd("no pid")),
    };
    let writer = Writer::spawn(stdin, format!("snakepit-w{}", spec.id))?;
    let control = match Writer::spawn(control, format!("snakepit-c{}", spec.id)) {
        Ok(control) => control,
        Err(e) => {
            writer.close_now();
            return Err(e);
        }
    };
    let worker = Arc::new(Worker {
        id: spec.id,
        os_pid,
        writer,
        lifeline,
        control,
        elixir: crate::elixir::Pending::default(),
        retire: Mutex::new(None),
        output: Mutex::new(Budget::new(Instant::now())),
        shm: crate::shm::Port::new(shm_socket, spec.outbox),
    });
    Ok(Launched {
        worker,
        stdout,
        stderr,
    })
}

impl Launched {
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    /// Starts the threads that read the worker's stderr and stdout; from
    /// then on `events` hears of every frame and, last, of the exit.
    pub fn serve(self, events: Arc<dyn Events>) -> io::Result<()> {
        let Launched {
            worker,
            stdout,
            stderr,
        } = self;
        let id = worker.id;
        let stderr_events = Arc::clone(&events);
        let stderr_worker = Arc::clone(&worker);
        let (stderr_done_tx, stderr_done) = crossbeam_channel::bounded::<()>(1);
        std::thread::Builder::new()
            .name(format!("snakepit-e{id}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                forward_stderr(&*stderr_events, &stderr_worker, stderr);
                let _ = stderr_done_tx.send(());
            })?;
        std::thread::Builder::new()
            .name(format!("snakepit-r{id}"))
            // Decoding recurses up to codec::MAX_DEPTH levels.
            .stack_size(8 * 1024 * 1024)
            .spawn(move || read_loop(&*events, &worker, stdout, stderr_done))?;
        Ok(())
    }
}

/// Resident memory of `pid`, from `/proc/<pid>/status` (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bad_shepherd(what: &str) -> io::Error {
    io::Error::other(format!("the shepherd answered {what:?} at start"))
}

/// One `\n`-terminated line from the lifeline, without the newline.
fn read_line(mut lifeline: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match lifeline.read(&mut byte) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => return Err(bad_shepherd("an overlong line")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Capacity asked for the stdin and stdout pipes (Linux defaults to 64 KiB).
const PIPE_BYTES: libc::c_int = 1024 * 1024;

/// Grows a pipe to [`PIPE_BYTES`], so a large frame crosses in a few big
/// reads and writes rather than dozens of 64 KiB ones, each a wakeup of the
/// other side (measured with `bench/payload.exs`: a 1 MiB echo through a
/// C program takes about half the time). Unprivileged processes may be
/// capped by `/proc/sys/fs/pipe-max-size` (1 MiB by default) or by the
/// user's pipe quota; a refusal leaves the default size, which works.
fn widen(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own; failure changes nothing.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
}

/// A close-on-exec copy of `fd` numbered 10 or above.
fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl returns a fresh fd or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: new is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Reads frames until stdout ends or the worker breaks the protocol, then
/// reaps the process and reports the exit.
fn read_loop(events: &dyn Events, worker: &Worker, stdout: File, stderr_done: Receiver<()>) {
    let fd = stdout.as_raw_fd();
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut spin = false;
    let protocol_error = loop {
        if spin && reader.buffer().is_empty() {
            spin_until_readable(fd, SPIN);
        }
        let frame = frame::read_frame(&mut reader, events.max_frame(), FrameBuf::new);
        let frame = match frame {
            Ok(f) => f.0,
            Err(FrameError::Eof) => break None,
            Err(e @ (FrameError::TooLarge { .. } | FrameError::OutOfMemory { .. })) => {
                break Some(e.to_string())
            }
            // A worker killed while writing leaves half a frame: its exit,
            // not the fragment, is the news.
            Err(FrameError::Truncated { .. }) => break None,
            Err(FrameError::Io(e)) => break Some(format!("stdout read failed: {e}")),
        };
        let envelope = match protocol::parse_envelope(frame.as_slice()) {
            Ok(env) => env,
            Err(e) => break Some(e.to_string()),
        };
        match events.frame(worker, envelope, frame) {
            Ok(now_idle) => spin = now_idle,
            Err(e) => break Some(e),
        }
    };
    let exit = reap(worker, protocol_error);
    // Let the last of its stderr reach the owner before the exit does (the
    // owner quotes it when a worker dies before its handshake). Bounded: a
    // grandchild that left the process group may hold stderr open.
    let _ = stderr_done.recv_timeout(Duration::from_millis(500));
    events.exited(worker, exit);
}

/// How long a reader polls for the next frame before sleeping in read(2).
const SPIN: Duration = Duration::from_micros(50);

/// Polls `fd`, yielding the CPU between polls, for up to `limit`. Used
/// when the next frame is likely to come within tens of µs, sooner than a
/// sleeping thread would even be woken on machines whose idle vCPUs halt
/// (and waking it costs the worker's write a wakeup too):
/// - the last answer left the worker idle with nothing queued (low load, so
///   a CPU is likely free): a caller that just got its answer often sends
///   the next call at once;
/// - the worker holds a pipelined call behind the one it runs
///   (`pipeline_depth` > 1 under load): its next answer is one call away.
///   Measured with tiny calls at depth 4 (interleaved A/B, 3 runs, load
///   2.5-3.5): 1.03-1.11x the calls/s at 8 and 64 callers, 4-9% less CPU
///   per call (depth 2: 1.0-1.23x).
///
/// Otherwise (a worker running its only call, e.g. `pipeline_depth: 1`
/// under load) the reader sleeps in read(2): polling there measured 0.65-0.9x,
/// taking the CPU from the workers.
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

/// Gets the worker's exit status from its shepherd, killing the worker
/// first if it broke the protocol, or if it lingers after closing stdout
/// (which breaks the protocol too).
fn reap(worker: &Worker, mut protocol_error: Option<String>) -> ExitInfo {
    if protocol_error.is_some() {
        worker.signal(b'K');
    }
    worker.writer.close_now();
    worker.control.close_now();
    let _ = worker.lifeline.set_read_timeout(Some(LINGER));
    let line = read_line(&worker.lifeline).or_else(|e| {
        let lingering = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        if !lingering {
            return Err(e); // the shepherd is gone, and took the worker along
        }
        // Alive without its stdout: it can never answer again.
        protocol_error.get_or_insert_with(|| "it closed stdout but kept running".into());
        worker.signal(b'K');
        // The shepherd reaps the group before it answers; a process stuck in
        // the kernel can hold that up to its sweep limit (5 s).
        let _ = worker
            .lifeline
            .set_read_timeout(Some(Duration::from_secs(10)));
        read_line(&worker.lifeline)
    });
    let words: Vec<String> = line
        .map(|l| l.split(' ').map(str::to_string).collect())
        .unwrap_or_default();
    let (status, signal) = match words.as_slice() {
        [exit, code, sig] if exit == "exit" => (code.parse().ok(), sig.parse().ok()),
        _ => (None, None),
    };
    ExitInfo {
        status,
        signal,
        protocol_error,
        retire: worker.retire.lock().clone(),
    }
}

/// How long a worker that closed stdout may take to exit by itself.
const LINGER: Duration = Duration::from_millis(2000);

/// Hands what the worker writes to stderr to `events`, in whole lines, as
/// far as its output budget allows. A line longer than `MAX_LINE` is cut.
fn forward_stderr(events: &dyn Events, worker: &Worker, mut stderr: impl Read) {
    let mut lines = Lines::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stderr.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if n == 0 {
            lines.end(|line| admit(events, worker, line));
        } else {
            lines.feed(&chunk[..n], |line| admit(events, worker, line));
        }
        if !lines.out.is_empty() {
            events.stderr(worker.id, &lines.out);
            lines.out.clear();
        }
        if n == 0 {
            let dropped = worker.unreported_drops();
            if dropped > 0 {
                events.output_dropped(worker.id, dropped);
            }
            return;
        }
    }
}

fn admit(events: &dyn Events, worker: &Worker, line: &[u8]) -> bool {
    match worker.admit_output(line.len() + 1) {
        Admit::Yes => true,
        Admit::No { report } => {
            if let Some(n) = report {
                events.output_dropped(worker.id, n);
            }
            false
        }
    }
}

/// A frame body read straight into a VM binary, so results can hand out
/// sub-binaries of it without copying.
struct FrameBuf(OwnedBinary);

impl FrameBuf {
    /// `None` when the VM has no memory for it: that worker's frame fails,
    /// the VM does not abort (rustler's `OwnedBinary::new` would).
    fn new(len: usize) -> Option<FrameBuf> {
        let mut raw = std::mem::MaybeUninit::<rustler::sys::ErlNifBinary>::uninit();
        // SAFETY: enif_alloc_binary fills `raw` when it returns non-zero, and
        // only then is it read; it fails (returns 0) instead of aborting.
        let ok = unsafe { rustler::sys::enif_alloc_binary(len, raw.as_mut_ptr()) };
        // SAFETY: initialised by the successful call; owned from here on.
        (ok != 0).then(|| FrameBuf(unsafe { OwnedBinary::from_raw(raw.assume_init()) }))
    }
}

impl frame::Buffer for FrameBuf {
    fn resize(&mut self, len: usize) -> bool {
        self.0.realloc(len)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}
