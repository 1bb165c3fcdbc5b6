//! The SQL implementations of [`Store`]: SQLite (embedded default, one file in the data directory) and PostgreSQL.
//! Both share the same SQL text (sqlx accepts `$N` placeholders for SQLite too) through one macro; only the
//! migrations differ, one directory per dialect, embedded at compile time.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_bmc::Secret;
use kiln_images::protocol::{CommandKind, Outcome};
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::{
    AgentBoot, AgentCommand, CommandStatus, Event, Fence, Finish, HostRow, Journal, PhaseRecord, Store, StoreError,
    TokenHandout, TokenRecord, command_from_parts, json_text, json_value, open_text, seal_text,
};
use crate::crypto::SecretKey;
use crate::machine::State;
use crate::model::{Counters, Host, HostSpec, Requests, StatusUpdate};
use crate::types::{HostName, MacAddr, Ts};

/// The migrations of a dialect whose first one (the schema, written per dialect) is `init`; every later one is
/// the same SQL in both dialects.
fn migrator(init: &'static str) -> Migrator {
    let migrations: [(i64, &'static str, &'static str); 9] = [
        (1, "init", init),
        // Per-host BMC TLS settings and the BMC identity that keeps two hosts from driving one machine (existing
        // rows get `NULL`, which a unique index allows any number of times, until their spec is next written).
        (
            2,
            "bmc tls and identity",
            include_str!("../../migrations/0002_bmc_tls_identity.sql"),
        ),
        (3, "host macs", include_str!("../../migrations/0003_host_macs.sql")),
        (
            4,
            "preprovisioning network data",
            include_str!("../../migrations/0004_preprovisioning_network_data.sql"),
        ),
        (
            5,
            "hosts next wake index",
            include_str!("../../migrations/0005_hosts_next_wake.sql"),
        ),
        (
            6,
            "replicas and host leases",
            include_str!("../../migrations/0006_replicas.sql"),
        ),
        (
            7,
            "image credentials",
            include_str!("../../migrations/0007_image_credentials.sql"),
        ),
        (
            8,
            "agent progress phase",
            include_str!("../../migrations/0008_agent_progress_phase.sql"),
        ),
        (
            9,
            "hosts running jobs index",
            include_str!("../../migrations/0009_hosts_job_index.sql"),
        ),
    ];
    Migrator::with_migrations(
        migrations
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    version,
                    name.into(),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sql),
                    false,
                )
            })
            .collect(),
    )
}

mod postgres;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

const HOST_COLUMNS: &str = "id, name, labels, bmc_address, bmc_username, bmc_password, bmc_tls, bmc_identity, boot_mac, boot_mode, root_device_hints, image, user_data, network_data, meta_data, options, requests, state_name, state, error_kind, error_message, power, counters, generation, next_wake_ms, created_ms, updated_ms, preprovisioning_network_data, image_credentials";

