//! A rule that does what its `mode` says, most of it hostile. The host's tests check that
//! each misbehaviour fails only its own call, with an error naming the limit it hit.

use cashback_sdk::prelude::*;
use serde::Deserialize;
use std::hint::black_box;

#[derive(Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    probe_paths: Vec<String>,
}

struct Hostile;

/// Recursion whose frames live on wasm's own stack (values in locals): hits the host's
/// `max_wasm_stack`.
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if black_box(n) == u64::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_mul(31).wrapping_add(n)
}

/// Recursion with large frames, which Rust keeps on its shadow stack in linear memory:
/// overflows that 1 MiB stack before wasm's own.
#[inline(never)]
fn recurse_shadow(n: u64) -> u64 {
    let pad = black_box([n; 64]);
    if n == u64::MAX { 0 } else { recurse_shadow(n + 1).wrapping_add(pad[(n % 64) as usize]) }
}

impl Rule for Hostile {
    fn evaluate(order: &Order, ctx: &RuleContext) -> Result<RuleDecision, PluginError> {
        // Before anything else allocates: what the previous instance in this memory left.
        let leftovers = scan_memory();
        let config: Config = config::get()?;
        let mut decision = RuleDecision::empty(&order.amount.currency);
        match config.mode.as_str() {
            "ok" => {
                for line in &order.line_items {
                    decision.credit_line(line, line.amount / 100, Some(100), "1%")?;
                }
            }
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![7u8; 1 << 20]));
                }
            }
            "recursion" => {
                decision.notes.push(recurse(black_box(0)).to_string());
            }
            "shadow-recursion" => {
                decision.notes.push(recurse_shadow(black_box(0)).to_string());
            }
            "big-output" => {
                decision.notes = (0..2_000).map(|i| format!("note {i}: {}", "x".repeat(100))).collect();
            }
            "log-flood" => loop {
                log::info(&"flood ".repeat(100));
            },
            "panic" => panic!("the rule gave up on order {}", order.order_id),
            "clock" => {
                // What a wasip2 build sees of the clock: frozen at the evaluation time.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(-1);
                decision.notes.push(format!("now={now} ctx={}", ctx.now));
            }
            "random" => {
                // HashMap's seed comes from WASI randomness, seeded with a constant.
                let map: std::collections::HashMap<u32, u32> = (0..32).map(|i| (i, i)).collect();
                let order: Vec<String> = map.keys().map(u32::to_string).collect();
                decision.notes.push(order.join(","));
            }
            "wrong-total" => {
                decision.total.minor = 12_345;
            }
            "exfiltrate" => {
                // What a rule could learn that is not its own: the environment, files, the
                // decision of the rules before it (theirs to give), its config, its memory.
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                decision.notes.push(format!("env: {vars:?}"));
                let mut paths: Vec<String> = ["/", ".", "/proc/self/environ"].iter().map(|p| p.to_string()).collect();
                paths.extend(config.probe_paths.iter().cloned());
                for path in &paths {
                    let listing = std::fs::read_dir(path)
                        .map(|d| {
                            d.filter_map(Result::ok)
                                .map(|e| e.file_name().to_string_lossy().into_owned())
                                .collect::<Vec<_>>()
                        })
                        .map_err(|e| e.kind().to_string());
                    let read =
                        std::fs::read(path).map(|b| String::from_utf8_lossy(&b[..b.len().min(100)]).into_owned());
                    decision.notes.push(format!(
                        "file {path}: dir {listing:?} read {:?}",
                        read.map_err(|e| e.kind().to_string())
                    ));
                }
                decision.notes.push(format!("before me: {:?}", ctx.decision_so_far.as_ref().map(|d| &d.notes)));
                decision.notes.push(format!("config: {}", config::raw()));
                decision.notes.push(format!("memory: {} leftovers {leftovers:?}", leftovers.len()));
                // The same scan now that its own config is in memory: a scanner that sees.
                decision.notes.push(format!("memory now: {:?}", scan_memory()));
            }
            other => return Err(PluginError::Config(format!("unknown mode {other:?}"))),
        }
        Ok(decision)
    }
}

/// Reads the whole linear memory for the marker the tests give every config value of
/// *other* plugins (`XSECRET`), and returns what follows each occurrence. The needle is
/// built at run time, so the only copy in memory is its own (skipped).
fn scan_memory() -> Vec<String> {
    let needle: Vec<u8> = "TERCESX".bytes().rev().collect();
    let own = needle.as_ptr() as usize;
    let size = memory_bytes();
    let mut found = Vec::new();
    let mut at = 1usize;
    while at + needle.len() < size && found.len() < 16 {
        // SAFETY: every address below the memory's size is readable in wasm; volatile,
        // because these bytes belong to nobody this code knows of.
        let matches =
            needle.iter().enumerate().all(|(i, b)| unsafe { std::ptr::read_volatile((at + i) as *const u8) } == *b);
        if matches && at != own {
            let tail: Vec<u8> =
                (0..40).map(|i| unsafe { std::ptr::read_volatile((at + i).min(size - 1) as *const u8) }).collect();
            found.push(format!("{at:#x}: {}", String::from_utf8_lossy(&tail)));
            at += needle.len();
        } else {
            at += 1;
        }
    }
    found
}

#[cfg(target_arch = "wasm32")]
fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size::<0>() * 65_536
}

#[cfg(not(target_arch = "wasm32"))]
fn memory_bytes() -> usize {
    0
}

export_rule!(Hostile);
