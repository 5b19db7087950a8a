//! Payouts (issue 13, point 3), on SQLite and PostgreSQL: a payout requested, approved and
//! paid through the admin API, one balanced posting per step; rejections and failed
//! payments giving the amount back; the minimum and the balance refusing what they must;
//! a refund after payout booked as a debt repaid from the next cashback, reproduced by a
//! replay of the journal; two replicas racing on one payout or one balance posting once;
//! payout callbacks and digest lines; the dashboard's queue; and the whole way from an
//! empty database to a paid user through the CLI, the ingress and the API of a real
//! `cashbackd serve`.
//!
//! Every amount asserted is worked out in the comment beside it: the world's rule is
//! flat-rate at 10 % (a 100.00 order earns 10.00 of cashback).

use crate::backends;
use crate::callbacks::{Sink, add_endpoint, deliverer};
use crate::common::*;
use crate::ledger::{World, balance, event, sound, world};
use crate::smtp::SmtpSink;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashbackd::auth::{self, Scope};
use cashbackd::callbacks::{EndpointSpec, Events};
use cashbackd::clock::DAY_MS;
use cashbackd::conversions::{Service, ServiceConfig};
use cashbackd::ledger;
use cashbackd::payouts::{self, NewPayout, PayoutAction, PayoutError, PayoutPolicy, PayoutStatus, Refusal, Transition};
use cashbackd::plugin::wit::latest::ConversionState::{Completed, Reversed};
use serde_json::{Value, json};
use tower::ServiceExt;

/// 10.00 EUR, in minor units: the minimum of these tests.
const MINIMUM: i64 = 1_000;

fn policy() -> PayoutPolicy {
    PayoutPolicy { minimum: [("EUR".to_string(), MINIMUM)].into() }
}

/// A completed order of `amount` for u1, matured: its cashback (10 %) becomes available.
async fn earn(w: &World, tx: &str, amount: i64) {
    w.service.ingest(event(tx, Completed, amount, amount / 10)).await.expect("completed");
    w.clock.advance(31 * DAY_MS); // the shop's 30 days' reward delay
    w.service.mature_due().await.expect("mature");
}

async fn request(s: &Service, amount: Option<i64>, key: Option<&str>) -> Result<(payouts::Payout, bool), PayoutError> {
    let new = NewPayout {
        user_id: "u1".into(),
        currency: "EUR".into(),
        amount,
        key: key.map(str::to_string),
        requested_by: "site".into(),
    };
    payouts::service::request(s, &policy(), new).await
}

async fn step(s: &Service, id: &str, action: PayoutAction) -> Result<(payouts::Payout, bool), PayoutError> {
    let t = Transition { action, operator: "ops".into(), expected_version: None };
    payouts::service::transition(s, id, t).await
}

fn paid(reference: &str) -> PayoutAction {
    PayoutAction::MarkPaid { reference: reference.into() }
}

fn failed(reason: &str) -> PayoutAction {
    PayoutAction::MarkFailed { reason: reason.into() }
}

/// u1's available, payout in flight and debt, and the platform's payouts paid.
async fn accounts(s: &Service) -> [i64; 4] {
    [
        balance(s, "u1", "available").await,
        balance(s, "u1", "payout_in_flight").await,
        balance(s, "u1", "debt").await,
        balance(s, "platform", "payouts_paid").await,
    ]
}

/// The causes of a payout's postings, in order.
async fn causes(s: &Service, id: &str) -> Vec<String> {
    payouts::store::postings(s.db(), id).await.expect("postings").into_iter().map(|p| p.cause).collect()
}

