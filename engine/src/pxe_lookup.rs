//! kiln-pxe's `HostLookup` over the store: what the DHCP/TFTP/HTTP boot services ask about a MAC, answered from
//! the host's state by [`StoreLookup`], and the netboot events they report, recorded as host events (per-phase
//! timing of DHCP offer, iPXE script fetch, ...). It must not decide host transitions.

use kiln_pxe::{BootAction, BootEvent, BootHost, BoxFuture, HostLookup};
use url::Url;

use crate::executor::now;
use crate::netboot::{BootInstructions, Handout, StoreLookup};
use crate::types::MacAddr;

/// Where the agent ramdisk is served, and the store lookup.
#[derive(Clone)]
pub struct PxeLookup {
    pub lookup: StoreLookup,
    pub kernel_url: Url,
    pub initrd_url: Url,
    /// Extra kernel arguments (console=..., ip=dhcp).
    pub extra_cmdline: String,
}

fn mac(m: kiln_pxe::MacAddr) -> Option<MacAddr> {
    m.to_string().parse().ok()
}

impl PxeLookup {
    async fn boot_host(&self, m: kiln_pxe::MacAddr, handout: Handout) -> Option<BootHost> {
        {
            let mac = mac(m)?;
            let instr = match self.lookup.boot_instructions(&mac, now(), handout).await {
                Ok(i) => i?,
                Err(e) => {
                    tracing::error!(%mac, error = %crate::bmcs::chain(&e), "host lookup failed");
                    return None;
                }
            };
            let cmdline = instr
                .kernel_args()
                .map(|a| format!("{a} {}", self.extra_cmdline).trim().to_owned());
            Some(match instr {
                BootInstructions::Agent { host, .. } => BootHost {
                    ipv4: None,
                    hostname: Some(host),
                    action: BootAction::Agent {
                        kernel_url: self.kernel_url.clone(),
                        initrd_url: self.initrd_url.clone(),
                        cmdline: cmdline.unwrap_or_default(),
                    },
                },
                BootInstructions::LocalDisk { host } => BootHost {
                    ipv4: None,
                    hostname: Some(host),
                    action: BootAction::LocalDisk,
                },
                BootInstructions::Nothing { host } => BootHost {
                    ipv4: None,
                    hostname: Some(host),
                    action: BootAction::Nothing,
                },
                BootInstructions::Discover { .. } => BootHost {
                    ipv4: None,
                    hostname: None,
                    action: BootAction::Agent {
                        kernel_url: self.kernel_url.clone(),
                        initrd_url: self.initrd_url.clone(),
                        cmdline: cmdline.unwrap_or_default(),
                    },
                },
            })
        }
    }
}

