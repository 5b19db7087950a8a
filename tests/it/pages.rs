//! Every list of the admin API is a cursor page with a capped `limit` (issue 16, point 5),
//! and the dashboard's long lists (conversions, review queue, payout queues, a job's runs)
//! link to their next page with the same `cursor` and `limit`; from an empty database through
//! the CLI, the ingress, `/api/v1` and the dashboard of a live `cashbackd serve`, on both
//! backends.
//!
//! Each list is walked one or two rows at a time, following `next_cursor` until it is
//! null, and must give the same rows, in the same order, as one large page: no row lost,
//! none twice. A `limit` of 0 or over the cap is refused with 400, as is a cursor the list
//! did not give.

use crate::accounts::{configure, postback};
use crate::backends;
use crate::callbacks::Sink;
use crate::common::dashboard_sign_in_http;
use crate::public::*;
use serde_json::{Value, json};

/// The rows of `list` in `path`, walked `step` at a time; checks them against one page.
async fn walk(c: &Client, path: &str, list: &str, key: &str, step: usize, cap: usize) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let whole = c.expect(200, "GET", &format!("{path}{sep}limit={cap}"), None).await;
    assert!(whole["next_cursor"].is_null(), "{path}: one page of {cap} holds it all: {whole}");
    let keys = |page: &Value| -> Vec<String> {
        page[list]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no {list} in {page}"))
            .iter()
            .map(|r| r[key].to_string())
            .collect()
    };
    let expected = keys(&whole);
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!(
                "{path}{sep}limit={step}&cursor={}",
                url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            ),
            None => format!("{path}{sep}limit={step}"),
        };
        let page = c.expect(200, "GET", &url, None).await;
        let rows = keys(&page);
        assert!(rows.len() <= step, "{url}: {} rows", rows.len());
        walked.extend(rows);
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(page[list].as_array().map(Vec::len), Some(step), "{url}: a page before the last is full");
                cursor = Some(next.to_string());
            }
            None => break,
        }
        assert!(walked.len() <= expected.len() + step, "{path}: the walk does not end");
    }
    assert_eq!(walked, expected, "{path}: walked {step} at a time");
    // The cap and the bounds.
    for bad in [0, cap + 1] {
        let (status, body) = c.api("GET", &format!("{path}{sep}limit={bad}"), None).await;
        assert_eq!(status, 400, "{path} limit={bad}: {body}");
        assert!(body.to_string().contains("limit"), "{body}");
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_of_the_admin_api_pages_with_a_cursor_and_a_capped_limit() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 300}"#);
        let sink = Sink::start().await;
        i.ok(&["partner", "add", "p1", "--name", "Partner"]);
        for e in ["e1", "e2"] {
            let url = format!("{}/{e}?state=[%CASHBACK:STATE%]", sink.base);
            i.ok_env(
                &["endpoint", "add", e, "--partner", "p1", "--url", &url],
                &[("CASHBACKD_CALLBACK_SECRET", "partner-secret-0123456789")],
            );
        }
        let s = i.serve("pages", &[]);
        let c = Client::new(&s.base, &token);
        for m in ["m2", "m3"] {
            c.expect(200, "PUT", &format!("/api/v1/merchants/{m}"), Some(json!({"name": m}))).await;
        }
        for p in ["p2", "p3"] {
            c.expect(200, "PUT", &format!("/api/v1/partners/{p}"), Some(json!({"name": p}))).await;
        }
        for r in ["r1", "r2", "r3"] {
            let path = format!("/api/v1/networks/net/merchant-refs/{r}");
            c.expect(200, "PUT", &path, Some(json!({"merchant": "shop"}))).await;
        }
        // Five automatic conversions, then three the shop reviews by hand.
        for n in 0..8 {
            if n == 5 {
                let body = json!({"name": "Shop", "manual_review": true, "reward_delay_days": 0});
                c.expect(200, "PUT", "/api/v1/merchants/shop", Some(body)).await;
            }
            let click = c.click(&format!("/c/sale?user=u{n}"), "ref").await;
            let (status, _, body) = c.public(&postback(&click, &format!("T{n}"), "pending", "100.00")).await;
            assert_eq!(status, 200, "{}: {body}", t.name);
        }
        for _ in 0..3 {
            let (status, _, _) = c.public("/postback/net?tid=X&clickref=Y&sale=1&status=pending&token=wrong").await;
            assert!(status >= 400, "a refused postback");
            c.expect(200, "POST", "/api/v1/jobs/mature/run", None).await;
            c.expect(202, "POST", "/api/v1/merchants/shop/backtest", Some(json!({"plugin": "flat-rate@0.1.0"}))).await;
        }

        let conversions = walk(&c, "/api/v1/conversions", "conversions", "id", 2, 1000).await;
        assert!(conversions.len() >= 8, "{}: {conversions:?}", t.name);
        assert_eq!(walk(&c, "/api/v1/review", "queue", "id", 2, 500).await.len(), 3);
        assert_eq!(walk(&c, "/api/v1/merchants", "merchants", "id", 2, 500).await.len(), 3);
        walk(&c, "/api/v1/networks", "networks", "id", 1, 500).await;
        assert!(walk(&c, "/api/v1/users", "users", "id", 3, 500).await.len() >= 8);
        walk(&c, "/api/v1/users/u0/conversions", "conversions", "id", 1, 500).await;
        assert!(walk(&c, "/api/v1/balances", "balances", "owner", 2, 500).await.len() >= 5);
        assert_eq!(walk(&c, "/api/v1/jobs", "jobs", "name", 1, 500).await.len(), 3);
        assert_eq!(walk(&c, "/api/v1/jobs/mature/runs", "runs", "id", 2, 500).await.len(), 3);
        assert_eq!(walk(&c, "/api/v1/plugins", "plugins", "digest", 1, 500).await.len(), 2);
        assert_eq!(walk(&c, "/api/v1/partners", "partners", "id", 2, 500).await.len(), 3);
        assert_eq!(walk(&c, "/api/v1/callbacks/endpoints", "endpoints", "id", 1, 500).await.len(), 2);
        assert!(walk(&c, "/api/v1/callbacks/deliveries", "deliveries", "id", 3, 500).await.len() >= 10);
        walk(&c, "/api/v1/callbacks/endpoints/e1/attempts", "attempts", "id", 1, 500).await;
        walk(&c, "/api/v1/alerts", "alerts", "id", 1, 500).await;
        assert_eq!(walk(&c, "/api/v1/networks/net/rejects", "rejects", "id", 2, 500).await.len(), 3);
        assert_eq!(
            walk(&c, "/api/v1/networks/net/merchant-refs", "merchant_refs", "merchant_ref", 2, 500).await.len(),
            3
        );
        assert_eq!(walk(&c, "/api/v1/backtests", "backtests", "id", 2, 500).await.len(), 3);
        for path in [
            "/api/v1/conversions?cursor=nonsense",
            "/api/v1/backtests?cursor=x",
            "/api/v1/callbacks/deliveries?cursor=x",
        ] {
            let (status, body) = c.api("GET", path, None).await;
            assert_eq!(status, 400, "{path}: {body}");
        }
        drop(s);
        t.cleanup().await;
    }
}

