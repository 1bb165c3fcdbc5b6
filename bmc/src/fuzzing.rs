//! Property checks over the parsers that take a BMC's answers or a user's BMC address, shared by the libFuzzer
//! targets in `fuzz/` and the `fuzz_corpus` test that replays every corpus file on stable. Each function takes
//! untrusted bytes and panics when a property does not hold.

use serde::de::DeserializeOwned;

use crate::address::{AddressPart, BmcAddress};
use crate::ipmi::crypto::{CipherSuite, SessionKeys, constant_time_eq};
use crate::ipmi::packet::{
    self, OpenSessionRequest, OpenSessionResponse, Packet, Rakp1, Rakp2, Rakp3, Rakp4, Request, Response,
};
use crate::redfish::model::{
    ActionInfo, Collection, ComputerSystem, Drive, ErrorBody, EthernetInterface, Manager, OdataId, Processor,
    ServiceRoot, SessionService, SimpleStorage, Storage, Task, VirtualMedia,
};
use crate::redfish::path_on_origin;

/// A BMC address as a user or a manifest gives it: an address that parses prints as a form that parses to the
/// same value (and the same identity, and survives serde as a string); a `user:pass@` part is always refused and
/// never repeated in the error.
pub fn bmc_address(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = input.parse::<BmcAddress>();
    // The credentials check runs first on `scheme://authority`: with '@' in the authority the address is refused
    // for its credentials, and the address in the error no longer carries them.
    let trimmed = input.trim();
    if let Some((_, rest)) = trimmed.split_once("://") {
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if authority.contains('@') {
            let e = parsed.expect_err("an address with credentials parsed");
            assert_eq!(e.part, AddressPart::Credentials, "{input:?}: {e}");
            // What the error shows in place of the user information, up to the authority's last '@': only "***".
            let shown = &e.address[e.address.find("://").map_or(0, |i| i + 3)..];
            let shown_authority = &shown[..shown.find(['/', '?', '#']).unwrap_or(shown.len())];
            let shown_user = shown_authority.rfind('@').map(|i| &shown_authority[..i]);
            assert_eq!(
                shown_user,
                Some("***"),
                "{input:?}: the error shows the credentials: {e}"
            );
            return;
        }
    }
    let Ok(a) = parsed else {
        return;
    };
    let shown = a.to_string();
    let again: BmcAddress = shown
        .parse()
        .unwrap_or_else(|e| panic!("{input:?} parsed, but its display form {shown:?} does not: {e}"));
    assert_eq!(again, a, "{input:?} -> {shown:?} parses to another address");
    assert_eq!(again.to_string(), shown);
    assert_eq!(again.identity(), a.identity());
    let json = serde_json::to_string(&a).expect("an address serializes");
    let back: BmcAddress = serde_json::from_str(&json).expect("a serialized address deserializes");
    assert_eq!(back, a);
    if let BmcAddress::Ipmi(ipmi) = &a {
        assert_ne!(ipmi.port, 0);
    }
}

/// Origins the Redfish check resolves BMC-supplied links against.
const ORIGINS: [&str; 3] = ["https://bmc.example:8443", "http://[fd00::1]:8000", "https://10.0.0.5"];

