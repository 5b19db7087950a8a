//! The states of what cashbackd tracks, as plain values that every layer shares: a
//! conversion's state (the network's, seed 001) and status (ours, seed 002), and a
//! payout's status. The rules that move them live with their owners
//! (`conversions::lifecycle`, `payouts`); the outbox, the callbacks and the notifications
//! only name them, so they sit here, below all of those.

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

    /// Rejected or reversed: nothing follows.
    pub fn is_final(self) -> bool {
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

/// Where a payout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    /// Asked for; the amount is in flight, waiting for an operator.
    Requested,
    /// An operator approved it; waiting for the payment.
    Approved,
    /// An operator refused it; the amount went back to available. Final.
    Rejected,
    /// Paid, with the external payment reference.
    Paid,
    /// The payment failed (or came back after it was marked paid); the amount went back
    /// to available. Final.
    Failed,
}

impl PayoutStatus {
    /// Every status, in the order of the lifecycle.
    pub const ALL: [PayoutStatus; 5] = [
        PayoutStatus::Requested,
        PayoutStatus::Approved,
        PayoutStatus::Rejected,
        PayoutStatus::Paid,
        PayoutStatus::Failed,
    ];

    /// snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutStatus::Requested => "requested",
            PayoutStatus::Approved => "approved",
            PayoutStatus::Rejected => "rejected",
            PayoutStatus::Paid => "paid",
            PayoutStatus::Failed => "failed",
        }
    }

    /// Parses a snake_case name.
    pub fn parse(s: &str) -> Option<PayoutStatus> {
        PayoutStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for PayoutStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
