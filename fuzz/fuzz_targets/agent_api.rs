#![no_main]
//! A request body on the agent API: `kiln::fuzzing::agent_api` (every `kiln_images::protocol` type it reads).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln::fuzzing::agent_api(data));
