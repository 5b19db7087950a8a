//! A rule that does what its `mode` says, most of it hostile. The host's tests check that
//! each misbehaviour fails only its own call, with an error naming the limit it hit.

use cashback_sdk::prelude::*;
use serde::Deserialize;
use std::hint::black_box;

#[derive(Deserialize)]
struct Config {
    mode: String,
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
            other => return Err(PluginError::Config(format!("unknown mode {other:?}"))),
        }
        Ok(decision)
    }
}

export_rule!(Hostile);
