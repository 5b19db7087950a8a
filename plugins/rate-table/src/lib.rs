//! `rate-table`: a merchant's cashback rates, exclusions and limits, all from
//! configuration, so that onboarding a merchant never needs code.
//!
//! How an order is decided (README.md documents every field):
//!
//! 1. **Exclusions** come first and beat every rate: gift cards, excluded SKUs and
//!    categories, and lines with no positive value earn nothing, each with its reason.
//! 2. The **eligible value** (the sum of the lines left) is checked against the minimum
//!    and picks the tier. Excluded lines do not count, so a gift card cannot lift an
//!    order over the minimum or into a better tier.
//! 3. Each eligible line takes, whole, the first rule that applies to it: its SKU's
//!    entry, its category's entry, the tier reached, the default rate.
//! 4. The flat amount per order is spread over the eligible lines by value.
//! 5. The cap per order is spread back over the lines by cashback.
//! 6. The reward delay is set, and an order above a value or cashback threshold is held.
//!
//! The rule ignores `decision-so-far`: its decision replaces an earlier plugin's.

use cashback_sdk::prelude::*;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The plugin's configuration (schema: `cashback-plugin.toml`). Amounts are minor units
/// of the order's currency.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rate of lines that no entry or tier covers, in basis points.
    pub default_bps: u32,
    /// Entries by SKU, matched exactly.
    #[serde(default)]
    pub skus: BTreeMap<String, Entry>,
    /// Entries by category, matched ignoring ASCII case.
    #[serde(default)]
    pub categories: BTreeMap<String, Entry>,
    /// Rates by eligible order value.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    /// Cashback per order on top of the lines' own.
    #[serde(default)]
    pub flat_per_order: i64,
    /// Categories of gift cards.
    #[serde(default)]
    pub gift_card_categories: Vec<String>,
    /// SKUs that earn nothing.
    #[serde(default)]
    pub excluded_skus: Vec<String>,
    /// Categories that earn nothing.
    #[serde(default)]
    pub excluded_categories: Vec<String>,
    /// Below this eligible value, the order earns nothing.
    pub min_order: Option<i64>,
    /// Most cashback one order earns.
    pub max_cashback: Option<i64>,
    /// Days after completion before the cashback is available.
    pub reward_delay_days: Option<u32>,
    /// Hold orders whose value is above this for manual review.
    pub hold_above: Option<i64>,
    /// Hold orders whose cashback is above this for manual review.
    pub hold_cashback_above: Option<i64>,
    /// How a rate rounds a fraction of a minor unit.
    #[serde(default)]
    pub rounding: RoundingMode,
    /// The currency of the amounts above; orders in another one are refused.
    pub currency: Option<String>,
}

/// What the lines of one SKU or category earn.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Rate in basis points of the line's value.
    pub bps: Option<u32>,
    /// Fixed cashback per unit, in minor units.
    pub flat_per_unit: Option<i64>,
    /// Gift cards earn nothing.
    #[serde(default)]
    pub gift_card: bool,
}

/// A rate for orders whose eligible value is above a threshold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The threshold, exclusive, in minor units.
    pub above: i64,
    /// The rate that replaces `default_bps`, in basis points.
    pub bps: u32,
}

/// Rounding of rates. Cashback here is never negative, so floor and ceiling would only
/// repeat down and up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoundingMode {
    /// Toward zero: never pay a fraction that was not earned.
    #[default]
    Down,
    /// Away from zero.
    Up,
    /// To the nearest, halves up.
    HalfUp,
    /// To the nearest, halves to even.
    HalfEven,
}

impl From<RoundingMode> for Rounding {
    fn from(mode: RoundingMode) -> Rounding {
        match mode {
            RoundingMode::Down => Rounding::Down,
            RoundingMode::Up => Rounding::Up,
            RoundingMode::HalfUp => Rounding::HalfUp,
            RoundingMode::HalfEven => Rounding::HalfEven,
        }
    }
}

fn bad<T>(field: &str, why: impl std::fmt::Display) -> Result<T, PluginError> {
    Err(PluginError::Config(format!("{field}: {why}")))
}

fn rate(field: &str, bps: u32) -> Result<(), PluginError> {
    if bps > Bps::FULL.0 { bad(field, format!("{bps} bps is more than 100%")) } else { Ok(()) }
}

fn amount(field: &str, minor: i64) -> Result<(), PluginError> {
    if minor < 0 { bad(field, format!("{minor} is negative")) } else { Ok(()) }
}

fn has_category(list: &[String], category: &str) -> bool {
    list.iter().any(|c| c.eq_ignore_ascii_case(category))
}

impl Entry {
    fn earns(&self) -> bool {
        self.bps.is_some() || self.flat_per_unit.is_some()
    }
}

