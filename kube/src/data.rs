//! Per-machine network data, as CAPM3's `Metal3DataTemplate` renders it: a `KilnDataTemplate` describes a host's
//! links (by the NIC names its inspection found), its IPv4 networks with addresses from IP pools, routes and DNS; a
//! KilnMachine naming it (`spec.dataTemplate.name`) gets, for the host it claims, a Secret `<machine>-networkdata`
//! holding the rendered cloud-init `network_data.json` (OpenStack format), which the host's config drive carries.
//!
//! Addresses come through Cluster API's IPAM contract (`ipam.cluster.x-k8s.io/v1beta2`): kiln creates one
//! `IPAddressClaim` per network (`<machine>-<network id>`, owned by the KilnMachine), an IPAM provider that serves
//! the claim's pool (the in-cluster provider's `InClusterIPPool`, Metal3's IP address manager, or any other) creates
//! the `IPAddress` and binds it, and kiln renders once every claim is bound. The claims and the Secret are deleted
//! when the machine releases its host, so the provider returns the addresses to their pools.
//!
//! CAPM3's fields kiln does not render (bonds, VLANs, IPv6, DHCP and SLAAC networks, `metaData`) are kept by the CRD
//! and refused by name, as is a reference the template cannot resolve (an unknown link, a gateway from a pool no
//! network uses, an interface the host does not have): the KilnMachine's `Ready` condition says which, never dropped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Client, CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bmh::BareMetalHost;
use crate::capi::{CLUSTER_NAME_LABEL, KilnMachine};

/// The label on the objects kiln makes for one KilnMachine (its IPAddressClaims and network data Secret).
pub const MACHINE_LABEL: &str = "kiln.dev/kilnmachine";
/// The network data Secret's key (Metal3's).
pub const NETWORK_DATA_KEY: &str = "networkData";

/// A template of per-machine network data (CAPM3's `Metal3DataTemplate`, its `networkData` part).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "KilnDataTemplate",
    namespaced,
    label("cluster.x-k8s.io/provider", "infrastructure-kiln"),
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    category = "cluster-api"
)]
#[serde(rename_all = "camelCase")]
pub struct KilnDataTemplateSpec {
    /// The network data each machine's host gets.
    pub network_data: NetworkDataTemplate,
    /// CAPM3's `metaData` templates: not rendered by kiln (the config drive's meta data comes from the host and the
    /// machine), so a template that has them is refused rather than half-applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::bmh::free_form")]
    pub meta_data: Option<Value>,
}

/// cloud-init's `network_data.json`, to be rendered per host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NetworkDataTemplate {
    /// The host's links.
    #[serde(default)]
    pub links: Links,
    /// The networks on those links.
    #[serde(default)]
    pub networks: Networks,
    /// Services (DNS).
    #[serde(default)]
    pub services: Services,
}

/// Links of a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Links {
    /// Physical NICs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ethernets: Vec<Ethernet>,
    /// CAPM3's bonds: not rendered by kiln (refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::bmh::free_form_list")]
    pub bonds: Vec<Value>,
    /// CAPM3's VLANs: not rendered by kiln (refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::bmh::free_form_list")]
    pub vlans: Vec<Value>,
}

/// A physical NIC.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ethernet {
    /// The link's id, which networks name as their `link`.
    pub id: String,
    /// MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Its MAC address.
    pub mac_address: MacAddressFrom,
}

/// Where a link's MAC address comes from: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacAddressFrom {
    /// A fixed MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// The MAC of the host's NIC of this name, as inspection found it (`status.hardware.nics[].name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_host_interface: Option<String>,
}

/// Networks of a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Networks {
    /// Static IPv4 networks, each with an address from a pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<Ipv4Network>,
    /// CAPM3's static IPv6 networks: not rendered by kiln (refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::bmh::free_form_list")]
    pub ipv6: Vec<Value>,
    /// CAPM3's DHCPv4 networks: not rendered by kiln (refused).
    #[serde(default, rename = "ipv4DHCP", skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::bmh::free_form_list")]
    pub ipv4_dhcp: Vec<Value>,
    /// CAPM3's DHCPv6 networks: not rendered by kiln (refused).
    #[serde(default, rename = "ipv6DHCP", skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::bmh::free_form_list")]
    pub ipv6_dhcp: Vec<Value>,
    /// CAPM3's SLAAC networks: not rendered by kiln (refused).
    #[serde(default, rename = "ipv6SLAAC", skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::bmh::free_form_list")]
    pub ipv6_slaac: Vec<Value>,
}

