//! Running a merchant's rule chain: the live evaluation, the shadow candidate beside it,
//! and backtests all go through [`run_chain`] with the same [`RuleInputs`], which are
//! recorded with every decision. Rules are pure (no clock, no randomness, no I/O), so the
//! same inputs and the same digests give the same decision: that is what makes a
//! backtest exact rather than an estimate.

use crate::ledger::PluginRefs;
use crate::plugin::wit::latest;
use crate::plugin::{LoadedPlugin, PluginRuntime};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One plugin of a chain with its configuration (JSON text, as stored).
#[derive(Debug, Clone)]
pub struct Link {
    /// The plugin version.
    pub plugin: Arc<LoadedPlugin>,
    /// Its configuration for this merchant.
    pub config: String,
}

/// Everything a chain sees besides its plugins and configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleInputs {
    /// The order.
    pub order: latest::Order,
    /// `context.now`.
    pub now: i64,
    /// `context.prior-orders`.
    pub prior_orders: u32,
}

/// The plugins of a chain, as pinned in the ledger.
pub fn refs(chain: &[Link]) -> PluginRefs {
    let join = |f: &dyn Fn(&Link) -> String| chain.iter().map(f).collect::<Vec<_>>().join(",");
    PluginRefs {
        names: join(&|l| l.plugin.manifest.name.clone()),
        versions: join(&|l| l.plugin.manifest.version.to_string()),
        digests: join(&|l| l.plugin.digest.to_string()),
    }
}

/// Runs `chain` in order, each plugin seeing the decision so far. Blocking (plugin
/// calls): run it on a blocking thread. The error names the plugin and version.
pub fn run_chain(runtime: &PluginRuntime, chain: &[Link], inputs: &RuleInputs) -> Result<latest::RuleDecision, String> {
    let mut so_far: Option<latest::RuleDecision> = None;
    for link in chain {
        let json: serde_json::Value = serde_json::from_str(&link.config)
            .map_err(|e| format!("{}: stored configuration is not JSON: {e}", link.plugin.label()))?;
        let config =
            link.plugin.manifest.validate_config(&json).map_err(|e| format!("{}: {e}", link.plugin.label()))?;
        let context = latest::RuleContext {
            now: inputs.now,
            prior_orders: inputs.prior_orders,
            decision_so_far: so_far.take(),
            attributes: Vec::new(),
        };
        so_far =
            Some(runtime.evaluate(&link.plugin, &config, &inputs.order, &context).result.map_err(|e| e.to_string())?);
    }
    so_far.ok_or_else(|| "empty rule chain".to_string())
}