impl Config {
    /// Parses and checks a configuration. Every error is a [`PluginError::Config`] that
    /// names the field (`tiers[1].bps: ...`): the nested tables are `json` fields whose
    /// insides the host does not check.
    pub fn parse(json: &str) -> Result<Config, PluginError> {
        let config: Config = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json))
            .map_err(|e| PluginError::Config(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), PluginError> {
        rate("default_bps", self.default_bps)?;
        amount("flat_per_order", self.flat_per_order)?;
        let limits = [
            ("min_order", self.min_order),
            ("max_cashback", self.max_cashback),
            ("hold_above", self.hold_above),
            ("hold_cashback_above", self.hold_cashback_above),
        ];
        for (field, value) in limits {
            value.map_or(Ok(()), |v| amount(field, v))?;
        }
        for (table, entries) in [("skus", &self.skus), ("categories", &self.categories)] {
            for (key, entry) in entries {
                if key.is_empty() {
                    return bad(table, "an empty key would match every line that reports none");
                }
                let field = format!("{table}.{key}");
                entry.bps.map_or(Ok(()), |b| rate(&format!("{field}.bps"), b))?;
                entry.flat_per_unit.map_or(Ok(()), |v| amount(&format!("{field}.flat_per_unit"), v))?;
                match (entry.gift_card, entry.earns()) {
                    (true, true) => return bad(&field, "a gift card earns nothing: drop bps and flat_per_unit"),
                    (false, false) => return bad(&field, "set bps, flat_per_unit or gift_card"),
                    _ => {}
                }
            }
        }
        let mut seen = BTreeSet::new();
        for key in self.categories.keys() {
            if !seen.insert(key.to_ascii_lowercase()) {
                return bad(&format!("categories.{key}"), "categories ignore case, and another entry has this name");
            }
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            amount(&format!("tiers[{i}].above"), tier.above)?;
            rate(&format!("tiers[{i}].bps"), tier.bps)?;
            if self.tiers[..i].iter().any(|t| t.above == tier.above) {
                return bad(&format!("tiers[{i}].above"), "another tier has the same threshold");
            }
        }
        let lists = [
            ("gift_card_categories", &self.gift_card_categories),
            ("excluded_skus", &self.excluded_skus),
            ("excluded_categories", &self.excluded_categories),
        ];
        for (field, list) in lists {
            if list.iter().any(String::is_empty) {
                return bad(field, "an empty name would match every line that reports none");
            }
        }
        // Exclusions beat rates, so a rate for an excluded item can never apply: that is
        // a mistake in the table, better refused than silently ignored.
        if let Some(sku) = self.excluded_skus.iter().find(|s| self.skus.get(*s).is_some_and(Entry::earns)) {
            return bad("excluded_skus", format!("SKU {sku} also has a rate in skus, which could never apply"));
        }
        for (field, list) in
            [("gift_card_categories", &self.gift_card_categories), ("excluded_categories", &self.excluded_categories)]
        {
            if let Some(c) = list.iter().find(|c| self.category(c).is_some_and(Entry::earns)) {
                return bad(field, format!("category {c} also has a rate in categories, which could never apply"));
            }
        }
        if let Some(code) = &self.currency
            && money::currency_code(code).as_ref() != Some(code)
        {
            return bad("currency", format!("{code:?} is not an upper-case ISO 4217 code"));
        }
        Ok(())
    }

    fn category(&self, name: &str) -> Option<&Entry> {
        self.categories.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, e)| e)
    }

    /// Why `line` earns nothing, if it does not.
    fn exclusion(&self, line: &LineItem, currency: &str) -> Option<String> {
        let (sku, category) = (&line.sku, &line.category);
        Some(if self.skus.get(sku).is_some_and(|e| e.gift_card) {
            format!("gift cards earn no cashback (SKU {sku})")
        } else if self.category(category).is_some_and(|e| e.gift_card)
            || has_category(&self.gift_card_categories, category)
        {
            format!("gift cards earn no cashback (category {category})")
        } else if self.excluded_skus.contains(sku) {
            format!("SKU {sku} is excluded from cashback")
        } else if has_category(&self.excluded_categories, category) {
            format!("category {category} is excluded from cashback")
        } else if line.amount <= 0 {
            format!("a line total of {} earns nothing", money::format(line.amount, currency))
        } else {
            return None;
        })
    }

    /// What an eligible line earns under the first rule that covers it.
    fn credit<'a>(&self, line: &'a LineItem, tier: Option<&Tier>, currency: &str) -> Result<Credit<'a>, PluginError> {
        let fmt = |minor| money::format(minor, currency);
        let (source, bps, per_unit) = if let Some(e) = self.skus.get(&line.sku) {
            (format!("SKU {}", line.sku), e.bps, e.flat_per_unit)
        } else if let Some(e) = self.category(&line.category) {
            (format!("category {}", line.category), e.bps, e.flat_per_unit)
        } else if let Some(t) = tier {
            (format!("order above {}", fmt(t.above)), Some(t.bps), None)
        } else {
            ("default rate".to_string(), Some(self.default_bps), None)
        };
        let mut credit = Credit { line, amount: 0, bps, reason: String::new() };
        let mut parts = Vec::new();
        if let Some(bps) = bps {
            credit.amount = Bps(bps).of(line.amount, self.rounding.into())?;
            parts.push(format!("{} of {}", Bps(bps), fmt(line.amount)));
        }
        if let Some(unit) = per_unit {
            let flat = money::checked_mul(unit, i64::from(line.quantity))?;
            credit.amount = money::checked_add(credit.amount, flat)?;
            parts.push(format!("{} × {} units", fmt(unit), line.quantity));
        }
        credit.reason = format!("{source}: {}", parts.join(" + "));
        Ok(credit)
    }
}

