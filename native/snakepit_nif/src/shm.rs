//! Shared-memory segments: payloads of at least the pool's `:shm_threshold`
//! bytes cross as sealed memfds instead of through the pipes.
//!
//! A segment is an anonymous file (`memfd_create`), filled by its sender and
//! sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL`), so
//! its size and bytes can no longer change. Its fd travels over the worker's
//! *segment socket* (a `SOCK_SEQPACKET` socketpair, the worker's fd 4) with
//! `SCM_RIGHTS`; nothing has a name, so when every process holding it (by
//! fd, by mapping, or in flight in the socket) is gone, the kernel frees the
//! memory. No segment can outlive a SIGKILL of the worker or of the BEAM.
//!
//! Protocol (see `docs/protocol.md`, "Shared memory"): the sender sends the
//! fds in one message on the socket, then an `shm` frame on its pipe with the
//! request id and the segments' lengths, then the frame that uses them, where
//! extension type 85 (bytes) or 86 (tensor) names a segment by its index.
//!
//! Worker → host: the reader thread, on an `shm` frame, takes the fds
//! (already there: they were sent first), checks their seals and sizes,
//! charges them to the pool's [`Budget`], maps each read-only, and keeps the
//! [`Mapping`]s for the request's next frame, whose message to the caller
//! carries them as resource binaries (`{:shm, frame, [binary]}`): the
//! caller's `decode` turns handles into those binaries, or sub-binaries of
//! them, so a result points into the mapping. The mapping is unmapped, and
//! its bytes given back to the budget, when the last binary is
//! garbage-collected. Over the budget, the fds are closed unmapped and the
//! caller gets a `:pool` error instead of the result.

use crate::terms::{Details, Failure, SizeDetails};
use parking_lot::Mutex;
use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, OwnedBinary, Resource, ResourceArc, Term};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The extension type of a bytes value held in a segment.
pub const EXT_BYTES: i8 = 85;
/// The extension type of a tensor whose data is a segment.
pub const EXT_TENSOR: i8 = 86;
/// Size of the segment reference at the start of both extensions:
/// `version:u8 = 1, 3 zero bytes, index:u32` (big-endian).
pub const REF_LEN: usize = 8;
const REF_VERSION: u8 = 1;

/// The seals a sender sets, and the ones a receiver insists on: without
/// `F_SEAL_SHRINK` the sender could truncate the file under a mapping (a
/// SIGBUS on access), without `F_SEAL_WRITE` change a binary's bytes.
pub const SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;

/// The pool's shared-memory settings and the bytes it has in flight.
pub struct Budget {
    /// Payloads of at least this many bytes go by segment; `u64::MAX`: never.
    pub threshold: u64,
    /// Most bytes of segments in flight at once.
    pub limit: u64,
    in_flight: AtomicU64,
}

impl Budget {
    pub fn new(threshold: u64, limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            threshold,
            limit,
            in_flight: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.threshold != u64::MAX
    }

    /// Bytes of segments in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Charges `bytes`, or says how many were in flight when that would
    /// pass the limit.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Lease, u64> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current.saturating_add(bytes) > self.limit {
                return Err(current);
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Lease {
                        budget: Arc::clone(self),
                        bytes,
                    })
                }
                Err(now) => current = now,
            }
        }
    }

    /// The failure of a transfer of `bytes` that would pass the limit.
    pub fn refusal(&self, bytes: u64, in_flight: u64, what: &str) -> Failure {
        Failure::new(
            crate::atoms::pool(),
            format!(
                "{what} needs {bytes} bytes of shared memory, but {in_flight} of the pool's \
                 {} (:shm_max_bytes) are in flight",
                self.limit
            ),
            Details::Size(SizeDetails {
                limit: self.limit,
                bytes: Some(bytes),
            }),
        )
        .retryable()
    }
}

/// Bytes charged to a [`Budget`], given back when dropped.
pub struct Lease {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget
            .in_flight
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A read-only mapping of a sealed segment; binaries point into it.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    _lease: Lease,
}

// SAFETY: the mapping is read-only memory that lives until Drop; nothing
// mutates it, so sharing it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

#[rustler::resource_impl]
impl Resource for Mapping {}

