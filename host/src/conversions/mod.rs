//! Conversions: from a network's event to ledger postings.
//!
//! | file | what |
//! |---|---|
//! | `lifecycle.rs` | the state machine and what each state books: pure functions |
//! | `decide.rs` | the decision core: a batch of commands and the state they touch in, a result per command and the rows to write out; pure, property-tested |
//! | `store.rs` | per batch: prefetch by id lists, decide, write with version checks; decided again from fresh state when it loses a race |
//! | `service.rs` | the entry points: ingest, review, register users and clicks, maturation, replay |
//!
//! Every change goes through a [`Command`] that is written to the journal in the same
//! transaction as its effects, with the rule evaluation it used. Replaying the journal
//! from empty therefore reproduces every balance exactly, without running plugins.

pub mod decide;
pub mod lifecycle;
pub mod rules;
pub mod service;
pub mod shadow;
pub mod store;
pub mod writer;

/// The store under the name the write path had before the decision core existed
/// (`conversions::apply::journal_and_apply`, `apply::load`, ...).
pub use store as apply;

use crate::ledger::{LedgerError, PluginRefs};
use crate::plugin::wit::latest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use lifecycle::{State, Status};
pub use service::{NewClick, Service, ServiceConfig};

/// cashbackd's id of the conversion (network, transaction id): derived, not random, so
/// the same conversion has the same id on every replica and in every replay.
pub fn conversion_id(network: &str, transaction_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(network.as_bytes());
    h.update([0]);
    h.update(transaction_id.as_bytes());
    format!("cv_{}", &hex::encode(h.finalize())[..20])
}

/// The result of running a merchant's rule chain for a conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Evaluation {
    /// The rules decided.
    Decided {
        /// Total cashback, minor units.
        cashback: i64,
        /// Hold for review, with the reason.
        hold: Option<String>,
        /// Reward delay override.
        reward_delay_days: Option<u32>,
        /// The merchant's processing mode when the rules ran (seed 002: switching modes
        /// affects new orders only, so the mode travels with the evaluation).
        manual_review: bool,
        /// The merchant's default reward delay when the rules ran.
        default_delay_days: i64,
        /// Every plugin of the chain.
        plugins: PluginRefs,
        /// The final decision, as JSON, for the timeline and for explaining figures.
        decision: serde_json::Value,
        /// What the chain saw: kept with the decision so that a backtest replays exactly
        /// these inputs. (Absent in journals written before it existed.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inputs: Option<Box<rules::RuleInputs>>,
    },
    /// A plugin failed (trap, limit, its own error): the conversion is marked failed.
    Failed {
        /// The error, naming the plugin and version.
        error: String,
        /// The chain.
        plugins: PluginRefs,
    },
}

/// How a network event reached cashbackd (seed 000: each path has its own delays).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// An S2S postback (seconds).
    #[default]
    Postback,
    /// A scheduled import from the network's API (hours).
    ApiImport,
    /// An offline report file (up to days).
    File,
}

impl Via {
    /// snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Postback => "postback",
            Via::ApiImport => "api_import",
            Via::File => "file",
        }
    }
}

/// An operator's attribution of a conversion parked because its click, user or merchant
/// is unknown: the click it came from, or the user and merchant directly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The click the conversion came from.
    #[serde(default)]
    pub click_id: Option<String>,
    /// The user to credit (with `merchant_id`, when no click is known).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The merchant whose rules apply.
    #[serde(default)]
    pub merchant_id: Option<String>,
    /// Who decided.
    pub operator: String,
}

/// An operator's decision on a conversion awaiting review (seed 002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewAction {
    /// Credit the cashback.
    Approve,
    /// Deny the cashback.
    Reject,
    /// Keep it aside.
    Hold,
}

