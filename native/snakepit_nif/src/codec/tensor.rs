//! `%Snakepit.Tensor{}` on the wire: MessagePack extension type 84 ('T').
//!
//! Payload (all integers big-endian):
//!
//! ```text
//! version:u8 = 1, kind:u8, bits:u16, ndim:u8, 3 zero bytes,
//! ndim × dim:u64, then the elements: little-endian, C order
//! ```
//!
//! `kind` is `f` (float: 16, 32, 64 bits), `s` / `u` (signed / unsigned
//! integer: 8, 16, 32, 64), `c` (complex: 64, 128; real then imaginary part)
//! or `b` (bool: 8, one byte 0 or 1). The header is a multiple of 8 bytes
//! long so that the elements are 8-byte aligned relative to the payload
//! (numpy views over them are then aligned). The data is exactly
//! product(dims) × bits / 8 bytes; anything else is refused both ways.
//!
//! In Elixir: `%Snakepit.Tensor{dtype: {kind, bits}, shape: tuple, data:
//! binary}`, kinds `:f`, `:s`, `:u`, `:c` as Nx writes them and `:bool`.

use rustler::types::tuple::make_tuple;
use rustler::{Binary, Encoder, Env, Term, TermType};

/// The MessagePack extension type of a tensor.
pub const EXT_TYPE: i8 = 84;
const VERSION: u8 = 1;
/// The fixed part of the header, before the dims.
const FIXED: usize = 8;
/// At most this many dims (`ndim` is one byte).
const MAX_NDIM: usize = 255;

mod atoms {
    rustler::atoms! {
        struct_ = "__struct__",
        module = "Elixir.Snakepit.Tensor",
        dtype,
        shape,
        data,
        f,
        s,
        u,
        c,
        bool_ = "bool",
    }
}

/// Whether `(kind, bits)` is an element type the wire carries.
fn supported(kind: u8, bits: u16) -> bool {
    match kind {
        b'f' => matches!(bits, 16 | 32 | 64),
        b's' | b'u' => matches!(bits, 8 | 16 | 32 | 64),
        b'c' => matches!(bits, 64 | 128),
        b'b' => bits == 8,
        _ => false,
    }
}

/// `product(dims) × bits / 8`, or `None` if it overflows.
fn byte_size(dims: &[u64], bits: u16) -> Option<u64> {
    dims.iter()
        .try_fold(u64::from(bits / 8), |acc, &d| acc.checked_mul(d))
}

/// Whether `term` is a `%Snakepit.Tensor{}` (a map whose `__struct__` says so).
pub fn is_tensor(term: Term) -> bool {
    let env = term.get_env();
    term.map_get(atoms::struct_().to_term(env))
        .map(|m| m == atoms::module().to_term(env))
        .unwrap_or(false)
}

/// A tensor struct, checked and ready to write.
pub struct Checked<'a> {
    kind: u8,
    bits: u16,
    dims: Vec<u64>,
    data: Binary<'a>,
    data_term: Term<'a>,
}

impl<'a> Checked<'a> {
    /// The size of the ext payload.
    pub fn payload_len(&self) -> usize {
        FIXED + 8 * self.dims.len() + self.data.len()
    }

    /// The data, in C order.
    pub fn data(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The data as a term (to keep it alive while a frame is written from it).
    pub fn data_term(&self) -> Term<'a> {
        self.data_term
    }

    /// The payload's header: everything before the data.
    pub fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + 8 * self.dims.len());
        out.push(VERSION);
        out.push(self.kind);
        out.extend_from_slice(&self.bits.to_be_bytes());
        out.push(self.dims.len() as u8);
        out.extend_from_slice(&[0, 0, 0]);
        for d in &self.dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    /// Writes an ext 86 onto `out`: the reference to shared-memory segment
    /// `index`, which holds the data, then the header.
    pub fn write_in_segment(&self, out: &mut Vec<u8>, index: u32) {
        let len = crate::shm::REF_LEN + FIXED + 8 * self.dims.len();
        rmp::encode::write_ext_meta(out, len as u32, crate::shm::EXT_TENSOR).expect("Vec write");
        crate::shm::write_ref(out, index);
        out.extend_from_slice(&self.header());
    }

    /// Writes the ext up to its data: marker, type, and the header.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        rmp::encode::write_ext_meta(out, self.payload_len() as u32, EXT_TYPE).expect("Vec write");
        out.extend_from_slice(&self.header());
    }
}

