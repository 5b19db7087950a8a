//! Seed 001's CREATED on click (issue 13, point 4), on SQLite and PostgreSQL: "A CREATED
//! callback will be sent when a user clicks on a tracking link." An endpoint that takes
//! CREATED gets one callback per click, with the click's macros and no order macros; an
//! endpoint's states filter also filters conversions' changes; a click registered again,
//! or rolled back, sends nothing; a conversion's callbacks wait for its click's CREATED;
//! and a click is never in a user's digest.

use crate::backends;
use crate::callbacks::{Received, Reply, Sink, add_endpoint, deliverer};
use crate::common::*;
use crate::ledger::{event, world};
use cashbackd::callbacks::{EndpointSpec, Method, sign::Secret};
use cashbackd::conversions::apply::journal_and_apply;
use cashbackd::conversions::{Command, NewClick, State, conversion_id};
use cashbackd::outbox::{self, Click};
use cashbackd::plugin::wit::latest::ConversionState;
use serde_json::{Value, json};
use sqlx::Row;
use std::io::BufRead;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

const MINUTE: i64 = 60_000;

/// `cashbackd --database-url URL ARGS...`, as an operator runs it: (success, stdout, stderr).
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_cashbackd"))
        .arg("--database-url")
        .arg(url)
        .args(args)
        .env("CASHBACKD_PLUGIN_STORE", shared_store())
        .output()
        .expect("run cashbackd");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn cli_ok(url: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(url, args);
    assert!(ok, "cashbackd {args:?} failed:\n{stdout}{stderr}");
    stdout
}

/// A `cashbackd serve` process, killed when dropped.
struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    fn start(url: &str) -> Serve {
        let mut child = Process::new(env!("CARGO_BIN_EXE_cashbackd"))
            .arg("--database-url")
            .arg(url)
            .arg("--plugin-store")
            .arg(shared_store())
            // The partner's server is on 127.0.0.1.
            .arg("--callbacks-allow-private")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cashbackd serve");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(base) = line.strip_prefix("cashbackd listening on ") {
                        break base.trim().to_string();
                    }
                }
                _ => panic!("cashbackd serve exited before listening"),
            }
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve { child, base }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn at(sink: &Sink, path: &str) -> Vec<Received> {
    sink.received().into_iter().filter(|r| r.path == path).collect()
}