/// A link as the client follows it: refused, or a path on the BMC's origin. The URL kiln then requests
/// (origin + path) must be on that same origin: session tokens and passwords never go elsewhere.
fn check_link(link: &str) {
    for origin in ORIGINS {
        let Ok(path) = path_on_origin(origin, link) else {
            continue;
        };
        assert!(path.starts_with('/'), "{link:?} on {origin} gave the path {path:?}");
        let ours = reqwest::Url::parse(origin).expect("the origins are URLs");
        let url = reqwest::Url::parse(&format!("{origin}{path}"))
            .unwrap_or_else(|e| panic!("{link:?} gave {path:?}, which makes no URL on {origin}: {e}"));
        assert_eq!(url.origin(), ours.origin(), "{link:?} leads off {origin} to {url}");
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

fn ids(links: &Option<Vec<OdataId>>) -> impl Iterator<Item = &str> {
    links.iter().flatten().map(|l| l.id.as_str())
}

/// A Redfish response body, decoded as each resource the driver reads and as an error body: decoding never
/// panics, and every link the driver could follow from it (members, actions, managers, drives, virtual media)
/// either is refused or stays on the BMC's origin.
pub fn redfish_body(body: &[u8]) {
    let mut links: Vec<String> = Vec::new();
    if let Some(root) = decode::<ServiceRoot>(body) {
        links.extend(
            [&root.systems, &root.managers, &root.session_service]
                .into_iter()
                .flatten()
                .map(|l| l.id.clone()),
        );
        links.extend(root.links.and_then(|l| l.sessions).map(|l| l.id));
    }
    if let Some(s) = decode::<SessionService>(body) {
        links.extend(s.sessions.map(|l| l.id));
    }
    if let Some(c) = decode::<Collection>(body) {
        links.extend(c.member_ids());
    }
    if let Some(sys) = decode::<ComputerSystem>(body) {
        links.extend(sys.odata_id.clone());
        if let Some(reset) = sys.actions.as_ref().and_then(|a| a.reset.as_ref()) {
            links.extend(reset.target.clone());
            links.extend(reset.action_info.clone());
        }
        links.extend(
            [
                &sys.virtual_media,
                &sys.ethernet_interfaces,
                &sys.storage,
                &sys.simple_storage,
                &sys.processors,
            ]
            .into_iter()
            .flatten()
            .map(|l| l.id.clone()),
        );
        if let Some(l) = &sys.links {
            links.extend(ids(&l.managed_by).map(str::to_owned));
        }
        // The inventory conversion of the memory size saturates rather than wrapping or panicking.
        if let Some(gib) = sys.memory_summary.and_then(|m| m.total_system_memory_gib) {
            let _ = (gib * 1024.0).round() as u64;
        }
    }
    if let Some(info) = decode::<ActionInfo>(body) {
        let _ = info
            .parameters
            .into_iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("ResetType"));
    }
    if let Some(m) = decode::<Manager>(body) {
        links.extend(m.virtual_media.map(|l| l.id));
    }
    if let Some(vm) = decode::<VirtualMedia>(body) {
        let _ = (vm.is_cd(), vm.is_inserted());
        if let Some(a) = &vm.actions {
            links.extend(
                [&a.insert, &a.eject]
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.target.clone()),
            );
        }
    }
    if let Some(s) = decode::<Storage>(body) {
        links.extend(ids(&s.drives).map(str::to_owned));
    }
    let _ = decode::<EthernetInterface>(body);
    let _ = decode::<Processor>(body);
    let _ = decode::<Drive>(body);
    let _ = decode::<SimpleStorage>(body);
    let _ = decode::<Task>(body);
    if let Some(e) = decode::<ErrorBody>(body) {
        let _ = e.summary();
    }
    // The same body as a session's `@odata.id` or a task's `Location` header.
    if let Ok(text) = std::str::from_utf8(body) {
        links.push(text.to_owned());
    }
    for link in &links {
        check_link(link);
    }
}

/// The session integrity key of the check: a fixed value, so that a corpus file can carry a valid AuthCode.
pub const FUZZ_SIK: [u8; 20] = [0x5a; 20];