/// Reads a `%Snakepit.Tensor{}` for sending; why not, as the refusal says it.
pub fn check(term: Term) -> Result<Checked, String> {
    let env = term.get_env();
    let field = |name: rustler::Atom| term.map_get(name.to_term(env)).ok();
    let dtype = field(atoms::dtype()).ok_or("a Snakepit.Tensor without a :dtype")?;
    let shape = field(atoms::shape()).ok_or("a Snakepit.Tensor without a :shape")?;
    let data = field(atoms::data()).ok_or("a Snakepit.Tensor without a :data")?;

    let (kind, bits) = dtype_of(dtype).ok_or_else(|| {
        "a Snakepit.Tensor whose :dtype is not one of {:f, 16 | 32 | 64}, \
         {:s | :u, 8 | 16 | 32 | 64}, {:c, 64 | 128}, {:bool, 8}"
            .to_string()
    })?;
    let not_shape = "a Snakepit.Tensor whose :shape is not a tuple of non-negative integers";
    if shape.get_type() != TermType::Tuple {
        return Err(not_shape.into());
    }
    let dims = rustler::types::tuple::get_tuple(shape)
        .map_err(|_| not_shape)?
        .into_iter()
        .map(|d| d.decode::<u64>().map_err(|_| not_shape))
        .collect::<Result<Vec<u64>, _>>()?;
    if dims.len() > MAX_NDIM {
        return Err(format!(
            "a Snakepit.Tensor of more than {MAX_NDIM} dimensions"
        ));
    }
    if data.get_type() != TermType::Binary {
        return Err("a Snakepit.Tensor whose :data is not a binary".into());
    }
    let data_term = data;
    let data = Binary::from_term(data)
        .map_err(|_| "a Snakepit.Tensor whose :data is not whole bytes".to_string())?;
    let need = byte_size(&dims, bits);
    if need != Some(data.len() as u64) {
        let need = need.map_or("more than 2^64".to_string(), |n| n.to_string());
        return Err(format!(
            "a Snakepit.Tensor whose :data is {} bytes where its dtype and shape need {need}",
            data.len()
        ));
    }
    let tensor = Checked {
        kind,
        bits,
        dims,
        data,
        data_term,
    };
    if tensor.payload_len() > u32::MAX as usize {
        return Err("a Snakepit.Tensor larger than 4 GiB".into());
    }
    Ok(tensor)
}

fn dtype_of(dtype: Term) -> Option<(u8, u16)> {
    if dtype.get_type() != TermType::Tuple {
        return None;
    }
    let items = rustler::types::tuple::get_tuple(dtype).ok()?;
    let [kind, bits] = items.as_slice() else {
        return None;
    };
    let bits: u16 = bits.decode().ok()?;
    let env = dtype.get_env();
    let kind = [
        (atoms::f(), b'f'),
        (atoms::s(), b's'),
        (atoms::u(), b'u'),
        (atoms::c(), b'c'),
        (atoms::bool_(), b'b'),
    ]
    .into_iter()
    .find(|(atom, _)| *kind == atom.to_term(env))?
    .1;
    supported(kind, bits).then_some((kind, bits))
}

/// A tensor ext's header, read from its payload.
pub struct Header {
    kind: u8,
    bits: u16,
    dims: Vec<u64>,
    /// Where the elements start in the payload.
    pub data_at: usize,
}

/// Reads and checks a tensor ext's payload; why it is malformed otherwise.
pub fn parse(payload: &[u8]) -> Result<Header, String> {
    let header = header_at(payload)?;
    let have = (payload.len() - header.data_at) as u64;
    check_data(&header, have)?;
    Ok(header)
}

/// Reads a tensor header (an ext 84 payload without its data) whose data,
/// `data_len` bytes, is elsewhere (a shared-memory segment, ext 86).
pub fn parse_header(header: &[u8], data_len: usize) -> Result<Header, String> {
    let parsed = header_at(header)?;
    if parsed.data_at != header.len() {
        return Err("a shared-memory tensor whose header has trailing bytes".into());
    }
    check_data(&parsed, data_len as u64)?;
    Ok(parsed)
}

fn check_data(header: &Header, have: u64) -> Result<(), String> {
    if byte_size(&header.dims, header.bits) != Some(have) {
        return Err(format!(
            "a tensor extension whose data ({have} bytes) does not match its shape {:?}",
            header.dims
        ));
    }
    Ok(())
}

fn header_at(payload: &[u8]) -> Result<Header, String> {
    let fixed = payload
        .get(..FIXED)
        .ok_or("a tensor extension shorter than its header")?;
    if fixed[0] != VERSION {
        return Err(format!("a tensor extension of version {}", fixed[0]));
    }
    let kind = fixed[1];
    let bits = u16::from_be_bytes([fixed[2], fixed[3]]);
    if !supported(kind, bits) {
        return Err(format!(
            "a tensor extension of unknown element type {:?} with {bits} bits",
            char::from(kind)
        ));
    }
    let ndim = fixed[4] as usize;
    let data_at = FIXED + 8 * ndim;
    let dims = payload
        .get(FIXED..data_at)
        .ok_or("a tensor extension shorter than its header")?
        .chunks_exact(8)
        .map(|d| u64::from_be_bytes(d.try_into().expect("8 bytes")))
        .collect::<Vec<_>>();
    Ok(Header {
        kind,
        bits,
        dims,
        data_at,
    })
}

/// The `%Snakepit.Tensor{}` for a parsed header and its data.
pub fn make_term<'a>(env: Env<'a>, header: &Header, data: Term<'a>) -> Term<'a> {
    let kind = match header.kind {
        b'f' => atoms::f(),
        b's' => atoms::s(),
        b'u' => atoms::u(),
        b'c' => atoms::c(),
        _ => atoms::bool_(),
    };
    let dtype = make_tuple(env, &[kind.encode(env), header.bits.encode(env)]);
    let dims: Vec<Term> = header.dims.iter().map(|d| d.encode(env)).collect();
    let shape = make_tuple(env, &dims);
    let keys = [
        atoms::struct_().encode(env),
        atoms::dtype().encode(env),
        atoms::shape().encode(env),
        atoms::data().encode(env),
    ];
    let values = [atoms::module().encode(env), dtype, shape, data];
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}
