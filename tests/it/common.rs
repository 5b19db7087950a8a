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
