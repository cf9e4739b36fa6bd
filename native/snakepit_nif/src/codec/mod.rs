//! Elixir terms to MessagePack and back.
//!
//! | Elixir                         | MessagePack            | back to Elixir              |
//! |--------------------------------|------------------------|-----------------------------|
//! | `nil`, `true`, `false`         | nil, bool              | same                        |
//! | other atoms                    | str                    | binary (never an atom)      |
//! | integers in i64 or u64 range   | int                    | integer                     |
//! | floats                         | float 64               | float; NaN/±inf as atoms    |
//! | UTF-8 binaries                 | str                    | binary                      |
//! | other binaries                 | bin                    | binary                      |
//! | lists, tuples                  | array                  | list                        |
//! | maps                           | map                    | map                         |
//! | `%Snakepit.Tensor{}`           | ext type 84            | `%Snakepit.Tensor{}`        |
//! | other ext type T               | —                      | `{:msgpack_ext, T, binary}` |
//!
//! Pids, references, ports, funs, improper lists, bitstrings and integers
//! beyond 64 bits are refused with an [`EncodeError`] naming where they were,
//! and so are tensor structs that are not consistent (see [`tensor`]),
//! and so are two keys of one map that Python would take for one (`:x` and
//! `"x"`, `1` and `1.0`, `true` and `1`, `[1]` and `{1.0}`): Python would
//! keep only the last.
//!
//! Decoding runs only in a process env, on a (normal or dirty) scheduler of
//! the process that asked: never on the pool's own threads. OTP 25 crashes
//! when a thread that is not a scheduler builds a large map
//! (erlang/otp#8208, fixed only in 27.3 and later patch releases), and
//! charging the work to the caller is fairer anyway.

use crate::atoms;
use rustler::types::tuple::make_tuple;
use rustler::{Binary, Encoder, Env, Term, TermType};
use snakepit_wire::msgpack::{write_str, DecodeError, Reader, Token};
use snakepit_wire::outgoing::{OutFrame, Part, BLOB_EXT};
use std::fmt::Write as _;
use std::sync::Arc;

pub mod tensor;

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

/// Containers nested deeper than this are refused. It bounds the recursion
/// on scheduler stacks (small, fixed-size) as well as on our own threads.
pub const MAX_DEPTH: usize = 256;

