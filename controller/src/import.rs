//! `kiln import`: turns Metal3 `BareMetalHost` manifests and their credential `Secret`s (multi-document YAML) into
//! enroll and provision requests of the REST API. Pure translation; it must not talk to the API itself.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One host to enroll (REST body of `POST /api/v1/hosts`) and, if the manifest sets an image, its provision body.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedHost {
    /// `BareMetalHost <namespace>/<name>`, for messages.
    pub doc: String,
    pub name: String,
    pub enroll: Value,
    pub provision: Option<Value>,
}

/// Why a manifest could not be translated; names the document and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doc}: {field}: {message}")]
pub struct ImportError {
    pub doc: String,
    pub field: String,
    pub message: String,
}

fn b64(s: &str) -> Option<String> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = A.iter().position(|a| *a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).ok()
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
        let spec = &d["spec"];
        let mut enroll = json!({ "name": name });
        if let Some(labels) = d["metadata"]["labels"].as_object() {
            enroll["labels"] = Value::Object(labels.clone());
        }
        if let Some(addr) = spec["bmc"]["address"].as_str() {
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
            enroll["bmc"] = json!({ "address": addr, "username": username, "password": password });
            match &spec["bmc"]["disableCertificateVerification"] {
                Value::Null | Value::Bool(false) => {}
                Value::Bool(true) => enroll["bmc"]["disable_certificate_verification"] = json!(true),
                other => {
                    return Err(err(
                        "spec.bmc.disableCertificateVerification",
                        format!("{other} is not true or false"),
                    ));
                }
            }
        }
        if let Some(mac) = spec["bootMACAddress"].as_str() {
            enroll["boot_mac"] = json!(mac);
        }
        if let Some(mode) = spec["bootMode"].as_str() {
            enroll["boot_mode"] = json!(if mode.eq_ignore_ascii_case("legacy") {
                "legacy"
            } else {
                "uefi"
            });
        }
        if spec["rootDeviceHints"].is_object() {
            enroll["root_device_hints"] = spec["rootDeviceHints"].clone();
        }
        let mut options = json!({ "externally_provisioned": spec["externallyProvisioned"].as_bool().unwrap_or(false) });
        if spec["automatedCleaningMode"] == "disabled" {
            options["erase"] = json!("disabled");
        }
        if let Some(mode) = d["metadata"]["annotations"]["inspect.metal3.io"].as_str() {
            options["inspect"] = json!(mode != "disabled");
        }
        enroll["options"] = options;
        let provision = match spec["image"]["url"].as_str() {
            Some(url) => {
                let mut checksum = spec["image"]["checksum"].as_str().map(str::to_owned);
                if let (Some(c), Some(t)) = (&checksum, spec["image"]["checksumType"].as_str())
                    && !c.starts_with("http")
                    && t != "auto"
                {
                    checksum = Some(format!("{t}:{c}"));
                }
                let mut p = json!({ "image": { "url": url, "checksum": checksum } });
                if let Some(f) = spec["image"]["diskFormat"]
                    .as_str()
                    .or(spec["image"]["format"].as_str())
                {
                    p["image"]["format"] = json!(f);
                }
                if let Some(ud) = spec["userData"]["name"].as_str() {
                    let ud_ns = spec["userData"]["namespace"].as_str().unwrap_or(&ns).to_owned();
                    let s = secrets
                        .get(&(ud_ns, ud.to_owned()))
                        .ok_or_else(|| err("spec.userData.name", format!("Secret {ud} is not in the file")))?;
                    p["user_data"] = json!(secret_value(s, "userData").or_else(|| secret_value(s, "value")));
                }
                Some(p)
            }
            None => None,
        };
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
            provision,
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
        assert_eq!(h.enroll["bmc"]["username"], "admin");
        assert_eq!(h.enroll["bmc"]["password"], "password");
        assert_eq!(h.enroll["boot_mode"], "uefi");
        assert_eq!(h.enroll["root_device_hints"]["deviceName"], "/dev/sda");
        assert_eq!(h.enroll["labels"]["rack"], "r1");
        let p = h.provision.as_ref().unwrap();
        assert!(p["image"]["checksum"].as_str().unwrap().starts_with("sha256:4f53"));
        assert_eq!(p["image"]["format"], "qcow2");
        assert!(hosts[1].provision.is_none());
        assert_eq!(hosts[1].enroll["options"]["externally_provisioned"], true);
        assert!(hosts[1].enroll.get("bmc").is_none());
    }

    #[test]
    fn missing_secret_is_named() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(YAML.split("---").nth(1).unwrap()).unwrap();
        let e = translate(&docs).unwrap_err();
        assert_eq!(e.field, "spec.bmc.credentialsName");
        assert!(e.to_string().contains("node-0-bmc-secret"));
    }
}
