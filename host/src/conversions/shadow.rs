//! Shadow evaluation: a candidate rule version runs beside the active chain on every live
//! conversion of its merchant, and its decision is recorded next to the live one, never
//! posted. The registry starts and stops a candidate (`registry::set_shadow`); the
//! evaluation itself belongs to the write path, which calls this module.

use super::rules::{Link, RuleInputs};
use crate::db::Db;
use crate::ledger::PluginRefs;
use crate::plugin::wit::latest;
use sqlx::Row;

/// The merchant's shadow candidate, if it has one: its plugin's digest, its position in
/// the chain and its configuration.
pub async fn candidate(db: &Db, merchant: &str) -> Result<Option<(String, usize, String)>, sqlx::Error> {
    let row = sqlx::query("SELECT position, plugin_digest, config FROM merchant_shadow WHERE merchant_id = $1")
        .bind(merchant)
        .fetch_optional(&db.pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let position: i64 = row.try_get(0)?;
    Ok(Some((row.try_get(1)?, usize::try_from(position).unwrap_or(usize::MAX), row.try_get(2)?)))
}

/// `chain` with `link` at `position` (appended when past the end).
pub fn substitute(chain: &[Link], position: usize, link: Link) -> Vec<Link> {
    let mut out = chain.to_vec();
    if position < out.len() {
        out[position] = link;
    } else {
        out.push(link);
    }
    out
}

/// Records the candidate's decision next to the live one.
pub async fn record_shadow(
    db: &Db,
    merchant: &str,
    inputs: &RuleInputs,
    live_refs: &PluginRefs,
    live: &Result<latest::RuleDecision, String>,
    candidate: &str,
    outcome: &Result<latest::RuleDecision, String>,
) -> Result<(), sqlx::Error> {
    let total = |r: &Result<latest::RuleDecision, String>| r.as_ref().ok().map(|d| d.total.minor);
    let error = |r: &Result<latest::RuleDecision, String>| r.as_ref().err().cloned();
    sqlx::query(
        "INSERT INTO shadow_decisions (merchant_id, conversion_id, candidate_digest, active_digests, currency, \
         active_cashback, shadow_cashback, active_error, shadow_error, shadow_decision, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (conversion_id, candidate_digest) DO UPDATE SET active_digests = excluded.active_digests, \
         active_cashback = excluded.active_cashback, shadow_cashback = excluded.shadow_cashback, \
         active_error = excluded.active_error, shadow_error = excluded.shadow_error, \
         shadow_decision = excluded.shadow_decision, at = excluded.at",
    )
    .bind(merchant)
    .bind(&inputs.order.conversion_id)
    .bind(candidate)
    .bind(&live_refs.digests)
    .bind(&inputs.order.amount.currency)
    .bind(total(live))
    .bind(total(outcome))
    .bind(error(live))
    .bind(error(outcome))
    .bind(outcome.as_ref().ok().and_then(|d| serde_json::to_string(d).ok()))
    .bind(inputs.now)
    .execute(&db.pool)
    .await?;
    Ok(())
}
