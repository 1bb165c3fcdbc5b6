//! The request and response vocabulary of kiln's REST API, spoken by every front-end: the HTTP handlers serve it, the
//! CLI and `kiln import` send and read it, and the BareMetalHost controller builds it from a Metal3 manifest. The
//! validation into the model ([`spec_from`], [`bmc_from`], [`image_from`]) lives here once, so all of them accept and
//! refuse the same input with the same message naming the same field. The OpenAPI document is generated from these
//! types (`kiln_http::openapi`).

use std::collections::BTreeMap;

use kiln_bmc::{BootMode, Secret};
use kiln_images::protocol::{ChecksumType, ImageFormat, ImageSpec, Progress, RootDeviceHints};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::machine::State;
use crate::model::{BmcAddress, BmcInfo, BmcTls, Counters, EraseMode, Host, HostOptions, HostSpec};
use crate::types::{HostName, MacAddr};

/// Input that does not validate: the field (as the client named it, dotted) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

/// Body of `POST /api/v1/hosts`: what the REST API, the CLI and `kiln import` all send, validated by one function
/// ([`spec_from`]) that the BareMetalHost controller calls too.
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostCreate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mac: Option<String>,
    /// `uefi` or `legacy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<HostOptions>,
    /// The agent ramdisk's network as OpenStack `network_data.json` (Metal3's `preprovisioningNetworkDataName`):
    /// static addresses on one NIC, a default route and DNS servers, for hosts booted by virtual media where no
    /// DHCP serves the ramdisk. Bonds, VLANs, DHCPv6 and other routes are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprovisioning_network_data: Option<Value>,
}

/// BMC credentials as sent by the client.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcIn {
    /// Any form Metal3 accepts for Redfish or IPMI: `redfish[+http|+https]://host[:port][/System path]`,
    /// `idrac-redfish://`, `ilo5-redfish://`, `ipmi://host[:port][?privilegelevel=OPERATOR]`, `ipmi:host` or a
    /// bare `host[:port]` (IPMI); `redfish-virtualmedia://`, `idrac-virtualmedia://` and `ilo5-virtualmedia://` boot
    /// the agent from the BMC's virtual CD instead of the network. `redfish-uefihttp://` is refused (kiln does not
    /// drive UEFI HTTP boot through the BMC), as are schemes of protocols kiln does not speak. Two hosts may not
    /// share one BMC (409).
    pub address: String,
    pub username: String,
    /// Never shown back; must not be empty.
    #[schemars(with = "String", extend("writeOnly" = true))]
    #[serde(serialize_with = "Secret::serialize_exposed")]
    pub password: Secret,
    /// Accept any TLS certificate from this host's BMC (Metal3's `disableCertificateVerification`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_certificate_verification: bool,
    /// CA certificates (PEM) to trust for this host's BMC, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

/// Body of `POST /api/v1/hosts/{name}/provision`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionIn {
    pub image: ImageIn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<Value>,
}

/// Answer of `POST /api/v1/import`: what happened (or, in a dry run, would happen) to each BareMetalHost of the
/// manifests, or why they were refused (then nothing was enrolled).
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImportOut {
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// The hosts enrolled (or that would be), in the order of the manifests.
    pub hosts: Vec<ImportedOut>,
    /// Every refusal, each naming its document and field; when not empty, nothing was enrolled.
    pub refused: Vec<ImportRefusal>,
}

/// One BareMetalHost imported.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImportedOut {
    /// `BareMetalHost <namespace>/<name>`.
    pub document: String,
    /// The kiln host's name.
    pub name: String,
    /// `enrolled`, or `enrolled, provisioning` when the manifest sets an image.
    pub outcome: String,
}

/// Why one document was refused.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImportRefusal {
    /// `BareMetalHost <namespace>/<name>`, or `manifest` when the YAML itself is bad.
    pub document: String,
    /// The manifest field at fault (`spec.bmc.address`, `spec.raid`, ...).
    pub field: String,
    pub error: String,
}

