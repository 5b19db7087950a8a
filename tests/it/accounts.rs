//! Issue 13, proven the way a new operator meets cashbackd: a fresh, empty database, the
//! `cashbackd` commands, a real `cashbackd serve`, the ingress and `/api/v1`. Nothing
//! here calls into the crate: user accounts, parked conversions and what resolves each,
//! reprocessing after a broken rule, and signed user ids on links. On both databases.

use crate::backends;
use crate::callbacks::Sink;
use crate::public::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The generic S2S mapping of INGEST.md's first network (every state mapped).
const S2S_CONFIG: &str = r#"{"params": {"transaction_id": "tid", "click_id": "clickref", "amount": "sale",
    "commission": "comm", "state": "status", "currency": "cur"},
    "states": {"pending": "PENDING", "adjusted": "ADJUSTED", "approved": "COMPLETED", "declined": "REJECTED",
               "reversed": "REVERSED"},
    "default_currency": "EUR"}"#;
const TOKEN: &str = "net-token-0123456789";

/// A merchant `shop` with `rule@version` active (config `rule_config`), a network `net`
/// (generic S2S, token auth), and a tracked link `sale`: all through the CLI.
pub(crate) fn configure(i: &Install, rule: (&str, &str), rule_config: &str) {
    i.ok(&["plugin", "upload", &arg(&component(rule.0))]);
    i.ok(&["merchant", "add", "shop", "--name", "Shop", "--reward-delay-days", "0"]);
    i.ok(&["plugin", "activate", rule.1, "--merchant", "shop", "--config", rule_config]);
    add_network_and_link(i);
}

