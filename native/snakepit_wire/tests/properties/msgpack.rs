//! The MessagePack reader: round trips with `rmp`, arbitrary input, `skip`
//! against a recursive walk, and deep nesting.

use crate::support::{config, decode, encoded, msgpack_like, own, value, Tok, Value, MAX_DEPTH};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rmp::encode as enc;
use snakepit_wire::msgpack::{DecodeError, Reader, Token};

/// One item written with a chosen `rmp` function, so that every marker
/// (not only the smallest form of each value) is covered.
#[derive(Debug, Clone)]
enum Item {
    Nil,
    Bool(bool),
    Pfix(u8),
    Nfix(i8),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    Sint(i64),
    Uint(u64),
    F32(f32),
    F64(f64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Ext(i8, Vec<u8>),
    /// A container header alone: the reader does not look inside.
    Array(u32),
    Map(u32),
}

impl Item {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Item::Nil => enc::write_nil(out).unwrap(),
            Item::Bool(b) => enc::write_bool(out, *b).unwrap(),
            Item::Pfix(v) => enc::write_pfix(out, *v).unwrap(),
            Item::Nfix(v) => enc::write_nfix(out, *v).unwrap(),
            Item::U8(v) => enc::write_u8(out, *v).unwrap(),
            Item::U16(v) => enc::write_u16(out, *v).unwrap(),
            Item::U32(v) => enc::write_u32(out, *v).unwrap(),
            Item::U64(v) => enc::write_u64(out, *v).unwrap(),
            Item::I8(v) => enc::write_i8(out, *v).unwrap(),
            Item::I16(v) => enc::write_i16(out, *v).unwrap(),
            Item::I32(v) => enc::write_i32(out, *v).unwrap(),
            Item::I64(v) => enc::write_i64(out, *v).unwrap(),
            Item::Sint(v) => {
                enc::write_sint(out, *v).unwrap();
            }
            Item::Uint(v) => {
                enc::write_uint(out, *v).unwrap();
            }
            Item::F32(v) => enc::write_f32(out, *v).unwrap(),
            Item::F64(v) => enc::write_f64(out, *v).unwrap(),
            Item::Str(s) => {
                enc::write_str_len(out, s.len() as u32).unwrap();
                out.extend_from_slice(s);
            }
            Item::Bin(b) => enc::write_bin(out, b).unwrap(),
            Item::Ext(ty, d) => {
                enc::write_ext_meta(out, d.len() as u32, *ty).unwrap();
                out.extend_from_slice(d);
            }
            Item::Array(n) => {
                enc::write_array_len(out, *n).unwrap();
            }
            Item::Map(n) => {
                enc::write_map_len(out, *n).unwrap();
            }
        }
    }

    fn expected(&self) -> Tok {
        let int = |v: u64| i64::try_from(v).map_or(Tok::UInt(v), Tok::Int);
        match self {
            Item::Nil => Tok::Nil,
            Item::Bool(b) => Tok::Bool(*b),
            Item::Pfix(v) | Item::U8(v) => Tok::Int(*v as i64),
            Item::U16(v) => Tok::Int(*v as i64),
            Item::U32(v) => Tok::Int(*v as i64),
            Item::U64(v) | Item::Uint(v) => int(*v),
            Item::Nfix(v) | Item::I8(v) => Tok::Int(*v as i64),
            Item::I16(v) => Tok::Int(*v as i64),
            Item::I32(v) => Tok::Int(*v as i64),
            Item::I64(v) | Item::Sint(v) => Tok::Int(*v),
            Item::F32(v) => Tok::Float((*v as f64).to_bits()),
            Item::F64(v) => Tok::Float(v.to_bits()),
            Item::Str(s) => Tok::Str(s.clone()),
            Item::Bin(b) => Tok::Bin(b.clone()),
            Item::Ext(ty, d) => Tok::Ext(*ty, d.clone()),
            Item::Array(n) => Tok::Array(*n as usize),
            Item::Map(n) => Tok::Map(*n as usize),
        }
    }
}

/// Data of 0 to 40 bytes, sometimes long enough for a 16- or 32-bit length.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        30 => vec(any::<u8>(), 0..40),
        2 => (250usize..260, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        1 => (65_530usize..65_540, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..20, 65_530u32..65_540, any::<u32>()]
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        Just(Item::Nil),
        any::<bool>().prop_map(Item::Bool),
        (0u8..128).prop_map(Item::Pfix),
        (-32i8..0).prop_map(Item::Nfix),
        any::<u8>().prop_map(Item::U8),
        any::<u16>().prop_map(Item::U16),
        any::<u32>().prop_map(Item::U32),
        any::<u64>().prop_map(Item::U64),
        any::<i8>().prop_map(Item::I8),
        any::<i16>().prop_map(Item::I16),
        any::<i32>().prop_map(Item::I32),
        any::<i64>().prop_map(Item::I64),
        any::<i64>().prop_map(Item::Sint),
        any::<u64>().prop_map(Item::Uint),
        any::<f32>().prop_map(Item::F32),
        any::<f64>().prop_map(Item::F64),
        any::<u64>().prop_map(|bits| Item::F64(f64::from_bits(bits))),
        data().prop_map(Item::Str),
        data().prop_map(Item::Bin),
        (any::<i8>(), data()).prop_map(|(ty, d)| Item::Ext(ty, d)),
        count().prop_map(Item::Array),
        count().prop_map(Item::Map),
    ]
}

