#![no_main]
//! A cipher-suite selector byte and an RMCP/RMCP+ datagram from a BMC: `kiln_bmc::fuzzing::ipmi_datagram`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_bmc::fuzzing::ipmi_datagram(data));
