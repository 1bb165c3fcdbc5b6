//! End to end through Kubernetes, as a Metal3 / Cluster API user sees it: `kiln serve --kube` runs in the lab
//! namespace beside a QEMU VM behind sushy-tools, talking to a real kube-apiserver (bridged into the namespace).
//! 1. A Metal3 BareMetalHost + credentials Secret → the VM registers, netboots the agent, is inspected →
//!    `available`, with the VM's hardware in `status.hardware`.
//! 2. A Cluster API Machine + KilnMachine with a bootstrap data Secret claims the host; kiln writes the Debian image
//!    and a config drive carrying the bootstrap data; the VM boots the written OS and cloud-init runs that data
//!    (it prints a marker on the console and calls back to the test, where a kubeadm join would run); the
//!    KilnMachine gets its providerID and is ready.
//! 3. Deleting the KilnMachine deprovisions the host (its disk no longer has a partition table) and releases it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::capi::KilnMachine;
use kiln_kube::machine_controller::machine_resource;
use kiln_tests::{
    ipmi,
    kube::{KubeApiServer, capi_crds, install_crds, parse_crds},
    lab::{BmcKind, Lab, target_bin},
    operator::{CALLBACK_PORT, Callback, Cli, SERVER, kiln_config, stage_files, vm},
    osimage::OsImage,
    qemu::read_console,
};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::json;

async fn wait<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            println!("{what}: {:.1} s", start.elapsed().as_secs_f64());
            return Ok(v);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metal3_host_and_capi_machine_on_a_qemu_vm() -> anyhow::Result<()> {
    let os = OsImage::get()?;
    let server = KubeApiServer::start().await?;
    let client = server.client().await?;
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml())?;
    crds.extend(capi_crds()?);
    install_crds(&client, &crds).await?;

    let mut lab = Lab::start("e2e-kube", &[(vm("e2e-kube", "52:54:00:99:00:41"), BmcKind::Redfish)])?;
    let bridge = server.bridge_into(&lab.ns, &lab.record)?;
    let files = stage_files(&lab, &os)?;
    let config = kiln_config(&lab, &files)?;
    let mut toml = std::fs::read_to_string(&config)?;
    toml.push_str(&format!(
        "\n[kube]\nkubeconfig = \"{}\"\nlease_namespace = \"default\"\nbusy_requeue_secs = 2\n",
        bridge.kubeconfig.display()
    ));
    std::fs::write(&config, toml)?;
    lab.start_kiln(&["--config", &config.display().to_string()], None)?;
    let cli = Cli {
        lab: &lab,
        kiln: target_bin("kiln")?,
    };
    let callback = Callback::start(&lab)?;
    let host = lab.hosts[0].clone();

    // 1. The Metal3 inventory, applied as-is.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "e2e-kube-bmc"},
                "stringData": {"username": ipmi::USERNAME, "password": ipmi::PASSWORD}
            }))?,
        )
        .await?;
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    hosts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": "e2e-kube", "labels": {"role": "worker"}},
                "spec": {"online": true, "bootMACAddress": host.mac, "bootMode": "legacy",
                         "bmc": {"address": host.bmc_address, "credentialsName": "e2e-kube-bmc"}}
            }))?,
        )
        .await?;
    let h = wait("BareMetalHost available", Duration::from_secs(600), async || {
        let h = hosts.get("e2e-kube").await.ok()?;
        (h.state() == S::Available).then_some(h)
    })
    .await?;
    let hw = h.status.and_then(|s| s.hardware).expect("status.hardware");
    assert_eq!(hw.cpu.and_then(|c| c.count), Some(1), "the VM has one CPU");
    assert!(
        hw.storage.iter().any(|d| d.size_bytes == Some(5120 * 1024 * 1024)),
        "{:?}",
        hw.storage
    );
    assert!(
        hw.nics
            .iter()
            .any(|n| n.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&host.mac))),
        "{:?}",
        hw.nics
    );

    // 2. A Machine with bootstrap data claims the host; cloud-init on the written OS runs that data.
    let bootstrap = format!(
        "#!/bin/sh\necho KILN-CAPI-BOOTSTRAP-$((6*7)) > /dev/ttyS0\ncurl -s http://{SERVER}:{CALLBACK_PORT}/capi-joined-$(hostname) || true\n"
    );
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "m0-bootstrap"}, "type": "cluster.x-k8s.io/secret",
                "stringData": {"value": bootstrap, "format": "cloud-config"}
            }))?,
        )
        .await?;
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &machine_resource());
    let m = machines
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "metadata": {"name": "m0"},
                "spec": {"clusterName": "c1",
                         "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": "m0"},
                                       "dataSecretName": "m0-bootstrap"},
                         "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": "m0"}}
            }))?,
        )
        .await?;
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), "default");
    kms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine",
            "metadata": {"name": "m0", "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "name": "m0", "uid": m.metadata.uid, "controller": true}]},
            "spec": {"hostSelector": {"matchLabels": {"role": "worker"}},
                     "image": {"url": format!("http://{SERVER}:8080/boot/files/debian.qcow2"),
                               "checksum": os.sha256("debian.qcow2")?, "checksumType": "sha256", "format": "qcow2"}}
        }))?,
    )
    .await?;
    let km = wait("KilnMachine ready", Duration::from_secs(900), async || {
        let km = kms.get("m0").await.ok()?;
        km.status.as_ref().is_some_and(|s| s.ready).then_some(km)
    })
    .await?;
    assert_eq!(km.spec.provider_id.as_deref(), Some("kiln://default/e2e-kube"));
    wait(
        "cloud-init ran the bootstrap data",
        Duration::from_secs(400),
        async || {
            (read_console(&host.console).contains("KILN-CAPI-BOOTSTRAP-42") && callback.seen("/capi-joined-"))
                .then_some(())
        },
    )
    .await?;
    // The same host in kiln's own view, with its per-phase timing.
    println!("{}", cli.run(&["host", "show", "default.e2e-kube"])?);

    // 3. The machine goes away: the host is deprovisioned and released.
    kms.delete("m0", &DeleteParams::default()).await?;
    wait("host released and available", Duration::from_secs(600), async || {
        let h = hosts.get("e2e-kube").await.ok()?;
        (h.spec.consumer_ref.is_none() && h.state() == S::Available).then_some(())
    })
    .await?;
    let mut head = vec![0u8; 1024];
    use std::io::Read;
    std::fs::File::open(&host.disks[0])?.read_exact(&mut head)?;
    assert!(
        head[510..512] != [0x55, 0xaa] && &head[512..520] != b"EFI PART",
        "the deprovisioned disk still has a partition table"
    );
    drop(callback);
    drop(bridge);
    drop(lab);
    drop(server);
    Ok(())
}
