//! The lab's own record of what it started (process ids, namespaces), kept under `/run/kiln-lab/<owner>-<n>/` so a
//! later run can clean up after a run that was killed with SIGKILL. Owns only that record; starting and stopping
//! things is the other modules' job.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ROOT: &str = "/run/kiln-lab";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The record of one lab: removed (after killing what it lists) on drop.
#[derive(Debug)]
pub struct Record {
    dir: PathBuf,
    id: String,
}

impl Record {
    /// Reaps stale labs of dead owners, then opens a fresh record for this process.
    pub fn new() -> anyhow::Result<Self> {
        reap_stale();
        let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let dir = Path::new(ROOT).join(&id);
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, id })
    }

    /// A short unique id (`<pid>-<n>`) for names of namespaces and domains.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Remembers a process to kill if this lab's owner dies without cleaning up.
    pub fn add_pid(&self, pid: u32) {
        append(&self.dir.join("pids"), &pid.to_string());
    }

    /// Remembers a pid file (written by a daemon the lab starts indirectly) whose process to kill.
    pub fn add_pidfile(&self, path: &Path) {
        append(&self.dir.join("pidfiles"), &path.display().to_string());
    }

    /// Remembers a network namespace to delete.
    pub fn add_netns(&self, name: &str) {
        append(&self.dir.join("netns"), name);
    }

    /// Remembers a libvirt domain to destroy and undefine.
    pub fn add_domain(&self, name: &str) {
        append(&self.dir.join("domains"), name);
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        reap(&self.dir);
    }
}

fn append(file: &Path, line: &str) {
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{line}");
    }
}

fn lines(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Cleans up every lab record whose owner process is gone (a run killed with SIGKILL).
pub fn reap_stale() {
    let Ok(entries) = fs::read_dir(ROOT) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = kill(Pid::from_raw(owner), None).is_ok();
        if !alive {
            eprintln!("kiln-lab: cleaning up after dead lab {name}");
            reap(&entry.path());
        }
    }
}

fn reap(dir: &Path) {
    let mut pids = lines(&dir.join("pids"));
    for pidfile in lines(&dir.join("pidfiles")) {
        if let Ok(pid) = fs::read_to_string(&pidfile) {
            pids.push(pid.trim().to_owned());
        }
    }
    for pid in pids.iter().rev() {
        if let Ok(pid) = pid.parse::<i32>() {
            let pid = Pid::from_raw(pid);
            let _ = kill(pid, Signal::SIGTERM);
            for _ in 0..30 {
                if kill(pid, None).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    for domain in lines(&dir.join("domains")) {
        crate::libvirt::forget_domain(&domain);
    }
    for ns in lines(&dir.join("netns")) {
        crate::cmd::quiet("ip", &["netns", "del", &ns]);
    }
    let _ = fs::remove_dir_all(dir);
}

/// Runs `f` holding an exclusive lock on `path` (created if missing), so that builds of shared cached artifacts
/// (the ramdisk, the OS image) by parallel tests or processes do not step on each other.
pub fn with_file_lock<T>(path: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("lock {}: {e}", path.display()))?;
    f()
}
