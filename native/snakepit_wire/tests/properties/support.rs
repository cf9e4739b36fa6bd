//! What the properties share: a MessagePack value model, its strategies and
//! its encoding with `rmp`, a reference decoder, and a reader that hands out
//! a stream in arbitrary chunks.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use snakepit_wire::msgpack::{DecodeError, Reader, Token};
use std::io::{self, Read};

/// `default_cases` cases, unless `PROPTEST_CASES` is set: then that many,
/// divided by `divisor` for the properties whose cases cost more.
pub fn config(default_cases: u32, divisor: u32) -> Config {
    let cases = match std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(n) => (n / divisor).max(1),
        None => default_cases,
    };
    Config {
        cases,
        ..Config::default()
    }
}

/// A MessagePack value. Floats are kept as bits so that NaN equals itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    /// Above `i64::MAX`.
    UInt(u64),
    F32(u32),
    F64(u64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Ext(i8, Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The value as the reader gives it back: a float 32 widens to 64 bits.
    pub fn decoded(&self) -> Value {
        match self {
            Value::F32(bits) => Value::F64((f32::from_bits(*bits) as f64).to_bits()),
            Value::Array(items) => Value::Array(items.iter().map(Value::decoded).collect()),
            Value::Map(pairs) => Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (k.decoded(), v.decoded()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Its tokens in the order the reader yields them.
    pub fn tokens(&self, out: &mut Vec<Tok>) {
        out.push(match self.decoded() {
            Value::Nil => Tok::Nil,
            Value::Bool(b) => Tok::Bool(b),
            Value::Int(i) => Tok::Int(i),
            Value::UInt(u) => Tok::UInt(u),
            Value::F32(_) => unreachable!("decoded() widened it"),
            Value::F64(bits) => Tok::Float(bits),
            Value::Str(s) => Tok::Str(s),
            Value::Bin(b) => Tok::Bin(b),
            Value::Ext(ty, d) => Tok::Ext(ty, d),
            Value::Array(ref items) => Tok::Array(items.len()),
            Value::Map(ref pairs) => Tok::Map(pairs.len()),
        });
        match self {
            Value::Array(items) => items.iter().for_each(|v| v.tokens(out)),
            Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
                k.tokens(out);
                v.tokens(out);
            }),
            _ => {}
        }
    }

    /// Containers nested inside one another, at the deepest point.
    pub fn depth(&self) -> usize {
        match self {
            Value::Array(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(pairs) => {
                1 + pairs
                    .iter()
                    .map(|(k, v)| k.depth().max(v.depth()))
                    .max()
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }
}

/// A token with its bytes instead of a range, and a float as its bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(u64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Ext(i8, Vec<u8>),
    Array(usize),
    Map(usize),
}

/// `t`, read by `r`, with its bytes copied out.
pub fn own(r: &Reader, t: Token) -> Tok {
    match t {
        Token::Nil => Tok::Nil,
        Token::Bool(b) => Tok::Bool(b),
        Token::Int(i) => Tok::Int(i),
        Token::UInt(u) => Tok::UInt(u),
        Token::Float(f) => Tok::Float(f.to_bits()),
        Token::Str(range) => Tok::Str(r.slice(range).to_vec()),
        Token::Bin(range) => Tok::Bin(r.slice(range).to_vec()),
        Token::Ext(ty, range) => Tok::Ext(ty, r.slice(range).to_vec()),
        Token::Array(n) => Tok::Array(n),
        Token::Map(n) => Tok::Map(n),
    }
}

/// Encodes `v` with `rmp`, in the smallest form of each item.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    use rmp::encode as enc;
    match v {
        Value::Nil => enc::write_nil(out).unwrap(),
        Value::Bool(b) => enc::write_bool(out, *b).unwrap(),
        Value::Int(i) => {
            enc::write_sint(out, *i).unwrap();
        }
        Value::UInt(u) => {
            enc::write_uint(out, *u).unwrap();
        }
        Value::F32(bits) => enc::write_f32(out, f32::from_bits(*bits)).unwrap(),
        Value::F64(bits) => enc::write_f64(out, f64::from_bits(*bits)).unwrap(),
        Value::Str(s) => {
            enc::write_str_len(out, s.len() as u32).unwrap();
            out.extend_from_slice(s);
        }
        Value::Bin(b) => enc::write_bin(out, b).unwrap(),
        Value::Ext(ty, d) => {
            enc::write_ext_meta(out, d.len() as u32, *ty).unwrap();
            out.extend_from_slice(d);
        }
        Value::Array(items) => {
            enc::write_array_len(out, items.len() as u32).unwrap();
            items.iter().for_each(|i| encode(i, out));
        }
        Value::Map(pairs) => {
            enc::write_map_len(out, pairs.len() as u32).unwrap();
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
    }
}

pub fn encoded(v: &Value) -> Vec<u8> {
    let mut out = vec![];
    encode(v, &mut out);
    out
}

/// The containers' limit in the NIF's decoder (`snakepit_nif::codec::MAX_DEPTH`).
pub const MAX_DEPTH: usize = 256;

/// Decodes one item into a [`Value`], recursing into containers the way the
/// NIF's decoder does: an item deeper than `max_depth` is refused with
/// [`DecodeError::TooDeep`] before its token is read, so the recursion never
/// goes past `max_depth + 1` frames whatever the input.
pub fn decode(r: &mut Reader, depth: usize, max_depth: usize) -> Result<Value, DecodeError> {
    if depth > max_depth {
        return Err(DecodeError::TooDeep {
            at: r.position(),
            max: max_depth,
        });
    }
    Ok(match r.next_token()? {
        Token::Nil => Value::Nil,
        Token::Bool(b) => Value::Bool(b),
        Token::Int(i) => Value::Int(i),
        Token::UInt(u) => Value::UInt(u),
        Token::Float(f) => Value::F64(f.to_bits()),
        Token::Str(range) => Value::Str(r.slice(range).to_vec()),
        Token::Bin(range) => Value::Bin(r.slice(range).to_vec()),
        Token::Ext(ty, range) => Value::Ext(ty, r.slice(range).to_vec()),
        Token::Array(n) => {
            let mut items = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                items.push(decode(r, depth + 1, max_depth)?);
            }
            Value::Array(items)
        }
        Token::Map(n) => {
            let mut pairs = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let k = decode(r, depth + 1, max_depth)?;
                let v = decode(r, depth + 1, max_depth)?;
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

pub fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
        any::<f32>().prop_map(|f| Value::F32(f.to_bits())),
        any::<f64>().prop_map(|f| Value::F64(f.to_bits())),
        any::<u64>().prop_map(Value::F64),
        bytes(40).prop_map(Value::Str),
        bytes(40).prop_map(Value::Bin),
        (any::<i8>(), bytes(20)).prop_map(|(ty, d)| Value::Ext(ty, d)),
    ]
}

/// Values nested up to 6 containers deep, with a few long strings so that
/// every width of length prefix shows up.
pub fn value() -> impl Strategy<Value = Value> {
    let long = prop_oneof![250usize..260, 65_530usize..65_540];
    let leaves = prop_oneof![
        20 => leaf(),
        1 => (long, any::<u8>()).prop_map(|(n, b)| Value::Str(vec![b; n])),
    ];
    leaves.prop_recursive(6, 96, 12, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..12).prop_map(Value::Array),
            vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
            // Past 15 items: the 16-bit container headers.
            (leaf(), 16usize..20).prop_map(|(v, n)| Value::Array(vec![v; n])),
        ]
    })
}

/// Bytes that look like MessagePack: valid encodings, broken ones, and noise.
pub fn msgpack_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(64),
        vec(
            prop_oneof![
                // Markers and the bytes that follow containers and lengths.
                any::<u8>(),
                0x80u8..=0x9f,
                0xc4u8..=0xdf,
                Just(0xff),
                Just(0x00),
            ],
            0..96
        ),
        value().prop_map(|v| encoded(&v)),
        (value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut e = encoded(&v);
            let i = at.index(e.len());
            e[i] ^= b | 1;
            e
        }),
        (value(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let e = encoded(&v);
            let cut = at.index(e.len());
            e[..cut].to_vec()
        }),
    ]
}

