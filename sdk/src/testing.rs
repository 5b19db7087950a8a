//! Native unit testing of plugins: `cargo test` on the host target, no wasm involved.
//!
//! When a plugin is compiled natively, [`crate::config`], [`crate::log`] and (for
//! adapters) `adapter::http` talk to this module instead of the host. Each test thread
//! has its own state, so tests run in parallel without seeing each other's config.
//!
//! ```ignore
//! use cashback_sdk::testing;
//!
//! #[test]
//! fn books_earn_five_percent() {
//!     testing::set_config(r#"{"rate_bps": 500}"#);
//!     let order = testing::order("o-1", "EUR").line("l1", "SKU-1", "books", 1, 2_000).build();
//!     let decision = MyRule::evaluate(&order, &testing::context()).unwrap();
//!     assert_eq!(decision.total.minor, 100);
//! }
//! ```
//!
//! To run the same plugin inside the real sandbox against fixtures, build it and use
//! `cashbackd plugin test PLUGIN.wasm`.

use crate::log::Level;
use crate::types::{ConversionState, LineItem, Money, Order, RuleContext, RuleDecision, Timestamp};
use std::cell::RefCell;

thread_local! {
    static CONFIG: RefCell<String> = RefCell::new("{}".to_string());
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    #[cfg(feature = "adapter")]
    static HTTP: RefCell<Option<Box<HttpHandler>>> = RefCell::new(None);
}

/// Sets the configuration JSON that [`crate::config`] returns on this thread.
pub fn set_config(json: &str) {
    CONFIG.with(|c| *c.borrow_mut() = json.to_string());
}

pub(crate) fn current_config() -> String {
    CONFIG.with(|c| c.borrow().clone())
}

pub(crate) fn record_log(level: Level, message: &str) {
    if std::env::var_os("CASHBACK_SDK_QUIET").is_none() {
        println!("[plugin {level:?}] {message}");
    }
    LOGS.with(|l| l.borrow_mut().push((level, message.to_string())));
}

/// Takes the messages logged on this thread so far.
pub fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// Answers the plugin's HTTP requests in native tests.
#[cfg(feature = "adapter")]
pub type HttpHandler =
    dyn Fn(&crate::adapter::http::Request) -> Result<crate::adapter::http::Response, crate::adapter::http::HttpError>;

/// Installs the function that answers `adapter::http::fetch` on this thread. Without one,
/// every request is denied, as the host denies hosts a manifest does not declare.
#[cfg(feature = "adapter")]
pub fn set_http_handler(
    handler: impl Fn(
        &crate::adapter::http::Request,
    ) -> Result<crate::adapter::http::Response, crate::adapter::http::HttpError>
    + 'static,
) {
    HTTP.with(|h| *h.borrow_mut() = Some(Box::new(handler)));
}

#[cfg(feature = "adapter")]
pub(crate) fn http_fetch(
    request: &crate::adapter::http::Request,
) -> Result<crate::adapter::http::Response, crate::adapter::http::HttpError> {
    HTTP.with(|h| match &*h.borrow() {
        Some(handler) => handler(request),
        None => Err(crate::adapter::http::HttpError::Denied(format!(
            "no HTTP handler installed for {} (testing::set_http_handler)",
            request.url
        ))),
    })
}

/// A rule context at a fixed time (2026-01-01T00:00:00Z) with no history.
pub fn context() -> RuleContext {
    RuleContext { now: 1_767_225_600_000, prior_orders: 0, decision_so_far: None, attributes: Vec::new() }
}

/// Starts building a test order.
pub fn order(order_id: &str, currency: &str) -> OrderBuilder {
    OrderBuilder {
        order: Order {
            conversion_id: format!("conv-{order_id}"),
            merchant: "test-merchant".into(),
            network: "test-network".into(),
            order_id: order_id.into(),
            event_type: "sale".into(),
            state: ConversionState::Pending,
            amount: Money::zero(currency),
            commission: Money::zero(currency),
            line_items: Vec::new(),
            event_time: 1_767_225_000_000,
            click_time: None,
            user_id: Some("user-1".into()),
        },
    }
}

/// Builds an [`Order`] for tests; the order amount is the sum of its lines.
#[derive(Debug)]
pub struct OrderBuilder {
    order: Order,
}

impl OrderBuilder {
    /// Adds a line item.
    pub fn line(mut self, id: &str, sku: &str, category: &str, quantity: u32, amount: i64) -> Self {
        self.order.amount.minor += amount;
        self.order.line_items.push(LineItem {
            id: id.into(),
            sku: sku.into(),
            category: category.into(),
            quantity,
            amount,
        });
        self
    }

    /// Sets the commission the network pays.
    pub fn commission(mut self, minor: i64) -> Self {
        self.order.commission.minor = minor;
        self
    }

    /// Sets the state being evaluated.
    pub fn state(mut self, state: ConversionState) -> Self {
        self.order.state = state;
        self
    }

    /// Sets the purchase time.
    pub fn event_time(mut self, at: Timestamp) -> Self {
        self.order.event_time = at;
        self
    }

    /// The order.
    pub fn build(self) -> Order {
        self.order
    }
}

/// Asserts that a decision's lines add up to its total, the invariant the host checks.
pub fn assert_consistent(decision: &RuleDecision) {
    let sum: i64 = decision.lines.iter().map(|l| l.amount).sum();
    assert_eq!(sum, decision.total.minor, "lines must add up to the total: {decision:?}");
}
