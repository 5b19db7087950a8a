//! The dashboard (issue 7): no page or action works without a valid session, actions
//! need their scope and the session's CSRF token (tower oneshot, both databases); and in
//! headless Chromium, an operator signs in, watches seed 002's four metrics change as
//! postbacks arrive, approves an order from the review queue and opens its timeline.
//! Each page's screenshot is written to `target/test-output/dashboard/`.

use crate::backends;
use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cashbackd::auth::{self, Scope};
use cashbackd::callbacks::sign::Secret;
use cashbackd::callbacks::{self, Deliverer, DeliveryConfig, EndpointSpec};
use cashbackd::clock::SystemClock;
use cashbackd::conversions::{NewClick, Service, ServiceConfig, Status, Via, conversion_id};
use cashbackd::db::Db;
use cashbackd::ingest::{self, InboundAuth, Link, Network};
use cashbackd::plugin::wit::latest;
use cashbackd::{dashboard, demo, registry, scheduler};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// A partner endpoint's signing secret: no page may show it.
const PARTNER_SECRET: &str = "partner-shared-secret-42";

struct Seeded {
    service: Service,
    deliverer: Deliverer,
    admin: String,
    write: String,
    read: String,
    revoked: String,
    expired: String,
}

/// The demo's configuration (merchant `demo-shop` in automatic mode, network `demo-net`,
/// link `demo-link`, users alice and bob), plus: `manual-shop` in manual mode behind
/// `manual-link` (its orders land in the review queue), `broken-shop` whose rule panics
/// behind `broken-link` (its orders fail), a second network, orders reported by API
/// import and by file days after the purchase (the delay analytics), a partner endpoint
/// on `sink`, the system jobs, and `swap-rule` 2.0.0 in shadow for `demo-shop`.
async fn seed(db: Db, sink: &str) -> Seeded {
    let service = Service::new(db, runtime().clone(), Arc::new(SystemClock), ServiceConfig::default());
    let s = &service;
    let plugins = target_dir().join("plugins").join(WASIP2);
    demo::seed(s, &plugins).await.expect("demo seed");
    let flat = registry::resolve(s, "flat-rate@0.1.0").await.expect("flat-rate").digest.to_string();
    s.upsert_merchant("manual-shop", "Manual Shop", true, 30).await.expect("merchant");
    s.set_rules("manual-shop", &[(flat.clone(), json!({"rate_bps": 500}))]).await.expect("rules");
    s.upsert_merchant("broken-shop", "Broken Shop", false, 30).await.expect("merchant");
    install_unproven_rule(s, "broken-shop", "hostile_rule", json!({"mode": "panic"})).await;
    for (link, merchant) in [("manual-link", "manual-shop"), ("broken-link", "broken-shop")] {
        let link = Link {
            id: link.into(),
            merchant_id: merchant.into(),
            network_id: "demo-net".into(),
            url_template: "https://shop.example/landing?clickref={click_id}".into(),
        };
        ingest::upsert_link(s.db(), &link, s.now()).await.expect("link");
    }
    let adapter = cashbackd::registry::upload(s, &plugin_bytes(WASIP2, "generic_s2s")).await.expect("adapter").plugin;
    let network = Network {
        id: "report-net".into(),
        name: "Report Network".into(),
        adapter_digest: Some(adapter.digest.to_string()),
        adapter_config: json!({"params": {"transaction_id": "tid"}}),
        auth: InboundAuth::Token("report-token".into()),
    };
    ingest::upsert_network(s.db(), &network, s.now()).await.expect("network");

    // Orders reported late, as API imports and files are (seed 000).
    let now = s.now();
    let hour = 3_600_000;
    for (i, (network, via, late)) in [
        ("demo-net", Via::Postback, 40_000),
        ("demo-net", Via::Postback, 95_000),
        ("demo-net", Via::ApiImport, 2 * hour),
        ("demo-net", Via::ApiImport, 5 * hour),
        ("report-net", Via::ApiImport, 3 * hour),
        ("report-net", Via::File, 30 * hour),
        ("report-net", Via::File, 52 * hour),
        ("report-net", Via::File, 71 * hour),
    ]
    .into_iter()
    .enumerate()
    {
        let click = format!("seed-click-{i}");
        let c = NewClick {
            click_id: click.clone(),
            user_id: "bob".into(),
            merchant_id: Some("demo-shop".into()),
            network_id: Some(network.into()),
            ..NewClick::default()
        };
        s.register_click(c).await.expect("click");
        let event = latest::ConversionEvent {
            network: network.into(),
            transaction_id: format!("LATE-{i}"),
            click_id: Some(click),
            order_id: Some(format!("O-LATE-{i}")),
            event_type: "sale".into(),
            state: latest::ConversionState::Pending,
            amount: 4_000 + 1_000 * i as i64,
            commission: 320,
            currency: "EUR".into(),
            event_time: now - late,
            reason: None,
            merchant_ref: None,
            line_items: Vec::new(),
            raw: Vec::new(),
        };
        s.ingest_via(event, via).await.expect("late order");
    }

    callbacks::upsert_partner(s.db(), "app1", "Rewards App", now).await.expect("partner");
    let mut spec = EndpointSpec::new(
        "app1-pb",
        "app1",
        &format!("{sink}/pb?cid={{click_id}}&state=[%CASHBACK:STATE%]&payout={{payout}}"),
    );
    spec.secrets = vec![Secret::parse(PARTNER_SECRET, false).expect("secret")];
    callbacks::save_endpoint(s.db(), &spec, now).await.expect("endpoint");
    scheduler::ensure_system_jobs(s).await.expect("system jobs");

    registry::upload(s, &plugin_bytes(WASIP2, "swap_rule_v2")).await.expect("upload swap-rule 2");
    let v2 = registry::resolve(s, "swap-rule@2.0.0").await.expect("v2");
    registry::set_shadow(s, "demo-shop", &v2, None, None, "test").await.expect("shadow");

    let deliverer = Deliverer::new(
        s.db().clone(),
        s.clock(),
        DeliveryConfig { allow_private: true, ..DeliveryConfig::default() },
        "dashboard-test",
    )
    .expect("deliverer");
    let token = |name: &'static str, scope, expires| {
        let s = s.clone();
        async move { auth::create_token(s.db(), name, scope, s.now(), expires).await.expect("token") }
    };
    let admin = token("ops-admin", Scope::Admin, None).await;
    let write = token("reviewer", Scope::Write, None).await;
    let read = token("viewer", Scope::Read, None).await;
    let expired = token("old", Scope::Admin, Some(now - 1)).await;
    let revoked = token("gone", Scope::Admin, None).await;
    let revoked_id = format!("tok_{}", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(revoked.as_bytes()))[..12]);
    assert!(auth::revoke(s.db(), &revoked_id, now).await.expect("revoke"));
    Seeded { service, deliverer, admin, write, read, revoked, expired }
}

