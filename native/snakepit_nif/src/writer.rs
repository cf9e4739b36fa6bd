//! The write end of a worker's stdin (and of its control pipe, which is
//! written the same way, so that a large `elixir_reply` is never cut short
//! by a full pipe nor interleaved with a heartbeat).
//!
//! Frames are first *enqueued*, in order, by the pool under its lock (no
//! syscall there), then *flushed* by whoever enqueued them once the lock is
//! released. Whatever thread flushes writes from the front of the queue, so
//! bytes reach the pipe in the order the pool assigned them, whichever thread
//! gets there first.
//!
//! A flush makes non-blocking `write(2)` calls: for the usual small frame
//! into an empty pipe that is the whole frame, with no thread to wake. When
//! the pipe is full, the rest is left to this worker's writer thread, which
//! finishes with blocking writes; until it is done, flushes leave the queue
//! to it. So no caller, and in particular no scheduler thread, ever waits on
//! the pipe.

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

pub use snakepit_wire::outgoing::OutFrame;

struct State {
    /// Frames not yet fully written, in order.
    pending: VecDeque<OutFrame>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// The writer thread is draining `pending`; flushes leave it alone.
    thread_draining: bool,
    /// Close the fd once `pending` is empty.
    close_when_drained: bool,
    /// Bytes enqueued since the start: where the next frame starts in the
    /// stream (what a `reclaim` names, see `Dispatcher::reclaim_due`).
    enqueued: u64,
    /// The fd, until the writer is closed. Shared with the writer thread
    /// while it writes outside the lock: closing drops this reference, and
    /// the fd is closed (and its number reused) only once the thread's write
    /// is over. No `dup`: a process out of descriptors can still write.
    fd: Option<Arc<OwnedFd>>,
}

/// Shared handle to a worker's stdin.
pub struct Writer {
    state: Mutex<State>,
    /// Wakes the writer thread; `None` asks it to exit.
    wake: Sender<Option<()>>,
}

