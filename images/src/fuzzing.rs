//! Property checks over the parsers that read downloaded bytes (qcow2 images, checksum files), shared by the
//! libFuzzer targets in `fuzz/` and the `fuzz_corpus` test that replays every corpus file on stable. Each function takes untrusted bytes and panics when a property does not hold.

use std::hash::{DefaultHasher, Hash, Hasher as _};

use crate::digest::{Algorithm, ChecksumSource, ExpectedDigest, Hasher, find_in_sums};
use crate::protocol::ChecksumType;
use crate::qcow2::{Decoder, Output, Qcow2Error, parse_header};
use crate::source::file_name;

/// One emitted extent: guest offset, length, and a hash of the data (`None` for a zero range).
type Extent = (u64, u64, Option<u64>);

/// Decodes `image` fed in chunks of `chunk` bytes; returns the virtual size and the extents in guest order, with
/// adjacent zero ranges merged (how they are split depends on arrival order, what they cover does not).
fn decode(image: &[u8], chunk: usize, mut dec: Decoder) -> Result<(u64, Vec<Extent>), Qcow2Error> {
    let mut extents = Vec::new();
    let mut sink = |o: Output<'_>| {
        extents.push(match o {
            Output::Data { guest, bytes } => {
                let mut h = DefaultHasher::new();
                bytes.hash(&mut h);
                (guest, bytes.len() as u64, Some(h.finish()))
            }
            Output::Zero { guest, len } => (guest, len, None),
        });
        Ok(())
    };
    for c in image.chunks(chunk.max(1)) {
        dec.feed(c, &mut sink)?;
    }
    let mut fetch = |at: u64, len: u64| {
        // Only data the stream already went past is re-read, so it lies inside the file.
        assert!(
            at < image.len() as u64,
            "re-read at {at}, past the end of a {}-byte image",
            image.len()
        );
        let from = usize::try_from(at).expect("inside the image");
        Ok(image[from..]
            .iter()
            .take(usize::try_from(len).unwrap_or(usize::MAX))
            .copied()
            .collect())
    };
    dec.finish(&mut sink, &mut fetch)?;
    let header = dec.header().expect("a decoded image has a header").clone();
    extents.sort_unstable();
    let mut merged: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        match merged.last_mut() {
            Some((g, l, None)) if e.2.is_none() && *g + *l == e.0 => *l += e.1,
            _ => merged.push(e),
        }
    }
    // The extents tile the virtual disk exactly: no byte twice, none missing, nothing past its end.
    let mut next = 0u64;
    for &(guest, len, data) in &merged {
        assert_eq!(
            guest, next,
            "extent at {guest} leaves a gap or overlaps (expected {next})"
        );
        if data.is_some() {
            let want = header.cluster_size().min(header.size - guest);
            assert_eq!(len, want, "data extent at {guest}");
        }
        next = guest.checked_add(len).expect("extent end overflows");
    }
    assert_eq!(next, header.size, "the extents do not end at the virtual size");
    Ok((header.size, merged))
}

