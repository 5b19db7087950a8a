//! Two `cashbackd serve` replicas on one PostgreSQL, racing on the same conversions: for
//! each of 150 PENDING conversions, replica A receives ADJUSTED (90.00) and replica B
//! COMPLETED (80.00) at the same moment. COMPLETED is final, so whichever order the
//! database saw, every conversion must end COMPLETED at 80.00, and what the conversions
//! say they booked must equal the ledger's balances. (Before writes checked the version
//! they were decided on, 63 of 150 ended ADJUSTED and the books disagreed.)

use crate::backends;
use crate::public::*;
use serde_json::Value;
use std::sync::Arc;

const TOKEN: &str = "race-token-0123456789";
const CONVERSIONS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_on_every_conversion_lose_no_update() {
    let Some(t) = backends::postgres().await else { return };
    let i = Install::new(&t);
    let token = i.admin_token();
    i.ok(&["plugin", "upload", &arg(&component("flat_rate"))]);
    i.ok(&["merchant", "add", "shop", "--name", "Shop"]);
    i.ok(&["plugin", "activate", "flat-rate@0.1.0", "--merchant", "shop", "--config", r#"{"rate_bps": 1000}"#]);
    let config = r#"{"params": {"transaction_id": "tid", "click_id": "clickref", "amount": "sale", "commission": "comm",
        "state": "status"}, "states": {"pending": "PENDING", "adjusted": "ADJUSTED", "approved": "COMPLETED"},
        "default_currency": "EUR"}"#;
    i.ok_env(
        &["network", "add", "net", "--name", "Net", "--adapter", &arg(&component("generic_s2s")), "--config", config],
        &[("CASHBACKD_NETWORK_SECRET", TOKEN)],
    );
    i.ok(&[
        "link",
        "add",
        "sale",
        "--merchant",
        "shop",
        "--network",
        "net",
        "--url",
        "https://shop.example/?ref={click_id}",
    ]);
    let a = i.serve("a", &[]);
    let b = i.serve("b", &[]);
    let ca = Arc::new(Client::new(&a.base, &token));
    let cb = Arc::new(Client::new(&b.base, &token));
    let click = ca.click("/c/sale?user=racer", "ref").await;
    let pb = |tx: usize, status: &str, sale: &str| {
        format!("/postback/net?tid=R{tx}&clickref={click}&sale={sale}&comm=5.00&status={status}&token={TOKEN}")
    };
    for n in 0..CONVERSIONS {
        let (status, _, body) = ca.public(&pb(n, "pending", "100.00")).await;
        assert_eq!(status, 200, "{body}");
    }
    // Every pair at once, all pairs at once: each replica's writer batches its half.
    let mut pairs = Vec::new();
    for n in 0..CONVERSIONS {
        let (ca, cb) = (ca.clone(), cb.clone());
        let (adjusted, completed) = (pb(n, "adjusted", "90.00"), pb(n, "approved", "80.00"));
        pairs.push(tokio::spawn(async move {
            let (x, y) = tokio::join!(ca.public(&adjusted), cb.public(&completed));
            (x, y)
        }));
    }
    for p in pairs {
        let ((sa, _, ba), (sb, _, bb)) = p.await.expect("pair");
        assert_eq!((sa, sb), (200, 200), "A: {ba}\nB: {bb}");
    }
    let mut booked = 0;
    let mut wrong = Vec::new();
    let page = ca.expect(200, "GET", "/api/v1/conversions?user=racer&limit=1000", None).await;
    let rows = page["conversions"].as_array().expect("conversions");
    assert_eq!(rows.len(), CONVERSIONS);
    for c in rows {
        let facts = (c["state"].as_str(), c["amount"].as_i64(), c["cashback"].as_i64());
        if facts != (Some("COMPLETED"), Some(8000), Some(800)) {
            wrong.push(format!("{} {facts:?}", c["transaction_id"]));
        }
        // Within the 30-day reward delay: everything is still pending.
        booked += c["posted"]["pending"].as_i64().expect("posted") + c["posted"]["available"].as_i64().expect("posted");
    }
    assert!(wrong.is_empty(), "{} of {CONVERSIONS} lost their COMPLETED: {wrong:?}", wrong.len());
    let user = ca.expect(200, "GET", "/api/v1/users/racer", None).await;
    let ledger = balance(&user, "EUR", "pending") + balance(&user, "EUR", "available");
    assert_eq!((booked, ledger), (CONVERSIONS as i64 * 800, CONVERSIONS as i64 * 800), "{user}");
    let history: Value =
        ca.expect(200, "GET", &format!("/api/v1/conversions/{}", rows[0]["id"].as_str().expect("id")), None).await;
    assert!(history["history"].as_array().is_some_and(|h| !h.is_empty()));
    drop((a, b));
    t.cleanup().await;
}

