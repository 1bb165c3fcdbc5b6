//! Metal3 manifests into kiln hosts: turns `BareMetalHost` manifests and their credential `Secret`s (multi-document
//! YAML) into the REST API's enroll and provision requests, for `POST /api/v1/import` ([`crate::import_api`]), which
//! `kiln import` and the web page use. Pure translation; it must not talk to the store itself.

use std::collections::BTreeMap;

use kiln_bmc::Secret;
use kiln_images::protocol::{ChecksumType, ImageFormat, RootDeviceHints};
use serde_json::{Value, json};

use kiln_engine::model::{EraseMode, HostOptions};
use kiln_engine::wire::{BmcIn, HostCreate, ImageIn, registry_credentials_from_secret};

/// One host to enroll (REST body of `POST /api/v1/hosts`) and, if the manifest sets an image, its provision body:
/// the API's own request types, validated by the server exactly as any other enrollment.
#[derive(Debug)]
pub struct ImportedHost {
    /// `BareMetalHost <namespace>/<name>`, for messages.
    pub doc: String,
    pub name: String,
    pub enroll: HostCreate,
    /// The image to write, when the manifest sets one: the host is provisioned once inspected.
    pub image: Option<ImageIn>,
    /// The config drive's user data, network data and meta data, used when the host is provisioned (set at
    /// enrollment as Metal3 allows, with or without an image yet).
    pub user_data: Option<String>,
    pub network_data: Option<Value>,
    pub meta_data: Option<Value>,
}

/// Why kiln refuses a BareMetalHost spec field it would otherwise not act on (`None`: kiln acts on it, or it is
/// informational).
fn refused_field(key: &str, value: &Value) -> Option<String> {
    let acted_on = [
        "bmc",
        "bootMACAddress",
        "bootMode",
        "rootDeviceHints",
        "externallyProvisioned",
        "automatedCleaningMode",
        "image",
        "userData",
        "networkData",
        "metaData",
        "description",
        "preprovisioningNetworkDataName",
    ];
    if acted_on.contains(&key) {
        return None;
    }
    let unset = matches!(value, Value::Null)
        || matches!(value, Value::String(s) if s.is_empty())
        || matches!(value, Value::Array(a) if a.is_empty())
        || matches!(value, Value::Object(o) if o.is_empty());
    Some(match key {
        "online" if value.is_boolean() || unset => return None,
        "online" => format!("{value} is not true or false"),
        "architecture" if matches!(value.as_str(), Some("x86_64" | "amd64")) || unset => return None,
        "architecture" => format!("kiln's agent ramdisk boots x86_64 only; {value} is not supported"),
        "inspectionMode" if matches!(value.as_str(), Some("agent" | "disabled")) || unset => return None,
        "inspectionMode" => {
            "kiln inspects with its agent (inspectionMode agent) or not at all (disabled); fast is not supported".into()
        }
        _ if unset => return None,
        "raid" | "firmware" => {
            format!("kiln does not configure {key} yet; remove it or configure the host out of band")
        }
        "customDeploy" => "kiln deploys images only; custom deploy steps are not supported".into(),
        "disablePowerOff" => "kiln powers hosts off between operations; disablePowerOff is not supported yet".into(),
        // Metal3's placeholder for "no profile" (deprecated field), as the BareMetalHost controller takes it.
        "hardwareProfile" if value.as_str() == Some("unknown") => return None,
        "hardwareProfile" | "taints" | "networkInterfaces" | "consumerRef" | "hardwareData" => {
            format!("kiln does not act on {key}")
        }
        _ => format!("unknown BareMetalHost field {key:?}"),
    })
}

/// Why a manifest could not be translated; names the document and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doc}: {field}: {message}")]
pub struct ImportError {
    pub doc: String,
    pub field: String,
    pub message: String,
}

/// A Secret's `data` value: base64 (whitespace inside ignored, as Kubernetes' decoder does), UTF-8 text.
fn b64(s: &str) -> Option<String> {
    String::from_utf8(b64_bytes(s)?).ok()
}

fn b64_bytes(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).ok()
}

fn secret_value(secret: &Value, key: &str) -> Option<String> {
    secret["stringData"][key]
        .as_str()
        .map(str::to_owned)
        .or_else(|| secret["data"][key].as_str().and_then(b64))
}

