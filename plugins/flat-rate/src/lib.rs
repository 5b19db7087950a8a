//! `flat-rate`: one cashback rate for the whole order, with exclusions and a cap.
//!
//! The smallest useful merchant rule, and the benchmark's reference rule: the host's
//! benchmark runs this exact code natively and inside the sandbox.

use cashback_sdk::prelude::*;
use serde::Deserialize;

/// The plugin's configuration (see `cashback-plugin.toml` for the schema).
#[derive(Debug, Deserialize)]
pub struct Config {
    /// Rate in basis points.
    pub rate_bps: u32,
    /// Categories that earn nothing.
    #[serde(default)]
    pub excluded_categories: Vec<String>,
    /// SKUs that earn nothing.
    #[serde(default)]
    pub excluded_skus: Vec<String>,
    /// Cap per order, in minor units.
    pub max_cashback: Option<i64>,
    /// Reward delay override.
    pub reward_delay_days: Option<u32>,
    /// Hold orders above this value for review.
    pub hold_above: Option<i64>,
}

/// The rule.
pub struct FlatRate;

impl FlatRate {
    /// The rule with an explicit configuration (what `evaluate` does with the host's).
    pub fn decide(config: &Config, order: &Order) -> Result<RuleDecision, PluginError> {
        let mut decision = RuleDecision::empty(&order.amount.currency);
        for line in &order.line_items {
            if config.excluded_categories.iter().any(|c| c.eq_ignore_ascii_case(&line.category)) {
                decision.exclude(line, &format!("category {} earns no cashback", line.category));
            } else if config.excluded_skus.contains(&line.sku) {
                decision.exclude(line, &format!("SKU {} earns no cashback", line.sku));
            } else {
                let cashback = Bps(config.rate_bps).of(line.amount.max(0), Rounding::Down)?;
                let reason = format!("{} of {}", Bps(config.rate_bps), line.id);
                decision.credit_line(line, cashback, Some(config.rate_bps), &reason)?;
            }
        }
        if let Some(cap) = config.max_cashback {
            let note = format!("capped at {}", money::format(cap, &order.amount.currency));
            decision.cap_total(cap, &note)?;
        }
        decision.reward_delay_days = config.reward_delay_days;
        if let Some(limit) = config.hold_above
            && order.amount.minor > limit
        {
            let why = format!("order of {} is above {}", order.amount, money::format(limit, &order.amount.currency));
            decision.hold(&why);
        }
        Ok(decision)
    }
}

impl Rule for FlatRate {
    fn evaluate(order: &Order, _context: &RuleContext) -> Result<RuleDecision, PluginError> {
        let config: Config = config::get()?;
        Self::decide(&config, order)
    }
}

export_rule!(FlatRate, fixtures = "fixtures.json");

#[cfg(test)]
mod tests {
    use super::*;
    use cashback_sdk::testing;

