//! The pipeline over HTTP from a loopback server that may refuse ranges, drop connections mid-body or never finish.

mod common;

use std::sync::atomic::AtomicU32;

use common::*;
use kiln_images::protocol::{ChecksumType, ImageSpec};
use kiln_images::{ImageError, Progress, write_image};

fn spec(url: String, checksum: String) -> ImageSpec {
    ImageSpec {
        url,
        checksum,
        checksum_type: ChecksumType::Auto,
        format: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_resume_with_and_without_range_support() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let want = reference_raw(&raw, dir.path());
    let sum = sha256_file(&raw);
    for ranges in [true, false] {
        let cfg = ServerConfig {
            ranges,
            cuts: AtomicU32::new(2),
            cut_after: 5 << 20,
            truncate_at: None,
        };
        let server = serve(dir.path().to_owned(), cfg).await;
        let target = dir.path().join("target");
        let progress = Progress::new();
        // Progress is observable while the write runs (the resume back-off leaves it part-way for a while).
        let watcher = {
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut partial = None;
                loop {
                    let snap = progress.snapshot();
                    if snap.bytes_read > 0 && snap.bytes_read < 24 << 20 && snap.source_size == Some(24 << 20) {
                        partial = Some(snap);
                    }
                    if matches!(snap.phase, kiln_images::Phase::Done | kiln_images::Phase::Failed) {
                        return partial;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
        };
        let r = write_image(
            &spec(format!("{}/disk.raw", server.base), sum.clone()),
            &target,
            &progress,
        )
        .await
        .unwrap_or_else(|e| panic!("ranges={ranges}: {e:?}"));
        let partial = watcher.await.unwrap().expect("a part-way progress snapshot");
        assert_eq!(partial.phase, kiln_images::Phase::Writing);
        assert!(partial.to_protocol(1).bytes_read > 0);
        assert_eq!(sha256_file(&target), want, "ranges={ranges}");
        assert_eq!(r.bytes_read, 24 << 20, "each byte hashed once");
        let reqs = server.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 3, "two drops, two resumes: {reqs:?}");
        assert_eq!(reqs[0], None);
        // The resume starts where the client's data stopped (hyper may lose the last buffered bytes of an
        // aborted response, so at or a little before the server's cut).
        let offsets: Vec<u64> = reqs[1..]
            .iter()
            .map(|r| {
                r.as_deref()
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                    .unwrap()
            })
            .collect();
        assert!(offsets[0] > 0 && offsets[0] <= 5 << 20, "{offsets:?}");
        if ranges {
            assert!(
                offsets[1] > offsets[0] && offsets[1] <= offsets[0] + (5 << 20),
                "{offsets:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_over_http_with_a_checksum_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let img = qcow2(&raw, "disk.qcow2", &["-c", "-o", "compression_type=zstd"]);
    std::fs::write(
        dir.path().join("SHA256SUMS"),
        format!("{}  disk.qcow2\n", sha256_file(&img)),
    )
    .unwrap();
    let cfg = ServerConfig {
        ranges: true,
        cuts: AtomicU32::new(1),
        cut_after: 1 << 20,
        truncate_at: None,
    };
    let server = serve(dir.path().to_owned(), cfg).await;
    let target = dir.path().join("target");
    let s = spec(
        format!("{}/disk.qcow2", server.base),
        format!("{}/SHA256SUMS", server.base),
    );
    let r = write_image(&s, &target, &Progress::new()).await.unwrap();
    assert!(r.verified);
    assert_eq!(sha256_file(&target), reference_raw(&img, dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_never_completes_fails_as_truncated_and_wipes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let cfg = ServerConfig {
        ranges: true,
        cuts: AtomicU32::new(0),
        cut_after: 0,
        truncate_at: Some(20 << 20),
    };
    let server = serve(dir.path().to_owned(), cfg).await;
    let target = dir.path().join("target");
    let e = write_image(
        &spec(format!("{}/disk.raw", server.base), sha256_file(&raw)),
        &target,
        &Progress::new(),
    )
    .await
    .unwrap_err();
    match &e {
        ImageError::Truncated { received, expected, .. } => {
            assert!(*received > 0 && *received <= 20 << 20 && *expected == 24 << 20, "{e:?}")
        }
        e => panic!("{e:?}"),
    }
    assert!(e.is_transient());
    assert!(has_no_partition_table(&target));

    let e = write_image(
        &spec(format!("{}/missing.raw", server.base), sha256_file(&raw)),
        &target,
        &Progress::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ImageError::HttpStatus { status: 404, .. }), "{e:?}");
}
