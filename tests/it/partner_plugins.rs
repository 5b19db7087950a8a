//! Issue 18, points 1 and 2: partner-callback plugins (contract `cashback:plugin@0.2.0`)
//! and the contract's evolution beside the frozen 0.1.0.
//!
//! The delivery tests start from an empty database and go through the `cashbackd`
//! commands, a real `cashbackd serve`, the ingress and `/api/v1` only, on both databases:
//! the example plugin `md5-hash-callback` is uploaded and activated on an endpoint, a
//! postback's callback reaches a local partner with the MD5 hash computed here
//! independently, a rollback goes back to the built-in template and a second one to the
//! plugin, and a plugin error fails the attempt with its reason.
//!
//! The evolution test loads every 0.1.0 component the repository builds, unchanged, in
//! the host whose `latest` is 0.2.0, and runs their own fixtures.

use crate::accounts::{configure, postback};
use crate::backends;
use crate::callbacks::{Received, Sink};
use crate::common::*;
use crate::public::*;
use md5::{Digest, Md5};
use serde_json::{Value, json};

const SECRET: &str = "partner-secret-0123456789";
const PLUGIN: &str = "md5-hash-callback@0.1.0";

/// The partner's check, written from the scheme (not with the plugin's code): MD5 over
/// the values of `fields`, as the partner received them, then the secret, joined by `|`.
fn partner_hash(r: &Received, fields: &[&str]) -> String {
    let mut parts: Vec<String> = fields.iter().map(|f| r.param(f).unwrap_or_default()).collect();
    parts.push(SECRET.to_string());
    Md5::digest(parts.join("|").as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The callbacks of transaction `tx` the partner has received, once there are `n`.
async fn callbacks_of(partner: &Sink, tx: &str, n: usize) -> Vec<Received> {
    let (partner, tx) = (partner.clone(), tx.to_string());
    eventually(30, "the partner's callbacks", move || {
        let (partner, tx) = (partner.clone(), tx.clone());
        async move {
            let got: Vec<Received> =
                partner.received().into_iter().filter(|r| r.param("tx").as_deref() == Some(tx.as_str())).collect();
            (got.len() >= n).then_some(got)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_callback_plugin_signs_an_endpoints_callbacks_and_swaps_and_rolls_back() {
    let fields = ["uid", "tx", "state", "pay"];
    for t in backends::all().await {
        let i = Install::new(&t);
        let token = i.admin_token();
        configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 300}"#);
        let partner = Sink::start().await;
        i.ok(&["partner", "add", "p1", "--name", "Partner"]);
        let url = format!(
            "{}/cb?uid={{user_id}}&tx={{transaction_id}}&state=[%CASHBACK:STATE%]&pay={{payout}}",
            partner.base
        );
        i.ok_env(
            &["endpoint", "add", "e1", "--partner", "p1", "--url", &url],
            &[("CASHBACKD_CALLBACK_SECRET", SECRET)],
        );

        // The author's tools know the new world and version.
        let wasm = arg(&component("md5_hash_callback"));
        let inspected = i.ok(&["plugin", "inspect", &wasm]);
        assert!(inspected.contains("partner-callback") && inspected.contains("0.2.0"), "{inspected}");
        let tested = i.ok(&["plugin", "test", &wasm]);
        assert!(tested.contains("3 passed") || tested.contains("3/3"), "{tested}");

        let s = i.serve("a", &[]);
        let c = Client::new(&s.base, &token);
        // Upload through the API; activate on the endpoint through the API.
        let uploaded = c
            .http
            .post(format!("{}/api/v1/plugins", s.base))
            .bearer_auth(&token)
            .body(std::fs::read(component("md5_hash_callback")).expect("component"))
            .send()
            .await
            .expect("upload");
        assert_eq!(uploaded.status().as_u16(), 201, "{}", uploaded.text().await.unwrap_or_default());
        // A rule is not a renderer, and the renderer is not a rule.
        let (status, body) = c
            .api("POST", "/api/v1/callbacks/endpoints/e1/plugin/activate", Some(json!({"plugin": "flat-rate@0.1.0"})))
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains("not a partner-callback plugin"), "{body}");
        let (status, body) =
            c.api("POST", "/api/v1/merchants/shop/rules/activate", Some(json!({"plugin": PLUGIN}))).await;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains("not a rule plugin"), "{body}");
        let activate = json!({"plugin": PLUGIN, "config": {"fields": fields, "separator": "|"}});
        let a = c.expect(200, "POST", "/api/v1/callbacks/endpoints/e1/plugin/activate", Some(activate)).await;
        assert_eq!((a["target_kind"].as_str(), a["previous_digest"].as_str()), (Some("endpoint"), None), "{a}");
        let listed = c.expect(200, "GET", "/api/v1/callbacks/endpoints", None).await;
        assert_eq!(listed["endpoints"][0]["plugin"], a["digest"], "{listed}");

        // A conversion: the partner gets the plugin's request, hash and all.
        let click = c.click("/c/sale?user=newbie", "ref").await;
        let (status, _, body) = c.public(&postback(&click, "T1", "pending", "100.00")).await;
        assert_eq!(status, 200, "{}: {body}", t.name);
        let got = callbacks_of(&partner, "T1", 1).await;
        let pending = &got[0];
        assert_eq!(
            (pending.param("uid").as_deref(), pending.param("state").as_deref(), pending.param("pay").as_deref()),
            (Some("newbie"), Some("PENDING"), Some("3.00")),
            "{}: {}",
            t.name,
            pending.query
        );
        assert_eq!(pending.param("hash"), Some(partner_hash(pending, &fields)), "{}: {}", t.name, pending.query);
        assert_eq!(pending.param("signature"), None, "the plugin's request, not the template's: {}", pending.query);
        // The delivery log masks what the plugin marked secret.
        let log = c.expect(200, "GET", "/api/v1/callbacks/endpoints/e1/attempts", None).await;
        let text = log.to_string();
        assert!(text.contains("hash=***"), "{text}");
        assert!(!text.contains(&pending.param("hash").unwrap_or_default()), "{text}");

        // Roll back: past the first activation, the built-in template comes back.
        let back = c.expect(200, "POST", "/api/v1/callbacks/endpoints/e1/plugin/rollback", None).await;
        assert_eq!((back["action"].as_str(), back["digest"].as_str()), (Some("rollback"), Some("")), "{back}");
        let (status, _, body) = c.public(&postback(&click, "T1", "approved", "100.00")).await;
        assert_eq!(status, 200, "{body}");
        let got = callbacks_of(&partner, "T1", 2).await;
        let completed = got.iter().find(|r| r.param("state").as_deref() == Some("COMPLETED")).expect("COMPLETED");
        assert_eq!(completed.param("hash"), None, "{}: the template's request: {}", t.name, completed.query);
        assert!(completed.query.contains("signature="), "the template signs with its HMAC: {}", completed.query);

        // Roll back again: the plugin is back for the next delivery (hot swap).
        let again = c.expect(200, "POST", "/api/v1/callbacks/endpoints/e1/plugin/rollback", None).await;
        assert_eq!(again["digest"], a["digest"], "{again}");
        let click2 = c.click("/c/sale?user=newbie", "ref").await;
        let (status, _, body) = c.public(&postback(&click2, "T2", "pending", "50.00")).await;
        assert_eq!(status, 200, "{body}");
        let got = callbacks_of(&partner, "T2", 1).await;
        assert_eq!(got[0].param("hash"), Some(partner_hash(&got[0], &fields)), "{}: {}", t.name, got[0].query);
        let history = c.expect(200, "GET", "/api/v1/callbacks/endpoints/e1/plugin/history", None).await;
        let actions: Vec<&str> =
            history["activations"].as_array().expect("list").iter().filter_map(|a| a["action"].as_str()).collect();
        assert_eq!(actions, ["rollback", "rollback", "activate"], "{history}");

        // A plugin error fails the attempt with the plugin's reason, recorded for a retry.
        let broken = json!({"plugin": PLUGIN, "config": {"fields": ["uid", "no-such-param"]}});
        c.expect(200, "POST", "/api/v1/callbacks/endpoints/e1/plugin/activate", Some(broken)).await;
        let (status, _, body) = c.public(&postback(&click2, "T2", "approved", "50.00")).await;
        assert_eq!(status, 200, "{body}");
        let failed = eventually(30, "the failed attempt", || {
            let c = Client::new(&s.base, &token);
            async move {
                let log = c.expect(200, "GET", "/api/v1/callbacks/endpoints/e1/attempts", None).await;
                log["attempts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["error"].as_str().unwrap_or("").contains("no-such-param"))
                    .cloned()
            }
        })
        .await;
        let error = failed["error"].as_str().unwrap_or("");
        assert!(error.contains("md5-hash-callback") && error.contains("is not a parameter"), "{}: {failed}", t.name);
        assert_eq!(failed["outcome"], "retry", "{failed}");
        let deliveries = c.expect(200, "GET", "/api/v1/callbacks/deliveries", None).await;
        let retrying = deliveries["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .find(|d| d["conversion_state"] == "COMPLETED" && d["last_error"].as_str().is_some())
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(retrying["state"], "pending", "{}: retried on the endpoint's schedule: {deliveries}", t.name);
        assert!(
            !partner
                .received()
                .iter()
                .any(|r| r.param("tx").as_deref() == Some("T2") && r.param("state").as_deref() == Some("COMPLETED")),
            "nothing was sent for the failed attempt"
        );
        drop(s);
        t.cleanup().await;
    }
}

/// Issue 18, point 2: every 0.1.0 component in the repository (first-party plugins,
/// examples, test plugins, the TypeScript rule when it was built) loads unchanged into
/// the host whose latest contract is 0.2.0, reports 0.1.0, and passes its own fixtures
/// there. The components are those `scripts/build-plugins.sh` built from the crates as
/// they are, with the SDK's rules and adapters still on 0.1.0.
#[test]
fn every_0_1_0_plugin_in_the_repo_still_loads_and_runs_beside_0_2_0() {
    use cashbackd::plugin::wit::{SUPPORTED_API_VERSIONS, latest, since_v0_1_0};
    assert_eq!((latest::API_VERSION, SUPPORTED_API_VERSIONS), ("0.2.0", &["0.2.0", "0.1.0"][..]));
    let mut components = Vec::new();
    for dir in [WASIP2, UNKNOWN, "js"] {
        let Ok(entries) = std::fs::read_dir(target_dir().join("plugins").join(dir)) else {
            if dir == "js" {
                skip("the 0.1.0 regression test's TypeScript rule", "target/plugins/js is missing (no npm)");
                continue;
            }
            panic!("target/plugins/{dir} is missing: run scripts/build-plugins.sh");
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "wasm") {
                components.push(e.path());
            }
        }
    }
    components.sort();
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for path in &components {
        let plugin = runtime().load(&std::fs::read(path).expect("read")).unwrap_or_else(|e| {
            panic!("{} no longer loads: {e}", path.display());
        });
        let name = path.display().to_string();
        if plugin.api_version == since_v0_1_0::API_VERSION {
            let exports = [since_v0_1_0::RULES_EXPORT, since_v0_1_0::ADAPTER_EXPORT];
            assert!(plugin.exports.iter().any(|e| exports.contains(&e.as_str())), "{name}: {:?}", plugin.exports);
            old.push(name.clone());
        } else {
            assert_eq!(plugin.api_version, "0.2.0", "{name}");
            new.push(name.clone());
        }
        // Their own fixtures, in the sandbox (the hostile test plugins carry none: they
        // are run by the sandbox suite).
        if let Some(json) = plugin.fixtures.as_deref() {
            let cases = cashbackd::plugin::fixtures::parse(json).expect("fixtures");
            let results = cashbackd::plugin::fixtures::run(runtime(), &plugin, &cases);
            let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
            assert!(failed.is_empty(), "{name}: {failed:?}");
        }
    }
    // Everything first-party is still 0.1.0 but the new world's example.
    for crate_name in
        ["flat_rate", "rate_table", "generic_s2s", "json_api", "csv_report", "weekend_bonus", "swap_rule_v1"]
    {
        assert!(old.iter().any(|n| n.ends_with(&format!("/{crate_name}.wasm"))), "{crate_name} in {old:?}");
    }
    assert!(new.iter().all(|n| n.ends_with("/md5_hash_callback.wasm")), "{new:?}");
    assert!(!new.is_empty(), "the 0.2.0 example was built");
}

/// `plugin inspect` names the contract version each component speaks.
#[test]
fn inspect_reports_the_contract_version_of_each_side() {
    let run = |crate_name: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cashbackd"))
            .args(["--plugin-store", &arg(&shared_store()), "plugin", "inspect", &arg(&component(crate_name))])
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let old = run("flat_rate");
    assert!(old.contains("0.1.0") && old.contains("merchant-rules"), "{old}");
    let new = run("md5_hash_callback");
    assert!(new.contains("0.2.0") && new.contains("partner-callback"), "{new}");
}
