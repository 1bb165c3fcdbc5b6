//! The BareMetalHost controller: mirrors each host's spec (with the Secrets it names) into the engine and writes the
//! engine's observed state back through the status subresource.
//!
//! Semantics follow Metal3's baremetal-operator where kiln supports them:
//! - finalizer `baremetalhost.metal3.io`: added before the engine learns about a host; on delete the engine
//!   deprovisions and forgets the host, then the finalizer is removed;
//! - `baremetalhost.metal3.io/paused`: nothing is done while present (neither engine nor status);
//! - `baremetalhost.metal3.io/detached`: the engine is not driven, status says `detached`, delete skips
//!   deprovisioning;
//! - `clusterctl move`: the host is an owner of its BMC credentials Secret (so both move together), and a host
//!   deleted for the move (`clusterctl.cluster.x-k8s.io/delete-for-move`) is neither deprovisioned nor forgotten;
//!   `baremetalhost.metal3.io/status` (the copy of status made before a move) restores the status of a host kiln
//!   does not know ([`restore`]);
//! - a host whose status says `provisioned` but which kiln has no record of (a lost store, a moved host) is adopted as
//!   provisioned with its image: registered, never inspected or written;
//! - BMC credentials come from the Secret `spec.bmc.credentialsName` (keys `username`, `password`); user, network and
//!   meta data from the Secrets referenced in the spec (keys `userData`/`networkData`/`metaData`, or `value`).
//!
//! The decision what status to write is the pure [`status_from`]; the reconciler does the I/O around it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, SecretReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::bmh::{
    AutomatedCleaningMode, BareMetalHost, BareMetalHostStatus, BootMode, DETACHED_ANNOTATION, ErrorType, FINALIZER,
    OperationalStatus, ProvisioningState, STATUS_ANNOTATION,
};
use crate::engine::{BmcAccess, Engine, EngineError, HostKey, HostSpec, HostState, Release, SecretBytes};

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed")]
    Kube(#[from] kube::Error),
    #[error("engine call failed")]
    Engine(#[from] EngineError),
    #[error("host has no namespace")]
    NoNamespace,
}

impl Error {
    /// Whether retrying may help (API conflicts, unavailable engine).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kube(_) => true,
            Self::Engine(e) => e.is_transient(),
            Self::NoNamespace => false,
        }
    }
}

/// Timing knobs (tests shorten them).
#[derive(Clone, Debug)]
pub struct Config {
    /// Field manager name for writes.
    pub manager: String,
    /// Requeue while the engine works on a host.
    pub busy_requeue: Duration,
    /// Requeue of hosts in a stable state (resync with the engine).
    pub idle_requeue: Duration,
    /// Requeue after a failure.
    pub error_requeue: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            manager: "kiln".into(),
            busy_requeue: Duration::from_secs(5),
            idle_requeue: Duration::from_secs(300),
            error_requeue: Duration::from_secs(15),
        }
    }
}

struct Ctx<E> {
    client: Client,
    engine: Arc<E>,
    config: Config,
}

/// Runs the controller over all namespaces until the returned future is dropped or `shutdown` completes.
pub async fn run<E: Engine>(
    client: Client,
    engine: Arc<E>,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let hosts: Api<BareMetalHost> = Api::all(client.clone());
    let changes = engine.changes();
    let ctx = Arc::new(Ctx { client, engine, config });
    let mut controller = Controller::new(hosts, watcher::Config::default());
    if let Some(changes) = changes {
        controller = controller.reconcile_on(changes.map(|k| ObjectRef::new(&k.name).within(&k.namespace)));
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "bmh reconcile");
            }
        })
        .await;
}

fn error_policy<E: Engine>(host: Arc<BareMetalHost>, err: &Error, ctx: Arc<Ctx<E>>) -> Action {
    tracing::warn!(host = %host.name_any(), error = ?err, "BareMetalHost reconcile failed");
    Action::requeue(ctx.config.error_requeue)
}

