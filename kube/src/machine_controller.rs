//! The KilnMachine controller (Cluster API InfraMachine contract): waits for the owning Machine's bootstrap data
//! Secret, claims a matching available BareMetalHost ([`crate::claim`]) and points it at the image and the bootstrap
//! data; once the host is provisioned it sets `spec.providerID` (`kiln://<namespace>/<host>`), the addresses found by
//! inspection, and `status.ready` / `status.initialization.provisioned`. Deleting the KilnMachine releases the host
//! (the BareMetalHost controller then deprovisions it back to `available`) before the finalizer is removed.
//! While the owning Machine has no nodeRef, it also makes sure the host's Node in the workload cluster carries the
//! providerID ([`crate::workload`]), retrying with a capped, jittered backoff per machine until the Node appears.
//! The `Ready` condition says why a machine waits (bootstrap data, a matching host, the host's provisioning or its
//! error) or which host it runs on.
//! Objects carrying `cluster.x-k8s.io/paused`, or of a Cluster with `spec.paused`, are left alone. A KilnMachine that
//! `clusterctl move` deletes (annotated `clusterctl.cluster.x-k8s.io/delete-for-move`) lives on in the target
//! management cluster: its finalizer goes without releasing the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::bmh::{
    BareMetalHost, Image, PAUSED_ANNOTATION as BMH_PAUSED_ANNOTATION, ProvisioningState, STATUS_ANNOTATION,
};
use crate::capi::{
    HostRef, Initialization, KilnMachine, KilnMachineStatus, MACHINE_FINALIZER, MachineAddress, cluster_of,
    deleted_for_move, is_paused,
};
use crate::claim::{Claim, claim_host, release_host, reuse_pool};
use crate::data::{self, Addresses, KilnDataTemplate, NetworkPlan};
use crate::workload::{self, Decision, HostIdentity};

/// The KilnMachine condition about the host's Node carrying the providerID.
pub const NODE_PROVIDER_ID_CONDITION: &str = "NodeProviderID";

/// How long one request to a workload cluster may take.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed")]
    Kube(#[from] kube::Error),
}

/// Timing knobs (tests shorten them).
#[derive(Clone, Debug)]
pub struct Config {
    /// Requeue while waiting for bootstrap data, a free host, or provisioning.
    pub wait_requeue: Duration,
    /// Requeue of ready machines.
    pub idle_requeue: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            wait_requeue: Duration::from_secs(10),
            idle_requeue: Duration::from_secs(300),
        }
    }
}

struct Ctx {
    client: Client,
    config: Config,
    /// Per KilnMachine (`namespace/name`): how many times its Node was looked for in vain, for the backoff.
    node_attempts: Mutex<HashMap<String, u32>>,
}

