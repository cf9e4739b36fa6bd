//! How much of a worker's output (stderr lines and Python `log` records)
//! reaches Elixir.
//!
//! Every line goes through the pool process to `Logger`. A worker that
//! writes faster than that can drain (a library logging in a loop, a tool
//! dumping a gigabyte to stderr) would fill the pool's mailbox and the
//! BEAM's memory, and stall the pool's control plane. So each worker has a
//! [`Budget`]: a token bucket of lines and of bytes. Output past it is read
//! from the pipe and dropped, and counted; the count is reported at most
//! once per [`REPORT_EVERY`], so the pool can say so in one warning.

use std::time::{Duration, Instant};

/// Lines a worker may send per second, sustained...
pub const LINES_PER_SEC: f64 = 500.0;
/// ...and in a burst.
pub const BURST_LINES: f64 = 2_000.0;
/// Bytes a worker may send per second, sustained...
pub const BYTES_PER_SEC: f64 = 1024.0 * 1024.0;
/// ...and in a burst.
pub const BURST_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
/// Longest line forwarded; longer ones are cut.
pub const MAX_LINE: usize = 16 * 1024;
/// Drops are reported at most this often per worker.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Whether a line may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Dropped. `report` is the number of lines dropped since the last
    /// report, when it is time to report them.
    No {
        report: Option<u64>,
    },
}

/// One worker's output allowance.
#[derive(Debug)]
pub struct Budget {
    lines: f64,
    bytes: f64,
    refilled: Instant,
    unreported: u64,
    reported: Option<Instant>,
}

impl Budget {
    pub fn new(now: Instant) -> Budget {
        Budget {
            lines: BURST_LINES,
            bytes: BURST_BYTES,
            refilled: now,
            unreported: 0,
            reported: None,
        }
    }

    /// Takes one line of `bytes` from the budget, if it holds them.
    pub fn admit(&mut self, bytes: usize, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.lines = (self.lines + elapsed * LINES_PER_SEC).min(BURST_LINES);
        self.bytes = (self.bytes + elapsed * BYTES_PER_SEC).min(BURST_BYTES);
        let bytes = bytes as f64;
        if self.lines >= 1.0 && self.bytes >= bytes {
            self.lines -= 1.0;
            self.bytes -= bytes;
            return Admit::Yes;
        }
        self.unreported += 1;
        let due = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_EVERY);
        if due {
            self.reported = Some(now);
            Admit::No {
                report: Some(std::mem::take(&mut self.unreported)),
            }
        } else {
            Admit::No { report: None }
        }
    }

    /// Lines dropped and not reported yet.
    pub fn unreported(&self) -> u64 {
        self.unreported
    }

    /// Takes the lines dropped and not reported yet (for the worker's end).
    pub fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }
}

/// Splits a byte stream into lines of at most `MAX_LINE` bytes.
#[derive(Default)]
pub struct Lines {
    /// The line being read.
    line: Vec<u8>,
    /// The current line was cut: skip the rest of it.
    skipping: bool,
    /// Admitted lines, each ending in `\n`, to send.
    pub out: Vec<u8>,
}

