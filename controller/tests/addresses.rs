//! Every BMC address form Metal3 accepts (baremetal-operator's `pkg/hardwareutils/bmc` parser and its docs), through
//! each of kiln's front-ends: the REST API (dry run, then a real enrollment of the accepted ones), `kiln import`
//! (the CLI binary against the running appliance, `--dry-run`) and the BareMetalHost translation the Kubernetes
//! controller runs. All three accept the same forms and refuse the others with the same message, which names the
//! address and what to use instead.

use kiln_kube::bmh::{AutomatedCleaningMode, BootMode};
use kiln_kube::engine::store::kiln_spec;
use kiln_kube::engine::{BmcAccess, HostKey, HostSpec, SecretBytes};
use kiln_tests::inproc::Lab;
use serde_json::json;

/// (address, accepted, a phrase the refusal must contain). `{n}` is replaced by a per-row number so that accepted
/// rows name distinct machines.
const FORMS: &[(&str, bool, &str)] = &[
    // IPMI, every spelling Metal3 takes.
    ("192.168.{n}.1", true, ""),
    ("192.168.{n}.1:6233", true, ""),
    ("[fe80::fc33:62ff:fe83:{n}]:6233", true, ""),
    ("ipmi://192.168.{n}.1", true, ""),
    ("ipmi://192.168.{n}.1:6233", true, ""),
    ("ipmi://[fe80::fc33:62ff:fe83:{n}]:6233", true, ""),
    ("ipmi:bmc-{n}.example.com", true, ""),
    ("bmc-{n}.example.com", true, ""),
    ("ipmi://192.168.{n}.1:623?privilegelevel=OPERATOR", true, ""),
    (
        "ipmi://192.168.{n}.1?privilegelevel=USER",
        false,
        "OPERATOR or ADMINISTRATOR",
    ),
    // Redfish-based schemes that boot by PXE.
    ("redfish://192.168.{n}.1", true, ""),
    ("redfish://192.168.{n}.1/redfish/v1/Systems/1", true, ""),
    ("redfish://192.168.{n}.1/redfish/v1/systems/1", true, ""),
    ("redfish+http://192.168.{n}.1:8000/redfish/v1/Systems/1", true, ""),
    ("redfish+https://192.168.{n}.1:8443/redfish/v1/Systems/1", true, ""),
    (
        "redfish://[fe80::fc33:62ff:fe83:{n}]:8443/redfish/v1/Systems/1",
        true,
        "",
    ),
    (
        "idrac-redfish://192.168.{n}.1/redfish/v1/Systems/System.Embedded.1",
        true,
        "",
    ),
    (
        "idrac-redfish+http://192.168.{n}.1/redfish/v1/Systems/System.Embedded.1",
        true,
        "",
    ),
    (
        "idrac-redfish+https://192.168.{n}.1/redfish/v1/Systems/System.Embedded.1",
        true,
        "",
    ),
    ("ilo5-redfish://192.168.{n}.1/redfish/v1/Systems/1", true, ""),
    ("ilo5-redfish+https://192.168.{n}.1/redfish/v1/Systems/1", true, ""),
    // Virtual-media schemes: the agent boots from the BMC's virtual CD (boot_method virtual-media, never PXE).
    ("redfish-virtualmedia://192.168.{n}.1/redfish/v1/Systems/1", true, ""),
    (
        "redfish-virtualmedia+http://192.168.{n}.1/redfish/v1/Systems/1",
        true,
        "",
    ),
    (
        "redfish-virtualmedia+https://192.168.{n}.1/redfish/v1/Systems/1",
        true,
        "",
    ),
    (
        "idrac-virtualmedia://192.168.{n}.1/redfish/v1/Systems/System.Embedded.1",
        true,
        "",
    ),
    (
        "idrac-virtualmedia+https://192.168.{n}.1/redfish/v1/Systems/System.Embedded.1",
        true,
        "",
    ),
    ("ilo5-virtualmedia://192.168.{n}.1/redfish/v1/Systems/1", true, ""),
    (
        // UEFI HTTP boot through the BMC: refused, never PXE-booted silently.
        "redfish-uefihttp://192.168.{n}.1/redfish/v1/Systems/1",
        false,
        "uefi-http boot",
    ),
    (
        "redfish-uefihttp+http://192.168.{n}.1/redfish/v1/Systems/1",
        false,
        "uefi-http boot",
    ),
    // Metal3 schemes for protocols kiln does not speak: refused with the form to use instead.
    ("libvirt://192.168.{n}.1/", false, "ipmi://"),
    ("idrac://192.168.{n}.1", false, "idrac-redfish://"),
    ("idrac+http://192.168.{n}.1", false, "idrac-redfish://"),
    ("ilo4://192.168.{n}.1", false, "redfish://"),
    ("ilo5://192.168.{n}.1", false, "ilo5-redfish://"),
    ("irmc://192.168.{n}.1", false, "redfish://"),
    ("ibmc://192.168.{n}.1", false, "redfish://"),
    // Not a BMC address at all.
    ("http://192.168.{n}.1", false, "unsupported scheme"),
    ("redfish://admin:pw@192.168.{n}.1", false, "credentials"),
];

