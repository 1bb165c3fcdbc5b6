//! DHCPv4: client classification, the lease table and journal, pure decisions, and the socket loop.

pub mod arp;
pub mod classify;
pub mod decide;
pub mod leases;
pub mod server;

pub use server::DhcpServer;
