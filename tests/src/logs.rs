//! The logs directory of one lab run: every serial console and emulator log lands here, and its path is printed
//! when the run fails so a person can read what happened.

use std::path::{Path, PathBuf};

/// A per-run logs directory under `target/lab-logs/`, kept after the run.
#[derive(Debug)]
pub struct LogDir {
    path: PathBuf,
}

impl LogDir {
    /// Creates `target/lab-logs/<name>-<unix-time>-<pid>`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let path = base_dir().join(format!("{name}-{secs}-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file in this directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lab logs of the failed run kept in {}", self.path.display());
        }
    }
}

/// `target/lab-logs/` (or `KILN_LAB_LOGS`).
pub fn base_dir() -> PathBuf {
    std::env::var_os("KILN_LAB_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/lab-logs"))
}

/// Whether a file under a run's `state/` is bulk the run no longer needs once over: VM disks and UEFI variable
/// stores, OS images and the ramdisk staged for kiln to serve.
fn is_disk_image(path: &Path) -> bool {
    let in_files = path.parent().and_then(Path::file_name).is_some_and(|n| n == "files");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    in_files || matches!(ext, "raw" | "qcow2" | "zst" | "img" | "iso" | "fd")
}

/// Deletes the disk images of one run directory (everything [`is_disk_image`] under `<run>/state`), keeping logs.
/// Returns the bytes freed (allocated blocks, so sparse disks count for what they used).
pub fn remove_disk_images(run: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut freed = 0;
    let mut dirs = vec![run.join("state")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() && is_disk_image(&path) {
                std::fs::remove_file(&path)?;
                freed += meta.blocks() * 512;
            }
        }
    }
    Ok(freed)
}

/// Deletes the disk images of every finished run under [`base_dir`] (runs whose process is gone; the directory
/// name ends in the owner's pid). Returns the runs touched and the bytes freed.
pub fn prune_finished_runs() -> anyhow::Result<(usize, u64)> {
    let (mut runs, mut freed) = (0, 0);
    let Ok(entries) = std::fs::read_dir(base_dir()) else {
        return Ok((0, 0));
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
        if alive {
            continue;
        }
        let n = remove_disk_images(&e.path())?;
        if n > 0 {
            runs += 1;
            freed += n;
        }
    }
    Ok((runs, freed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_images_are_told_from_logs() {
        assert!(is_disk_image(Path::new("/l/run/state/vm-disk0.raw")));
        assert!(is_disk_image(Path::new("/l/run/state/vm-vars.fd")));
        assert!(is_disk_image(Path::new("/l/run/state/files/initramfs")));
        assert!(!is_disk_image(Path::new("/l/run/state/kiln-data/kiln.db")));
        assert!(!is_disk_image(Path::new("/l/run/console-vm.log")));
    }
}
