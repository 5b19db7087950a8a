//! Sample orders and contexts, for the demo, fixtures tooling and benchmarks.

use super::wit::latest;

/// An order of `lines` (id, category, amount in minor units), amount = their sum,
/// commission = a tenth of it.
pub fn order(id: &str, currency: &str, lines: &[(&str, &str, i64)]) -> latest::Order {
    let line_items: Vec<latest::LineItem> = lines
        .iter()
        .map(|(line, category, amount)| latest::LineItem {
            id: (*line).into(),
            sku: format!("SKU-{line}"),
            category: (*category).into(),
            quantity: 1,
            amount: *amount,
        })
        .collect();
    let total: i64 = line_items.iter().map(|l| l.amount).sum();
    latest::Order {
        conversion_id: format!("conv-{id}"),
        merchant: "demo-shop".into(),
        network: "demo-network".into(),
        order_id: id.into(),
        event_type: "sale".into(),
        state: latest::ConversionState::Pending,
        amount: latest::Money { minor: total, currency: currency.into() },
        commission: latest::Money { minor: total / 10, currency: currency.into() },
        line_items,
        event_time: 1_767_225_000_000,
        click_time: None,
        user_id: Some("user-42".into()),
    }
}

/// A context at `now` with no history and no earlier decision.
pub fn context(now: i64) -> latest::RuleContext {
    latest::RuleContext { now, prior_orders: 0, decision_so_far: None, attributes: Vec::new() }
}
