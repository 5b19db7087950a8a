//! The host's side of the plugin boundary: what a plugin returns is checked here before
//! the host uses it. A rule's decision must keep the contract the ledger relies on; an
//! adapter's event is taken for the network it runs for, within the bounds the ledger's
//! arithmetic and the host's storage rely on; a plugin's error message is bounded. Pure
//! functions, so that the fuzz target `wit_boundary` (docs/FUZZING.md) drives them with
//! arbitrary values.
//!
//! Why bounds: a conversion's bookings are differences and sums of its amounts
//! (`conversions::decide`, `ledger::booking_entries`). An amount near `i64::MAX` from a
//! plugin made that arithmetic overflow: a panic in a debug build, and in a release build
//! a wrapped posting that still sums to zero and corrupts the balances.
//!
//! Every event of every path (postback, API import, file) comes through
//! [`adopt_event`], so what it refuses is refused the same way everywhere: a postback
//! answers 400 with the reason, an import counts the event as rejected with it.

use super::wit::latest;
use crate::input::{self, IdLimit};
use latest::ConversionState;

/// The largest amount, in minor units, the host takes from a plugin (ten trillion euros):
/// far above any order, and far enough below `i64::MAX` that the ledger's arithmetic on a
/// conversion (differences and sums of a few amounts) cannot overflow.
pub const MAX_MINOR: i64 = 1_000_000_000_000_000;

/// The longest identifier (transaction, click, order, merchant reference, event type, line
/// id), in characters ([`crate::input`]).
pub const MAX_ID_CHARS: usize = input::MAX_EVENT_ID_CHARS;

/// The byte cap that follows: UTF-8 takes at most 4 bytes a character.
pub const MAX_ID_BYTES: usize = 4 * MAX_ID_CHARS;

/// The longest reward delay a rule may ask for: the merchants' own bound (ten years).
pub const MAX_REWARD_DELAY_DAYS: u32 = 3650;

/// The latest event time (9999-12-31T23:59:59.999Z); the earliest is the epoch.
pub const MAX_EVENT_TIME: i64 = 253_402_300_799_999;

/// The longest error message kept from a plugin, in bytes: it is answered to a network,
/// kept in the rejects log and logged.
pub const MAX_ERROR_BYTES: usize = 4096;

/// Why an adapter's event is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// It names another network than the one the adapter runs for.
    #[error("the adapter produced an event for network {0:?}")]
    WrongNetwork(String),
    /// It has no transaction id.
    #[error("transaction id: required")]
    MissingTransactionId,
    /// A field is outside what the host accepts; the message names it.
    #[error("{0}")]
    Invalid(String),
}

impl EventError {
    /// The API's error code for it.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::WrongNetwork(_) => "wrong_network",
            EventError::MissingTransactionId => "missing_transaction_id",
            EventError::Invalid(_) => "invalid_event_value",
        }
    }
}

fn amount_within(field: &str, amount: i64) -> Result<(), String> {
    if (-MAX_MINOR..=MAX_MINOR).contains(&amount) {
        Ok(())
    } else {
        Err(format!("{field}: {amount} is outside ±{MAX_MINOR} minor units"))
    }
}

/// Three upper-case ASCII letters: the form of an ISO 4217 code (the contract's).
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Takes an adapter's event for `network`: an empty network is filled in, another one is
/// refused; so is an event without a transaction id, or with a field outside the host's
/// bounds (an identifier over [`MAX_ID_CHARS`] characters or with a control character, a
/// currency that is not an ISO 4217 code, an amount beyond ±[`MAX_MINOR`], a negative
/// amount or commission where the state says what the order is worth
/// ([`check_signs`]), two line items with one id, a time before 1970 or after 9999).
pub fn adopt_event(network: &str, mut event: latest::ConversionEvent) -> Result<latest::ConversionEvent, EventError> {
    if event.network.is_empty() {
        event.network = network.to_string();
    } else if event.network != network {
        return Err(EventError::WrongNetwork(event.network));
    }
    if event.transaction_id.trim().is_empty() {
        return Err(EventError::MissingTransactionId);
    }
    check_event_values(&event).map_err(EventError::Invalid)?;
    Ok(event)
}

