//! kiln-images: image sources, format detection, the streaming decode + verify + write pipeline, config drives and the ramdisk builder.
