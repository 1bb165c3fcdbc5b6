//! kiln's store (`kiln_engine::store`) against SQLite (temp dir) and a private PostgreSQL cluster: the same suite on
//! both backends.

use std::sync::Arc;

use kiln_bmc::{PowerAction, PowerState, Secret};
use kiln_images::protocol::{CommandKind, Outcome};

use kiln_engine::crypto::SecretKey;
use kiln_engine::machine::{HostError, Job, JobPhase, Operation, State};
use kiln_engine::model::{BmcInfo, Counters, HostSpec, Requests, StatusUpdate};
use kiln_engine::store::*;
use kiln_engine::types::{HostName, MacAddr, Ts};
use kiln_tests::pg::PgCluster;

fn key() -> SecretKey {
    SecretKey::from_bytes(&[42u8; 32]).unwrap()
}

fn spec(mac: &str) -> HostSpec {
    HostSpec {
        bmc: Some(BmcInfo {
            // One BMC per host (two hosts never share one): the port follows the MAC's last byte.
            address: format!(
                "ipmi://127.0.0.1:{}",
                6000 + u16::from_str_radix(mac.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0)
            )
            .parse()
            .unwrap(),
            username: "admin".into(),
            password: Secret::new("hunter2-sekret"),
            tls: Default::default(),
        }),
        boot_mac: Some(mac.parse().unwrap()),
        labels: [("rack".to_string(), "r1".to_string())].into(),
        user_data: Some("#cloud-config\n# kubeadm-join-token-abcdef\n".into()),
        ..Default::default()
    }
}

