//! The hostile-plugin suite: every way a plugin can misbehave fails only its own call,
//! with an error that names the plugin, its version and the limit it hit, and the host
//! keeps serving: the next call of a healthy plugin succeeds.

use crate::common::*;
use cashbackd::plugin::wit::latest::{self, ImportRequest};
use cashbackd::plugin::{CallError, LimitHit, LimitsOverride, PluginRuntime, RuntimeConfig};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn run_mode(target: &str, mode: &str) -> Result<latest::RuleDecision, CallError> {
    let plugin = load(target, "hostile_rule");
    let order = order("o-1", vec![line("l1", "books", 10_000)]);
    runtime().evaluate(&plugin, &config(&plugin, json!({ "mode": mode })), &order, &context(1_767_225_600_000)).result
}

/// A healthy call on the same runtime right after the hostile one.
fn healthy_call_succeeds(target: &str) {
    let d = run_mode(target, "ok").expect("a healthy call after a hostile one succeeds");
    assert_eq!(d.total.minor, 100);
    let flat = load(WASIP2, "flat_rate");
    let order = order("o-2", vec![line("l1", "books", 1_000)]);
    let d = runtime()
        .evaluate(&flat, &config(&flat, json!({"rate_bps": 500})), &order, &context(0))
        .result
        .expect("another plugin still works");
    assert_eq!(d.total.minor, 50);
}

fn expect_limit(
    result: Result<latest::RuleDecision, CallError>,
    expected: impl Fn(&LimitHit) -> bool,
    what: &str,
) -> String {
    match result {
        Err(e @ CallError::Limit { .. }) => {
            let CallError::Limit { plugin, limit } = &e else { unreachable!() };
            assert!(expected(limit), "expected the {what} limit, got {limit:?}");
            assert_eq!(plugin.name, "hostile-rule");
            assert_eq!(plugin.version, "0.1.0");
            let message = e.to_string();
            assert!(message.contains("hostile-rule@0.1.0"), "the error names the plugin and version: {message}");
            message
        }
        other => panic!("expected the {what} limit, got {other:?}"),
    }
}

#[test]
fn an_infinite_loop_fails_its_call_at_the_deadline_and_the_next_call_succeeds() {
    for target in [WASIP2, UNKNOWN] {
        let started = std::time::Instant::now();
        let msg = expect_limit(run_mode(target, "loop"), |l| matches!(l, LimitHit::Deadline { ms: 200 }), "deadline");
        assert!(msg.contains("deadline of 200 ms"), "{msg}");
        // Not a timing assertion on speed, a bound proving the loop was stopped at all.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        healthy_call_succeeds(target);
    }
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    for target in [WASIP2, UNKNOWN] {
        let msg = expect_limit(run_mode(target, "memory"), |l| matches!(l, LimitHit::Memory { .. }), "memory");
        assert!(msg.contains("memory cap of 8 MiB"), "{msg}");
        healthy_call_succeeds(target);
    }
}

#[test]
fn deep_recursion_hits_the_stack_limit() {
    for target in [WASIP2, UNKNOWN] {
        let msg = expect_limit(run_mode(target, "recursion"), |l| matches!(l, LimitHit::Stack), "stack");
        assert!(msg.contains("stack"), "{msg}");
        healthy_call_succeeds(target);
    }
}

#[test]
fn recursion_that_overflows_the_plugins_own_shadow_stack_traps_naming_the_plugin() {
    for target in [WASIP2, UNKNOWN] {
        match run_mode(target, "shadow-recursion") {
            Err(e @ CallError::Trap { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("hostile-rule@0.1.0") && msg.contains("shadow stack"), "{msg}");
            }
            other => panic!("expected a trap, got {other:?}"),
        }
        healthy_call_succeeds(target);
    }
}

#[test]
fn an_oversized_output_hits_the_output_cap() {
    let msg = expect_limit(
        run_mode(WASIP2, "big-output"),
        |l| matches!(l, LimitHit::OutputSize { cap: 65536, .. }),
        "output",
    );
    assert!(msg.contains("max-output-bytes"), "{msg}");
    healthy_call_succeeds(WASIP2);
}

#[test]
fn a_log_flood_hits_the_log_cap() {
    let msg = expect_limit(run_mode(WASIP2, "log-flood"), |l| matches!(l, LimitHit::LogBytes { cap: 4096 }), "log");
    assert!(msg.contains("max-log-bytes"), "{msg}");
    healthy_call_succeeds(WASIP2);
}

#[test]
fn a_panic_traps_with_the_plugin_name_and_its_panic_message() {
    for target in [WASIP2, UNKNOWN] {
        match run_mode(target, "panic") {
            Err(e @ CallError::Trap { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("hostile-rule@0.1.0"), "{msg}");
                assert!(msg.contains("the rule gave up on order o-1"), "the panic message reaches the error: {msg}");
            }
            other => panic!("expected a trap, got {other:?}"),
        }
        healthy_call_succeeds(target);
    }
}

