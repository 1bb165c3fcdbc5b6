//! Table-style tests of the pure DHCP decisions.

use dhcproto::v4::Architecture;

use super::*;
use crate::config::DhcpMode;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn dhcp_cfg() -> DhcpConfig {
    crate::fuzzing::dhcp_config(DhcpMode::Full, DhcpConfig::default().discovery)
}

fn boot_cfg() -> BootConfig {
    BootConfig::with_base("http://10.0.0.1:8080".parse().unwrap())
}

fn mac(n: u8) -> MacAddr {
    MacAddr::new([0x52, 0x54, 0, 0, 0, n])
}

fn req(kind: MessageType, m: MacAddr, extra: Vec<DhcpOption>) -> Message {
    let mut r = Message::new_with_id(
        0x1234,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &m.octets(),
    );
    r.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in extra {
        r.opts_mut().insert(o);
    }
    r
}

fn pxe_bios() -> Vec<DhcpOption> {
    vec![
        DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
        DhcpOption::ClientSystemArchitecture(Architecture::from(0)),
    ]
}

fn host(ip: Option<Ipv4Addr>, action: BootAction) -> BootHost {
    BootHost {
        ipv4: ip,
        hostname: Some("node1".into()),
        action,
    }
}

fn ctx<'a>(d: &'a DhcpConfig, b: &'a BootConfig, now: u64) -> Ctx<'a> {
    Ctx {
        dhcp: d,
        boot: b,
        server: SERVER,
        now,
    }
}

#[test]
fn unknown_mac_is_ignored_and_reported() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let out = full(
        &ctx(&d, &b, 100),
        &mut t,
        &req(MessageType::Discover, mac(9), pxe_bios()),
        mac(9),
        None,
    );
    assert!(out.reply.is_none());
    assert_eq!(out.events, vec![BootEvent::UnknownMacSeen { arch: Some(0) }]);
    assert!(t.is_empty());
}

#[test]
fn reserved_bios_client_full_dora() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let h = host(Some(Ipv4Addr::new(10, 0, 0, 42)), BootAction::LocalDisk);
    let c = ctx(&d, &b, 100);
    let out = full(
        &c,
        &mut t,
        &req(MessageType::Discover, mac(1), pxe_bios()),
        mac(1),
        Some(&h),
    );
    let (offer, to) = out.reply.unwrap();
    // no broadcast flag: unicast to the offered address (after an ARP entry), RFC 2131 §4.1
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 42), 68));
    assert!(needs_arp(&req(MessageType::Discover, mac(1), vec![]), &offer, &to));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 42));
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(offer.fname_str().unwrap().unwrap(), "undionly.kpxe");
    assert_eq!(offer.xid(), 0x1234);
    assert!(matches!(offer.opts().get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &vec![SERVER]));
    assert!(matches!(offer.opts().get(OptionCode::Hostname), Some(DhcpOption::Hostname(h)) if h == "node1"));
    assert!(out.journal.is_empty());

    let mut r = req(MessageType::Request, mac(1), pxe_bios());
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    r.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 42)));
    let out = full(&c, &mut t, &r, mac(1), Some(&h));
    let (ack, _) = out.reply.unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(out.journal.len(), 1);
    // with the broadcast flag: broadcast
    let mut r = req(MessageType::Discover, mac(1), pxe_bios());
    r.set_flags(Flags::default().set_broadcast());
    let (_, to) = full(&c, &mut t, &r, mac(1), Some(&h)).reply.unwrap();
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(t.get(mac(1)).unwrap().state, LeaseState::Bound);
    assert_eq!(t.get(mac(1)).unwrap().expires, 100 + 3600);
}

