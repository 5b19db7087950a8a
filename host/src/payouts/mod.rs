//! Payouts (issue 13, point 3): a user's available cashback paid out.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | statuses, the policy (minimums, which step may follow which): pure functions |
//! | `apply.rs` | applying a payout command inside the writer's transaction: row, history, postings, outbox |
//! | `store.rs` | reading payouts: one, a page, a payout's history and postings |
//! | `service.rs` | the entry points the API, the CLI and the dashboard call |
//!
//! The site requests a payout of all or part of a user's available balance (at or above
//! the currency's minimum, `payouts.minimum`); an operator approves or rejects it, then
//! marks it paid with the external payment reference, or failed. Each step that moves
//! money is one balanced ledger posting keyed by the payout and the step, written by the
//! group-commit writer with the journaled command that caused it, so a replay of the
//! journal reproduces every balance and a retried step posts nothing twice:
//!
//! | step | user `available` | user `payout_in_flight` | platform `payouts_paid` |
//! |---|---|---|---|
//! | requested | − amount | + amount | |
//! | approved | | | |
//! | rejected (requested or approved) | + amount | − amount | |
//! | paid (approved) | | − amount | + amount |
//! | failed (approved) | + amount | − amount | |
//! | failed (paid: the payment came back) | + amount | | − amount |
//!
//! Money returning to `available` repays the user's debt first (the ledger's debt rule).

pub mod apply;
pub mod service;
pub mod store;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use service::{NewPayout, PayoutError, Transition};
pub use store::{Payout, PayoutFilter};

pub use crate::states::PayoutStatus;

/// What an operator does to a payout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PayoutAction {
    /// Agree to pay it.
    Approve,
    /// Refuse it: the amount returns to available.
    Reject {
        /// Why (required).
        reason: String,
    },
    /// It was paid, with this external reference (a bank transfer id...).
    MarkPaid {
        /// The external payment reference (required).
        reference: String,
    },
    /// Its payment failed or came back: the amount returns to available.
    MarkFailed {
        /// Why (required).
        reason: String,
    },
}

impl PayoutAction {
    /// Its name in messages and paths: `approve`, `reject`, `paid`, `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            PayoutAction::Approve => "approve",
            PayoutAction::Reject { .. } => "reject",
            PayoutAction::MarkPaid { .. } => "paid",
            PayoutAction::MarkFailed { .. } => "failed",
        }
    }
}

/// Which accounts a step moves the payout's amount between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// No money moves (an approval).
    Nothing,
    /// From the user's available to their payout in flight (a request).
    AvailableToInFlight,
    /// Back from in flight to available (a rejection, a failed payment).
    InFlightToAvailable,
    /// From in flight out to the platform's payouts paid (the payment).
    InFlightToPaid,
    /// Back from payouts paid to available (a payment that came back).
    PaidToAvailable,
}

/// What an action does to a payout in a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Move to `to`, moving the money as `movement` says.
    Move {
        /// The new status.
        to: PayoutStatus,
        /// The posting.
        movement: Movement,
    },
    /// The payout is already where the action leads (a retried step): nothing changes.
    Unchanged,
}

/// Why a payout request or step was refused. The message is for people and names the
/// field or the figure at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A field is missing or malformed.
    #[error("{field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// No such user or payout.
    #[error("{0}")]
    NotFound(String),
    /// The amount is below the currency's minimum payout.
    #[error("amount: {amount} is below the minimum payout of {minimum} (payouts.minimum.{currency})")]
    BelowMinimum {
        /// The amount asked for (or, without one, the whole available balance), formatted.
        amount: String,
        /// The minimum, formatted.
        minimum: String,
        /// The currency.
        currency: String,
    },
    /// More than the user's available balance.
    #[error("amount: {amount} is more than the available balance of {available}")]
    Insufficient {
        /// The amount asked for, formatted.
        amount: String,
        /// The available balance, formatted.
        available: String,
    },
    /// The payout's status does not allow the step.
    #[error("payout {id} is {status}: {why}")]
    Transition {
        /// The payout.
        id: String,
        /// Its status.
        status: PayoutStatus,
        /// What may be done instead.
        why: String,
    },
    /// The payout changed since the caller read it (optimistic concurrency).
    #[error("payout {id} is at version {actual}, not {expected}: it changed meanwhile; read it again")]
    Stale {
        /// The payout.
        id: String,
        /// The version the caller saw.
        expected: i64,
        /// The version now.
        actual: i64,
    },
    /// The idempotency key was used for another request.
    #[error("idempotency key {key:?} was used for payout {id} of {amount}: a different request")]
    KeyReused {
        /// The key.
        key: String,
        /// The payout it made.
        id: String,
        /// Its amount, formatted.
        amount: String,
    },
}

fn money(minor: i64, currency: &str) -> String {
    cashback_sdk::money::format(minor, currency)
}