/// One line's cashback before it goes into the decision.
struct Credit<'a> {
    line: &'a LineItem,
    amount: i64,
    bps: Option<u32>,
    reason: String,
}

/// The rule.
pub struct RateTable;

impl RateTable {
    /// The rule with an explicit configuration (what `evaluate` does with the host's).
    pub fn decide(config: &Config, order: &Order) -> Result<RuleDecision, PluginError> {
        let currency = order.amount.currency.as_str();
        if let Some(c) = config.currency.as_deref().filter(|c| *c != currency) {
            return bad("currency", format!("the configured amounts are in {c}, the order is in {currency}"));
        }
        let fmt = |minor| money::format(minor, currency);
        let mut decision = RuleDecision::empty(currency);
        decision.reward_delay_days = config.reward_delay_days;

        let mut eligible = Vec::new();
        for line in &order.line_items {
            match config.exclusion(line, currency) {
                Some(why) => decision.exclude(line, &why),
                None => eligible.push(line),
            }
        }
        let value = money::checked_sum(eligible.iter().map(|l| l.amount))?;
        if let Some(min) = config.min_order
            && value < min
        {
            let why = format!("eligible order value {} is below the {} minimum", fmt(value), fmt(min));
            for line in eligible {
                decision.exclude(line, &why);
            }
            decision.notes.push(why);
            return Ok(decision);
        }

        let tier = config.tiers.iter().filter(|t| value > t.above).max_by_key(|t| t.above);
        if let Some(t) = tier {
            decision.notes.push(format!(
                "eligible order value {} is above {}: {} instead of the default rate",
                fmt(value),
                fmt(t.above),
                Bps(t.bps)
            ));
        }
        let mut credits: Vec<Credit> =
            eligible.iter().map(|line| config.credit(line, tier, currency)).collect::<Result<_, _>>()?;

        let flat = config.flat_per_order;
        if flat > 0 && credits.is_empty() {
            decision.notes.push(format!("no eligible line: the {} per order is not paid", fmt(flat)));
        } else if flat > 0 {
            // By value, not by cashback: lines at 0 % carry their share too.
            let weights: Vec<i64> = credits.iter().map(|c| c.line.amount).collect();
            for (credit, share) in credits.iter_mut().zip(money::allocate(flat, &weights)?) {
                credit.amount = money::checked_add(credit.amount, share)?;
                if share > 0 {
                    credit.reason += &format!(" + {} of the {} per order", fmt(share), fmt(flat));
                }
            }
            decision.notes.push(format!("{} per order, spread over {} lines by value", fmt(flat), credits.len()));
        }
        for c in credits {
            decision.credit_line(c.line, c.amount, c.bps, &c.reason)?;
        }

        if let Some(cap) = config.max_cashback
            && decision.total.minor > cap
        {
            let before: Vec<i64> = decision.lines.iter().map(|l| l.amount).collect();
            decision.cap_total(cap, &format!("capped at {} per order", fmt(cap)))?;
            // cap_total only notes the cap; each line must still say why it got less.
            for (line, was) in decision.lines.iter_mut().zip(before) {
                if line.amount != was {
                    line.reason += &format!(", cut from {} by the {} cap per order", fmt(was), fmt(cap));
                }
            }
        }

        let total = decision.total.minor;
        let mut holds = Vec::new();
        if let Some(limit) = config.hold_above
            && order.amount.minor > limit
        {
            holds.push(format!("order value {} is above {}", order.amount, fmt(limit)));
        }
        if let Some(limit) = config.hold_cashback_above
            && total > limit
        {
            holds.push(format!("cashback {} is above {}", decision.total, fmt(limit)));
        }
        // An order that earns nothing has nothing to review.
        if total > 0 && !holds.is_empty() {
            decision.hold(&holds.join("; "));
        }
        Ok(decision)
    }
}