impl Mapping {
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr maps len readable bytes until Drop; the file is sealed
        // against shrinking and writing, so they stay valid and unchanged.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping the region mmap gave us; no slice of it
            // outlives the last reference to this resource.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// Maps a received segment read-only, after checking that it is sealed and
/// of the announced length.
fn map(fd: &OwnedFd, len: u64, lease: Lease) -> Result<Mapping, String> {
    // SAFETY: fcntl on an fd we own.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(
            "sent a shared-memory segment that is not sealed against shrinking and writing".into(),
        );
    }
    // SAFETY: fstat fills the struct on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 || st.st_size as u64 != len {
        return Err(format!(
            "sent a shared-memory segment of {} bytes announced as {len}",
            st.st_size
        ));
    }
    let len = usize::try_from(len).map_err(|_| "a segment too large to map".to_string())?;
    if len == 0 {
        return Ok(Mapping {
            ptr: std::ptr::null_mut(),
            len,
            _lease: lease,
        });
    }
    // SAFETY: a fresh read-only shared mapping of a file we hold.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!(
            "could not map a shared-memory segment of {len} bytes: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(Mapping {
        ptr,
        len,
        _lease: lease,
    })
}

/// Segments received for the next frame of one request.
pub enum Incoming {
    Mapped(Vec<ResourceArc<Mapping>>),
    /// Over the pool's budget: not mapped (already closed).
    Refused(Failure),
}

/// A worker's end of its segment socket, and what it received last.
pub struct Port {
    socket: UnixStream,
    pending: Mutex<Option<(u64, Incoming)>>,
    outbox: Arc<Outbox>,
}

impl Port {
    pub fn new(socket: UnixStream, outbox: Arc<Outbox>) -> Port {
        Port {
            socket,
            pending: Mutex::new(None),
            outbox,
        }
    }

    /// Before `frame` is queued to this worker: if it starts with an `shm`
    /// frame, sends the segments of that call on the socket, so they are
    /// there before the worker reads the frame. No blocking: a worker that
    /// does not read its socket finds no segments and refuses the call.
    pub fn before_enqueue(&self, frame: &[u8]) {
        if let Some(id) = shm_frame_id(frame) {
            self.outbox.send(id, &self.socket);
        }
    }

    /// An `shm` frame announced `lengths` for request `id`: takes the fds
    /// sent before it and maps them (or refuses them over the budget).
    /// `Err` is a protocol violation.
    pub fn receive(&self, id: u64, lengths: &[u64], budget: &Arc<Budget>) -> Result<(), String> {
        let fds = recv_fds(&self.socket, lengths.len())?;
        let total: u64 = lengths.iter().fold(0u64, |a, &l| a.saturating_add(l));
        let mut mapped = Vec::with_capacity(fds.len());
        let mut incoming = None;
        for (fd, &len) in fds.iter().zip(lengths) {
            match budget.reserve(len) {
                Ok(lease) => mapped.push(ResourceArc::new(map(fd, len, lease)?)),
                Err(_) => {
                    // Give back what this frame took before saying how much is in flight.
                    drop(std::mem::take(&mut mapped));
                    incoming = Some(Incoming::Refused(budget.refusal(
                        total,
                        budget.in_flight(),
                        "the worker's answer",
                    )));
                    break;
                }
            }
        }
        drop(fds);
        let mut pending = self.pending.lock();
        if pending.is_some() {
            return Err("sent two shm frames in a row".into());
        }
        *pending = Some((id, incoming.unwrap_or(Incoming::Mapped(mapped))));
        Ok(())
    }

    /// The segments announced for `id`, if any. A frame of another request
    /// after an `shm` frame is a protocol violation.
    pub fn take(&self, id: u64) -> Result<Option<Incoming>, String> {
        let mut pending = self.pending.lock();
        match pending.take() {
            None => Ok(None),
            Some((for_id, incoming)) if for_id == id => Ok(Some(incoming)),
            Some(_) => Err("sent an shm frame not followed by the frame that uses it".into()),
        }
    }
}

