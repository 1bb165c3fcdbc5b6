//! Inserts a neighbour (ARP) entry through rtnetlink (`RTM_NEWNEIGH`, rtnetlink(7)), so a reply can be unicast to a
//! client that has no address yet and did not ask for broadcast (RFC 2131 §4.1), as dnsmasq does with `SIOCSARP`.
//! Safe code only: the message is built as bytes and sent on an unconnected netlink socket (which goes to the kernel).

use std::io;
use std::io::Read;
use std::net::Ipv4Addr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::MacAddr;

const AF_NETLINK: i32 = 16;
const NETLINK_ROUTE: i32 = 0;
const RTM_NEWNEIGH: u16 = 28;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const AF_INET: u8 = 2;
const NUD_REACHABLE: u16 = 0x02;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// The `RTM_NEWNEIGH` request: nlmsghdr (16) + ndmsg (12) + NDA_DST (8) + NDA_LLADDR (12, padded).
pub fn request(ifindex: u32, ip: Ipv4Addr, mac: MacAddr, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(48);
    m.extend(48u32.to_ne_bytes());
    m.extend(RTM_NEWNEIGH.to_ne_bytes());
    m.extend((NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // ndmsg: family, pad, pad, ifindex, state, flags, type
    m.extend([AF_INET, 0, 0, 0]);
    m.extend((ifindex as i32).to_ne_bytes());
    m.extend(NUD_REACHABLE.to_ne_bytes());
    m.extend([0u8, 0u8]);
    m.extend(8u16.to_ne_bytes());
    m.extend(NDA_DST.to_ne_bytes());
    m.extend(ip.octets());
    m.extend(10u16.to_ne_bytes());
    m.extend(NDA_LLADDR.to_ne_bytes());
    m.extend(mac.octets());
    m.extend([0u8, 0u8]);
    m
}

/// Refuses an interface that is not ARP-capable Ethernet: on a loopback, point-to-point or `NOARP` interface a
/// neighbour entry for a client's address would shadow a real route (on loopback it stopped kiln's own API from
/// answering); replies there are broadcast instead.
fn arp_capable(iface: &str) -> io::Result<()> {
    const ARPHRD_ETHER: u32 = 1;
    const IFF_NOARP: u32 = 0x80;
    let read = |what: &str| -> io::Result<u32> {
        let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}"))?;
        let text = text.trim();
        let value = match text.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => text.parse(),
        };
        value.map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{iface}: bad {what} {text:?}")))
    };
    let (kind, flags) = (read("type")?, read("flags")?);
    if kind != ARPHRD_ETHER || flags & IFF_NOARP != 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{iface} is not an ARP-capable Ethernet interface (type {kind}, flags {flags:#x})"),
        ));
    }
    Ok(())
}

/// A netlink route socket for neighbour updates.
#[derive(Debug)]
pub struct Neighbours {
    sock: Socket,
    ifindex: u32,
    seq: u32,
}

impl Neighbours {
    /// Opens the socket for interface `iface`.
    ///
    /// # Errors
    /// Socket creation, or an unknown interface.
    pub fn open(iface: &str) -> io::Result<Self> {
        arp_capable(iface)?;
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)?;
        let sock = Socket::new(Domain::from(AF_NETLINK), Type::RAW, Some(Protocol::from(NETLINK_ROUTE)))?;
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
        Ok(Self { sock, ifindex, seq: 0 })
    }

    /// Tells the kernel that `ip` is at `mac` on our interface, and waits for its acknowledgement.
    ///
    /// # Errors
    /// The kernel's error (e.g. `EINVAL` on an interface without ARP) or a timeout.
    pub fn insert(&mut self, ip: Ipv4Addr, mac: MacAddr) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.sock.send(&request(self.ifindex, ip, mac, self.seq))?;
        let mut buf = [0u8; 256];
        loop {
            let n = (&self.sock).read(&mut buf)?;
            let bytes = &buf[..n];
            if bytes.len() < 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"));
            }
            let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
            let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            if kind != NLMSG_ERROR || seq != self.seq {
                continue;
            }
            let errno = i32::from_ne_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
            return if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_gets_no_neighbour_entries() {
        let e = Neighbours::open("lo").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    }

    #[test]
    fn request_layout() {
        let m = request(3, Ipv4Addr::new(10, 0, 0, 5), MacAddr::new([2, 0, 0, 0, 0, 9]), 7);
        assert_eq!(m.len(), 48);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 48);
        assert_eq!(&m[32..36], &[10, 0, 0, 5]);
        assert_eq!(&m[40..46], &[2, 0, 0, 0, 0, 9]);
    }
}
