//! Shared helpers of the kiln-images component tests: test images made with qemu-img and friends, a loopback HTTP
//! server that can refuse ranges and drop connections, loop devices with a guard.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use sha2::Digest;

pub fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (tests/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sh_out(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

pub fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// Deterministic pseudo-random bytes (xorshift), so images are the same in every run.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A 24 MiB raw disk with a GPT (one partition), incompressible data, text and zero holes.
pub fn make_raw(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    let mut img = vec![0u8; 24 << 20];
    img[(2 << 20)..(6 << 20)].copy_from_slice(&noise(1, 4 << 20));
    let text = b"kiln streams images; ".repeat(200_000);
    img[(8 << 20)..(8 << 20) + text.len()].copy_from_slice(&text);
    img[(20 << 20) + 4096..(21 << 20) + 777].copy_from_slice(&noise(2, (1 << 20) + 777 - 4096));
    std::fs::write(&p, &img).unwrap();
    sh("sgdisk", &["-n", "1:2048:+16M", "-t", "1:8300", p.to_str().unwrap()]);
    p
}

/// `qemu-img convert -O raw` of `img`: the reference bytes.
pub fn reference_raw(img: &Path, dir: &Path) -> String {
    let out = dir.join(format!("{}.ref", img.file_name().unwrap().to_string_lossy()));
    sh(
        "qemu-img",
        &["convert", "-O", "raw", img.to_str().unwrap(), out.to_str().unwrap()],
    );
    let d = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    d
}

pub fn qcow2(raw: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = raw.with_file_name(name);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[raw.to_str().unwrap(), out.to_str().unwrap()]);
    sh("qemu-img", &args);
    out
}

/// Compresses `input` with a CLI (`gzip`, `zstd`, `xz`, `bzip2`) into `input.ext`.
pub fn compress(input: &Path, tool: &str, ext: &str) -> PathBuf {
    let out = PathBuf::from(format!("{}.{ext}", input.display()));
    let data = Command::new(tool)
        .args(["-c", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(data.status.success(), "{tool} failed");
    std::fs::write(&out, data.stdout).unwrap();
    out
}

/// True when the first and last MiB of `p` are zero (no MBR, primary or backup GPT).
pub fn has_no_partition_table(p: &Path) -> bool {
    let d = std::fs::read(p).unwrap();
    let mib = 1 << 20;
    let head_zero = d[..d.len().min(mib)].iter().all(|b| *b == 0);
    let tail_zero = d[d.len().saturating_sub(mib)..].iter().all(|b| *b == 0);
    let blkid = sh_out("blkid", &["-p", "-o", "value", "-s", "PTTYPE", p.to_str().unwrap()]);
    head_zero && tail_zero && String::from_utf8_lossy(&blkid.stdout).trim().is_empty()
}

/// How the test HTTP server misbehaves.
#[derive(Debug, Default)]
pub struct ServerConfig {
    pub ranges: bool,
    /// Cut this many responses after `cut_after` bytes of body.
    pub cuts: AtomicU32,
    pub cut_after: u64,
    /// Never send more than this many bytes of any file (a download that can never finish).
    pub truncate_at: Option<u64>,
}

#[derive(Debug)]
pub struct Server {
    pub base: String,
    pub requests: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the files of `dir` on 127.0.0.1:0 with the given behaviour.
pub async fn serve(dir: PathBuf, cfg: ServerConfig) -> Server {
    use axum::body::Body;
    use axum::extract::{Path as AxPath, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::Response;

    #[derive(Clone)]
    struct St {
        dir: PathBuf,
        cfg: Arc<ServerConfig>,
        requests: Arc<Mutex<Vec<Option<String>>>>,
    }
    async fn file(State(st): State<St>, AxPath(name): AxPath<String>, headers: HeaderMap) -> Response {
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        st.requests.lock().unwrap().push(range.clone());
        let Ok(data) = std::fs::read(st.dir.join(&name)) else {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Body::empty())
                .unwrap();
        };
        let total = data.len() as u64;
        let mut start = 0u64;
        let mut b = Response::builder().header(header::ETAG, format!("\"{total}\""));
        if st.cfg.ranges {
            b = b.header(header::ACCEPT_RANGES, "bytes");
            if let Some(r) = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
            {
                start = r.parse().unwrap();
                b = b
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{total}", total - 1));
            }
        }
        let body_len = total - start;
        let mut limit = st.cfg.truncate_at.map_or(u64::MAX, |t| t.saturating_sub(start));
        if st.cfg.cuts.load(Ordering::SeqCst) > 0 {
            st.cfg.cuts.fetch_sub(1, Ordering::SeqCst);
            limit = limit.min(st.cfg.cut_after);
        }
        let body: Vec<u8> = data[start as usize..].to_vec();
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = {
            let mut v = Vec::new();
            let mut sent = 0u64;
            for c in body.chunks(64 << 10) {
                if sent + c.len() as u64 > limit {
                    let keep = (limit - sent) as usize;
                    v.push(Ok(bytes::Bytes::copy_from_slice(&c[..keep])));
                    v.push(Err(std::io::Error::other("connection dropped by the test")));
                    break;
                }
                sent += c.len() as u64;
                v.push(Ok(bytes::Bytes::copy_from_slice(c)));
            }
            v
        };
        let stream = futures::stream::iter(chunks);
        b.header(header::CONTENT_LENGTH, body_len)
            .body(Body::from_stream(stream))
            .unwrap()
    }

    let requests = Arc::new(Mutex::new(Vec::new()));
    let st = St {
        dir,
        cfg: Arc::new(cfg),
        requests: requests.clone(),
    };
    let app = axum::Router::new()
        .route("/{name}", axum::routing::get(file))
        .with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { base, requests, task }
}

/// A loop device over a file, detached on drop.
#[derive(Debug)]
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// `None` only when the machine has no loop device support at all.
    pub fn attach(file: &Path) -> Option<Self> {
        if !Path::new("/dev/loop-control").exists() {
            eprintln!("no /dev/loop-control: skipping the block-device part");
            return None;
        }
        let out = sh_out("losetup", &["-f", "--show", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self {
            dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .args(["-d", self.dev.to_str().unwrap()])
            .status();
    }
}