impl HostLookup for PxeLookup {
    fn lookup(&self, m: kiln_pxe::MacAddr) -> BoxFuture<'_, Option<BootHost>> {
        Box::pin(self.boot_host(m, Handout::Peek))
    }

    fn script_host(&self, m: kiln_pxe::MacAddr) -> BoxFuture<'_, Option<BootHost>> {
        Box::pin(self.boot_host(m, Handout::Take))
    }

    fn record(&self, m: kiln_pxe::MacAddr, event: BootEvent) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(mac) = mac(m) else { return };
            let Ok(Some(h)) = self.lookup.store.host_by_mac(&mac).await else {
                return;
            };
            let kind = match &event {
                BootEvent::UnknownMacSeen { .. } => "unknown_mac",
                BootEvent::DhcpOfferSent { .. } => "dhcp_offer_sent",
                BootEvent::DhcpAckSent { .. } => "dhcp_ack_sent",
                BootEvent::DhcpReleased { .. } => "dhcp_released",
                BootEvent::TftpFileServed { .. } => "tftp_file_served",
                BootEvent::IpxeScriptFetched { .. } => "ipxe_script_fetched",
            };
            if !self.lookup.events.allow(h.name.as_str(), kind) {
                return;
            }
            let detail = serde_json::to_string(&event).unwrap_or_default();
            if let Err(e) = self
                .lookup
                .store
                .add_event(h.name.as_str(), now(), "netboot", &format!("{kind} {detail}"))
                .await
            {
                tracing::warn!(%mac, error = %crate::bmcs::chain(&e), "cannot record netboot event");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::machine::{Job, JobPhase, State};
    use crate::model::{Counters, HostSpec, Requests, StatusUpdate};
    use crate::types::Ts;
    use std::sync::Arc;

    #[tokio::test]
    async fn boot_servers_get_agent_scripts_only_for_hosts_in_an_agent_phase() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::connect(None, dir.path(), SecretKey::from_bytes(&[3; 32]).unwrap())
            .await
            .unwrap();
        let spec = HostSpec {
            boot_mac: Some("52:54:00:00:00:11".parse().unwrap()),
            ..Default::default()
        };
        let h = store
            .create_host(&"node-11".parse().unwrap(), &spec, "test", Ts(0))
            .await
            .unwrap();
        let p = PxeLookup {
            lookup: crate::netboot::StoreLookup {
                store: store.clone(),
                api_url: "https://10.0.0.1:8443".into(),
                ca_pin: Some("sha256:00ff".into()),
                events: Default::default(),
            },
            kernel_url: "http://10.0.0.1:8080/boot/vmlinuz".parse().unwrap(),
            initrd_url: "http://10.0.0.1:8080/boot/initramfs".parse().unwrap(),
            extra_cmdline: "console=ttyS0".into(),
        };
        let m: kiln_pxe::MacAddr = "52:54:00:00:00:11".parse().unwrap();
        assert!(
            p.lookup("52:54:00:00:00:12".parse().unwrap()).await.is_none(),
            "unknown MAC"
        );
        assert_eq!(p.lookup(m).await.unwrap().action, BootAction::Nothing, "unmanaged host");
        let job = Job {
            phase: JobPhase::Booting,
            boot: 1,
            started: Ts(0),
            phase_since: Ts(0),
            retries: 0,
        };
        let st = StatusUpdate {
            state: State::Provisioning(job),
            requests: Requests::default(),
            power: None,
            counters: Counters::default(),
            next_wake: None,
        };
        assert!(store.save_status(h.id, h.generation, &st, Ts(0)).await.unwrap());
        // The state machine minted the boot's token (Action::MintToken).
        let minted = kiln_bmc::Secret::new(crate::crypto::random_hex(32));
        store
            .add_token(
                &crate::crypto::hash_token(minted.expose()),
                h.id,
                1,
                "provisioning",
                Some(&minted),
                Ts(0),
            )
            .await
            .unwrap();
        let cmdline_of = |b: Option<BootHost>| match b.map(|b| b.action) {
            Some(BootAction::Agent { cmdline, .. }) => cmdline,
            other => panic!("{other:?}"),
        };
        // DHCP lookups never carry the token.
        for _ in 0..3 {
            assert!(!cmdline_of(p.lookup(m).await).contains("kiln.token="));
        }
        let BootAction::Agent {
            cmdline, kernel_url, ..
        } = p.script_host(m).await.unwrap().action
        else {
            panic!()
        };
        // The second script of the same boot carries none, and says so in the host's events.
        assert!(!cmdline_of(p.script_host(m).await).contains("kiln.token="));
        let ev = store.events(Some("node-11"), 10).await.unwrap();
        assert!(ev.iter().any(|e| e.kind == "token_already_issued"), "{ev:?}");
        // A flood of unauthenticated script fetches and netboot reports adds a bounded number of events.
        let before = store.events(Some("node-11"), 10_000).await.unwrap().len();
        for _ in 0..1000 {
            assert!(!cmdline_of(p.script_host(m).await).contains("kiln.token="));
            p.record(m, BootEvent::IpxeScriptFetched { action: "agent".into() })
                .await;
        }
        let after = store.events(Some("node-11"), 10_000).await.unwrap().len();
        assert!(after - before <= 2, "1000 fetches added {} events", after - before);
        assert!(p.lookup.events.suppressed() >= 1998);
        assert_eq!(kernel_url.path(), "/boot/vmlinuz");
        assert!(
            cmdline.contains("kiln.api=https://10.0.0.1:8443 kiln.ca=sha256:00ff")
                && cmdline.ends_with("console=ttyS0"),
            "{cmdline}"
        );
        let token = cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("kiln.token="))
            .unwrap();
        assert_eq!(token, minted.expose());
        let rec = store.token(&crate::crypto::hash_token(token)).await.unwrap().unwrap();
        assert_eq!(
            (rec.host_id, rec.boot, rec.phase.as_str(), rec.revoked),
            (h.id, 1, "provisioning", false)
        );
        p.record(m, BootEvent::IpxeScriptFetched { action: "agent".into() })
            .await;
        let ev = store.events(Some("node-11"), 10).await.unwrap();
        assert!(
            ev.iter().any(|e| e.message.starts_with("ipxe_script_fetched")),
            "{ev:?}"
        );
        let _ = Arc::clone(&store);
    }
}
