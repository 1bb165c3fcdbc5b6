//! The agent ramdisk for lab tests: the static kiln-agent and the initramfs built by `kiln_images::ramdisk`,
//! cached under `.cache/ramdisk` (the builder keys its output on every input).

use kiln_images::ramdisk::{self, Ramdisk, RamdiskSpec};

/// Builds (or reuses) the static agent and the ramdisk.
pub fn get() -> anyhow::Result<Ramdisk> {
    crate::state::with_file_lock(&crate::cache_dir().join("ramdisk.lock"), build)
}

fn build() -> anyhow::Result<Ramdisk> {
    let root = crate::repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let agent = ramdisk::build_static_agent(&root, &target)?;
    let cache = crate::cache_dir().join("ramdisk");
    let spec = RamdiskSpec::new(agent, &cache, cache.join("out"));
    Ok(ramdisk::build(&spec)?)
}
