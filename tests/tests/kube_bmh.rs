//! The BareMetalHost controller against a real kube-apiserver (+ etcd) with kiln's real engine (store, executor and
//! agent API of an in-process appliance with fake BMCs and simulated agents, `kiln_tests::inproc`): spec and Secrets
//! reach the engine, the engine's state comes back through the status subresource, the finalizer holds deletion until
//! the engine has deprovisioned the host, and the `paused` and `detached` annotations are honoured.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kiln_kube::bmh::{BareMetalHost, ErrorType, FINALIZER, OperationalStatus, ProvisioningState as S};
use kiln_kube::host_controller::{self, Config};
use kiln_tests::inproc::{Lab, mac_of};
use kiln_tests::kube::{KubeApiServer, install_crds, parse_crds};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

async fn wait_host(
    api: &Api<BareMetalHost>,
    name: &str,
    what: &str,
    pred: impl Fn(Option<&BareMetalHost>) -> bool,
) -> Option<BareMetalHost> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let h = api.get_opt(name).await.unwrap();
        if pred(h.as_ref()) {
            return h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {name}: {what}; last: {h:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state(h: Option<&BareMetalHost>) -> S {
    h.map(|h| h.state()).unwrap_or_default()
}

async fn secret(client: &Client, name: &str, data: serde_json::Value) {
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

/// A BareMetalHost `default/<name>`: the kiln host `default.<name>`, driven through the lab's fake BMC of that name.
fn host(name: &str, creds: &str) -> serde_json::Value {
    json!({
        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
        "metadata": {"name": name},
        "spec": {
            "online": false,
            "bootMACAddress": mac_of(&format!("default.{name}")),
            "bmc": {"address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{name}"), "credentialsName": creds}
        }
    })
}

/// The kiln host mirroring BareMetalHost `default/<name>`, through kiln's REST API (`None`: kiln does not have it).
async fn kiln_host(lab: &Lab, name: &str) -> Option<serde_json::Value> {
    let (code, body) = lab
        .api(reqwest::Method::GET, &format!("/api/v1/hosts/default.{name}"), None)
        .await;
    match code {
        200 => Some(body),
        404 => None,
        _ => panic!("GET /api/v1/hosts/default.{name}: {code} {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmh_controller_drives_engine_and_reports_status() {
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    let client = server.client().await.unwrap();
    install_crds(&client, &parse_crds(&kiln_kube::crds::crds_yaml()).unwrap())
        .await
        .unwrap();

    // kiln's appliance in-process; the lab has hardware (a fake BMC, simulated firmware and agent) for w0 and w1.
    let mut lab = Lab::start(|_| {}).await;
    for n in ["w0", "w1"] {
        lab.add_fake(&format!("default.{n}"));
    }
    let config = Config {
        busy_requeue: Duration::from_millis(200),
        idle_requeue: Duration::from_secs(2),
        error_requeue: Duration::from_millis(500),
        ..Config::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ctrl = tokio::spawn(host_controller::run(client.clone(), lab.engine(), config, async move {
        let _ = stop_rx.await;
    }));

    let api: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("test");
    secret(&client, "w0-bmc", json!({"username": "admin", "password": "s3cret"})).await;
    secret(&client, "w0-user", json!({"userData": "#cloud-config\nhostname: w0\n"})).await;
    api.patch("w0", &pp, &Patch::Apply(host("w0", "w0-bmc"))).await.unwrap();

    // Registers, inspects, becomes available; the finalizer is on; credentials came from the Secret.
    let h = wait_host(&api, "w0", "available", |h| state(h) == S::Available)
        .await
        .unwrap();
    assert!(h.finalizers().iter().any(|f| f == FINALIZER));
    let st = h.status.clone().unwrap();
    assert_eq!(st.operational_status, OperationalStatus::Ok);
    assert!(
        st.hardware.as_ref().is_some_and(|hw| !hw.nics.is_empty()),
        "hardware from inspection"
    );
    assert!(st.operation_history.inspect.end.is_some());
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "AvailableForProvisioning" && c.status == "True")
    );
    let kiln_w0 = kiln_host(&lab, "w0").await.expect("kiln has the host");
    assert_eq!(kiln_w0["state"], "available", "{kiln_w0}");
    assert_eq!(kiln_w0["bmc"]["username"], "admin", "{kiln_w0}");
    assert_eq!(
        lab.credentials.lock().unwrap().get("default.w0").cloned(),
        Some(("admin".to_owned(), "s3cret".to_owned())),
        "kiln reached the BMC with the Secret's credentials"
    );

    // Setting image + userData + online provisions; the user data reaching the engine is the Secret's content.
    let mut with_image = host("w0", "w0-bmc");
    with_image["spec"]["online"] = json!(true);
    with_image["spec"]["image"] = json!({
        "url": "http://192.0.2.2/os.qcow2", "checksum": "ab".repeat(32), "checksumType": "sha256", "format": "qcow2"
    });
    with_image["spec"]["userData"] = json!({"name": "w0-user"});
    api.patch("w0", &pp, &Patch::Apply(&with_image)).await.unwrap();
    let h = wait_host(&api, "w0", "provisioned", |h| state(h) == S::Provisioned)
        .await
        .unwrap();
    let st = h.status.unwrap();
    assert_eq!(st.provisioning.image.url, "http://192.0.2.2/os.qcow2");
    assert!(st.powered_on);
    assert!(!st.provisioning.id.is_empty(), "the engine's id for the host");
    let drive = lab.drives.lock().unwrap().get("default.w0").cloned();
    let drive = drive.expect("the agent wrote an image with a config drive");
    assert_eq!(
        drive["user_data"], "#cloud-config\nhostname: w0\n",
        "the user data reaching the agent is the Secret's content"
    );
    let kiln_w0 = kiln_host(&lab, "w0").await.unwrap();
    assert_eq!(kiln_w0["power"], "on", "{kiln_w0}");

    // Paused: a spec change does not reach the engine until the annotation is removed.
    api.patch(
        "w0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"baremetalhost.metal3.io/paused": ""}}})),
    )
    .await
    .unwrap();
    let mut offline = with_image.clone();
    offline["spec"]["online"] = json!(false);
    api.patch("w0", &pp, &Patch::Apply(&offline)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kiln_w0 = kiln_host(&lab, "w0").await.unwrap();
    assert_eq!(kiln_w0["power"], "on", "paused host must not be driven: {kiln_w0}");
    api.patch(
        "w0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"baremetalhost.metal3.io/paused": null}}})),
    )
    .await
    .unwrap();
    wait_host(&api, "w0", "powered off after unpause", |h| {
        h.and_then(|h| h.status.as_ref()).is_some_and(|s| !s.powered_on)
    })
    .await;
    let kiln_w0 = kiln_host(&lab, "w0").await.unwrap();
    assert_eq!(kiln_w0["power"], "off", "{kiln_w0}");

    // Missing credentials: a registration error in status, nothing in the engine.
    api.patch("w1", &pp, &Patch::Apply(host("w1", "no-such-secret")))
        .await
        .unwrap();
    let h = wait_host(&api, "w1", "registration error", |h| {
        h.and_then(|h| h.status.as_ref())
            .is_some_and(|s| s.operational_status == OperationalStatus::Error)
    })
    .await
    .unwrap();
    assert_eq!(h.status.unwrap().error_type, Some(ErrorType::Registration));
    assert_eq!(kiln_host(&lab, "w1").await, None, "nothing in the engine");
    // ...and it recovers once the Secret exists.
    secret(&client, "no-such-secret", json!({"username": "u", "password": "p"})).await;
    wait_host(&api, "w1", "available after the Secret appears", |h| {
        state(h) == S::Available
    })
    .await;
    assert_eq!(
        lab.credentials.lock().unwrap().get("default.w1").cloned(),
        Some(("u".to_owned(), "p".to_owned()))
    );

    // Detached: status says so; delete skips deprovisioning.
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"baremetalhost.metal3.io/detached": ""}}})),
    )
    .await
    .unwrap();
    wait_host(&api, "w1", "detached", |h| {
        h.and_then(|h| h.status.as_ref())
            .is_some_and(|s| s.operational_status == OperationalStatus::Detached)
    })
    .await;
    api.delete("w1", &DeleteParams::default()).await.unwrap();
    wait_host(&api, "w1", "deleted", |h| h.is_none()).await;
    let names = lab.host_names().await;
    assert!(!names.iter().any(|n| n == "default.w1"), "{names:?}");

    // Delete of a provisioned host: the finalizer holds the object until the engine has deprovisioned and forgotten it.
    api.patch("w0", &pp, &Patch::Apply(&with_image)).await.unwrap();
    wait_host(&api, "w0", "provisioned again", |h| {
        state(h) == S::Provisioned && h.and_then(|h| h.status.as_ref()).is_some_and(|s| s.powered_on)
    })
    .await;
    // Watch w0 from now on: record every state it shows while being deleted.
    let watch = {
        let api = api.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::watcher::{Config as WatchConfig, Event, watcher};
            let mut seen = Vec::new();
            let mut events = std::pin::pin!(watcher(api, WatchConfig::default().fields("metadata.name=w0")));
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(Event::Apply(h)) if h.metadata.deletion_timestamp.is_some() => seen.push(h.state()),
                    Ok(Event::Delete(_)) => return seen,
                    _ => {}
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.delete("w0", &DeleteParams::default()).await.unwrap();
    wait_host(&api, "w0", "deleted", |h| h.is_none()).await;
    let seen = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap()
        .unwrap();
    assert!(
        seen.contains(&S::Deprovisioning),
        "finalizer held the host while it deprovisioned: {seen:?}"
    );
    let names = lab.host_names().await;
    assert!(names.is_empty(), "engine forgot the hosts: {names:?}");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), ctrl)
        .await
        .expect("controller shuts down")
        .unwrap();
    lab.stop().await;
    drop(server);
}
