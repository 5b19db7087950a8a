//! The host's side of the WIT boundary (`plugin::boundary`), driven with arbitrary values
//! a plugin could return, without wasm: rule decisions, adapter events, plugin errors.
//!
//! Properties:
//! - never a panic: what is refused gets an error naming why;
//! - a decision that is accepted keeps what the ledger relies on: the order's currency,
//!   lines that name the order's lines, each once, and add up to the total without
//!   overflow; no negative cashback; amounts and the reward delay within their bounds;
//! - an event that is accepted is for the adapter's network, has a transaction id and
//!   identifiers of bounded length, a three-letter upper-case currency, amounts within
//!   bounds, line items with distinct ids, and a time between 1970 and 9999;
//! - the ledger can book what was accepted: a conversion's lifecycle (events, their
//!   decisions, completion, maturity, reversal) computed with the host's own state machine
//!   (`conversions::lifecycle`) and postings (`ledger::booking_entries`), with the same
//!   arithmetic as `conversions::decide`, overflows nowhere and every posting balances;
//! - a plugin's error message reaches the host bounded in length, on a character boundary.
//!
//! An input starting with `#` is JSON: `{"order", "decision", "event"}` in the contract's
//! types (the seed corpus: the rule plugins' fixtures and the adapters' expected events).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cashbackd::conversions::lifecycle::{Booked, Current, Step, step, target};
use cashbackd::conversions::{State, Status};
use cashbackd::ledger::booking_entries;
use cashbackd::plugin::boundary;
use cashbackd::plugin::wit::latest;
use libfuzzer_sys::fuzz_target;

const NETWORK: &str = "awin";

#[derive(Debug)]
struct Input {
    /// The events of one conversion, each with the decision of the rules (if they ran).
    steps: Vec<(latest::ConversionEvent, latest::RuleDecision, latest::Order)>,
    error: latest::PluginError,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut steps = Vec::new();
        let transaction_id = String::arbitrary(u)?;
        for _ in 0..u.int_in_range(1..=4)? {
            let mut event = cashbackd_fuzz::event(u)?;
            if u.ratio(3, 4)? {
                // One conversion: the same id every time.
                event.transaction_id = transaction_id.clone();
                event.network = if u.arbitrary()? { NETWORK.into() } else { String::new() };
            }
            let mut order = cashbackd_fuzz::order(u)?;
            if u.ratio(3, 4)? {
                // The order the host builds from the event.
                order.amount = latest::Money { minor: event.amount, currency: event.currency.clone() };
                order.commission = latest::Money { minor: event.commission, currency: event.currency.clone() };
                if !event.line_items.is_empty() {
                    order.line_items = event.line_items.clone();
                }
            }
            let decision = cashbackd_fuzz::decision(u, &order)?;
            steps.push((event, decision, order));
        }
        let text = if u.ratio(1, 8)? { "é".repeat(u.int_in_range(2_000..=10_000)?) } else { String::arbitrary(u)? };
        let error = match u.int_in_range(0..=3)? {
            0 => latest::PluginError::InvalidInput(text),
            1 => latest::PluginError::Config(text),
            2 => latest::PluginError::Upstream(text),
            _ => latest::PluginError::Internal(text),
        };
        Ok(Input { steps, error })
    }
}

fn check_accepted_decision(order: &latest::Order, d: &latest::RuleDecision) {
    assert_eq!(d.total.currency, order.amount.currency, "currency");
    let mut sum: i64 = 0;
    let mut seen = Vec::new();
    for line in &d.lines {
        assert!(order.line_items.iter().any(|l| l.id == line.line_id), "unknown line {:?}", line.line_id);
        assert!(!seen.contains(&&line.line_id), "line {:?} credited twice", line.line_id);
        seen.push(&line.line_id);
        assert!((0..=boundary::MAX_MINOR).contains(&line.amount), "line amount {}", line.amount);
        sum = sum.checked_add(line.amount).expect("lines overflow");
    }
    assert_eq!(sum, d.total.minor, "lines add up to the total");
    assert!(
        d.reward_delay_days.is_none_or(|days| days <= boundary::MAX_REWARD_DELAY_DAYS),
        "{:?}",
        d.reward_delay_days
    );
}

