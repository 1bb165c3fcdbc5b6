//! Pure DHCP decisions: given a request, what `HostLookup` said, the lease table and `now`, the reply (if any),
//! where it goes, the lease changes to journal and the events to report. No sockets, no clock, no logging.
//!
//! RFC 2131 §4.3 (server behaviour), §4.1 (reply destination), RFC 2132 (options), PXE 2.1 §2.2 (proxyDHCP).

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use crate::MacAddr;
use crate::config::{BootConfig, DhcpConfig, SubnetConfig};
use crate::dhcp::classify::{self, BootFile, Client};
use crate::dhcp::leases::{Lease, LeaseState, LeaseTable, OFFER_HOLD_SECS};
use crate::lookup::{BootAction, BootEvent, BootHost};

/// The inputs that do not change per packet.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// DHCP settings.
    pub dhcp: &'a DhcpConfig,
    /// Boot file settings.
    pub boot: &'a BootConfig,
    /// Our address: server identifier and next-server.
    pub server: Ipv4Addr,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// What to do with one request.
#[derive(Debug, Default)]
pub struct Decision {
    /// Reply and destination, if any.
    pub reply: Option<(Message, SocketAddrV4)>,
    /// Lease changes to append to the journal (already applied to the table).
    pub journal: Vec<Lease>,
    /// Events for `HostLookup::record`.
    pub events: Vec<BootEvent>,
    /// Why, in a word (for the transaction span and counters).
    pub reason: &'static str,
}

impl Decision {
    fn ignore(reason: &'static str) -> Self {
        Self {
            reason,
            ..Self::default()
        }
    }
}

/// Requested address: option 50 (RFC 2131 §4.3.2 SELECTING / INIT-REBOOT), else `ciaddr` (RENEWING / REBINDING).
fn requested_ip(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => Some(req.ciaddr()).filter(|ip| !ip.is_unspecified()),
    }
}

fn server_id(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// The subnet a request belongs to: the relay's (`giaddr`) or our own interface's.
pub fn subnet_for<'a>(ctx: &Ctx<'a>, req: &Message) -> Option<&'a SubnetConfig> {
    let anchor = if req.giaddr().is_unspecified() {
        ctx.server
    } else {
        req.giaddr()
    };
    ctx.dhcp.subnets.iter().find(|s| s.contains(anchor))
}

/// RFC 2131 §4.1: relay → `giaddr`:67; NAK → broadcast; `ciaddr` set → unicast there; broadcast flag set →
/// broadcast; otherwise unicast to `yiaddr` (the socket loop first inserts an ARP entry for it, see
/// [`needs_arp`]).
pub fn destination(req: &Message, kind: MessageType, yiaddr: Ipv4Addr, ctx: &Ctx<'_>) -> SocketAddrV4 {
    if !req.giaddr().is_unspecified() {
        return SocketAddrV4::new(req.giaddr(), ctx.dhcp.server_port);
    }
    if kind == MessageType::Nak {
        return SocketAddrV4::new(Ipv4Addr::BROADCAST, ctx.dhcp.client_port);
    }
    if !req.ciaddr().is_unspecified() {
        return SocketAddrV4::new(req.ciaddr(), ctx.dhcp.client_port);
    }
    if req.flags().broadcast() || yiaddr.is_unspecified() {
        return SocketAddrV4::new(Ipv4Addr::BROADCAST, ctx.dhcp.client_port);
    }
    SocketAddrV4::new(yiaddr, ctx.dhcp.client_port)
}

/// Whether sending `reply` to `to` needs an ARP entry first: a unicast to a client that has no address yet.
pub fn needs_arp(req: &Message, reply: &Message, to: &SocketAddrV4) -> bool {
    req.giaddr().is_unspecified()
        && req.ciaddr().is_unspecified()
        && !reply.yiaddr().is_unspecified()
        && *to.ip() == reply.yiaddr()
}

