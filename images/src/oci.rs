//! `oci://` disk images (Metal3's `image.url: oci://…`, pulled as Ironic pulls them): the reference, its resolution
//! in the registry to the one blob that holds the disk image, and the Kubernetes pull secrets that carry the
//! registry's credentials (`.dockerconfigjson`, `.dockercfg`).
//!
//! The conventions are Ironic's ("Use of an OCI Container Registry"): an artifact pushed with
//! `oras push -a disktype=qcow2 --artifact-platform linux/x86_64 host/repo:tag ./disk.img`. An image index is
//! narrowed to the agent's architecture, a manifest to its disk layer, and the `disktype` annotation hints the
//! format. This module does not stream: the blob goes through the ordinary pipeline ([`crate::pipeline`]), verified
//! by its registry digest.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::FutureExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{self, ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use reqwest::header::HeaderValue;

use crate::digest::{Algorithm, ChecksumSource, ExpectedDigest};
use crate::error::ImageError;
use crate::pipeline::format_name;
use crate::protocol::{ImageFormat, RegistryAccess, RegistryCredentials};
use crate::source::{Authorization, Renew, SourceLocation};

/// The scheme of an OCI image URL.
pub const SCHEME: &str = "oci://";
/// The annotation (on the image manifest or its index entry) that names the disk format.
pub const DISKTYPE: &str = "disktype";
/// The annotation that names a layer's file (`oras push` sets it to the file name).
pub const TITLE: &str = "org.opencontainers.image.title";

/// The manifest media types accepted: OCI and Docker image manifests, OCI image indexes and Docker manifest lists.
const MANIFEST_TYPES: &[&str] = &[
    manifest::OCI_IMAGE_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Longest repository name the distribution spec allows.
const MAX_REPOSITORY: usize = 255;
/// Longest tag the distribution spec allows.
const MAX_TAG: usize = 128;

/// `oci://host[:port]/path/name[:tag][@sha256:<hex>]`, validated: a host, a lower-case repository path, a tag
/// (`latest` when neither tag nor digest is given) and/or a sha256 manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl OciReference {
    /// Parses an `oci://` image URL. Our own small parser (it faces user input), following the distribution
    /// spec's grammar: the host is lower-cased, the repository must already be lower case.
    ///
    /// # Errors
    /// `InvalidReference` naming what is wrong; the reference in it has any `user:password@` replaced.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            reference: crate::source::redact_userinfo(s),
            reason: reason.to_owned(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("an OCI image reference starts with oci://"))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        // First, so that nothing in the user-info decides which error is reported.
        if host.contains('@') {
            return Err(invalid(
                "credentials do not belong in the reference: give them as the registry pull secret",
            ));
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("whitespace or control characters"));
        }
        if rest.contains(['?', '#']) {
            return Err(invalid(
                "a query or fragment (? or #) has no meaning in an OCI reference",
            ));
        }
        let registry = parse_registry(host).map_err(|r| invalid(&r))?;
        if path.is_empty() {
            return Err(invalid(
                "no repository path (oci://host[:port]/path/name[:tag][@sha256:digest])",
            ));
        }
        let (name_tag, digest) = match path.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (path, None),
        };
        let (repository, tag) = match name_tag.split_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (name_tag, None),
        };
        check_repository(repository).map_err(|r| invalid(&r))?;
        if let Some(t) = tag {
            check_tag(t).map_err(|r| invalid(&r))?;
        }
        let digest = match digest {
            Some(d) => Some(parse_digest(d).map_err(|r| invalid(&r))?),
            None => None,
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// `host` or `host:port` (`[v6]:port` for an IPv6 address).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `images/debian`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `None` only for a reference pinned by digest alone.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The lower-case hex of the sha256 manifest digest the reference is pinned to.
    pub fn digest_hex(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The same reference for `oci_client` (a digest, when given, wins over the tag there as here).
    pub fn to_client_reference(&self) -> oci_client::Reference {
        let digest = self.digest.as_ref().map(|d| format!("sha256:{d}"));
        match (&self.tag, digest) {
            (Some(t), Some(d)) => {
                oci_client::Reference::with_tag_and_digest(self.registry.clone(), self.repository.clone(), t.clone(), d)
            }
            (None, Some(d)) => oci_client::Reference::with_digest(self.registry.clone(), self.repository.clone(), d),
            (Some(t), None) => {
                oci_client::Reference::with_tag(self.registry.clone(), self.repository.clone(), t.clone())
            }
            (None, None) => {
                oci_client::Reference::with_tag(self.registry.clone(), self.repository.clone(), "latest".to_owned())
            }
        }
    }
}

impl std::fmt::Display for OciReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@sha256:{d}")?;
        }
        Ok(())
    }
}

