#![no_main]
//! A datagram on the TFTP port: `kiln_pxe::fuzzing::tftp_request` against a scratch root with boot files and
//! symlinks that stay inside and leave it.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// One root for the whole run; the check only reads it.
static ROOT: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a scratch directory");
    kiln_pxe::fuzzing::tftp_root(dir.path()).expect("the TFTP root is laid out");
    dir
});

fuzz_target!(|data: &[u8]| kiln_pxe::fuzzing::tftp_request(ROOT.path(), data));