async fn reconcile<E: Engine>(host: Arc<BareMetalHost>, ctx: Arc<Ctx<E>>) -> Result<Action, Error> {
    if host.is_paused() {
        return Ok(Action::await_change());
    }
    let ns = host.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<BareMetalHost> = Api::namespaced(ctx.client.clone(), &ns);
    let key = HostKey {
        namespace: ns.clone(),
        name: host.name_any(),
    };
    let has_finalizer = host.finalizers().iter().any(|f| f == FINALIZER);

    if host.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        if crate::capi::deleted_for_move(&*host) {
            // `clusterctl move` created this host in the target management cluster: the machine is neither
            // deprovisioned nor forgotten. kiln keeps it, and adopts it from the target's BareMetalHost of the same
            // namespace and name.
            tracing::info!(host = %key, "BareMetalHost deleted by clusterctl move: kept");
            remove_finalizer(&api, &host).await?;
            return Ok(Action::await_change());
        }
        return match ctx.engine.release_host(&key, !host.is_detached()).await? {
            Release::Done => {
                remove_finalizer(&api, &host).await?;
                Ok(Action::await_change())
            }
            Release::InProgress(state) => {
                let mut status = host.status.clone().unwrap_or_default();
                if status.provisioning.state != state {
                    status.provisioning.state = state;
                    write_status(&api, &host, &status, &ctx.config.manager).await?;
                }
                Ok(Action::requeue(ctx.config.busy_requeue))
            }
        };
    }
    if !has_finalizer {
        add_finalizer(&api, &host).await?;
        return Ok(Action::await_change()); // the update triggers the next reconcile
    }
    if host.is_detached() {
        let mut status = host.status.clone().unwrap_or_default();
        if status.operational_status != OperationalStatus::Detached {
            status.operational_status = OperationalStatus::Detached;
            write_status(&api, &host, &status, &ctx.config.manager).await?;
        }
        return Ok(Action::await_change());
    }

    if let Some(saved) = host.annotations().get(STATUS_ANNOTATION) {
        return restore(&api, &host, &key, saved, &ctx).await;
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = match host_spec(&host, &secrets).await? {
        Ok(spec) => spec,
        Err(problem) => {
            // Metal3 reports missing or unusable credentials as a registration error.
            let state = HostState {
                state: ProvisioningState::Registering,
                error: Some((ErrorType::Registration, problem)),
                ..Default::default()
            };
            let status = status_from(&host, &state, now());
            if !same_status(host.status.as_ref(), &status) {
                write_status(&api, &host, &status, &ctx.config.manager).await?;
            }
            return Ok(Action::requeue(ctx.config.error_requeue));
        }
    };
    let state = match ctx.engine.apply_host(&key, &spec).await {
        Ok(state) => state,
        // Refused (an address form, an image format, a field kiln does not act on): the reason goes to the
        // BareMetalHost's status, where a Metal3 user looks, not only to kiln's log. The host keeps what kiln
        // observes of it, if it has it already.
        Err(EngineError::Rejected { reason, .. }) => {
            let error_type = if reason.starts_with("spec.image") || reason.starts_with("spec.userData") {
                ErrorType::Provisioning
            } else {
                ErrorType::Registration
            };
            let mut state = match ctx.engine.host_state(&key).await {
                Ok(Some(s)) => s,
                Ok(None) | Err(_) => HostState {
                    state: ProvisioningState::Registering,
                    ..Default::default()
                },
            };
            state.error = Some((error_type, reason));
            let status = status_from(&host, &state, now());
            if !same_status(host.status.as_ref(), &status) {
                write_status(&api, &host, &status, &ctx.config.manager).await?;
            }
            return Ok(Action::requeue(ctx.config.error_requeue));
        }
        Err(e) => return Err(e.into()),
    };
    let status = status_from(&host, &state, now());
    if !same_status(host.status.as_ref(), &status) {
        write_status(&api, &host, &status, &ctx.config.manager).await?;
    }
    Ok(Action::requeue(if state.is_stable() {
        ctx.config.idle_requeue
    } else {
        ctx.config.busy_requeue
    }))
}