/// Waits until `path` has received `n` requests (the server's worker sends them).
async fn wait_for(sink: &Sink, path: &str, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = at(sink, path);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{path}: {} callbacks after 20 s, expected {n}: {got:#?}", got.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn api(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.expect("api call");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_a_tracked_link_sends_one_created_callback_with_its_macros_through_the_cli_api_and_a_real_server() {
    for t in backends::all().await {
        let url = t.url().to_string();
        let sink = Sink::start().await;
        let flat_rate = plugin_path(WASIP2, "flat_rate");
        let s2s = plugin_path(WASIP2, "generic_s2s");
        cli_ok(
            &url,
            &[
                "merchant",
                "add",
                "shop",
                "--name",
                "Shoe Shop",
                "--rule",
                flat_rate.to_str().expect("utf8"),
                "--rule-config",
                r#"{"rate_bps": 1000}"#,
            ],
        );
        let config = r#"{"params": {"transaction_id": "tid", "click_id": "clickref", "amount": "sale", "commission": "comm",
                        "state": "status", "currency": "cur"},
             "states": {"created": "CREATED", "pending": "PENDING", "approved": "COMPLETED", "declined": "REJECTED"},
             "default_currency": "EUR"}"#;
        cli_ok(
            &url,
            &[
                "network",
                "add",
                "net",
                "--name",
                "Net",
                "--adapter",
                s2s.to_str().expect("utf8"),
                "--config",
                config,
                "--auth",
                "token",
                "--secret",
                "tk",
            ],
        );
        cli_ok(
            &url,
            &[
                "link",
                "add",
                "shoe-sale",
                "--merchant",
                "shop",
                "--network",
                "net",
                "--url",
                "https://shop.example/landing?clickref={click_id}",
            ],
        );
        cli_ok(&url, &["partner", "add", "p1", "--name", "Partner One"]);
        // Every macro: the click's are filled, the order's render empty.
        let every = format!(
            "{}/every?state=[%CASHBACK:STATE%]&cid={{click_id}}&ref={{ref_id}}&s1={{sub1}}&s2={{sub2}}&s3={{sub3}}\
             &user={{user_id}}&m=[%CASHBACK:MERCHANT:NAME%]&mname={{merchant_name}}&mref=[%CASHBACK:MERCHANT:REF%]\
             &net={{network}}&ev=[%CASHBACK:EVENT:NAME%]&ts={{timestamp}}&id={{delivery_id}}&pay={{payout}}\
             &payminor={{payout_minor}}&amount={{amount}}&comm={{commission}}&cur={{currency}}&tx={{transaction_id}}\
             &oid=[%CASHBACK:ORDER:ID%]&conv={{conversion_id}}&st={{status}}&line=[%CASHBACK:LINE_ID%]\
             &delay=[%CASHBACK:REWARD_DELAY_DAYS%]&why=[%CASHBACK:REASON%]",
            sink.base
        );
        cli_ok(&url, &["endpoint", "add", "every", "--partner", "p1", "--url", &every]);
        let later = format!("{}/later?state=[%CASHBACK:STATE%]&ev={{event}}", sink.base);
        cli_ok(
            &url,
            &[
                "endpoint",
                "add",
                "later",
                "--partner",
                "p1",
                "--url",
                &later,
                "--states",
                "PENDING,COMPLETED",
                "--secret",
                "a-long-enough-plain-secret",
            ],
        );
        // `set-states` changes the filter alone: the secret stays (the callback below is
        // signed).
        let said = cli_ok(&url, &["endpoint", "set-states", "later", "--every-state"]);
        assert!(said.contains("receives every state"), "{said}");
        let said = cli_ok(&url, &["endpoint", "set-states", "later", "--states", "completed,Pending"]);
        assert!(said.contains("receives PENDING, COMPLETED only"), "{said}");
        let (ok, _, stderr) = cli(&url, &["endpoint", "set-states", "later", "--states", "PAID"]);
        assert!(!ok && stderr.contains("--states: \"PAID\" is not a state"), "{}: {stderr}", t.name);
        let elsewhere = format!("{}/elsewhere?state={{state}}", sink.base);
        cli_ok(&url, &["endpoint", "add", "elsewhere", "--partner", "p1", "--url", &elsewhere, "--merchant", "other"]);
        // An unknown state is refused, naming the option and the state.
        let (ok, _, stderr) =
            cli(&url, &["endpoint", "add", "typo", "--partner", "p1", "--url", &later, "--states", "PENDING,PAID"]);
        assert!(!ok, "{}: an unknown state is refused", t.name);
        assert!(stderr.contains("--states: \"PAID\" is not a state"), "{}: {stderr}", t.name);
        let listed = cli_ok(&url, &["endpoint", "list"]);
        assert!(listed.contains("states PENDING,COMPLETED"), "{listed}");
        assert!(listed.contains("states every state"), "{listed}");
        let admin = cli_ok(&url, &["token", "create", "ops", "--scope", "admin"]).trim().to_string();

        let server = Serve::start(&url);
        let base = &server.base;
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");

        // The admin API sets a states filter too, in any case; an unknown state is a 400
        // naming the field.
        let endpoints = format!("{base}/api/v1/callbacks/endpoints");
        let body = json!({"partner_id": "p1", "url_template": format!("{}/created-only?s={{state}}", sink.base),
                          "states": ["created"]});
        let (status, view) =
            api(&client, reqwest::Method::PUT, &format!("{endpoints}/created-only"), &admin, Some(body)).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["states"], json!(["CREATED"]), "{view}");
        for (states, why) in
            [(json!(["PENDING", "paid"]), "states: \"paid\" is not a state"), (json!([]), "states: at least one")]
        {
            let body = json!({"partner_id": "p1", "url_template": format!("{}/x", sink.base), "states": states});
            let (status, refused) =
                api(&client, reqwest::Method::PUT, &format!("{endpoints}/typo"), &admin, Some(body)).await;
            assert_eq!(status, 400, "{refused}");
            let message = refused["error"]["message"].as_str().unwrap_or_default();
            assert!(message.starts_with(why), "{}: {refused}", t.name);
        }
        let (status, list) = api(&client, reqwest::Method::GET, &endpoints, &admin, None).await;
        assert_eq!(status, 200, "{list}");
        let states = |id: &str| {
            list["endpoints"].as_array().and_then(|v| v.iter().find(|e| e["id"] == id)).map(|e| e["states"].clone())
        };
        assert_eq!(states("every"), Some(Value::Null), "no filter: every state");
        assert_eq!(states("later"), Some(json!(["PENDING", "COMPLETED"])));
        assert_eq!(states("typo"), None, "nothing refused was stored");

        // The click.
        let before = cashbackd::clock::Clock::now(&cashbackd::clock::SystemClock) / 1000;
        let click = client
            .get(format!("{base}/c/shoe-sale?user=u1&ref_id=lead-42&sub1=a%20b%26c%3Dd&sub2=%2541"))
            .send()
            .await
            .expect("click");
        assert_eq!(click.status().as_u16(), 302);
        let location = click.headers()["location"].to_str().expect("location").to_string();
        let click_id = url::Url::parse(&location)
            .expect("url")
            .query_pairs()
            .find(|(k, _)| k == "clickref")
            .expect("click id")
            .1
            .into_owned();
        let got = wait_for(&sink, "/every", 1).await;
        let created = &got[0];
        let p = |name: &str| created.param(name).unwrap_or_else(|| panic!("{name} missing in {}", created.query));
        for (name, want) in [
            ("state", "CREATED"),
            ("cid", click_id.as_str()),
            ("ref", "lead-42"),
            ("s1", "a b&c=d"),
            ("s2", "%41"),
            ("s3", ""),
            ("user", "u1"),
            ("m", "Shoe Shop"),
            ("mname", "Shoe Shop"),
            ("mref", ""),
            ("net", "net"),
            ("ev", "click"),
            // No order yet: every order macro is empty, never a made-up 0.00.
            ("pay", ""),
            ("payminor", ""),
            ("amount", ""),
            ("comm", ""),
            ("cur", ""),
            ("tx", ""),
            ("oid", ""),
            ("conv", ""),
            ("st", ""),
            ("line", ""),
            ("delay", ""),
            ("why", ""),
        ] {
            assert_eq!(p(name), want, "{}: {name} in {}", t.name, created.query);
        }
        let ts: i64 = p("ts").parse().expect("timestamp");
        assert!((before..=before + 60).contains(&ts), "{}: timestamp {ts}, clicked at {before}", t.name);
        assert!(p("id").starts_with("cbk_d"));
        let got = wait_for(&sink, "/created-only", 1).await;
        assert_eq!(got[0].param("s").as_deref(), Some("CREATED"));

        // A PENDING postback for the click: the endpoint of PENDING and COMPLETED gets it
        // (and nothing of the click); the one of CREATED only does not.
        let pb = |tid: &str, status: &str| {
            format!(
                "{base}/postback/net?tid={tid}&clickref={click_id}&sale=100.00&comm=8.00&cur=EUR&status={status}&token=tk"
            )
        };
        let r = client.get(pb("T-1", "pending")).send().await.expect("postback");
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
        // A network's own CREATED for another order of the click: a second CREATED for
        // the partner, told apart by its event (`sale`) and its conversion and order.
        let r = client.get(pb("T-2", "created")).send().await.expect("postback");
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
        let later = wait_for(&sink, "/later", 1).await;
        assert!(later[0].param("signature").is_some_and(|s| s.len() == 64), "signed: {}", later[0].query);
        assert_eq!(
            (later[0].param("state").as_deref(), later[0].param("ev").as_deref()),
            (Some("PENDING"), Some("sale"))
        );
        let every = wait_for(&sink, "/every", 3).await;
        let by_state =
            |state: &str| every.iter().filter(|r| r.param("state").as_deref() == Some(state)).collect::<Vec<_>>();
        assert_eq!(by_state("PENDING").len(), 1, "{every:#?}");
        let network_created = by_state("CREATED").into_iter().find(|r| r.param("ev").as_deref() == Some("sale"));
        let network_created = network_created.unwrap_or_else(|| panic!("the network's CREATED: {every:#?}"));
        assert_eq!(network_created.param("conv"), Some(conversion_id("net", "T-2")));
        assert_eq!(network_created.param("tx").as_deref(), Some("T-2"));
        assert_eq!(network_created.param("cid"), Some(click_id.clone()), "the same click");

        // Once everything is delivered: one callback per delivery, and the log says which
        // is the click's.
        let deliveries = format!("{base}/api/v1/callbacks/deliveries");
        let deadline = Instant::now() + Duration::from_secs(20);
        let list = loop {
            let (status, list) = api(&client, reqwest::Method::GET, &deliveries, &admin, None).await;
            assert_eq!(status, 200, "{list}");
            if list["deliveries"].as_array().is_some_and(|v| v.iter().all(|d| d["state"] == "delivered")) {
                break list;
            }
            assert!(Instant::now() < deadline, "not all delivered: {list}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let all = list["deliveries"].as_array().expect("deliveries");
        let count = |endpoint: &str| all.iter().filter(|d| d["endpoint_id"] == endpoint).count();
        // every: the click's CREATED, PENDING, the network's CREATED; later: PENDING;
        // created-only: the two CREATED; elsewhere (another merchant): nothing.
        assert_eq!(
            [count("every"), count("later"), count("created-only"), count("elsewhere")],
            [3, 1, 2, 0],
            "{}: {list}",
            t.name
        );
        assert_eq!(sink.received().len(), all.len(), "{}: one callback per delivery", t.name);
        let clicks: Vec<&Value> = all.iter().filter(|d| d["kind"] == "click").collect();
        assert_eq!(clicks.len(), 2, "{list}");
        for d in &clicks {
            assert_eq!((d["conversion_id"].clone(), d["click_id"].clone()), (Value::Null, json!(click_id)), "{d}");
            assert_eq!(d["conversion_state"], "CREATED");
        }
        let (status, one) =
            api(&client, reqwest::Method::GET, &format!("{deliveries}?click={click_id}&endpoint=every"), &admin, None)
                .await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["deliveries"].as_array().map(Vec::len), Some(1), "the click's CREATED to every: {one}");
        let cli_list = cli_ok(&url, &["deliveries", "list", "--click", &click_id]);
        assert_eq!(cli_list.lines().count(), 2, "{cli_list}");
        assert!(cli_list.contains(&format!("click {click_id}")), "{cli_list}");
        // The dashboard's Deliveries page: the endpoints' states, the click's CREATED
        // listed under its click (there is no conversion to link to), and its page.
        let session = crate::common::dashboard_sign_in_http(base, &admin).await;
        let page = |path: String| {
            let request = client
                .get(format!("{base}{path}"))
                .header(reqwest::header::COOKIE, format!("{}={session}", cashbackd::dashboard::COOKIE));
            async move {
                let response = request.send().await.expect("dashboard");
                assert_eq!(response.status().as_u16(), 200);
                response.text().await.expect("page")
            }
        };
        let html = page(format!("/dashboard/deliveries?click={click_id}")).await;
        assert!(html.contains("PENDING, COMPLETED") && html.contains("every state"), "{html}");
        assert!(html.contains("merchant <code>other</code>"), "{html}");
        assert_eq!(html.matches(&format!("<code>{click_id}</code>")).count(), 2, "{html}");
        let created = clicks[0]["message_id"].as_str().expect("message id");
        let html = page(format!("/dashboard/deliveries/{created}")).await;
        assert!(html.contains("<dt>Click</dt>") && html.contains("(sent on the click)"), "{html}");
        drop(server);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_registered_again_or_rolled_back_is_told_once_before_its_conversion_and_never_in_a_digest() {
    use crate::smtp::SmtpSink;
    use cashbackd::notify::{Notifier, NotifyConfig};
    for t in backends::all().await {
        // `world` registered the click c1 before any endpoint existed: it has no CREATED.
        let w = world(t.db.clone()).await;
        let db = w.service.db().clone();
        w.service.map_merchant_ref("net", "M-77", "shop").await.expect("merchant ref");
        let (hook_sink, sink) = (Sink::start().await, Sink::start().await);
        let secret = Secret::generate();
        let mut hook = EndpointSpec::new("hook", "p1", &format!("{}/hook", hook_sink.base));
        hook.method = Method::Post;
        hook.secrets = vec![secret];
        add_endpoint(&w, hook).await;
        let mut pending_only = EndpointSpec::new("pending-only", "p1", &format!("{}/pending?s={{state}}", sink.base));
        pending_only.states = Some(vec![State::Pending]);
        add_endpoint(&w, pending_only).await;
        let mut with_ref = EndpointSpec::new("with-ref", "p1", &format!("{}/ref?s={{state}}&r={{ref_id}}", sink.base));
        with_ref.require_ref_id = true;
        add_endpoint(&w, with_ref).await;

        let k1 = NewClick {
            click_id: "k1".into(),
            user_id: "u1".into(),
            merchant_id: Some("shop".into()),
            network_id: Some("net".into()),
            subs: vec![Some("s 1".into())],
            ..Default::default()
        };
        // Registered three times (a client retrying, a replayed request): one CREATED.
        for _ in 0..3 {
            w.service.register_click(k1.clone()).await.expect("click");
        }
        // Its key is taken: even called again by hand in a transaction, nothing is added.
        let mut tx = db.pool.begin().await.expect("begin");
        let again =
            Click { click_id: "k1", user_id: "u1", merchant_id: Some("shop"), network_id: Some("net"), ref_id: None };
        let now = w.service.now();
        assert_eq!(outbox::enqueue_clicks(&mut tx, &[(again, None, now)], &mut 0).await.expect("enqueue"), 0);
        tx.rollback().await.expect("rollback");
        // A click whose transaction rolls back (a crash before the commit) leaves no
        // CREATED behind, nor a click.
        let mut tx = db.pool.begin().await.expect("begin");
        let command = Command::RegisterClick {
            click_id: "k-lost".into(),
            user_id: "u1".into(),
            merchant_id: Some("shop".into()),
            network_id: Some("net".into()),
            ref_id: Some("r-lost".into()),
            link_id: None,
            subs: Vec::new(),
            create_user: false,
        };
        journal_and_apply(&mut tx, &command, w.service.now(), None, None).await.expect("apply");
        let inside: i64 = sqlx::query("SELECT COUNT(*) FROM conversion_changes WHERE click_id = 'k-lost'")
            .fetch_one(&mut *tx)
            .await
            .expect("count")
            .try_get(0)
            .expect("n");
        assert_eq!(inside, 1, "{}: recorded in the click's transaction", t.name);
        tx.rollback().await.expect("rollback");
        let count = |sql: &'static str| {
            let db = db.clone();
            async move { sqlx::query(sql).fetch_one(&db.pool).await.expect(sql).try_get::<i64, _>(0).expect("n") }
        };
        assert_eq!(count("SELECT COUNT(*) FROM clicks WHERE click_id = 'k-lost'").await, 0);
        assert_eq!(count("SELECT COUNT(*) FROM conversion_changes WHERE click_id = 'k-lost'").await, 0);
        assert_eq!(count("SELECT COUNT(*) FROM conversion_changes WHERE kind = 'click'").await, 1, "{}", t.name);
        assert_eq!(
            count("SELECT COUNT(*) FROM callback_deliveries WHERE conversion_id = 'click:k1'").await,
            1,
            "{}: hook only (no PENDING-only endpoint, no ref_id for with-ref)",
            t.name
        );

        // The click's CREATED fails once; its conversion's PENDING waits behind it.
        hook_sink.script([Reply::Status(500)]);
        let mut pending = event("T1", ConversionState::Pending, 10_000, 500);
        pending.click_id = Some("k1".into());
        w.service.ingest(pending).await.expect("pending");
        let d = deliverer(&w, "r1");
        d.run_due().await.expect("pass");
        assert_eq!(hook_sink.received().len(), 1, "{}: the PENDING waits for the click's CREATED", t.name);
        d.run_due().await.expect("pass");
        assert_eq!(hook_sink.received().len(), 1, "{}: still waiting (the CREATED retries in 5 minutes)", t.name);
        w.clock.advance(5 * MINUTE);
        d.run_due().await.expect("pass");
        assert_eq!(hook_sink.received().len(), 2, "{}: the CREATED again, and the PENDING held back beside it", t.name);
        // Held back until a second after the CREATED's attempt.
        w.clock.advance(1_000);
        d.run_due().await.expect("pass");
        let got = hook_sink.received();
        let bodies: Vec<Value> = got.iter().map(|r| serde_json::from_str(&r.body).expect("json body")).collect();
        let told: Vec<(u16, &str, &str)> = got
            .iter()
            .zip(&bodies)
            .map(|(r, b)| (r.status, b["type"].as_str().unwrap_or(""), b["data"]["state"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            told,
            [
                (500, "click.created", "CREATED"),
                (200, "click.created", "CREATED"),
                (200, "conversion.changed", "PENDING")
            ],
            "{}",
            t.name
        );
        assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"], "a retry keeps its message id");
        let data = &bodies[1]["data"];
        for (field, want) in [
            ("click_id", json!("k1")),
            ("user_id", json!("u1")),
            ("event", json!("click")),
            ("network", json!("net")),
            ("ref_id", Value::Null),
            ("conversion_id", Value::Null),
            ("transaction_id", Value::Null),
            ("order_id", Value::Null),
            ("status", Value::Null),
            ("payout", Value::Null),
            ("payout_minor", Value::Null),
            ("amount_minor", Value::Null),
            ("currency", Value::Null),
        ] {
            assert_eq!(data[field], want, "{}: {field} in {data}", t.name);
        }
        assert_eq!(data["merchant"], json!({"name": "Shop", "ref": "M-77"}), "{data}");
        assert_eq!(data["subs"]["sub1"], "s 1");
        assert_eq!(bodies[2]["data"]["conversion_id"], json!(conversion_id("net", "T1")));
        assert_eq!(bodies[2]["data"]["event"], "sale");
        // PENDING-only got the PENDING alone; with-ref skipped it (its click has no ref_id).
        let other: Vec<(String, Option<String>)> =
            sink.received().iter().map(|r| (r.path.clone(), r.param("s"))).collect();
        assert_eq!(other, [("/pending".to_string(), Some("PENDING".to_string()))], "{}", t.name);

        // A click with a ref_id: with-ref gets its CREATED; PENDING-only does not.
        let k2 = NewClick { click_id: "k2".into(), ref_id: Some("r-2".into()), ..k1.clone() };
        w.service.register_click(k2).await.expect("click");
        d.run_due().await.expect("pass");
        let with_ref: Vec<(Option<String>, Option<String>)> =
            at(&sink, "/ref").iter().map(|r| (r.param("s"), r.param("r"))).collect();
        assert_eq!(with_ref, [(Some("CREATED".to_string()), Some("r-2".to_string()))], "{}", t.name);
        assert_eq!(at(&sink, "/pending").len(), 1);
        assert_eq!(hook_sink.received().len(), 4);

        // Digests are about cashback: the two clicks are not in one; the PENDING is.
        let smtp = SmtpSink::start().await;
        let config = NotifyConfig {
            smtp_url: Some(smtp.url()),
            from: "Cashback <cashback@shop.test>".into(),
            ..NotifyConfig::default()
        };
        let notifier = Notifier::new(db.clone(), w.clock.clone(), config).expect("notifier");
        w.clock.advance(MINUTE);
        let batch = notifier.run().await.expect("batch");
        assert_eq!((batch.changes, batch.users, batch.sent), (1, 1, 1), "{}: {batch:?}", t.name);
        let mail = &smtp.accepted()[0].data;
        assert!(mail.contains("order-T1"), "{mail}");
        t.cleanup().await;
    }
}