/// Two replicas reprocess the same failed conversions at the same moment (an operator on
/// each, after the broken rule was replaced): each conversion is credited once, by one
/// of them, and their answers add up to the number of conversions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_reprocessing_the_same_failed_conversions_credit_each_once() {
    const FAILED: usize = 12;
    let Some(t) = backends::postgres().await else { return };
    let i = Install::new(&t);
    let token = i.admin_token();
    i.ok(&["plugin", "upload", &arg(&component("looping_rule_v1"))]);
    i.ok(&["merchant", "add", "shop", "--name", "Shop"]);
    i.ok(&["plugin", "activate", "looping-rule@1.0.0", "--merchant", "shop"]);
    let config = r#"{"params": {"transaction_id": "tid", "click_id": "clickref", "amount": "sale", "commission": "comm",
        "state": "status"}, "states": {"pending": "PENDING"}, "default_currency": "EUR"}"#;
    i.ok_env(
        &["network", "add", "net", "--name", "Net", "--adapter", &arg(&component("generic_s2s")), "--config", config],
        &[("CASHBACKD_NETWORK_SECRET", TOKEN)],
    );
    i.ok(&[
        "link",
        "add",
        "sale",
        "--merchant",
        "shop",
        "--network",
        "net",
        "--url",
        "https://shop.example/?ref={click_id}",
    ]);
    let a = i.serve("a", &[]);
    let b = i.serve("b", &[]);
    let ca = Arc::new(Client::new(&a.base, &token));
    let cb = Arc::new(Client::new(&b.base, &token));
    let click = ca.click("/c/sale?user=again", "ref").await;
    // 1.0.0 loops on orders of 50.00 or more: every one fails on its deadline.
    for n in 0..FAILED {
        let path =
            format!("/postback/net?tid=F{n}&clickref={click}&sale=100.00&comm=5.00&status=pending&token={TOKEN}");
        let (status, _, body) = ca.public(&path).await;
        assert_eq!(status, 200, "{body}");
    }
    i.ok(&["plugin", "upload", &arg(&component("looping_rule_v2"))]);
    i.ok(&["plugin", "activate", "looping-rule@1.0.1", "--merchant", "shop"]);
    let body = Some(serde_json::json!({"status": "failed", "merchant": "shop"}));
    let (ra, rb) = tokio::join!(
        ca.expect(200, "POST", "/api/v1/conversions/reprocess", body.clone()),
        cb.expect(200, "POST", "/api/v1/conversions/reprocess", body.clone())
    );
    let done = ra["reprocessed"].as_i64().expect("a") + rb["reprocessed"].as_i64().expect("b");
    assert_eq!(done, FAILED as i64, "each conversion processed by one replica: A {ra}, B {rb}");
    let page = ca.expect(200, "GET", "/api/v1/conversions?user=again&limit=1000", None).await;
    for c in page["conversions"].as_array().expect("conversions") {
        assert_eq!(c["status"], "processed", "{c}");
        let tl = ca.expect(200, "GET", &format!("/api/v1/conversions/{}", c["id"].as_str().expect("id")), None).await;
        let credits = tl["postings"].as_array().expect("postings").iter().filter(|p| p["cause"] == "reprocess").count();
        assert_eq!(credits, 1, "{tl}");
    }
    let user = ca.expect(200, "GET", "/api/v1/users/again", None).await;
    // 2 % of 100.00, once per conversion.
    assert_eq!(balance(&user, "EUR", "pending"), FAILED as i64 * 200, "{user}");
    drop((a, b));
    t.cleanup().await;
}
