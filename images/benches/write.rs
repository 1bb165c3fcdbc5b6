//! Image write benchmark (not a timed test): the same 1 GiB of content written to the same kind of target by
//! `dd bs=4M oflag=direct`, by kiln's pipeline (raw, zstd-compressed raw, qcow2) and by `qemu-img convert`, in one
//! run. Prints MB/s, ratios against dd, and kiln's peak RSS per run.
//!
//! `cargo bench -p kiln-images --bench write` (set `KILN_BENCH_MIB` to change the size, `KILN_BENCH_DIR` for the
//! scratch directory; default: a temp dir under the target directory's filesystem).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln_images::pipeline::{WriteOptions, run};
use kiln_images::{DirectIo, Progress};

fn noise(x: &mut u64, out: &mut [u8]) {
    for c in out.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

/// Half incompressible, a quarter text, a quarter zeros (per 4 MiB), written in 4 MiB chunks.
fn make_source(path: &Path, mib: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = 0x9e3779b97f4a7c15u64;
    let text = b"kiln writes images to bare metal machines; ".repeat(100_000);
    let mut chunk = vec![0u8; 4 << 20];
    for _ in 0..mib / 4 {
        noise(&mut x, &mut chunk[..2 << 20]);
        chunk[2 << 20..3 << 20].copy_from_slice(&text[..1 << 20]);
        chunk[3 << 20..].fill(0);
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
}

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    assert!(st.is_ok_and(|s| s.success()), "{cmd} {args:?} failed");
}

fn timed(f: impl FnOnce()) -> f64 {
    sh("sync", &[]);
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs one kiln write in a fresh child process (so its peak RSS is its own) and returns (seconds, peak RSS MiB).
fn kiln(src: &Path, dst: &Path, direct: DirectIo) -> (f64, f64) {
    sh("sync", &[]);
    let out = Command::new(std::env::current_exe().unwrap())
        .env(
            "KILN_BENCH_CHILD",
            format!("{}|{}|{}", src.display(), dst.display(), direct == DirectIo::Always),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "child: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn child(spec: &str) {
    let mut parts = spec.split('|');
    let (src, dst, direct) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap() == "true",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = WriteOptions {
        direct: if direct { DirectIo::Always } else { DirectIo::Never },
        client: None,
    };
    let t = Instant::now();
    rt.block_on(run(src, None, None, Some(Path::new(dst)), &Progress::new(), &opts))
        .unwrap();
    println!("{} {}", t.elapsed().as_secs_f64(), peak_rss_mib());
}

fn main() {
    if let Ok(spec) = std::env::var("KILN_BENCH_CHILD") {
        return child(&spec);
    }
    let mib: usize = std::env::var("KILN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let base = std::env::var("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).unwrap();
    let d = dir.path();
    let (src, qcow, zst, dst) = (
        d.join("src.raw"),
        d.join("src.qcow2"),
        d.join("src.raw.zst"),
        d.join("dst"),
    );
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    make_source(&src, mib);
    sh(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &s(&src), &s(&qcow)],
    );
    sh("zstd", &["-q", "-T0", "-3", "-f", &s(&src), "-o", &s(&zst)]);
    let bytes = (mib as f64) * 1048576.0;
    let rate = |secs: f64| bytes / secs / 1e6;
    println!("image write benchmark: {mib} MiB, scratch {}", d.display());
    println!("{:<44} {:>9} {:>8} {:>10}", "run", "MB/s", "vs dd", "peak RSS");

    let mut targets = vec![("file".to_owned(), dst.clone())];
    let loop_backing = d.join("loop.img");
    let mut loopdev = None;
    if Path::new("/dev/loop-control").exists() {
        std::fs::File::create(&loop_backing)
            .unwrap()
            .set_len((mib as u64 + 16) << 20)
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", &s(&loop_backing)])
            .output()
            .unwrap();
        if out.status.success() {
            let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            targets.push((format!("loop {}", dev.display()), dev.clone()));
            loopdev = Some(dev);
        }
    }
    for (kind, t) in &targets {
        // Warm-up (allocates the loop device's backing blocks; not measured).
        sh(
            "dd",
            &[
                &format!("if={}", s(&src)),
                &format!("of={}", s(t)),
                "bs=4M",
                "oflag=direct",
            ],
        );
        let dd = timed(|| {
            sh(
                "dd",
                &[
                    &format!("if={}", s(&src)),
                    &format!("of={}", s(t)),
                    "bs=4M",
                    "oflag=direct",
                    "conv=fsync",
                ],
            )
        });
        let dd_rate = rate(dd);
        println!(
            "{:<44} {:>9.1} {:>8} {:>10}",
            format!("dd bs=4M oflag=direct -> {kind}"),
            dd_rate,
            "1.00",
            "-"
        );
        let row = |name: &str, secs: f64, rss: Option<f64>| {
            let r = rate(secs);
            let rss = rss.map_or("-".to_owned(), |m| format!("{m:.1} MiB"));
            println!(
                "{:<44} {:>9.1} {:>8.2} {:>10}",
                format!("{name} -> {kind}"),
                r,
                r / dd_rate,
                rss
            );
        };
        let (secs, rss) = kiln(&src, t, DirectIo::Always);
        row("kiln raw (O_DIRECT)", secs, Some(rss));
        let (secs, rss) = kiln(&src, t, DirectIo::Never);
        row("kiln raw (buffered + fsync)", secs, Some(rss));
        let (secs, rss) = kiln(&zst, t, DirectIo::Always);
        row("kiln raw.zst", secs, Some(rss));
        let (secs, rss) = kiln(&qcow, t, DirectIo::Always);
        row("kiln qcow2", secs, Some(rss));
        let qemu = timed(|| sh("qemu-img", &["convert", "-t", "none", "-O", "raw", &s(&qcow), &s(t)]));
        row("qemu-img convert qcow2 -t none", qemu, None);
    }
    if let Some(dev) = loopdev {
        let _ = Command::new("losetup").args(["-d", &s(&dev)]).status();
    }
}