/// Everything that changes state. Journaled with the time it was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// A network reported a conversion event.
    Event {
        /// The normalized event.
        event: Box<latest::ConversionEvent>,
        /// How it reached us.
        #[serde(default)]
        via: Via,
        /// The rule evaluation made for it, if one was needed.
        evaluation: Option<Evaluation>,
    },
    /// A user account exists now, or its profile changed.
    RegisterUser {
        /// Its id.
        user_id: String,
        /// Its e-mail.
        email: Option<String>,
        /// The name the digests greet.
        #[serde(default)]
        name: Option<String>,
        /// Whether the user gets digests (absent: yes).
        #[serde(default)]
        notify: Option<bool>,
        /// Where the account came from: `api`, `cli`, `import`, `click`.
        #[serde(default)]
        source: Option<String>,
        /// Replace the profile of an existing account (`PUT`); otherwise an existing
        /// account is left as it is (journals written before profiles existed).
        #[serde(default)]
        update: bool,
    },
    /// A tracked click.
    RegisterClick {
        /// The click id.
        click_id: String,
        /// Who clicked.
        user_id: String,
        /// The merchant clicked through to.
        merchant_id: Option<String>,
        /// The network of the link.
        network_id: Option<String>,
        /// The partner's reference.
        ref_id: Option<String>,
        /// The tracked link clicked.
        #[serde(default)]
        link_id: Option<String>,
        /// The partner's sub ids (sub1..sub5).
        #[serde(default)]
        subs: Vec<Option<String>>,
        /// Create the user's account if it does not exist (`ingress.create_users_on_click`).
        #[serde(default)]
        create_user: bool,
    },
    /// A parked or failed conversion processed again (its customer appeared, or its
    /// plugin was fixed).
    Reprocess {
        /// The conversion.
        conversion_id: String,
        /// The new evaluation.
        evaluation: Option<Evaluation>,
        /// Why it is processed again, for its history.
        #[serde(default)]
        reason: Option<String>,
        /// An operator's attribution of a parked conversion.
        #[serde(default)]
        assign: Option<Assignment>,
    },
    /// An operator's review decision.
    Review {
        /// The conversion.
        conversion_id: String,
        /// What to do.
        action: ReviewAction,
        /// Who.
        operator: String,
        /// Why.
        reason: String,
    },
    /// A completed conversion's reward delay has passed: pending becomes available.
    Mature {
        /// The conversion.
        conversion_id: String,
    },
    /// A manual credit (or debit, negative) of a user's available cashback.
    Adjustment {
        /// Idempotency key chosen by the caller.
        key: String,
        /// The user.
        user_id: String,
        /// Currency.
        currency: String,
        /// Minor units, signed.
        amount: i64,
        /// Who.
        operator: String,
        /// Why.
        reason: String,
    },
    /// A site asks for a payout of a user's available cashback (`payouts`).
    PayoutRequest {
        /// The payout's id, derived from the user and the request key.
        payout_id: String,
        /// The user.
        user_id: String,
        /// Currency.
        currency: String,
        /// Minor units; none: all of the available balance.
        amount: Option<i64>,
        /// The currency's minimum payout when it was requested (the setting travels with
        /// the command, so a replay decides as the request did).
        minimum: i64,
        /// The requester's idempotency key.
        request_key: String,
        /// Who asked.
        requested_by: String,
    },
    /// An operator's step on a payout: approve, reject, paid, failed.
    PayoutStep {
        /// The payout.
        payout_id: String,
        /// What to do.
        action: crate::payouts::PayoutAction,
        /// Who.
        operator: String,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The conversion changed.
    Applied {
        /// The conversion.
        conversion_id: String,
        /// Whether this created it.
        created: bool,
        /// Its state now.
        state: State,
        /// Its status now.
        status: Status,
        /// Why.
        note: String,
    },
    /// Nothing changed; the reason is in the conversion's history.
    Ignored {
        /// The conversion.
        conversion_id: String,
        /// Why.
        reason: String,
    },
    /// The same event was received before: nothing changed.
    Duplicate {
        /// The conversion.
        conversion_id: String,
    },
    /// A user or click was registered; these parked conversions can now be processed.
    Registered {
        /// Conversions waiting for it.
        unparked: Vec<String>,
    },
    /// A manual adjustment was posted (or had been, with the same key).
    Adjusted {
        /// The key.
        key: String,
        /// Whether this call posted it.
        posted: bool,
    },
    /// A payout was requested or moved (or was already where the command leads).
    Payout {
        /// The payout as it is now.
        payout: Box<crate::payouts::Payout>,
        /// Whether this command changed it.
        changed: bool,
    },
}

/// Why a command could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The conversion changed since the caller read it; read again and retry.
    #[error("the conversion changed concurrently")]
    Conflict,
    /// The rules must run first (the customer was found meanwhile).
    #[error("the conversion needs a rule evaluation")]
    NeedsEvaluation,
    /// The command was decided on configuration older than the stored one (a rule, an
    /// adapter or a merchant's settings changed since): decide it again.
    #[error("the configuration changed (now version {current}); decide again")]
    StaleConfig {
        /// The stored configuration version.
        current: i64,
    },
    /// The command makes no sense for the current data.
    #[error("{0}")]
    Invalid(String),
    /// The ledger refused.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The writer is gone (shutting down).
    #[error("the writer stopped")]
    Stopped,
    /// A payout request or step was refused; nothing was written.
    #[error(transparent)]
    Payout(#[from] crate::payouts::Refusal),
}

impl From<crate::payouts::apply::Failure> for ApplyError {
    fn from(f: crate::payouts::apply::Failure) -> ApplyError {
        use crate::payouts::apply::Failure;
        match f {
            Failure::Refused(r) => ApplyError::Payout(r),
            Failure::Conflict => ApplyError::Conflict,
            Failure::Ledger(e) => ApplyError::Ledger(e),
            Failure::Db(e) => ApplyError::Db(e),
        }
    }
}

/// A fingerprint of what the network said, for deduplication: the same event twice
/// changes nothing. Raw fields and the event time are left out: a resent postback may
/// carry a new timestamp (or none, and be stamped on receipt) while saying the same thing.
pub fn fingerprint(e: &latest::ConversionEvent) -> String {
    let key = serde_json::json!([
        e.network,
        e.transaction_id,
        e.click_id,
        e.order_id,
        e.event_type,
        e.state,
        e.amount,
        e.commission,
        e.currency,
        e.reason,
        e.merchant_ref,
        e.line_items
    ]);
    let mut h = Sha256::new();
    h.update(key.to_string().as_bytes());
    format!("ev:{}", hex::encode(h.finalize()))
}

impl From<latest::ConversionState> for State {
    fn from(s: latest::ConversionState) -> State {
        match s {
            latest::ConversionState::Created => State::Created,
            latest::ConversionState::Pending => State::Pending,
            latest::ConversionState::Adjusted => State::Adjusted,
            latest::ConversionState::Completed => State::Completed,
            latest::ConversionState::Rejected => State::Rejected,
            latest::ConversionState::Reversed => State::Reversed,
        }
    }
}
