//! End to end through Kubernetes, as a Metal3 / Cluster API user sees it, with real nodes joining: nothing here
//! registers a Node, the VMs' own kubelets do.
//!
//! The peers:
//! - the tests' kube-apiserver (v1.37.2), bridged into the lab as `https://10.99.0.1:6443`, made joinable the way
//!   `kubeadm init` does it: the real kube-controller-manager (bootstrap signer, CSR approver and signer) and the
//!   real `kubeadm init phase` subcommands (`kiln_tests::kubeadm`). It stands for an externally managed control
//!   plane: a `HostControlPlane` object (a CRD of this test following Cluster API's control plane contract) says it
//!   is initialised, at its version and externally managed, and the test writes the cluster's CA and kubeconfig
//!   Secrets as a control plane provider does;
//! - the real Cluster API core and kubeadm bootstrap managers on the host;
//! - `kiln serve --kube` in the lab beside two QEMU VMs behind sushy-tools;
//! - the IPAM provider's side of Cluster API's IPAM contract, played by the test kit (`kiln_tests::ipam`: the real
//!   providers' Go modules are refused by this machine's module proxy).
//!
//! 1. Metal3 BareMetalHosts and a credentials Secret, applied as-is → the VMs netboot the agent, are inspected →
//!    `available`, with the VMs' hardware in `status.hardware`.
//! 2. The workers of kiln's shipped `cluster-template.yaml`, rendered by the real clusterctl (two replicas; the image
//!    is the node image: Debian 12 with Debian's containerd and runc, and kubelet and kubeadm built at the API
//!    server's version), with a `KilnDataTemplate` whose network takes its address from a pool. The rendered
//!    KubeadmControlPlane and its machine template are left out: the control plane exists. Each Machine's KilnMachine
//!    gets its own pool address and claims a host; kiln writes the image and a config drive with the real kubeadm
//!    bootstrap provider's join data and the rendered `network_data.json`; the VM boots it, cloud-init puts the pool
//!    address on its NIC, renders the kubelet's `provider-id` from the config drive's meta data and runs
//!    `kubeadm join`; the kubelet's TLS bootstrap is approved and signed and it registers its Node, named after the
//!    host, with the KilnMachine's providerID and the pool address as its InternalIP; Cluster API sets the Machine's
//!    nodeRef and the Machine is `Running`. The per-phase timing of each join is printed.
//! 3. Scaling the MachineDeployment to zero deletes the Machines and their Nodes; kiln deprovisions (erases) and
//!    releases the hosts, and the addresses are given back (the claims are gone).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret};
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::capi::KilnMachine;
use kiln_kube::data::{KilnDataTemplate, ip_address_claim_resource};
use kiln_tests::{
    clusterctl::Clusterctl,
    ipam, ipmi,
    kube::{CapiManagers, KubeApiServer, capi_crds, install_crds, k8s_version, parse_crds},
    kubeadm::{self, JoinableControlPlane},
    lab::{BmcKind, Lab},
    operator::{SERVER, kiln_config, stage_files, vm},
    osimage::OsImage,
    qemu::read_console,
};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "default";
const HOSTS: [(&str, &str); 2] = [("e2e-kube-0", "52:54:00:99:00:41"), ("e2e-kube-1", "52:54:00:99:00:42")];

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn dynamic(client: &Client, r: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, r)
}

/// The externally managed control plane's CRD. Of Cluster API's control plane contract (v1beta2, named by the
/// `cluster.x-k8s.io/v1beta2` label), a control plane that already runs needs `spec.controlPlaneEndpoint`,
/// `spec.version`, `status.version`, `status.initialization.controlPlaneInitialized` and
/// `status.externalManagedControlPlane` (without it, Cluster API keeps the Nodes of deleted workers, for want of
/// control plane Machines).
fn host_control_plane_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "hostcontrolplanes.controlplane.kiln.test",
                     "labels": {"cluster.x-k8s.io/v1beta2": "v1beta1"}},
        "spec": {"group": "controlplane.kiln.test", "scope": "Namespaced",
                 "names": {"kind": "HostControlPlane", "listKind": "HostControlPlaneList", "plural": "hostcontrolplanes", "singular": "hostcontrolplane"},
                 "versions": [{"name": "v1beta1", "served": true, "storage": true, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    })
}

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

