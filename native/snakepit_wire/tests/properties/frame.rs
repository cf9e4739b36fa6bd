//! The frame reader against a model of the framing, on arbitrary streams
//! split into arbitrary reads, and what it reserves on the way.

use crate::support::{chunks, config, Chunked};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use snakepit_wire::frame::{self, Buffer, FrameError, DEFAULT_MAX_FRAME, FIRST_ALLOC, HEADER_LEN};
use std::cell::RefCell;
use std::rc::Rc;

/// What reading one frame gives, per the framing rules.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Frame(Vec<u8>),
    Eof,
    Truncated { expected: usize, got: usize },
    TooLarge { len: usize, max: usize },
    Io,
    OutOfMemory { len: usize },
}

impl From<Result<Vec<u8>, FrameError>> for Outcome {
    fn from(r: Result<Vec<u8>, FrameError>) -> Self {
        match r {
            Ok(body) => Outcome::Frame(body),
            Err(FrameError::Eof) => Outcome::Eof,
            Err(FrameError::Truncated { expected, got }) => Outcome::Truncated { expected, got },
            Err(FrameError::TooLarge { len, max }) => Outcome::TooLarge { len, max },
            Err(FrameError::Io(_)) => Outcome::Io,
            Err(FrameError::OutOfMemory { len }) => Outcome::OutOfMemory { len },
        }
    }
}

/// The frames of `stream` (cut at `broken_at`, where the pipe fails), up to
/// and including the first thing that is not a frame.
fn model(stream: &[u8], max: usize, broken_at: Option<usize>) -> Vec<Outcome> {
    let cut = broken_at.map_or(stream.len(), |b| b.min(stream.len()));
    let broken = cut < stream.len();
    let data = &stream[..cut];
    let end = |o: Outcome| if broken { Outcome::Io } else { o };
    let mut out = vec![];
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        if rest.is_empty() {
            out.push(end(Outcome::Eof));
            return out;
        }
        if rest.len() < HEADER_LEN {
            out.push(end(Outcome::Truncated {
                expected: HEADER_LEN,
                got: rest.len(),
            }));
            return out;
        }
        let len = u32::from_be_bytes(rest[..HEADER_LEN].try_into().unwrap()) as usize;
        if len > max {
            out.push(Outcome::TooLarge { len, max });
            return out;
        }
        let body = &rest[HEADER_LEN..];
        if body.len() < len {
            out.push(end(Outcome::Truncated {
                expected: len,
                got: body.len(),
            }));
            return out;
        }
        out.push(Outcome::Frame(body[..len].to_vec()));
        pos += HEADER_LEN + len;
    }
}

/// One size the reader asked its buffer for, and the capacity the buffer
/// (the crate's own `Buffer` for `Vec<u8>`) then had.
#[derive(Debug, Clone, Copy)]
struct Reserve {
    size: usize,
    capacity: usize,
}

type Log = Rc<RefCell<Vec<Reserve>>>;

/// A `Vec<u8>` buffer that logs its sizes and capacities.
struct Watched {
    bytes: Vec<u8>,
    log: Log,
}

impl Buffer for Watched {
    fn resize(&mut self, len: usize) -> bool {
        let ok = Buffer::resize(&mut self.bytes, len);
        self.log.borrow_mut().push(Reserve {
            size: len,
            capacity: self.bytes.capacity(),
        });
        ok
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        Buffer::as_mut_slice(&mut self.bytes)
    }
}

fn watched(log: &Log) -> impl FnOnce(usize) -> Option<Watched> + '_ {
    move |n| {
        let bytes = vec![0u8; n];
        log.borrow_mut().push(Reserve {
            size: n,
            capacity: bytes.capacity(),
        });
        Some(Watched {
            bytes,
            log: log.clone(),
        })
    }
}

/// Reads `stream` frame by frame until an error; checks each read's
/// reservations; returns the outcomes.
fn read_all(stream: &[u8], max: usize, r: &mut Chunked) -> Result<Vec<Outcome>, TestCaseError> {
    let limit = r.fail_at().unwrap_or(usize::MAX).min(stream.len());
    let mut out = vec![];
    loop {
        let start = r.pos;
        let log = Log::default();
        let got: Outcome = frame::read_frame(r, max, watched(&log))
            .map(|w| w.bytes)
            .into();
        check_reservations(&stream[start..limit.max(start)], max, &log.borrow(), &got)?;
        let done = !matches!(got, Outcome::Frame(_));
        out.push(got);
        if done {
            return Ok(out);
        }
    }
}

