//! The DHCP socket loop: receives, parses (dropping and counting malformed packets), asks `HostLookup`, runs the pure
//! decision, journals leases, sends the reply, reports events. One tracing span per transaction.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::v4::{Message, Opcode};
use dhcproto::{Decodable, Encodable};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::MacAddr;
use crate::clients::ClientMap;
use crate::config::{DhcpMode, PxeConfig};
use crate::counters::{PxeCounters, bump};
use crate::dhcp::decide::{self, Ctx, Decision};
use crate::dhcp::leases::{LeaseJournal, LeaseTable};
use crate::error::PxeError;
use crate::lookup::HostLookup;

/// Opens a UDP socket on `0.0.0.0:port` bound to `iface` (`SO_BINDTODEVICE`) with `SO_BROADCAST`.
///
/// # Errors
/// [`PxeError::Socket`] if the interface does not exist or the port is taken.
pub fn bind_udp(what: &'static str, iface: &str, port: u16) -> Result<UdpSocket, PxeError> {
    let err = |source| PxeError::Socket {
        what,
        iface: iface.to_owned(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    if !iface.is_empty() {
        s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    }
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// The first IPv4 address of `iface`.
///
/// # Errors
/// [`PxeError::Config`] if the interface does not exist or has no IPv4 address.
pub fn iface_ipv4(iface: &str) -> Result<Ipv4Addr, PxeError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| PxeError::Socket {
        what: "getifaddrs",
        iface: iface.to_owned(),
        source: e.into(),
    })?;
    for a in addrs.filter(|a| a.interface_name == iface) {
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    Err(PxeError::Config {
        reason: format!("interface {iface:?} does not exist or has no IPv4 address"),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a datagram into a BOOTREQUEST and its client MAC; `None` for anything malformed (never panics).
pub fn parse_request(buf: &[u8]) -> Option<(Message, MacAddr)> {
    if !option_lengths_sane(buf) {
        return None;
    }
    // dhcproto is not written to be panic-free on hostile input (it has `debug_assert!`s on option lengths); the
    // length check above covers the known cases, and this catches any other panic so a packet can never take the
    // server down.
    let msg = std::panic::catch_unwind(|| Message::from_bytes(buf)).ok()?.ok()?;
    if msg.opcode() != Opcode::BootRequest || msg.hlen() != 6 {
        return None;
    }
    let mac = MacAddr::from_chaddr(msg.chaddr())?;
    msg.opts().msg_type()?;
    Some((msg, mac))
}

/// Walks the options area (RFC 2132 §2, TLV after the 240-byte fixed header and magic cookie) and rejects lengths
/// dhcproto's decoder asserts on: 80 (= 0), 81 (>= 3), 94 (= 3), 152-155 (= 4). Lengths are summed over a run of
/// adjacent options of one code (RFC 3396 concatenation), as dhcproto joins them; it decodes a repeated code that is
/// not adjacent (after a pad or another option) on its own, so such a run is checked on its own too.
fn option_lengths_sane(buf: &[u8]) -> bool {
    let Some(mut rest) = buf.get(240..) else { return false };
    let ok = |(code, len): (u8, usize)| match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        152..=155 => len == 4,
        _ => true,
    };
    // The run being read: its code and summed length.
    let mut run: Option<(u8, usize)> = None;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 || code == 255 {
            if run.take().is_some_and(|r| !ok(r)) {
                return false;
            }
            if code == 255 {
                break;
            }
            rest = tail;
            continue;
        }
        let Some((&len, tail)) = tail.split_first() else { break };
        let Some(next) = tail.get(usize::from(len)..) else {
            break;
        };
        run = match run {
            Some((c, l)) if c == code => Some((c, l + usize::from(len))),
            previous => {
                if previous.is_some_and(|r| !ok(r)) {
                    return false;
                }
                Some((code, usize::from(len)))
            }
        };
        rest = next;
    }
    run.is_none_or(ok)
}

/// The running DHCP service (state owned by its task).
pub struct DhcpServer {
    cfg: Arc<PxeConfig>,
    server_ip: Ipv4Addr,
    lookup: Arc<dyn HostLookup>,
    counters: Arc<PxeCounters>,
    table: LeaseTable,
    journal: Option<LeaseJournal>,
    sock: UdpSocket,
    sock_4011: Option<UdpSocket>,
    clients: Arc<ClientMap>,
    /// Neighbour-table updates (blocking netlink calls, made off the async threads).
    neigh: Option<std::sync::Arc<std::sync::Mutex<crate::dhcp::arp::Neighbours>>>,
}

impl DhcpServer {
    /// Binds the sockets and (full mode) loads the lease journal.
    ///
    /// # Errors
    /// Socket or lease-store errors; a missing interface is an error here, not a silent no-op later.
    pub fn bind(
        cfg: Arc<PxeConfig>,
        server_ip: Ipv4Addr,
        lookup: Arc<dyn HostLookup>,
        counters: Arc<PxeCounters>,
        clients: Arc<ClientMap>,
    ) -> Result<Self, PxeError> {
        let iface = cfg.dhcp.interface.clone();
        let sock = bind_udp("dhcp", &iface, cfg.dhcp.server_port)?;
        let (sock_4011, journal, table) = match cfg.dhcp.mode {
            DhcpMode::Proxy => (Some(bind_udp("proxy-dhcp", &iface, 4011)?), None, LeaseTable::default()),
            _ => {
                let (j, t, bad) = LeaseJournal::open(&cfg.state_dir, unix_now())?;
                if bad > 0 {
                    tracing::warn!(bad, "skipped unreadable lines in the lease journal");
                }
                tracing::info!(leases = t.len(), "lease journal loaded");
                (None, Some(j), t)
            }
        };
        Ok(Self {
            cfg,
            server_ip,
            lookup,
            counters,
            table,
            journal,
            sock,
            sock_4011,
            clients,
            neigh: match crate::dhcp::arp::Neighbours::open(&iface) {
                Ok(n) => Some(std::sync::Arc::new(std::sync::Mutex::new(n))),
                Err(e) => {
                    tracing::info!(interface = %iface, reason = %e, "no neighbour entries: unicast replies are broadcast");
                    None
                }
            },
        })
    }

    /// Serves until `cancel` fires.
    ///
    /// # Errors
    /// Only an unrecoverable receive error on the main socket.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), PxeError> {
        let mut buf = vec![0u8; 4096];
        let mut buf2 = vec![0u8; 4096];
        loop {
            let (n, from, on_4011) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => (n, from, false),
                    Err(e) => { self.recv_error(e)?; continue; }
                },
                r = recv_opt(self.sock_4011.as_ref(), &mut buf2) => match r {
                    Ok((n, from)) => (n, from, true),
                    Err(e) => { self.recv_error(e)?; continue; }
                },
            };
            let data = if on_4011 { &buf2[..n] } else { &buf[..n] };
            bump(&self.counters.dhcp_received);
            let Some((msg, mac)) = parse_request(data) else {
                bump(&self.counters.dhcp_malformed);
                tracing::debug!(%from, len = n, "dropped malformed DHCP datagram");
                continue;
            };
            let span = tracing::info_span!("dhcp", %mac, xid = format_args!("{:#010x}", msg.xid()), iface = %self.cfg.dhcp.interface, msg = ?msg.opts().msg_type().unwrap_or(dhcproto::v4::MessageType::Unknown(0)), port = if on_4011 { 4011 } else { self.cfg.dhcp.server_port });
            let from4 = match from {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => continue,
            };
            self.transaction(msg, mac, on_4011, from4).instrument(span).await;
        }
    }

    fn recv_error(&self, e: io::Error) -> Result<(), PxeError> {
        // ICMP errors (ECONNREFUSED and the like) surface on UDP receives; they are not fatal.
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
        ) {
            return Ok(());
        }
        Err(PxeError::Socket {
            what: "dhcp",
            iface: self.cfg.dhcp.interface.clone(),
            source: e,
        })
    }

    async fn transaction(&mut self, msg: Message, mac: MacAddr, on_4011: bool, from: SocketAddrV4) {
        let host = self.lookup.lookup(mac).await;
        let now = unix_now();
        let ctx = Ctx {
            dhcp: &self.cfg.dhcp,
            boot: &self.cfg.boot,
            server: self.server_ip,
            now,
        };
        let d: Decision = match self.cfg.dhcp.mode {
            DhcpMode::Full => decide::full(&ctx, &mut self.table, &msg, mac, host.as_ref()),
            DhcpMode::Proxy => decide::proxy(&ctx, &msg, mac, host.as_ref(), on_4011, from),
            DhcpMode::Off => Decision::default(),
        };
        // Journal before replying: an ACK never goes out for a lease a restart would forget.
        if let Some(j) = self.journal.as_mut() {
            for l in &d.journal {
                if let Err(e) = j.append(l, &self.table, now) {
                    bump(&self.counters.dhcp_journal_errors);
                    tracing::error!(error = &e as &dyn std::error::Error, "lease journal write failed");
                }
            }
        }
        match &d.reply {
            Some((reply, to)) => {
                let kind = reply.opts().msg_type();
                let sock = if on_4011 {
                    self.sock_4011.as_ref().unwrap_or(&self.sock)
                } else {
                    &self.sock
                };
                let mut to = *to;
                if decide::needs_arp(&msg, reply, &to) {
                    let res = match self.neigh.clone() {
                        Some(n) => {
                            let ip = *to.ip();
                            tokio::task::spawn_blocking(move || {
                                n.lock().unwrap_or_else(|e| e.into_inner()).insert(ip, mac)
                            })
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                        }
                        None => Err(std::io::ErrorKind::Unsupported.into()),
                    };
                    if let Err(e) = res {
                        // No neighbour entry, no unicast: broadcasting still reaches the client.
                        tracing::debug!(error = %e, "neighbour entry failed, broadcasting");
                        to = SocketAddrV4::new(Ipv4Addr::BROADCAST, self.cfg.dhcp.client_port);
                    }
                }
                match reply.to_vec() {
                    Ok(bytes) => match sock.send_to(&bytes, SocketAddr::V4(to)).await {
                        Ok(_) => {
                            use dhcproto::v4::MessageType as M;
                            self.clients.note(reply.yiaddr(), mac);
                            if on_4011 {
                                self.clients.note(*from.ip(), mac);
                            }
                            match kind {
                                Some(M::Offer) => bump(&self.counters.dhcp_offers),
                                Some(M::Ack) => bump(&self.counters.dhcp_acks),
                                Some(M::Nak) => bump(&self.counters.dhcp_naks),
                                _ => {}
                            }
                            tracing::info!(reply = ?kind, yiaddr = %reply.yiaddr(), to = %to, file = reply.fname_str().and_then(Result::ok).unwrap_or(""), "replied");
                        }
                        Err(e) => {
                            bump(&self.counters.dhcp_send_errors);
                            tracing::warn!(error = %e, to = %to, "send failed");
                        }
                    },
                    Err(e) => {
                        bump(&self.counters.dhcp_send_errors);
                        tracing::warn!(error = %e, "encode failed");
                    }
                }
            }
            None => {
                if d.reason == "released" {
                    bump(&self.counters.dhcp_releases);
                } else {
                    bump(&self.counters.dhcp_ignored);
                }
                tracing::debug!(reason = d.reason, "no reply");
            }
        }
        for ev in d.events {
            self.lookup.record(mac, ev).await;
        }
    }
}

