//! Example rule written with the SDK: a base rate, plus a bonus on weekend orders.
use cashback_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    base_bps: u32,
    weekend_bonus_bps: u32,
}

/// The rule.
pub struct WeekendBonus;

/// Saturday or Sunday (UTC) at `ms` since the epoch, which fell on a Thursday.
fn is_weekend(ms: i64) -> bool {
    let weekday = (ms.div_euclid(86_400_000) + 3).rem_euclid(7); // 0 = Monday
    weekday >= 5
}

impl Rule for WeekendBonus {
    fn evaluate(order: &Order, _ctx: &RuleContext) -> Result<RuleDecision, PluginError> {
        let config: Config = config::get()?;
        let weekend = is_weekend(order.event_time);
        let bps = config.base_bps + if weekend { config.weekend_bonus_bps } else { 0 };
        let reason = if weekend { format!("{} (weekend bonus)", Bps(bps)) } else { Bps(bps).to_string() };
        let mut decision = RuleDecision::empty(&order.amount.currency);
        for line in &order.line_items {
            decision.credit_line(line, Bps(bps).of(line.amount, Rounding::Down)?, Some(bps), &reason)?;
        }
        Ok(decision)
    }
}

export_rule!(WeekendBonus, fixtures = "fixtures.json");

#[cfg(test)]
mod tests {
    use super::*;
    use cashback_sdk::testing;

    #[test]
    fn weekend_orders_earn_the_bonus() {
        testing::set_config(r#"{"base_bps": 200, "weekend_bonus_bps": 300}"#);
        let saturday = 1_767_398_400_000; // 2026-01-03T00:00:00Z
        let friday = saturday - 1;
        let order = |at| testing::order("o", "EUR").line("l1", "A", "books", 1, 10_000).event_time(at).build();
        assert_eq!(WeekendBonus::evaluate(&order(saturday), &testing::context()).map(|d| d.total.minor), Ok(500));
        assert_eq!(WeekendBonus::evaluate(&order(friday), &testing::context()).map(|d| d.total.minor), Ok(200));
    }
}
