//! The lease table (pure, in memory) and its journal on disk (`leases.jsonl` in the state dir).
//!
//! The journal is append-only, one JSON lease per line, replayed at start-up; it is compacted into a snapshot written
//! to a temporary file and renamed over the journal (atomic on POSIX), so a restart never hands out an address that a
//! bound lease still holds. Appends are not fsynced one by one (like Kea's memfile): a process restart loses
//! nothing, a power cut may lose the last leases.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::MacAddr;
use crate::config::SubnetConfig;
use crate::error::PxeError;

/// Lease states; `Released` in the journal removes the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Offered, not yet requested (held briefly, never journaled).
    Offered,
    /// Acknowledged.
    Bound,
    /// Given back by the client (journal only).
    Released,
    /// The client found the address in use (DHCPDECLINE); quarantined until `expires`.
    Declined,
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Client.
    pub mac: MacAddr,
    /// Address.
    pub ip: Ipv4Addr,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
    /// State.
    pub state: LeaseState,
}

/// How long an offer holds its address for the client it was offered to (RFC 2131 §4.3.1 leaves it to the server).
pub const OFFER_HOLD_SECS: u64 = 60;

/// The in-memory lease table: one lease per MAC, and which MAC holds each address.
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, u64>,
    cursor: HashMap<Ipv4Addr, u32>,
}

impl LeaseTable {
    /// The lease of `mac`, expired or not.
    pub fn get(&self, mac: MacAddr) -> Option<&Lease> {
        self.by_mac.get(&mac)
    }

    /// Number of leases (any state).
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// All leases (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    /// Whether `ip` can be given to `mac` at `now`: nobody else holds it unexpired and it is not quarantined.
    pub fn is_free_for(&self, ip: Ipv4Addr, mac: MacAddr, now: u64) -> bool {
        if self.declined.get(&ip).is_some_and(|&until| until > now) {
            return false;
        }
        match self.by_ip.get(&ip) {
            Some(holder) if *holder != mac => self.by_mac.get(holder).is_none_or(|l| l.expires <= now),
            _ => true,
        }
    }

    /// Applies a lease (journal replay or a decision): replaces the MAC's previous lease.
    pub fn apply(&mut self, lease: Lease) {
        match lease.state {
            LeaseState::Released => {
                if self.by_mac.get(&lease.mac).is_some_and(|l| l.ip == lease.ip) {
                    self.remove(lease.mac);
                }
            }
            LeaseState::Declined => {
                self.declined.insert(lease.ip, lease.expires);
                if self.by_mac.get(&lease.mac).is_some_and(|l| l.ip == lease.ip) {
                    self.remove(lease.mac);
                }
            }
            LeaseState::Offered | LeaseState::Bound => {
                self.remove(lease.mac);
                if let Some(prev) = self.by_ip.insert(lease.ip, lease.mac)
                    && prev != lease.mac
                {
                    // The address moved (the other lease had expired, or a reservation took it): drop the old one.
                    self.by_mac.remove(&prev);
                }
                self.by_mac.insert(lease.mac, lease);
            }
        }
    }

    /// Forgets the lease of `mac`.
    pub fn remove(&mut self, mac: MacAddr) -> Option<Lease> {
        let old = self.by_mac.remove(&mac)?;
        if self.by_ip.get(&old.ip) == Some(&mac) {
            self.by_ip.remove(&old.ip);
        }
        Some(old)
    }

    /// Picks an address from `subnet`'s range for `mac`: its current lease, else `requested` if free, else the next
    /// free address after a rotating cursor.
    pub fn allocate(
        &mut self,
        subnet: &SubnetConfig,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(l) = self.by_mac.get(&mac)
            && subnet.in_range(l.ip)
            && self.is_free_for(l.ip, mac, now)
        {
            return Some(l.ip);
        }
        if let Some(r) = requested
            && subnet.in_range(r)
            && self.is_free_for(r, mac, now)
        {
            return Some(r);
        }
        let (start, end) = (u32::from(subnet.range_start), u32::from(subnet.range_end));
        let size = end - start + 1;
        let cursor = self.cursor.entry(subnet.network).or_insert(0);
        for i in 0..size {
            let off = (*cursor + i) % size;
            let ip = Ipv4Addr::from(start + off);
            let taken = self
                .by_ip
                .get(&ip)
                .is_some_and(|h| *h != mac && self.by_mac.get(h).is_some_and(|l| l.expires > now));
            if !taken && self.declined.get(&ip).is_none_or(|&u| u <= now) {
                *self.cursor.get_mut(&subnet.network).unwrap_or(&mut 0) = (off + 1) % size;
                return Some(ip);
            }
        }
        None
    }
}

/// The lease journal file.
#[derive(Debug)]
pub struct LeaseJournal {
    path: PathBuf,
    file: File,
    appends: usize,
}

