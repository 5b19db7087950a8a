//! `cashbackd plugin inspect|test` and `demo`, run as a user runs them.

use crate::common::*;
use std::process::Command;

fn cashbackd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cashbackd"))
        .args(args)
        .env("CASHBACKD_PLUGIN_STORE", shared_store())
        .output()
        .expect("run cashbackd");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn inspect_prints_the_world_the_manifest_and_the_limits() {
    let path = plugin_path(WASIP2, "hostile_adapter");
    let (ok, out) = cashbackd(&["plugin", "inspect", path.to_str().expect("utf8")]);
    assert!(ok, "{out}");
    for expected in [
        "hostile-adapter@0.1.0",
        "network-adapter (cashback:plugin@0.1.0)",
        "cashback:plugin/adapter@0.1.0",
        "http hosts  127.0.0.1",
        "credential  api: secret config `api_key` into header `Authorization`",
        "deadline 5000 ms",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let (ok, json) = cashbackd(&["plugin", "inspect", "--json", path.to_str().expect("utf8")]);
    assert!(ok, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("json output");
    assert_eq!(doc["kind"], "network-adapter");
    assert_eq!(doc["limits"]["max-http-requests"], 3);
    assert!(!out.contains("\nfiles "), "an adapter takes files whole unless it says otherwise:\n{out}");
    // csv-report takes report files in pieces (docs/INGEST.md, section 5).
    let path = plugin_path(WASIP2, "csv_report");
    let (ok, out) = cashbackd(&["plugin", "inspect", path.to_str().expect("utf8")]);
    assert!(ok, "{out}");
    assert!(out.contains("files       in pieces (csv-records), delimiter from config `delimiter`"), "{out}");
}

#[test]
fn test_runs_the_embedded_fixtures_and_an_extra_file_in_the_sandbox() {
    let path = plugin_path(WASIP2, "flat_rate");
    let (ok, out) = cashbackd(&["plugin", "test", path.to_str().expect("utf8")]);
    assert!(ok, "{out}");
    assert!(out.contains("3 passed, 0 failed"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let extra = dir.path().join("more.json");
    std::fs::write(
        &extra,
        r#"[{"name": "a wrong expectation fails", "config": {"rate_bps": 100},
            "order": {"conversion_id": "c", "merchant": "m", "network": "n", "order_id": "o", "event_type": "sale",
                      "state": "Pending", "amount": {"minor": 1000, "currency": "EUR"},
                      "commission": {"minor": 10, "currency": "EUR"},
                      "line_items": [{"id": "l1", "sku": "s", "category": "c", "quantity": 1, "amount": 1000}],
                      "event_time": 0, "click_time": null, "user_id": null},
            "expect": {"total": {"minor": 11}}}]"#,
    )
    .expect("write");
    let (ok, out) =
        cashbackd(&["plugin", "test", path.to_str().expect("utf8"), "--fixtures", extra.to_str().expect("utf8")]);
    assert!(!ok, "a failing fixture fails the command:\n{out}");
    assert!(out.contains("FAIL a wrong expectation fails"), "{out}");
    assert!(out.contains("$.total.minor: expected 11, got 10"), "{out}");
    assert!(out.contains("3 passed, 1 failed"), "{out}");
}

#[test]
fn a_file_that_is_not_a_plugin_gets_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").expect("write");
    let (ok, out) = cashbackd(&["plugin", "inspect", bogus.to_str().expect("utf8")]);
    assert!(!ok);
    assert!(out.contains("not a component"), "{out}");
}

/// SQLite only by design: the demo makes its own SQLite file (`--demo-database`).
#[test]
fn demo_runs_on_a_fresh_sqlite_file_with_clicks_and_postbacks_through_http() {
    let dir = plugin_path(WASIP2, "flat_rate").parent().expect("dir").to_path_buf();
    let _ = plugin_path(WASIP2, "generic_s2s");
    let db = tempfile::tempdir().expect("tempdir");
    let file = db.path().join("demo.db");
    let args = [
        "demo",
        "--once",
        "--listen",
        "127.0.0.1:0",
        "--plugins",
        dir.to_str().expect("utf8"),
        "--demo-database",
        file.to_str().expect("utf8"),
    ];
    let (ok, out) = cashbackd(&args);
    assert!(ok, "{out}");
    assert!(out.contains("alice  pending     3.15"), "adjusted 90.00 at 3.5 %: {out}");
    assert!(out.contains("T-1003") && out.contains("held"), "the high-value order is held: {out}");
    assert!(out.contains("T-1004") && out.contains("click unknown-click is unknown"), "parked: {out}");
    assert!(out.contains("T-1005") && out.contains("rejected"), "{out}");
    // Run again: the demo database is recreated, not appended to.
    let (ok, again) = cashbackd(&args);
    assert!(ok, "{again}");
    assert!(again.contains("alice  pending     3.15"), "{again}");
}

/// SQLite only by design: creating the file (and its directory) is SQLite's case;
/// PostgreSQL's migrations run in every `backends::all()` test and the crash loop.
#[test]
fn migrate_creates_the_sqlite_file_on_first_start_and_names_a_bad_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("nested/cashbackd.db").display());
    let (ok, out) = cashbackd(&["migrate", "--database-url", &url]);
    assert!(ok, "{out}");
    assert!(out.contains("20261121000001 ledger"), "{out}");
    assert!(dir.path().join("nested/cashbackd.db").exists());
    let (ok, out) = cashbackd(&["migrate", "--database-url", &url]);
    assert!(ok, "running it again changes nothing: {out}");
    let (ok, out) = cashbackd(&["migrate", "--database-url", "mysql://user:secret@db/x"]);
    assert!(!ok);
    assert!(out.contains("database.url: unsupported scheme") && out.contains("sqlite://PATH"), "{out}");
    assert!(!out.contains("secret"), "the password never reaches the output: {out}");
}