/// The smallest payout per currency (`payouts.minimum`), in minor units. A currency not
/// listed takes any amount above zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutPolicy {
    /// Minor units by ISO currency code.
    pub minimum: BTreeMap<String, i64>,
}

impl PayoutPolicy {
    /// The minimum of `currency` (at least 1: a payout moves some money).
    pub fn minimum(&self, currency: &str) -> i64 {
        self.minimum.get(currency).copied().unwrap_or(1).max(1)
    }
}

/// The amount a request pays out: the one asked for, or all of `available` without one.
/// Refused below `minimum` (checked first: the site learns the rule even when the user
/// could not afford the amount) and above `available`.
pub fn request_amount(asked: Option<i64>, available: i64, minimum: i64, currency: &str) -> Result<i64, Refusal> {
    let amount = match asked {
        Some(a) if a <= 0 => {
            return Err(Refusal::Invalid { field: "amount", why: format!("must be above 0 (minor units), got {a}") });
        }
        Some(a) => a,
        None => available.max(0),
    };
    if amount < minimum {
        return Err(Refusal::BelowMinimum {
            amount: money(amount, currency),
            minimum: money(minimum, currency),
            currency: currency.to_string(),
        });
    }
    if amount > available {
        return Err(Refusal::Insufficient { amount: money(amount, currency), available: money(available, currency) });
    }
    Ok(amount)
}