/// A static IPv4 network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipv4Network {
    /// The network's id (also names its IPAddressClaim: `<machine>-<id>`).
    pub id: String,
    /// The id of the link it is on.
    pub link: String,
    /// The IP pool the address is claimed from (Cluster API IPAM contract).
    pub from_pool_ref: PoolRef,
    /// Routes through this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// An IP pool of some IPAM provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolRef {
    /// The pool kind's API group, e.g. `ipam.cluster.x-k8s.io`.
    pub api_group: String,
    /// The pool's kind, e.g. `InClusterIPPool`.
    pub kind: String,
    /// The pool's name (same namespace).
    pub name: String,
}

/// A route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Route {
    /// Destination network address (`0.0.0.0` with prefix 0: the default route).
    pub network: String,
    /// Destination prefix length.
    pub prefix: u8,
    /// The next hop.
    pub gateway: GatewayFrom,
}

/// Where a route's gateway comes from: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayFrom {
    /// A fixed address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// The gateway the IPAM provider gave with the address from this pool (a pool of one of the networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pool_ref: Option<PoolRef>,
}

/// DNS and other services.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Services {
    /// DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// An address an IPAM provider allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// A dotted netmask from a prefix length (at most 32).
fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0))
}

impl NetworkDataTemplate {
    /// Checks what does not depend on a host or on allocations: ids, link references, gateways, addresses.
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        for (field, given) in [
            ("links.bonds", !self.links.bonds.is_empty()),
            ("links.vlans", !self.links.vlans.is_empty()),
            ("networks.ipv6", !self.networks.ipv6.is_empty()),
            ("networks.ipv4DHCP", !self.networks.ipv4_dhcp.is_empty()),
            ("networks.ipv6DHCP", !self.networks.ipv6_dhcp.is_empty()),
            ("networks.ipv6SLAAC", !self.networks.ipv6_slaac.is_empty()),
        ] {
            if given {
                return Err(format!(
                    "networkData.{field}: kiln does not render this (only links.ethernets, networks.ipv4 with \
                     addresses from pools, routes and services.dns)"
                ));
            }
        }
        let links: Vec<&str> = self.links.ethernets.iter().map(|e| e.id.as_str()).collect();
        for (i, e) in self.links.ethernets.iter().enumerate() {
            match (&e.mac_address.string, &e.mac_address.from_host_interface) {
                (Some(mac), None) => {
                    mac.parse::<kiln_images::protocol::MacAddr>().map_err(|_| {
                        format!("networkData.links.ethernets[{i}].macAddress.string: {mac:?} is not a MAC address")
                    })?;
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "networkData.links.ethernets[{i}].macAddress: give exactly one of string and fromHostInterface"
                    ));
                }
            }
            if links.iter().filter(|l| **l == e.id).count() > 1 {
                return Err(format!("networkData.links.ethernets[{i}].id: {:?} is used twice", e.id));
            }
        }
        let mut ids = Vec::new();
        for (i, n) in self.networks.ipv4.iter().enumerate() {
            let at = format!("networkData.networks.ipv4[{i}]");
            if n.id.is_empty() || ids.contains(&n.id.as_str()) {
                return Err(format!("{at}.id: {:?} is empty or used twice", n.id));
            }
            ids.push(&n.id);
            if !links.contains(&n.link.as_str()) {
                return Err(format!("{at}.link: no link has the id {:?}", n.link));
            }
            for (j, r) in n.routes.iter().enumerate() {
                let at = format!("{at}.routes[{j}]");
                r.network
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("{at}.network: {:?} is not an IPv4 address", r.network))?;
                if r.prefix > 32 {
                    return Err(format!("{at}.prefix: {} is more than 32", r.prefix));
                }
                match (&r.gateway.string, &r.gateway.from_pool_ref) {
                    (Some(g), None) => {
                        g.parse::<Ipv4Addr>()
                            .map_err(|_| format!("{at}.gateway.string: {g:?} is not an IPv4 address"))?;
                    }
                    (None, Some(p)) if self.networks.ipv4.iter().any(|n| &n.from_pool_ref == p) => {}
                    (None, Some(p)) => {
                        return Err(format!(
                            "{at}.gateway.fromPoolRef: no network takes its address from {}/{}",
                            p.kind, p.name
                        ));
                    }
                    _ => return Err(format!("{at}.gateway: give exactly one of string and fromPoolRef")),
                }
            }
        }
        for (i, d) in self.services.dns.iter().enumerate() {
            d.parse::<std::net::IpAddr>()
                .map_err(|_| format!("networkData.services.dns[{i}]: {d:?} is not an IP address"))?;
        }
        Ok(())
    }

    /// The `network_data.json` for `host`, with the addresses allocated for each network (by network id).
    ///
    /// # Errors
    /// What is missing: an interface the host's inspection did not find, an allocation not made, a gateway the
    /// provider did not give.
    pub fn render(&self, host: &BareMetalHost, allocated: &BTreeMap<String, Allocated>) -> Result<Value, String> {
        self.validate()?;
        let nics = host
            .status
            .as_ref()
            .and_then(|s| s.hardware.as_ref())
            .map(|h| h.nics.as_slice())
            .unwrap_or_default();
        let mut links = Vec::new();
        for e in &self.links.ethernets {
            let mac = match (&e.mac_address.string, &e.mac_address.from_host_interface) {
                (Some(mac), _) => mac.to_ascii_lowercase(),
                (None, Some(name)) => nics
                    .iter()
                    .find(|n| n.name.as_deref() == Some(name.as_str()))
                    .and_then(|n| n.mac.clone())
                    .ok_or_else(|| {
                        format!(
                            "BareMetalHost {} has no inspected NIC named {name:?} (link {:?})",
                            host.name_any(),
                            e.id
                        )
                    })?
                    .to_ascii_lowercase(),
                (None, None) => unreachable!("validated"),
            };
            let mut link = json!({"id": e.id, "type": "phy", "ethernet_mac_address": mac});
            if let Some(mtu) = e.mtu {
                link["mtu"] = json!(mtu);
            }
            links.push(link);
        }
        let by_pool = |p: &PoolRef| {
            self.networks
                .ipv4
                .iter()
                .find(|n| &n.from_pool_ref == p)
                .and_then(|n| allocated.get(&n.id))
        };
        let mut networks = Vec::new();
        for n in &self.networks.ipv4 {
            let a = allocated
                .get(&n.id)
                .ok_or_else(|| format!("network {:?} has no address yet", n.id))?;
            let mut routes = Vec::new();
            for r in &n.routes {
                let gateway = match (&r.gateway.string, &r.gateway.from_pool_ref) {
                    (Some(g), _) => g.clone(),
                    (None, Some(p)) => by_pool(p)
                        .and_then(|a| a.gateway)
                        .ok_or_else(|| {
                            format!(
                                "the IPAddress from pool {}/{} has no gateway (route {}/{} of network {:?})",
                                p.kind, p.name, r.network, r.prefix, n.id
                            )
                        })?
                        .to_string(),
                    (None, None) => unreachable!("validated"),
                };
                routes
                    .push(json!({"network": r.network, "netmask": netmask(r.prefix).to_string(), "gateway": gateway}));
            }
            networks.push(json!({
                "id": n.id,
                "type": "ipv4",
                "link": n.link,
                "ip_address": a.address.to_string(),
                "netmask": netmask(a.prefix).to_string(),
                "routes": routes,
            }));
        }
        let services: Vec<Value> = self
            .services
            .dns
            .iter()
            .map(|d| json!({"type": "dns", "address": d}))
            .collect();
        Ok(json!({"links": links, "networks": networks, "services": services}))
    }
}

