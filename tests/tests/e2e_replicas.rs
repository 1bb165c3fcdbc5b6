//! Two `kiln serve` replicas on one PostgreSQL database drive two QEMU hosts (Redfish via sushy-tools), behind one
//! address for agents (a failover TCP proxy, as a load balancer or a Kubernetes Service would be). While the agents
//! write their images, the replica owning one host is killed with SIGKILL: the other takes the host's lease over once
//! it expires, the agent keeps writing through the surviving replica, and the host ends provisioned from that one
//! write: no second agent boot, no write from the start.

use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_tests::{
    failover::FailoverProxy,
    lab::{BmcKind, Lab, target_bin},
    operator::{Cli, SERVER, enroll, kiln_config_with, stage_files, vm},
    osimage::OsImage,
    pg::PgCluster,
};
use serde_json::Value;

const DB: &str = "kiln_lab_replicas";
const LEASE_SECS: u64 = 5;

fn written(h: &Value) -> u64 {
    h["host"]["progress"]["bytes_written"].as_u64().unwrap_or(0)
}

/// Which replica holds each host's lease, from the database.
fn owners(pg: &PgCluster) -> anyhow::Result<Vec<(String, String)>> {
    let out = pg.query(
        DB,
        "SELECT h.name, l.replica FROM host_leases l JOIN hosts h ON h.id = l.host_id WHERE l.expires_ms > 0 ORDER BY h.name",
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(h, r)| (h.to_owned(), r.to_owned()))
        .collect())
}

#[test]
fn the_surviving_replica_completes_a_deploy_whose_replica_was_killed_mid_write() -> anyhow::Result<()> {
    let os = OsImage::get()?;
    let mut lab = Lab::start(
        "replicas",
        &[
            (vm("rep-0", "52:54:00:99:00:61"), BmcKind::Redfish),
            (vm("rep-1", "52:54:00:99:00:62"), BmcKind::Redfish),
        ],
    )?;
    let files = stage_files(&lab, &os)?;
    let pg = PgCluster::start().context("private PostgreSQL cluster (run tests/setup.sh)")?;
    pg.create_database(DB)?;
    // The replicas run in the lab's network namespace: they reach PostgreSQL over its Unix socket.
    let db = pg.socket_url(DB);
    let common =
        format!("database_url = \"{db}\"\n[policy]\nboot_timeout_secs = 300\nbusy_poll_secs = 1\nidle_poll_secs = 5\n");
    // kiln-a runs the netboot services too; agents reach either replica at https://10.99.0.1:8443 (the proxy).
    let config_a = kiln_config_with(
        &lab,
        &files,
        &format!("{common}[replica]\nname = \"kiln-a\"\nlease_ttl_secs = {LEASE_SECS}\n"),
    )?;
    let data_a = lab.kiln_data();
    lab.start_replica(
        "kiln-a",
        &format!("{SERVER}:8444"),
        &data_a,
        &["--config", &config_a.display().to_string()],
    )?;
    let data_b = lab.dir.join("kiln-data-b");
    std::fs::create_dir_all(data_b.join("tls"))?;
    for f in ["secret.key", "admin.token", "tls/ca.key", "tls/ca.pem"] {
        std::fs::copy(data_a.join(f), data_b.join(f))?;
    }
    let config_b = lab.dir.join("kiln-b.toml");
    std::fs::write(
        &config_b,
        format!(
            "api_url = \"https://{SERVER}:8443\"\nheartbeat_secs = 2\n{common}[replica]\nname = \"kiln-b\"\nlease_ttl_secs = {LEASE_SECS}\n"
        ),
    )?;
    lab.start_replica(
        "kiln-b",
        &format!("{SERVER}:8445"),
        &data_b,
        &["--config", &config_b.display().to_string()],
    )?;
    let proxy = FailoverProxy::start(
        &lab.ns,
        format!("{SERVER}:8443").parse()?,
        vec![format!("{SERVER}:8444").parse()?, format!("{SERVER}:8445").parse()?],
    )?;
    let cli = Cli {
        lab: &lab,
        kiln: target_bin("kiln")?,
    };
    let hosts = lab.hosts.clone();
    for h in &hosts {
        enroll(&cli, &lab, h)?;
    }
    for h in &hosts {
        cli.wait_state(&h.name, "available", Duration::from_secs(600))?;
    }
    let owned = owners(&pg)?;
    println!("leases after inspection: {owned:?}");
    anyhow::ensure!(owned.len() == 2, "both hosts leased: {owned:?}");
    // The agents talk to the replica that owns rep-0, the one about to be killed: its death then takes both the
    // lease and the agent's connection, and the agent's retries must find the other replica through the proxy.
    let victim = owned
        .iter()
        .find(|(h, _)| h == "rep-0")
        .map(|(_, r)| r.clone())
        .context("rep-0 has no lease")?;
    proxy.prefer(if victim == "kiln-a" { 0 } else { 1 });

    let image_url = format!("http://{SERVER}:8080/boot/files/debian.qcow2");
    let checksum = format!("sha256:{}", os.sha256("debian.qcow2")?);
    for h in &hosts {
        cli.run(&[
            "host",
            "provision",
            &h.name,
            "--image",
            &image_url,
            "--checksum",
            &checksum,
        ])?;
    }
    // Both agents writing; kill the replica that owns rep-0.
    for h in &hosts {
        cli.wait_host(&h.name, "the agent writing", Duration::from_secs(600), |v| {
            written(v) > 32 << 20
        })?;
    }
    anyhow::ensure!(
        owners(&pg)?.iter().any(|(h, r)| h == "rep-0" && *r == victim),
        "rep-0 changed hands before the kill"
    );
    let survivor = if victim == "kiln-a" { "kiln-b" } else { "kiln-a" };
    let at_kill = written(&cli.host("rep-0")?);
    let t = Instant::now();
    println!("killing {victim} (owner of rep-0) with SIGKILL at {at_kill} bytes written");
    lab.kill_replica(&victim)?;
    let h = cli.wait_host("rep-0", "the write going on", Duration::from_secs(300), |v| {
        written(v) > at_kill + (16 << 20) || v["host"]["state"] == "provisioned"
    })?;
    println!(
        "rep-0 still writing {:?} after the kill: {}",
        t.elapsed(),
        h["host"]["progress"]
    );
    let mut done = Vec::new();
    for h in &hosts {
        done.push(cli.wait_state(&h.name, "provisioned", Duration::from_secs(600))?);
    }
    println!("both provisioned {:?} after the kill", t.elapsed());
    let owned = owners(&pg)?;
    anyhow::ensure!(
        owned.iter().all(|(_, r)| r == survivor),
        "{survivor} holds every lease now: {owned:?}"
    );
    for h in &done {
        // Inspection and this deploy: two agent boots; the kill caused no third.
        anyhow::ensure!(h["host"]["counters"]["boots"] == 2, "a second agent boot: {h}");
        anyhow::ensure!(h["host"]["counters"]["deploys"] == 1, "{h}");
    }
    let served = |i: usize| proxy.served[i].load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "connections through the proxy (CLI and agents): kiln-a {}, kiln-b {}",
        served(0),
        served(1)
    );

    drop(proxy);
    lab.finish()
}