fn app(w: &Seeded) -> axum::Router {
    crate::common::server(&w.service).with_deliverer(w.deliverer.clone()).router()
}

/// A partner that answers 200 to every callback.
async fn sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Option<String>, String) {
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = axum::body::to_bytes(response.into_body(), 8 << 20).await.expect("body");
    (status, location, String::from_utf8_lossy(&body).into_owned())
}

/// A request with the session cookie `session` (its value), if any.
fn get(uri: &str, session: Option<&str>) -> Request<Body> {
    let mut r = Request::get(uri);
    if let Some(t) = session {
        r = r.header(header::COOKIE, format!("{}={t}", dashboard::COOKIE));
    }
    r.body(Body::empty()).expect("request")
}

fn post(uri: &str, session: Option<&str>, form: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(t) = session {
        r = r.header(header::COOKIE, format!("{}={t}", dashboard::COOKIE));
    }
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    r.body(Body::from(body)).expect("request")
}

/// The CSRF token the dashboard renders into a session's forms.
async fn csrf_of(app: &axum::Router, session: &str) -> String {
    let (status, _, body) = call(app, get("/dashboard", Some(session))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let at = body.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    body[at..].split('"').next().expect("value").to_string()
}

fn assert_no_secret(w: &Seeded, sessions: &[&str], page: &str, body: &str) {
    for secret in [&w.admin, &w.write, &w.read, &w.revoked, &w.expired] {
        assert!(!body.contains(secret.as_str()), "{page} shows a token");
    }
    for session in sessions {
        assert!(!body.contains(session), "{page} shows a session id");
    }
    assert!(!body.contains(PARTNER_SECRET), "{page} shows a webhook secret");
}

/// An order through a tracked link and a postback, over HTTP; returns its conversion id.
async fn order(client: &reqwest::Client, base: &str, link: &str, user: &str, tid: &str, sale: &str) -> String {
    let r = client.get(format!("{base}/c/{link}?user={user}")).send().await.expect("click");
    assert_eq!(r.status(), reqwest::StatusCode::FOUND);
    let location = r.headers()[reqwest::header::LOCATION].to_str().expect("location").to_string();
    let url = url::Url::parse(&location).expect("url");
    let click = url.query_pairs().find(|(k, _)| k == "clickref").expect("click id").1.into_owned();
    let pb = format!(
        "{base}/postback/demo-net?tid={tid}&oid=O-{tid}&clickref={click}&sale={sale}&comm=4.00&status=pending&ts=&token={}",
        demo::DEMO_TOKEN
    );
    let r = client.get(pb).send().await.expect("postback");
    assert_eq!(r.status(), reqwest::StatusCode::OK, "{}", r.text().await.unwrap_or_default());
    conversion_id("demo-net", tid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dashboard_page_or_action_works_without_a_valid_session_its_scope_and_its_csrf_token() {
    for t in backends::all().await {
        let sink = sink().await;
        let w = seed(t.db.clone(), &sink).await;
        let app = app(&w);
        // Sessions, opened through the login form: the cookie holds a random id, never
        // the token.
        let sign_in = |token: String| {
            let app = app.clone();
            async move { dashboard_sign_in(&app, &token).await.expect("sign in") }
        };
        let (admin, write, read) =
            (sign_in(w.admin.clone()).await, sign_in(w.write.clone()).await, sign_in(w.read.clone()).await);
        for (session, token) in [(&admin, &w.admin), (&write, &w.write), (&read, &w.read)] {
            assert_eq!(session.len(), 64, "256 random bits in hex");
            assert!(!session.contains(token.as_str()) && !token.contains(session.as_str()));
        }
        assert_ne!(admin, sign_in(w.admin.clone()).await, "every sign-in is a new session");
        // Sessions that no longer work: one signed out (the server forgets it: the cookie
        // replayed is refused), one whose token was revoked since, one whose token expired
        // since, an id never issued, and not an id at all.
        let signed_out = sign_in(w.admin.clone()).await;
        let (status, location, _) =
            call(&app, post("/dashboard/logout", Some(&signed_out), &[("csrf", &csrf_of(&app, &signed_out).await)]))
                .await;
        assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard/login")));
        let doomed =
            auth::create_token(w.service.db(), "doomed", Scope::Admin, w.service.now(), None).await.expect("token");
        let of_revoked = sign_in(doomed.clone()).await;
        let doomed_id =
            format!("tok_{}", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(doomed.as_bytes()))[..12]);
        assert!(auth::revoke(w.service.db(), &doomed_id, w.service.now()).await.expect("revoke"));
        let short = w.service.now() + 1_500;
        let brief = auth::create_token(w.service.db(), "brief", Scope::Admin, w.service.now(), Some(short))
            .await
            .expect("token");
        let of_expired = sign_in(brief).await;
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        let wrong = "00000000000000000000000000000000000000000000000000000000000000ff";
        let dead: [Option<&str>; 6] =
            [None, Some(wrong), Some("not-a-session"), Some(&signed_out), Some(&of_revoked), Some(&of_expired)];
        let sessions = [admin.as_str(), write.as_str(), read.as_str(), signed_out.as_str(), of_revoked.as_str()];

        // Pages: without a session that works → the login page.
        for page in dashboard::PAGES {
            for session in dead {
                let (status, location, body) = call(&app, get(page, session)).await;
                if page.ends_with(".json") {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {page} with {session:?}", t.name);
                } else {
                    assert_eq!(status, StatusCode::SEE_OTHER, "{}: {page} with {session:?}: {body}", t.name);
                    let location = location.expect("location");
                    assert!(location.starts_with("/dashboard/login?next="), "{location}");
                }
                assert_no_secret(&w, &sessions, page, &body);
            }
            // Any valid session reads; nothing secret is rendered.
            let (status, _, body) = call(&app, get(page, Some(&read))).await;
            let missing = page.ends_with("/cv_x")
                || page.ends_with("/deliveries/1")
                || page.ends_with("/po_x")
                || page.ends_with("/backtests/1");
            let expected = if missing { StatusCode::NOT_FOUND } else { StatusCode::OK };
            assert_eq!(status, expected, "{}: {page}: {body}", t.name);
            assert_no_secret(&w, &sessions, page, &body);
        }
        // Why the login page was shown: a signed-out or revoked session, an expired one.
        for (session, why) in [(&signed_out, "why=revoked"), (&of_revoked, "why=revoked"), (&of_expired, "why=expired")]
        {
            let (_, location, _) = call(&app, get("/dashboard/review", Some(session))).await;
            assert!(location.as_deref().is_some_and(|l| l.ends_with(why)), "{location:?}");
        }

        // Actions: 401 without a valid session; 403 without the session's CSRF token or
        // with a session whose scope is too small.
        let read_csrf = csrf_of(&app, &read).await;
        let write_csrf = csrf_of(&app, &write).await;
        let admin_csrf = csrf_of(&app, &admin).await;
        assert_ne!(read_csrf, write_csrf, "a CSRF token is bound to its session");
        for (action, needed) in dashboard::ACTIONS {
            for session in dead {
                let (status, _, body) = call(&app, post(action, session, &[("csrf", &admin_csrf)])).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {action} with {session:?}: {body}", t.name);
            }
            for csrf in ["", "0000", write_csrf.as_str()] {
                let (status, _, body) = call(&app, post(action, Some(&admin), &[("csrf", csrf)])).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{}: {action} with CSRF {csrf:?}: {body}", t.name);
            }
            for (session, csrf, scope) in [(&read, &read_csrf, Scope::Read), (&write, &write_csrf, Scope::Write)] {
                if scope < *needed {
                    let (status, _, body) = call(&app, post(action, Some(session), &[("csrf", csrf)])).await;
                    assert_eq!(status, StatusCode::FORBIDDEN, "{}: {action} as {scope:?}: {body}", t.name);
                    assert!(body.contains(&format!("needs the {} scope", needed.as_str())), "{body}");
                }
            }
        }

        // A backtest from the dashboard is a job: the form leads to its page, which shows it
        // queued and reloads itself; once a worker ran it (`serve` runs one), the result.
        let form = [("csrf", read_csrf.as_str()), ("merchant", "demo-shop"), ("plugin", "swap-rule@2.0.0")];
        let (status, location, body) = call(&app, post("/dashboard/plugins/backtest", Some(&read), &form)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{}: {body}", t.name);
        let job_page = location.expect("the job's page");
        assert!(job_page.starts_with("/dashboard/backtests/"), "{job_page}");
        let (status, _, body) = call(&app, get(&job_page, Some(&read))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("queued") && body.contains("reloads itself"), "{body}");
        cashbackd::backtests::Worker::new(w.service.clone(), "dashboard-test").run_next().await.expect("worker");
        let (status, _, body) = call(&app, get(&job_page, Some(&read))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains("Result: swap-rule@2.0.0 for demo-shop") && body.contains("conversions compared"),
            "{body}"
        );
        let (_, _, list) = call(&app, get("/dashboard/backtests", Some(&read))).await;
        assert!(list.contains(&format!("href=\"{job_page}\"")), "{list}");

        // A refused review changed nothing; the reviewer's goes through, recorded under
        // the token's name.
        let base_state = w.service.by_status(Status::PendingReview, 10).await.expect("queue");
        assert!(base_state.is_empty(), "{}: nothing pending yet", t.name);
        let click = NewClick {
            click_id: "manual-click".into(),
            user_id: "alice".into(),
            merchant_id: Some("manual-shop".into()),
            network_id: Some("demo-net".into()),
            ..NewClick::default()
        };
        w.service.register_click(click).await.expect("click");
        let postback = Request::get(format!(
            "/postback/demo-net?tid=M-1&oid=O-M-1&clickref=manual-click&sale=80.00&comm=6.40&status=pending&ts=&token={}",
            demo::DEMO_TOKEN
        ))
        .body(Body::empty())
        .expect("request");
        let (status, _, body) = call(&app, postback).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = conversion_id("demo-net", "M-1");
        let review = format!("/dashboard/review/{id}");
        for (session, csrf) in
            [(None, admin_csrf.as_str()), (Some(read.as_str()), read_csrf.as_str()), (Some(write.as_str()), "")]
        {
            let (status, _, _) = call(&app, post(&review, session, &[("csrf", csrf), ("action", "approve")])).await;
            assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN, "{status}");
        }
        let status_of = |id: String| {
            let s = w.service.clone();
            async move { s.conversion(&id).await.expect("load").expect("row").status }
        };
        assert_eq!(status_of(id.clone()).await, Status::PendingReview, "{}: refused reviews change nothing", t.name);
        let (status, location, body) = call(
            &app,
            post(&review, Some(&write), &[("csrf", &write_csrf), ("action", "approve"), ("reason", "looks fine")]),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        assert!(location.expect("location").starts_with("/dashboard/review?done=approve"));
        assert_eq!(status_of(id.clone()).await, Status::Processed);
        let history = w.service.history(&id).await.expect("history");
        assert!(history.iter().any(|h| h.detail.contains("approve by reviewer: looks fine")), "{history:?}");

        // Signing in: the login form sets a CSRF cookie and carries the same value; a
        // post without both (another site's form) is refused before the token is looked
        // at, and opens no session.
        let (status, _, _) = call(&app, get("/dashboard/login", None)).await;
        assert_eq!(status, StatusCode::OK);
        let form = app.clone().oneshot(get("/dashboard/login", None)).await.expect("form");
        let login_cookie = set_cookie(form.headers(), dashboard::LOGIN_COOKIE).expect("login cookie");
        let raw = form.headers()[header::SET_COOKIE].to_str().expect("cookie").to_string();
        for part in ["HttpOnly", "SameSite=Strict", "Path=/dashboard/login"] {
            assert!(raw.contains(part), "{raw}");
        }
        let html = axum::body::to_bytes(form.into_body(), 1 << 20).await.expect("body");
        let field = hidden_field(&String::from_utf8_lossy(&html), "csrf").expect("login csrf field");
        assert_eq!(field, login_cookie, "double submit: the field repeats the cookie");
        let login = |token: &str, next: &str, csrf: &str, cookie: Option<&str>| {
            let mut r = post("/dashboard/login", None, &[("token", token), ("next", next), ("csrf", csrf)]);
            if let Some(c) = cookie {
                r.headers_mut()
                    .insert(header::COOKIE, format!("{}={c}", dashboard::LOGIN_COOKIE).parse().expect("header"));
            }
            r
        };
        let other = "ab".repeat(32);
        for (csrf, cookie) in
            [("", None), (field.as_str(), None), ("", Some(field.as_str())), (other.as_str(), Some(field.as_str()))]
        {
            let response = app.clone().oneshot(login(&w.admin, "/dashboard", csrf, cookie)).await.expect("response");
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "login CSRF {csrf:?} with cookie {cookie:?}");
            assert!(set_cookie(response.headers(), dashboard::COOKIE).is_none(), "no session");
        }
        // A wrong, revoked or expired token gets no session; a valid one an HttpOnly,
        // SameSite=Strict cookie for /dashboard, and a redirect that stays on the dashboard.
        for token in [wrong, w.revoked.as_str(), w.expired.as_str()] {
            let response =
                app.clone().oneshot(login(token, "/dashboard", &field, Some(&field))).await.expect("response");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert!(set_cookie(response.headers(), dashboard::COOKIE).is_none());
        }
        let response =
            app.clone().oneshot(login(&w.read, "https://evil.example/", &field, Some(&field))).await.expect("response");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/dashboard", "never redirected off the dashboard");
        let cookie = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{}=", dashboard::COOKIE)))
            .expect("session cookie")
            .to_string();
        for part in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        assert!(!cookie.contains(w.read.as_str()), "the cookie never holds the token");
        t.cleanup().await;
    }
}

// ---- the browser ------------------------------------------------------------------------

/// chromedriver on a free port, killed with the test.
pub struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(name)).find(|p| p.is_file())
}