fn api(w: &World) -> axum::Router {
    crate::common::server(&w.service).with_payouts(policy()).router()
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: &str,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut r = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
    let response = app.clone().oneshot(r.body(body).expect("request")).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_is_requested_approved_and_paid_through_the_api_with_one_balanced_posting_per_step() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        earn(&w, "A", 40_000).await; // 400.00 order: 40.00 available
        let app = api(&w);
        let site = auth::create_token(s.db(), "site", Scope::Write, s.now(), None).await.expect("token");
        let ops = auth::create_token(s.db(), "ops", Scope::Write, s.now(), None).await.expect("token");
        let read = auth::create_token(s.db(), "viewer", Scope::Read, s.now(), None).await.expect("token");
        let uri = "/api/v1/users/u1/payouts";

        // Refused, each with its reason, and nothing written.
        let (status, v) = call(&app, "POST", uri, &site, None, json!({"currency": "EUR", "amount": 999})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}: {v}", t.name);
        assert_eq!(v["error"]["code"], "below_minimum");
        assert_eq!(message(&v), "amount: 9.99 EUR is below the minimum payout of 10.00 EUR (payouts.minimum.EUR)");
        let (status, v) = call(&app, "POST", uri, &site, None, json!({"currency": "EUR", "amount": 4_001})).await;
        assert_eq!(
            (status, message(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, "amount: 40.01 EUR is more than the available balance of 40.00 EUR")
        );
        let (status, v) = call(&app, "POST", uri, &site, None, json!({"currency": "eur"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&v).starts_with("currency: "), "{v}");
        let (status, v) = call(&app, "POST", uri, &site, None, json!({"currency": "EUR", "amout": 5})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&v).contains("unknown field `amout`"), "{v}");
        let (status, v) =
            call(&app, "POST", "/api/v1/users/nobody/payouts", &site, None, json!({"currency": "EUR"})).await;
        assert_eq!((status, message(&v)), (StatusCode::NOT_FOUND, "no user \"nobody\""));
        let (status, _) = call(&app, "POST", uri, &read, None, json!({"currency": "EUR"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a read token cannot request");
        assert_eq!(accounts(s).await, [4_000, 0, 0, 0], "nothing moved");

        // 12.50 requested: available to in flight. The same key again, even from another
        // token and long after, is the same payout.
        let (status, v) =
            call(&app, "POST", uri, &site, Some("req-1"), json!({"currency": "EUR", "amount": 1_250})).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let id = v["payout"]["id"].as_str().expect("id").to_string();
        assert_eq!((v["payout"]["status"].as_str(), v["payout"]["amount"].as_i64()), (Some("requested"), Some(1_250)));
        assert_eq!(v["payout"]["requested_by"], "site");
        assert_eq!(accounts(s).await, [4_000 - 1_250, 1_250, 0, 0]);
        let (status, again) =
            call(&app, "POST", uri, &ops, Some("req-1"), json!({"currency": "EUR", "amount": 1_250})).await;
        assert_eq!((status, again["created"].as_bool()), (StatusCode::OK, Some(false)), "{again}");
        assert_eq!(again["payout"]["id"].as_str(), Some(id.as_str()));
        let (status, v) =
            call(&app, "POST", uri, &ops, Some("req-1"), json!({"currency": "EUR", "amount": 1_300})).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused"))
        );
        assert_eq!(accounts(s).await, [2_750, 1_250, 0, 0], "one payout for one key");

        // Paid before approval: refused; approved (twice: once changes it); paid without a
        // reference: refused; paid; paid again with the same reference changes nothing,
        // with another is refused; a paid payout cannot be rejected.
        let step_uri = |what: &str| format!("/api/v1/payouts/{id}/{what}");
        let (status, v) = call(&app, "POST", &step_uri("paid"), &ops, None, json!({"reference": "SEPA-1"})).await;
        assert_eq!(
            (status, message(&v)),
            (StatusCode::CONFLICT, format!("payout {id} is requested: approve it before marking it paid").as_str())
        );
        let (status, v) = call(&app, "POST", &step_uri("approve"), &ops, None, Value::Null).await;
        assert_eq!(
            (status, v["changed"].as_bool(), v["payout"]["status"].as_str()),
            (StatusCode::OK, Some(true), Some("approved")),
            "{v}"
        );
        let (_, v) = call(&app, "POST", &step_uri("approve"), &ops, None, json!({})).await;
        assert_eq!(v["changed"].as_bool(), Some(false), "{v}");
        let (status, v) = call(&app, "POST", &step_uri("paid"), &ops, None, json!({})).await;
        assert_eq!((status, message(&v)), (StatusCode::BAD_REQUEST, "reference: required"));
        let (status, v) =
            call(&app, "POST", &step_uri("paid"), &ops, None, json!({"reference": "SEPA-1", "version": 1})).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("stale")),
            "the page saw version 1, it is at 2: {v}"
        );
        let (status, v) =
            call(&app, "POST", &step_uri("paid"), &ops, None, json!({"reference": "SEPA-1", "version": 2})).await;
        assert_eq!(
            (status, v["payout"]["status"].as_str(), v["payout"]["reference"].as_str()),
            (StatusCode::OK, Some("paid"), Some("SEPA-1")),
            "{v}"
        );
        assert_eq!(accounts(s).await, [2_750, 0, 0, 1_250], "in flight out to payouts paid");
        let (status, v) = call(&app, "POST", &step_uri("paid"), &ops, None, json!({"reference": "SEPA-1"})).await;
        assert_eq!((status, v["changed"].as_bool()), (StatusCode::OK, Some(false)));
        let (status, _) = call(&app, "POST", &step_uri("paid"), &ops, None, json!({"reference": "SEPA-2"})).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, v) =
            call(&app, "POST", &step_uri("reject"), &ops, None, json!({"reason": "changed my mind"})).await;
        assert_eq!(
            (status, message(&v)),
            (
                StatusCode::CONFLICT,
                format!("payout {id} is paid: it is paid; if the payment came back, mark it failed").as_str()
            )
        );
        assert_eq!(accounts(s).await, [2_750, 0, 0, 1_250], "refused steps moved nothing");

        // Its history and postings; the list by status, a page at a time.
        let (status, v) = call(&app, "GET", &format!("/api/v1/payouts/{id}"), &read, None, Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        let history: Vec<&str> =
            v["history"].as_array().expect("history").iter().filter_map(|h| h["to_status"].as_str()).collect();
        assert_eq!(history, ["requested", "approved", "paid"]);
        assert_eq!(v["history"][1]["operator"], "ops");
        assert_eq!(causes(s, &id).await, ["payout_requested", "payout_paid"], "approval moves no money");
        for p in v["postings"].as_array().expect("postings") {
            let sum: i64 =
                p["entries"].as_array().expect("entries").iter().map(|e| e[2].as_i64().expect("amount")).sum();
            assert_eq!(sum, 0, "{p}");
        }
        for (key, amount) in [("req-2", 1_000), ("req-3", 1_000)] {
            let (status, v) =
                call(&app, "POST", uri, &site, Some(key), json!({"currency": "EUR", "amount": amount})).await;
            assert_eq!(status, StatusCode::CREATED, "{v}");
            w.clock.advance(1_000);
        }
        assert_eq!(accounts(s).await, [2_750 - 2_000, 2_000, 0, 1_250]);
        let (_, page1) =
            call(&app, "GET", "/api/v1/payouts?status=requested&limit=1&order=oldest", &read, None, Value::Null).await;
        let next = page1["next"].as_str().expect("a next page").to_string();
        let (_, page2) = call(
            &app,
            "GET",
            &format!("/api/v1/payouts?status=requested&limit=1&order=oldest&after={next}"),
            &read,
            None,
            Value::Null,
        )
        .await;
        assert_eq!(page2["next"], Value::Null, "{page2}");
        let ids = [&page1, &page2].map(|p| p["payouts"][0]["id"].as_str().expect("id").to_string());
        assert_ne!(ids[0], ids[1]);
        assert_eq!(page1["payouts"][0]["request_key"], "req-2", "oldest first");
        // A back office acting for a person names them; the token is recorded beside.
        let reject = format!("/api/v1/payouts/{}/reject", ids[1]);
        let (status, v) =
            call(&app, "POST", &reject, &ops, None, json!({"reason": "duplicate", "operator": "alice"})).await;
        assert_eq!((status, v["payout"]["operator"].as_str()), (StatusCode::OK, Some("alice (token ops)")), "{v}");
        assert_eq!(accounts(s).await, [750 + 1_000, 1_000, 0, 1_250], "its 10.00 back");
        let (status, v) = call(&app, "GET", "/api/v1/payouts?status=sent", &read, None, Value::Null).await;
        assert_eq!(
            (status, message(&v)),
            (StatusCode::BAD_REQUEST, "status: \"sent\" is not requested, approved, rejected, paid or failed")
        );
        let (status, _) = call(&app, "GET", "/api/v1/payouts?after=garbage", &read, None, Value::Null).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        sound(s, t.name).await;
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_payout_and_a_failed_or_returned_payment_give_the_amount_back_to_available() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        earn(&w, "A", 50_000).await; // 50.00 available

        // Rejected while requested: 15.00 back.
        let (a, _) = request(s, Some(1_500), None).await.expect("request A");
        let refused = step(s, &a.id, PayoutAction::Reject { reason: "  ".into() }).await.expect_err("no reason");
        assert_eq!(refused.to_string(), "reason: required");
        assert_eq!(accounts(s).await, [3_500, 1_500, 0, 0], "{}", t.name);
        let (a, changed) =
            step(s, &a.id, PayoutAction::Reject { reason: "bank details missing".into() }).await.expect("reject");
        assert!(changed);
        assert_eq!(
            (a.status, a.reason.as_deref(), a.operator.as_deref()),
            (PayoutStatus::Rejected, Some("bank details missing"), Some("ops"))
        );
        assert!(a.closed_at.is_some());
        assert_eq!(accounts(s).await, [5_000, 0, 0, 0]);
        assert!(
            matches!(
                step(s, &a.id, PayoutAction::Approve).await,
                Err(PayoutError::Refused(Refusal::Transition { .. }))
            ),
            "closed"
        );

        // Never approved: it cannot fail, only be rejected.
        let (b, _) = request(s, Some(2_000), None).await.expect("request B");
        let e = step(s, &b.id, failed("bounced")).await.expect_err("not approved");
        assert_eq!(e.to_string(), format!("payout {} is requested: it was never approved: reject it instead", b.id));
        // Approved, its payment failed: 20.00 back.
        step(s, &b.id, PayoutAction::Approve).await.expect("approve B");
        assert_eq!(accounts(s).await, [3_000, 2_000, 0, 0]);
        let (b, _) = step(s, &b.id, failed("IBAN closed")).await.expect("failed");
        assert_eq!(b.status, PayoutStatus::Failed);
        assert_eq!(accounts(s).await, [5_000, 0, 0, 0]);
        assert_eq!(causes(s, &b.id).await, ["payout_requested", "payout_failed"]);

        // Paid, then the payment came back: from payouts paid to available.
        let (c, _) = request(s, None, None).await.expect("all of it");
        assert_eq!(c.amount, 5_000, "without an amount: all of the available balance");
        step(s, &c.id, PayoutAction::Approve).await.expect("approve C");
        step(s, &c.id, paid("SEPA-77")).await.expect("paid C");
        assert_eq!(accounts(s).await, [0, 0, 0, 5_000]);
        assert!(request(s, None, None).await.is_err(), "nothing left to pay out");
        let (c, _) = step(s, &c.id, failed("returned by the bank")).await.expect("came back");
        assert_eq!((c.status, c.reference.as_deref()), (PayoutStatus::Failed, Some("SEPA-77")), "the reference stays");
        assert_eq!(accounts(s).await, [5_000, 0, 0, 0]);
        assert_eq!(causes(s, &c.id).await, ["payout_requested", "payout_paid", "payout_failed"]);
        let history = payouts::store::history(s.db(), &c.id).await.expect("history");
        assert!(
            history
                .last()
                .is_some_and(|h| h.detail.contains("payment came back") && h.detail.contains("returned by the bank")),
            "{history:?}"
        );
        assert!(step(s, &c.id, paid("SEPA-78")).await.is_err(), "failed is final");
        assert!(matches!(
            step(s, "po_nothing", PayoutAction::Approve).await,
            Err(PayoutError::Refused(Refusal::NotFound(_)))
        ));
        sound(s, t.name).await;
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_payout_becomes_a_debt_repaid_first_from_the_next_cashback_and_a_replay_reproduces_it() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        earn(&w, "A", 60_000).await; // 60.00 available
        earn(&w, "B", 20_000).await; // 20.00 more: 80.00
        let (p, _) = request(s, Some(7_000), None).await.expect("request");
        step(s, &p.id, PayoutAction::Approve).await.expect("approve");
        step(s, &p.id, paid("SEPA-1")).await.expect("paid");
        assert_eq!(accounts(s).await, [1_000, 0, 0, 7_000], "{}", t.name);

        // A is refunded: its 60.00 is taken back. 10.00 is available; the other 50.00 is
        // owed. Available never goes below zero.
        s.ingest(event("A", Reversed, 60_000, 6_000)).await.expect("refund");
        assert_eq!(accounts(s).await, [0, 0, -5_000, 7_000]);
        assert_eq!(balance(s, "platform", "cashback_expense").await, -2_000, "only B's 20.00 is still granted");
        let debt: (String, String) =
            sqlx::query_as("SELECT cause, reason FROM ledger_transactions WHERE idempotency_key = $1")
                .bind(format!(
                    "{}:{}:reversed:debt",
                    cashbackd::conversions::conversion_id("net", "A"),
                    journal_seq_of(s, "A", "reversed").await
                ))
                .fetch_one(&s.db().pool)
                .await
                .expect("the debt posting");
        assert_eq!(debt.0, "debt");
        assert!(debt.1.contains("-50.00 EUR"), "{}", debt.1);
        assert!(request(s, None, None).await.is_err(), "nothing available");

        // C earns 30.00: all of it repays the debt (20.00 still owed); D earns 25.00: 20.00
        // repays the rest, 5.00 is available.
        earn(&w, "C", 30_000).await;
        assert_eq!(accounts(s).await, [0, 0, -2_000, 7_000]);
        earn(&w, "D", 25_000).await;
        assert_eq!(accounts(s).await, [500, 0, 0, 7_000]);
        let repaid: Vec<String> =
            sqlx::query_scalar("SELECT cause FROM ledger_transactions WHERE cause LIKE 'debt%' ORDER BY id")
                .fetch_all(&s.db().pool)
                .await
                .expect("causes");
        assert_eq!(repaid, ["debt", "debt_repayment", "debt_repayment"]);

        // A rejected payout's amount repays a debt first too.
        earn(&w, "E", 15_000).await; // 15.00: 20.00 available
        let (q, _) = request(s, Some(1_500), None).await.expect("request");
        s.ingest(event("E", Reversed, 15_000, 1_500)).await.expect("refund E"); // 15.00 back: 5.00 available, 10.00 owed
        assert_eq!(accounts(s).await, [0, 1_500, -1_000, 7_000]);
        step(s, &q.id, PayoutAction::Reject { reason: "refund pending".into() }).await.expect("reject");
        assert_eq!(accounts(s).await, [500, 0, 0, 7_000], "15.00 back: 10.00 repays, 5.00 available");

        // Every balance is the fold of its entries, every posting balances, and replaying
        // the journal into an empty database reproduces every balance.
        sound(s, t.name).await;
        let negative: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts WHERE kind IN ('available', 'payout_in_flight', 'payouts_paid') AND balance < 0",
        )
        .fetch_one(&s.db().pool)
        .await
        .expect("count");
        assert_eq!(negative, 0);
        let fresh =
            if t.name == "sqlite" { backends::sqlite().await } else { backends::postgres().await.expect("postgres") };
        s.replay_into(&fresh.db).await.expect("replay");
        let replayed = ledger::all_balances(&fresh.db.pool).await.expect("balances");
        assert_eq!(replayed, ledger::all_balances(&s.db().pool).await.expect("balances"));
        let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM payouts ORDER BY requested_at, id")
            .fetch_all(&fresh.db.pool)
            .await
            .expect("replayed payouts");
        assert_eq!(statuses, ["paid", "rejected"]);
        fresh.cleanup().await;
        t.cleanup().await;
    }
}

