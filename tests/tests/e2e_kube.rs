//! End to end through Kubernetes, as a Metal3 / Cluster API user sees it: `kiln serve --kube` runs in the lab
//! namespace beside two QEMU VMs behind sushy-tools, talking to a real kube-apiserver (bridged into the namespace).
//! 1. Metal3 BareMetalHosts + a credentials Secret → the VMs register, netboot the agent, are inspected →
//!    `available`, with the VMs' hardware in `status.hardware`.
//! 2. Two Cluster API Machines + KilnMachines with bootstrap data and a `KilnDataTemplate` whose network takes its
//!    address from an IP pool through Cluster API's IPAM contract (the provider's side played by the test kit,
//!    `kiln_tests::ipam`) each claim a host; kiln writes the Debian image and a config drive carrying the bootstrap
//!    data and the rendered `network_data.json`; each VM boots the written OS, cloud-init gives its NIC the machine's
//!    pool address and runs the bootstrap data (it prints a marker and its addresses on the console and calls back to
//!    the test from that address, where a kubeadm join would run); the KilnMachines get their providerIDs and are
//!    ready. The two addresses differ, and each callback comes from its machine's address.
//! 3. Deleting the KilnMachines deprovisions the hosts (their disks no longer have a partition table), releases them
//!    and gives the addresses back (the claims are gone).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::capi::KilnMachine;
use kiln_kube::data::{KilnDataTemplate, ip_address_claim_resource};
use kiln_kube::machine_controller::machine_resource;
use kiln_tests::{
    ipam, ipmi,
    kube::{KubeApiServer, capi_crds, install_crds, parse_crds},
    lab::{BmcKind, Lab, target_bin},
    operator::{CALLBACK_PORT, Callback, Cli, SERVER, kiln_config, stage_files, vm},
    osimage::OsImage,
    qemu::read_console,
};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::json;