/// A network `net` (generic S2S, token auth) and a tracked link `sale` to `shop`.
pub(crate) fn add_network_and_link(i: &Install) {
    i.ok_env(
        &[
            "network",
            "add",
            "net",
            "--name",
            "Net",
            "--adapter",
            &arg(&component("generic_s2s")),
            "--config",
            S2S_CONFIG,
            "--auth",
            "token",
        ],
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
}

pub(crate) fn postback(click: &str, tx: &str, status: &str, sale: &str) -> String {
    format!("/postback/net?tid={tx}&clickref={click}&sale={sale}&comm=1.00&status={status}&cur=EUR&token={TOKEN}")
}

async fn conversion(c: &Client, tx: &str) -> Value {
    let v = c.expect(200, "GET", &format!("/api/v1/conversions?transaction={tx}"), None).await;
    v["conversions"][0].clone()
}

async fn timeline(c: &Client, id: &str) -> Value {
    c.expect(200, "GET", &format!("/api/v1/conversions/{id}"), None).await
}

fn history_says(t: &Value, needle: &str) -> bool {
    t["history"].as_array().into_iter().flatten().any(|h| h["detail"].as_str().unwrap_or("").contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_install_credits_a_new_user_from_click_to_available_with_callbacks() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 300}"#);
        let partner = Sink::start().await;
        i.ok(&["partner", "add", "p1", "--name", "Partner"]);
        let url = format!("{}/cb?state=[%CASHBACK:STATE%]&tx={{transaction_id}}&pay={{payout}}", partner.base);
        i.ok_env(
            &["endpoint", "add", "e1", "--partner", "p1", "--url", &url],
            &[("CASHBACKD_CALLBACK_SECRET", "partner-secret-0123456789")],
        );
        let s = i.serve("a", &[]);
        let c = Client::new(&s.base, &token);

        // A user the site never told cashbackd about clicks: the click creates the account.
        let click = c.click("/c/sale?user=newbie&sub1=home", "ref").await;
        let user = c.expect(200, "GET", "/api/v1/users/newbie", None).await;
        assert_eq!(user["source"], "click", "{}: {user}", t.name);
        let (status, _, body) = c.public(&postback(&click, "T1", "pending", "100.00")).await;
        assert_eq!(status, 200, "{}: {body}", t.name);
        let cv = conversion(&c, "T1").await;
        assert_eq!((cv["state"].as_str(), cv["status"].as_str()), (Some("PENDING"), Some("processed")), "{cv}");
        // 3 % of 100.00, rounded down: 3.00.
        let user = c.expect(200, "GET", "/api/v1/users/newbie", None).await;
        assert_eq!((balance(&user, "EUR", "pending"), balance(&user, "EUR", "available")), (300, 0), "{user}");

        let (status, _, body) = c.public(&postback(&click, "T1", "approved", "100.00")).await;
        assert_eq!(status, 200, "{body}");
        // The reward delay is 0 days: the maturation job makes it available.
        let run = c.expect(200, "POST", "/api/v1/jobs/mature/run", None).await;
        assert_eq!(run["outcome"], "ok", "{run}");
        let user = c.expect(200, "GET", "/api/v1/users/newbie", None).await;
        assert_eq!((balance(&user, "EUR", "pending"), balance(&user, "EUR", "available")), (0, 300), "{user}");

        // What the site shows its customer.
        let page = c.expect(200, "GET", "/api/v1/users/newbie/conversions", None).await;
        let list = page["conversions"].as_array().expect("list");
        assert_eq!(list.len(), 1, "{page}");
        assert_eq!((list[0]["state"].as_str(), list[0]["cashback"].as_i64()), (Some("COMPLETED"), Some(300)));
        assert_eq!(page["next_cursor"], Value::Null);

        // The partner is told every state, with the payout.
        let got = eventually(30, "the PENDING and COMPLETED callbacks", || {
            let partner = partner.clone();
            async move {
                let states: Vec<(String, String)> = partner
                    .received()
                    .iter()
                    .filter(|r| r.status == 200 && r.param("tx").as_deref() == Some("T1"))
                    .map(|r| (r.param("state").unwrap_or_default(), r.param("pay").unwrap_or_default()))
                    .collect();
                (states.len() >= 2).then_some(states)
            }
        })
        .await;
        assert!(got.contains(&("PENDING".into(), "3.00".into())), "{got:?}");
        assert!(got.contains(&("COMPLETED".into(), "3.00".into())), "{got:?}");
        drop(s);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_created_by_the_site_process_the_conversions_parked_for_them() {
    for t in backends::all().await {
        let mut i = Install::new(&t);
        i.env.push(("CASHBACKD_INGRESS_CREATE_USERS_ON_CLICK".into(), "false".into()));
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 500}"#);
        let s = i.serve("a", &[]);
        let c = Client::new(&s.base, &token);

        // Clicks do not create accounts here: the conversions park.
        let mut clicks = Vec::new();
        for (n, user) in ["late-api", "late-cli", "late-csv", "late-csv2"].iter().enumerate() {
            let click = c.click(&format!("/c/sale?user={user}"), "ref").await;
            let (status, _, body) = c.public(&postback(&click, &format!("P{n}"), "pending", "40.00")).await;
            assert_eq!(status, 200, "{body}");
            clicks.push(click);
        }
        let (status, _) = c.api("GET", "/api/v1/users/late-api", None).await;
        assert_eq!(status, 404, "{}: no account yet", t.name);
        let cv = conversion(&c, "P0").await;
        assert_eq!(cv["status"], "parked", "{cv}");
        assert_eq!(cv["status_reason"], "customer not found: user late-api has no account yet");

        // The API: 201 for a new account, with the conversions it processed.
        let put = c
            .expect(201, "PUT", "/api/v1/users/late-api", Some(json!({"email": "ann@example.com", "name": "Ann"})))
            .await;
        assert_eq!(put["processed"], json!([cv["id"]]), "{put}");
        assert_eq!(balance(&put["user"], "EUR", "pending"), 200, "5 % of 40.00: {put}");
        let tl = timeline(&c, cv["id"].as_str().expect("id")).await;
        assert!(history_says(&tl, "user late-api's account exists now"), "{tl}");
        assert_eq!(tl["conversion"]["status"], "processed");
        // A second PUT updates the profile, 200, and processes nothing.
        let put = c.expect(200, "PUT", "/api/v1/users/late-api", Some(json!({"email": "ann@example.org"}))).await;
        assert_eq!(
            (put["user"]["email"].as_str(), put["processed"].as_array().map(Vec::len)),
            (Some("ann@example.org"), Some(0))
        );
        // Bad input: a clear 400 naming the field, nothing stored.
        let bad = c.expect(400, "PUT", "/api/v1/users/x1", Some(json!({"email": "not an address"}))).await;
        assert!(bad["error"]["message"].as_str().unwrap_or("").starts_with("email:"), "{bad}");
        c.expect(422, "PUT", "/api/v1/users/x1", Some(json!({"emial": "a@b.c"}))).await;
        c.expect(404, "GET", "/api/v1/users/x1", None).await;

        // The CLI, one user.
        let out = i.ok(&["user", "add", "late-cli", "--email", "bob@example.com"]);
        assert!(out.contains("user late-cli created") && out.contains("processed 1 parked conversion"), "{out}");
        let err = i.fails(&["user", "add", "x2", "--email", "nope"]);
        assert!(err.contains("email: \"nope\" is not an e-mail address"), "{err}");

        // A CSV import: every row checked first (a bad row writes nothing), then all.
        let bad = i.dir.path().join("bad.csv");
        std::fs::write(&bad, "id,email\nlate-csv,c@example.com\nlate-csv2,broken\n").expect("csv");
        let err = i.fails(&["user", "import", &arg(&bad)]);
        assert!(err.contains("line 3: email: \"broken\" is not an e-mail address"), "{err}");
        c.expect(404, "GET", "/api/v1/users/late-csv", None).await;
        let good = i.dir.path().join("users.csv");
        std::fs::write(&good, "id,email,name\nlate-csv,c@example.com,Cy\nlate-csv2,,\nlate-api,ann@example.net,Ann\n")
            .expect("csv");
        let out = i.ok(&["user", "import", &arg(&good)]);
        assert!(out.contains("2 created, 1 updated; 2 parked conversion(s) processed"), "{out}");
        for (tx, user) in [("P2", "late-csv"), ("P3", "late-csv2")] {
            let cv = conversion(&c, tx).await;
            assert_eq!((cv["status"].as_str(), cv["user_id"].as_str()), (Some("processed"), Some(user)), "{cv}");
        }

        // Listing, paginated by cursor; show.
        let page = c.expect(200, "GET", "/api/v1/users?limit=2", None).await;
        let ids: Vec<&str> = page["users"].as_array().expect("users").iter().filter_map(|u| u["id"].as_str()).collect();
        assert_eq!(ids, ["late-api", "late-cli"], "{page}");
        let next = page["next_cursor"].as_str().expect("cursor");
        let page = c.expect(200, "GET", &format!("/api/v1/users?limit=2&cursor={next}"), None).await;
        let ids: Vec<&str> = page["users"].as_array().expect("users").iter().filter_map(|u| u["id"].as_str()).collect();
        assert_eq!(ids, ["late-csv", "late-csv2"], "{page}");
        assert_eq!(page["next_cursor"], Value::Null);
        let list = i.ok(&["user", "list"]);
        assert_eq!(list.lines().count(), 4, "{list}");
        let show = i.ok(&["user", "show", "late-cli"]);
        assert!(show.contains("bob@example.com") && show.contains("pending") && show.contains("2.00"), "{show}");
        drop(s);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_conversions_come_newest_first_a_page_at_a_time() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 100}"#);
        let s = i.serve("a", &[]);
        let c = Client::new(&s.base, &token);
        let click = c.click("/c/sale?user=pager", "ref").await;
        for n in 0..7 {
            let (status, _, body) = c.public(&postback(&click, &format!("G{n}"), "pending", "10.00")).await;
            assert_eq!(status, 200, "{body}");
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(k) => format!("/api/v1/users/pager/conversions?limit=3&cursor={k}"),
                None => "/api/v1/users/pager/conversions?limit=3".to_string(),
            };
            let page = c.expect(200, "GET", &path, None).await;
            let rows = page["conversions"].as_array().expect("rows").clone();
            assert!(rows.len() <= 3);
            seen.extend(
                rows.iter()
                    .map(|r| (r["reported_at"].as_i64().expect("at"), r["id"].as_str().expect("id").to_string())),
            );
            match page["next_cursor"].as_str() {
                Some(k) => cursor = Some(k.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 7, "every conversion once: {seen:?}");
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first");
        c.expect(400, "GET", "/api/v1/users/pager/conversions?cursor=garbage", None).await;
        c.expect(400, "GET", "/api/v1/users/pager/conversions?limit=0", None).await;
        c.expect(404, "GET", "/api/v1/users/nobody/conversions", None).await;
        drop(s);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_parked_on_an_unknown_click_is_attributed_by_hand() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 1000}"#);
        let s = i.serve("a", &[]);
        let c = Client::new(&s.base, &token);
        // The network reports a click id nobody recorded (a typo in its macro, say).
        let (status, _, body) = c.public(&postback("not-a-click", "U1", "pending", "30.00")).await;
        assert_eq!(status, 200, "{body}");
        let cv = conversion(&c, "U1").await;
        assert_eq!(cv["status_reason"], "customer not found: click not-a-click is unknown", "{cv}");
        let id = cv["id"].as_str().expect("id").to_string();
        // Refused assignments name what is wrong, and change nothing.
        let bad = c
            .expect(
                422,
                "POST",
                &format!("/api/v1/conversions/{id}/attribute"),
                Some(json!({"click_id": "nope", "operator": "ops"})),
            )
            .await;
        assert!(bad["error"]["message"].as_str().unwrap_or("").contains("click_id: no click"), "{bad}");
        c.expect(
            422,
            "POST",
            &format!("/api/v1/conversions/{id}/attribute"),
            Some(json!({"user_id": "u1", "operator": "ops"})),
        )
        .await;
        // The right click: the operator finds it and assigns it.
        let click = c.click("/c/sale?user=found", "ref").await;
        let out = c
            .expect(
                200,
                "POST",
                &format!("/api/v1/conversions/{id}/attribute"),
                Some(json!({"click_id": click, "operator": "ops"})),
            )
            .await;
        assert_eq!(out["status"], "processed", "{out}");
        let tl = timeline(&c, &id).await;
        assert_eq!(tl["conversion"]["user_id"], "found");
        assert!(history_says(&tl, &format!("attributed by ops to click {click}")), "{tl}");
        let user = c.expect(200, "GET", "/api/v1/users/found", None).await;
        assert_eq!(balance(&user, "EUR", "pending"), 300, "10 % of 30.00: {user}");
        // Only a parked conversion is attributed: now 409.
        c.expect(
            409,
            "POST",
            &format!("/api/v1/conversions/{id}/attribute"),
            Some(json!({"click_id": click, "operator": "ops"})),
        )
        .await;

        // The same by the CLI, to a user and a merchant directly.
        let (status, _, _) = c.public(&postback("lost-click", "U2", "pending", "50.00")).await;
        assert_eq!(status, 200);
        let id2 = conversion(&c, "U2").await["id"].as_str().expect("id").to_string();
        let err =
            i.fails(&["conversion", "attribute", &id2, "--user", "ghost", "--merchant", "shop", "--operator", "ops"]);
        assert!(err.contains("user_id: user \"ghost\" has no account"), "{err}");
        let out =
            i.ok(&["conversion", "attribute", &id2, "--user", "found", "--merchant", "shop", "--operator", "ops"]);
        assert!(out.contains("PENDING, processed"), "{out}");
        let user = c.expect(200, "GET", "/api/v1/users/found", None).await;
        assert_eq!(balance(&user, "EUR", "pending"), 800, "3.00 + 10 % of 50.00: {user}");
        // Later events of that conversion keep its attribution.
        let (status, _, body) = c.public(&postback("lost-click", "U2", "approved", "50.00")).await;
        assert_eq!(status, 200, "{body}");
        let cv = conversion(&c, "U2").await;
        assert_eq!(
            (cv["state"].as_str(), cv["status"].as_str(), cv["user_id"].as_str()),
            (Some("COMPLETED"), Some("processed"), Some("found")),
            "{cv}"
        );
        drop(s);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broken_rule_is_replaced_reprocessing_credits_each_failed_conversion_exactly_once() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        // 1.0.0 passes its own fixtures (small orders) and loops forever on large ones.
        configure(&i, ("looping_rule_v1", "looping-rule@1.0.0"), "{}");
        let s = i.serve("a", &[]);
        let c = Client::new(&s.base, &token);
        let click = c.click("/c/sale?user=buyer", "ref").await;
        for (tx, sale) in [("L1", "100.00"), ("L2", "75.00"), ("S1", "20.00")] {
            let (status, _, body) = c.public(&postback(&click, tx, "pending", sale)).await;
            assert_eq!(status, 200, "{body}");
        }
        let l1 = conversion(&c, "L1").await;
        assert_eq!(l1["status"], "failed", "{}: {l1}", t.name);
        let why = l1["status_reason"].as_str().unwrap_or("");
        assert!(why.contains("looping-rule") && why.contains("1.0.0"), "the reason names the plugin: {why}");
        assert_eq!(conversion(&c, "S1").await["status"], "processed");
        let user = c.expect(200, "GET", "/api/v1/users/buyer", None).await;
        assert_eq!(balance(&user, "EUR", "pending"), 40, "only 2 % of 20.00: {user}");

        // Reprocessing with the broken rule still active fails again and credits nothing.
        let out = i.ok(&["conversion", "reprocess", "--status", "failed", "--merchant", "shop"]);
        assert!(out.contains("0 conversion(s) processed again; 2 still failed"), "{out}");

        // The fix: 1.0.1, uploaded and activated; then every failed conversion again.
        i.ok(&["plugin", "upload", &arg(&component("looping_rule_v2"))]);
        i.ok(&["plugin", "activate", "looping-rule@1.0.1", "--merchant", "shop"]);
        let out = c
            .expect(
                200,
                "POST",
                "/api/v1/conversions/reprocess",
                Some(json!({"status": "failed", "merchant": "shop", "operator": "ops"})),
            )
            .await;
        assert_eq!((out["reprocessed"].as_i64(), out["still"].as_i64()), (Some(2), Some(0)), "{out}");
        let user = c.expect(200, "GET", "/api/v1/users/buyer", None).await;
        // 0.40 + 2 % of 100.00 + 2 % of 75.00 = 0.40 + 2.00 + 1.50.
        assert_eq!(balance(&user, "EUR", "pending"), 390, "{user}");

        // Again, by every path: nothing more is credited.
        let out = i.ok(&["conversion", "reprocess", "--status", "failed"]);
        assert!(out.contains("0 conversion(s) processed again; 0 still failed"), "{out}");
        let id = l1["id"].as_str().expect("id");
        let refused = c.expect(409, "POST", &format!("/api/v1/conversions/{id}/reprocess"), None).await;
        assert!(refused["error"]["message"].as_str().unwrap_or("").contains("not parked or failed"), "{refused}");
        let err = i.fails(&["conversion", "reprocess", id]);
        assert!(err.contains("not parked or failed"), "{err}");
        let user = c.expect(200, "GET", "/api/v1/users/buyer", None).await;
        assert_eq!(balance(&user, "EUR", "pending"), 390, "{user}");
        let tl = timeline(&c, id).await;
        let credits: Vec<&Value> =
            tl["postings"].as_array().expect("postings").iter().filter(|p| p["cause"] == "reprocess").collect();
        assert_eq!(credits.len(), 1, "one credit: {tl}");
        assert_eq!(credits[0]["plugin_version"], "1.0.1", "{tl}");
        assert!(history_says(&tl, "processed again by ops"), "{tl}");
        c.expect(400, "POST", "/api/v1/conversions/reprocess", Some(json!({"status": "processed"}))).await;
        c.expect(404, "POST", "/api/v1/conversions/reprocess", Some(json!({"status": "failed", "merchant": "nope"})))
            .await;
        c.expect(404, "POST", "/api/v1/conversions/cv_nope/reprocess", None).await;
        drop(s);
        t.cleanup().await;
    }
}