/// The request id of `frame` if it is an `shm` frame (a length prefix, then
/// `["shm", id, ...]`), without parsing anything else: every frame queued
/// to a worker goes through here.
fn shm_frame_id(frame: &[u8]) -> Option<u64> {
    const PREFIX: &[u8] = &[0x93, 0xa3, b's', b'h', b'm'];
    let rest = frame.get(4..)?.strip_prefix(PREFIX)?;
    match snakepit_wire::msgpack::Reader::new(rest)
        .next_token()
        .ok()?
    {
        snakepit_wire::msgpack::Token::UInt(id) => Some(id),
        snakepit_wire::msgpack::Token::Int(id) if id > 0 => Some(id as u64),
        _ => None,
    }
}

/// The segments of calls (Elixir → Python) not answered yet, by request
/// id: sent to whichever worker the call is queued to (again, if it is
/// queued again after its worker died), until the call is answered.
#[derive(Default)]
pub struct Outbox {
    calls: Mutex<std::collections::HashMap<u64, Vec<OwnedFd>>>,
}

impl Outbox {
    /// Keeps `fds` for call `id` until the returned [`Outgoing`] (held with
    /// the call's reply) is dropped; `leases` are given back then too.
    pub fn register(self: &Arc<Self>, id: u64, fds: Vec<OwnedFd>, leases: Vec<Lease>) -> Outgoing {
        self.calls.lock().insert(id, fds);
        Outgoing {
            outbox: Arc::clone(self),
            id,
            _leases: leases,
        }
    }

    /// Sends call `id`'s fds in one message whose data is the id (u64,
    /// big-endian): the worker matches them to the `shm` frame by it.
    fn send(&self, id: u64, socket: &UnixStream) {
        let calls = self.calls.lock();
        if let Some(fds) = calls.get(&id) {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let _ = send_fds(socket, &id.to_be_bytes(), &raw);
        }
    }
}

/// A call's segments, held with its reply: dropped when it is answered or
/// given up, which closes the host's fds and gives the bytes back.
pub struct Outgoing {
    outbox: Arc<Outbox>,
    id: u64,
    _leases: Vec<Lease>,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.outbox.calls.lock().remove(&self.id);
    }
}

/// Segments made while encoding one call's args.
pub struct Making {
    /// Payloads of at least this many bytes go by segment.
    pub threshold: u64,
    budget: Option<Arc<Budget>>,
    pub fds: Vec<OwnedFd>,
    pub lengths: Vec<u64>,
    pub leases: Vec<Lease>,
    /// Bytes copied into segments so far.
    pub bytes: usize,
}

/// Why a segment was not made.
#[derive(Debug)]
pub enum MakeError {
    /// Over the pool's :shm_max_bytes: `(bytes, in flight)`.
    Limit(u64, u64),
    Io(io::Error),
}

impl Making {
    /// No segments: everything goes in the frame.
    pub fn none() -> Making {
        Making {
            threshold: u64::MAX,
            budget: None,
            fds: Vec::new(),
            lengths: Vec::new(),
            leases: Vec::new(),
            bytes: 0,
        }
    }

    pub fn new(budget: &Arc<Budget>) -> Making {
        Making {
            threshold: budget.threshold,
            budget: Some(Arc::clone(budget)),
            ..Making::none()
        }
    }

    /// Whether a payload of `len` bytes goes by segment.
    pub fn wants(&self, len: usize) -> bool {
        len as u64 >= self.threshold && self.fds.len() < snakepit_wire::protocol::MAX_SEGMENTS
    }

    /// A new segment holding `data`; its index.
    pub fn add(&mut self, data: &[u8]) -> Result<u32, MakeError> {
        let budget = self.budget.as_ref().expect("segments only with a budget");
        let len = data.len() as u64;
        let lease = budget
            .reserve(len)
            .map_err(|in_flight| MakeError::Limit(len, in_flight))?;
        let fd = create(data).map_err(MakeError::Io)?;
        self.fds.push(fd);
        self.lengths.push(len);
        self.leases.push(lease);
        self.bytes += data.len();
        Ok((self.fds.len() - 1) as u32)
    }
}

/// A frame on its way to a caller, with the segments it refers to.
pub struct Framed {
    pub frame: OwnedBinary,
    pub segments: Option<Incoming>,
}

impl From<OwnedBinary> for Framed {
    fn from(frame: OwnedBinary) -> Framed {
        Framed {
            frame,
            segments: None,
        }
    }
}