/// A reply skeleton: BOOTREPLY with the request's xid, flags, giaddr and chaddr, and options 53 and 54.
fn reply_to(req: &Message, kind: MessageType, server: Ipv4Addr) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(if kind == MessageType::Nak && !req.giaddr().is_unspecified() {
            Flags::default().set_broadcast()
        } else {
            req.flags()
        })
        .set_giaddr(req.giaddr())
        .set_chaddr(&req.chaddr()[..usize::from(req.hlen().min(16))]);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

fn add_subnet_opts(m: &mut Message, s: &SubnetConfig, host: Option<&BootHost>) {
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(s.mask()));
    if let Some(r) = s.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !s.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
    }
    if let Some(d) = &s.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(mtu) = s.mtu {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(h) = host.and_then(|h| h.hostname.as_ref()) {
        o.insert(DhcpOption::Hostname(h.clone()));
    }
}

fn add_lease_opts(m: &mut Message, secs: u32) {
    let o = m.opts_mut();
    o.insert(DhcpOption::AddressLeaseTime(secs));
    o.insert(DhcpOption::Renewal(secs / 2));
    o.insert(DhcpOption::Rebinding(secs / 8 * 7));
}

/// The boot file for this request, unless the host is told not to netboot.
fn choose_boot(ctx: &Ctx<'_>, req: &Message, mac: MacAddr, host: Option<&BootHost>) -> (Client, Option<BootFile>) {
    let client = classify::classify(req);
    if host.is_some_and(|h| h.action == BootAction::Nothing) {
        return (client, None);
    }
    (client, classify::boot_file(client, mac, ctx.boot))
}

/// Puts the boot file in `file` and option 67, our address in `siaddr`, and option 60 for HTTP boot.
///
/// iPXE accepts a proxyDHCP answer only with both a non-zero `siaddr` and option 67 (its `dhcp_has_pxeopts`), so
/// both are always set, whether the file is fetched by TFTP or is a URL.
fn add_boot(m: &mut Message, client: Client, file: &BootFile, server: Ipv4Addr) {
    m.set_siaddr(server);
    if file.as_str().len() < 128 {
        m.set_fname_str(file.as_str());
    }
    m.opts_mut()
        .insert(DhcpOption::BootfileName(file.as_str().as_bytes().to_vec()));
    if let Client::Http(_) = client {
        // UEFI 2.x §24.7.3: the offer must carry "HTTPClient" in option 60 for the firmware to accept the URL.
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    }
}