fn bmh(address: &str) -> HostSpec {
    HostSpec {
        bmc: BmcAccess {
            address: address.into(),
            username: "admin".into(),
            // As `echo pw | base64` leaves it: Metal3 trims the newline.
            password: SecretBytes(b"metal3-pw\n".to_vec()),
            disable_certificate_verification: true,
        },
        boot_mac_address: None,
        boot_mode: BootMode::Uefi,
        online: false,
        consumer: None,
        image: None,
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metal3_address_form_gets_the_same_answer_from_every_front_end() {
    let lab = Lab::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &lab.admin).unwrap();
    for (i, (form, accepted, phrase)) in FORMS.iter().enumerate() {
        let address = form.replace("{n}", &(i + 1).to_string());
        let name = format!("form-{}", i + 1);

        // REST, dry run.
        let (code, body) = lab
            .api(
                reqwest::Method::POST,
                "/api/v1/hosts?dry_run=true",
                Some(json!({ "name": name, "bmc": { "address": address, "username": "admin", "password": "pw" } })),
            )
            .await;
        let rest = (code == 200, body["error"].as_str().unwrap_or_default().to_owned());
        assert_eq!(rest.0, *accepted, "REST on {address}: {body}");
        if !accepted {
            assert_eq!(body["field"], "bmc.address", "{address}: {body}");
            assert!(rest.1.contains(phrase), "REST on {address}: {body}");
            assert!(!rest.1.contains("pw@"), "the refusal echoes credentials: {body}");
        }

        // BareMetalHost, as the Kubernetes controller translates it.
        let key = HostKey {
            namespace: "metal3".into(),
            name: name.clone(),
        };
        let kube = kiln_spec(&key, &bmh(&address));
        assert_eq!(kube.is_ok(), *accepted, "BareMetalHost with {address}: {kube:?}");
        if let Err(e) = &kube {
            let e = e.to_string();
            assert!(
                e.contains("spec.bmc.address") && e.contains(&rest.1),
                "{address}: {e} vs REST {}",
                rest.1
            );
        }
        if let Ok(spec) = &kube {
            assert_eq!(
                spec.bmc.as_ref().unwrap().password.expose(),
                "metal3-pw",
                "trimmed as Metal3 does"
            );
        }

        // `kiln import --dry-run` with the CLI binary.
        let manifest = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-bmc\ndata:\n  username: YWRtaW4K\n  password: bWV0YWwzLXB3Cg==\n---\n\
                 apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: {name}\nspec:\n  online: false\n  bmc:\n    \
                 address: \"{address}\"\n    credentialsName: {name}-bmc\n"
            ),
        )
        .unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("import")
            .arg(&manifest)
            .arg("--dry-run")
            .args(["--server", &lab.base, "--token-file"])
            .arg(&token)
            .arg("--ca-file")
            .arg(kiln_http::tls::ca_path(lab.dir.path()))
            .env("RUST_BACKTRACE", "0")
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), *accepted, "kiln import on {address}: {text}");
        if *accepted {
            assert!(text.contains("would be enrolled"), "{text}");
        } else {
            assert!(
                text.contains(&rest.1),
                "kiln import on {address}: {text} vs REST {}",
                rest.1
            );
        }

        // And the accepted ones enroll for real.
        if *accepted {
            let (code, body) = lab
                .api(
                    reqwest::Method::POST,
                    "/api/v1/hosts",
                    Some(
                        json!({ "name": name, "bmc": { "address": address, "username": "admin", "password": "pw" },
                                 "options": { "inspect": false } }),
                    ),
                )
                .await;
            assert_eq!(code, 201, "{address}: {body}");
            let method = if address.contains("virtualmedia") {
                "virtual-media"
            } else {
                "pxe"
            };
            assert_eq!(body["bmc"]["boot_method"], method, "{body}");
        }
    }
}

/// `kiln import` is all or none: a file whose second host is refused enrolls neither, and says why for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_all_or_none() {
    let lab = Lab::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &lab.admin).unwrap();
    let manifest = dir.path().join("inventory.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bmc\nstringData:\n  username: admin\n  password: pw\n---\n\
         apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: good\nspec:\n  bmc:\n    address: ipmi://10.9.0.1\n    credentialsName: bmc\n---\n\
         apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: bad\nspec:\n  bmc:\n    address: idrac://10.9.0.2\n    credentialsName: bmc\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("import")
        .arg(&manifest)
        .args(["--server", &lab.base, "--token-file"])
        .arg(&token)
        .arg("--ca-file")
        .arg(kiln_http::tls::ca_path(lab.dir.path()))
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nothing was imported") && err.contains("BareMetalHost default/bad"),
        "{err}"
    );
    let (_, hosts) = lab.api(reqwest::Method::GET, "/api/v1/hosts", None).await;
    assert_eq!(hosts, json!([]), "a host was enrolled although the import was refused");
}

