//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes of
//! MessagePack. Both directions use the same framing (see `docs/protocol.md`).

use std::fmt;
use std::io::{self, Read};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Largest frame accepted when the pool sets no limit of its own: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The stream ended cleanly between two frames.
    Eof,
    /// The stream ended inside a frame.
    Truncated { expected: usize, got: usize },
    /// The length prefix announces more than the configured maximum.
    TooLarge { len: usize, max: usize },
    /// No memory for the next `len` bytes of the body.
    OutOfMemory { len: usize },
    /// Any other I/O failure.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Eof => write!(f, "stream closed"),
            FrameError::Truncated { expected, got } => {
                write!(
                    f,
                    "stream closed inside a frame ({got} of {expected} bytes)"
                )
            }
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            FrameError::OutOfMemory { len } => {
                write!(f, "no memory for {len} bytes of a frame")
            }
            FrameError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes the length prefix for a body of `len` bytes.
///
/// Panics if `len` does not fit in 32 bits; callers check `max_frame` first,
/// and the largest allowed maximum is `u32::MAX`.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    u32::try_from(len)
        .expect("frame length checked against max_frame")
        .to_be_bytes()
}

/// Starts an outgoing frame: a buffer holding a placeholder length prefix.
/// Write the body after it, then call [`finish`].
pub fn begin(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + capacity);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf
}

/// Fills in the length prefix of a frame started with [`begin`].
/// Fails if the body is larger than `max`.
pub fn finish(buf: &mut [u8], max: usize) -> Result<(), FrameError> {
    let len = buf.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf[..HEADER_LEN].copy_from_slice(&header(len));
    Ok(())
}

/// A buffer a frame body is read into, grown as the body arrives.
pub trait Buffer {
    /// Resizes to `len` bytes, keeping the bytes it holds; `false` if there
    /// is no memory for it (the buffer is then unchanged).
    fn resize(&mut self, len: usize) -> bool;
    fn as_mut_slice(&mut self) -> &mut [u8];
}