impl Lines {
    /// Splits `bytes` into lines; each complete line goes to `admit`, and
    /// those it admits are kept in `out`.
    pub fn feed(&mut self, mut bytes: &[u8], mut admit: impl FnMut(&[u8]) -> bool) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let part = &bytes[..end.unwrap_or(bytes.len())];
            if !self.skipping {
                let room = MAX_LINE - self.line.len();
                self.line.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room || (end.is_none() && self.line.len() == MAX_LINE) {
                    self.line
                        .extend_from_slice(format!(" [line cut at {MAX_LINE} bytes]").as_bytes());
                    self.finish(&mut admit);
                    self.skipping = true;
                }
            }
            match end {
                Some(i) => {
                    if !self.skipping {
                        self.finish(&mut admit);
                    }
                    self.skipping = false;
                    bytes = &bytes[i + 1..];
                }
                None => bytes = &[],
            }
        }
    }

    /// The stream ended: a last line without its newline still counts.
    pub fn end(&mut self, admit: impl FnMut(&[u8]) -> bool) {
        if !self.line.is_empty() && !self.skipping {
            self.finish(admit);
        }
    }

    fn finish(&mut self, mut admit: impl FnMut(&[u8]) -> bool) {
        if admit(&self.line) {
            self.out.extend_from_slice(&self.line);
            self.out.push(b'\n');
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(b: &mut Budget, n: usize, bytes: usize, now: Instant) -> (usize, Vec<u64>) {
        let mut admitted = 0;
        let mut reports = vec![];
        for _ in 0..n {
            match b.admit(bytes, now) {
                Admit::Yes => admitted += 1,
                Admit::No { report: Some(r) } => reports.push(r),
                Admit::No { report: None } => {}
            }
        }
        (admitted, reports)
    }

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_reported_once() {
        let t = Instant::now();
        let mut b = Budget::new(t);
        let (admitted, reports) = drain(&mut b, 10_000, 10, t);
        assert_eq!(admitted, BURST_LINES as usize);
        assert_eq!(reports, [1], "the first drop is reported at once");
        assert_eq!(b.take_unreported(), 10_000 - BURST_LINES as u64 - 1);
        assert_eq!(b.take_unreported(), 0);
    }

    #[test]
    fn the_budget_refills_at_the_sustained_rate() {
        let t = Instant::now();
        let mut b = Budget::new(t);
        drain(&mut b, 5_000, 10, t);
        let (admitted, _) = drain(&mut b, 5_000, 10, t + Duration::from_secs(1));
        assert_eq!(admitted, LINES_PER_SEC as usize);
        let (admitted, _) = drain(&mut b, 5_000, 10, t + Duration::from_secs(3600));
        assert_eq!(admitted, BURST_LINES as usize, "never more than a burst");
    }

    #[test]
    fn bytes_are_bounded_as_well_as_lines() {
        let t = Instant::now();
        let mut b = Budget::new(t);
        let (admitted, _) = drain(&mut b, 1_000, MAX_LINE, t);
        assert_eq!(admitted, (BURST_BYTES as usize) / MAX_LINE);
    }

    #[test]
    fn drops_are_reported_at_most_every_period_with_their_count() {
        let t = Instant::now();
        let mut b = Budget::new(t);
        drain(&mut b, BURST_LINES as usize, 1, t);
        assert_eq!(drain(&mut b, 100, 1, t).1, [1]);
        let soon = t + REPORT_EVERY / 2;
        let (_, reports) = drain(&mut b, 100, 1_000_000_000, soon);
        assert!(reports.is_empty());
        let later = t + REPORT_EVERY;
        let (_, reports) = drain(&mut b, 1, 1_000_000_000, later);
        assert_eq!(reports, [99 + 100 + 1]);
    }

    fn split(chunks: &[&[u8]], admit_every: usize) -> Vec<String> {
        let mut lines = Lines::default();
        let mut n = 0;
        let mut admit = |_: &[u8]| {
            n += 1;
            n % admit_every == 0
        };
        for c in chunks {
            lines.feed(c, &mut admit);
        }
        lines.end(&mut admit);
        String::from_utf8(lines.out)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn lines_are_whole_across_reads_and_the_last_one_counts() {
        assert_eq!(split(&[b"a\nbb", b"b\n\nc"], 1), ["a", "bbb", "", "c"]);
    }

    #[test]
    fn long_lines_are_cut_and_their_rest_skipped() {
        let long = vec![b'x'; MAX_LINE * 3];
        let got = split(
            &[&long[..MAX_LINE + 5], &long[..MAX_LINE], b"tail\nnext\n"],
            1,
        );
        assert_eq!(
            got.len(),
            2,
            "{:?}",
            got.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert!(got[0].starts_with(&"x".repeat(MAX_LINE)));
        assert!(got[0].ends_with(&format!(" [line cut at {MAX_LINE} bytes]")));
        assert_eq!(got[1], "next");
    }

    #[test]
    fn lines_not_admitted_are_not_kept() {
        assert_eq!(split(&[b"1\n2\n3\n4\n"], 2), ["2", "4"]);
    }
}
