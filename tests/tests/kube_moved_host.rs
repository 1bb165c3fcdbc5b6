//! A BareMetalHost that `clusterctl move` brought from another management cluster, into one served by a kiln (store)
//! that never knew it, against a real kube-apiserver with kiln in-process (`kiln_tests::inproc`).

use kiln_tests::inproc as lab;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::runner::KubeSettings;
use kiln_tests::kube::{KubeApiServer, capi_crds, create, install_crds, parse_crds};
use kube::ResourceExt;
use kube::api::Api;
use lab::{Lab, mac_of};
use serde_json::json;

async fn wait<T>(what: &str, secs: u64, f: impl AsyncFnMut() -> Option<T>) -> T {
    kiln_tests::kube::eventually(what, Duration::from_secs(secs), f).await
}

/// A BareMetalHost moved from another management cluster into one served by a kiln that never knew it: it arrives
/// without status (`clusterctl move` copies none) but with Metal3's copy of it in `baremetalhost.metal3.io/status`,
/// which says it is provisioned. kiln restores the status from the copy, adopts the host as provisioned with its
/// image, and neither inspects nor writes it; the copy is then dropped. A copy that is not a status is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_provisioned_host_is_adopted_from_its_status_copy_not_written_again() {
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    let client = server.client().await.unwrap();
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml()).unwrap();
    crds.extend(capi_crds().unwrap());
    install_crds(&client, &crds).await.unwrap();
    let settings = KubeSettings {
        kubeconfig: Some(server.kubeconfig.clone()),
        lease_namespace: Some("default".into()),
        identity: Some("target".into()),
        busy_requeue_secs: 1,
        ..KubeSettings::default()
    };
    let mut lab = Lab::start_with(|_| {}, Some(settings)).await;
    create::<Secret>(
        &client,
        json!({"metadata": {"name": "bmc-creds"}, "stringData": {"username": "admin", "password": lab::PASSWORD}}),
    )
    .await;
    let image = json!({"url": "http://192.0.2.2/node.qcow2", "checksum": "ab".repeat(32), "checksumType": "sha256", "format": "qcow2"});
    let copy = json!({"operationalStatus": "OK", "provisioning": {"state": "provisioned", "ID": "x", "image": image},
                      "poweredOn": true, "errorMessage": ""});
    for (n, saved, mac) in [
        ("moved", copy.to_string(), mac_of("default.moved")),
        ("garbled", "{not json".to_owned(), "52:54:00:aa:bb:01".to_owned()),
    ] {
        lab.add_fake(&format!("default.{n}"));
        create::<BareMetalHost>(
            &client,
            json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": n, "annotations": {"baremetalhost.metal3.io/status": saved}},
                "spec": {"online": true, "bootMACAddress": mac,
                         "bmc": {"address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{n}"), "credentialsName": "bmc-creds"},
                         "image": image, "userData": {"name": "ud", "namespace": "default"}}
            }),
        )
        .await;
    }
    create::<Secret>(
        &client,
        json!({"metadata": {"name": "ud"}, "stringData": {"userData": "#cloud-config\n"}}),
    )
    .await;
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let moved = wait("the moved host adopted as provisioned", 60, async || {
        let h = hosts.get("moved").await.ok()?;
        (h.state() == S::Provisioned && !h.annotations().contains_key("baremetalhost.metal3.io/status")).then_some(h)
    })
    .await;
    assert_eq!(
        moved.status.unwrap().provisioning.image.url,
        "http://192.0.2.2/node.qcow2"
    );
    let garbled = wait("the garbled copy reported", 30, async || {
        let h = hosts.get("garbled").await.ok()?;
        let msg = h.status.as_ref()?.error_message.clone();
        msg.contains("baremetalhost.metal3.io/status").then_some(msg)
    })
    .await;
    assert!(garbled.contains("is not a BareMetalHost status"), "{garbled}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lab.commands.lock().unwrap().is_empty(),
        "no host was inspected or written: {:?}",
        lab.commands.lock().unwrap()
    );
    assert_eq!(
        lab.host_names().await,
        ["default.moved"],
        "the garbled host is not enrolled"
    );
    lab.stop().await;
    drop(server);
}