/// Checks `host[:port]` (a DNS name, an IPv4 address or a bracketed IPv6 address) and lower-cases it.
fn parse_registry(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("no registry host".into());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the registry address".to_owned())?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("[{addr}] is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| "junk after the IPv6 address".to_owned())?,
            ),
        };
        (None, port)
    } else {
        let (n, p) = match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        (Some(n), p)
    };
    if let Some(name) = name {
        if name.len() > 253 {
            return Err("registry host name longer than 253 characters".into());
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !name.split('.').all(label_ok) {
            return Err(format!("{name:?} is not a registry host name"));
        }
    }
    if let Some(p) = port {
        let valid = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !valid || !matches!(p.parse::<u32>(), Ok(1..=65535)) {
            return Err(format!("{p:?} is not a port"));
        }
    }
    Ok(host.to_ascii_lowercase())
}

/// A repository path: `/`-separated components of lower-case letters and digits, joined by `.`, `_`, `__` or runs
/// of `-` (the distribution spec's `path-component`).
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("no repository path (oci://host[:port]/path/name[:tag][@sha256:digest])".into());
    }
    if repo.len() > MAX_REPOSITORY {
        return Err(format!("repository longer than {MAX_REPOSITORY} characters"));
    }
    if repo.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository {repo:?} must be lower case"));
    }
    for component in repo.split('/') {
        if !path_component_ok(component) {
            return Err(format!(
                "repository component {component:?} is not lower-case letters and digits joined by . _ __ or -"
            ));
        }
    }
    Ok(())
}

fn path_component_ok(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag".into());
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = tag.len() <= MAX_TAG
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not 1 to {MAX_TAG} letters, digits, _ . - (not starting with . or -)"
        ))
    }
}

/// `sha256:<64 lower-case hex>` → the hex.
fn parse_digest(d: &str) -> Result<String, String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!(
            "digest {d:?} is not sha256:<64 hex digits> (only sha256 is supported)"
        ));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {d:?} is not sha256:<64 lower-case hex digits>"));
    }
    Ok(hex.to_owned())
}

/// The blob an `oci://` reference resolved to, and how to fetch it.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedBlob {
    /// `scheme://registry/v2/<repository>/blobs/sha256:<hex>` (the registry may redirect it to object storage).
    pub blob_url: url::Url,
    /// The `Authorization` header value for `blob_url`: `Bearer <token>` from the registry's token service,
    /// `Basic <base64>` of the credentials, or `None` for anonymous access. Never printed by `Debug`.
    pub authorization: Option<String>,
    /// Lower-case hex of the layer's sha256 digest: what the blob's bytes must hash to.
    pub digest_hex: String,
    /// The layer's size in bytes, as the manifest declares it.
    pub size: u64,
    /// The format the `disktype` annotation names; `None` when there is none (the pipeline detects it).
    pub format: Option<ImageFormat>,
}

impl std::fmt::Debug for ResolvedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedBlob")
            .field("blob_url", &self.blob_url.as_str())
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .field("digest_hex", &self.digest_hex)
            .field("size", &self.size)
            .field("format", &self.format)
            .finish()
    }
}

/// The registry client configuration the pipeline uses: the timeouts of [`crate::source::http_client`].
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    }
}

