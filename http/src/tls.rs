//! TLS of kiln's API listener (admin REST API, web page, agent API, metrics).
//!
//! By default kiln is its own certificate authority: on first start it makes a CA key and certificate in
//! `<data_dir>/tls/` (the key private to kiln, 0600), and on every start a server certificate signed by it for the
//! names and addresses clients use (the listen address, `api_url`'s host, loopback, every local interface address when
//! listening on all of them, and `[tls] names`). The CLI trusts `tls/ca.pem`; agents pin the CA by its SHA-256 (given
//! on the kernel command line next to their token, like the token itself) and check that the server's chain carries
//! it. A site with its own PKI gives `[tls] cert_file` and `key_file` instead.
//!
//! The netboot routes (`/boot`: iPXE scripts, kernel, initramfs) stay plain HTTP on their own listener: firmware
//! cannot verify kiln's CA, and nothing secret but the one-time, sealed-until-fetched agent token crosses it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The `[tls]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM certificate chain (leaf first) to serve instead of one signed by kiln's own CA.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// More DNS names or IP addresses for kiln's own server certificate (e.g. a load balancer's name).
    pub names: Vec<String>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("[tls] needs both cert_file and key_file, or neither")]
    HalfConfigured,
    #[error("making kiln's certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the server certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the API listener serves and what clients need to trust it.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The CA the CLI trusts (`tls/ca.pem`); `None` with a site certificate.
    pub ca_file: Option<PathBuf>,
    /// `sha256:<hex>` of kiln's CA certificate (DER), which agents pin; `None` with a site certificate (agents then
    /// verify against the ramdisk's system roots).
    pub ca_pin: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("ca_file", &self.ca_file)
            .field("ca_pin", &self.ca_pin)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 pin of a certificate, as agents receive it: `sha256:<lower-case hex>`.
pub fn pin_of(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The directory of kiln's own CA and server certificate.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The CA certificate the CLI trusts.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    tls_dir(data_dir).join("ca.pem")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `data` to `path` with `mode`, atomically (a crash leaves the old file or the new one).
fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The CA's subject, derived from its key so that it can be rebuilt from the key alone.
fn ca_params(key: &KeyPair) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let id = &hex::encode(Sha256::digest(key.public_key_raw()))[..12];
    p.distinguished_name.push(DnType::OrganizationName, "kiln");
    p.distinguished_name
        .push(DnType::CommonName, format!("kiln appliance CA {id}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
    Ok(p)
}

/// The names and addresses kiln's server certificate covers: loopback, `listen` (or, when it is the unspecified
/// address, every address of this machine's interfaces), `api_url`'s host, and `extra`.
pub fn server_names(listen: IpAddr, api_url: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if listen.is_unspecified() {
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let ip = a.address.and_then(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                // Link-local IPv6 addresses need a zone to be dialled; no client names them in a URL.
                if let Some(ip) = ip.filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())) {
                    names.push(ip.to_string());
                }
            }
        }
    } else {
        names.push(listen.to_string());
    }
    if let Some(host) = api_url
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
    {
        names.push(host);
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

impl ServerTls {
    /// Loads the site's certificate, or kiln's own CA (made on first start) and a fresh server certificate for `names`.
    ///
    /// # Errors
    /// A file that cannot be read or written, PEM that does not parse, a key that does not match its certificate.
    pub fn load_or_create(data_dir: &Path, cfg: &TlsConfig, names: Vec<String>) -> Result<Self, TlsError> {
        let (chain, key, ca_file, ca_pin) = match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TlsError::Pem {
                        path: cert.display().to_string(),
                        reason: e.to_string(),
                    })?;
                if chain.is_empty() {
                    return Err(TlsError::Pem {
                        path: cert.display().to_string(),
                        reason: "no certificate in the file".into(),
                    });
                }
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
                    path: key.display().to_string(),
                    reason: e.to_string(),
                })?;
                (chain, key, None, None)
            }
            (None, None) => {
                let (chain, key, pin) = own_certificates(data_dir, names)?;
                (chain, key, Some(ca_path(data_dir)), Some(pin))
            }
            _ => return Err(TlsError::HalfConfigured),
        };
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            ca_file,
            ca_pin,
        })
    }
}

/// kiln's CA key and certificate in `<data_dir>/tls/`, made on first call and kept.
fn ca(data_dir: &Path) -> Result<(KeyPair, CertificateDer<'static>), TlsError> {
    let dir = tls_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    }
    let (ca_key_path, ca_cert_path) = (dir.join("ca.key"), dir.join("ca.pem"));
    let ca_key = match std::fs::read_to_string(&ca_key_path) {
        Ok(pem) => KeyPair::from_pem(&pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            // A new key means a new CA: any old certificate would not match it.
            let _ = std::fs::remove_file(&ca_cert_path);
            key
        }
        Err(e) => return Err(io(&ca_key_path)(e)),
    };
    let ca_der = match std::fs::read(&ca_cert_path) {
        Ok(pem) => CertificateDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
            path: ca_cert_path.display().to_string(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = ca_params(&ca_key)?.self_signed(&ca_key)?;
            // Not secret: the CLI of another user on this machine may trust it.
            write_private(&ca_cert_path, cert.pem().as_bytes(), 0o644)?;
            cert.der().clone()
        }
        Err(e) => return Err(io(&ca_cert_path)(e)),
    };
    Ok((ca_key, ca_der))
}

/// Makes kiln's CA on first start (so that clients find `tls/ca.pem` as soon as the data directory is ready) and
/// returns its pin, unless the site brings its own certificate.
///
/// # Errors
/// As [`ServerTls::load_or_create`].
pub fn ensure_ca(data_dir: &Path, cfg: &TlsConfig) -> Result<Option<String>, TlsError> {
    match (&cfg.cert_file, &cfg.key_file) {
        (None, None) => Ok(Some(pin_of(&ca(data_dir)?.1))),
        (Some(_), Some(_)) => Ok(None),
        _ => Err(TlsError::HalfConfigured),
    }
}

/// kiln's CA and a server certificate for `names` signed by it (made at every start, so a new address is covered
/// after a restart). The chain served is [server, CA], so that agents find the CA they pin.
fn own_certificates(
    data_dir: &Path,
    names: Vec<String>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), TlsError> {
    let dir = tls_dir(data_dir);
    let (ca_key, ca_der) = ca(data_dir)?;
    let params = ca_params(&ca_key)?;
    let issuer = Issuer::new(params, ca_key);
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::OrganizationName, "kiln");
    leaf.distinguished_name.push(DnType::CommonName, "kiln appliance");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = now + time::Duration::days(397);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    write_private(&dir.join("server.pem"), leaf_cert.pem().as_bytes(), 0o644)?;
    let pin = pin_of(&ca_der);
    Ok((
        vec![leaf_cert.der().clone(), ca_der],
        PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| TlsError::Pem {
            path: "server key".into(),
            reason: e.to_string(),
        })?,
        pin,
    ))
}
