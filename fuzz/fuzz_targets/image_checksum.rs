#![no_main]
//! A checksum line and a downloaded checksum file: `kiln_images::fuzzing::image_checksum`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_images::fuzzing::image_checksum(data));