/// The image to write: an http(s) URL and a checksum (`sha256:HEX`, `sha512:HEX`, `md5:HEX`, bare hex, or the URL
/// of a checksum file); or an `oci://registry/repository[:tag|@sha256:DIGEST]` reference to a disk image pushed to
/// an OCI registry (as Ironic and Metal3 take it: the layer's registry digest verifies it, a checksum is optional).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageIn {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<ChecksumType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// Credentials for the registry of an `oci://` image (anonymous pull without them); refused for other URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_credentials: Option<RegistryCredentialsIn>,
}

/// A registry user name and password (or token), for an `oci://` image. Never shown back.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentialsIn {
    pub username: String,
    #[schemars(with = "String", extend("writeOnly" = true))]
    #[serde(serialize_with = "Secret::serialize_exposed")]
    pub password: Secret,
}

/// Body of `POST /api/v1/hosts/{name}/deprovision` (optional).
#[derive(Debug, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprovisionIn {
    /// How to erase this time (the host's erase option otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase: Option<EraseMode>,
}

/// Body of `POST /api/v1/hosts/{name}/power`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerIn {
    #[schemars(extend("enum" = ["on", "off", "force-off", "cycle", "reset"]))]
    pub action: String,
}

/// A host as the API shows it (never the BMC password).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostOut {
    pub name: String,
    pub state: String,
    pub operational_status: String,
    pub power: Option<String>,
    pub boot_mac: Option<String>,
    pub boot_mode: BootMode,
    pub bmc: Option<BmcOut>,
    pub labels: BTreeMap<String, String>,
    pub image: Option<ImageSpec>,
    pub root_device_hints: RootDeviceHints,
    pub options: HostOptions,
    pub error: Option<HostErrorOut>,
    /// kiln's state with its data (job phase, boot, retries), as stored.
    pub detail: Value,
    /// The agent's progress in the running command.
    pub progress: Option<Progress>,
    /// A BMC call that failed and is being retried, shown before retries run out and the host enters `error`; only
    /// on `GET /api/v1/hosts/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_trouble: Option<BmcTroubleOut>,
    /// For a host enrolled without a boot MAC: the NIC MACs its BMC reported, or its discovery boot's agent did (bound
    /// by BMC address), by which netboot recognises it; only on `GET /api/v1/hosts/{name}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned_macs: Vec<String>,
    pub counters: Counters,
    pub created: String,
    pub updated: String,
}

/// Why a host is in `error` (Metal3's `errorType` as `type`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostErrorOut {
    /// `registration error`, `inspection error`, `preparation error`, `provisioning error` or `deprovisioning error`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Machine-readable cause: `bmc_unreachable`, `bmc_auth`, `boot_timeout`, `command_timeout`, `agent_lost`, or
    /// the agent's own failure kind (`checksum_mismatch`, ...).
    pub kind: String,
    /// What happened and what to check; an agent failure carries its log tail below the first line.
    pub message: String,
    /// Automatic retries already made.
    pub retries: u32,
    /// RFC 3339.
    pub at: String,
    /// When kiln retries by itself (RFC 3339); `null` once retries are exhausted.
    pub retry_at: Option<String>,
}

/// A BMC call that failed and is being retried.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BmcTroubleOut {
    /// RFC 3339.
    pub at: String,
    pub message: String,
}

/// A host's BMC as the API shows it (never the password).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BmcOut {
    pub address: String,
    pub username: String,
    /// How the host is booted into the agent, as the address scheme asks (`pxe`, `virtual-media`, `uefi-http`).
    #[serde(default = "pxe")]
    pub boot_method: kiln_bmc::BootMethod,
    #[serde(default)]
    pub tls: BmcTls,
}

fn pxe() -> kiln_bmc::BootMethod {
    kiln_bmc::BootMethod::Pxe
}