/// A qcow2 image from a download. The header parser accepts only headers whose tables are aligned, bounded and
/// large enough to map the disk. The streaming decoder never panics; when it succeeds, its output tiles the
/// virtual disk exactly, re-reads (random access) stay inside the file, and the result does not depend on how the
/// bytes were chunked or whether data had to be re-read instead of kept (only a stream that cannot go back may
/// refuse a layout as not streamable).
pub fn qcow2_image(image: &[u8]) {
    if let Ok(h) = parse_header(image) {
        assert!((9..=21).contains(&h.cluster_bits));
        assert!(
            u64::from(h.l1_size) * 8 <= 32 << 20,
            "L1 table of {} entries accepted",
            h.l1_size
        );
        assert!(h.l1_table_offset.is_multiple_of(h.cluster_size()));
        assert!(h.refcount_table_offset.is_multiple_of(h.cluster_size()));
        assert!(
            u64::from(h.l1_size) >= h.size.div_ceil(h.l2_coverage()),
            "L1 too small for the disk"
        );
    }
    let chunk = 1 + usize::from(image.get(image.len() / 2).copied().unwrap_or(0)) * 61;
    let whole = decode(image, image.len(), Decoder::new());
    let chunked = decode(image, chunk, Decoder::new());
    let refetched = decode(image, chunk, Decoder::with_random_access().orphan_limit(0));
    let summary = || {
        format!(
            "whole: {:?}, {chunk}-byte chunks: {:?}, re-reading: {:?}",
            whole.as_ref().map(|r| r.0),
            chunked.as_ref().map(|r| r.0),
            refetched.as_ref().map(|r| r.0)
        )
    };
    match (&whole, &chunked) {
        (Ok(w), Ok(c)) => assert_eq!(w, c, "the output depends on the chunking ({chunk}-byte chunks)"),
        (Err(_), Err(_)) => {}
        _ => panic!("the chunking changes the outcome: {}", summary()),
    }
    match (&whole, &refetched) {
        (Ok(w), Ok(r)) => assert_eq!(w, r, "re-read data decodes differently from kept data"),
        (Err(_), Err(_)) => {}
        // Metadata that overlaps what the stream has already consumed (a corrupt image) can only be read again.
        (Err(Qcow2Error::NotStreamable { .. }), Ok(_)) => {}
        _ => panic!("re-reading changes the outcome: {}", summary()),
    }
}

/// The checksum a user or Metal3 gives (first line) and a `SHA256SUMS`-style file fetched for it (the rest). A
/// parsed inline digest has the length and lower-case hex of its algorithm and prints as a form that parses back
/// to it; an entry found in the file is lower-case and trimmed; every digest kiln computes is one it accepts.
pub fn image_checksum(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (checksum, sums) = text.split_once('\n').unwrap_or((&text, ""));
    for ty in [
        ChecksumType::Auto,
        ChecksumType::Sha256,
        ChecksumType::Sha512,
        ChecksumType::Md5,
    ] {
        match ChecksumSource::parse(checksum, ty) {
            Ok(ChecksumSource::Inline(d)) => {
                let len = match d.algorithm {
                    Algorithm::Sha256 => 64,
                    Algorithm::Sha512 => 128,
                    Algorithm::Md5 => 32,
                };
                assert_eq!(d.hex.len(), len, "{checksum:?} as {ty:?}");
                assert!(
                    d.hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "{checksum:?}"
                );
                let again = ChecksumSource::parse(&d.to_string(), ChecksumType::Auto);
                assert_eq!(
                    again.ok(),
                    Some(ChecksumSource::Inline(d.clone())),
                    "{d} does not parse back"
                );
            }
            Ok(ChecksumSource::Url { url, algorithm }) => {
                assert_eq!(url, checksum.trim());
                assert_eq!(algorithm, ty);
            }
            Err(_) => {}
        }
    }
    let image_name = file_name(checksum.trim());
    assert!(!image_name.contains('/'), "{image_name:?} is not a last path component");
    for name in [
        image_name.as_str(),
        "disk.qcow2",
        "ubuntu-24.04-server-cloudimg-amd64.img",
    ] {
        if let Some(hex) = find_in_sums(sums, name) {
            assert_eq!(hex, hex.to_ascii_lowercase());
            assert_eq!(hex, hex.trim(), "entry for {name:?} keeps surrounding whitespace");
            assert!(!hex.is_empty(), "empty entry for {name:?}");
        }
    }
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Md5] {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        let hex = h.finish_hex();
        let parsed = ChecksumSource::parse(&format!("{algorithm}:{hex}"), ChecksumType::Auto);
        assert_eq!(
            parsed.ok(),
            Some(ChecksumSource::Inline(ExpectedDigest { algorithm, hex }))
        );
    }
}
