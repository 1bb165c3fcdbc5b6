//! The one error type of kiln-agent: each variant names the operation that failed and what it acted on.

use std::path::PathBuf;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad kernel command line: {reason}")]
    Cmdline { reason: String },

    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("building the HTTP client")]
    Client {
        #[source]
        source: reqwest::Error,
    },

    #[error("POST {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("POST {url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },

    #[error("opening disk {disk}")]
    OpenDisk {
        disk: String,
        #[source]
        source: std::io::Error,
    },

    #[error("erasing disk {disk} at byte {offset}")]
    EraseDisk {
        disk: String,
        offset: u64,
        #[source]
        source: std::io::Error,
    },

    #[error("choosing the root disk")]
    NoRootDevice {
        #[source]
        source: kiln_images::rootdev::RootDeviceError,
    },

    #[error("writing the image to {disk}")]
    WriteImage {
        disk: String,
        #[source]
        source: kiln_images::ImageError,
    },

    #[error("writing the config drive to {disk}")]
    ConfigDrive {
        disk: String,
        #[source]
        source: kiln_images::ImageError,
    },

    #[error("{action} via reboot(2)")]
    Power {
        action: &'static str,
        #[source]
        source: nix::Error,
    },
}

impl AgentError {
    /// Whether retrying the same operation later may succeed (network trouble, appliance restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Http { .. } => true,
            AgentError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            AgentError::Cmdline { .. }
            | AgentError::Read { .. }
            | AgentError::Client { .. }
            | AgentError::OpenDisk { .. }
            | AgentError::EraseDisk { .. }
            | AgentError::NoRootDevice { .. }
            | AgentError::WriteImage { .. }
            | AgentError::ConfigDrive { .. }
            | AgentError::Power { .. } => false,
        }
    }

    /// The stable machine-readable kind reported in [`kiln_images::protocol::Outcome::Failed`].
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Cmdline { .. } => "cmdline",
            AgentError::Read { .. } => "inspect",
            AgentError::Client { .. } | AgentError::Http { .. } | AgentError::Status { .. } => "api",
            AgentError::OpenDisk { .. } | AgentError::EraseDisk { .. } => "io",
            AgentError::NoRootDevice { .. } => "no_root_device",
            AgentError::WriteImage { source, .. } => source.kind(),
            AgentError::ConfigDrive { source, .. } => source.kind(),
            AgentError::Power { .. } => "power",
        }
    }
}

/// The error and its causes on one line, `a: b: c` (the messages never repeat their cause).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
