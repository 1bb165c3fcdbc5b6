//! Shared test harness: the cached ramdisk, a stand-in appliance (the four `/agent/v1` endpoints plus an image
//! route) on loopback, and a QEMU VM guard that kills QEMU on drop and keeps the serial log.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kiln_images::protocol::{
    Command as AgentCommand, CommandKind, CommandResult, HardwareInventory, Heartbeat, HeartbeatReply, Progress,
};
use kiln_images::ramdisk::{self, Ramdisk, RamdiskSpec};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the static agent and the ramdisk once per test binary (both cached on disk across runs).
pub fn ramdisk() -> Ramdisk {
    static ONCE: Mutex<Option<Ramdisk>> = Mutex::new(None);
    let mut g = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = g.as_ref() {
        return r.clone();
    }
    let root = workspace_root();
    // The workspace's target dir: `cargo test` has released its build lock by the time tests run.
    let target = std::env::var_os("KILN_AGENT_TARGET_DIR")
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let t = Instant::now();
    let agent = ramdisk::build_static_agent(&root, &target).expect("static kiln-agent build");
    eprintln!("static agent ready in {:?}: {}", t.elapsed(), agent.display());
    let cache = root.join(".cache/ramdisk");
    let spec = RamdiskSpec::new(agent, &cache, cache.join("out"));
    let t = Instant::now();
    let r = ramdisk::build(&spec).expect("ramdisk build");
    eprintln!(
        "ramdisk ({} bytes, cached: {}) ready in {:?}",
        r.bytes,
        r.cached,
        t.elapsed()
    );
    *g = Some(r.clone());
    r
}

/// What the stand-in appliance saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub heartbeats: Vec<Heartbeat>,
    pub inventory: Vec<HardwareInventory>,
    pub progress: Vec<Progress>,
    pub results: Vec<CommandResult>,
    pub unauthorized: u32,
}

/// A minimal appliance: hands out `script` one command at a time, the next only after the previous result arrived.
#[derive(Debug)]
pub struct Appliance {
    pub token: String,
    pub script: Mutex<VecDeque<AgentCommand>>,
    pub current: Mutex<Option<AgentCommand>>,
    pub seen: Mutex<Seen>,
}

fn authorized(app: &Appliance, h: &HeaderMap) -> bool {
    let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", app.token));
    if !ok {
        app.seen.lock().unwrap().unauthorized += 1;
    }
    ok
}

