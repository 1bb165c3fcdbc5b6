//! The embedded SQLite store: its file (private), pool and migrations. The queries are the
//! shared ones of `sql_store!` in the parent module.

use std::path::Path;
use std::time::Duration;

use super::{db, migrator};
use crate::crypto::SecretKey;
use crate::store::StoreError;

/// The embedded SQLite store: one file in the data directory.
pub struct SqliteStore {
    pub(super) pool: sqlx::SqlitePool,
    /// Commits not fsynced one by one (`synchronous = NORMAL`), for two kinds of writes: what agents rewrite every
    /// few seconds and is worthless after a power loss (heartbeats, progress, a command marked sent), and what the
    /// executor writes just before the fsynced commit of the state it belongs to (queued commands, agent tokens
    /// minted or revoked). In WAL mode the log is appended in order, so the next commit of `pool` (fsynced) makes
    /// these durable too: a power loss can lose the last heartbeats, or the writes of a state change whose own
    /// commit it also lost (decided again after the restart, idempotently), never a committed state, an
    /// operator's intent or an event, and never corrupts the file.
    pub(super) relaxed: sqlx::SqlitePool,
    pub(super) key: SecretKey,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Migrate`].
    pub async fn open(path: &Path, key: SecretKey) -> Result<Self, StoreError> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
        // The database holds sealed BMC passwords and agent tokens, user data and inventories: 0600. SQLite gives its
        // -wal and -shm files the database file's mode, so making the file first is enough.
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let io = |source: std::io::Error| StoreError::Db {
                op: "create the database file",
                source: sqlx::Error::Io(source),
            };
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            for suffix in ["", "-wal", "-shm"] {
                let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
                if p.exists() {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
                }
            }
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a transaction kiln acknowledged survives a power loss too (NORMAL may lose the last ones in WAL
            // mode); an appliance's intents and states are worth an fsync per commit.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = pool_options(4)
            .connect_with(opts.clone())
            .await
            .map_err(db("open sqlite"))?;
        migrator(include_str!("../../../migrations/sqlite/0001_init.sql"))
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        let relaxed = pool_options(2)
            .connect_with(opts.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(db("open sqlite"))?;
        Ok(Self { pool, relaxed, key })
    }
}

/// A pool of at most `max` connections to kiln's database.
fn pool_options(max: u32) -> sqlx::sqlite::SqlitePoolOptions {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(max)
        // When a statement fails with SQLITE_FULL (or IOERR, NOMEM), SQLite may roll the transaction back by
        // itself; sqlx's ROLLBACK on drop then fails and its transaction depth stays at one, so every later
        // "transaction" on that connection is a SAVEPOINT inside nothing, and the first failure after that leaves
        // SQLite's write lock held for good: every other connection reads "database is locked" long after the
        // disk has space again. A connection that still counts a transaction once released is closed instead
        // (closing rolls back whatever is open); the pool opens a fresh one.
        .after_release(|conn, _meta| {
            Box::pin(async move {
                use sqlx::Connection as _;
                // Runs the rollback a dropped transaction queued before looking at the depth.
                conn.ping().await?;
                if conn.is_in_transaction() {
                    tracing::warn!(
                        "a SQLite connection was released inside a transaction (a failed statement SQLite had \
                         already rolled back, e.g. on a full disk): closed, a fresh one replaces it"
                    );
                    return Ok(false);
                }
                Ok(true)
            })
        })
}
