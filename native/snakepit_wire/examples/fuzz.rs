//! A long-running fuzz loop over the wire format, without a fuzzing engine:
//! a seeded generator, so every input can be made again from its index.
//!
//!     cargo run --release -p snakepit_wire --example fuzz -- 10000000
//!     cargo run --release -p snakepit_wire --example fuzz -- 200000 --seed 7
//!     cargo run --release -p snakepit_wire --example fuzz -- --replay 1234 --seed 7
//!
//! Each input is a byte stream: pure noise, MessagePack-like noise, or valid
//! frames (made with the crate's own builders) mutated by bit flips, byte
//! sets, truncation, insertion, deletion, splicing, length-prefix tampering,
//! huge announced string and container lengths, deep nesting and, rarely,
//! frames of a few MiB. Each stream is read by `frame::read_frame` (with a
//! random limit, split into random reads, sometimes interrupted or broken),
//! and each frame it yields, and the raw stream too, goes through the
//! MessagePack reader and the envelope parser.
//!
//! Besides "no panic", each input is checked against oracles: the frames
//! read are the ones a model of the framing finds; the reader reserves at
//! most `min(announced length, max(FIRST_ALLOC, 2 x bytes arrived))`, which
//! is within the limit (checked both on the buffer and, through a counting
//! global allocator, on every allocation made while reading); MessagePack
//! tokens lie inside the input; `skip` agrees with a depth-bounded recursive
//! decode (the NIF's, limit 256); parsing allocates nothing but (the start
//! of) the name of an unknown kind; `check_ready` and `error_kind` find the
//! keys a walk over the map's pairs finds; `elixir_call` accepts only a
//! UTF-8 name and a map of args; unmutated frames parse back to their kind
//! and id.
//!
//! "Frames of a few MiB" are 1 input in 5000: at 10^7 inputs, about 2000.
//! Release builds do not check arithmetic overflow; for that, run it with
//! `CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true` (a rebuild, slower).
//!
//! A panic in any input, the library's or a failed oracle, is caught with
//! `catch_unwind` and reported with the input's index and the seed; the run
//! goes on. The exit status is 1 if any input failed.

use snakepit_wire::frame::{self, Buffer, FrameError, DEFAULT_MAX_FRAME, FIRST_ALLOC, HEADER_LEN};
use snakepit_wire::msgpack::{DecodeError, Reader, Token};
use snakepit_wire::protocol::{self, Kind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::io::{self, Read};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The largest single allocation made while a closure runs.

/// Forwards to the system allocator and remembers the largest request.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the only addition
// is an atomic update of a counter, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`; returns its result and the largest allocation it made.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    let t = f();
    (t, LARGEST.load(Ordering::Relaxed))
}

// ---------------------------------------------------------------------------
// Randomness: xorshift64*, one generator per input seeded from its index.

