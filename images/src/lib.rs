//! kiln-images: image sources, format detection, the streaming decode + verify + write pipeline, config drives,
//! the ramdisk builder, and (in [`protocol`]) the wire types shared by kiln-agent and the appliance.
//!
//! Start with [`write_image`] (the pipeline, in [`pipeline`]), [`qcow2`] (the streaming decoder) and [`digest`].

pub mod configdrive;
pub mod digest;
pub mod error;
pub mod fuzzing;
pub mod iso;
pub mod pipeline;
pub mod progress;
pub mod protocol;
pub mod qcow2;
pub mod ramdisk;
pub mod rootdev;
pub mod source;
pub mod target;

pub use error::ImageError;
pub use pipeline::{Compression, WriteOptions, WriteReport, write_image};
pub use progress::{Phase, Progress, ProgressSnapshot};
pub use target::{DirectIo, wipe_partition_tables};
