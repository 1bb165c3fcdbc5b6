//! kiln's Cluster API infrastructure provider kinds in `infrastructure.cluster.x-k8s.io/v1beta1`:
//! `KilnCluster`, `KilnClusterTemplate`, `KilnMachine`, `KilnMachineTemplate`, `KilnRemediation`,
//! `KilnRemediationTemplate`.
//!
//! They follow the Cluster API provider contracts (cluster-api book, "Provider contracts", InfraCluster and
//! InfraMachine, contract v1beta2): `spec.controlPlaneEndpoint`, `status.initialization.provisioned` (and the older
//! `status.ready`), `status.failureDomains`; `spec.providerID`, `spec.failureDomain`, `status.addresses`,
//! `status.conditions`. Templates wrap the spec in `spec.template.spec`. The CRDs carry the
//! `cluster.x-k8s.io/provider` label and the contract label `cluster.x-k8s.io/v1beta2: v1beta1` so CAPI maps its
//! contract to this API version.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelectorRequirement, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the provider kinds.
pub const GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// The label CAPI uses to find a provider's objects.
pub const PROVIDER_LABEL: &str = "cluster.x-k8s.io/provider";
/// The provider label's value.
pub const PROVIDER_NAME: &str = "infrastructure-kiln";
/// Annotation CAPI sets on objects of a paused Cluster.
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
/// Label CAPI puts on infrastructure objects naming their Cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Annotation `clusterctl move` puts on a source object just before deleting it: the object lives on in the target
/// management cluster, so its deletion here must not release or deprovision anything.
pub const DELETE_FOR_MOVE_ANNOTATION: &str = "clusterctl.cluster.x-k8s.io/delete-for-move";

/// The Cluster an object belongs to, named by its [`CLUSTER_NAME_LABEL`]; `None` when it has no such label or the
/// Cluster does not exist.
///
/// # Errors
/// A failed read of the Cluster.
pub async fn cluster_of(
    client: &kube::Client,
    obj: &impl kube::ResourceExt,
) -> Result<Option<kube::api::DynamicObject>, kube::Error> {
    let (Some(cluster), Some(ns)) = (obj.labels().get(CLUSTER_NAME_LABEL), obj.namespace()) else {
        return Ok(None);
    };
    let clusters: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client.clone(), &ns, &cluster_resource());
    clusters.get_opt(cluster).await
}

/// Whether an object is paused, as the Cluster API provider contract defines it: it carries [`PAUSED_ANNOTATION`],
/// or its Cluster ([`cluster_of`]) has `spec.paused` (which `clusterctl move` sets for the whole move).
pub fn is_paused(obj: &impl kube::ResourceExt, cluster: Option<&kube::api::DynamicObject>) -> bool {
    obj.annotations().contains_key(PAUSED_ANNOTATION)
        || cluster.is_some_and(|c| c.data["spec"]["paused"].as_bool() == Some(true))
}

/// Whether `clusterctl move` is deleting this object (it now lives in the target management cluster).
pub fn deleted_for_move(obj: &impl kube::ResourceExt) -> bool {
    obj.meta().deletion_timestamp.is_some() && obj.annotations().contains_key(DELETE_FOR_MOVE_ANNOTATION)
}

/// Cluster API's `Cluster` (v1beta2).
pub fn cluster_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "Cluster"),
        "clusters",
    )
}
/// Finalizer kiln puts on KilnMachines until their host is released.
pub const MACHINE_FINALIZER: &str = "kilnmachine.infrastructure.cluster.x-k8s.io";

/// The address of the control plane.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ApiEndpoint {
    /// Hostname or IP address.
    #[serde(default)]
    pub host: String,
    /// TCP port.
    #[serde(default)]
    pub port: i32,
}

/// Contract v1beta2 initialization status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Initialization {
    /// The infrastructure is provisioned.
    #[serde(default)]
    pub provisioned: bool,
}

