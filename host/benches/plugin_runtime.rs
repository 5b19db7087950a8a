//! Plugin runtime benchmarks. `cargo bench --workspace --bench plugin_runtime` runs
//! them and rewrites the runtime section of docs/PERFORMANCE.md with the medians, each
//! next to its baseline measured in the same run:
//!
//! - a rule call through the sandbox vs the same rule (`flat-rate`) compiled natively;
//! - its parts: instantiation with the pooling allocator, and a call on a live instance;
//! - loading a cached precompiled artifact vs compiling the component.
//!
//! The plugins must be built first (scripts/build-plugins.sh).

use cashback_sdk::rules::Rule;
use cashbackd::plugin::wit::latest;
use cashbackd::plugin::{PluginRuntime, RuntimeConfig};
use criterion::{BenchmarkId, Criterion};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

const CONFIG: &str = r#"{"rate_bps": 350, "excluded_categories": ["gift-cards"], "max_cashback": 2500}"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"))
}

fn wasm(target: &str) -> Vec<u8> {
    wasm_named(target, "flat_rate")
}

fn wasm_named(target: &str, name: &str) -> Vec<u8> {
    let path = target_dir().join("plugins").join(target).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-plugins.sh first", path.display()))
}

/// A five-line order, the same for both sides.
fn lines() -> Vec<(&'static str, &'static str, i64)> {
    vec![
        ("l1", "books", 2_499),
        ("l2", "toys", 5_000),
        ("l3", "gift-cards", 2_500),
        ("l4", "garden", 12_999),
        ("l5", "books", 999),
    ]
}

fn host_order() -> latest::Order {
    cashbackd::plugin::sample::order("o-1", "EUR", &lines())
}

fn sdk_order() -> cashback_sdk::types::Order {
    let mut b = cashback_sdk::testing::order("o-1", "EUR");
    for (id, category, amount) in lines() {
        b = b.line(id, &format!("SKU-{id}"), category, 1, amount);
    }
    b.build()
}

fn bench_calls(c: &mut Criterion, runtime: &PluginRuntime) {
    let context = cashbackd::plugin::sample::context(0);
    let order = host_order();
    let mut group = c.benchmark_group("rule_call");
    group.measurement_time(Duration::from_secs(4));

    // Baseline: the same code natively, doing the same work (reading the JSON config
    // through the SDK, as the plugin does on every call).
    cashback_sdk::testing::set_config(CONFIG);
    let native_order = sdk_order();
    let native_ctx = cashback_sdk::testing::context();
    group.bench_function("native", |b| b.iter(|| flat_rate::FlatRate::evaluate(black_box(&native_order), &native_ctx)));

    for target in ["wasm32-wasip2", "wasm32-unknown-unknown"] {
        let plugin = runtime.load(&wasm(target)).expect("load");
        let config = plugin.manifest.validate_config(&serde_json::from_str(CONFIG).expect("json")).expect("config");
        let expected = runtime.evaluate(&plugin, &config, &order, &context).result.expect("works");
        let native = flat_rate::FlatRate::evaluate(&native_order, &native_ctx).expect("native");
        assert_eq!(expected.total.minor, native.total.minor, "sandbox and native agree");

        group.bench_with_input(BenchmarkId::new("sandbox_per_call_instance", target), &order, |b, order| {
            b.iter(|| runtime.evaluate(&plugin, &config, black_box(order), &context).result.is_ok())
        });
        let mut warm = runtime.warm_rule(&plugin, &config).expect("warm");
        group.bench_with_input(BenchmarkId::new("sandbox_call_only", target), &order, |b, order| {
            b.iter(|| warm.evaluate(black_box(order), &context).is_some())
        });
        group.bench_function(BenchmarkId::new("instantiate_pooled", target), |b| {
            b.iter(|| runtime.instantiate_only(&plugin, &config))
        });
    }
    // The same rule in TypeScript (examples/flat-rate-ts, componentize-js): what a
    // JavaScript engine inside the sandbox costs per call, against the Rust rule above.
    let ts_path = target_dir().join("plugins/js/flat_rate_ts.wasm");
    match std::fs::read(&ts_path) {
        Ok(bytes) => {
            let plugin = runtime.load(&bytes).expect("load flat-rate-ts");
            let config = plugin.manifest.validate_config(&serde_json::from_str(CONFIG).expect("json")).expect("config");
            let decided = runtime.evaluate(&plugin, &config, &order, &context).result.expect("works");
            let native = flat_rate::FlatRate::evaluate(&native_order, &native_ctx).expect("native");
            assert_eq!(decided.total.minor, native.total.minor, "TypeScript and native agree");
            group.bench_with_input(BenchmarkId::new("sandbox_per_call_instance", "js"), &order, |b, order| {
                b.iter(|| runtime.evaluate(&plugin, &config, black_box(order), &context).result.is_ok())
            });
            let mut warm = runtime.warm_rule(&plugin, &config).expect("warm");
            group.bench_with_input(BenchmarkId::new("sandbox_call_only", "js"), &order, |b, order| {
                b.iter(|| warm.evaluate(black_box(order), &context).is_some())
            });
            assert!(runtime.instantiate_only(&plugin, &config), "the TypeScript rule instantiates");
            group.bench_function(BenchmarkId::new("instantiate_pooled", "js"), |b| {
                b.iter(|| runtime.instantiate_only(&plugin, &config))
            });
        }
        Err(e) => {
            eprintln!("{}: {e}; the TypeScript rule is not measured (scripts/build-plugins.sh)", ts_path.display())
        }
    }
    // The boundary alone: the same order through a rule that does almost nothing
    // (hostile-rule in `ok` mode: a one-field config, 1% per line).
    let trivial = runtime.load(&wasm_named("wasm32-wasip2", "hostile_rule")).expect("load");
    let config = trivial.manifest.validate_config(&serde_json::json!({"mode": "ok"})).expect("config");
    let mut warm = runtime.warm_rule(&trivial, &config).expect("warm");
    group.bench_function("sandbox_call_only_trivial_rule", |b| {
        b.iter(|| warm.evaluate(black_box(&order), &context).is_some())
    });
    // A warm instance keeps one store across calls, and with it the per-call budgets (log
    // bytes, memory): a figure is only a call's if the instance still answers at the end.
    eprintln!("trivial rule's warm instance still answers: {}", warm.evaluate(&order, &context).is_some());
    group.finish();
}