/// A host that came with a copy of its status ([`STATUS_ANNOTATION`], written before `clusterctl move`, which copies
/// no status), as baremetal-operator handles it: when kiln knows the host (the same store served the source cluster)
/// or the host has a status already, the copy is stale and dropped; otherwise the copy becomes the host's status, from
/// which a provisioned host is adopted as provisioned (see [`HostSpec::adopt_provisioned`]) rather than written again.
/// A copy that is not a BareMetalHost status is reported, and nothing is enrolled.
async fn restore<E: Engine>(
    api: &Api<BareMetalHost>,
    host: &BareMetalHost,
    key: &HostKey,
    saved: &str,
    ctx: &Ctx<E>,
) -> Result<Action, Error> {
    if ctx.engine.host_state(key).await?.is_some() || host.state() != ProvisioningState::None {
        let patch = json!({"metadata": {"annotations": {STATUS_ANNOTATION: null}}});
        api.patch(&host.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        return Ok(Action::await_change());
    }
    let status = match serde_json::from_str::<BareMetalHostStatus>(saved) {
        Ok(s) => s,
        Err(e) => {
            // No provisioning state: the host stays one without a status of its own until the copy is fixed.
            let state = HostState {
                state: ProvisioningState::None,
                error: Some((
                    ErrorType::Registration,
                    format!("annotation {STATUS_ANNOTATION} is not a BareMetalHost status: {e}"),
                )),
                ..Default::default()
            };
            let s = status_from(host, &state, now());
            if !same_status(host.status.as_ref(), &s) {
                write_status(api, host, &s, &ctx.config.manager).await?;
            }
            return Ok(Action::requeue(ctx.config.error_requeue));
        }
    };
    tracing::info!(host = %key, state = ?status.provisioning.state, "BareMetalHost status restored from its annotation");
    write_status(api, host, &status, &ctx.config.manager).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Metal3's annotation that skips inspection (`disabled`).
const INSPECT_ANNOTATION: &str = "inspect.metal3.io";

/// Makes the host an owner of its BMC credentials Secret, as baremetal-operator does, so that `clusterctl move` (which
/// moves every BareMetalHost with what it owns) takes the credentials along; a Secret several hosts share gets one
/// owner reference per host. Not a controller reference: deleting a host does not delete a shared Secret.
async fn own_credentials(secrets: &Api<Secret>, host: &BareMetalHost, creds: &Secret) -> Result<(), kube::Error> {
    let Some(uid) = host.uid() else { return Ok(()) };
    if creds.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(());
    }
    // A strategic merge patch merges owner references by uid: hosts sharing the Secret add theirs without a conflict.
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "metal3.io/v1alpha1".into(),
        kind: "BareMetalHost".into(),
        name: host.name_any(),
        uid,
        ..Default::default()
    };
    let patch = json!({"metadata": {"ownerReferences": [owner]}});
    secrets
        .patch(&creds.name_any(), &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    Ok(())
}

/// Resolves the host's Secrets into the engine's [`HostSpec`]. The inner `Err` is a user-facing problem (missing
/// Secret or key) to report in status, the outer one an API failure.
async fn host_spec(host: &BareMetalHost, secrets: &Api<Secret>) -> Result<Result<HostSpec, String>, Error> {
    let s = &host.spec;
    if s.bmc.credentials_name.is_empty() {
        return Ok(Err("spec.bmc.credentialsName is empty".into()));
    }
    let Some(creds) = secrets.get_opt(&s.bmc.credentials_name).await? else {
        return Ok(Err(format!(
            "BMC credentials Secret {} not found",
            s.bmc.credentials_name
        )));
    };
    if let Err(e) = own_credentials(secrets, host, &creds).await {
        // Only `clusterctl move` needs the ownership (RBAC older than kiln's role may not allow it): never a reason
        // to stop managing the host.
        tracing::warn!(host = %host.name_any(), secret = %s.bmc.credentials_name, error = %e,
            "cannot make the host an owner of its BMC credentials Secret; clusterctl move would leave it behind");
    }
    let (Some(user), Some(pass)) = (secret_key(&creds, &["username"]), secret_key(&creds, &["password"])) else {
        return Ok(Err(format!(
            "Secret {} lacks username or password",
            s.bmc.credentials_name
        )));
    };
    let mut data = Vec::new();
    for (r, key) in [
        (&s.user_data, "userData"),
        (&s.network_data, "networkData"),
        (&s.meta_data, "metaData"),
    ] {
        data.push(match r {
            None => None,
            Some(r) => match referenced(secrets, host, r, key).await? {
                Ok(v) => Some(v),
                Err(problem) => return Ok(Err(problem)),
            },
        });
    }
    let [user_data, network_data, meta_data]: [Option<SecretBytes>; 3] = data.try_into().expect("three");
    // Metal3's preprovisioningNetworkDataName: a Secret in the host's namespace, key `networkData`.
    let preprovisioning_network_data = match s.preprovisioning_network_data_name.as_deref() {
        None | Some("") => None,
        Some(name) => {
            let Some(secret) = secrets.get_opt(name).await? else {
                return Ok(Err(format!(
                    "spec.preprovisioningNetworkDataName: Secret {name} not found"
                )));
            };
            match secret_key(&secret, &["networkData"]) {
                Some(v) => Some(v),
                None => {
                    return Ok(Err(format!(
                        "spec.preprovisioningNetworkDataName: Secret {name} has no networkData"
                    )));
                }
            }
        }
    };
    // Metal3's ociAuthSecretName: a docker-config Secret in the host's namespace with the registry's credentials.
    let image_credentials = match s
        .image
        .as_ref()
        .and_then(|i| Some((i, i.oci_auth_secret_name.as_deref()?)))
    {
        None | Some((_, "")) => None,
        Some((image, name)) => {
            let Some(secret) = secrets.get_opt(name).await? else {
                return Ok(Err(format!("spec.image.ociAuthSecretName: Secret {name} not found")));
            };
            let value = |key: &str| secret_key(&secret, &[key]).map(|b| b.0);
            match kiln_engine::wire::registry_credentials_from_secret(
                name,
                secret.type_.as_deref().unwrap_or("Opaque"),
                value,
                &image.url,
            ) {
                Ok(c) => kiln_engine::wire::image_credentials_from(&kiln_engine::wire::ImageIn {
                    url: image.url.clone(),
                    checksum: None,
                    checksum_type: None,
                    format: None,
                    registry_credentials: Some(c),
                }),
                Err(problem) => return Ok(Err(format!("spec.image.ociAuthSecretName: {problem}"))),
            }
        }
    };
    // Never accept and ignore: what kiln would not act on is refused here, visibly in status (the same fields,
    // with the same reasons, as `kiln import`; an empty object is as good as absent).
    let set = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
    };
    let not_acted_on = [
        (
            "raid",
            set(&s.raid),
            "kiln does not configure RAID yet; remove it or configure the host out of band",
        ),
        (
            "firmware",
            set(&s.firmware),
            "kiln does not configure firmware settings yet; remove it or configure the host out of band",
        ),
        (
            "customDeploy",
            set(&s.custom_deploy),
            "kiln deploys images only; custom deploy steps are not supported",
        ),
        (
            "disablePowerOff",
            s.disable_power_off,
            "kiln powers hosts off between operations; disablePowerOff is not supported yet",
        ),
        ("taints", !s.taints.is_empty(), "kiln does not act on taints"),
        (
            "networkInterfaces",
            !s.network_interfaces.is_empty(),
            "kiln does not act on networkInterfaces",
        ),
        (
            "inspectionMode",
            s.inspection_mode == Some(crate::bmh::InspectionMode::Fast),
            "kiln inspects with its agent (inspectionMode agent) or not at all (disabled); fast is not supported",
        ),
        (
            "hardwareProfile",
            s.hardware_profile
                .as_deref()
                .is_some_and(|p| !p.is_empty() && p != "unknown"),
            "kiln does not act on hardwareProfile",
        ),
    ];
    if let Some((field, _, why)) = not_acted_on.iter().find(|(_, on, _)| *on) {
        return Ok(Err(format!("spec.{field}: {why}")));
    }
    Ok(Ok(HostSpec {
        bmc: BmcAccess {
            address: s.bmc.address.clone(),
            username: String::from_utf8_lossy(&user.0).trim().to_owned(),
            password: pass,
            disable_certificate_verification: s.bmc.disable_certificate_verification,
        },
        boot_mac_address: s.boot_mac_address.clone(),
        boot_mode: s.boot_mode.unwrap_or(BootMode::Uefi),
        online: s.online,
        consumer: s.consumer_ref.as_ref().map(|c| {
            format!(
                "{}/{}/{}",
                c.kind.as_deref().unwrap_or_default(),
                c.namespace.as_deref().unwrap_or_default(),
                c.name.as_deref().unwrap_or_default()
            )
        }),
        image: s.image.clone().filter(|i| !i.url.is_empty()),
        image_credentials,
        user_data,
        network_data,
        meta_data,
        preprovisioning_network_data,
        root_device_hints: s.root_device_hints.clone(),
        automated_cleaning_mode: s.automated_cleaning_mode.unwrap_or(AutomatedCleaningMode::Metadata),
        externally_provisioned: s.externally_provisioned,
        adopt_provisioned: host.state() == ProvisioningState::Provisioned,
        architecture: s.architecture.clone(),
        inspect: host.annotations().get(INSPECT_ANNOTATION).map(String::as_str) != Some("disabled")
            && s.inspection_mode != Some(crate::bmh::InspectionMode::Disabled),
        labels: host.labels().clone(),
    }))
}

