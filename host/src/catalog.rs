//! The configuration the hot path reads, held in memory: networks (adapter, its
//! configuration, how postbacks authenticate) and merchants (rule chain, processing mode,
//! default reward delay, shadow candidate). Without it a postback read them from the
//! database every time, several round trips before its write.
//!
//! **Invalidation by version.** `config_version` is a counter that every change to
//! `networks`, `merchants`, `merchant_rules` or `merchant_shadow` bumps, by trigger, in the
//! changing transaction, whoever makes it (see the migration `config_version`). Each entry
//! here carries the version read *before* its rows, so an entry is never newer than its
//! tag. Entries older than the newest version seen are reloaded on next use.
//!
//! **Never older than what was acknowledged before the event.** The one statement an event
//! reads before it is decided (`conversions::store::load_with_config`) also reads the
//! version. It is read after the event arrived, so it counts every change acknowledged
//! before: an entry tagged older is read again before use ([`Catalog::merchant`]), and an
//! event parsed by a network's adapter tagged older is parsed again (the ingress). That
//! is the hot-swap promise, exactly, on every replica: a conversion evaluated after an
//! activation was acknowledged uses it. A change committed while an event is being
//! handled may or may not apply to it, as before the cache.
//!
//! **Pushed on PostgreSQL.** The trigger also notifies `cashbackd_config` at commit;
//! [`Catalog::listen`] receives it, so replicas usually drop a stale entry before an event
//! needs it. A lost listener connection makes everything stale (a notification may have
//! been missed). SQLite has no notifications; the version read above suffices.

use crate::db::{Backend, Db};
use crate::ingest::Network;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// A merchant's configuration as the write path uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    /// The rule chain, in order: (plugin digest, configuration JSON).
    pub chain: Vec<(String, String)>,
    /// `automatic` or `manual`.
    pub processing_mode: String,
    /// Default reward delay, days.
    pub reward_delay_days: i64,
    /// The shadow candidate: (plugin digest, position in the chain, configuration JSON).
    pub shadow: Option<(String, usize, String)>,
}

/// An entry and the version it was read at.
#[derive(Debug, Clone)]
pub struct Tagged<T> {
    /// The configuration version read before the entry's rows.
    pub version: i64,
    /// The entry (`None`: it does not exist).
    pub value: Option<Arc<T>>,
}

/// The cache. One per process, shared by the service and the ingress.
#[derive(Debug, Default)]
pub struct Catalog {
    /// The newest configuration version seen; entries tagged older are stale.
    newest: AtomicI64,
    networks: RwLock<HashMap<String, Tagged<Network>>>,
    merchants: RwLock<HashMap<String, Tagged<Merchant>>>,
}