    #[test]
    fn credits_the_rate_on_every_line_rounding_down() {
        testing::set_config(r#"{"rate_bps": 300}"#);
        let order =
            testing::order("o-1", "EUR").line("l1", "A", "books", 1, 1299).line("l2", "B", "toys", 2, 5000).build();
        let d = FlatRate::evaluate(&order, &testing::context()).expect("decision");
        assert_eq!(d.lines.iter().map(|l| l.amount).collect::<Vec<_>>(), vec![38, 150]);
        assert_eq!(d.total, Money::new(188, "EUR"));
        testing::assert_consistent(&d);
    }

    #[test]
    fn excluded_categories_and_skus_earn_nothing_with_a_reason() {
        testing::set_config(r#"{"rate_bps": 500, "excluded_categories": ["gift-cards"], "excluded_skus": ["X9"]}"#);
        let order = testing::order("o-2", "EUR")
            .line("l1", "G1", "Gift-Cards", 1, 10_000)
            .line("l2", "X9", "books", 1, 2_000)
            .line("l3", "B1", "books", 1, 2_000)
            .build();
        let d = FlatRate::evaluate(&order, &testing::context()).expect("decision");
        assert_eq!(d.total.minor, 100);
        assert_eq!(d.exclusions.len(), 2);
        assert!(d.exclusions[0].reason.contains("Gift-Cards"));
        assert!(d.exclusions[1].reason.contains("X9"));
    }

    #[test]
    fn the_cap_is_spread_back_over_the_lines() {
        testing::set_config(r#"{"rate_bps": 1000, "max_cashback": 500}"#);
        let order =
            testing::order("o-3", "EUR").line("l1", "A", "tv", 1, 80_000).line("l2", "B", "tv", 1, 20_000).build();
        let d = FlatRate::evaluate(&order, &testing::context()).expect("decision");
        assert_eq!(d.total.minor, 500);
        assert_eq!(d.lines[0].amount, 400);
        assert_eq!(d.lines[1].amount, 100);
        assert_eq!(d.notes, vec!["capped at 5.00 EUR".to_string()]);
        testing::assert_consistent(&d);
    }

    #[test]
    fn high_value_orders_are_held_for_review() {
        testing::set_config(r#"{"rate_bps": 100, "hold_above": 50000}"#);
        let big = testing::order("o-5", "EUR").line("l1", "A", "tv", 1, 50_001).build();
        let d = FlatRate::evaluate(&big, &testing::context()).expect("decision");
        assert_eq!(d.hold.as_deref(), Some("order of 500.01 EUR is above 500.00 EUR"));
        let small = testing::order("o-6", "EUR").line("l1", "A", "tv", 1, 50_000).build();
        assert_eq!(FlatRate::evaluate(&small, &testing::context()).expect("decision").hold, None);
    }

    #[test]
    fn the_readme_worked_example() {
        testing::set_config(
            r#"{"rate_bps": 350, "excluded_categories": ["gift-cards"], "excluded_skus": ["SVC-WARRANTY"],
                "max_cashback": 2500, "hold_above": 50000}"#,
        );
        let order = testing::order("o-7", "EUR")
            .line("l1", "BK-1", "books", 1, 1299)
            .line("l2", "GC-25", "Gift-Cards", 1, 2500)
            .line("l3", "SVC-WARRANTY", "electronics", 1, 1999)
            .line("l4", "HD-2", "electronics", 1, 17350)
            .build();
        assert_eq!(order.amount.minor, 23_148);
        let d = FlatRate::evaluate(&order, &testing::context()).expect("decision");
        assert_eq!(
            d.lines.iter().map(|l| (l.line_id.as_str(), l.amount)).collect::<Vec<_>>(),
            vec![("l1", 45), ("l4", 607)]
        );
        assert_eq!((d.total.minor, d.hold.as_deref()), (652, None));
        assert_eq!(d.exclusions.len(), 2);
        let tv = testing::order("o-8", "EUR").line("l1", "TV", "electronics", 1, 90_000).build();
        let d = FlatRate::evaluate(&tv, &testing::context()).expect("decision");
        assert_eq!((d.total.minor, d.notes.clone()), (2500, vec!["capped at 25.00 EUR".to_string()]));
        assert_eq!(d.hold.as_deref(), Some("order of 900.00 EUR is above 500.00 EUR"));
        let whole = testing::order("o-9", "EUR").line("order", "", "", 1, 23_148).build();
        assert_eq!(FlatRate::evaluate(&whole, &testing::context()).expect("decision").total.minor, 810);
        // Rounding per line: 2 x 12.99 at 3 % is 0.76, the total at 3 % would be 0.77.
        testing::set_config(r#"{"rate_bps": 300}"#);
        let two = testing::order("o-10", "EUR").line("a", "A", "x", 1, 1299).line("b", "B", "x", 1, 1299).build();
        assert_eq!(FlatRate::evaluate(&two, &testing::context()).expect("decision").total.minor, 76);
    }

    #[test]
    fn missing_rate_is_a_config_error() {
        testing::set_config("{}");
        let order = testing::order("o-4", "EUR").line("l1", "A", "books", 1, 100).build();
        match FlatRate::evaluate(&order, &testing::context()) {
            Err(PluginError::Config(m)) => assert!(m.contains("rate_bps"), "{m}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