/// The first byte picks the session's cipher suite and so the AuthCode length (none, suite 3's 12 bytes or suite
/// 17's 16), the rest is an RMCP/RMCP+ datagram from a BMC. Decoding never panics; an integrity trailer lies inside
/// the datagram; what decodes re-encodes to a packet that decodes to the same thing; a payload that decrypts is
/// exactly what encrypting the plaintext under its IV gives; and every session-setup and IPMI message decoded from
/// a payload survives encode and decode unchanged.
pub fn ipmi_datagram(data: &[u8]) {
    let Some((&selector, datagram)) = data.split_first() else {
        return;
    };
    let suite = if selector & 1 == 0 {
        CipherSuite::Suite3
    } else {
        CipherSuite::Suite17
    };
    let code_len = if selector & 2 == 0 { 0 } else { suite.integrity_len() };
    match packet::decode(datagram, code_len) {
        Err(_) => {}
        Ok(Packet::V15 {
            session_seq,
            session_id,
            message,
        }) => {
            if session_seq == 0 && session_id == 0 {
                let again = packet::decode(&packet::encode_v15(&message), 0).expect("an encoded v1.5 packet decodes");
                assert_eq!(
                    again,
                    Packet::V15 {
                        session_seq,
                        session_id,
                        message: message.clone(),
                    }
                );
            }
            check_messages(&message);
        }
        Ok(Packet::V20(p)) => {
            assert_eq!(p.authenticated, p.integrity.is_some());
            if let Some((range, code)) = &p.integrity {
                assert_eq!(code.len(), code_len);
                assert_eq!(range.start, 4);
                assert_eq!(
                    range.end + code.len(),
                    datagram.len(),
                    "the AuthCode is not the datagram's tail"
                );
                let keys = SessionKeys::derive(suite, &FUZZ_SIK);
                let _ = constant_time_eq(&keys.integrity_code(&datagram[range.clone()]), code);
            }
            let code = p.integrity.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
            let auth = |_: &[u8]| code.clone();
            let encoded = packet::encode_v20(
                p.payload_type,
                p.encrypted,
                p.session_id,
                p.session_seq,
                &p.payload,
                p.authenticated.then_some(&auth as packet::AuthCodeFn<'_>),
            );
            let Ok(Packet::V20(again)) = packet::decode(&encoded, code_len) else {
                panic!("a re-encoded RMCP+ packet does not decode");
            };
            assert_eq!(
                (again.payload_type, again.encrypted, again.authenticated),
                (p.payload_type, p.encrypted, p.authenticated)
            );
            assert_eq!((again.session_id, again.session_seq), (p.session_id, p.session_seq));
            assert_eq!(again.payload, p.payload);
            assert_eq!(again.integrity.map(|(_, c)| c), p.integrity.map(|(_, c)| c));
            if p.encrypted {
                let keys = SessionKeys::derive(suite, &FUZZ_SIK);
                if let Ok(plain) = keys.decrypt(&p.payload) {
                    let iv: [u8; 16] = p.payload[..16].try_into().expect("decrypt checked the IV");
                    assert_eq!(
                        keys.encrypt(iv, &plain),
                        p.payload,
                        "decrypt accepted a non-canonical padding"
                    );
                    check_messages(&plain);
                }
            }
            check_messages(&p.payload);
        }
    }
}

/// Every message type that can sit in a payload, decoded from `b`; what decodes encodes back to an equal value.
fn check_messages(b: &[u8]) {
    fn round_trip<T: PartialEq + std::fmt::Debug>(
        decoded: Result<T, packet::DecodeError>,
        encode: fn(&T) -> Vec<u8>,
        decode: fn(&[u8]) -> Result<T, packet::DecodeError>,
    ) {
        if let Ok(v) = decoded {
            let again = decode(&encode(&v)).unwrap_or_else(|e| panic!("{v:?} encodes to bytes that fail: {e}"));
            assert_eq!(again, v);
        }
    }
    round_trip(Response::decode(b), Response::encode, Response::decode);
    round_trip(Request::decode(b), Request::encode, Request::decode);
    round_trip(
        OpenSessionRequest::decode(b),
        OpenSessionRequest::encode,
        OpenSessionRequest::decode,
    );
    round_trip(
        OpenSessionResponse::decode(b),
        OpenSessionResponse::encode,
        OpenSessionResponse::decode,
    );
    round_trip(Rakp1::decode(b), Rakp1::encode, Rakp1::decode);
    round_trip(Rakp2::decode(b), Rakp2::encode, Rakp2::decode);
    round_trip(Rakp3::decode(b), Rakp3::encode, Rakp3::decode);
    round_trip(Rakp4::decode(b), Rakp4::encode, Rakp4::decode);
    let _ = packet::parse_cipher_suite_records(b);
}