/// Walks `buf` token by token until it ends or an error; checks on the way
/// that each token moves forward and its ranges lie inside `buf`.
fn walk(buf: &[u8], start: usize) -> Result<Vec<Tok>, TestCaseError> {
    let mut r = Reader::at(buf, start);
    let mut out = vec![];
    while !r.is_done() {
        let before = r.position();
        match r.next_token() {
            Ok(t) => {
                prop_assert!(r.position() > before && r.position() <= buf.len());
                if let Token::Str(ref g) | Token::Bin(ref g) | Token::Ext(_, ref g) = t {
                    prop_assert!(g.start >= before && g.end == r.position());
                }
                out.push(own(&r, t));
            }
            Err(e) => {
                let at = match e {
                    DecodeError::Truncated { at }
                    | DecodeError::BadMarker { at, .. }
                    | DecodeError::TooDeep { at, .. } => at,
                };
                prop_assert!(at >= before && at <= buf.len(), "{e} from {before}");
                prop_assert!(!matches!(e, DecodeError::TooDeep { .. }), "{e}");
                if let DecodeError::BadMarker { byte, .. } = e {
                    prop_assert_eq!((at, byte), (before, 0xc1));
                }
                break;
            }
        }
    }
    Ok(out)
}

/// Skips one item the obvious way, recursing into containers; the
/// reference for [`Reader::skip`], which does it with a counter. Past
/// `depth_left` levels it gives up with `TooDeep` (flipped bits can turn a
/// long string into 65 536 nested arrays, too deep for the test's stack).
fn skip_recursively(r: &mut Reader, depth_left: usize) -> Result<(), DecodeError> {
    let Some(below) = depth_left.checked_sub(1) else {
        return Err(DecodeError::TooDeep {
            at: r.position(),
            max: 0,
        });
    };
    match r.next_token()? {
        Token::Array(n) => (0..n).try_for_each(|_| skip_recursively(r, below)),
        Token::Map(n) => (0..2 * n).try_for_each(|_| skip_recursively(r, below)),
        _ => Ok(()),
    }
}

/// `depth` containers, each holding the next (an array of 1, an array16 of
/// 1 or a map of 1 whose value is the next), around a nil.
fn nested(depth: usize, shape: u64) -> Vec<u8> {
    let mut out = vec![];
    for level in 0..depth {
        match (shape >> (level % 64)) & 1 | ((level % 7 == 3) as u64) << 1 {
            0 => out.push(0x91),
            1 => {
                out.extend_from_slice(&[0x81, 0xa1, b'k']);
            }
            _ => out.extend_from_slice(&[0xdc, 0x00, 0x01]),
        }
    }
    out.push(0xc0);
    out
}

