//! The write end of a worker's stdin.
//!
//! A frame is first written inline with one non-blocking `write(2)`: for the
//! usual small request into an empty pipe that is the whole frame, with no
//! thread to wake. Whatever does not fit (a large frame, a full pipe) goes to
//! this worker's writer thread, which finishes it with blocking writes. Frames
//! stay in order: while the thread has anything pending, new frames queue
//! behind it instead of being written inline. So no caller, and in particular
//! no scheduler thread, ever waits on the pipe.

use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

struct State {
    /// Frames handed to the thread and not yet fully written.
    pending: usize,
    /// The fd, until the writer is closed. Only used under this lock.
    fd: Option<OwnedFd>,
}

/// Shared handle to a worker's stdin.
pub struct Writer {
    state: Mutex<State>,
    tx: Sender<Job>,
}

enum Job {
    Write(Vec<u8>, usize),
    Close,
}

/// The stdin is closed (the worker is gone or being stopped).
#[derive(Debug)]
pub struct Closed;

impl Writer {
    /// Takes ownership of `fd`, makes it non-blocking and starts the thread.
    pub fn spawn(fd: OwnedFd, name: String) -> io::Result<Arc<Writer>> {
        set_nonblocking(fd.as_raw_fd())?;
        let (tx, rx) = unbounded();
        let writer = Arc::new(Writer {
            state: Mutex::new(State {
                pending: 0,
                fd: Some(fd),
            }),
            tx,
        });
        let thread_writer = Arc::clone(&writer);
        std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(move || thread_writer.run(rx))?;
        Ok(writer)
    }

    /// Sends a complete frame. Never blocks on the pipe.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), Closed> {
        let mut state = self.state.lock();
        let fd = state.fd.as_ref().ok_or(Closed)?.as_raw_fd();
        let mut written = 0;
        if state.pending == 0 {
            match write_some(fd, &frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // Broken pipe: the reader thread sees EOF and reports the exit.
                    state.fd = None;
                    return Err(Closed);
                }
            }
        }
        state.pending += 1;
        drop(state);
        self.tx.send(Job::Write(frame, written)).map_err(|_| Closed)
    }

    /// Closes stdin once pending frames are written: the worker sees EOF and exits.
    pub fn close(&self) {
        let _ = self.tx.send(Job::Close);
    }

    /// Closes stdin now, dropping pending frames.
    pub fn close_now(&self) {
        self.state.lock().fd = None;
        let _ = self.tx.send(Job::Close);
    }

    fn run(&self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Write(frame, offset) => {
                    // Take a duplicate so the blocking write holds no lock.
                    let fd = self
                        .state
                        .lock()
                        .fd
                        .as_ref()
                        .and_then(|fd| fd.try_clone().ok());
                    let ok = match fd {
                        Some(fd) => write_all_blocking(fd.as_raw_fd(), &frame[offset..]).is_ok(),
                        None => false,
                    };
                    let mut state = self.state.lock();
                    state.pending -= 1;
                    if !ok {
                        state.fd = None;
                    }
                }
                Job::Close => {
                    self.state.lock().fd = None;
                    return;
                }
            }
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn write_some(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid slice; fd is open while the caller holds it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn write_all_blocking(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write_some(fd, buf) {
            Ok(n) => buf = &buf[n..],
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
