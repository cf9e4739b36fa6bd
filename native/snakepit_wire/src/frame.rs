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

/// Reads one frame. `alloc(len)` provides the buffer for the body, so the NIF
/// can read straight into a VM binary and tests into a `Vec`.
pub fn read_frame<R, B, F>(reader: &mut R, max: usize, alloc: F) -> Result<B, FrameError>
where
    R: Read,
    B: AsMut<[u8]>,
    F: FnOnce(usize) -> B,
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
    let mut body = alloc(len);
    let got = read_full(reader, body.as_mut())?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(body)
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
        let read = |r: &mut Cursor<Vec<u8>>| read_frame(r, DEFAULT_MAX_FRAME, |n| vec![0; n]);
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
        let err = read_frame(&mut r, 1024, |_| -> Vec<u8> { panic!("allocated") });
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
            read_frame(&mut r, 100, |n| vec![0; n]),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut r = Cursor::new(vec![0, 0, 0, 5, 1, 2]);
        assert!(matches!(
            read_frame(&mut r, 100, |n| vec![0; n]),
            Err(FrameError::Truncated {
                expected: 5,
                got: 2
            })
        ));
    }
}