#[test]
fn dynamic_client_gets_range_address_and_ipxe_gets_script_url() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let h = host(None, BootAction::LocalDisk);
    let opts = [pxe_bios(), vec![DhcpOption::UserClass(b"iPXE".to_vec())]].concat();
    let out = full(
        &ctx(&d, &b, 0),
        &mut t,
        &req(MessageType::Discover, mac(2), opts),
        mac(2),
        Some(&h),
    );
    let (offer, _) = out.reply.unwrap();
    assert!(d.subnets[0].in_range(offer.yiaddr()));
    assert_eq!(
        offer.fname_str().unwrap().unwrap(),
        "http://10.0.0.1:8080/boot/52:54:00:00:00:02.ipxe"
    );
}

#[test]
fn nothing_action_leases_without_boot_file() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let h = host(None, BootAction::Nothing);
    let out = full(
        &ctx(&d, &b, 0),
        &mut t,
        &req(MessageType::Discover, mac(3), pxe_bios()),
        mac(3),
        Some(&h),
    );
    let (offer, _) = out.reply.unwrap();
    assert!(offer.fname().is_none());
    assert!(!offer.yiaddr().is_unspecified());
}

#[test]
fn request_for_another_server_drops_our_offer_silently() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let h = host(None, BootAction::LocalDisk);
    let c = ctx(&d, &b, 0);
    full(
        &c,
        &mut t,
        &req(MessageType::Discover, mac(4), vec![]),
        mac(4),
        Some(&h),
    );
    assert!(t.get(mac(4)).is_some());
    let r = req(
        MessageType::Request,
        mac(4),
        vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 254)),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 7)),
        ],
    );
    let out = full(&c, &mut t, &r, mac(4), Some(&h));
    assert!(out.reply.is_none());
    assert!(t.get(mac(4)).is_none());
}

#[test]
fn wrong_address_naks_only_known_clients() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let c = ctx(&d, &b, 0);
    let r = req(
        MessageType::Request,
        mac(5),
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 1, 5))],
    );
    // unknown: silence (a NAK would abort PXE on the site's own server)
    assert!(full(&c, &mut t, &r, mac(5), None).reply.is_none());
    // known with a reservation elsewhere: NAK, broadcast
    let h = host(Some(Ipv4Addr::new(10, 0, 0, 50)), BootAction::LocalDisk);
    let (nak, to) = full(&c, &mut t, &r, mac(5), Some(&h)).reply.unwrap();
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(to.ip(), &Ipv4Addr::BROADCAST);
    // init-reboot with the right address: ACK
    let r = req(
        MessageType::Request,
        mac(5),
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50))],
    );
    assert_eq!(
        full(&c, &mut t, &r, mac(5), Some(&h))
            .reply
            .unwrap()
            .0
            .opts()
            .msg_type(),
        Some(MessageType::Ack)
    );
}

#[test]
fn renewal_is_unicast_to_ciaddr_and_relay_goes_to_giaddr() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let c = ctx(&d, &b, 0);
    let h = host(None, BootAction::LocalDisk);
    t.apply(Lease {
        mac: mac(6),
        ip: Ipv4Addr::new(10, 0, 0, 120),
        expires: 1000,
        state: LeaseState::Bound,
    });
    let mut r = req(MessageType::Request, mac(6), vec![]);
    r.set_ciaddr(Ipv4Addr::new(10, 0, 0, 120));
    let (ack, to) = full(&c, &mut t, &r, mac(6), Some(&h)).reply.unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 120), 68));

    let mut r = req(MessageType::Discover, mac(7), vec![]);
    r.set_giaddr(Ipv4Addr::new(10, 5, 0, 1));
    let (offer, to) = full(&c, &mut t, &r, mac(7), Some(&h)).reply.unwrap();
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 5, 0, 1), 67));
    assert!(d.subnets[1].in_range(offer.yiaddr()));
    assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 5, 0, 1));
}

