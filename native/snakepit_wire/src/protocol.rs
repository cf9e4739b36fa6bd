//! The envelope every frame shares: a MessagePack array `[kind, id, body]`.
//!
//! `kind` is a short string naming the frame, `id` the request it belongs to
//! (0 for frames that belong to no request), `body` depends on the kind.
//! `docs/protocol.md` is the reference for each kind's body.

use crate::frame;
use crate::msgpack::{write_str, DecodeError, Reader, Token};
use std::fmt;

/// Version of the protocol spoken by this crate; a worker announces its own
/// in its `ready` frame and the host refuses a mismatch.
pub const PROTOCOL_VERSION: u64 = 3;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// worker → host, once at start: protocol version, pid, tools.
    Ready,
    /// host → worker: run a tool.
    Call,
    /// worker → host: a call's return value.
    Result,
    /// worker → host: a call failed (or, with id 0, the worker could not start).
    Error,
    /// host → worker: the caller gave up on a call.
    Cancel,
    /// worker → host: one item of a streaming call.
    Chunk,
    /// worker → host: a streaming call has ended.
    Done,
    /// worker → host: a structured log record.
    Log,
    /// both ways: liveness probe and its echo.
    Heartbeat,
    /// host → worker: credits for a streaming call.
    Ack,
    /// host → worker: forget a session's state.
    SessionEnd,
    /// both ways: the next frame of this request carries shared-memory
    /// segments, whose fds were sent on the segment socket just before.
    Shm,
    /// host → worker: give this call back if you have not started it.
    Reclaim,
    /// worker → host: this call was given back; it will never run here.
    Reclaimed,
    /// worker → host: run a function the Elixir side registered (a tool's
    /// `ctx.call_elixir`); the id is the worker's own, not a request's.
    ElixirCall,
    /// host → worker (control pipe): the outcome of an `elixir_call`.
    ElixirReply,
    /// worker → host: the worker stopped waiting for an `elixir_call`.
    ElixirCancel,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Ready,
        Kind::Call,
        Kind::Result,
        Kind::Error,
        Kind::Cancel,
        Kind::Chunk,
        Kind::Done,
        Kind::Log,
        Kind::Heartbeat,
        Kind::Ack,
        Kind::SessionEnd,
        Kind::Shm,
        Kind::Reclaim,
        Kind::Reclaimed,
        Kind::ElixirCall,
        Kind::ElixirReply,
        Kind::ElixirCancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ready => "ready",
            Kind::Call => "call",
            Kind::Result => "result",
            Kind::Error => "error",
            Kind::Cancel => "cancel",
            Kind::Chunk => "chunk",
            Kind::Done => "done",
            Kind::Log => "log",
            Kind::Heartbeat => "heartbeat",
            Kind::Ack => "ack",
            Kind::SessionEnd => "session_end",
            Kind::Shm => "shm",
            Kind::Reclaim => "reclaim",
            Kind::Reclaimed => "reclaimed",
            Kind::ElixirCall => "elixir_call",
            Kind::ElixirReply => "elixir_reply",
            Kind::ElixirCancel => "elixir_cancel",
        }
    }

    pub fn parse(name: &[u8]) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes() == name)
    }
}

/// A frame that does not follow the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum ProtocolError {
    Malformed(DecodeError),
    NotAnEnvelope,
    /// The kind's name, lossily decoded, cut to [`KIND_SHOWN`] bytes (then
    /// ending in `…`).
    UnknownKind(String),
    TrailingBytes,
}

/// The most bytes of an unknown kind kept for the error: real kinds are a
/// few bytes long, and a broken worker's "kind" can be as long as a frame,
/// which copied (and escaped for the message) would take several times
/// the frame limit.
pub const KIND_SHOWN: usize = 64;

fn unknown_kind(name: &[u8]) -> ProtocolError {
    let shown = &name[..name.len().min(KIND_SHOWN)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if shown.len() < name.len() {
        text.push('…');
    }
    ProtocolError::UnknownKind(text)
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Malformed(e) => write!(f, "malformed frame: {e}"),
            ProtocolError::NotAnEnvelope => {
                write!(f, "frame is not a [kind, id, body] array")
            }
            ProtocolError::UnknownKind(k) => write!(f, "unknown frame kind {k:?}"),
            ProtocolError::TrailingBytes => write!(f, "bytes left over after the frame body"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        ProtocolError::Malformed(e)
    }
}

/// A parsed envelope; the body is left in place, starting at `body`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Envelope {
    pub kind: Kind,
    pub id: u64,
    /// Offset of the body within the frame.
    pub body: usize,
}