#[test]
fn a_decision_whose_lines_do_not_add_up_is_refused() {
    match run_mode(WASIP2, "wrong-total") {
        Err(CallError::InvalidOutput { reason, .. }) => {
            assert!(reason.contains("add up"), "{reason}")
        }
        other => panic!("expected invalid output, got {other:?}"),
    }
}

#[test]
fn limits_can_be_tightened_in_the_host_config() {
    let mut cfg = RuntimeConfig::new(shared_store());
    cfg.overrides.insert(
        "hostile-rule".into(),
        LimitsOverride { deadline_ms: Some(30), memory_mib: Some(2), max_log_bytes: Some(1000), ..Default::default() },
    );
    let runtime = PluginRuntime::new(cfg).expect("runtime");
    let plugin = runtime.load(&plugin_bytes(WASIP2, "hostile_rule")).expect("load");
    assert_eq!((plugin.limits.deadline_ms, plugin.limits.memory_mib, plugin.limits.max_log_bytes), (30, 2, 1000));
    let order = order("o-1", vec![line("l1", "books", 10_000)]);
    let run =
        |mode: &str| runtime.evaluate(&plugin, &config(&plugin, json!({ "mode": mode })), &order, &context(0)).result;
    expect_limit(run("loop"), |l| matches!(l, LimitHit::Deadline { ms: 30 }), "deadline");
    expect_limit(run("memory"), |l| matches!(l, LimitHit::Memory { bytes } if *bytes == 2 << 20), "memory");
    expect_limit(run("log-flood"), |l| matches!(l, LimitHit::LogBytes { cap: 1000 }), "log");
    assert_eq!(runtime.compilations(), 0, "the shared artifact cache served the compiled component");
}

#[test]
fn a_manifest_asking_more_than_the_host_maximum_is_refused() {
    let mut cfg = RuntimeConfig::new(shared_store());
    cfg.maxima.memory_mib = 4; // hostile-rule asks for 8
    let runtime = PluginRuntime::new(cfg).expect("runtime");
    let err = runtime.load(&plugin_bytes(WASIP2, "hostile_rule")).expect_err("over the maximum").to_string();
    assert!(err.contains("limits.memory-mib") && err.contains("exceeds the host's maximum of 4"), "{err}");
}

/// A real HTTP server on loopback that answers each request with what it received.
fn echo_server(requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/report", listener.local_addr().expect("addr"));
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..requests {
            let Ok((mut stream, _)) = listener.accept() else {
                break;
            };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let auth = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .map(|l| l["authorization:".len()..].trim().to_string())
                .unwrap_or_default();
            let body = format!("auth={auth}");
            let _ =
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            seen.push(head);
        }
        seen
    });
    (url, handle)
}

fn import(mode: &str, url: &str) -> Result<latest::Page, CallError> {
    let plugin = load(WASIP2, "hostile_adapter");
    let cfg = config(&plugin, json!({"mode": mode, "url": url, "api_key": "s3cret-token"}));
    assert!(!cfg.json.contains("s3cret-token"), "the plugin's config never holds the secret");
    let request = ImportRequest { window_start: 0, window_end: 1, cursor: None };
    runtime().import_page(&plugin, &cfg, &request).result
}

#[test]
fn a_declared_host_is_reached_with_the_credential_added_by_the_host() {
    let (url, server) = echo_server(1);
    let page = import("fetch", &url).expect("declared host");
    assert_eq!(page.next_cursor.as_deref(), Some("200 auth=Bearer s3cret-token"));
    let seen = server.join().expect("server");
    assert!(seen[0].starts_with("GET /report HTTP/1.1"), "{seen:?}");
}

#[test]
fn an_undeclared_host_is_denied_naming_the_host() {
    match import("undeclared-host", "") {
        Err(e @ CallError::Denied { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("hostile-adapter@0.1.0"), "{msg}");
            assert!(msg.contains("\"evil.example\" is not declared in the manifest (declared: 127.0.0.1)"), "{msg}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    healthy_call_succeeds(WASIP2);
}

#[test]
fn a_credential_the_manifest_does_not_declare_is_denied() {
    match import("unknown-credential", "http://127.0.0.1:9/") {
        Err(CallError::Denied { what, .. }) => {
            assert!(what.contains("someone-elses-key"), "{what}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn a_request_flood_hits_the_request_budget() {
    let (url, server) = echo_server(3);
    match import("request-flood", &url) {
        Err(CallError::Limit { limit: LimitHit::HttpRequests { cap: 3 }, .. }) => {}
        other => panic!("expected the request budget, got {other:?}"),
    }
    assert_eq!(server.join().expect("server").len(), 3, "exactly the budget reached the server");
}
