//! The image pipeline against real images made by qemu-img, gzip, zstd, xz and bzip2: the bytes written must equal
//! `qemu-img convert -O raw` of the same image; failures must leave no partition table behind.

mod common;

use std::path::Path;

use common::*;
use kiln_images::digest::ChecksumSource;
use kiln_images::pipeline::{Compression, WriteOptions, run};
use kiln_images::protocol::{ChecksumType, ImageFormat, ImageSpec};
use kiln_images::{DirectIo, ImageError, Progress, write_image};

fn spec(url: &str, checksum: String) -> ImageSpec {
    ImageSpec {
        url: url.into(),
        checksum,
        checksum_type: ChecksumType::Auto,
        format: None,
    }
}

async fn write_and_compare(img: &Path, dir: &Path, expect: (Compression, ImageFormat)) {
    write_and_compare_to(img, img, dir, expect).await;
}

/// Writes `img` and compares with `qemu-img convert -O raw` of `uncompressed` (the same image before gzip & co).
async fn write_and_compare_to(img: &Path, uncompressed: &Path, dir: &Path, expect: (Compression, ImageFormat)) {
    let target = dir.join("target.out");
    let progress = Progress::new();
    let sum = format!("sha256:{}", sha256_file(img));
    let report = write_image(&spec(img.to_str().unwrap(), sum), &target, &progress)
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", img.display()));
    assert_eq!((report.compression, report.format), expect, "{}", img.display());
    assert!(report.verified);
    assert_eq!(
        sha256_file(&target),
        reference_raw(uncompressed, dir),
        "{} decoded differently from qemu-img",
        img.display()
    );
    let snap = progress.snapshot();
    assert_eq!(snap.bytes_read, std::fs::metadata(img).unwrap().len());
    assert_eq!(snap.image_size, Some(report.image_size));
    assert_eq!(snap.phase, kiln_images::Phase::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_and_compression_matches_qemu_img_convert() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let raw_fmt = (Compression::None, ImageFormat::Raw);
    let q = (Compression::None, ImageFormat::Qcow2);
    write_and_compare(&raw, dir.path(), raw_fmt).await;
    let plain = qcow2(&raw, "plain.qcow2", &[]);
    write_and_compare(&plain, dir.path(), q).await;
    write_and_compare(&qcow2(&raw, "zlib.qcow2", &["-c"]), dir.path(), q).await;
    write_and_compare(
        &qcow2(&raw, "zstd.qcow2", &["-c", "-o", "compression_type=zstd"]),
        dir.path(),
        q,
    )
    .await;
    write_and_compare(&qcow2(&raw, "small.qcow2", &["-o", "cluster_size=4096"]), dir.path(), q).await;
    write_and_compare(
        &qcow2(&raw, "big.qcow2", &["-c", "-o", "cluster_size=2M"]),
        dir.path(),
        q,
    )
    .await;
    write_and_compare(&qcow2(&raw, "v2.qcow2", &["-o", "compat=0.10"]), dir.path(), q).await;
    for (tool, ext, c) in [
        ("gzip", "gz", Compression::Gzip),
        ("zstd", "zst", Compression::Zstd),
        ("xz", "xz", Compression::Xz),
        ("bzip2", "bz2", Compression::Bzip2),
    ] {
        write_and_compare_to(&compress(&raw, tool, ext), &raw, dir.path(), (c, ImageFormat::Raw)).await;
    }
    let zst = compress(&plain, "zstd", "zst");
    write_and_compare_to(&zst, &plain, dir.path(), (Compression::Zstd, ImageFormat::Qcow2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_qcow2_written_by_qemu_io_matches() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sparse.qcow2");
    let p = img.to_str().unwrap();
    sh("qemu-img", &["create", "-f", "qcow2", p, "3G"]);
    // Writes in scattered, non-ascending order, including a zero-flagged cluster and one past the first L2 table.
    sh(
        "qemu-io",
        &[
            "-c",
            "write -P 0xab 2G 1M",
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "write -P 0xcd 700M 192k",
            p,
        ],
    );
    sh(
        "qemu-io",
        &["-c", "write -z 2G 64k", "-c", "write -P 0x5a 1048576 4096", p],
    );
    write_and_compare(&img, dir.path(), (Compression::None, ImageFormat::Qcow2)).await;
    let meta = std::fs::metadata(dir.path().join("target.out")).unwrap();
    assert_eq!(meta.len(), 3 << 30);
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < 64 << 20, "a file target stays sparse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_file_sha512_and_md5_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let img = qcow2(&raw, "disk.qcow2", &["-c"]);
    let data = std::fs::read(&img).unwrap();
    let sums = dir.path().join("SHA256SUMS");
    std::fs::write(
        &sums,
        format!("{}  other.img\n{} *disk.qcow2\n", "0".repeat(64), sha256_file(&img)),
    )
    .unwrap();
    let target = dir.path().join("t");
    let url = format!("file://{}", sums.display());
    let r = write_image(&spec(img.to_str().unwrap(), url), &target, &Progress::new())
        .await
        .unwrap();
    assert!(r.verified);
    use sha2::Digest;
    let sha512 = hex::encode(sha2::Sha512::digest(&data));
    let r = write_image(&spec(img.to_str().unwrap(), sha512.clone()), &target, &Progress::new())
        .await
        .unwrap();
    assert_eq!(r.digest.hex, sha512);
    let md5 = hex::encode(md5::Md5::digest(&data));
    let mut s = spec(img.to_str().unwrap(), md5.clone());
    assert!(matches!(
        write_image(&s, &target, &Progress::new()).await,
        Err(ImageError::InvalidChecksum { .. })
    ));
    s.checksum_type = ChecksumType::Md5;
    assert_eq!(
        write_image(&s, &target, &Progress::new()).await.unwrap().digest.hex,
        md5
    );
    std::fs::write(&sums, format!("{}  other.img\n", "0".repeat(64))).unwrap();
    let s = spec(img.to_str().unwrap(), format!("file://{}", sums.display()));
    assert!(matches!(
        write_image(&s, &target, &Progress::new()).await,
        Err(ImageError::ChecksumEntryMissing { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_cause_and_leave_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let img = qcow2(&raw, "disk.qcow2", &[]);
    let target = dir.path().join("t");
    let fail = |path: &Path, checksum: String| {
        let s = spec(path.to_str().unwrap(), checksum);
        let t = target.clone();
        async move { write_image(&s, &t, &Progress::new()).await.unwrap_err() }
    };

    // Wrong checksum: everything was written (GPT included), then wiped.
    let e = fail(&raw, format!("sha256:{}", "ab".repeat(32))).await;
    assert!(matches!(e, ImageError::ChecksumMismatch { .. }), "{e:?}");
    assert_eq!(e.kind(), "checksum_mismatch");
    assert!(has_no_partition_table(&target));

    // Truncated qcow2 stream.
    let data = std::fs::read(&img).unwrap();
    let cut = dir.path().join("cut.qcow2");
    std::fs::write(&cut, &data[..data.len() * 2 / 3]).unwrap();
    let e = fail(&cut, format!("sha256:{}", sha256_file(&cut))).await;
    assert!(
        matches!(e, ImageError::Qcow2(kiln_images::qcow2::Qcow2Error::Truncated { .. })),
        "{e:?}"
    );
    assert!(has_no_partition_table(&target));

    // Truncated compressed stream.
    let gz = compress(&raw, "gzip", "gz");
    let data = std::fs::read(&gz).unwrap();
    let cut = dir.path().join("cut.raw.gz");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let e = fail(&cut, format!("sha256:{}", sha256_file(&cut))).await;
    assert!(
        matches!(
            e,
            ImageError::Decompress {
                compression: "gzip",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(has_no_partition_table(&target));

    // Corrupt header (version 9) and a backing file.
    let mut data = std::fs::read(&img).unwrap();
    data[7] = 9;
    let bad = dir.path().join("bad.qcow2");
    std::fs::write(&bad, &data).unwrap();
    let e = fail(&bad, format!("sha256:{}", sha256_file(&bad))).await;
    assert!(
        matches!(e, ImageError::Qcow2(kiln_images::qcow2::Qcow2Error::BadHeader { .. })),
        "{e:?}"
    );
    assert_eq!(e.kind(), "decode");
    let overlay = dir.path().join("overlay.qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            img.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ],
    );
    let e = fail(&overlay, format!("sha256:{}", sha256_file(&overlay))).await;
    match e {
        ImageError::Qcow2(kiln_images::qcow2::Qcow2Error::BackingFile { name }) => {
            assert!(name.ends_with("disk.qcow2"))
        }
        e => panic!("{e:?}"),
    }
    // Declared raw but the bytes are qcow2.
    let mut s = spec(img.to_str().unwrap(), format!("sha256:{}", sha256_file(&img)));
    s.format = Some(ImageFormat::Raw);
    assert!(matches!(
        write_image(&s, &target, &Progress::new()).await,
        Err(ImageError::FormatMismatch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_device_target_is_written_and_wiped_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let img = qcow2(&raw, "disk.qcow2", &["-c", "-o", "compression_type=zstd"]);
    let backing = dir.path().join("blockdev");
    // A 64 MiB "disk" holding an old GPT and garbage, as a machine being re-provisioned would.
    std::fs::write(&backing, noise(9, 64 << 20)).unwrap();
    sh("sgdisk", &["-o", "-n", "1:2048:+40M", backing.to_str().unwrap()]);
    let Some(lo) = LoopDev::attach(&backing) else { return };
    let sum = format!("sha256:{}", sha256_file(&img));
    let r = write_image(&spec(img.to_str().unwrap(), sum), &lo.dev, &Progress::new())
        .await
        .unwrap();
    assert_eq!(r.image_size, 24 << 20);
    let written = std::fs::read(&backing).unwrap();
    assert_eq!(
        written[..24 << 20],
        std::fs::read(&raw).unwrap()[..],
        "device bytes equal the raw image"
    );

    // Too large an image is refused before writing.
    let big = dir.path().join("big.qcow2");
    sh("qemu-img", &["create", "-f", "qcow2", big.to_str().unwrap(), "1G"]);
    let e = write_image(
        &spec(big.to_str().unwrap(), format!("sha256:{}", sha256_file(&big))),
        &lo.dev,
        &Progress::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ImageError::TargetTooSmall { .. }), "{e:?}");

    // A wrong checksum wipes the device's tables (start and end).
    let e = write_image(&spec(img.to_str().unwrap(), "ab".repeat(32)), &lo.dev, &Progress::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::ChecksumMismatch { .. }));
    drop(lo);
    assert!(has_no_partition_table(&backing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_device_holds_exactly_the_image_whatever_its_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let raw_bytes = std::fs::read(&raw).unwrap();
    // An odd size (the last block is partial) and zero runs both aligned and not.
    let mut odd_bytes = raw_bytes.clone();
    odd_bytes.extend_from_slice(&noise(3, 5000));
    let odd = dir.path().join("odd.raw");
    std::fs::write(&odd, &odd_bytes).unwrap();
    // 512-byte clusters: runs start and end inside 4 KiB blocks, so O_DIRECT and page-cache writes interleave.
    let tiny = qcow2(&raw, "tiny.qcow2", &["-o", "cluster_size=512"]);
    let zst = compress(&odd, "zstd", "zst");
    let backing = dir.path().join("blockdev");
    std::fs::write(&backing, noise(9, 32 << 20)).unwrap();
    let Some(lo) = LoopDev::attach(&backing) else { return };
    let cases = [
        (&odd, &odd_bytes, DirectIo::Auto),
        (&tiny, &raw_bytes, DirectIo::Auto),
        (&zst, &odd_bytes, DirectIo::Auto),
        (&odd, &odd_bytes, DirectIo::Never),
    ];
    for (img, expect, direct) in cases {
        // Garbage where the image has zeros: they must be written or zeroed, never assumed.
        let mut dev = std::fs::OpenOptions::new().write(true).open(&lo.dev).unwrap();
        std::io::Write::write_all(&mut dev, &noise(11, 32 << 20)).unwrap();
        dev.sync_all().unwrap();
        let sum = ChecksumSource::parse(&sha256_file(img), ChecksumType::Auto).unwrap();
        let opts = WriteOptions {
            direct,
            ..WriteOptions::default()
        };
        let r = run(
            img.to_str().unwrap(),
            Some(&sum),
            None,
            Some(&lo.dev),
            &Progress::new(),
            &opts,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", img.display()));
        assert!(r.verified);
        let on_disk = std::fs::read(&backing).unwrap();
        assert!(
            on_disk[..expect.len()] == expect[..],
            "{} ({direct:?}): the device differs from the image",
            img.display()
        );
    }
    // The same odd image to a regular file with O_DIRECT: holes for the zero runs, the partial block buffered.
    let file = dir.path().join("odd.out");
    let sum = ChecksumSource::parse(&sha256_file(&odd), ChecksumType::Auto).unwrap();
    let opts = WriteOptions {
        direct: DirectIo::Always,
        ..WriteOptions::default()
    };
    run(
        odd.to_str().unwrap(),
        Some(&sum),
        None,
        Some(&file),
        &Progress::new(),
        &opts,
    )
    .await
    .unwrap();
    assert!(std::fs::read(&file).unwrap() == odd_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_format_and_digest_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let img = compress(&qcow2(&raw, "d.qcow2", &["-c"]), "xz", "xz");
    let r = run(
        img.to_str().unwrap(),
        None,
        None,
        None,
        &Progress::new(),
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.compression, r.format, r.image_size),
        (Compression::Xz, ImageFormat::Qcow2, 24 << 20)
    );
    assert_eq!(r.digest.hex, sha256_file(&img));
    assert!(!r.verified && r.target.is_none());
    let _ = ChecksumSource::parse(&r.digest.hex, ChecksumType::Auto).unwrap();
}