/// The `data-*` ids of the rows in `html` between `from` and `to` (the first `to` after
/// `from`), and the href of the `rel="next"` link there.
fn rows_and_next(html: &str, from: &str, to: &str, attr: &str) -> (Vec<String>, Option<String>) {
    let start = html.find(from).unwrap_or_else(|| panic!("no {from} in the page:\n{html}"));
    let part = &html[start..];
    let part = &part[..part.find(to).unwrap_or(part.len())];
    let needle = format!("{attr}=\"");
    let ids = part
        .match_indices(&needle)
        .map(|(at, _)| part[at + needle.len()..].split('"').next().unwrap_or_default().to_string())
        .collect();
    let next = part.find("rel=\"next\" href=\"").map(|at| {
        part[at + "rel=\"next\" href=\"".len()..].split('"').next().unwrap_or_default().replace("&amp;", "&")
    });
    (ids, next)
}

/// Follows a dashboard list's next links from `first`: every row of every page, in order.
async fn follow(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    first: &str,
    section: (&str, &str),
    attr: &str,
    step: usize,
) -> Vec<String> {
    let mut rows = Vec::new();
    let mut url = Some(first.to_string());
    let mut pages = 0;
    while let Some(u) = url {
        let r = http.get(format!("{base}{u}")).header(reqwest::header::COOKIE, cookie).send().await.expect("page");
        assert_eq!(r.status().as_u16(), 200, "{u}");
        let html = r.text().await.expect("html");
        let (ids, next) = rows_and_next(&html, section.0, section.1, attr);
        assert!(ids.len() <= step, "{u}: {} rows for a page of {step}", ids.len());
        if next.is_some() {
            assert_eq!(ids.len(), step, "{u}: a page before the last is full");
        }
        rows.extend(ids);
        url = next;
        pages += 1;
        assert!(pages < 100, "{first}: the next links do not end");
    }
    rows
}