async fn suite(s: Arc<dyn Store>) {
    let t = Ts(1_700_000_000_000);
    let n1: HostName = "node-1".parse().unwrap();
    let h = s.create_host(&n1, &spec("52:54:00:00:00:01"), "test", t).await.unwrap();
    assert_eq!(
        (h.name.as_str(), h.state.clone(), h.generation),
        ("node-1", State::Unmanaged, 1)
    );
    assert_eq!(h.spec, spec("52:54:00:00:00:01"), "spec round trips, password unsealed");
    assert!(matches!(
        s.create_host(&n1, &spec("52:54:00:00:00:09"), "test", t).await,
        Err(StoreError::HostExists { .. })
    ));
    let n2: HostName = "node-2".parse().unwrap();
    let mut same_mac = spec("52:54:00:00:00:01");
    same_mac.bmc = spec("52:54:00:00:00:02").bmc;
    assert!(matches!(
        s.create_host(&n2, &same_mac, "test", t).await,
        Err(StoreError::MacInUse { .. })
    ));
    // Two hosts never drive one machine: the same BMC (however the address spells its scheme) is refused, naming
    // the host that has it.
    let mut same_bmc = spec("52:54:00:00:00:02");
    same_bmc.bmc = spec("52:54:00:00:00:01").bmc;
    match s.create_host(&n2, &same_bmc, "test", t).await {
        Err(StoreError::BmcInUse { other, .. }) => assert_eq!(other, "node-1"),
        other => panic!("expected BmcInUse, got {other:?}"),
    }
    // Several hosts at once (an import): a refusal of the last enrolls none of them.
    let (n3, n4): (HostName, HostName) = ("node-3".parse().unwrap(), "node-4".parse().unwrap());
    assert!(matches!(
        s.create_hosts(
            &[
                (n3.clone(), spec("52:54:00:00:00:03"), "test".into()),
                (n4.clone(), same_mac.clone(), "test".into())
            ],
            t
        )
        .await,
        Err(StoreError::MacInUse { .. })
    ));
    assert!(
        s.host(&n3).await.unwrap().is_none(),
        "node-3 enrolled although node-4 was refused"
    );
    // An enrollment writes its event with the host; a refused one neither.
    let enrolled = |host: &'static str| {
        let s = s.clone();
        async move {
            s.events(Some(host), 10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.kind, e.message))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(enrolled("node-1").await, [("enrolled".to_owned(), "test".to_owned())]);
    assert_eq!(enrolled("node-3").await, []);
    s.prune_events(t.plus_ms(1), 1000).await.unwrap(); // the event checks below start from none
    let h2 = s.create_host(&n2, &HostSpec::default(), "test", t).await.unwrap();
    assert!(h2.spec.bmc.is_none());
    // Many enrollments at once (kubectl apply of an inventory) neither wait on each other for the pool nor fail.
    let started = std::time::Instant::now();
    let many = futures::future::join_all((0..24).map(|i| {
        let s = s.clone();
        async move {
            let name: HostName = format!("burst-{i}").parse().unwrap();
            s.create_host(&name, &HostSpec::default(), "test", t).await
        }
    }))
    .await;
    assert!(many.iter().all(Result::is_ok), "{many:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for h in many.into_iter().flatten() {
        s.delete_host(h.id).await.unwrap();
    }

    assert_eq!(s.host(&n1).await.unwrap().unwrap().id, h.id);
    assert_eq!(s.host_by_id(h.id).await.unwrap().unwrap().name, n1);
    assert_eq!(
        s.host_by_mac(&"52:54:00:00:00:01".parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .id,
        h.id
    );
    assert!(
        s.host_by_mac(&"52:54:00:00:00:02".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.hosts().await.unwrap().len(), 2);

    // MACs learned from node-2's BMC find node-2; one that is node-1's boot MAC stays node-1's.
    let mac = |m: &str| -> MacAddr { m.parse().unwrap() };
    let kept = s
        .set_learned_macs(
            h2.id,
            &[
                mac("52:54:00:00:00:01"),
                mac("52:54:00:00:00:22"),
                mac("52:54:00:00:00:23"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(kept, vec![mac("52:54:00:00:00:22"), mac("52:54:00:00:00:23")]);
    assert_eq!(s.learned_macs(h2.id).await.unwrap(), kept);
    assert_eq!(
        s.host_by_mac(&mac("52:54:00:00:00:23")).await.unwrap().unwrap().id,
        h2.id
    );
    assert_eq!(
        s.host_by_mac(&mac("52:54:00:00:00:01")).await.unwrap().unwrap().id,
        h.id
    );
    // A MAC learned for node-2 is not node-1's to learn; learning again replaces the list.
    assert!(
        s.set_learned_macs(h.id, &[mac("52:54:00:00:00:22")])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.set_learned_macs(h2.id, &[mac("52:54:00:00:00:24")]).await.unwrap(),
        vec![mac("52:54:00:00:00:24")]
    );
    assert!(s.host_by_mac(&mac("52:54:00:00:00:22")).await.unwrap().is_none());

    // Operator writes bump the generation; the executor's write loses against them.
    let mut sp = h.spec.clone();
    sp.image = Some(kiln_images::protocol::ImageSpec {
        url: "http://x/i.raw".into(),
        checksum: "ab".repeat(32),
        checksum_type: Default::default(),
        format: None,
    });
    let req = Requests {
        power: Some(PowerAction::On),
        ..Default::default()
    };
    let h = s
        .update_spec(h.id, h.generation, &sp, &req, t.plus_ms(1))
        .await
        .unwrap();
    assert_eq!((h.generation, h.requests.clone()), (2, req.clone()));
    // A write from a stale read is refused and changes nothing: an operator's request is never revived or lost.
    let stale = Requests {
        power: Some(PowerAction::Off),
        ..Default::default()
    };
    assert!(matches!(
        s.update_spec(h.id, 1, &sp, &stale, t.plus_ms(2)).await,
        Err(StoreError::Changed { .. })
    ));
    let again = s.host_by_id(h.id).await.unwrap().unwrap();
    assert_eq!((again.generation, again.requests.clone()), (2, req.clone()));
    let job = Job {
        phase: JobPhase::Running { command: 3 },
        boot: 3,
        started: t,
        phase_since: t,
        retries: 1,
    };
    let st = StatusUpdate {
        state: State::Provisioning(job),
        requests: Requests::default(),
        power: Some(PowerState::On),
        counters: Counters {
            boots: 3,
            ..Default::default()
        },
        next_wake: Some(t.plus_ms(5)),
    };
    assert!(
        !s.save_status(h.id, 1, &st, t).await.unwrap(),
        "stale generation must not write"
    );
    assert!(s.save_status(h.id, 2, &st, t).await.unwrap());
    // The states that run a job, read without the rest of the host (the executor's slot count).
    let jobs = s.job_states().await.unwrap();
    assert_eq!(jobs, [(h.id, st.state.clone())]);
    // Hosts a discovery boot may be bound to: running a job, with neither a boot MAC nor a learned MAC. node-1 has
    // a boot MAC and node-2 runs no job; a host without MACs running one is listed until it learns one.
    assert!(s.discovery_hosts().await.unwrap().is_empty());
    let w = s
        .create_host(&"wait-1".parse().unwrap(), &HostSpec::default(), "test", t)
        .await
        .unwrap();
    assert!(s.save_status(w.id, w.generation, &st, t).await.unwrap());
    let waiting = s.discovery_hosts().await.unwrap();
    assert_eq!(waiting.iter().map(|h| h.id).collect::<Vec<_>>(), [w.id]);
    assert_eq!(waiting[0].state, st.state);
    s.set_learned_macs(w.id, &[mac("52:54:00:00:00:31")]).await.unwrap();
    assert!(s.discovery_hosts().await.unwrap().is_empty());
    s.delete_host(w.id).await.unwrap();
    let h = s.host(&n1).await.unwrap().unwrap();
    assert_eq!(
        (h.state.clone(), h.power, h.counters.boots, h.generation, h.next_wake),
        (st.state.clone(), Some(PowerState::On), 3, 3, Some(t.plus_ms(5)))
    );
    let err = State::Error(HostError {
        operation: Operation::Provisioning,
        kind: "boot_timeout".into(),
        message: "m".into(),
        retries: 0,
        at: t,
        retry_at: None,
    });
    assert!(
        s.save_status(
            h.id,
            3,
            &StatusUpdate {
                state: err.clone(),
                ..st.clone()
            },
            t
        )
        .await
        .unwrap()
    );
    assert_eq!(s.host(&n1).await.unwrap().unwrap().state, err);

    // Inspection, phases, events.
    s.put_inspection(h.id, &serde_json::json!({"cpu": 4}), t).await.unwrap();
    s.put_inspection(h.id, &serde_json::json!({"cpu": 8}), t).await.unwrap();
    assert_eq!(s.inspection(h.id).await.unwrap().unwrap().0["cpu"], 8);
    s.start_phase(h.id, "provisioning", t).await.unwrap();
    s.start_phase(h.id, "provisioning.booting", t).await.unwrap();
    let ended = s
        .end_phase(h.id, "provisioning.booting", t.plus_ms(250), "ok")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.started, t);
    assert!(
        s.end_phase(h.id, "provisioning.booting", t.plus_ms(300), "ok")
            .await
            .unwrap()
            .is_none()
    );
    let ph = s.phases(h.id).await.unwrap();
    assert_eq!(ph.len(), 2);
    assert_eq!(
        (ph[1].phase.as_str(), ph[1].ended),
        ("provisioning.booting", Some(t.plus_ms(250)))
    );
    assert_eq!(ph[0].ended, None);
    // Across hosts, only finished records of the phase asked for.
    let fin = s.finished_phases("provisioning.booting", 10).await.unwrap();
    assert_eq!(fin.len(), 1, "{fin:?}");
    assert_eq!((fin[0].0.as_str(), fin[0].1.ended), ("node-1", Some(t.plus_ms(250))));
    assert!(
        s.finished_phases("provisioning", 10).await.unwrap().is_empty(),
        "still running"
    );

    // What the executor reads on each pass: the hosts due (next wake passed, or none set), and the states that run
    // a job (node-1 provisions, waking at t+5 ms; node-2 has no wake set yet, so it is due at once).
    let due = |v: Vec<kiln_engine::model::Host>| {
        let mut n: Vec<String> = v.into_iter().map(|h| h.name.to_string()).collect();
        n.sort();
        n
    };
    let due_at = |at: Ts| {
        let s = s.clone();
        async move {
            let ids = s.due_host_ids(at).await.unwrap();
            let hosts = s.hosts_by_ids(&ids).await.unwrap();
            assert_eq!(hosts.len(), ids.len(), "every due id reads as a host");
            hosts
        }
    };
    assert_eq!(due(due_at(t).await), ["node-2"], "node-1 wakes later");
    assert_eq!(due(due_at(t.plus_ms(5)).await), ["node-1", "node-2"]);
    assert!(
        s.hosts_by_ids(&[-7]).await.unwrap().is_empty(),
        "an id without a host reads as nothing"
    );
    assert!(s.job_states().await.unwrap().is_empty(), "node-1 failed: no job runs");

    // A status write and its records are one transaction: a stale write records nothing, a current one ends and
    // starts its phases and adds its events together with the state.
    let journal = Journal {
        ended: vec![("provisioning".into(), "error".into())],
        started: vec!["deprovisioning".into()],
        events: vec![("state".into(), "provisioning -> deprovisioning".into())],
    };
    let at = t.plus_ms(400);
    let gen_now = s.host(&n1).await.unwrap().unwrap().generation;
    assert!(
        s.commit_status(h.id, gen_now - 1, &st, &journal, None, at)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.phases(h.id).await.unwrap().len(), 2, "a stale write starts no phase");
    assert!(
        s.events(Some("node-1"), 100).await.unwrap().is_empty(),
        "a stale write adds no event"
    );
    // Leases of several replicas: a write under a lease another replica took over (a stale epoch) is refused.
    leases(s.as_ref(), h.id, h2.id, &st, at).await;
    let gen_now = s.host(&n1).await.unwrap().unwrap().generation;
    let ended = s
        .commit_status(h.id, gen_now, &st, &journal, None, at)
        .await
        .unwrap()
        .expect("current generation writes");
    assert_eq!(
        ended
            .iter()
            .map(|r| (r.phase.as_str(), r.started, r.ended))
            .collect::<Vec<_>>(),
        [("provisioning", t, Some(at))]
    );
    let ph = s.phases(h.id).await.unwrap();
    assert_eq!(
        (ph.len(), ph[2].phase.as_str(), ph[2].started, ph[2].ended),
        (3, "deprovisioning", at, None)
    );
    let ev = s.events(Some("node-1"), 100).await.unwrap();
    assert_eq!(
        ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["provisioning -> deprovisioning"]
    );
    assert_eq!(s.host(&n1).await.unwrap().unwrap().generation, gen_now + 1);
    s.prune_events(at.plus_ms(1), 1000).await.unwrap();

    for i in 0..5 {
        s.add_event("node-1", t.plus_ms(i), "state", &format!("e{i}"))
            .await
            .unwrap();
    }
    s.add_event("node-2", t, "state", "other").await.unwrap();
    let ev = s.events(Some("node-1"), 3).await.unwrap();
    assert_eq!(
        ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["e2", "e3", "e4"]
    );
    assert_eq!(s.events(None, 100).await.unwrap().len(), 6);

    // Retention: events older than the cut-off go, and each host keeps only its newest ones.
    for i in 0..5 {
        s.add_event("pruned", Ts(i), "e", &format!("old {i}")).await.unwrap();
    }
    for i in 0..7 {
        s.add_event("pruned", t.plus_ms(i), "e", &format!("new {i}"))
            .await
            .unwrap();
    }
    let before = s.events(None, 1000).await.unwrap().len();
    // node-1 and node-2 have at most 5 events: a per-host cap of 5 leaves them alone.
    assert_eq!(s.prune_events(Ts(100), 5).await.unwrap(), 7);
    let kept: Vec<String> = s
        .events(Some("pruned"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(kept, ["new 2", "new 3", "new 4", "new 5", "new 6"]);
    assert_eq!(s.events(None, 1000).await.unwrap().len(), before - 7);

    // Agent tokens, boots, commands.
    s.add_token("hash-a", h.id, 3, "provisioning", Some(&Secret::new("the-token")), t)
        .await
        .unwrap();
    assert_eq!(
        s.token("hash-a").await.unwrap(),
        Some(TokenRecord {
            host_id: h.id,
            boot: 3,
            phase: "provisioning".into(),
            revoked: false
        })
    );
    assert!(s.token("hash-b").await.unwrap().is_none());
    let (rec, host) = s.token_host("hash-a").await.unwrap().unwrap();
    assert_eq!((rec.boot, host.id, host.name.as_str()), (3, h.id, "node-1"));
    assert_eq!(
        host.spec,
        s.host_by_id(h.id).await.unwrap().unwrap().spec,
        "the host as read alone"
    );
    assert!(s.token_host("hash-b").await.unwrap().is_none());
    // Handed out once, sealed until then.
    assert_eq!(s.take_token(h.id, 4).await.unwrap(), TokenHandout::None);
    assert_eq!(
        s.take_token(h.id, 3).await.unwrap(),
        TokenHandout::Token(Secret::new("the-token"))
    );
    assert_eq!(s.take_token(h.id, 3).await.unwrap(), TokenHandout::AlreadyTaken);
    s.revoke_tokens(h.id).await.unwrap();
    assert!(s.token("hash-a").await.unwrap().is_none(), "revoked tokens are deleted");
    assert!(s.agent_boot(h.id, 3).await.unwrap().is_none());
    assert!(s.heartbeat(h.id, 3, t).await.unwrap(), "the boot's first heartbeat");
    assert!(!s.heartbeat(h.id, 3, t.plus_ms(10)).await.unwrap());
    let report = |n: u64| serde_json::json!({"phase": "writing", "bytes_written": n});
    assert!(
        s.record_progress(h.id, 3, "writing", &report(5), t.plus_ms(20))
            .await
            .unwrap(),
        "the first report of a phase is a change"
    );
    assert!(
        !s.record_progress(h.id, 3, "writing", &report(7), t.plus_ms(30))
            .await
            .unwrap()
    );
    let b = s.agent_boot(h.id, 3).await.unwrap().unwrap();
    assert_eq!(
        (
            b.first_heartbeat,
            b.last_heartbeat,
            b.progress.unwrap()["bytes_written"].as_u64()
        ),
        (t, t.plus_ms(30), Some(7)),
        "a progress report is a heartbeat"
    );
    assert!(
        s.record_progress(h.id, 3, "verifying", &report(9), t.plus_ms(40))
            .await
            .unwrap()
    );
    // A report before any heartbeat (a boot kiln has not seen yet) starts the boot's record.
    assert!(s.record_progress(h.id, 5, "writing", &report(1), t).await.unwrap());
    assert_eq!(s.agent_boot(h.id, 5).await.unwrap().unwrap().first_heartbeat, t);
    assert!(!s.heartbeat(h.id, 5, t.plus_ms(1)).await.unwrap());
    s.enqueue_command(h.id, 3, 3, &CommandKind::Inspect, t).await.unwrap();
    s.enqueue_command(h.id, 3, 3, &CommandKind::EraseDisks, t)
        .await
        .unwrap();
    let c = s.pending_command(h.id, 3).await.unwrap().unwrap();
    assert_eq!(
        (c.id, c.command.clone(), c.status),
        (3, CommandKind::Inspect, CommandStatus::Queued),
        "enqueue is idempotent"
    );
    assert!(s.pending_command(h.id, 2).await.unwrap().is_none());
    let ok = Outcome::Succeeded {
        detail: serde_json::json!({"disk": "/dev/vda"}),
    };
    assert!(
        s.set_command_status(h.id, 3, CommandStatus::Succeeded, Some(&ok), t)
            .await
            .unwrap()
    );
    assert!(
        !s.set_command_status(h2.id, 3, CommandStatus::Succeeded, Some(&ok), t)
            .await
            .unwrap()
    );
    assert!(s.pending_command(h.id, 3).await.unwrap().is_none());
    assert_eq!(s.command(h.id, 3).await.unwrap().unwrap().result, Some(ok.clone()));
    // The agent's result and its event, in one transaction; a retried report writes nothing.
    s.enqueue_command(h.id, 3, 4, &CommandKind::Reboot, t).await.unwrap();
    let failed = Outcome::Failed {
        kind: "io".into(),
        message: "no".into(),
    };
    let event = ("node-1", "agent", "command 4 failed");
    let events = s.events(Some("node-1"), 100).await.unwrap().len();
    assert_eq!(
        s.finish_command(h.id, 2, 4, &failed, event, t).await.unwrap(),
        Finish::NotFound,
        "a command of another boot"
    );
    assert_eq!(
        s.finish_command(h.id, 3, 9, &failed, event, t).await.unwrap(),
        Finish::NotFound
    );
    assert_eq!(
        s.finish_command(h.id, 3, 4, &failed, event, t).await.unwrap(),
        Finish::Recorded
    );
    assert_eq!(
        s.finish_command(h.id, 3, 4, &ok, event, t).await.unwrap(),
        Finish::AlreadyFinished
    );
    let c = s.command(h.id, 4).await.unwrap().unwrap();
    assert_eq!((c.status, c.result), (CommandStatus::Failed, Some(failed)));
    assert_eq!(s.events(Some("node-1"), 100).await.unwrap().len(), events + 1);

    // Deleting a host drops its tokens, commands and timing, but keeps its events.
    s.delete_host(h.id).await.unwrap();
    assert!(s.host(&n1).await.unwrap().is_none());
    assert!(s.token("hash-a").await.unwrap().is_none());
    assert!(s.command(h.id, 3).await.unwrap().is_none());
    assert!(s.phases(h.id).await.unwrap().is_empty());
    assert_eq!(s.events(Some("node-1"), 10).await.unwrap().len(), 6);
    assert!(matches!(
        s.update_spec(h.id, h.generation, &sp, &Requests::default(), t).await,
        Err(StoreError::HostNotFound { .. })
    ));
}

/// Replicas and host leases: the first claim and takeovers after expiry bump the epoch, renewals keep it, a held
/// lease cannot be claimed by another replica, leaving frees them at once, and a status write fenced with a lease
/// that is no longer current is refused.
async fn leases(s: &dyn Store, a: i64, b: i64, st: &StatusUpdate, t: Ts) {
    let ttl = 15_000;
    s.replica_heartbeat("kiln-a", t).await.unwrap();
    s.replica_heartbeat("kiln-b", t.plus_ms(1)).await.unwrap();
    s.replica_heartbeat("kiln-a", t.plus_ms(2)).await.unwrap();
    assert_eq!(s.live_replicas(t).await.unwrap(), ["kiln-a", "kiln-b"]);
    assert_eq!(
        s.live_replicas(t.plus_ms(2)).await.unwrap(),
        ["kiln-a"],
        "kiln-b's heartbeat is older"
    );
    let ids = s.host_ids().await.unwrap();
    assert!(ids.contains(&a) && ids.contains(&b), "{ids:?}");
    assert_eq!(s.claim_lease(a, "kiln-a", t, t.plus_ms(ttl)).await.unwrap(), Some(1));
    assert_eq!(
        s.claim_lease(a, "kiln-b", t, t.plus_ms(ttl)).await.unwrap(),
        None,
        "held by kiln-a"
    );
    assert_eq!(
        s.claim_lease(a, "kiln-a", t, t.plus_ms(ttl)).await.unwrap(),
        Some(1),
        "kiln-a's own: same epoch"
    );
    assert_eq!(s.claim_lease(b, "kiln-b", t, t.plus_ms(ttl)).await.unwrap(), Some(1));
    assert_eq!(
        s.claim_lease(-7, "kiln-b", t, t.plus_ms(ttl)).await.unwrap(),
        None,
        "no such host"
    );
    let renewed = s
        .renew_leases("kiln-a", t.plus_ms(1000), t.plus_ms(1000 + ttl))
        .await
        .unwrap();
    assert_eq!(renewed, [(a, 1)]);
    let gen_a = s.host_by_id(a).await.unwrap().unwrap().generation;
    let fence = |replica: &str, epoch| Fence {
        replica: replica.into(),
        epoch,
    };
    // kiln-a stops renewing (paused): after expiry kiln-b takes host a over with a new epoch, and kiln-a's write
    // under its old epoch is refused; kiln-b's goes through.
    let later = t.plus_ms(1000 + ttl + 1);
    assert_eq!(
        s.claim_lease(a, "kiln-b", later, later.plus_ms(ttl)).await.unwrap(),
        Some(2)
    );
    assert!(
        s.renew_leases("kiln-a", later, later.plus_ms(ttl))
            .await
            .unwrap()
            .is_empty(),
        "kiln-a lost it"
    );
    let journal = Journal::default();
    assert!(
        s.commit_status(a, gen_a, st, &journal, Some(&fence("kiln-a", 1)), later)
            .await
            .unwrap()
            .is_none(),
        "a write under a lost lease"
    );
    assert!(
        s.commit_status(a, gen_a, st, &journal, Some(&fence("kiln-b", 1)), later)
            .await
            .unwrap()
            .is_none(),
        "a write under a stale epoch"
    );
    assert!(
        s.commit_status(a, gen_a, st, &journal, Some(&fence("kiln-b", 2)), later)
            .await
            .unwrap()
            .is_some(),
        "the holder's write"
    );
    // The holder releases one host (another replica should own it), and leaving frees all the others at once.
    s.release_lease(a, "kiln-b").await.unwrap();
    assert_eq!(
        s.claim_lease(a, "kiln-a", later, later.plus_ms(ttl)).await.unwrap(),
        Some(3)
    );
    s.leave("kiln-a").await.unwrap();
    assert_eq!(s.live_replicas(t).await.unwrap(), ["kiln-b"]);
    assert_eq!(
        s.claim_lease(a, "kiln-b", later, later.plus_ms(ttl)).await.unwrap(),
        Some(4)
    );
    s.leave("kiln-b").await.unwrap();
    // A takeover claims many at once: both freed leases, each with a new epoch, the missing host left out; claimed
    // again by their holder, the epochs stay; another replica gets none.
    let mut took = s
        .claim_leases(&[a, b, -7], "kiln-c", later, later.plus_ms(ttl))
        .await
        .unwrap();
    took.sort_unstable();
    let mut want = vec![(a, 5), (b, 2)];
    want.sort_unstable();
    assert_eq!(took, want);
    let mut again = s
        .claim_leases(&[b, a], "kiln-c", later, later.plus_ms(ttl))
        .await
        .unwrap();
    again.sort_unstable();
    assert_eq!(again, want);
    assert!(
        s.claim_leases(&[a, b], "kiln-d", later, later.plus_ms(ttl))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.claim_leases(&[], "kiln-d", later, later.plus_ms(ttl))
            .await
            .unwrap()
            .is_empty()
    );
    s.leave("kiln-c").await.unwrap();
}

#[tokio::test]
async fn sqlite_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = connect(None, dir.path(), key()).await.unwrap();
    assert_eq!(s.backend(), "sqlite");
    assert!(
        s.announcements().await.unwrap().is_none(),
        "one process per SQLite store: nothing to hear"
    );
    suite(s).await;
    // Migrations are idempotent, passwords are not in the file, and another key cannot read them.
    let s = connect(None, dir.path(), key()).await.unwrap();
    let h9 = s
        .create_host(&"node-9".parse().unwrap(), &spec("52:54:00:00:00:99"), "test", Ts(0))
        .await
        .unwrap();
    let write = CommandKind::WriteImage {
        image: kiln_images::protocol::ImageSpec {
            url: "http://x/i".into(),
            checksum: "0".repeat(64),
            checksum_type: Default::default(),
            format: None,
        },
        root_device_hints: Default::default(),
        config_drive: Some(kiln_images::protocol::ConfigDrive {
            meta_data: serde_json::json!({}),
            user_data: Some("# kubeadm-join-token-abcdef\n".into()),
            network_data: None,
        }),
        registry: None,
    };
    s.enqueue_command(h9.id, 1, 1, &write, Ts(0)).await.unwrap();
    assert_eq!(
        s.command(h9.id, 1).await.unwrap().unwrap().command,
        write,
        "sealed and opened"
    );
    drop(s);
    for f in ["kiln.db", "kiln.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
            assert!(
                !bytes.windows(14).any(|w| w == b"hunter2-sekret"),
                "plaintext password in {f}"
            );
            assert!(
                !bytes.windows(26).any(|w| w == b"kubeadm-join-token-abcdef\n"),
                "plaintext user data in {f}"
            );
        }
    }
    let other = connect(None, dir.path(), SecretKey::from_bytes(&[1u8; 32]).unwrap())
        .await
        .unwrap();
    let err = other.host(&"node-9".parse().unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::Crypto { .. }), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("hunter2"));
}

#[tokio::test]
async fn postgres_store_suite() {
    let pg = PgCluster::start().expect("private PostgreSQL 15 cluster (run tests/setup.sh)");
    let url = pg.create_database("kiln_suite").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = connect(Some(&url), dir.path(), key()).await.unwrap();
    assert_eq!(s.backend(), "postgres");
    suite(s).await;
    // Migrating an already-migrated database is a no-op.
    let s = connect(Some(&url), dir.path(), key()).await.unwrap();
    assert!(s.hosts().await.unwrap().iter().all(|h| h.name.as_str() != "node-1"));
    // Replicas hear each other's announcements (LISTEN/NOTIFY), through another connection of the same database.
    let other = connect(Some(&url), dir.path(), key()).await.unwrap();
    let mut heard = other.announcements().await.unwrap().expect("PostgreSQL announces");
    s.announce("kiln-a", Some(7)).await.unwrap();
    s.announce("kiln-b", None).await.unwrap();
    for want in [("kiln-a".to_owned(), Some(7)), ("kiln-b".to_owned(), None)] {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), futures::StreamExt::next(&mut heard))
            .await
            .expect("an announcement within 5 s");
        assert_eq!(got, Some(want));
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted (and the directory removed) when dropped, even when the
/// test fails.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "kiln-test-small-disk",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Fills the file system with one file until a write fails with "no space"; returns the file's path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A status write for an unmanaged host, `boots` told apart.
fn idle(boots: u32) -> StatusUpdate {
    StatusUpdate {
        state: State::Unmanaged,
        requests: Requests::default(),
        power: Some(PowerState::Off),
        counters: Counters {
            boots: boots.into(),
            ..Default::default()
        },
        next_wake: None,
    }
}

/// An appliance's disk fills up (logs, images) and is then freed: while full, writes fail with an error that says
/// so; once space is back, every write succeeds again on every pooled connection, with nothing left locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_recovers_after_the_disk_was_full() {
    let disk = SmallDisk::mount("3m");
    let s = connect(None, disk.dir.path(), key()).await.unwrap();
    let t = Ts(1_700_000_000_000);
    let first = s
        .create_host(&"before-0".parse().unwrap(), &spec("52:54:00:00:01:00"), "test", t)
        .await
        .unwrap();
    let filler = disk.fill();
    let big = |i: u32| {
        let mut sp = spec(&format!("52:54:00:00:02:{:02x}", i % 256 + 16));
        sp.bmc = spec(&format!("52:54:00:00:03:{:02x}", i % 256 + 16)).bmc;
        sp.user_data = Some(format!("#cloud-config\n# {}\n", "x".repeat(256 << 10)));
        sp
    };
    let mut failures = Vec::new();
    for i in 0..8u32 {
        let name: HostName = format!("full-{i}").parse().unwrap();
        if let Err(e) = s.create_host(&name, &big(i), "test", t).await {
            failures.push(kiln_engine::bmcs::chain(&e));
        }
        let st = idle(i);
        let h = s.host_by_id(first.id).await;
        if let Ok(Some(h)) = h
            && let Err(e) = s.save_status(first.id, h.generation, &st, t).await
        {
            failures.push(kiln_engine::bmcs::chain(&e));
        }
        if let Err(e) = s
            .put_inspection(first.id, &serde_json::json!({"blob": "y".repeat(128 << 10)}), t)
            .await
        {
            failures.push(kiln_engine::bmcs::chain(&e));
        }
    }
    assert!(!failures.is_empty(), "no write failed on a full disk");
    assert!(
        failures.iter().any(|f| f.contains("full")),
        "the errors say the disk is full: {failures:?}"
    );

    std::fs::remove_file(&filler).unwrap();
    // Every connection of the pool writes again, at once and one after the other.
    let deadline = std::time::Duration::from_secs(30);
    let mut writers = Vec::new();
    for i in 0..8u32 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let name: HostName = format!("after-{i}").parse().unwrap();
            s.create_host(&name, &spec(&format!("52:54:00:00:04:{:02x}", i + 0x40)), "test", t)
                .await
                .map(|_| ())
        }));
    }
    for w in writers {
        tokio::time::timeout(deadline, w)
            .await
            .expect("a write hung after the disk was freed")
            .unwrap()
            .expect("a write failed after the disk was freed");
    }
    for i in 0..20u32 {
        let h = s.host_by_id(first.id).await.unwrap().unwrap();
        tokio::time::timeout(deadline, s.save_status(first.id, h.generation, &idle(100 + i), t))
            .await
            .expect("a status write hung after the disk was freed")
            .unwrap_or_else(|e| {
                panic!(
                    "status write {i} after the disk was freed: {}",
                    kiln_engine::bmcs::chain(&e)
                )
            });
    }
    tokio::time::timeout(deadline, s.add_event("before-0", t, "note", "space is back"))
        .await
        .unwrap()
        .unwrap();
    drop(s);
    drop(disk);
}