fn check_event_values(e: &latest::ConversionEvent) -> Result<(), String> {
    let ids: [(IdLimit, Option<&String>); 5] = [
        (input::TRANSACTION_ID, Some(&e.transaction_id)),
        (input::CLICK_ID, e.click_id.as_ref()),
        (input::ORDER_ID, e.order_id.as_ref()),
        (input::MERCHANT_REF, e.merchant_ref.as_ref()),
        (input::EVENT_TYPE, Some(&e.event_type)),
    ];
    for (limit, id) in ids {
        if let Some(id) = id {
            limit.check(id)?;
        }
    }
    if !is_currency_code(&e.currency) {
        return Err(format!("currency: {:?} is not an ISO 4217 code (three capital letters)", e.currency));
    }
    amount_within("amount", e.amount)?;
    amount_within("commission", e.commission)?;
    check_signs(e.state, e.amount, e.commission)?;
    for (i, line) in e.line_items.iter().enumerate() {
        input::LINE_ID.check(&line.id)?;
        input::LINE_SKU.check(&line.sku)?;
        input::LINE_CATEGORY.check(&line.category)?;
        amount_within(&format!("line {:?} amount", line.id), line.amount)?;
        if e.line_items[..i].iter().any(|other| other.id == line.id) {
            return Err(format!("line id {:?} appears twice (line ids are unique within an order)", line.id));
        }
    }
    if !(0..=MAX_EVENT_TIME).contains(&e.event_time) {
        return Err(format!("event time: {} is not between 1970 and 9999", e.event_time));
    }
    Ok(())
}

/// The upper-case name of a state, as networks and the docs write it.
pub fn state_name(state: ConversionState) -> &'static str {
    match state {
        ConversionState::Created => "CREATED",
        ConversionState::Pending => "PENDING",
        ConversionState::Adjusted => "ADJUSTED",
        ConversionState::Completed => "COMPLETED",
        ConversionState::Rejected => "REJECTED",
        ConversionState::Reversed => "REVERSED",
    }
}

/// The sign rule per state (`docs/INGEST.md`, "Amounts"). CREATED, PENDING, ADJUSTED and
/// COMPLETED say what the order is worth *now*: its value and the commission on it, 0 or
/// more (an ADJUSTED to a lower amount carries the new, lower total, not the difference;
/// the host books the difference itself). The rules would otherwise see a negative order
/// (and compute nothing for it) while the network's refund went unbooked. REJECTED and
/// REVERSED take back whatever was credited, whatever amounts they carry, so a report's
/// correction row, often written with negative amounts, is accepted as it is. A line item
/// may be negative in any state (a discount or returned line within an order).
pub fn check_signs(state: ConversionState, amount: i64, commission: i64) -> Result<(), String> {
    if matches!(state, ConversionState::Rejected | ConversionState::Reversed) {
        return Ok(());
    }
    for (field, value) in [("amount", amount), ("commission", commission)] {
        if value < 0 {
            return Err(format!(
                "{field}: {value} minor units on a {} event: that state carries what the order is worth now, 0 or \
                 more; report a refund or cancellation as REVERSED or REJECTED, a partial return as ADJUSTED to the new \
                 amount",
                state_name(state)
            ));
        }
    }
    Ok(())
}

/// The contract a decision must keep: the order's currency; lines that name the order's
/// lines, each at most once, with cashback from 0 to [`MAX_MINOR`], adding up to the
/// total; a reward delay of at most [`MAX_REWARD_DELAY_DAYS`].
pub fn check_decision(order: &latest::Order, d: &latest::RuleDecision) -> Result<(), String> {
    if d.total.currency != order.amount.currency {
        return Err(format!("total is in {}, the order in {}", d.total.currency, order.amount.currency));
    }
    let mut sum: i64 = 0;
    for (i, line) in d.lines.iter().enumerate() {
        if !order.line_items.iter().any(|l| l.id == line.line_id) {
            return Err(format!("cashback for unknown line {:?}", line.line_id));
        }
        if d.lines[..i].iter().any(|other| other.line_id == line.line_id) {
            return Err(format!("cashback for line {:?} twice", line.line_id));
        }
        if !(0..=MAX_MINOR).contains(&line.amount) {
            return Err(format!("cashback of {} for line {:?}: from 0 to {MAX_MINOR}", line.amount, line.line_id));
        }
        sum = sum.checked_add(line.amount).ok_or("line amounts overflow")?;
    }
    if sum != d.total.minor {
        return Err(format!("lines add up to {sum} but the total is {}", d.total.minor));
    }
    if let Some(days) = d.reward_delay_days
        && days > MAX_REWARD_DELAY_DAYS
    {
        return Err(format!("reward delay of {days} days: at most {MAX_REWARD_DELAY_DAYS}"));
    }
    Ok(())
}