#[test]
fn release_and_decline_update_the_table() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let c = ctx(&d, &b, 0);
    let h = host(None, BootAction::LocalDisk);
    let ip = Ipv4Addr::new(10, 0, 0, 130);
    t.apply(Lease {
        mac: mac(8),
        ip,
        expires: 1000,
        state: LeaseState::Bound,
    });
    let mut r = req(MessageType::Release, mac(8), vec![DhcpOption::ServerIdentifier(SERVER)]);
    r.set_ciaddr(ip);
    let out = full(&c, &mut t, &r, mac(8), Some(&h));
    assert_eq!(out.journal[0].state, LeaseState::Released);
    assert!(t.get(mac(8)).is_none());
    t.apply(Lease {
        mac: mac(8),
        ip,
        expires: 1000,
        state: LeaseState::Bound,
    });
    let r = req(
        MessageType::Decline,
        mac(8),
        vec![DhcpOption::ServerIdentifier(SERVER), DhcpOption::RequestedIpAddress(ip)],
    );
    full(&c, &mut t, &r, mac(8), Some(&h));
    assert!(!t.is_free_for(ip, mac(9), 10));
}

#[test]
fn proxy_answers_pxe_clients_only_without_address() {
    let (mut d, b) = (dhcp_cfg(), boot_cfg());
    d.mode = DhcpMode::Proxy;
    let c = ctx(&d, &b, 0);
    let h = host(None, BootAction::LocalDisk);
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    assert!(
        proxy(
            &c,
            &req(MessageType::Discover, mac(1), vec![]),
            mac(1),
            Some(&h),
            false,
            src
        )
        .reply
        .is_none()
    );
    assert!(
        proxy(
            &c,
            &req(MessageType::Discover, mac(1), pxe_bios()),
            mac(1),
            None,
            false,
            src
        )
        .reply
        .is_none()
    );
    let mut efi = pxe_bios();
    efi[1] = DhcpOption::ClientSystemArchitecture(Architecture::from(7));
    let (offer, to) = proxy(
        &c,
        &req(MessageType::Discover, mac(1), efi),
        mac(1),
        Some(&h),
        false,
        src,
    )
    .reply
    .unwrap();
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.fname_str().unwrap().unwrap(), "ipxe.efi");
    assert!(
        matches!(offer.opts().get(OptionCode::VendorExtensions), Some(DhcpOption::VendorExtensions(v)) if v == &PXE_VENDOR_OPTS.to_vec())
    );
    assert!(
        matches!(offer.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(v)) if v == b"PXEClient")
    );
    // port 4011 request from a client that has its address: ACK back to it
    let mut r = req(MessageType::Request, mac(1), pxe_bios());
    r.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 68);
    let (ack, to) = proxy(&c, &r, mac(1), Some(&h), true, from).reply.unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(to, from);
    // a DHCPREQUEST on port 67 is the site server's business
    assert!(proxy(&c, &r, mac(1), Some(&h), false, src).reply.is_none());
}

#[test]
fn http_boot_client_gets_url_and_option_60_echo() {
    let (d, b) = (dhcp_cfg(), boot_cfg());
    let mut t = LeaseTable::default();
    let h = host(None, BootAction::LocalDisk);
    let opts = vec![
        DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()),
        DhcpOption::ClientSystemArchitecture(Architecture::from(16)),
    ];
    let (offer, _) = full(
        &ctx(&d, &b, 0),
        &mut t,
        &req(MessageType::Discover, mac(1), opts),
        mac(1),
        Some(&h),
    )
    .reply
    .unwrap();
    assert_eq!(
        offer.fname_str().unwrap().unwrap(),
        "http://10.0.0.1:8080/boot/files/ipxe.efi"
    );
    assert!(
        matches!(offer.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(v)) if v == b"HTTPClient")
    );
}

mod props {
    use proptest::prelude::*;

    use super::*;