/// Resolves `reference` to the blob of its disk image: fetches the manifest (through an image index to the entry
/// for this machine's architecture and, among those, the `declared` format's or qcow2's; see [`pick_entry`]),
/// picks the disk layer and reads the `disktype` hint. `config`'s protocol is set from `access.plain_http` (HTTPS
/// without it) and its platform resolver is not used. Anonymous unless `access` carries credentials; registries
/// that answer with a Bearer challenge get a token for them.
///
/// # Errors
/// `Registry` when the registry cannot be reached, refuses access, does not know the reference or holds no single
/// disk image for this machine; `UnsupportedFormat` for an unknown `disktype`.
pub async fn resolve(
    reference: &OciReference,
    access: Option<&RegistryAccess>,
    declared: Option<ImageFormat>,
    config: ClientConfig,
) -> Result<ResolvedBlob, ImageError> {
    let plain_http = access.is_some_and(|a| a.plain_http);
    let fail = |message: String| ImageError::Registry {
        reference: reference.to_string(),
        message,
    };
    let client_fail = |e: OciDistributionError| fail(describe(&e, plain_http));
    let (client, auth) = registry_client(reference, access, config)?;
    let credentials = access.and_then(|a| a.credentials.as_ref());
    let image = reference.to_client_reference();
    let token = client
        .auth(&image, &auth, RegistryOperation::Pull)
        .await
        .map_err(client_fail)?;
    let (body, _) = client
        .pull_manifest_raw(&image, &auth, MANIFEST_TYPES)
        .await
        .map_err(client_fail)?;
    let (manifest, entry_annotations) = match parse_manifest(&body).map_err(&fail)? {
        Manifest::Image(m) => (m, None),
        Manifest::Index(index) => {
            let prefer = declared.unwrap_or(ImageFormat::Qcow2);
            let entry = pick_entry(&index, std::env::consts::ARCH, prefer).map_err(&fail)?;
            tracing::debug!(reference = %reference, digest = %entry.digest, "image index entry chosen");
            let pinned = image.clone_with_digest(entry.digest.clone());
            let (body, _) = client
                .pull_manifest_raw(&pinned, &auth, MANIFEST_TYPES)
                .await
                .map_err(client_fail)?;
            match parse_manifest(&body).map_err(&fail)? {
                Manifest::Image(m) => (m, entry.annotations.clone()),
                Manifest::Index(_) => {
                    return Err(fail(format!(
                        "index entry {} is itself an index (nested indexes are not followed)",
                        entry.digest
                    )));
                }
            }
        }
    };
    let layer = pick_layer(&manifest.layers).map_err(&fail)?;
    let disktype = manifest
        .annotations
        .as_ref()
        .and_then(|a| a.get(DISKTYPE))
        .or_else(|| entry_annotations.as_ref().and_then(|a| a.get(DISKTYPE)));
    let format = match disktype {
        Some(d) => Some(disktype_format(d).ok_or_else(|| ImageError::UnsupportedFormat {
            what: format!("disktype annotation {d:?} of {reference} (kiln knows qcow2, qemu, raw, applehv)"),
        })?),
        None => None,
    };
    let digest_hex = parse_digest(&layer.digest).map_err(|r| fail(format!("its disk layer's {r}")))?;
    let size = u64::try_from(layer.size).map_err(|_| fail(format!("its disk layer declares size {}", layer.size)))?;
    let scheme = if plain_http { "http" } else { "https" };
    let blob_url = url::Url::parse(&format!(
        "{scheme}://{}/v2/{}/blobs/sha256:{digest_hex}",
        reference.registry, reference.repository
    ))
    .map_err(|e| fail(format!("building the blob URL failed: {e}")))?;
    let authorization = match (token, credentials) {
        (Some(t), _) => Some(format!("Bearer {t}")),
        (None, Some(c)) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
        )),
        (None, None) => None,
    };
    Ok(ResolvedBlob {
        blob_url,
        authorization,
        digest_hex,
        size,
        format,
    })
}

