//! Version 1.0.1 of the test rule `looping-rule`: the fix of 1.0.0, 2 % of every line
//! whatever the order's size.
use cashback_sdk::prelude::*;

/// The rule.
pub struct LoopingRule;

impl Rule for LoopingRule {
    fn evaluate(order: &Order, _ctx: &RuleContext) -> Result<RuleDecision, PluginError> {
        let mut decision = RuleDecision::empty(&order.amount.currency);
        for line in &order.line_items {
            decision.credit_line(line, Bps(200).of(line.amount, Rounding::Down)?, Some(200), "looping-rule 1.0.1")?;
        }
        Ok(decision)
    }
}

export_rule!(LoopingRule, fixtures = "fixtures.json");