/// Reserves exactly what `len` bytes need: `Vec::resize` alone doubles the
/// capacity (past the frame's length, and so past the limit, by up to 2x)
/// and aborts the process when there is no memory instead of failing.
impl Buffer for Vec<u8> {
    fn resize(&mut self, len: usize) -> bool {
        let more = len.saturating_sub(self.len());
        if self.try_reserve_exact(more).is_err() {
            return false;
        }
        Vec::resize(self, len, 0);
        true
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
}

/// The most a body buffer holds before any of its bytes arrive: a length
/// prefix alone never reserves more. Past it, the buffer doubles as bytes
/// arrive, so memory follows what the peer actually sent.
pub const FIRST_ALLOC: usize = 256 * 1024;

/// Reads one frame. `alloc(len)` provides the buffer for the body (`None`
/// if there is no memory), so the NIF can read straight into a VM binary and
/// tests into a `Vec`. The buffer starts at most [`FIRST_ALLOC`] bytes long
/// and grows as the body arrives.
pub fn read_frame<R, B, F>(reader: &mut R, max: usize, alloc: F) -> Result<B, FrameError>
where
    R: Read,
    B: Buffer,
    F: FnOnce(usize) -> Option<B>,
{
    let mut head = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut head)?;
    if got == 0 {
        return Err(FrameError::Eof);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut size = len.min(FIRST_ALLOC);
    let mut body = alloc(size).ok_or(FrameError::OutOfMemory { len: size })?;
    let mut filled = 0;
    loop {
        filled += read_full(reader, &mut body.as_mut_slice()[filled..size])?;
        if filled < size {
            return Err(FrameError::Truncated {
                expected: len,
                got: filled,
            });
        }
        if filled == len {
            return Ok(body);
        }
        size = len.min(size.saturating_mul(2));
        if !body.resize(size) {
            return Err(FrameError::OutOfMemory { len: size });
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut buf = begin(body.len());
        buf.extend_from_slice(body);
        finish(&mut buf, DEFAULT_MAX_FRAME).unwrap();
        buf
    }

    #[test]
    fn round_trips_frames_back_to_back() {
        let mut stream = framed(b"hello");
        stream.extend(framed(b""));
        stream.extend(framed(&[7u8; 70_000]));
        let mut r = Cursor::new(stream);
        let read = |r: &mut Cursor<Vec<u8>>| read_frame(r, DEFAULT_MAX_FRAME, |n| Some(vec![0; n]));
        assert_eq!(read(&mut r).unwrap(), b"hello");
        assert_eq!(read(&mut r).unwrap(), b"");
        assert_eq!(read(&mut r).unwrap(), vec![7u8; 70_000]);
        assert!(matches!(read(&mut r), Err(FrameError::Eof)));
    }

    #[test]
    fn header_is_big_endian() {
        assert_eq!(header(0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(&framed(b"ab")[..4], &[0, 0, 0, 2]);
    }

    #[test]
    fn refuses_frames_over_the_limit_before_allocating() {
        let mut r = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let err = read_frame(&mut r, 1024, |_| -> Option<Vec<u8>> { panic!("allocated") });
        assert!(matches!(
            err,
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 1024
            })
        ));
    }

    #[test]
    fn finish_refuses_bodies_over_the_limit() {
        let mut buf = begin(10);
        buf.extend_from_slice(&[0; 10]);
        assert!(matches!(
            finish(&mut buf, 9),
            Err(FrameError::TooLarge { len: 10, max: 9 })
        ));
    }

    #[test]
    fn reports_truncation_in_header_and_body() {
        let mut r = Cursor::new(vec![0, 0]);
        assert!(matches!(
            read_frame(&mut r, 100, |n| Some(vec![0; n])),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut r = Cursor::new(vec![0, 0, 0, 5, 1, 2]);
        assert!(matches!(
            read_frame(&mut r, 100, |n| Some(vec![0; n])),
            Err(FrameError::Truncated {
                expected: 5,
                got: 2
            })
        ));
    }

    /// Records the sizes it is asked for.
    #[derive(Debug)]
    struct Tracked {
        bytes: Vec<u8>,
        sizes: Vec<usize>,
        fail_above: usize,
    }

    impl Buffer for Tracked {
        fn resize(&mut self, len: usize) -> bool {
            if len > self.fail_above {
                return false;
            }
            self.sizes.push(len);
            self.bytes.resize(len, 0);
            true
        }
        fn as_mut_slice(&mut self) -> &mut [u8] {
            &mut self.bytes
        }
    }

    fn tracked(fail_above: usize) -> impl FnOnce(usize) -> Option<Tracked> {
        move |n| {
            Some(Tracked {
                bytes: vec![0; n],
                sizes: vec![n],
                fail_above,
            })
        }
    }

    #[test]
    fn a_length_prefix_alone_reserves_at_most_first_alloc() {
        // 60 MiB announced, 10 bytes sent, then the stream ends.
        let mut stream = header(60 << 20).to_vec();
        stream.extend_from_slice(&[1; 10]);
        let mut seen = 0;
        let err = read_frame(&mut Cursor::new(stream), 64 << 20, |n| {
            seen = n;
            Some(vec![0; n])
        })
        .unwrap_err();
        assert_eq!(seen, FIRST_ALLOC);
        assert!(matches!(err, FrameError::Truncated { expected, got: 10 } if expected == 60 << 20));
    }

    #[test]
    fn the_buffer_doubles_as_the_body_arrives_and_holds_every_byte() {
        let body: Vec<u8> = (0..FIRST_ALLOC * 5 + 3).map(|i| (i % 251) as u8).collect();
        let mut r = Cursor::new(framed(&body));
        let got = read_frame(&mut r, DEFAULT_MAX_FRAME, tracked(usize::MAX)).unwrap();
        assert_eq!(got.bytes, body);
        let k = FIRST_ALLOC;
        assert_eq!(got.sizes, [k, 2 * k, 4 * k, body.len()]);
    }

    #[test]
    fn a_vec_buffer_grows_to_exactly_the_frame_and_reports_no_memory() {
        // Found by the property tests: `Vec::resize` doubled the capacity, so
        // a frame of FIRST_ALLOC + 1 bytes held twice that, over its limit.
        let len = FIRST_ALLOC + 1;
        let mut r = Cursor::new(framed(&vec![3; len]));
        let body: Vec<u8> = read_frame(&mut r, len, |n| Some(vec![0; n])).unwrap();
        assert_eq!(body.len(), len);
        assert_eq!(body.capacity(), len);
        // And a size no allocator can give is `false`, the buffer unchanged,
        // where `Vec::resize` panicked with "capacity overflow".
        let mut v = vec![1u8, 2, 3];
        assert!(!Buffer::resize(&mut v, usize::MAX));
        assert_eq!(v, [1, 2, 3]);
        assert!(Buffer::resize(&mut v, 1));
        assert_eq!(v, [1]);
    }

    #[test]
    fn no_memory_for_the_body_is_an_error_not_an_abort() {
        let mut r = Cursor::new(framed(&vec![9; FIRST_ALLOC * 3]));
        let err = read_frame(&mut r, DEFAULT_MAX_FRAME, tracked(FIRST_ALLOC * 2)).unwrap_err();
        assert!(matches!(err, FrameError::OutOfMemory { len } if len == FIRST_ALLOC * 3));
        let mut r = Cursor::new(framed(b"abc"));
        let err = read_frame(&mut r, DEFAULT_MAX_FRAME, |_| None::<Vec<u8>>).unwrap_err();
        assert!(matches!(err, FrameError::OutOfMemory { len: 3 }));
        assert!(err.to_string().contains("no memory for 3 bytes"));
    }
}
