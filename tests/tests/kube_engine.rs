//! `kiln serve --kube` on its real engine, against a real kube-apiserver: the appliance (store on SQLite, executor,
//! agent API) runs in-process with fake BMCs and simulated agents (`kiln_tests::inproc`), and its
//! Kubernetes controllers run inside it under a leader Lease. What a Metal3 / Cluster API user sees:
//! 1. BareMetalHosts + credential Secrets applied → registering → inspecting → available, with `status.hardware`
//!    from the agent's inventory, and the same hosts visible through kiln's REST API.
//! 2. A Machine + KilnMachine claims a matching host; the bootstrap Secret is what the agent writes into the config
//!    drive; providerID is set and the KilnMachine is ready. A KilnRemediation power-cycles that host through its BMC.
//! 3. kiln is killed (no graceful shutdown, Lease not released) right after a second machine is created, and a new
//!    replica with another identity takes the Lease once it expires: the claim completes, no host is claimed twice.
//! 4. Two KilnMachines race for one available host: exactly one wins, the other waits.
//! 5. Deleting a KilnMachine deprovisions (the agent erases) and releases its host, which is available again.
//! 6. A standby replica (its own appliance and store) does nothing until the leader dies, then takes over the Lease
//!    and mirrors the BareMetalHosts into its store, adopting the provisioned ones as provisioned (nothing inspected or
//!    written); a clean stop releases the Lease.
//! 7. The real binary leads and is killed with SIGKILL: a standby takes over only once the Lease has expired.

use kiln_tests::inproc as lab;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kiln_bmc::PowerAction;
use kiln_bmc::fake::FakeCall;
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::capi::{KilnMachine, KilnRemediation};
use kiln_kube::machine_controller;
use kiln_kube::runner::KubeSettings;
use kiln_tests::kube::{KubeApiServer, capi_crds, create, install_crds, parse_crds};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use lab::{Lab, mac_of};
use serde_json::json;

async fn wait<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", dump().await);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

static CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();

/// The BareMetalHosts and KilnMachines as they are now, for failure messages.
async fn dump() -> String {
    let Some(client) = CLIENT.get() else {
        return String::new();
    };
    let mut out = String::new();
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    for h in hosts
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        out += &format!(
            "BareMetalHost {}: spec {}\n  status {}\n",
            h.metadata.name.clone().unwrap_or_default(),
            serde_json::to_string(&h.spec).unwrap_or_default(),
            serde_json::to_string(&h.status).unwrap_or_default()
        );
    }
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), "default");
    for k in kms.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
        out += &format!(
            "KilnMachine {}: spec {}\n  status {}\n",
            k.metadata.name.clone().unwrap_or_default(),
            serde_json::to_string(&k.spec).unwrap_or_default(),
            serde_json::to_string(&k.status).unwrap_or_default()
        );
    }
    out
}

fn settings(server: &KubeApiServer, identity: &str) -> KubeSettings {
    KubeSettings {
        kubeconfig: Some(server.kubeconfig.clone()),
        lease_namespace: Some("default".into()),
        identity: Some(identity.into()),
        lease_duration_secs: 4,
        busy_requeue_secs: 1,
        ..KubeSettings::default()
    }
}

async fn holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .get_opt("kiln-controller")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

/// A CAPI Machine (v1beta2) with its bootstrap data Secret, and the KilnMachine it owns.
async fn machine(client: &Client, name: &str, bootstrap: &str) {
    create::<Secret>(
        client,
        json!({"metadata": {"name": format!("{name}-bootstrap")}, "type": "cluster.x-k8s.io/secret",
               "stringData": {"value": bootstrap, "format": "cloud-config"}}),
    )
    .await;
    let machines: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &machine_controller::machine_resource());
    let m: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": name},
        "spec": {"clusterName": "c1",
                 "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": name},
                               "dataSecretName": format!("{name}-bootstrap")},
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": name}}
    }))
    .unwrap();
    let m = machines
        .create(&PostParams::default(), &m)
        .await
        .expect("create Machine");
    create::<KilnMachine>(
        client,
        json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine",
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "name": name, "uid": m.metadata.uid, "controller": true}]},
            "spec": {"hostSelector": {"matchLabels": {"role": "worker"}},
                     "image": {"url": "http://192.0.2.2/node.qcow2", "checksum": "ab".repeat(32), "checksumType": "sha256", "format": "qcow2"}}
        }),
    )
    .await;
}