/// `POST /api/v1/import` (what `kiln import` and the web page send): every refusal of a manifest is reported at once,
/// each naming its document and manifest field, and nothing is enrolled; a dry run says what would happen; a good
/// manifest is enrolled in one go (hosts with an image are provisioned once inspected); importing it again is
/// refused by name.
#[tokio::test]
async fn the_rest_import_names_every_refusal_and_enrolls_all_or_none() {
    let lab = Lab::start(|_| {}).await;
    let post = |path: &'static str, yaml: String| {
        let (client, base, admin) = (lab.client.clone(), lab.base.clone(), lab.admin.clone());
        async move {
            let r = client
                .post(format!("{base}{path}"))
                .bearer_auth(admin)
                .header("content-type", "application/yaml")
                .body(yaml)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bmc\n  namespace: rack1\ndata:\n  username: YWRtaW4K\n  password: c2VjcmV0LXB3Cg==\n";
    let host = |name: &str, address: &str, extra: &str| {
        format!(
            "---\napiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: {name}\n  namespace: rack1\nspec:\n  online: true\n  bmc:\n    address: {address}\n    credentialsName: bmc\n{extra}"
        )
    };
    let image = "  image:\n    url: http://192.0.2.10/os.qcow2\n    checksum: http://192.0.2.10/os.qcow2.sha256sum\n    checksumType: sha256\n";
    let good = format!(
        "{secret}{}{}",
        host("r1-a", "ipmi://192.0.2.21", ""),
        host("r1-b", "redfish://192.0.2.22/redfish/v1/Systems/1", image)
    );
    let bad = format!(
        "{good}{}{}",
        host("r1-c", "irmc://192.0.2.23", ""),
        host("r1-d", "ipmi://192.0.2.24", "  bootMACAddress: 52:54:00:zz:00:01\n")
    );
    let (code, out) = post("/api/v1/import", bad).await;
    assert_eq!(code, 422, "{out}");
    let refused = out["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "every refusal at once: {out}");
    assert_eq!(refused[0]["document"], "BareMetalHost rack1/r1-c");
    assert_eq!(refused[0]["field"], "spec.bmc.address");
    assert_eq!(refused[1]["field"], "spec.bootMACAddress", "{out}");
    assert!(out["error"].as_str().unwrap().contains("nothing was imported"), "{out}");
    assert_eq!(lab.host_names().await, Vec::<String>::new(), "nothing enrolled");

    // Documents that conflict with each other (the same MAC, the same BMC) are refused by document too, before
    // anything is written, as a conflict with an enrolled host is.
    let mac = "  bootMACAddress: 52:54:00:aa:00:01\n";
    for (second, field, what) in [
        (
            host("r2-b", "ipmi://192.0.2.32", mac),
            "spec.bootMACAddress",
            "52:54:00:aa:00:01",
        ),
        (host("r2-b", "ipmi://192.0.2.31", ""), "spec.bmc.address", "192.0.2.31"),
    ] {
        let clash = format!("{secret}{}{second}", host("r2-a", "ipmi://192.0.2.31", mac));
        let (code, out) = post("/api/v1/import?dry_run=true", clash).await;
        assert_eq!(code, 422, "{out}");
        let refused = out["refused"].as_array().unwrap();
        assert_eq!(refused.len(), 1, "{out}");
        assert_eq!(refused[0]["document"], "BareMetalHost rack1/r2-b", "{out}");
        assert_eq!(refused[0]["field"], field, "{out}");
        let error = refused[0]["error"].as_str().unwrap_or_default();
        assert!(error.contains(what) && error.contains("r2-a"), "{out}");
    }

    let (code, out) = post("/api/v1/import?dry_run=true", good.clone()).await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["dry_run"], true);
    assert_eq!(out["hosts"][0]["outcome"], "enrolled");
    assert_eq!(out["hosts"][1]["outcome"], "enrolled, provisioning");
    assert_eq!(lab.host_names().await, Vec::<String>::new(), "a dry run writes nothing");

    let (code, out) = post("/api/v1/import", good.clone()).await;
    assert_eq!(code, 201, "{out}");
    let mut names = lab.host_names().await;
    names.sort();
    assert_eq!(names, ["r1-a", "r1-b"]);
    let (_, b) = lab.api(reqwest::Method::GET, "/api/v1/hosts/r1-b", None).await;
    assert_eq!(b["image"]["url"], "http://192.0.2.10/os.qcow2", "{b}");
    let (_, events) = lab.api(reqwest::Method::GET, "/api/v1/hosts/r1-a/events", None).await;
    assert!(
        events.to_string().contains("imported from BareMetalHost rack1/r1-a"),
        "{events}"
    );

    let (code, out) = post("/api/v1/import", good).await;
    assert_eq!(code, 422, "{out}");
    assert_eq!(out["refused"][0]["field"], "metadata.name", "{out}");
    assert_eq!(out["refused"].as_array().unwrap().len(), 2, "{out}");
    let (code, out) = post("/api/v1/import", "kind: [".into()).await;
    assert_eq!((code, out["field"].as_str()), (400, Some("manifest")), "{out}");
}