impl Rule for RateTable {
    fn evaluate(order: &Order, _context: &RuleContext) -> Result<RuleDecision, PluginError> {
        // Not `config::get`: its errors do not say which nested field is wrong.
        Self::decide(&Config::parse(&config::raw())?, order)
    }
}

export_rule!(RateTable, fixtures = "fixtures.json");

#[cfg(test)]
mod tests {
    use super::*;
    use cashback_sdk::testing;
    use serde_json::{Value, json};

    /// Decides `order` under `config` and checks the invariant the host checks.
    fn decide(config: Value, order: &Order) -> RuleDecision {
        let config = Config::parse(&config.to_string()).expect("valid config");
        let d = RateTable::decide(&config, order).expect("decision");
        testing::assert_consistent(&d);
        d
    }

    fn amounts(d: &RuleDecision) -> Vec<(&str, i64)> {
        d.lines.iter().map(|l| (l.line_id.as_str(), l.amount)).collect()
    }

    fn reasons(d: &RuleDecision) -> Vec<&str> {
        d.lines.iter().map(|l| l.reason.as_str()).collect()
    }

    fn excluded(d: &RuleDecision) -> Vec<(&str, &str)> {
        d.exclusions.iter().map(|e| (e.line_id.as_str(), e.reason.as_str())).collect()
    }

    fn config_error(config: Value) -> String {
        match Config::parse(&config.to_string()) {
            Err(PluginError::Config(m)) => m,
            other => panic!("expected a config error for {config}, got {other:?}"),
        }
    }

    #[test]
    fn a_sku_entry_beats_a_category_entry_which_beats_the_default_rate() {
        let config = json!({
            "default_bps": 100,
            "categories": {"books": {"bps": 500}},
            "skus": {"B-1": {"bps": 800}},
        });
        let order = testing::order("o", "EUR")
            .line("sku", "B-1", "books", 1, 10_000)
            .line("cat", "B-2", "books", 1, 10_000)
            .line("default", "T-1", "toys", 1, 10_000)
            .build();
        let d = decide(config, &order);
        assert_eq!(amounts(&d), [("sku", 800), ("cat", 500), ("default", 100)]);
        assert_eq!(d.lines.iter().map(|l| l.rate_bps).collect::<Vec<_>>(), [Some(800), Some(500), Some(100)]);
        assert_eq!(
            reasons(&d),
            ["SKU B-1: 8% of 100.00 EUR", "category books: 5% of 100.00 EUR", "default rate: 1% of 100.00 EUR"]
        );
        assert_eq!(d.total, Money::new(1400, "EUR"));
    }

    #[test]
    fn categories_ignore_case_and_skus_do_not() {
        let config = json!({"default_bps": 0, "categories": {"Books": {"bps": 500}}, "skus": {"ab-1": {"bps": 900}}});
        let order =
            testing::order("o", "EUR").line("l1", "AB-1", "BOOKS", 1, 1_000).line("l2", "ab-1", "x", 1, 1_000).build();
        let d = decide(config, &order);
        assert_eq!(amounts(&d), [("l1", 50), ("l2", 90)]);
        assert_eq!(reasons(&d)[0], "category BOOKS: 5% of 10.00 EUR");
    }

    #[test]
    fn a_zero_default_rate_credits_nothing_and_says_so() {
        let order = testing::order("o", "EUR").line("l1", "A", "misc", 1, 5_000).build();
        let d = decide(json!({"default_bps": 0}), &order);
        assert_eq!(amounts(&d), [("l1", 0)]);
        assert_eq!(reasons(&d), ["default rate: 0% of 50.00 EUR"]);
    }

    #[test]
    fn flat_amounts_per_unit_add_to_a_rate_of_the_same_entry() {
        let config = json!({
            "default_bps": 200,
            "skus": {"CASE": {"flat_per_unit": 50}, "PHONE": {"bps": 100, "flat_per_unit": 300}},
        });
        let order = testing::order("o", "EUR")
            .line("case", "CASE", "acc", 3, 2_997)
            .line("phone", "PHONE", "tel", 2, 80_000)
            .build();
        let d = decide(config, &order);
        assert_eq!(amounts(&d), [("case", 150), ("phone", 800 + 600)]);
        assert_eq!(d.lines[0].rate_bps, None, "a flat amount is not rate based");
        assert_eq!(reasons(&d), ["SKU CASE: 0.50 EUR × 3 units", "SKU PHONE: 1% of 800.00 EUR + 3.00 EUR × 2 units"]);
    }

