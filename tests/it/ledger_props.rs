//! Property tests of the ledger and lifecycle: random sequences of network events
//! (duplicates, reorderings, adjustments, rejections, reversals), operator reviews,
//! maturation and manual adjustments, on both backends. After every sequence:
//!
//! - every transaction balances per currency and each currency sums to zero;
//! - each balance equals the fold of its entries, and each conversion's bookings equal
//!   the fold of its own postings;
//! - no conversion's state ever moved backwards;
//! - re-applying any event changes nothing;
//! - replaying the journal from empty reproduces every balance exactly.
//!
//! `PROPTEST_CASES` sets the number of sequences per backend (default 12).

use crate::backends;
use crate::ledger::{event, world};
use cashbackd::clock::DAY_MS;
use cashbackd::conversions::{Outcome, ReviewAction, conversion_id};
use cashbackd::ledger;
use cashbackd::plugin::wit::latest::{ConversionEvent, ConversionState};
use proptest::prelude::*;
use sqlx::Row;

#[derive(Debug, Clone)]
enum Op {
    Event { tx: u8, state: ConversionState, amount: i64, commission: i64 },
    Repeat { index: usize },
    Review { tx: u8, action: ReviewAction },
    Advance { days: i64 },
    Adjust { user: u8, amount: i64 },
    ManualMode(bool),
}

fn state() -> impl Strategy<Value = ConversionState> {
    prop_oneof![
        1 => Just(ConversionState::Created),
        4 => Just(ConversionState::Pending),
        3 => Just(ConversionState::Adjusted),
        3 => Just(ConversionState::Completed),
        2 => Just(ConversionState::Rejected),
        2 => Just(ConversionState::Reversed),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..4, state(), 0i64..200_000, 0i64..20_000)
            .prop_map(|(tx, state, amount, commission)| Op::Event { tx, state, amount, commission }),
        2 => (0usize..64).prop_map(|index| Op::Repeat { index }),
        2 => (0u8..4, prop_oneof![Just(ReviewAction::Approve), Just(ReviewAction::Reject), Just(ReviewAction::Hold)])
            .prop_map(|(tx, action)| Op::Review { tx, action }),
        2 => (0i64..45).prop_map(|days| Op::Advance { days }),
        1 => (0u8..2, -500i64..500).prop_map(|(user, amount)| Op::Adjust { user, amount }),
        1 => any::<bool>().prop_map(Op::ManualMode),
    ]
}

fn rank(state: &str) -> u8 {
    match state {
        "CREATED" => 0,
        "PENDING" => 1,
        "ADJUSTED" => 2,
        "COMPLETED" => 3,
        "REJECTED" => 4,
        _ => 5, // REVERSED
    }
}

