//! Property checks over the parsers that face the network, shared by the libFuzzer targets in `fuzz/` and the
//! `fuzz_corpus` test that replays every corpus file on stable. Each function takes untrusted bytes and panics when
//! a property does not hold; returning means the input was handled correctly (refused or served).

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Component, Path};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

use crate::MacAddr;
use crate::config::{BootConfig, DhcpConfig, DhcpMode, SubnetConfig};
use crate::dhcp::decide::{self, Ctx, Decision};
use crate::dhcp::leases::{LeaseState, LeaseTable};
use crate::dhcp::server::parse_request;
use crate::lookup::{BootAction, BootHost};
use crate::tftp::{Files, check_path, packet, resolve_in_root};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const NOW: u64 = 1_700_000_000;

/// The subnets of the check (and of the decision table tests): our own interface's, and one behind a relay (matched
/// on `giaddr`).
pub(crate) fn dhcp_config(mode: DhcpMode, discovery: bool) -> DhcpConfig {
    DhcpConfig {
        mode,
        interface: "kiln0".into(),
        discovery,
        subnets: vec![
            SubnetConfig {
                network: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 24,
                range_start: Ipv4Addr::new(10, 0, 0, 100),
                range_end: Ipv4Addr::new(10, 0, 0, 199),
                router: Some(SERVER),
                dns: vec![SERVER],
                domain: Some("lab.test".into()),
                mtu: Some(1500),
            },
            SubnetConfig {
                network: Ipv4Addr::new(10, 5, 0, 0),
                prefix_len: 24,
                range_start: Ipv4Addr::new(10, 5, 0, 10),
                range_end: Ipv4Addr::new(10, 5, 0, 20),
                router: None,
                dns: vec![],
                domain: None,
                mtu: None,
            },
        ],
        ..DhcpConfig::default()
    }
}

/// What the inventory says about the client, chosen from its MAC so that every answer of `HostLookup` is reached.
fn host_for(mac: MacAddr) -> Option<BootHost> {
    let last = mac.octets()[5];
    let ipv4 = match last % 3 {
        0 => None,
        1 => Some(Ipv4Addr::new(10, 0, 0, 50)),
        _ => Some(Ipv4Addr::new(10, 5, 0, 60)),
    };
    match last % 4 {
        0 => None,
        1 => Some(BootHost {
            ipv4,
            hostname: Some("node-1".into()),
            action: BootAction::Nothing,
        }),
        _ => Some(BootHost {
            ipv4,
            hostname: Some("node-1".into()),
            action: BootAction::LocalDisk,
        }),
    }
}

/// One received DHCP datagram, as the server loop handles it: [`parse_request`], then the full- and proxy-mode
/// decisions. Checks that a decoded request encodes and decodes back to itself, and that every reply is a
/// well-formed answer to that request (same xid and chaddr, a BOOTREPLY with our server identifier, an address
/// from the right subnet or none in proxy mode) that encodes and decodes again.
pub fn dhcp_datagram(data: &[u8]) {
    let Some((req, mac)) = parse_request(data) else {
        return;
    };
    assert_eq!(req.opcode(), Opcode::BootRequest);
    assert_eq!(MacAddr::from_chaddr(req.chaddr()), Some(mac));
    // dhcproto drops empty options (an empty root path, say) when it encodes, so the first round trip may lose
    // those; it keeps every other field and option as decoded, and a second round trip changes nothing.
    let encoded = req.to_vec().expect("a decoded request encodes");
    let again = Message::from_bytes(&encoded).expect("an encoded request decodes");
    let fields = |m: &Message| {
        (
            m.xid(),
            m.flags(),
            m.ciaddr(),
            m.giaddr(),
            m.chaddr().to_vec(),
            m.fname().map(<[u8]>::to_vec),
        )
    };
    assert_eq!(
        fields(&again),
        fields(&req),
        "decode(encode(request)) changes its fixed fields"
    );
    for (code, opt) in again.opts().iter() {
        assert_eq!(
            req.opts().get(*code),
            Some(opt),
            "decode(encode(request)) changes option {code:?}"
        );
    }
    assert_eq!(again.opts().msg_type(), req.opts().msg_type());
    let twice = Message::from_bytes(&again.to_vec().expect("encodes")).expect("decodes");
    assert_eq!(twice, again, "a second round trip changes the request");

    let boot = BootConfig::with_base("http://10.0.0.1:8080/".parse().expect("a URL"));
    let host = host_for(mac);
    for discovery in [false, true] {
        let dhcp = dhcp_config(DhcpMode::Full, discovery);
        let ctx = Ctx {
            dhcp: &dhcp,
            boot: &boot,
            server: SERVER,
            now: NOW,
        };
        let mut table = LeaseTable::default();
        let d = decide::full(&ctx, &mut table, &req, mac, host.as_ref());
        check_decision(&ctx, &req, &d, false, false);
        for lease in &d.journal {
            assert_eq!(lease.mac, mac, "journaled a lease for another MAC");
            assert_eq!(table.get(mac).is_some(), matches!(lease.state, LeaseState::Bound));
        }
        // A second identical request (a client retransmitting) must not panic on the state the first one left.
        let d2 = decide::full(&ctx, &mut table, &req, mac, host.as_ref());
        check_decision(&ctx, &req, &d2, false, false);

        let dhcp = dhcp_config(DhcpMode::Proxy, discovery);
        let ctx = Ctx { dhcp: &dhcp, ..ctx };
        for on_4011 in [false, true] {
            let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 4011);
            let d = decide::proxy(&ctx, &req, mac, host.as_ref(), on_4011, src);
            check_decision(&ctx, &req, &d, true, on_4011);
            assert!(d.journal.is_empty(), "proxy mode journals no lease");
        }
    }
}