struct Rng(u64);

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn for_input(seed: u64, index: u64) -> Rng {
        Rng(splitmix(seed ^ splitmix(index)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0; the bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `1 / n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// A length, mostly small: below `below(n) + 1`.
    fn small(&mut self, n: usize) -> usize {
        let cap = self.below(n) + 1;
        self.below(cap)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let w = self.next().to_le_bytes();
            out.extend_from_slice(&w[..(n - out.len()).min(8)]);
        }
        out
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------
// Inputs.

/// Bytes MessagePack gives a meaning to: containers, lengths, the one
/// invalid marker, extreme integers.
const INTERESTING: [u8; 22] = [
    0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc4, 0xc6, 0xc9, 0xcf, 0xd3, 0xd8,
    0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff,
];

/// One input: a stream and how it is read.
struct Case {
    stream: Vec<u8>,
    max: usize,
    chunks: Vec<usize>,
    interrupt_every: usize,
    broken_at: Option<usize>,
    /// For unmutated frames: the kind and id each parses back to.
    expect: Option<Vec<(Kind, u64)>>,
    /// A frame of more than `2 * FIRST_ALLOC` bytes (counted apart).
    big: bool,
}

/// Writes a random MessagePack value with random encodings of each item.
fn value(rng: &mut Rng, out: &mut Vec<u8>, depth: usize) {
    use rmp::encode as enc;
    let choice = if depth >= 5 {
        rng.below(12)
    } else {
        rng.below(15)
    };
    match choice {
        0 => enc::write_nil(out).unwrap(),
        1 => enc::write_bool(out, rng.one_in(2)).unwrap(),
        2 => {
            enc::write_sint(out, rng.next() as i64 >> rng.below(64)).unwrap();
        }
        3 => {
            enc::write_uint(out, rng.next() >> rng.below(64)).unwrap();
        }
        4 => match rng.below(8) {
            0 => enc::write_u8(out, rng.byte()).unwrap(),
            1 => enc::write_u16(out, rng.next() as u16).unwrap(),
            2 => enc::write_u32(out, rng.next() as u32).unwrap(),
            3 => enc::write_u64(out, rng.next()).unwrap(),
            4 => enc::write_i8(out, rng.byte() as i8).unwrap(),
            5 => enc::write_i16(out, rng.next() as i16).unwrap(),
            6 => enc::write_i32(out, rng.next() as i32).unwrap(),
            _ => enc::write_i64(out, rng.next() as i64).unwrap(),
        },
        5 => enc::write_f32(out, f32::from_bits(rng.next() as u32)).unwrap(),
        6 => enc::write_f64(out, f64::from_bits(rng.next())).unwrap(),
        7 | 8 => {
            let n = if rng.one_in(50) {
                rng.pick(&[31, 32, 255, 256, 65_535, 65_536])
            } else {
                rng.small(40)
            };
            enc::write_str_len(out, n as u32).unwrap();
            out.extend(rng.bytes(n));
        }
        9 => {
            let n = rng.small(40);
            enc::write_bin_len(out, n as u32).unwrap();
            out.extend(rng.bytes(n));
        }
        10 => {
            let n = rng.pick(&[1, 2, 4, 8, 16, 0, 3, 17, 300]);
            enc::write_ext_meta(out, n, rng.byte() as i8).unwrap();
            out.extend(rng.bytes(n as usize));
        }
        11 => {
            let n = rng.pick(&[0, 1, 15, 16, 65_535, 65_536, u32::MAX]);
            enc::write_array_len(out, n).unwrap();
        } // a header only: the value is broken, on purpose
        12 | 13 => {
            let n = rng.small(8);
            enc::write_array_len(out, n as u32).unwrap();
            (0..n).for_each(|_| value(rng, out, depth + 1));
        }
        _ => {
            let n = rng.small(6);
            enc::write_map_len(out, n as u32).unwrap();
            for _ in 0..n {
                if rng.one_in(3) {
                    value(rng, out, depth + 1);
                } else {
                    let key = rng.pick(&["protocol", "kind", "tool", "args", "pid", "x"]);
                    enc::write_str(out, key).unwrap();
                }
                value(rng, out, depth + 1);
            }
        }
    }
}

/// A valid value (no lone container headers).
fn whole_value(rng: &mut Rng, out: &mut Vec<u8>) {
    let start = out.len();
    loop {
        value(rng, out, 0);
        let mut r = Reader::at(out, start);
        if r.skip().is_ok() && r.is_done() {
            return;
        }
        out.truncate(start);
    }
}

/// A frame made by the crate's builders; its kind and id.
fn valid_frame(rng: &mut Rng) -> (Vec<u8>, Kind, u64) {
    let id = match rng.below(4) {
        0 => 0,
        1 => rng.below(1000) as u64,
        2 => u64::MAX,
        _ => rng.next(),
    };
    let text = |rng: &mut Rng| {
        let n = rng.small(24);
        rng.bytes(n)
    };
    match rng.below(6) {
        0 => {
            let tool = text(rng);
            let session = rng.one_in(2).then(|| text(rng));
            let stream = rng.one_in(2).then(|| rng.next() as u32);
            let correlation = rng.one_in(2).then(|| text(rng));
            let mut f = protocol::begin_call(
                id,
                &tool,
                session.as_deref(),
                stream,
                correlation.as_deref(),
                rng.below(64),
            );
            whole_value(rng, &mut f);
            frame::finish(&mut f, DEFAULT_MAX_FRAME).unwrap();
            (f, Kind::Call, id)
        }
        1 => (protocol::ack_frame(id, rng.next() as u32), Kind::Ack, id),
        2 => (protocol::session_end_frame(&text(rng)), Kind::SessionEnd, 0),
        3 => {
            let kind = rng.pick(&Kind::ALL);
            (protocol::control_frame(kind, id), kind, id)
        }
        4 => {
            // A `ready` or `error` body, maybe with the keys looked for.
            let kind = rng.pick(&[Kind::Ready, Kind::Error, Kind::Log]);
            let mut f = protocol::begin_frame(kind, id, 0);
            let n = rng.small(5);
            rmp::encode::write_map_len(&mut f, n as u32).unwrap();
            for _ in 0..n {
                match rng.below(4) {
                    0 => rmp::encode::write_str(&mut f, "protocol").unwrap(),
                    1 => rmp::encode::write_str(&mut f, "kind").unwrap(),
                    _ => whole_value(rng, &mut f),
                }
                match rng.below(4) {
                    0 => {
                        rmp::encode::write_uint(&mut f, rng.below(4) as u64).unwrap();
                    }
                    1 => rmp::encode::write_str(&mut f, "bad_request").unwrap(),
                    _ => whole_value(rng, &mut f),
                }
            }
            frame::finish(&mut f, DEFAULT_MAX_FRAME).unwrap();
            (f, kind, id)
        }
        _ => {
            let kind = rng.pick(&Kind::ALL);
            let mut f = protocol::begin_frame(kind, id, 0);
            whole_value(rng, &mut f);
            frame::finish(&mut f, DEFAULT_MAX_FRAME).unwrap();
            (f, kind, id)
        }
    }
}

/// `depth` nested containers around a nil, as the body of a frame.
fn nested_frame(rng: &mut Rng, depth: usize) -> Vec<u8> {
    let mut f = protocol::begin_frame(Kind::Result, 1, depth * 3);
    for _ in 0..depth {
        match rng.below(4) {
            0 | 1 => f.push(0x91),
            2 => f.extend_from_slice(&[0x81, 0xa1, b'k']),
            _ => f.extend_from_slice(&[0xdd, 0, 0, 0, 1]),
        }
    }
    f.push(0xc0);
    frame::finish(&mut f, DEFAULT_MAX_FRAME).unwrap();
    f
}

/// Applies one random mutation to `s`; `starts` are the frames' offsets.
fn mutate(rng: &mut Rng, s: &mut Vec<u8>, starts: &[usize], max: usize) {
    if s.is_empty() {
        let n = rng.small(16);
        s.extend(rng.bytes(n));
        return;
    }
    let at = rng.below(s.len());
    match rng.below(10) {
        0 | 1 => s[at] ^= 1 << rng.below(8),
        2 => s[at] = rng.pick(&INTERESTING),
        3 => s[at] = rng.byte(),
        4 => s.truncate(at),
        5 => {
            let n = rng.small(8) + 1;
            let extra = rng.bytes(n);
            s.splice(at..at, extra);
        }
        6 => {
            let end = (at + rng.small(16) + 1).min(s.len());
            s.drain(at..end);
        }
        7 => {
            // Repeat a slice of itself (splices frames into frames).
            let end = (at + rng.small(64) + 1).min(s.len());
            let piece = s[at..end].to_vec();
            let to = rng.below(s.len() + 1);
            s.splice(to..to, piece);
        }
        8 => {
            // Tamper with a length prefix.
            let i = rng.pick(starts);
            if i + HEADER_LEN <= s.len() {
                let old = u32::from_be_bytes(s[i..i + HEADER_LEN].try_into().unwrap());
                let max32 = max.min(u32::MAX as usize) as u32;
                let new = match rng.below(8) {
                    0 => rng.next() as u32,
                    1 => old.wrapping_add(rng.below(16) as u32 + 1),
                    2 => old.wrapping_sub(rng.below(16) as u32 + 1),
                    3 => 0,
                    4 => u32::MAX,
                    5 => max32.wrapping_add(1),
                    6 => max32,
                    _ => FIRST_ALLOC as u32 + rng.below(3) as u32 - 1,
                };
                s[i..i + HEADER_LEN].copy_from_slice(&new.to_be_bytes());
            }
        }
        _ => {
            // A huge announced string, binary, ext or container length.
            let marker = rng.pick(&[0xdb, 0xc6, 0xc9, 0xdd, 0xdf, 0xda, 0xdc]);
            let len = rng.pick(&[0xffff_ffffu32, 0x8000_0000, 0x0001_0000, 0xffff]);
            let mut piece = vec![marker];
            let width = if matches!(marker, 0xda | 0xdc) { 2 } else { 4 };
            piece.extend_from_slice(&len.to_be_bytes()[4 - width..]);
            s.splice(at..at, piece);
        }
    }
}

fn case(rng: &mut Rng) -> Case {
    let mut max = match rng.below(20) {
        0..=13 => DEFAULT_MAX_FRAME,
        14..=16 => rng.small(4096),
        17 => FIRST_ALLOC,
        18 => u32::MAX as usize,
        _ => usize::MAX,
    };
    let mut expect = None;
    let mut big = false;
    let stream = match rng.below(1000) {
        0..=119 => {
            let n = rng.small(512);
            rng.bytes(n)
        }
        120..=219 => {
            // MessagePack-like noise, maybe framed.
            let n = rng.small(256);
            let mut body: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.one_in(3) {
                        rng.pick(&INTERESTING)
                    } else {
                        rng.byte()
                    }
                })
                .collect();
            if rng.one_in(2) {
                body.splice(0..0, frame::header(n));
            }
            body
        }
        220..=799 => {
            let frames = rng.small(4) + 1;
            let mut s = vec![];
            let mut starts = vec![];
            let mut kinds = vec![];
            for _ in 0..frames {
                starts.push(s.len());
                let (f, kind, id) = valid_frame(rng);
                s.extend(f);
                kinds.push((kind, id));
            }
            if rng.one_in(4) {
                // Left alone: every frame must read back and parse.
                if max < s.len() {
                    max = DEFAULT_MAX_FRAME;
                }
                expect = Some(kinds);
            } else {
                let mutations = rng.small(4) + 1;
                for _ in 0..mutations {
                    mutate(rng, &mut s, &starts, max);
                }
            }
            s
        }
        800..=879 => {
            let depth = match rng.below(100) {
                0..=49 => 250 + rng.below(12),
                50..=98 => rng.below(3000),
                _ => rng.below(100_000),
            };
            let mut s = nested_frame(rng, depth);
            if rng.one_in(3) {
                mutate(rng, &mut s, &[0], max);
            }
            s
        }
        950..=959 => {
            // An envelope whose kind is long, and mostly not UTF-8.
            let n = rng.pick(&[60, 64, 65, 200, 70_000]) + rng.below(8);
            let mut f = vec![0x93];
            rmp::encode::write_str_len(&mut f, n as u32).unwrap();
            f.extend((0..n).map(|_| if rng.one_in(4) { b'a' } else { rng.byte() }));
            f.extend_from_slice(&[0x01, 0xc0]);
            if rng.one_in(2) {
                f.splice(0..0, frame::header(f.len()));
            }
            f
        }
        880..=949 => {
            // A length prefix announcing more than comes, or than allowed.
            let len = match rng.below(6) {
                0 => u32::MAX as usize,
                1 => max.min(u32::MAX as usize - 1) + 1,
                2 => max.min(u32::MAX as usize),
                3 => FIRST_ALLOC + rng.below(3) - 1,
                4 => 1 << 31,
                _ => rng.below(1 << 20),
            };
            let mut s = frame::header(len).to_vec();
            let n = rng.small(64);
            s.extend(rng.bytes(n));
            s
        }
        960..=998 => {
            // Two valid frames cut and spliced together.
            let (a, _, _) = valid_frame(rng);
            let (b, _, _) = valid_frame(rng);
            let (i, j) = (rng.below(a.len() + 1), rng.below(b.len() + 1));
            [&a[..i], &b[j..]].concat()
        }
        _ => {
            if rng.one_in(5) {
                // A large frame: the buffer grows as it arrives.
                big = true;
                let len = FIRST_ALLOC + rng.below(4 * FIRST_ALLOC);
                let sent = if rng.one_in(2) {
                    len
                } else {
                    rng.below(len + 1)
                };
                max = match rng.below(3) {
                    0 => len,
                    1 => len + rng.below(FIRST_ALLOC),
                    _ => DEFAULT_MAX_FRAME,
                };
                let mut s = frame::header(len).to_vec();
                s.resize(HEADER_LEN + sent, 0x5a);
                s
            } else {
                let n = rng.small(64);
                rng.bytes(n)
            }
        }
    };
    let chunks = if rng.one_in(2) {
        vec![usize::MAX]
    } else {
        (0..rng.below(4) + 1)
            .map(|_| match rng.below(3) {
                0 => rng.below(8) + 1,
                1 => rng.below(300) + 1,
                _ => rng.below(100_000) + 1,
            })
            .collect()
    };
    let interrupt_every = if rng.one_in(10) { rng.below(4) + 2 } else { 0 };
    let broken_at = (expect.is_none() && rng.one_in(20)).then(|| rng.below(stream.len() + 1));
    Case {
        stream,
        max,
        chunks,
        interrupt_every,
        broken_at,
        expect,
        big,
    }
}

// ---------------------------------------------------------------------------
// Reading, and the oracles.

/// Hands out a stream in chunks; `Interrupted` every few calls; a broken
/// pipe at `broken_at`. Its errors carry no allocation.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunks: &'a [usize],
    calls: usize,
    interrupt_every: usize,
    end: usize,
    broken: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt_every > 0 && self.calls.is_multiple_of(self.interrupt_every) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.pos >= self.end && self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let chunk = self.chunks[self.calls % self.chunks.len()];
        let n = chunk.min(buf.len()).min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A `Vec<u8>` (the crate's own `Buffer` for it) that logs the sizes the
/// reader asks for and the capacities it gets.
struct Watched {
    bytes: Vec<u8>,
    log: Rc<RefCell<Vec<(usize, usize)>>>,
}

impl Buffer for Watched {
    fn resize(&mut self, len: usize) -> bool {
        let ok = Buffer::resize(&mut self.bytes, len);
        self.log.borrow_mut().push((len, self.bytes.capacity()));
        ok
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        Buffer::as_mut_slice(&mut self.bytes)
    }
}

#[derive(Default)]
struct Stats {
    inputs: u64,
    bytes: u64,
    big: u64,
    frames: u64,
    eof: u64,
    truncated: u64,
    too_large: u64,
    io: u64,
    envelopes: u64,
    refused: u64,
    ready_ok: u64,
    too_deep: u64,
    tokens: u64,
}

/// The frame the model expects at the head of `rest`, and the most the
/// reader may reserve for it.
fn expected_frame(rest: &[u8], max: usize, broken: bool) -> (Result<usize, String>, usize) {
    let end = |e: String| if broken { "io".to_string() } else { e };
    if rest.is_empty() {
        return (Err(end("eof".into())), 0);
    }
    if rest.len() < HEADER_LEN {
        return (
            Err(end(format!("truncated {HEADER_LEN} {}", rest.len()))),
            0,
        );
    }
    let len = u32::from_be_bytes(rest[..HEADER_LEN].try_into().unwrap()) as usize;
    if len > max {
        return (Err(format!("too large {len} {max}")), 0);
    }
    let arrived = (rest.len() - HEADER_LEN).min(len);
    let bound = len.min(FIRST_ALLOC.max(2 * arrived));
    if arrived < len {
        return (Err(end(format!("truncated {len} {arrived}"))), bound);
    }
    (Ok(len), bound)
}

fn describe(e: &FrameError) -> String {
    match e {
        FrameError::Eof => "eof".into(),
        FrameError::Truncated { expected, got } => format!("truncated {expected} {got}"),
        FrameError::TooLarge { len, max } => format!("too large {len} {max}"),
        FrameError::Io(_) => "io".into(),
        FrameError::OutOfMemory { len } => format!("out of memory {len}"),
    }
}

fn run_case(c: &Case, rng: &mut Rng, stats: &mut Stats) {
    stats.bytes += c.stream.len() as u64;
    stats.big += c.big as u64;
    let end = c.broken_at.unwrap_or(c.stream.len()).min(c.stream.len());
    let broken = end < c.stream.len();
    let mut r = Chunked {
        data: &c.stream,
        pos: 0,
        chunks: &c.chunks,
        calls: 0,
        interrupt_every: c.interrupt_every,
        end,
        broken,
    };
    let log = Rc::new(RefCell::new(Vec::with_capacity(64)));
    let mut parsed = vec![];
    loop {
        let start = r.pos;
        let (want, bound) = expected_frame(&c.stream[start..end], c.max, broken);
        log.borrow_mut().clear();
        let (got, largest) = measured(|| {
            frame::read_frame(&mut r, c.max, |n| {
                let bytes = vec![0u8; n];
                log.borrow_mut().push((n, bytes.capacity()));
                Some(Watched {
                    bytes,
                    log: log.clone(),
                })
            })
        });
        assert!(
            largest <= bound,
            "read_frame allocated {largest} bytes at offset {start}, over {bound}"
        );
        for &(size, capacity) in log.borrow().iter() {
            assert!(
                size <= bound && capacity <= bound,
                "buffer of {size} bytes (capacity {capacity}) at offset {start}, over {bound}"
            );
        }
        match (got, want) {
            (Ok(body), Ok(len)) => {
                assert_eq!(body.bytes.len(), len);
                assert_eq!(
                    body.bytes[..],
                    c.stream[start + HEADER_LEN..start + HEADER_LEN + len]
                );
                assert_eq!(r.pos, start + HEADER_LEN + len);
                stats.frames += 1;
                parsed.push(check_frame(&body.bytes, rng, stats));
            }
            (Err(e), Err(want)) => {
                assert_eq!(describe(&e), want, "at offset {start}");
                match e {
                    FrameError::Eof => stats.eof += 1,
                    FrameError::Truncated { .. } => stats.truncated += 1,
                    FrameError::TooLarge { .. } => {
                        assert_eq!(r.pos, start + HEADER_LEN, "read past a refused prefix");
                        stats.too_large += 1
                    }
                    FrameError::Io(_) => stats.io += 1,
                    FrameError::OutOfMemory { .. } => panic!("out of memory from a Vec"),
                }
                break;
            }
            (got, want) => panic!(
                "at offset {start}: read {:?}, the model says {want:?}",
                got.map(|b| b.bytes.len()).map_err(|e| describe(&e))
            ),
        }
    }
    if let Some(expect) = &c.expect {
        let want: Vec<_> = expect.iter().map(|&k| Some(k)).collect();
        assert_eq!(parsed, want, "valid frames did not parse back");
    }
    // The raw stream, as if it were one frame's contents.
    check_frame(&c.stream, rng, stats);
}

/// Decodes one item recursing into containers, refusing to go deeper than
/// 256 levels, as the NIF's decoder (`snakepit_nif::codec`) does.
fn bounded(r: &mut Reader, depth: usize) -> Result<(), DecodeError> {
    const MAX_DEPTH: usize = 256;
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep {
            at: r.position(),
            max: MAX_DEPTH,
        });
    }
    match r.next_token()? {
        Token::Array(n) => (0..n).try_for_each(|_| bounded(r, depth + 1)),
        Token::Map(n) => (0..n).try_for_each(|_| {
            bounded(r, depth + 1)?;
            bounded(r, depth + 1)
        }),
        _ => Ok(()),
    }
}

/// Where the value of the first string key `key` of the map at `body` is
/// (`Some(None)`: no such key, or no map), found by walking the pairs with
/// [`bounded`] rather than `Reader::skip`; `None` if too deep for that.
fn lookup(f: &[u8], body: usize, key: &[u8]) -> Option<Option<usize>> {
    let mut r = Reader::at(f, body);
    let Ok(Token::Map(n)) = r.next_token() else {
        return Some(None);
    };
    for _ in 0..n {
        let key_at = r.position();
        if let Ok(Token::Str(k)) = r.next_token() {
            if r.slice(k) == key {
                return Some(Some(r.position()));
            }
        }
        r = Reader::at(f, key_at);
        bounded(&mut r, 1).ok()?;
        bounded(&mut r, 1).ok()?;
    }
    Some(None)
}

/// `check_ready` and `error_kind` of a body that parsed agree with what
/// [`lookup`] finds under `protocol` and `kind`.
fn check_body_keys(
    f: &[u8],
    body: usize,
    ready: &Result<(), protocol::HandshakeError>,
    error_kind: protocol::ErrorKind,
) {
    if let Some(at) = lookup(f, body, b"protocol") {
        let version = at.and_then(|at| match Reader::at(f, at).next_token() {
            Ok(Token::UInt(v)) => Some(v),
            Ok(Token::Int(v)) => u64::try_from(v).ok(),
            _ => None,
        });
        let want = match version {
            Some(protocol::PROTOCOL_VERSION) => Ok(()),
            other => Err(protocol::HandshakeError::Version(other)),
        };
        assert_eq!(ready, &want, "check_ready");
    }
    if let Some(at) = lookup(f, body, b"kind") {
        let refused = at.is_some_and(|at| {
            let mut r = Reader::at(f, at);
            matches!(r.next_token(), Ok(Token::Str(k))
                if matches!(r.slice(k.clone()), b"unknown_tool" | b"bad_arguments" | b"bad_request"))
        });
        let want = if refused {
            protocol::ErrorKind::Refused
        } else {
            protocol::ErrorKind::Failed
        };
        assert_eq!(error_kind, want, "error_kind");
    }
}

/// Runs the MessagePack reader and the envelope parser over `f`; returns
/// the kind and id it parsed to, if it did.
fn check_frame(f: &[u8], rng: &mut Rng, stats: &mut Stats) -> Option<(Kind, u64)> {
    // Token by token: each moves forward and stays inside.
    let ((), largest) = measured(|| {
        let mut r = Reader::new(f);
        while !r.is_done() {
            let before = r.position();
            match r.next_token() {
                Ok(t) => {
                    stats.tokens += 1;
                    assert!(r.position() > before && r.position() <= f.len());
                    if let Token::Str(g) | Token::Bin(g) | Token::Ext(_, g) = t {
                        assert!(g.start >= before && g.end == r.position());
                        let _ = r.slice(g);
                    }
                }
                Err(DecodeError::Truncated { at } | DecodeError::BadMarker { at, .. }) => {
                    assert!(at >= before && at <= f.len(), "error at {at} from {before}");
                    break;
                }
                Err(e @ DecodeError::TooDeep { .. }) => panic!("next_token: {e}"),
            }
        }
    });
    assert_eq!(largest, 0, "the MessagePack reader allocated");

    // `skip` against a depth-bounded recursive decode, from anywhere.
    let start = if rng.one_in(2) {
        0
    } else {
        rng.below(f.len() + 1)
    };
    let mut a = Reader::at(f, start);
    let mut b = Reader::at(f, start);
    let skipped = a.skip();
    match bounded(&mut b, 0) {
        Err(DecodeError::TooDeep { .. }) => stats.too_deep += 1,
        decoded => {
            assert_eq!(skipped, decoded, "skip and decode disagree from {start}");
            if skipped.is_ok() {
                assert_eq!(a.position(), b.position(), "skip and decode end apart");
            }
        }
    }

    // The envelope, and the helpers that read bodies.
    let (env, largest) = measured(|| protocol::parse_envelope(f));
    let parsed = match env {
        Ok(env) => {
            assert!(largest == 0, "parse_envelope allocated {largest} bytes");
            stats.envelopes += 1;
            assert!(env.body < f.len());
            let mut r = Reader::at(f, env.body);
            assert!(r.skip().is_ok() && r.is_done());
            let mut r = Reader::at(f, env.body);
            match bounded(&mut r, 0) {
                Ok(()) => assert!(r.is_done()),
                Err(DecodeError::TooDeep { .. }) => stats.too_deep += 1,
                Err(e) => panic!("a parsed body does not decode: {e}"),
            }
            let is_map = matches!(Reader::at(f, env.body).next_token(), Ok(Token::Map(_)));
            assert_eq!(protocol::body_is_map(f, env.body), is_map);
            let ((ready, error_kind), largest) = measured(|| {
                (
                    protocol::check_ready(f, env.body),
                    protocol::error_kind(f, env.body),
                )
            });
            assert_eq!(largest, 0, "reading a body allocated");
            if let Ok(call) = protocol::elixir_call(f, env.body) {
                assert!(std::str::from_utf8(&f[call.name]).is_ok());
                if let Some(args) = call.args {
                    assert!(matches!(
                        Reader::at(f, args).next_token(),
                        Ok(Token::Map(_))
                    ));
                }
            }
            stats.ready_ok += ready.is_ok() as u64;
            check_body_keys(f, env.body, &ready, error_kind);
            Some((env.kind, env.id))
        }
        Err(e) => {
            // Only (the start of) the name of an unknown kind is copied.
            assert!(
                largest <= 4 * protocol::KIND_SHOWN,
                "parse_envelope allocated {largest} bytes for a frame of {}",
                f.len()
            );
            assert!(e.to_string().len() <= 10 * protocol::KIND_SHOWN, "{e}");
            stats.refused += 1;
            None
        }
    };
    let offset = match rng.below(4) {
        0 => usize::MAX,
        _ => rng.below(f.len() + 2),
    };
    let _ = protocol::body_is_map(f, offset);
    let _ = protocol::check_ready(f, offset);
    let _ = protocol::error_kind(f, offset);
    let _ = protocol::elixir_call(f, offset);
    parsed
}

// ---------------------------------------------------------------------------
// The loop.

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn hex(bytes: &[u8], limit: usize) -> String {
    let mut s: String = bytes
        .iter()
        .take(limit)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > limit {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

struct Args {
    inputs: u64,
    seed: u64,
    replay: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        inputs: 1_000_000,
        seed: 0x5eed,
        replay: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |what: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{what} needs a value"))?;
            parse_number(&v)
        };
        match a.as_str() {
            "--seed" => args.seed = number("--seed")?,
            "--replay" => args.replay = Some(number("--replay")?),
            "-h" | "--help" => {
                return Err("usage: fuzz [INPUTS] [--seed S] [--replay INDEX]".into());
            }
            n => args.inputs = parse_number(n)?,
        }
    }
    Ok(args)
}

fn parse_number(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.replace('_', "").parse(),
    };
    parsed.map_err(|e| format!("{s:?}: {e}"))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut stats = Stats::default();

    if let Some(index) = args.replay {
        let mut rng = Rng::for_input(args.seed, index);
        let c = case(&mut rng);
        println!(
            "input {index} (seed {:#x}): {} bytes, max {}, chunks {:?}, interrupt every {}, broken at {:?}",
            args.seed,
            c.stream.len(),
            c.max,
            c.chunks,
            c.interrupt_every,
            c.broken_at
        );
        println!("{}", hex(&c.stream, 4096));
        run_case(&c, &mut rng, &mut stats);
        println!("ok: {} frames, {} envelopes", stats.frames, stats.envelopes);
        return;
    }

    panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
    println!(
        "fuzzing snakepit_wire: {} inputs, seed {:#x}",
        args.inputs, args.seed
    );
    let started = Instant::now();
    let mut last_report = started;
    let mut failures: Vec<(u64, String)> = vec![];
    for index in 0..args.inputs {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut rng = Rng::for_input(args.seed, index);
            let c = case(&mut rng);
            run_case(&c, &mut rng, &mut stats);
        }));
        stats.inputs += 1;
        if outcome.is_err() {
            let msg = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "panic".into());
            if failures.len() < 20 {
                eprintln!(
                    "FAIL input {index} (seed {:#x}): {msg}\n  replay: cargo run --release -p snakepit_wire --example fuzz -- --seed {:#x} --replay {index}",
                    args.seed, args.seed
                );
            }
            failures.push((index, msg));
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  {} inputs, {:.0} s, {:.0} inputs/s, {} failures",
                stats.inputs,
                secs,
                stats.inputs as f64 / secs,
                failures.len()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let s = &stats;
    println!(
        "{} inputs ({:.1} MB, {} over 2 x FIRST_ALLOC) in {:.1} s: {:.0} inputs/s",
        s.inputs,
        s.bytes as f64 / 1e6,
        s.big,
        secs,
        s.inputs as f64 / secs
    );
    println!(
        "frames read {}; then eof {}, truncated {}, too large {}, io error {}",
        s.frames, s.eof, s.truncated, s.too_large, s.io
    );
    println!(
        "envelopes parsed {} (ready accepted {}), refused {}; tokens {}; too deep for the NIF {}",
        s.envelopes, s.ready_ok, s.refused, s.tokens, s.too_deep
    );
    println!("failures: {}", failures.len());
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
