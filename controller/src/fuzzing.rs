//! Property checks over what the appliance parses from outside: agent API bodies and `kiln import` manifests,
//! shared by the libFuzzer targets in `fuzz/` and the `fuzz_corpus` test that replays every corpus file on stable.
//! Each function takes untrusted bytes and panics when a property does not hold.

use std::collections::BTreeSet;
use std::fmt::Debug;

use axum::http::StatusCode;
use kiln_images::protocol::{
    CommandResult, Discover, DiscoverReply, HardwareInventory, Heartbeat, HeartbeatReply, Progress,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use kiln_engine::wire::{HostCreate, ImageIn};
use kiln_http::http_util::parse_body;
use kiln_http::import::translate;
use kiln_kube::bmh::BareMetalHost;

/// `body` as the agent API reads it into `T`: bad JSON is a 400, JSON of the wrong shape a 422, and what is accepted
/// is stored as JSON that reads back to the same value.
fn agent_body<T: DeserializeOwned + Serialize + PartialEq + Debug>(body: &[u8]) {
    match parse_body::<T>(body) {
        Ok(v) => {
            let stored = serde_json::to_value(&v).expect("an accepted body serializes for the store");
            let back: T = serde_json::from_value(stored.clone()).expect("a stored body reads back");
            assert_eq!(back, v);
            assert_eq!(serde_json::to_value(&back).expect("serializes"), stored);
        }
        Err(e) => {
            let is_json = serde_json::from_slice::<Value>(body).is_ok();
            let want = if is_json {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            assert_eq!(e.status, want, "{}", e.error);
        }
    }
}

/// A request body on the agent API (`/agent/v1/*`), read as each endpoint reads it, and a heartbeat reply as the
/// agent reads it: see `agent_body` for the properties.
pub fn agent_api(body: &[u8]) {
    agent_body::<Heartbeat>(body);
    agent_body::<HardwareInventory>(body);
    agent_body::<Progress>(body);
    agent_body::<CommandResult>(body);
    agent_body::<HeartbeatReply>(body);
    agent_body::<Discover>(body);
    agent_body::<DiscoverReply>(body);
}

/// A `kiln import` file (multi-document YAML). Each BareMetalHost document that reads as the operator's CRD type
/// survives serialization unchanged. A translated file gives one host per BareMetalHost, with distinct names, boot
/// MACs and BMC addresses, trimmed non-empty credentials, a known boot mode, and request bodies that the REST API's
/// own types read back; a refused one names its document and field.
pub fn import_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = serde_saphyr::from_multiple::<Value>(text) else {
        return;
    };
    let bmh_docs: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "BareMetalHost").collect();
    for d in &bmh_docs {
        if let Ok(bmh) = serde_json::from_value::<BareMetalHost>((*d).clone()) {
            let value = serde_json::to_value(&bmh).expect("a BareMetalHost serializes");
            let back: BareMetalHost = serde_json::from_value(value).expect("a serialized BareMetalHost reads back");
            assert_eq!(back.spec, bmh.spec);
            assert_eq!(back.metadata, bmh.metadata);
        }
    }
    let hosts = match translate(&docs) {
        Ok(hosts) => hosts,
        Err(e) => {
            assert!(e.doc.starts_with("BareMetalHost "), "{e}");
            assert!(!e.field.is_empty() && !e.message.is_empty(), "{e}");
            return;
        }
    };
    assert_eq!(hosts.len(), bmh_docs.len());
    let (mut names, mut macs, mut bmcs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for h in &hosts {
        assert!(!h.name.is_empty());
        assert_eq!(h.enroll.name, h.name);
        assert!(names.insert(h.name.clone()), "two hosts named {}", h.name);
        if let Some(mac) = &h.enroll.boot_mac {
            assert!(macs.insert(mac.to_ascii_lowercase()), "two hosts boot from {mac}");
        }
        if let Some(bmc) = &h.enroll.bmc {
            assert!(
                bmcs.insert(bmc.address.clone()),
                "two hosts share the BMC {}",
                bmc.address
            );
            for (what, v) in [("username", bmc.username.as_str()), ("password", bmc.password.expose())] {
                assert!(
                    !v.is_empty() && v.trim() == v,
                    "{}: {what} is empty or untrimmed",
                    h.doc
                );
            }
        }
        if let Some(mode) = &h.enroll.boot_mode {
            assert!(mode == "uefi" || mode == "legacy", "boot mode {mode:?}");
        }
        let enroll = serde_json::to_value(&h.enroll).expect("an enroll body serializes");
        let read = serde_json::from_value::<HostCreate>(enroll.clone())
            .unwrap_or_else(|e| panic!("{}: the API refuses the enroll body it was given: {e}", h.doc));
        assert_eq!(serde_json::to_value(&read).expect("serializes"), enroll);
        if let Some(i) = &h.image {
            let body = serde_json::to_value(i).expect("an image body serializes");
            let read = serde_json::from_value::<ImageIn>(body.clone())
                .unwrap_or_else(|e| panic!("{}: the API refuses the image body it was given: {e}", h.doc));
            assert_eq!(serde_json::to_value(&read).expect("serializes"), body);
        }
    }
}
