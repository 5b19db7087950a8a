//! Version 2.0.0 of the test rule `swap-rule`: 2 % of every line (plus `bonus_bps`).
use cashback_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    bonus_bps: u32,
}

/// The rule.
pub struct SwapRule;

impl Rule for SwapRule {
    fn evaluate(order: &Order, _ctx: &RuleContext) -> Result<RuleDecision, PluginError> {
        let bps = 200 + config::get::<Config>()?.bonus_bps;
        let mut decision = RuleDecision::empty(&order.amount.currency);
        for line in &order.line_items {
            decision.credit_line(line, Bps(bps).of(line.amount, Rounding::Down)?, Some(bps), "swap-rule v2")?;
        }
        Ok(decision)
    }
}

export_rule!(SwapRule, fixtures = "fixtures.json");
