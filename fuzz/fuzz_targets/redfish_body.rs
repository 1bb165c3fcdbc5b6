#![no_main]
//! A Redfish response body: `kiln_bmc::fuzzing::redfish_body` (every resource type, every link it carries).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_bmc::fuzzing::redfish_body(data));