/// What a read of the frame at the head of `rest` (the bytes that will
/// arrive) may reserve: nothing before a length prefix within `max`; then at
/// most [`FIRST_ALLOC`], and past it at most twice the body bytes that have
/// arrived; never more than the announced length, hence never more than
/// `max`; and the buffer's capacity follows its size.
fn check_reservations(
    rest: &[u8],
    max: usize,
    log: &[Reserve],
    got: &Outcome,
) -> Result<(), TestCaseError> {
    if rest.len() < HEADER_LEN {
        prop_assert!(log.is_empty(), "reserved {log:?} without a length prefix");
        return Ok(());
    }
    let len = u32::from_be_bytes(rest[..HEADER_LEN].try_into().unwrap()) as usize;
    if len > max {
        prop_assert!(
            log.is_empty(),
            "reserved {log:?} for a frame over the limit"
        );
        return Ok(());
    }
    let arrived = (rest.len() - HEADER_LEN).min(len);
    let bound = len.min(FIRST_ALLOC.max(2 * arrived));
    prop_assert!(!log.is_empty());
    prop_assert_eq!(log[0].size, len.min(FIRST_ALLOC));
    for (i, r) in log.iter().enumerate() {
        prop_assert!(
            r.size <= bound && r.capacity <= bound,
            "reservation {i} of {log:?} is over {bound} (announced {len}, arrived {arrived}, limit {max})"
        );
        if i > 0 {
            // It grows only once the buffer is full, by doubling.
            prop_assert_eq!(r.size, len.min(2 * log[i - 1].size));
        }
    }
    if let Outcome::Frame(_) = got {
        prop_assert_eq!(log.last().unwrap().size, len);
    }
    Ok(())
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut buf = frame::begin(body.len());
    buf.extend_from_slice(body);
    frame::finish(&mut buf, DEFAULT_MAX_FRAME).unwrap();
    buf
}

/// Frame streams: noise, well-formed frames with a ragged end, and frames
/// whose length prefixes were tampered with.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let bodies = vec(vec(any::<u8>(), 0..200), 0..6);
    let tamper = prop_oneof![
        any::<u32>(),
        Just(0),
        Just(u32::MAX),
        (0u32..2048),
        (FIRST_ALLOC as u32 - 4..FIRST_ALLOC as u32 + 4),
    ];
    prop_oneof![
        vec(any::<u8>(), 0..600),
        (bodies.clone(), vec(any::<u8>(), 0..16)).prop_map(|(bodies, tail)| {
            let mut s: Vec<u8> = bodies.iter().flat_map(|b| framed(b)).collect();
            s.extend(tail);
            s
        }),
        (bodies, vec((any::<Index>(), tamper), 1..3)).prop_map(|(bodies, tampers)| {
            let mut s = vec![];
            let mut starts = vec![];
            for b in &bodies {
                starts.push(s.len());
                s.extend(framed(b));
            }
            starts.push(s.len());
            s.extend_from_slice(&[0; HEADER_LEN]);
            for (at, len) in tampers {
                let i = starts[at.index(starts.len())];
                s[i..i + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
            }
            s
        }),
    ]
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        1usize..64,
        64usize..2048,
        Just(FIRST_ALLOC),
        Just(DEFAULT_MAX_FRAME),
        Just(u32::MAX as usize),
    ]
}

fn interruptions() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), 2usize..6]
}

