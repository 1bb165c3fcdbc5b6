#![no_main]
//! An `oci://` image reference and a Kubernetes pull secret: `kiln_images::fuzzing::oci_reference`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_images::fuzzing::oci_reference(data));