pub fn host_out(h: &Host, progress: Option<Value>) -> HostOut {
    let error = match &h.state {
        State::Error(e) => Some(HostErrorOut {
            error_type: e.operation.error_type().into(),
            kind: e.kind.clone(),
            message: e.message.clone(),
            retries: e.retries,
            at: e.at.rfc3339(),
            retry_at: e.retry_at.map(|t| t.rfc3339()),
        }),
        _ => None,
    };
    let progress = progress.and_then(|p| serde_json::from_value::<Progress>(p).ok());
    HostOut {
        name: h.name.to_string(),
        state: h.state.name().into(),
        operational_status: h.state.operational_status().into(),
        power: h.power.map(|p| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        }),
        boot_mac: h.spec.boot_mac.map(|m| m.to_string()),
        boot_mode: h.spec.boot_mode,
        bmc: h.spec.bmc.as_ref().map(|b| BmcOut {
            address: b.address.to_string(),
            username: b.username.clone(),
            boot_method: b.address.boot_method(),
            tls: b.tls.clone(),
        }),
        labels: h.spec.labels.clone(),
        image: h.spec.image.clone(),
        root_device_hints: h.spec.root_device_hints.clone(),
        options: h.spec.options,
        error,
        detail: serde_json::to_value(&h.state).unwrap_or(Value::Null),
        progress,
        bmc_trouble: None,
        learned_macs: Vec::new(),
        counters: h.counters,
        created: h.created.rfc3339(),
        updated: h.updated.rfc3339(),
    }
}

fn unprocessable(field: &str, msg: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        message: msg.into(),
    }
}

fn parse_boot_mode(s: &str) -> Result<BootMode, Invalid> {
    match s {
        "uefi" | "UEFI" => Ok(BootMode::Uefi),
        "legacy" | "bios" => Ok(BootMode::Legacy),
        _ => Err(unprocessable(
            "boot_mode",
            format!("boot mode must be uefi or legacy, got {s:?}"),
        )),
    }
}

/// Validates BMC access: one address parser (kiln-bmc's), a boot method kiln can carry out, non-empty credentials,
/// and TLS settings that parse. REST, `kiln import` and the BareMetalHost controller all come through here.
pub fn bmc_from(b: &BmcIn) -> Result<BmcInfo, Invalid> {
    let address: BmcAddress = b
        .address
        .parse()
        .map_err(|e: kiln_bmc::AddressError| unprocessable("bmc.address", e.to_string()))?;
    let method = address.boot_method();
    if method == kiln_bmc::BootMethod::UefiHttp {
        return Err(unprocessable(
            "bmc.address",
            format!(
                "{address} asks for {method} boot through the BMC, which kiln does not do: use redfish:// (PXE/iPXE \
                 or UEFI HTTP boot from kiln's DHCP) or redfish-virtualmedia:// (the agent from the BMC's virtual CD)"
            ),
        ));
    }
    if b.username.is_empty() {
        return Err(unprocessable("bmc.username", "BMC username must not be empty"));
    }
    if b.password.expose().is_empty() {
        return Err(unprocessable("bmc.password", "BMC password must not be empty"));
    }
    if let Some(pem) = &b.ca_cert
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(unprocessable(
            "bmc.ca_cert",
            "the CA must be PEM certificates (-----BEGIN CERTIFICATE-----)",
        ));
    }
    if b.ca_cert.is_some() && matches!(address, BmcAddress::Ipmi(_)) {
        return Err(unprocessable(
            "bmc.ca_cert",
            "IPMI does not use TLS; a CA applies to Redfish BMCs only",
        ));
    }
    Ok(BmcInfo {
        address,
        username: b.username.clone(),
        password: b.password.clone(),
        tls: BmcTls {
            disable_certificate_verification: b.disable_certificate_verification,
            ca_pem: b.ca_cert.clone(),
        },
    })
}

