//! `cashbackd plugin new|build|test`: a plugin author's first minutes, run as they run
//! them — scaffold a crate, then test it natively and inside the sandbox.

use crate::common::*;
use std::path::Path;
use std::process::Command;

fn cashbackd(cwd: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cashbackd"))
        .args(args)
        .current_dir(cwd)
        .env("CASHBACKD_PLUGIN_STORE", shared_store())
        // The scaffolded crate is a workspace of its own; sharing the repository's target
        // dir lets its build reuse what the workspace compiled already (serde, wit-bindgen,
        // the wasm std), for the native tests and the component alike, instead of building
        // them from scratch for every run. Its profiles match the workspace's so that the
        // artifacts are the same ones (the unit tests of `plugin new` check that).
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run cashbackd");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Whether the wasm32-wasip2 target can be built here without downloading anything: a
/// rustup target or the Debian toolchain that scripts/build-plugins.sh installed (CI runs it
/// before the tests). Without it, `plugin test` would try to install one.
fn wasm_toolchain() -> bool {
    let rustup = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == WASIP2));
    let debian = target_dir().join("wasm-toolchain/.stamp").exists();
    if !(rustup || debian) {
        crate::common::skip(
            "the sandbox half (the wasm toolchain)",
            "no wasm32-wasip2 toolchain (scripts/build-plugins.sh installs one)",
        );
    }
    rustup || debian
}

/// Scaffolds `kind` as `name` into a temporary directory inside the target dir; then, with
/// a wasm toolchain, `plugin test` on it must pass its native tests and its fixtures in the
/// sandbox, and `plugin build` must say where the component is.
fn new_plugin_passes_its_tests(kind: &str, name: &str) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let dir = tmp.path().join(name);
    let (ok, out) = cashbackd(tmp.path(), &["plugin", "new", kind, name, "--dir", dir.to_str().expect("utf8")]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("created {kind} plugin {name}")), "{out}");
    assert!(out.contains("a crate of its own, using the SDK at"), "the target dir is no workspace member: {out}");
    for file in ["Cargo.toml", "Cargo.lock", "cashback-plugin.toml", "src/lib.rs", "fixtures.json", "README.md"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    if !wasm_toolchain() {
        return;
    }

    let (ok, out) = cashbackd(&dir, &["plugin", "test"]);
    assert!(ok, "{out}");
    assert!(out.contains("test result: ok. 2 passed; 0 failed"), "the native unit tests ran: {out}");
    assert!(out.contains(&format!("testing {name}@0.1.0 against 2 fixtures in the sandbox")), "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");

    let (ok, out) = cashbackd(tmp.path(), &["plugin", "build", dir.to_str().expect("utf8")]);
    assert!(ok, "{out}");
    let wasm = target_dir().join("plugins").join(WASIP2).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(out.contains(&format!("component {}", wasm.display())), "{out}");
    let plugin = runtime().load(&std::fs::read(&wasm).expect("the component")).expect("it loads");
    assert_eq!(plugin.manifest.name, name);
}

#[test]
fn a_new_rule_passes_its_unit_tests_and_its_fixtures_in_the_sandbox() {
    new_plugin_passes_its_tests("rule", "it-scaffold-rule");
}

#[test]
fn a_new_adapter_passes_its_unit_tests_and_its_fixtures_in_the_sandbox() {
    new_plugin_passes_its_tests("adapter", "it-scaffold-adapter");
}

#[test]
fn plugin_new_refuses_a_bad_name_and_an_existing_directory_and_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ok, out) = cashbackd(tmp.path(), &["plugin", "new", "rule", "My_Rule"]);
    assert!(!ok);
    assert!(out.contains("invalid value 'My_Rule' for '<NAME>': use lower case"), "{out}");
    assert!(!tmp.path().join("My_Rule").exists());

    std::fs::create_dir(tmp.path().join("taken")).expect("mkdir");
    let (ok, out) = cashbackd(tmp.path(), &["plugin", "new", "adapter", "taken"]);
    assert!(!ok);
    assert!(out.contains("taken exists already") && out.contains("never overwrites"), "{out}");

    let (ok, out) = cashbackd(tmp.path(), &["plugin", "build", "taken"]);
    assert!(!ok);
    assert!(out.contains("nor a plugin crate (no Cargo.toml)"), "{out}");
}

#[test]
fn plugin_decision_shows_what_the_rules_decided_on_a_live_conversion_and_what_was_booked() {
    let plugins = plugin_path(WASIP2, "flat_rate").parent().expect("dir").to_path_buf();
    let _ = plugin_path(WASIP2, "generic_s2s");
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("demo.db");
    let (ok, out) = cashbackd(
        tmp.path(),
        &["demo", "--once", "--listen", "127.0.0.1:0", "--plugins", path(&plugins), "--demo-database", path(&file)],
    );
    assert!(ok, "{out}");
    let url = format!("sqlite://{}", file.display());
    // bob's second order of the demo: 899.00 at 3.5 %, capped at 25.00, held for review.
    let id: String = tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let db = cashbackd::db::Db::connect(&url).await.expect("the demo database");
        sqlx::query_scalar("SELECT id FROM conversions WHERE transaction_id = 'T-1003'")
            .fetch_one(&db.pool)
            .await
            .expect("T-1003")
    });
    let (ok, out) = cashbackd(tmp.path(), &["--database-url", &url, "plugin", "decision", &id]);
    assert!(ok, "{out}");
    for expected in [
        "network     demo-net, transaction T-1003, order O-3",
        "user        bob",
        "state       PENDING, status held (held by the rules: order of 899.00 EUR is above 500.00 EUR)",
        "cashback    25.00 EUR",
        "ledger      pending 0.00 EUR, available 0.00 EUR",
        "rules       flat-rate@0.1.0 (sha256:",
        "inputs      prior_orders 1, now ",
        "line        order  25.00 EUR  3.5% of order",
        "note        capped at 25.00 EUR",
        "hold        order of 899.00 EUR is above 500.00 EUR",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let (ok, json) = cashbackd(tmp.path(), &["--database-url", &url, "plugin", "decision", &id, "--json"]);
    assert!(ok, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(doc["rules"]["inputs"]["prior_orders"], 1);
    assert_eq!(doc["rules"]["plugins"]["names"], "flat-rate");

    let (ok, out) = cashbackd(tmp.path(), &["--database-url", &url, "plugin", "decision", "cv_none"]);
    assert!(!ok);
    assert!(out.contains("no conversion \"cv_none\""), "{out}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8")
}