    #[test]
    fn the_flat_amount_per_order_is_spread_over_eligible_lines_by_value_exactly() {
        let config = json!({"default_bps": 0, "flat_per_order": 100, "gift_card_categories": ["gift-cards"]});
        let order = testing::order("o", "EUR")
            .line("l1", "A", "x", 1, 1_000)
            .line("l2", "B", "x", 1, 1_000)
            .line("l3", "C", "x", 1, 1_000)
            .line("gift", "G", "gift-cards", 1, 90_000)
            .build();
        let d = decide(config, &order);
        // The excluded gift card takes no share; the odd cent goes to the first line.
        assert_eq!(amounts(&d), [("l1", 34), ("l2", 33), ("l3", 33)]);
        assert_eq!(reasons(&d)[0], "default rate: 0% of 10.00 EUR + 0.34 EUR of the 1.00 EUR per order");
        assert_eq!(d.notes, ["1.00 EUR per order, spread over 3 lines by value"]);

        let uneven =
            testing::order("o", "EUR").line("big", "A", "x", 1, 9_000).line("small", "B", "x", 1, 1_000).build();
        assert_eq!(
            amounts(&decide(json!({"default_bps": 0, "flat_per_order": 100}), &uneven)),
            [("big", 90), ("small", 10)]
        );
    }

    #[test]
    fn without_an_eligible_line_the_flat_amount_per_order_is_not_paid() {
        let config = json!({"default_bps": 500, "flat_per_order": 200, "excluded_categories": ["tobacco"]});
        let order = testing::order("o", "EUR").line("l1", "A", "tobacco", 1, 5_000).build();
        let d = decide(config, &order);
        assert_eq!(d.total.minor, 0);
        assert!(d.lines.is_empty());
        assert_eq!(d.notes, ["no eligible line: the 2.00 EUR per order is not paid"]);
    }

    #[test]
    fn gift_cards_earn_nothing_by_sku_flag_category_flag_or_category_list() {
        let config = json!({
            "default_bps": 500,
            "skus": {"GC-25": {"gift_card": true}},
            "categories": {"vouchers": {"gift_card": true}},
            "gift_card_categories": ["Gift Cards"],
        });
        let order = testing::order("o", "EUR")
            .line("l1", "GC-25", "misc", 1, 2_500)
            .line("l2", "V-1", "Vouchers", 1, 2_500)
            .line("l3", "GC-50", "gift cards", 1, 5_000)
            .line("l4", "BOOK", "books", 1, 2_000)
            .build();
        let d = decide(config, &order);
        assert_eq!(
            excluded(&d),
            [
                ("l1", "gift cards earn no cashback (SKU GC-25)"),
                ("l2", "gift cards earn no cashback (category Vouchers)"),
                ("l3", "gift cards earn no cashback (category gift cards)"),
            ]
        );
        assert_eq!(amounts(&d), [("l4", 100)]);
    }

    #[test]
    fn exclusions_beat_every_rate_and_give_their_reason() {
        let config = json!({
            "default_bps": 500,
            "skus": {"TV-1": {"bps": 900}},
            "excluded_skus": ["X-9"],
            "excluded_categories": ["Tobacco", "electronics"],
        });
        let order = testing::order("o", "EUR")
            .line("l1", "X-9", "books", 1, 1_000)
            .line("l2", "C-1", "tobacco", 1, 1_000)
            .line("l3", "TV-1", "electronics", 1, 50_000)
            .line("l4", "B-1", "books", 1, 1_000)
            .build();
        let d = decide(config, &order);
        assert_eq!(
            excluded(&d),
            [
                ("l1", "SKU X-9 is excluded from cashback"),
                ("l2", "category tobacco is excluded from cashback"),
                ("l3", "category electronics is excluded from cashback"),
            ]
        );
        assert_eq!(amounts(&d), [("l4", 50)]);
    }

    #[test]
    fn lines_without_a_positive_value_earn_nothing_not_a_negative_amount() {
        let config = json!({"default_bps": 1000, "skus": {"FREE": {"flat_per_unit": 100}}});
        let order = testing::order("o", "EUR")
            .line("free", "FREE", "x", 1, 0)
            .line("return", "A", "x", 1, -2_000)
            .line("l3", "B", "x", 1, 2_000)
            .build();
        let d = decide(config, &order);
        assert_eq!(
            excluded(&d),
            [
                ("free", "a line total of 0.00 EUR earns nothing"),
                ("return", "a line total of -20.00 EUR earns nothing")
            ]
        );
        assert_eq!(amounts(&d), [("l3", 200)]);
    }