/// The registry client for `access` (HTTPS unless it says plain HTTP; `config`'s platform resolver is not used) and
/// the credentials it presents (anonymous without any).
fn registry_client(
    reference: &OciReference,
    access: Option<&RegistryAccess>,
    mut config: ClientConfig,
) -> Result<(Client, RegistryAuth), ImageError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    config.protocol = if access.is_some_and(|a| a.plain_http) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    config.platform_resolver = None;
    let client = Client::try_from(config).map_err(|e| ImageError::Registry {
        reference: reference.to_string(),
        message: format!("building the registry client failed: {e}"),
    })?;
    let auth = match access.and_then(|a| a.credentials.as_ref()) {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    Ok((client, auth))
}

/// A new Bearer token to pull `reference`, from the registry's token service (the one in use expired): the
/// `Authorization` header value.
///
/// # Errors
/// `Registry` when the token service refuses or cannot be reached, or the registry no longer asks for a token.
async fn renew_token(reference: OciReference, access: Option<RegistryAccess>) -> Result<HeaderValue, ImageError> {
    let plain_http = access.as_ref().is_some_and(|a| a.plain_http);
    let fail = |message: String| ImageError::Registry {
        reference: reference.to_string(),
        message,
    };
    let (client, auth) = registry_client(&reference, access.as_ref(), client_config())?;
    let token = client
        .auth(&reference.to_client_reference(), &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| fail(format!("renewing its expired token: {}", describe(&e, plain_http))))?
        .ok_or_else(|| fail("renewing its expired token: the registry no longer hands out tokens".into()))?;
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| fail("its token is not a valid HTTP header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The format a `disktype` annotation names (Ironic's values, case-insensitive).
pub fn disktype_format(value: &str) -> Option<ImageFormat> {
    match value.to_ascii_lowercase().as_str() {
        "qcow2" | "qemu" => Some(ImageFormat::Qcow2),
        "raw" | "applehv" => Some(ImageFormat::Raw),
        _ => None,
    }
}

/// A registry client error, with what to check.
fn describe(e: &OciDistributionError, plain_http: bool) -> String {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !cause.contains(&text) {
            cause = format!("{cause}: {text}");
        }
        source = s.source();
    }
    if cause.len() > 400 {
        let mut end = 400;
        while !cause.is_char_boundary(end) {
            end -= 1;
        }
        cause.truncate(end);
        cause.push('…');
    }
    let not_found = |code: &OciErrorCode| {
        matches!(
            code,
            OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
        )
    };
    let denied = |code: &OciErrorCode| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied);
    let hint = match e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            "check the registry credentials (the pull secret): the registry refused them or requires some"
        }
        OciDistributionError::RegistryError { envelope, .. } if envelope.errors.iter().any(|x| denied(&x.code)) => {
            "check the registry credentials (the pull secret): the registry refused them or requires some"
        }
        OciDistributionError::RegistryError { envelope, .. } if envelope.errors.iter().any(|x| not_found(&x.code)) => {
            "check the reference: the repository and the tag or digest must exist in the registry"
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            "check the reference: the repository and the tag or digest must exist in the registry"
        }
        OciDistributionError::DigestError(_) => "the registry's manifest does not match the digest of the reference",
        OciDistributionError::RequestError(_) if plain_http => {
            "check the registry address and that it serves plain HTTP there (plain_http is set)"
        }
        OciDistributionError::RequestError(_) => {
            "check the registry address and that it serves HTTPS with a trusted certificate (set plain_http for a \
             registry without TLS)"
        }
        _ => "check the reference (repository, tag or digest), the credentials and plain_http",
    };
    format!("{cause}; {hint}")
}

/// A manifest as fetched: an image manifest or an index of them.
#[derive(Debug)]
enum Manifest {
    Image(Box<OciImageManifest>),
    Index(OciImageIndex),
}