/// The journal entry of a conversion's step (its postings are keyed by it).
async fn journal_seq_of(s: &Service, tx: &str, cause: &str) -> i64 {
    sqlx::query_scalar("SELECT journal_seq FROM ledger_transactions WHERE conversion_id = $1 AND cause = $2")
        .bind(cashbackd::conversions::conversion_id("net", tx))
        .bind(cause)
        .fetch_one(&s.db().pool)
        .await
        .expect("journal seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_on_one_payout_or_one_balance_post_once() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let a = w.service.clone();
        // A second replica: its own pool and its own writer on the same database.
        let db = cashbackd::db::Db::connect(t.url()).await.expect("second replica");
        let b = Service::new(db, runtime().clone(), w.clock.clone(), ServiceConfig::default());
        earn(&w, "A", 100_000).await; // 100.00 available

        // Rounds of two replicas marking one approved payout paid with different
        // references at the same moment, and rejecting one and paying another... Each
        // payout ends paid once, with one of the two references, and one posting.
        let mut ids = Vec::new();
        for round in 0..4 {
            let (p, _) = request(&a, Some(1_000), None).await.expect("request");
            step(&b, &p.id, PayoutAction::Approve).await.expect("approve");
            let (x, y) = tokio::join!(
                step(&a, &p.id, paid(&format!("A-{round}"))),
                step(&b, &p.id, paid(&format!("B-{round}")))
            );
            let won: Vec<&payouts::Payout> =
                [&x, &y].into_iter().filter_map(|r| r.as_ref().ok()).map(|(p, _)| p).collect();
            assert_eq!(won.len(), 1, "{}: round {round}: exactly one reference wins: {x:?} {y:?}", t.name);
            let loser = if x.is_ok() { &y } else { &x };
            if t.name == "postgres" {
                // The loser waited for the winner's row lock, then saw it paid.
                assert!(matches!(loser, Err(PayoutError::Refused(Refusal::Transition { .. }))), "{loser:?}");
            }
            let stored = payouts::store::get(a.db(), &p.id).await.expect("read").expect("payout");
            assert_eq!((stored.status, stored.reference.as_deref()), (PayoutStatus::Paid, won[0].reference.as_deref()));
            assert_eq!(causes(&a, &p.id).await, ["payout_requested", "payout_paid"], "paid once");
            ids.push(p.id);
        }
        // A rejection racing a payment: one of them, never both.
        let (p, _) = request(&a, Some(1_000), None).await.expect("request");
        step(&a, &p.id, PayoutAction::Approve).await.expect("approve");
        let (x, y) = tokio::join!(
            step(&a, &p.id, PayoutAction::Reject { reason: "fraud check".into() }),
            step(&b, &p.id, paid("B-last"))
        );
        assert!(x.is_ok() != y.is_ok(), "{}: one of reject and paid: {x:?} {y:?}", t.name);
        let end = payouts::store::get(a.db(), &p.id).await.expect("read").expect("payout");
        let expected_causes =
            if x.is_ok() { ["payout_requested", "payout_rejected"] } else { ["payout_requested", "payout_paid"] };
        assert_eq!(causes(&a, &p.id).await, expected_causes, "{:?}", end.status);
        let paid_out = 4 * 1_000 + if x.is_ok() { 0 } else { 1_000 };
        assert_eq!(accounts(&a).await, [10_000 - paid_out, 0, 0, paid_out]);

        // Two replicas each asking for 60.00 of what is left at once: one is refused,
        // the balance never goes below zero.
        let left = 10_000 - paid_out;
        let ask = left / 2 + 1_000;
        let new = |key: &str| NewPayout {
            user_id: "u1".into(),
            currency: "EUR".into(),
            amount: Some(ask),
            key: Some(key.into()),
            requested_by: "site".into(),
        };
        let limits = policy();
        let (x, y) = tokio::join!(
            payouts::service::request(&a, &limits, new("race-a")),
            payouts::service::request(&b, &limits, new("race-b"))
        );
        assert!(x.is_ok() != y.is_ok(), "{}: one request of two: {x:?} {y:?}", t.name);
        if t.name == "postgres" {
            let loser = if x.is_ok() { &y } else { &x };
            assert!(matches!(loser, Err(PayoutError::Refused(Refusal::Insufficient { .. }))), "{loser:?}");
        }
        assert_eq!(accounts(&a).await, [left - ask, ask, 0, paid_out]);
        // And the same key at once on both: one payout.
        let (x, y) = tokio::join!(
            payouts::service::request(&a, &limits, NewPayout { amount: Some(1_000), ..new("same") }),
            payouts::service::request(&b, &limits, NewPayout { amount: Some(1_000), ..new("same") })
        );
        let made: Vec<bool> =
            [&x, &y].into_iter().filter_map(|r| r.as_ref().ok()).map(|(_, created)| *created).collect();
        assert!(made.iter().filter(|c| **c).count() <= 1, "{}: {x:?} {y:?}", t.name);
        let same: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM payouts WHERE request_key = 'same'")
            .fetch_one(&a.db().pool)
            .await
            .expect("count");
        assert_eq!(same, 1);
        assert_eq!(accounts(&a).await, [left - ask - 1_000, ask + 1_000, 0, paid_out]);
        sound(&a, t.name).await;
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_who_ask_for_payout_events_get_every_step_and_the_digest_tells_the_user_what_was_paid_or_failed() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        let sink = Sink::start().await;
        // One endpoint for payouts only (GET, its own macros); one for conversions only
        // (as every endpoint was before payouts); one POST endpoint for both.
        let mut payouts_only = EndpointSpec::new(
            "pay",
            "p1",
            &format!(
                "{}/pay?t={{type}}&id={{payout_id}}&s={{payout_status}}&amt={{payout_amount}}&minor={{payout_amount_minor}}\
                 &ref={{payout_reference}}&u={{user_id}}&cur={{currency}}&why={{reason}}&order={{order_id}}",
                sink.base
            ),
        );
        payouts_only.events = Events::parse(["payouts"]).expect("events");
        add_endpoint(&w, payouts_only).await;
        add_endpoint(&w, EndpointSpec::new("conv", "p1", &format!("{}/conv?state=[%CASHBACK:STATE%]", sink.base)))
            .await;
        let mut both = EndpointSpec::new("both", "p1", &format!("{}/both", sink.base));
        both.method = cashbackd::callbacks::Method::Post;
        both.events = Events { conversions: true, payouts: true };
        add_endpoint(&w, both).await;

        earn(&w, "A", 40_000).await; // 40.00 available
        let (p, _) = request(s, Some(2_500), None).await.expect("request");
        step(s, &p.id, PayoutAction::Approve).await.expect("approve");
        step(s, &p.id, paid("SEPA-9")).await.expect("paid");
        let (q, _) = request(s, Some(1_200), None).await.expect("request");
        step(s, &q.id, PayoutAction::Approve).await.expect("approve");
        step(s, &q.id, failed("account closed")).await.expect("failed");
        let d = deliverer(&w, "payouts-test");
        let summary = d.run_due().await.expect("deliver");
        assert_eq!(summary.failed + summary.retrying, 0, "{}: {summary:?}", t.name);

        let received = sink.received();
        let pay: Vec<_> = received.iter().filter(|r| r.path == "/pay").collect();
        // In order per payout (payouts are independent of each other).
        let steps = |id: &str| -> Vec<String> {
            pay.iter().filter(|r| r.param("id").as_deref() == Some(id)).filter_map(|r| r.param("s")).collect()
        };
        assert_eq!(steps(&p.id), ["requested", "approved", "paid"], "{}", t.name);
        assert_eq!(steps(&q.id), ["requested", "approved", "failed"], "{}", t.name);
        assert_eq!(pay.len(), 6, "each step once");
        let of = |id: &str, status: &str| {
            *pay.iter()
                .find(|r| r.param("id").as_deref() == Some(id) && r.param("s").as_deref() == Some(status))
                .expect("a step")
        };
        let paid_cb = of(&p.id, "paid");
        for (param, value) in [
            ("t", "payout.changed"),
            ("amt", "25.00"),
            ("minor", "2500"),
            ("ref", "SEPA-9"),
            ("u", "u1"),
            ("cur", "EUR"),
            ("order", ""),
        ] {
            assert_eq!(paid_cb.param(param).as_deref(), Some(value), "{param} in {}", paid_cb.query);
        }
        assert_eq!(of(&q.id, "failed").param("why").as_deref(), Some("account closed"));
        // The conversions endpoint got the conversion, not one payout event; the POST
        // endpoint both, payouts as `payout.changed` bodies.
        let conv: Vec<String> =
            received.iter().filter(|r| r.path == "/conv").filter_map(|r| r.param("state")).collect();
        assert_eq!(conv, ["COMPLETED"]);
        let bodies: Vec<Value> = received
            .iter()
            .filter(|r| r.path == "/both")
            .map(|r| serde_json::from_str(&r.body).expect("json"))
            .collect();
        assert_eq!(bodies.len(), 7, "one conversion change, six payout steps");
        let last = bodies
            .iter()
            .find(|b| b["type"] == "payout.changed" && b["data"]["status"] == "failed")
            .expect("the failed payout's body");
        assert_eq!(last["data"]["payout_id"].as_str(), Some(q.id.as_str()));
        assert_eq!(
            (last["data"]["status"].as_str(), last["data"]["amount"].as_str(), last["data"]["amount_minor"].as_i64()),
            (Some("failed"), Some("12.00"), Some(1_200))
        );
        assert_eq!(last["data"]["reason"], "account closed");

        // The digest: the conversion, the paid payout and the failed one.
        let smtp = SmtpSink::start().await;
        let config = cashbackd::notify::NotifyConfig { smtp_url: Some(smtp.url()), ..Default::default() };
        let notifier = cashbackd::notify::Notifier::new(s.db().clone(), w.clock.clone(), config).expect("notifier");
        let batch = notifier.run().await.expect("digest");
        assert_eq!((batch.users, batch.sent), (1, 1), "{batch:?}");
        let mail = smtp.accepted().pop().expect("a digest");
        let text = mail.data.replace("=\r\n", "").replace("\r\n", "\n");
        assert!(text.contains("Subject: Your cashback: 3 updates"), "{text}");
        assert!(text.contains("- Payout of 25.00 EUR: paid (reference SEPA-9)."), "{text}");
        assert!(
            text.contains("- Payout of 12.00 EUR: the payment did not go through (account closed); the amount is back in your available balance."),
            "{text}"
        );
        assert!(
            !text.contains("requested") && !text.contains("approved"),
            "requests and approvals are the site's to tell: {text}"
        );
        t.cleanup().await;
    }
}