/// Strings and binaries at least this long are returned as sub-binaries of
/// the frame instead of copies.
const SUB_BINARY_MIN: usize = 4096;

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

    fn unsupported(what: impl Into<String>) -> Self {
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

/// Encodes `term` into a plain buffer, no blobs (map keys).
fn encode_plain(term: Term, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut frame = OutFrame::from(std::mem::take(out));
    let result = encode(term, &mut frame, Limits::UNBOUNDED);
    *out = frame.bytes;
    result
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

/// A map key as Python compares it: text by its bytes (atoms and UTF-8
/// binaries alike), numbers by value (`1 == 1.0 == True`), and lists and
/// tuples (tuples in Python) item by item, the same way.
#[derive(Clone)]
enum PyKey {
    /// Where its encoding lies in the output.
    Encoded(usize, usize),
    Int(i128),
    Float(u64),
    /// A list or tuple, as [`canonical`] writes it.
    Items(Vec<u8>),
}

/// Writes a key the way Python compares it, so that two keys Python takes
/// for one write the same bytes: numbers by value, text by its bytes.
fn canonical(term: Term, out: &mut Vec<u8>) {
    match PyKey::scalar(term) {
        Some(PyKey::Int(i)) => {
            out.push(b'i');
            out.extend_from_slice(&i.to_be_bytes());
        }
        Some(PyKey::Float(bits)) => {
            out.push(b'f');
            out.extend_from_slice(&bits.to_be_bytes());
        }
        _ => match term.get_type() {
            TermType::List | TermType::Tuple => {
                let items: Vec<Term> = match term.get_type() {
                    TermType::Tuple => rustler::types::tuple::get_tuple(term).unwrap_or_default(),
                    _ => term.decode::<Vec<Term>>().unwrap_or_default(),
                };
                out.push(b'l');
                out.extend_from_slice(&(items.len() as u64).to_be_bytes());
                for item in items {
                    canonical(item, out);
                }
            }
            _ => {
                // Text and anything else: its own encoding, length-prefixed.
                let mut encoded = Vec::new();
                let _ = encode_plain(term, &mut encoded);
                out.push(b'e');
                out.extend_from_slice(&(encoded.len() as u64).to_be_bytes());
                out.extend_from_slice(&encoded);
            }
        },
    }
}

impl PyKey {
    /// A number (or `true`/`false`) as Python compares it.
    fn scalar(key: Term) -> Option<PyKey> {
        match key.get_type() {
            TermType::Integer => key
                .decode::<i64>()
                .map(i128::from)
                .or_else(|_| key.decode::<u64>().map(i128::from))
                .ok()
                .map(PyKey::Int),
            TermType::Float => {
                let f: f64 = key.decode().expect("float term");
                Some(if f.fract() == 0.0 && f.abs() < 1e38 {
                    PyKey::Int(f as i128)
                } else {
                    PyKey::Float(f.to_bits())
                })
            }
            TermType::Atom if key == atoms::true_().to_term(key.get_env()) => Some(PyKey::Int(1)),
            TermType::Atom if key == atoms::false_().to_term(key.get_env()) => Some(PyKey::Int(0)),
            _ => None,
        }
    }

    fn of(key: Term, start: usize, end: usize) -> PyKey {
        if let Some(k) = PyKey::scalar(key) {
            return k;
        }
        match key.get_type() {
            TermType::List | TermType::Tuple => {
                let mut items = Vec::new();
                canonical(key, &mut items);
                PyKey::Items(items)
            }
            _ => PyKey::Encoded(start, end),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            PyKey::Encoded(..) => 0,
            PyKey::Int(_) => 1,
            PyKey::Float(_) => 2,
            PyKey::Items(_) => 3,
        }
    }

    fn cmp(&self, other: &PyKey, out: &[u8]) -> std::cmp::Ordering {
        match (self, other) {
            (PyKey::Encoded(a, b), PyKey::Encoded(c, d)) => out[*a..*b].cmp(&out[*c..*d]),
            (PyKey::Int(a), PyKey::Int(b)) => a.cmp(b),
            (PyKey::Float(a), PyKey::Float(b)) => a.cmp(b),
            (PyKey::Items(a), PyKey::Items(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Refuses a map two of whose keys are one key in Python.
fn check_same_keys(keys: &mut [(PyKey, Term)], out: &[u8]) -> Result<(), EncodeError> {
    if keys.len() < 2 {
        return Ok(());
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0, out));
    for pair in keys.windows(2) {
        if pair[0].0.cmp(&pair[1].0, out).is_eq() {
            let (mut a, mut b) = (String::new(), String::new());
            key_text(&mut a, pair[0].1);
            key_text(&mut b, pair[1].1);
            return Err(EncodeError::unsupported(format!(
                "map keys {a} and {b}, which are one key in Python,"
            )));
        }
    }
    Ok(())
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

/// A VM binary kept alive outside any process, so a frame can be written
/// from its bytes after the NIF that encoded it has returned: a copy of the
/// term in an environment of its own (for a refc binary, a new reference,
/// not a copy of the bytes). Binaries are immutable once inspected
/// (`enif_inspect_binary` ends any in-place append optimisation).
struct KeptBinary {
    env: *mut rustler::sys::ErlNifEnv,
    data: *const u8,
    len: usize,
}

// SAFETY: the environment is only freed (once, in Drop) and the bytes only
// read; process-independent environments may be used from any thread.
unsafe impl Send for KeptBinary {}
// SAFETY: as for Send: shared access only reads the bytes.
unsafe impl Sync for KeptBinary {}

impl KeptBinary {
    fn new(term: Term) -> Option<KeptBinary> {
        // SAFETY: a fresh process-independent env; the copy lives in it, and
        // the inspected bytes stay valid as long as the env does.
        unsafe {
            let env = rustler::sys::enif_alloc_env();
            let copy = rustler::sys::enif_make_copy(env, term.as_c_arg());
            let mut bin = std::mem::MaybeUninit::<rustler::sys::ErlNifBinary>::uninit();
            if rustler::sys::enif_inspect_binary(env, copy, bin.as_mut_ptr()) == 0 {
                rustler::sys::enif_free_env(env);
                return None;
            }
            let bin = bin.assume_init();
            Some(KeptBinary {
                env,
                data: bin.data,
                len: bin.size,
            })
        }
    }
}

impl Part for KeptBinary {
    fn bytes(&self) -> &[u8] {
        // SAFETY: see `new`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl Drop for KeptBinary {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed only here.
        unsafe { rustler::sys::enif_free_env(self.env) };
    }
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

fn key_path(s: &mut String, key: Term) {
    s.push('[');
    key_text(s, key);
    s.push(']');
}

/// A map key as error messages quote it (long ones cut).
fn key_text(s: &mut String, key: Term) {
    const MAX: usize = 64;
    if let Ok(k) = key.decode::<&str>() {
        match k.char_indices().nth(MAX) {
            Some((cut, _)) => {
                let _ = write!(s, "{:?}...", &k[..cut]);
            }
            None => {
                let _ = write!(s, "{k:?}");
            }
        }
    } else if key.get_type() == TermType::Atom {
        let name = key.atom_to_string().unwrap_or_default();
        if matches!(name.as_str(), "true" | "false" | "nil") {
            s.push_str(&name);
        } else {
            let _ = write!(s, ":{name}");
        }
    } else if let Ok(i) = key.decode::<i64>() {
        let _ = write!(s, "{i}");
    } else if let Ok(f) = key.decode::<f64>() {
        let _ = write!(s, "{f:?}");
    } else {
        s.push_str("<key>");
    }
}

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