const HOSTS: [(&str, &str); 2] = [("e2e-kube-0", "52:54:00:99:00:41"), ("e2e-kube-1", "52:54:00:99:00:42")];
const MACHINES: [&str; 2] = ["m0", "m1"];

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
async fn metal3_hosts_and_capi_machines_with_pool_addresses_on_qemu_vms() -> anyhow::Result<()> {
    let os = OsImage::get()?;
    let server = KubeApiServer::start().await?;
    let client = server.client().await?;
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml())?;
    crds.extend(capi_crds()?);
    install_crds(&client, &crds).await?;

    let vms: Vec<_> = HOSTS.iter().map(|(n, mac)| (vm(n, mac), BmcKind::Redfish)).collect();
    let mut lab = Lab::start("e2e-kube", &vms)?;
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
    let lab_host = |name: &str| lab.hosts.iter().find(|h| h.name == name).cloned();

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
    for h in &lab.hosts {
        hosts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                    "metadata": {"name": h.name, "labels": {"role": "worker"}},
                    "spec": {"online": true, "bootMACAddress": h.mac, "bootMode": "legacy",
                             "bmc": {"address": h.bmc_address, "credentialsName": "e2e-kube-bmc"}}
                }))?,
            )
            .await?;
    }
    let mut nic_names = Vec::new();
    for host in &lab.hosts {
        let h = wait(
            &format!("{} available", host.name),
            Duration::from_secs(600),
            async || {
                let h = hosts.get(&host.name).await.ok()?;
                (h.state() == S::Available).then_some(h)
            },
        )
        .await?;
        let hw = h.status.and_then(|s| s.hardware).expect("status.hardware");
        assert_eq!(hw.cpu.and_then(|c| c.count), Some(1), "the VM has one CPU");
        assert!(
            hw.storage.iter().any(|d| d.size_bytes == Some(5120 * 1024 * 1024)),
            "{:?}",
            hw.storage
        );
        let nic = hw
            .nics
            .iter()
            .find(|n| n.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&host.mac)))
            .unwrap_or_else(|| panic!("{}: no NIC with the boot MAC in {:?}", host.name, hw.nics));
        nic_names.push(nic.name.clone().expect("the inspected NIC's name"));
    }
    assert_eq!(nic_names[0], nic_names[1], "the two VMs' NICs are named alike");

    // 2. Machines with bootstrap data and pool addresses claim the hosts; the written OS comes up with them.
    let pool = json!({"apiGroup": "ipam.cluster.x-k8s.io", "kind": "InClusterIPPool", "name": "lab-pool"});
    let templates: Api<KilnDataTemplate> = Api::namespaced(client.clone(), "default");
    templates
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnDataTemplate",
                "metadata": {"name": "workers"},
                "spec": {"networkData": {
                    "links": {"ethernets": [{"id": "prov0", "mtu": 1500, "macAddress": {"fromHostInterface": nic_names[0]}}]},
                    "networks": {"ipv4": [{"id": "prov", "link": "prov0", "fromPoolRef": pool,
                        "routes": [{"network": "0.0.0.0", "prefix": 0, "gateway": {"fromPoolRef": pool}}]}]},
                    "services": {"dns": [SERVER]}
                }}
            }))?,
        )
        .await?;
    let provider = ipam::Provider::start(
        client.clone(),
        ipam::Pool {
            namespace: "default".into(),
            name: "lab-pool".into(),
            first: Ipv4Addr::new(10, 99, 0, 50),
            prefix: 24,
            gateway: SERVER.parse()?,
        },
    );
    let bootstrap = format!(
        "#!/bin/sh\necho KILN-CAPI-BOOTSTRAP-$((6*7)) > /dev/ttyS0\nip -4 -o addr show > /dev/ttyS0\n\
         curl -s http://{SERVER}:{CALLBACK_PORT}/capi-joined-$(hostname) || true\n"
    );
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "bootstrap"}, "type": "cluster.x-k8s.io/secret",
                "stringData": {"value": bootstrap, "format": "cloud-config"}
            }))?,
        )
        .await?;
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &machine_resource());
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), "default");
    for name in MACHINES {
        let m = machines
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                    "metadata": {"name": name, "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
                    "spec": {"clusterName": "c1",
                             "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": name},
                                           "dataSecretName": "bootstrap"},
                             "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": name}}
                }))?,
            )
            .await?;
        kms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine",
                "metadata": {"name": name, "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
                    "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                    "name": name, "uid": m.metadata.uid, "controller": true}]},
                "spec": {"hostSelector": {"matchLabels": {"role": "worker"}}, "dataTemplate": {"name": "workers"},
                         "image": {"url": format!("http://{SERVER}:8080/boot/files/debian.qcow2"),
                                   "checksum": os.sha256("debian.qcow2")?, "checksumType": "sha256", "format": "qcow2"}}
            }))?,
        )
        .await?;
    }
    let mut addresses = BTreeMap::new();
    for name in MACHINES {
        let km = wait(
            &format!("KilnMachine {name} ready"),
            Duration::from_secs(900),
            async || {
                let km = kms.get(name).await.ok()?;
                km.status.as_ref().is_some_and(|s| s.ready).then_some(km)
            },
        )
        .await?;
        let host_name = km.status.and_then(|s| s.host_ref).expect("status.hostRef").name;
        assert_eq!(
            km.spec.provider_id.as_deref(),
            Some(format!("kiln://default/{host_name}").as_str())
        );
        let address = ipam::claimed_address(&client, "default", &format!("{name}-prov"))
            .await
            .expect("the machine's claim is bound");
        let host = lab_host(&host_name).expect("a lab host");
        let seen = wait(
            &format!("cloud-init on {host_name} ran the bootstrap data from {address}"),
            Duration::from_secs(400),
            async || {
                let console = read_console(&host.console);
                let called_back = std::fs::read_to_string(&callback.log).is_ok_and(|l| {
                    l.lines()
                        .any(|l| l.starts_with(&format!("{address} ")) && l.contains("/capi-joined-"))
                });
                (console.contains("KILN-CAPI-BOOTSTRAP-42") && called_back).then_some(console)
            },
        )
        .await?;
        assert!(
            seen.contains(&format!("inet {address}/24")),
            "{host_name}'s console does not show the pool address {address}"
        );
        addresses.insert(name, (host_name, address));
    }
    assert_ne!(
        addresses["m0"].0, addresses["m1"].0,
        "both machines on one host: {addresses:?}"
    );
    assert_ne!(
        addresses["m0"].1, addresses["m1"].1,
        "two machines share an address: {addresses:?}"
    );
    // The hosts in kiln's own view, with their per-phase timing.
    for (host_name, _) in addresses.values() {
        cli.run(&["host", "show", &format!("default.{host_name}")])?;
    }

    // 3. The machines go away: the hosts are deprovisioned and released, and the addresses given back.
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ip_address_claim_resource());
    for name in MACHINES {
        kms.delete(name, &DeleteParams::default()).await?;
    }
    for host in &lab.hosts {
        wait(
            &format!("{} released and available", host.name),
            Duration::from_secs(600),
            async || {
                let h = hosts.get(&host.name).await.ok()?;
                (h.spec.consumer_ref.is_none() && h.state() == S::Available).then_some(())
            },
        )
        .await?;
        let mut head = vec![0u8; 1024];
        use std::io::Read;
        std::fs::File::open(&host.disks[0])?.read_exact(&mut head)?;
        assert!(
            head[510..512] != [0x55, 0xaa] && &head[512..520] != b"EFI PART",
            "{}: the deprovisioned disk still has a partition table",
            host.name
        );
    }
    for name in MACHINES {
        wait(
            &format!("{name}'s address given back"),
            Duration::from_secs(60),
            async || {
                claims
                    .get_opt(&format!("{name}-prov"))
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            },
        )
        .await?;
    }
    provider.stop().await;
    drop(callback);
    drop(bridge);
    drop(lab);
    drop(server);
    Ok(())
}
