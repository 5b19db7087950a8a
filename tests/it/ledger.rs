//! The ledger and the conversion lifecycle, run unchanged against SQLite and PostgreSQL.

use crate::backends::{self, TestDb};
use crate::common::*;
use cashbackd::clock::{DAY_MS, ManualClock};
use cashbackd::conversions::{NewClick, Outcome, ReviewAction, Service, ServiceConfig, State, Status, conversion_id};
use cashbackd::db::Db;
use cashbackd::ledger;
use cashbackd::plugin::wit::latest::{self, ConversionState};
use serde_json::json;
use std::sync::Arc;

pub const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

pub struct World {
    pub service: Service,
    pub clock: Arc<ManualClock>,
    pub rule: String,
}

/// A merchant `shop` (automatic, 30 days' delay) whose rule is flat-rate at 10 % with
/// holds above 1 000.00; user `u1` with click `c1` to `shop`.
pub async fn world(db: Db) -> World {
    let clock = ManualClock::at(T0);
    let service = Service::new(db, runtime().clone(), clock.clone(), ServiceConfig::default());
    let rule = cashbackd::registry::upload(&service, &plugin_bytes(WASIP2, "flat_rate"))
        .await
        .expect("store plugin")
        .plugin
        .digest
        .to_string();
    service.upsert_merchant("shop", "Shop", false, 30).await.expect("merchant");
    service
        .set_rules("shop", &[(rule.clone(), json!({"rate_bps": 1000, "hold_above": 100_000}))])
        .await
        .expect("rules");
    service.register_user("u1", Some("u1@example.com")).await.expect("user");
    service
        .register_click(NewClick {
            click_id: "c1".into(),
            user_id: "u1".into(),
            merchant_id: Some("shop".into()),
            network_id: Some("net".into()),
            ..Default::default()
        })
        .await
        .expect("click");
    World { service, clock, rule }
}

pub fn event(tx: &str, state: ConversionState, amount: i64, commission: i64) -> latest::ConversionEvent {
    latest::ConversionEvent {
        network: "net".into(),
        transaction_id: tx.into(),
        click_id: Some("c1".into()),
        order_id: Some(format!("order-{tx}")),
        event_type: "sale".into(),
        state,
        amount,
        commission,
        currency: "EUR".into(),
        event_time: T0 - 3_600_000,
        reason: None,
        merchant_ref: None,
        line_items: Vec::new(),
        raw: vec![("status".into(), format!("{state:?}"))],
    }
}

pub async fn balance(s: &Service, owner: &str, kind: &str) -> i64 {
    ledger::all_balances(&s.db().pool)
        .await
        .expect("balances")
        .into_iter()
        .find(|b| b.owner == owner && b.kind == kind && b.currency == "EUR")
        .map_or(0, |b| b.balance)
}

