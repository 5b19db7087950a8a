//! Partner callbacks, on SQLite and PostgreSQL: macros and encodings, signatures checked
//! by an independent implementation of the Standard Webhooks verifier, retries against a
//! local server answering 500 / 302 / timeout then 200, order per conversion,
//! auto-disable and replay of the backlog, a crash in the middle of a delivery, several
//! replicas, outbound safety, the tester and the admin API. Time moves by the manual
//! clock: no test sleeps through a retry schedule.

use crate::backends;
use crate::common::*;
use crate::ledger::{World, event, world};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use cashbackd::auth::{self, Scope};
use cashbackd::callbacks::deliver::{self, DeliveryFilter};
use cashbackd::callbacks::sign::Secret;
use cashbackd::callbacks::{self, Backoff, Deliverer, DeliveryConfig, EndpointSpec, Method, RetryPolicy};
use cashbackd::conversions::{NewClick, conversion_id};
use cashbackd::plugin::wit::latest::ConversionState;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::Row;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

const MINUTE: i64 = 60_000;

/// How the partner's server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    Redirect,
    /// Answers after this long (longer than the endpoint's timeout: a timeout).
    Slow(Duration),
    RetryAfter(u16, u64),
    Huge,
    /// A binary answer with NUL bytes.
    Binary,
}

