//! kiln-images: image sources, format detection, the streaming decode + verify + write pipeline, config drives,
//! the ramdisk builder, and (in [`protocol`]) the wire types shared by kiln-agent and the appliance.

pub mod protocol;
pub mod ramdisk;