/// Reads the envelope of a frame and checks that exactly one body follows.
pub fn parse_envelope(frame: &[u8]) -> Result<Envelope, ProtocolError> {
    let mut r = Reader::new(frame);
    if r.next_token()? != Token::Array(3) {
        return Err(ProtocolError::NotAnEnvelope);
    }
    let kind = match r.next_token()? {
        Token::Str(range) => {
            let name = r.slice(range);
            Kind::parse(name).ok_or_else(|| unknown_kind(name))?
        }
        _ => return Err(ProtocolError::NotAnEnvelope),
    };
    let id = match r.next_token()? {
        Token::Int(i) if i >= 0 => i as u64,
        Token::UInt(u) => u,
        _ => return Err(ProtocolError::NotAnEnvelope),
    };
    let body = r.position();
    r.skip()?;
    if !r.is_done() {
        return Err(ProtocolError::TrailingBytes);
    }
    Ok(Envelope { kind, id, body })
}

/// Starts a frame with its length prefix and envelope; the caller writes the
/// body and then calls [`frame::finish`].
pub fn begin_frame(kind: Kind, id: u64, capacity: usize) -> Vec<u8> {
    let mut buf = frame::begin(capacity + 16);
    rmp::encode::write_array_len(&mut buf, 3).expect("Vec write");
    write_str(&mut buf, kind.as_str().as_bytes());
    rmp::encode::write_uint(&mut buf, id).expect("Vec write");
    buf
}

/// Starts a `call` frame up to its `args` value: the body is the map
/// `{"tool": tool, "session_id": session_id | nil, "stream": window | nil,
/// "correlation_id": id | nil, "args": ...}` and the caller writes the args, then [`frame::finish`]es.
pub fn begin_call(
    id: u64,
    tool: &[u8],
    session_id: Option<&[u8]>,
    stream: Option<u32>,
    correlation_id: Option<&[u8]>,
    capacity: usize,
) -> Vec<u8> {
    let extra = session_id.map_or(0, <[u8]>::len) + correlation_id.map_or(0, <[u8]>::len);
    let mut buf = begin_frame(Kind::Call, id, capacity + tool.len() + extra + 64);
    rmp::encode::write_map_len(&mut buf, 5).expect("Vec write");
    write_str(&mut buf, b"tool");
    write_str(&mut buf, tool);
    write_str(&mut buf, b"session_id");
    match session_id {
        Some(s) => write_str(&mut buf, s),
        None => rmp::encode::write_nil(&mut buf).expect("Vec write"),
    }
    write_str(&mut buf, b"stream");
    match stream {
        Some(window) => {
            rmp::encode::write_uint(&mut buf, window.into()).expect("Vec write");
        }
        None => rmp::encode::write_nil(&mut buf).expect("Vec write"),
    }
    write_str(&mut buf, b"correlation_id");
    match correlation_id {
        Some(c) => write_str(&mut buf, c),
        None => rmp::encode::write_nil(&mut buf).expect("Vec write"),
    }
    write_str(&mut buf, b"args");
    buf
}

/// A complete `ack` frame: `n` more chunks of stream `id` were consumed.
pub fn ack_frame(id: u64, n: u32) -> Vec<u8> {
    let mut buf = begin_frame(Kind::Ack, id, 8);
    rmp::encode::write_uint(&mut buf, n.into()).expect("Vec write");
    frame::finish(&mut buf, frame::DEFAULT_MAX_FRAME).expect("tiny frame");
    buf
}

/// A complete `session_end` frame for `session_id`.
pub fn session_end_frame(session_id: &[u8]) -> Vec<u8> {
    let mut buf = begin_frame(Kind::SessionEnd, 0, session_id.len() + 16);
    rmp::encode::write_map_len(&mut buf, 1).expect("Vec write");
    write_str(&mut buf, b"session_id");
    write_str(&mut buf, session_id);
    frame::finish(&mut buf, frame::DEFAULT_MAX_FRAME).expect("small frame");
    buf
}

/// Most segments one `shm` frame may announce (one `sendmsg` carries
/// them all; the kernel allows 253 fds per message).
pub const MAX_SEGMENTS: usize = 64;