proptest! {
    #![proptest_config(config(512, 1))]

    /// Items written with any `rmp` function read back as the same tokens,
    /// each ending where the next begins.
    #[test]
    fn rmp_items_read_back_as_their_tokens(items in vec(item(), 0..24)) {
        let mut buf = vec![];
        let mut ends = vec![];
        for i in &items {
            i.write(&mut buf);
            ends.push(buf.len());
        }
        let mut r = Reader::new(&buf);
        for (i, end) in items.iter().zip(ends) {
            let t = r.next_token().map_err(|e| TestCaseError::fail(format!("{i:?}: {e}")))?;
            prop_assert_eq!(own(&r, t), i.expected());
            prop_assert_eq!(r.position(), end);
        }
        prop_assert!(r.is_done());
    }

    /// Values encoded with `rmp` decode to the same value and the same
    /// tokens, and `skip` passes over exactly their bytes.
    #[test]
    fn rmp_values_round_trip(values in vec(value(), 1..4)) {
        let mut buf = vec![];
        let mut ends = vec![];
        let mut tokens = vec![];
        for v in &values {
            crate::support::encode(v, &mut buf);
            ends.push(buf.len());
            v.tokens(&mut tokens);
        }
        prop_assert_eq!(walk(&buf, 0)?, tokens);
        let mut r = Reader::new(&buf);
        for (v, &end) in values.iter().zip(&ends) {
            prop_assert_eq!(&decode(&mut r, 0, MAX_DEPTH).unwrap(), &v.decoded());
            prop_assert_eq!(r.position(), end);
        }
        let mut r = Reader::new(&buf);
        for &end in &ends {
            r.skip().unwrap();
            prop_assert_eq!(r.position(), end);
        }
        prop_assert!(r.is_done());
    }

    /// Every proper prefix of a value is truncated, for `skip` and for a
    /// decode alike: neither reads past the end nor calls it a value.
    #[test]
    fn prefixes_of_a_value_are_truncated(v in value(), cut in any::<Index>()) {
        let buf = encoded(&v);
        let cut = cut.index(buf.len());
        let part = &buf[..cut];
        let skipped = Reader::new(part).skip();
        prop_assert!(matches!(skipped, Err(DecodeError::Truncated { .. })), "{skipped:?}");
        let decoded = decode(&mut Reader::new(part), 0, MAX_DEPTH);
        prop_assert!(matches!(decoded, Err(DecodeError::Truncated { .. })), "{decoded:?}");
    }

    /// Arbitrary bytes, from any offset: every token decodes or errors,
    /// without panicking, and inside the input.
    #[test]
    fn arbitrary_bytes_decode_or_error(buf in msgpack_like(), start in any::<Index>()) {
        walk(&buf, 0)?;
        walk(&buf, start.index(buf.len() + 1))?;
    }

    /// `skip` agrees with a token-by-token recursive walk on arbitrary
    /// bytes: same result, same error, same end.
    #[test]
    fn skip_agrees_with_a_recursive_walk(buf in msgpack_like(), start in any::<Index>()) {
        let start = start.index(buf.len() + 1);
        let mut a = Reader::at(&buf, start);
        let mut b = Reader::at(&buf, start);
        let skipped = a.skip();
        let walked = skip_recursively(&mut b, 2048);
        if !matches!(walked, Err(DecodeError::TooDeep { .. })) {
            prop_assert_eq!(&skipped, &walked);
            if skipped.is_ok() {
                prop_assert_eq!(a.position(), b.position());
            }
        }
        // And with a depth-bounded decode, as the NIF does it, where the
        // input is not nested too deep for it.
        let mut c = Reader::at(&buf, start);
        match decode(&mut c, 0, MAX_DEPTH) {
            Err(DecodeError::TooDeep { .. }) => {}
            decoded => {
                prop_assert_eq!(decoded.map(drop), skipped.clone());
                if skipped.is_ok() {
                    prop_assert_eq!(c.position(), a.position());
                }
            }
        }
    }

    /// Nesting of any depth is skipped without recursion (a recursive skip
    /// of 200 000 levels would overflow the test thread's stack), and a
    /// depth-bounded decode stops at the limit with `TooDeep`, having
    /// recursed no further than the limit.
    #[test]
    fn deep_nesting_is_skipped_and_bounded(
        depth in prop_oneof![
            10 => 0usize..MAX_DEPTH + 4,
            9 => MAX_DEPTH..4096,
            1 => Just(200_000usize),
        ],
        shape in any::<u64>(),
    ) {
        let buf = nested(depth, shape);
        let mut r = Reader::new(&buf);
        prop_assert_eq!(r.skip(), Ok(()));
        prop_assert!(r.is_done());
        let mut r = Reader::new(&buf);
        match decode(&mut r, 0, MAX_DEPTH) {
            Ok(v) => {
                prop_assert!(depth <= MAX_DEPTH);
                prop_assert_eq!(v.depth(), depth);
                prop_assert!(r.is_done());
            }
            Err(DecodeError::TooDeep { at, max }) => {
                prop_assert!(depth > MAX_DEPTH);
                prop_assert_eq!(max, MAX_DEPTH);
                // `at` is where the first item one level too deep begins:
                // the first child of the container at depth MAX_DEPTH.
                let mut walk = Reader::new(&buf);
                for level in 0..=MAX_DEPTH {
                    let t = walk.next_token().unwrap();
                    if matches!(t, Token::Map(_)) && level < MAX_DEPTH {
                        walk.next_token().unwrap(); // its key, a level deeper
                    }
                }
                prop_assert_eq!(at, walk.position());
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

/// A million levels: `skip` is iterative, so the depth costs no stack.
#[test]
fn a_million_levels_skip_without_recursion() {
    let buf = nested(1_000_000, 0x5555_5555_5555_5555);
    let mut r = Reader::new(&buf);
    assert_eq!(r.skip(), Ok(()));
    assert!(r.is_done());
    let mut r = Reader::new(&buf[..buf.len() - 1]);
    assert_eq!(r.skip(), Err(DecodeError::Truncated { at: buf.len() - 1 }));
}

/// The shapes `nested` makes are the ones it says.
#[test]
fn nested_makes_what_it_says() {
    let v = decode(&mut Reader::new(&nested(3, 0b010)), 0, MAX_DEPTH).unwrap();
    let key = Value::Str(b"k".to_vec());
    assert_eq!(
        v,
        Value::Array(vec![Value::Map(vec![(
            key,
            Value::Array(vec![Value::Nil])
        )])])
    );
}