async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parser_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse_request(&data);
        }

        #[test]
        fn parser_never_panics_on_mutated_requests(flips in proptest::collection::vec((0usize..300, any::<u8>()), 0..20), cut in 0usize..400) {
            let mut m = Message::new(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &[2, 0, 0, 0, 0, 1]);
            m.opts_mut().insert(dhcproto::v4::DhcpOption::MessageType(dhcproto::v4::MessageType::Discover));
            m.opts_mut().insert(dhcproto::v4::DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000".to_vec()));
            let mut bytes = m.to_vec().unwrap();
            for (i, b) in flips { let len = bytes.len(); bytes[i % len] = b; }
            bytes.truncate(cut.min(bytes.len()));
            let _ = parse_request(&bytes);
        }
    }

    #[test]
    fn option_lengths_are_checked_per_run_of_adjacent_options() {
        let with = |opts: &[u8]| [vec![0u8; 236], vec![99, 130, 83, 99], opts.to_vec()].concat();
        // Option 81 needs 3 bytes; adjacent pieces are joined (RFC 3396), a repeat after a pad or another option is
        // decoded on its own (found by the dhcp_packet fuzz target: 22 bytes, then an empty 81 further on).
        assert!(option_lengths_sane(&with(&[81, 2, 0, 0, 81, 1, 0, 255])));
        assert!(!option_lengths_sane(&with(&[81, 3, 0, 0, 0, 12, 1, b'x', 81, 0, 255])));
        assert!(!option_lengths_sane(&with(&[81, 3, 0, 0, 0, 0, 81, 0, 255])));
        assert!(!option_lengths_sane(&with(&[94, 3, 1, 2, 1, 94, 3, 1, 2, 1])));
        assert!(option_lengths_sane(&with(&[94, 3, 1, 2, 1, 255, 94, 0])));
    }

    #[test]
    fn parses_a_real_discover() {
        let mut m = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        m.opts_mut().insert(dhcproto::v4::DhcpOption::MessageType(
            dhcproto::v4::MessageType::Discover,
        ));
        let (_, mac) = parse_request(&m.to_vec().unwrap()).unwrap();
        assert_eq!(mac, MacAddr::new([2, 0, 0, 0, 0, 1]));
        assert!(parse_request(&m.to_vec().unwrap()[..100]).is_none());
    }
}
