//! Storage: one narrow interface over a SQLite file (the default, nothing to install)
//! or PostgreSQL (`DATABASE_URL`, for production and several replicas).
//!
//! Both go through sqlx's `Any` driver with the same SQL: integers are 64-bit, money is
//! minor units, times are UTC milliseconds, text is text. Where the dialects differ the
//! code asks [`Db::backend`]. Migrations are embedded, one folder per backend with the
//! same file names and the same shape.

pub mod fault;
pub mod rows;
pub mod steps;

pub use fault::Fault;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::str::FromStr;
use std::time::Duration;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (WAL, `synchronous=FULL`).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A connection pool and its backend.
#[derive(Debug, Clone)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// The backend.
    pub backend: Backend,
    /// SQLite's one write lock, as a queue in this process ([`Db::write_turn`]); shared by
    /// every clone and by [`Db::dedicated`] pools.
    writes: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// What the pool was sized for ([`Db::dedicated`] pools follow it).
    profile: Profile,
}

/// What a process needs of the database: how many connections, and on SQLite how much
/// page cache each keeps. Memory is connections times cache, and on SQLite each
/// connection also runs on a thread of its own, whose allocations glibc serves from an
/// arena of their own: a million-row `cashbackd import` with the server's pool peaked
/// at 488 MiB, most of it eight connections' full 16 MiB caches and the arenas around
/// them (docs/PERFORMANCE.md, "File imports in pieces").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `serve`: many concurrent requests, each holding a connection for a read; the hot
    /// indexes stay in each connection's cache.
    Server,
    /// A one-shot command (the CLI): one thing at a time, its reads short (an import's
    /// are one round trip per event before the writer); a few connections with a modest
    /// cache keep its memory bounded however large the database or the file.
    Command,
}

impl Profile {
    /// Connections of the main pool (the writer's dedicated one comes on top).
    fn max_connections(self, backend: Backend) -> u32 {
        match (self, backend) {
            (Profile::Server, Backend::Sqlite) => 8,
            (Profile::Server, Backend::Postgres) => 16,
            // Two readers: one event's read while another's is answered. An import's
            // rate is the writer's, which has its own connection.
            (Profile::Command, Backend::Sqlite) => 2,
            (Profile::Command, Backend::Postgres) => 4,
        }
    }

    /// SQLite page cache per connection, in KiB (SQLite's default is 2 MiB).
    fn sqlite_cache_kib(self) -> u32 {
        match self {
            // The hot indexes stay in memory instead of being re-read.
            Profile::Server => 16 << 10,
            // What is not cached here is in the operating system's page cache, a
            // system call away: the connections of a command hold 3 x 8 MiB at most.
            Profile::Command => 8 << 10,
        }
    }
}

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not `sqlite:` or `postgres:`, or its directory cannot be created.
    #[error("DATABASE_URL: {0}: use sqlite://PATH or postgres://USER@HOST/DB")]
    Url(String),
    /// sqlx failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Db {
    /// Connects to `url` (`sqlite://path` creates the file; `postgres://...`) with the
    /// server's pool, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        Db::connect_as(url, Profile::Server).await
    }

    /// [`Db::connect`] with the pool of `profile`.
    pub async fn connect_as(url: &str, profile: Profile) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::Url(format!("unsupported scheme in {}", redact(url))));
        };
        if backend == Backend::Sqlite {
            // Created on first start: nothing to install, nothing to prepare.
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = std::path::Path::new(path.split('?').next().unwrap_or_default());
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| DbError::Url(format!("{}: {e}", dir.display())))?;
            }
        }
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = pool_options(backend, profile, profile.max_connections(backend)).connect_with(options).await?;
        let db = Db { pool, backend, profile, writes: Default::default() };
        db.migrate().await?;
        Ok(db)
    }

    /// A pool of `max` connections of its own to the same database, with the same
    /// settings, opened as needed. The group-commit writer takes one: sharing the request
    /// pool, a batch waited in line behind every request's read (64 clients, 8
    /// connections) before it could begin.
    pub fn dedicated(&self, max: u32) -> Db {
        let options = (*self.pool.connect_options()).clone();
        Db {
            pool: pool_options(self.backend, self.profile, max).connect_lazy_with(options),
            backend: self.backend,
            profile: self.profile,
            writes: self.writes.clone(),
        }
    }

    /// On SQLite, this process's turn to run a write transaction: held from before BEGIN
    /// until after COMMIT by the busy writers (the group-commit writer, the delivery
    /// worker), so that they take SQLite's one write lock in turn, first come first
    /// served, instead of polling for it. SQLite's busy handler sleeps 1, 2, 5... up to
    /// 100 ms between tries; behind a writer that commits back to back, the delivery
    /// worker's record waited for tens to hundreds of milliseconds (and with it every
    /// answer it was to make durable: the crash loop resent 5.6 % of the callbacks).
    /// Other processes on the same file still meet the busy handler. `None` on
    /// PostgreSQL, whose row locks need no such queue.
    pub async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.backend {
            Backend::Sqlite => Some(self.writes.clone().lock_owned().await),
            Backend::Postgres => None,
        }
    }

    /// The migrations applied to this database, oldest first: (version, description).
    pub async fn applied_migrations(&self) -> Result<Vec<(i64, String)>, DbError> {
        Ok(sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await?)
    }

    /// The embedded migrations this database has not applied (or whose run failed), by
    /// version: what `/readyz` waits for. A database never migrated has every one pending.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, DbError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let exists: Option<(i64,)> = match self.backend {
            Backend::Sqlite => {
                sqlx::query_as("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                    .fetch_optional(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::query_as("SELECT 1::bigint FROM pg_tables WHERE tablename = '_sqlx_migrations'")
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        let applied: Vec<(i64,)> = match exists {
            Some(_) => {
                sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                    .fetch_all(&self.pool)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .filter(|v| !applied.iter().any(|(a,)| a == v))
            .collect())
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }
}

/// The pool settings of every connection cashbackd opens on `backend`, at most `max`.
fn pool_options(backend: Backend, profile: Profile, max: u32) -> AnyPoolOptions {
    let cache_size = format!("PRAGMA cache_size = -{}", profile.sqlite_cache_kib());
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            let cache_size = cache_size.clone();
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL: readers never block the writer. FULL: a commit is on disk
                    // before it is acknowledged. busy_timeout: a second process (the
                    // CLI next to a server) waits instead of failing.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // The profile's page cache (negative: in KiB).
                    conn.execute(cache_size.as_str()).await?;
                }
                Ok(())
            })
        })
        // A connection goes back to the pool only outside a transaction. On a full
        // disk (and on I/O errors) SQLite rolls a transaction back by itself; sqlx
        // does not notice, its ROLLBACK then fails and the connection keeps a phantom
        // transaction depth. Its next `begin` would issue a SAVEPOINT, which opens a
        // real transaction, and a failed batch there would `ROLLBACK TO` it and leave
        // it open: holding the write lock (every other writer gets "database is
        // locked") or, worse, turning the next batch's COMMIT into a mere RELEASE of a
        // nested savepoint, acknowledged but never committed. Such a connection is
        // closed instead (closing rolls back whatever it holds). A transaction dropped
        // without COMMIT or ROLLBACK (an error path) also ends here.
        .after_release(|conn, _| Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) }))
}

