//! The conversion state machine, as pure functions: given what we have and what the
//! network says, what happens. No I/O, so every rule here is tested directly: below, on
//! every pair of states; and in `tests/it/ledger_props.rs`, where the whole system is
//! compared with an independent model of a conversion's money on random event sequences
//! (proptest, 1,000 per backend in CI).
//!
//! States follow the networks (seed 001): CREATED → PENDING → ADJUSTED* → COMPLETED, plus
//! REJECTED (declined before completion) and REVERSED (refund after completion). A
//! conversion never moves backwards: an event that would is recorded with the reason it
//! was ignored. Statuses are ours (seed 002): what we did about the cashback.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The network's view of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// A click exists; nothing bought yet.
    Created,
    /// Purchase reported, commission not confirmed.
    Pending,
    /// The amount changed.
    Adjusted,
    /// Commission confirmed. Final, except for a later refund.
    Completed,
    /// Declined before completion. Final.
    Rejected,
    /// Refunded after completion. Final.
    Reversed,
}

impl State {
    /// Upper-case name (`PENDING`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "CREATED",
            State::Pending => "PENDING",
            State::Adjusted => "ADJUSTED",
            State::Completed => "COMPLETED",
            State::Rejected => "REJECTED",
            State::Reversed => "REVERSED",
        }
    }

    /// Parses an upper-case name.
    pub fn parse(s: &str) -> Option<State> {
        [State::Created, State::Pending, State::Adjusted, State::Completed, State::Rejected, State::Reversed]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    fn is_final(self) -> bool {
        matches!(self, State::Rejected | State::Reversed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What cashbackd did about a conversion's cashback (seed 002's badges, plus parked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Cashback credited (pending, then available).
    Processed,
    /// Waiting for an operator (the merchant is in manual mode).
    PendingReview,
    /// Flagged for review (by a rule's hold verdict or an operator).
    Held,
    /// No cashback: the network declined it or an operator rejected it.
    Rejected,
    /// Cashback taken back after completion (refund).
    Reversed,
    /// The rule plugin failed; reprocessable once fixed.
    Failed,
    /// Customer not found: the click or the user is unknown yet.
    Parked,
}

impl Status {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Processed => "processed",
            Status::PendingReview => "pending_review",
            Status::Held => "held",
            Status::Rejected => "rejected",
            Status::Reversed => "reversed",
            Status::Failed => "failed",
            Status::Parked => "parked",
        }
    }

    /// Parses a snake_case name.
    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Processed,
            Status::PendingReview,
            Status::Held,
            Status::Rejected,
            Status::Reversed,
            Status::Failed,
            Status::Parked,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Awaiting an operator.
    pub fn in_review(self) -> bool {
        matches!(self, Status::PendingReview | Status::Held)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What we hold for a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// Its state.
    pub state: State,
    /// Its status.
    pub status: Status,
    /// Order value (minor units).
    pub amount: i64,
    /// Commission.
    pub commission: i64,
}

/// What an incoming event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the event would move the conversion backwards, repeats what we have, or
    /// arrives after a final state. Recorded with this reason.
    Ignore(String),
    /// Move to `to`. `evaluate`: the cashback must be (re)computed by the rules.
    Advance {
        /// The new state.
        to: State,
        /// Whether the rules must run.
        evaluate: bool,
        /// Why, for the history.
        note: String,
    },
}

/// The state machine. `reported` is the state the network reports, with its amounts.
pub fn step(current: Option<&Current>, reported: State, amount: i64, commission: i64) -> Step {
    let advance = |to: State, evaluate: bool, note: &str| Step::Advance { to, evaluate, note: note.to_string() };
    let Some(cur) = current else {
        return match reported {
            State::Created => advance(State::Created, false, "click reported"),
            State::Pending | State::Adjusted => advance(reported, true, "first report"),
            State::Completed => advance(State::Completed, true, "first report is already COMPLETED"),
            State::Rejected => advance(State::Rejected, false, "first report is REJECTED"),
            State::Reversed => advance(State::Rejected, false, "REVERSED before any completion: treated as REJECTED"),
        };
    };
    let changed = amount != cur.amount || commission != cur.commission;
    if cur.state.is_final() {
        return Step::Ignore(format!("{} after {}: {} is final", reported, cur.state, cur.state));
    }
    match (cur.state, reported) {
        (State::Created, State::Created) => Step::Ignore("CREATED again: no change".into()),
        (State::Created, State::Pending | State::Adjusted | State::Completed) => {
            advance(reported, true, "purchase reported after the click")
        }
        (State::Created, State::Rejected | State::Reversed) => advance(State::Rejected, false, "declined"),
        (State::Pending | State::Adjusted, State::Created) => {
            Step::Ignore(format!("CREATED after {}: a conversion never moves backwards", cur.state))
        }
        (State::Pending | State::Adjusted, State::Pending | State::Adjusted) if !changed => {
            Step::Ignore(format!("{reported} with the same amounts: no change"))
        }
        (State::Pending | State::Adjusted, State::Pending | State::Adjusted) => {
            advance(State::Adjusted, true, "amounts changed")
        }
        (State::Pending | State::Adjusted, State::Completed) => {
            advance(State::Completed, changed, if changed { "completed with changed amounts" } else { "completed" })
        }
        (State::Pending | State::Adjusted, State::Rejected | State::Reversed) => {
            advance(State::Rejected, false, "declined before completion")
        }
        (State::Completed, State::Created | State::Pending | State::Adjusted) => {
            Step::Ignore(format!("{reported} after COMPLETED: a conversion never moves backwards"))
        }
        (State::Completed, State::Completed) => Step::Ignore(
            if changed {
                "COMPLETED again with other amounts: COMPLETED is final"
            } else {
                "COMPLETED again: no change"
            }
            .into(),
        ),
        (State::Completed, State::Rejected | State::Reversed) => {
            advance(State::Reversed, false, "refund after completion: correcting entry")
        }
        (State::Rejected | State::Reversed, _) => Step::Ignore("final".into()),
    }
}

