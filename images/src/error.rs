//! The one error enum of kiln-images. Variants are named for the operation that failed and carry what an operator
//! needs to act (URL, path, offset); the cause hangs under `#[source]` and is not repeated in the message.

use std::path::PathBuf;

use crate::qcow2::Qcow2Error;

/// Everything that can go wrong while fetching, decoding, verifying or writing an image, or building a config drive.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image source {source_str:?}")]
    InvalidSource { source_str: String },
    #[error("invalid OCI image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("resolving {reference} in its registry failed: {message}")]
    Registry { reference: String, message: String },
    #[error("image declared as {declared} but {reference} is annotated disktype={disktype}")]
    DisktypeMismatch {
        reference: String,
        declared: &'static str,
        disktype: String,
    },
    #[error("invalid checksum {checksum:?}: {reason}")]
    InvalidChecksum { checksum: String, reason: String },
    #[error("fetching checksum file {url} failed")]
    ChecksumFile {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("checksum file {url} has no entry for {file_name}")]
    ChecksumEntryMissing { url: String, file_name: String },
    #[error("building the HTTP client failed")]
    HttpClient(#[source] reqwest::Error),
    #[error("downloading {url} failed after {bytes} bytes")]
    Download {
        url: String,
        bytes: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("HTTP status {status} from {url}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url} ended after {received} of {expected} bytes")]
    Truncated { url: String, received: u64, expected: u64 },
    #[error("reading local image {path} failed")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decompressing the {compression} stream failed")]
    Decompress {
        compression: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding the qcow2 image failed")]
    Qcow2(#[source] Qcow2Error),
    #[error("image declared as {declared} but its bytes are {detected}")]
    FormatMismatch {
        declared: &'static str,
        detected: &'static str,
    },
    #[error("unsupported image format: {what}")]
    UnsupportedFormat { what: String },
    #[error("checksum mismatch for {url}: expected {algorithm} {expected}, computed {actual}")]
    ChecksumMismatch {
        url: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("image needs {needed} bytes but target {target} holds only {available}")]
    TargetTooSmall {
        target: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("opening target {target} failed")]
    OpenTarget {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing target {target} at offset {offset} failed")]
    Write {
        target: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("flushing target {target} failed")]
    Flush {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wiping the partition tables of {target} failed")]
    Wipe {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the config drive filesystem failed")]
    ConfigDriveBuild(#[source] std::io::Error),
    #[error("adding the config drive partition to {disk} failed: {reason}")]
    ConfigDrivePartition { disk: PathBuf, reason: String },
    #[error("config drive I/O on {disk} failed")]
    ConfigDriveIo {
        disk: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("internal pipeline task failed")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ImageError {
    /// Whether retrying the same operation later may succeed (network trouble, a 5xx), as opposed to a bad image,
    /// a wrong checksum or a broken disk.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Download { .. } | Self::Truncated { .. } | Self::ChecksumFile { .. } => true,
            Self::HttpStatus { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// The stable, machine-readable failure kind reported to the appliance in
    /// [`crate::protocol::Outcome::Failed`]`::kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidSource { .. } | Self::InvalidReference { .. } | Self::InvalidChecksum { .. } => {
                "invalid_request"
            }
            Self::Registry { .. } => "registry",
            Self::ChecksumFile { .. } | Self::ChecksumEntryMissing { .. } => "checksum_file",
            Self::HttpClient(_) | Self::Download { .. } | Self::HttpStatus { .. } | Self::ReadSource { .. } => {
                "download"
            }
            Self::Truncated { .. } => "truncated",
            Self::Decompress { .. } | Self::Qcow2(_) => "decode",
            Self::FormatMismatch { .. } | Self::DisktypeMismatch { .. } | Self::UnsupportedFormat { .. } => {
                "unsupported_format"
            }
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::TargetTooSmall { .. } => "target_too_small",
            Self::OpenTarget { .. } | Self::Write { .. } | Self::Flush { .. } | Self::Wipe { .. } => "io",
            Self::ConfigDriveBuild(_) | Self::ConfigDrivePartition { .. } | Self::ConfigDriveIo { .. } => {
                "config_drive"
            }
            Self::Internal(_) => "internal",
        }
    }
}