macro_rules! sql_store {
    ($store:ident, $db:ty, $backend:literal $(, { $($extra:tt)* })?) => {
        impl $store {
            fn row(r: &<$db as sqlx::Database>::Row) -> Result<HostRow, sqlx::Error> {
                Ok(HostRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    labels: r.try_get("labels")?,
                    bmc_address: r.try_get("bmc_address")?,
                    bmc_username: r.try_get("bmc_username")?,
                    bmc_password: r.try_get("bmc_password")?,
                    bmc_tls: r.try_get("bmc_tls")?,
                    bmc_identity: r.try_get("bmc_identity")?,
                    boot_mac: r.try_get("boot_mac")?,
                    boot_mode: r.try_get("boot_mode")?,
                    root_device_hints: r.try_get("root_device_hints")?,
                    image: r.try_get("image")?,
                    user_data: r.try_get("user_data")?,
                    network_data: r.try_get("network_data")?,
                    preprovisioning_network_data: r.try_get("preprovisioning_network_data")?,
                    image_credentials: r.try_get("image_credentials")?,
                    meta_data: r.try_get("meta_data")?,
                    options: r.try_get("options")?,
                    requests: r.try_get("requests")?,
                    state_name: r.try_get("state_name")?,
                    state: r.try_get("state")?,
                    error_kind: r.try_get("error_kind")?,
                    error_message: r.try_get("error_message")?,
                    power: r.try_get("power")?,
                    counters: r.try_get("counters")?,
                    generation: r.try_get("generation")?,
                    next_wake_ms: r.try_get("next_wake_ms")?,
                    created_ms: r.try_get("created_ms")?,
                    updated_ms: r.try_get("updated_ms")?,
                })
            }

            /// The error for a spec whose BMC another host already drives, naming that host.
            async fn bmc_in_use(&self, spec: &HostSpec) -> StoreError {
                let identity = spec.bmc.as_ref().map(|b| b.address.identity()).unwrap_or_default();
                let other = match self.one_host(sel_host!("bmc_identity"), HostKey::Text(&identity)).await {
                    Ok(Some(h)) => h.name.to_string(),
                    Ok(None) | Err(_) => "another host".to_owned(),
                };
                StoreError::BmcInUse {
                    address: spec.bmc.as_ref().map(|b| b.address.to_string()).unwrap_or_default(),
                    other,
                }
            }

            async fn one_host(&self, sql: &'static str, bind: HostKey<'_>) -> Result<Option<Host>, StoreError> {
                let q = sqlx::query(sqlx::AssertSqlSafe(sql));
                let q = match bind {
                    HostKey::Id(id) => q.bind(id),
                    HostKey::Text(s) => q.bind(s.to_owned()),
                };
                let row = q.fetch_optional(&self.pool).await.map_err(db("read host"))?;
                match row {
                    Some(r) => Ok(Some(Self::row(&r).map_err(db("decode host"))?.into_host(&self.key)?)),
                    None => Ok(None),
                }
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            $($($extra)*)?

            async fn create_hosts(&self, hosts: &[(HostName, HostSpec, String)], now: Ts) -> Result<Vec<Host>, StoreError> {
                // One transaction: every host is enrolled, or (the first refusal returned) none is.
                let mut tx = self.pool.begin().await.map_err(db("create hosts"))?;
                let mut out = Vec::with_capacity(hosts.len());
                for (name, spec, why) in hosts {
                    // No lookups on other pooled connections while this transaction holds one (concurrent imports
                    // would wait on each other for the pool): the unique keys refuse a taken name, MAC or BMC.
                    let mut row = HostRow { name: name.to_string(), generation: 1, created_ms: now.0, updated_ms: now.0, ..Default::default() };
                    row.set_spec(spec, &self.key)?;
                    row.set_status(&StatusUpdate {
                        state: State::Unmanaged,
                        requests: Requests::default(),
                        power: None,
                        counters: Counters::default(),
                        next_wake: Some(now),
                    });
                    let r = sqlx::query(
                        "INSERT INTO hosts (name, labels, bmc_address, bmc_username, bmc_password, boot_mac, boot_mode, root_device_hints, image, user_data, network_data, meta_data, options, requests, state_name, state, error_kind, error_message, power, counters, generation, next_wake_ms, created_ms, updated_ms, bmc_tls, bmc_identity, preprovisioning_network_data, image_credentials) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28) RETURNING id",
                    )
                    .bind(&row.name).bind(&row.labels).bind(&row.bmc_address).bind(&row.bmc_username).bind(&row.bmc_password)
                    .bind(&row.boot_mac).bind(&row.boot_mode).bind(&row.root_device_hints).bind(&row.image).bind(&row.user_data)
                    .bind(&row.network_data).bind(&row.meta_data).bind(&row.options).bind(&row.requests).bind(&row.state_name)
                    .bind(&row.state).bind(&row.error_kind).bind(&row.error_message).bind(&row.power).bind(&row.counters)
                    .bind(row.generation).bind(row.next_wake_ms).bind(row.created_ms).bind(row.updated_ms)
                    .bind(&row.bmc_tls).bind(&row.bmc_identity).bind(&row.preprovisioning_network_data).bind(&row.image_credentials)
                    .fetch_one(&mut *tx)
                    .await;
                    match r {
                        Ok(r) => {
                            row.id = r.try_get("id").map_err(db("create host"))?;
                            out.push(row.into_host(&self.key)?);
                        }
                        Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                            // Which key refused it, the name first (the transaction is given back before looking).
                            drop(tx);
                            let what = e.to_string();
                            return if self.host(name).await?.is_some() {
                                Err(StoreError::HostExists { host: name.to_string() })
                            } else if what.contains("bmc_identity") {
                                Err(self.bmc_in_use(spec).await)
                            } else if what.contains("boot_mac") && !what.contains("hosts.name") && !what.contains("hosts_name_key") {
                                Err(StoreError::MacInUse { mac: row.boot_mac.unwrap_or_default() })
                            } else {
                                Err(StoreError::HostExists { host: name.to_string() })
                            };
                        }
                        Err(e) => return Err(db("create host")(e)),
                    }
                    // With the host, in its transaction: one commit (one fsync) per enrollment.
                    sqlx::query("INSERT INTO events (host_name, at_ms, kind, message) VALUES ($1, $2, 'enrolled', $3)")
                        .bind(name.to_string()).bind(now.0).bind(why.clone())
                        .execute(&mut *tx).await.map_err(db("create host"))?;
                }
                tx.commit().await.map_err(db("create hosts"))?;
                Ok(out)
            }

            async fn host(&self, name: &HostName) -> Result<Option<Host>, StoreError> {
                self.one_host(sel_host!("name"), HostKey::Text(name.as_str())).await
            }

            async fn host_by_id(&self, id: i64) -> Result<Option<Host>, StoreError> {
                self.one_host(sel_host!("id"), HostKey::Id(id)).await
            }

            async fn host_by_mac(&self, mac: &MacAddr) -> Result<Option<Host>, StoreError> {
                if let Some(h) = self.one_host(sel_host!("boot_mac"), HostKey::Text(&mac.to_string())).await? {
                    return Ok(Some(h));
                }
                let owner: Option<i64> = sqlx::query_scalar("SELECT host_id FROM host_macs WHERE mac = $1")
                    .bind(mac.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("look up a learned MAC"))?;
                match owner {
                    Some(id) => self.host_by_id(id).await,
                    None => Ok(None),
                }
            }

            async fn learned_macs(&self, id: i64) -> Result<Vec<MacAddr>, StoreError> {
                let macs: Vec<String> = sqlx::query_scalar("SELECT mac FROM host_macs WHERE host_id = $1 ORDER BY mac")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("read learned MACs"))?;
                macs.iter()
                    .map(|m| m.parse().map_err(|_| StoreError::Corrupt { what: format!("learned MAC {m:?}") }))
                    .collect()
            }

            async fn set_learned_macs(&self, id: i64, macs: &[MacAddr]) -> Result<Vec<MacAddr>, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db("learn MACs"))?;
                sqlx::query("DELETE FROM host_macs WHERE host_id = $1").bind(id).execute(&mut *tx).await.map_err(db("learn MACs"))?;
                let mut kept = Vec::new();
                for mac in macs {
                    let m = mac.to_string();
                    // A MAC another host boots by, or learned for another host, stays theirs.
                    let taken: Option<i64> = sqlx::query_scalar(
                        "SELECT id FROM hosts WHERE boot_mac = $1 AND id <> $2 UNION SELECT host_id FROM host_macs WHERE mac = $1",
                    )
                    .bind(&m).bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("learn MACs"))?;
                    if taken.is_some() {
                        continue;
                    }
                    sqlx::query("INSERT INTO host_macs (mac, host_id) VALUES ($1, $2)")
                        .bind(&m).bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db("learn MACs"))?;
                    kept.push(*mac);
                }
                tx.commit().await.map_err(db("learn MACs"))?;
                Ok(kept)
            }

            async fn hosts(&self) -> Result<Vec<Host>, StoreError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name")))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("list hosts"))?;
                rows.iter().map(|r| Self::row(r).map_err(db("decode host"))?.into_host(&self.key)).collect()
            }

            async fn due_host_ids(&self, now: Ts) -> Result<Vec<i64>, StoreError> {
                // Not a cached prepared statement: PostgreSQL's generic plan for `<= $1` guesses a third of the
                // table and scans it all (30,000 rows twice a second, measured); planned with the value, it probes
                // the index for the few hosts due.
                let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM hosts WHERE next_wake_ms IS NULL OR next_wake_ms <= $1")
                    .bind(now.0)
                    .persistent(false)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("list due hosts"))?;
                Ok(rows.into_iter().map(|(id,)| id).collect())
            }

            async fn hosts_by_ids(&self, ids: &[i64]) -> Result<Vec<Host>, StoreError> {
                let mut out = Vec::with_capacity(ids.len());
                // Ids are the store's own integers, written into the statement in chunks (both dialects take a list).
                for chunk in ids.chunks(500) {
                    let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                    // A statement of its own each time (its text differs): not kept as a prepared statement.
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id IN ({list})")))
                        .persistent(false)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db("read hosts"))?;
                    for r in &rows {
                        out.push(Self::row(r).map_err(db("decode host"))?.into_host(&self.key)?);
                    }
                }
                Ok(out)
            }

            async fn job_states(&self) -> Result<Vec<(i64, State)>, StoreError> {
                // The predicate is the partial index `hosts_running_jobs`'s, so this reads only those rows.
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, state FROM hosts WHERE state_name IN ('inspecting', 'preparing', 'provisioning', 'deprovisioning')",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db("list job states"))?;
                rows.into_iter()
                    .map(|(id, s)| serde_json::from_str(&s).map(|st| (id, st)).map_err(|_| StoreError::Corrupt { what: format!("state of host {id}") }))
                    .collect()
            }

            async fn discovery_hosts(&self) -> Result<Vec<Host>, StoreError> {
                // Within the partial index `hosts_running_jobs`; few rows, and none on most calls.
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {HOST_COLUMNS} FROM hosts WHERE state_name IN ('inspecting', 'preparing', 'provisioning', 'deprovisioning') \
                     AND boot_mac IS NULL AND NOT EXISTS (SELECT 1 FROM host_macs WHERE host_macs.host_id = hosts.id)"
                )))
                .fetch_all(&self.pool)
                .await
                .map_err(db("list hosts awaiting a discovery boot"))?;
                rows.iter().map(|r| Self::row(r).map_err(db("decode host"))?.into_host(&self.key)).collect()
            }

            async fn update_spec(&self, id: i64, generation: i64, spec: &HostSpec, requests: &Requests, now: Ts) -> Result<Host, StoreError> {
                let current = self.host_by_id(id).await?.ok_or(StoreError::HostNotFound { host: id.to_string() })?;
                let mut row = HostRow { name: current.name.to_string(), ..Default::default() };
                row.set_spec(spec, &self.key)?;
                let r = sqlx::query(
                    "UPDATE hosts SET labels = $1, bmc_address = $2, bmc_username = $3, bmc_password = $4, boot_mac = $5, boot_mode = $6, \
                     root_device_hints = $7, image = $8, user_data = $9, network_data = $10, meta_data = $11, options = $12, requests = $13, \
                     generation = generation + 1, next_wake_ms = $14, updated_ms = $14, bmc_tls = $16, bmc_identity = $17, preprovisioning_network_data = $19, image_credentials = $20 WHERE id = $15 AND generation = $18",
                )
                .bind(&row.labels).bind(&row.bmc_address).bind(&row.bmc_username).bind(&row.bmc_password).bind(&row.boot_mac)
                .bind(&row.boot_mode).bind(&row.root_device_hints).bind(&row.image).bind(&row.user_data).bind(&row.network_data)
                .bind(&row.meta_data).bind(&row.options).bind(json_text(requests)).bind(now.0).bind(id)
                .bind(&row.bmc_tls).bind(&row.bmc_identity).bind(generation).bind(&row.preprovisioning_network_data)
                .bind(&row.image_credentials)
                .execute(&self.pool)
                .await;
                match r {
                    Ok(done) if done.rows_affected() == 0 => {
                        return Err(StoreError::Changed { host: current.name.to_string() });
                    }
                    Ok(_) => {}
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        if e.to_string().contains("bmc_identity") {
                            return Err(self.bmc_in_use(spec).await);
                        }
                        return Err(StoreError::MacInUse { mac: row.boot_mac.unwrap_or_default() });
                    }
                    Err(e) => return Err(db("update host")(e)),
                }
                self.host_by_id(id).await?.ok_or(StoreError::HostNotFound { host: id.to_string() })
            }

            async fn commit_status(
                &self,
                id: i64,
                generation: i64,
                st: &StatusUpdate,
                journal: &Journal,
                fence: Option<&Fence>,
                now: Ts,
            ) -> Result<Option<Vec<PhaseRecord>>, StoreError> {
                let mut row = HostRow::default();
                row.set_status(st);
                let fenced = " AND EXISTS (SELECT 1 FROM host_leases l WHERE l.host_id = $10 AND l.replica = $12 AND l.epoch = $13 \
                              AND l.expires_ms > $9)";
                let r = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE hosts SET state_name = $1, state = $2, error_kind = $3, error_message = $4, requests = $5, power = $6, \
                     counters = $7, next_wake_ms = $8, generation = generation + 1, updated_ms = $9 WHERE id = $10 AND generation = $11{} \
                     RETURNING name",
                    if fence.is_some() { fenced } else { "" }
                )))
                .bind(&row.state_name).bind(&row.state).bind(&row.error_kind).bind(&row.error_message).bind(&row.requests)
                .bind(&row.power).bind(&row.counters).bind(row.next_wake_ms).bind(now.0).bind(id).bind(generation);
                let r = match fence {
                    Some(f) => r.bind(f.replica.clone()).bind(f.epoch as i64),
                    None => r,
                };
                if journal.is_empty() {
                    // Nothing else to write (a power poll that changed nothing, say): one statement, committed on its
                    // own, one round trip to the database instead of three.
                    let r = r.fetch_optional(&self.pool).await.map_err(db("save host status"))?;
                    return Ok(r.map(|_| Vec::new()));
                }
                let mut tx = self.pool.begin().await.map_err(db("save host status"))?;
                let r = r.fetch_optional(&mut *tx).await.map_err(db("save host status"))?;
                let Some(r) = r else {
                    return Ok(None);
                };
                let name: String = r.try_get("name").map_err(db("save host status"))?;
                let mut ended = Vec::new();
                for (phase, outcome) in &journal.ended {
                    let rows = sqlx::query(
                        "UPDATE phases SET ended_ms = $1, outcome = $2 WHERE host_id = $3 AND phase = $4 AND ended_ms IS NULL RETURNING started_ms",
                    )
                    .bind(now.0).bind(outcome.clone()).bind(id).bind(phase.clone())
                    .fetch_all(&mut *tx).await.map_err(db("end phase"))?;
                    if let Some(r) = rows.first() {
                        ended.push(PhaseRecord {
                            phase: phase.clone(),
                            started: Ts(r.try_get("started_ms").map_err(db("end phase"))?),
                            ended: Some(now),
                            outcome: Some(outcome.clone()),
                        });
                    }
                }
                for phase in &journal.started {
                    sqlx::query("INSERT INTO phases (host_id, phase, started_ms) VALUES ($1, $2, $3)")
                        .bind(id).bind(phase.clone()).bind(now.0)
                        .execute(&mut *tx).await.map_err(db("start phase"))?;
                }
                for (kind, message) in &journal.events {
                    sqlx::query("INSERT INTO events (host_name, at_ms, kind, message) VALUES ($1, $2, $3, $4)")
                        .bind(name.clone()).bind(now.0).bind(kind.clone()).bind(message.clone())
                        .execute(&mut *tx).await.map_err(db("add event"))?;
                }
                tx.commit().await.map_err(db("save host status"))?;
                Ok(Some(ended))
            }

            async fn replica_heartbeat(&self, name: &str, now: Ts) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO replicas (name, heartbeat_ms, started_ms) VALUES ($1, $2, $2) \
                     ON CONFLICT (name) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
                )
                .bind(name.to_owned()).bind(now.0)
                .execute(&self.pool).await.map_err(db("replica heartbeat"))?;
                Ok(())
            }

            async fn live_replicas(&self, since: Ts) -> Result<Vec<String>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM replicas WHERE heartbeat_ms >= $1 ORDER BY name")
                    .bind(since.0)
                    .fetch_all(&self.pool).await.map_err(db("list replicas"))?;
                Ok(rows.into_iter().map(|(n,)| n).collect())
            }

            async fn leave(&self, name: &str) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db("leave"))?;
                sqlx::query("DELETE FROM replicas WHERE name = $1").bind(name.to_owned())
                    .execute(&mut *tx).await.map_err(db("leave"))?;
                sqlx::query("UPDATE host_leases SET expires_ms = 0 WHERE replica = $1").bind(name.to_owned())
                    .execute(&mut *tx).await.map_err(db("leave"))?;
                tx.commit().await.map_err(db("leave"))?;
                Ok(())
            }

            async fn host_ids(&self) -> Result<Vec<i64>, StoreError> {
                let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM hosts ORDER BY id")
                    .fetch_all(&self.pool).await.map_err(db("list host ids"))?;
                Ok(rows.into_iter().map(|(i,)| i).collect())
            }

            async fn claim_leases(&self, ids: &[i64], replica: &str, now: Ts, until: Ts) -> Result<Vec<(i64, u64)>, StoreError> {
                let mut out = Vec::with_capacity(ids.len());
                // Ids are the store's own integers, written into the statement in chunks (both dialects take a list).
                for chunk in ids.chunks(500) {
                    let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                    // Never leased: the first lease, epoch 1 (a host deleted meanwhile is not in `hosts`: not ours).
                    let first: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO host_leases (host_id, replica, epoch, expires_ms) SELECT id, $1, 1, $2 FROM hosts \
                         WHERE id IN ({list}) ON CONFLICT (host_id) DO NOTHING RETURNING host_id"
                    )))
                    .bind(replica.to_owned()).bind(until.0).persistent(false)
                    .fetch_all(&self.pool).await.map_err(db("claim leases"))?;
                    out.extend(first.iter().map(|(h,)| (*h, 1)));
                    let new: std::collections::HashSet<i64> = first.into_iter().map(|(h,)| h).collect();
                    let rest = chunk.iter().filter(|h| !new.contains(h)).map(i64::to_string).collect::<Vec<_>>();
                    if rest.is_empty() {
                        continue;
                    }
                    // Expired, or ours: taken, with a new epoch unless it is our unexpired lease being extended. (SET
                    // expressions read the row as it was.)
                    let taken: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "UPDATE host_leases SET epoch = CASE WHEN replica = $1 AND expires_ms > $2 THEN epoch ELSE epoch + 1 END, \
                         replica = $1, expires_ms = $3 WHERE host_id IN ({}) AND (replica = $1 OR expires_ms <= $2) \
                         RETURNING host_id, epoch",
                        rest.join(",")
                    )))
                    .bind(replica.to_owned()).bind(now.0).bind(until.0).persistent(false)
                    .fetch_all(&self.pool).await.map_err(db("claim leases"))?;
                    out.extend(taken.into_iter().map(|(h, e)| (h, e as u64)));
                }
                Ok(out)
            }

            async fn renew_leases(&self, replica: &str, now: Ts, until: Ts) -> Result<Vec<(i64, u64)>, StoreError> {
                let rows: Vec<(i64, i64)> = sqlx::query_as(
                    "UPDATE host_leases SET expires_ms = $3 WHERE replica = $1 AND expires_ms > $2 RETURNING host_id, epoch",
                )
                .bind(replica.to_owned()).bind(now.0).bind(until.0)
                .fetch_all(&self.pool).await.map_err(db("renew leases"))?;
                Ok(rows.into_iter().map(|(h, e)| (h, e as u64)).collect())
            }

            async fn release_lease(&self, id: i64, replica: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE host_leases SET expires_ms = 0 WHERE host_id = $1 AND replica = $2")
                    .bind(id).bind(replica.to_owned())
                    .execute(&self.pool).await.map_err(db("release lease"))?;
                Ok(())
            }

            async fn delete_host(&self, id: i64) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM host_macs WHERE host_id = $1").bind(id).execute(&self.pool).await.map_err(db("delete host"))?;
                sqlx::query("DELETE FROM hosts WHERE id = $1").bind(id).execute(&self.pool).await.map_err(db("delete host"))?;
                Ok(())
            }

            async fn put_inspection(&self, host_id: i64, data: &serde_json::Value, now: Ts) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO inspections (host_id, data, at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (host_id) DO UPDATE SET data = excluded.data, at_ms = excluded.at_ms",
                )
                .bind(host_id).bind(json_text(data)).bind(now.0)
                .execute(&self.pool).await.map_err(db("store inspection"))?;
                Ok(())
            }

            async fn inspection(&self, host_id: i64) -> Result<Option<(serde_json::Value, Ts)>, StoreError> {
                let r = sqlx::query("SELECT data, at_ms FROM inspections WHERE host_id = $1")
                    .bind(host_id).fetch_optional(&self.pool).await.map_err(db("read inspection"))?;
                match r {
                    Some(r) => {
                        let data: String = r.try_get("data").map_err(db("read inspection"))?;
                        Ok(Some((json_value(&data, "inspection")?, Ts(r.try_get("at_ms").map_err(db("read inspection"))?))))
                    }
                    None => Ok(None),
                }
            }

            async fn start_phase(&self, host_id: i64, phase: &str, now: Ts) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO phases (host_id, phase, started_ms) VALUES ($1, $2, $3)")
                    .bind(host_id).bind(phase.to_owned()).bind(now.0)
                    .execute(&self.pool).await.map_err(db("start phase"))?;
                Ok(())
            }

            async fn end_phase(&self, host_id: i64, phase: &str, now: Ts, outcome: &str) -> Result<Option<PhaseRecord>, StoreError> {
                let r = sqlx::query(
                    "UPDATE phases SET ended_ms = $1, outcome = $2 WHERE host_id = $3 AND phase = $4 AND ended_ms IS NULL RETURNING started_ms",
                )
                .bind(now.0).bind(outcome.to_owned()).bind(host_id).bind(phase.to_owned())
                .fetch_all(&self.pool).await.map_err(db("end phase"))?;
                match r.first() {
                    Some(r) => Ok(Some(PhaseRecord {
                        phase: phase.to_owned(),
                        started: Ts(r.try_get("started_ms").map_err(db("end phase"))?),
                        ended: Some(now),
                        outcome: Some(outcome.to_owned()),
                    })),
                    None => Ok(None),
                }
            }

            async fn finished_phases(&self, phase: &str, limit: i64) -> Result<Vec<(String, PhaseRecord)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT h.name, p.phase, p.started_ms, p.ended_ms, p.outcome FROM phases p JOIN hosts h ON h.id = p.host_id \
                     WHERE p.phase = $1 AND p.ended_ms IS NOT NULL ORDER BY p.ended_ms DESC, p.id DESC LIMIT $2",
                )
                .bind(phase).bind(limit).fetch_all(&self.pool).await.map_err(db("list finished phases"))?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get("name")?,
                            PhaseRecord {
                                phase: r.try_get("phase")?,
                                started: Ts(r.try_get("started_ms")?),
                                ended: r.try_get::<Option<i64>, _>("ended_ms")?.map(Ts),
                                outcome: r.try_get("outcome")?,
                            },
                        ))
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(db("decode finished phases"))
            }

            async fn phases(&self, host_id: i64) -> Result<Vec<PhaseRecord>, StoreError> {
                let rows = sqlx::query("SELECT phase, started_ms, ended_ms, outcome FROM phases WHERE host_id = $1 ORDER BY id")
                    .bind(host_id).fetch_all(&self.pool).await.map_err(db("list phases"))?;
                rows.iter()
                    .map(|r| {
                        Ok(PhaseRecord {
                            phase: r.try_get("phase")?,
                            started: Ts(r.try_get("started_ms")?),
                            ended: r.try_get::<Option<i64>, _>("ended_ms")?.map(Ts),
                            outcome: r.try_get("outcome")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(db("list phases"))
            }

            async fn add_event(&self, host: &str, now: Ts, kind: &str, message: &str) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO events (host_name, at_ms, kind, message) VALUES ($1, $2, $3, $4)")
                    .bind(host.to_owned()).bind(now.0).bind(kind.to_owned()).bind(message.to_owned())
                    .execute(&self.pool).await.map_err(db("add event"))?;
                Ok(())
            }

            async fn prune_events(&self, before: Ts, keep_per_host: i64) -> Result<u64, StoreError> {
                let old = sqlx::query("DELETE FROM events WHERE at_ms < $1")
                    .bind(before.0).execute(&self.pool).await.map_err(db("prune events"))?;
                let over = sqlx::query(
                    "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY host_name ORDER BY id DESC) AS n \
                     FROM events) ranked WHERE n > $1)",
                )
                .bind(keep_per_host).execute(&self.pool).await.map_err(db("prune events"))?;
                Ok(old.rows_affected() + over.rows_affected())
            }

            async fn events(&self, host: Option<&str>, limit: i64) -> Result<Vec<Event>, StoreError> {
                let rows = match host {
                    Some(h) => sqlx::query("SELECT id, host_name, at_ms, kind, message FROM events WHERE host_name = $1 ORDER BY id DESC LIMIT $2")
                        .bind(h.to_owned()).bind(limit).fetch_all(&self.pool).await,
                    None => sqlx::query("SELECT id, host_name, at_ms, kind, message FROM events ORDER BY id DESC LIMIT $1")
                        .bind(limit).fetch_all(&self.pool).await,
                }
                .map_err(db("list events"))?;
                let mut out = rows
                    .iter()
                    .map(|r| {
                        Ok(Event {
                            id: r.try_get("id")?,
                            host: r.try_get("host_name")?,
                            at: Ts(r.try_get("at_ms")?),
                            kind: r.try_get("kind")?,
                            message: r.try_get("message")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(db("list events"))?;
                out.reverse();
                Ok(out)
            }

            async fn add_token(&self, hash: &str, host_id: i64, boot: u64, phase: &str, handout: Option<&Secret>, now: Ts) -> Result<(), StoreError> {
                let context = format!("agent-token:{host_id}:{boot}");
                let sealed = handout
                    .map(|t| self.key.seal(t, &context))
                    .transpose()
                    .map_err(|source| StoreError::Crypto { host: host_id.to_string(), source })?;
                sqlx::query("INSERT INTO agent_tokens (token_hash, host_id, boot, phase, created_ms, revoked, handout) VALUES ($1, $2, $3, $4, $5, 0, $6)")
                    .bind(hash.to_owned()).bind(host_id).bind(boot as i64).bind(phase.to_owned()).bind(now.0).bind(sealed)
                    .execute(&self.relaxed).await.map_err(db("add agent token"))?;
                Ok(())
            }

            async fn take_token(&self, host_id: i64, boot: u64) -> Result<TokenHandout, StoreError> {
                // Read, then clear conditionally: of two concurrent script fetches, exactly one clears the row and
                // gets the token.
                let row = sqlx::query("SELECT token_hash, handout FROM agent_tokens WHERE host_id = $1 AND boot = $2 AND handout IS NOT NULL")
                    .bind(host_id).bind(boot as i64)
                    .fetch_optional(&self.pool).await.map_err(db("read agent token"))?;
                if let Some(r) = row {
                    let hash: String = r.try_get("token_hash").map_err(db("read agent token"))?;
                    let sealed: String = r.try_get("handout").map_err(db("read agent token"))?;
                    let cleared = sqlx::query("UPDATE agent_tokens SET handout = NULL WHERE token_hash = $1 AND handout IS NOT NULL")
                        .bind(hash).execute(&self.pool).await.map_err(db("take agent token"))?;
                    if cleared.rows_affected() == 1 {
                        let token = self.key.open(&sealed, &format!("agent-token:{host_id}:{boot}"))
                            .map_err(|source| StoreError::Crypto { host: host_id.to_string(), source })?;
                        return Ok(TokenHandout::Token(token));
                    }
                }
                let minted = sqlx::query("SELECT 1 AS one FROM agent_tokens WHERE host_id = $1 AND boot = $2")
                    .bind(host_id).bind(boot as i64)
                    .fetch_optional(&self.pool).await.map_err(db("read agent token"))?;
                Ok(if minted.is_some() { TokenHandout::AlreadyTaken } else { TokenHandout::None })
            }

            async fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
                let r = sqlx::query("SELECT host_id, boot, phase, revoked FROM agent_tokens WHERE token_hash = $1")
                    .bind(hash.to_owned()).fetch_optional(&self.pool).await.map_err(db("read agent token"))?;
                r.map(|r| {
                    Ok(TokenRecord {
                        host_id: r.try_get("host_id")?,
                        boot: r.try_get::<i64, _>("boot")? as u64,
                        phase: r.try_get("phase")?,
                        revoked: r.try_get::<i64, _>("revoked")? != 0,
                    })
                })
                .transpose()
                .map_err(db("read agent token"))
            }

            async fn token_host(&self, hash: &str) -> Result<Option<(TokenRecord, Host)>, StoreError> {
                let r = sqlx::query(
                    "SELECT t.host_id, t.boot, t.phase, t.revoked, h.id, h.name, h.labels, h.bmc_address, h.bmc_username, h.bmc_password, h.bmc_tls, h.bmc_identity, h.boot_mac, h.boot_mode, h.root_device_hints, h.image, h.user_data, h.network_data, h.meta_data, h.options, h.requests, h.state_name, h.state, h.error_kind, h.error_message, h.power, h.counters, h.generation, h.next_wake_ms, h.created_ms, h.updated_ms, h.preprovisioning_network_data, h.image_credentials \
                     FROM agent_tokens t JOIN hosts h ON h.id = t.host_id WHERE t.token_hash = $1",
                )
                .bind(hash.to_owned()).fetch_optional(&self.pool).await.map_err(db("read agent token"))?;
                let Some(r) = r else { return Ok(None) };
                let token = TokenRecord {
                    host_id: r.try_get("host_id").map_err(db("read agent token"))?,
                    boot: r.try_get::<i64, _>("boot").map_err(db("read agent token"))? as u64,
                    phase: r.try_get("phase").map_err(db("read agent token"))?,
                    revoked: r.try_get::<i64, _>("revoked").map_err(db("read agent token"))? != 0,
                };
                let host = Self::row(&r).map_err(db("decode host"))?.into_host(&self.key)?;
                Ok(Some((token, host)))
            }

            async fn revoke_tokens(&self, host_id: i64) -> Result<(), StoreError> {
                // Deleted, not marked: a token whose boot is over is worth nothing, and rows must not pile up.
                sqlx::query("DELETE FROM agent_tokens WHERE host_id = $1")
                    .bind(host_id).execute(&self.relaxed).await.map_err(db("revoke agent tokens"))?;
                Ok(())
            }

            async fn heartbeat(&self, host_id: i64, boot: u64, now: Ts) -> Result<bool, StoreError> {
                // Every heartbeat but the first is one UPDATE; of two first ones at once, one inserts.
                let updated = sqlx::query("UPDATE agent_boots SET last_heartbeat_ms = $1 WHERE host_id = $2 AND boot = $3")
                    .bind(now.0).bind(host_id).bind(boot as i64)
                    .execute(&self.relaxed).await.map_err(db("record heartbeat"))?;
                if updated.rows_affected() > 0 {
                    return Ok(false);
                }
                let inserted = sqlx::query(
                    "INSERT INTO agent_boots (host_id, boot, first_heartbeat_ms, last_heartbeat_ms) VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (host_id, boot) DO NOTHING",
                )
                .bind(host_id).bind(boot as i64).bind(now.0)
                .execute(&self.relaxed).await.map_err(db("record heartbeat"))?;
                if inserted.rows_affected() > 0 {
                    return Ok(true);
                }
                sqlx::query("UPDATE agent_boots SET last_heartbeat_ms = $1 WHERE host_id = $2 AND boot = $3")
                    .bind(now.0).bind(host_id).bind(boot as i64)
                    .execute(&self.relaxed).await.map_err(db("record heartbeat"))?;
                Ok(false)
            }

            async fn record_progress(&self, host_id: i64, boot: u64, phase: &str, progress: &serde_json::Value, now: Ts) -> Result<bool, StoreError> {
                let progress = json_text(progress);
                let same = sqlx::query(
                    "UPDATE agent_boots SET last_heartbeat_ms = $1, progress = $2 WHERE host_id = $3 AND boot = $4 AND progress_phase = $5",
                )
                .bind(now.0).bind(progress.clone()).bind(host_id).bind(boot as i64).bind(phase.to_owned())
                .execute(&self.relaxed).await.map_err(db("record progress"))?;
                if same.rows_affected() > 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO agent_boots (host_id, boot, first_heartbeat_ms, last_heartbeat_ms, progress, progress_phase) \
                     VALUES ($1, $2, $3, $3, $4, $5) ON CONFLICT (host_id, boot) DO UPDATE SET \
                     last_heartbeat_ms = excluded.last_heartbeat_ms, progress = excluded.progress, progress_phase = excluded.progress_phase",
                )
                .bind(host_id).bind(boot as i64).bind(now.0).bind(progress).bind(phase.to_owned())
                .execute(&self.relaxed).await.map_err(db("record progress"))?;
                Ok(true)
            }

            async fn agent_boot(&self, host_id: i64, boot: u64) -> Result<Option<AgentBoot>, StoreError> {
                let r = sqlx::query("SELECT first_heartbeat_ms, last_heartbeat_ms, progress FROM agent_boots WHERE host_id = $1 AND boot = $2")
                    .bind(host_id).bind(boot as i64).fetch_optional(&self.pool).await.map_err(db("read agent boot"))?;
                let Some(r) = r else { return Ok(None) };
                let progress: Option<String> = r.try_get("progress").map_err(db("read agent boot"))?;
                Ok(Some(AgentBoot {
                    first_heartbeat: Ts(r.try_get("first_heartbeat_ms").map_err(db("read agent boot"))?),
                    last_heartbeat: Ts(r.try_get("last_heartbeat_ms").map_err(db("read agent boot"))?),
                    progress: progress.map(|p| json_value(&p, "progress")).transpose()?,
                }))
            }

            async fn enqueue_command(&self, host_id: i64, boot: u64, id: u64, command: &CommandKind, now: Ts) -> Result<(), StoreError> {
                // Sealed: a write_image command carries the host's user data (bootstrap secrets).
                let sealed = seal_text(&self.key, &json_text(command), &format!("agent-command:{host_id}:{id}"))?;
                sqlx::query(
                    "INSERT INTO agent_commands (host_id, id, boot, command, status, created_ms, updated_ms) VALUES ($1, $2, $3, $4, 'queued', $5, $5) \
                     ON CONFLICT (host_id, id) DO NOTHING",
                )
                .bind(host_id).bind(id as i64).bind(boot as i64).bind(sealed).bind(now.0)
                .execute(&self.relaxed).await.map_err(db("queue agent command"))?;
                Ok(())
            }

            async fn command(&self, host_id: i64, id: u64) -> Result<Option<AgentCommand>, StoreError> {
                let r = sqlx::query("SELECT id, boot, command, status, result FROM agent_commands WHERE host_id = $1 AND id = $2")
                    .bind(host_id).bind(id as i64).fetch_optional(&self.pool).await.map_err(db("read agent command"))?;
                r.map(|r| self.command_row(host_id, &r)).transpose()
            }

            async fn pending_command(&self, host_id: i64, boot: u64) -> Result<Option<AgentCommand>, StoreError> {
                let r = sqlx::query(
                    "SELECT id, boot, command, status, result FROM agent_commands WHERE host_id = $1 AND boot = $2 AND status IN ('queued', 'sent') ORDER BY id LIMIT 1",
                )
                .bind(host_id).bind(boot as i64).fetch_optional(&self.pool).await.map_err(db("read agent command"))?;
                r.map(|r| self.command_row(host_id, &r)).transpose()
            }

            async fn set_command_status(&self, host_id: i64, id: u64, status: CommandStatus, result: Option<&Outcome>, now: Ts) -> Result<bool, StoreError> {
                let r = sqlx::query("UPDATE agent_commands SET status = $1, result = $2, updated_ms = $3 WHERE host_id = $4 AND id = $5")
                    .bind(status.as_str()).bind(result.map(json_text)).bind(now.0).bind(host_id).bind(id as i64)
                    .execute(&self.relaxed).await.map_err(db("update agent command"))?;
                Ok(r.rows_affected() == 1)
            }

            async fn finish_command(&self, host_id: i64, boot: u64, id: u64, outcome: &Outcome, event: (&str, &str, &str), now: Ts) -> Result<Finish, StoreError> {
                let status = match outcome {
                    Outcome::Succeeded { .. } => CommandStatus::Succeeded,
                    Outcome::Failed { .. } => CommandStatus::Failed,
                };
                let mut tx = self.pool.begin().await.map_err(db("finish agent command"))?;
                let r = sqlx::query(
                    "UPDATE agent_commands SET status = $1, result = $2, updated_ms = $3 WHERE host_id = $4 AND id = $5 AND boot = $6 \
                     AND status IN ('queued', 'sent')",
                )
                .bind(status.as_str()).bind(json_text(outcome)).bind(now.0).bind(host_id).bind(id as i64).bind(boot as i64)
                .execute(&mut *tx).await.map_err(db("finish agent command"))?;
                if r.rows_affected() == 1 {
                    let (host, kind, message) = event;
                    sqlx::query("INSERT INTO events (host_name, at_ms, kind, message) VALUES ($1, $2, $3, $4)")
                        .bind(host.to_owned()).bind(now.0).bind(kind.to_owned()).bind(message.to_owned())
                        .execute(&mut *tx).await.map_err(db("add event"))?;
                    tx.commit().await.map_err(db("finish agent command"))?;
                    return Ok(Finish::Recorded);
                }
                drop(tx);
                let known = sqlx::query("SELECT 1 AS one FROM agent_commands WHERE host_id = $1 AND id = $2 AND boot = $3")
                    .bind(host_id).bind(id as i64).bind(boot as i64)
                    .fetch_optional(&self.pool).await.map_err(db("read agent command"))?;
                Ok(if known.is_some() { Finish::AlreadyFinished } else { Finish::NotFound })
            }
        }

        impl $store {
            fn command_row(&self, host_id: i64, r: &<$db as sqlx::Database>::Row) -> Result<AgentCommand, StoreError> {
                let f = || -> Result<_, sqlx::Error> {
                    Ok((r.try_get::<i64, _>("id")?, r.try_get::<i64, _>("boot")?, r.try_get::<String, _>("command")?, r.try_get::<String, _>("status")?, r.try_get::<Option<String>, _>("result")?))
                };
                let (id, boot, command, status, result) = f().map_err(db("read agent command"))?;
                let command = open_text(&self.key, &command, &format!("agent-command:{host_id}:{id}"))?;
                command_from_parts(id, boot, &command, &status, result)
            }
        }
    };
}

macro_rules! sel_host {
    ($col:literal) => {
        concat!(
            "SELECT id, name, labels, bmc_address, bmc_username, bmc_password, bmc_tls, bmc_identity, boot_mac, boot_mode, root_device_hints, image, user_data, network_data, meta_data, options, requests, state_name, state, error_kind, error_message, power, counters, generation, next_wake_ms, created_ms, updated_ms, preprovisioning_network_data, image_credentials FROM hosts WHERE ",
            $col,
            " = $1"
        )
    };
}

enum HostKey<'a> {
    Id(i64),
    Text(&'a str),
}

sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");

sql_store!(PgStore, sqlx::Postgres, "postgres", {
    async fn announce(&self, from: &str, host: Option<i64>) -> Result<(), StoreError> {
        self.pg_announce(from, host).await
    }

    async fn announcements(&self) -> Result<Option<super::Announcements>, StoreError> {
        self.pg_announcements().await
    }
});

/// Opens the store named by `url`: `postgres://...`, `sqlite:PATH`, or `None` for `<data_dir>/kiln.db`.
///
/// # Errors
/// [`StoreError::BadUrl`] or the backend's opening error.
pub async fn connect(url: Option<&str>, data_dir: &Path, key: SecretKey) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        None => Ok(Arc::new(SqliteStore::open(&data_dir.join("kiln.db"), key).await?)),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Ok(Arc::new(PgStore::connect(u, key).await?))
        }
        Some(u) => match u.strip_prefix("sqlite://").or_else(|| u.strip_prefix("sqlite:")) {
            Some(path) => Ok(Arc::new(SqliteStore::open(Path::new(path), key).await?)),
            None => Err(StoreError::BadUrl { url: u.to_owned() }),
        },
    }
}