    fn addr() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            Just(Ipv4Addr::UNSPECIFIED),
            (100u8..=110).prop_map(|n| Ipv4Addr::new(10, 0, 0, n)),
            (10u8..=12).prop_map(|n| Ipv4Addr::new(10, 5, 0, n)),
            Just(SERVER),
            any::<u32>().prop_map(Ipv4Addr::from),
        ]
    }

    fn kind() -> impl Strategy<Value = MessageType> {
        (1u8..=10).prop_map(MessageType::from)
    }

    #[derive(Debug, Clone)]
    struct Req {
        kind: MessageType,
        mac: u8,
        ciaddr: Ipv4Addr,
        giaddr: Ipv4Addr,
        requested: Option<Ipv4Addr>,
        sid: Option<Ipv4Addr>,
        class: Option<Vec<u8>>,
        arch: Option<u16>,
        ipxe: bool,
    }

    fn req_strategy() -> impl Strategy<Value = Req> {
        (
            kind(),
            0u8..6,
            addr(),
            prop_oneof![3 => Just(Ipv4Addr::UNSPECIFIED), 1 => addr()],
            proptest::option::of(addr()),
            proptest::option::of(prop_oneof![Just(SERVER), addr()]),
            proptest::option::of(prop_oneof![
                Just(b"PXEClient:Arch:00000".to_vec()),
                Just(b"HTTPClient".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..20)
            ]),
            proptest::option::of(any::<u16>()),
            any::<bool>(),
        )
            .prop_map(|(kind, mac, ciaddr, giaddr, requested, sid, class, arch, ipxe)| Req {
                kind,
                mac,
                ciaddr,
                giaddr,
                requested,
                sid,
                class,
                arch,
                ipxe,
            })
    }

    fn build(r: &Req) -> Message {
        let mut opts = vec![];
        if let Some(ip) = r.requested {
            opts.push(DhcpOption::RequestedIpAddress(ip));
        }
        if let Some(ip) = r.sid {
            opts.push(DhcpOption::ServerIdentifier(ip));
        }
        if let Some(c) = &r.class {
            opts.push(DhcpOption::ClassIdentifier(c.clone()));
        }
        if let Some(a) = r.arch {
            opts.push(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        }
        if r.ipxe {
            opts.push(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        let mut m = req(r.kind, mac(r.mac), opts);
        m.set_ciaddr(r.ciaddr);
        m.set_giaddr(r.giaddr);
        m
    }

    proptest! {
        /// Whatever clients send, in whatever order: no panic, no address bound to two MACs at once, every reply is a
        /// BOOTREPLY with our server identifier, and unknown MACs (mac 0) never get a reply in full mode.
        #[test]
        fn full_mode_invariants(reqs in proptest::collection::vec(req_strategy(), 1..60)) {
            let (d, b) = (dhcp_cfg(), boot_cfg());
            let mut t = LeaseTable::default();
            for (i, r) in reqs.iter().enumerate() {
                let c = ctx(&d, &b, 1000 + i as u64);
                let m = build(r);
                let host = (r.mac != 0).then(|| host((r.mac == 1).then_some(Ipv4Addr::new(10, 0, 0, 42)), BootAction::LocalDisk));
                let out = full(&c, &mut t, &m, mac(r.mac), host.as_ref());
                if let Some((reply, _)) = &out.reply {
                    prop_assert_eq!(reply.opcode(), Opcode::BootReply);
                    prop_assert!(matches!(reply.opts().get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(s)) if *s == SERVER));
                    prop_assert!(r.mac != 0, "unknown MAC got {:?}", reply.opts().msg_type());
                }
                let mut seen = std::collections::HashMap::new();
                for l in t.iter().filter(|l| l.state == LeaseState::Bound && l.expires > c.now) {
                    if let Some(other) = seen.insert(l.ip, l.mac) {
                        prop_assert!(other == l.mac, "{} bound to {} and {}", l.ip, other, l.mac);
                    }
                }
                let _ = proxy(&c, &m, mac(r.mac), host.as_ref(), i % 2 == 0, SocketAddrV4::new(r.ciaddr, 68));
            }
        }
    }
}
