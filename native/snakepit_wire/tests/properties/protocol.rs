//! The `[kind, id, body]` envelope: arbitrary frames, the frame builders
//! read back through the frame reader, and the `ready` and `error` bodies.

use crate::support::{
    chunks, config, decode, encode, encoded, leaf, msgpack_like, value, Chunked, Value,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use snakepit_wire::frame::{self, FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
use snakepit_wire::msgpack::{Reader, Token};
use snakepit_wire::protocol::{
    ack_frame, begin_call, begin_frame, body_is_map, check_ready, control_frame, elixir_call,
    error_kind, parse_envelope, session_end_frame, ErrorKind, HandshakeError, Kind,
    PROTOCOL_VERSION,
};

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

fn s(text: &str) -> Value {
    Value::Str(text.as_bytes().to_vec())
}

/// A frame made by one of the builders, and what it should parse back to.
#[derive(Debug, Clone)]
enum Built {
    Call {
        id: u64,
        tool: Vec<u8>,
        session: Option<Vec<u8>>,
        stream: Option<u32>,
        capacity: usize,
        args: Value,
    },
    Ack {
        id: u64,
        n: u32,
    },
    SessionEnd {
        session: Vec<u8>,
    },
    Control {
        kind: Kind,
        id: u64,
    },
    Any {
        kind: Kind,
        id: u64,
        body: Value,
    },
}

impl Built {
    fn frame(&self) -> Vec<u8> {
        match self {
            Built::Call {
                id,
                tool,
                session,
                stream,
                capacity,
                args,
            } => {
                let mut f = begin_call(
                    *id,
                    tool,
                    session.as_deref(),
                    *stream,
                    session.as_deref(),
                    *capacity,
                );
                encode(args, &mut f);
                frame::finish(&mut f, DEFAULT_MAX_FRAME).unwrap();
                f
            }
            Built::Ack { id, n } => ack_frame(*id, *n),
            Built::SessionEnd { session } => session_end_frame(session),
            Built::Control { kind, id } => control_frame(*kind, *id),
            Built::Any { kind, id, body } => {
                let mut f = begin_frame(*kind, *id, 0);
                encode(body, &mut f);
                frame::finish(&mut f, DEFAULT_MAX_FRAME).unwrap();
                f
            }
        }
    }

    /// The kind, id and body (as decoded) the frame carries.
    fn expected(&self) -> (Kind, u64, Value) {
        match self {
            Built::Call {
                id,
                tool,
                session,
                stream,
                args,
                ..
            } => {
                let body = Value::Map(vec![
                    (s("tool"), Value::Str(tool.clone())),
                    (
                        s("session_id"),
                        session.clone().map_or(Value::Nil, Value::Str),
                    ),
                    (
                        s("stream"),
                        stream.map_or(Value::Nil, |w| Value::Int(w.into())),
                    ),
                    (
                        s("correlation_id"),
                        session.clone().map_or(Value::Nil, Value::Str),
                    ),
                    (s("args"), args.decoded()),
                ]);
                (Kind::Call, *id, body)
            }
            Built::Ack { id, n } => (Kind::Ack, *id, Value::Int((*n).into())),
            Built::SessionEnd { session } => (
                Kind::SessionEnd,
                0,
                Value::Map(vec![(s("session_id"), Value::Str(session.clone()))]),
            ),
            Built::Control { kind, id } => (*kind, *id, Value::Nil),
            Built::Any { kind, id, body } => (*kind, *id, body.decoded()),
        }
    }
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..1000, any::<u64>(), Just(u64::MAX)]
}

fn text() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..40)
}

fn built() -> impl Strategy<Value = Built> {
    prop_oneof![
        (
            id(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(any::<u32>()),
            0usize..64,
            value(),
        )
            .prop_map(|(id, tool, session, stream, capacity, args)| Built::Call {
                id,
                tool,
                session,
                stream,
                capacity,
                args,
            }),
        (id(), any::<u32>()).prop_map(|(id, n)| Built::Ack { id, n }),
        text().prop_map(|session| Built::SessionEnd { session }),
        (kind(), id()).prop_map(|(kind, id)| Built::Control { kind, id }),
        (kind(), id(), value()).prop_map(|(kind, id, body)| Built::Any { kind, id, body }),
    ]
}

/// Frames (without their length prefix) that are, or nearly are, envelopes.
fn envelope_like() -> impl Strategy<Value = Vec<u8>> {
    let flipped = (built(), any::<Index>(), any::<u8>()).prop_map(|(b, at, x)| {
        let mut f = b.frame()[HEADER_LEN..].to_vec();
        let i = at.index(f.len());
        f[i] ^= x | 1;
        f
    });
    let cut = (built(), any::<Index>()).prop_map(|(b, at)| {
        let f = &b.frame()[HEADER_LEN..];
        f[..at.index(f.len())].to_vec()
    });
    let spliced = (
        prop_oneof![Just(0x93u8), any::<u8>()],
        prop_oneof![
            kind().prop_map(|k| encoded(&s(k.as_str()))),
            text().prop_map(|t| encoded(&Value::Str(t)))
        ],
        prop_oneof![id().prop_map(|i| encoded(&Value::UInt(i))), msgpack_like()],
        msgpack_like(),
        vec(any::<u8>(), 0..3),
    )
        .prop_map(|(head, kind, id, body, tail)| {
            let mut f = vec![head];
            f.extend(kind);
            f.extend(id);
            f.extend(body);
            f.extend(tail);
            f
        });
    prop_oneof![
        msgpack_like(),
        flipped,
        cut,
        spliced,
        built().prop_map(|b| b.frame()[HEADER_LEN..].to_vec()),
    ]
}

/// The value of the first string key `key` in a map body, as the bridge
/// means it: the pairs of the map, not whatever tokens follow its header.
fn lookup<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    let Value::Map(pairs) = body else { return None };
    pairs.iter().find(|(k, _)| *k == s(key)).map(|(_, v)| v)
}