/// A machine's network data before a host is chosen: the template and the addresses allocated for it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkPlan {
    pub template: NetworkDataTemplate,
    pub addresses: BTreeMap<String, Allocated>,
}

impl NetworkPlan {
    /// The `network_data.json` for `host` ([`NetworkDataTemplate::render`]).
    ///
    /// # Errors
    /// What is missing for this host.
    pub fn render(&self, host: &BareMetalHost) -> Result<Value, String> {
        self.template.render(host, &self.addresses)
    }
}

/// Cluster API's `IPAddressClaim`.
pub fn ip_address_claim_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ipam.cluster.x-k8s.io", "v1beta2", "IPAddressClaim"),
        "ipaddressclaims",
    )
}

/// Cluster API's `IPAddress`.
pub fn ip_address_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ipam.cluster.x-k8s.io", "v1beta2", "IPAddress"),
        "ipaddresses",
    )
}

/// The name of a machine's claim for one network.
pub fn claim_name(machine: &str, network: &str) -> String {
    let mut name: String = format!("{machine}-{network}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_owned()
}

/// The name of a machine's network data Secret.
pub fn secret_name(machine: &str) -> String {
    format!("{machine}-networkdata")
}

fn owner(machine: &KilnMachine) -> OwnerReference {
    OwnerReference {
        api_version: KilnMachine::api_version(&()).into_owned(),
        kind: KilnMachine::kind(&()).into_owned(),
        name: machine.name_any(),
        uid: machine.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn labels(machine: &KilnMachine) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(MACHINE_LABEL.to_owned(), machine.name_any())]);
    if let Some(c) = machine.labels().get(CLUSTER_NAME_LABEL) {
        l.insert(CLUSTER_NAME_LABEL.to_owned(), c.clone());
    }
    l
}

