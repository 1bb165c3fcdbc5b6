use super::*;
use oci_client::manifest::Platform;

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn parse(s: &str) -> OciReference {
    OciReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn reason(s: &str) -> String {
    match OciReference::parse(s) {
        Err(ImageError::InvalidReference { reason, .. }) => reason,
        other => panic!("{s}: {other:?}"),
    }
}

#[test]
fn parses_tags_digests_and_defaults() {
    let r = parse("oci://registry.example.com:5000/images/debian:12.5");
    assert_eq!(
        (r.registry(), r.repository(), r.tag(), r.digest_hex()),
        ("registry.example.com:5000", "images/debian", Some("12.5"), None)
    );
    let r = parse("oci://Quay.IO/metal3/disk");
    assert_eq!((r.registry(), r.tag()), ("quay.io", Some("latest")));
    assert_eq!(r.to_string(), "oci://quay.io/metal3/disk:latest");
    let r = parse(&format!("oci://h/a/b/c@sha256:{HEX}"));
    assert_eq!((r.tag(), r.digest_hex()), (None, Some(HEX)));
    let r = parse(&format!("oci://[::1]:5000/x_y.z--w__v:v1@sha256:{HEX}"));
    assert_eq!(
        (r.registry(), r.tag(), r.digest_hex()),
        ("[::1]:5000", Some("v1"), Some(HEX))
    );
    for s in [
        "oci://quay.io/metal3/disk:latest".to_owned(),
        format!("oci://10.0.0.1:5000/a/b:t@sha256:{HEX}"),
        format!("oci://h/a@sha256:{HEX}"),
    ] {
        let r = parse(&s);
        assert_eq!(r.to_string(), s);
        assert_eq!(parse(&r.to_string()), r);
    }
}

#[test]
fn converts_to_the_client_reference() {
    let r = parse("oci://127.0.0.1:5000/images/debian:12").to_client_reference();
    assert_eq!(
        (r.registry(), r.repository(), r.tag(), r.digest()),
        ("127.0.0.1:5000", "images/debian", Some("12"), None)
    );
    let d = format!("sha256:{HEX}");
    let r = parse(&format!("oci://h:1/a:t@{d}")).to_client_reference();
    assert_eq!((r.tag(), r.digest()), (Some("t"), Some(d.as_str())));
    let r = parse(&format!("oci://h/a@{d}")).to_client_reference();
    assert_eq!((r.tag(), r.digest()), (None, Some(d.as_str())));
}

#[test]
fn refuses_what_is_not_a_reference() {
    assert!(reason("https://h/a").contains("oci://"));
    assert!(reason("oci://h").contains("no repository path"));
    assert!(reason("oci://h/").contains("no repository path"));
    assert!(reason("oci:///a").contains("no registry host"));
    assert!(reason("oci://h/Images/Debian").contains("lower case"));
    assert!(reason("oci://h/a:").contains("empty tag"));
    assert!(reason("oci://h/a:-x").contains("tag"));
    assert!(reason("oci://h/a@sha256:abc").contains("digest"));
    assert!(reason(&format!("oci://h/a@sha512:{HEX}{HEX}")).contains("only sha256"));
    assert!(reason(&format!("oci://h/a@sha256:{}", HEX.to_uppercase())).contains("lower-case"));
    assert!(reason("oci://h:0/a").contains("port"));
    assert!(reason("oci://h:99999/a").contains("port"));
    assert!(reason("oci://-h/a").contains("host"));
    assert!(reason("oci://h/a//b").contains("component"));
    assert!(reason("oci://h/a-/b").contains("component"));
    assert!(reason("oci://h/a..b").contains("component"));
    assert!(reason("oci://h/a?x=1").contains("query"));
    assert!(reason("oci://h/a b").contains("whitespace"));
    assert!(reason("oci://[::1/a").contains("unclosed"));
    assert!(reason(&format!("oci://h/{}", "a".repeat(256))).contains("longer"));
    // Credentials in the reference are refused, and not repeated in the error.
    let e = OciReference::parse("oci://user:s3cret@h/a").unwrap_err();
    assert!(e.to_string().contains("pull secret"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
    assert_eq!(e.kind(), "invalid_request");
}

fn entry(digest: &str, arch: Option<&str>, disktype: Option<&str>) -> ImageIndexEntry {
    ImageIndexEntry {
        media_type: manifest::OCI_IMAGE_MEDIA_TYPE.into(),
        digest: digest.into(),
        size: 100,
        platform: arch.map(|a| Platform {
            architecture: serde_json::from_value(serde_json::json!(a)).unwrap(),
            os: serde_json::from_value(serde_json::json!("linux")).unwrap(),
            os_version: None,
            os_features: None,
            variant: None,
            features: None,
        }),
        annotations: disktype.map(|d| [(DISKTYPE.to_owned(), d.to_owned())].into()),
        artifact_type: None,
    }
}

fn index(entries: Vec<ImageIndexEntry>) -> OciImageIndex {
    OciImageIndex {
        schema_version: 2,
        media_type: Some(manifest::OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
        manifests: entries,
        artifact_type: None,
        annotations: None,
    }
}

#[test]
fn index_entries_are_chosen_by_architecture_then_disktype() {
    let i = index(vec![entry("a", Some("amd64"), None), entry("b", Some("arm64"), None)]);
    assert_eq!(pick_entry(&i, "x86_64", ImageFormat::Qcow2).unwrap().digest, "a");
    assert_eq!(pick_entry(&i, "aarch64", ImageFormat::Qcow2).unwrap().digest, "b");
    let e = pick_entry(&i, "riscv64", ImageFormat::Qcow2).unwrap_err();
    assert!(
        e.contains("riscv64") && e.contains("a (linux/amd64)") && e.contains("b (linux/arm64)"),
        "{e}"
    );
    // Ironic's `--artifact-platform linux/x86_64`.
    let i = index(vec![
        entry("x", Some("x86_64"), None),
        entry("y", Some("aarch64"), None),
    ]);
    assert_eq!(pick_entry(&i, "amd64", ImageFormat::Qcow2).unwrap().digest, "x");
    assert_eq!(pick_entry(&i, "arm64", ImageFormat::Qcow2).unwrap().digest, "y");
    // Entries without a platform are candidates; a disktype annotation wins, then a named platform.
    let i = index(vec![entry("p", None, Some("qcow2")), entry("q", Some("amd64"), None)]);
    assert_eq!(pick_entry(&i, "x86_64", ImageFormat::Qcow2).unwrap().digest, "p");
    let i = index(vec![entry("p", None, None), entry("q", Some("amd64"), None)]);
    assert_eq!(pick_entry(&i, "x86_64", ImageFormat::Qcow2).unwrap().digest, "q");
    let i = index(vec![
        entry("p", Some("amd64"), Some("raw")),
        entry("q", Some("amd64"), None),
    ]);
    assert_eq!(pick_entry(&i, "x86_64", ImageFormat::Qcow2).unwrap().digest, "p");
    // A raw and a qcow2 entry: the declared format's, else qcow2 (as Ironic prefers it for local download).
    let i = index(vec![
        entry("p", Some("amd64"), Some("raw")),
        entry("q", Some("amd64"), Some("qcow2")),
    ]);
    assert_eq!(pick_entry(&i, "x86_64", ImageFormat::Qcow2).unwrap().digest, "q");
    assert_eq!(pick_entry(&i, "x86_64", ImageFormat::Raw).unwrap().digest, "p");
    let i = index(vec![
        entry("p", Some("amd64"), Some("raw")),
        entry("q", Some("amd64"), Some("raw")),
    ]);
    let e = pick_entry(&i, "x86_64", ImageFormat::Qcow2).unwrap_err();
    assert!(
        e.contains("2 equally good") && e.contains("disktype=raw") && e.contains("pin one"),
        "{e}"
    );
    assert!(pick_entry(&index(vec![]), "x86_64", ImageFormat::Qcow2).is_err());
}

fn layer(media_type: &str, title: Option<&str>) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.into(),
        digest: format!("sha256:{HEX}"),
        size: 1,
        annotations: title.map(|t| [(TITLE.to_owned(), t.to_owned())].into()),
        ..Default::default()
    }
}

#[test]
fn the_disk_layer_is_found_by_title_or_media_type() {
    let tar = manifest::IMAGE_LAYER_MEDIA_TYPE;
    let one = [layer(tar, Some("README"))];
    assert_eq!(pick_layer(&one).unwrap().media_type, tar);
    for disk in ["disk.qcow2", "disk.raw.zst", "rhcos.img.gz", "disk.zst"] {
        let layers = [
            layer(tar, Some("README.md")),
            layer(tar, Some(disk)),
            layer(tar, Some("b.tar.gz")),
        ];
        assert_eq!(layer_title(pick_layer(&layers).unwrap()), Some(disk));
    }
    let layers = [
        layer(tar, Some("README.md")),
        layer("application/vnd.kiln.disk.qcow2", None),
    ];
    assert_eq!(
        pick_layer(&layers).unwrap().media_type,
        "application/vnd.kiln.disk.qcow2"
    );
    let e = pick_layer(&[layer(tar, Some("a.qcow2")), layer(tar, Some("b.raw"))]).unwrap_err();
    assert!(
        e.contains("2 layers and 2 of them") && e.contains("\"a.qcow2\"") && e.contains("\"b.raw\""),
        "{e}"
    );
    let layers = [
        layer(tar, Some("a.txt")),
        layer(manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE, None),
    ];
    assert!(pick_layer(&layers).unwrap_err().contains("0 of them"));
    assert!(pick_layer(&[]).unwrap_err().contains("no layers"));
}

#[test]
fn disktype_values_are_ironics() {
    assert_eq!(disktype_format("qcow2"), Some(ImageFormat::Qcow2));
    assert_eq!(disktype_format("qemu"), Some(ImageFormat::Qcow2));
    assert_eq!(disktype_format("RAW"), Some(ImageFormat::Raw));
    assert_eq!(disktype_format("applehv"), Some(ImageFormat::Raw));
    assert_eq!(disktype_format("vmdk"), None);
}

#[test]
fn manifests_are_told_apart() {
    let index = br#"{"schemaVersion":2,"manifests":[]}"#;
    assert!(matches!(parse_manifest(index), Ok(Manifest::Index(_))));
    let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44","size":2},"layers":[]}"#;
    assert!(matches!(parse_manifest(image), Ok(Manifest::Image(_))));
    let other = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#;
    assert!(parse_manifest(other).unwrap_err().contains("media type"));
    assert!(parse_manifest(b"<html>").unwrap_err().contains("not JSON"));
}

#[test]
fn resolved_blob_debug_hides_the_authorization() {
    let b = ResolvedBlob {
        blob_url: url::Url::parse("https://h/v2/a/blobs/sha256:00").unwrap(),
        authorization: Some("Bearer t0ps3cret".into()),
        digest_hex: HEX.into(),
        size: 1,
        format: None,
    };
    let d = format!("{b:?}");
    assert!(!d.contains("t0ps3cret") && d.contains("***"), "{d}");
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn creds(json: &str, registry: &str) -> Result<Option<(String, String)>, String> {
    credentials_from_docker_config(json.as_bytes(), registry).map(|c| c.map(|c| (c.username, c.password)))
}

#[test]
fn docker_config_json_auth_and_username_password() {
    let some = |u: &str, p: &str| Ok(Some((u.to_owned(), p.to_owned())));
    let json = format!(
        r#"{{"auths": {{"registry.example.com:5000": {{"auth": "{}"}},
            "other.example.com": {{"username": "bob", "password": "pw:with:colons"}}}}}}"#,
        b64("alice:s3cret:x")
    );
    assert_eq!(creds(&json, "registry.example.com:5000"), some("alice", "s3cret:x"));
    assert_eq!(creds(&json, "REGISTRY.example.com:5000"), some("alice", "s3cret:x"));
    assert_eq!(creds(&json, "other.example.com"), some("bob", "pw:with:colons"));
    // host and port must both match.
    assert_eq!(creds(&json, "registry.example.com"), Ok(None));
    assert_eq!(creds(&json, "other.example.com:5000"), Ok(None));
    assert_eq!(creds(&json, "third.example.com"), Ok(None));
}

