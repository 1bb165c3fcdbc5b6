//! The PostgreSQL store: its pool, migrations, and the replicas' announcements (`NOTIFY`/`LISTEN`). The queries
//! are the shared ones of `sql_store!` in the parent module.

use std::time::Duration;

use super::{db, migrator};
use crate::crypto::SecretKey;
use crate::store::StoreError;

/// The PostgreSQL store, for several replicas or large fleets.
pub struct PgStore {
    pub(super) pool: sqlx::PgPool,
    /// `synchronous_commit = off`, for the writes SQLite's relaxed pool takes (see there): a later synchronous
    /// commit flushes the WAL up to its own record, these included; a crash can lose the last of these commits,
    /// never corrupt anything.
    pub(super) relaxed: sqlx::PgPool,
    pub(super) key: SecretKey,
}

impl PgStore {
    /// Connects and runs the migrations.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Migrate`].
    pub async fn connect(url: &str, key: SecretKey) -> Result<Self, StoreError> {
        let opts: sqlx::postgres::PgConnectOptions = url.parse().map_err(db("connect postgres"))?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await
            .map_err(db("connect postgres"))?;
        migrator(include_str!("../../../migrations/postgres/0001_init.sql"))
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        let relaxed = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.options([("synchronous_commit", "off")]))
            .await
            .map_err(db("connect postgres"))?;
        Ok(Self { pool, relaxed, key })
    }
}

/// The channel replicas announce host changes on (`from:host id`, or `from:*`).
const ANNOUNCE_CHANNEL: &str = "kiln_hosts";

impl PgStore {
    /// `NOTIFY` of [`Store::announce`].
    pub(super) async fn pg_announce(&self, from: &str, host: Option<i64>) -> Result<(), StoreError> {
        let payload = format!("{from}:{}", host.map_or_else(|| "*".to_owned(), |h| h.to_string()));
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ANNOUNCE_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(db("announce"))?;
        Ok(())
    }

    /// `LISTEN` of [`Store::announcements`], on a connection of its own; payloads that do not parse are dropped.
    pub(super) async fn pg_announcements(&self) -> Result<Option<crate::store::Announcements>, StoreError> {
        use futures::StreamExt;
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(db("listen"))?;
        listener.listen(ANNOUNCE_CHANNEL).await.map_err(db("listen"))?;
        let stream = listener.into_stream().filter_map(|n| async move {
            let n = n.ok()?;
            let (from, host) = n.payload().rsplit_once(':')?;
            let host = match host {
                "*" => None,
                h => Some(h.parse().ok()?),
            };
            Some((from.to_owned(), host))
        });
        Ok(Some(stream.boxed()))
    }
}
