//! Sizes of values crossing the plugin boundary, for the input and output caps.
//!
//! Computed from the values' structure (string and list lengths plus fixed sizes), which
//! is what the canonical ABI copies; cheaper than serializing them to measure.

use super::wit::latest::{self, http};

/// The number of bytes a value occupies when it crosses the boundary (approximately:
/// fixed-size fields count their width, strings and lists their contents).
pub trait WireSize {
    /// The size in bytes.
    fn wire_size(&self) -> u64;
}

impl WireSize for String {
    fn wire_size(&self) -> u64 {
        8 + self.len() as u64
    }
}

impl WireSize for u8 {
    fn wire_size(&self) -> u64 {
        1
    }
}

impl<T: WireSize> WireSize for Vec<T> {
    fn wire_size(&self) -> u64 {
        8 + self.iter().map(WireSize::wire_size).sum::<u64>()
    }
}

impl<T: WireSize> WireSize for Option<T> {
    fn wire_size(&self) -> u64 {
        1 + self.as_ref().map_or(0, WireSize::wire_size)
    }
}

impl<A: WireSize, B: WireSize> WireSize for (A, B) {
    fn wire_size(&self) -> u64 {
        self.0.wire_size() + self.1.wire_size()
    }
}

macro_rules! fixed {
    ($($t:ty => $n:expr),* $(,)?) => {$(
        impl WireSize for $t {
            fn wire_size(&self) -> u64 { $n }
        }
    )*};
}

fixed!(
    i64 => 8,
    u32 => 4,
    u16 => 2,
    latest::ConversionState => 1,
    latest::CallbackSubject => 1,
    latest::CallbackMethod => 1,
);

/// Sum of the fields' sizes.
macro_rules! record {
    ($t:ty { $($field:ident),* $(,)? }) => {
        impl WireSize for $t {
            fn wire_size(&self) -> u64 {
                0 $(+ self.$field.wire_size())*
            }
        }
    };
}

record!(latest::Money { minor, currency });
record!(latest::LineItem { id, sku, category, quantity, amount });
record!(latest::Order {
    conversion_id,
    merchant,
    network,
    order_id,
    event_type,
    state,
    amount,
    commission,
    line_items,
    event_time,
    click_time,
    user_id
});
record!(latest::RuleContext { now, prior_orders, decision_so_far, attributes });
record!(latest::LineCashback { line_id, amount, rate_bps, reason });
record!(latest::Exclusion { line_id, reason });
record!(latest::RuleDecision { lines, exclusions, total, hold, reward_delay_days, notes });
record!(latest::ConversionEvent {
    network,
    transaction_id,
    click_id,
    order_id,
    event_type,
    state,
    amount,
    commission,
    currency,
    event_time,
    reason,
    merchant_ref,
    line_items,
    raw
});
record!(latest::PostbackRequest { method, path, query, headers, body, received_at });
record!(latest::ImportRequest { window_start, window_end, cursor });
record!(latest::RejectedItem { reference, reason });
record!(latest::Page { events, rejected, next_cursor });
record!(latest::RejectedRow { row, reason });
record!(latest::FileResult { events, rejected });
record!(http::Response { status, headers, body });
record!(latest::ConversionSnapshot {
    conversion_id,
    network,
    transaction_id,
    click_id,
    user_id,
    order_id,
    event_type,
    state,
    status,
    amount,
    commission,
    cashback,
    currency,
    reason,
    reward_delay_days,
    line_ids
});
record!(latest::Change { subject, event, delivery_id, attempt, changed_at, now, conversion, values });
record!(latest::CallbackEndpoint { id, partner_id, url, url_template, method, params, secret });
record!(latest::CallbackRequest { method, url, headers, body, redact });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_lists_count_their_contents() {
        assert_eq!("abc".to_string().wire_size(), 11);
        assert_eq!(vec![1u8; 100].wire_size(), 108);
        let big = latest::FileResult {
            events: Vec::new(),
            rejected: vec![latest::RejectedRow { row: 1, reason: "x".repeat(1000) }; 10],
        };
        assert!(big.wire_size() > 10_000);
    }
}