impl Ctx {
    /// The next delay before looking for a machine's Node again: `wait_requeue` doubling per attempt, capped at
    /// `idle_requeue`, with ±20% jitter.
    fn node_backoff(&self, key: &str) -> Duration {
        let n = {
            let mut attempts = self.node_attempts.lock().unwrap_or_else(|e| e.into_inner());
            let n = attempts.entry(key.to_owned()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let base = self
            .config
            .wait_requeue
            .saturating_mul(1 << (n - 1).min(16))
            .min(self.config.idle_requeue);
        base.mul_f64(rand::random_range(0.8..1.2))
    }

    fn node_found(&self, key: &str) {
        self.node_attempts.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The CAPI `Machine` kind the owner references point at (v1beta2, as served by Cluster API v1.14).
pub fn machine_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "Machine"),
        "machines",
    )
}

/// The value of the BareMetalHost paused annotation when kiln paused the host for its paused Cluster (baremetal-operator
/// and kiln leave a paused host alone); kiln removes only an annotation with this value.
pub const PAUSED_BY_KILN: &str = "infrastructure.cluster.x-k8s.io/kiln";

/// Pauses the host a KilnMachine of a paused Cluster holds, as CAPM3 does with its hosts: the paused annotation, and a
/// copy of the host's status in [`STATUS_ANNOTATION`], since `clusterctl move` (which pauses the Cluster) copies
/// objects without their status. A host already paused is left as it is.
async fn pause_host(client: &Client, ns: &str, host: &str, m: &KilnMachine) -> Result<(), kube::Error> {
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), ns);
    let Some(h) = hosts.get_opt(host).await? else {
        return Ok(());
    };
    let ours =
        h.spec.consumer_ref.as_ref().is_some_and(|c| {
            c.kind.as_deref() == Some("KilnMachine") && c.name.as_deref() == Some(m.name_any().as_str())
        });
    if !ours || h.is_paused() || h.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let saved = serde_json::to_string(&h.status.clone().unwrap_or_default()).unwrap_or_default();
    let patch = json!({"metadata": {"annotations": {BMH_PAUSED_ANNOTATION: PAUSED_BY_KILN, STATUS_ANNOTATION: saved}}});
    hosts.patch(host, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Runs the controller over all namespaces until `shutdown` completes.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let machines: Api<KilnMachine> = Api::all(client.clone());
    let hosts: Api<BareMetalHost> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        client,
        config,
        node_attempts: Mutex::default(),
    });
    Controller::new(machines, watcher::Config::default())
        .watches(hosts, watcher::Config::default(), |h: BareMetalHost| {
            let c = h.spec.consumer_ref?;
            if c.kind.as_deref() != Some("KilnMachine") {
                return None;
            }
            Some(ObjectRef::new(c.name.as_deref()?).within(c.namespace.as_deref()?))
        })
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            |_, _, ctx: Arc<Ctx>| Action::requeue(ctx.config.wait_requeue),
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "kilnmachine reconcile");
            }
        })
        .await;
}

