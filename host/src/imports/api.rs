//! Scheduled imports from a network's reporting API.

use super::{Tally, adapter};
use crate::clock::DAY_MS;
use crate::conversions::Service;
use crate::conversions::service::ServiceError;
use crate::plugin::wit::latest::{ImportRequest, PluginError};
use crate::plugin::{CallError, PluginRuntime};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

/// Networks report late (seed 003: up to 14 days): the first import looks back this far.
const FIRST_WINDOW: i64 = 14 * DAY_MS;
/// Each window starts this long before the previous one ended, to pick up late
/// updates; re-reading a conversion is harmless (deduplication).
const LOOKBACK: i64 = 3 * DAY_MS;
/// A runaway adapter cannot page forever.
const MAX_PAGES: u32 = 10_000;

/// How a failing page is retried: `attempts` tries, waiting `first_backoff` then twice as
/// long each time. Only failures the adapter calls `upstream` (the network's side) are
/// retried; a bug or a bad configuration fails the run at once.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Tries per page.
    pub attempts: u32,
    /// Wait before the second try.
    pub first_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: 4, first_backoff: Duration::from_secs(2) }
    }
}

/// What an import run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    /// Pages fetched.
    pub pages: u32,
    /// Events received.
    pub events: u64,
    /// Retries of failed pages.
    pub retries: u32,
    /// What the events did.
    pub tally: Tally,
    /// Report items the adapter could not turn into events: (reference, reason).
    pub rejected_items: Vec<(String, String)>,
    /// The window imported (ms).
    pub window: (i64, i64),
}

/// Where a network's import stands: (window start, unfinished window end, cursor).
pub async fn import_state(
    service: &Service,
    network: &str,
) -> Result<Option<(i64, Option<i64>, Option<String>)>, sqlx::Error> {
    let row = sqlx::query("SELECT window_start, window_end, cursor FROM import_state WHERE network_id = $1")
        .bind(network)
        .fetch_optional(&service.db().pool)
        .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose()
}

async fn save_state(
    service: &Service,
    network: &str,
    start: i64,
    end: Option<i64>,
    cursor: Option<&str>,
) -> Result<(), String> {
    sqlx::query(
        "INSERT INTO import_state (network_id, window_start, window_end, cursor, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (network_id) DO UPDATE SET window_start = $2, window_end = $3, cursor = $4, updated_at = $5",
    )
    .bind(network)
    .bind(start)
    .bind(end)
    .bind(cursor)
    .bind(service.now())
    .execute(&service.db().pool)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Imports a network's report from where the last run stopped: pages through the current
/// window with the adapter (which fetches through the host's `http` import), records every
/// event, and saves the cursor after each page so a crash or a failure resumes there.
pub async fn import_network(
    service: &Service,
    runtime: &Arc<PluginRuntime>,
    network_id: &str,
    retry: &Retry,
) -> Result<ImportSummary, String> {
    let (network, plugin, config) = adapter(service, network_id).await?;
    let now = service.now();
    let (start, end, mut cursor) = match import_state(service, network_id).await.map_err(|e| e.to_string())? {
        // An unfinished window is finished first, from its cursor.
        Some((start, Some(end), cursor)) => (start, end, cursor),
        Some((start, None, _)) => (start, now, None),
        None => (now - FIRST_WINDOW, now, None),
    };
    save_state(service, network_id, start, Some(end), cursor.as_deref()).await?;
    let mut summary = ImportSummary { window: (start, end), ..ImportSummary::default() };
    loop {
        if summary.pages >= MAX_PAGES {
            return Err(format!("{} returned more than {MAX_PAGES} pages for one window", plugin.label()));
        }
        let request = ImportRequest { window_start: start, window_end: end, cursor: cursor.clone() };
        let mut wait = retry.first_backoff;
        let page = 'attempts: {
            for attempt in 1..=retry.attempts.max(1) {
                let (rt, p, c, r) = (runtime.clone(), plugin.clone(), config.clone(), request.clone());
                let result = tokio::task::spawn_blocking(move || rt.import_page(&p, &c, &r).result)
                    .await
                    .map_err(|e| format!("import task failed: {e}"))?;
                match result {
                    Ok(page) => break 'attempts page,
                    Err(CallError::Plugin { error: PluginError::Upstream(why), .. }) if attempt < retry.attempts => {
                        tracing::warn!(network = network_id, attempt, error = %why, "import page failed; retrying");
                        summary.retries += 1;
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    // Named by its cursor: a run that resumes a window starts at its cursor.
                    Err(e) => {
                        return Err(match &request.cursor {
                            Some(c) => format!("the page at cursor {c:?}: {e}"),
                            None => format!("the first page of the window: {e}"),
                        });
                    }
                }
            }
            return Err("no attempt made".into());
        };
        summary.pages += 1;
        summary.rejected_items.extend(page.rejected.into_iter().map(|r| (r.reference, r.reason)));
        summary.events += page.events.len() as u64;
        let mut events = Vec::with_capacity(page.events.len());
        for event in page.events {
            let tid = event.transaction_id.clone();
            match crate::plugin::boundary::adopt_event(&network.id, event) {
                Ok(event) => events.push(event),
                Err(why) => summary.tally.record(&Err(ServiceError::Invalid(format!("transaction {tid:?}: {why}")))),
            }
        }
        let tally = super::record_events(service, events, crate::conversions::Via::ApiImport, |_, _| {}).await;
        if tally.unavailable > 0 {
            // Not past this page: the cursor stays before it, and the next run reads it
            // again (what was recorded of it is then a duplicate).
            let why = tally.errors.iter().find(|e| e.starts_with("database")).or(tally.errors.first());
            let why = why.cloned().unwrap_or_default();
            return Err(match &request.cursor {
                Some(c) => format!("the page at cursor {c:?}: {} events not recorded: {why}", tally.unavailable),
                None => format!("the first page of the window: {} events not recorded: {why}", tally.unavailable),
            });
        }
        summary.tally.merge(tally);
        cursor = page.next_cursor;
        match &cursor {
            Some(c) => save_state(service, network_id, start, Some(end), Some(c)).await?,
            None => {
                // Window done: the next one starts a little before this one ended.
                save_state(service, network_id, end - LOOKBACK, None, None).await?;
                return Ok(summary);
            }
        }
    }
}
