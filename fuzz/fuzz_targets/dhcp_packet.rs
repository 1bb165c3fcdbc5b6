#![no_main]
//! A datagram on the DHCP server ports: `kiln_pxe::fuzzing::dhcp_datagram` (parse, full and proxy decisions).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_pxe::fuzzing::dhcp_datagram(data));
