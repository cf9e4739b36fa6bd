//! MessagePack to Elixir terms (the table is in `codec/mod.rs`), in the env
//! of the process that asked.

use super::{tensor, MAX_DEPTH};
use crate::atoms;
use rustler::types::tuple::make_tuple;
use rustler::{Binary, Encoder, Env, Term};
use snakepit_wire::msgpack::{DecodeError, Reader, Token};

/// Why a frame could not be decoded into terms.
#[derive(Debug)]
pub enum DecodeFailure {
    /// Not MessagePack, or nested too deep.
    Wire(DecodeError),
    /// A tensor extension (type 84) that is malformed.
    Tensor { at: usize, why: String },
    /// Decoding would take more than the caller's budget (not an error for
    /// the user: the caller decodes again on a dirty scheduler).
    OverBudget,
}

impl From<DecodeError> for DecodeFailure {
    fn from(e: DecodeError) -> Self {
        DecodeFailure::Wire(e)
    }
}

impl std::fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeFailure::Wire(e) => e.fmt(f),
            DecodeFailure::Tensor { at, why } => write!(f, "{why} (at byte {at})"),
            DecodeFailure::OverBudget => write!(f, "over the decoding budget"),
        }
    }
}

/// Strings and binaries at least this long are returned as sub-binaries of
/// the frame instead of copies.
const SUB_BINARY_MIN: usize = 4096;

/// Decodes one MessagePack item into a term.
///
/// `frame` is the whole frame as a binary of `env`, so long strings and
/// binaries become sub-binaries of it; `pos` is where the item starts.
/// `budget` bounds the work (one unit per value, plus the bytes of short
/// strings copied): past it, [`DecodeFailure::OverBudget`]. A frame's work
/// is at most its size, and a large binary in it costs one unit.
///
/// `segments` are the shared-memory segments that came with the frame
/// (binaries over their mappings): extension types 85 and 86 name one by
/// its index and decode to it (see `shm.rs`).
pub fn decode<'a>(
    env: Env<'a>,
    frame: Binary<'a>,
    pos: usize,
    budget: usize,
    segments: &[Binary<'a>],
) -> Result<Term<'a>, DecodeFailure> {
    let mut reader = Reader::at(frame.as_slice(), pos);
    let mut left = budget;
    let src = Source { frame, segments };
    decode_item(env, &src, &mut reader, 0, &mut left)
}

/// Where decoded bytes come from: the frame, and its segments.
struct Source<'s, 'a> {
    frame: Binary<'a>,
    segments: &'s [Binary<'a>],
}

impl<'a> Source<'_, 'a> {
    /// The segment a handle at byte `at` refers to.
    fn segment(&self, payload: &[u8], at: usize) -> Result<Binary<'a>, DecodeFailure> {
        let index =
            crate::shm::parse_ref(payload).map_err(|why| DecodeFailure::Tensor { at, why })?;
        self.segments
            .get(index)
            .copied()
            .ok_or_else(|| DecodeFailure::Tensor {
                at,
                why: format!(
                    "a shared-memory handle to segment {index}, but the frame came with {}",
                    self.segments.len()
                ),
            })
    }
}

fn decode_item<'a>(
    env: Env<'a>,
    src: &Source<'_, 'a>,
    r: &mut Reader,
    depth: usize,
    left: &mut usize,
) -> Result<Term<'a>, DecodeFailure> {
    let frame = &src.frame;
    if depth > MAX_DEPTH {
        return Err(DecodeFailure::Wire(DecodeError::TooDeep {
            at: r.position(),
            max: MAX_DEPTH,
        }));
    }
    let at = r.position();
    let token = r.next_token()?;
    let cost = match &token {
        Token::Str(range) | Token::Bin(range) if range.len() < SUB_BINARY_MIN => 1 + range.len(),
        _ => 1,
    };
    *left = left.checked_sub(cost).ok_or(DecodeFailure::OverBudget)?;
    Ok(match token {
        Token::Nil => atoms::nil().encode(env),
        Token::Bool(b) => b.encode(env),
        Token::Int(i) => i.encode(env),
        Token::UInt(u) => u.encode(env),
        Token::Float(f) => float_term(env, f),
        Token::Str(range) | Token::Bin(range) => bytes_term(env, frame, range),
        Token::Array(n) => {
            let mut items = Vec::with_capacity(n.min(65_536));
            for _ in 0..n {
                items.push(decode_item(env, src, r, depth + 1, left)?);
            }
            items.encode(env)
        }
        Token::Map(n) => {
            let mut keys = Vec::with_capacity(n.min(65_536));
            let mut values = Vec::with_capacity(n.min(65_536));
            for _ in 0..n {
                keys.push(decode_item(env, src, r, depth + 1, left)?);
                values.push(decode_item(env, src, r, depth + 1, left)?);
            }
            // enif_make_map_from_arrays does not reject duplicate keys among
            // more than 32 and then builds a corrupt map (erlang/otp#10975),
            // so duplicates are looked for here; the last one wins, as in Python.
            let built = if has_duplicates(&keys) {
                None
            } else {
                Term::map_from_term_arrays(env, &keys, &values).ok()
            };
            built.unwrap_or_else(|| {
                keys.into_iter()
                    .zip(values)
                    .fold(Term::map_new(env), |m, (k, v)| {
                        m.map_put(k, v).expect("map term")
                    })
            })
        }
        Token::Ext(tensor::EXT_TYPE, range) => {
            let header = tensor::parse(&frame.as_slice()[range.clone()])
                .map_err(|why| DecodeFailure::Tensor { at, why })?;
            let data = bytes_term(env, frame, range.start + header.data_at..range.end);
            tensor::make_term(env, &header, data)
        }
        Token::Ext(crate::shm::EXT_BYTES, range) => {
            src.segment(&frame.as_slice()[range], at)?.encode(env)
        }
        Token::Ext(crate::shm::EXT_TENSOR, range) => {
            let payload = &frame.as_slice()[range];
            let data = src.segment(payload, at)?;
            let head = &payload[crate::shm::REF_LEN.min(payload.len())..];
            let header = tensor::parse_header(head, data.len())
                .map_err(|why| DecodeFailure::Tensor { at, why })?;
            tensor::make_term(env, &header, data.encode(env))
        }
        Token::Ext(ty, range) => {
            let data = bytes_term(env, frame, range);
            make_tuple(
                env,
                &[atoms::msgpack_ext().encode(env), ty.encode(env), data],
            )
        }
    })
}

fn has_duplicates(keys: &[Term]) -> bool {
    if keys.len() <= 32 {
        // Small maps: enif_make_map_from_arrays detects duplicates itself.
        return false;
    }
    let mut sorted: Vec<&Term> = keys.iter().collect();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

fn float_term(env: Env, f: f64) -> Term {
    if f.is_nan() {
        atoms::nan().encode(env)
    } else if f == f64::INFINITY {
        atoms::infinity().encode(env)
    } else if f == f64::NEG_INFINITY {
        atoms::neg_infinity().encode(env)
    } else {
        f.encode(env)
    }
}

fn bytes_term<'a>(env: Env<'a>, frame: &Binary<'a>, range: std::ops::Range<usize>) -> Term<'a> {
    if range.len() >= SUB_BINARY_MIN {
        frame
            .make_subbinary(range.start, range.len())
            .expect("range within frame")
            .encode(env)
    } else {
        let mut bin = rustler::NewBinary::new(env, range.len());
        bin.as_mut_slice().copy_from_slice(&frame.as_slice()[range]);
        Binary::from(bin).encode(env)
    }
}