/// The addresses of a machine's networks, or why they are not all there yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    Bound(BTreeMap<String, Allocated>),
    Waiting(String),
}

/// Makes sure each IPv4 network of `template` has its IPAddressClaim for `machine`, and reads the addresses bound to
/// them.
///
/// # Errors
/// A failed API call.
pub async fn claim_addresses(
    client: &Client,
    machine: &KilnMachine,
    template: &NetworkDataTemplate,
) -> Result<Addresses, kube::Error> {
    let ns = machine.namespace().unwrap_or_else(|| "default".into());
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ip_address_claim_resource());
    let addresses: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ip_address_resource());
    let mut bound = BTreeMap::new();
    let mut waiting = Vec::new();
    for n in &template.networks.ipv4 {
        let name = claim_name(&machine.name_any(), &n.id);
        let claim = match claims.get_opt(&name).await? {
            Some(c) => c,
            None => {
                let mut c = DynamicObject::new(&name, &ip_address_claim_resource()).within(&ns);
                c.metadata.labels = Some(labels(machine));
                c.metadata.owner_references = Some(vec![owner(machine)]);
                let mut spec = json!({"poolRef": n.from_pool_ref});
                if let Some(cluster) = machine.labels().get(CLUSTER_NAME_LABEL) {
                    spec["clusterName"] = json!(cluster);
                }
                c.data = json!({ "spec": spec });
                match claims.create(&PostParams::default(), &c).await {
                    Ok(c) => c,
                    Err(kube::Error::Api(e)) if e.code == 409 => claims.get(&name).await?,
                    Err(e) => return Err(e),
                }
            }
        };
        let pool = format!("{}/{}", n.from_pool_ref.kind, n.from_pool_ref.name);
        let Some(address_name) = claim.data["status"]["addressRef"]["name"].as_str() else {
            let why = claim.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready" && c["status"] == "False")
                .and_then(|c| c["message"].as_str())
                .map(|m| format!(": {m}"))
                .unwrap_or_else(|| format!(" (is an IPAM provider serving {} running?)", n.from_pool_ref.api_group));
            waiting.push(format!("IPAddressClaim {name} has no address from {pool} yet{why}"));
            continue;
        };
        let Some(address) = addresses.get_opt(address_name).await? else {
            waiting.push(format!(
                "IPAddress {address_name} of IPAddressClaim {name} does not exist yet"
            ));
            continue;
        };
        let spec = &address.data["spec"];
        let parsed = (|| {
            let ip = spec["address"].as_str()?.parse::<Ipv4Addr>().ok()?;
            let prefix = u8::try_from(spec["prefix"].as_u64()?).ok().filter(|p| *p <= 32)?;
            let gateway = match spec["gateway"].as_str() {
                None => None,
                Some(g) => Some(g.parse::<Ipv4Addr>().ok()?),
            };
            Some(Allocated {
                address: ip,
                prefix,
                gateway,
            })
        })();
        match parsed {
            Some(a) => {
                bound.insert(n.id.clone(), a);
            }
            None => waiting.push(format!(
                "IPAddress {address_name} from {pool} is not an IPv4 address with a prefix of at most 32: {spec}"
            )),
        }
    }
    Ok(if waiting.is_empty() {
        Addresses::Bound(bound)
    } else {
        Addresses::Waiting(waiting.join("; "))
    })
}

