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
        let base = std::env::var_os("KILN_LAB_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("target/lab-logs"));
        let path = base.join(format!("{name}-{secs}-{}", std::process::id()));
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