/// Full mode (RFC 2131 §4.3). `host` is what `HostLookup` said about the client's MAC.
pub fn full(ctx: &Ctx<'_>, table: &mut LeaseTable, req: &Message, mac: MacAddr, host: Option<&BootHost>) -> Decision {
    let Some(kind) = req.opts().msg_type() else {
        return Decision::ignore("no message type");
    };
    let owned = host.is_some() || ctx.dhcp.discovery;
    match kind {
        MessageType::Discover => {
            if !owned {
                return Decision {
                    events: vec![BootEvent::UnknownMacSeen {
                        arch: classify::arch_code(req),
                    }],
                    ..Decision::ignore("unknown mac")
                };
            }
            let Some(subnet) = subnet_for(ctx, req) else {
                return Decision::ignore("no subnet");
            };
            let ip = match host.and_then(|h| h.ipv4) {
                Some(r) if subnet.contains(r) => r,
                Some(_) => return Decision::ignore("reservation outside subnet"),
                None => match table.allocate(subnet, mac, requested_ip(req), ctx.now) {
                    Some(ip) => ip,
                    None => return Decision::ignore("range exhausted"),
                },
            };
            if table
                .get(mac)
                .is_none_or(|l| l.ip != ip || l.state != LeaseState::Bound)
            {
                table.apply(Lease {
                    mac,
                    ip,
                    expires: ctx.now + OFFER_HOLD_SECS,
                    state: LeaseState::Offered,
                });
            }
            let mut m = reply_to(req, MessageType::Offer, ctx.server);
            m.set_yiaddr(ip);
            add_lease_opts(&mut m, ctx.dhcp.lease_secs);
            add_subnet_opts(&mut m, subnet, host);
            let (client, file) = choose_boot(ctx, req, mac, host);
            if let Some(f) = &file {
                add_boot(&mut m, client, f, ctx.server);
            }
            let mut events = Vec::new();
            if host.is_none() {
                events.push(BootEvent::UnknownMacSeen {
                    arch: classify::arch_code(req),
                });
            }
            events.push(BootEvent::DhcpOfferSent {
                ip: Some(ip),
                boot_file: file.map(|f| f.as_str().to_owned()),
            });
            let to = destination(req, MessageType::Offer, ip, ctx);
            Decision {
                reply: Some((m, to)),
                journal: vec![],
                events,
                reason: "offer",
            }
        }
        MessageType::Request => {
            let sid = server_id(req);
            if sid.is_some_and(|s| s != ctx.server) {
                // SELECTING another server's offer: release what we offered, say nothing (§4.3.2).
                if table.get(mac).is_some_and(|l| l.state == LeaseState::Offered) {
                    table.remove(mac);
                }
                return Decision::ignore("client chose another server");
            }
            // Only a client we know (inventory, or a lease of ours under discovery) may be NAKed.
            let known = host.is_some() || (ctx.dhcp.discovery && table.get(mac).is_some());
            if !owned {
                return Decision::ignore("unknown mac");
            }
            let Some(subnet) = subnet_for(ctx, req) else {
                return Decision::ignore("no subnet");
            };
            let Some(asked) = requested_ip(req) else {
                return Decision::ignore("request without address");
            };
            let expected = match host.and_then(|h| h.ipv4) {
                Some(r) => Some(r),
                None => match table.get(mac) {
                    Some(l) if subnet.in_range(l.ip) && table.is_free_for(l.ip, mac, ctx.now) => Some(l.ip),
                    // No record (journal lost, or a client coming back): accept a free address of our range.
                    _ if subnet.in_range(asked) && table.is_free_for(asked, mac, ctx.now) => Some(asked),
                    _ => None,
                },
            };
            if expected != Some(asked) && !known {
                return Decision::ignore("not ours to refuse");
            }
            if expected != Some(asked) {
                // We own this client (it is in our inventory): a NAK sends it back to DISCOVER at once.
                let m = reply_to(req, MessageType::Nak, ctx.server);
                let to = destination(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED, ctx);
                return Decision {
                    reply: Some((m, to)),
                    reason: "nak",
                    ..Decision::default()
                };
            }
            let lease = Lease {
                mac,
                ip: asked,
                expires: ctx.now + u64::from(ctx.dhcp.lease_secs),
                state: LeaseState::Bound,
            };
            table.apply(lease.clone());
            let mut m = reply_to(req, MessageType::Ack, ctx.server);
            m.set_yiaddr(asked);
            m.set_ciaddr(req.ciaddr());
            add_lease_opts(&mut m, ctx.dhcp.lease_secs);
            add_subnet_opts(&mut m, subnet, host);
            let (client, file) = choose_boot(ctx, req, mac, host);
            if let Some(f) = &file {
                add_boot(&mut m, client, f, ctx.server);
            }
            let to = destination(req, MessageType::Ack, asked, ctx);
            let events = vec![BootEvent::DhcpAckSent {
                ip: Some(asked),
                boot_file: file.map(|f| f.as_str().to_owned()),
            }];
            Decision {
                reply: Some((m, to)),
                journal: vec![lease],
                events,
                reason: "ack",
            }
        }
        MessageType::Release => {
            if server_id(req).is_some_and(|s| s != ctx.server) {
                return Decision::ignore("release for another server");
            }
            match table.get(mac) {
                Some(l) if l.ip == req.ciaddr() => {
                    let rel = Lease {
                        mac,
                        ip: l.ip,
                        expires: ctx.now,
                        state: LeaseState::Released,
                    };
                    table.apply(rel.clone());
                    Decision {
                        events: vec![BootEvent::DhcpReleased { ip: rel.ip }],
                        journal: vec![rel],
                        ..Decision::ignore("released")
                    }
                }
                _ => Decision::ignore("release of unknown lease"),
            }
        }
        MessageType::Decline => {
            if server_id(req).is_some_and(|s| s != ctx.server) {
                return Decision::ignore("decline for another server");
            }
            match (table.get(mac), requested_ip(req)) {
                (Some(l), Some(ip)) if l.ip == ip => {
                    let d = Lease {
                        mac,
                        ip,
                        expires: ctx.now + u64::from(ctx.dhcp.lease_secs),
                        state: LeaseState::Declined,
                    };
                    table.apply(d.clone());
                    Decision {
                        journal: vec![d],
                        ..Decision::ignore("declined")
                    }
                }
                _ => Decision::ignore("decline of unknown lease"),
            }
        }
        MessageType::Inform => {
            if !owned || req.ciaddr().is_unspecified() {
                return Decision::ignore("inform not ours");
            }
            let Some(subnet) = subnet_for(ctx, req) else {
                return Decision::ignore("no subnet");
            };
            let mut m = reply_to(req, MessageType::Ack, ctx.server);
            m.set_ciaddr(req.ciaddr());
            add_subnet_opts(&mut m, subnet, host);
            let to = destination(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, ctx);
            Decision {
                reply: Some((m, to)),
                reason: "inform",
                ..Decision::default()
            }
        }
        _ => Decision::ignore("not a client message"),
    }
}