/// Writes the machine's network data Secret (created, or replaced when it holds other data); returns its name.
///
/// # Errors
/// A failed API call.
pub async fn write_network_data(client: &Client, machine: &KilnMachine, data: &Value) -> Result<String, kube::Error> {
    let ns = machine.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let name = secret_name(&machine.name_any());
    let bytes = ByteString(serde_json::to_vec(data).expect("JSON values serialize"));
    let mut secret = Secret {
        data: Some(BTreeMap::from([(NETWORK_DATA_KEY.to_owned(), bytes)])),
        ..Default::default()
    };
    secret.metadata.name = Some(name.clone());
    secret.metadata.labels = Some(labels(machine));
    secret.metadata.owner_references = Some(vec![owner(machine)]);
    match api.get_opt(&name).await? {
        None => {
            api.create(&PostParams::default(), &secret).await?;
        }
        Some(old) if old.data == secret.data => {}
        Some(old) => {
            secret.metadata.resource_version = old.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &secret).await?;
        }
    }
    Ok(name)
}

/// Deletes what [`claim_addresses`] and [`write_network_data`] made for `machine`: its IPAddressClaims (so the IPAM
/// provider frees the addresses) and its network data Secret.
///
/// # Errors
/// A failed API call.
pub async fn release(client: &Client, machine: &KilnMachine) -> Result<(), kube::Error> {
    let ns = machine.namespace().unwrap_or_else(|| "default".into());
    let selector = ListParams::default().labels(&format!("{MACHINE_LABEL}={}", machine.name_any()));
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ip_address_claim_resource());
    match claims.list(&selector).await {
        Ok(list) => {
            for c in list.items {
                ignore_missing(claims.delete(&c.name_any(), &DeleteParams::default()).await.map(drop))?;
            }
        }
        // Cluster API's IPAM kinds are not installed: kiln made no claim.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    ignore_missing(
        secrets
            .delete(&secret_name(&machine.name_any()), &DeleteParams::default())
            .await
            .map(drop),
    )
}