async fn referenced(
    secrets: &Api<Secret>,
    host: &BareMetalHost,
    r: &SecretReference,
    key: &str,
) -> Result<Result<SecretBytes, String>, Error> {
    let name = r.name.clone().unwrap_or_default();
    let other_ns = r
        .namespace
        .as_deref()
        .filter(|n| Some(*n) != host.metadata.namespace.as_deref());
    let secret = match other_ns {
        Some(ns) => {
            Api::<Secret>::namespaced(secrets.clone().into_client(), ns)
                .get_opt(&name)
                .await?
        }
        None => secrets.get_opt(&name).await?,
    };
    let Some(secret) = secret else {
        return Ok(Err(format!("Secret {name} not found")));
    };
    Ok(secret_key(&secret, &[key, "value"]).ok_or_else(|| format!("Secret {name} has neither {key} nor value")))
}

fn secret_key(secret: &Secret, keys: &[&str]) -> Option<SecretBytes> {
    keys.iter().find_map(|k| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(*k))
            .map(|b| SecretBytes(b.0.clone()))
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(*k))
                    .map(|s| SecretBytes(s.clone().into_bytes()))
            })
    })
}

/// The status to write for the engine's observation (pure). Keeps the previous operation history and stamps the
/// start and end of the operations whose state changed.
pub fn status_from(host: &BareMetalHost, st: &HostState, now: Time) -> BareMetalHostStatus {
    let prev = host.status.clone().unwrap_or_default();
    let mut s = prev.clone();
    s.provisioning.state = st.state;
    s.provisioning.id = st.id.clone();
    s.provisioning.image = st.provisioned_image.clone().unwrap_or_default();
    s.provisioning.boot_mode = st.boot_mode;
    s.provisioning.root_device_hints = st.root_device_hints.clone();
    s.powered_on = st.powered_on;
    s.hardware = st.hardware.clone().or(prev.hardware.clone());
    s.error_count = st.error_count;
    match &st.error {
        Some((t, m)) => {
            s.operational_status = OperationalStatus::Error;
            s.error_type = Some(*t);
            s.error_message = m.clone();
        }
        None => {
            s.operational_status = if st.state == ProvisioningState::None {
                OperationalStatus::Discovered
            } else if st.delayed {
                OperationalStatus::Delayed
            } else {
                OperationalStatus::Ok
            };
            s.error_type = None;
            s.error_message = String::new();
        }
    }
    if let Some(h) = &st.history {
        s.operation_history = h.clone();
    } else if prev.provisioning.state != st.state {
        use ProvisioningState as P;
        let h = &mut s.operation_history;
        let (ended, started) = match st.state {
            P::Registering => (None, Some(&mut h.register)),
            P::Inspecting => {
                h.register.end = Some(now.clone());
                (None, Some(&mut h.inspect))
            }
            P::Available if prev.provisioning.state == P::Inspecting => (Some(&mut h.inspect), None),
            P::Available if prev.provisioning.state == P::Deprovisioning => (Some(&mut h.deprovision), None),
            P::Provisioning => (None, Some(&mut h.provision)),
            P::Provisioned => (Some(&mut h.provision), None),
            P::Deprovisioning => (None, Some(&mut h.deprovision)),
            _ => (None, None),
        };
        if let Some(m) = ended {
            m.end = Some(now.clone());
        }
        if let Some(m) = started {
            m.start = Some(now.clone());
            m.end = None;
        }
    }
    s.conditions = conditions(&s, &prev.conditions, &now);
    s.last_updated = Some(now);
    s
}

