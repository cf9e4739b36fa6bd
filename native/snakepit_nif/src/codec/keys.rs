//! Map keys as Python compares them, so that a map two of whose keys are
//! one key in Python is refused (Python would keep only the last); and map
//! keys as an error's path quotes them.

use super::encode::{encode, EncodeError, Limits};
use crate::atoms;
use rustler::{Term, TermType};
use snakepit_wire::outgoing::OutFrame;
use std::fmt::Write as _;

/// A map key as Python compares it: text by its bytes (atoms and UTF-8
/// binaries alike), numbers by value (`1 == 1.0 == True`), and lists and
/// tuples (tuples in Python) item by item, the same way.
#[derive(Clone)]
pub enum PyKey {
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

    pub fn of(key: Term, start: usize, end: usize) -> PyKey {
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
pub fn check_same_keys(keys: &mut [(PyKey, Term)], out: &[u8]) -> Result<(), EncodeError> {
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

/// Encodes `term` into a plain buffer, no blobs (map keys).
fn encode_plain(term: Term, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut frame = OutFrame::from(std::mem::take(out));
    let result = encode(term, &mut frame, Limits::UNBOUNDED);
    *out = frame.bytes;
    result
}

pub fn key_path(s: &mut String, key: Term) {
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