/// The per-conversion balances the ledger should hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Booked {
    /// Cashback owed to the user, not yet available.
    pub pending: i64,
    /// Cashback available to the user.
    pub available: i64,
    /// Commission the network owes us.
    pub receivable: i64,
}

/// What a conversion in `state`/`status` should have booked. The commission is the
/// network's business and is booked whatever our status; the user's cashback only once
/// credited (processed), and it becomes available once matured.
pub fn target(state: State, status: Status, cashback: i64, commission: i64, matured: bool) -> Booked {
    let receivable = match state {
        State::Pending | State::Adjusted | State::Completed => commission,
        State::Created | State::Rejected | State::Reversed => 0,
    };
    let credited = status == Status::Processed && matches!(state, State::Pending | State::Adjusted | State::Completed);
    let (pending, available) = match (credited, state == State::Completed && matured) {
        (false, _) => (0, 0),
        (true, false) => (cashback, 0),
        (true, true) => (0, cashback),
    };
    Booked { pending, available, receivable }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [State; 6] =
        [State::Created, State::Pending, State::Adjusted, State::Completed, State::Rejected, State::Reversed];

    /// Where a conversion may go from each state (seed 001). Not an order on ranks: REJECTED
    /// is reachable before completion only, REVERSED after it only.
    fn allowed(from: State, to: State) -> bool {
        use State::*;
        matches!(
            (from, to),
            (Created, Pending | Adjusted | Completed | Rejected)
                | (Pending, Adjusted | Completed | Rejected)
                | (Adjusted, Adjusted | Completed | Rejected)
                | (Completed, Reversed)
        )
    }

    #[test]
    fn a_conversion_never_moves_backwards() {
        for from in ALL {
            for reported in ALL {
                let cur = Current { state: from, status: Status::Processed, amount: 100, commission: 10 };
                for (amount, commission) in [(100, 10), (50, 5)] {
                    if let Step::Advance { to, .. } = step(Some(&cur), reported, amount, commission) {
                        assert!(allowed(from, to), "{from} + {reported} went to {to}");
                        assert!(!from.is_final(), "{from} is final");
                    }
                }
            }
        }
    }

    #[test]
    fn an_approval_before_its_pending_completes_and_the_late_pending_is_ignored() {
        assert_eq!(
            step(None, State::Completed, 100, 10),
            Step::Advance { to: State::Completed, evaluate: true, note: "first report is already COMPLETED".into() }
        );
        let cur = Current { state: State::Completed, status: Status::Processed, amount: 100, commission: 10 };
        assert!(
            matches!(step(Some(&cur), State::Pending, 100, 10), Step::Ignore(why) if why.contains("never moves backwards"))
        );
    }

    #[test]
    fn booking_follows_state_and_status() {
        assert_eq!(
            target(State::Pending, Status::Processed, 50, 80, false),
            Booked { pending: 50, available: 0, receivable: 80 }
        );
        assert_eq!(
            target(State::Pending, Status::PendingReview, 50, 80, false),
            Booked { pending: 0, available: 0, receivable: 80 }
        );
        assert_eq!(
            target(State::Completed, Status::Processed, 50, 80, true),
            Booked { pending: 0, available: 50, receivable: 80 }
        );
        assert_eq!(target(State::Reversed, Status::Reversed, 50, 80, true), Booked::default());
        assert_eq!(target(State::Rejected, Status::Rejected, 50, 80, false), Booked::default());
    }
}