/// A plugin's own error, as the host keeps it: the message cut to [`MAX_ERROR_BYTES`] on a
/// character boundary (a plugin could otherwise put megabytes into the rejects log and
/// the answer to a network).
pub fn plugin_error(error: latest::PluginError) -> latest::PluginError {
    use latest::PluginError as E;
    let cut = |m: String| {
        if m.len() <= MAX_ERROR_BYTES {
            return m;
        }
        const MORE: &str = "… (cut)";
        let mut end = MAX_ERROR_BYTES - MORE.len();
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{MORE}", &m[..end])
    };
    match error {
        E::InvalidInput(m) => E::InvalidInput(cut(m)),
        E::Config(m) => E::Config(cut(m)),
        E::Upstream(m) => E::Upstream(cut(m)),
        E::Internal(m) => E::Internal(cut(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latest::{ConversionEvent, ConversionState, LineCashback, LineItem, Money, Order, PluginError, RuleDecision};

    fn line(id: &str, amount: i64) -> LineItem {
        LineItem { id: id.into(), sku: String::new(), category: String::new(), quantity: 1, amount }
    }

    fn order() -> Order {
        Order {
            conversion_id: "awin:T-1".into(),
            merchant: "shop".into(),
            network: "awin".into(),
            order_id: "o-1".into(),
            event_type: "sale".into(),
            state: ConversionState::Pending,
            amount: Money { minor: 3000, currency: "EUR".into() },
            commission: Money { minor: 300, currency: "EUR".into() },
            line_items: vec![line("l1", 1000), line("l2", 2000)],
            event_time: 1_767_225_000_000,
            click_time: None,
            user_id: Some("u-1".into()),
        }
    }

    fn decision(lines: &[(&str, i64)]) -> RuleDecision {
        RuleDecision {
            lines: lines
                .iter()
                .map(|(id, amount)| LineCashback {
                    line_id: id.to_string(),
                    amount: *amount,
                    rate_bps: None,
                    reason: String::new(),
                })
                .collect(),
            exclusions: Vec::new(),
            total: Money { minor: lines.iter().map(|(_, a)| a).sum(), currency: "EUR".into() },
            hold: None,
            reward_delay_days: None,
            notes: Vec::new(),
        }
    }

    fn event() -> ConversionEvent {
        ConversionEvent {
            network: String::new(),
            transaction_id: "T-1".into(),
            click_id: Some("c-1".into()),
            order_id: None,
            event_type: "sale".into(),
            state: ConversionState::Pending,
            amount: 3000,
            commission: 300,
            currency: "EUR".into(),
            event_time: 1_767_225_000_000,
            reason: None,
            merchant_ref: None,
            line_items: vec![line("l1", 1000), line("l2", 2000)],
            raw: Vec::new(),
        }
    }

    #[test]
    fn a_decision_within_the_contract_is_accepted() {
        assert_eq!(check_decision(&order(), &decision(&[("l1", 30), ("l2", 60)])), Ok(()));
        assert_eq!(check_decision(&order(), &decision(&[])), Ok(()), "no cashback at all");
        let mut d = decision(&[("l1", 0)]);
        d.reward_delay_days = Some(MAX_REWARD_DELAY_DAYS);
        assert_eq!(check_decision(&order(), &d), Ok(()));
    }

    #[test]
    fn a_decision_the_ledger_cannot_book_is_refused() {
        // Found by the fuzz target wit_boundary: each was accepted, and a total near
        // i64::MAX made the ledger's posting arithmetic overflow.
        let huge = check_decision(&order(), &decision(&[("l1", i64::MAX)])).expect_err("huge");
        assert!(huge.contains("from 0 to"), "{huge}");
        let negative = check_decision(&order(), &decision(&[("l1", 50), ("l2", -20)])).expect_err("negative");
        assert!(negative.contains("-20"), "{negative}");
        let twice = check_decision(&order(), &decision(&[("l1", 10), ("l1", 10)])).expect_err("twice");
        assert!(twice.contains("twice"), "{twice}");
        let mut d = decision(&[("l1", 10)]);
        d.reward_delay_days = Some(u32::MAX);
        assert!(check_decision(&order(), &d).expect_err("delay").contains("reward delay"));
        // As before: lines that do not add up, an unknown line, another currency.
        let mut d = decision(&[("l1", 10)]);
        d.total.minor = 11;
        assert!(check_decision(&order(), &d).expect_err("sum").contains("add up"));
        assert!(check_decision(&order(), &decision(&[("l9", 1)])).expect_err("unknown").contains("unknown line"));
        let mut d = decision(&[]);
        d.total.currency = "USD".into();
        assert!(check_decision(&order(), &d).expect_err("currency").contains("USD"));
    }

    #[test]
    fn an_event_is_taken_for_its_network_within_bounds() {
        let e = adopt_event("awin", event()).expect("accepted");
        assert_eq!(e.network, "awin", "filled in");
        assert_eq!(adopt_event("awin", ConversionEvent { network: "awin".into(), ..event() }), Ok(e));
        assert_eq!(
            adopt_event("awin", ConversionEvent { network: "cj".into(), ..event() }),
            Err(EventError::WrongNetwork("cj".into()))
        );
        assert_eq!(
            adopt_event("awin", ConversionEvent { transaction_id: " ".into(), ..event() }),
            Err(EventError::MissingTransactionId)
        );
    }

    #[test]
    fn an_event_outside_the_hosts_bounds_is_refused_naming_the_field() {
        // Found by the fuzz target wit_boundary: all of these were accepted, and a
        // commission of i64::MIN overflowed the ledger's posting arithmetic.
        let refused = |e: ConversionEvent| match adopt_event("awin", e) {
            Err(EventError::Invalid(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(ConversionEvent { commission: i64::MIN, ..event() }).starts_with("commission:"));
        assert!(refused(ConversionEvent { amount: MAX_MINOR + 1, ..event() }).starts_with("amount:"));
        assert!(refused(ConversionEvent { currency: "eur".into(), ..event() }).contains("\"eur\""));
        assert!(refused(ConversionEvent { currency: String::new(), ..event() }).starts_with("currency:"));
        assert!(refused(ConversionEvent { transaction_id: "x".repeat(256), ..event() }).contains("256 characters"));
        assert!(refused(ConversionEvent { click_id: Some("x".repeat(300)), ..event() }).starts_with("click id"));
        assert!(refused(ConversionEvent { event_time: -1, ..event() }).starts_with("event time"));
        assert!(refused(ConversionEvent { event_time: i64::MAX, ..event() }).starts_with("event time"));
        let lines = vec![line("l1", 1), line("l1", 2)];
        assert!(refused(ConversionEvent { line_items: lines, ..event() }).contains("twice"));
        let lines = vec![line("l1", i64::MAX)];
        assert!(refused(ConversionEvent { line_items: lines, ..event() }).contains("\"l1\""));
        assert!(adopt_event("awin", ConversionEvent { transaction_id: "x".repeat(255), ..event() }).is_ok());
        // Seed 003's 64-character conversion id, in 4-byte characters (256 bytes).
        assert!(adopt_event("awin", ConversionEvent { transaction_id: "🎉".repeat(64), ..event() }).is_ok());
        assert!(refused(ConversionEvent { order_id: Some("O\u{0}1".into()), ..event() }).starts_with("order id:"));
        let lines = vec![line(&"l".repeat(256), 1)];
        assert!(refused(ConversionEvent { line_items: lines, ..event() }).starts_with("line id:"));
    }

    #[test]
    fn amounts_must_not_be_negative_where_the_state_says_what_the_order_is_worth() {
        use ConversionState::*;
        let with = |state, amount, commission| ConversionEvent { state, amount, commission, ..event() };
        for state in [Created, Pending, Adjusted, Completed] {
            let why = match adopt_event("awin", with(state, -2500, -250)) {
                Err(EventError::Invalid(why)) => why,
                other => panic!("{state:?}: expected a refusal, got {other:?}"),
            };
            assert!(why.starts_with("amount: -2500 minor units on a"), "{why}");
            assert!(why.contains(state_name(state)) && why.contains("REVERSED"), "{why}");
            let why = adopt_event("awin", with(state, 2500, -1)).expect_err("commission");
            assert!(why.to_string().starts_with("commission: -1"), "{why}");
            assert!(adopt_event("awin", with(state, 0, 0)).is_ok(), "{state:?}: zero is an amount");
        }
        // A correction row and a refund take back what was credited, whatever they carry.
        for state in [Rejected, Reversed] {
            assert!(adopt_event("awin", with(state, -2500, -250)).is_ok(), "{state:?}");
            assert!(adopt_event("awin", with(state, -MAX_MINOR, 0)).is_ok(), "{state:?}");
        }
        // A returned or discounted line within an order that is still worth something.
        let lines = vec![line("l1", 3500), line("l2", -500)];
        assert!(adopt_event("awin", ConversionEvent { line_items: lines, ..event() }).is_ok());
    }

    #[test]
    fn a_plugins_error_message_is_cut_on_a_character_boundary() {
        // Found by the fuzz target wit_boundary: a message of any length was kept whole.
        let long = "é".repeat(5000);
        let PluginError::Upstream(m) = plugin_error(PluginError::Upstream(long)) else { panic!("kind kept") };
        assert!(m.len() <= MAX_ERROR_BYTES, "{}", m.len());
        assert!(m.ends_with("… (cut)"));
        assert_eq!(plugin_error(PluginError::Config("short".into())), PluginError::Config("short".into()));
    }
}
