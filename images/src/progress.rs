//! Progress of one image write, shared between the pipeline's stages and whoever watches it (the agent's progress
//! reports, the CLI's progress bar). Lock-free counters; cloning shares the same counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Pipeline phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    /// Downloading, decoding and writing (they overlap).
    Writing = 1,
    /// fsync of the target.
    Flushing = 2,
    Verifying = 3,
    /// A failure is wiping the target's partition tables.
    Wiping = 4,
    Done = 5,
    Failed = 6,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Writing,
            2 => Self::Flushing,
            3 => Self::Verifying,
            4 => Self::Wiping,
            5 => Self::Done,
            6 => Self::Failed,
            _ => Self::Starting,
        }
    }
    /// The phase name used in [`crate::protocol::Progress::phase`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Writing => "writing",
            Self::Flushing => "flushing",
            Self::Verifying => "verifying",
            Self::Wiping => "wiping",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

const UNKNOWN: u64 = u64::MAX;

#[derive(Debug)]
struct Inner {
    phase: AtomicU8,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    source_size: AtomicU64,
    image_size: AtomicU64,
    started: Instant,
}

/// Shared progress counters of one pipeline run.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Inner>);

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressSnapshot {
    pub phase: Phase,
    /// Published (possibly compressed) bytes received so far.
    pub bytes_read: u64,
    /// Bytes written to the target so far (zero ranges count once written or skipped).
    pub bytes_written: u64,
    /// Size of the published image, when the source told us.
    pub source_size: Option<u64>,
    /// Size of the decoded image (raw size or qcow2 virtual size), once known.
    pub image_size: Option<u64>,
    pub elapsed: Duration,
}

impl ProgressSnapshot {
    /// Average published bytes per second since the start.
    pub fn read_rate(&self) -> f64 {
        self.bytes_read as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
    /// The agent's wire report of this snapshot for command `command_id`.
    pub fn to_protocol(&self, command_id: u64) -> crate::protocol::Progress {
        crate::protocol::Progress {
            command_id,
            phase: self.phase.as_str().to_owned(),
            bytes_read: self.bytes_read,
            bytes_written: self.bytes_written,
            total_bytes: self.image_size.or(self.source_size),
        }
    }
    /// Average written bytes per second since the start.
    pub fn write_rate(&self) -> f64 {
        self.bytes_written as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

impl Progress {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            phase: AtomicU8::new(Phase::Starting as u8),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            source_size: AtomicU64::new(UNKNOWN),
            image_size: AtomicU64::new(UNKNOWN),
            started: Instant::now(),
        }))
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let opt = |v: u64| (v != UNKNOWN).then_some(v);
        ProgressSnapshot {
            phase: Phase::from_u8(self.0.phase.load(Ordering::Relaxed)),
            bytes_read: self.0.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.0.bytes_written.load(Ordering::Relaxed),
            source_size: opt(self.0.source_size.load(Ordering::Relaxed)),
            image_size: opt(self.0.image_size.load(Ordering::Relaxed)),
            elapsed: self.0.started.elapsed(),
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.0.phase.store(phase as u8, Ordering::Relaxed);
    }
    pub(crate) fn add_read(&self, n: u64) {
        self.0.bytes_read.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_written(&self, n: u64) {
        self.0.bytes_written.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn set_source_size(&self, n: u64) {
        self.0.source_size.store(n, Ordering::Relaxed);
    }
    pub(crate) fn set_image_size(&self, n: u64) {
        self.0.image_size.store(n, Ordering::Relaxed);
    }
}
