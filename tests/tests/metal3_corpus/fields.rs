//! Every `spec` field of upstream's BareMetalHost CRD, acted on or refused by name through both front-ends.

use super::*;

// ---------------------------------------------------------------- every upstream spec field

/// The top-level `spec` properties of Metal3's BareMetalHost CRD, from metal3-io/baremetal-operator
/// `config/base/crds/bases/metal3.io_baremetalhosts.yaml` at commit 02aa5059e3482f9dc3b5115c3a45cec4b000ae16
/// (main, 2026-08-20; controller-gen v0.16.5). A field Metal3 adds must be added here, given a sample below, and
/// either acted on or refused.
const UPSTREAM_SPEC_FIELDS: &[&str] = &[
    "architecture",
    "automatedCleaningMode",
    "bmc",
    "bootMACAddress",
    "bootMode",
    "consumerRef",
    "customDeploy",
    "description",
    "disablePowerOff",
    "externallyProvisioned",
    "firmware",
    "hardwareProfile",
    "image",
    "inspectionMode",
    "metaData",
    "networkData",
    "networkInterfaces",
    "online",
    "preprovisioningNetworkDataName",
    "raid",
    "rootDeviceHints",
    "taints",
    "userData",
];

/// How a field kiln acts on shows its effect.
#[derive(Clone, Copy, Debug)]
enum Evidence {
    /// The kiln host's field at this JSON pointer (REST) differs from a host without it, through both front-ends.
    Rest(&'static str),
    /// Through the controller's translation (`kiln_spec`) the kiln host spec differs (Secret contents are not shown
    /// over REST).
    KilnSpec,
    /// Nothing to act on (Metal3 does nothing with it either): accepted, no effect expected.
    Informational,
    /// The controller's effect is tested elsewhere (named); `kiln import`'s translation changes.
    Elsewhere(&'static str),
}

/// The upstream fields kiln acts on, with what it does. Every other field must be refused by name (a non-default
/// value; unset or empty is as good as absent).
const ACTED_ON: &[(&str, Evidence, &str)] = &[
    (
        "automatedCleaningMode",
        Evidence::Rest("/options/erase"),
        "erase mode when deprovisioning: metadata or disabled",
    ),
    (
        "bmc",
        Evidence::Rest("/bmc/address"),
        "the BMC kiln drives: address (scheme picks IPMI/Redfish and PXE or virtual media), credentials Secret, \
         certificate verification",
    ),
    (
        "bootMACAddress",
        Evidence::Rest("/boot_mac"),
        "the NIC kiln's netboot recognises the host by",
    ),
    (
        "bootMode",
        Evidence::Rest("/boot_mode"),
        "UEFI or legacy boot (UEFISecureBoot is refused)",
    ),
    (
        "consumerRef",
        Evidence::Elsewhere(
            "tests/tests/kube_claim.rs: a claim is recorded in spec.consumerRef, and a host with one is never \
             claimed by another machine",
        ),
        "the controller keeps it on the BareMetalHost, where kiln's claims read it",
    ),
    ("description", Evidence::Informational, "free text for people"),
    (
        "externallyProvisioned",
        Evidence::Rest("/options/externally_provisioned"),
        "adopts a host that runs its OS: power management only, never written or inspected",
    ),
    (
        "image",
        Evidence::Rest("/image"),
        "provisions the host: url, checksum and checksumType, format raw, qcow2 or live-iso",
    ),
    (
        "inspectionMode",
        Evidence::Rest("/options/inspect"),
        "disabled skips inspection (as the inspect.metal3.io: disabled annotation does), agent inspects; fast is \
         refused",
    ),
    (
        "metaData",
        Evidence::KilnSpec,
        "config drive meta_data written with the image",
    ),
    (
        "networkData",
        Evidence::KilnSpec,
        "config drive network_data written with the image",
    ),
    (
        "online",
        Evidence::Elsewhere("tests/tests/kube_bmh.rs: a provisioned host follows spec.online off and on"),
        "the power of a host at rest",
    ),
    (
        "preprovisioningNetworkDataName",
        Evidence::KilnSpec,
        "static network of the agent ramdisk of a host booted by virtual media",
    ),
    (
        "rootDeviceHints",
        Evidence::Rest("/root_device_hints"),
        "which disk the image is written to",
    ),
    (
        "userData",
        Evidence::KilnSpec,
        "config drive user_data written with the image",
    ),
];

/// Samples where a front-end neither acts on the field as [`ACTED_ON`] says nor refuses it by name: (sample id,
/// front-end, what it does instead). Asserted to still hold.
const FIELD_DIFFERENCES: &[(&str, FrontEnd, &str)] = &[
    (
        "consumerRef",
        FrontEnd::Import,
        "`kiln import` refuses consumerRef (\"kiln does not act on consumerRef\")",
    ),
    (
        "hardwareProfile=unknown",
        FrontEnd::Kube,
        "the controller takes hardwareProfile: unknown as unset and ignores it, while Metal3's docs say the unknown \
         profile implies /dev/sda as the root device; `kiln import` refuses it",
    ),
    (
        "hardwareProfile=unknown",
        FrontEnd::Import,
        "`kiln import` takes hardwareProfile: unknown as unset, as the controller does (the deprecated field's \
         placeholder for no profile), while Metal3's docs say the unknown profile implies /dev/sda as the root device",
    ),
];

struct Sample {
    /// The field, or `field=value` when a field has more than one sample.
    id: &'static str,
    field: &'static str,
    /// Spec fields of the sample host: the field itself, and what it needs (an image for user data).
    spec: Value,
    /// What the field needs besides itself: also set on the reference the effect is measured against.
    with: Value,
    /// Secrets the sample names (`HOST` is replaced by the host's name).
    secrets: Vec<Value>,
}

fn samples() -> Vec<Sample> {
    let image = json!({"url": "http://192.0.2.250/images/os.qcow2", "checksum": SHA256, "checksumType": "sha256",
                       "format": "qcow2"});
    let secret = |key: &str, value: &str, suffix: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("HOST-{suffix}")},
               "stringData": {key: value}})
    };
    let s = |id, field, spec: Value| Sample {
        id,
        field,
        spec,
        with: json!({}),
        secrets: vec![],
    };
    vec![
        s("architecture", "architecture", json!({"architecture": "aarch64"})),
        s(
            "automatedCleaningMode",
            "automatedCleaningMode",
            json!({"automatedCleaningMode": "disabled"}),
        ),
        Sample {
            secrets: vec![
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "HOST-other-bmc"},
                                 "stringData": {"username": "root", "password": "other-Pw9"}}),
            ],
            ..s(
                "bmc",
                "bmc",
                json!({"bmc": {"address": "redfish+https://198.51.100.IDX:8443/redfish/v1/Systems/1",
                               "credentialsName": "HOST-other-bmc", "disableCertificateVerification": true}}),
            )
        },
        s(
            "bootMACAddress",
            "bootMACAddress",
            json!({"bootMACAddress": "52:54:00:b0:00:IDXHEX"}),
        ),
        s("bootMode", "bootMode", json!({"bootMode": "legacy"})),
        s(
            "consumerRef",
            "consumerRef",
            json!({"consumerRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "Metal3Machine",
                                   "name": "workers-7xk2p", "namespace": "fields"}}),
        ),
        s(
            "customDeploy",
            "customDeploy",
            json!({"customDeploy": {"method": "install_coreos"}}),
        ),
        s("description", "description", json!({"description": "rack 3, U12"})),
        s("disablePowerOff", "disablePowerOff", json!({"disablePowerOff": true})),
        s(
            "externallyProvisioned",
            "externallyProvisioned",
            json!({"externallyProvisioned": true}),
        ),
        s(
            "firmware",
            "firmware",
            json!({"firmware": {"sriovEnabled": true, "virtualizationEnabled": false}}),
        ),
        s(
            "hardwareProfile",
            "hardwareProfile",
            json!({"hardwareProfile": "libvirt"}),
        ),
        s(
            "hardwareProfile=unknown",
            "hardwareProfile",
            json!({"hardwareProfile": "unknown"}),
        ),
        s("image", "image", json!({"image": image})),
        s(
            "inspectionMode",
            "inspectionMode",
            json!({"inspectionMode": "disabled"}),
        ),
        Sample {
            with: json!({"image": image}),
            secrets: vec![secret("metaData", "rack: r3\nrole: worker\n", "meta")],
            ..s("metaData", "metaData", json!({"metaData": {"name": "HOST-meta"}}))
        },
        Sample {
            with: json!({"image": image}),
            secrets: vec![secret(
                "networkData",
                r#"{"links": [{"id": "eno1", "type": "phy", "ethernet_mac_address": "52:54:00:b1:00:01"}],
                    "networks": [{"id": "eno1", "link": "eno1", "type": "ipv4_dhcp"}], "services": []}"#,
                "net",
            )],
            ..s(
                "networkData",
                "networkData",
                json!({"networkData": {"name": "HOST-net"}}),
            )
        },
        s(
            "networkInterfaces",
            "networkInterfaces",
            json!({"networkInterfaces": [{"name": "ens3f0", "hostNetworkAttachment": {"name": "mgmt-access"}}]}),
        ),
        s("online", "online", json!({"online": true})),
        Sample {
            secrets: vec![secret(
                "networkData",
                "links:\n- id: enp1s0\n  type: phy\n  ethernet_mac_address: 52:54:00:b2:00:IDXHEX\nnetworks:\n\
                 - id: prov\n  link: enp1s0\n  type: ipv4\n  ip_address: 198.51.100.IDX\n  netmask: 255.255.255.0\n",
                "preprov",
            )],
            ..s(
                "preprovisioningNetworkDataName",
                "preprovisioningNetworkDataName",
                json!({"preprovisioningNetworkDataName": "HOST-preprov"}),
            )
        },
        s(
            "raid",
            "raid",
            json!({"raid": {"softwareRAIDVolumes": [{"level": "1"}]}}),
        ),
        s(
            "rootDeviceHints",
            "rootDeviceHints",
            json!({"rootDeviceHints": {"deviceName": "/dev/sdb"}}),
        ),
        s(
            "taints",
            "taints",
            json!({"taints": [{"key": "dedicated", "value": "storage", "effect": "NoSchedule"}]}),
        ),
        Sample {
            with: json!({"image": image}),
            secrets: vec![secret("userData", "#cloud-config\nhostname: sample\n", "user")],
            ..s("userData", "userData", json!({"userData": {"name": "HOST-user"}}))
        },
    ]
}