/// Parses a manifest by its `mediaType` (an index when it has `manifests` and no media type).
fn parse_manifest(body: &[u8]) -> Result<Manifest, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("its manifest is not JSON ({e})"))?;
    let media_type = value.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    let is_index = match media_type {
        manifest::OCI_IMAGE_INDEX_MEDIA_TYPE | manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE => true,
        manifest::OCI_IMAGE_MEDIA_TYPE | manifest::IMAGE_MANIFEST_MEDIA_TYPE => false,
        "" => value.get("manifests").is_some(),
        other => {
            return Err(format!(
                "its manifest has media type {other:?}, not an image manifest or index"
            ));
        }
    };
    if is_index {
        serde_json::from_value(value)
            .map(Manifest::Index)
            .map_err(|e| format!("its image index is malformed ({e})"))
    } else {
        serde_json::from_value(value)
            .map(|m| Manifest::Image(Box::new(m)))
            .map_err(|e| format!("its image manifest is malformed ({e})"))
    }
}

/// The GOARCH name of a Rust or GOARCH architecture name (`x86_64` ≡ `amd64`, `aarch64` ≡ `arm64`).
fn goarch(arch: &str) -> String {
    match arch.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" | "amd64" => "amd64".into(),
        "aarch64" | "arm64" => "arm64".into(),
        "x86" | "i386" | "i686" | "386" => "386".into(),
        "powerpc64le" | "ppc64le" => "ppc64le".into(),
        "riscv64" | "riscv64gc" => "riscv64".into(),
        other => other.into(),
    }
}

fn describe_entry(e: &ImageIndexEntry) -> String {
    let platform = e
        .platform
        .as_ref()
        .map_or_else(|| "no platform".to_owned(), |p| format!("{}/{}", p.os, p.architecture));
    let disktype = e
        .annotations
        .as_ref()
        .and_then(|a| a.get(DISKTYPE))
        .map_or_else(String::new, |d| format!(" disktype={d}"));
    format!("{} ({platform}{disktype})", e.digest)
}

