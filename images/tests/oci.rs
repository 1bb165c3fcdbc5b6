//! `oci://` images against a real registry: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1, with
//! artifacts pushed by `oci_client` as `oras push` lays them out (Ironic's convention: one layer titled with the
//! file name, `disktype` on the manifest). The bytes written must be the image's; failures must write nothing (a
//! reference the registry cannot resolve) or wipe what was written (a blob that does not match its digest).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use kiln_images::oci::{DISKTYPE, TITLE};
use kiln_images::pipeline::{Compression, WriteReport};
use kiln_images::protocol::{ChecksumType, ImageFormat, ImageSpec, RegistryAccess, RegistryCredentials};
use kiln_images::{ImageError, Progress, write_image_with_registry};
use kiln_tests::registry::ORAS_LAYER;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{self, ImageIndexEntry, OciImageIndex, OciImageManifest, Platform};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// A registry serving a temporary directory (`kiln_tests::registry`, Debian's `docker-registry` on loopback); the
/// process is killed and the directory removed on drop, also when the test panics.
struct Registry {
    _server: kiln_tests::registry::Registry,
    dir: tempfile::TempDir,
    /// `127.0.0.1:port`
    host: String,
}

impl Registry {
    /// Starts a registry; with `users`, it requires HTTP Basic authentication (htpasswd, bcrypt) from them.
    fn start(users: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let auth = if users.is_empty() {
            String::new()
        } else {
            let file = kiln_tests::registry::htpasswd(dir.path(), users).unwrap();
            kiln_tests::registry::htpasswd_auth(&file)
        };
        Self::start_with(dir, &auth)
    }

    /// Starts a registry on the storage in `dir` with the `auth:` section `auth` of its configuration.
    fn start_with(dir: tempfile::TempDir, auth: &str) -> Self {
        let server = kiln_tests::registry::Registry::on_loopback(dir.path(), auth).unwrap_or_else(|e| panic!("{e:#}"));
        let host = server.host.clone();
        Registry {
            _server: server,
            dir,
            host,
        }
    }

    /// The file the registry keeps a blob's bytes in.
    fn blob_file(&self, hex: &str) -> PathBuf {
        kiln_tests::registry::Registry::blob_file(self.dir.path(), hex)
    }

    fn reference(&self, repo_tag: &str) -> Reference {
        format!("{}/{repo_tag}", self.host).parse().unwrap()
    }

    fn url(&self, repo_tag: &str) -> String {
        format!("oci://{}/{repo_tag}", self.host)
    }
}

fn push_client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// What a push left in the registry.
struct Pushed {
    /// `sha256:<hex>` of the image manifest.
    manifest_digest: String,
    manifest_size: i64,
    /// Hex of the layer's sha256.
    layer_hex: String,
}

/// Pushes `data` as the single layer of an artifact, as `oras push -a K=V ... repo:tag ./title` does.
async fn push(
    reg: &Registry,
    repo_tag: &str,
    data: Vec<u8>,
    title: &str,
    annotations: &[(&str, &str)],
    auth: &RegistryAuth,
) -> Pushed {
    let client = push_client();
    let reference = reg.reference(repo_tag);
    let layer = ImageLayer::new(
        data,
        ORAS_LAYER.into(),
        Some([(TITLE.to_owned(), title.to_owned())].into()),
    );
    let config = Config::new(b"{}".to_vec(), "application/vnd.oci.empty.v1+json".into(), None);
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let m = OciImageManifest::build(
        std::slice::from_ref(&layer),
        &config,
        (!annotations.is_empty()).then_some(annotations),
    );
    let layer_hex = m.layers[0].digest.strip_prefix("sha256:").unwrap().to_owned();
    client
        .push(&reference, &[layer], config, auth, Some(m))
        .await
        .unwrap_or_else(|e| panic!("pushing {repo_tag}: {e}"));
    let (body, manifest_digest) = client
        .pull_manifest_raw(&reference, auth, &[manifest::OCI_IMAGE_MEDIA_TYPE])
        .await
        .unwrap();
    Pushed {
        manifest_digest,
        manifest_size: body.len() as i64,
        layer_hex,
    }
}