async fn run_sequence(ops: Vec<Op>, postgres: bool) -> Result<(), TestCaseError> {
    let Some(t) = (if postgres { backends::postgres().await } else { Some(backends::sqlite().await) }) else {
        return Ok(()); // PostgreSQL skipped (recorded by `backends::postgres`)
    };
    let w = world(t.db.clone()).await;
    let s = &w.service;
    let mut sent: Vec<ConversionEvent> = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Event { tx, state, amount, commission } => {
                let e = event(&format!("tx{tx}"), state, amount, commission);
                s.ingest(e.clone()).await.map_err(|e| TestCaseError::fail(format!("ingest: {e}")))?;
                sent.push(e);
            }
            Op::Repeat { index } if !sent.is_empty() => {
                let e = sent[index % sent.len()].clone();
                let out = s.ingest(e).await.map_err(|e| TestCaseError::fail(format!("repeat: {e}")))?;
                prop_assert!(matches!(out, Outcome::Duplicate { .. }), "a repeated event must be a duplicate: {out:?}");
            }
            Op::Repeat { .. } => {}
            Op::Review { tx, action } => {
                // Refused unless the conversion awaits review; either way nothing breaks.
                let _ = s.review(&conversion_id("net", &format!("tx{tx}")), action, "prop", "property test").await;
            }
            Op::Advance { days } => {
                w.clock.advance(days * DAY_MS);
                s.mature_due().await.map_err(|e| TestCaseError::fail(format!("mature: {e}")))?;
            }
            Op::Adjust { user, amount } => {
                s.adjust(&format!("adj-{i}"), &format!("u{user}"), "EUR", amount, "prop", "property test")
                    .await
                    .map_err(|e| TestCaseError::fail(format!("adjust: {e}")))?;
            }
            Op::ManualMode(manual) => {
                s.upsert_merchant("shop", "Shop", manual, 30).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
    }
    let pool = &s.db().pool;
    let problems = ledger::check_invariants(pool).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(problems.is_empty(), "{problems:#?}");

    // Each conversion's bookings are the fold of its own postings.
    let rows = sqlx::query(
        "SELECT c.id, c.posted_pending, c.posted_available, c.posted_receivable, \
           CAST(COALESCE(SUM(CASE WHEN a.kind = 'pending' THEN e.amount ELSE 0 END), 0) AS BIGINT), \
           CAST(COALESCE(SUM(CASE WHEN a.kind = 'available' THEN e.amount ELSE 0 END), 0) AS BIGINT), \
           CAST(COALESCE(SUM(CASE WHEN a.kind = 'commission_receivable' THEN e.amount ELSE 0 END), 0) AS BIGINT) \
         FROM conversions c LEFT JOIN ledger_transactions t ON t.conversion_id = c.id \
         LEFT JOIN ledger_entries e ON e.transaction_id = t.id LEFT JOIN accounts a ON a.id = e.account_id \
         GROUP BY c.id, c.posted_pending, c.posted_available, c.posted_receivable",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for r in rows {
        let v: Vec<i64> = (1..7).map(|i| r.try_get::<i64, _>(i).unwrap_or(i64::MIN)).collect();
        prop_assert_eq!((v[0], v[1], v[2]), (v[3], v[4], v[5]), "bookings of {:?}", r.try_get::<String, _>(0).ok());
    }

    // States never move backwards.
    let transitions = sqlx::query(
        "SELECT conversion_id, to_state FROM conversion_history WHERE to_state IS NOT NULL \
         AND kind IN ('created', 'pending', 'adjusted', 'completed', 'rejected', 'reversed') ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut last: std::collections::HashMap<String, u8> = Default::default();
    for r in transitions {
        let (id, to): (String, String) = (r.try_get(0).unwrap_or_default(), r.try_get(1).unwrap_or_default());
        let before = last.insert(id.clone(), rank(&to)).unwrap_or(0);
        prop_assert!(rank(&to) >= before, "{id} moved backwards to {to}");
    }

    // Re-applying any event changes nothing.
    let before = ledger::all_balances(pool).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    for e in &sent {
        let out = s.ingest(e.clone()).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(matches!(out, Outcome::Duplicate { .. }), "{out:?}");
    }
    prop_assert_eq!(&ledger::all_balances(pool).await.map_err(|e| TestCaseError::fail(e.to_string()))?, &before);

    // Replaying the journal from empty reproduces every balance.
    let fresh = if postgres {
        backends::postgres().await.ok_or_else(|| TestCaseError::fail("postgres vanished"))?
    } else {
        backends::sqlite().await
    };
    s.replay_into(&fresh.db).await.map_err(|e| TestCaseError::fail(format!("replay: {e}")))?;
    let replayed = ledger::all_balances(&fresh.db.pool).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    fresh.cleanup().await;
    t.cleanup().await;
    prop_assert_eq!(replayed, before);
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12);
    ProptestConfig { cases, max_shrink_iters: 64, failure_persistence: None, ..ProptestConfig::default() }
}

fn check(postgres: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    proptest!(config(), |(ops in proptest::collection::vec(op(), 1..24))| {
        rt.block_on(run_sequence(ops, postgres))?;
    });
}

#[test]
fn ledger_invariants_hold_for_random_event_sequences_on_sqlite() {
    check(false);
}

#[test]
fn ledger_invariants_hold_for_random_event_sequences_on_postgres() {
    check(true);
}