/// A reader that returns `data` in chunks of the given sizes (cycled), and
/// says `Interrupted` every `interrupt_every` calls (never, if 0).
pub struct Chunked<'a> {
    data: &'a [u8],
    pub pos: usize,
    chunks: Vec<usize>,
    calls: usize,
    interrupt_every: usize,
    /// After this many bytes, a read fails (other than `Interrupted`).
    fail_at: Option<usize>,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], chunks: &[usize], interrupt_every: usize) -> Self {
        assert!(chunks.iter().all(|&c| c > 0), "a 0-byte read is an EOF");
        assert!(interrupt_every != 1, "every read interrupted: no progress");
        Chunked {
            data,
            pos: 0,
            chunks: if chunks.is_empty() {
                vec![usize::MAX]
            } else {
                chunks.to_vec()
            },
            calls: 0,
            interrupt_every,
            fail_at: None,
        }
    }

    pub fn failing_at(mut self, at: usize) -> Self {
        self.fail_at = Some(at);
        self
    }

    pub fn fail_at(&self) -> Option<usize> {
        self.fail_at
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt_every > 0 && self.calls.is_multiple_of(self.interrupt_every) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let end = self
            .fail_at
            .map_or(self.data.len(), |f| f.min(self.data.len()));
        if self.pos >= end && self.fail_at.is_some_and(|f| f < self.data.len()) {
            return Err(io::Error::other("pipe broke"));
        }
        let chunk = self.chunks[self.calls % self.chunks.len()];
        let n = chunk.min(buf.len()).min(end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read sizes: mostly small, so frames and headers split anywhere.
pub fn chunks() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1usize..8, 1usize..300, Just(usize::MAX)], 0..8)
}
