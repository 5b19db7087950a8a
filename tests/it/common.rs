//! Shared helpers: where the built plugins are, one runtime for the whole test binary
//! (as a server has one), and test orders.

use cashbackd::plugin::wit::latest;
use cashbackd::plugin::{LoadedPlugin, PluginRuntime, RuntimeConfig};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

pub const WASIP2: &str = "wasm32-wasip2";
pub const UNKNOWN: &str = "wasm32-unknown-unknown";

/// Where every skip of this run is written, one line each: cargo hides a passing test's
/// output, so `scripts/test.sh` prints this file at the end of the run (and fails in CI).
pub fn skips_file() -> PathBuf {
    target_dir().join("test-skips.log")
}

/// Skips part of a test for a missing dependency: fails in CI, where nothing may be
/// skipped; elsewhere says why on stderr and appends it to [`skips_file`], naming the test
/// (the harness names each test's thread after it).
pub fn skip(what: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required in CI: {why}");
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("SKIPPED {what} in {test}: {why}");
    eprintln!("{line}");
    // One write per line in append mode: the test threads and processes do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skips_file())
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("could not record the skip in {}: {e}", skips_file().display());
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The built component of a plugin crate (`flat_rate`, `hostile_rule`...).
pub fn plugin_path(target: &str, crate_name: &str) -> PathBuf {
    let path = target_dir().join("plugins").join(target).join(format!("{crate_name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh first (the README's test command does)",
        path.display()
    );
    path
}

pub fn plugin_bytes(target: &str, crate_name: &str) -> Vec<u8> {
    std::fs::read(plugin_path(target, crate_name)).expect("read plugin")
}

/// Compiled artifacts survive across tests and runs here.
pub fn shared_store() -> PathBuf {
    target_dir().join("test-plugin-store")
}

/// The runtime every test shares, like a server process shares one. Its adapters may
/// reach private addresses: the tests' fake networks listen on 127.0.0.1
/// (`security.rs` checks the refusal with runtimes of its own).
pub fn runtime() -> &'static Arc<PluginRuntime> {
    static RUNTIME: OnceLock<Arc<PluginRuntime>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let config = RuntimeConfig { http_allow_private: true, ..RuntimeConfig::new(shared_store()) };
        Arc::new(PluginRuntime::new(config).expect("runtime"))
    })
}

/// The server's one assembly (`cashbackd::server::Server`, what `serve` runs) around a
/// test's service: its own clock and database, the shared runtime, loopback partners
/// allowed, and no ingress rate limit (tests send bursts from one address).
pub fn server(service: &cashbackd::conversions::Service) -> cashbackd::server::Server {
    server_with(service, |_| {})
}

/// [`server`] with settings of the test's own (`metrics.require_token`, say).
pub fn server_with(
    service: &cashbackd::conversions::Service,
    configure: impl FnOnce(&mut cashbackd::config::Settings),
) -> cashbackd::server::Server {
    let mut settings = cashbackd::config::Settings::default();
    settings.callbacks.allow_private = true;
    configure(&mut settings);
    cashbackd::server::Server::new(service.clone(), runtime().clone(), &settings, "test")
        .expect("server")
        .with_http(cashbackd::http::HttpConfig::default())
}

/// [`server`]'s router.
pub fn app(service: &cashbackd::conversions::Service) -> axum::Router {
    server(service).router()
}

pub fn load(target: &str, crate_name: &str) -> Arc<LoadedPlugin> {
    runtime().load(&plugin_bytes(target, crate_name)).expect("load plugin")
}

pub fn config(plugin: &LoadedPlugin, json: serde_json::Value) -> cashbackd::plugin::PluginConfig {
    plugin.manifest.validate_config(&json).expect("valid config")
}

pub fn line(id: &str, category: &str, amount: i64) -> latest::LineItem {
    latest::LineItem { id: id.into(), sku: format!("SKU-{id}"), category: category.into(), quantity: 1, amount }
}

pub fn order(id: &str, lines: Vec<latest::LineItem>) -> latest::Order {
    let mut order = cashbackd::plugin::sample::order(id, "EUR", &[]);
    order.amount.minor = lines.iter().map(|l| l.amount).sum();
    order.commission.minor = order.amount.minor / 10;
    order.line_items = lines;
    order
}

pub use cashbackd::plugin::sample::context;