/// The documents of sample host number `idx` (`fw-<idx>` in namespace `fields`): its credentials Secret, the
/// sample's Secrets and the BareMetalHost with `with` and `spec` over a plain redfish-virtualmedia host.
fn sample_docs(idx: usize, with: &Value, spec: &Value, secrets: &[Value]) -> Vec<Value> {
    let host = format!("fw-{idx}");
    let mut s = json!({
        "online": false,
        "bmc": {"address": "redfish-virtualmedia://192.0.2.IDX/redfish/v1/Systems/1",
                "credentialsName": "HOST-bmc"},
    });
    for part in [with, spec] {
        for (k, v) in part.as_object().unwrap() {
            s[k] = v.clone();
        }
    }
    let mut docs = vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "HOST-bmc"},
                               "stringData": {"username": "admin", "password": "fw-Pw7"}}),
    ];
    docs.extend(secrets.iter().cloned());
    docs.push(json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                     "metadata": {"name": "HOST"}, "spec": s}));
    let text = serde_json::to_string(&docs)
        .unwrap()
        .replace("IDXHEX", &format!("{idx:02x}"))
        .replace("IDX", &(idx + 10).to_string())
        .replace("HOST", &host);
    let mut docs: Vec<Value> = serde_json::from_str(&text).unwrap();
    for d in &mut docs {
        d["metadata"]["namespace"] = json!("fields");
    }
    docs
}

