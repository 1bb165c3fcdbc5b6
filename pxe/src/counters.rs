//! Counters of the netboot services, as plain atomics the controller renders (Prometheus text, status page).

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of the DHCP, TFTP and HTTP boot services.
#[derive(Debug, Default)]
pub struct PxeCounters {
    /// DHCP datagrams received.
    pub dhcp_received: AtomicU64,
    /// DHCP datagrams dropped because they did not parse as a BOOTREQUEST with a usable `chaddr`.
    pub dhcp_malformed: AtomicU64,
    /// Well-formed DHCP requests that got no reply (unknown MAC, other server, ...).
    pub dhcp_ignored: AtomicU64,
    /// DHCPOFFERs sent (full and proxy).
    pub dhcp_offers: AtomicU64,
    /// DHCPACKs sent (full, INFORM and port-4011 proxy).
    pub dhcp_acks: AtomicU64,
    /// DHCPNAKs sent.
    pub dhcp_naks: AtomicU64,
    /// DHCPRELEASEs applied.
    pub dhcp_releases: AtomicU64,
    /// Replies that could not be encoded or sent.
    pub dhcp_send_errors: AtomicU64,
    /// Lease journal writes that failed.
    pub dhcp_journal_errors: AtomicU64,
    /// TFTP read requests served.
    pub tftp_reads: AtomicU64,
    /// TFTP requests refused (traversal, missing file, writes, too many transfers).
    pub tftp_refused: AtomicU64,
    /// Datagrams on the TFTP port that are not a well-formed request: dropped.
    pub tftp_malformed: AtomicU64,
    /// TFTP transfers that ended before the last block was acknowledged (client error, timeout, I/O error).
    pub tftp_aborted: AtomicU64,
    /// iPXE scripts rendered.
    pub http_scripts: AtomicU64,
    /// iPXE script requests answered 404 (unknown host, nothing to boot, bad MAC).
    pub http_scripts_not_found: AtomicU64,
}

impl PxeCounters {
    /// Name and value of every counter, for rendering.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("dhcp_received", g(&self.dhcp_received)),
            ("dhcp_malformed", g(&self.dhcp_malformed)),
            ("dhcp_ignored", g(&self.dhcp_ignored)),
            ("dhcp_offers", g(&self.dhcp_offers)),
            ("dhcp_acks", g(&self.dhcp_acks)),
            ("dhcp_naks", g(&self.dhcp_naks)),
            ("dhcp_releases", g(&self.dhcp_releases)),
            ("dhcp_send_errors", g(&self.dhcp_send_errors)),
            ("dhcp_journal_errors", g(&self.dhcp_journal_errors)),
            ("tftp_reads", g(&self.tftp_reads)),
            ("tftp_refused", g(&self.tftp_refused)),
            ("tftp_malformed", g(&self.tftp_malformed)),
            ("tftp_aborted", g(&self.tftp_aborted)),
            ("http_scripts", g(&self.http_scripts)),
            ("http_scripts_not_found", g(&self.http_scripts_not_found)),
        ]
    }
}

/// Adds one.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