    #[test]
    fn below_the_minimum_order_value_nothing_is_earned_and_every_line_says_why() {
        let config =
            json!({"default_bps": 500, "flat_per_order": 100, "min_order": 5_000, "gift_card_categories": ["gc"]});
        let short = testing::order("o", "EUR").line("l1", "A", "x", 1, 3_000).line("l2", "G", "gc", 1, 10_000).build();
        let d = decide(config.clone(), &short);
        assert_eq!(d.total.minor, 0);
        assert!(d.lines.is_empty());
        let why = "eligible order value 30.00 EUR is below the 50.00 EUR minimum";
        assert_eq!(excluded(&d), [("l2", "gift cards earn no cashback (category gc)"), ("l1", why)]);
        assert_eq!(d.notes, [why]);

        let exactly = testing::order("o", "EUR").line("l1", "A", "x", 1, 5_000).build();
        assert_eq!(decide(config, &exactly).total.minor, 250 + 100, "the minimum itself qualifies");
    }

    #[test]
    fn the_highest_tier_passed_replaces_the_default_rate_but_not_entries() {
        // Listed out of order: the highest threshold passed wins, not the last listed.
        let config = json!({
            "default_bps": 100,
            "categories": {"books": {"bps": 300}},
            "tiers": [{"above": 50_000, "bps": 700}, {"above": 10_000, "bps": 500}],
        });
        let order = |amount| {
            testing::order("o", "EUR").line("book", "B", "books", 1, 1_000).line("toy", "T", "toys", 1, amount).build()
        };
        // 1 000 + 9 000 = 100.00 EUR: not above 100.00, no tier.
        let d = decide(config.clone(), &order(9_000));
        assert_eq!(amounts(&d), [("book", 30), ("toy", 90)]);
        assert!(d.notes.is_empty());

        let d = decide(config.clone(), &order(9_001));
        assert_eq!(amounts(&d), [("book", 30), ("toy", 450)]);
        assert_eq!(reasons(&d)[1], "order above 100.00 EUR: 5% of 90.01 EUR");
        assert_eq!(d.notes, ["eligible order value 100.01 EUR is above 100.00 EUR: 5% instead of the default rate"]);

        let d = decide(config, &order(60_000));
        assert_eq!(amounts(&d), [("book", 30), ("toy", 4_200)]);
    }

    #[test]
    fn excluded_lines_do_not_count_toward_a_tier() {
        let config = json!({"default_bps": 100, "tiers": [{"above": 10_000, "bps": 500}], "excluded_skus": ["GC"]});
        let order = testing::order("o", "EUR").line("gc", "GC", "x", 1, 50_000).line("l2", "A", "x", 1, 5_000).build();
        assert_eq!(amounts(&decide(config, &order)), [("l2", 50)]);
    }

    #[test]
    fn the_cap_is_spread_back_over_the_lines_and_each_line_says_so() {
        let config = json!({"default_bps": 1000, "flat_per_order": 100, "max_cashback": 500});
        let order = testing::order("o", "EUR").line("l1", "A", "tv", 1, 8_000).line("l2", "B", "tv", 1, 2_000).build();
        let d = decide(config, &order);
        // 800 + 80 and 200 + 20 before the cap: 1 100, cut to 500 in proportion.
        assert_eq!(amounts(&d), [("l1", 400), ("l2", 100)]);
        assert_eq!(
            reasons(&d)[0],
            "default rate: 10% of 80.00 EUR + 0.80 EUR of the 1.00 EUR per order, cut from 8.80 EUR by the 5.00 EUR cap per order"
        );
        assert_eq!(d.notes.last().map(String::as_str), Some("capped at 5.00 EUR per order"));

        let under = testing::order("o", "EUR").line("l1", "A", "tv", 1, 1_000).build();
        let d = decide(json!({"default_bps": 1000, "max_cashback": 500}), &under);
        assert_eq!((d.total.minor, d.lines[0].reason.as_str()), (100, "default rate: 10% of 10.00 EUR"));
    }

    #[test]
    fn high_value_orders_and_large_cashback_are_held_for_review() {
        let config = json!({"default_bps": 100, "hold_above": 50_000, "hold_cashback_above": 1_000});
        let at = |amount| testing::order("o", "EUR").line("l1", "A", "tv", 1, amount).build();
        assert_eq!(decide(config.clone(), &at(50_000)).hold, None, "the threshold itself is not above");
        assert_eq!(
            decide(config.clone(), &at(50_001)).hold.as_deref(),
            Some("order value 500.01 EUR is above 500.00 EUR")
        );
        assert_eq!(
            decide(config, &at(200_000)).hold.as_deref(),
            Some("order value 2000.00 EUR is above 500.00 EUR; cashback 20.00 EUR is above 10.00 EUR")
        );
    }

