//! Finding and killing worker processes left by a BEAM that died without
//! cleaning up.
//!
//! Shepherds kill their workers when the BEAM dies, so leftovers need an
//! unusual death: a shepherd SIGKILLed too, a machine-wide OOM kill. Every
//! process we start carries the *mark* `SNAKEPIT_OWNER=<pid>.<start time>`
//! of the BEAM that started it (children inherit it). A marked process is an
//! orphan when no process with that pid *and* start time runs any more. A
//! live BEAM's workers are never touched, nor is anything without our mark.

use std::fs;
use std::sync::LazyLock;

/// The environment variable that marks our processes.
pub const MARK_VAR: &str = "SNAKEPIT_OWNER";

static MARK: LazyLock<String> = LazyLock::new(|| {
    let pid = std::process::id() as i32;
    format!("{pid}.{}", start_time(pid).unwrap_or(0))
});

/// This BEAM's mark.
pub fn mark() -> &'static str {
    &MARK
}

/// Start time of `pid` in clock ticks since boot (field 22 of its stat):
/// with the pid, it names one process for the life of the machine.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The mark in `pid`'s environment, if it has one and we may read it.
fn mark_of(pid: i32) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARK_VAR}=");
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|m| String::from_utf8_lossy(m).into_owned())
}

/// Whether the BEAM that a mark names is still running.
fn owner_alive(mark: &str) -> bool {
    let Some((pid, started)) = mark.split_once('.') else {
        return true; // not a mark we wrote: leave it alone
    };
    match (pid.parse::<i32>(), started.parse::<u64>()) {
        (Ok(pid), Ok(started)) => start_time(pid) == Some(started),
        _ => true,
    }
}

/// The pids of processes that carry `mark`.
pub fn marked(mark: &str) -> Vec<i32> {
    pids()
        .filter(|&pid| mark_of(pid).as_deref() == Some(mark))
        .collect()
}

/// SIGKILLs every marked process whose owner is gone; returns their pids.
pub fn reap() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for pid in pids().filter(|&p| p != me) {
        let Some(mark) = mark_of(pid) else { continue };
        if mark != self::mark() && !owner_alive(&mark) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    killed
}

fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
}
