#![no_main]
//! A BMC address from a user or a manifest: `kiln_bmc::fuzzing::bmc_address`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_bmc::fuzzing::bmc_address(data));