    #[test]
    fn an_order_that_earns_nothing_is_not_held() {
        let config = json!({"default_bps": 100, "hold_above": 10_000, "gift_card_categories": ["gc"]});
        let order = testing::order("o", "EUR").line("l1", "G", "gc", 1, 90_000).build();
        assert_eq!(decide(config, &order).hold, None);
    }

    #[test]
    fn the_reward_delay_is_passed_on_even_when_nothing_is_earned() {
        let order = testing::order("o", "EUR").line("l1", "A", "x", 1, 100).build();
        assert_eq!(decide(json!({"default_bps": 100, "reward_delay_days": 45}), &order).reward_delay_days, Some(45));
        assert_eq!(
            decide(json!({"default_bps": 100, "min_order": 500, "reward_delay_days": 0}), &order).reward_delay_days,
            Some(0)
        );
        assert_eq!(decide(json!({"default_bps": 100}), &order).reward_delay_days, None);
    }

    #[test]
    fn rounding_is_down_unless_configured() {
        // 3 % of 12.99 EUR is 0.3897 EUR; 1 % of 2.50 EUR is two and a half cents.
        let order = testing::order("o", "EUR").line("l1", "A", "x", 1, 1_299).build();
        let half = testing::order("o", "EUR").line("l1", "A", "x", 1, 250).build();
        let total = |rounding: &str, bps: u32, order: &Order| {
            let mut config = json!({"default_bps": bps});
            if !rounding.is_empty() {
                config["rounding"] = json!(rounding);
            }
            decide(config, order).total.minor
        };
        assert_eq!(total("", 300, &order), 38);
        assert_eq!(total("up", 300, &order), 39);
        assert_eq!(total("half-up", 100, &half), 3);
        assert_eq!(total("half-even", 100, &half), 2);
        assert_eq!(total("down", 100, &half), 2);
    }