/// `kiln import`'s translation of documents: `Ok` with what it would send, or the refused field and why.
fn import_translation(docs: &[Value]) -> Result<String, (String, String)> {
    kiln_http::import::translate(docs)
        .map(|h| format!("{h:?}"))
        .map_err(|e| (e.field, e.message))
}

/// The controller's translation (`kiln_spec`) of a host with the Secret-backed field set, against one without: do
/// they differ? Mirrors what the controller resolves from the field's Secret (`host_controller::host_spec`).
fn kiln_spec_changes(field: &str) -> bool {
    use kiln_kube::bmh::{AutomatedCleaningMode, BootMode, Image};
    use kiln_kube::engine::{BmcAccess, HostKey, HostSpec, SecretBytes};
    let key = HostKey {
        namespace: "fields".into(),
        name: "fw-spec".into(),
    };
    let base = HostSpec {
        bmc: BmcAccess {
            address: "redfish-virtualmedia://192.0.2.9/redfish/v1/Systems/1".into(),
            username: "admin".into(),
            password: SecretBytes(b"fw-Pw7".to_vec()),
            disable_certificate_verification: false,
        },
        boot_mac_address: None,
        boot_mode: BootMode::Uefi,
        online: false,
        consumer: None,
        image: Some(Image {
            url: "http://192.0.2.250/images/os.qcow2".into(),
            checksum: Some(SHA256.into()),
            checksum_type: Some(kiln_kube::bmh::ChecksumType::Sha256),
            disk_format: Some(kiln_kube::bmh::DiskFormat::Qcow2),
            oci_auth_secret_name: None,
        }),
        image_credentials: None,
        user_data: None,
        network_data: None,
        meta_data: None,
        preprovisioning_network_data: None,
        root_device_hints: None,
        automated_cleaning_mode: AutomatedCleaningMode::Metadata,
        externally_provisioned: false,
        adopt_provisioned: false,
        architecture: None,
        inspect: true,
        labels: Default::default(),
    };
    let mut with = base.clone();
    let b = |s: &str| Some(SecretBytes(s.as_bytes().to_vec()));
    match field {
        "userData" => with.user_data = b("#cloud-config\nhostname: sample\n"),
        "networkData" => with.network_data = b(r#"{"links": [], "networks": [], "services": []}"#),
        "metaData" => with.meta_data = b("rack: r3\n"),
        "preprovisioningNetworkDataName" => {
            with.preprovisioning_network_data = b(
                "links:\n- id: enp1s0\n  type: phy\nnetworks:\n- id: prov\n  link: enp1s0\n  type: ipv4\n  \
                 ip_address: 198.51.100.9\n  netmask: 255.255.255.0\n",
            )
        }
        other => panic!("no kiln_spec sample for {other}"),
    }
    let (a, z) = (
        kiln_kube::engine::store::kiln_spec(&key, &base).unwrap(),
        kiln_kube::engine::store::kiln_spec(&key, &with).unwrap_or_else(|e| panic!("{field}: {e}")),
    );
    a != z
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_spec_field_is_acted_on_or_refused_by_name() {
    let started = std::time::Instant::now();
    let samples = samples();
    // The lists name upstream fields only, and every upstream field has a sample.
    for f in UPSTREAM_SPEC_FIELDS {
        assert!(
            samples.iter().any(|s| s.field == *f),
            "upstream field {f} has no sample: give it one and act on it or refuse it"
        );
    }
    for (f, _, _) in ACTED_ON {
        assert!(
            UPSTREAM_SPEC_FIELDS.contains(f),
            "ACTED_ON names {f}, not an upstream field"
        );
    }
    for s in &samples {
        assert!(
            UPSTREAM_SPEC_FIELDS.contains(&s.field),
            "sample {} of a non-upstream field",
            s.id
        );
    }
    for (id, _, _) in FIELD_DIFFERENCES {
        assert!(samples.iter().any(|s| s.id == *id), "FIELD_DIFFERENCES names {id}");
    }
    // kiln's CRD knows every field (kube-apiserver would otherwise prune it before the controller saw it), and its
    // BareMetalHost type keeps it.
    let crds = parse_crds(&kiln_kube::crds::crds_yaml()).unwrap();
    let bmh_crd = crds
        .iter()
        .find(|c| c.spec.names.kind == "BareMetalHost")
        .expect("kiln's BareMetalHost CRD");
    let schema = serde_json::to_value(&bmh_crd.spec.versions[0].schema).unwrap();
    let props = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for f in UPSTREAM_SPEC_FIELDS {
        assert!(props.get(f).is_some(), "kiln's BareMetalHost CRD has no spec.{f}");
    }
    for s in &samples {
        let spec = sample_docs(1, &s.with, &s.spec, &s.secrets).pop().unwrap()["spec"].clone();
        let typed: kiln_kube::bmh::BareMetalHostSpec =
            serde_json::from_value(spec).unwrap_or_else(|e| panic!("{}: {e}", s.id));
        let back = serde_json::to_value(&typed).unwrap();
        assert!(
            back.get(s.field).is_some(),
            "{}: kiln's BareMetalHost type drops it",
            s.id
        );
    }

    // Through the controller: every sample host at once, plus a reference host (index 0) without any sample.
    let kube = KubeSide::start().await;
    ensure_namespaces(&kube.client, &["fields".to_owned()].into()).await;
    let mut hosts = vec![sample_docs(0, &json!({}), &json!({}), &[])];
    hosts.extend(
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| sample_docs(i + 1, &s.with, &s.spec, &s.secrets)),
    );
    for (i, docs) in hosts.iter().enumerate() {
        let mac = docs.last().unwrap()["spec"]["bootMACAddress"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("52:54:00:fe:00:{i:02x}"));
        quiet_fake(&kube.lab, &format!("fields.fw-{i}"), &mac);
    }
    // One host at a time, as in the corpus test (many hosts created at once starve the store's connection pool).
    let mut applied = Vec::new();
    for (i, docs) in hosts.iter().enumerate() {
        let a = apply_docs(&kube.client, docs).await;
        let case = Case {
            file: format!("fw-{i}"),
            path: PathBuf::new(),
            expect: Expect::Enrolled,
            checks: vec![],
            login: None,
            docs: docs.clone(),
        };
        let _ = through_kube(&kube.lab, &kube.client, &case, &a).await;
        applied.push(a);
    }
    let reference = Case {
        file: "fw-0".into(),
        path: PathBuf::new(),
        expect: Expect::Enrolled,
        checks: vec![],
        login: None,
        docs: hosts[0].clone(),
    };
    let (r, reference_hosts) = through_kube(&kube.lab, &kube.client, &reference, &applied[0]).await;
    r.expect("the reference host is enrolled by the controller");
    let reference_host = reference_hosts["fw-0"].clone();
    import_translation(&hosts[0]).expect("kiln import takes the reference host");

    let mut failures = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let docs = &hosts[i + 1];
        let name = format!("fw-{}", i + 1);
        let acted = ACTED_ON.iter().find(|(f, _, _)| *f == s.field);

        // `kiln import`'s translation.
        let import = import_translation(docs);
        let import_verdict: Result<(), String> = match (acted, &import) {
            (Some((_, ev, _)), Ok(t)) => {
                let reference = import_translation(&sample_docs(i + 1, &s.with, &json!({}), &s.secrets))
                    .expect("the sample's reference translates");
                if matches!(ev, Evidence::Informational) || *t != reference {
                    Ok(())
                } else {
                    Err("accepted without any effect on what kiln import sends".into())
                }
            }
            (Some(_), Err((field, why))) => Err(format!("refused: {field}: {why}")),
            (None, Err((field, _))) if field.starts_with(&format!("spec.{}", s.field)) => Ok(()),
            (None, Err((field, why))) => Err(format!("refused for another field: {field}: {why}")),
            (None, Ok(_)) => Err("accepted and ignored".into()),
        };

        // The controller.
        let case = Case {
            file: name.clone(),
            path: PathBuf::new(),
            expect: Expect::Enrolled,
            checks: vec![],
            login: None,
            docs: docs.clone(),
        };
        let (enrolled, kiln) = through_kube(&kube.lab, &kube.client, &case, &applied[i + 1]).await;
        let status = Api::<BareMetalHost>::namespaced(kube.client.clone(), "fields")
            .get_opt(&name)
            .await
            .unwrap()
            .and_then(|b| b.status)
            .unwrap_or_default();
        let kube_verdict: Result<(), String> = match (acted, &enrolled) {
            (Some((_, ev, _)), Ok(())) => match ev {
                Evidence::Rest(ptr) => {
                    let (a, z) = (
                        reference_host.pointer(ptr).cloned().unwrap_or_default(),
                        kiln[&name].pointer(ptr).cloned().unwrap_or_default(),
                    );
                    if a == z {
                        Err(format!("accepted, but the kiln host's {ptr} is {z} as without it"))
                    } else {
                        Ok(())
                    }
                }
                Evidence::KilnSpec if !kiln_spec_changes(s.field) => Err("kiln_spec does not change".into()),
                Evidence::Elsewhere(test) => {
                    eprintln!("{}: the controller's effect is tested in {test}", s.id);
                    Ok(())
                }
                Evidence::KilnSpec | Evidence::Informational => Ok(()),
            },
            (Some(_), Err(e)) => Err(format!("refused: {e}")),
            (None, Err(_))
                if status.error_message.contains(&format!("spec.{}", s.field)) && status.error_type.is_some() =>
            {
                Ok(())
            }
            (None, Err(e)) => Err(format!("not refused by name: {e}")),
            (None, Ok(())) => Err(format!(
                "accepted and ignored: the kiln host is {}",
                kiln[&name]["state"]
            )),
        };
        eprintln!(
            "{:32} import: {import_verdict:?}\n{:32} kube:   {kube_verdict:?}",
            s.id, ""
        );
        for (fe, verdict) in [(FrontEnd::Import, &import_verdict), (FrontEnd::Kube, &kube_verdict)] {
            let known = FIELD_DIFFERENCES.iter().any(|(id, e, _)| *id == s.id && *e == fe);
            match (verdict, known) {
                (Ok(()), false) | (Err(_), true) => {}
                (Ok(()), true) => failures.push(format!(
                    "{} through {fe:?} is now acted on or refused by name: remove it from FIELD_DIFFERENCES",
                    s.id
                )),
                (Err(e), false) => failures.push(format!("{} through {fe:?}: {e}", s.id)),
            }
        }
    }
    kube.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} samples of {} upstream fields in {:?}",
        samples.len(),
        UPSTREAM_SPEC_FIELDS.len(),
        started.elapsed()
    );
}
