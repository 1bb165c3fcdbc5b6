//! The end-to-end tests' OS image (Debian 12 with cloud-init) and its Kubernetes node variant, built and cached by
//! `tests/os-image/build.sh`.
//! Owns finding (or building) it; what boots it is the tests' business.

use std::path::PathBuf;

use anyhow::Context;

/// The built image files.
#[derive(Debug, Clone)]
pub struct OsImage {
    pub dir: PathBuf,
}

impl OsImage {
    /// Builds the image if the cache lacks it (several minutes the first time), then returns its directory.
    pub fn get() -> anyhow::Result<Self> {
        crate::state::with_file_lock(&crate::cache_dir().join("os-image.lock"), Self::build)
    }

    /// The Kubernetes node variant (only `debian.qcow2`): the same system plus containerd, runc and the real
    /// kubelet and kubeadm built by `tests/kube/build.sh` (see `tests/os-image/build-node.sh`).
    pub fn node() -> anyhow::Result<Self> {
        // The node image starts from the base image, so it takes the base's lock too.
        crate::state::with_file_lock(&crate::cache_dir().join("os-image.lock"), || {
            Self::build_with("tests/os-image/build-node.sh")
        })
    }

    fn build() -> anyhow::Result<Self> {
        Self::build_with("tests/os-image/build.sh")
    }

    fn build_with(script: &str) -> anyhow::Result<Self> {
        let script = crate::repo_root().join(script);
        let out = std::process::Command::new("bash")
            .arg(&script)
            .env("KILN_CACHE", crate::cache_dir())
            .env("KUBE_BIN", crate::kube::bin_dir())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        anyhow::ensure!(out.status.success(), "{} failed", script.display());
        let dir = PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap_or_default(),
        );
        anyhow::ensure!(dir.join("SHA256SUMS").is_file(), "no SHA256SUMS in {}", dir.display());
        Ok(Self { dir })
    }

    pub fn raw(&self) -> PathBuf {
        self.dir.join("debian.raw")
    }

    pub fn qcow2(&self) -> PathBuf {
        self.dir.join("debian.qcow2")
    }

    pub fn raw_zst(&self) -> PathBuf {
        self.dir.join("debian.raw.zst")
    }

    /// The sha256 of one of the files, from SHA256SUMS.
    pub fn sha256(&self, file: &str) -> anyhow::Result<String> {
        let sums = std::fs::read_to_string(self.dir.join("SHA256SUMS"))?;
        sums.lines()
            .find_map(|l| {
                l.split_once("  ")
                    .filter(|(_, f)| *f == file)
                    .map(|(h, _)| h.to_owned())
            })
            .with_context(|| format!("{file} not in SHA256SUMS"))
    }
}