/// Builds a host spec from an enroll request, naming the first bad field.
pub fn spec_from(c: &HostCreate) -> Result<(HostName, HostSpec), Invalid> {
    let name: HostName = c
        .name
        .parse()
        .map_err(|e: crate::types::ParseError| unprocessable("name", e.0))?;
    let bmc = c.bmc.as_ref().map(bmc_from).transpose()?;
    let boot_mac = c
        .boot_mac
        .as_deref()
        .map(|m| {
            m.parse::<MacAddr>()
                .map_err(|e| unprocessable("boot_mac", e.to_string()))
        })
        .transpose()?;
    let boot_mode = c
        .boot_mode
        .as_deref()
        .map(parse_boot_mode)
        .transpose()?
        .unwrap_or_default();
    for k in c.labels.keys() {
        if k.is_empty() || k.contains([',', '=', ' ']) {
            return Err(unprocessable(
                "labels",
                format!("label key {k:?} must be non-empty without ',', '=' or spaces"),
            ));
        }
    }
    let options = c.options.unwrap_or_default();
    if let Some(data) = &c.preprovisioning_network_data {
        crate::vmedia::agent_network(data, boot_mac.as_ref())
            .map_err(|e| unprocessable("preprovisioning_network_data", e))?;
    }
    let spec = HostSpec {
        preprovisioning_network_data: c.preprovisioning_network_data.clone(),
        labels: c.labels.clone(),
        bmc,
        boot_mac,
        boot_mode,
        root_device_hints: c.root_device_hints.clone().unwrap_or_default(),
        options,
        ..Default::default()
    };
    Ok((name, spec))
}

/// Validates an image request: an http(s) URL and a checksum given as `sha256:HEX`, `sha512:HEX`, bare hex or a
/// checksum-file URL.
pub fn image_from(i: &ImageIn) -> Result<ImageSpec, Invalid> {
    if i.url.starts_with("oci://") {
        return oci_image_from(i);
    }
    let u =
        url::Url::parse(&i.url).map_err(|e| unprocessable("image.url", format!("{:?} is not a URL: {e}", i.url)))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(unprocessable(
            "image.url",
            "image URL must be http://, https:// or oci:// (an image in an OCI registry)",
        ));
    }
    if i.registry_credentials.is_some() {
        return Err(unprocessable(
            "image.registry_credentials",
            "registry credentials are for oci:// images only; this image is fetched over http(s)",
        ));
    }
    if i.format == Some(ImageFormat::LiveIso) {
        // The BMC fetches and boots a live ISO itself: kiln never sees its bytes, so it cannot check a checksum,
        // and says so rather than accept one it would not verify (Metal3 and Ironic do not check it either).
        if i.checksum.as_deref().is_some_and(|c| !c.is_empty()) || i.checksum_type.is_some() {
            return Err(unprocessable(
                "image.checksum",
                "a live-iso image is fetched and booted by the host's BMC, so kiln cannot verify a checksum: \
                 remove it",
            ));
        }
        return Ok(ImageSpec {
            url: i.url.clone(),
            checksum: String::new(),
            checksum_type: ChecksumType::Auto,
            format: Some(ImageFormat::LiveIso),
        });
    }
    let Some(raw) = i.checksum.as_deref().filter(|c| !c.is_empty()) else {
        return Err(unprocessable(
            "image.checksum",
            "an image checksum is required (sha256:HEX, sha512:HEX or a checksum-file URL)",
        ));
    };
    let (ty, value) = match raw.split_once(':') {
        Some(("sha256", h)) => (ChecksumType::Sha256, h),
        Some(("sha512", h)) => (ChecksumType::Sha512, h),
        Some(("md5", h)) => (ChecksumType::Md5, h),
        _ => (i.checksum_type.unwrap_or_default(), raw),
    };
    if value.starts_with("http://") || value.starts_with("https://") {
        return Ok(ImageSpec {
            url: i.url.clone(),
            checksum: value.into(),
            checksum_type: i.checksum_type.unwrap_or_default(),
            format: i.format,
        });
    }
    let want = match ty {
        ChecksumType::Sha256 => vec![64],
        ChecksumType::Sha512 => vec![128],
        ChecksumType::Md5 => vec![32],
        ChecksumType::Auto => vec![64, 128],
    };
    if !want.contains(&value.len()) || !value.chars().all(|c| c.is_ascii_hexdigit()) {
        let hint = if ty == ChecksumType::Auto && value.len() == 32 {
            // Metal3 takes a bare 32-digit checksum for md5; kiln wants that said (md5 is too weak to assume).
            " (an md5 checksum: say so with checksum_type md5, Metal3's checksumType: md5, or md5:HEX)"
        } else {
            ""
        };
        return Err(unprocessable(
            "image.checksum",
            format!("checksum must be {ty:?} hex ({want:?} digits) or a URL{hint}"),
        ));
    }
    Ok(ImageSpec {
        url: i.url.clone(),
        checksum: value.to_ascii_lowercase(),
        checksum_type: ty,
        format: i.format,
    })
}

