//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) through the checks the fuzz targets run (each in
//! the crate that owns the parser: `kiln_pxe::fuzzing`, `kiln_bmc::fuzzing`, `kiln_images::fuzzing`,
//! `kiln::fuzzing`), so each seed and each crash kept as a regression input is checked by `cargo test` on stable,
//! without libFuzzer.

use std::path::{Path, PathBuf};

/// Runs `check` on every file of `fuzz/corpus/<target>/`; fails naming each file whose check panics, and when the
/// corpus is missing or empty (a replay of nothing would pass without checking anything).
fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} corpus files fail their check: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn dhcp_packet() {
    replay("dhcp_packet", kiln_pxe::fuzzing::dhcp_datagram);
}

#[test]
fn tftp_request() {
    let root = tempfile::tempdir().expect("a scratch directory");
    kiln_pxe::fuzzing::tftp_root(root.path()).expect("the TFTP root is laid out");
    replay("tftp_request", |data| {
        kiln_pxe::fuzzing::tftp_request(root.path(), data)
    });
}

#[test]
fn bmc_address() {
    replay("bmc_address", kiln_bmc::fuzzing::bmc_address);
}

#[test]
fn ipmi_packet() {
    replay("ipmi_packet", kiln_bmc::fuzzing::ipmi_datagram);
}

#[test]
fn redfish_body() {
    replay("redfish_body", kiln_bmc::fuzzing::redfish_body);
}

#[test]
fn qcow2_image() {
    replay("qcow2_image", kiln_images::fuzzing::qcow2_image);
}

#[test]
fn image_checksum() {
    replay("image_checksum", kiln_images::fuzzing::image_checksum);
}

#[test]
fn agent_api() {
    replay("agent_api", kiln::fuzzing::agent_api);
}

#[test]
fn import_manifest() {
    replay("import_manifest", kiln::fuzzing::import_manifest);
}

#[test]
fn oci_reference() {
    replay("oci_reference", kiln_images::fuzzing::oci_reference);
}
