//! The host's BMC addresses, read in-band through the kernel's IPMI device (`/dev/ipmi0`, made by the ramdisk's
//! `ipmi_si` and `ipmi_devintf` modules): IPMI "Get LAN Configuration Parameters" (NetFn Transport, command 0x02),
//! parameter 3 (IP address), asked of the BMC over the system interface for every LAN channel 1..=11, as
//! ironic-python-agent reads `ipmitool lan print <channel>` for its lookup by BMC address. A discovery boot sends
//! them to kiln, which binds the boot to the host whose BMC has one of them.
//!
//! The device I/O is ipmi-rs's `File` connection (its ioctls, so none of our own); [`lan_ip`] (the reply's decoding)
//! is pure and unit-tested, the device I/O runs only in the ramdisk (and the QEMU lab, where the VM's KCS interface is
//! wired to its ipmi_sim).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use ipmi_rs::connection::Channel;
use ipmi_rs::transport::{GetLanConfigParameters, LanConfigParameter};

/// The device the kernel's IPMI driver creates.
pub const DEVICE: &str = "/dev/ipmi0";

/// The IPv4 address in a Get LAN Configuration Parameters reply's data for parameter 3 (after the completion code
/// and the parameter revision: four address bytes); `None` for a short reply or the unset address 0.0.0.0.
pub fn lan_ip(data: &[u8]) -> Option<Ipv4Addr> {
    match data {
        [a, b, c, d, ..] => Some(Ipv4Addr::new(*a, *b, *c, *d)).filter(|ip| !ip.is_unspecified()),
        _ => None,
    }
}

/// Waits up to `wait` for [`DEVICE`] (the driver probes the interface after the module loads), then reads the BMC's
/// address on every LAN channel. Empty when the host has no IPMI system interface; a failing channel is skipped.
pub fn bmc_addresses(wait: Duration) -> Vec<IpAddr> {
    let deadline = Instant::now() + wait;
    while !Path::new(DEVICE).exists() {
        if Instant::now() >= deadline {
            tracing::info!(device = DEVICE, "no IPMI system interface: no BMC address to report");
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let file = match ipmi_rs::File::new(DEVICE, Duration::from_secs(5)) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(device = DEVICE, error = %e, "cannot open the IPMI device");
            return Vec::new();
        }
    };
    let mut ipmi = ipmi_rs::Ipmi::new(file);
    let mut out = Vec::new();
    for (number, channel) in (1u8..=11).filter_map(|c| Channel::new(c).map(|ch| (c, ch))) {
        match ipmi.send_recv(GetLanConfigParameters::new(channel, LanConfigParameter::IpAddress)) {
            Ok(reply) => {
                if let Some(ip) = lan_ip(&reply.data) {
                    tracing::info!(channel = number, %ip, "BMC address read in-band");
                    if !out.contains(&IpAddr::V4(ip)) {
                        out.push(IpAddr::V4(ip));
                    }
                }
            }
            Err(e) => tracing::debug!(channel = number, error = ?e, "no LAN parameters on this channel"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lan_reply_gives_the_address_and_unset_or_short_ones_none() {
        assert_eq!(lan_ip(&[10, 0, 0, 5]), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(lan_ip(&[0, 0, 0, 0]), None, "unset");
        assert_eq!(lan_ip(&[10, 0, 0]), None, "short");
        assert_eq!(lan_ip(&[]), None, "revision only");
    }
}
