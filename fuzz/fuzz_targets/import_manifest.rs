#![no_main]
//! A `kiln import` file of BareMetalHost manifests and Secrets: `kiln::fuzzing::import_manifest`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln::fuzzing::import_manifest(data));