#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: std::time::Instant,
    /// The status the sink answered with (a timeout or redirect counts as its status).
    pub status: u16,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Received {
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

#[derive(Default)]
struct SinkState {
    script: VecDeque<Reply>,
    received: Vec<Received>,
}

/// A partner's server: records every request, answers by script (then 200).
#[derive(Clone)]
pub struct Sink {
    pub base: String,
    state: Arc<Mutex<SinkState>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl Sink {
    pub async fn start() -> Sink {
        let state = Arc::new(Mutex::new(SinkState::default()));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (st, ar) = (state.clone(), arrived.clone());
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let (st, ar) = (st.clone(), ar.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let reply = {
                    let mut s = st.lock().expect("lock");
                    let reply = s.script.pop_front().unwrap_or(Reply::Status(200));
                    let status = match &reply {
                        Reply::Status(code) | Reply::RetryAfter(code, _) => *code,
                        Reply::Redirect => 302,
                        Reply::Slow(_) | Reply::Huge | Reply::Binary => 200,
                    };
                    s.received.push(Received {
                        at: std::time::Instant::now(),
                        status,
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        query: parts.uri.query().unwrap_or("").to_string(),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    reply
                };
                ar.notify_one();
                use axum::response::IntoResponse;
                match reply {
                    Reply::Status(code) => (StatusCode::from_u16(code).expect("code"), "ok").into_response(),
                    Reply::Redirect => (StatusCode::FOUND, [("location", "/followed")], "moved").into_response(),
                    Reply::Slow(d) => {
                        tokio::time::sleep(d).await;
                        (StatusCode::OK, "late").into_response()
                    }
                    Reply::RetryAfter(code, secs) => {
                        (StatusCode::from_u16(code).expect("code"), [("retry-after", secs.to_string())], "busy")
                            .into_response()
                    }
                    Reply::Huge => (StatusCode::OK, "x".repeat(1 << 20)).into_response(),
                    Reply::Binary => (StatusCode::OK, vec![0u8, 159, 146, 150, 0, b'o', b'k']).into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Sink { base, state, arrived }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().expect("lock").script.extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("lock").received.clone()
    }
}

pub fn deliverer(w: &World, owner: &str) -> Deliverer {
    let config = DeliveryConfig { allow_private: true, ..DeliveryConfig::default() };
    Deliverer::new(w.service.db().clone(), w.clock.clone(), config, owner).expect("deliverer")
}

pub async fn add_endpoint(w: &World, spec: EndpointSpec) {
    let db = w.service.db();
    callbacks::upsert_partner(db, &spec.partner_id, "Partner", w.service.now()).await.expect("partner");
    callbacks::save_endpoint(db, &spec, w.service.now()).await.expect("endpoint");
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff: Backoff::Fixed,
        delay_ms: 5 * MINUTE,
        max_delay_ms: 60 * MINUTE,
        jitter_pct: 0,
    }
}

async fn ingest(w: &World, tx: &str, state: ConversionState, amount: i64) {
    w.service.ingest(event(tx, state, amount, amount / 20)).await.expect("ingest");
}

async fn delivery_states(w: &World) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> =
        deliver::deliveries(w.service.db(), &DeliveryFilter { limit: Some(1000), ..Default::default() })
            .await
            .expect("deliveries")
            .into_iter()
            .map(|d| (d.conversion_state, d.state, d.attempts))
            .collect();
    v.reverse();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_macro_is_filled_and_each_value_is_url_encoded_exactly_once() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        w.service
            .register_click(NewClick {
                click_id: "c 2/ü".into(),
                user_id: "u1".into(),
                merchant_id: Some("shop".into()),
                network_id: Some("net".into()),
                ref_id: Some("lead 42&x=1".into()),
                subs: vec![Some("a b&c=d".into()), Some("%41".into()), Some("ünï €?".into()), None, Some("+".into())],
                ..Default::default()
            })
            .await
            .expect("click");
        w.service.map_merchant_ref("net", "M-77", "shop").await.expect("merchant ref");
        let template = format!(
            "{}/cb?state=[%CASHBACK:STATE%]&cid={{click_id}}&ref={{ref_id}}&s1={{sub1}}&s2={{sub2}}&s3={{sub3}}&s4={{sub4}}\
             &s5={{sub5}}&raw={{raw:sub2}}&pay={{payout}}&tx={{transaction_id}}&st={{status}}&m=[%CASHBACK:MERCHANT:NAME%]\
             &mref=[%CASHBACK:MERCHANT:REF%]&ev=[%CASHBACK:EVENT:NAME%]&oid=[%CASHBACK:ORDER:ID%]&why=[%CASHBACK:REASON%]\
             &line=[%CASHBACK:LINE_ID%]&delay=[%CASHBACK:REWARD_DELAY_DAYS%]",
            sink.base
        );
        let mut spec = EndpointSpec::new("ep", "p1", &template);
        spec.params.insert("app".into(), "my app&co".into());
        add_endpoint(&w, spec).await;

        let mut e = event("T 1&2", ConversionState::Pending, 10_000, 500);
        e.click_id = Some("c 2/ü".into());
        e.order_id = Some("O=1 ü".into());
        e.line_items = vec![line("L1", "shoes", 10_000)];
        w.service.ingest(e.clone()).await.expect("pending");
        e.state = ConversionState::Adjusted;
        e.amount = 8_000;
        e.line_items = vec![line("L1", "shoes", 8_000)];
        e.reason = Some("partial return: 1 of 2".into());
        w.service.ingest(e).await.expect("adjusted");

        let pass = deliverer(&w, "r1").run_due().await.expect("deliver");
        assert_eq!(pass.delivered, 2, "{}: {pass:?}", t.name);
        let got = sink.received();
        assert_eq!(got.len(), 2);
        let (first, second) = (&got[0], &got[1]);
        for (name, want) in [
            ("state", "PENDING"),
            ("cid", "c 2/ü"),
            ("ref", "lead 42&x=1"),
            ("s1", "a b&c=d"),
            ("s2", "%41"),
            ("s3", "ünï €?"),
            ("s4", ""),
            ("s5", "+"),
            ("pay", "10.00"),
            ("tx", "T 1&2"),
            ("st", "processed"),
            ("m", "Shop"),
            ("mref", "M-77"),
            ("ev", "sale"),
            ("oid", "O=1 ü"),
            ("why", ""),
            ("line", "L1"),
            ("delay", "30"),
            ("app", "my app&co"),
        ] {
            assert_eq!(first.param(name).as_deref(), Some(want), "{}: {name} in {}", t.name, first.query);
        }
        assert!(first.query.contains("&s2=%2541&"), "encoded once: {}", first.query);
        assert!(first.query.contains("&raw=%41&"), "raw: as it came: {}", first.query);
        assert!(first.query.contains("&s5=%2B&"), "a plus sign is not a space: {}", first.query);
        assert_eq!(second.param("state").as_deref(), Some("ADJUSTED"));
        assert_eq!(second.param("pay").as_deref(), Some("8.00"));
        assert_eq!(second.param("why").as_deref(), Some("partial return: 1 of 2"));
        t.cleanup().await;
    }
}

/// The Standard Webhooks reference verification, written here from the specification
/// (not with the code under test): base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}"
/// with the base64-decoded key of a `whsec_` secret, one of the space-separated `v1,`
/// signatures must match, and the timestamp must be within five minutes.
fn standard_webhooks_verify(
    secret: &str,
    headers: &HashMap<String, String>,
    body: &str,
    now_s: i64,
) -> Result<(), String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").ok_or("not a whsec_ secret")?)
        .map_err(|e| e.to_string())?;
    let id = headers.get("webhook-id").ok_or("no webhook-id")?;
    let ts = headers.get("webhook-timestamp").ok_or("no webhook-timestamp")?;
    let sigs = headers.get("webhook-signature").ok_or("no webhook-signature")?;
    let ts_n: i64 = ts.parse().map_err(|_| "bad timestamp")?;
    if (now_s - ts_n).abs() > 300 {
        return Err("timestamp too old or too new".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let ok = sigs.split(' ').filter_map(|s| s.split_once(',')).any(|(v, sig)| v == "v1" && sig == expected);
    if ok { Ok(()) } else { Err("no matching signature".into()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_callbacks_pass_the_standard_webhooks_verification_with_either_secret_while_rotating() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let (new, old) = (Secret::generate(), Secret::generate());
        let mut spec = EndpointSpec::new("hook", "p1", &format!("{}/hooks/cashback", sink.base));
        spec.method = Method::Post;
        spec.secrets = vec![new.clone(), old.clone()];
        spec.params.insert("app".into(), "a1".into());
        add_endpoint(&w, spec).await;
        ingest(&w, "tx1", ConversionState::Pending, 10_000).await;
        deliverer(&w, "r1").run_due().await.expect("deliver");
        let got = sink.received();
        assert_eq!(got.len(), 1, "{}", t.name);
        let r = &got[0];
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hooks/cashback"));
        let now_s = w.service.now() / 1000;
        standard_webhooks_verify(new.expose(), &r.headers, &r.body, now_s).expect("the new secret verifies");
        standard_webhooks_verify(old.expose(), &r.headers, &r.body, now_s).expect("the old secret verifies");
        assert!(standard_webhooks_verify(Secret::generate().expose(), &r.headers, &r.body, now_s).is_err());
        assert!(standard_webhooks_verify(new.expose(), &r.headers, &r.body.replace("10.00", "99.00"), now_s).is_err());
        assert!(standard_webhooks_verify(new.expose(), &r.headers, &r.body, now_s + 3600).is_err(), "replay window");
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("json body");
        assert_eq!(body["data"]["state"], "PENDING");
        assert_eq!(body["data"]["payout"], "10.00");
        assert_eq!(body["data"]["payout_minor"], 1000);
        assert_eq!(body["params"]["app"], "a1");
        assert_eq!(r.headers["webhook-id"], body["id"].as_str().expect("id"));
        // The log keeps the request without its signatures.
        let d = &deliver::deliveries(w.service.db(), &DeliveryFilter::default()).await.expect("list")[0];
        let (_, attempts) = deliver::delivery(w.service.db(), d.id).await.expect("delivery");
        let logged = serde_json::to_string(&attempts).expect("json");
        assert!(logged.contains("v1,*** v1,***"), "{logged}");
        assert!(!logged.contains(&r.headers["webhook-signature"][3..20]), "no signature in the log");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_callbacks_carry_an_hmac_of_their_query_string() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let secret = Secret::parse("partner-shared-secret-42", false).expect("secret");
        let mut spec =
            EndpointSpec::new("ep", "p1", &format!("{}/pb?s=[%CASHBACK:STATE%]&tx={{transaction_id}}", sink.base));
        spec.secrets = vec![secret];
        spec.signature_param = "sig".into();
        add_endpoint(&w, spec).await;
        ingest(&w, "tx 1", ConversionState::Pending, 10_000).await;
        deliverer(&w, "r1").run_due().await.expect("deliver");
        let r = &sink.received()[0];
        let (signed, sig) = r.query.rsplit_once("&sig=").expect("signature parameter last");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"partner-shared-secret-42").expect("key");
        mac.update(signed.as_bytes());
        assert_eq!(sig, hex::encode(mac.finalize().into_bytes()));
        assert_eq!(signed, "s=PENDING&tx=tx%201");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_a_302_and_a_timeout_are_retried_on_schedule_until_a_200_and_retry_after_is_honoured() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let mut spec = EndpointSpec::new("ep", "p1", &format!("{}/cb?s=[%CASHBACK:STATE%]", sink.base));
        spec.retry = fast_retries(4);
        spec.timeout_ms = 300;
        add_endpoint(&w, spec).await;
        sink.script([Reply::Status(500), Reply::Redirect, Reply::Slow(Duration::from_secs(3)), Reply::Status(200)]);
        ingest(&w, "tx1", ConversionState::Pending, 10_000).await;
        let d = deliverer(&w, "r1");
        let mut statuses = Vec::new();
        for step in 0..4 {
            let pass = d.run_due().await.expect("pass");
            assert_eq!(pass.claimed, 1, "{}: step {step}: {pass:?}", t.name);
            // Not due again before the endpoint's 5 minutes.
            assert_eq!(d.run_due().await.expect("early").claimed, 0, "{}: step {step}", t.name);
            w.clock.advance(5 * MINUTE);
            statuses.push(pass);
        }
        let got = sink.received();
        assert_eq!(
            got.len(),
            4,
            "a 302 is a failure and is not followed: {:?}",
            got.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|r| r.path == "/cb"));
        let id = deliver::deliveries(w.service.db(), &DeliveryFilter::default()).await.expect("list")[0].id;
        let (view, attempts) = deliver::delivery(w.service.db(), id).await.expect("delivery");
        assert_eq!(view.state, "delivered");
        let seen: Vec<(Option<i64>, &str)> = attempts.iter().map(|a| (a.status, a.outcome.as_str())).collect();
        assert_eq!(seen, vec![(Some(500), "retry"), (Some(302), "retry"), (None, "retry"), (Some(200), "delivered")]);
        assert!(attempts[2].error.as_deref().unwrap_or("").contains("timed out"), "{:?}", attempts[2]);
        let gaps: Vec<i64> = attempts.windows(2).map(|a| a[1].started_at - a[0].started_at).collect();
        assert_eq!(gaps, vec![5 * MINUTE; 3], "seed 003: 5 minutes apart");

        // Retry-After asks for an hour: nothing before it.
        sink.script([Reply::RetryAfter(503, 3600)]);
        ingest(&w, "tx2", ConversionState::Pending, 10_000).await;
        assert_eq!(d.run_due().await.expect("pass").retrying, 1);
        w.clock.advance(30 * MINUTE);
        assert_eq!(d.run_due().await.expect("pass").claimed, 0, "{}: Retry-After honoured", t.name);
        w.clock.advance(30 * MINUTE);
        assert_eq!(d.run_due().await.expect("pass").delivered, 1);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_is_sent_in_order_per_conversion_even_when_an_earlier_one_is_retried() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let mut spec =
            EndpointSpec::new("ep", "p1", &format!("{}/cb?s=[%CASHBACK:STATE%]&tx={{transaction_id}}", sink.base));
        spec.retry = fast_retries(3);
        add_endpoint(&w, spec).await;
        sink.script([Reply::Status(500)]);
        ingest(&w, "A", ConversionState::Pending, 10_000).await;
        ingest(&w, "A", ConversionState::Adjusted, 8_000).await;
        ingest(&w, "A", ConversionState::Completed, 8_000).await;
        ingest(&w, "A", ConversionState::Completed, 8_000).await; // a duplicate: no change, no callback
        let d = deliverer(&w, "r1");
        d.run_due().await.expect("pass");
        // A's PENDING failed: its ADJUSTED waits, another conversion does not.
        ingest(&w, "B", ConversionState::Pending, 5_000).await;
        d.run_due().await.expect("pass");
        let sent: Vec<(String, String)> = sink
            .received()
            .iter()
            .map(|r| (r.param("tx").unwrap_or_default(), r.param("s").unwrap_or_default()))
            .collect();
        assert_eq!(sent, vec![("A".into(), "PENDING".into()), ("B".into(), "PENDING".into())], "{}: A waits", t.name);
        w.clock.advance(5 * MINUTE);
        d.run_due().await.expect("pass");
        let sent: Vec<String> = sink
            .received()
            .iter()
            .filter(|r| r.param("tx").as_deref() == Some("A"))
            .map(|r| r.param("s").unwrap_or_default())
            .collect();
        assert_eq!(sent, vec!["PENDING", "PENDING", "ADJUSTED", "COMPLETED"], "{}", t.name);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_n_times_in_a_row_is_disabled_with_an_alert_and_enabling_it_replays_its_backlog() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let mut spec =
            EndpointSpec::new("ep", "p1", &format!("{}/cb?s=[%CASHBACK:STATE%]&tx={{transaction_id}}", sink.base));
        spec.retry = fast_retries(2);
        spec.disable_after = 3;
        add_endpoint(&w, spec).await;
        sink.script(std::iter::repeat_n(Reply::Status(500), 4));
        ingest(&w, "A", ConversionState::Pending, 10_000).await;
        ingest(&w, "B", ConversionState::Pending, 10_000).await;
        let d = deliverer(&w, "r1");
        assert!(d.run_due().await.expect("pass").disabled.is_empty());
        w.clock.advance(5 * MINUTE);
        let pass = d.run_due().await.expect("pass");
        assert_eq!((pass.failed, pass.disabled.clone()), (2, vec!["ep".to_string()]), "{}: {pass:?}", t.name);
        let alerts = callbacks::alerts(w.service.db(), 10).await.expect("alerts");
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].kind.as_str(), alerts[0].subject.as_str()), ("endpoint_disabled", "ep"));
        let view = &callbacks::endpoints(w.service.db()).await.expect("endpoints")[0];
        assert!(!view.enabled && view.consecutive_failures == 4, "{view:?}");

        // While disabled, new changes wait: nothing is sent.
        ingest(&w, "C", ConversionState::Pending, 10_000).await;
        w.clock.advance(60 * MINUTE);
        assert_eq!(d.run_due().await.expect("pass").claimed, 0);
        assert_eq!(sink.received().len(), 4);

        // Fixed and enabled: the backlog and what was given up go, in order.
        let done = callbacks::enable(w.service.db(), "ep", true, w.service.now()).await.expect("enable");
        assert_eq!((done.requeued, done.backlog), (2, 3), "{}", t.name);
        let pass = d.run_due().await.expect("pass");
        assert_eq!(pass.delivered, 3, "{pass:?}");
        let mut told: Vec<String> = sink.received()[4..].iter().map(|r| r.param("tx").unwrap_or_default()).collect();
        told.sort();
        assert_eq!(told, vec!["A", "B", "C"]);
        assert!(delivery_states(&w).await.iter().all(|(_, s, _)| s == "delivered"));
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_delivery_loses_nothing_and_nothing_acknowledged_is_sent_again() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let mut spec = EndpointSpec::new("hook", "p1", &format!("{}/hook", sink.base));
        spec.method = Method::Post;
        spec.secrets = vec![Secret::generate()];
        spec.timeout_ms = 60_000;
        add_endpoint(&w, spec).await;

        // A change rolled back with its transaction leaves no callback behind. The command
        // carries its rules' decision, so it runs to the end: its change and that change's
        // delivery are written inside the transaction (checked there), then rolled back.
        // Without the decision it would stop before writing anything and prove nothing.
        {
            let mut tx = w.service.db().pool.begin().await.expect("begin");
            let command = cashbackd::conversions::Command::Event {
                event: Box::new(event("ghost", ConversionState::Pending, 10_000, 500)),
                via: Default::default(),
                evaluation: Some(cashbackd::conversions::Evaluation::Decided {
                    cashback: 1_000,
                    hold: None,
                    reward_delay_days: None,
                    manual_review: false,
                    default_delay_days: 30,
                    plugins: Default::default(),
                    decision: serde_json::json!({}),
                    inputs: None,
                }),
            };
            cashbackd::conversions::apply::journal_and_apply(&mut tx, &command, w.service.now(), None, None)
                .await
                .expect("the command runs to the end inside the transaction");
            let (changes, deliveries) = ghost_outbox(&mut tx).await;
            assert_eq!((changes, deliveries), (1, 1), "{}: inside the transaction the outbox has the change", t.name);
            tx.rollback().await.expect("rollback");
        }

        sink.script([Reply::Slow(Duration::from_secs(30))]);
        ingest(&w, "tx1", ConversionState::Pending, 10_000).await;
        ingest(&w, "tx2", ConversionState::Pending, 10_000).await;
        let first = deliverer(&w, "replica-that-dies");
        let arrived = sink.arrived.clone();
        let running = tokio::spawn(async move { first.run_once().await });
        tokio::time::timeout(Duration::from_secs(10), arrived.notified()).await.expect("a request arrived");
        // tx2's request may or may not have been answered; tx1's hangs. The process dies.
        running.abort();
        let _ = running.await;
        // A real kill stops the process's database work with it; an aborted task does not:
        // a COMMIT it had already handed to the driver still lands a moment later. Wait
        // for the dead replica's transaction to end (the write lock on SQLite, the table
        // lock on PostgreSQL) before looking, so that what is read is what it left.
        settle(&w).await;
        // Answers are recorded as they come: tx2's, if it came, may be; tx1's cannot be.
        let recorded: Vec<String> = sqlx::query("SELECT outcome FROM callback_attempts")
            .fetch_all(&w.service.db().pool)
            .await
            .expect("attempts")
            .iter()
            .map(|r| r.try_get(0).expect("outcome"))
            .collect();
        assert!(recorded.len() <= 1 && recorded.iter().all(|o| o == "delivered"), "{}: {recorded:?}", t.name);
        let states = delivery_states(&w).await;
        assert_eq!(
            states.iter().filter(|(_, s, _)| s == "pending").count(),
            2 - recorded.len(),
            "{}: nothing lost: {states:?}",
            t.name
        );

        // Another replica (or the restarted process) waits for the lease, then delivers.
        let second = deliverer(&w, "replica-2");
        assert_eq!(second.run_due().await.expect("pass").claimed, 0, "the lease still holds");
        w.clock.advance(DeliveryConfig::default().lease_ms + 1);
        assert_eq!(second.run_due().await.expect("pass").delivered, 2 - recorded.len(), "{}", t.name);
        let acknowledged = sink.received().len();
        w.clock.advance(24 * 60 * MINUTE);
        assert_eq!(second.run_due().await.expect("pass").claimed, 0);
        assert_eq!(sink.received().len(), acknowledged, "nothing acknowledged is sent again");
        // Each change reached the partner under one message id, whatever the resends.
        let mut ids: Vec<String> = sink.received().iter().map(|r| r.headers["webhook-id"].clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2);
        let delivered: i64 = sqlx::query("SELECT COUNT(*) FROM callback_attempts WHERE outcome = 'delivered'")
            .fetch_one(&w.service.db().pool)
            .await
            .expect("count")
            .try_get(0)
            .expect("n");
        assert_eq!(delivered, 2);
        let mut conn = w.service.db().pool.acquire().await.expect("connection");
        assert_eq!(ghost_outbox(&mut conn).await, (0, 0), "{}: a rolled-back change has no outbox row", t.name);
        drop(conn);
        t.cleanup().await;
    }
}