fn conditions(s: &BareMetalHostStatus, prev: &[Condition], now: &Time) -> Vec<Condition> {
    use ProvisioningState as P;
    let ok = s.operational_status == OperationalStatus::Ok;
    let want = [
        (
            "Ready",
            ok && s.provisioning.state == P::Provisioned,
            if ok { "Provisioned" } else { "Error" },
        ),
        ("Provisioned", s.provisioning.state == P::Provisioned, "Provisioned"),
        (
            "AvailableForProvisioning",
            s.provisioning.state == P::Available,
            "Available",
        ),
        (
            "Manageable",
            !matches!(s.provisioning.state, P::None | P::Registering | P::Unmanaged),
            "Manageable",
        ),
    ];
    want.iter()
        .map(|(t, on, reason)| {
            let status = if *on { "True" } else { "False" };
            let old = prev.iter().find(|c| c.type_ == *t);
            let since = old
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone());
            Condition {
                type_: (*t).into(),
                status: status.into(),
                reason: if *on { (*reason).into() } else { format!("Not{reason}") },
                message: String::new(),
                observed_generation: None,
                last_transition_time: since.unwrap_or_else(|| now.clone()),
            }
        })
        .collect()
}

/// Equal but for `lastUpdated` and condition timestamps.
fn same_status(old: Option<&BareMetalHostStatus>, new: &BareMetalHostStatus) -> bool {
    let Some(old) = old else { return false };
    let strip = |s: &BareMetalHostStatus| {
        let mut s = s.clone();
        s.last_updated = None;
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s.operation_history = Default::default();
        s
    };
    strip(old) == strip(new)
}