/// The dashboard's review queue, its parked and failed list, payout queues and a job's
/// runs page with the API's `cursor` and capped `limit` (issue 16, point 5): more rows
/// than one page, made through the CLI, the ingress and `/api/v1` on a fresh install;
/// following the next links from
/// the first page reaches every row exactly once, in the API's order. A `limit` of 0 or
/// over the cap, or a cursor the page did not give, is refused with 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_review_payout_and_run_lists_page_with_next_links_that_reach_every_row_once() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 300}"#);
        let s = i.serve("dashboard-pages", &[]);
        let c = Client::new(&s.base, &token);
        // Five orders approved (3.00 cashback each, available after the maturation run),
        // then three the shop reviews by hand.
        for n in 0..8 {
            if n == 5 {
                c.expect(200, "POST", "/api/v1/jobs/mature/run", None).await;
                let body = json!({"name": "Shop", "manual_review": true, "reward_delay_days": 0});
                c.expect(200, "PUT", "/api/v1/merchants/shop", Some(body)).await;
            }
            let click = c.click("/c/sale?user=payee", "ref").await;
            let status = if n < 5 { "approved" } else { "pending" };
            let (code, _, body) = c.public(&postback(&click, &format!("T{n}"), status, "100.00")).await;
            assert_eq!(code, 200, "{}: {body}", t.name);
        }
        for _ in 0..3 {
            c.expect(200, "POST", "/api/v1/jobs/mature/run", None).await;
        }
        // Five payouts of 1.00; three approved, two left to decide.
        let mut payouts = Vec::new();
        for _ in 0..5 {
            let p = c
                .expect(201, "POST", "/api/v1/users/payee/payouts", Some(json!({"currency": "EUR", "amount": 100})))
                .await;
            payouts.push(p["payout"]["id"].as_str().expect("id").to_string());
        }
        for id in &payouts[..3] {
            c.expect(200, "POST", &format!("/api/v1/payouts/{id}/approve"), None).await;
        }
        let ids = |v: &Value, list: &str, key: &str| -> Vec<String> {
            v[list].as_array().expect("list").iter().map(|r| r[key].to_string().trim_matches('"').to_string()).collect()
        };
        let queue = ids(&c.expect(200, "GET", "/api/v1/review?limit=500", None).await, "queue", "id");
        let requested = ids(
            &c.expect(200, "GET", "/api/v1/payouts?status=requested&order=oldest&limit=500", None).await,
            "payouts",
            "id",
        );
        let approved = ids(
            &c.expect(200, "GET", "/api/v1/payouts?status=approved&order=oldest&limit=500", None).await,
            "payouts",
            "id",
        );
        let runs = ids(&c.expect(200, "GET", "/api/v1/jobs/mature/runs?limit=500", None).await, "runs", "id");
        assert_eq!((queue.len(), requested.len(), approved.len(), runs.len()), (3, 2, 3, 4), "{}", t.name);

        let session = dashboard_sign_in_http(&s.base, &token).await;
        let cookie = format!("{}={session}", cashbackd::dashboard::COOKIE);
        let http = &c.http;
        let walk = |first: &'static str, section: (&'static str, &'static str), attr: &'static str, step| {
            follow(http, &s.base, &cookie, first, section, attr, step)
        };
        let review = ("id=\"review-queue\"", "</section>");
        assert_eq!(walk("/dashboard/review?limit=2", review, "data-conversion", 2).await, queue, "{}", t.name);
        assert_eq!(walk("/dashboard/review?limit=1", review, "data-conversion", 1).await, queue, "{}", t.name);
        let (to_decide, to_pay) = (("<h2>To decide", "</section>"), ("<h2>To pay", "</section>"));
        assert_eq!(walk("/dashboard/payouts?limit=1", to_decide, "data-payout", 1).await, requested, "{}", t.name);
        assert_eq!(walk("/dashboard/payouts?limit=2", to_pay, "data-payout", 2).await, approved, "{}", t.name);
        let on_runs = ("id=\"runs\"", "</section>");
        assert_eq!(walk("/dashboard/jobs?job=mature&limit=3", on_runs, "data-run", 3).await, runs, "{}", t.name);
        // The first page without a limit holds the default 50: everything here, no link.
        assert_eq!(walk("/dashboard/review", review, "data-conversion", 50).await, queue);
        // Three postbacks whose click is unknown are parked: listed under the queue, and
        // paged on their own (`waiting_cursor`), the queue keeping its place.
        for n in 0..3 {
            let (code, _, body) =
                c.public(&postback(&format!("unknown-{n}"), &format!("W{n}"), "pending", "10.00")).await;
            assert_eq!(code, 200, "{}: {body}", t.name);
        }
        // The approved payouts are paid: the closed list, newest first, pages too.
        for (n, id) in payouts[..3].iter().enumerate() {
            let body = json!({"reference": format!("bank-{n}")});
            c.expect(200, "POST", &format!("/api/v1/payouts/{id}/paid"), Some(body)).await;
        }
        let closed = ("id=\"closed\"", "</section>");
        let paid = walk("/dashboard/payouts", closed, "data-payout", 50).await;
        let mut expected = payouts[..3].to_vec();
        expected.sort();
        let mut sorted = paid.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "{}", t.name);
        assert_eq!(walk("/dashboard/payouts?limit=1", closed, "data-payout", 1).await, paid, "{}", t.name);
        assert_eq!(walk("/dashboard/payouts?limit=2", closed, "data-payout", 2).await, paid, "{}", t.name);
        let waiting = ("id=\"waiting\"", "</section>");
        let parked = walk("/dashboard/review", waiting, "data-conversion", 50).await;
        assert_eq!(parked.len(), 3, "{}: {parked:?}", t.name);
        assert_eq!(walk("/dashboard/review?limit=1", waiting, "data-conversion", 1).await, parked, "{}", t.name);
        assert_eq!(walk("/dashboard/review?limit=2", waiting, "data-conversion", 2).await, parked, "{}", t.name);

        for bad in [
            "/dashboard/review?limit=0",
            "/dashboard/review?limit=501",
            "/dashboard/review?cursor=nonsense",
            "/dashboard/review?waiting_cursor=nonsense",
            "/dashboard/payouts?limit=x",
            "/dashboard/payouts?requested_cursor=nonsense",
            "/dashboard/payouts?closed_cursor=nonsense",
            "/dashboard/jobs?job=mature&cursor=x",
        ] {
            let r = http
                .get(format!("{}{bad}", s.base))
                .header(reqwest::header::COOKIE, &cookie)
                .send()
                .await
                .expect("page");
            assert_eq!(r.status().as_u16(), 400, "{bad}");
            let text = r.text().await.unwrap_or_default();
            assert!(text.contains("limit") || text.contains("cursor"), "{bad}: {text}");
        }
        drop(s);
        t.cleanup().await;
    }
}
