//! `snakepit_shepherd PROGRAM [ARGS...]`: the parent of one Snakepit worker.
//!
//! The BEAM ignores SIGCHLD, so the kernel reaps its children at once: it
//! could neither learn how a worker died nor signal a worker's process group
//! without racing pid reuse. So each worker gets a shepherd between it and
//! the BEAM. The shepherd
//! - starts the worker in its own process group (stdin, stdout and stderr
//!   are the shepherd's own, inherited);
//! - becomes a *subreaper*, so whatever the worker starts, even a daemon that
//!   double-forks, stays its descendant;
//! - signals the group when the host asks, on the *lifeline*;
//! - when the worker ends, kills everything it left behind, reaps it all and
//!   reports the exit status on the lifeline;
//! - when the lifeline closes (the BEAM exited, even by SIGKILL), kills it all.
//!
//! The lifeline is fd 3, a Unix socket to the host. Host to shepherd: one
//! byte per request, `T` (SIGTERM to the worker's group) or `K` (SIGKILL).
//! Shepherd to host, one line each: `pid <worker pid>` or `error <errno>`
//! (the exec failed) once at start, then `exit <code|-> <signal|->`.
//!
//! If fd 4 is open, the worker gets it as its fd 3 (the host's control
//! pipe), and if fd 5 is, as its fd 4 (the segment socket, for shared
//! memory); the shepherd keeps no copy of either. Every other descriptor it
//! inherited beyond stdio is closed at start.
//!
//! The worker has `PR_SET_PDEATHSIG` = SIGKILL, so even a SIGKILL of the
//! shepherd itself takes the worker along.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::CString;
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};

const LIFELINE: i32 = 3;
const CONTROL_IN: i32 = 4;
/// What the worker gets as fd 3 when fd 4 was passed.
const CONTROL_OUT: i32 = 3;
const SHM_IN: i32 = 5;
/// What the worker gets as fd 4 when fd 5 was passed.
const SHM_OUT: i32 = 4;
/// How long the sweep keeps killing what the worker left behind.
const SWEEP_LIMIT: Duration = Duration::from_secs(5);

/// Signals the shepherd ignores (it only ever dies of the lifeline closing
/// or SIGKILL) and that its worker gets back at their defaults.
const SHIELDED: [i32; 5] = [
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGPIPE,
];

fn main() {
    let argv: Vec<CString> = std::env::args_os()
        .skip(1)
        .map(|a| CString::new(a.into_vec()).expect("no NUL in argv"))
        .collect();
    if argv.is_empty() {
        eprintln!("usage: snakepit_shepherd PROGRAM [ARGS...] (lifeline on fd 3)");
        std::process::exit(2);
    }
    // The BEAM's own descriptors (its pollset, timers, the pipes of ports
    // being opened) are not all close-on-exec, and we live as long as our
    // worker: holding one could keep a port of the BEAM from ever seeing
    // EOF. Only stdio, the lifeline, the control pipe and the segment
    // socket stay.
    close_from(SHM_IN + 1);
    if !fd_open(LIFELINE) {
        eprintln!("snakepit_shepherd: no lifeline on fd 3; it is started by Snakepit");
        std::process::exit(2);
    }
    // SAFETY: single-threaded process; plain syscalls.
    unsafe {
        // Inherited as SIG_IGN from the BEAM; we must be able to wait.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        for sig in SHIELDED {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let pid = match start(&argv) {
        Ok(pid) => pid,
        Err(errno) => {
            say(&format!("error {errno}\n"));
            std::process::exit(1);
        }
    };
    say(&format!("pid {pid}\n"));
    quiet_stdio();
    let lifeline_open = watch(pid);
    let (code, signal) = exit_status(pid);
    sweep(pid);
    if lifeline_open {
        let show = |v: Option<i32>| v.map_or("-".to_string(), |v| v.to_string());
        say(&format!("exit {} {}\n", show(code), show(signal)));
    }
}

