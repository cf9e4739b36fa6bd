//! Starting a process from inside the BEAM, with `posix_spawn(3)`.
//!
//! `std::process::Command` cannot be used here: when the child fails before
//! or at `exec` (a missing working directory, an environment too large for
//! `exec`, a missing binary), it reports the error and then `wait`s for the
//! child, assuming it owns SIGCHLD. The BEAM ignores SIGCHLD, so the kernel
//! has already reaped the child, the wait fails, and std panics. glibc's
//! `posix_spawn` returns such an error as its result instead, and never
//! needs the child's status. (The `nix` crate wraps `posix_spawn` but not the
//! `_np` file actions used here, so this calls libc directly.)
//!
//! The child gets: the given fds on its stdin/stdout/stderr and on the
//! requested numbers; every other descriptor closed; its own session
//! (`setsid`); an empty signal mask and default signal dispositions (the BEAM
//! blocks and ignores some); the BEAM's environment with the given overrides.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// What to start.
pub struct Spec<'a> {
    /// Absolute path of the executable.
    pub path: &'a str,
    /// `argv[1..]`; `argv[0]` is `path`.
    pub args: Vec<&'a str>,
    /// Set on top of the BEAM's environment.
    pub env: Vec<(&'a str, &'a str)>,
    pub cwd: Option<&'a str>,
    /// `(fd in this process, fd number in the child)`, stdio included. The
    /// fds here must be numbered above every target number.
    pub fds: Vec<(RawFd, RawFd)>,
}

/// Starts `spec` and returns the child's pid. The child is never waited for.
pub fn spawn(spec: &Spec) -> io::Result<libc::pid_t> {
    if let Some(cwd) = spec.cwd {
        if !Path::new(cwd).is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the working directory {cwd:?} does not exist or is not a directory"),
            ));
        }
    }
    let path = cstring(spec.path.as_bytes(), "the executable's path")?;
    let mut argv = vec![path.clone()];
    for arg in &spec.args {
        argv.push(cstring(arg.as_bytes(), "an argument")?);
    }
    let envp = environment(&spec.env)?;
    let cwd = spec
        .cwd
        .map(|c| cstring(c.as_bytes(), "the working directory"))
        .transpose()?;
    let highest_target = spec.fds.iter().map(|&(_, to)| to).max().unwrap_or(2);

    let mut actions = FileActions::new()?;
    for &(from, to) in &spec.fds {
        debug_assert!(from > highest_target, "a source fd would be overwritten");
        check(
            // SAFETY: actions is initialised; dup2 of an fd we own.
            unsafe { libc::posix_spawn_file_actions_adddup2(&mut actions.0, from, to) },
        )?;
    }
    check(
        // SAFETY: actions is initialised. Closes everything above the targets.
        unsafe {
            libc::posix_spawn_file_actions_addclosefrom_np(&mut actions.0, highest_target + 1)
        },
    )?;
    if let Some(cwd) = &cwd {
        check(
            // SAFETY: actions is initialised; cwd is a valid C string that
            // outlives the posix_spawn call.
            unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut actions.0, cwd.as_ptr()) },
        )?;
    }
    let attr = Attributes::new()?;

    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> = envp.iter().map(|e| e.as_ptr() as *mut _).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: path, argv and envp are
    // NUL-terminated strings in null-terminated arrays kept alive above;
    // actions and attr are initialised.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions.0,
            &attr.0,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    };
    if rc != 0 {
        let e = io::Error::from_raw_os_error(rc);
        let why = match rc {
            libc::E2BIG => format!(
                "the worker's arguments and environment are too large for exec ({} bytes): {e}",
                argv.iter()
                    .chain(&envp)
                    .map(|s| s.as_bytes().len() + 1)
                    .sum::<usize>()
            ),
            _ => match spec.cwd {
                Some(cwd) => format!("could not start {} in {cwd}: {e}", spec.path),
                None => format!("could not start {}: {e}", spec.path),
            },
        };
        return Err(io::Error::new(e.kind(), why));
    }
    Ok(pid)
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// The BEAM's environment with `overrides` set, as `NAME=value` strings.
fn environment(overrides: &[(&str, &str)]) -> io::Result<Vec<CString>> {
    let mut vars: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in overrides {
        if name.is_empty() || name.contains('=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid environment variable name {name:?}"),
            ));
        }
        vars.insert(OsString::from(name), OsString::from(value));
    }
    vars.into_iter()
        .map(|(name, value)| {
            let mut entry = name.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            cstring(&entry, "an environment variable")
        })
        .collect()
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        // SAFETY: zeroed storage, initialised by the call before any use.
        let mut actions: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
        // SAFETY: actions points to storage of the right type.
        let rc = unsafe { libc::posix_spawn_file_actions_init(&mut actions) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(FileActions(actions))
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in new, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    /// A new session, no blocked signals, every signal at its default.
    fn new() -> io::Result<Attributes> {
        // SAFETY: zeroed storage, initialised by the call before any use.
        let mut attr: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
        // SAFETY: attr points to storage of the right type.
        let rc = unsafe { libc::posix_spawnattr_init(&mut attr) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut attr = Attributes(attr);
        // SAFETY: sigset_t storage initialised by sigemptyset / sigfillset.
        let (mut empty, mut all): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
        let flags = (libc::POSIX_SPAWN_SETSID as libc::c_int
            | libc::POSIX_SPAWN_SETSIGMASK as libc::c_int
            | libc::POSIX_SPAWN_SETSIGDEF as libc::c_int) as libc::c_short;
        // SAFETY: attr is initialised; the sets are valid sigset_t storage.
        let rcs = unsafe {
            [
                libc::sigemptyset(&mut empty),
                libc::sigfillset(&mut all),
                libc::posix_spawnattr_setsigmask(&mut attr.0, &empty),
                libc::posix_spawnattr_setsigdefault(&mut attr.0, &all),
                libc::posix_spawnattr_setflags(&mut attr.0, flags),
            ]
        };
        match rcs.iter().find(|&&rc| rc != 0) {
            Some(&rc) => Err(io::Error::from_raw_os_error(if rc < 0 {
                libc::EINVAL
            } else {
                rc
            })),
            None => Ok(attr),
        }
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in new, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}