/// Stores a component that no product path would take (`hostile_rule` and
/// `hostile_adapter` embed no fixtures, so the registry refuses them) with SQL, behind the
/// registry's back: what a database written before the registry checked fixtures may
/// hold. Returns its digest.
pub async fn store_unproven(service: &cashbackd::conversions::Service, crate_name: &str) -> String {
    let bytes = plugin_bytes(WASIP2, crate_name);
    let plugin = service.runtime().load(&bytes).expect("load");
    let digest = plugin.digest.to_string();
    sqlx::query(
        "INSERT INTO plugins (digest, name, version, kind, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(&digest)
    .bind(&plugin.manifest.name)
    .bind(plugin.manifest.version.to_string())
    .bind(plugin.kind().to_string())
    .bind(bytes)
    .bind(service.now())
    .execute(&service.db().pool)
    .await
    .expect("plugin row");
    digest
}

/// Puts such a component ([`store_unproven`]) into `merchant`'s chain, alone, with SQL:
/// the stand-in for a rule whose fixtures pass but which breaks on live input. The tests
/// of what the host does with a plugin that fails need one in place.
pub async fn install_unproven_rule(
    service: &cashbackd::conversions::Service,
    merchant: &str,
    crate_name: &str,
    config: serde_json::Value,
) -> String {
    let digest = store_unproven(service, crate_name).await;
    let pool = &service.db().pool;
    sqlx::query("DELETE FROM merchant_rules WHERE merchant_id = $1").bind(merchant).execute(pool).await.expect("chain");
    sqlx::query("INSERT INTO merchant_rules (merchant_id, position, plugin_digest, config) VALUES ($1, 0, $2, $3)")
        .bind(merchant)
        .bind(&digest)
        .bind(config.to_string())
        .execute(pool)
        .await
        .expect("chain row");
    digest
}

// ---- the dashboard's sign-in --------------------------------------------------------------

/// The value of `name` in a response's `Set-Cookie` headers.
pub fn set_cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The value of a page's hidden `name` field.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html.find(&marker)? + marker.len();
    html[at..].split('"').next().map(str::to_string)
}

/// Signs in to the dashboard as a browser does, in-process: the login form (its CSRF
/// cookie and field), then the token. The session cookie's value, or the refusal.
pub async fn dashboard_sign_in(app: &axum::Router, token: &str) -> Result<String, (axum::http::StatusCode, String)> {
    use axum::body::Body;
    use axum::http::{Request, header};
    use tower::ServiceExt;
    let form = app.clone().oneshot(Request::get("/dashboard/login").body(Body::empty()).expect("request")).await;
    let form = form.expect("login form");
    let login_cookie = set_cookie(form.headers(), cashbackd::dashboard::LOGIN_COOKIE).expect("a login CSRF cookie");
    let html = axum::body::to_bytes(form.into_body(), 1 << 20).await.expect("body");
    let csrf = hidden_field(&String::from_utf8_lossy(&html), "csrf").expect("a login CSRF field");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("token", token), ("csrf", &csrf), ("next", "/dashboard")])
        .finish();
    let request = Request::post("/dashboard/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("{}={login_cookie}", cashbackd::dashboard::LOGIN_COOKIE))
        .body(Body::from(body))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("sign-in");
    match set_cookie(response.headers(), cashbackd::dashboard::COOKIE) {
        Some(session) if response.status() == axum::http::StatusCode::SEE_OTHER => Ok(session),
        _ => {
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
            Err((status, String::from_utf8_lossy(&body).into_owned()))
        }
    }
}

/// The same over HTTP, against a running server at `base`: the session cookie's value.
pub async fn dashboard_sign_in_http(base: &str, token: &str) -> String {
    // Its own client: the sign-in's cookie is on the redirect, which must not be followed.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let form = client.get(format!("{base}/dashboard/login")).send().await.expect("login form");
    let cookies: Vec<String> = form
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let login_cookie = cookies
        .iter()
        .filter_map(|c| c.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == cashbackd::dashboard::LOGIN_COOKIE)
        .map(|(_, v)| v.to_string())
        .expect("a login CSRF cookie");
    let csrf = hidden_field(&form.text().await.expect("form"), "csrf").expect("a login CSRF field");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("token", token), ("csrf", &csrf), ("next", "/dashboard")])
        .finish();
    let response = client
        .post(format!("{base}/dashboard/login"))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::COOKIE, format!("{}={login_cookie}", cashbackd::dashboard::LOGIN_COOKIE))
        .body(body)
        .send()
        .await
        .expect("sign-in");
    assert_eq!(response.status().as_u16(), 303, "signed in");
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| {
            v.to_str().ok()?.split(';').next()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .find(|(k, _)| k == cashbackd::dashboard::COOKIE)
        .map(|(_, v)| v)
        .expect("a session cookie")
}