fn page_request(method: &str, uri: &str, session: &str, form: &[(&str, &str)]) -> Request<Body> {
    let r = Request::builder()
        .method(method)
        .uri(uri)
        .header("cookie", format!("{}={session}", cashbackd::dashboard::COOKIE))
        .header("content-type", "application/x-www-form-urlencoded");
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    r.body(Body::from(body)).expect("request")
}

async fn page(app: &axum::Router, request: Request<Body>) -> (StatusCode, Option<String>, String) {
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = axum::body::to_bytes(response.into_body(), 8 << 20).await.expect("body");
    (status, location, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_decide_payouts_from_the_dashboard_queue_and_the_overview_counts_those_of_today() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        earn(&w, "A", 40_000).await; // 40.00 available
        let (p, _) = request(s, Some(2_500), None).await.expect("request P");
        let (q, _) = request(s, Some(1_000), None).await.expect("request Q");
        let app = api(&w);
        let write = auth::create_token(s.db(), "reviewer", Scope::Write, s.now(), None).await.expect("token");
        let read = auth::create_token(s.db(), "viewer", Scope::Read, s.now(), None).await.expect("token");
        // The pages take a session, opened through the login form.
        let write = crate::common::dashboard_sign_in(&app, &write).await.expect("sign in");
        let read_token = read;
        let read = crate::common::dashboard_sign_in(&app, &read_token).await.expect("sign in");

        // The queue, read-only for a read token.
        let (status, _, body) = page(&app, page_request("GET", "/dashboard/payouts", &read, &[])).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", t.name);
        assert!(
            body.contains(&format!("data-payout=\"{}\"", p.id)) && body.contains(&format!("data-payout=\"{}\"", q.id))
        );
        assert!(body.contains("25.00 EUR") && body.contains("needs write"), "{body}");
        assert!(!body.contains("value=\"approve\""), "no action for a read token");
        let (_, _, overview) = page(&app, page_request("GET", "/dashboard", &write, &[])).await;
        let at = overview.find("name=\"csrf\" value=\"").expect("csrf") + "name=\"csrf\" value=\"".len();
        let csrf = overview[at..].split('"').next().expect("csrf").to_string();
        let (_, _, queue) = page(&app, page_request("GET", "/dashboard/payouts", &write, &[])).await;
        assert!(queue.contains("value=\"approve\"") && queue.contains("name=\"version\" value=\"1\""), "{queue}");

        let act = |id: &str, form: Vec<(&'static str, String)>| {
            let mut pairs = vec![("csrf", csrf.clone())];
            pairs.extend(form);
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            page_request("POST", &format!("/dashboard/payouts/{id}"), &write, &pairs)
        };
        let (status, location, _) =
            page(&app, act(&p.id, vec![("action", "approve".into()), ("version", "1".into())])).await;
        assert_eq!(
            (status, location.as_deref()),
            (StatusCode::SEE_OTHER, Some(format!("/dashboard/payouts?done=approve&id={}", p.id).as_str()))
        );
        // A second operator on the same page: refused, told why.
        let (status, _, body) =
            page(&app, act(&p.id, vec![("action", "approve".into()), ("version", "1".into())])).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(body.contains("it changed meanwhile"), "{body}");
        let (status, _, body) =
            page(&app, act(&p.id, vec![("action", "paid".into()), ("reference", " ".into())])).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body.contains("reference: required"), "{body}");
        let (status, _, _) = page(
            &app,
            act(&p.id, vec![("action", "paid".into()), ("reference", "SEPA-5".into()), ("version", "2".into())]),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (status, _, body) = page(&app, act(&q.id, vec![("action", "reject".into()), ("reason", "".into())])).await;
        assert_eq!((status, body.contains("reason: required")), (StatusCode::UNPROCESSABLE_ENTITY, true));
        let (status, location, _) =
            page(&app, act(&q.id, vec![("action", "reject".into()), ("reason", "duplicate request".into())])).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (_, _, done) = page(&app, page_request("GET", location.as_deref().expect("location"), &write, &[])).await;
        assert!(done.contains(&format!("Payout {} rejected", q.id)), "{done}");
        assert_eq!(accounts(s).await, [4_000 - 2_500, 0, 0, 2_500], "P paid, Q's 10.00 back");

        // One payout's page: its steps by this operator, its postings.
        let (status, _, detail) =
            page(&app, page_request("GET", &format!("/dashboard/payouts/{}", p.id), &read, &[])).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            detail.contains("approved by reviewer") && detail.contains("SEPA-5") && detail.contains("payout_paid"),
            "{detail}"
        );
        let (status, _, _) = page(&app, page_request("GET", "/dashboard/payouts/po_none", &read, &[])).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The overview: two payouts requested today (35.00), one paid (25.00).
        let (_, _, json) = page(&app, page_request("GET", "/dashboard/overview.json", &read, &[])).await;
        let v: Value = serde_json::from_str(&json).expect("json");
        let m = &v["metrics"];
        assert_eq!(
            (m["payouts_requested_today"].as_i64(), m["payouts_requested_amount"]["EUR"].as_i64()),
            (Some(2), Some(3_500)),
            "{v}"
        );
        assert_eq!(
            (m["payouts_paid_today"].as_i64(), m["payouts_paid_amount"]["EUR"].as_i64()),
            (Some(1), Some(2_500))
        );
        assert_eq!(
            (v["display"]["payouts_requested_amount"].as_str(), v["display"]["payouts_paid_amount"].as_str()),
            (Some("35.00 EUR"), Some("25.00 EUR"))
        );
        // Where the 40.00 issued is: 15.00 available, 25.00 paid out.
        assert_eq!(
            v["display"]["cashback_split"], "0.00 EUR pending · 15.00 EUR available · 25.00 EUR paid out",
            "{v}"
        );
        // Tomorrow they are yesterday's (and the session has expired: 12 hours).
        w.clock.advance(DAY_MS);
        let (status, _, _) = page(&app, page_request("GET", "/dashboard/overview.json", &read, &[])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: the session expired", t.name);
        let read = crate::common::dashboard_sign_in(&app, &read_token).await.expect("sign in");
        let (_, _, json) = page(&app, page_request("GET", "/dashboard/overview.json", &read, &[])).await;
        let v: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            (v["metrics"]["payouts_requested_today"].as_i64(), v["metrics"]["payouts_paid_today"].as_i64()),
            (Some(0), Some(0))
        );
        t.cleanup().await;
    }
}