/// A complete `shm` frame: the next frame of request `id` carries the
/// segments of these byte lengths, in order (their fds went first).
pub fn shm_frame(id: u64, lengths: &[u64]) -> Vec<u8> {
    let mut buf = begin_frame(Kind::Shm, id, 9 * lengths.len() + 8);
    rmp::encode::write_array_len(&mut buf, lengths.len() as u32).expect("Vec write");
    for &len in lengths {
        rmp::encode::write_uint(&mut buf, len).expect("Vec write");
    }
    frame::finish(&mut buf, frame::DEFAULT_MAX_FRAME).expect("small frame");
    buf
}

/// The segment lengths an `shm` frame's body announces: an array of 1 to
/// [`MAX_SEGMENTS`] unsigned integers.
pub fn shm_lengths(frame: &[u8], body: usize) -> Result<Vec<u64>, String> {
    let mut r = Reader::at(frame, body);
    let n = match r.next_token() {
        Ok(Token::Array(n)) if (1..=MAX_SEGMENTS).contains(&n) => n,
        _ => {
            return Err(format!(
                "sent an shm frame whose body is not an array of 1 to {MAX_SEGMENTS} lengths"
            ))
        }
    };
    (0..n)
        .map(|_| match r.next_token() {
            Ok(Token::UInt(u)) => Ok(u),
            Ok(Token::Int(i)) if i >= 0 => Ok(i as u64),
            _ => Err("sent an shm frame with a length that is not an unsigned integer".into()),
        })
        .collect()
}

/// `[reclaim, id, offset]`: give back call `id`, whose frame starts
/// `offset` bytes into the worker's stdin, if it has not read that far.
pub fn reclaim_frame(id: u64, offset: u64) -> Vec<u8> {
    let mut buf = begin_frame(Kind::Reclaim, id, 1);
    rmp::encode::write_uint(&mut buf, offset).expect("Vec write");
    frame::finish(&mut buf, frame::DEFAULT_MAX_FRAME).expect("tiny frame");
    buf
}

/// A complete frame with a nil body, e.g. `cancel` or `heartbeat`.
pub fn control_frame(kind: Kind, id: u64) -> Vec<u8> {
    let mut buf = begin_frame(kind, id, 1);
    rmp::encode::write_nil(&mut buf).expect("Vec write");
    frame::finish(&mut buf, frame::DEFAULT_MAX_FRAME).expect("tiny frame");
    buf
}

/// The longest function name an `elixir_call` may carry, in bytes.
pub const MAX_ELIXIR_NAME: usize = 255;

/// The most milliseconds an `elixir_call` may ask for: what the VM can wait
/// for in `receive ... after` (2^32 - 1).
pub const MAX_ELIXIR_TIMEOUT_MS: u64 = 0xFFFF_FFFF;

/// What the host needs of an `elixir_call` body before anything is decoded:
/// `{"name": str, "args": map | nil, "timeout_ms": int | nil,
/// "request_id": int | nil}` (other keys are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElixirCall {
    /// Where the function's name is in the frame (UTF-8 is checked).
    pub name: std::ops::Range<usize>,
    /// Where the args map starts in the frame; `None`: no args (nil or absent).
    pub args: Option<usize>,
    /// 1 to [`MAX_ELIXIR_TIMEOUT_MS`]; `None`: the pool's default.
    pub timeout_ms: Option<u64>,
    /// The call the worker was running when it called, as it says.
    pub request_id: Option<u64>,
}

