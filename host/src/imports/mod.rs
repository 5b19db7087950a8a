//! Getting conversions from a network other than by postback: its reporting API, paged
//! through the adapter's `import-page` on a schedule, and offline report files through
//! `parse-file`. Both feed the same service as postbacks, so deduplication and the state
//! machine treat a conversion the same whichever way it arrives.

mod api;
mod file;
mod pieces;

pub use api::{ImportSummary, Retry, import_network, import_state};
pub use file::{FileSource, FileSummary, RowOutcome, import_file, import_from, import_path};

use crate::conversions::service::ServiceError;
use crate::conversions::{ApplyError, Outcome, Service, Via, conversion_id, fingerprint};
use crate::ingest;
use crate::ledger::LedgerError;
use crate::plugin::wit::latest;
use crate::plugin::{LoadedPlugin, PluginConfig};
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::task::JoinSet;

/// Conversions recorded at the same time by one import: enough for the group-commit
/// writer to fill its batches, well under the writer's queue.
const CONCURRENCY: usize = 256;
/// Fingerprints per deduplication query (SQLite allows 32,766 parameters): a whole piece
/// of a file ([`pieces::PIECE_ROWS`]) in one query.
const DEDUP_CHUNK: usize = pieces::PIECE_ROWS as usize;

/// How many events did what.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Tally {
    /// New conversions.
    pub created: u64,
    /// Conversions whose state or amounts changed.
    pub updated: u64,
    /// Already received: nothing changed.
    pub duplicates: u64,
    /// Would have moved a conversion backwards or changed nothing; recorded with why.
    pub ignored: u64,
    /// Refused (bad data), or not recorded (see `unavailable`); with the reasons in
    /// `errors`.
    pub rejected: u64,
    /// Not recorded because the database failed (not the data): importing them again
    /// records them. Counted in `rejected` too; the reasons are in `errors`.
    pub unavailable: u64,
    /// The first few reasons for refusals.
    pub errors: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.created += other.created;
        self.updated += other.updated;
        self.duplicates += other.duplicates;
        self.ignored += other.ignored;
        self.rejected += other.rejected;
        self.unavailable += other.unavailable;
        let room = 20usize.saturating_sub(self.errors.len());
        self.errors.extend(other.errors.into_iter().take(room));
    }

    fn record(&mut self, result: &Result<Outcome, ServiceError>) {
        match result {
            Ok(Outcome::Applied { created: true, .. }) => self.created += 1,
            Ok(Outcome::Applied { .. }) => self.updated += 1,
            Ok(Outcome::Duplicate { .. }) => self.duplicates += 1,
            Ok(_) => self.ignored += 1,
            Err(e) => {
                self.rejected += 1;
                if matches!(
                    e,
                    ServiceError::Db(_)
                        | ServiceError::Apply(
                            ApplyError::Db(_) | ApplyError::Ledger(LedgerError::Db(_)) | ApplyError::Stopped
                        )
                ) {
                    self.unavailable += 1;
                }
                if self.errors.len() < 20 {
                    self.errors.push(e.to_string());
                }
            }
        }
    }
}

/// A network's adapter and its validated configuration.
async fn adapter(
    service: &Service,
    network_id: &str,
) -> Result<(ingest::Network, Arc<LoadedPlugin>, PluginConfig), String> {
    let network = ingest::network(service.db(), network_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no network {network_id:?}"))?;
    let digest = network.adapter_digest.clone().ok_or_else(|| format!("network {network_id} has no adapter"))?;
    let plugin = service.plugin(&digest).await.map_err(|e| e.to_string())?;
    let config =
        plugin.manifest.validate_config(&network.adapter_config).map_err(|e| format!("{}: {e}", plugin.label()))?;
    Ok((network, plugin, config))
}

/// Records the events of one import (a file, a page of a report) and tallies what they
/// did; `progress(done, total)` is called as events are recorded.
///
/// Reports overlap (a daily import re-reads the last days, a re-sent file repeats every
/// row), so most events of a routine import are exact duplicates: they are recognised
/// first in bulk, a query per 2,000 events against the journal's fingerprints, and counted
/// without a write (no history line per re-read row: the import's summary has the count).
/// The rest go through [`Service::ingest_via`] like a postback, many conversions at once so
/// that the group-commit writer fills its batches, and each conversion's events one after
/// another in the order the report lists them (PENDING before COMPLETED).
pub async fn record_events(
    service: &Service,
    events: Vec<latest::ConversionEvent>,
    via: Via,
    progress: impl Fn(u64, u64),
) -> Tally {
    let total = events.len() as u64;
    let mut tally = Tally::default();
    let mut done = 0u64;
    let fingerprints: Vec<String> = events.iter().map(fingerprint).collect();
    let known = match known_fingerprints(service, &fingerprints).await {
        Ok(known) => known,
        Err(e) => {
            // Not fatal: the journal deduplicates each event again as it is applied.
            tracing::warn!(error = %e, "bulk duplicate check failed; checking event by event");
            HashSet::new()
        }
    };
    let mut groups: Vec<Vec<latest::ConversionEvent>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (event, fp) in events.into_iter().zip(&fingerprints) {
        if known.contains(fp) {
            crate::metrics::ingest_event(&event.network, via.as_str(), "duplicate");
            tally.record(&Ok(Outcome::Duplicate {
                conversion_id: conversion_id(&event.network, &event.transaction_id),
            }));
            done += 1;
            continue;
        }
        let id = conversion_id(&event.network, &event.transaction_id);
        let next = groups.len();
        let g = *group_of.entry(id).or_insert(next);
        if g == next {
            groups.push(Vec::new());
        }
        groups[g].push(event);
    }
    if done > 0 {
        progress(done, total);
    }
    let mut running = JoinSet::new();
    let mut pending = groups.into_iter();
    loop {
        while running.len() < CONCURRENCY
            && let Some(group) = pending.next()
        {
            let service = service.clone();
            running.spawn(async move {
                let mut results = Vec::with_capacity(group.len());
                for event in group {
                    results.push(service.ingest_via(event, via).await);
                }
                results
            });
        }
        let Some(joined) = running.join_next().await else { break };
        match joined {
            Ok(results) => {
                for result in &results {
                    tally.record(result);
                }
                done += results.len() as u64;
            }
            Err(e) => tally.record(&Err(ServiceError::Invalid(format!("recording task failed: {e}")))),
        }
        progress(done, total);
    }
    tally
}

/// Which of `fingerprints` the journal holds already.
async fn known_fingerprints(service: &Service, fingerprints: &[String]) -> Result<HashSet<String>, sqlx::Error> {
    let mut known = HashSet::new();
    for chunk in fingerprints.chunks(DEDUP_CHUNK) {
        let placeholders = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT fingerprint FROM journal WHERE fingerprint IN ({placeholders})");
        let mut query = sqlx::query(&sql);
        for fp in chunk {
            query = query.bind(fp);
        }
        for row in query.fetch_all(&service.db().pool).await? {
            known.insert(row.try_get(0)?);
        }
    }
    Ok(known)
}
