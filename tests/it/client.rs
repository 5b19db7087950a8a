//! A client generated from the admin API's OpenAPI document (issue 16, point 3): the
//! standard generator `openapi-python-client` (PyPI) builds a package from the document a
//! live `cashbackd serve` serves, and `tests/client/flow.py` drives a whole flow through
//! it from an empty database: upload a rule and an adapter, create a network and a
//! merchant, activate the rule, create a user, send a postback (the public ingress), attribute
//! the parked conversion, then read the conversion and its timeline.
//!
//! SQLite only: this tests the document as a contract for clients, which is the same on
//! both backends (the calls' storage runs on both in the other HTTP tests).

use crate::backends;
use crate::common::*;
use crate::public::{Install, arg, component};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_openapi_document_drives_a_merchant_rule_postback_and_timeline() {
    let probe = Command::new("python3").args(["-m", "openapi_python_client", "--version"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("the generated-client flow", "no openapi-python-client (pip install openapi-python-client)");
        return;
    }
    let t = backends::sqlite().await;
    let install = Install::new(&t);
    let token = install.admin_token();
    let server = install.serve("client", &[]);
    let document = reqwest::get(format!("{}/api/v1/openapi.json", server.base))
        .await
        .expect("the document")
        .text()
        .await
        .expect("its text");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document).expect("write the document");
    let generated = Command::new("python3")
        .args(["-m", "openapi_python_client", "generate", "--meta", "none", "--path"])
        .arg(&path)
        .arg("--output-path")
        .arg(dir.path().join("cashbackd_client"))
        .output()
        .expect("run openapi-python-client");
    assert!(
        generated.status.success(),
        "openapi-python-client refused the document:\n{}\n{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/client/flow.py");
    let flow = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .arg(&server.base)
        .arg(&token)
        .arg(arg(&component("swap_rule_v1")))
        .arg(arg(&component("generic_s2s")))
        .output()
        .expect("run the flow");
    let stdout = String::from_utf8_lossy(&flow.stdout);
    assert!(
        flow.status.success(),
        "the flow through the generated client failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&flow.stderr),
        server.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    let read: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the flow's JSON line");
    let c = &read["conversion"];
    // swap-rule 1.0.0 credits 1 % of the order's line: 1.00 EUR of 100.00.
    assert_eq!(
        (c["user_id"].as_str(), c["merchant_id"].as_str(), c["status"].as_str(), c["cashback"].as_i64()),
        (Some("alice"), Some("shop"), Some("processed"), Some(100)),
        "{read}"
    );
    assert!(read["stages"]["rule_at"].is_i64() && read["stages"]["ledger_at"].is_i64(), "{read}");
    let postings = read["postings"].as_array().expect("postings");
    assert!(postings.iter().any(|p| p["plugin_name"] == "swap-rule"), "{read}");
    drop(server);
    t.cleanup().await;
}