/// Reads an `elixir_call` body (at `body` in `frame`), or says why it does
/// not follow the protocol. Only the envelope of the args is looked at:
/// they are decoded later, by the process that runs the function.
pub fn elixir_call(frame: &[u8], body: usize) -> Result<ElixirCall, String> {
    let malformed = |e: DecodeError| format!("sent a malformed elixir_call body: {e}");
    let mut r = Reader::at(frame, body);
    let Token::Map(n) = r.next_token().map_err(malformed)? else {
        return Err("sent an elixir_call whose body is not a map".into());
    };
    let mut call = ElixirCall {
        name: 0..0,
        args: None,
        timeout_ms: None,
        request_id: None,
    };
    let mut named = false;
    for _ in 0..n {
        let key_at = r.position();
        let key = match r.next_token().map_err(malformed)? {
            Token::Str(k) => Some(r.slice(k)),
            Token::Array(_) | Token::Map(_) => {
                // A container key: skip all of it (see `map_value`).
                r = Reader::at(frame, key_at);
                r.skip().map_err(malformed)?;
                None
            }
            _ => None,
        };
        let value_at = r.position();
        let value = match key {
            Some(b"name" | b"args" | b"timeout_ms" | b"request_id") => {
                Some(r.next_token().map_err(malformed)?)
            }
            _ => None,
        };
        match (key, value) {
            (Some(b"name"), Some(Token::Str(name))) => {
                let text = r.slice(name.clone());
                if text.is_empty()
                    || text.len() > MAX_ELIXIR_NAME
                    || std::str::from_utf8(text).is_err()
                {
                    return Err(format!(
                        "sent an elixir_call whose name is not UTF-8 text of 1 to {MAX_ELIXIR_NAME} bytes"
                    ));
                }
                call.name = name;
                named = true;
            }
            (Some(b"args"), Some(Token::Map(_))) => {
                call.args = Some(value_at);
                r = Reader::at(frame, value_at);
                r.skip().map_err(malformed)?;
            }
            (Some(b"args"), Some(Token::Nil)) => call.args = None,
            (Some(b"timeout_ms"), Some(Token::Nil)) => call.timeout_ms = None,
            (Some(b"timeout_ms"), Some(Token::Int(ms)))
                if (1..=MAX_ELIXIR_TIMEOUT_MS as i64).contains(&ms) =>
            {
                call.timeout_ms = Some(ms as u64)
            }
            (Some(b"request_id"), Some(Token::Nil)) => call.request_id = None,
            (Some(b"request_id"), Some(Token::Int(id))) if id >= 0 => {
                call.request_id = Some(id as u64)
            }
            (Some(b"request_id"), Some(Token::UInt(id))) => call.request_id = Some(id),
            (Some(key), Some(_)) => {
                let key = String::from_utf8_lossy(key);
                let expected = match &*key {
                    "name" => "a string",
                    "args" => "a map or nil",
                    "timeout_ms" => "nil or an integer from 1 to 4294967295",
                    _ => "nil or an unsigned integer",
                };
                return Err(format!("sent an elixir_call whose {key} is not {expected}"));
            }
            _ => r.skip().map_err(malformed)?,
        }
    }
    if !named {
        return Err("sent an elixir_call without a name".into());
    }
    Ok(call)
}

/// The value of the string key `key` in the map at `body`, as the reader
/// positioned on it; `Ok(None)` if the body is not a map or lacks the key.
fn map_value<'a>(
    frame: &'a [u8],
    body: usize,
    key: &[u8],
) -> Result<Option<Reader<'a>>, DecodeError> {
    let mut r = Reader::at(frame, body);
    let Token::Map(n) = r.next_token()? else {
        return Ok(None);
    };
    for _ in 0..n {
        let key_at = r.position();
        match r.next_token()? {
            Token::Str(k) if r.slice(k.clone()) == key => return Ok(Some(r)),
            Token::Array(_) | Token::Map(_) => {
                // A container key: skip all of it, not only its header, or
                // its items would be taken for the map's keys and values.
                r = Reader::at(frame, key_at);
                r.skip()?;
            }
            _ => {}
        }
        r.skip()?;
    }
    Ok(None)
}

/// Whether the body at `body` in `frame` is a map (as `ready`, `error` and
/// `log` bodies must be).
pub fn body_is_map(frame: &[u8], body: usize) -> bool {
    matches!(Reader::at(frame, body).next_token(), Ok(Token::Map(_)))
}

