//! A frame on its way out, with its large parts left where they are.
//!
//! Encoding a call copies small values into one buffer, but a large binary
//! (a tensor's data, a file's bytes) is *spliced* in instead: the frame keeps
//! a reference to memory someone else owns (in the NIF, a VM binary kept
//! alive for the frame's life), and the writer sends buffer and parts in one
//! `writev(2)`. So a 100 MB argument is never copied in user space on its
//! way to the pipe, and encoding it costs the same as encoding a small one.

use std::sync::Arc;

/// Bytes owned elsewhere, readable for as long as the part lives.
pub trait Part: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl Part for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A frame to write: `bytes` (length prefix included) with each splice's
/// part inserted at its offset, in order.
#[derive(Clone, Default)]
pub struct OutFrame {
    pub bytes: Vec<u8>,
    /// Boxed: most frames have none, and frames wait in queues.
    splices: Option<Box<Splices>>,
}

#[derive(Clone, Default)]
struct Splices {
    /// `(offset into bytes, part)`, offsets non-decreasing.
    parts: Vec<(usize, Arc<dyn Part>)>,
    /// Bytes in `parts`.
    len: usize,
}

impl From<Vec<u8>> for OutFrame {
    fn from(bytes: Vec<u8>) -> Self {
        OutFrame {
            bytes,
            ..OutFrame::default()
        }
    }
}

impl std::fmt::Debug for OutFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutFrame")
            .field("bytes", &self.bytes.len())
            .field("spliced", &self.spliced_len())
            .finish()
    }
}

impl OutFrame {
    /// Total length on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.spliced_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in spliced parts.
    pub fn spliced_len(&self) -> usize {
        self.splices.as_ref().map_or(0, |s| s.len)
    }

    /// Splices `part` in at the current end of `bytes`.
    pub fn splice(&mut self, part: Arc<dyn Part>) {
        let splices = self.splices.get_or_insert_with(Box::default);
        splices.len += part.bytes().len();
        splices.parts.push((self.bytes.len(), part));
    }

    /// The frame's pieces in wire order, skipping the first `skip` bytes
    /// and empty pieces; `f` returns `false` to stop early.
    pub fn pieces(&self, mut skip: usize, mut f: impl FnMut(&[u8]) -> bool) {
        let mut from = 0;
        let mut emit = |piece: &[u8], skip: &mut usize| -> bool {
            if *skip >= piece.len() {
                *skip -= piece.len();
                return true;
            }
            let piece = &piece[*skip..];
            *skip = 0;
            f(piece)
        };
        let parts = self.splices.as_ref().map_or(&[][..], |s| &s.parts[..]);
        for (at, part) in parts {
            if !emit(&self.bytes[from..*at], &mut skip) || !emit(part.bytes(), &mut skip) {
                return;
            }
            from = *at;
        }
        emit(&self.bytes[from..], &mut skip);
    }

    /// The whole frame in one buffer (tests and small frames).
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
        f.splice(Arc::new(b"XYZ".to_vec()));
        f.bytes.extend_from_slice(b"cd");
        f.splice(Arc::new(Vec::new()));
        f.splice(Arc::new(b"Q".to_vec()));
        f
    }

    #[test]
    fn pieces_follow_wire_order() {
        let f = frame();
        assert_eq!(f.len(), 8);
        assert_eq!(f.to_vec(), b"abXYZcdQ");
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