async fn write_status(
    api: &Api<BareMetalHost>,
    host: &BareMetalHost,
    status: &BareMetalHostStatus,
    _manager: &str,
) -> Result<(), kube::Error> {
    api.patch_status(
        &host.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn add_finalizer(api: &Api<BareMetalHost>, host: &BareMetalHost) -> Result<(), kube::Error> {
    let mut f = host.finalizers().to_vec();
    f.push(FINALIZER.into());
    // resourceVersion in the merge patch makes this an optimistic-concurrency update.
    let patch = json!({"metadata": {"finalizers": f, "resourceVersion": host.resource_version()}});
    api.patch(&host.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

async fn remove_finalizer(api: &Api<BareMetalHost>, host: &BareMetalHost) -> Result<(), kube::Error> {
    let f: Vec<String> = host.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"finalizers": f, "resourceVersion": host.resource_version()}});
    match api
        .patch(&host.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        // Gone already: the last finalizer was removed by someone else (`clusterctl move` removes them itself).
        Err(kube::Error::Api(e)) if e.code == 404 && host.metadata.deletion_timestamp.is_some() => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// Whether the host has the detached annotation (re-exported for callers that only hold metadata).
pub fn is_detached(host: &BareMetalHost) -> bool {
    host.annotations().contains_key(DETACHED_ANNOTATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmh::BareMetalHostSpec;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn status_tracks_engine_state_history_and_errors() {
        let mut host = BareMetalHost::new("h", BareMetalHostSpec::default());
        let st = |state| HostState {
            state,
            id: "e1".into(),
            ..Default::default()
        };

        let s1 = status_from(&host, &st(ProvisioningState::Inspecting), t(10));
        assert_eq!(s1.operational_status, OperationalStatus::Ok);
        assert_eq!(s1.operation_history.inspect.start, Some(t(10)));
        host.status = Some(s1);

        let s2 = status_from(&host, &st(ProvisioningState::Available), t(20));
        assert_eq!(s2.operation_history.inspect.end, Some(t(20)));
        let avail = s2
            .conditions
            .iter()
            .find(|c| c.type_ == "AvailableForProvisioning")
            .unwrap();
        assert_eq!((avail.status.as_str(), &avail.last_transition_time), ("True", &t(20)));
        host.status = Some(s2.clone());

        // Same state again: nothing but lastUpdated changes, so no write is needed.
        let s3 = status_from(&host, &st(ProvisioningState::Available), t(30));
        assert!(same_status(Some(&s2), &s3));
        assert_eq!(s3.conditions, s2.conditions, "transition times kept");

        let failed = HostState {
            error: Some((ErrorType::Provisioning, "write failed".into())),
            error_count: 1,
            ..st(ProvisioningState::Provisioning)
        };
        let s4 = status_from(&host, &failed, t(40));
        assert_eq!(s4.operational_status, OperationalStatus::Error);
        assert_eq!(s4.error_type, Some(ErrorType::Provisioning));
        assert_eq!(s4.error_message, "write failed");
        assert_eq!(s4.error_count, 1);
        assert!(!same_status(Some(&s2), &s4));
    }
}
