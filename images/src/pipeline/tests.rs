//! Tests of the pipeline: formats, compression, checksums, odd sizes and loop devices.

use super::*;
use crate::target::WIPE_BYTES;

#[test]
fn coalesced_runs_sit_at_their_target_offset_modulo_align_and_aligned_chunks_pass_through() {
    let (tx, rx) = sync_channel(16);
    let mut co = Coalescer::new(tx, BufPool::new(BUF_SIZE, 4));
    co.data(4096 + 100, &[1; 50]).unwrap();
    co.data(4096 + 150, &[2; 10]).unwrap();
    co.zero(8192, 4096).unwrap();
    let mut files = BufPool::new(BUF_SIZE, 1);
    let buf = files.take();
    let chunk = files.lend(buf, 0..BUF_SIZE);
    co.shared(BUF_SIZE as u64, chunk.clone()).unwrap();
    // Not at an aligned offset: copied.
    co.shared(3 * BUF_SIZE as u64 + 512, chunk.slice(..BUF_SIZE / 2))
        .unwrap();
    co.flush().unwrap();
    drop(co);
    let ops: Vec<WriteOp> = rx.iter().collect();
    let [
        WriteOp::Data { offset: a, data: run },
        WriteOp::Zero {
            offset: 8192,
            len: 4096,
        },
        WriteOp::Data {
            offset: b,
            data: shared,
        },
        WriteOp::Data {
            offset: c,
            data: copied,
        },
    ] = &ops[..]
    else {
        panic!("{ops:?}")
    };
    assert_eq!((*a, run.len(), run.as_ptr() as usize % ALIGN), (4196, 60, 100));
    assert_eq!((&run[..50], &run[50..]), (&[1; 50][..], &[2; 10][..]));
    assert_eq!((*b, shared.as_ptr()), (BUF_SIZE as u64, chunk.as_ptr()));
    assert_eq!(
        (*c, copied.len(), copied.as_ptr() as usize % ALIGN),
        (3 * BUF_SIZE as u64 + 512, BUF_SIZE / 2, 512)
    );
}

#[test]
fn pieces_of_one_buffer_make_one_write_without_a_copy_and_short_runs_are_packed() {
    let (tx, rx) = sync_channel(16);
    let mut co = Coalescer::new(tx, BufPool::new(BUF_SIZE, 4));
    let mut files = BufPool::new(BUF_SIZE, 2);
    let (a, b) = (files.take(), files.take());
    let (a, b) = (files.lend(a, 0..BUF_SIZE), files.lend(b, 0..BUF_SIZE));
    // Three contiguous 64 KiB pieces of `a` (as a qcow2 decoder emits clusters): one write, a slice of `a`.
    for i in 0..3u64 {
        let at = 65536 * (i as usize + 1);
        co.piece((1 << 30) + 65536 * i, &a, at..at + 65536).unwrap();
    }
    co.buffer_done().unwrap();
    // A short run at the end of `a`, continued at the start of `b`: packed into one buffer, copied.
    co.piece(1 << 31, &a, BUF_SIZE - 4096..BUF_SIZE).unwrap();
    co.buffer_done().unwrap();
    co.piece((1 << 31) + 4096, &b, 0..8192).unwrap();
    // Memory not congruent with the target offset modulo ALIGN: copied.
    co.piece(3 << 30, &b, 8192 + 512..8192 + 1024).unwrap();
    co.flush().unwrap();
    drop(co);
    let ops: Vec<(u64, Bytes)> = rx
        .iter()
        .map(|op| match op {
            WriteOp::Data { offset, data } => (offset, data),
            WriteOp::Zero { .. } => panic!("no zeros here"),
        })
        .collect();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert_eq!((ops[0].0, ops[0].1.len()), (1 << 30, 3 * 65536));
    assert_eq!(
        ops[0].1.as_ptr(),
        a[65536..].as_ptr(),
        "a slice of the chunk, not a copy"
    );
    assert_eq!((ops[1].0, ops[1].1.len()), (1 << 31, 3 * 4096));
    assert!(ops[1].1.as_ptr() != a[BUF_SIZE - 4096..].as_ptr());
    assert_eq!(ops[1].1.as_ptr() as usize % ALIGN, 0);
    assert_eq!((ops[2].0, ops[2].1.len()), (3 << 30, 512));
    assert_eq!(ops[2].1.as_ptr() as usize % ALIGN, 0);
}

