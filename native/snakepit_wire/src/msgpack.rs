//! A pull reader for MessagePack.
//!
//! It yields one [`Token`] at a time and never copies string or binary data:
//! those come back as byte ranges into the input, so the NIF can turn them
//! into sub-binaries of the frame it read. Containers yield their length and
//! the caller reads that many items (twice as many for maps) next.
//!
//! Writing uses `rmp::encode` directly; see [`write_str`] and [`write_bin`] for
//! the two helpers it lacks.

use std::fmt;
use std::ops::Range;

/// One MessagePack item, without its contents for containers.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Nil,
    Bool(bool),
    /// Any integer that fits in `i64`.
    Int(i64),
    /// Integers above `i64::MAX`.
    UInt(u64),
    Float(f64),
    /// UTF-8 text, as a range of the input (not validated here).
    Str(Range<usize>),
    /// Raw bytes, as a range of the input.
    Bin(Range<usize>),
    /// An array header: this many items follow.
    Array(usize),
    /// A map header: this many key/value pairs follow.
    Map(usize),
    /// An extension value: its type and a range of its data.
    Ext(i8, Range<usize>),
}

/// Malformed input.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The input ends inside an item.
    Truncated { at: usize },
    /// A byte that is no MessagePack marker (only 0xc1).
    BadMarker { at: usize, byte: u8 },
    /// Containers nested deeper than the reader allows.
    TooDeep { at: usize, max: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { at } => write!(f, "MessagePack data ends early at byte {at}"),
            DecodeError::BadMarker { at, byte } => {
                write!(f, "invalid MessagePack marker 0x{byte:02x} at byte {at}")
            }
            DecodeError::TooDeep { at, max } => {
                write!(f, "data nested deeper than {max} levels (at byte {at})")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over MessagePack bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Starts reading at `pos` (e.g. the body of a frame after its envelope).
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    /// Offset of the next unread byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when every byte was read.
    pub fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The bytes behind a range returned in a token.
    pub fn slice(&self, range: Range<usize>) -> &'a [u8] {
        &self.buf[range]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated { at: self.pos })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len8(&mut self) -> Result<usize, DecodeError> {
        Ok(self.be::<1>()?[0] as usize)
    }
    fn len16(&mut self) -> Result<usize, DecodeError> {
        Ok(u16::from_be_bytes(self.be()?) as usize)
    }
    fn len32(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    fn range(&mut self, n: usize) -> Result<Range<usize>, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(start..self.pos)
    }

    fn ext(&mut self, n: usize) -> Result<Token, DecodeError> {
        let ty = self.be::<1>()?[0] as i8;
        Ok(Token::Ext(ty, self.range(n)?))
    }

    /// Reads the next token.
    pub fn next_token(&mut self) -> Result<Token, DecodeError> {
        let at = self.pos;
        let marker = self.be::<1>()?[0];
        Ok(match marker {
            0x00..=0x7f => Token::Int(marker as i64),
            0x80..=0x8f => Token::Map((marker & 0x0f) as usize),
            0x90..=0x9f => Token::Array((marker & 0x0f) as usize),
            0xa0..=0xbf => Token::Str(self.range((marker & 0x1f) as usize)?),
            0xc0 => Token::Nil,
            0xc1 => return Err(DecodeError::BadMarker { at, byte: marker }),
            0xc2 => Token::Bool(false),
            0xc3 => Token::Bool(true),
            0xc4 => {
                let n = self.len8()?;
                Token::Bin(self.range(n)?)
            }
            0xc5 => {
                let n = self.len16()?;
                Token::Bin(self.range(n)?)
            }
            0xc6 => {
                let n = self.len32()?;
                Token::Bin(self.range(n)?)
            }
            0xc7 => {
                let n = self.len8()?;
                self.ext(n)?
            }
            0xc8 => {
                let n = self.len16()?;
                self.ext(n)?
            }
            0xc9 => {
                let n = self.len32()?;
                self.ext(n)?
            }
            0xca => Token::Float(f32::from_be_bytes(self.be()?) as f64),
            0xcb => Token::Float(f64::from_be_bytes(self.be()?)),
            0xcc => Token::Int(self.be::<1>()?[0] as i64),
            0xcd => Token::Int(u16::from_be_bytes(self.be()?) as i64),
            0xce => Token::Int(u32::from_be_bytes(self.be()?) as i64),
            0xcf => {
                let v = u64::from_be_bytes(self.be()?);
                match i64::try_from(v) {
                    Ok(i) => Token::Int(i),
                    Err(_) => Token::UInt(v),
                }
            }
            0xd0 => Token::Int(i8::from_be_bytes(self.be()?) as i64),
            0xd1 => Token::Int(i16::from_be_bytes(self.be()?) as i64),
            0xd2 => Token::Int(i32::from_be_bytes(self.be()?) as i64),
            0xd3 => Token::Int(i64::from_be_bytes(self.be()?)),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = self.len8()?;
                Token::Str(self.range(n)?)
            }
            0xda => {
                let n = self.len16()?;
                Token::Str(self.range(n)?)
            }
            0xdb => {
                let n = self.len32()?;
                Token::Str(self.range(n)?)
            }
            0xdc => Token::Array(self.len16()?),
            0xdd => Token::Array(self.len32()?),
            0xde => Token::Map(self.len16()?),
            0xdf => Token::Map(self.len32()?),
            0xe0..=0xff => Token::Int(marker as i8 as i64),
        })
    }

    /// Skips one whole item, containers included, without recursion.
    pub fn skip(&mut self) -> Result<(), DecodeError> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            match self.next_token()? {
                Token::Array(n) => pending += n,
                Token::Map(n) => pending += 2 * n,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes a string header and its bytes.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    rmp::encode::write_str_len(out, s.len() as u32).expect("Vec write");
    out.extend_from_slice(s);
}