impl LeaseJournal {
    /// Opens (creating) `<dir>/leases.jsonl`, replays it into a table, and compacts it.
    ///
    /// Lines that do not parse (a torn last line after a crash) are skipped and counted in the second value.
    ///
    /// # Errors
    /// [`PxeError::LeaseStore`] when the directory or file cannot be created, read or written.
    pub fn open(dir: &Path, now: u64) -> Result<(Self, LeaseTable, usize), PxeError> {
        let path = dir.join("leases.jsonl");
        let err = |source| PxeError::LeaseStore {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let mut table = LeaseTable::default();
        let mut bad = 0;
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(err)?;
                    match serde_json::from_str::<Lease>(&line) {
                        Ok(l) if l.state != LeaseState::Offered => table.apply(l),
                        Ok(_) => {}
                        Err(_) => bad += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(err)?;
        let mut j = Self { path, file, appends: 0 };
        j.compact(&table, now)?;
        Ok((j, table, bad))
    }

    /// Appends one lease change; compacts when the journal has grown to twice the live table.
    ///
    /// # Errors
    /// [`PxeError::LeaseStore`] on a write failure.
    pub fn append(&mut self, lease: &Lease, table: &LeaseTable, now: u64) -> Result<(), PxeError> {
        let mut line = serde_json::to_vec(lease).unwrap_or_default();
        line.push(b'\n');
        self.file.write_all(&line).map_err(|source| PxeError::LeaseStore {
            path: self.path.clone(),
            source,
        })?;
        self.appends += 1;
        if self.appends > 1024.max(table.len() * 2) {
            self.compact(table, now)?;
        }
        Ok(())
    }

    /// Writes the bound and quarantined leases to a temporary file, fsyncs it, and renames it over the journal.
    ///
    /// # Errors
    /// [`PxeError::LeaseStore`] on a write failure (the old journal stays in place).
    pub fn compact(&mut self, table: &LeaseTable, now: u64) -> Result<(), PxeError> {
        let err = |source| PxeError::LeaseStore {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut buf = Vec::new();
        for l in table.iter().filter(|l| l.state == LeaseState::Bound && l.expires > now) {
            buf.extend(serde_json::to_vec(l).unwrap_or_default());
            buf.push(b'\n');
        }
        for (ip, until) in table.declined.iter().filter(|(_, u)| **u > now) {
            let l = Lease {
                mac: MacAddr::new([0; 6]),
                ip: *ip,
                expires: *until,
                state: LeaseState::Declined,
            };
            buf.extend(serde_json::to_vec(&l).unwrap_or_default());
            buf.push(b'\n');
        }
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&buf).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)?;
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(err)?;
        self.appends = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> SubnetConfig {
        SubnetConfig {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 24,
            range_start: Ipv4Addr::new(10, 0, 0, 10),
            range_end: Ipv4Addr::new(10, 0, 0, 12),
            router: None,
            dns: vec![],
            domain: None,
            mtu: None,
        }
    }
    fn mac(n: u8) -> MacAddr {
        MacAddr::new([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn allocation_skips_held_addresses_and_exhausts() {
        let mut t = LeaseTable::default();
        let s = subnet();
        let now = 1000;
        for n in 1..=3 {
            let ip = t.allocate(&s, mac(n), None, now).unwrap();
            t.apply(Lease {
                mac: mac(n),
                ip,
                expires: now + 100,
                state: LeaseState::Bound,
            });
        }
        let ips: std::collections::HashSet<_> = (1..=3).map(|n| t.get(mac(n)).unwrap().ip).collect();
        assert_eq!(ips.len(), 3);
        assert_eq!(t.allocate(&s, mac(4), None, now), None);
        // mac 1 keeps its address; after expiry mac 4 may take one
        assert_eq!(t.allocate(&s, mac(1), None, now), Some(t.get(mac(1)).unwrap().ip));
        assert!(t.allocate(&s, mac(4), None, now + 200).is_some());
    }

    #[test]
    fn requested_address_honoured_when_free() {
        let mut t = LeaseTable::default();
        let s = subnet();
        assert_eq!(
            t.allocate(&s, mac(1), Some(Ipv4Addr::new(10, 0, 0, 12)), 0),
            Some(Ipv4Addr::new(10, 0, 0, 12))
        );
        t.apply(Lease {
            mac: mac(2),
            ip: Ipv4Addr::new(10, 0, 0, 12),
            expires: 100,
            state: LeaseState::Bound,
        });
        assert_ne!(
            t.allocate(&s, mac(1), Some(Ipv4Addr::new(10, 0, 0, 12)), 0),
            Some(Ipv4Addr::new(10, 0, 0, 12))
        );
    }

    #[test]
    fn declined_address_is_quarantined() {
        let mut t = LeaseTable::default();
        let s = subnet();
        let ip = Ipv4Addr::new(10, 0, 0, 10);
        t.apply(Lease {
            mac: mac(1),
            ip,
            expires: 100,
            state: LeaseState::Declined,
        });
        assert!(!t.is_free_for(ip, mac(2), 50));
        assert_ne!(t.allocate(&s, mac(2), None, 50), Some(ip));
    }

    #[test]
    fn journal_survives_reopen_and_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, bad) = LeaseJournal::open(dir.path(), 0).unwrap();
        assert_eq!(bad, 0);
        for n in 1..=50u8 {
            let l = Lease {
                mac: mac(n),
                ip: Ipv4Addr::new(10, 0, 1, n),
                expires: 500,
                state: LeaseState::Bound,
            };
            t.apply(l.clone());
            j.append(&l, &t, 0).unwrap();
        }
        let rel = Lease {
            mac: mac(7),
            ip: Ipv4Addr::new(10, 0, 1, 7),
            expires: 0,
            state: LeaseState::Released,
        };
        t.apply(rel.clone());
        j.append(&rel, &t, 0).unwrap();
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("leases.jsonl"))
            .unwrap();
        f.write_all(b"{\"mac\":\"02:00").unwrap();
        let (_j, t2, bad) = LeaseJournal::open(dir.path(), 10).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(t2.len(), 49);
        assert!(t2.get(mac(7)).is_none());
        assert_eq!(t2.get(mac(8)).unwrap().ip, Ipv4Addr::new(10, 0, 1, 8));
        // expired leases are dropped by compaction at open
        let (_j, t3, _) = LeaseJournal::open(dir.path(), 1000).unwrap();
        assert_eq!(t3.len(), 49);
        let (_j, t4, _) = LeaseJournal::open(dir.path(), 1000).unwrap();
        assert_eq!(t4.len(), 0);
    }
}