/// A failure domain a cluster offers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureDomain {
    /// Name of the failure domain.
    pub name: String,
    /// Whether control plane machines may be placed here.
    #[serde(default)]
    pub control_plane: bool,
    /// Free-form attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// Desired state of a kiln cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "KilnCluster",
    namespaced,
    status = "KilnClusterStatus",
    label("cluster.x-k8s.io/provider", "infrastructure-kiln"),
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    category = "cluster-api",
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.controlPlaneEndpoint.host"}"#,
    printcolumn = r#"{"name":"Provisioned","type":"boolean","jsonPath":".status.initialization.provisioned"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KilnClusterSpec {
    /// Where the workload cluster's API server is reached (a VIP or load balancer in front of the hosts).
    #[serde(default)]
    pub control_plane_endpoint: ApiEndpoint,
    /// Failure domains offered to machines; a host is in a failure domain when it carries CAPM3's label
    /// `infrastructure.cluster.x-k8s.io/failure-domain=<name>` (or kiln's earlier `kiln.dev/failure-domain`). A
    /// machine with a failure domain prefers hosts in it and takes another host when none is free, as CAPM3 does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_domains: Vec<FailureDomain>,
}

/// Observed state of a kiln cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KilnClusterStatus {
    /// Contract v1beta1 readiness (kept for older CAPI cores).
    #[serde(default)]
    pub ready: bool,
    /// Contract v1beta2 initialization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<Initialization>,
    /// Failure domains, copied from the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_domains: Vec<FailureDomain>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `spec.template` of a template kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ClusterTemplateResource {
    /// The spec of the objects stamped out of the template.
    pub spec: KilnClusterSpec,
}

/// A template for KilnClusters (used by ClusterClass).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "KilnClusterTemplate",
    namespaced,
    label("cluster.x-k8s.io/provider", "infrastructure-kiln"),
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    category = "cluster-api"
)]
pub struct KilnClusterTemplateSpec {
    /// The template.
    pub template: ClusterTemplateResource,
}

/// A label selector over BareMetalHosts (Kubernetes' LabelSelector semantics).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostSelector {
    /// Labels the host must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements (`In`, `NotIn`, `Exists`, `DoesNotExist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// The image a KilnMachine provisions onto its host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineImage {
    /// Where to fetch the image.
    pub url: String,
    /// Checksum value or URL of a checksum file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// `md5`, `sha256`, `sha512` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<crate::bmh::ChecksumType>,
    /// `raw`, `qcow2`, `vdi`, `vmdk` or `live-iso`.
    #[serde(default, rename = "format", skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<crate::bmh::DiskFormat>,
    /// For an `oci://` image: a `kubernetes.io/dockerconfigjson` Secret in the machine's namespace with the
    /// registry's credentials, set as the claimed BareMetalHost's `image.ociAuthSecretName`.
    #[serde(default, rename = "ociAuthSecretName", skip_serializing_if = "Option::is_none")]
    pub oci_auth_secret_name: Option<String>,
}

/// Desired state of a kiln machine.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "KilnMachine",
    namespaced,
    status = "KilnMachineStatus",
    label("cluster.x-k8s.io/provider", "infrastructure-kiln"),
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    category = "cluster-api",
    printcolumn = r#"{"name":"ProviderID","type":"string","jsonPath":".spec.providerID"}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".status.hostRef.name"}"#,
    printcolumn = r#"{"name":"Provisioned","type":"boolean","jsonPath":".status.initialization.provisioned"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KilnMachineSpec {
    /// `kiln://<namespace>/<host>`, set once the host is provisioned.
    #[serde(default, rename = "providerID", skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// The failure domain the machine is placed in (preferred when choosing a host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,
    /// Which hosts this machine may claim.
    #[serde(default)]
    pub host_selector: HostSelector,
    /// The image to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MachineImage>,
    /// Secret with network data for the host's config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_name: Option<String>,
    /// A KilnDataTemplate (same namespace) rendering this machine's network data, with addresses from IP pools
    /// (CAPM3's `dataTemplate`). Not together with `networkDataName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_template: Option<DataTemplateRef>,
}

/// A reference to a KilnDataTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DataTemplateRef {
    /// The KilnDataTemplate's name (same namespace).
    pub name: String,
}

/// A reference to the claimed host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HostRef {
    /// The BareMetalHost's name (same namespace).
    pub name: String,
}

/// One machine address.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct MachineAddress {
    /// `Hostname`, `ExternalIP`, `InternalIP`, `ExternalDNS` or `InternalDNS`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub address: String,
}