/// The configuration's version, as stored.
pub async fn current_version(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1").fetch_one(conn).await
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// The newest configuration version this process has seen.
    pub fn newest(&self) -> i64 {
        self.newest.load(Ordering::Acquire)
    }

    /// Records that the configuration is at `version` (read in a transaction, or
    /// notified): older entries become stale.
    pub fn observe(&self, version: i64) {
        self.newest.fetch_max(version, Ordering::AcqRel);
    }

    /// Makes every entry stale (a change of this process, or a listener that lost its
    /// connection and may have missed a notification).
    pub fn invalidate(&self) {
        self.networks.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.merchants.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn cached<T>(&self, map: &RwLock<HashMap<String, Tagged<T>>>, id: &str) -> Option<Tagged<T>> {
        let newest = self.newest();
        let map = map.read().unwrap_or_else(|e| e.into_inner());
        map.get(id).filter(|t| t.version >= newest).map(|t| Tagged { version: t.version, value: t.value.clone() })
    }

    fn keep<T>(&self, map: &RwLock<HashMap<String, Tagged<T>>>, id: &str, entry: &Tagged<T>) {
        self.observe(entry.version);
        let tagged = Tagged { version: entry.version, value: entry.value.clone() };
        map.write().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), tagged);
    }

    /// A network, from memory while it is current, else read (the version first).
    pub async fn network(&self, db: &Db, id: &str) -> Result<Tagged<Network>, sqlx::Error> {
        if let Some(hit) = self.cached(&self.networks, id) {
            return Ok(hit);
        }
        let mut conn = db.pool.acquire().await?;
        let version = current_version(&mut conn).await?;
        drop(conn);
        let entry = Tagged { version, value: crate::ingest::network(db, id).await?.map(Arc::new) };
        self.keep(&self.networks, id, &entry);
        Ok(entry)
    }

    /// A merchant's configuration at version `at_least` or newer: from memory while it is
    /// current, else read (the version, then the merchant, its chain and its shadow
    /// candidate in one statement).
    pub async fn merchant(&self, db: &Db, id: &str, at_least: i64) -> Result<Tagged<Merchant>, sqlx::Error> {
        self.observe(at_least);
        if let Some(hit) = self.cached(&self.merchants, id) {
            return Ok(hit);
        }
        let mut conn = db.pool.acquire().await?;
        let version = current_version(&mut conn).await?;
        // One row per link of the chain (none: a merchant without rules), each carrying
        // the merchant's settings and its shadow candidate.
        let rows = sqlx::query(
            "SELECT m.processing_mode, m.reward_delay_days, r.plugin_digest, r.config, \
             s.plugin_digest, s.position, s.config \
             FROM merchants m \
             LEFT JOIN merchant_rules r ON r.merchant_id = m.id \
             LEFT JOIN merchant_shadow s ON s.merchant_id = m.id \
             WHERE m.id = $1 ORDER BY r.position",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let value = match rows.first() {
            None => None,
            Some(first) => {
                let mut chain = Vec::with_capacity(rows.len());
                for r in &rows {
                    if let Some(digest) = r.try_get::<Option<String>, _>(2)? {
                        chain.push((digest, r.try_get::<Option<String>, _>(3)?.unwrap_or_default()));
                    }
                }
                let shadow = match first.try_get::<Option<String>, _>(4)? {
                    Some(digest) => {
                        let position: i64 = first.try_get(5)?;
                        let config: String = first.try_get(6)?;
                        Some((digest, usize::try_from(position).unwrap_or(usize::MAX), config))
                    }
                    None => None,
                };
                Some(Arc::new(Merchant {
                    chain,
                    processing_mode: first.try_get(0)?,
                    reward_delay_days: first.try_get(1)?,
                    shadow,
                }))
            }
        };
        let entry = Tagged { version, value };
        self.keep(&self.merchants, id, &entry);
        Ok(entry)
    }

    /// On PostgreSQL, listens for `cashbackd_config` until the process ends: each
    /// notification carries the new version. Between a lost connection and the next
    /// `LISTEN`, notifications may be missed: everything is made stale then. SQLite has
    /// no notifications; the per-batch check alone keeps the entries honest there.
    pub fn listen(self: &Arc<Self>, db: &Db, url: &str) {
        if db.backend != Backend::Postgres {
            return;
        }
        let (catalog, url) = (Arc::downgrade(self), url.to_string());
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen("cashbackd_config").await.is_ok() {
                            let Some(c) = catalog.upgrade() else { return };
                            c.invalidate();
                            drop(c);
                            // `Ok(None)`: the connection was lost (sqlx reconnects and listens
                            // again on the next call); what was notified meanwhile is lost.
                            while let Ok(n) = listener.try_recv().await {
                                let Some(c) = catalog.upgrade() else { return };
                                match n.map(|n| n.payload().parse::<i64>()) {
                                    Some(Ok(v)) => c.observe(v),
                                    Some(Err(_)) | None => c.invalidate(),
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "configuration listener cannot connect; retrying"),
                }
                let Some(c) = catalog.upgrade() else { return };
                c.invalidate();
                drop(c);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}