pub async fn sound(s: &Service, label: &str) {
    let problems = ledger::check_invariants(&s.db().pool).await.expect("invariants");
    assert!(problems.is_empty(), "{label}: {problems:#?}");
}

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = TestDb>,
{
    for db in backends::all().await {
        let name = db.name;
        eprintln!("-- on {name}");
        test(db).await.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_conversion_credits_pending_cashback_and_books_the_commission() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        let out = w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("ingest");
        assert!(matches!(out, Outcome::Applied { state: State::Pending, status: Status::Processed, .. }), "{out:?}");
        assert_eq!(balance(&w.service, "u1", "pending").await, 1_000, "{}", t.name);
        assert_eq!(balance(&w.service, "u1", "available").await, 0);
        assert_eq!(balance(&w.service, "platform", "commission_receivable").await, 800);
        assert_eq!(balance(&w.service, "platform", "cashback_expense").await, -1_000);
        sound(&w.service, t.name).await;
        // Every entry pins the plugin version and digest that computed it.
        let row: (String, String, String) = sqlx::query_as(
            "SELECT plugin_name, plugin_version, plugin_digest FROM ledger_transactions WHERE conversion_id = $1",
        )
        .bind(conversion_id("net", "tx1"))
        .fetch_one(&w.service.db().pool)
        .await
        .expect("posting");
        assert_eq!((row.0.as_str(), row.1.as_str(), row.2.as_str()), ("flat-rate", "0.1.0", w.rule.as_str()));
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_event_changes_nothing() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        let e = event("tx1", ConversionState::Pending, 10_000, 800);
        w.service.ingest(e.clone()).await.expect("first");
        let before = ledger::all_balances(&w.service.db().pool).await.expect("balances");
        let again = w.service.ingest(e).await.expect("again");
        assert!(matches!(again, Outcome::Duplicate { .. }), "{again:?}");
        assert_eq!(ledger::all_balances(&w.service.db().pool).await.expect("balances"), before);
        let history = w.service.history(&conversion_id("net", "tx1")).await.expect("history");
        assert!(history.iter().any(|h| h.kind == "duplicate"), "{history:?}");
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustment_reevaluates_the_rule_and_posts_the_difference_down_to_zero() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("pending");
        w.service.ingest(event("tx1", ConversionState::Adjusted, 4_000, 320)).await.expect("adjusted");
        assert_eq!(balance(&w.service, "u1", "pending").await, 400);
        assert_eq!(balance(&w.service, "platform", "commission_receivable").await, 320);
        w.service.ingest(event("tx1", ConversionState::Adjusted, 0, 0)).await.expect("to zero");
        assert_eq!(balance(&w.service, "u1", "pending").await, 0);
        let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_transactions WHERE conversion_id = $1")
            .bind(conversion_id("net", "tx1"))
            .fetch_one(&w.service.db().pool)
            .await
            .expect("count");
        assert_eq!(entries, 3, "append-only: each change is a new transaction");
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_cashback_becomes_available_only_after_the_reward_delay() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("pending");
        w.service.ingest(event("tx1", ConversionState::Completed, 10_000, 800)).await.expect("completed");
        assert_eq!(w.service.mature_due().await.expect("mature"), 0, "not before the delay");
        w.clock.advance(30 * DAY_MS - 1);
        assert_eq!(w.service.mature_due().await.expect("mature"), 0, "not one millisecond early");
        w.clock.advance(1);
        assert_eq!(w.service.mature_due().await.expect("mature"), 1);
        assert_eq!(balance(&w.service, "u1", "pending").await, 0);
        assert_eq!(balance(&w.service, "u1", "available").await, 1_000);
        assert_eq!(w.service.mature_due().await.expect("mature"), 0, "matures once");
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_before_its_pending_completes_and_the_late_pending_is_recorded_as_ignored() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.ingest(event("tx1", ConversionState::Completed, 10_000, 800)).await.expect("completed first");
        let late = w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("late pending");
        match late {
            Outcome::Ignored { reason, .. } => {
                assert!(reason.contains("never moves backwards"), "{reason}")
            }
            other => panic!("expected ignored, got {other:?}"),
        }
        let c = w.service.conversion(&conversion_id("net", "tx1")).await.expect("load").expect("exists");
        assert_eq!(c.state, State::Completed);
        let history = w.service.history(&c.id).await.expect("history");
        assert!(
            history.iter().any(|h| h.kind == "ignored" && h.detail.contains("PENDING after COMPLETED")),
            "{history:?}"
        );
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_reverses_pending_and_a_refund_after_payout_is_a_correcting_entry() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("pending");
        w.service.ingest(event("tx1", ConversionState::Rejected, 10_000, 800)).await.expect("rejected");
        assert_eq!(balance(&w.service, "u1", "pending").await, 0);
        assert_eq!(balance(&w.service, "platform", "commission_receivable").await, 0);

        w.service.ingest(event("tx2", ConversionState::Completed, 5_000, 400)).await.expect("completed");
        w.clock.advance(31 * DAY_MS);
        w.service.mature_due().await.expect("mature");
        assert_eq!(balance(&w.service, "u1", "available").await, 500);
        let out = w.service.ingest(event("tx2", ConversionState::Reversed, 5_000, 400)).await.expect("refund");
        assert!(matches!(out, Outcome::Applied { state: State::Reversed, status: Status::Reversed, .. }), "{out:?}");
        assert_eq!(balance(&w.service, "u1", "available").await, 0, "taken back from available");
        // The original credit is still there; a correcting entry follows it.
        let kinds: Vec<String> =
            sqlx::query_scalar("SELECT cause FROM ledger_transactions WHERE conversion_id = $1 ORDER BY id")
                .bind(conversion_id("net", "tx2"))
                .fetch_all(&w.service.db().pool)
                .await
                .expect("causes");
        assert_eq!(kinds, vec!["completed", "matured", "reversed"]);
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_refuses_edits_and_deletions() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("pending");
        let pool = &w.service.db().pool;
        assert!(sqlx::query("UPDATE ledger_entries SET amount = amount + 1").execute(pool).await.is_err());
        assert!(sqlx::query("DELETE FROM ledger_entries").execute(pool).await.is_err());
        assert!(sqlx::query("DELETE FROM ledger_transactions").execute(pool).await.is_err());
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_mode_queues_orders_for_review_and_records_the_operator() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.upsert_merchant("shop", "Shop", true, 30).await.expect("manual mode");
        let out = w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("pending");
        assert!(matches!(out, Outcome::Applied { status: Status::PendingReview, .. }), "{out:?}");
        assert_eq!(balance(&w.service, "u1", "pending").await, 0, "nothing credited before review");
        let queue = w.service.by_status(Status::PendingReview, 10).await.expect("queue");
        assert_eq!(queue.len(), 1);
        w.service.review(&queue[0].id, ReviewAction::Hold, "alice", "checking the invoice").await.expect("hold");
        assert_eq!(w.service.conversion(&queue[0].id).await.expect("load").expect("row").status, Status::Held);
        w.service.review(&queue[0].id, ReviewAction::Approve, "alice", "invoice ok").await.expect("approve");
        assert_eq!(balance(&w.service, "u1", "pending").await, 1_000);
        let who: (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT operator, reason FROM ledger_transactions WHERE conversion_id = $1 AND cause = 'review'",
        )
        .bind(&queue[0].id)
        .fetch_one(&w.service.db().pool)
        .await
        .expect("review posting");
        assert_eq!(who, (Some("alice".into()), Some("invoice ok".into())));
        let err = w.service.review(&queue[0].id, ReviewAction::Reject, "bob", "late").await.expect_err("not in review");
        assert!(err.to_string().contains("not awaiting review"), "{err}");

        w.service.ingest(event("tx2", ConversionState::Pending, 3_000, 200)).await.expect("second");
        w.service.review(&conversion_id("net", "tx2"), ReviewAction::Reject, "bob", "fraud").await.expect("reject");
        let c = w.service.conversion(&conversion_id("net", "tx2")).await.expect("load").expect("row");
        assert_eq!(c.status, Status::Rejected);
        assert_eq!(balance(&w.service, "u1", "pending").await, 1_000, "a rejected order credits nothing");
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_verdict_from_the_rule_sends_the_order_to_review() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        let out = w.service.ingest(event("tx1", ConversionState::Pending, 150_000, 9_000)).await.expect("big order");
        assert!(matches!(out, Outcome::Applied { status: Status::Held, .. }), "{out:?}");
        let c = w.service.conversion(&conversion_id("net", "tx1")).await.expect("load").expect("row");
        assert!(c.status_reason.as_deref().unwrap_or("").contains("above 1000.00 EUR"), "{:?}", c.status_reason);
        assert_eq!(balance(&w.service, "u1", "pending").await, 0);
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_marks_the_conversion_failed_and_it_can_be_reprocessed_after_a_fix() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        install_unproven_rule(&w.service, "shop", "hostile_rule", json!({"mode": "loop"})).await;
        let out = w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("ingest");
        assert!(matches!(out, Outcome::Applied { status: Status::Failed, .. }), "{out:?}");
        let c = w.service.conversion(&conversion_id("net", "tx1")).await.expect("load").expect("row");
        let reason = c.status_reason.unwrap_or_default();
        assert!(reason.contains("hostile-rule@0.1.0") && reason.contains("deadline"), "{reason}");
        assert_eq!(balance(&w.service, "platform", "commission_receivable").await, 0, "a failed step books nothing");
        // The next conversion of another merchant is unaffected; after the fix, it reprocesses.
        w.service.set_rules("shop", &[(w.rule.clone(), json!({"rate_bps": 500}))]).await.expect("fixed rules");
        let again = w.service.reprocess(&c.id).await.expect("reprocess");
        assert!(matches!(again, Outcome::Applied { status: Status::Processed, .. }), "{again:?}");
        assert_eq!(balance(&w.service, "u1", "pending").await, 500);
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_whose_customer_is_unknown_is_parked_then_processed_when_they_appear() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        let mut e = event("tx1", ConversionState::Pending, 10_000, 800);
        e.click_id = Some("c-later".into());
        let out = w.service.ingest(e).await.expect("ingest");
        assert!(matches!(out, Outcome::Applied { status: Status::Parked, .. }), "{out:?}");
        let parked = w.service.by_status(Status::Parked, 10).await.expect("parked");
        assert_eq!(parked.len(), 1, "visible");
        assert!(parked[0].status_reason.as_deref().unwrap_or("").contains("click c-later is unknown"));
        assert_eq!(
            balance(&w.service, "platform", "commission_receivable").await,
            800,
            "the commission is booked anyway"
        );

        // The click arrives, but for a user with no account yet: still parked, now waiting for the user.
        w.service
            .register_click(NewClick {
                click_id: "c-later".into(),
                user_id: "u2".into(),
                merchant_id: Some("shop".into()),
                network_id: Some("net".into()),
                ..Default::default()
            })
            .await
            .expect("click");
        let c = w.service.conversion(&conversion_id("net", "tx1")).await.expect("load").expect("row");
        assert_eq!(c.status, Status::Parked);
        assert!(c.status_reason.as_deref().unwrap_or("").contains("user u2 has no account"), "{:?}", c.status_reason);

        w.service.register_user("u2", None).await.expect("user");
        let c = w.service.conversion(&c.id).await.expect("load").expect("row");
        assert_eq!(c.status, Status::Processed, "processed automatically");
        assert_eq!(balance(&w.service, "u2", "pending").await, 1_000);
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_adjustments_are_idempotent_by_key_and_name_the_operator() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        let first = w.service.adjust("goodwill-1", "u1", "EUR", 250, "carol", "late cashback").await.expect("adjust");
        let again = w.service.adjust("goodwill-1", "u1", "EUR", 250, "carol", "late cashback").await.expect("again");
        assert!(matches!(first, Outcome::Adjusted { posted: true, .. }));
        assert!(matches!(again, Outcome::Adjusted { posted: false, .. }));
        assert_eq!(balance(&w.service, "u1", "available").await, 250);
        assert!(w.service.adjust("k", "u1", "EUR", 1, " ", "x").await.is_err(), "an operator is required");
        sound(&w.service, t.name).await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_journal_from_empty_reproduces_every_balance() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.ingest(event("tx1", ConversionState::Pending, 10_000, 800)).await.expect("1");
        w.service.ingest(event("tx1", ConversionState::Adjusted, 7_000, 560)).await.expect("2");
        w.service.ingest(event("tx1", ConversionState::Completed, 7_000, 560)).await.expect("3");
        w.service.ingest(event("tx2", ConversionState::Pending, 2_000, 100)).await.expect("4");
        w.service.ingest(event("tx2", ConversionState::Rejected, 2_000, 100)).await.expect("5");
        w.clock.advance(40 * DAY_MS);
        w.service.mature_due().await.expect("mature");
        w.service.adjust("k1", "u1", "EUR", 99, "dave", "bonus").await.expect("adjust");
        let fresh =
            if t.name == "sqlite" { backends::sqlite().await } else { backends::postgres().await.expect("postgres") };
        let replayed = w.service.replay_into(&fresh.db).await.expect("replay");
        assert!(replayed >= 9, "{replayed}");
        let original = ledger::all_balances(&w.service.db().pool).await.expect("balances");
        assert_eq!(ledger::all_balances(&fresh.db.pool).await.expect("balances"), original);
        assert!(ledger::check_invariants(&fresh.db.pool).await.expect("invariants").is_empty());
        fresh.cleanup().await;
        t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_are_kept_per_currency() {
    each_backend(|t| async move {
        let w = world(t.db.clone()).await;
        w.service.ingest(event("tx-eur", ConversionState::Pending, 10_000, 800)).await.expect("eur");
        let mut usd = event("tx-usd", ConversionState::Pending, 20_000, 1_500);
        usd.currency = "USD".into();
        w.service.ingest(usd.clone()).await.expect("usd");
        let balances = ledger::user_balances(&w.service.db().pool, "u1").await.expect("balances");
        let pending: Vec<(String, i64)> =
            balances.iter().filter(|b| b.kind == "pending").map(|b| (b.currency.clone(), b.balance)).collect();
        assert_eq!(pending, vec![("EUR".to_string(), 1_000), ("USD".to_string(), 2_000)]);
        // A conversion's currency never changes: an event in another currency is refused.
        usd.currency = "GBP".into();
        usd.state = ConversionState::Adjusted;
        let err = w.service.ingest(usd).await.expect_err("currency change");
        assert!(err.to_string().contains("a currency never changes"), "{err}");
        sound(&w.service, t.name).await;
        t
    })
    .await;
}
