//! Rules in TypeScript (issue 18): `cashbackd plugin new rule NAME --lang ts`, the
//! first-party `examples/flat-rate-ts` against the Rust `flat-rate` it copies, and a
//! TypeScript rule crediting a real conversion from an empty database through the CLI, a
//! real `serve` and the ingress.
//!
//! The components are built with componentize-js from the npm registry
//! (`scripts/build-ts-plugins.sh`, run by scripts/build-plugins.sh); without node and
//! npm these tests skip, which fails in CI.

use crate::common::*;
use crate::public::*;
use cashbackd::plugin::wit::latest;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn npm_available() -> bool {
    let ok = Command::new("npm").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        skip("TypeScript plugins", "no npm (apt-get install nodejs npm)");
    }
    ok
}

/// The example's component, as scripts/build-plugins.sh leaves it.
fn flat_rate_ts() -> Option<PathBuf> {
    let path = plugin_path("js", "flat_rate_ts");
    if !path.is_file() {
        skip("TypeScript plugins", "target/plugins/js/flat_rate_ts.wasm missing: run scripts/build-plugins.sh");
        return None;
    }
    Some(path)
}

fn cashbackd(cwd: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cashbackd"))
        .args(args)
        .current_dir(cwd)
        .env("CASHBACKD_PLUGIN_STORE", shared_store())
        .output()
        .expect("run cashbackd");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The `sh` blocks of `text`, in order.
fn sh_blocks(text: &str) -> Vec<String> {
    text.split("```sh\n").skip(1).map(|b| b.split("\n```").next().unwrap_or_default().to_string()).collect()
}

/// The part of `doc` from the heading `from` to the next heading of the same level.
fn section<'a>(doc: &'a str, from: &str) -> &'a str {
    let start = doc.find(from).unwrap_or_else(|| panic!("the tutorial has no {from:?}"));
    let rest = &doc[start + from.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// docs/TUTORIAL-RULE.md's TypeScript path, its commands as written there (and the two
/// commands of steps 5 and 6 it says to run), in a shell, against a fresh database that
/// has what the demo gives step 8: the shop `demo-shop` with `flat-rate` at position 0.
/// Then what the tutorial does not show: the component's limits and imports, a broken
/// rule failing its fixture, and an adapter refused in TypeScript.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorials_typescript_path_runs_as_written() {
    if !npm_available() {
        return;
    }
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/TUTORIAL-RULE.md"))
        .expect("the tutorial");
    let ts = sh_blocks(section(&doc, "## The TypeScript path"));
    assert_eq!(ts.len(), 4, "the TypeScript path's commands: {ts:?}");
    let manifest = &sh_blocks(section(&doc, "## 5. Make it a new-customer bonus"))[1];
    let fixtures = &sh_blocks(section(&doc, "## 6. Fixtures"))[0];
    assert!(manifest.starts_with("cat >> cashback-plugin.toml") && fixtures.starts_with("cat > fixtures.json"));
    let script = [&ts[0], &ts[1], manifest, fixtures, &ts[2], &ts[3]].map(|b| b.as_str()).join("\n");

    let t = crate::backends::sqlite().await;
    let i = Install::new(&t);
    i.ok(&["merchant", "add", "demo-shop", "--name", "Demo shop"]);
    i.ok(&["plugin", "upload", &arg(&component("flat_rate"))]);
    i.ok(&["plugin", "activate", "flat-rate@0.1.0", "--merchant", "demo-shop", "--config", r#"{"rate_bps": 350}"#]);
    // Step 3 leaves the clone: the project is made next to it, here in a scratch directory.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let bin = Path::new(env!("CARGO_BIN_EXE_cashbackd")).parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(tmp.path())
        .env("PATH", path)
        .env("DATABASE_URL", t.url())
        .env("CASHBACKD_PLUGIN_STORE", shared_store())
        .output()
        .expect("bash");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the tutorial's commands failed:\n{text}");
    assert!(text.contains("2 passed, 0 failed"), "the new project's own fixtures: {text}");
    assert!(text.contains("4 passed, 0 failed"), "step 7: {text}");
    assert!(text.contains("new-customer-bonus 0.1.0 (merchant-rules, wit 0.1.0) stored: 4 fixtures passed"), "{text}");
    assert!(text.contains("merchant demo-shop #0: new-customer-bonus 0.1.0 active"), "{text}");

    let dir = tmp.path().join("new-customer-bonus");
    let (ok, out) = cashbackd(&dir, &["plugin", "build"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("component {}", dir.join("dist/new-customer-bonus.wasm").display())), "{out}");
    let (ok, out) = cashbackd(&dir, &["plugin", "inspect", "dist/new-customer-bonus.wasm"]);
    assert!(ok, "{out}");
    // Its own limits: the engine's memory, not the host's defaults loosened.
    assert!(out.contains("memory 24 MiB"), "{out}");
    // No WASI at all: a rule gets no clock, randomness, files or network.
    assert!(!out.contains("wasi:"), "{out}");

    // A broken rule fails its fixtures in the sandbox, and `plugin test` says so.
    let rule = std::fs::read_to_string(dir.join("src/rule.ts")).expect("rule");
    std::fs::write(dir.join("src/rule.ts"), rule.replace("/ 10000n", "/ 1000n")).expect("write");
    let (ok, out) = cashbackd(&dir, &["plugin", "test"]);
    assert!(!ok, "a wrong rate passed: {out}");
    assert!(out.contains("1 passed, 3 failed"), "{out}");

    let (ok, out) = cashbackd(tmp.path(), &["plugin", "new", "adapter", "net-x", "--lang", "ts"]);
    assert!(!ok && out.contains("only rules can be written in TypeScript"), "{out}");
    t.cleanup().await;
}

/// `examples/flat-rate-ts` is `plugins/flat-rate` line for line: on random orders and
/// configurations both decide the same amounts, to the cent, inside the same sandbox.
#[test]
fn the_typescript_flat_rate_decides_like_the_rust_one_to_the_cent() {
    let Some(ts) = flat_rate_ts() else { return };
    let ts = runtime().load(&std::fs::read(ts).expect("read")).expect("load the TypeScript rule");
    let rust = load(WASIP2, "flat_rate");
    let mut rng = StdRng::seed_from_u64(18);
    let categories = ["books", "toys", "gift-cards", "garden", "Gift-Cards"];
    for case in 0..150 {
        let mut config = json!({"rate_bps": rng.random_range(0..=10_000)});
        if rng.random_range(0..2) == 0 {
            config["excluded_categories"] = json!(["gift-cards"]);
        }
        if rng.random_range(0..3) == 0 {
            config["excluded_skus"] = json!(["SKU-l2"]);
        }
        if rng.random_range(0..2) == 0 {
            config["max_cashback"] = json!(rng.random_range(0..5_000));
        }
        if rng.random_range(0..3) == 0 {
            config["hold_above"] = json!(rng.random_range(0..50_000));
        }
        if rng.random_range(0..3) == 0 {
            config["reward_delay_days"] = json!(rng.random_range(0..60));
        }
        let lines: Vec<latest::LineItem> = (0..rng.random_range(1..7))
            .map(|i| {
                line(&format!("l{i}"), categories[rng.random_range(0..categories.len())], rng.random_range(0..40_000))
            })
            .collect();
        let order = order(&format!("o-{case}"), lines);
        let context = context(0);
        let decide = |plugin: &cashbackd::plugin::LoadedPlugin| {
            let c = plugin.manifest.validate_config(&config).expect("valid config");
            runtime().evaluate(plugin, &c, &order, &context).result.unwrap_or_else(|e| panic!("{config}: {e:?}"))
        };
        let (a, b) = (decide(&rust), decide(&ts));
        let amounts =
            |d: &latest::RuleDecision| d.lines.iter().map(|l| (l.line_id.clone(), l.amount)).collect::<Vec<_>>();
        let excluded = |d: &latest::RuleDecision| d.exclusions.iter().map(|e| e.line_id.clone()).collect::<Vec<_>>();
        assert_eq!(b.total, a.total, "case {case}, {config}");
        assert_eq!(amounts(&b), amounts(&a), "case {case}, {config}");
        assert_eq!(excluded(&b), excluded(&a), "case {case}, {config}");
        assert_eq!(b.hold.is_some(), a.hold.is_some(), "case {case}, {config}");
        assert_eq!(b.reward_delay_days, a.reward_delay_days, "case {case}, {config}");
    }
}

/// From an empty database: the TypeScript rule uploaded, activated and crediting a real
/// conversion, through the CLI, a real `serve` and the ingress only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_rule_credits_a_conversion_from_an_empty_database() {
    let Some(ts) = flat_rate_ts() else { return };
    let t = crate::backends::sqlite().await;
    let i = Install::new(&t);
    let token = i.admin_token();
    let out = i.ok(&["plugin", "upload", &arg(&ts)]);
    assert!(out.contains("flat-rate-ts 0.1.0 (merchant-rules, wit 0.1.0) stored"), "{out}");
    i.ok(&["merchant", "add", "shop", "--name", "Shop", "--reward-delay-days", "0"]);
    i.ok(&[
        "plugin",
        "activate",
        "flat-rate-ts@0.1.0",
        "--merchant",
        "shop",
        "--config",
        r#"{"rate_bps": 350, "max_cashback": 100}"#,
    ]);
    crate::accounts::add_network_and_link(&i);
    let s = i.serve("ts", &[]);
    let c = Client::new(&s.base, &token);
    let click = c.click("/c/sale?user=ann", "ref").await;
    let (status, _, text) = c.public(&crate::accounts::postback(&click, "TS-1", "pending", "20.00")).await;
    assert_eq!(status, 200, "{text}");
    let v = c.expect(200, "GET", "/api/v1/conversions?transaction=TS-1", None).await;
    let conversion = &v["conversions"][0];
    // 3.5 % of 20.00 is 0.70: under the 1.00 cap.
    assert_eq!(conversion["cashback"], 70, "{conversion}");
    let id = conversion["id"].as_str().expect("id").to_string();
    let (status, _, text) = c.public(&crate::accounts::postback(&click, "TS-1", "approved", "40.00")).await;
    assert_eq!(status, 200, "{text}");
    let timeline = c.expect(200, "GET", &format!("/api/v1/conversions/{id}"), None).await;
    // 3.5 % of 40.00 is 1.40: capped at 1.00.
    assert_eq!(timeline["conversion"]["cashback"], 100, "{timeline}");
    let user = c.expect(200, "GET", "/api/v1/users/ann", None).await;
    assert_eq!(balance(&user, "EUR", "pending") + balance(&user, "EUR", "available"), 100, "{user}");
    drop(s);
    t.cleanup().await;
}