/// When each milestone of one Machine's join was first seen, in seconds after the MachineDeployment was created.
#[derive(Default, Debug)]
struct Join {
    km: Option<String>,
    host: Option<String>,
    claimed: Option<f64>,
    provisioned: Option<f64>,
    node: Option<f64>,
    running: Option<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metal3_hosts_join_a_cluster_as_real_nodes_with_pool_addresses() -> anyhow::Result<()> {
    let os = OsImage::node()?;
    let server = KubeApiServer::start().await?;
    let client = server.client().await?;
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml())?;
    crds.extend(capi_crds()?);
    crds.push(serde_json::from_value(host_control_plane_crd())?);
    install_crds(&client, &crds).await?;

    let vms: Vec<_> = HOSTS.iter().map(|(n, mac)| (vm(n, mac), BmcKind::Redfish)).collect();
    let mut lab = Lab::start("e2e-kube", &vms)?;
    let bridge = server.bridge_into(&lab.ns, &lab.record)?;
    let control_plane = JoinableControlPlane::start(&server, &lab.ns, "192.168.0.0/16")?;
    let mut capi = CapiManagers::start(&server)?;
    let files = stage_files(&lab, &os)?;
    let config = kiln_config(&lab, &files)?;
    let mut toml = std::fs::read_to_string(&config)?;
    toml.push_str(&format!(
        "\n[kube]\nkubeconfig = \"{}\"\nlease_namespace = \"{NS}\"\nbusy_requeue_secs = 2\n",
        bridge.kubeconfig.display()
    ));
    std::fs::write(&config, toml)?;
    lab.start_kiln(&["--config", &config.display().to_string()], None)?;
    let lab_hosts = lab.hosts.clone();
    let provider = ipam::Provider::start(
        client.clone(),
        ipam::Pool {
            namespace: NS.into(),
            name: "lab-pool".into(),
            first: Ipv4Addr::new(10, 99, 0, 50),
            prefix: 24,
            gateway: SERVER.parse()?,
        },
    );
    let result = async {
        // 1. The Metal3 inventory, applied as-is.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
        let secret = |v: Value| serde_json::from_value::<Secret>(v);
        secrets
            .create(
                &PostParams::default(),
                &secret(json!({"metadata": {"name": "bmc"}, "stringData": {"username": ipmi::USERNAME, "password": ipmi::PASSWORD}}))?,
            )
            .await?;
        let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), NS);
        for h in &lab_hosts {
            hosts
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                        "metadata": {"name": h.name},
                        "spec": {"online": true, "bootMACAddress": h.mac, "bootMode": "legacy",
                                 "bmc": {"address": h.bmc_address, "credentialsName": "bmc"}}
                    }))?,
                )
                .await?;
        }
        let mut nic_names = Vec::new();
        for lh in &lab_hosts {
            let h = wait(&format!("{} available", lh.name), Duration::from_secs(600), async || {
                let h = hosts.get(&lh.name).await.ok()?;
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
            let nic = hw
                .nics
                .iter()
                .find(|n| n.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&lh.mac)))
                .unwrap_or_else(|| panic!("{}: no NIC with the boot MAC in {:?}", lh.name, hw.nics));
            nic_names.push(nic.name.clone().expect("the inspected NIC's name"));
        }
        assert_eq!(nic_names[0], nic_names[1], "the two VMs' NICs are named alike");

        // The existing control plane, as its provider would publish it.
        let ca = |f: &str| std::fs::read_to_string(server.dir().join(f));
        secrets
            .create(
                &PostParams::default(),
                &secret(json!({
                    "metadata": {"name": "c1-ca", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
                    "type": "cluster.x-k8s.io/secret",
                    "stringData": {"tls.crt": ca("ca.crt")?, "tls.key": ca("ca.key")?},
                }))?,
            )
            .await?;
        let kubeconfig = server.admin_kubeconfig(&server.url);
        secrets
            .create(
                &PostParams::default(),
                &secret(json!({
                    "metadata": {"name": "c1-kubeconfig", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
                    "type": "cluster.x-k8s.io/secret",
                    "stringData": {"value": kubeconfig},
                }))?,
            )
            .await?;
        let hcp = dynamic(&client, &ar("controlplane.kiln.test", "v1beta1", "HostControlPlane", "hostcontrolplanes"));
        let endpoint = kubeadm::endpoint();
        let (cp_host, cp_port) = endpoint.rsplit_once(':').expect("host:port");
        hcp.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "controlplane.kiln.test/v1beta1", "kind": "HostControlPlane",
                "metadata": {"name": "c1-control-plane"},
                "spec": {"version": k8s_version(), "controlPlaneEndpoint": {"host": cp_host, "port": cp_port.parse::<u16>()?}}
            }))?,
        )
        .await?;
        hcp.patch_status(
            "c1-control-plane",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"initialization": {"controlPlaneInitialized": true},
                                            "version": k8s_version(), "externalManagedControlPlane": true}})),
        )
        .await?;

        // 2. The workers from kiln's shipped template, rendered by the real clusterctl, with pool addresses.
        let pool = json!({"apiGroup": "ipam.cluster.x-k8s.io", "kind": "InClusterIPPool", "name": "lab-pool"});
        let templates: Api<KilnDataTemplate> = Api::namespaced(client.clone(), NS);
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
        let version = k8s_version();
        let image_url = format!("http://{SERVER}:8080/boot/files/debian.qcow2");
        let checksum = os.sha256("debian.qcow2")?;
        let rendered = Clusterctl::new()?.generate(
            &server.kubeconfig,
            "c1",
            None,
            NS,
            &[
                ("KUBERNETES_VERSION", version.as_str()),
                ("CONTROL_PLANE_ENDPOINT_HOST", cp_host),
                ("CONTROL_PLANE_MACHINE_COUNT", "1"),
                ("WORKER_MACHINE_COUNT", "2"),
                ("IMAGE_URL", image_url.as_str()),
                ("IMAGE_CHECKSUM", checksum.as_str()),
                ("IMAGE_FORMAT", "qcow2"),
            ],
        )?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&rendered)?;
        let mut created = Vec::new();
        let t0 = Instant::now();
        for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                // The control plane exists already.
                "KubeadmControlPlane" => continue,
                "KilnMachineTemplate" if name.ends_with("-control-plane") => continue,
                "KilnMachineTemplate" => doc["spec"]["template"]["spec"]["dataTemplate"] = json!({"name": "workers"}),
                "Cluster" => {
                    doc["spec"]["controlPlaneRef"] =
                        json!({"apiGroup": "controlplane.kiln.test", "kind": "HostControlPlane", "name": "c1-control-plane"});
                }
                // What Cluster API's defaulting webhook would fill in (the CRDs are installed without webhooks).
                "MachineDeployment" => {
                    let spec = &mut doc["spec"];
                    spec["rollout"] = json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}});
                    spec["deletion"] = json!({"order": "Newest"});
                    spec["selector"] = json!({"matchLabels": {"cluster.x-k8s.io/deployment-name": name}});
                    spec["template"]["metadata"] = json!({"labels": {"cluster.x-k8s.io/deployment-name": name}});
                }
                _ => {}
            }
            let (group, version) = doc["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .split_once('/')
                .unwrap_or_default();
            let r = ar(group, version, &kind, &format!("{}s", kind.to_lowercase()));
            dynamic(&client, &r)
                .create(&PostParams::default(), &serde_json::from_value(doc)?)
                .await
                .map_err(|e| anyhow::anyhow!("create {kind}/{name}: {e}"))?;
            created.push(format!("{kind}/{name}"));
        }
        assert_eq!(
            created,
            [
                "Cluster/c1",
                "KilnCluster/c1",
                "MachineDeployment/c1-workers",
                "KilnMachineTemplate/c1-workers",
                "KubeadmConfigTemplate/c1-workers"
            ],
            "the rendered template's objects"
        );

        // The joins, milestone by milestone.
        let machines = dynamic(&client, &ar("cluster.x-k8s.io", "v1beta2", "Machine", "machines"));
        let kms: Api<KilnMachine> = Api::namespaced(client.clone(), NS);
        let nodes: Api<Node> = Api::all(client.clone());
        let workers = ListParams::default().labels("cluster.x-k8s.io/deployment-name=c1-workers");
        let mut joins: BTreeMap<String, Join> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(1500);
        loop {
            let now = t0.elapsed().as_secs_f64();
            for m in machines.list(&workers).await?.items {
                let j = joins.entry(m.name_any()).or_default();
                j.km = m.data["spec"]["infrastructureRef"]["name"].as_str().map(str::to_owned);
                if let Some(km) = j.km.as_deref()
                    && let Some(h) = kms.get_opt(km).await?.and_then(|k| k.status?.host_ref)
                {
                    j.claimed.get_or_insert(now);
                    j.host = Some(h.name);
                }
                if let Some(host) = j.host.as_deref() {
                    if hosts.get(host).await?.state() == S::Provisioned {
                        j.provisioned.get_or_insert(now);
                    }
                    if nodes.get_opt(host).await?.is_some() {
                        j.node.get_or_insert(now);
                    }
                }
                if m.data["status"]["phase"] == "Running" && m.data["status"]["nodeRef"]["name"].is_string() {
                    j.running.get_or_insert(now);
                }
            }
            if joins.len() == 2 && joins.values().all(|j| j.running.is_some()) {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("the Machines did not all reach Running: {joins:?}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        println!("seconds after the MachineDeployment was created:");
        println!("{:<28} {:<11} {:>8} {:>12} {:>16} {:>8}", "Machine", "host", "claimed", "provisioned", "Node registered", "Running");
        let f = |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{t:.1}"));
        for (m, j) in &joins {
            println!(
                "{m:<28} {:<11} {:>8} {:>12} {:>16} {:>8}",
                j.host.as_deref().unwrap_or("-"),
                f(j.claimed),
                f(j.provisioned),
                f(j.node),
                f(j.running)
            );
        }

        let mut addresses = BTreeMap::new();
        for (machine, j) in &joins {
            let (km, host) = (j.km.as_deref().unwrap(), j.host.as_deref().unwrap());
            let m = machines.get(machine).await?;
            let node = nodes.get(host).await?;
            assert_eq!(m.data["status"]["nodeRef"]["name"], host, "{machine}: the kubelet registered with the host's name");
            assert_eq!(
                node.spec.as_ref().and_then(|s| s.provider_id.clone()),
                kms.get(km).await?.spec.provider_id,
                "{machine}: the Node's providerID is the KilnMachine's"
            );
            let address = ipam::claimed_address(&client, NS, &format!("{km}-prov"))
                .await
                .expect("the machine's claim is bound");
            let internal: Vec<String> = node
                .status
                .and_then(|s| s.addresses)
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address)
                .collect();
            assert_eq!(internal, std::slice::from_ref(&address), "{machine}: the kubelet reports the pool address as its InternalIP");
            let console = lab_hosts.iter().find(|h| h.name == host).map(|h| read_console(&h.console)).unwrap_or_default();
            assert!(console.contains("This node has joined the cluster"), "{host}: no kubeadm join report on the console");
            addresses.insert(host.to_owned(), address);
        }
        let distinct: std::collections::BTreeSet<_> = addresses.values().collect();
        assert_eq!(distinct.len(), 2, "two machines, two hosts, two addresses: {addresses:?}");

        // 3. Scale to zero: the Machines and their Nodes go, the hosts are erased and released, the addresses given
        // back.
        dynamic(&client, &ar("cluster.x-k8s.io", "v1beta2", "MachineDeployment", "machinedeployments"))
            .patch("c1-workers", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
            .await?;
        wait("Machines deleted", Duration::from_secs(600), async || {
            machines.list(&workers).await.ok()?.items.is_empty().then_some(())
        })
        .await?;
        wait("Nodes deleted", Duration::from_secs(120), async || {
            nodes.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
        })
        .await?;
        let claims = dynamic(&client, &ip_address_claim_resource());
        wait("addresses given back", Duration::from_secs(120), async || {
            claims.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
        })
        .await?;
        for lh in &lab_hosts {
            wait(&format!("{} released and available", lh.name), Duration::from_secs(600), async || {
                let h = hosts.get(&lh.name).await.ok()?;
                (h.spec.consumer_ref.is_none() && h.state() == S::Available).then_some(())
            })
            .await?;
            let mut head = vec![0u8; 1024];
            use std::io::Read;
            std::fs::File::open(&lh.disks[0])?.read_exact(&mut head)?;
            assert!(
                head[510..512] != [0x55, 0xaa] && &head[512..520] != b"EFI PART",
                "{}: the deprovisioned disk still has a partition table",
                lh.name
            );
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        for h in &lab_hosts {
            let console = read_console(&h.console);
            let lines: Vec<&str> = console.lines().collect();
            eprintln!(
                "--- {} console (end) ---\n{}",
                h.name,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        eprintln!("{e:#}\n{}\n{}", control_plane.log_tail(), capi.log_tail());
    }
    assert!(capi.running(), "a Cluster API manager exited\n{}", capi.log_tail());
    provider.stop().await;
    drop(control_plane);
    drop(capi);
    drop(bridge);
    // A passing run deletes its VMs' disks and the staged images (gigabytes); a failed one keeps them for a
    // post-mortem.
    if result.is_ok() {
        lab.finish()?;
    } else {
        drop(lab);
    }
    drop(server);
    result
}