fn bench_loading(c: &mut Criterion, runtime: &PluginRuntime) {
    let bytes = wasm("wasm32-wasip2");
    let digest = runtime.load(&bytes).expect("load").digest;
    let mut group = c.benchmark_group("component_load");
    group.sample_size(10);
    group.bench_function("compile", |b| b.iter(|| runtime.compile_uncached(black_box(&bytes)).is_ok()));
    group.bench_function("cached_artifact", |b| b.iter(|| runtime.deserialize_cached(&digest).is_ok()));
    group.finish();
}

/// Median of a benchmark in nanoseconds, from criterion's saved estimates.
fn median_ns(id: &str) -> Option<f64> {
    let path = target_dir().join("criterion").join(id).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn write_report() {
    let native = median_ns("rule_call/native");
    let row = |name: &str, id: &str, baseline: Option<(&str, f64)>| -> String {
        let Some(v) = median_ns(id) else {
            return format!("| {name} | not measured | | |\n");
        };
        match baseline {
            // Faster than its baseline: say how many times faster, not "0.0×".
            Some((bname, b)) if v < b => {
                format!("| {name} | {} | {bname}: {} | {:.0}× faster |\n", fmt_ns(v), fmt_ns(b), b / v)
            }
            Some((bname, b)) => format!("| {name} | {} | {bname}: {} | {:.1}× |\n", fmt_ns(v), fmt_ns(b), v / b),
            None => format!("| {name} | {} | | |\n", fmt_ns(v)),
        }
    };
    let mut table = String::from("| measurement (median) | value | baseline, same run | ratio |\n|---|---|---|---|\n");
    for target in ["wasm32-wasip2", "wasm32-unknown-unknown"] {
        let base = native.map(|n| ("native flat-rate", n));
        table += &row(
            &format!("rule call, warm instance ({target})"),
            &format!("rule_call/sandbox_call_only/{target}"),
            base,
        );
        table += &row(
            &format!("rule call incl. fresh instance ({target})"),
            &format!("rule_call/sandbox_per_call_instance/{target}"),
            base,
        );
        table += &row(
            &format!("instantiation, pooling allocator ({target})"),
            &format!("rule_call/instantiate_pooled/{target}"),
            None,
        );
    }
    // The TypeScript rule against the same rule in Rust, both in the sandbox.
    let rust = |id: &str| median_ns(&format!("rule_call/{id}/wasm32-wasip2")).map(|v| ("Rust flat-rate, same", v));
    table +=
        &row("TypeScript flat-rate-ts, warm instance", "rule_call/sandbox_call_only/js", rust("sandbox_call_only"));
    table += &row(
        "TypeScript flat-rate-ts, call incl. fresh instance",
        "rule_call/sandbox_per_call_instance/js",
        rust("sandbox_per_call_instance"),
    );
    table += &row(
        "TypeScript flat-rate-ts, instantiation, pooling allocator",
        "rule_call/instantiate_pooled/js",
        rust("instantiate_pooled"),
    );
    table += &row(
        "rule call, warm instance, trivial rule (boundary cost)",
        "rule_call/sandbox_call_only_trivial_rule",
        native.map(|n| ("native flat-rate", n)),
    );
    let compile = median_ns("component_load/compile");
    table += &row(
        "load cached precompiled artifact",
        "component_load/cached_artifact",
        compile.map(|c| ("compile from scratch", c)),
    );
    table += &row("native flat-rate (baseline)", "rule_call/native", None);

    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let section = format!(
        "<!-- plugin-runtime:begin (written by `cargo bench --workspace --bench plugin_runtime`) -->\n\
         Last run: {cores} cores, {rustc}, wasmtime 48, plugin `flat-rate` (5-line order, JSON config parsed per call, \
         3.5% with an exclusion and a cap).\n\n{table}\n<!-- plugin-runtime:end -->"
    );
    let doc_path = repo().join("docs/PERFORMANCE.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Performance\n\n".into());
    let updated = match (doc.find("<!-- plugin-runtime:begin"), doc.find("<!-- plugin-runtime:end -->")) {
        (Some(a), Some(b)) => format!("{}{section}{}", &doc[..a], &doc[b + "<!-- plugin-runtime:end -->".len()..]),
        _ => format!("{}\n{section}\n", doc.trim_end()),
    };
    if let Err(e) = std::fs::write(&doc_path, updated) {
        eprintln!("cannot write {}: {e}", doc_path.display());
    }
    println!("\n{table}");
}

fn main() {
    let store = target_dir().join("bench-plugin-store");
    let runtime = PluginRuntime::new(RuntimeConfig::new(store)).expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    bench_calls(&mut c, &runtime);
    bench_loading(&mut c, &runtime);
    c.final_summary();
    // `cargo test --benches` runs this binary with `--bench` absent: measure nothing then.
    if std::env::args().any(|a| a == "--bench") {
        write_report();
    }
}