fn check_decision(ctx: &Ctx<'_>, req: &Message, d: &Decision, proxy: bool, on_4011: bool) {
    let Some((reply, to)) = &d.reply else {
        return;
    };
    assert_eq!(reply.opcode(), Opcode::BootReply);
    assert_eq!(reply.xid(), req.xid());
    let hlen = usize::from(req.hlen().min(16));
    assert_eq!(&reply.chaddr()[..hlen], &req.chaddr()[..hlen]);
    let kind = reply.opts().msg_type().expect("a reply has a message type");
    assert!(
        matches!(kind, MessageType::Offer | MessageType::Ack | MessageType::Nak),
        "reply of type {kind:?}"
    );
    assert_eq!(
        reply.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(ctx.server))
    );
    let yiaddr = reply.yiaddr();
    if proxy || kind == MessageType::Nak {
        assert!(yiaddr.is_unspecified(), "{kind:?} hands out {yiaddr}");
    } else if !yiaddr.is_unspecified() {
        let subnet = decide::subnet_for(ctx, req).expect("an address is only offered on a known subnet");
        assert!(subnet.contains(yiaddr), "{yiaddr} is outside the request's subnet");
    }
    if !req.giaddr().is_unspecified() && !on_4011 {
        assert_eq!(
            *to,
            SocketAddrV4::new(req.giaddr(), ctx.dhcp.server_port),
            "a relayed reply goes to the relay"
        );
    }
    let bytes = reply.to_vec().expect("a reply encodes");
    let back = Message::from_bytes(&bytes).expect("an encoded reply decodes");
    assert_eq!(back.xid(), reply.xid());
    assert_eq!(back.opts().msg_type(), Some(kind));
    assert_eq!(back.yiaddr(), yiaddr);
}

/// Lays out the TFTP root that [`tftp_request`] serves from: boot files at the top and in a directory, a symlink
/// that stays inside the root and one that leaves it.
///
/// # Errors
/// Any error creating the files.
pub fn tftp_root(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("undionly.kpxe"), b"undionly")?;
    std::fs::write(dir.join("ipxe.efi"), vec![0x4d; 3000])?;
    std::fs::create_dir_all(dir.join("x86"))?;
    std::fs::write(dir.join("x86/snponly.efi"), b"snponly")?;
    let link = |to: &str, at: &str| match std::os::unix::fs::symlink(to, dir.join(at)) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    };
    link("undionly.kpxe", "default.kpxe")?;
    link("/etc", "etc")?;
    link("../..", "up")
}

/// One TFTP request datagram against the root made by [`tftp_root`]: the parser accepts exactly the well-formed
/// RRQ and WRQ framing (opcode, NUL-terminated name and mode, complete option pairs) and keeps negotiated options
/// in range; whatever name a client sends, a read is served only from a regular file inside the root, with
/// exactly its bytes (netascii: converted); writes are always refused; and refused or completed transfers give
/// their slot back (more requests than the per-client limit, one after the other, are never turned away as
/// "too many transfers").
pub fn tftp_request(root: &Path, datagram: &[u8]) {
    let Ok(request) = packet::parse_request(datagram) else {
        return;
    };
    let o = request.options;
    assert!(
        o.blksize.is_none_or(|b| (8..=packet::MAX_BLKSIZE).contains(&b)),
        "{o:?}"
    );
    assert!(
        o.windowsize.is_none_or(|w| (1..=packet::MAX_WINDOW).contains(&w)),
        "{o:?}"
    );
    assert!(o.timeout.is_none_or(|t| t >= 1), "{o:?}");
    let name = request.filename;
    if let Ok(path) = check_path(name) {
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "{name:?} accepted with a non-normal component"
        );
    }
    let canonical_root = std::fs::canonicalize(root).expect("the TFTP root exists");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let files = Files::new(root).expect("the TFTP root is a directory");
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 123));
        if request.kind == packet::Kind::Write || request.mode == packet::Mode::Mail {
            let refused = files.open(client, &request).await;
            assert!(
                matches!(refused, Err(ref r) if *r == packet::Refusal::READ_ONLY),
                "a write was not refused"
            );
            return;
        }
        let resolved = resolve_in_root(&canonical_root, name).await;
        if let Ok(real) = &resolved {
            assert!(
                real.starts_with(&canonical_root),
                "{name:?} resolved outside the root to {real:?}"
            );
        }
        // One more than the per-client limit, each transfer finished before the next starts.
        for _ in 0..10 {
            match files.open(client, &request).await {
                Ok(mut opened) => {
                    let real = resolved.as_ref().expect("a served file resolves inside the root");
                    let mut want = std::fs::read(real).expect("the served file is readable");
                    if request.mode == packet::Mode::Netascii {
                        want = packet::to_netascii(&want);
                    }
                    let len = opened.source.len();
                    let got = opened
                        .source
                        .read_at(0, usize::try_from(len).expect("a small file"))
                        .await
                        .expect("the transfer reads");
                    assert_eq!(got, &want[..], "served bytes of {name:?}");
                }
                Err(r) if r == packet::Refusal::BUSY => panic!("{name:?}: transfer slots leaked"),
                Err(_) => assert!(
                    resolved.as_ref().is_err() || resolved.as_ref().is_ok_and(|p| !p.is_file()),
                    "{name:?} refused although it names a file inside the root"
                ),
            }
        }
    });
}
