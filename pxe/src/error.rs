//! The crate's one error enum: what failed while starting or running the netboot services.

use std::path::PathBuf;

/// Errors of the netboot services. Messages name the operation; the cause is under `source`.
#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    /// The configuration is inconsistent (reported at start-up, never at the first packet).
    #[error("invalid netboot configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A DHCP or TFTP socket could not be opened, configured or bound.
    #[error("cannot open {what} socket on interface {iface:?}")]
    Socket {
        /// Which socket (`dhcp`, `proxy-dhcp`, `tftp`).
        what: &'static str,
        /// Interface it was bound to.
        iface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lease journal could not be read or written.
    #[error("lease store {path:?} failed")]
    LeaseStore {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A boot file could not be staged into the served directory.
    #[error("cannot stage boot file {path:?}")]
    Stage {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TFTP server's socket failed.
    #[error("TFTP server failed")]
    Tftp {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A service task ended with a panic or was aborted.
    #[error("netboot task {task} ended abnormally")]
    Task {
        /// Which task.
        task: &'static str,
    },
}

impl PxeError {
    /// Whether retrying the same operation later may succeed (I/O hiccups), as opposed to a configuration error.
    pub fn is_transient(&self) -> bool {
        match self {
            PxeError::Config { .. } | PxeError::Task { .. } => false,
            PxeError::Socket { source, .. } => matches!(source.kind(), std::io::ErrorKind::AddrInUse),
            PxeError::LeaseStore { .. } | PxeError::Stage { .. } | PxeError::Tftp { .. } => true,
        }
    }
}