/// What `action` does to payout `id` in `status`, paid with `reference` if it was. A
/// step that is already done is [`Step::Unchanged`] (retries and two replicas doing the
/// same thing at once post once); any other step out of order is refused with what can
/// be done instead.
pub fn decide(id: &str, status: PayoutStatus, reference: Option<&str>, action: &PayoutAction) -> Result<Step, Refusal> {
    use Movement::*;
    use PayoutStatus::*;
    let step = |to, movement| Ok(Step::Move { to, movement });
    let refuse = |why: &str| Err(Refusal::Transition { id: id.to_string(), status, why: why.to_string() });
    match (action, status) {
        (PayoutAction::Approve, Requested) => step(Approved, Nothing),
        (PayoutAction::Approve, Approved) => Ok(Step::Unchanged),
        (PayoutAction::Approve, Paid) => refuse("it is paid already"),
        (PayoutAction::Approve, Rejected | Failed) => refuse("it is closed; the user may request a new payout"),

        (PayoutAction::Reject { .. }, Requested | Approved) => step(Rejected, InFlightToAvailable),
        (PayoutAction::Reject { .. }, Rejected) => Ok(Step::Unchanged),
        (PayoutAction::Reject { .. }, Paid) => refuse("it is paid; if the payment came back, mark it failed"),
        (PayoutAction::Reject { .. }, Failed) => refuse("it is closed"),

        (PayoutAction::MarkPaid { .. }, Approved) => step(Paid, InFlightToPaid),
        (PayoutAction::MarkPaid { reference: r }, Paid) if Some(r.as_str()) == reference => Ok(Step::Unchanged),
        (PayoutAction::MarkPaid { .. }, Paid) => Err(Refusal::Transition {
            id: id.to_string(),
            status,
            why: format!("it was paid with reference {:?}", reference.unwrap_or_default()),
        }),
        (PayoutAction::MarkPaid { .. }, Requested) => refuse("approve it before marking it paid"),
        (PayoutAction::MarkPaid { .. }, Rejected | Failed) => refuse("it is closed; its amount is back in available"),

        (PayoutAction::MarkFailed { .. }, Approved) => step(Failed, InFlightToAvailable),
        (PayoutAction::MarkFailed { .. }, Paid) => step(Failed, PaidToAvailable),
        (PayoutAction::MarkFailed { .. }, Failed) => Ok(Step::Unchanged),
        (PayoutAction::MarkFailed { .. }, Requested) => refuse("it was never approved: reject it instead"),
        (PayoutAction::MarkFailed { .. }, Rejected) => refuse("it is closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PayoutStatus::*;

    fn act(a: &str) -> PayoutAction {
        match a {
            "approve" => PayoutAction::Approve,
            "reject" => PayoutAction::Reject { reason: "r".into() },
            "paid" => PayoutAction::MarkPaid { reference: "TR-1".into() },
            _ => PayoutAction::MarkFailed { reason: "r".into() },
        }
    }

    #[test]
    fn a_request_is_at_least_the_minimum_and_at_most_the_available_balance() {
        assert_eq!(request_amount(Some(1_500), 2_000, 1_000, "EUR"), Ok(1_500));
        assert_eq!(request_amount(None, 2_000, 1_000, "EUR"), Ok(2_000), "all of it without an amount");
        assert_eq!(request_amount(Some(1_000), 1_000, 1_000, "EUR"), Ok(1_000), "the minimum itself is allowed");
        let below = request_amount(Some(999), 2_000, 1_000, "EUR").expect_err("below");
        assert_eq!(
            below.to_string(),
            "amount: 9.99 EUR is below the minimum payout of 10.00 EUR (payouts.minimum.EUR)"
        );
        let all_below = request_amount(None, 400, 1_000, "EUR").expect_err("available below the minimum");
        assert!(matches!(all_below, Refusal::BelowMinimum { .. }), "{all_below}");
        let over = request_amount(Some(2_001), 2_000, 1_000, "EUR").expect_err("over");
        assert_eq!(over.to_string(), "amount: 20.01 EUR is more than the available balance of 20.00 EUR");
        assert!(matches!(request_amount(Some(0), 2_000, 1, "EUR"), Err(Refusal::Invalid { field: "amount", .. })));
        assert!(matches!(request_amount(Some(-5), 2_000, 1, "EUR"), Err(Refusal::Invalid { .. })));
        assert!(matches!(request_amount(None, 0, 1, "EUR"), Err(Refusal::BelowMinimum { .. })), "nothing available");
    }

    #[test]
    fn the_policy_defaults_to_any_amount_above_zero() {
        let p = PayoutPolicy { minimum: [("EUR".to_string(), 1_000)].into() };
        assert_eq!((p.minimum("EUR"), p.minimum("USD")), (1_000, 1));
    }

    #[test]
    fn every_step_follows_the_lifecycle_and_a_repeated_step_changes_nothing() {
        use Movement::*;
        let mv = |to, movement| Ok(Step::Move { to, movement });
        assert_eq!(decide("p", Requested, None, &act("approve")), mv(Approved, Nothing));
        assert_eq!(decide("p", Requested, None, &act("reject")), mv(Rejected, InFlightToAvailable));
        assert_eq!(decide("p", Approved, None, &act("reject")), mv(Rejected, InFlightToAvailable));
        assert_eq!(decide("p", Approved, None, &act("paid")), mv(Paid, InFlightToPaid));
        assert_eq!(decide("p", Approved, None, &act("failed")), mv(Failed, InFlightToAvailable));
        assert_eq!(decide("p", Paid, Some("TR-1"), &act("failed")), mv(Failed, PaidToAvailable));
        for (status, action) in [(Approved, "approve"), (Rejected, "reject"), (Paid, "paid"), (Failed, "failed")] {
            assert_eq!(decide("p", status, Some("TR-1"), &act(action)), Ok(Step::Unchanged), "{status} {action}");
        }
        let paid_elsewhere = decide("p", Paid, Some("TR-0"), &act("paid")).expect_err("another reference");
        assert_eq!(paid_elsewhere.to_string(), "payout p is paid: it was paid with reference \"TR-0\"");
        let early = decide("p", Requested, None, &act("paid")).expect_err("not approved");
        assert_eq!(early.to_string(), "payout p is requested: approve it before marking it paid");
        // Nothing leaves a final status, and nothing but a returned payment leaves paid.
        for status in [Rejected, Failed] {
            for action in ["approve", "reject", "paid", "failed"] {
                let out = decide("p", status, None, &act(action));
                assert!(out == Ok(Step::Unchanged) || out.is_err(), "{status} {action}: {out:?}");
            }
        }
        for action in ["approve", "reject"] {
            assert!(decide("p", Paid, Some("TR-1"), &act(action)).is_err(), "paid then {action}");
        }
        assert!(decide("p", Requested, None, &act("failed")).is_err(), "failed needs an approved payment");
    }

    #[test]
    fn every_movement_balances_and_the_money_ends_where_the_status_says() {
        // Walk every path from a request and check the three accounts against the status.
        fn run(path: &[&str]) -> (PayoutStatus, [i64; 3]) {
            let (mut status, mut reference, mut acc) = (Requested, None::<String>, [-100i64, 100, 0]);
            for a in path {
                let action = act(a);
                if let Ok(Step::Move { to, movement }) = decide("p", status, reference.as_deref(), &action) {
                    let (from, into) = match movement {
                        Movement::Nothing => (0, 0),
                        Movement::AvailableToInFlight => (0, 1),
                        Movement::InFlightToAvailable => (1, 0),
                        Movement::InFlightToPaid => (1, 2),
                        Movement::PaidToAvailable => (2, 0),
                    };
                    if from != into {
                        acc[from] -= 100;
                        acc[into] += 100;
                    }
                    status = to;
                    if let PayoutAction::MarkPaid { reference: r } = action {
                        reference = Some(r);
                    }
                }
            }
            (status, acc)
        }
        let actions = ["approve", "reject", "paid", "failed"];
        for a in actions {
            for b in actions {
                for c in actions {
                    let (status, acc) = run(&[a, b, c]);
                    // acc: available (net of the request), in flight, paid out.
                    let expected = match status {
                        Requested | Approved => [-100, 100, 0],
                        Rejected | Failed => [0, 0, 0],
                        Paid => [-100, 0, 100],
                    };
                    assert_eq!(acc, expected, "{a} {b} {c} ended {status}");
                }
            }
        }
    }
}