#[test]
fn detects_compression_and_format_by_magic() {
    assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
    assert_eq!(Compression::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Compression::Xz);
    assert_eq!(Compression::detect(b"BZh91AY"), Compression::Bzip2);
    assert_eq!(Compression::detect(b"QFI\xfb"), Compression::None);
    assert_eq!(detect_format(b"QFI\xfb\0\0\0\x03").unwrap(), ImageFormat::Qcow2);
    assert_eq!(detect_format(&[0u8; 8]).unwrap(), ImageFormat::Raw);
    assert!(detect_format(b"KDMV\x01\0\0\0").is_err());
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
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

fn sha256(data: &[u8]) -> ChecksumSource {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(data);
    ChecksumSource::Inline(ExpectedDigest {
        algorithm: Algorithm::Sha256,
        hex: h.finish_hex(),
    })
}

/// A disk image of `len` bytes spanning several file chunks: an MBR signature and a GPT header at the start, a
/// backup GPT header in its last 512 bytes, noise, text and runs of zeros (whole zero grains and shorter ones,
/// aligned and not), and a partial last 4 KiB block when `len` is not a multiple of it.
fn disk_image(len: usize) -> Vec<u8> {
    let mut img = noise(7, len);
    img[510..512].copy_from_slice(&[0x55, 0xaa]);
    img[512..520].copy_from_slice(b"EFI PART");
    let text = b"a wrong checksum leaves the disk unbootable; ".repeat(30_000);
    img[(3 << 20) + 100..(3 << 20) + 100 + text.len()].copy_from_slice(&text);
    img[(1 << 20)..(2 << 20) + 777].fill(0);
    img[(4 << 20) - 5000..(4 << 20) + 3 * 65536].fill(0);
    img[(6 << 20) + 4096..(6 << 20) + 8192].fill(0);
    let last = len - 512;
    img[last..last + 8].copy_from_slice(b"EFI PART");
    img
}

/// `qemu-img convert -O qcow2 extra…` of `raw`.
fn qcow2_of(raw: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = raw.with_file_name(name);
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", "qcow2"])
        .args(extra)
        .arg(raw)
        .arg(&out);
    let st = cmd.output().expect("qemu-img (tests/setup.sh installs it)");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    out
}

/// A loop device over a file, detached when dropped; `None` where loop devices cannot be set up (not root).
struct Loop(PathBuf);

impl Loop {
    fn attach(backing: &Path) -> Option<Self> {
        if !Path::new("/dev/loop-control").exists() {
            return None;
        }
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !dev.is_empty()).then(|| Self(PathBuf::from(dev)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// The targets to write to: a loop device over a 16 MiB file of garbage where loop devices can be set up (its
/// bytes read back through the backing file), and always a regular file written with O_DIRECT.
fn targets(dir: &Path) -> (Option<Loop>, PathBuf) {
    let backing = dir.join("disk");
    std::fs::write(&backing, noise(11, 16 << 20)).unwrap();
    let lo = Loop::attach(&backing);
    if lo.is_none() {
        eprintln!("no loop device (not root?): the block-device cases are skipped");
    }
    (lo, backing)
}

async fn write(img: &Path, checksum: &ChecksumSource, target: &Path) -> Result<WriteReport, ImageError> {
    let opts = WriteOptions {
        direct: DirectIo::Always,
        ..WriteOptions::default()
    };
    run(
        img.to_str().unwrap(),
        Some(checksum),
        None,
        Some(target),
        &Progress::new(),
        &opts,
    )
    .await
}

/// A raw disk image whose size is not a multiple of 4096 (nor of 512), and the raw source of a qcow2 one: qcow2
/// sizes are multiples of 512, this one not of 4096.
struct OddImages {
    raw: std::path::PathBuf,
    raw_bytes: Vec<u8>,
    q_raw: std::path::PathBuf,
    q_bytes: Vec<u8>,
}

fn odd_images(dir: &std::path::Path) -> OddImages {
    let raw_bytes = disk_image((9 << 20) + 3 * 4096 + 777);
    let raw = dir.join("odd.raw");
    std::fs::write(&raw, &raw_bytes).unwrap();
    let q_bytes = disk_image((9 << 20) + 1536);
    let q_raw = dir.join("q.raw");
    std::fs::write(&q_raw, &q_bytes).unwrap();
    OddImages {
        raw,
        raw_bytes,
        q_raw,
        q_bytes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_qcow2_images_of_odd_sizes_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let OddImages {
        raw,
        raw_bytes,
        q_raw,
        q_bytes,
    } = odd_images(dir.path());
    let cases = [
        (raw.clone(), &raw_bytes, ImageFormat::Raw),
        (qcow2_of(&q_raw, "plain.qcow2", &[]), &q_bytes, ImageFormat::Qcow2),
        // 512-byte clusters sit at offsets not congruent with their place modulo 4096: copied, not shared.
        (
            qcow2_of(&q_raw, "c512.qcow2", &["-o", "cluster_size=512"]),
            &q_bytes,
            ImageFormat::Qcow2,
        ),
        (qcow2_of(&q_raw, "deflate.qcow2", &["-c"]), &q_bytes, ImageFormat::Qcow2),
    ];
    let (lo, backing) = targets(dir.path());
    let file = dir.path().join("file.out");
    for (img, expect, format) in &cases {
        let sum = sha256(&std::fs::read(img).unwrap());
        if let Some(lo) = &lo {
            let r = write(img, &sum, &lo.0).await.unwrap();
            assert_eq!(
                (r.format, r.image_size, r.verified),
                (*format, expect.len() as u64, true)
            );
            let on_disk = std::fs::read(&backing).unwrap();
            assert!(
                on_disk[..expect.len()] == expect[..],
                "{}: the device differs from the image",
                img.display()
            );
            // The device is garbage past the image again for the next case.
            std::fs::write(&backing, noise(11, 16 << 20)).unwrap();
        }
        let r = write(img, &sum, &file).await.unwrap();
        assert_eq!((r.format, r.image_size), (*format, expect.len() as u64));
        assert!(
            std::fs::read(&file).unwrap() == expect[..],
            "{}: the file differs",
            img.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checksum_leaves_no_partition_table_behind() {
    let dir = tempfile::tempdir().unwrap();
    let OddImages {
        raw,
        raw_bytes,
        q_raw,
        q_bytes,
    } = odd_images(dir.path());
    let qcow = qcow2_of(&q_raw, "plain.qcow2", &[]);
    let wrong = ChecksumSource::Inline(ExpectedDigest {
        algorithm: Algorithm::Sha256,
        hex: "ab".repeat(32),
    });
    let wiped = WIPE_BYTES as usize;
    let (lo, backing) = targets(dir.path());
    let file = dir.path().join("file.out");
    for (img, expect) in [(&raw, &raw_bytes), (&qcow, &q_bytes)] {
        let mut written = Vec::new();
        if let Some(lo) = &lo {
            let e = write(img, &wrong, &lo.0).await.unwrap_err();
            assert!(matches!(e, ImageError::ChecksumMismatch { .. }), "{e:?}");
            written.push(std::fs::read(&backing).unwrap());
            std::fs::write(&backing, noise(11, 16 << 20)).unwrap();
        }
        let e = write(img, &wrong, &file).await.unwrap_err();
        assert!(matches!(e, ImageError::ChecksumMismatch { .. }), "{e:?}");
        written.push(std::fs::read(&file).unwrap());
        for disk in written {
            // The image was written, then both ends of the target (MBR, primary and backup GPT) were zeroed.
            let n = disk.len();
            assert!(
                disk[..wiped].iter().all(|b| *b == 0),
                "{}: head not wiped",
                img.display()
            );
            assert!(
                disk[n - wiped..].iter().all(|b| *b == 0),
                "{}: tail not wiped",
                img.display()
            );
            let end = expect.len().min(n - wiped);
            assert!(
                disk[wiped..end] == expect[wiped..end],
                "{}: image not written",
                img.display()
            );
        }
    }
}
