//! Property checks over the parsers that read downloaded bytes (qcow2 images, checksum files), shared by the
//! libFuzzer targets in `fuzz/` and the `fuzz_corpus` test that replays every corpus file on stable. Each function takes untrusted bytes and panics when a property does not hold.

use std::hash::{DefaultHasher, Hash, Hasher as _};

use crate::digest::{Algorithm, ChecksumSource, ExpectedDigest, Hasher, find_in_sums};
use crate::oci::{OciReference, credentials_from_docker_config};
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

/// An `oci://` image reference (first line) and a Kubernetes pull secret (the rest). A parsed reference prints as
/// a form that parses back to it and has a lower-case repository and a tag or a digest; a refused one's error does
/// not depend on the user-info (`user:password@`) it may carry. The pull secret parser never panics, and its errors
/// never repeat a password or `auth` value (nor what that decodes to).
pub fn oci_reference(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (line, secret) = text.split_once('\n').unwrap_or((&text, ""));
    let registry = match OciReference::parse(line) {
        Ok(r) => {
            let printed = r.to_string();
            assert!(printed.starts_with(crate::oci::SCHEME), "{printed}");
            let again = OciReference::parse(&printed).unwrap_or_else(|e| panic!("{printed} does not parse back: {e}"));
            assert_eq!(again, r, "{printed}");
            assert!(!r.repository().bytes().any(|b| b.is_ascii_uppercase()));
            assert!(r.tag().is_some() || r.digest_hex().is_some(), "{printed}");
            let c = r.to_client_reference();
            assert_eq!((c.registry(), c.repository()), (r.registry(), r.repository()));
            r.registry().to_owned()
        }
        Err(e) => {
            // The same reference with other user-info must fail with the same words.
            if let Some((scheme, rest)) = line.split_once("://") {
                let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
                if let Some(at) = authority.rfind('@') {
                    let other = "x".repeat(authority[..at].chars().count());
                    let swapped = format!("{scheme}://{other}{}", &rest[at..]);
                    let e2 = OciReference::parse(&swapped).expect_err("user-info changed the outcome");
                    assert_eq!(e.to_string(), e2.to_string(), "the error shows the user-info");
                    assert_eq!(format!("{e:?}"), format!("{e2:?}"), "the error shows the user-info");
                }
            }
            line.trim().to_owned()
        }
    };
    let message = match credentials_from_docker_config(secret.as_bytes(), &registry) {
        Ok(_) => return,
        Err(m) => m,
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(secret) else {
        return;
    };
    let (mut keys, mut secrets) = (Vec::new(), Vec::new());
    collect_secrets(&json, &mut keys, &mut secrets);
    for s in secrets {
        // Long enough and distinctive enough (a digit) not to be a word of the message by chance, and not also a
        // key (keys are named in messages).
        if s.chars().count() >= 12
            && s.bytes().any(|b| b.is_ascii_digit())
            && !keys.iter().any(|k| k.contains(&s))
            && !registry.contains(&s)
        {
            assert!(!message.contains(&s), "the error {message:?} shows the secret {s:?}");
        }
    }
}

/// Every object key, and every string under an `auth` or `password` key (and what an `auth` decodes to).
fn collect_secrets(v: &serde_json::Value, keys: &mut Vec<String>, secrets: &mut Vec<String>) {
    use base64::Engine as _;
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                keys.push(k.clone());
                if let (Some(s), "auth" | "password") = (v.as_str(), k.as_str()) {
                    secrets.push(s.to_owned());
                    if let Ok(d) = base64::engine::general_purpose::STANDARD.decode(s.trim())
                        && let Ok(d) = String::from_utf8(d)
                    {
                        secrets.extend(d.split_once(':').map(|(_, p)| p.to_owned()));
                        secrets.push(d);
                    }
                }
                collect_secrets(v, keys, secrets);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_secrets(i, keys, secrets)),
        _ => {}
    }
}
