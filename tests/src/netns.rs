//! A private network namespace with a bridge `br0` and addresses of its own (10.99.0.1/24 and fd99::1/64 for
//! iPXE's IPv6 autoconfiguration, which otherwise waits 13 s). Deleted on drop; recorded for stale cleanup.

use std::process::Command;

use crate::{cmd, state::Record};

/// The server address of the lab bridge, inside the namespace.
pub const SERVER_IP: &str = "10.99.0.1";

/// A network namespace the lab created.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `kiln-<id>` with a bridge br0 up and addressed.
    pub fn create(record: &Record) -> anyhow::Result<Self> {
        let name = format!("kiln-{}", record.id());
        record.add_netns(&name);
        cmd::quiet("ip", &["netns", "del", &name]);
        cmd::run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", "br0"])?;
        ns.ip(&["addr", "add", "fd99::1/64", "dev", "br0", "nodad"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Creates a persistent tap in the namespace, attached to br0 and up.
    pub fn add_tap(&self, tap: &str) -> anyhow::Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", "br0"])?;
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        cmd::quiet("ip", &["netns", "del", &self.name]);
    }
}