/// Waits until no other transaction writes the delivery tables: the write lock on SQLite,
/// an exclusive table lock on PostgreSQL (both wait for a transaction in progress).
async fn settle(w: &World) {
    let db = w.service.db();
    let mut conn = db.pool.acquire().await.expect("connection");
    let statements: &[&str] = match db.backend {
        cashbackd::db::Backend::Sqlite => &["BEGIN IMMEDIATE", "COMMIT"],
        cashbackd::db::Backend::Postgres => {
            &["BEGIN", "LOCK TABLE callback_deliveries, callback_attempts IN EXCLUSIVE MODE", "COMMIT"]
        }
    };
    for sql in statements {
        sqlx::query(sql).execute(&mut *conn).await.expect("settle");
    }
}

/// The outbox rows of the rolled-back conversion "ghost": its changes and their deliveries.
async fn ghost_outbox(conn: &mut sqlx::AnyConnection) -> (i64, i64) {
    let count = |sql: &'static str| sqlx::query(sql).bind(conversion_id("net", "ghost"));
    let changes: i64 = count("SELECT COUNT(*) FROM conversion_changes WHERE conversion_id = $1")
        .fetch_one(&mut *conn)
        .await
        .expect("count")
        .try_get(0)
        .expect("n");
    let deliveries: i64 = count("SELECT COUNT(*) FROM callback_deliveries WHERE conversion_id = $1")
        .fetch_one(&mut *conn)
        .await
        .expect("count")
        .try_get(0)
        .expect("n");
    (changes, deliveries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_could_outlast_its_lease_is_not_started_but_released() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let mut spec = EndpointSpec::new("ep", "p1", &format!("{}/cb", sink.base));
        spec.timeout_ms = 10_000;
        add_endpoint(&w, spec).await;
        ingest(&w, "tx1", ConversionState::Pending, 10_000).await;
        let config = DeliveryConfig { allow_private: true, lease_ms: 5_000, ..DeliveryConfig::default() };
        let short = Deliverer::new(w.service.db().clone(), w.clock.clone(), config, "short-lease").expect("d");
        // One pass: `run_due`'s two lanes could each claim the delivery in turn (one releases
        // it, the other claims it again), which made this count flaky under load.
        let pass = short.run_once().await.expect("pass");
        assert_eq!((pass.claimed, pass.released, pass.delivered), (1, 1, 0), "{pass:?}");
        assert!(sink.received().is_empty());
        assert_eq!(
            delivery_states(&w).await,
            vec![("PENDING".to_string(), "pending".to_string(), 0)],
            "no attempt counted"
        );
        assert_eq!(
            deliverer(&w, "normal").run_due().await.expect("pass").delivered,
            1,
            "released at once, not after the lease"
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_delivering_at_the_same_time_send_each_delivery_once() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        add_endpoint(&w, EndpointSpec::new("ep", "p1", &format!("{}/cb?tx={{transaction_id}}", sink.base))).await;
        for i in 0..30 {
            ingest(&w, &format!("T{i}"), ConversionState::Pending, 1_000 + i).await;
        }
        let replicas: Vec<Deliverer> = (0..3).map(|i| deliverer(&w, &format!("replica-{i}"))).collect();
        let config = DeliveryConfig { allow_private: true, batch: 7, ..DeliveryConfig::default() };
        let small: Vec<Deliverer> = (0..3)
            .map(|i| {
                Deliverer::new(w.service.db().clone(), w.clock.clone(), config.clone(), format!("small-{i}"))
                    .expect("d")
            })
            .collect();
        let (a, b, c) = tokio::join!(small[0].run_due(), small[1].run_due(), small[2].run_due());
        let total = a.expect("a").delivered + b.expect("b").delivered + c.expect("c").delivered;
        assert_eq!(total, 30, "{}", t.name);
        for r in &replicas {
            assert_eq!(r.run_due().await.expect("pass").claimed, 0);
        }
        let mut txs: Vec<String> = sink.received().iter().map(|r| r.param("tx").unwrap_or_default()).collect();
        txs.sort();
        let before = txs.len();
        txs.dedup();
        assert_eq!((before, txs.len()), (30, 30), "{}: each sent once", t.name);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_loopback_addresses_are_refused_unless_allowed_and_bodies_are_capped() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let port = sink.base.rsplit(':').next().expect("port").to_string();
        add_endpoint(&w, EndpointSpec::new("literal", "p1", &format!("{}/cb", sink.base))).await;
        add_endpoint(&w, EndpointSpec::new("by-name", "p1", &format!("http://localhost:{port}/cb"))).await;
        ingest(&w, "tx1", ConversionState::Pending, 10_000).await;
        let strict =
            Deliverer::new(w.service.db().clone(), w.clock.clone(), DeliveryConfig::default(), "strict").expect("d");
        let pass = strict.run_due().await.expect("pass");
        assert_eq!(pass.retrying, 2, "{pass:?}");
        assert!(sink.received().is_empty(), "nothing reached the loopback server");
        let errors: Vec<String> = deliver::attempts(w.service.db(), None, None, 10)
            .await
            .expect("attempts")
            .into_iter()
            .map(|a| a.error.unwrap_or_default())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains("127.0.0.1 is a private, loopback or link-local address")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("localhost resolves only to private")),
            "the resolved address is checked: {errors:?}"
        );
        let report = strict.test("literal").await.expect("tester");
        assert!(!report.delivered && report.error.as_deref().unwrap_or("").contains("private"), "{report:?}");

        // Allowed by the operator: delivered, and a huge answer is read only up to the cap.
        sink.script([Reply::Huge, Reply::Huge]);
        w.clock.advance(5 * MINUTE);
        let pass = deliverer(&w, "open").run_due().await.expect("pass");
        assert_eq!(pass.delivered, 2, "{pass:?}");
        let attempts = deliver::attempts(w.service.db(), None, None, 10).await.expect("attempts");
        let excerpt = attempts.last().and_then(|a| a.response_excerpt.clone()).unwrap_or_default();
        assert_eq!(excerpt.len(), 1024, "the log keeps an excerpt");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tester_sends_a_sample_and_shows_the_exact_request_and_response() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let mut spec = EndpointSpec::new("hook", "p1", &format!("{}/hook?s=[%CASHBACK:STATE%]", sink.base));
        spec.method = Method::Post;
        spec.secrets = vec![Secret::generate()];
        add_endpoint(&w, spec.clone()).await;
        let report = deliverer(&w, "tester").test("hook").await.expect("test");
        assert!(report.delivered, "{report:?}");
        let got = &sink.received()[0];
        assert_eq!(report.request.url, format!("{}{}?{}", sink.base, got.path, got.query), "the exact URL");
        assert_eq!(report.request.body.as_deref(), Some(got.body.as_str()), "the exact body");
        let sig = report.request.headers.iter().find(|(k, _)| k == "webhook-signature").expect("signature").1.clone();
        assert_eq!(got.headers["webhook-signature"], sig);
        standard_webhooks_verify(spec.secrets[0].expose(), &got.headers, &got.body, w.service.now() / 1000)
            .expect("the sample is signed like a real callback");
        let response = report.response.expect("response");
        assert_eq!((response.status, response.body_excerpt.as_str()), (200, "ok"));
        // A binary answer (NUL bytes: PostgreSQL text cannot hold them) is logged too.
        sink.script([Reply::Binary]);
        let binary = deliverer(&w, "tester").test("hook").await.expect("test with a binary answer");
        assert!(binary.delivered && binary.response.expect("response").body_excerpt.ends_with("ok"));
        let logged = deliver::attempts(w.service.db(), None, Some("hook"), 10).await.expect("log");
        assert_eq!(logged.len(), 2, "{}", t.name);
        assert_eq!(logged[0].outcome, "test");
        assert!(!serde_json::to_string(&logged).expect("json").contains(&sig), "{}: no signature in the log", t.name);
        assert!(logged[1].response_excerpt.as_deref().unwrap_or("").contains('\u{fffd}'), "{:?}", logged[1]);
        t.cleanup().await;
    }
}

