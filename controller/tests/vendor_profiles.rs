//! `kiln serve` against every vendor profile of the Redfish emulator (Dell iDRAC9, HPE iLO 4 and iLO 5, Lenovo XCC,
//! Supermicro X12, AMI/Gigabyte, the DMTF mockup, each enforcing its BMC's quirks): one host behind each is enrolled
//! with kiln's real Redfish driver, inspected and provisioned. The emulated host "boots" from whatever the override
//! says when power is applied; a network boot runs the simulator's firmware and agent (kiln's real netboot lookup and
//! agent API over HTTPS), so the whole job runs as with hardware, minus the disk. A second host behind each profile
//! has the `redfish-virtualmedia://` address: kiln inserts its per-boot ISO through the vendor's VirtualMedia quirks,
//! the emulated host boots the virtual CD, and the simulated firmware reads the agent's arguments (kiln's URL, the
//! boot's token) off the ISO it fetched from kiln, as GRUB would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::server::{Appliance, Config};
use kiln_bmc::{BootMode, BootTarget};
use kiln_engine::types::HostName;
use kiln_tests::vendor_redfish::{self, ALL, BootHook, layout};
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until every host in `names` is in `state`; fails at once on an error state, naming the host and why.
    async fn wait_all(&self, names: &[String], state: &str, timeout: Duration) {
        let t = Instant::now();
        loop {
            let (_, hosts) = self.call(reqwest::Method::GET, "/api/v1/hosts", None).await;
            let hosts = hosts.as_array().cloned().unwrap_or_default();
            let of = |n: &str| hosts.iter().find(|h| h["name"] == n).cloned().unwrap_or(Value::Null);
            for n in names {
                let h = of(n);
                assert_ne!(h["state"], "error", "{n} failed: {h:#}");
            }
            if names.iter().all(|n| of(n)["state"] == state) {
                return;
            }
            if t.elapsed() >= timeout {
                // Each host that did not get there, with what it went through.
                let mut late = Vec::new();
                for n in names.iter().filter(|n| of(n)["state"] != state) {
                    let (_, events) = self
                        .call(reqwest::Method::GET, &format!("/api/v1/hosts/{n}/events"), None)
                        .await;
                    late.push(format!("{n} ({}): {events:#}", of(n)["state"]));
                }
                panic!("not every host reached {state}:\n{}", late.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiln_serve_inspects_and_provisions_a_host_behind_every_vendor_profile() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        simulate: true,
        heartbeat_secs: 1,
        bmc_calls_per_minute: 120,
        ..Config::default()
    };
    // The ISO's ramdisk files: the simulated firmware only reads the GRUB configuration.
    for f in ["vmlinuz", "initramfs", "grubx64.efi"] {
        std::fs::write(dir.path().join(f), format!("not a real {f}")).unwrap();
    }
    cfg.virtual_media = Some(kiln::server::VirtualMediaConfig {
        kernel: dir.path().join("vmlinuz"),
        initramfs: dir.path().join("initramfs"),
        efi_loader: dir.path().join("grubx64.efi"),
        bios_loader: None,
        cmdline: "console=ttyS0".into(),
        url: None,
    });
    cfg.policy.busy_poll_secs = 1;
    cfg.policy.idle_poll_secs = 2;
    let mut drivers = kiln_engine::drivers::Drivers::default();
    drivers.options.graceful_off_timeout = Duration::from_secs(5);
    let app = Appliance::open(cfg, Arc::new(drivers)).await.unwrap();
    let sim = app.sim.clone().expect("simulator mode");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kiln::server::run(app, listener, async move {
        let _ = stopped.await;
    }));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(kiln_http::tls::ca_path(dir.path())).unwrap()).unwrap();
    let api = Api {
        http: reqwest::Client::builder().add_root_certificate(ca).build().unwrap(),
        base: format!("https://{addr}"),
        token: std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned(),
    };

    // One emulator per profile; a network boot of its host starts the simulated firmware and agent.
    let mut emus = Vec::new();
    let mut names = Vec::new();
    let runs = ALL.into_iter().flat_map(|p| [(p, false), (p, true)]);
    for (i, (profile, vmedia)) in runs.enumerate() {
        let name = format!("vendor-{i}");
        let host: HostName = name.parse().unwrap();
        let sim = sim.clone();
        let hook = BootHook(Arc::new(move |from: &'static str, image: Option<String>| {
            match (from, image) {
                ("virtual-cd", Some(url)) => {
                    sim.media_boot_heard(&host, BootTarget::VirtualCd { mode: BootMode::Uefi }, &url)
                }
                ("pxe", _) => sim.boot_heard(&host, BootTarget::Pxe { mode: BootMode::Uefi }),
                _ => sim.boot_heard(&host, BootTarget::Disk { mode: BootMode::Uefi }),
            }
        }));
        let (emu_addr, shared) = vendor_redfish::start(profile, |e| e.on_boot = Some(hook)).await;
        let l = layout(profile);
        let (code, body) = api
            .call(
                reqwest::Method::POST,
                "/api/v1/hosts",
                Some(json!({
                    "name": name,
                    "bmc": {
                        "address": format!(
                            "{}://{emu_addr}{}",
                            if vmedia { "redfish-virtualmedia+http" } else { "redfish+http" },
                            l.system
                        ),
                        "username": vendor_redfish::USER,
                        "password": vendor_redfish::PASSWORD,
                    },
                    // A virtual-media host needs no boot MAC (nothing network-boots); this one has none.
                    "boot_mac": if vmedia { Value::Null } else { l.mac.into() },
                })),
            )
            .await;
        assert_eq!(code, 201, "{profile:?}: {body}");
        emus.push(((profile, vmedia), shared));
        names.push(name);
    }

    // Inspection: each host PXE-boots the (simulated) agent through its vendor's quirks, then is powered off.
    api.wait_all(&names, "available", Duration::from_secs(180)).await;
    for (name, (profile, emu)) in names.iter().zip(&emus) {
        let (_, inv) = api
            .call(reqwest::Method::GET, &format!("/api/v1/hosts/{name}/inspection"), None)
            .await;
        assert!(inv["inventory"].to_string().contains("simulator"), "{profile:?}: {inv}");
        let e = emu.lock().unwrap();
        let how = if profile.1 { "virtual-cd" } else { "pxe" };
        assert!(
            e.boots.contains(&how),
            "{profile:?} never booted from {how}: {:?}",
            e.boots
        );
        if profile.1 {
            assert!(
                e.image.is_none(),
                "{profile:?}: the ISO was not ejected after inspection"
            );
        }
        assert_eq!(e.power, "Off", "{profile:?}: an available host is powered off");
    }

    // Provisioning: another agent boot, then the override set to the disk and the host cycled.
    for name in &names {
        let (code, body) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/hosts/{name}/provision"),
                Some(json!({"image": {"url": "http://192.0.2.2/os.qcow2", "checksum": format!("sha256:{}", "ab".repeat(32))}})),
            )
            .await;
        assert_eq!(code, 202, "{name}: {body}");
    }
    api.wait_all(&names, "provisioned", Duration::from_secs(180)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (profile, emu) in &emus {
        loop {
            let (boots, power) = {
                let e = emu.lock().unwrap();
                (e.boots.clone(), e.power)
            };
            if boots.last() == Some(&"disk") && power == "On" {
                println!("{profile:?}: booted {boots:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{profile:?} did not boot its disk after provisioning: {boots:?}, power {power}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