fn plain_http() -> RegistryAccess {
    RegistryAccess {
        credentials: None,
        plain_http: true,
    }
}

async fn write(
    url: &str,
    checksum: &str,
    format: Option<ImageFormat>,
    access: Option<&RegistryAccess>,
    target: &Path,
) -> Result<WriteReport, ImageError> {
    let spec = ImageSpec {
        url: url.into(),
        checksum: checksum.into(),
        checksum_type: ChecksumType::Auto,
        format,
    };
    write_image_with_registry(&spec, access, target, &Progress::new()).await
}

/// A target that already holds data (a disk being re-provisioned): failures before the write must leave it as it
/// is.
struct Untouched {
    path: PathBuf,
    data: Vec<u8>,
}

impl Untouched {
    fn new(dir: &Path) -> Self {
        let path = dir.join("old-disk");
        let data = noise(77, 2 << 20);
        std::fs::write(&path, &data).unwrap();
        Self { path, data }
    }

    fn check(&self, what: &str) {
        assert!(
            std::fs::read(&self.path).unwrap() == self.data,
            "{what}: the target was written to"
        );
    }
}

fn sha256_bytes(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_artifact_by_tag_and_by_digest() {
    let reg = Registry::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let img = qcow2(&raw, "debian-12.qcow2", &[]);
    let want = reference_raw(&img, dir.path());
    let pushed = push(
        &reg,
        "images/debian:12",
        std::fs::read(&img).unwrap(),
        "debian-12.qcow2",
        &[(DISKTYPE, "qcow2")],
        &RegistryAuth::Anonymous,
    )
    .await;
    let access = plain_http();
    let target = dir.path().join("target");
    let urls = [
        reg.url("images/debian:12"),
        reg.url(&format!("images/debian@{}", pushed.manifest_digest)),
        reg.url(&format!("images/debian:12@{}", pushed.manifest_digest)),
    ];
    for url in &urls {
        let _ = std::fs::remove_file(&target);
        let r = write(url, "", None, Some(&access), &target)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert_eq!(
            (r.compression, r.format),
            (Compression::None, ImageFormat::Qcow2),
            "{url}"
        );
        assert!(r.verified, "{url}");
        assert_eq!(r.digest.to_string(), format!("sha256:{}", pushed.layer_hex), "{url}");
        assert_eq!(sha256_file(&target), want, "{url}: decoded differently from qemu-img");
    }
    // The layer digest given as the checksum, as Metal3 may.
    let _ = std::fs::remove_file(&target);
    let sum = format!("sha256:{}", pushed.layer_hex);
    let r = write(&urls[0], &sum, Some(ImageFormat::Qcow2), Some(&access), &target)
        .await
        .unwrap();
    assert_eq!(r.digest.hex, pushed.layer_hex);
    assert_eq!(sha256_file(&target), want);

    // Refused before a byte is written: another checksum, a declared format the annotation contradicts, a digest
    // pin the registry does not have.
    let old = Untouched::new(dir.path());
    let e = write(&urls[0], &"ab".repeat(32), None, Some(&access), &old.path)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "checksum_mismatch", "{e}");
    old.check("wrong checksum");
    let md5 = "0123456789abcdef0123456789abcdef";
    let spec = ImageSpec {
        url: urls[0].clone(),
        checksum: md5.into(),
        checksum_type: ChecksumType::Md5,
        format: None,
    };
    let e = write_image_with_registry(&spec, Some(&access), &old.path, &Progress::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "checksum_mismatch", "{e}");
    old.check("md5 checksum");
    let e = write(&urls[0], "", Some(ImageFormat::Raw), Some(&access), &old.path)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::DisktypeMismatch { .. }), "{e:?}");
    assert_eq!(e.kind(), "unsupported_format");
    old.check("declared raw");
    let pin = reg.url(&format!("images/debian@sha256:{}", "0".repeat(64)));
    let e = write(&pin, "", None, Some(&access), &old.path).await.unwrap_err();
    assert_eq!(e.kind(), "registry", "{e}");
    old.check("unknown digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_resolves_to_this_architecture() {
    let reg = Registry::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let amd64 = noise(64, (3 << 20) + 512);
    let arm64 = noise(65, (2 << 20) + 1024);
    let auth = RegistryAuth::Anonymous;
    let mut entries = Vec::new();
    for (arch, data) in [("amd64", &amd64), ("arm64", &arm64)] {
        let title = format!("disk-{arch}.raw");
        let p = push(&reg, &format!("images/multi:{arch}"), data.clone(), &title, &[], &auth).await;
        entries.push(ImageIndexEntry {
            media_type: manifest::OCI_IMAGE_MEDIA_TYPE.into(),
            digest: p.manifest_digest,
            size: p.manifest_size,
            platform: Some(Platform {
                architecture: serde_json::from_value(serde_json::json!(arch)).unwrap(),
                os: serde_json::from_value(serde_json::json!("linux")).unwrap(),
                os_version: None,
                os_features: None,
                variant: None,
                features: None,
            }),
            annotations: Some([(DISKTYPE.to_owned(), "raw".to_owned())].into()),
            artifact_type: None,
        });
    }
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(manifest::OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
        manifests: entries,
        artifact_type: None,
        annotations: None,
    };
    push_client()
        .push_manifest_list(&reg.reference("images/multi:latest"), &auth, index)
        .await
        .unwrap();
    let want = match std::env::consts::ARCH {
        "x86_64" => &amd64,
        "aarch64" => &arm64,
        other => panic!("no test image for {other}"),
    };
    let target = dir.path().join("target");
    // A bare reference means `latest`.
    let r = write(&reg.url("images/multi"), "", None, Some(&plain_http()), &target)
        .await
        .unwrap();
    assert_eq!(r.format, ImageFormat::Raw);
    assert_eq!(r.digest.hex, sha256_bytes(want));
    assert!(
        std::fs::read(&target).unwrap() == *want,
        "the other architecture's image was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_compressed_raw_layer_is_decompressed() {
    let reg = Registry::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let zst = compress(&raw, "zstd", "zst");
    let pushed = push(
        &reg,
        "images/raw-zst:v1",
        std::fs::read(&zst).unwrap(),
        "disk.raw.zst",
        &[],
        &RegistryAuth::Anonymous,
    )
    .await;
    let target = dir.path().join("target");
    let r = write(&reg.url("images/raw-zst:v1"), "", None, Some(&plain_http()), &target)
        .await
        .unwrap();
    assert_eq!((r.compression, r.format), (Compression::Zstd, ImageFormat::Raw));
    assert_eq!(r.digest.hex, pushed.layer_hex);
    assert_eq!(r.bytes_read, std::fs::metadata(&zst).unwrap().len());
    assert_eq!(sha256_file(&target), sha256_file(&raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_references_write_nothing() {
    let reg = Registry::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    push(
        &reg,
        "images/small:v1",
        noise(3, 1 << 20),
        "small.raw",
        &[],
        &RegistryAuth::Anonymous,
    )
    .await;
    let old = Untouched::new(dir.path());
    let access = plain_http();
    for (url, hint) in [
        (reg.url("images/small:v2"), "tag"),
        (reg.url("images/other:v1"), "repository"),
    ] {
        let e = write(&url, "", None, Some(&access), &old.path).await.unwrap_err();
        assert!(matches!(e, ImageError::Registry { .. }), "{e:?}");
        assert_eq!(e.kind(), "registry");
        assert!(e.to_string().contains(hint), "{e}");
        old.check(&url);
    }
    // HTTPS (the default) to a registry that speaks plain HTTP.
    let e = write(&reg.url("images/small:v1"), "", None, None, &old.path)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "registry", "{e}");
    assert!(e.to_string().contains("plain_http"), "{e}");
    old.check("https");
    // A reference that is none.
    let e = write(&reg.url("Images/Small:v1"), "", None, Some(&access), &old.path)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_request", "{e}");
    old.check("upper case");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_caught_and_the_target_wiped() {
    let reg = Registry::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let data = std::fs::read(&raw).unwrap();
    let pushed = push(
        &reg,
        "images/rotten:v1",
        data.clone(),
        "disk.raw",
        &[],
        &RegistryAuth::Anonymous,
    )
    .await;
    // Bit rot in the registry's storage, past the partition table: same size, other bytes.
    let blob = reg.blob_file(&pushed.layer_hex);
    let mut stored = std::fs::read(&blob).unwrap();
    assert!(stored == data, "{} is not the pushed layer", blob.display());
    for b in &mut stored[(10 << 20)..(10 << 20) + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&blob, &stored).unwrap();
    let target = dir.path().join("target");
    let e = write(&reg.url("images/rotten:v1"), "", None, Some(&plain_http()), &target)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::ChecksumMismatch { .. }), "{e:?}");
    assert_eq!(e.kind(), "checksum_mismatch");
    assert!(e.to_string().contains(&pushed.layer_hex), "{e}");
    let written = std::fs::read(&target).unwrap();
    assert!(
        written[..1 << 20] != data[..1 << 20],
        "the image's first MiB was left on the target"
    );
    assert!(has_no_partition_table(&target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_credentials_are_required_and_used() {
    let (user, password) = ("kiln", "pa55-w0rd:with colon");
    let reg = Registry::start(&[(user, password)]);
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    // Compressed clusters: the decoder re-reads data that preceded its table with Range requests, which need the
    // credentials too.
    let img = qcow2(&raw, "disk.qcow2", &["-c"]);
    let basic = RegistryAuth::Basic(user.into(), password.into());
    let pushed = push(
        &reg,
        "private/disk:v1",
        std::fs::read(&img).unwrap(),
        "disk.qcow2",
        &[(DISKTYPE, "qemu")],
        &basic,
    )
    .await;
    let url = reg.url("private/disk:v1");
    let old = Untouched::new(dir.path());
    let e = write(&url, "", None, Some(&plain_http()), &old.path).await.unwrap_err();
    assert_eq!(e.kind(), "registry", "{e}");
    assert!(e.to_string().contains("credentials"), "{e}");
    old.check("anonymous");
    let wrong = RegistryAccess {
        credentials: Some(RegistryCredentials {
            username: user.into(),
            password: "not-the-password".into(),
        }),
        plain_http: true,
    };
    let e = write(&url, "", None, Some(&wrong), &old.path).await.unwrap_err();
    assert_eq!(e.kind(), "registry", "{e}");
    assert!(!e.to_string().contains("not-the-password") && !format!("{e:?}").contains("not-the-password"));
    old.check("wrong password");
    let access = RegistryAccess {
        credentials: Some(RegistryCredentials {
            username: user.into(),
            password: password.into(),
        }),
        plain_http: true,
    };
    let target = dir.path().join("target");
    let r = write(&url, "", None, Some(&access), &target).await.unwrap();
    assert_eq!(r.format, ImageFormat::Qcow2);
    assert_eq!(r.digest.hex, pushed.layer_hex);
    assert_eq!(sha256_file(&target), reference_raw(&img, dir.path()));
}

/// A token service as a registry's `auth: token:` expects (the Docker token protocol): it hands `user` a JWT,
/// signed with ES256 by a self-signed certificate the registry trusts (`x5c`), for whatever scope is asked.
struct TokenService {
    /// The registry's `auth:` section.
    auth: String,
    /// Token requests seen: whether each carried the right Basic credentials.
    requests: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenService {
    async fn start(dir: &Path, user: &str, password: &str) -> Self {
        Self::start_expiring(dir, user, password, 600).await
    }

    /// Like [`TokenService::start`], with tokens whose `exp` claim is `exp_from_now` seconds after they are made
    /// (the registry accepts a token until 60 s past its `exp`, for clock skew).
    async fn start_expiring(dir: &Path, user: &str, password: &str, exp_from_now: i64) -> Self {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::{IntoResponse, Response};
        use base64::Engine as _;

        #[derive(Clone)]
        struct St {
            key: std::sync::Arc<ring::signature::EcdsaKeyPair>,
            cert_der: String,
            basic: String,
            requests: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
            exp_from_now: i64,
        }
        async fn token(State(st): State<St>, Query(q): Query<Vec<(String, String)>>, headers: HeaderMap) -> Response {
            let authorized = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&st.basic);
            st.requests.lock().unwrap().push(authorized);
            if !authorized {
                return (StatusCode::UNAUTHORIZED, "{\"details\":\"credentials required\"}").into_response();
            }
            let b64 = |data: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
            let access: Vec<serde_json::Value> = q
                .iter()
                .filter(|(k, _)| k == "scope")
                .filter_map(|(_, scope)| {
                    let mut parts = scope.rsplitn(2, ':');
                    let actions = parts.next()?;
                    let (kind, name) = parts.next()?.split_once(':')?;
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                .cast_signed();
            let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [st.cert_der]});
            let claims = serde_json::json!({
                "iss": "kiln-test-issuer", "sub": "kiln", "aud": "kiln-test-registry",
                "exp": now + st.exp_from_now, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", access.len()),
                "access": access,
            });
            let signing_input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let sig = st
                .key
                .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
                .unwrap();
            let jwt = format!("{signing_input}.{}", b64(sig.as_ref()));
            axum::Json(serde_json::json!({ "token": jwt, "expires_in": 600 })).into_response()
        }

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["kiln-test-token".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let bundle = dir.join("token-ca.pem");
        std::fs::write(&bundle, cert.pem()).unwrap();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let st = St {
            key: std::sync::Arc::new(signer),
            cert_der: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            basic: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            requests: requests.clone(),
            exp_from_now,
        };
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let auth = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: kiln-test-registry\n    issuer: kiln-test-issuer\n    \
             rootcertbundle: {}\n",
            bundle.display()
        );
        Self { auth, requests, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_from_the_token_service_is_used() {
    let (user, password) = ("robot$kiln", "t0ken-service-secret");
    let dir = tempfile::tempdir().unwrap();
    let registry_dir = tempfile::tempdir().unwrap();
    let tokens = TokenService::start(registry_dir.path(), user, password).await;
    let reg = Registry::start_with(registry_dir, &tokens.auth);
    let raw = make_raw(dir.path());
    let img = qcow2(&raw, "disk.qcow2", &["-c", "-o", "compression_type=zstd"]);
    let basic = RegistryAuth::Basic(user.into(), password.into());
    let pushed = push(
        &reg,
        "private/bearer:v1",
        std::fs::read(&img).unwrap(),
        "disk.qcow2",
        &[(DISKTYPE, "qcow2")],
        &basic,
    )
    .await;
    let url = reg.url("private/bearer:v1");
    let old = Untouched::new(dir.path());
    let e = write(&url, "", None, Some(&plain_http()), &old.path).await.unwrap_err();
    assert_eq!(e.kind(), "registry", "{e}");
    assert!(e.to_string().contains("credentials"), "{e}");
    old.check("anonymous");
    let access = RegistryAccess {
        credentials: Some(RegistryCredentials {
            username: user.into(),
            password: password.into(),
        }),
        plain_http: true,
    };
    tokens.requests.lock().unwrap().clear();
    let target = dir.path().join("target");
    let r = write(&url, "", None, Some(&access), &target).await.unwrap();
    assert_eq!(r.digest.hex, pushed.layer_hex);
    assert_eq!(sha256_file(&target), reference_raw(&img, dir.path()));
    // The token service saw the credentials; the registry only ever the token (it accepts nothing else).
    assert_eq!(*tokens.requests.lock().unwrap(), vec![true]);
}

/// A TCP relay to `upstream` on loopback that, once, holds the first connection to carry more than `after` bytes
/// downstream for `pause`, then calls `on_cut` and closes it (a download cut mid-body, resumed only after the
/// pause).
async fn cutting_relay(
    upstream: String,
    after: u64,
    pause: std::time::Duration,
    on_cut: impl Fn() + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    let on_cut = std::sync::Arc::new(on_cut);
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(async move {
        loop {
            let Ok((down, _)) = listener.accept().await else { return };
            let (upstream, cut, on_cut) = (upstream.clone(), cut.clone(), on_cut.clone());
            tokio::spawn(async move {
                let up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut down_r, mut down_w) = down.into_split();
                let (mut up_r, mut up_w) = up.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut down_r, &mut up_w).await;
                });
                let mut relayed = 0u64;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match up_r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if down_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    relayed += n as u64;
                    if relayed > after && !cut.swap(true, Ordering::SeqCst) {
                        tokio::time::sleep(pause).await;
                        on_cut();
                        break;
                    }
                }
                requests.abort();
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_renewed_to_resume_a_cut_download() {
    // Tokens valid for about 3 s (60 s of allowed skew past an `exp` 57 s ago); the blob's connection is cut after
    // 1 MiB and held 6 s first, so the resume presents an expired token and is refused with 401.
    let (user, password) = ("robot$kiln", "t0ken-service-secret");
    let dir = tempfile::tempdir().unwrap();
    let registry_dir = tempfile::tempdir().unwrap();
    let tokens = TokenService::start_expiring(registry_dir.path(), user, password, -57).await;
    let reg = Registry::start_with(registry_dir, &tokens.auth);
    let raw = make_raw(dir.path());
    let basic = RegistryAuth::Basic(user.into(), password.into());
    let pushed = push(
        &reg,
        "private/expiring:v1",
        std::fs::read(&raw).unwrap(),
        "disk.raw",
        &[(DISKTYPE, "raw")],
        &basic,
    )
    .await;
    let (seen, at_cut) = (
        tokens.requests.clone(),
        std::sync::Arc::new(std::sync::Mutex::new(None)),
    );
    let record = at_cut.clone();
    let (relay, task) = cutting_relay(
        reg.host.clone(),
        1 << 20,
        std::time::Duration::from_secs(6),
        move || {
            *record.lock().unwrap() = Some(seen.lock().unwrap().len());
        },
    )
    .await;
    let access = RegistryAccess {
        credentials: Some(RegistryCredentials {
            username: user.into(),
            password: password.into(),
        }),
        plain_http: true,
    };
    tokens.requests.lock().unwrap().clear();
    let target = dir.path().join("target");
    let url = format!("oci://{relay}/private/expiring:v1");
    let r = write(&url, "", None, Some(&access), &target).await;
    task.abort();
    let r = r.unwrap_or_else(|e| panic!("the cut download was not resumed with a renewed token: {e}"));
    assert_eq!(r.digest.hex, pushed.layer_hex);
    assert_eq!(sha256_file(&target), sha256_file(&raw));
    // Exactly one token was asked for after the cut (the renewal for the resume), each time with the credentials;
    // the registry itself never saw them.
    let before = at_cut.lock().unwrap().expect("the relay cut the download");
    let requests = tokens.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), before + 1, "{requests:?}, {before} before the cut");
    assert!(requests.iter().all(|&authorized| authorized), "{requests:?}");
}
