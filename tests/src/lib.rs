//! kiln's test lab: private network namespaces with a bridge, QEMU VMs on it, BMC emulators (sushy-tools, ipmi_sim)
//! wired to those VMs, and a logs directory per run.
//!
//! Everything the lab starts is recorded under `/run/kiln-lab/<owner-pid>-<n>/` so that a later run can clean up after
//! one that was killed with SIGKILL ([`state::reap_stale`]). Everything is torn down on drop, including on panic.
//! The lab never touches the machine's real networks: addresses live only inside namespaces it created.

pub mod chromium;
pub mod clusterctl;
pub mod cmd;
pub mod failover;
pub mod inproc;
pub mod ipam;
pub mod ipmi;
pub mod ipmi_loopback;
pub mod kube;
pub mod kubeadm;
pub mod lab;
pub mod libvirt;
pub mod logs;
pub mod netns;
pub mod operator;
pub mod osimage;
pub mod pg;
pub mod qemu;
pub mod qemu_user;
pub mod ramdisk;
pub mod registry;
pub mod serve;
pub mod state;
pub mod sushy;
pub mod sushy_loopback;
pub mod vendor_redfish;

use std::path::PathBuf;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The project's cache directory (`.cache/`, git-ignored), where `tests/setup.sh` puts the Python venv.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"))
}

/// kiln's own CA certificate in a data directory, for `curl --cacert` and clients (kiln makes it at its first start).
pub fn lab_ca(kiln_data: &std::path::Path) -> String {
    kiln_http::tls::ca_path(kiln_data).display().to_string()
}

/// A binary of the BMC emulators' Python venv.
pub fn venv_bin(name: &str) -> PathBuf {
    cache_dir().join("venv/bin").join(name)
}

/// Starts a test peer with stdin closed and its stdout and stderr both going to `log` (read when a test fails).
pub fn spawn_logged(cmd: &mut std::process::Command, log: std::fs::File) -> std::io::Result<std::process::Child> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// Finds a free TCP port on loopback (racy by nature; good enough for test peers that need a fixed port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether something listens on `127.0.0.1:port`: a connection reaches it from another port. (When nobody listens on a
/// local port in the ephemeral range, a connect to it can in principle connect to itself, by TCP simultaneous open, if
/// the kernel picks that same port as the source; a readiness loop must not take that for a server.) Who listens is
/// not known from this alone: see `sushy_loopback`'s start, which also checks that its own emulator announced the port.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| s.local_addr().is_ok_and(|a| a.port() != port))
}

/// Finds a free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}
