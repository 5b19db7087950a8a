//! Offline report files (seed 000: up to 72 hours late; seed 003: up to 14 days).

use super::{Tally, adapter};
use crate::conversions::Service;
use crate::conversions::service::ServiceError;
use crate::plugin::PluginRuntime;
use std::sync::Arc;

/// A file row the adapter refused, or an event the ledger refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RowOutcome {
    /// Row number in the file (1-based, header included) when the adapter knows it.
    pub row: Option<u32>,
    /// Why.
    pub reason: String,
}

/// What a file import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FileSummary {
    /// Events the adapter found.
    pub events: u64,
    /// What they did.
    pub tally: Tally,
    /// Rows refused by the adapter, with reasons.
    pub rejected_rows: Vec<RowOutcome>,
}

/// Parses `contents` with the network's adapter and records every event. `progress` is
/// called with (done, total) as events are recorded.
pub async fn import_file(
    service: &Service,
    runtime: &Arc<PluginRuntime>,
    network_id: &str,
    name: &str,
    contents: Vec<u8>,
    progress: impl Fn(u64, u64),
) -> Result<FileSummary, String> {
    let (network, plugin, config) = adapter(service, network_id).await?;
    let (rt, p, n) = (runtime.clone(), plugin.clone(), name.to_string());
    let parsed = tokio::task::spawn_blocking(move || rt.parse_file(&p, &config, &n, &contents).result)
        .await
        .map_err(|e| format!("import task failed: {e}"))?
        .map_err(|e| format!("{name}: {e}"))?;
    let total = parsed.events.len() as u64;
    let mut summary = FileSummary {
        events: total,
        rejected_rows: parsed
            .rejected
            .iter()
            .map(|r| RowOutcome { row: Some(r.row), reason: r.reason.clone() })
            .collect(),
        ..FileSummary::default()
    };
    // Taken for this network like a postback's or a report page's events: an event for
    // another network is refused (it was recorded under that network before).
    let mut refused = Tally::default();
    let mut events = Vec::with_capacity(parsed.events.len());
    for event in parsed.events {
        let tid = event.transaction_id.clone();
        match crate::plugin::boundary::adopt_event(&network.id, event) {
            Ok(event) => events.push(event),
            Err(why) => refused.record(&Err(ServiceError::Invalid(format!("transaction {tid:?}: {why}")))),
        }
    }
    summary.tally = super::record_events(service, events, crate::conversions::Via::File, progress).await;
    summary.tally.merge(refused);
    Ok(summary)
}
