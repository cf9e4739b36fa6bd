//! Elixir terms to MessagePack (the table is in `codec/mod.rs`), within
//! [`Limits`]: the work a normal scheduler may afford, the frame size, and
//! which binaries go as blobs or shared-memory segments instead of copies.

use super::kept::KeptBinary;
use super::keys::{check_same_keys, key_path, PyKey};
use super::{tensor, MAX_DEPTH};
use crate::atoms;
use rustler::{Binary, Term, TermType};
use snakepit_wire::msgpack::write_str;
use snakepit_wire::outgoing::{OutFrame, BLOB_EXT};
use std::fmt::Write as _;
use std::sync::Arc;

/// Why a term could not be encoded.
#[derive(Debug)]
pub enum EncodeError {
    /// A value with no MessagePack form; `path` says where it is.
    Unsupported { what: String, path: String },
    /// The work done passed the caller's budget (not an error for the
    /// user: the caller retries on a dirty scheduler).
    OverBudget,
    /// The frame grew past [`Limits::size`] (the caller reports the size).
    OverSize,
    /// A shared-memory segment was refused: over the pool's
    /// `:shm_max_bytes` (see `shm.rs`).
    Segment(crate::shm::MakeError),
}

impl EncodeError {
    fn at(self, segment: impl FnOnce(&mut String)) -> Self {
        match self {
            EncodeError::Unsupported { what, path } => {
                let mut seg = String::new();
                segment(&mut seg);
                EncodeError::Unsupported {
                    what,
                    path: seg + &path,
                }
            }
            other => other,
        }
    }

    pub fn unsupported(what: impl Into<String>) -> Self {
        EncodeError::Unsupported {
            what: what.into(),
            path: String::new(),
        }
    }
}

/// How far one encoding may go.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Bytes copied or scanned before encoding stops with
    /// [`EncodeError::OverBudget`]: what a normal scheduler may afford.
    pub budget: usize,
    /// Frame size (copied and in blobs) past which encoding stops with
    /// [`EncodeError::OverSize`].
    pub size: usize,
    /// Binaries (and tensor data) at least this long are sent as blobs
    /// (see [`OutFrame`]), not copied; `usize::MAX`: never.
    pub blob_min: usize,
}

impl Limits {
    /// No budget, no size limit, no blobs.
    pub const UNBOUNDED: Limits = Limits {
        budget: usize::MAX,
        size: usize::MAX,
        blob_min: usize::MAX,
    };
}

/// Binaries at least this long go to the worker as blobs (see
/// [`OutFrame`]): below it, a copy costs less than keeping the binary, one
/// more iovec, and one more read on the worker's side.
pub const BLOB_MIN: usize = 64 * 1024;

/// An encoding in progress: the frame, the work done so far, and the
/// shared-memory segments made.
struct Enc<'o> {
    out: &'o mut OutFrame,
    work: usize,
    segs: &'o mut crate::shm::Making,
}

impl Enc<'_> {
    fn check(&self, limits: &Limits) -> Result<(), EncodeError> {
        if self.work > limits.budget {
            Err(EncodeError::OverBudget)
        } else if self.out.len() > limits.size {
            Err(EncodeError::OverSize)
        } else {
            Ok(())
        }
    }

    /// `n` bytes about to be copied or scanned.
    fn spend(&mut self, n: usize, limits: &Limits) -> Result<(), EncodeError> {
        self.work += n;
        self.check(limits)
    }
}

/// Encodes `term` onto `out`, within `limits`.
pub fn encode(term: Term, out: &mut OutFrame, limits: Limits) -> Result<(), EncodeError> {
    encode_with(term, out, limits, &mut crate::shm::Making::none())
}

/// [`encode`], putting binaries and tensor data of at least the threshold
/// of `segs` into shared-memory segments (ext 85 and 86) instead of the
/// frame. Copying them counts as work against the budget.
pub fn encode_with(
    term: Term,
    out: &mut OutFrame,
    limits: Limits,
    segs: &mut crate::shm::Making,
) -> Result<(), EncodeError> {
    let start = out.bytes.len();
    let mut enc = Enc { out, work: 0, segs };
    encode_at(term, &mut enc, &limits, 0)?;
    enc.work += enc.out.bytes.len() - start;
    enc.check(&limits)
}

