#![no_main]
//! A downloaded qcow2 image: `kiln_images::fuzzing::qcow2_image` (header, streaming decode, chunking and re-reads).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_images::fuzzing::qcow2_image(data));
