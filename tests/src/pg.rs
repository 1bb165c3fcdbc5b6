//! A private PostgreSQL cluster for the store tests
//! (Debian's postgresql 15, `initdb` + `pg_ctl` as the `postgres` user into a temp dir on a free port), stopped and
//! removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running private PostgreSQL cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn as_postgres(bin: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{PG_BIN}/{bin}")]);
    c
}

fn run(mut c: Command, what: &str) -> std::io::Result<()> {
    let out = c.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl PgCluster {
    /// Initialises and starts a cluster on a free loopback port.
    ///
    /// # Errors
    /// When postgresql 15 is not installed (run `tests/setup.sh`) or fails to start; the server log is in the message.
    pub fn start() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kiln-pg-").tempdir()?;
        run(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:postgres", &dir.path().display().to_string()]);
                c
            },
            "chown",
        )?;
        let data = dir.path().join("data");
        let mut init = as_postgres("initdb");
        init.args([
            "-D",
            &data.display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(init, "initdb")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.path().join("server.log");
        let mut start = as_postgres("pg_ctl");
        start.args([
            "-D",
            &data.display().to_string(),
            "-l",
            &log.display().to_string(),
            "-w",
            "-t",
            "60",
            "-o",
            &format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                dir.path().display()
            ),
            "start",
        ]);
        let cluster = Self { dir, port };
        if let Err(e) = run(start, "pg_ctl start") {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(std::io::Error::other(format!("{e}\nserver log:\n{log}")));
        }
        Ok(cluster)
    }

    /// URL of database `db` (create it with [`PgCluster::create_database`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// URL of database `db` over the cluster's Unix socket, for clients in another network namespace (a lab's).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{db}?host={}",
            self.port,
            self.dir.path().display()
        )
    }

    /// Creates an empty database.
    ///
    /// # Errors
    /// `createdb`'s failure.
    pub fn create_database(&self, db: &str) -> std::io::Result<String> {
        let mut c = as_postgres("createdb");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), db]);
        run(c, "createdb")?;
        Ok(self.url(db))
    }

    /// Runs `sql` in database `db` with psql; its unaligned, tuples-only output (`a|b` per row).
    ///
    /// # Errors
    /// psql's failure.
    pub fn query(&self, db: &str, sql: &str) -> std::io::Result<String> {
        let mut c = as_postgres("psql");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-d",
            db,
            "-At",
            "-c",
            sql,
        ]);
        let out = c.output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// CPU seconds (user + system) used so far by the cluster's processes: the postmaster and its children
    /// (backends, writers, autovacuum) that are running now.
    pub fn cpu_secs(&self) -> f64 {
        let Some(postmaster) = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().next()?.trim().parse::<u32>().ok())
        else {
            return 0.0;
        };
        // Fields after the command name: state is 0, ppid 1, utime 11, stime 12 (clock ticks, 100 per second).
        let stat = |pid: &str| -> Option<(u32, f64)> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = text.rsplit(')').next()?.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            Some((fields.get(1)?.parse().ok()?, (ticks(11) + ticks(12)) / 100.0))
        };
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        procs
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|pid| {
                let (ppid, secs) = stat(&pid)?;
                (pid == postmaster.to_string() || ppid == postmaster).then_some(secs)
            })
            .sum()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut stop = as_postgres("pg_ctl");
        stop.args([
            "-D",
            &self.data().display().to_string(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
        if run(stop, "pg_ctl stop").is_err() {
            // Fall back to the postmaster's PID so nothing outlives the test.
            if let Ok(pid) = std::fs::read_to_string(self.data().join("postmaster.pid"))
                && let Some(pid) = pid.lines().next()
            {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}
