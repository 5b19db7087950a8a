//! The payouts' entry points, shared by the admin API, the CLI and the dashboard: input
//! checked here (each refusal names its field), decisions made inside the write
//! (`apply.rs`), reads from `store.rs`.
//!
//! Payouts are written through the conversions' group-commit writer, which sits above
//! this module (it applies payout commands with `apply.rs`). So that the dependency runs
//! one way, the entry points take what they need of it as a trait, [`PayoutWrites`],
//! which `conversions::Service` implements.

use super::store::{self, Page, Payout, PayoutFilter};
use super::{PayoutAction, PayoutPolicy, Refusal};
use crate::db::Db;
use sha2::{Digest as _, Sha256};

/// Why a payout call failed.
#[derive(Debug, thiserror::Error)]
pub enum PayoutError {
    /// Refused: the input, the balance, the minimum or the payout's status.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The database failed; nothing was acknowledged, the call may be retried.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The write could not be made (the writer stopped, a concurrent change that could not
    /// be decided); nothing was written.
    #[error("{0}")]
    Unavailable(String),
}

/// A payout command, checked, for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutCommand {
    /// Request a payout (`apply::request`).
    Request {
        /// The payout's id ([`payout_id`]).
        payout_id: String,
        /// The user.
        user_id: String,
        /// ISO currency.
        currency: String,
        /// Minor units; none: all of the available balance.
        amount: Option<i64>,
        /// The currency's minimum payout.
        minimum: i64,
        /// The requester's key.
        request_key: String,
        /// Who asks.
        requested_by: String,
    },
    /// An operator's step (`apply::step`).
    Step {
        /// The payout.
        payout_id: String,
        /// What to do.
        action: PayoutAction,
        /// Who.
        operator: String,
    },
}

/// What the payouts' entry points need of the write path.
pub trait PayoutWrites: Sync {
    /// The database, for reads.
    fn db(&self) -> &Db;
    /// Applies `command` through the writer, answered after commit: the payout and
    /// whether the command changed it. `expected_version`: refused if the payout is at
    /// another version.
    fn write(
        &self,
        command: PayoutCommand,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<(Payout, bool), PayoutError>> + Send;
}

/// A payout request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewPayout {
    /// The user whose available cashback is paid out.
    pub user_id: String,
    /// ISO currency (`EUR`).
    pub currency: String,
    /// Minor units; none: all of the available balance.
    pub amount: Option<i64>,
    /// The requester's idempotency key (the API's `Idempotency-Key`): the same key for the
    /// same user is the same payout. None: the request is new.
    pub key: Option<String>,
    /// Who asks (the API token's name, the CLI's operator).
    pub requested_by: String,
}

/// An operator's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// What to do.
    pub action: PayoutAction,
    /// Who.
    pub operator: String,
    /// The version the operator saw: refused if the payout changed meanwhile.
    pub expected_version: Option<i64>,
}

fn invalid(field: &'static str, why: impl Into<String>) -> PayoutError {
    PayoutError::Refused(Refusal::Invalid { field, why: why.into() })
}

/// A text field: trimmed, required, at most `max` characters.
fn required(field: &'static str, value: &str, max: usize) -> Result<String, PayoutError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(invalid(field, "required"));
    }
    if v.chars().count() > max {
        return Err(invalid(field, format!("at most {max} characters")));
    }
    Ok(v.to_string())
}

/// An ISO 4217 code: three capital letters.
pub fn check_currency(currency: &str) -> Result<(), PayoutError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid("currency", format!("{currency:?} is not an ISO 4217 code (three capital letters, EUR)")))
    }
}

/// The id of the payout a user's request key makes: the same on every replica and in
/// every replay, so the key alone deduplicates the request.
pub fn payout_id(user: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!("po_{}", &hex::encode(h.finalize())[..20])
}

/// Requests a payout: the amount (or all of the available balance) moves from available
/// to in flight, at or above the currency's minimum. Returns the payout and whether this
/// call made it (false: the same key made it before).
pub async fn request(
    svc: &impl PayoutWrites,
    policy: &PayoutPolicy,
    req: NewPayout,
) -> Result<(Payout, bool), PayoutError> {
    let user = required("user", &req.user_id, 255)?;
    check_currency(&req.currency)?;
    if let Some(a) = req.amount
        && a <= 0
    {
        return Err(invalid("amount", format!("must be above 0 (minor units), got {a}")));
    }
    let requested_by = required("requested_by", &req.requested_by, 255)?;
    let key = match &req.key {
        Some(k) => required("idempotency key", k, 255)?,
        None => format!("{:032x}", rand::random::<u128>()),
    };
    let known = sqlx::query("SELECT 1 FROM users WHERE id = $1").bind(&user).fetch_optional(&svc.db().pool).await?;
    if known.is_none() {
        return Err(PayoutError::Refused(Refusal::NotFound(format!("no user {user:?}"))));
    }
    let command = PayoutCommand::Request {
        payout_id: payout_id(&user, &key),
        user_id: user,
        currency: req.currency.clone(),
        amount: req.amount,
        minimum: policy.minimum(&req.currency),
        request_key: key,
        requested_by,
    };
    svc.write(command, None).await
}

/// An operator's step on payout `id`. Returns the payout and whether this call changed
/// it (false: it was already where the step leads).
pub async fn transition(svc: &impl PayoutWrites, id: &str, t: Transition) -> Result<(Payout, bool), PayoutError> {
    let operator = required("operator", &t.operator, 255)?;
    let action = match t.action {
        PayoutAction::Approve => PayoutAction::Approve,
        PayoutAction::Reject { reason } => PayoutAction::Reject { reason: required("reason", &reason, 500)? },
        PayoutAction::MarkFailed { reason } => PayoutAction::MarkFailed { reason: required("reason", &reason, 500)? },
        PayoutAction::MarkPaid { reference } => {
            PayoutAction::MarkPaid { reference: required("reference", &reference, 255)? }
        }
    };
    let command = PayoutCommand::Step { payout_id: id.to_string(), action, operator };
    svc.write(command, t.expected_version).await
}

/// A payout by id.
pub async fn get(svc: &impl PayoutWrites, id: &str) -> Result<Payout, PayoutError> {
    store::get(svc.db(), id).await?.ok_or_else(|| PayoutError::Refused(Refusal::NotFound(format!("no payout {id:?}"))))
}

/// A page of payouts; a cursor that is not one of ours is refused naming `after`.
pub async fn list(svc: &impl PayoutWrites, filter: &PayoutFilter) -> Result<Page, PayoutError> {
    if let Some(after) = &filter.after
        && store::parse_cursor(after).is_none()
    {
        return Err(invalid("after", format!("{after:?} is not a cursor this API returned (next)")));
    }
    if let Some(limit) = filter.limit
        && !(1..=500).contains(&limit)
    {
        return Err(invalid("limit", format!("between 1 and 500, got {limit}")));
    }
    Ok(store::list(svc.db(), filter).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payout_id_is_the_user_and_key_and_currencies_are_iso_codes() {
        assert_eq!(payout_id("u1", "k1"), payout_id("u1", "k1"));
        assert_ne!(payout_id("u1", "k1"), payout_id("u2", "k1"));
        assert_ne!(payout_id("u1k", "1"), payout_id("u1", "k1"), "the separator keeps them apart");
        assert!(payout_id("u1", "k1").starts_with("po_"));
        assert!(check_currency("EUR").is_ok());
        for bad in ["eur", "EU", "EURO", "€UR", ""] {
            let e = check_currency(bad).expect_err(bad).to_string();
            assert!(e.starts_with("currency: "), "{e}");
        }
    }
}