/// Begins a transaction on a connection of `pool`, whatever happens to the caller.
///
/// sqlx's `Pool::begin` is not safe to cancel on PostgreSQL (sqlx 0.8.6; transact-rs/sqlx
/// issue 4393): it raises its count of open transactions only once the server answered
/// `BEGIN`, so a caller dropped in between (an aborted task, a client that hung up on
/// its request, a timeout) gives the connection back to the pool inside a transaction
/// nothing will end. The next borrower's statements then run in that transaction, hold
/// their locks, and are committed only by someone's later `COMMIT` on that connection,
/// or lost when it closes. The benchmark met it: a callback endpoint saved on such a
/// connection was invisible to the changes written next, which got no delivery to it.
/// So the `BEGIN` runs in a task of its own, which finishes it even when the caller is
/// gone; a transaction nobody takes is then dropped, which rolls it back as sqlx
/// intends. Every transaction of the host begins here.
pub async fn begin(pool: &AnyPool) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await }).await.map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
}

/// [`begin`] with the given statement instead of `BEGIN` (SQLite's `BEGIN IMMEDIATE`).
pub async fn begin_with(
    pool: &AnyPool,
    statement: impl Into<std::borrow::Cow<'static, str>>,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    let (pool, statement) = (pool.clone(), statement.into());
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
}

/// `column` is one of the integers in the JSON array bound as parameter `$n`: one
/// parameter however many ids. (sqlx binds SQLite's `$N` parameters by name, and SQLite
/// looks each name up in a list: a statement with one parameter per id costs time
/// quadratic in the number of ids.) A condition for a statement that picks rows by key.
///
/// On PostgreSQL it is `= ANY` of an array computed once (an init plan), which the planner
/// can only answer by the key's index. `IN (SELECT jsonb_array_elements_text(...))` was
/// planned by the table's statistics: after `ANALYZE` saw no leases, a statement with
/// `lease_owner = $1` beside it was estimated at one row, planned as a sequential scan
/// joined to the array in a nested loop, and took 6 to 9 ms for 128 ids (the delivery
/// worker's record and hold-back, issue 15) instead of a few tenths.
pub fn id_in(backend: Backend, column: &str, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("{column} IN (SELECT value FROM json_each(${n}))"),
        Backend::Postgres => {
            format!("{column} = ANY(ARRAY(SELECT jsonb_array_elements_text(${n}::jsonb)::bigint))")
        }
    }
}

/// A database URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ if has_stray_credentials(url) => {
            let (scheme, rest) = url.split_once(':').unwrap_or_default();
            let host = rest.rsplit_once('@').map_or("", |(_, host)| host);
            format!("{scheme}:***@{host}")
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".to_string(),
    }
}

/// Whether `url` holds a `user:password@` that a URL parser does not take for credentials:
/// `postgres:://app:pw@db` (one colon too many) parses, as a path, and has no password.
pub fn has_stray_credentials(url: &str) -> bool {
    let no_password = url::Url::parse(url).map_or(true, |u| u.password().is_none());
    let userinfo = url.split_once(':').and_then(|(_, rest)| rest.rsplit_once('@')).map(|(userinfo, _)| userinfo);
    no_password && userinfo.is_some_and(|u| u.contains(':'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(super::redact("postgres://app:hunter2@db/cb"), "postgres://app:***@db/cb");
        assert!(!super::redact("postgres://app:hunter2@db/cb").contains("hunter2"));
        // Found by the fuzz target `config`: with one colon too many the URL parses, as a
        // path, without a password, and was shown whole.
        assert_eq!(super::redact("postgres:://app:hunter2@db/cb"), "postgres:***@db/cb");
        assert_eq!(super::redact("postgres:/app:hunter2@db"), "postgres:***@db");
        assert_eq!(super::redact("postgres://app@db/cb"), "postgres://app@db/cb", "no password");
        assert_eq!(super::redact("sqlite://./data@2026.db"), "sqlite://./data@2026.db", "no credentials");
    }
}
