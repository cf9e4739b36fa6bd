//! A frame on its way out, with its large parts left where they are.
//!
//! Encoding a call copies small values into one buffer, but a large binary
//! (a tensor's data, a file's bytes) goes as a *blob* instead: the frame
//! keeps a reference to memory someone else owns (in the NIF, a VM binary
//! kept alive for the frame's life), and the writer sends blobs and frame in
//! one `writev(2)`. So a 100 MB argument is never copied in user space on
//! its way to the pipe, and encoding it costs the same as encoding a small
//! one.
//!
//! On the wire each blob is its own frame, before the MessagePack frame that
//! refers to it: a length prefix with [`BLOB_FLAG`] set, then the raw bytes
//! (see docs/protocol.md, "Blobs"). The worker reads a blob straight into an
//! object of its own (a Python `bytes`, a numpy array's buffer) with no
//! MessagePack decoding in between.

use crate::frame::{self, HEADER_LEN};
use std::sync::Arc;

/// Set in a length prefix: the frame is a blob, raw bytes for the next
/// MessagePack frame to refer to. Lengths themselves stay below it.
pub const BLOB_FLAG: u32 = 0x8000_0000;

/// MessagePack extension type of a reference to a blob: payload
/// `index:u32 BE, tag:u8`, then for tag `t` a tensor header.
pub const BLOB_EXT: i8 = 83;

/// Bytes owned elsewhere, readable for as long as the part lives.
pub trait Part: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl Part for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A frame to write: its blobs (each behind its own length prefix), then
/// `bytes`, the MessagePack frame itself (length prefix included).
#[derive(Clone, Default)]
pub struct OutFrame {
    pub bytes: Vec<u8>,
    /// Boxed: most frames have none, and frames wait in queues.
    blobs: Option<Box<Blobs>>,
}

#[derive(Clone, Default)]
struct Blobs {
    parts: Vec<Arc<dyn Part>>,
    /// Each part's length prefix.
    headers: Vec<[u8; HEADER_LEN]>,
    /// Bytes on the wire, prefixes included.
    len: usize,
}

impl From<Vec<u8>> for OutFrame {
    fn from(bytes: Vec<u8>) -> Self {
        OutFrame { bytes, blobs: None }
    }
}

impl std::fmt::Debug for OutFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutFrame")
            .field("bytes", &self.bytes.len())
            .field("blobs", &self.blob_count())
            .finish()
    }
}

impl OutFrame {
    /// Total length on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.blobs.as_ref().map_or(0, |b| b.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.as_ref().map_or(0, |b| b.parts.len())
    }

    /// Adds `part` as the next blob; returns its index. `part` must be
    /// shorter than [`BLOB_FLAG`] bytes.
    pub fn add_blob(&mut self, part: Arc<dyn Part>) -> u32 {
        let len = part.bytes().len();
        let blobs = self.blobs.get_or_insert_with(Box::default);
        let mut header = frame::header(len);
        header[0] |= (BLOB_FLAG >> 24) as u8;
        blobs.headers.push(header);
        blobs.len += HEADER_LEN + len;
        blobs.parts.push(part);
        (blobs.parts.len() - 1) as u32
    }

    /// The frame's pieces in wire order, skipping the first `skip` bytes
    /// and empty pieces; `f` returns `false` to stop early.
    pub fn pieces(&self, mut skip: usize, mut f: impl FnMut(&[u8]) -> bool) {
        let mut emit = |piece: &[u8]| -> bool {
            if skip >= piece.len() {
                skip -= piece.len();
                return true;
            }
            let piece = &piece[skip..];
            skip = 0;
            piece.is_empty() || f(piece)
        };
        if let Some(blobs) = &self.blobs {
            for (header, part) in blobs.headers.iter().zip(&blobs.parts) {
                if !emit(header) || !emit(part.bytes()) {
                    return;
                }
            }
        }
        emit(&self.bytes);
    }

    /// The whole frame in one buffer (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.pieces(0, |p| {
            out.extend_from_slice(p);
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> OutFrame {
        let mut f = OutFrame::from(b"ab".to_vec());
        assert_eq!(f.add_blob(Arc::new(b"XYZ".to_vec())), 0);
        assert_eq!(f.add_blob(Arc::new(Vec::new())), 1);
        assert_eq!(f.add_blob(Arc::new(b"Q".to_vec())), 2);
        f
    }

    #[test]
    fn blobs_go_first_each_behind_a_flagged_prefix() {
        let f = frame();
        assert_eq!(f.len(), 4 + 3 + 4 + 4 + 1 + 2);
        assert_eq!(
            f.to_vec(),
            [
                &[0x80, 0, 0, 3][..],
                b"XYZ",
                &[0x80, 0, 0, 0],
                &[0x80, 0, 0, 1],
                b"Q",
                b"ab"
            ]
            .concat()
        );
    }

    #[test]
    fn skip_lands_anywhere() {
        let f = frame();
        let whole = f.to_vec();
        for skip in 0..=whole.len() {
            let mut got = Vec::new();
            f.pieces(skip, |p| {
                assert!(!p.is_empty());
                got.extend_from_slice(p);
                true
            });
            assert_eq!(got, &whole[skip..], "skip {skip}");
        }
    }

    #[test]
    fn stop_early() {
        let mut n = 0;
        frame().pieces(0, |_| {
            n += 1;
            n < 2
        });
        assert_eq!(n, 2);
    }
}