fn check_accepted_event(e: &latest::ConversionEvent) {
    assert_eq!(e.network, NETWORK);
    assert!(!e.transaction_id.trim().is_empty());
    for id in [
        Some(&e.transaction_id),
        e.click_id.as_ref(),
        e.order_id.as_ref(),
        e.merchant_ref.as_ref(),
        Some(&e.event_type),
    ]
    .into_iter()
    .flatten()
    {
        assert!(id.chars().count() <= boundary::MAX_ID_CHARS, "identifier of {} characters", id.chars().count());
        assert!(id.len() <= boundary::MAX_ID_BYTES, "identifier of {} bytes", id.len());
        assert!(!id.chars().any(char::is_control), "control character in {id:?}");
    }
    if !matches!(e.state, latest::ConversionState::Rejected | latest::ConversionState::Reversed) {
        assert!(e.amount >= 0 && e.commission >= 0, "negative {:?} event: {} / {}", e.state, e.amount, e.commission);
    }
    let c = &e.currency;
    assert!(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()), "currency {c:?}");
    for amount in [e.amount, e.commission].into_iter().chain(e.line_items.iter().map(|l| l.amount)) {
        assert!(amount.unsigned_abs() <= boundary::MAX_MINOR as u64, "amount {amount}");
    }
    for (i, l) in e.line_items.iter().enumerate() {
        assert!(e.line_items[..i].iter().all(|o| o.id != l.id), "line id {:?} twice", l.id);
    }
    assert!((0..=boundary::MAX_EVENT_TIME).contains(&e.event_time), "event time {}", e.event_time);
}

/// Books `t` over what is `posted`, the way `conversions::decide` (`finish`) does; the
/// posting must balance.
fn book(posted: &mut Booked, t: Booked) {
    let delta = Booked {
        pending: t.pending - posted.pending,
        available: t.available - posted.available,
        receivable: t.receivable - posted.receivable,
    };
    let entries = booking_entries("u1", delta);
    let sum = entries.iter().try_fold(0i64, |s, e| s.checked_add(e.amount)).expect("a posting's entries overflow");
    assert_eq!(sum, 0, "unbalanced posting {entries:?}");
    *posted = t;
}

#[derive(serde::Deserialize)]
struct Seed {
    order: latest::Order,
    decision: latest::RuleDecision,
    event: latest::ConversionEvent,
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#") {
        let Ok(seed) = serde_json::from_slice::<Seed>(text) else { return };
        let error = latest::PluginError::Internal(String::from_utf8_lossy(text).into_owned());
        check(Input { steps: vec![(seed.event, seed.decision, seed.order)], error });
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
});

fn check(input: Input) {
    let error = boundary::plugin_error(input.error.clone());
    let (latest::PluginError::InvalidInput(m)
    | latest::PluginError::Config(m)
    | latest::PluginError::Upstream(m)
    | latest::PluginError::Internal(m)) = &error;
    assert!(m.len() <= boundary::MAX_ERROR_BYTES, "an error message of {} bytes", m.len());
    assert_eq!(std::mem::discriminant(&error), std::mem::discriminant(&input.error), "the kind is kept");

    // One conversion through its lifecycle, with what the boundary accepts.
    let mut current: Option<Current> = None;
    let mut posted = Booked::default();
    let mut cashback = 0i64;
    for (event, decision, order) in input.steps {
        let decided = match boundary::check_decision(&order, &decision) {
            Ok(()) => {
                check_accepted_decision(&order, &decision);
                Some(decision.total.minor)
            }
            Err(why) => {
                assert!(!why.is_empty());
                None
            }
        };
        let event = match boundary::adopt_event(NETWORK, event) {
            Ok(e) => {
                check_accepted_event(&e);
                e
            }
            Err(why) => {
                assert!(!why.to_string().is_empty());
                continue;
            }
        };
        let Step::Advance { to, evaluate, .. } =
            step(current.as_ref(), event.state.into(), event.amount, event.commission)
        else {
            continue;
        };
        let status = match (evaluate, decided) {
            (true, Some(total)) => {
                cashback = total;
                Status::Processed
            }
            // The rules failed: the conversion waits, its bookings as they were.
            (true, None) => Status::Failed,
            (false, _) => current.as_ref().map_or(Status::Processed, |c| c.status),
        };
        if status != Status::Failed {
            book(&mut posted, target(to, status, cashback, event.commission, false));
        }
        current = Some(Current { state: to, status, amount: event.amount, commission: event.commission });
    }
    // Completed and matured: pending becomes available; then reversed.
    if let Some(c) = &current
        && c.status != Status::Failed
    {
        book(&mut posted, target(State::Completed, c.status, cashback, c.commission, false));
        book(&mut posted, target(State::Completed, c.status, cashback, c.commission, true));
        book(&mut posted, target(State::Reversed, Status::Reversed, cashback, c.commission, true));
        assert_eq!(posted, Booked::default(), "a reversed conversion books nothing");
    }
}
