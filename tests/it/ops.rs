//! What operators run cashbackd with: Prometheus metrics after real traffic, readiness,
//! JSON logs that hold no secret through a whole postback-to-callback flow, and the
//! configuration's layers and errors. The last two run the binary, as an operator does.

use crate::backends;
use crate::callbacks::{Sink, add_endpoint, deliverer};
use crate::common::*;
use crate::ingress::{get, send};
use crate::ledger::world;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use cashbackd::auth::{self, Scope};
use cashbackd::callbacks::{EndpointSpec, sign::Secret};
use cashbackd::conversions::NewClick;
use cashbackd::ingest::{self, InboundAuth, Link, Network};
use cashbackd::scheduler::{self, Scheduler};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The value of the series `name` whose labels include `labels`, summed over the others.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: HashMap<&str, &str> = series_labels
            .split("\",")
            .filter_map(|pair| pair.split_once("=\""))
            .map(|(k, v)| (k.trim_start_matches(','), v.trim_end_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

fn adapter_config() -> Value {
    json!({
        "params": { "transaction_id": "tid", "click_id": "subid", "amount": "amount", "commission": "comm",
                    "state": "status", "currency": "cur" },
        "states": { "pending": "PENDING", "approved": "COMPLETED", "declined": "REJECTED" },
        "default_currency": "EUR"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_ingest_plugins_queues_deliveries_and_jobs_after_a_postback_and_a_job_run() {
    cashbackd::metrics::install().expect("the Prometheus recorder is this process's");
    // SQLite only: what is checked are the counters, which the process-wide recorder keeps
    // across databases (a second backend would count into the same series); the storage
    // behind them runs on both backends in the tests of ingest, callbacks and jobs.
    let t = backends::sqlite().await;
    let w = world(t.db.clone()).await;
    let s = &w.service;
    // Labels of this test's own: the recorder is shared by every test of the binary.
    let adapter = cashbackd::registry::upload(s, &plugin_bytes(WASIP2, "generic_s2s")).await.expect("adapter").plugin;
    let network = Network {
        id: "ops-metrics".into(),
        name: "Ops".into(),
        adapter_digest: Some(adapter.digest.to_string()),
        adapter_config: adapter_config(),
        auth: InboundAuth::Token("ops-t0ken".into()),
    };
    ingest::upsert_network(s.db(), &network, s.now()).await.expect("network");
    let link = Link {
        id: "ops-link".into(),
        merchant_id: "shop".into(),
        network_id: "ops-metrics".into(),
        url_template: "https://shop.example/?c={click_id}".into(),
    };
    ingest::upsert_link(s.db(), &link, s.now()).await.expect("link");
    s.register_click(NewClick {
        click_id: "ops-click".into(),
        user_id: "u1".into(),
        merchant_id: Some("shop".into()),
        network_id: Some("ops-metrics".into()),
        ..Default::default()
    })
    .await
    .expect("click");
    let sink = Sink::start().await;
    let mut spec = EndpointSpec::new("ops-metrics-ep", "ops-partner", &format!("{}/cb?cid={{click_id}}", sink.base));
    spec.network_id = Some("ops-metrics".into());
    add_endpoint(&w, spec).await;
    let app = crate::common::app(s);

    let (status, _, _) = send(&app, get("/c/ops-link?user=u1")).await;
    assert_eq!(status, StatusCode::FOUND);
    let ok =
        "/postback/ops-metrics?tid=OPS-1&subid=ops-click&amount=20.00&comm=2.00&cur=EUR&status=pending&token=ops-t0ken";
    let (status, _, body) = send(&app, get(ok)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = send(&app, get(ok)).await;
    assert_eq!(status, StatusCode::OK, "the duplicate");
    // Above the rule's hold threshold: held for review.
    let held = "/postback/ops-metrics?tid=OPS-2&subid=ops-click&amount=2000.00&comm=2.00&cur=EUR&status=pending&token=ops-t0ken";
    let (status, _, body) = send(&app, get(held)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = send(&app, get("/postback/ops-metrics?tid=OPS-3&status=pending&token=wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // No transaction id: the adapter refuses it with its own error.
    let (status, _, _) = send(&app, get("/postback/ops-metrics?subid=ops-click&status=pending&token=ops-t0ken")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(&app, get("/postback/ops-invented-name?tid=X")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let delivered = deliverer(&w, "ops").run_due().await.expect("deliveries");
    assert!(delivered.delivered >= 2, "{delivered:?}");
    scheduler::ensure_system_jobs(s).await.expect("system jobs");
    let run = Scheduler::new(s.clone(), runtime().clone(), "ops").run_now("mature").await.expect("job");
    assert_eq!(run.outcome, "ok");

    let (status, _, text) = send(&app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    let net = ("network", "ops-metrics");
    let via = ("via", "postback");
    assert_eq!(m("cashbackd_ingest_events_total", &[net, via, ("outcome", "created")]), Some(2.0), "{text}");
    assert_eq!(m("cashbackd_ingest_events_total", &[net, via, ("outcome", "duplicate")]), Some(1.0));
    assert_eq!(m("cashbackd_ingest_events_total", &[net, via, ("outcome", "refused")]), Some(1.0));
    assert_eq!(m("cashbackd_ingest_events_total", &[net, via, ("outcome", "rejected")]), Some(1.0));
    assert_eq!(m("cashbackd_postback_duration_seconds_count", &[net, ("outcome", "accepted")]), Some(3.0));
    assert_eq!(m("cashbackd_postback_duration_seconds_count", &[net, ("outcome", "refused")]), Some(1.0));
    assert!(m("cashbackd_postback_duration_seconds_count", &[("network", "unknown")]).is_some());
    assert!(!text.contains("ops-invented-name"), "a name the sender made up is never a label");
    assert!(m("cashbackd_clicks_total", &[("outcome", "recorded")]).is_some_and(|n| n >= 1.0));

    let adapter = [("plugin", "generic-s2s"), ("version", "0.1.0"), ("call", "parse_postback")];
    assert!(m("cashbackd_plugin_call_duration_seconds_count", &adapter).is_some_and(|n| n >= 4.0), "{text}");
    let failed = [adapter[0], adapter[1], adapter[2], ("kind", "plugin")];
    assert!(m("cashbackd_plugin_call_failures_total", &failed).is_some_and(|n| n >= 1.0), "{text}");
    let rule = [("plugin", "flat-rate"), ("call", "evaluate")];
    assert!(m("cashbackd_plugin_call_duration_seconds_count", &rule).is_some_and(|n| n >= 2.0), "{text}");

    assert_eq!(m("cashbackd_queue_size", &[("queue", "review")]), Some(1.0), "{text}");
    assert_eq!(m("cashbackd_queue_size", &[("queue", "callbacks_pending")]), Some(0.0));
    assert_eq!(m("cashbackd_queue_size", &[("queue", "parked")]), Some(0.0));
    assert_eq!(m("cashbackd_queue_size", &[("queue", "failed")]), Some(0.0));
    assert_eq!(m("cashbackd_queue_size", &[("queue", "notifications_pending")]), Some(0.0));
    assert_eq!(m("cashbackd_database_up", &[]), Some(1.0));

    let ep = ("endpoint", "ops-metrics-ep");
    // The click's CREATED (seed 001: sent on the click) and the two orders' PENDING.
    assert_eq!(m("cashbackd_callback_deliveries_total", &[ep, ("outcome", "delivered")]), Some(3.0), "{text}");
    assert!(m("cashbackd_callback_delivery_duration_seconds_count", &[("outcome", "delivered")]).is_some());
    // The at-least-once window: one observation per recorded answer, every answer of the
    // process counted (a recorder per process), so at least this test's three.
    assert!(m("cashbackd_callback_unrecorded_seconds_count", &[]).is_some_and(|n| n >= 3.0), "{text}");
    assert!(m("cashbackd_job_runs_total", &[("job", "mature"), ("outcome", "ok")]).is_some_and(|n| n >= 1.0));
    assert!(m("cashbackd_job_duration_seconds_count", &[("job", "mature")]).is_some());
    let route = [("route", "/postback/{network}"), ("status", "200"), ("method", "GET")];
    assert!(m("cashbackd_http_requests_total", &route).is_some_and(|n| n >= 3.0), "{text}");
    for never in ["ops-t0ken", "ops-click", "OPS-1", "\"u1\"", "cv_"] {
        assert!(!text.contains(never), "{never} in the metrics");
    }

    // Public by default; with require_token, any admin API token.
    let guarded = crate::common::server_with(s, |c| c.metrics.require_token = true).router();
    let (status, _, _) = send(&guarded, get("/metrics")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let token = auth::create_token(s.db(), "prometheus", Scope::Read, s.now(), None).await.expect("token");
    let request = Request::get("/metrics").header("authorization", format!("Bearer {token}")).body(Body::empty());
    let (status, _, text) = send(&guarded, request.expect("request")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("cashbackd_queue_size"));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_on_a_migrated_database_and_503_with_the_reason_otherwise() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = crate::common::app(&w.service);
        let (status, _, body) = send(&app, get("/readyz")).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", t.name);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "ready");
        assert_eq!(v["checks"], json!({"database": "ok", "migrations": "ok", "plugin_runtime": "ok"}));

        // A migration missing, as if an older cashbackd had migrated this database. (Its
        // record is moved aside rather than deleted, to be put back: its SQL cannot run
        // twice.)
        let (latest,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&t.db.pool)
            .await
            .expect("latest migration");
        let set_version = |from: i64, to: i64| {
            sqlx::query("UPDATE _sqlx_migrations SET version = $1 WHERE version = $2").bind(to).bind(from)
        };
        set_version(latest, -latest).execute(&t.db.pool).await.expect("forget");
        let (status, _, body) = send(&app, get("/readyz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}: {body}", t.name);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["reason"], format!("migrations not applied: {latest} (run `cashbackd migrate`)"), "{body}");
        set_version(-latest, latest).execute(&t.db.pool).await.expect("put back");
        let (status, _, _) = send(&app, get("/readyz")).await;
        assert_eq!(status, StatusCode::OK);

        // The database gone: not ready, but alive.
        t.db.pool.close().await;
        let (status, _, body) = send(&app, get("/readyz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["reason"], "the database does not answer", "{body}");
        assert_eq!(v["checks"]["plugin_runtime"], "ok");
        let (status, _, body) = send(&app, get("/healthz")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "liveness does not depend on the database");
        t.cleanup().await;
    }
}

/// The binary with an environment free of the caller's cashbackd settings.
fn cashbackd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cashbackd"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("CASHBACKD_") || n == "DATABASE_URL") {
            c.env_remove(name);
        }
    }
    c.current_dir(dir).env("CASHBACKD_PLUGIN_STORE", shared_store());
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run cashbackd");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{c:?}: {text}");
    text
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_a_whole_postback_flow_logs_no_secret() {
    const TOKEN: &str = "ops-network-t0ken-77c1";
    const HMAC_SECRET: &str = "ops-hmac-secret-5e1f";
    const GET_SECRET: &str = "ops-get-endpoint-secret-0a9d";
    let webhook_key = b"ops-webhook-key-of-32-bytes-4b2c";
    let webhook_b64 = base64::engine::general_purpose::STANDARD.encode(webhook_key);
    let webhook = format!("whsec_{webhook_b64}");
    assert!(Secret::parse(&webhook, true).is_ok());

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    let db = ["--database-url", url.as_str()];
    let sink = Sink::start().await;
    let adapter = plugin_path(WASIP2, "generic_s2s");
    let rule = plugin_path(WASIP2, "flat_rate");
    let config = adapter_config().to_string();
    run_ok(
        cashbackd(dir.path())
            .args(db)
            .args(["merchant", "add", "shop", "--name", "Shop", "--rule-config", r#"{"rate_bps": 300}"#, "--rule"])
            .arg(&rule),
    );
    for (id, auth, secret) in [("tok", "token", TOKEN), ("hm", "hmac", HMAC_SECRET)] {
        run_ok(
            cashbackd(dir.path())
                .args(db)
                .args(["network", "add", id, "--name", id, "--auth", auth, "--config", &config, "--adapter"])
                .arg(&adapter)
                .env("CASHBACKD_NETWORK_SECRET", secret),
        );
    }
    run_ok(cashbackd(dir.path()).args(db).args([
        "link",
        "add",
        "l1",
        "--merchant",
        "shop",
        "--network",
        "tok",
        "--url",
        "https://shop.example/?c={click_id}",
    ]));
    run_ok(cashbackd(dir.path()).args(db).args(["partner", "add", "p1", "--name", "Partner"]));
    for (id, method, secret) in [("e-post", "post", webhook.as_str()), ("e-get", "get", GET_SECRET)] {
        run_ok(
            cashbackd(dir.path())
                .args(db)
                .args(["endpoint", "add", id, "--partner", "p1", "--method", method, "--url"])
                .arg(format!("{}/{id}?cid={{click_id}}&state=[%CASHBACK:STATE%]", sink.base))
                .env("CASHBACKD_CALLBACK_SECRET", secret),
        );
    }

    let mut child = cashbackd(dir.path())
        .args(db)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--callbacks-allow-private"])
        .env("CASHBACKD_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cashbackd serve");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let server = Server(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("cashbackd exited before listening").expect("stdout");
        if let Some(url) = line.strip_prefix("cashbackd listening on ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let click = client.get(format!("{base}/c/l1?user=u1")).send().await.expect("click");
    assert_eq!(click.status().as_u16(), 302);
    let location = click.headers()["location"].to_str().expect("location").to_string();
    let click_id = location.rsplit('=').next().expect("click id").to_string();
    let pb = client
        .get(format!(
            "{base}/postback/tok?tid=S-1&subid={click_id}&amount=50.00&comm=5.00&cur=EUR&status=pending&token={TOKEN}"
        ))
        .send()
        .await
        .expect("postback");
    assert_eq!(pb.status().as_u16(), 200, "{:?}", pb.text().await);
    let wrong = client.get(format!("{base}/postback/tok?tid=S-2&status=pending&token={TOKEN}x")).send().await;
    assert_eq!(wrong.expect("refused postback").status().as_u16(), 401);
    let query = format!("tid=S-3&subid={click_id}&amount=60.00&comm=6.00&cur=EUR&status=pending");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).expect("key");
    mac.update(query.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let signed = client
        .get(format!("{base}/postback/hm?{query}"))
        .header("x-cashbackd-signature", &signature)
        .send()
        .await
        .expect("signed postback");
    assert_eq!(signed.status().as_u16(), 200, "{:?}", signed.text().await);

    // Both endpoints get S-1's and S-3's PENDING, signed with their secrets.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.received().len() < 4 {
        assert!(Instant::now() < deadline, "callbacks not delivered: {:?}", sink.received());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = client.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("cashbackd_ingest_events_total"), "serve installs the recorder:\n{metrics}");
    assert!(metrics.contains("cashbackd_callback_deliveries_total"), "{metrics}");
    let ready = client.get(format!("{base}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    drop(server);

    let logs = logs.join().expect("stderr reader");
    let mut requests = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        if v["fields"]["message"] == "request" {
            requests += 1;
            assert!(v["span"]["route"].is_string() && v["fields"]["status"].is_number(), "{line}");
        }
    }
    assert!(requests >= 5, "a line per request:\n{logs}");
    assert!(logs.contains(r#""route":"/postback/{network}""#), "{logs}");
    for secret in [TOKEN, HMAC_SECRET, GET_SECRET, webhook.as_str(), webhook_b64.as_str(), signature.as_str()] {
        assert!(!logs.contains(secret), "{secret} is in the logs:\n{logs}");
    }
}

#[test]
fn configuration_layers_are_defaults_then_file_then_environment_then_flags_and_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cashbackd.toml");
    std::fs::write(
        &file,
        "[callbacks]\nmax_attempts = 5\n\n[http]\nlisten = \"127.0.0.1:9001\"\n\n[smtp]\nfrom = \"file <f@example.com>\"\n",
    )
    .expect("write");
    let text = run_ok(
        cashbackd(dir.path())
            .args(["config", "check"])
            .arg(&file)
            .args(["--smtp-from", "flag <x@example.com>"])
            .env("CASHBACKD_LISTEN", "127.0.0.1:9002")
            .env("CASHBACKD_SMTP_FROM", "env <e@example.com>")
            .env("CASHBACKD_DATABASE_URL", "postgres://app:hunter2@db.example/cb"),
    );
    let file_name = file.display().to_string();
    for expected in [
        format!("max_attempts = 5  # in {file_name}"),
        "listen = \"127.0.0.1:9002\"  # from CASHBACKD_LISTEN".to_string(),
        "from = \"flag <x@example.com>\"  # from --smtp-from".to_string(),
        "jitter_pct = 0\n".to_string(),
        "url = \"postgres://app:***@db.example/cb\"  # from CASHBACKD_DATABASE_URL (masked)".to_string(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("hunter2"));

    // The defaults file is what `config default` prints, and it checks.
    let defaults = run_ok(cashbackd(dir.path()).args(["config", "default"]));
    assert_eq!(defaults, cashbackd::config::DEFAULTS);

    let refused = |c: &mut Command| {
        let out = c.output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{c:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(cashbackd(dir.path()).args(["migrate"]).env("CASHBACKD_CALLBACKS_MAX_ATTEMPTS", "x"));
    assert_eq!(
        err.trim(),
        r#"error: callbacks.max_attempts: expected an integer, got "x" (from CASHBACKD_CALLBACKS_MAX_ATTEMPTS)"#
    );
    std::fs::write(&file, "[callbacks]\nmax_attempt = 5\n").expect("write");
    let err = refused(cashbackd(dir.path()).arg("--config").arg(&file).arg("migrate"));
    assert!(err.starts_with("error: callbacks.max_attempt: unknown key;"), "{err}");
    assert!(err.contains(&format!("(in {file_name})")), "{err}");
    let err = refused(cashbackd(dir.path()).args(["--database-url", "mysql://db/cb", "migrate"]));
    assert!(err.starts_with(r#"error: database.url: unsupported scheme "mysql""#), "{err}");
    assert!(err.trim_end().ends_with("(from --database-url)"), "{err}");
    let err = refused(cashbackd(dir.path()).args(["migrate"]).env("CASHBACKD_LOG_FORMAT", "xml"));
    assert!(err.contains("log.format: expected one of text, json, got \"xml\""), "{err}");
}