/// Observed state of a kiln machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KilnMachineStatus {
    /// Contract v1beta1 readiness.
    #[serde(default)]
    pub ready: bool,
    /// Contract v1beta2 initialization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<Initialization>,
    /// The claimed host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ref: Option<HostRef>,
    /// Addresses from the host's inspection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A terminal failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
}

/// `spec.template` of a KilnMachineTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct MachineTemplateResource {
    /// The spec of the machines stamped out of the template.
    pub spec: KilnMachineSpec,
}

/// A template for KilnMachines (MachineDeployment, KubeadmControlPlane, ClusterClass).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "KilnMachineTemplate",
    namespaced,
    label("cluster.x-k8s.io/provider", "infrastructure-kiln"),
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    category = "cluster-api"
)]
pub struct KilnMachineTemplateSpec {
    /// The template.
    pub template: MachineTemplateResource,
    /// CAPM3's node reuse: a host released by a machine of this template's MachineDeployment or control plane (a
    /// scale down, a rolling update) is labelled `infrastructure.cluster.x-k8s.io/node-reuse: <pool>`, and the pool's
    /// next machine takes such a host first, waiting for it while it is deprovisioned.
    #[serde(default, rename = "nodeReuse", skip_serializing_if = "std::ops::Not::not")]
    pub node_reuse: bool,
}

/// How a machine is remediated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStrategy {
    /// Only `Reboot` is supported.
    #[serde(rename = "type", default = "reboot")]
    pub type_: String,
    /// Reboots before giving up and marking the Machine for deletion.
    #[serde(default = "one")]
    pub retry_limit: i32,
    /// Seconds to wait for the node to become healthy after a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

fn reboot() -> String {
    "Reboot".into()
}

fn one() -> i32 {
    1
}

/// A remediation request for one unhealthy machine (created by a MachineHealthCheck).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "KilnRemediation",
    namespaced,
    status = "KilnRemediationStatus",
    label("cluster.x-k8s.io/provider", "infrastructure-kiln"),
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    category = "cluster-api"
)]
pub struct KilnRemediationSpec {
    /// The strategy.
    #[serde(default)]
    pub strategy: RemediationStrategy,
}

/// Observed state of a remediation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KilnRemediationStatus {
    /// `Running`, `Waiting` or `Deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Reboots done so far.
    #[serde(default)]
    pub retry_count: i32,
    /// When the last reboot was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remediated: Option<Time>,
}

/// `spec.template` of a KilnRemediationTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RemediationTemplateResource {
    /// The spec of the remediations stamped out of the template.
    pub spec: KilnRemediationSpec,
}

/// A template for KilnRemediations (referenced by a MachineHealthCheck's remediationTemplate).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "KilnRemediationTemplate",
    namespaced,
    label("cluster.x-k8s.io/provider", "infrastructure-kiln"),
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    category = "cluster-api"
)]
pub struct KilnRemediationTemplateSpec {
    /// The template.
    pub template: RemediationTemplateResource,
}

/// The providerID of a machine on BareMetalHost `<namespace>/<host>`: `kiln://<namespace>/<host>`. The KilnMachine
/// gets it, and the host's config drive carries it (meta data key `providerid`) for the kubelet.
pub fn provider_id(namespace: &str, host: &str) -> String {
    format!("kiln://{namespace}/{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(annotations: &[&str], deleted: bool) -> KilnMachine {
        let mut m = KilnMachine::new("m", KilnMachineSpec::default());
        m.metadata.annotations = Some(annotations.iter().map(|a| ((*a).to_owned(), String::new())).collect());
        if deleted {
            m.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        m
    }

    #[test]
    fn only_a_deletion_by_clusterctl_move_is_a_move() {
        assert!(deleted_for_move(&machine(&[DELETE_FOR_MOVE_ANNOTATION], true)));
        // Annotated but not (yet) deleted: still this cluster's machine.
        assert!(!deleted_for_move(&machine(&[DELETE_FOR_MOVE_ANNOTATION], false)));
        // Deleted without the annotation: a real deletion, which releases the host.
        assert!(!deleted_for_move(&machine(&[PAUSED_ANNOTATION], true)));
    }
}