fn sign(secret: &str, link: &str, user: &str, exp: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{link}\n{user}\n{exp}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_click_secret_only_the_site_can_say_which_user_a_click_is_for() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 100}"#);
        let secret = "click-secret-0123456789";
        let s = i.serve("a", &[("CASHBACKD_INGRESS_CLICK_SECRET", secret)]);
        let c = Client::new(&s.base, &token);
        let good = sign(secret, "sale", "u7", "");
        let future = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("now").as_secs()
            + 3600)
            .to_string();
        for (path, why) in [
            ("/c/sale?user=u7".to_string(), "sig: required"),
            (format!("/c/sale?user=u8&sig={good}"), "sig: does not match"),
            (format!("/c/sale?user=u7&sig={}", sign("other", "sale", "u7", "")), "sig: does not match"),
            (
                format!("/c/sale?user=u7&exp=1000&sig={}", sign(secret, "sale", "u7", "1000")),
                "exp: the signed link expired",
            ),
            (format!("/c/sale?user=u7&exp={future}&sig={good}"), "sig: does not match"),
        ] {
            let (status, _, body) = c.public(&path).await;
            assert_eq!(status, 403, "{path}: {body}");
            assert!(body.contains(why), "{path}: {body}");
        }
        c.expect(404, "GET", "/api/v1/users/u8", None).await;
        c.expect(404, "GET", "/api/v1/users/u7", None).await;
        c.click(&format!("/c/sale?user=u7&sig={good}"), "ref").await;
        c.click(&format!("/c/sale?user=u7&exp={future}&sig={}", sign(secret, "sale", "u7", &future)), "ref").await;
        let user = c.expect(200, "GET", "/api/v1/users/u7", None).await;
        assert_eq!(user["source"], "click");
        assert!(!s.log().contains(secret), "the secret is never logged");
        let shown = i.ok_env(&["config", "check"], &[("CASHBACKD_INGRESS_CLICK_SECRET", secret)]);
        assert!(!shown.contains(secret), "config check masks it: {shown}");
        drop(s);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_an_operator_reprocesses_failed_conversions_once_the_rule_is_fixed() {
    use crate::dashboard::{browser, chromedriver, on, screenshot, text};
    use fantoccini::Locator::Css;
    let Some(driver) = chromedriver().await else { return };
    // SQLite only: the browser drives the buttons; reprocessing itself runs on both
    // backends in the reprocess tests of this file.
    let t = backends::sqlite().await;
    let i = Install::new(&t);
    let token = i.admin_token();
    configure(&i, ("looping_rule_v1", "looping-rule@1.0.0"), "{}");
    let s = i.serve("a", &[]);
    let c = Client::new(&s.base, &token);
    let click = c.click("/c/sale?user=shopper", "ref").await;
    for tx in ["B1", "B2"] {
        let (status, _, body) = c.public(&postback(&click, tx, "pending", "100.00")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (b1, b2) = (conversion(&c, "B1").await, conversion(&c, "B2").await);
    assert_eq!((b1["status"].as_str(), b2["status"].as_str()), (Some("failed"), Some("failed")));
    let (b1, b2) = (b1["id"].as_str().expect("id").to_string(), b2["id"].as_str().expect("id").to_string());
    i.ok(&["plugin", "upload", &arg(&component("looping_rule_v2"))]);
    i.ok(&["plugin", "activate", "looping-rule@1.0.1", "--merchant", "shop"]);

    let b = browser(&driver).await;
    b.goto(&format!("{}/dashboard/login", s.base)).await.expect("goto");
    b.find(Css("#token")).await.expect("token field").send_keys(&token).await.expect("type");
    b.find(Css("button[type=submit]")).await.expect("submit").click().await.expect("click");
    on(&b, "/dashboard").await;

    // One from its own page.
    b.goto(&format!("{}/dashboard/conversions/{b1}", s.base)).await.expect("goto");
    screenshot(&b, "conversion-failed").await;
    b.find(Css("button.reprocess")).await.expect("the Reprocess button").click().await.expect("click");
    assert!(text(&b, ".notice-ok").await.contains("now processed"));
    assert!(text(&b, "#history").await.contains("processed again by ops in the dashboard"));
    assert!(b.find(Css("button.reprocess")).await.is_err(), "a processed conversion has no Reprocess button");

    // The rest from the review page's bulk form.
    b.goto(&format!("{}/dashboard/review", s.base)).await.expect("goto");
    assert!(text(&b, "#waiting-list").await.contains(&b2));
    screenshot(&b, "review-waiting").await;
    b.find(Css("#reprocess-all select[name=status]"))
        .await
        .expect("status")
        .select_by_value("failed")
        .await
        .expect("select");
    b.find(Css("#reprocess-all select[name=merchant]"))
        .await
        .expect("merchant")
        .select_by_value("shop")
        .await
        .expect("select");
    b.find(Css("#reprocess-all button")).await.expect("bulk").click().await.expect("click");
    assert!(text(&b, ".notice-ok").await.contains("1 failed conversion(s) processed again; 0 still failed"));
    assert!(text(&b, "#waiting").await.contains("Nothing is parked or failed"));
    screenshot(&b, "review-reprocessed").await;
    b.close().await.expect("close");

    let user = c.expect(200, "GET", "/api/v1/users/shopper", None).await;
    assert_eq!(balance(&user, "EUR", "pending"), 400, "2 % of 100.00, twice: {user}");
    drop(s);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_parked_on_an_unmapped_merchant_ref_is_processed_once_the_ref_is_mapped() {
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 1000}"#);
        // The network also reports its own reference of the merchant (`mid`).
        let config = S2S_CONFIG.replace(r#""cur"},"#, r#""cur", "merchant_ref": "mid"},"#);
        i.ok_env(
            &[
                "network",
                "add",
                "net",
                "--name",
                "Net",
                "--adapter",
                &arg(&component("generic_s2s")),
                "--config",
                &config,
                "--auth",
                "token",
            ],
            &[("CASHBACKD_NETWORK_SECRET", TOKEN)],
        );
        let s = i.serve("a", &[]);
        let c = Client::new(&s.base, &token);
        c.expect(201, "PUT", "/api/v1/users/known", Some(json!({}))).await;
        // Two orders whose click id the network lost, both of its merchant 9001.
        for tx in ["M1", "M2"] {
            let (status, _, body) = c.public(&format!("{}&mid=9001", postback("lost", tx, "pending", "60.00"))).await;
            assert_eq!(status, 200, "{body}");
        }
        // Support knows the user; the merchant is the one behind ref 9001, not mapped yet.
        let mut ids = Vec::new();
        for tx in ["M1", "M2"] {
            let id = conversion(&c, tx).await["id"].as_str().expect("id").to_string();
            let out = c
                .expect(
                    200,
                    "POST",
                    &format!("/api/v1/conversions/{id}/attribute"),
                    Some(json!({"user_id": "known", "operator": "support"})),
                )
                .await;
            assert_eq!(out["status"], "parked", "{}: {out}", t.name);
            ids.push(id);
        }
        let cv = conversion(&c, "M1").await;
        assert_eq!(
            cv["status_reason"], "merchant unknown: network net merchant ref 9001 is not mapped to a merchant",
            "{cv}"
        );
        c.expect(404, "PUT", "/api/v1/networks/nope/merchant-refs/9001", Some(json!({"merchant": "shop"}))).await;
        c.expect(404, "PUT", "/api/v1/networks/net/merchant-refs/9001", Some(json!({"merchant": "nope"}))).await;
        // Mapping the reference processes both.
        let out =
            c.expect(200, "PUT", "/api/v1/networks/net/merchant-refs/9001", Some(json!({"merchant": "shop"}))).await;
        assert_eq!(out["processed"], 2, "{out}");
        let refs = c.expect(200, "GET", "/api/v1/networks/net/merchant-refs", None).await;
        assert_eq!(refs["merchant_refs"], json!([{"merchant_ref": "9001", "merchant": "shop"}]));
        for id in &ids {
            let tl = timeline(&c, id).await;
            assert_eq!(tl["conversion"]["status"], "processed", "{tl}");
            assert!(history_says(&tl, "network net's merchant ref 9001 was mapped to merchant shop"), "{tl}");
        }
        let user = c.expect(200, "GET", "/api/v1/users/known", None).await;
        assert_eq!(balance(&user, "EUR", "pending"), 1200, "10 % of 60.00, twice: {user}");
        // The CLI maps too, and names a bad flag.
        let err = i.fails(&["merchant", "map-ref", "shop", "--network", "nope", "--ref", "1"]);
        assert!(err.contains("--network: no network \"nope\""), "{err}");
        let out = i.ok(&["merchant", "map-ref", "shop", "--network", "net", "--ref", "9002"]);
        assert!(out.contains("0 parked conversion(s) processed"), "{out}");
        drop(s);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_greets_a_user_by_the_name_the_site_gave_and_skips_a_user_who_wants_none() {
    let t = backends::sqlite().await;
    let i = Install::new(&t);
    let token = i.admin_token();
    configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 100}"#);
    let smtp = crate::smtp::SmtpSink::start().await;
    let s = i.serve("a", &[("CASHBACKD_SMTP_URL", &smtp.url()), ("CASHBACKD_SMTP_FROM", "cashback@site.test")]);
    let c = Client::new(&s.base, &token);
    for (user, body) in [
        ("ann", json!({"email": "ann@example.com", "name": "Ann"})),
        ("bob", json!({"email": "bob@example.com", "notify": false})),
    ] {
        c.expect(201, "PUT", &format!("/api/v1/users/{user}"), Some(body)).await;
        let click = c.click(&format!("/c/sale?user={user}"), "ref").await;
        let (status, _, text) = c.public(&postback(&click, &format!("D-{user}"), "pending", "10.00")).await;
        assert_eq!(status, 200, "{text}");
    }
    let run = c.expect(200, "POST", "/api/v1/jobs/notify/run", None).await;
    assert_eq!(run["outcome"], "ok", "{run}");
    let mails = smtp.accepted();
    assert_eq!(mails.len(), 1, "bob asked for no digest: {mails:?}; the run: {run}; log: {}", s.log());
    assert_eq!(mails[0].to, vec!["<ann@example.com>".to_string()]);
    let text = mails[0].data.replace("=\r\n", "").replace("\r\n", "\n");
    assert!(text.contains("Hello Ann,"), "{text}");
    assert!(text.contains("Cashback 0.10 EUR"), "1 % of 10.00: {text}");
    drop(s);
    t.cleanup().await;
}