/// Forks and execs the worker. Returns its pid, or the exec's errno.
fn start(argv: &[CString]) -> Result<i32, i32> {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let control = fd_open(CONTROL_IN);
    let shm = fd_open(SHM_IN);
    let mut err_pipe = [0i32; 2];
    // SAFETY: plain syscalls; between fork and exec the child only makes
    // async-signal-safe calls and touches memory prepared before the fork.
    unsafe {
        if libc::pipe2(err_pipe.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(errno());
        }
        let shepherd = libc::getpid();
        let pid = libc::fork();
        if pid < 0 {
            return Err(errno());
        }
        if pid == 0 {
            libc::close(err_pipe[0]);
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != shepherd {
                libc::_exit(1);
            }
            for sig in SHIELDED {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::close(LIFELINE);
            if control {
                libc::dup2(CONTROL_IN, CONTROL_OUT);
                libc::close(CONTROL_IN);
            }
            if shm {
                libc::dup2(SHM_IN, SHM_OUT);
                libc::close(SHM_IN);
            }
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let e = errno().to_ne_bytes();
            libc::write(err_pipe[1], e.as_ptr().cast(), e.len());
            libc::_exit(127);
        }
        libc::close(err_pipe[1]);
        if control {
            libc::close(CONTROL_IN);
        }
        if shm {
            libc::close(SHM_IN);
        }
        let mut buf = [0u8; 4];
        let n = loop {
            let n = libc::read(err_pipe[0], buf.as_mut_ptr().cast(), buf.len());
            if n >= 0 || errno() != libc::EINTR {
                break n;
            }
        };
        libc::close(err_pipe[0]);
        if n == 4 {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            return Err(i32::from_ne_bytes(buf));
        }
        Ok(pid)
    }
}

/// Serves the lifeline until the worker exits (not reaping it). Returns
/// whether the lifeline is still open.
fn watch(pid: i32) -> bool {
    // SAFETY: pidfd_open returns a new fd or -1 (kernels before 5.3: we poll).
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    let mut lifeline_open = true;
    loop {
        if exited(pid) {
            return lifeline_open;
        }
        let mut fds = [
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if lifeline_open { LIFELINE } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if pidfd < 0 { 50 } else { -1 };
        // SAFETY: two valid pollfds (negative fds are ignored by poll).
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if fds[1].revents != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(LIFELINE, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                for byte in &buf[..n as usize] {
                    match byte {
                        b'T' => signal_group(pid, libc::SIGTERM),
                        b'K' => signal_group(pid, libc::SIGKILL),
                        _ => {}
                    }
                }
            } else if n == 0 || errno() != libc::EINTR {
                // The host is gone: nobody may outlive it.
                lifeline_open = false;
                signal_group(pid, libc::SIGKILL);
            }
        }
    }
}

/// Whether the worker has exited, without reaping it.
fn exited(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r < 0 || info.si_pid() != 0
    }
}

/// The worker's exit code or signal; it stays unreaped, so its pid (and the
/// group id) cannot be reused until `sweep` is done.
fn exit_status(pid: i32) -> (Option<i32>, Option<i32>) {
    // SAFETY: as in `exited`.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        if libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        ) < 0
        {
            return (None, None);
        }
        match info.si_code {
            libc::CLD_EXITED => (Some(info.si_status()), None),
            libc::CLD_KILLED | libc::CLD_DUMPED => (None, Some(info.si_status())),
            _ => (None, None),
        }
    }
}

/// Kills the worker's group and every descendant left (all are ours: we are
/// their subreaper), and reaps them all, the worker last of all included.
fn sweep(worker: i32) {
    let deadline = Instant::now() + SWEEP_LIMIT;
    // SAFETY: plain syscalls on our own descendants.
    unsafe {
        let own_group = libc::getpgrp();
        loop {
            libc::kill(-worker, libc::SIGKILL);
            for child in children(libc::getpid()) {
                let group = libc::getpgid(child);
                if group > 0 && group != own_group {
                    libc::kill(-group, libc::SIGKILL);
                }
                libc::kill(child, libc::SIGKILL);
            }
            loop {
                let r = libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG);
                if r > 0 {
                    continue;
                }
                if r < 0 && errno() == libc::ECHILD {
                    return;
                }
                break;
            }
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: plain syscall; the unreaped worker keeps its pgid ours.
    unsafe { libc::kill(-pid, sig) };
}

/// Pids whose parent is `parent`, from /proc.
fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(parent)
        })
        .collect()
}

/// The ppid field of a /proc/<pid>/stat line (the name may hold spaces and
/// parentheses, so parse after the last ')').
fn parent_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Writes a line to the lifeline; a closed lifeline is ignored.
fn say(line: &str) {
    let bytes = line.as_bytes();
    // SAFETY: writing a local buffer; the line is far below PIPE_BUF.
    unsafe { libc::write(LIFELINE, bytes.as_ptr().cast(), bytes.len()) };
}

/// Points our stdin and stdout at /dev/null: the worker holds the real pipes,
/// and the host must see stdout's EOF when the worker's copy closes.
fn quiet_stdio() {
    // SAFETY: plain syscalls on our own fds.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// Closes every descriptor from `first` up.
fn close_from(first: i32) {
    // SAFETY: plain syscalls on our own descriptors.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) == 0 {
            return;
        }
        // Kernels before 5.9: one by one, up to the limit.
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as i32
        } else {
            4096
        };
        for fd in first..max {
            libc::close(fd);
        }
    }
}

fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::parent_of;

    #[test]
    fn parses_the_parent_after_the_name() {
        assert_eq!(parent_of("42 (py (x) y) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_of("garbage"), None);
    }
}