#[test]
fn docker_config_keys_may_be_urls() {
    let some = |u: &str, p: &str| Ok(Some((u.to_owned(), p.to_owned())));
    let json = format!(
        r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}},
            "http://10.0.0.5:5000/": {{"auth": "{}"}}, "https://quay.io": {{"auth": "{}"}}}}}}"#,
        b64("hub:1"),
        b64("lab:2"),
        b64("quay:3")
    );
    assert_eq!(creds(&json, "docker.io"), some("hub", "1"));
    assert_eq!(creds(&json, "index.docker.io"), some("hub", "1"));
    assert_eq!(creds(&json, "10.0.0.5:5000"), some("lab", "2"));
    assert_eq!(creds(&json, "quay.io"), some("quay", "3"));
}

#[test]
fn legacy_dockercfg_has_no_auths_wrapper() {
    let json = format!(
        r#"{{"https://registry.example.com/v1/": {{"auth": "{}", "email": "a@b"}}}}"#,
        b64("old:style")
    );
    assert_eq!(
        creds(&json, "registry.example.com"),
        Ok(Some(("old".to_owned(), "style".to_owned())))
    );
}

#[test]
fn docker_config_errors_never_show_the_secret() {
    let secret = "Zm9vYmFyYmF6cXV4c2VjcmV0";
    for json in [
        // not base64 (the secret's bytes must not be echoed by the decoder's error)
        format!(r#"{{"auths": {{"h": {{"auth": "{secret}!!"}}}}}}"#),
        // base64 of something without a colon
        format!(r#"{{"auths": {{"h": {{"auth": "{secret}"}}}}}}"#),
        // neither form
        format!(r#"{{"auths": {{"h": {{"password": "{secret}"}}}}}}"#),
        // not JSON at all
        format!(r#"{{"auths": {{"h": {{"auth": "{secret}"#),
        format!(r#"["{secret}"]"#),
        format!(r#"{{"auths": ["{secret}"]}}"#),
        format!(r#"{{"auths": {{"h": "{secret}"}}}}"#),
    ] {
        let e = creds(&json, "h").unwrap_err();
        assert!(!e.contains(secret) && !e.contains("foobarbaz"), "{e}");
    }
}

#[test]
fn fuzz_property_holds_for_samples() {
    for s in [
        "oci://h/a".to_owned(),
        format!("oci://[::1]:5000/a/b:t@sha256:{HEX}"),
        "oci://u:p@h/a".to_owned(),
        "\u{0}oci://".to_owned(),
        format!(
            "h\n{{\"auths\": {{\"h\": {{\"auth\": \"{}\"}}}}}}",
            b64("u:averyverylongsecret")
        ),
        "h\n{\"auths\": {\"h\": {\"auth\": \"averyverylongsecret!\"}}}".to_owned(),
    ] {
        crate::fuzzing::oci_reference(s.as_bytes());
    }
}
