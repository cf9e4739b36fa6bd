//! Binaries a frame refers to as blobs, kept alive until it is written.

use rustler::Term;
use snakepit_wire::outgoing::Part;

/// A VM binary kept alive outside any process, so a frame can be written
/// from its bytes after the NIF that encoded it has returned: a copy of the
/// term in an environment of its own (for a refc binary, a new reference,
/// not a copy of the bytes). Binaries are immutable once inspected
/// (`enif_inspect_binary` ends any in-place append optimisation).
pub struct KeptBinary {
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
    pub fn new(term: Term) -> Option<KeptBinary> {
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