/// Why a worker's `ready` frame is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeError {
    /// It speaks another protocol version (`None`: it announced none).
    Version(Option<u64>),
    Malformed(DecodeError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Version(Some(v)) => write!(
                f,
                "it speaks protocol version {v}, this host speaks {PROTOCOL_VERSION}"
            ),
            HandshakeError::Version(None) => write!(
                f,
                "its ready frame has no protocol version (this host speaks {PROTOCOL_VERSION})"
            ),
            HandshakeError::Malformed(e) => write!(f, "malformed ready frame: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Checks a `ready` body (at `body` in `frame`): the worker must speak
/// [`PROTOCOL_VERSION`]. The one place the version is checked.
pub fn check_ready(frame: &[u8], body: usize) -> Result<(), HandshakeError> {
    let version = match map_value(frame, body, b"protocol").map_err(HandshakeError::Malformed)? {
        None => None,
        Some(mut r) => match r.next_token().map_err(HandshakeError::Malformed)? {
            Token::UInt(v) => Some(v),
            Token::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        },
    };
    match version {
        Some(PROTOCOL_VERSION) => Ok(()),
        other => Err(HandshakeError::Version(other)),
    }
}

/// Whether a `ready` body (at `body` in `frame`) says the adapter lets
/// calls of one session run at once (`"concurrent_sessions": true`); absent
/// or anything else: no.
pub fn concurrent_sessions(frame: &[u8], body: usize) -> bool {
    map_value(frame, body, b"concurrent_sessions")
        .ok()
        .flatten()
        .is_some_and(|mut r| matches!(r.next_token(), Ok(Token::Bool(true))))
}

/// What an `error` frame says went wrong, from its body's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The call was refused before the tool ran: `unknown_tool`,
    /// `bad_arguments`, `bad_request`.
    Refused,
    /// Anything else: the tool raised, its result could not be sent, ...
    Failed,
}

impl ErrorKind {
    /// The one place that says which `kind`s mean "refused": the NIF
    /// counts and answers calls by it, and `Snakepit.Error.from_python/1`
    /// asks it (through `error_category/1`) for bodies it gets otherwise.
    pub fn of(kind: Option<&[u8]>) -> ErrorKind {
        match kind {
            Some(b"unknown_tool" | b"bad_arguments" | b"bad_request") => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }
}

/// Classifies an `error` body (at `body` in `frame`) by its `kind` field.
pub fn error_kind(frame: &[u8], body: usize) -> ErrorKind {
    let kind = map_value(frame, body, b"kind")
        .ok()
        .flatten()
        .and_then(|mut r| match r.next_token() {
            Ok(Token::Str(k)) => Some(r.slice(k)),
            _ => None,
        });
    ErrorKind::of(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::HEADER_LEN;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str().as_bytes()), Some(k));
        }
        assert_eq!(Kind::parse(b"nope"), None);
    }

    #[test]
    fn shm_frames_carry_their_lengths() {
        let f = shm_frame(9, &[1, 1 << 40]);
        let env = parse_envelope(&f[HEADER_LEN..]).unwrap();
        assert_eq!((env.kind, env.id), (Kind::Shm, 9));
        assert_eq!(
            shm_lengths(&f[HEADER_LEN..], env.body).unwrap(),
            vec![1, 1 << 40]
        );
        let f = control_frame(Kind::Shm, 9);
        let env = parse_envelope(&f[HEADER_LEN..]).unwrap();
        assert!(shm_lengths(&f[HEADER_LEN..], env.body).is_err());
    }

    #[test]
    fn a_reclaim_frame_names_the_offset_of_its_call() {
        let f = reclaim_frame(7, 300_000);
        let env = parse_envelope(&f[HEADER_LEN..]).unwrap();
        assert_eq!((env.kind, env.id), (Kind::Reclaim, 7));
        let mut r = Reader::at(&f[HEADER_LEN..], env.body);
        // The reader gives every integer that fits an i64 as Int.
        let t = r.next_token();
        assert!(matches!(t, Ok(Token::Int(300_000))), "{t:?}");
    }

    #[test]
    fn control_frames_have_a_nil_body() {
        let f = control_frame(Kind::Cancel, 77);
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        let env = parse_envelope(&f[HEADER_LEN..]).unwrap();
        assert_eq!((env.kind, env.id), (Kind::Cancel, 77));
        assert_eq!(f[HEADER_LEN + env.body], 0xc0);
    }

    #[test]
    fn call_frames_carry_tool_session_and_args() {
        let mut f = begin_call(
            u64::MAX,
            b"predict",
            Some(b"s-1"),
            Some(32),
            Some(b"c-9"),
            8,
        );
        rmp::encode::write_sint(&mut f, -5).unwrap();
        frame::finish(&mut f, 1024).unwrap();
        let body = &f[HEADER_LEN..];
        let env = parse_envelope(body).unwrap();
        assert_eq!((env.kind, env.id), (Kind::Call, u64::MAX));
        let mut r = Reader::at(body, env.body);
        assert_eq!(r.next_token().unwrap(), Token::Map(5));
        let mut fields = vec![];
        for _ in 0..5 {
            let Token::Str(k) = r.next_token().unwrap() else {
                panic!()
            };
            let key = String::from_utf8(r.slice(k).to_vec()).unwrap();
            let value = match r.next_token().unwrap() {
                Token::Str(v) => String::from_utf8(r.slice(v).to_vec()).unwrap(),
                other => format!("{other:?}"),
            };
            fields.push((key, value));
        }
        assert_eq!(
            fields,
            vec![
                ("tool".into(), "predict".into()),
                ("session_id".into(), "s-1".into()),
                ("stream".into(), "Int(32)".into()),
                ("correlation_id".into(), "c-9".into()),
                ("args".into(), "Int(-5)".into())
            ]
        );
    }

    #[test]
    fn rejects_frames_that_are_not_envelopes() {
        let mut buf = vec![];
        rmp::encode::write_array_len(&mut buf, 2).unwrap();
        assert_eq!(parse_envelope(&buf), Err(ProtocolError::NotAnEnvelope));

        let mut buf = vec![];
        rmp::encode::write_array_len(&mut buf, 3).unwrap();
        write_str(&mut buf, b"bogus");
        assert_eq!(
            parse_envelope(&buf),
            Err(ProtocolError::UnknownKind("bogus".into()))
        );

        let mut buf = begin_frame(Kind::Result, 1, 0)[HEADER_LEN..].to_vec();
        rmp::encode::write_nil(&mut buf).unwrap();
        rmp::encode::write_nil(&mut buf).unwrap();
        assert_eq!(parse_envelope(&buf), Err(ProtocolError::TrailingBytes));

        let mut buf = vec![];
        rmp::encode::write_array_len(&mut buf, 3).unwrap();
        write_str(&mut buf, b"result");
        rmp::encode::write_sint(&mut buf, -1).unwrap();
        rmp::encode::write_nil(&mut buf).unwrap();
        assert_eq!(parse_envelope(&buf), Err(ProtocolError::NotAnEnvelope));

        assert!(matches!(
            parse_envelope(&[0x93, 0xa6]),
            Err(ProtocolError::Malformed(_))
        ));
    }

    fn body_of(pairs: &[(&str, Option<&str>, Option<u64>)]) -> Vec<u8> {
        let mut buf = vec![];
        rmp::encode::write_map_len(&mut buf, pairs.len() as u32).unwrap();
        for (k, s, n) in pairs {
            write_str(&mut buf, k.as_bytes());
            match (s, n) {
                (Some(s), _) => write_str(&mut buf, s.as_bytes()),
                (None, Some(n)) => {
                    rmp::encode::write_uint(&mut buf, *n).unwrap();
                }
                (None, None) => rmp::encode::write_nil(&mut buf).unwrap(),
            }
        }
        buf
    }

    #[test]
    fn a_ready_frame_may_let_a_sessions_calls_run_at_once() {
        // {"concurrent_sessions": true} / false / absent / not a bool
        let yes = [
            0x81, 0xb3, b'c', b'o', b'n', b'c', b'u', b'r', b'r', b'e', b'n', b't', b'_', b's',
            b'e', b's', b's', b'i', b'o', b'n', b's', 0xc3,
        ];
        assert!(concurrent_sessions(&yes, 0));
        let mut no = yes;
        no[21] = 0xc2;
        assert!(!concurrent_sessions(&no, 0));
        let mut one = yes;
        one[21] = 0x01;
        assert!(!concurrent_sessions(&one, 0));
        assert!(!concurrent_sessions(
            &body_of(&[("pid", None, Some(42))]),
            0
        ));
    }

    #[test]
    fn a_ready_frame_must_carry_this_protocol_version() {
        let ok = body_of(&[
            ("pid", None, Some(42)),
            ("protocol", None, Some(PROTOCOL_VERSION)),
        ]);
        assert_eq!(check_ready(&ok, 0), Ok(()));
        let other = body_of(&[("protocol", None, Some(PROTOCOL_VERSION + 1))]);
        let err = check_ready(&other, 0).unwrap_err();
        assert_eq!(err, HandshakeError::Version(Some(PROTOCOL_VERSION + 1)));
        let text = err.to_string();
        assert!(
            text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("speaks {PROTOCOL_VERSION}")),
            "{text}"
        );
        let none = body_of(&[("pid", None, Some(1))]);
        assert_eq!(check_ready(&none, 0), Err(HandshakeError::Version(None)));
        let text_version = body_of(&[("protocol", Some("1"), None)]);
        assert_eq!(
            check_ready(&text_version, 0),
            Err(HandshakeError::Version(None))
        );
        assert_eq!(check_ready(&[0xc0], 0), Err(HandshakeError::Version(None)));
        assert!(matches!(
            check_ready(&[0x81, 0xa8], 0),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn keys_that_are_containers_are_skipped_whole() {
        // Found by the property tests: only the header of an array or map
        // key was skipped, so the pairs after it were read out of step.
        // {[nil] => 2, "protocol" => 3} was refused as having no version...
        let mut b = vec![0x82, 0x91, 0xc0, 0x02];
        write_str(&mut b, b"protocol");
        b.push(PROTOCOL_VERSION as u8);
        assert_eq!(check_ready(&b, 0), Ok(()));
        // ... and {[0] => "protocol", 2 => nil}, which has none, accepted.
        let mut b = vec![0x82, 0x91, 0x00];
        write_str(&mut b, b"protocol");
        b.extend([0x02, 0xc0]);
        assert_eq!(check_ready(&b, 0), Err(HandshakeError::Version(None)));
        // The same for an error's kind: {[0] => "kind", "bad_request" => nil}
        // has none, but was classified by "bad_request" ...
        let mut b = vec![0x82, 0x91, 0x00];
        write_str(&mut b, b"kind");
        write_str(&mut b, b"bad_request");
        b.push(0xc0);
        assert_eq!(error_kind(&b, 0), ErrorKind::Failed);
        // ... and {{0 => nil} => 1, "kind" => "unknown_tool"} was not.
        let mut b = vec![0x82, 0x81, 0x00, 0xc0, 0x01];
        write_str(&mut b, b"kind");
        write_str(&mut b, b"unknown_tool");
        assert_eq!(error_kind(&b, 0), ErrorKind::Refused);
        // A key whose contents end early is malformed, not a missing key.
        assert!(matches!(
            check_ready(&[0x81, 0x92, 0xc0], 0),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn the_body_is_found_after_the_envelope() {
        let mut f = begin_frame(Kind::Ready, 0, 16);
        f.extend(body_of(&[("protocol", None, Some(PROTOCOL_VERSION))]));
        frame::finish(&mut f, 1024).unwrap();
        let frame = &f[HEADER_LEN..];
        let env = parse_envelope(frame).unwrap();
        assert_eq!(check_ready(frame, env.body), Ok(()));
    }

    #[test]
    fn an_unknown_kind_is_kept_only_in_part() {
        // Found by the fuzz loop: the whole name was copied (up to 3 bytes
        // per byte of invalid UTF-8, then doubled as the String grew), so a
        // frame whose "kind" was 64 MiB long cost a few hundred MiB, and an
        // error message as long, before the worker was dropped.
        let mut buf = vec![0x93];
        write_str(&mut buf, &[0xff; 100_000]);
        let Err(ProtocolError::UnknownKind(k)) = parse_envelope(&buf) else {
            panic!()
        };
        assert_eq!(k, "\u{fffd}".repeat(KIND_SHOWN) + "…");
        assert!(ProtocolError::UnknownKind(k).to_string().len() < 4 * KIND_SHOWN);
        let mut buf = vec![0x93];
        write_str(&mut buf, &[b'x'; KIND_SHOWN]);
        assert_eq!(
            parse_envelope(&buf),
            Err(ProtocolError::UnknownKind("x".repeat(KIND_SHOWN)))
        );
    }

    /// Writes a value into a frame being built.
    type Writes = dyn Fn(&mut Vec<u8>);

    fn elixir_call_body(build: impl FnOnce(&mut Vec<u8>)) -> (Vec<u8>, usize) {
        let mut f = begin_frame(Kind::ElixirCall, 1, 16)[HEADER_LEN..].to_vec();
        let body = f.len();
        build(&mut f);
        (f, body)
    }

    #[test]
    fn an_elixir_call_body_names_its_function_args_and_timeout() {
        let (f, body) = elixir_call_body(|b| {
            rmp::encode::write_map_len(b, 5).unwrap();
            write_str(b, b"extra");
            rmp::encode::write_array_len(b, 1).unwrap();
            rmp::encode::write_nil(b).unwrap();
            write_str(b, b"name");
            write_str(b, b"lookup");
            write_str(b, b"args");
            rmp::encode::write_map_len(b, 1).unwrap();
            write_str(b, b"name");
            write_str(b, b"not the function's");
            write_str(b, b"timeout_ms");
            rmp::encode::write_uint(b, 1500).unwrap();
            write_str(b, b"request_id");
            rmp::encode::write_uint(b, u64::MAX).unwrap();
        });
        let call = elixir_call(&f, body).unwrap();
        assert_eq!(&f[call.name.clone()], b"lookup");
        assert_eq!(call.timeout_ms, Some(1500));
        assert_eq!(call.request_id, Some(u64::MAX));
        let mut args = Reader::at(&f, call.args.unwrap());
        assert_eq!(args.next_token().unwrap(), Token::Map(1));
        // No args, no timeout: both optional.
        let (f, body) = elixir_call_body(|b| {
            rmp::encode::write_map_len(b, 2).unwrap();
            write_str(b, b"name");
            write_str(b, b"f");
            write_str(b, b"args");
            rmp::encode::write_nil(b).unwrap();
        });
        let call = elixir_call(&f, body).unwrap();
        assert_eq!(
            (call.args, call.timeout_ms, call.request_id),
            (None, None, None)
        );
    }

    #[test]
    fn a_malformed_elixir_call_body_is_refused() {
        let refused = |build: &Writes| {
            let (f, body) = elixir_call_body(build);
            elixir_call(&f, body).unwrap_err()
        };
        assert!(refused(&|b| rmp::encode::write_nil(b).unwrap()).contains("not a map"));
        assert!(refused(&|b| {
            rmp::encode::write_map_len(b, 0).unwrap();
        })
        .contains("without a name"));
        let with = |key: &'static [u8], value: &'static Writes| {
            move |b: &mut Vec<u8>| {
                rmp::encode::write_map_len(b, 2).unwrap();
                write_str(b, b"name");
                write_str(b, b"f");
                write_str(b, key);
                value(b);
            }
        };
        let bad: [(&[u8], &Writes, &str); 6] = [
            (b"name", &|b| write_str(b, b""), "name"),
            (b"name", &|b| write_str(b, &[0xff]), "name"),
            (b"name", &|b| rmp::encode::write_nil(b).unwrap(), "name"),
            (
                b"args",
                &|b| rmp::encode::write_array_len(b, 0).map(drop).unwrap(),
                "args",
            ),
            (
                b"timeout_ms",
                &|b| rmp::encode::write_uint(b, 0).map(drop).unwrap(),
                "timeout_ms",
            ),
            (b"request_id", &|b| write_str(b, b"1"), "request_id"),
        ];
        for (key, value, named) in bad {
            let text = refused(&with(key, value));
            assert!(text.contains(named), "{text}");
        }
        let (f, body) = elixir_call_body(with(b"timeout_ms", &|b| {
            rmp::encode::write_uint(b, MAX_ELIXIR_TIMEOUT_MS + 1)
                .map(drop)
                .unwrap()
        }));
        assert!(elixir_call(&f, body).is_err());
        let (f, body) = elixir_call_body(|b| {
            rmp::encode::write_map_len(b, 1).unwrap();
            write_str(b, b"name");
        });
        assert!(elixir_call(&f, body).unwrap_err().contains("malformed"));
        assert!(elixir_call(&f, usize::MAX).is_err());
    }

    #[test]
    fn map_bodies_are_told_from_others() {
        assert!(body_is_map(&body_of(&[("kind", Some("x"), None)]), 0));
        assert!(body_is_map(&body_of(&[]), 0));
        for not_map in [&[0xc0][..], &[0x91, 0x01], &[0x05], &[0xa1, b'x'], &[]] {
            assert!(!body_is_map(not_map, 0), "{not_map:?}");
        }
    }

    #[test]
    fn error_bodies_are_classified_by_kind() {
        for refused in ["unknown_tool", "bad_arguments", "bad_request"] {
            let b = body_of(&[("tool", None, None), ("kind", Some(refused), None)]);
            assert_eq!(error_kind(&b, 0), ErrorKind::Refused, "{refused}");
        }
        for failed in ["exception", "unencodable_result", "cancelled"] {
            let b = body_of(&[("kind", Some(failed), None)]);
            assert_eq!(error_kind(&b, 0), ErrorKind::Failed, "{failed}");
        }
        assert_eq!(error_kind(&[0xc0], 0), ErrorKind::Failed);
        assert_eq!(error_kind(&body_of(&[]), 0), ErrorKind::Failed);
    }
}