/// An `oci://` image: a reference kiln-agent resolves in the registry, verified by the layer's digest. A checksum,
/// if given, must be that sha256 digest (the agent refuses a layer with another); a live ISO must come over http(s)
/// (the BMC fetches it, and BMCs do not speak to registries).
fn oci_image_from(i: &ImageIn) -> Result<ImageSpec, Invalid> {
    kiln_images::oci::OciReference::parse(&i.url).map_err(|e| unprocessable("image.url", e.to_string()))?;
    if i.format == Some(ImageFormat::LiveIso) {
        return Err(unprocessable(
            "image.format",
            "a live-iso image is fetched by the host's BMC, which cannot pull from an OCI registry: give its \
             http(s) URL",
        ));
    }
    if let Some(c) = &i.registry_credentials
        && (c.username.trim().is_empty() || c.password.expose().trim().is_empty())
    {
        return Err(unprocessable(
            "image.registry_credentials",
            "registry credentials need a user name and a password (or token)",
        ));
    }
    let checksum = match i.checksum.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        None => String::new(),
        Some(c) => {
            let hex = c.strip_prefix("sha256:").unwrap_or(c);
            let sha256 = matches!(i.checksum_type, None | Some(ChecksumType::Auto | ChecksumType::Sha256));
            if !sha256 || hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(unprocessable(
                    "image.checksum",
                    "an oci:// image is verified by its registry digest: a checksum, if given, must be that sha256 \
                     digest (or pin the manifest with @sha256:... in the URL)",
                ));
            }
            hex.to_ascii_lowercase()
        }
    };
    Ok(ImageSpec {
        url: i.url.clone(),
        checksum_type: if checksum.is_empty() {
            ChecksumType::Auto
        } else {
            ChecksumType::Sha256
        },
        checksum,
        format: i.format,
    })
}

/// Metal3's `ociAuthSecretName`: the credentials that a `kubernetes.io/dockerconfigjson` Secret (or an older
/// `kubernetes.io/dockercfg` one) holds for the registry of `image_url`, read as baremetal-operator reads them.
/// `value` gives a key of the Secret's data. The error names the Secret and what is wrong, never a credential.
pub fn registry_credentials_from_secret(
    name: &str,
    secret_type: &str,
    value: impl Fn(&str) -> Option<Vec<u8>>,
    image_url: &str,
) -> Result<RegistryCredentialsIn, String> {
    let reference = kiln_images::oci::OciReference::parse(image_url).map_err(|_| {
        format!("{image_url:?} is not an oci:// image: a registry pull secret is for oci:// images only")
    })?;
    let key = match secret_type {
        "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
        "kubernetes.io/dockercfg" => ".dockercfg",
        other => {
            return Err(format!(
                "Secret {name} has type {other:?}; a registry pull secret is of type kubernetes.io/dockerconfigjson \
                 or kubernetes.io/dockercfg"
            ));
        }
    };
    let raw = value(key).ok_or_else(|| format!("Secret {name} has no {key}"))?;
    match kiln_images::oci::credentials_from_docker_config(&raw, reference.registry()) {
        Ok(Some(c)) => Ok(RegistryCredentialsIn {
            username: c.username,
            password: Secret::new(c.password),
        }),
        Ok(None) => Err(format!(
            "Secret {name} holds no credentials for the registry {}",
            reference.registry()
        )),
        Err(e) => Err(format!("Secret {name}: {e}")),
    }
}

