//! The two storage backends the conformance tests run against: a SQLite file in a
//! temporary directory, and a fresh PostgreSQL database on 127.0.0.1:5432 (or
//! `CASHBACKD_TEST_POSTGRES`). PostgreSQL is skipped only when no server answers and `CI`
//! is not set (in CI it is required); each skipped half is recorded by `common::skip`, so
//! the end of `scripts/test.sh` lists it.

use cashbackd::db::Db;
use sqlx::{Connection, Executor};
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::OnceCell;

pub struct TestDb {
    pub db: Db,
    pub name: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<String>,
}

impl TestDb {
    /// The URL the database was opened with, for another process (the load binary).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the PostgreSQL database (SQLite's directory goes with the value).
    pub async fn cleanup(self) {
        self.db.pool.close().await;
        if let Some(name) = self.pg_database
            && let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url()).await
        {
            let _ = admin.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str()).await;
        }
    }
}

fn admin_url() -> String {
    std::env::var("CASHBACKD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("cashbackd.db").display());
    TestDb { db: Db::connect(&url).await.expect("sqlite"), name: "sqlite", url, _dir: Some(dir), pg_database: None }
}

/// Whether PostgreSQL answers, or why not; the first call also drops databases left by
/// crashed runs.
async fn postgres_available() -> Result<(), String> {
    static AVAILABLE: OnceCell<Result<(), String>> = OnceCell::const_new();
    AVAILABLE
        .get_or_init(|| async {
            let connect =
                tokio::time::timeout(std::time::Duration::from_secs(5), sqlx::PgConnection::connect(&admin_url()))
                    .await;
            match connect {
                Ok(Ok(mut admin)) => {
                    let stale: Vec<(String,)> =
                        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'cbt\\_%'")
                            .fetch_all(&mut admin)
                            .await
                            .unwrap_or_default();
                    // Only databases whose creating process is gone: another test process
                    // may be running right now (names are cbt_<pid>_<n>_<nonce>).
                    for (name,) in stale {
                        let pid = name.split('_').nth(1).unwrap_or_default();
                        if !std::path::Path::new("/proc").join(pid).exists() {
                            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                            let _ = admin.execute(sql.as_str()).await;
                        }
                    }
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 5 s".into()),
            }
        })
        .await
        .clone()
}

pub async fn postgres() -> Option<TestDb> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    if let Err(why) = postgres_available().await {
        // Every test's skipped half is recorded, not only the first: the list says which.
        crate::common::skip(&format!("PostgreSQL at {}", admin_url()), &why);
        return None;
    }
    let name = format!("cbt_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst), rand_suffix());
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.expect("admin connection");
    admin.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await.expect("create test database");
    let mut url = url::Url::parse(&admin_url()).expect("url");
    url.set_path(&name);
    let db = Db::connect(url.as_str()).await.expect("postgres");
    Some(TestDb { db, name: "postgres", url: url.to_string(), _dir: None, pg_database: Some(name) })
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

/// SQLite, and PostgreSQL when it answers.
pub async fn all() -> Vec<TestDb> {
    let mut v = vec![sqlite().await];
    v.extend(postgres().await);
    v
}