fn encode_at(term: Term, enc: &mut Enc, limits: &Limits, depth: usize) -> Result<(), EncodeError> {
    if depth > MAX_DEPTH {
        return Err(EncodeError::unsupported(format!(
            "data nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let out = &mut enc.out.bytes;
    match term.get_type() {
        TermType::Atom => encode_atom(term, out),
        TermType::Integer => {
            if let Ok(i) = term.decode::<i64>() {
                rmp::encode::write_sint(out, i).expect("Vec write");
            } else if let Ok(u) = term.decode::<u64>() {
                rmp::encode::write_uint(out, u).expect("Vec write");
            } else {
                return Err(EncodeError::unsupported(
                    "an integer outside the 64-bit range",
                ));
            }
            Ok(())
        }
        TermType::Float => {
            let f: f64 = term.decode().expect("float term");
            rmp::encode::write_f64(out, f).expect("Vec write");
            Ok(())
        }
        TermType::Binary => {
            let bin = Binary::from_term(term)
                .map_err(|_| EncodeError::unsupported("a bitstring that is not whole bytes"))?;
            let bytes = bin.as_slice();
            if let Some(index) = segment(bytes, enc, limits)? {
                let out = &mut enc.out.bytes;
                rmp::encode::write_ext_meta(out, crate::shm::REF_LEN as u32, crate::shm::EXT_BYTES)
                    .expect("Vec write");
                crate::shm::write_ref(out, index);
                return Ok(());
            }
            let text = is_text(bytes, enc, limits)?;
            if blob(term, bytes, if text { b"s" } else { b"b" }, enc, limits)? {
                return Ok(());
            }
            let out = &mut enc.out.bytes;
            if text {
                rmp::encode::write_str_len(out, bytes.len() as u32).expect("Vec write");
            } else {
                rmp::encode::write_bin_len(out, bytes.len() as u32).expect("Vec write");
            }
            enc.spend(bytes.len(), limits)?;
            enc.out.bytes.extend_from_slice(bytes);
            Ok(())
        }
        TermType::List => {
            let len = term
                .list_length()
                .map_err(|_| EncodeError::unsupported("an improper list"))?;
            rmp::encode::write_array_len(out, len as u32).expect("Vec write");
            let mut rest = term;
            for i in 0..len {
                let (head, tail) = rest.list_get_cell().expect("proper list");
                encode_at(head, enc, limits, depth + 1).map_err(|e| e.at(|s| index(s, i)))?;
                rest = tail;
            }
            enc.check(limits)
        }
        TermType::Tuple => {
            let items = rustler::types::tuple::get_tuple(term).expect("tuple term");
            rmp::encode::write_array_len(out, items.len() as u32).expect("Vec write");
            for (i, item) in items.into_iter().enumerate() {
                encode_at(item, enc, limits, depth + 1).map_err(|e| e.at(|s| index(s, i)))?;
            }
            enc.check(limits)
        }
        TermType::Map if tensor::is_tensor(term) => {
            let t = tensor::check(term).map_err(EncodeError::unsupported)?;
            if let Some(index) = segment(t.data(), enc, limits)? {
                t.write_in_segment(&mut enc.out.bytes, index);
                return Ok(());
            }
            let tag = [&b"t"[..], &t.header()].concat();
            if blob(t.data_term(), t.data(), &tag, enc, limits)? {
                return Ok(());
            }
            t.write_head(&mut enc.out.bytes);
            enc.spend(t.data().len(), limits)?;
            enc.out.bytes.extend_from_slice(t.data());
            enc.check(limits)
        }
        TermType::Map => {
            let len = term.map_size().expect("map term");
            rmp::encode::write_map_len(out, len as u32).expect("Vec write");
            let iter = rustler::types::map::MapIterator::new(term).expect("map term");
            let mut keys: Vec<(PyKey, Term)> = Vec::with_capacity(if len > 1 { len } else { 0 });
            // Keys are compared by their bytes in the buffer: never blobs.
            let key_limits = Limits {
                blob_min: usize::MAX,
                ..*limits
            };
            for (key, value) in iter {
                let start = enc.out.bytes.len();
                encode_at(key, enc, &key_limits, depth + 1)
                    .map_err(|e| e.at(|s| key_path(s, key)))?;
                if len > 1 {
                    keys.push((PyKey::of(key, start, enc.out.bytes.len()), key));
                }
                encode_at(value, enc, limits, depth + 1).map_err(|e| e.at(|s| key_path(s, key)))?;
            }
            check_same_keys(&mut keys, &enc.out.bytes)?;
            enc.check(limits)
        }
        TermType::Pid => Err(EncodeError::unsupported("a pid")),
        TermType::Port => Err(EncodeError::unsupported("a port")),
        TermType::Ref => Err(EncodeError::unsupported("a reference")),
        TermType::Fun => Err(EncodeError::unsupported("a function")),
        TermType::Unknown => Err(EncodeError::unsupported("a term of unknown type")),
    }
}

/// Whether `bytes` is UTF-8 (sent as `str`) or not (`bin`), scanning no
/// further than the budget allows.
fn is_text(bytes: &[u8], enc: &mut Enc, limits: &Limits) -> Result<bool, EncodeError> {
    let room = limits.budget.saturating_sub(enc.work);
    let probe = &bytes[..bytes.len().min(room)];
    match std::str::from_utf8(probe) {
        Ok(_) if probe.len() == bytes.len() => {
            enc.work += bytes.len();
            Ok(true)
        }
        // Valid so far, or cut inside a character: the rest decides.
        Ok(_) => Err(EncodeError::OverBudget),
        Err(e) if e.error_len().is_none() && probe.len() < bytes.len() => {
            Err(EncodeError::OverBudget)
        }
        Err(e) => {
            enc.work += e.valid_up_to();
            Ok(false)
        }
    }
}

/// Puts `data` into a new shared-memory segment when it is at least the
/// threshold of `enc.segs`, and returns its index. `None`: short, a map key
/// (encoded without blobs: `limits.blob_min` is `usize::MAX`), or the system
/// refused a segment (out of descriptors or memory; then it and the rest go
/// in the frame).
fn segment(data: &[u8], enc: &mut Enc, limits: &Limits) -> Result<Option<u32>, EncodeError> {
    if limits.blob_min == usize::MAX || !enc.segs.wants(data.len()) {
        return Ok(None);
    }
    enc.spend(data.len(), limits)?;
    match enc.segs.add(data) {
        Ok(index) => Ok(Some(index)),
        Err(crate::shm::MakeError::Io(_)) => {
            enc.segs.threshold = u64::MAX;
            Ok(None)
        }
        Err(e) => Err(EncodeError::Segment(e)),
    }
}

/// Sends `bytes` (the binary `term`) as a blob when it is long: writes a
/// reference to it (ext [`BLOB_EXT`]: its index, then `tag`) and returns
/// `true`. `false`: short, or not inspectable whole; the caller copies it.
fn blob(
    term: Term,
    bytes: &[u8],
    tag: &[u8],
    enc: &mut Enc,
    limits: &Limits,
) -> Result<bool, EncodeError> {
    if bytes.len() < limits.blob_min {
        return Ok(false);
    }
    if enc.out.len() + bytes.len() > limits.size {
        return Err(EncodeError::OverSize);
    }
    let Some(kept) = KeptBinary::new(term) else {
        return Ok(false);
    };
    let index = enc.out.add_blob(Arc::new(kept));
    let out = &mut enc.out.bytes;
    rmp::encode::write_ext_meta(out, 4 + tag.len() as u32, BLOB_EXT).expect("Vec write");
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(tag);
    Ok(true)
}

fn encode_atom(term: Term, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if term == atoms::nil().to_term(term.get_env()) {
        rmp::encode::write_nil(out).expect("Vec write");
    } else if term == atoms::true_().to_term(term.get_env()) {
        rmp::encode::write_bool(out, true).expect("Vec write");
    } else if term == atoms::false_().to_term(term.get_env()) {
        rmp::encode::write_bool(out, false).expect("Vec write");
    } else {
        match term.atom_to_string() {
            Ok(name) => write_str(out, name.as_bytes()),
            // Beyond Latin-1: this NIF version reads atom names as Latin-1
            // only, so take the name from the atom's external format.
            Err(_) => match utf8_atom_name(term) {
                Some(name) => write_str(out, &name),
                None => {
                    return Err(EncodeError::unsupported(
                        "an atom whose name cannot be read",
                    ))
                }
            },
        }
    }
    Ok(())
}

/// An atom's name in UTF-8, from `term_to_binary`: `131, 119, len:8, name`
/// or `131, 118, len:16, name` (SMALL_ATOM_UTF8_EXT, ATOM_UTF8_EXT).
fn utf8_atom_name(term: Term) -> Option<Vec<u8>> {
    let bin = term.to_binary();
    let bytes = bin.as_slice();
    let (len, at) = match bytes {
        [131, 119, n, ..] => (*n as usize, 3),
        [131, 118, hi, lo, ..] => (u16::from_be_bytes([*hi, *lo]) as usize, 4),
        _ => return None,
    };
    let name = bytes.get(at..at + len)?;
    std::str::from_utf8(name).ok()?;
    Some(name.to_vec())
}

fn index(s: &mut String, i: usize) {
    let _ = write!(s, "[{i}]");
}