/// Maps of keys (among them `protocol` and `kind`, and keys that are not
/// strings: integers, arrays, maps) to values that may be the ones looked for.
fn keyed_body() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just(s("protocol")),
        Just(s("kind")),
        Just(s("pid")),
        leaf(),
        value(),
    ];
    let val = prop_oneof![
        Just(Value::Int(PROTOCOL_VERSION as i64)),
        Just(Value::UInt(u64::MAX)),
        (0i64..4).prop_map(Value::Int),
        Just(s("2")),
        Just(s("protocol")),
        Just(s("kind")),
        Just(s("bad_request")),
        Just(s("unknown_tool")),
        Just(s("exception")),
        value(),
    ];
    prop_oneof![vec((key, val), 0..6).prop_map(Value::Map), value(),]
}

proptest! {
    #![proptest_config(config(512, 1))]

    /// Arbitrary frames parse or are refused, without panicking; a frame
    /// that parses has exactly one item after the envelope; the body
    /// helpers take any frame at any offset.
    #[test]
    fn arbitrary_frames_parse_or_are_refused(f in envelope_like(), at in any::<Index>()) {
        if let Ok(env) = parse_envelope(&f) {
            prop_assert!(Kind::ALL.contains(&env.kind));
            prop_assert!(env.body < f.len());
            let mut r = Reader::at(&f, env.body);
            prop_assert!(r.skip().is_ok() && r.is_done());
            let is_map = matches!(Reader::at(&f, env.body).next_token(), Ok(Token::Map(_)));
            prop_assert_eq!(body_is_map(&f, env.body), is_map);
            let _ = (check_ready(&f, env.body), error_kind(&f, env.body));
            let _ = elixir_call(&f, env.body);
        }
        for offset in [at.index(f.len() + 2), usize::MAX] {
            let _ = (
                body_is_map(&f, offset),
                check_ready(&f, offset),
                error_kind(&f, offset),
                elixir_call(&f, offset),
            );
        }
    }

    /// Frames made by `begin_call` (+ args + `finish`), `ack_frame`,
    /// `session_end_frame`, `control_frame` and `begin_frame`, back to back
    /// and split anywhere, read back through the frame reader and parse to
    /// their kind, id and body.
    #[test]
    fn built_frames_parse_back(frames in vec(built(), 1..6), chunks in chunks()) {
        let stream: Vec<u8> = frames.iter().flat_map(Built::frame).collect();
        let mut r = Chunked::new(&stream, &chunks, 0);
        for b in &frames {
            let f = frame::read_frame(&mut r, DEFAULT_MAX_FRAME, |n| Some(vec![0u8; n]))
                .map_err(|e| TestCaseError::fail(format!("{b:?}: {e}")))?;
            let env = parse_envelope(&f)
                .map_err(|e| TestCaseError::fail(format!("{b:?}: {e}")))?;
            let (kind, id, body) = b.expected();
            prop_assert_eq!((env.kind, env.id), (kind, id));
            let mut rd = Reader::at(&f, env.body);
            prop_assert_eq!(decode(&mut rd, 0, usize::MAX).unwrap(), body.clone());
            prop_assert!(rd.is_done());
            prop_assert_eq!(body_is_map(&f, env.body), matches!(body, Value::Map(_)));
        }
        prop_assert!(matches!(
            frame::read_frame(&mut r, DEFAULT_MAX_FRAME, |n| Some(vec![0u8; n])),
            Err(FrameError::Eof)
        ));
    }

    /// `check_ready` finds the body's `protocol` entry (the first one) and
    /// accepts exactly this protocol version; `error_kind` finds `kind`.
    /// Keys that are arrays or maps are keys, not a run of tokens to search.
    #[test]
    fn ready_and_error_bodies_are_read_by_their_keys(body in keyed_body(), id in id()) {
        let mut f = begin_frame(Kind::Ready, id, 0);
        encode(&body, &mut f);
        frame::finish(&mut f, DEFAULT_MAX_FRAME).unwrap();
        let f = &f[HEADER_LEN..];
        let env = parse_envelope(f).unwrap();

        let version = lookup(&body, "protocol").and_then(|v| match v {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::UInt(u) => Some(*u),
            _ => None,
        });
        let expected = match version {
            Some(PROTOCOL_VERSION) => Ok(()),
            other => Err(HandshakeError::Version(other)),
        };
        prop_assert_eq!(check_ready(f, env.body), expected);

        let refused = matches!(
            lookup(&body, "kind"),
            Some(Value::Str(k)) if [&b"unknown_tool"[..], b"bad_arguments", b"bad_request"].contains(&k.as_slice())
        );
        let expected = if refused { ErrorKind::Refused } else { ErrorKind::Failed };
        prop_assert_eq!(error_kind(f, env.body), expected);
    }
}