async fn heartbeat(
    State(app): State<Arc<Appliance>>,
    h: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Result<Json<HeartbeatReply>, StatusCode> {
    if !authorized(&app, &h) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    app.seen.lock().unwrap().heartbeats.push(hb);
    let mut cur = app.current.lock().unwrap();
    let done = |c: &AgentCommand| app.seen.lock().unwrap().results.iter().any(|r| r.command_id == c.id);
    if cur.as_ref().is_none_or(done) {
        *cur = app.script.lock().unwrap().pop_front();
    }
    Ok(Json(HeartbeatReply {
        command: cur.clone(),
        interval_secs: 1,
    }))
}

async fn inventory(State(app): State<Arc<Appliance>>, h: HeaderMap, Json(inv): Json<HardwareInventory>) -> StatusCode {
    if !authorized(&app, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    app.seen.lock().unwrap().inventory.push(inv);
    StatusCode::NO_CONTENT
}

async fn progress(State(app): State<Arc<Appliance>>, h: HeaderMap, Json(p): Json<Progress>) -> StatusCode {
    if !authorized(&app, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    app.seen.lock().unwrap().progress.push(p);
    StatusCode::NO_CONTENT
}

async fn result(State(app): State<Arc<Appliance>>, h: HeaderMap, Json(r): Json<CommandResult>) -> StatusCode {
    if !authorized(&app, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    app.seen.lock().unwrap().results.push(r);
    StatusCode::NO_CONTENT
}

/// Starts the appliance on `127.0.0.1:0`; returns it and its port. The server task ends with the runtime.
/// Starts the appliance on `127.0.0.1:0`; returns it and its port.
pub async fn start_appliance(token: &str, script: Vec<CommandKind>, files: &Path) -> (Arc<Appliance>, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (serve(listener, token, script, files), port)
}

/// Starts the appliance on a given loopback port.
pub async fn start_appliance_on(port: u16, token: &str, script: Vec<CommandKind>, files: &Path) -> Arc<Appliance> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    serve(listener, token, script, files)
}

/// Files under `files` are served at `/files/...` (with Range support). The server task ends with the runtime.
fn serve(listener: tokio::net::TcpListener, token: &str, script: Vec<CommandKind>, files: &Path) -> Arc<Appliance> {
    let app = Arc::new(Appliance {
        token: token.to_string(),
        script: Mutex::new(
            script
                .into_iter()
                .enumerate()
                .map(|(i, kind)| AgentCommand { id: i as u64 + 1, kind })
                .collect(),
        ),
        current: Mutex::new(None),
        seen: Mutex::new(Seen::default()),
    });
    let router = axum::Router::new()
        .route("/agent/v1/heartbeat", post(heartbeat))
        .route("/agent/v1/inventory", post(inventory))
        .route("/agent/v1/progress", post(progress))
        .route("/agent/v1/result", post(result))
        .with_state(app.clone())
        .nest_service("/files", tower_http::services::ServeDir::new(files));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    app
}

/// A QEMU process killed (by PID) on drop; its serial console goes to `serial`.
pub struct Vm {
    child: Child,
    pub serial: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The VM's shape, as the test configures it and later expects in the inventory.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub cpus: u32,
    pub memory_mib: u64,
    pub mac: String,
    pub disk: PathBuf,
    pub disk_serial: String,
    /// More virtio disks, after `disk`.
    pub extra_disks: Vec<PathBuf>,
    pub system_serial: String,
    pub uuid: String,
    pub append: String,
}

impl Vm {
    pub fn start(r: &Ramdisk, spec: &VmSpec, dir: &Path) -> Vm {
        Vm::boot(&r.kernel, &r.initramfs, spec, dir, "serial.log")
    }

    /// Direct kernel boot of `kernel` + `initrd`; the console goes to `dir/serial_name`.
    pub fn boot(kernel: &Path, initrd: &Path, spec: &VmSpec, dir: &Path, serial_name: &str) -> Vm {
        Vm::spawn(Some((kernel, initrd)), spec, dir, serial_name)
    }

    /// Firmware (SeaBIOS) boot from the VM's first disk.
    pub fn boot_disk(spec: &VmSpec, dir: &Path, serial_name: &str) -> Vm {
        Vm::spawn(None, spec, dir, serial_name)
    }

    fn spawn(kernel: Option<(&Path, &Path)>, spec: &VmSpec, dir: &Path, serial_name: &str) -> Vm {
        let serial = dir.join(serial_name);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(["-smp", &spec.cpus.to_string(), "-m", &spec.memory_mib.to_string()])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=d0,cache=unsafe",
            spec.disk.display()
        ))
        .args([
            "-device",
            &format!("virtio-blk-pci,drive=d0,serial={}", spec.disk_serial),
        ])
        .args(["-netdev", "user,id=n0"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={}", spec.mac)])
        .args(["-smbios", &format!("type=1,serial={}", spec.system_serial)])
        .args(["-uuid", &spec.uuid])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{serial_name}.qemu-stdout"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{serial_name}.qemu-stderr"))).unwrap());
        if let Some((kernel, initrd)) = kernel {
            cmd.arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .args(["-append", &spec.append]);
        } else {
            cmd.args(["-boot", "c"]);
        }
        for (i, extra) in spec.extra_disks.iter().enumerate() {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=x{i},cache=unsafe",
                    extra.display()
                ))
                .args(["-device", &format!("virtio-blk-pci,drive=x{i}")]);
        }
        let child = cmd.spawn().expect("qemu-system-x86_64 (tests/setup.sh installs it)");
        Vm { child, serial }
    }

    /// Waits for QEMU to exit (the agent powered the VM off), up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    pub fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }
}