impl Writer {
    /// Takes ownership of `fd`, makes it non-blocking and starts the thread.
    pub fn spawn(fd: OwnedFd, name: String) -> io::Result<Arc<Writer>> {
        set_nonblocking(fd.as_raw_fd())?;
        let (wake, woken) = bounded(1);
        let writer = Arc::new(Writer {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                offset: 0,
                thread_draining: false,
                close_when_drained: false,
                enqueued: 0,
                fd: Some(Arc::new(fd)),
            }),
            wake,
        });
        let thread_writer = Arc::clone(&writer);
        std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(move || thread_writer.run(woken))?;
        Ok(writer)
    }

    /// Adds a frame (or several, back to back) behind those already queued,
    /// and returns where it starts in the stream. No syscall: safe to call
    /// under the pool's lock. A closed stdin hands the frame back.
    pub fn enqueue(&self, frame: OutFrame) -> Result<u64, OutFrame> {
        let mut state = self.state.lock();
        if state.fd.is_none() || state.close_when_drained {
            return Err(frame);
        }
        let offset = state.enqueued;
        state.enqueued += frame.len() as u64;
        state.pending.push_back(frame);
        Ok(offset)
    }

    /// [`Self::enqueue`] for a frame that may be lost (a heartbeat, a
    /// cancel): refused, and `false` returned, while `max_pending` frames
    /// already wait (a peer that does not read its pipe), so such frames
    /// never pile up without bound. The offset is of no use for these.
    pub fn enqueue_droppable(&self, frame: OutFrame, max_pending: usize) -> bool {
        let mut state = self.state.lock();
        if state.fd.is_none() || state.close_when_drained || state.pending.len() >= max_pending {
            return false;
        }
        state.enqueued += frame.len() as u64;
        state.pending.push_back(frame);
        true
    }

    /// Writes queued frames without blocking, many per `writev(2)`; hands
    /// the rest to the thread if the pipe fills up.
    pub fn flush(&self) {
        let mut state = self.state.lock();
        if state.thread_draining {
            return;
        }
        let Some(fd) = state.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        while !state.pending.is_empty() {
            match writev_some(fd, &state.pending, state.offset) {
                Ok(n) => {
                    consume(&mut state, n);
                    if !state.pending.is_empty() {
                        // The pipe took only part: it is full.
                        self.hand_to_thread(&mut state);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.hand_to_thread(&mut state);
                    return;
                }
                Err(_) => {
                    // Broken pipe: the reader thread sees EOF and reports the exit.
                    state.fd = None;
                    state.pending.clear();
                    return;
                }
            }
        }
        if state.close_when_drained {
            state.fd = None;
        }
    }

    /// Closes stdin once queued frames are written: the worker sees EOF and exits.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.close_when_drained = true;
        if state.pending.is_empty() && !state.thread_draining {
            state.fd = None;
        }
        drop(state);
        self.flush();
    }

    /// Closes stdin now, dropping queued frames, and ends the thread.
    pub fn close_now(&self) {
        let mut state = self.state.lock();
        state.fd = None;
        state.pending.clear();
        drop(state);
        let _ = self.wake.send(None);
    }

    fn hand_to_thread(&self, state: &mut State) {
        state.thread_draining = true;
        let _ = self.wake.try_send(Some(()));
    }

    fn run(&self, woken: Receiver<Option<()>>) {
        while let Ok(Some(())) = woken.recv() {
            self.drain();
        }
    }

    /// Writes every queued frame with blocking writes, holding the lock only
    /// between frames.
    fn drain(&self) {
        loop {
            let (fd, frame, offset) = {
                let mut state = self.state.lock();
                match (state.fd.clone(), state.pending.is_empty()) {
                    (Some(fd), false) => {
                        let frame = state.pending.pop_front().expect("not empty");
                        let offset = std::mem::take(&mut state.offset);
                        (fd, frame, offset)
                    }
                    _ => {
                        state.thread_draining = false;
                        if state.close_when_drained {
                            state.fd = None;
                        }
                        return;
                    }
                }
            };
            if write_all_blocking(fd.as_raw_fd(), &frame, offset).is_err() {
                let mut state = self.state.lock();
                state.fd = None;
                state.pending.clear();
                state.thread_draining = false;
                return;
            }
        }
    }
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Most pieces (frames, or parts of a frame) gathered into one `writev(2)`.
const MAX_IOV: usize = 64;

fn writev_some(fd: RawFd, frames: &VecDeque<OutFrame>, offset: usize) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(frames.len().min(MAX_IOV) + 2);
    for (i, frame) in frames.iter().enumerate() {
        frame.pieces(if i == 0 { offset } else { 0 }, |piece| {
            iov.push(libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            });
            iov.len() < MAX_IOV
        });
        if iov.len() >= MAX_IOV {
            break;
        }
    }
    writev(fd, &iov)
}

fn writev(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    loop {
        // SAFETY: every iovec points into a frame borrowed for this call.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Drops `n` written bytes from the front of the queue.
fn consume(state: &mut State, mut n: usize) {
    while n > 0 {
        let left = state.pending.front().expect("wrote queued bytes").len() - state.offset;
        if n >= left {
            n -= left;
            state.pending.pop_front();
            state.offset = 0;
        } else {
            state.offset += n;
            n = 0;
        }
    }
}

/// Writes `frame` from byte `offset` on, polling while the pipe is full.
fn write_all_blocking(fd: RawFd, frame: &OutFrame, mut offset: usize) -> io::Result<()> {
    let len = frame.len();
    while offset < len {
        let mut iov = Vec::new();
        frame.pieces(offset, |piece| {
            iov.push(libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            });
            iov.len() < MAX_IOV
        });
        match writev(fd, &iov) {
            Ok(n) => offset += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, -1) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