/// Starts chromedriver, or says why the browser test cannot run: without it the test is
/// skipped, except in CI where it is required (`.ci/run` installs it).
pub async fn chromedriver() -> Option<Driver> {
    let Some(binary) = find_in_path("chromedriver") else {
        crate::common::skip(
            "the browser test (chromedriver)",
            "chromedriver is not installed (apt-get install chromium chromium-driver; .ci/run does)",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let child = std::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(driver)
}

pub async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                                      "--window-size=1360,900", "--hide-scrollbars"]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// A screenshot of the whole page, to `target/test-output/dashboard/<name>.png`.
pub async fn screenshot(b: &fantoccini::Client, name: &str) {
    let height = b.execute("return document.documentElement.scrollHeight;", vec![]).await.expect("height");
    let height = height.as_u64().unwrap_or(900).clamp(600, 6000) as u32;
    b.set_window_size(1360, height).await.expect("resize");
    let png = b.screenshot().await.expect("screenshot");
    let dir = target_dir().join("test-output").join("dashboard");
    std::fs::create_dir_all(&dir).expect("output directory");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    b.set_window_size(1360, 900).await.expect("resize");
}

/// The text of the first element matching `css`, once there is one (a click's page may
/// still be loading).
pub async fn text(b: &fantoccini::Client, css: &str) -> String {
    // The overview replaces its figures every few seconds: an element found may be gone
    // by the time its text is read (a stale reference); then find it again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let wait = b.wait().at_most(Duration::from_secs(15));
        let element = wait.for_element(fantoccini::Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.text().await {
            Ok(text) => return text,
            Err(e) if Instant::now() < deadline => {
                assert!(format!("{e:?}").contains("StaleElementReference"), "{css}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

/// Waits until the browser is on `path`.
pub async fn on(b: &fantoccini::Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = b.current_url().await.expect("url");
        if url.path() == path {
            return;
        }
        assert!(Instant::now() < deadline, "still on {url}, expected {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(b: &fantoccini::Client) -> [String; 4] {
    let mut out: [String; 4] = Default::default();
    for (i, key) in ["processed_today", "cashback_issued", "review_queue", "failed"].into_iter().enumerate() {
        out[i] = text(b, &format!(".metric .value[data-metric={key}]")).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_an_operator_signs_in_watches_the_metrics_move_approves_an_order_and_opens_its_timeline() {
    use fantoccini::Locator::Css;
    let Some(driver) = chromedriver().await else { return };
    // SQLite only: this checks the pages in a browser (each step takes a browser round
    // trip, so twice would double the slowest test); the queries behind them run on both
    // backends in the dashboard's and admin API's HTTP tests.
    let t = backends::sqlite().await;
    let sink = sink().await;
    let w = seed(t.db.clone(), &sink).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cashbackd::http::serve_router(app(&w), listener, async {
        let _ = stopped.await;
    }));
    // The backtest worker `serve` runs beside the router.
    let worker = tokio::spawn(cashbackd::backtests::Worker::new(w.service.clone(), "browser-test").run());
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    // The demo's own traffic first, and its callbacks delivered.
    demo::simulate(&base).await.expect("demo traffic");
    w.deliverer.run_due().await.expect("deliveries");

    let b = browser(&driver).await;
    // Signed out, the dashboard is the login page; a wrong token is refused there.
    b.goto(&format!("{base}/dashboard")).await.expect("goto");
    on(&b, "/dashboard/login").await;
    b.find(Css("#token")).await.expect("token field").send_keys("cbk_not-a-token").await.expect("type");
    b.find(Css("button[type=submit]")).await.expect("submit").click().await.expect("click");
    assert!(text(&b, ".notice-error").await.contains("not a valid token"));
    screenshot(&b, "login").await;
    b.find(Css("#token")).await.expect("token field").send_keys(&w.admin).await.expect("type");
    b.find(Css("button[type=submit]")).await.expect("submit").click().await.expect("click");
    on(&b, "/dashboard").await;
    assert!(text(&b, "header .operator").await.contains("ops-admin"));

    // The four metrics, then three orders by postback: one credited at once, one for the
    // manual merchant (the review queue), one whose rule fails. The page refreshes itself.
    let before = metrics(&b).await;
    screenshot(&b, "overview-before").await;
    let credited = order(&client, &base, "demo-link", "alice", "B-1", "150.00").await;
    let manual = order(&client, &base, "manual-link", "bob", "B-2", "420.00").await;
    let failed = order(&client, &base, "broken-link", "alice", "B-3", "35.00").await;
    assert_eq!(w.service.conversion(&failed).await.expect("load").expect("row").status, Status::Failed);
    assert_eq!(w.service.conversion(&credited).await.expect("load").expect("row").status, Status::Processed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now = metrics(&b).await;
        if (0..4).all(|i| now[i] != before[i]) {
            break now;
        }
        assert!(Instant::now() < deadline, "the metrics did not all change: before {before:?}, now {now:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let number = |s: &str| s.parse::<i64>().expect("a count");
    assert_eq!(number(&after[0]), number(&before[0]) + 1, "one more order processed today");
    assert_eq!(number(&after[2]), number(&before[2]) + 1, "one more order awaiting review");
    assert_eq!(number(&after[3]), number(&before[3]) + 1, "one more failed");
    tokio::time::sleep(Duration::from_millis(1800)).await; // the highlight fades
    w.deliverer.run_due().await.expect("deliveries");
    screenshot(&b, "overview").await;

    // The review queue: approve the manual merchant's order, with a reason.
    b.goto(&format!("{base}/dashboard/review")).await.expect("goto");
    let row = b.find(Css(&format!("tbody[data-conversion='{manual}']"))).await.expect("the order is in the queue");
    screenshot(&b, "review").await;
    row.find(Css("input[name=reason]")).await.expect("reason").send_keys("customer verified").await.expect("type");
    row.find(Css("button[value=approve]")).await.expect("approve").click().await.expect("click");
    assert!(text(&b, ".notice-ok").await.contains("approved"));
    assert!(b.find(Css(&format!("tbody[data-conversion='{manual}']"))).await.is_err(), "it left the queue");
    assert_eq!(w.service.conversion(&manual).await.expect("load").expect("row").status, Status::Processed);
    screenshot(&b, "review-after").await;

    // Its timeline: every stage, its history (the approval by this operator), its postings
    // with the plugin that computed them.
    b.goto(&format!("{base}/dashboard/conversions?merchant=manual-shop")).await.expect("goto");
    screenshot(&b, "conversions").await;
    b.find(Css(&format!("a[href='/dashboard/conversions/{manual}']")))
        .await
        .expect("link")
        .click()
        .await
        .expect("click");
    let timeline = text(&b, "#timeline").await;
    for stage in ["Clicked", "Purchased", "Reported", "Rules ran", "Ledger"] {
        assert!(timeline.contains(stage), "{timeline}");
    }
    assert!(text(&b, "#history").await.contains("approve by ops-admin: customer verified"));
    let postings = text(&b, "#postings").await;
    assert!(postings.contains("flat-rate") && postings.contains("0.1.0"), "{postings}");
    screenshot(&b, "timeline").await;

    // The other pages, each with what it is for.
    b.goto(&format!("{base}/dashboard/delays")).await.expect("goto");
    b.find(Css("svg#by-via rect")).await.expect("the delay chart");
    let by_via = text(&b, "#delays-by-via").await;
    assert!(by_via.contains("file") && by_via.contains("api import") && by_via.contains("postback"), "{by_via}");
    screenshot(&b, "delays").await;

    b.goto(&format!("{base}/dashboard/plugins")).await.expect("goto");
    assert!(text(&b, "#placements").await.contains("demo-shop"));
    b.find(Css("#backtest select[name=plugin]"))
        .await
        .expect("plugin")
        .select_by_value("swap-rule@2.0.0")
        .await
        .expect("select");
    b.find(Css("#backtest select[name=merchant]"))
        .await
        .expect("merchant")
        .select_by_value("demo-shop")
        .await
        .expect("select");
    b.find(Css("#backtest button[type=submit]")).await.expect("run").click().await.expect("click");
    // The job's page: queued, then run by the server's backtest worker; the page reloads
    // itself until the result is there.
    assert!(text(&b, "#backtest-job").await.contains("demo-shop"));
    assert!(text(&b, "#backtest h2").await.contains("swap-rule@2.0.0"));
    assert!(text(&b, "#backtest").await.contains("conversions compared"));
    assert!(text(&b, "#backtest-state").await.contains("done"));
    screenshot(&b, "backtest").await;
    b.goto(&format!("{base}/dashboard/plugins")).await.expect("goto");
    assert!(text(&b, "#recent-backtests").await.contains("swap-rule@2.0.0"));
    screenshot(&b, "plugins").await;

    w.deliverer.run_due().await.expect("deliveries");
    b.goto(&format!("{base}/dashboard/deliveries")).await.expect("goto");
    assert!(text(&b, "#deliveries").await.contains("delivered"));
    screenshot(&b, "deliveries").await;
    b.find(Css("#deliveries a[href^='/dashboard/deliveries/']"))
        .await
        .expect("a delivery")
        .click()
        .await
        .expect("click");
    assert!(text(&b, "#attempts").await.contains("200"));
    screenshot(&b, "delivery").await;
    b.goto(&format!("{base}/dashboard/deliveries")).await.expect("goto");
    b.find(Css("#endpoints button[type=submit]")).await.expect("tester").click().await.expect("click");
    assert!(text(&b, ".notice-ok").await.contains("answered 200"));
    let sent = text(&b, "#tester").await;
    assert!(sent.contains("signature=***") && !sent.contains(PARTNER_SECRET), "{sent}");
    screenshot(&b, "tester").await;

    b.goto(&format!("{base}/dashboard/jobs")).await.expect("goto");
    b.find(Css("form[action='/dashboard/jobs/mature/run'] button"))
        .await
        .expect("run now")
        .click()
        .await
        .expect("click");
    assert!(text(&b, ".notice-ok").await.contains("mature ran"));
    screenshot(&b, "jobs").await;

    // Signing out ends the session on the server: the browser's cookie, replayed after
    // it, is refused.
    let cookie = b.get_named_cookie(dashboard::COOKIE).await.expect("the session cookie").value().to_string();
    assert!(cookie.len() == 64 && !cookie.contains(w.admin.as_str()), "a session id, not the token");
    b.find(Css("header form button")).await.expect("sign out").click().await.expect("click");
    on(&b, "/dashboard/login").await;
    b.goto(&format!("{base}/dashboard/review")).await.expect("goto");
    on(&b, "/dashboard/login").await;
    let replayed = client
        .get(format!("{base}/dashboard/review"))
        .header(reqwest::header::COOKIE, format!("{}={cookie}", dashboard::COOKIE))
        .send()
        .await
        .expect("replay");
    assert_eq!(replayed.status().as_u16(), 303, "a signed-out session stays out");

    b.close().await.expect("close");
    drop(driver);
    worker.abort();
    let _ = stop.send(());
    server.await.expect("server").expect("serve");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_an_operator_approves_pays_and_rejects_payouts_and_the_overview_counts_them() {
    use cashbackd::payouts::{self, NewPayout, PayoutPolicy, PayoutStatus};
    use fantoccini::Locator::Css;
    let Some(driver) = chromedriver().await else { return };
    let t = backends::sqlite().await;
    let sink = sink().await;
    let w = seed(t.db.clone(), &sink).await;
    let s = &w.service;
    // 80.00 of carol's cashback is available (a manual credit stands in for her orders).
    s.adjust("payouts-browser", "carol", "EUR", 8_000, "test", "available to pay out").await.expect("credit");
    let request = |amount: i64| NewPayout {
        user_id: "carol".into(),
        currency: "EUR".into(),
        amount: Some(amount),
        key: None,
        requested_by: "site".into(),
    };
    let (paid, _) = payouts::service::request(s, &PayoutPolicy::default(), request(5_000)).await.expect("request");
    let (rejected, _) = payouts::service::request(s, &PayoutPolicy::default(), request(2_000)).await.expect("request");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cashbackd::http::serve_router(app(&w), listener, async {
        let _ = stopped.await;
    }));

    let b = browser(&driver).await;
    b.goto(&format!("{base}/dashboard/payouts")).await.expect("goto");
    on(&b, "/dashboard/login").await;
    b.find(Css("#token")).await.expect("token field").send_keys(&w.write).await.expect("type");
    b.find(Css("button[type=submit]")).await.expect("submit").click().await.expect("click");
    on(&b, "/dashboard/payouts").await;
    assert!(text(&b, "header nav a.active").await.contains("Payouts"));
    assert!(text(&b, "#payouts-requested").await.contains("50.00 EUR"));
    screenshot(&b, "payouts").await;

    // Approve one: it moves to the payments to make; mark it paid with its reference.
    let row = b.find(Css(&format!("#payouts-requested tbody[data-payout='{}']", paid.id))).await.expect("requested");
    row.find(Css("button[value=approve]")).await.expect("approve").click().await.expect("click");
    assert!(text(&b, ".notice-ok").await.contains("approved"));
    let row = b.find(Css(&format!("#payouts-approved tbody[data-payout='{}']", paid.id))).await.expect("to pay");
    row.find(Css("input[name=reference]")).await.expect("reference").send_keys("SEPA-0042").await.expect("type");
    row.find(Css("button[value=paid]")).await.expect("mark paid").click().await.expect("click");
    assert!(text(&b, ".notice-ok").await.contains("marked paid"));
    // Reject the other, with a reason.
    let row =
        b.find(Css(&format!("#payouts-requested tbody[data-payout='{}']", rejected.id))).await.expect("requested");
    row.find(Css("input[name=reason]")).await.expect("reason").send_keys("duplicate request").await.expect("type");
    row.find(Css("button[value=reject]")).await.expect("reject").click().await.expect("click");
    assert!(text(&b, ".notice-ok").await.contains("rejected"));
    let closed = text(&b, "#payouts-closed").await;
    assert!(closed.contains("SEPA-0042") && closed.contains("duplicate request"), "{closed}");
    screenshot(&b, "payouts-after").await;
    let status =
        |id: String| async move { payouts::store::get(s.db(), &id).await.expect("read").expect("payout").status };
    assert_eq!(status(paid.id.clone()).await, PayoutStatus::Paid);
    assert_eq!(status(rejected.id.clone()).await, PayoutStatus::Rejected);

    // The payout's page: its steps, by this operator, and its postings.
    b.find(Css(&format!("#payouts-closed a[href='/dashboard/payouts/{}']", paid.id)))
        .await
        .expect("link")
        .click()
        .await
        .expect("click");
    assert!(text(&b, "#history").await.contains("approved by reviewer"));
    assert!(text(&b, "#postings").await.contains("payouts_paid"));
    screenshot(&b, "payout").await;

    // The overview: two requested today (70.00), one paid (50.00).
    b.goto(&format!("{base}/dashboard")).await.expect("goto");
    assert_eq!(text(&b, ".metric .value[data-metric=payouts_requested]").await, "2");
    assert_eq!(text(&b, ".metric .sub[data-metric=payouts_requested_amount]").await, "70.00 EUR");
    assert_eq!(text(&b, ".metric .value[data-metric=payouts_paid]").await, "1");
    assert_eq!(text(&b, ".metric .sub[data-metric=payouts_paid_amount]").await, "50.00 EUR");
    let split = text(&b, ".metric .sub[data-metric=cashback_split]").await;
    assert!(split.ends_with(" · 50.00 EUR paid out"), "where the issued cashback is: {split}");
    screenshot(&b, "overview-payouts").await;

    b.close().await.expect("close");
    drop(driver);
    let _ = stop.send(());
    server.await.expect("server").expect("serve");
    t.cleanup().await;
}