proptest! {
    #![proptest_config(config(512, 1))]

    /// Whatever the bytes and however they are split into reads, the reader
    /// neither panics nor reserves more than the data that arrived
    /// justifies, and reads exactly the frames the framing rules say.
    #[test]
    fn arbitrary_streams_read_as_the_model_says(
        stream in stream(),
        max in limit(),
        chunks in chunks(),
        interrupt_every in interruptions(),
        broken_at in proptest::option::of(any::<Index>()),
    ) {
        let broken_at = broken_at.map(|i| i.index(stream.len() + 1));
        let mut r = Chunked::new(&stream, &chunks, interrupt_every);
        if let Some(b) = broken_at {
            r = r.failing_at(b);
        }
        let got = read_all(&stream, max, &mut r)?;
        prop_assert_eq!(got, model(&stream, max, broken_at));
    }

    /// Frames written with `begin` + `finish` read back, back to back, split
    /// anywhere; `finish` refuses the ones over the limit.
    #[test]
    fn written_frames_read_back(
        bodies in vec(vec(any::<u8>(), 0..300), 0..8),
        max in prop_oneof![0usize..300, Just(DEFAULT_MAX_FRAME)],
        chunks in chunks(),
        interrupt_every in interruptions(),
    ) {
        let mut stream = vec![];
        let mut sent = vec![];
        for body in &bodies {
            let mut buf = frame::begin(body.len());
            buf.extend_from_slice(body);
            match frame::finish(&mut buf, max) {
                Ok(()) => {
                    prop_assert!(body.len() <= max);
                    prop_assert_eq!(&buf[..HEADER_LEN], &frame::header(body.len())[..]);
                    stream.extend(buf);
                    sent.push(Outcome::Frame(body.clone()));
                }
                Err(FrameError::TooLarge { len, max: m }) => {
                    prop_assert_eq!((len, m), (body.len(), max));
                    prop_assert!(len > max);
                }
                Err(e) => prop_assert!(false, "finish: {e}"),
            }
        }
        sent.push(Outcome::Eof);
        let mut r = Chunked::new(&stream, &chunks, interrupt_every);
        prop_assert_eq!(read_all(&stream, max, &mut r)?, sent);
    }

    /// A length prefix over the limit is refused having read only the
    /// prefix, and without asking for a buffer.
    #[test]
    fn an_announced_length_over_the_limit_is_refused_before_the_body(
        max in limit().prop_filter("below u32::MAX", |&m| m < u32::MAX as usize),
        over in any::<Index>(),
        tail in vec(any::<u8>(), 0..64),
        chunks in chunks(),
    ) {
        let len = max + 1 + over.index(u32::MAX as usize - max);
        let mut stream = frame::header(len).to_vec();
        stream.extend(&tail);
        let mut r = Chunked::new(&stream, &chunks, 0);
        let got = frame::read_frame(&mut r, max, |_| -> Option<Vec<u8>> {
            panic!("asked for a buffer")
        });
        prop_assert!(
            matches!(got, Err(FrameError::TooLarge { len: l, max: m }) if l == len && m == max),
            "{got:?}"
        );
        prop_assert_eq!(r.pos, HEADER_LEN);
    }

    /// When the buffer cannot grow, the read fails with `OutOfMemory`
    /// for the size it asked for, instead of aborting.
    #[test]
    fn a_buffer_that_cannot_grow_is_an_error(
        len in 0usize..4 * FIRST_ALLOC,
        room in 0usize..4 * FIRST_ALLOC,
    ) {
        let body = vec![5u8; len];
        let stream = framed(&body);
        let mut r = Chunked::new(&stream, &[], 0);
        let got = frame::read_frame(&mut r, DEFAULT_MAX_FRAME, |n| {
            (n <= room).then(|| Capped { bytes: vec![0; n], room })
        });
        let mut size = len.min(FIRST_ALLOC);
        while size < len && size <= room {
            size = len.min(2 * size);
        }
        match got {
            Ok(b) => prop_assert!(len <= room && b.bytes == body),
            Err(FrameError::OutOfMemory { len: asked }) => {
                prop_assert!(size > room);
                prop_assert_eq!(asked, size);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

/// A buffer with room for at most `room` bytes.
struct Capped {
    bytes: Vec<u8>,
    room: usize,
}

impl Buffer for Capped {
    fn resize(&mut self, len: usize) -> bool {
        len <= self.room && Buffer::resize(&mut self.bytes, len)
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

proptest! {
    // Each case moves up to a few MiB: fewer of them.
    #![proptest_config(config(24, 16))]

    /// Frames past [`FIRST_ALLOC`]: the buffer doubles as the body arrives,
    /// never past the announced length (so never past the limit), whether
    /// the whole body comes or the stream ends inside it.
    #[test]
    fn large_frames_reserve_as_the_body_arrives(
        len in prop_oneof![
            FIRST_ALLOC - 2..FIRST_ALLOC + 2,
            FIRST_ALLOC..5 * FIRST_ALLOC,
            2 * FIRST_ALLOC..2 * FIRST_ALLOC + 2,
        ],
        sent in any::<Index>(),
        whole in any::<bool>(),
        slack in prop_oneof![Just(0usize), 0usize..FIRST_ALLOC],
        chunks in vec(prop_oneof![1usize..70_000, Just(usize::MAX)], 1..4),
    ) {
        let arrived = if whole { len } else { sent.index(len + 1) };
        let mut stream = frame::header(len).to_vec();
        stream.extend((0..arrived).map(|i| (i % 251) as u8));
        let max = len + slack;
        let mut r = Chunked::new(&stream, &chunks, 0);
        let got = read_all(&stream, max, &mut r)?;
        prop_assert_eq!(got, model(&stream, max, None));
    }
}