/// PXE 2.1 option 43 for a proxyDHCP offer: sub-option 6 (PXE_DISCOVERY_CONTROL) = 8 ("use the boot file in this
/// packet, skip boot-server discovery"), then the end sub-option.
pub const PXE_VENDOR_OPTS: [u8; 4] = [6, 1, 8, 255];

/// Proxy mode (PXE 2.1 §2.2.5): boot information only, no address. `on_4011` = the request came to the PXE
/// boot-server port (a unicast REQUEST from a client that has its address), `src` is where it came from.
pub fn proxy(
    ctx: &Ctx<'_>,
    req: &Message,
    mac: MacAddr,
    host: Option<&BootHost>,
    on_4011: bool,
    src: SocketAddrV4,
) -> Decision {
    let Some(kind) = req.opts().msg_type() else {
        return Decision::ignore("no message type");
    };
    let client = classify::classify(req);
    let answerable = matches!(
        (kind, on_4011),
        (MessageType::Discover, false) | (MessageType::Request | MessageType::Inform, true)
    );
    if !answerable {
        return Decision::ignore("not for a proxy");
    }
    if client == Client::Plain || classify::class_id(req).is_none() && client != Client::Ipxe {
        return Decision::ignore("not a PXE client");
    }
    if host.is_none() && !ctx.dhcp.discovery {
        return Decision {
            events: vec![BootEvent::UnknownMacSeen {
                arch: classify::arch_code(req),
            }],
            ..Decision::ignore("unknown mac")
        };
    }
    let (client, file) = choose_boot(ctx, req, mac, host);
    let Some(file) = file else {
        return Decision::ignore("nothing to boot");
    };
    let reply_kind = if on_4011 { MessageType::Ack } else { MessageType::Offer };
    let mut m = reply_to(req, reply_kind, ctx.server);
    add_boot(&mut m, client, &file, ctx.server);
    let o = m.opts_mut();
    if !matches!(client, Client::Http(_)) {
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
    o.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTS.to_vec()));
    if let Some(uuid) = req.opts().get(OptionCode::ClientMachineIdentifier) {
        o.insert(uuid.clone());
    }
    let to = if on_4011 {
        src
    } else if !req.giaddr().is_unspecified() {
        SocketAddrV4::new(req.giaddr(), ctx.dhcp.server_port)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, ctx.dhcp.client_port)
    };
    let boot_file = Some(file.as_str().to_owned());
    let event = if on_4011 {
        BootEvent::DhcpAckSent { ip: None, boot_file }
    } else {
        BootEvent::DhcpOfferSent { ip: None, boot_file }
    };
    Decision {
        reply: Some((m, to)),
        journal: vec![],
        events: vec![event],
        reason: if on_4011 { "proxy ack" } else { "proxy offer" },
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