// ---- from an empty database to a paid user, through the public interfaces ------------------

/// The `cashbackd` binary with none of the caller's cashbackd settings.
fn cashbackd(url: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cashbackd"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("CASHBACKD_") || n == "DATABASE_URL") {
            c.env_remove(name);
        }
    }
    c.args(["--database-url", url, "--plugin-store"]).arg(shared_store());
    c
}

fn run(c: &mut std::process::Command) -> String {
    let out = c.output().expect("run cashbackd");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{c:?}: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cashbackd serve` on a free port; killed when dropped.
struct Serve(std::process::Child, String);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(url: &str) -> Serve {
    use std::io::BufRead;
    let mut child = cashbackd(url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        // The operator's settings: a 5.00 EUR minimum; the partner's endpoint is on this
        // machine (loopback), which callbacks refuse unless allowed.
        .env("CASHBACKD_PAYOUTS_MINIMUM", "EUR=500")
        .env("CASHBACKD_CALLBACKS_ALLOW_PRIVATE", "true")
        .env("CASHBACKD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start cashbackd serve");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = lines.next().expect("cashbackd exited before listening").expect("stdout");
        if let Some(url) = line.strip_prefix("cashbackd listening on ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Serve(child, base)
}

/// Sends a request with a JSON body (none for null) and reads the JSON answer.
async fn json_of(request: reqwest::RequestBuilder, body: Value) -> (reqwest::StatusCode, Value) {
    let request = if body.is_null() {
        request
    } else {
        request.header("content-type", "application/json").body(body.to_string())
    };
    let r = request.send().await.expect("send");
    let status = r.status();
    (status, serde_json::from_str(&r.text().await.expect("body")).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_empty_database_to_a_paid_user_through_the_cli_the_ingress_and_the_api() {
    let mut databases = vec![backends::sqlite().await];
    databases.extend(backends::postgres().await);
    for t in databases {
        let url = t.url().to_string();
        run(cashbackd(&url).arg("migrate"));
        let partner = Sink::start().await;

        // The operator's setup, by CLI: a merchant paying 10 % with no reward delay, a
        // network posting back through generic-s2s, a tracked link, a partner whose
        // endpoints take conversions and payouts, and the site's API token.
        run(cashbackd(&url)
            .args(["merchant", "add", "shop", "--name", "Shop", "--reward-delay-days", "0"])
            .args(["--rule-config", r#"{"rate_bps": 1000}"#, "--rule"])
            .arg(plugin_path(WASIP2, "flat_rate")));
        let adapter = json!({"params": {"transaction_id": "tid", "click_id": "clickref", "order_id": "oid",
                                        "amount": "sale", "commission": "comm", "state": "status", "currency": "cur"},
                             "states": {"pending": "PENDING", "approved": "COMPLETED", "refunded": "REVERSED"}});
        run(cashbackd(&url)
            .args([
                "network",
                "add",
                "net",
                "--name",
                "Net",
                "--auth",
                "token",
                "--config",
                &adapter.to_string(),
                "--adapter",
            ])
            .arg(plugin_path(WASIP2, "generic_s2s"))
            .env("CASHBACKD_NETWORK_SECRET", "net-t0ken"));
        run(cashbackd(&url).args([
            "link",
            "add",
            "l1",
            "--merchant",
            "shop",
            "--network",
            "net",
            "--url",
            "https://shop.example/?c={click_id}",
        ]));
        run(cashbackd(&url).args(["partner", "add", "app", "--name", "Rewards App"]));
        let payout_url = format!(
            "{}/payouts?id={{payout_id}}&s={{payout_status}}&amt={{payout_amount}}&ref={{payout_reference}}&u={{user_id}}",
            partner.base
        );
        run(cashbackd(&url).args([
            "endpoint",
            "add",
            "app-payouts",
            "--partner",
            "app",
            "--events",
            "payouts",
            "--url",
            &payout_url,
        ]));
        run(cashbackd(&url)
            .args(["endpoint", "add", "app-conversions", "--partner", "app", "--url"])
            .arg(format!("{}/conversions?state=[%CASHBACK:STATE%]&payout={{payout}}", partner.base)));
        let bad = cashbackd(&url)
            .args(["endpoint", "add", "x", "--partner", "app", "--events", "payout", "--url", "https://p.example/"])
            .output()
            .expect("run");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("--events: \"payout\" is not conversions or payouts"),
            "{}",
            t.name
        );
        let token = run(cashbackd(&url).args(["token", "create", "site", "--scope", "write"])).trim().to_string();

        let server = serve(&url);
        let base = server.1.clone();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let api =
            |method: reqwest::Method, path: &str| http.request(method, format!("{base}{path}")).bearer_auth(&token);
        // The site's user: the first click creates the account (ingress.create_users_on_click);
        // the site gives it the e-mail for the digests, through the API.
        let (status, v) = json_of(
            api(reqwest::Method::PUT, "/api/v1/users/newbie"),
            json!({"email": "newbie@example.com", "name": "Newbie"}),
        )
        .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{v}");
        let balances = || async {
            let (_, v) = json_of(api(reqwest::Method::GET, "/api/v1/balances?user=newbie"), Value::Null).await;
            let of = |kind: &str| {
                v["balances"]
                    .as_array()
                    .expect("balances")
                    .iter()
                    .find(|b| b["kind"] == kind && b["currency"] == "EUR")
                    .map_or(0, |b| b["balance"].as_i64().expect("balance"))
            };
            [of("available"), of("payout_in_flight"), of("debt")]
        };

        // A click, a pending postback, its approval; the maturity job makes it available.
        let order = |tid: &'static str, sale: &'static str, status: &'static str| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http.get(format!("{base}/c/l1?user=newbie")).send().await.expect("click");
                assert_eq!(r.status(), reqwest::StatusCode::FOUND);
                let to = url::Url::parse(r.headers()["location"].to_str().expect("location")).expect("url");
                let click = to.query_pairs().find(|(k, _)| k == "c").expect("click id").1.into_owned();
                for status in ["pending", status] {
                    let pb = format!(
                        "{base}/postback/net?tid={tid}&clickref={click}&oid=O-{tid}&sale={sale}&comm=1.00&cur=EUR&status={status}&token=net-t0ken"
                    );
                    let r = http.get(pb).send().await.expect("postback");
                    assert_eq!(r.status(), reqwest::StatusCode::OK, "{}", r.text().await.unwrap_or_default());
                }
                click
            }
        };
        let click = order("T-1", "120.00", "approved").await; // 12.00 of cashback
        let r = api(reqwest::Method::POST, "/api/v1/jobs/mature/run").send().await.expect("mature");
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        assert_eq!(balances().await, [1_200, 0, 0], "{}", t.name);

        // The site asks for 4.00 (below the 5.00 minimum), then for all of it.
        let (status, v) = json_of(
            api(reqwest::Method::POST, "/api/v1/users/newbie/payouts"),
            json!({"currency": "EUR", "amount": 400}),
        )
        .await;
        assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            v["error"]["message"],
            "amount: 4.00 EUR is below the minimum payout of 5.00 EUR (payouts.minimum.EUR)"
        );
        let (status, v) = json_of(
            api(reqwest::Method::POST, "/api/v1/users/newbie/payouts").header("idempotency-key", "newbie-1"),
            json!({"currency": "EUR"}),
        )
        .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{v}");
        let id = v["payout"]["id"].as_str().expect("id").to_string();
        assert_eq!(v["payout"]["amount"], 1_200);
        assert_eq!(balances().await, [0, 1_200, 0]);

        // The operator approves it by CLI; the API marks it paid with the bank's reference.
        let listed = run(cashbackd(&url).args(["payout", "list", "--status", "requested"]));
        assert!(listed.contains(&id) && listed.contains("12.00 EUR"), "{listed}");
        let bad = cashbackd(&url).args(["payout", "list", "--status", "sent"]).output().expect("run");
        assert!(String::from_utf8_lossy(&bad.stderr).contains("--status: \"sent\" is not requested"), "{bad:?}");
        let approved = run(cashbackd(&url).args(["payout", "approve", &id, "--operator", "ops-alice"]));
        assert!(approved.contains(&format!("payout {id} is approved")), "{approved}");
        let (status, v) = json_of(
            api(reqwest::Method::POST, &format!("/api/v1/payouts/{id}/paid")),
            json!({"reference": "SEPA-2026-001"}),
        )
        .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{v}");
        assert_eq!(balances().await, [0, 0, 0]);
        let shown = run(cashbackd(&url).args(["payout", "show", &id]));
        assert!(
            shown.contains("paid") && shown.contains("SEPA-2026-001") && shown.contains("approved by ops-alice"),
            "{shown}"
        );
        assert!(shown.contains("platform/payouts_paid 12.00 EUR"), "{shown}");

        // The partner heard every step of the payout, and the conversion's states.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let states = || -> Vec<String> {
            partner.received().iter().filter(|r| r.path == "/conversions").filter_map(|r| r.param("state")).collect()
        };
        let heard = loop {
            let got: Vec<(String, String, String, String)> = partner
                .received()
                .iter()
                .filter(|r| r.path == "/payouts")
                .map(|r| {
                    (
                        r.param("s").unwrap_or_default(),
                        r.param("amt").unwrap_or_default(),
                        r.param("ref").unwrap_or_default(),
                        r.param("u").unwrap_or_default(),
                    )
                })
                .collect();
            if (got.len() >= 3 && states().len() >= 3) || std::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string(), "newbie".to_string());
        assert_eq!(
            heard,
            [s("requested", "12.00", ""), s("approved", "12.00", ""), s("paid", "12.00", "SEPA-2026-001")],
            "{}",
            t.name
        );
        // Seed 001: CREATED on the click, then the states of its conversion.
        assert_eq!(states(), ["CREATED", "PENDING", "COMPLETED"]);

        // The order is refunded after it was paid out: 12.00 owed, available stays at 0;
        // the next order's 8.00 repays it first.
        let refund = format!(
            "{base}/postback/net?tid=T-1&clickref={click}&oid=O-T-1&sale=120.00&comm=1.00&cur=EUR&status=refunded&token=net-t0ken"
        );
        let r = http.get(refund).send().await.expect("refund");
        assert_eq!(r.status(), reqwest::StatusCode::OK, "{}", r.text().await.unwrap_or_default());
        assert_eq!(balances().await, [0, 0, -1_200]);
        order("T-2", "80.00", "approved").await; // 8.00 of cashback
        api(reqwest::Method::POST, "/api/v1/jobs/mature/run").send().await.expect("mature");
        assert_eq!(balances().await, [0, 0, -400]);
        let (status, v) =
            json_of(api(reqwest::Method::POST, "/api/v1/users/newbie/payouts"), json!({"currency": "EUR"})).await;
        assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "nothing to pay out while owing: {v}");
        drop(server);
        let db = cashbackd::db::Db::connect(&url).await.expect("db");
        assert!(ledger::check_invariants(&db.pool).await.expect("invariants").is_empty());
        db.pool.close().await;
        t.cleanup().await;
    }
}