    #[test]
    fn an_order_in_another_currency_than_the_configured_one_fails() {
        let config =
            Config::parse(r#"{"default_bps": 100, "flat_per_order": 200, "currency": "EUR"}"#).expect("config");
        let order = testing::order("o", "JPY").line("l1", "A", "x", 1, 10_000).build();
        match RateTable::decide(&config, &order) {
            Err(PluginError::Config(m)) => {
                assert_eq!(m, "currency: the configured amounts are in EUR, the order is in JPY");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        let eur = testing::order("o", "EUR").line("l1", "A", "x", 1, 10_000).build();
        assert_eq!(RateTable::decide(&config, &eur).map(|d| d.total.minor), Ok(300));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrapped_amount() {
        let config =
            Config::parse(&json!({"default_bps": 0, "skus": {"A": {"flat_per_unit": i64::MAX / 2}}}).to_string())
                .expect("config");
        let order = testing::order("o", "EUR").line("l1", "A", "x", 3, 100).build();
        assert!(
            matches!(RateTable::decide(&config, &order), Err(PluginError::InvalidInput(m)) if m.contains("overflow"))
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (json!({}), "missing field `default_bps`"),
            (json!({"default_bps": 10_001}), "default_bps: 10001 bps is more than 100%"),
            (json!({"default_bps": -1}), "default_bps: invalid value: integer `-1`"),
            (json!({"default_bps": 1, "rate_bps": 2}), "unknown field `rate_bps`"),
            (json!({"default_bps": 1, "flat_per_order": -5}), "flat_per_order: -5 is negative"),
            (json!({"default_bps": 1, "max_cashback": -1}), "max_cashback: -1 is negative"),
            (json!({"default_bps": 1, "skus": {"A": {"bps": "5"}}}), "skus.A.bps: invalid type: string"),
            (json!({"default_bps": 1, "skus": {"A": {"rate": 5}}}), "skus.A.rate: unknown field `rate`"),
            (json!({"default_bps": 1, "skus": {"A": {}}}), "skus.A: set bps, flat_per_unit or gift_card"),
            (json!({"default_bps": 1, "skus": {"": {"bps": 1}}}), "skus: an empty key"),
            (json!({"default_bps": 1, "skus": {"A": {"bps": 20_000}}}), "skus.A.bps: 20000 bps is more than 100%"),
            (json!({"default_bps": 1, "categories": {"b": {"flat_per_unit": -1}}}), "categories.b.flat_per_unit: -1"),
            (
                json!({"default_bps": 1, "categories": {"g": {"gift_card": true, "bps": 1}}}),
                "categories.g: a gift card",
            ),
            (
                json!({"default_bps": 1, "categories": {"A": {"bps": 1}, "a": {"bps": 2}}}),
                "categories.a: categories ignore case",
            ),
            (json!({"default_bps": 1, "tiers": {"above": 1}}), "tiers: invalid type: map"),
            (
                json!({"default_bps": 1, "tiers": [{"above": 1, "bps": 1}, {"above": 2}]}),
                "tiers[1]: missing field `bps`",
            ),
            (
                json!({"default_bps": 1, "tiers": [{"above": 1, "bps": 1}, {"above": 1, "bps": 2}]}),
                "tiers[1].above: another tier",
            ),
            (json!({"default_bps": 1, "tiers": [{"above": -1, "bps": 1}]}), "tiers[0].above: -1 is negative"),
            (json!({"default_bps": 1, "excluded_skus": [""]}), "excluded_skus: an empty name"),
            (
                json!({"default_bps": 1, "skus": {"A": {"bps": 1}}, "excluded_skus": ["A"]}),
                "excluded_skus: SKU A also has a rate",
            ),
            (
                json!({"default_bps": 1, "categories": {"GC": {"bps": 1}}, "gift_card_categories": ["gc"]}),
                "gift_card_categories: category gc",
            ),
            (json!({"default_bps": 1, "rounding": "nearest"}), "rounding: unknown variant `nearest`"),
            (json!({"default_bps": 1, "currency": "eur"}), "currency: \"eur\" is not an upper-case ISO 4217 code"),
        ];
        for (config, needle) in cases {
            let message = config_error(config);
            assert!(message.contains(needle), "{message:?} should contain {needle:?}");
        }
    }

    #[test]
    fn evaluate_reads_the_hosts_configuration() {
        testing::set_config(r#"{"default_bps": 300, "reward_delay_days": 30}"#);
        let order = testing::order("o", "EUR").line("l1", "A", "x", 1, 1_299).build();
        let d = RateTable::evaluate(&order, &testing::context()).expect("decision");
        assert_eq!((d.total.minor, d.reward_delay_days), (38, Some(30)));
        testing::set_config(r#"{"default_bps": 300, "tiers": [{"above": "100"}]}"#);
        assert!(
            matches!(RateTable::evaluate(&order, &testing::context()), Err(PluginError::Config(m)) if m.starts_with("tiers[0].above:"))
        );
    }

    /// The README's complete example uses every field: it must parse, and the manifest must
    /// declare exactly those fields (the host refuses any field the schema lacks).
    #[test]
    fn the_readme_example_uses_every_field_the_manifest_declares() {
        let readme = include_str!("../README.md");
        let example = readme.split("```json\n").nth(1).and_then(|s| s.split("```").next()).expect("a json example");
        let config: serde_json::Map<String, Value> = serde_json::from_str(example).expect("example is JSON");
        Config::parse(example).expect("example is a valid configuration");
        let declared: Vec<&str> = include_str!("../cashback-plugin.toml")
            .lines()
            .filter_map(|l| l.strip_prefix("[config.")?.strip_suffix(']'))
            .collect();
        let mut used: Vec<&str> = config.keys().map(String::as_str).collect();
        let mut declared_sorted = declared.clone();
        used.sort_unstable();
        declared_sorted.sort_unstable();
        assert_eq!(used, declared_sorted);
    }

    #[derive(Deserialize)]
    struct Fixture {
        name: String,
        config: Value,
        order: Order,
        expect: Option<Value>,
        expect_error: Option<String>,
    }

    /// `expected` is a subset of `actual` in the sense of the host's fixture runner.
    fn subset(expected: &Value, actual: &Value) -> bool {
        match (expected, actual) {
            (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| subset(v, av))),
            (Value::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(e, a)| subset(e, a)),
            (e, a) => e == a,
        }
    }

    /// The fixtures also run natively, so a wrong one fails `cargo test` before a wasm
    /// build; `cashbackd plugin test` runs the same file inside the sandbox.
    #[test]
    fn the_fixtures_hold_natively() {
        let fixtures: Vec<Fixture> = serde_json::from_str(include_str!("../fixtures.json")).expect("fixtures parse");
        assert!(fixtures.len() >= 10, "a fixture for each feature");
        for f in fixtures {
            let outcome = Config::parse(&f.config.to_string()).and_then(|c| RateTable::decide(&c, &f.order));
            match (outcome, f.expect, f.expect_error) {
                (Ok(d), Some(expect), None) => {
                    testing::assert_consistent(&d);
                    let actual = serde_json::to_value(&d).expect("json");
                    assert!(subset(&expect, &actual), "{}: expected {expect}\n got {actual}", f.name);
                }
                (Err(e), None, Some(wanted)) => assert!(format!("{e:?}").contains(&wanted), "{}: {e:?}", f.name),
                (outcome, ..) => panic!("{}: unexpected {outcome:?}", f.name),
            }
        }
    }
}
