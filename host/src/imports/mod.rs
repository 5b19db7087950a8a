//! Getting conversions from a network other than by postback: its reporting API, paged
//! through the adapter's `import-page` on a schedule, and offline report files through
//! `parse-file`. Both feed the same service as postbacks, so deduplication and the state
//! machine treat a conversion the same whichever way it arrives.

mod api;
mod file;

pub use api::{ImportSummary, Retry, import_network, import_state};
pub use file::{FileSummary, RowOutcome, import_file};

use crate::conversions::service::ServiceError;
use crate::conversions::{Outcome, Service};
use crate::ingest;
use crate::plugin::{LoadedPlugin, PluginConfig};
use std::sync::Arc;

/// How many events did what.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// New conversions.
    pub created: u64,
    /// Conversions whose state or amounts changed.
    pub updated: u64,
    /// Already received: nothing changed.
    pub duplicates: u64,
    /// Would have moved a conversion backwards or changed nothing; recorded with why.
    pub ignored: u64,
    /// Refused (bad data); with the reasons in `errors`.
    pub rejected: u64,
    /// The first few reasons for refusals.
    pub errors: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: &Result<Outcome, ServiceError>) {
        match result {
            Ok(Outcome::Applied { created: true, .. }) => self.created += 1,
            Ok(Outcome::Applied { .. }) => self.updated += 1,
            Ok(Outcome::Duplicate { .. }) => self.duplicates += 1,
            Ok(_) => self.ignored += 1,
            Err(e) => {
                self.rejected += 1;
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
