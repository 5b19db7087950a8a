//! Version 1.0.0 of the test rule `looping-rule`: 2 % of every line, except that a bug
//! makes it loop forever on orders of 50.00 or more. Its fixtures only cover a small
//! order, so `plugin upload` accepts it; live, it fails every large order on its
//! deadline. Version 1.0.1 (`looping-rule-v2`) is the fix: the reprocessing tests
//! activate it and process the failed conversions again.
use cashback_sdk::prelude::*;

/// The rule.
pub struct LoopingRule;

impl Rule for LoopingRule {
    fn evaluate(order: &Order, _ctx: &RuleContext) -> Result<RuleDecision, PluginError> {
        if order.amount.minor >= 5000 {
            // The bug: a "tier search" that never finds its tier.
            let mut tier = 0u64;
            while std::hint::black_box(tier) != u64::MAX {
                tier = std::hint::black_box(tier.wrapping_mul(2));
            }
        }
        let mut decision = RuleDecision::empty(&order.amount.currency);
        for line in &order.line_items {
            decision.credit_line(line, Bps(200).of(line.amount, Rounding::Down)?, Some(200), "looping-rule 1.0.0")?;
        }
        Ok(decision)
    }
}

export_rule!(LoopingRule, fixtures = "fixtures.json");
