//! Image write benchmark (not a timed test): the same 1 GiB of content written to two loop devices, one whose backing
//! file stays in the page cache (memory speed) and one with direct-io (each write reaches the disk under the scratch
//! directory, as on a real block device), optionally to a regular file, by `dd bs=4M oflag=direct conv=fsync` and by
//! kiln's pipeline (raw, zstd-compressed raw, qcow2, each with its sha256 verified), plus `qemu-img convert` of the
//! qcow2 when qemu-img is installed. Every kiln (or qemu-img) run is paired with a dd run of the same decoded bytes
//! just before it, and the benchmark prints the median over several rounds of each pair's ratio (dd seconds / kiln
//! seconds: 1.00 = dd speed), so that load from other processes on the machine cancels out as far as it can. It also
//! prints kiln's peak RSS and, as the ceiling any verified write can reach on this machine, the same pipeline with no
//! target (decode + hash only).
//!
//! `cargo bench -p kiln-images --bench write` (as root, for the loop device). Environment: `KILN_BENCH_MIB` (image
//! size, default 1024), `KILN_BENCH_RUNS` (rounds, default 5), `KILN_BENCH_DIR` (scratch directory, default the temp
//! dir; the loop devices' backing files live there too), `KILN_BENCH_FILE=1` to add a regular-file target (kiln with
//! O_DIRECT there too; it is the only target when no loop device can be made).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln_images::digest::{Algorithm, ChecksumSource, ExpectedDigest};
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

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Seconds taken by `f`, after a `sync` so that no run pays for an earlier one's dirty pages.
fn timed(f: impl FnOnce()) -> f64 {
    sh("sync", &[]);
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn dd(src: &Path, dst: &Path) -> f64 {
    let (i, o) = (format!("if={}", src.display()), format!("of={}", dst.display()));
    timed(|| sh("dd", &[&i, &o, "bs=4M", "oflag=direct", "conv=fsync"]))
}

fn qemu_img(qcow: &Path, dst: &Path) -> f64 {
    let (i, o) = (qcow.to_str().unwrap(), dst.to_str().unwrap());
    timed(|| sh("qemu-img", &["convert", "-t", "none", "-f", "qcow2", "-O", "raw", i, o]))
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One kiln run, in a fresh child process so that its peak RSS is its own.
struct KilnRun {
    secs: f64,
    rss_mib: f64,
    digest: String,
}

/// Runs kiln's pipeline on `src`, writing to `dst` (`None`: decode and hash only) and verifying `sha256` if given.
fn kiln(src: &Path, dst: Option<&Path>, direct: DirectIo, sha256: Option<&str>) -> KilnRun {
    sh("sync", &[]);
    let direct = match direct {
        DirectIo::Auto => "auto",
        DirectIo::Always => "always",
        DirectIo::Never => "never",
    };
    let dst = dst.map_or("-".to_owned(), |d| d.display().to_string());
    let out = Command::new(std::env::current_exe().unwrap())
        .env(
            "KILN_BENCH_CHILD",
            format!("{}|{dst}|{direct}|{}", src.display(), sha256.unwrap_or("")),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "child: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let mut num = || it.next().unwrap().parse::<f64>().unwrap();
    let (secs, rss_mib) = (num(), num());
    let digest = text.split_whitespace().nth(2).unwrap().to_owned();
    KilnRun { secs, rss_mib, digest }
}

fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [src, dst, direct, sha256] = parts[..] else {
        panic!("bad child spec {spec:?}")
    };
    let direct = match direct {
        "always" => DirectIo::Always,
        "never" => DirectIo::Never,
        _ => DirectIo::Auto,
    };
    let checksum = (!sha256.is_empty()).then(|| {
        ChecksumSource::Inline(ExpectedDigest {
            algorithm: Algorithm::Sha256,
            hex: sha256.to_owned(),
        })
    });
    let target = (dst != "-").then(|| Path::new(dst));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = WriteOptions {
        direct,
        ..WriteOptions::default()
    };
    let t = Instant::now();
    let report = rt
        .block_on(run(src, checksum.as_ref(), None, target, &Progress::new(), &opts))
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(report.verified, checksum.is_some());
    println!("{secs} {} {}", peak_rss_mib(), report.digest.hex);
}

/// A loop device over a file; detached when dropped (also when a run panics).
struct LoopDev(PathBuf);

impl LoopDev {
    /// `direct_io`: the loop driver opens its backing file with O_DIRECT, so that a write reaches the disk under the
    /// file system as on a real block device, instead of the backing file's page cache (memory speed).
    fn attach(backing: &Path, bytes: u64, direct_io: bool) -> Option<Self> {
        if !Path::new("/dev/loop-control").exists() {
            return None;
        }
        std::fs::File::create(backing).unwrap().set_len(bytes).unwrap();
        let dio = if direct_io { "--direct-io=on" } else { "--direct-io=off" };
        let out = Command::new("losetup")
            .args(["-f", "--show", dio, backing.to_str().unwrap()])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| Self(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One row of the table: paired (dd seconds, seconds) samples and the largest peak RSS seen.
#[derive(Default)]
struct Row {
    pairs: Vec<(f64, f64)>,
    rss_mib: Option<f64>,
}

impl Row {
    fn add(&mut self, dd: f64, secs: f64, rss: Option<f64>) {
        self.pairs.push((dd, secs));
        if let Some(r) = rss {
            self.rss_mib = Some(self.rss_mib.map_or(r, |m| m.max(r)));
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    if let Ok(spec) = std::env::var("KILN_BENCH_CHILD") {
        return child(&spec);
    }
    let env_num = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mib = env_num("KILN_BENCH_MIB", 1024).max(4) / 4 * 4;
    let runs = env_num("KILN_BENCH_RUNS", 5).max(1);
    let base = std::env::var("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    make_source(&src, mib);
    let mut cases = vec![("raw", src.clone())];
    if have("zstd") {
        let zst = d.join("src.raw.zst");
        sh("zstd", &["-q", "-T0", "-3", "-f", &s(&src), "-o", &s(&zst)]);
        cases.push(("raw.zst", zst));
    } else {
        println!("(zstd is not installed: no raw.zst rows)");
    }
    let qcow = d.join("src.qcow2");
    let with_qemu = have("qemu-img");
    if with_qemu {
        sh(
            "qemu-img",
            &["convert", "-f", "raw", "-O", "qcow2", &s(&src), &s(&qcow)],
        );
        cases.push(("qcow2", qcow.clone()));
    } else {
        println!("(qemu-img is not installed: no qcow2 rows)");
    }
    // The expected digests (what a user would publish), from a first inspect-only run that also warms the caches.
    let sums: Vec<String> = cases
        .iter()
        .map(|(_, p)| kiln(p, None, DirectIo::Auto, None).digest)
        .collect();
    println!(
        "image write benchmark: {mib} MiB, {runs} rounds, scratch {}, load average {}",
        d.display(),
        loadavg()
    );

    // (name, path, kiln's DirectIo, loop device guard)
    let mut targets: Vec<(String, PathBuf, DirectIo, Option<LoopDev>)> = Vec::new();
    for (file, direct_io, what) in [
        ("loop.img", false, "backing file in the page cache"),
        ("loop-dio.img", true, "direct-io: writes reach the disk"),
    ] {
        if let Some(lo) = LoopDev::attach(&d.join(file), (mib as u64 + 16) << 20, direct_io) {
            let name = format!("loop device {} ({what})", lo.0.display());
            targets.push((name, lo.0.clone(), DirectIo::Auto, Some(lo)));
        }
    }
    if targets.is_empty() {
        println!("(no loop device: run as root on a machine with /dev/loop-control for the block-device rows)");
    }
    if targets.is_empty() || std::env::var("KILN_BENCH_FILE").is_ok_and(|v| v == "1") {
        targets.push((
            "regular file (kiln with O_DIRECT)".into(),
            d.join("dst"),
            DirectIo::Always,
            None,
        ));
    }
    let bytes = (mib as f64) * 1048576.0;
    for (kind, t, direct, _guard) in &targets {
        // Warm-up (allocates the loop device's backing blocks; not measured).
        dd(&src, t);
        let names: Vec<String> = cases
            .iter()
            .map(|(n, _)| format!("kiln {n}, sha256 verified"))
            .chain(with_qemu.then(|| "qemu-img convert -t none qcow2".to_owned()))
            .chain(["kiln raw, DirectIo::Never (page cache + fsync)".to_owned()])
            .chain(
                cases
                    .iter()
                    .map(|(n, _)| format!("kiln {n}, no target (decode + hash only)*")),
            )
            .collect();
        let mut rows: Vec<Row> = names.iter().map(|_| Row::default()).collect();
        let mut dd_secs = Vec::new();
        for round in 0..runs {
            let mut pair = |row: usize, f: &dyn Fn() -> (f64, Option<f64>)| {
                let dd = dd(&src, t);
                dd_secs.push(dd);
                let (secs, rss) = f();
                rows[row].add(dd, secs, rss);
            };
            // Alternate the order of the cases between rounds so that none always follows the same neighbour.
            let mut order: Vec<usize> = (0..cases.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for c in order {
                let (p, sum) = (&cases[c].1, &sums[c]);
                pair(c, &|| {
                    let r = kiln(p, Some(t), *direct, Some(sum));
                    (r.secs, Some(r.rss_mib))
                });
            }
            let mut row = cases.len();
            if with_qemu {
                pair(row, &|| (qemu_img(&qcow, t), None));
                row += 1;
            }
            pair(row, &|| {
                let r = kiln(&src, Some(t), DirectIo::Never, Some(&sums[0]));
                (r.secs, Some(r.rss_mib))
            });
            for (c, (_, p)) in cases.iter().enumerate() {
                pair(row + 1 + c, &|| {
                    let r = kiln(p, None, DirectIo::Auto, Some(&sums[c]));
                    (r.secs, Some(r.rss_mib))
                });
            }
        }
        let rate = |secs: f64| bytes / secs / 1e6;
        println!();
        println!(
            "{:<50} {:>8} {:>6} {:>11} {:>10}",
            format!("-> {kind}"),
            "MB/s",
            "vs dd",
            "(min-max)",
            "peak RSS"
        );
        let dd_name = "dd bs=4M oflag=direct conv=fsync";
        println!(
            "{dd_name:<50} {:>8.0} {:>6} {:>11} {:>10}",
            rate(median(&dd_secs)),
            "1.00",
            "",
            "-"
        );
        for (name, row) in names.iter().zip(&rows) {
            let secs: Vec<f64> = row.pairs.iter().map(|p| p.1).collect();
            let ratios: Vec<f64> = row.pairs.iter().map(|(dd, s)| dd / s).collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            let rss = row.rss_mib.map_or("-".to_owned(), |m| format!("{m:.1} MiB"));
            println!(
                "{name:<50} {:>8.0} {:>6.2} {:>11} {rss:>10}",
                rate(median(&secs)),
                median(&ratios),
                format!("({lo:.2}-{hi:.2})"),
            );
        }
    }
    println!();
    println!("vs dd: median over the rounds of dd seconds / seconds, each run paired with the dd run just before it.");
    println!("* the same pipeline writing nothing: the ceiling of the rows above on this machine (sha256 of the");
    println!("  published bytes and decompression, on the CPU time that other load leaves).");
    println!("load average at the end: {}", loadavg());
}