fn consumer(h: &BareMetalHost) -> Option<String> {
    h.spec.consumer_ref.as_ref().and_then(|c| c.name.clone())
}

async fn ready(kms: &Api<KilnMachine>, name: &str) -> Option<KilnMachine> {
    let km = kms.get(name).await.ok()?;
    km.status.as_ref().is_some_and(|s| s.ready).then_some(km)
}

/// No host is consumed by two machines, and no machine holds two hosts.
async fn assert_claims_unique(hosts: &Api<BareMetalHost>) {
    let list = hosts.list(&Default::default()).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for h in &list.items {
        if let Some(c) = consumer(h) {
            assert!(seen.insert(c.clone()), "{c} consumes two hosts");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_serve_kube_drives_real_hosts_through_its_own_engine() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_test_writer()
        .try_init();
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    let client = server.client().await.unwrap();
    let _ = CLIENT.set(client.clone());
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml()).unwrap();
    crds.extend(capi_crds().unwrap());
    install_crds(&client, &crds).await.unwrap();

    let mut lab = Lab::start_with(|_| {}, Some(settings(&server, "kiln-a"))).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), "default");

    // 1. Two Metal3 BareMetalHosts, as a Metal3 user writes them.
    create::<Secret>(
        &client,
        json!({"metadata": {"name": "bmc-creds"}, "stringData": {"username": "admin", "password": lab::PASSWORD}}),
    )
    .await;
    for n in ["node-1", "node-2"] {
        lab.add_fake(&format!("default.{n}"));
        create::<BareMetalHost>(
            &client,
            json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": n, "labels": {"role": "worker"}},
                "spec": {"online": true, "bootMACAddress": mac_of(&format!("default.{n}")), "bootMode": "UEFI",
                         "bmc": {"address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{n}"), "credentialsName": "bmc-creds"}}
            }),
        )
        .await;
    }
    for n in ["node-1", "node-2"] {
        let h = wait(&format!("{n} available"), 60, async || {
            let h = hosts.get(n).await.ok()?;
            (h.state() == S::Available).then_some(h)
        })
        .await;
        let st = h.status.unwrap();
        let hw = st.hardware.clone().expect("status.hardware from the inventory");
        assert_eq!(hw.cpu.and_then(|c| c.count), Some(2));
        assert_eq!(hw.ram_mebibytes, Some(2048));
        assert_eq!(hw.storage[0].size_bytes, Some(10_737_418_240));
        // online: true keeps an available host on, as in Metal3 (its actionManageAvailable manages power too).
        let t = std::time::Instant::now();
        let mut st = st;
        while !st.powered_on {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "an available host with online: true stays off"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            st = hosts.get(n).await.unwrap().status.unwrap();
        }
        assert!(st.operation_history.inspect.end.is_some());
        // The same host through kiln's own API, labelled with the BareMetalHost it mirrors.
        let (code, body) = lab
            .api(reqwest::Method::GET, &format!("/api/v1/hosts/default.{n}"), None)
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["state"], "available");
        assert_eq!(body["labels"]["kiln.dev/baremetalhost"], format!("default/{n}"));
    }
    assert_eq!(holder(&client).await.as_deref(), Some("kiln-a"));

    // 1b. A BareMetalHost kiln refuses (a Metal3 address form for a protocol kiln does not speak) says why in its
    //     status, as Metal3 reports a registration error, with the form to use instead.
    create::<BareMetalHost>(
        &client,
        json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
            "metadata": {"name": "refused"},
            "spec": {"online": false, "bmc": {"address": "idrac://192.0.2.9", "credentialsName": "bmc-creds"}}
        }),
    )
    .await;
    let st = wait("refused host's status", 60, async || {
        hosts
            .get("refused")
            .await
            .ok()?
            .status
            .filter(|s| !s.error_message.is_empty())
    })
    .await;
    assert_eq!(
        serde_json::to_value(st.error_type).unwrap(),
        json!("registration error"),
        "{st:?}"
    );
    assert!(
        st.error_message.contains("spec.bmc.address") && st.error_message.contains("idrac-redfish://"),
        "{}",
        st.error_message
    );
    hosts.delete("refused", &DeleteParams::default()).await.unwrap();
    wait("refused host deleted", 60, async || {
        hosts.get("refused").await.is_err().then_some(())
    })
    .await;

    // 2. A Machine claims a host; the bootstrap data reaches the agent's config drive.
    let boot0 = "#cloud-config\nruncmd: [kubeadm join 10.0.0.1:6443 --token m0]\n";
    machine(&client, "m0", boot0).await;
    let km0 = wait("m0 ready", 60, async || ready(&kms, "m0").await).await;
    let pid0 = km0.spec.provider_id.clone().unwrap();
    let host0 = pid0
        .strip_prefix("kiln://default/")
        .expect("kiln://<ns>/<host>")
        .to_owned();
    let drive = lab.drives.lock().unwrap()[&format!("default.{host0}")].clone();
    assert_eq!(
        drive["user_data"], boot0,
        "the bootstrap Secret is the config drive's user data"
    );
    let h0 = hosts.get(&host0).await.unwrap();
    assert_eq!(h0.state(), S::Provisioned);
    assert!(h0.status.unwrap().powered_on, "online: true");

    // 2b. A KilnRemediation reboots m0's host through its BMC (kiln power-cycles it), once per timeout.
    let fake0 = lab.fakes.lock().unwrap()[&format!("default.{host0}")].clone();
    let cycles = || {
        fake0
            .calls()
            .iter()
            .filter(|c| **c == FakeCall::SetPower(PowerAction::Cycle))
            .count()
    };
    let before = cycles(); // provisioning itself power-cycles into the written OS
    let rems: Api<KilnRemediation> = Api::namespaced(client.clone(), "default");
    rems.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnRemediation", "metadata": {"name": "m0"},
            "spec": {"strategy": {"type": "Reboot", "retryLimit": 1, "timeoutSeconds": 600}}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    wait("the remediation power-cycles m0's host", 30, async || {
        (cycles() == before + 1).then_some(())
    })
    .await;
    wait("the host is provisioned again after the reboot", 30, async || {
        (hosts.get(&host0).await.ok()?.state() == S::Provisioned).then_some(())
    })
    .await;
    rems.delete("m0", &DeleteParams::default()).await.unwrap();

    // 3. kiln dies right after the next Machine appears; a replica with another identity takes over.
    let boot1 = "#cloud-config\nruncmd: [kubeadm join 10.0.0.1:6443 --token m1]\n";
    machine(&client, "m1", boot1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.kill().await;
    let killed = tokio::time::Instant::now();
    lab.kube = Some(settings(&server, "kiln-b"));
    lab.serve().await;
    let km1 = wait("m1 ready after the restart", 90, async || ready(&kms, "m1").await).await;
    println!("m1 ready {:?} after kiln was killed", killed.elapsed());
    assert_eq!(holder(&client).await.as_deref(), Some("kiln-b"));
    let host1 = km1
        .spec
        .provider_id
        .unwrap()
        .strip_prefix("kiln://default/")
        .unwrap()
        .to_owned();
    assert_ne!(host0, host1, "two machines on one host");
    assert_eq!(
        ready(&kms, "m0").await.and_then(|k| k.spec.provider_id),
        Some(pid0.clone()),
        "m0 kept its host"
    );
    let drive = lab.drives.lock().unwrap()[&format!("default.{host1}")].clone();
    assert_eq!(drive["user_data"], boot1);
    assert_claims_unique(&hosts).await;

    // 4 + 5. m0 goes away: its host is deprovisioned (erased by the agent) and released. Two new machines race for it.
    kms.delete("m0", &DeleteParams::default()).await.unwrap();
    wait(&format!("{host0} released and available"), 90, async || {
        let h = hosts.get(&host0).await.ok()?;
        (consumer(&h).is_none() && h.state() == S::Available).then_some(())
    })
    .await;
    let erased = lab.commands.lock().unwrap()[&format!("default.{host0}")].clone();
    assert!(
        erased.iter().any(|c| c.starts_with("erase")),
        "deprovisioning erased the disk: {erased:?}"
    );
    machine(&client, "m2", "#cloud-config\n").await;
    machine(&client, "m3", "#cloud-config\n").await;
    let (winner, loser) = wait("one of m2, m3 ready", 60, async || {
        match (ready(&kms, "m2").await, ready(&kms, "m3").await) {
            (Some(_), None) => Some(("m2", "m3")),
            (None, Some(_)) => Some(("m3", "m2")),
            (Some(_), Some(_)) => panic!("both machines became ready with one free host"),
            (None, None) => None,
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ready(&kms, loser).await.is_none(), "{loser} must wait for a host");
    let list = hosts.list(&Default::default()).await.unwrap();
    assert!(
        !list.items.iter().any(|h| consumer(h).as_deref() == Some(loser)),
        "{loser} claimed a host"
    );
    assert_claims_unique(&hosts).await;
    println!("{winner} won the race, {loser} waits");

    // 6. A standby replica (a second appliance, with its own data directory and store) stays idle while kiln-b leads,
    //    and takes over when it dies.
    let provisioned_before = hosts
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|h| h.state() == S::Provisioned)
        .count();
    assert!(provisioned_before > 0);
    let mut standby = Lab::start_with(|_| {}, Some(settings(&server, "standby"))).await;
    // The same machines, reached from the standby's appliance.
    let machines: Vec<String> = lab.fakes.lock().unwrap().keys().cloned().collect();
    for m in &machines {
        standby.add_fake(m);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(holder(&client).await.as_deref(), Some("kiln-b"));
    let idle = standby.host_names().await;
    assert!(idle.is_empty(), "a standby must not reconcile: {idle:?}");
    lab.kill().await;
    let t = tokio::time::Instant::now();
    wait("the standby leads", 30, async || {
        (holder(&client).await.as_deref() == Some("standby")).then_some(())
    })
    .await;
    wait(
        "the standby reconciles the BareMetalHosts into its store",
        30,
        async || {
            let names = standby.host_names().await;
            ["default.node-1", "default.node-2"]
                .iter()
                .all(|n| names.iter().any(|m| m == n))
                .then_some(())
        },
    )
    .await;
    println!("standby took over {:?} after the leader stopped", t.elapsed());
    // The standby's store had no record of the provisioned hosts: it adopts them as provisioned from their status,
    // and neither inspects nor writes them again.
    wait("the standby adopts the provisioned hosts", 30, async || {
        let l = hosts.list(&Default::default()).await.ok()?;
        let provisioned = l.items.iter().filter(|h| h.state() == S::Provisioned).count();
        (provisioned == provisioned_before).then_some(())
    })
    .await;
    assert!(
        standby.commands.lock().unwrap().is_empty(),
        "the standby sent no agent commands: {:?}",
        standby.commands.lock().unwrap()
    );
    let t = tokio::time::Instant::now();
    standby.stop().await; // a clean stop, within 30 s
    println!("standby stopped {:?} after it was asked to", t.elapsed());
    let released = holder(&client).await;
    assert!(
        released.as_deref().is_none_or(str::is_empty),
        "a clean stop releases the Lease: {released:?}"
    );

    // 7. The real binary: `kiln serve --kube` leads, is killed with SIGKILL (its Lease is never released), and a
    //    standby takes over only once the Lease has expired.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[kube]\nkubeconfig = \"{}\"\nlease_namespace = \"default\"\nidentity = \"kiln-proc\"\nlease_duration_secs = 4\n",
            dir.path().join("data").display(),
            server.kubeconfig.display()
        ),
    )
    .unwrap();
    let mut proc = KillOnDrop(
        std::process::Command::new(kiln_tests::lab::target_bin("kiln").unwrap())
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("kiln.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait("kiln serve --kube leads", 30, async || {
        (holder(&client).await.as_deref() == Some("kiln-proc")).then_some(())
    })
    .await;
    // The standby appliance starts before the kill, so that its start-up time does not eat into the Lease's 4 s.
    let mut standby = Lab::start_with(|_| {}, Some(settings(&server, "standby-2"))).await;
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    let killed = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&client).await.as_deref(),
        Some("kiln-proc"),
        "the Lease of a killed leader holds until it expires"
    );
    wait("standby-2 leads", 30, async || {
        (holder(&client).await.as_deref() == Some("standby-2")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    println!("standby-2 took over {took:?} after SIGKILL of the leader (lease 4 s)");
    assert!(
        took >= Duration::from_secs(3),
        "took over before the Lease expired: {took:?}"
    );
    standby.stop().await;
    drop(server);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
