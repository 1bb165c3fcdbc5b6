//! What the agent shows: `KILN-AGENT <phase>` markers on the console for people and tests, and a ring buffer of the
//! last log lines (a tracing writer that tees into stderr) whose tail goes into a failed command's result.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Lines kept for failure reports.
const TAIL_LINES: usize = 40;

/// The last [`TAIL_LINES`] lines logged, shared by every writer clone.
#[derive(Debug, Clone, Default)]
pub struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    /// Appends one line (also used for markers).
    pub fn push(&self, line: &str) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for l in line.lines() {
            if q.len() == TAIL_LINES {
                q.pop_front();
            }
            q.push_back(l.to_string());
        }
    }

    /// The kept lines, oldest first, joined with newlines.
    pub fn tail(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Prints `KILN-AGENT <phase>` on stderr (the console in the ramdisk) and keeps it in the tail.
    pub fn marker(&self, phase: &str) {
        let line = format!("KILN-AGENT {phase}");
        let _ = writeln!(std::io::stderr(), "{line}");
        self.push(&line);
    }
}

/// A `tracing` writer: every write goes to stderr and into the [`LogTail`].
#[derive(Debug)]
pub struct TeeWriter(LogTail);

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(String::from_utf8_lossy(buf).trim_end());
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTail {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> Self::Writer {
        TeeWriter(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_lines() {
        let t = LogTail::default();
        for i in 0..100 {
            t.push(&format!("line {i}"));
        }
        t.push("a\nb");
        let tail = t.tail();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.last(), Some(&"b"));
        assert_eq!(lines[0], "line 62");
    }
}