mod atoms {
    rustler::atoms! { shm, shm_refused }
}

impl Framed {
    /// The frame binary; `{:shm, frame, [segment]}` with segments, or
    /// `{:shm_refused, {category, message, details}}` over the budget.
    pub fn encode<'a>(self, env: Env<'a>) -> Term<'a> {
        let frame = self.frame.release(env).encode(env);
        match self.segments {
            None => frame,
            Some(Incoming::Mapped(maps)) => {
                let bins: Vec<Term> = maps
                    .iter()
                    .map(|m| m.make_binary(env, |m| m.as_slice()).encode(env))
                    .collect();
                make_tuple(env, &[atoms::shm().encode(env), frame, bins.encode(env)])
            }
            Some(Incoming::Refused(failure)) => make_tuple(
                env,
                &[atoms::shm_refused().encode(env), failure.encode(env)],
            ),
        }
    }
}

/// Reads a segment reference (the first [`REF_LEN`] bytes of ext 85/86).
pub fn parse_ref(payload: &[u8]) -> Result<usize, String> {
    match payload {
        [REF_VERSION, 0, 0, 0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d]) as usize),
        [v, ..] if *v != REF_VERSION => Err(format!("a shared-memory reference of version {v}")),
        _ => Err("a malformed shared-memory reference".into()),
    }
}

/// Writes a segment reference.
pub fn write_ref(out: &mut Vec<u8>, index: u32) {
    out.extend_from_slice(&[REF_VERSION, 0, 0, 0]);
    out.extend_from_slice(&index.to_be_bytes());
}

/// A new sealed segment holding `data`. Filled with `write(2)`, which
/// measured about twice as fast as `ftruncate` + `mmap` + copy for 100 MB
/// (fresh pages fault in one by one through a mapping).
pub fn create(data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static name returns a fresh fd or -1.
    let raw = unsafe {
        libc::memfd_create(
            c"snakepit".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: writing a borrowed slice to an fd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Receives one message's fds (at most `n`), without blocking: the sender
/// sends them before the frame that announces them.
fn recv_fds(socket: &UnixStream, n: usize) -> Result<Vec<OwnedFd>, String> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = control_buffer(space);
    let mut msg = msghdr(&mut iov, &mut control, space);
    let got = loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let r = unsafe {
            libc::recvmsg(
                socket.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if r >= 0 {
            break r;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!(
                "sent an shm frame but no segments on the segment socket ({e})"
            ));
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages recvmsg filled in; each fd in an
    // SCM_RIGHTS message is a fresh fd of ours, owned at once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if got == 0 || msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() != n {
        return Err(format!(
            "sent an shm frame announcing {n} segments, but {} came on the segment socket",
            fds.len()
        ));
    }
    Ok(fds)
}

/// Sends `fds` in one message carrying `data`, without blocking.
fn send_fds(socket: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: pure computations.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(payload as u32) as usize,
            libc::CMSG_LEN(payload as u32),
        )
    };
    let mut control = control_buffer(space);
    let msg = msghdr(&mut iov, &mut control, space);
    // SAFETY: the control buffer has room for one header and the fds.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
    }
    loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let r = unsafe {
            libc::sendmsg(
                socket.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A control buffer of `space` bytes; u64 elements keep it aligned for
/// `cmsghdr`.
fn control_buffer(space: usize) -> Vec<u64> {
    vec![0u64; space.div_ceil(8)]
}

/// A header for one `iov` and the control buffer `control` (`space` bytes
/// of it used); both must outlive the header's use.
fn msghdr(iov: &mut libc::iovec, control: &mut [u64], space: usize) -> libc::msghdr {
    // SAFETY: zeroed msghdr is a valid empty header; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    msg
}

/// A `SOCK_SEQPACKET` socketpair, close-on-exec: one message per `sendmsg`,
/// so each message's fds arrive with it.
pub fn socketpair() -> io::Result<(UnixStream, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds we then own.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours. A seqpacket socket reads and
    // writes like a stream socket for our purposes (sendmsg/recvmsg only).
    Ok(unsafe {
        (
            UnixStream::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    })
}