async fn reconcile(m: Arc<KilnMachine>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = m.namespace().unwrap_or_else(|| "default".into());
    let api: Api<KilnMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = m.finalizers().iter().any(|f| f == MACHINE_FINALIZER);
    let key = format!("{ns}/{}", m.name_any());
    if deleted_for_move(&*m) {
        ctx.node_found(&key);
        if has_finalizer {
            let f: Vec<&String> = m.finalizers().iter().filter(|f| *f != MACHINE_FINALIZER).collect();
            let patch = json!({"metadata": {"finalizers": f, "resourceVersion": m.resource_version()}});
            api.patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        return Ok(Action::await_change());
    }
    // Read once: whether it is paused, and (for label sync) its KilnCluster.
    let cluster = cluster_of(&ctx.client, &*m).await?;
    if is_paused(&*m, cluster.as_ref()) {
        if let Some(host) = m.status.as_ref().and_then(|s| s.host_ref.as_ref()) {
            pause_host(&ctx.client, &ns, &host.name, &m).await?;
        }
        // A paused Cluster does not change this object when it resumes: look again.
        return Ok(Action::requeue(ctx.config.wait_requeue));
    }
    if m.metadata.deletion_timestamp.is_some() {
        ctx.node_found(&key);
        if has_finalizer {
            let pool = reuse_pool(&ctx.client, &m).await?;
            release_host(&ctx.client, &m, pool.as_deref()).await?;
            if m.spec.data_template.is_some() {
                data::release(&ctx.client, &m).await?;
            }
            let f: Vec<&String> = m.finalizers().iter().filter(|f| *f != MACHINE_FINALIZER).collect();
            let patch = json!({"metadata": {"finalizers": f, "resourceVersion": m.resource_version()}});
            api.patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        let mut f = m.finalizers().to_vec();
        f.push(MACHINE_FINALIZER.into());
        let patch = json!({"metadata": {"finalizers": f, "resourceVersion": m.resource_version()}});
        api.patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        return Ok(Action::await_change());
    }
    let wait = Action::requeue(ctx.config.wait_requeue);

    // The owning Machine and its bootstrap data Secret.
    let Some(owner) = m.owner_references().iter().find(|o| o.kind == "Machine") else {
        return Ok(wait);
    };
    let machines: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &machine_resource());
    let Some(machine) = machines.get_opt(&owner.name).await? else {
        return Ok(wait);
    };
    let Some(data_secret) = machine.data["spec"]["bootstrap"]["dataSecretName"]
        .as_str()
        .map(str::to_owned)
    else {
        let why = Ready::no(
            "WaitingForBootstrapData",
            format!("Machine {} has no bootstrap data yet", owner.name),
        );
        write_ready(&api, &m, why).await?;
        return Ok(wait);
    };

    // Network data from a KilnDataTemplate: addresses claimed from their pools before a host is (only while the
    // machine has none: the held host's Secret was written when it was claimed).
    let mut network_data = None;
    if let (Some(r), None) = (
        &m.spec.data_template,
        m.status.as_ref().and_then(|s| s.host_ref.as_ref()),
    ) {
        match network_plan(&ctx.client, &m, &r.name).await? {
            Ok(plan) => network_data = Some(plan),
            Err(why) => {
                write_ready(&api, &m, why).await?;
                return Ok(wait);
            }
        }
    }
    let template_named = network_data.is_some();
    let claim = Claim {
        image: m.spec.image.as_ref().map(|i| Image {
            url: i.url.clone(),
            checksum: i.checksum.clone(),
            checksum_type: i.checksum_type,
            disk_format: i.disk_format,
            oci_auth_secret_name: i.oci_auth_secret_name.clone(),
        }),
        user_data_secret: Some(data_secret),
        network_data_secret: m.spec.network_data_name.clone(),
        network_data,
    };
    // Only a machine without a host looks for one; the one it holds is found without its pool.
    let pool = match m.status.as_ref().and_then(|s| s.host_ref.as_ref()) {
        None => reuse_pool(&ctx.client, &m).await?,
        Some(_) => None,
    };
    let Some(host_name) = claim_host(&ctx.client, &m, &claim, pool.as_deref()).await? else {
        let mut message = match &pool {
            Some(p) => format!(
                "no available BareMetalHost matches the hostSelector (and failure domain), or the one kept for \
                 {p} (nodeReuse) is not available yet"
            ),
            None => "no available BareMetalHost matches the hostSelector (and failure domain)".into(),
        };
        if let (true, Some(r)) = (template_named, &m.spec.data_template) {
            message += &format!(" and has the NICs KilnDataTemplate {} names", r.name);
        }
        let why = Ready::no("WaitingForHost", message);
        write_ready(&api, &m, why).await?;
        return Ok(wait);
    };
    let hosts: Api<BareMetalHost> = Api::namespaced(ctx.client.clone(), &ns);
    let host = hosts.get(&host_name).await?;
    if host.annotations().get(BMH_PAUSED_ANNOTATION).map(String::as_str) == Some(PAUSED_BY_KILN) {
        // The Cluster resumed (after `clusterctl move`, in the target): so does the host.
        let patch = json!({"metadata": {"annotations": {BMH_PAUSED_ANNOTATION: null}}});
        hosts
            .patch(&host_name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Once provisioned, a machine stays so (the contract's flag never goes back) while it holds the host: an adopted
    // host registers again before it is provisioned once more.
    let was_provisioned = m
        .status
        .as_ref()
        .is_some_and(|s| s.initialization.as_ref().is_some_and(|i| i.provisioned));
    let provisioned = host.state() == ProvisioningState::Provisioned
        || (was_provisioned && matches!(host.state(), ProvisioningState::Registering | ProvisioningState::None));
    let mut status = KilnMachineStatus {
        ready: provisioned,
        initialization: Some(Initialization { provisioned }),
        host_ref: Some(HostRef {
            name: host_name.clone(),
        }),
        addresses: if provisioned { addresses(&host) } else { Vec::new() },
        ..m.status.clone().unwrap_or_default()
    };
    if provisioned && m.spec.provider_id.is_none() {
        let id = crate::capi::provider_id(&ns, &host_name);
        api.patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerID": id}})),
        )
        .await?;
    }
    let mut next = if provisioned {
        Action::requeue(ctx.config.idle_requeue)
    } else {
        wait
    };
    let node_ref = machine.data["status"]["nodeRef"]["name"].is_string();
    match (&m.spec.provider_id, machine.data["spec"]["clusterName"].as_str()) {
        (Some(id), Some(cluster)) if provisioned && !node_ref => {
            let identity = HostIdentity::new(
                &ns,
                &host_name,
                host.status
                    .as_ref()
                    .and_then(|s| s.hardware.as_ref())
                    .and_then(|h| h.hostname.as_deref()),
                &status
                    .addresses
                    .iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
                    .collect::<Vec<_>>(),
            );
            let outcome = node_provider_id(&ctx.client, &ns, cluster, &identity, id).await;
            tracing::debug!(machine = %key, host = %host_name, ?outcome, "workload node providerID");
            let changed = node_condition(&outcome, id, &status.conditions);
            if let Some(c) = &changed {
                status.conditions.retain(|c| c.type_ != NODE_PROVIDER_ID_CONDITION);
                status.conditions.push(c.clone());
            }
            match outcome {
                NodeOutcome::Decided(Decision::Done { .. } | Decision::Set { .. }) => {
                    // Cluster API sets the nodeRef from here on; the idle requeue checks it did.
                    ctx.node_found(&key);
                }
                NodeOutcome::Decided(Decision::Conflict { node, existing }) => {
                    if changed.is_some() {
                        tracing::warn!(
                            machine = %key, host = %host_name, node = %node, existing = %existing, wanted = %id,
                            "the host's Node carries another providerID, which cannot change; Cluster API will not find it"
                        );
                    }
                    next = Action::requeue(ctx.node_backoff(&key));
                }
                NodeOutcome::Decided(Decision::Ambiguous { nodes }) => {
                    if changed.is_some() {
                        tracing::warn!(
                            machine = %key, host = %host_name, nodes = ?nodes,
                            "several Nodes fit the host; kiln sets no providerID"
                        );
                    }
                    next = Action::requeue(ctx.node_backoff(&key));
                }
                NodeOutcome::Decided(Decision::NoNode) | NodeOutcome::NoKubeconfig | NodeOutcome::Failed(_) => {
                    next = Action::requeue(ctx.node_backoff(&key))
                }
            }
        }
        _ => ctx.node_found(&key),
    }
    if let (true, Some(node), Some(cluster)) = (
        provisioned,
        machine.data["status"]["nodeRef"]["name"].as_str(),
        cluster.as_ref(),
    ) {
        sync_node_labels(&ctx.client, &ns, cluster, node, &host).await;
    }
    let ready = match (provisioned, host.status.as_ref()) {
        (true, _) => Ready::yes("HostProvisioned", format!("BareMetalHost {host_name} is provisioned")),
        (false, Some(st)) if !st.error_message.is_empty() => {
            Ready::no("HostError", format!("BareMetalHost {host_name}: {}", st.error_message))
        }
        (false, st) => Ready::no(
            "HostProvisioning",
            format!(
                "BareMetalHost {host_name} is {}",
                st.and_then(|s| serde_json::to_value(s.provisioning.state).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "not registered yet".into())
            ),
        ),
    };
    ready.apply(&mut status.conditions);
    if m.status.as_ref() != Some(&status) {
        api.patch_status(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    }
    Ok(next)
}

/// The machine's network data plan from its KilnDataTemplate `name`, or the `Ready` condition saying why there is
/// none yet (the template is missing or invalid, an address is not allocated yet).
async fn network_plan(client: &Client, m: &KilnMachine, name: &str) -> Result<Result<NetworkPlan, Ready>, Error> {
    if m.spec.network_data_name.is_some() {
        return Ok(Err(Ready::no(
            "InvalidSpec",
            "spec.dataTemplate and spec.networkDataName are both set: the network data comes from one of them".into(),
        )));
    }
    let ns = m.namespace().unwrap_or_else(|| "default".into());
    let templates: Api<KilnDataTemplate> = Api::namespaced(client.clone(), &ns);
    let Some(t) = templates.get_opt(name).await? else {
        return Ok(Err(Ready::no(
            "WaitingForDataTemplate",
            format!("KilnDataTemplate {name} not found"),
        )));
    };
    if t.spec.meta_data.is_some() {
        return Ok(Err(Ready::no(
            "InvalidDataTemplate",
            format!("KilnDataTemplate {name}: metaData is not rendered by kiln; remove it"),
        )));
    }
    let template = t.spec.network_data;
    if let Err(e) = template.validate() {
        return Ok(Err(Ready::no(
            "InvalidDataTemplate",
            format!("KilnDataTemplate {name}: {e}"),
        )));
    }
    Ok(match data::claim_addresses(client, m, &template).await? {
        Addresses::Waiting(why) => Err(Ready::no("WaitingForIPAddresses", why)),
        Addresses::Bound(addresses) => Ok(NetworkPlan { template, addresses }),
    })
}

/// The KilnMachine's `Ready` condition (Cluster API v1beta2 contract: the Machine's `InfrastructureReady` mirrors it,
/// so `kubectl describe machine` says why a machine waits).
pub const READY_CONDITION: &str = "Ready";

/// A value of the [`READY_CONDITION`].
struct Ready {
    status: &'static str,
    reason: &'static str,
    message: String,
}

impl Ready {
    fn yes(reason: &'static str, message: String) -> Self {
        Self {
            status: "True",
            reason,
            message,
        }
    }
    fn no(reason: &'static str, message: String) -> Self {
        Self {
            status: "False",
            reason,
            message,
        }
    }

    /// Sets the condition in `conditions`; its transition time changes only when its status does.
    fn apply(self, conditions: &mut Vec<Condition>) {
        let old = conditions.iter().find(|c| c.type_ == READY_CONDITION);
        if old.is_some_and(|c| c.status == self.status && c.reason == self.reason && c.message == self.message) {
            return;
        }
        let since = old
            .filter(|c| c.status == self.status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        conditions.retain(|c| c.type_ != READY_CONDITION);
        conditions.push(Condition {
            type_: READY_CONDITION.into(),
            status: self.status.into(),
            reason: self.reason.into(),
            message: self.message,
            observed_generation: None,
            last_transition_time: since,
        });
    }
}

/// Writes only the [`READY_CONDITION`] of a machine that is waiting, when it changed.
async fn write_ready(api: &Api<KilnMachine>, m: &KilnMachine, ready: Ready) -> Result<(), kube::Error> {
    let mut conditions = m.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let before = conditions.clone();
    ready.apply(&mut conditions);
    if conditions != before {
        api.patch_status(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await?;
    }
    Ok(())
}

/// Keeps the labels of the host's Node under the KilnCluster's label-sync prefixes equal to the host's (CAPM3's label
/// sync). Failures are logged and retried on the next reconcile: they never hold up the machine.
async fn sync_node_labels(mgmt: &Client, ns: &str, cluster: &DynamicObject, node: &str, host: &BareMetalHost) {
    let name = cluster.name_any();
    let result: Result<bool, Box<dyn std::error::Error + Send + Sync>> = async {
        let Some(infra) = cluster.data["spec"]["infrastructureRef"]["name"].as_str() else {
            return Ok(false);
        };
        let kcs: Api<crate::capi::KilnCluster> = Api::namespaced(mgmt.clone(), ns);
        let prefixes = kcs
            .get_opt(infra)
            .await?
            .and_then(|kc| kc.annotations().get(workload::LABEL_SYNC_PREFIXES_ANNOTATION).cloned())
            .map(|a| workload::label_sync_prefixes(&a))
            .unwrap_or_default();
        if prefixes.is_empty() {
            return Ok(false);
        }
        let Some(client) = workload::client(mgmt, ns, &name, WORKLOAD_TIMEOUT).await? else {
            return Ok(false);
        };
        Ok(workload::sync_labels(&client, &name, node, host.labels(), &prefixes, WORKLOAD_TIMEOUT).await?)
    }
    .await;
    match result {
        Ok(true) => tracing::info!(node, host = %host.name_any(), "synced host labels to its Node"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(node, host = %host.name_any(), error = %error_chain(&*e), "label sync to the Node failed")
        }
    }
}

/// What came of looking for the host's Node in the workload cluster.
#[derive(Debug)]
enum NodeOutcome {
    /// Cluster API has not written the workload kubeconfig yet.
    NoKubeconfig,
    /// The Node was looked for, and this was decided (and, for `Set`, done).
    Decided(Decision),
    /// The workload cluster could not be reached or the Node not patched; retried with backoff.
    Failed(workload::Error),
}

async fn node_provider_id(
    mgmt: &Client,
    ns: &str,
    cluster: &str,
    host: &HostIdentity,
    provider_id: &str,
) -> NodeOutcome {
    let client = match workload::client(mgmt, ns, cluster, WORKLOAD_TIMEOUT).await {
        Ok(Some(c)) => c,
        Ok(None) => return NodeOutcome::NoKubeconfig,
        Err(e) => return NodeOutcome::Failed(e),
    };
    match workload::ensure_provider_id(&client, cluster, host, provider_id, WORKLOAD_TIMEOUT).await {
        Ok(d) => NodeOutcome::Decided(d),
        Err(e) => NodeOutcome::Failed(e),
    }
}

/// The [`NODE_PROVIDER_ID_CONDITION`] an outcome calls for, keeping the transition time when its status holds, or
/// `None` to leave the condition as it is (pure).
fn node_condition(outcome: &NodeOutcome, provider_id: &str, prev: &[Condition]) -> Option<Condition> {
    let (status, reason, message) = match outcome {
        NodeOutcome::Decided(Decision::Done { node }) => ("True", "NodeHasProviderID", format!("Node {node}")),
        NodeOutcome::Decided(Decision::Set { node, .. }) => (
            "True",
            "ProviderIDSetByKiln",
            format!("kiln set Node {node}'s providerID"),
        ),
        NodeOutcome::Decided(Decision::Conflict { node, existing }) => (
            "False",
            "ProviderIDConflict",
            format!("Node {node} has providerID {existing}, not {provider_id}; a set providerID cannot change"),
        ),
        NodeOutcome::Decided(Decision::Ambiguous { nodes }) => (
            "False",
            "AmbiguousNode",
            format!("several Nodes fit the host: {}", nodes.join(", ")),
        ),
        NodeOutcome::Decided(Decision::NoNode) => ("False", "WaitingForNode", String::new()),
        NodeOutcome::NoKubeconfig => ("False", "WaitingForKubeconfig", String::new()),
        NodeOutcome::Failed(e) => ("False", "WorkloadClusterError", error_chain(e)),
    };
    let old = prev.iter().find(|c| c.type_ == NODE_PROVIDER_ID_CONDITION);
    let kept = |c: &Condition| {
        (c.status == status && c.reason == reason && c.message == message)
            // The Node kiln set now simply has the providerID: keep saying who set it.
            || (c.status == "True" && matches!(outcome, NodeOutcome::Decided(Decision::Done { .. })))
    };
    if old.is_some_and(kept) {
        return None;
    }
    let since = old
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Some(Condition {
        type_: NODE_PROVIDER_ID_CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        last_transition_time: since.unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out += &format!(": {c}");
        cause = c.source();
    }
    out
}

/// Machine addresses from the host's inspection data (pure): its hostname and NIC addresses.
pub fn addresses(host: &BareMetalHost) -> Vec<MachineAddress> {
    let Some(hw) = host.status.as_ref().and_then(|s| s.hardware.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<MachineAddress> = hw
        .hostname
        .iter()
        .map(|h| MachineAddress {
            type_: "Hostname".into(),
            address: h.clone(),
        })
        .collect();
    out.extend(hw.nics.iter().filter_map(|n| n.ip.clone()).map(|ip| MachineAddress {
        type_: "InternalIP".into(),
        address: ip,
    }));
    out
}