fn ignore_missing(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmh::{BareMetalHostSpec, BareMetalHostStatus, HardwareDetails, Nic};

    fn pool(name: &str) -> PoolRef {
        PoolRef {
            api_group: "ipam.cluster.x-k8s.io".into(),
            kind: "InClusterIPPool".into(),
            name: name.into(),
        }
    }

    fn template() -> NetworkDataTemplate {
        serde_json::from_value(json!({
            "links": {"ethernets": [
                {"id": "enp1s0", "mtu": 9000, "macAddress": {"fromHostInterface": "eth0"}},
                {"id": "mgmt", "macAddress": {"string": "52:54:00:AA:BB:CC"}}
            ]},
            "networks": {"ipv4": [{
                "id": "prov", "link": "enp1s0",
                "fromPoolRef": {"apiGroup": "ipam.cluster.x-k8s.io", "kind": "InClusterIPPool", "name": "pool-a"},
                "routes": [
                    {"network": "0.0.0.0", "prefix": 0,
                     "gateway": {"fromPoolRef": {"apiGroup": "ipam.cluster.x-k8s.io", "kind": "InClusterIPPool", "name": "pool-a"}}},
                    {"network": "10.20.0.0", "prefix": 16, "gateway": {"string": "192.168.10.254"}}
                ]
            }]},
            "services": {"dns": ["192.168.10.53"]}
        }))
        .unwrap()
    }

    fn host(nics: &[(&str, &str)]) -> BareMetalHost {
        let mut h = BareMetalHost::new("node-0", BareMetalHostSpec::default());
        h.status = Some(BareMetalHostStatus {
            hardware: Some(HardwareDetails {
                nics: nics
                    .iter()
                    .map(|(n, m)| Nic {
                        name: Some((*n).into()),
                        mac: Some((*m).into()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        });
        h
    }

    fn allocated() -> BTreeMap<String, Allocated> {
        BTreeMap::from([(
            "prov".to_owned(),
            Allocated {
                address: Ipv4Addr::new(192, 168, 10, 21),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 168, 10, 1)),
            },
        )])
    }

    #[test]
    fn renders_openstack_network_data_from_the_hosts_nics_and_the_allocations() {
        let data = template()
            .render(&host(&[("eth0", "52:54:00:12:34:56")]), &allocated())
            .unwrap();
        assert_eq!(
            data,
            json!({
                "links": [
                    {"id": "enp1s0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56", "mtu": 9000},
                    {"id": "mgmt", "type": "phy", "ethernet_mac_address": "52:54:00:aa:bb:cc"}
                ],
                "networks": [{
                    "id": "prov", "type": "ipv4", "link": "enp1s0",
                    "ip_address": "192.168.10.21", "netmask": "255.255.255.0",
                    "routes": [
                        {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.10.1"},
                        {"network": "10.20.0.0", "netmask": "255.255.0.0", "gateway": "192.168.10.254"}
                    ]
                }],
                "services": [{"type": "dns", "address": "192.168.10.53"}]
            })
        );
    }

    #[test]
    fn what_cannot_be_rendered_is_named() {
        let e = template().render(&host(&[("eth1", "52:54:00:12:34:56")]), &allocated());
        assert_eq!(
            e.unwrap_err(),
            "BareMetalHost node-0 has no inspected NIC named \"eth0\" (link \"enp1s0\")"
        );
        let e = template().render(&host(&[("eth0", "52:54:00:12:34:56")]), &BTreeMap::new());
        assert_eq!(e.unwrap_err(), "network \"prov\" has no address yet");
        let mut no_gateway = allocated();
        no_gateway.get_mut("prov").unwrap().gateway = None;
        let e = template().render(&host(&[("eth0", "52:54:00:12:34:56")]), &no_gateway);
        assert!(e.unwrap_err().contains("has no gateway"));

        let mut t = template();
        t.networks.ipv4[0].link = "bond0".into();
        assert_eq!(
            t.validate().unwrap_err(),
            "networkData.networks.ipv4[0].link: no link has the id \"bond0\""
        );
        let mut t = template();
        t.networks.ipv4[0].routes[0].gateway.from_pool_ref = Some(pool("pool-b"));
        assert!(
            t.validate()
                .unwrap_err()
                .contains("no network takes its address from InClusterIPPool/pool-b")
        );
        let mut t = template();
        t.links.ethernets[1].mac_address.from_host_interface = Some("eth1".into());
        assert!(
            t.validate()
                .unwrap_err()
                .contains("exactly one of string and fromHostInterface")
        );
        let mut t = template();
        t.links.bonds.push(json!({"id": "bond0", "bondMode": "802.3ad"}));
        assert!(
            t.validate()
                .unwrap_err()
                .starts_with("networkData.links.bonds: kiln does not render this")
        );
        let mut t = template();
        t.networks.ipv4_dhcp.push(json!({"id": "dhcp", "link": "enp1s0"}));
        assert!(t.validate().unwrap_err().starts_with("networkData.networks.ipv4DHCP:"));
        let mut t = template();
        t.services.dns.push("dns.example".into());
        assert!(t.validate().unwrap_err().contains("services.dns[1]"));
    }

    #[test]
    fn names_are_valid_object_names() {
        assert_eq!(claim_name("c1-md-0-x7k2p", "prov"), "c1-md-0-x7k2p-prov");
        assert_eq!(claim_name("m", "Storage_Net"), "m-storage-net");
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
    }
}