/// Writes a binary header and its bytes.
pub fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    rmp::encode::write_bin_len(out, b.len() as u32).expect("Vec write");
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmp::encode as enc;

    fn tokens(buf: &[u8]) -> Vec<Token> {
        let mut r = Reader::new(buf);
        let mut out = vec![];
        while !r.is_done() {
            out.push(r.next_token().unwrap());
        }
        out
    }

    #[test]
    fn reads_every_integer_width() {
        let values: [i64; 12] = [
            0,
            127,
            128,
            255,
            65_535,
            65_536,
            -1,
            -32,
            -33,
            -129,
            i64::MIN,
            i64::MAX,
        ];
        let mut buf = vec![];
        for v in values {
            enc::write_sint(&mut buf, v).unwrap();
        }
        enc::write_uint(&mut buf, u64::MAX).unwrap();
        enc::write_uint(&mut buf, 1 << 63).unwrap();
        let mut expect: Vec<Token> = values.iter().map(|&v| Token::Int(v)).collect();
        expect.push(Token::UInt(u64::MAX));
        expect.push(Token::UInt(1 << 63));
        assert_eq!(tokens(&buf), expect);
    }

    #[test]
    fn reads_floats_of_both_widths_including_non_finite() {
        let mut buf = vec![];
        enc::write_f32(&mut buf, 1.5).unwrap();
        enc::write_f64(&mut buf, -2.25).unwrap();
        enc::write_f64(&mut buf, f64::INFINITY).unwrap();
        let t = tokens(&buf);
        assert_eq!(t[0], Token::Float(1.5));
        assert_eq!(t[1], Token::Float(-2.25));
        assert_eq!(t[2], Token::Float(f64::INFINITY));
        let mut nan = vec![];
        enc::write_f64(&mut nan, f64::NAN).unwrap();
        assert!(matches!(tokens(&nan)[0], Token::Float(f) if f.is_nan()));
    }

    #[test]
    fn strings_and_binaries_are_ranges_into_the_input() {
        let long = "é".repeat(200);
        let mut buf = vec![];
        write_str(&mut buf, b"hi");
        write_str(&mut buf, long.as_bytes());
        write_bin(&mut buf, &[0xff, 0x00]);
        write_bin(&mut buf, &vec![1u8; 70_000]);
        let mut r = Reader::new(&buf);
        let Token::Str(a) = r.next_token().unwrap() else {
            panic!()
        };
        assert_eq!(r.slice(a), b"hi");
        let Token::Str(b) = r.next_token().unwrap() else {
            panic!()
        };
        assert_eq!(r.slice(b), long.as_bytes());
        let Token::Bin(c) = r.next_token().unwrap() else {
            panic!()
        };
        assert_eq!(r.slice(c), &[0xff, 0x00]);
        let Token::Bin(d) = r.next_token().unwrap() else {
            panic!()
        };
        assert_eq!(r.slice(d).len(), 70_000);
    }

    #[test]
    fn containers_yield_their_lengths() {
        let mut buf = vec![];
        enc::write_array_len(&mut buf, 2).unwrap();
        enc::write_map_len(&mut buf, 20).unwrap();
        enc::write_array_len(&mut buf, 70_000).unwrap();
        enc::write_nil(&mut buf).unwrap();
        enc::write_bool(&mut buf, true).unwrap();
        assert_eq!(
            tokens(&buf),
            vec![
                Token::Array(2),
                Token::Map(20),
                Token::Array(70_000),
                Token::Nil,
                Token::Bool(true)
            ]
        );
    }

    #[test]
    fn reads_ext_values() {
        let mut buf = vec![];
        enc::write_ext_meta(&mut buf, 3, 5).unwrap();
        buf.extend_from_slice(b"abc");
        let mut r = Reader::new(&buf);
        let Token::Ext(5, range) = r.next_token().unwrap() else {
            panic!()
        };
        assert_eq!(r.slice(range), b"abc");
    }

    #[test]
    fn skip_passes_over_nested_containers() {
        let mut buf = vec![];
        enc::write_array_len(&mut buf, 2).unwrap();
        enc::write_map_len(&mut buf, 1).unwrap();
        write_str(&mut buf, b"k");
        enc::write_array_len(&mut buf, 1).unwrap();
        enc::write_nil(&mut buf).unwrap();
        enc::write_sint(&mut buf, 9).unwrap();
        enc::write_sint(&mut buf, 42).unwrap();
        let mut r = Reader::new(&buf);
        r.skip().unwrap();
        assert_eq!(r.next_token().unwrap(), Token::Int(42));
    }

    #[test]
    fn rejects_truncated_and_invalid_input_without_panicking() {
        assert_eq!(
            Reader::new(&[0xc1]).next_token(),
            Err(DecodeError::BadMarker { at: 0, byte: 0xc1 })
        );
        assert_eq!(
            Reader::new(&[0xcb, 0, 0]).next_token(),
            Err(DecodeError::Truncated { at: 1 })
        );
        assert_eq!(
            Reader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff]).next_token(),
            Err(DecodeError::Truncated { at: 5 })
        );
        assert_eq!(
            Reader::new(&[]).next_token(),
            Err(DecodeError::Truncated { at: 0 })
        );
        // Every prefix of a valid item is either fine or an error, never a panic.
        let mut buf = vec![];
        enc::write_map_len(&mut buf, 1).unwrap();
        write_str(&mut buf, b"key");
        enc::write_f64(&mut buf, 1.0).unwrap();
        for cut in 0..buf.len() {
            let _ = Reader::new(&buf[..cut]).skip();
        }
    }
}