async fn call(app: &axum::Router, method: &str, uri: &str, token: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_replay_and_tester_are_served_under_api_v1_by_scope_without_secrets() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let sink = Sink::start().await;
        let secret = Secret::generate();
        let mut spec = EndpointSpec::new("hook", "p1", &format!("{}/hook", sink.base));
        spec.method = Method::Post;
        spec.secrets = vec![secret.clone()];
        add_endpoint(&w, spec).await;
        ingest(&w, "tx1", ConversionState::Pending, 10_000).await;
        let d = deliverer(&w, "r1");
        d.run_due().await.expect("deliver");
        let app = crate::common::server(&w.service).with_deliverer(d.clone()).router();
        let now = w.service.now();
        let read = auth::create_token(w.service.db(), "viewer", Scope::Read, now, None).await.expect("token");
        let write = auth::create_token(w.service.db(), "ops", Scope::Write, now, None).await.expect("token");

        let (status, body) = call(&app, "GET", "/api/v1/callbacks/endpoints", &read, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!body.contains(&secret.expose()[6..]), "{}: secrets are masked: {body}", t.name);
        assert!(body.contains("whsec_…"), "{body}");
        let (status, body) = call(&app, "GET", "/api/v1/callbacks/deliveries?endpoint=hook", &read, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).expect("json");
        let id = list["deliveries"][0]["message_id"].as_str().expect("id").to_string();
        assert_eq!(list["deliveries"][0]["state"], "delivered");
        let (status, body) = call(&app, "GET", &format!("/api/v1/callbacks/deliveries/{id}"), &read, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let detail: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(detail["attempts"][0]["status"], 200);
        assert!(detail["attempts"][0]["latency_ms"].is_i64());

        let (status, body) = call(&app, "POST", &format!("/api/v1/callbacks/deliveries/{id}/replay"), &read, "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "replay needs the write scope: {body}");
        let (status, body) = call(&app, "POST", &format!("/api/v1/callbacks/deliveries/{id}/replay"), &write, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(d.run_due().await.expect("pass").delivered, 1, "replayed");
        assert_eq!(sink.received().len(), 2);
        let (status, body) = call(&app, "POST", "/api/v1/callbacks/deliveries/nope/replay", &write, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = call(&app, "POST", "/api/v1/callbacks/deliveries/cbk_d999/replay", &write, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = call(&app, "POST", "/api/v1/callbacks/replay", &write, r#"{"to": 1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("from: required"), "{body}");
        let range = format!(r#"{{"endpoint": "hook", "from": {}, "to": {}}}"#, now - 1000, now + 1000);
        let (status, body) = call(&app, "POST", "/api/v1/callbacks/replay", &write, &range).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"replayed":1}"#));

        let (status, body) = call(&app, "POST", "/api/v1/callbacks/endpoints/hook/test", &write, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(report["delivered"], true);
        assert_eq!(report["response"]["status"], 200);
        let (status, _) = call(&app, "POST", "/api/v1/callbacks/endpoints/nope/test", &write, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = call(&app, "POST", "/api/v1/callbacks/endpoints/hook/disable", &write, "{}").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(&app, "POST", "/api/v1/callbacks/endpoints/hook/enable", &write, "[1]").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = call(&app, "GET", "/api/v1/alerts", &read, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        t.cleanup().await;
    }
}

/// Issue 15, point 1: a partner that never answers and one that fails at once, beside five
/// healthy ones under load. Each endpoint has its own share of the requests in flight and
/// answers are recorded as they come, so every healthy delivery is delivered (recorded)
/// before the hanging endpoint's first timeout is: the attempt log's order says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_partner_and_a_failing_one_hold_up_no_healthy_delivery() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let held = Arc::new(AtomicUsize::new(0));
        let counted = held.clone();
        let app = axum::Router::new()
            .route(
                "/hang",
                axum::routing::get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<&'static str>()
                }),
            )
            .route("/fail", axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }))
            .fallback(|| async { "ok" });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        for i in 0..5 {
            add_endpoint(
                &w,
                EndpointSpec::new(&format!("ok{i}"), "p1", &format!("{base}/ok/{i}?tx={{transaction_id}}")),
            )
            .await;
        }
        let mut hang = EndpointSpec::new("hang", "p1", &format!("{base}/hang?tx={{transaction_id}}"));
        // Long enough for the healthy load on a busy machine; the test waits for it.
        hang.timeout_ms = 5_000;
        add_endpoint(&w, hang).await;
        add_endpoint(&w, EndpointSpec::new("fail", "p1", &format!("{base}/fail?tx={{transaction_id}}"))).await;

        // Under load: changes before the worker starts, and more while the hanging
        // endpoint holds its requests. Each change goes to all seven endpoints.
        for i in 0..40 {
            ingest(&w, &format!("A{i}"), ConversionState::Pending, 1_000 + i).await;
        }
        let config = DeliveryConfig::default();
        let d = deliverer(&w, "r1");
        let running = tokio::spawn(async move { d.run_due().await });
        crate::public::eventually(30, "the hanging endpoint holding its requests", || {
            let n = held.load(Ordering::SeqCst);
            async move { (n >= config.endpoint_concurrency).then_some(()) }
        })
        .await;
        for i in 0..40 {
            ingest(&w, &format!("B{i}"), ConversionState::Pending, 2_000 + i).await;
        }
        let db = w.service.db().clone();
        let count = |sql: &'static str| {
            let db = db.clone();
            async move {
                let n: i64 = sqlx::query(sql).fetch_one(&db.pool).await.expect("count").try_get(0).expect("n");
                n
            }
        };
        crate::public::eventually(60, "every healthy delivery", || {
            let n =
                count("SELECT COUNT(*) FROM callback_deliveries WHERE endpoint_id LIKE 'ok%' AND state = 'delivered'");
            async move { (n.await == 400).then_some(()) }
        })
        .await;
        // In flight to the hanging endpoint then, and its outcomes recorded by then.
        let held_then = held.load(Ordering::SeqCst);
        let hang_then = count("SELECT COUNT(*) FROM callback_attempts WHERE endpoint_id = 'hang'").await;
        // The hanging endpoint's first timeout, recorded.
        crate::public::eventually(60, "the hanging endpoint's first timeout", || {
            let n = count("SELECT COUNT(*) FROM callback_attempts WHERE endpoint_id = 'hang'");
            async move { (n.await > 0).then_some(()) }
        })
        .await;
        running.abort();
        let _ = running.await;

        let delivered = count(
            "SELECT COUNT(*) FROM callback_deliveries WHERE endpoint_id LIKE 'ok%' AND state = 'delivered' \
             AND delivered_at IS NOT NULL",
        )
        .await;
        let healthy_attempts = count("SELECT COUNT(*) FROM callback_attempts WHERE endpoint_id LIKE 'ok%'").await;
        let before_timeout = count(
            "SELECT COUNT(*) FROM callback_attempts a WHERE a.endpoint_id LIKE 'ok%' AND a.outcome = 'delivered' \
             AND a.id < (SELECT MIN(h.id) FROM callback_attempts h WHERE h.endpoint_id = 'hang')",
        )
        .await;
        assert_eq!((delivered, healthy_attempts), (400, 400), "{}: every healthy delivery, each sent once", t.name);
        assert_eq!(before_timeout, 400, "{}: every healthy delivery was recorded before the first timeout", t.name);
        // The hanging endpoint never had more than its share in flight; the failing one
        // was tried (and failed fast) meanwhile.
        assert_eq!((held_then, hang_then), (config.endpoint_concurrency, 0), "{}", t.name);
        let hang_outcomes: Vec<String> =
            sqlx::query("SELECT COALESCE(error, '') FROM callback_attempts WHERE endpoint_id = 'hang'")
                .fetch_all(&db.pool)
                .await
                .expect("attempts")
                .iter()
                .map(|r| r.try_get(0).expect("error"))
                .collect();
        assert!(hang_outcomes.iter().all(|e| e.contains("timed out")), "{}: {hang_outcomes:?}", t.name);
        let failed_fast =
            count("SELECT COUNT(*) FROM callback_attempts WHERE endpoint_id = 'fail' AND status = 500").await;
        assert!(failed_fast >= 20, "{}: the failing endpoint was tried too: {failed_fast}", t.name);
        t.cleanup().await;
    }
}

/// Issue 15, point 4: one source of defaults. From an empty database, with `callbacks.*`
/// configured (here by environment variables), an endpoint made by `cashbackd endpoint
/// add` and one made by `PUT /api/v1/callbacks/endpoints/{id}` of a real `cashbackd
/// serve`, neither giving a retry setting, get the same configured schedule, timeout and
/// disable threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_made_by_the_cli_or_the_api_gets_the_configured_defaults() {
    for t in backends::all().await {
        let mut install = crate::public::Install::new(&t);
        for (key, value) in [
            ("CASHBACKD_CALLBACKS_MAX_ATTEMPTS", "7"),
            ("CASHBACKD_CALLBACKS_BACKOFF", "exponential"),
            ("CASHBACKD_CALLBACKS_RETRY_DELAY_SECS", "42"),
            ("CASHBACKD_CALLBACKS_MAX_DELAY_SECS", "4200"),
            ("CASHBACKD_CALLBACKS_JITTER_PCT", "10"),
            ("CASHBACKD_CALLBACKS_TIMEOUT_MS", "2500"),
            ("CASHBACKD_CALLBACKS_DISABLE_AFTER", "9"),
        ] {
            install.env.push((key.to_string(), value.to_string()));
        }
        install.ok(&["partner", "add", "p1", "--name", "P1"]);
        install.ok(&["endpoint", "add", "by-cli", "--partner", "p1", "--url", "https://p.example/cb?s={state}"]);
        let serve = install.serve("serve", &[]);
        let client = crate::public::Client::new(&serve.base, &install.admin_token());
        let body = serde_json::json!({"partner_id": "p1", "url_template": "https://p.example/cb?s={state}"});
        client.expect(200, "PUT", "/api/v1/callbacks/endpoints/by-api", Some(body)).await;
        // Given explicitly, a field wins over the configured default.
        let body = serde_json::json!({"partner_id": "p1", "url_template": "https://p.example/cb", "max_attempts": 2});
        client.expect(200, "PUT", "/api/v1/callbacks/endpoints/explicit", Some(body)).await;
        let listed = client.expect(200, "GET", "/api/v1/callbacks/endpoints", None).await;
        let endpoint = |id: &str| {
            listed["endpoints"]
                .as_array()
                .expect("endpoints")
                .iter()
                .find(|e| e["id"] == id)
                .unwrap_or_else(|| panic!("{id} in {listed}"))
                .clone()
        };
        let configured = serde_json::json!({
            "max_attempts": 7, "backoff": "exponential", "delay_ms": 42_000, "max_delay_ms": 4_200_000, "jitter_pct": 10
        });
        for id in ["by-cli", "by-api"] {
            let e = endpoint(id);
            assert_eq!(
                (&e["retry"], &e["timeout_ms"], &e["disable_after"]),
                (&configured, &serde_json::json!(2500), &serde_json::json!(9)),
                "{}: {id}",
                t.name
            );
        }
        let explicit = endpoint("explicit");
        assert_eq!(
            (&explicit["retry"]["max_attempts"], &explicit["retry"]["delay_ms"]),
            (&serde_json::json!(2), &serde_json::json!(42_000))
        );
        drop(serve);
        t.cleanup().await;
    }
}