/// Picks the index entry for `arch` (a Rust or GOARCH name): entries of that architecture and entries without a
/// platform are candidates (the OS is not looked at: a disk image may hold any OS). Preferred, in order: one whose
/// `disktype` is the `prefer`red format (as Ironic weighs file types: the declared format, else qcow2, the smaller
/// download that kiln decodes in flight), one with any known `disktype`, one that names the architecture. Two
/// equally good candidates, or none, is an error listing the entries.
pub fn pick_entry<'a>(
    index: &'a OciImageIndex,
    arch: &str,
    prefer: ImageFormat,
) -> Result<&'a ImageIndexEntry, String> {
    let want = goarch(arch);
    let score = |e: &ImageIndexEntry| -> Option<(bool, bool, bool)> {
        let explicit = match &e.platform {
            Some(p) if goarch(&p.architecture.to_string()) == want => true,
            Some(_) => return None,
            None => false,
        };
        let format = e
            .annotations
            .as_ref()
            .and_then(|a| a.get(DISKTYPE))
            .and_then(|d| disktype_format(d));
        Some((format == Some(prefer), format.is_some(), explicit))
    };
    let scored: Vec<(&ImageIndexEntry, (bool, bool, bool))> = index
        .manifests
        .iter()
        .filter_map(|e| score(e).map(|s| (e, s)))
        .collect();
    let listing = || {
        index
            .manifests
            .iter()
            .map(describe_entry)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(best) = scored.iter().map(|(_, s)| *s).max() else {
        return Err(format!(
            "its image index has no entry for architecture {want}; entries: [{}]",
            listing()
        ));
    };
    let top: Vec<&ImageIndexEntry> = scored.iter().filter(|(_, s)| *s == best).map(|(e, _)| *e).collect();
    match top.as_slice() {
        [one] => Ok(one),
        many => Err(format!(
            "its image index has {} equally good entries for architecture {want}: [{}]; pin one by digest",
            many.len(),
            many.iter().map(|e| describe_entry(e)).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn layer_title(l: &OciDescriptor) -> Option<&str> {
    l.annotations.as_ref()?.get(TITLE).map(String::as_str)
}

/// Whether a layer looks like a disk image: its title ends in `.qcow2`, `.qcow`, `.raw` or `.img` (possibly
/// compressed, e.g. `.raw.zst`) or is a compressed file that is not a tarball, or its media type names
/// `qcow2`, `raw`, `disk` or `img`.
fn is_disk_layer(l: &OciDescriptor) -> bool {
    const COMPRESSED: &[&str] = &[".zst", ".gz", ".xz", ".bz2"];
    const DISK: &[&str] = &[".qcow2", ".qcow", ".raw", ".img"];
    let by_title = layer_title(l).is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        let stripped = COMPRESSED.iter().find_map(|c| t.strip_suffix(c));
        let name = stripped.unwrap_or(&t);
        DISK.iter().any(|d| name.ends_with(d)) || (stripped.is_some() && !name.ends_with(".tar"))
    });
    let subtype = l.media_type.split_once('/').map_or("", |(_, s)| s).to_ascii_lowercase();
    let by_type = ["qcow2", "raw", "disk", "img"].iter().any(|k| subtype.contains(k));
    by_title || by_type
}

fn describe_layer(l: &OciDescriptor) -> String {
    format!(
        "{} ({}, {} bytes{})",
        l.digest,
        l.media_type,
        l.size,
        layer_title(l).map_or_else(String::new, |t| format!(", title {t:?}"))
    )
}

/// Picks the disk layer: the only layer, or the only one that looks like a disk image (its title ends in
/// `.qcow2`, `.qcow`, `.raw` or `.img`, possibly compressed, or its media type names one); otherwise an error
/// listing the layers.
pub fn pick_layer(layers: &[OciDescriptor]) -> Result<&OciDescriptor, String> {
    if let [one] = layers {
        return Ok(one);
    }
    if layers.is_empty() {
        return Err("its manifest has no layers".into());
    }
    let disks: Vec<&OciDescriptor> = layers.iter().filter(|l| is_disk_layer(l)).collect();
    match disks.as_slice() {
        [one] => Ok(one),
        found => Err(format!(
            "its manifest has {} layers and {} of them look like a disk image (by title or media type): [{}]",
            layers.len(),
            found.len(),
            layers.iter().map(describe_layer).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The credentials for `registry` (`host` or `host:port`) in a Kubernetes pull secret: `.dockerconfigjson`
/// (`{"auths": {KEY: ENTRY}}`) or the older `.dockercfg` (`{KEY: ENTRY}`), where an entry holds `auth`
/// (base64 of `user:password`) or `username` and `password`. Keys may be `host`, `host:port` or URLs
/// (`https://host/v1/`, `http://host:port/`); they match by host and port, host case-insensitively. `Ok(None)`
/// when no key matches.
///
/// # Errors
/// A message for JSON that is no pull secret or an unusable matching entry; it never contains a secret.
pub fn credentials_from_docker_config(json: &[u8], registry: &str) -> Result<Option<RegistryCredentials>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("the pull secret is not JSON ({e})"))?;
    let top = value
        .as_object()
        .ok_or_else(|| "the pull secret is not a JSON object".to_owned())?;
    let auths = match top.get("auths") {
        Some(a) => a
            .as_object()
            .ok_or_else(|| "the pull secret's \"auths\" is not an object".to_owned())?,
        None => top,
    };
    let want = registry_key(registry);
    let Some((key, entry)) = auths.iter().find(|(k, _)| registry_key(k) == want) else {
        return Ok(None);
    };
    let entry = entry
        .as_object()
        .ok_or_else(|| format!("the pull secret's entry for {key:?} is not an object"))?;
    let text = |field: &str| entry.get(field).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    if let Some(auth) = text("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| format!("the pull secret's entry for {key:?} has an \"auth\" that is not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("the pull secret's entry for {key:?} has an \"auth\" that does not decode to text"))?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            format!("the pull secret's entry for {key:?} has an \"auth\" without the colon of user:password")
        })?;
        return Ok(Some(RegistryCredentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (text("username"), entry.get("password").and_then(|v| v.as_str())) {
        (Some(username), Some(password)) => Ok(Some(RegistryCredentials {
            username: username.to_owned(),
            password: password.to_owned(),
        })),
        _ => Err(format!(
            "the pull secret's entry for {key:?} has neither \"auth\" nor \"username\" and \"password\""
        )),
    }
}

/// `host[:port]` of a pull secret key or a registry, lower-cased, with Docker Hub's names made one.
fn registry_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// Where the published bytes come from once the source is resolved, and what they must hash to.
pub(crate) struct Resolved {
    pub(crate) location: SourceLocation,
    /// The `Authorization` header for an `oci://` blob (marked sensitive), renewable when it is a Bearer token.
    pub(crate) authorization: Option<Authorization>,
    pub(crate) expected: Option<ExpectedDigest>,
    pub(crate) declared: Option<ImageFormat>,
    /// The source as named in errors (the `oci://` reference rather than its blob URL).
    pub(crate) display: String,
}

/// Resolves an `oci://` reference to its blob, checks the user's checksum and declared format against what the
/// registry says.
pub(crate) async fn resolve_source(
    source: &str,
    checksum: Option<&ChecksumSource>,
    declared: Option<ImageFormat>,
    registry: Option<&RegistryAccess>,
) -> Result<Resolved, ImageError> {
    let reference = OciReference::parse(source)?;
    tracing::info!(reference = %reference, plain_http = registry.is_some_and(|r| r.plain_http),
        credentials = registry.is_some_and(|r| r.credentials.is_some()), "resolving the OCI image");
    let blob = resolve(&reference, registry, declared, client_config()).await?;
    tracing::info!(reference = %reference, blob = %blob.blob_url, size = blob.size, disktype = ?blob.format,
        "OCI image resolved");
    let layer = ExpectedDigest {
        algorithm: Algorithm::Sha256,
        hex: blob.digest_hex.clone(),
    };
    let display = reference.to_string();
    match checksum {
        None => {}
        Some(ChecksumSource::Inline(d)) if *d == layer => {}
        Some(ChecksumSource::Inline(d)) if d.algorithm == Algorithm::Sha256 => {
            return Err(ImageError::ChecksumMismatch {
                url: display,
                algorithm: "sha256",
                expected: d.hex.clone(),
                actual: format!("{} (the registry's layer digest)", layer.hex),
            });
        }
        Some(ChecksumSource::Inline(d)) => {
            return Err(ImageError::ChecksumMismatch {
                url: display,
                algorithm: d.algorithm.name(),
                expected: d.hex.clone(),
                actual: format!("{layer} (the registry's layer digest, which verifies an oci:// image)"),
            });
        }
        Some(ChecksumSource::Url { url, .. }) => {
            return Err(ImageError::InvalidChecksum {
                checksum: url.clone(),
                reason: "an oci:// image is verified by its registry's sha256 layer digest: give that digest or no \
                         checksum"
                    .into(),
            });
        }
    }
    let declared = match (declared, blob.format) {
        (Some(d), Some(hint)) if d != hint => {
            return Err(ImageError::DisktypeMismatch {
                reference: display,
                declared: format_name(d),
                disktype: format_name(hint).into(),
            });
        }
        (d, hint) => d.or(hint),
    };
    let authorization = match &blob.authorization {
        Some(a) => {
            let mut v = HeaderValue::from_str(a).map_err(|_| ImageError::Registry {
                reference: display.clone(),
                message: "its token is not a valid HTTP header value".into(),
            })?;
            v.set_sensitive(true);
            Some(if a.starts_with("Bearer ") {
                // A token expires (and a resume or re-read may come after that): renewed from the token service.
                let (reference, access) = (reference.clone(), registry.cloned());
                let renew: Renew = Arc::new(move || renew_token(reference.clone(), access.clone()).boxed());
                Authorization::renewable(v, renew)
            } else {
                Authorization::fixed(v)
            })
        }
        None => None,
    };
    Ok(Resolved {
        location: SourceLocation::Http(blob.blob_url),
        authorization,
        expected: Some(layer),
        declared,
        display,
    })
}

#[cfg(test)]
mod tests;