/// Translates parsed YAML documents. Documents of other kinds are ignored.
///
/// # Errors
/// [`ImportError`] naming the first manifest and field that cannot be used.
pub fn translate(docs: &[Value]) -> Result<Vec<ImportedHost>, ImportError> {
    let key = |d: &Value| {
        (
            d["metadata"]["namespace"].as_str().unwrap_or("default").to_owned(),
            d["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let secrets: BTreeMap<(String, String), &Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Secret")
        .map(|d| (key(d), d))
        .collect();
    let mut out = Vec::new();
    let (mut names, mut macs, mut addresses) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for d in docs.iter().filter(|d| d["kind"] == "BareMetalHost") {
        let (ns, name) = key(d);
        let err = |field: &str, message: String| ImportError {
            doc: format!("BareMetalHost {ns}/{name}"),
            field: field.into(),
            message,
        };
        if name.is_empty() {
            return Err(err("metadata.name", "missing".into()));
        }
        if d["metadata"]["annotations"]
            .get("baremetalhost.metal3.io/detached")
            .is_some()
        {
            return Err(err(
                "metadata.annotations",
                "baremetalhost.metal3.io/detached: a detached host is not to be managed; remove the annotation to                  have kiln enroll and drive it"
                    .into(),
            ));
        }
        let spec = &d["spec"];
        // Every spec field is acted on or refused by name: an inventory must not lose a setting on its way in.
        if let Some(fields) = spec.as_object() {
            for (k, v) in fields {
                if let Some(why) = refused_field(k, v) {
                    return Err(err(&format!("spec.{k}"), why));
                }
            }
        }
        let labels = match d["metadata"]["labels"].as_object() {
            Some(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
            None => BTreeMap::new(),
        };
        let bmc = match spec["bmc"]["address"].as_str() {
            Some(addr) => {
                let cred = spec["bmc"]["credentialsName"]
                    .as_str()
                    .ok_or_else(|| err("spec.bmc.credentialsName", "missing".into()))?;
                let secret = secrets.get(&(ns.clone(), cred.to_owned())).ok_or_else(|| {
                    err(
                        "spec.bmc.credentialsName",
                        format!("Secret {ns}/{cred} is not in the file"),
                    )
                })?;
                // Trimmed as Metal3 trims them: a value made with `echo pw | base64` ends in a newline.
                let username = secret_value(secret, "username")
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| err("spec.bmc.credentialsName", format!("Secret {cred} has no username")))?;
                let password = secret_value(secret, "password")
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| err("spec.bmc.credentialsName", format!("Secret {cred} has no password")))?;
                let disable_certificate_verification = match &spec["bmc"]["disableCertificateVerification"] {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    other => {
                        return Err(err(
                            "spec.bmc.disableCertificateVerification",
                            format!("{other} is not true or false"),
                        ));
                    }
                };
                Some(BmcIn {
                    address: addr.to_owned(),
                    username,
                    password: Secret::new(password),
                    disable_certificate_verification,
                    ca_cert: None,
                })
            }
            None => None,
        };
        let boot_mode = match spec["bootMode"].as_str() {
            None => None,
            Some(m) if m.eq_ignore_ascii_case("legacy") => Some("legacy".to_owned()),
            Some(m) if m.eq_ignore_ascii_case("uefi") => Some("uefi".to_owned()),
            Some(m) => {
                return Err(err(
                    "spec.bootMode",
                    format!("kiln boots UEFI or Legacy; {m:?} (secure boot) is not supported yet"),
                ));
            }
        };
        let root_device_hints = match &spec["rootDeviceHints"] {
            Value::Null => None,
            v => Some(
                serde_json::from_value::<RootDeviceHints>(v.clone())
                    .map_err(|e| err("spec.rootDeviceHints", e.to_string()))?,
            ),
        };
        let mut options = HostOptions {
            externally_provisioned: spec["externallyProvisioned"].as_bool().unwrap_or(false),
            ..HostOptions::default()
        };
        match spec["automatedCleaningMode"].as_str() {
            None | Some("metadata") => {}
            Some("disabled") => options.erase = EraseMode::Disabled,
            Some(other) => {
                return Err(err(
                    "spec.automatedCleaningMode",
                    format!("{other:?} is not metadata or disabled"),
                ));
            }
        }
        if let Some(mode) = d["metadata"]["annotations"]["inspect.metal3.io"].as_str() {
            options.inspect = mode != "disabled";
        }
        if spec["inspectionMode"].as_str() == Some("disabled") {
            options.inspect = false;
        }
        options.online = spec["online"].as_bool();
        // Metal3's preprovisioningNetworkDataName: a Secret in the host's namespace whose `networkData` holds the
        // ramdisk's network_data.json (JSON or YAML).
        let preprovisioning_network_data = match spec["preprovisioningNetworkDataName"].as_str() {
            None | Some("") => None,
            Some(sname) => {
                let field = "spec.preprovisioningNetworkDataName";
                let s = secrets
                    .get(&(ns.clone(), sname.to_owned()))
                    .ok_or_else(|| err(field, format!("Secret {sname} is not in the file")))?;
                let t = secret_value(s, "networkData")
                    .ok_or_else(|| err(field, format!("Secret {sname} has no networkData")))?;
                Some(
                    serde_json::from_str(&t)
                        .or_else(|_| serde_saphyr::from_str::<Value>(&t))
                        .map_err(|_| err(field, format!("Secret {sname}'s networkData is neither JSON nor YAML")))?,
                )
            }
        };
        let enroll = HostCreate {
            preprovisioning_network_data,
            name: name.clone(),
            bmc,
            boot_mac: spec["bootMACAddress"].as_str().map(str::to_owned),
            boot_mode,
            labels,
            root_device_hints,
            options: Some(options),
        };
        let secret_text = |field: &str| -> Result<Option<String>, ImportError> {
            let Some(sname) = spec[field]["name"].as_str() else {
                return Ok(None);
            };
            let sns = spec[field]["namespace"].as_str().unwrap_or(&ns).to_owned();
            let s = secrets.get(&(sns, sname.to_owned())).ok_or_else(|| {
                err(
                    &format!("spec.{field}.name"),
                    format!("Secret {sname} is not in the file"),
                )
            })?;
            let key = if field == "userData" { "userData" } else { field };
            secret_value(s, key)
                .or_else(|| secret_value(s, "value"))
                .map(Some)
                .ok_or_else(|| {
                    err(
                        &format!("spec.{field}.name"),
                        format!("Secret {sname} has neither {key} nor value"),
                    )
                })
        };
        let structured = |field: &str| -> Result<Option<Value>, ImportError> {
            match secret_text(field)? {
                None => Ok(None),
                Some(t) => serde_json::from_str(&t)
                    .or_else(|_| serde_saphyr::from_str::<Value>(&t))
                    .map(Some)
                    .map_err(|_| {
                        err(
                            &format!("spec.{field}"),
                            "the Secret's value is neither JSON nor YAML".into(),
                        )
                    }),
            }
        };
        let image = match spec["image"]["url"].as_str() {
            Some(url) => {
                let checksum_type = match spec["image"]["checksumType"].as_str() {
                    None | Some("") => None,
                    Some(t) => Some(
                        serde_json::from_value::<ChecksumType>(json!(t.to_ascii_lowercase())).map_err(|_| {
                            err(
                                "spec.image.checksumType",
                                format!("{t:?} is not md5, sha256, sha512 or auto"),
                            )
                        })?,
                    ),
                };
                let format = match spec["image"]["diskFormat"]
                    .as_str()
                    .or(spec["image"]["format"].as_str())
                {
                    None => None,
                    Some(f) => Some(serde_json::from_value::<ImageFormat>(json!(f)).map_err(|_| {
                        err(
                            "spec.image.format",
                            format!("kiln writes raw and qcow2 images; {f:?} is not supported"),
                        )
                    })?),
                };
                // Metal3's ociAuthSecretName: a docker-config Secret in the host's namespace.
                let registry_credentials = match spec["image"]["ociAuthSecretName"].as_str() {
                    None | Some("") => None,
                    Some(sname) => {
                        let field = "spec.image.ociAuthSecretName";
                        let s = secrets
                            .get(&(ns.clone(), sname.to_owned()))
                            .ok_or_else(|| err(field, format!("Secret {sname} is not in the file")))?;
                        let value = |key: &str| {
                            s["stringData"][key]
                                .as_str()
                                .map(|v| v.as_bytes().to_vec())
                                .or_else(|| s["data"][key].as_str().and_then(b64_bytes))
                        };
                        Some(
                            registry_credentials_from_secret(sname, s["type"].as_str().unwrap_or("Opaque"), value, url)
                                .map_err(|m| err(field, m))?,
                        )
                    }
                };
                Some(ImageIn {
                    url: url.to_owned(),
                    checksum: spec["image"]["checksum"].as_str().map(str::to_owned),
                    checksum_type,
                    format,
                    registry_credentials,
                })
            }
            None => None,
        };
        let (user_data, network_data, meta_data) = (
            secret_text("userData")?,
            structured("networkData")?,
            structured("metaData")?,
        );
        for (field, value, seen) in [
            ("metadata.name", Some(name.clone()), &mut names),
            (
                "spec.bootMACAddress",
                spec["bootMACAddress"].as_str().map(|m| m.to_ascii_lowercase()),
                &mut macs,
            ),
            (
                "spec.bmc.address",
                spec["bmc"]["address"].as_str().map(str::to_owned),
                &mut addresses,
            ),
        ] {
            if let Some(v) = value
                && let Some(first) = seen.insert(v.clone(), format!("{ns}/{name}"))
            {
                return Err(err(
                    field,
                    format!("{v} is also used by BareMetalHost {first} in this file"),
                ));
            }
        }
        out.push(ImportedHost {
            doc: format!("BareMetalHost {ns}/{name}"),
            name,
            enroll,
            image,
            user_data,
            network_data,
            meta_data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: node-0-bmc-secret
type: Opaque
data:
  username: YWRtaW4=
  password: cGFzc3dvcmQ=
---
apiVersion: metal3.io/v1alpha1
kind: BareMetalHost
metadata:
  name: node-0
  labels:
    rack: r1
spec:
  online: true
  bootMACAddress: 00:5c:52:31:3a:9c
  bootMode: UEFI
  bmc:
    address: redfish+http://192.168.111.1:8000/redfish/v1/Systems/1
    credentialsName: node-0-bmc-secret
  rootDeviceHints:
    deviceName: /dev/sda
  image:
    url: http://172.22.0.1/images/os.qcow2
    checksum: 4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945
    checksumType: sha256
    format: qcow2
---
apiVersion: metal3.io/v1alpha1
kind: BareMetalHost
metadata:
  name: node-1
spec:
  bootMACAddress: 00:5c:52:31:3a:9d
  externallyProvisioned: true
"#;

    #[test]
    fn translates_metal3_manifests_with_secrets() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(YAML).unwrap();
        let hosts = translate(&docs).unwrap();
        assert_eq!(hosts.len(), 2);
        let h = &hosts[0];
        let bmc = h.enroll.bmc.as_ref().unwrap();
        assert_eq!(bmc.username, "admin");
        assert_eq!(bmc.password.expose(), "password");
        assert_eq!(h.enroll.boot_mode.as_deref(), Some("uefi"));
        assert_eq!(
            h.enroll.root_device_hints.as_ref().unwrap().device_name.as_deref(),
            Some("/dev/sda")
        );
        assert_eq!(h.enroll.labels["rack"], "r1");
        let image = h.image.as_ref().unwrap();
        assert!(image.checksum.as_deref().unwrap().starts_with("4f53"));
        assert_eq!(image.format, Some(ImageFormat::Qcow2));
        assert!(hosts[1].image.is_none());
        assert!(hosts[1].enroll.options.unwrap().externally_provisioned);
        assert!(hosts[1].enroll.bmc.is_none());
    }

    #[test]
    fn fields_kiln_does_not_act_on_are_refused_by_name() {
        for (field, yaml) in [
            (
                "spec.raid",
                "  raid:\n    hardwareRAIDVolumes: []\n    softwareRAIDVolumes:\n    - level: \"1\"\n",
            ),
            ("spec.bootMode", "  bootMode: UEFISecureBoot\n"),
            ("spec.customDeploy", "  customDeploy:\n    method: install_coreos\n"),
            ("spec.architecture", "  architecture: aarch64\n"),
            ("spec.online", "  online: maybe\n"),
            // A Secret the file does not hold.
            ("spec.networkData.name", "  networkData:\n    name: nd\n"),
            ("spec.rootDeviceHints", "  rootDeviceHints:\n    deviceNAME: /dev/sda\n"),
            ("spec.frobnicate", "  frobnicate: 1\n"),
        ] {
            let doc = format!(
                "apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: node-x\nspec:\n{yaml}"
            );
            let docs: Vec<Value> = serde_saphyr::from_multiple(&doc).unwrap();
            let e = translate(&docs).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        let ok = "apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: node-x\nspec:\n  online: false\n  \
                  architecture: x86_64\n  description: rack 3\n  raid: {}\n";
        let docs: Vec<Value> = serde_saphyr::from_multiple(ok).unwrap();
        assert!(translate(&docs).is_ok());
    }

    #[test]
    fn preprovisioning_network_data_comes_from_its_secret() {
        // The shape of Metal3's docs: a Secret whose networkData is network_data.json in YAML, named by the host.
        let yaml = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: vm-net\n  namespace: lab\nstringData:\n  \
                    networkData: |\n    links:\n    - id: enp1s0\n      type: phy\n      \
                    ethernet_mac_address: 52:54:00:aa:00:01\n    networks:\n    - id: p\n      link: enp1s0\n      \
                    type: ipv4\n      ip_address: 192.168.111.20/24\n---\n\
                    apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: vm\n  namespace: lab\n\
                    spec:\n  preprovisioningNetworkDataName: vm-net\n";
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
        let hosts = translate(&docs).unwrap();
        let data = hosts[0].enroll.preprovisioning_network_data.as_ref().unwrap();
        assert_eq!(data["networks"][0]["ip_address"], "192.168.111.20/24");
        // A name without its Secret in the file is named.
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml.split("---\n").nth(1).unwrap()).unwrap();
        let e = translate(&docs).unwrap_err();
        assert_eq!(e.field, "spec.preprovisioningNetworkDataName");
        assert!(e.message.contains("vm-net"), "{e}");
    }

    #[test]
    fn missing_secret_is_named() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(YAML.split("---").nth(1).unwrap()).unwrap();
        let e = translate(&docs).unwrap_err();
        assert_eq!(e.field, "spec.bmc.credentialsName");
        assert!(e.to_string().contains("node-0-bmc-secret"));
    }
}