/// The registry credentials of an image request (already validated by [`image_from`]).
pub fn image_credentials_from(i: &ImageIn) -> Option<crate::model::RegistryLogin> {
    i.registry_credentials.as_ref().map(|c| crate::model::RegistryLogin {
        username: c.username.trim().to_owned(),
        password: Secret::new(c.password.expose().trim()),
    })
}

/// A timing row as the API shows it.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TimingOut {
    pub phase: String,
    pub started: String,
    pub ended: Option<String>,
    pub duration_ms: Option<i64>,
    pub outcome: Option<String>,
}

/// A finished phase of one host (`GET /api/v1/timings` lists one phase's, fleet-wide, newest first).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostTimingOut {
    pub host: String,
    pub phase: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339.
    pub ended: String,
    pub duration_ms: i64,
    /// `ok` or `error`.
    pub outcome: Option<String>,
}

/// A host's inspected hardware (`GET /api/v1/hosts/{name}/inspection`).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InspectionOut {
    /// When the agent reported it (RFC 3339).
    pub at: String,
    /// The agent's hardware inventory.
    pub inventory: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(checksum: Option<&str>) -> ImageIn {
        ImageIn {
            url: "http://x/live.iso".into(),
            checksum: checksum.map(str::to_owned),
            checksum_type: None,
            format: Some(ImageFormat::LiveIso),
            registry_credentials: None,
        }
    }

    #[test]
    fn a_live_iso_needs_no_checksum_and_refuses_one_kiln_could_not_verify() {
        let spec = image_from(&live(None)).unwrap();
        assert_eq!(spec.format, Some(ImageFormat::LiveIso));
        let e = image_from(&live(Some("sha256:abc"))).unwrap_err();
        assert_eq!(e.field, "image.checksum");
        assert!(e.message.contains("cannot verify"), "{e}");
        // Other formats still need one.
        let e = image_from(&ImageIn {
            format: Some(ImageFormat::Raw),
            ..live(None)
        })
        .unwrap_err();
        assert_eq!(e.field, "image.checksum");
    }

    #[test]
    fn oci_images_need_no_checksum_refuse_another_digest_and_credentials_belong_to_them_only() {
        let oci = |url: &str, checksum: Option<&str>| ImageIn {
            url: url.into(),
            checksum: checksum.map(str::to_owned),
            checksum_type: None,
            format: None,
            registry_credentials: None,
        };
        let spec = image_from(&oci("oci://registry.example.com:5000/images/debian:12", None)).unwrap();
        assert_eq!((spec.checksum.as_str(), spec.checksum_type), ("", ChecksumType::Auto));
        let digest = "ab".repeat(32);
        let spec = image_from(&oci("oci://r.example/debian", Some(&format!("sha256:{digest}")))).unwrap();
        assert_eq!((spec.checksum, spec.checksum_type), (digest, ChecksumType::Sha256));
        for bad in [
            "sha512:00",
            "md5:0123456789abcdef0123456789abcdef",
            "http://x/SHA256SUMS",
        ] {
            let e = image_from(&oci("oci://r.example/debian", Some(bad))).unwrap_err();
            assert_eq!(e.field, "image.checksum", "{bad}");
        }
        for bad in [
            "oci://r.example",
            "oci://r.example/Upper/Case",
            "oci://r.example/debian@sha256:abc",
        ] {
            let e = image_from(&oci(bad, None)).unwrap_err();
            assert_eq!(e.field, "image.url", "{bad}");
        }
        let e = image_from(&ImageIn {
            format: Some(ImageFormat::LiveIso),
            ..oci("oci://r.example/live:1", None)
        })
        .unwrap_err();
        assert_eq!(e.field, "image.format");
        // Credentials: for oci:// only, never empty, trimmed, and never printed.
        let creds = |u: &str, p: &str| {
            Some(RegistryCredentialsIn {
                username: u.into(),
                password: Secret::new(p),
            })
        };
        let e = image_from(&ImageIn {
            registry_credentials: creds("u", "p"),
            ..oci("https://r.example/debian.qcow2", Some(&"ab".repeat(32)))
        })
        .unwrap_err();
        assert_eq!(e.field, "image.registry_credentials");
        let e = image_from(&ImageIn {
            registry_credentials: creds("u", " \n"),
            ..oci("oci://r.example/debian", None)
        })
        .unwrap_err();
        assert_eq!(e.field, "image.registry_credentials");
        let i = ImageIn {
            registry_credentials: creds("puller", "tok-3n\n"),
            ..oci("oci://r.example/debian", None)
        };
        image_from(&i).unwrap();
        let login = image_credentials_from(&i).unwrap();
        assert_eq!((login.username.as_str(), login.password.expose()), ("puller", "tok-3n"));
        assert!(!format!("{i:?} {login:?}").contains("tok-3n"));
    }

    #[test]
    fn a_pull_secret_is_a_docker_config_for_the_image_registry() {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode("puller:tok-3n");
        let config = format!(r#"{{"auths": {{"r.example:5000": {{"auth": "{auth}"}}}}}}"#);
        let data = |key: &str| (key == ".dockerconfigjson").then(|| config.clone().into_bytes());
        let url = "oci://r.example:5000/images/debian:12";
        let c = registry_credentials_from_secret("pull", "kubernetes.io/dockerconfigjson", data, url).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("puller", "tok-3n"));
        let e = registry_credentials_from_secret("pull", "Opaque", data, url).unwrap_err();
        assert!(e.contains("kubernetes.io/dockerconfigjson"), "{e}");
        let e = registry_credentials_from_secret("pull", "kubernetes.io/dockercfg", data, url).unwrap_err();
        assert!(e.contains(".dockercfg"), "{e}");
        let e = registry_credentials_from_secret("pull", "kubernetes.io/dockerconfigjson", data, "oci://other/x")
            .unwrap_err();
        assert!(
            e.contains("no credentials for the registry other") && !e.contains("tok-3n"),
            "{e}"
        );
        let e = registry_credentials_from_secret("pull", "kubernetes.io/dockerconfigjson", data, "http://r.example/x")
            .unwrap_err();
        assert!(e.contains("oci://"), "{e}");
    }

    #[test]
    fn virtual_media_addresses_are_accepted_and_uefi_http_through_the_bmc_is_refused() {
        let bmc = |address: &str| BmcIn {
            address: address.into(),
            username: "admin".into(),
            password: Secret::new("pw"),
            disable_certificate_verification: false,
            ca_cert: None,
        };
        let b = bmc_from(&bmc("redfish-virtualmedia+https://10.0.0.1/redfish/v1/Systems/1")).unwrap();
        assert_eq!(b.address.boot_method(), kiln_bmc::BootMethod::VirtualMedia);
        let e = bmc_from(&bmc("redfish-uefihttp://10.0.0.1/redfish/v1/Systems/1")).unwrap_err();
        assert_eq!(e.field, "bmc.address");
    }

    #[test]
    fn preprovisioning_network_data_is_validated_at_enrollment() {
        let mut c = HostCreate {
            name: "vm".into(),
            preprovisioning_network_data: Some(serde_json::json!({"links": [{"id": "b", "type": "bond"}]})),
            ..Default::default()
        };
        let e = spec_from(&c).unwrap_err();
        assert_eq!(e.field, "preprovisioning_network_data");
        assert!(e.message.contains("bond"), "{e}");
        c.preprovisioning_network_data = Some(serde_json::json!({
            "links": [{"id": "e"}],
            "networks": [{"id": "n", "link": "e", "type": "ipv4", "ip_address": "10.0.0.5/24"}]
        }));
        let (_, spec) = spec_from(&c).unwrap();
        assert!(spec.preprovisioning_network_data.is_some());
    }
}
