//! kiln-images: image sources, format detection, the streaming decode + verify + write pipeline, config drives,
//! the ramdisk builder, and (in [`protocol`]) the wire types shared by kiln-agent and the appliance.
//!
//! Start with [`write_image`] (the pipeline, in [`pipeline`]), [`qcow2`] (the streaming decoder) and [`digest`];
//! [`oci`] resolves `oci://` images to the registry blob the pipeline streams.

pub mod configdrive;
pub mod digest;
pub mod error;
pub mod fuzzing;
pub mod iso;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub mod protocol;
pub mod qcow2;
pub mod ramdisk;
pub mod rootdev;
pub mod source;
pub mod target;

pub use error::ImageError;
pub use pipeline::{Compression, WriteOptions, WriteReport, write_image, write_image_with_registry};
pub use progress::{Phase, Progress, ProgressSnapshot};
pub use target::{DirectIo, wipe_partition_tables};
