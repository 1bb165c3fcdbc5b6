//! Test lab: private network namespaces joined by veth pairs on a bridge, the `kiln-pxe-lab` binary inside one of
//! them, and guards that kill every process started (by PID) and delete the namespaces, even when a test fails.
//!
//! Layout: `<base>-s` holds bridge `br0` with 10.99.0.1/24 (kiln); `<base>-c` holds the clients, one veth each;
//! optional `<base>-x` holds a "site" DHCP server at 10.99.0.2 on the same bridge.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub const SERVER: &str = "10.99.0.1";

pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

fn sh(args: &[&str]) {
    let out = run(Command::new(args[0]).args(&args[1..]));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes `kiln-pxe-<pid>-*` namespaces left by runs whose process is gone.
fn clean_leftovers() {
    let out = run(Command::new("ip").args(["netns", "list"]));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(rest) = name.strip_prefix("kiln-pxe-")
            && let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

pub struct Lab {
    pub base: String,
    pub srv: String,
    pub cli: String,
    pub site: Option<String>,
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    nclients: usize,
}

pub struct Proc {
    pub pid: u32,
    pub log: PathBuf,
}

impl Lab {
    pub fn new() -> Self {
        clean_leftovers();
        let base = format!("kiln-pxe-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let (srv, cli) = (format!("{base}-s"), format!("{base}-c"));
        let lab = Self {
            base,
            srv: srv.clone(),
            cli: cli.clone(),
            site: None,
            dir: tempfile::tempdir().unwrap(),
            children: vec![],
            nclients: 0,
        };
        sh(&["ip", "netns", "add", &srv]);
        sh(&["ip", "netns", "add", &cli]);
        sh(&["ip", "-n", &srv, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &cli, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &srv, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &srv, "addr", "add", &format!("{SERVER}/24"), "dev", "br0"]);
        sh(&["ip", "-n", &srv, "link", "set", "br0", "up"]);
        lab
    }

    /// A veth into the bridge whose far end `name` (with `mac`) sits in namespace `ns`.
    fn attach(&mut self, ns: &str, name: &str, mac: &str) {
        self.nclients += 1;
        let peer = format!("p{}", self.nclients);
        sh(&[
            "ip", "link", "add", name, "netns", ns, "address", mac, "type", "veth", "peer", "name", &peer, "netns",
            &self.srv,
        ]);
        sh(&["ip", "-n", &self.srv, "link", "set", &peer, "master", "br0", "up"]);
        sh(&["ip", "-n", ns, "link", "set", name, "up"]);
    }

    pub fn add_client(&mut self, name: &str, mac: &str) {
        let cli = self.cli.clone();
        self.attach(&cli, name, mac);
    }

    /// A third namespace with a "site" interface `site0` at 10.99.0.2/24 on the bridge.
    pub fn add_site(&mut self) -> String {
        let site = format!("{}-x", self.base);
        sh(&["ip", "netns", "add", &site]);
        sh(&["ip", "-n", &site, "link", "set", "lo", "up"]);
        self.site = Some(site.clone());
        self.attach(&site, "site0", "02:99:00:00:00:02");
        sh(&["ip", "-n", &site, "addr", "add", "10.99.0.2/24", "dev", "site0"]);
        site
    }

    /// A persistent tap `name` in the server namespace, on the bridge, for a QEMU VM.
    pub fn add_tap(&self, name: &str) {
        sh(&["ip", "-n", &self.srv, "tuntap", "add", "dev", name, "mode", "tap"]);
        sh(&["ip", "-n", &self.srv, "link", "set", name, "master", "br0", "up"]);
    }

    pub fn netns_cmd(ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]);
        c
    }

    /// Starts a background process (already configured), remembered for the drop guard; stderr+stdout to a log file.
    pub fn spawn_bg(&mut self, label: &str, mut cmd: Command) -> Proc {
        let log = self.dir.path().join(format!("{label}.log"));
        let f = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let pid = child.id();
        self.children.push((label.to_owned(), child));
        Proc { pid, log }
    }

    /// Starts `kiln-pxe-lab` in the server namespace and waits for `READY`.
    pub fn start_kiln(
        &mut self,
        label: &str,
        cfg: &serde_json::Value,
        hosts: &serde_json::Value,
        http: Option<&str>,
    ) -> Proc {
        let cfg_path = self.dir.path().join(format!("{label}-config.json"));
        let hosts_path = self.dir.path().join(format!("{label}-hosts.json"));
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
        std::fs::write(&hosts_path, serde_json::to_vec_pretty(hosts).unwrap()).unwrap();
        let log = self.dir.path().join(format!("{label}.log"));
        let mut cmd = Self::netns_cmd(&self.srv, env!("CARGO_BIN_EXE_kiln-pxe-lab"));
        cmd.arg(&cfg_path).arg(&hosts_path);
        if let Some(h) = http {
            cmd.arg(h);
        }
        cmd.env("RUST_LOG", "debug,async_tftp=info,hyper=info,tower_http=info");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("spawn kiln-pxe-lab");
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        self.children.push((label.to_owned(), child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.starts_with("READY") => {}
            other => panic!(
                "kiln-pxe-lab did not start ({other:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
        Proc { pid, log }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; returns the process log.
    pub fn stop(&mut self, p: &Proc) -> String {
        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGTERM);
        if let Some(i) = self.children.iter().position(|(_, c)| c.id() == p.pid) {
            let (_, mut c) = self.children.remove(i);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::read_to_string(&p.log).unwrap_or_default()
    }

    pub fn keep_logs_hint(&self) -> String {
        format!("lab dir {}", self.dir.path().display())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(200));
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            // Keep the logs of a failed run.
            let kept = self.dir.path().to_owned();
            let dst = std::env::temp_dir().join(format!("{}-logs", self.base));
            let _ = Command::new("cp").arg("-r").arg(&kept).arg(&dst).status();
            eprintln!("lab logs kept in {}", dst.display());
        }
        for ns in [Some(&self.srv), Some(&self.cli), self.site.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `cmd` with a deadline; returns (exited in time, status success).
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (bool, bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (true, st.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (false, false, text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `path` until it contains `needle` or `limit` passes; returns the file's text.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> (bool, String) {
    let deadline = Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if text.contains(needle) {
            return (true, text);
        }
        if Instant::now() > deadline {
            return (false, text);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Parses `KEY=VALUE` lines.
pub fn env_lines(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}
