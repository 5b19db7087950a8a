//! What a plugin's `Store` holds during one call: its limits and what it has used of
//! them, its log, its config, its HTTP grant (adapters), and a WASI context that grants
//! nothing. Kept small: a store lives for exactly one call.

use super::http::HttpGrant;
use super::limits::{LimitHit, Limits};
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// One message a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Severity.
    pub level: &'static str,
    /// The message.
    pub message: String,
}

/// How the call's WASI clocks behave.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Rules: wall and monotonic clocks stand still at the evaluation time, so a rule
    /// built for `wasm32-wasip2` that reads the clock is still replayable.
    FixedAt(i64),
    /// Adapters: the real clocks (they talk to the outside world anyway).
    Live,
}

/// Store data of one plugin call.
pub struct PluginState {
    pub(crate) limits: Limits,
    /// The first limit the call hit, which explains the trap that follows it.
    pub(crate) hit: Option<LimitHit>,
    pub(crate) logs: Vec<LogLine>,
    log_bytes: u64,
    config_json: String,
    pub(crate) http: Option<HttpGrant>,
    clock: Clock,
    wasi: Option<WasiCtx>,
    table: ResourceTable,
}

impl PluginState {
    pub(crate) fn new(limits: Limits, config_json: String, clock: Clock, http: Option<HttpGrant>) -> Self {
        PluginState {
            limits,
            hit: None,
            logs: Vec::new(),
            log_bytes: 0,
            config_json,
            http,
            clock,
            wasi: None,
            table: ResourceTable::new(),
        }
    }

    pub(crate) fn record_hit(&mut self, hit: LimitHit) {
        if self.hit.is_none() {
            self.hit = Some(hit);
        }
    }
}

/// A clock frozen at one instant.
struct FrozenClock(Duration);

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A WASI context that grants nothing: no preopened directories, no environment, no
/// arguments, no sockets or name lookups, no stdin; stdout and stderr are discarded
/// (plugins log through `log`). For rules the clocks are frozen and randomness is
/// seeded with a constant, so that a rule gives the same answer every time.
fn locked_down_wasi(clock: Clock) -> WasiCtx {
    use rand::SeedableRng;
    let mut builder = WasiCtx::builder();
    builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    if let Clock::FixedAt(ms) = clock {
        let at = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        builder
            .wall_clock(FrozenClock(at))
            .monotonic_clock(FrozenClock(at))
            .secure_random(rand::rngs::StdRng::seed_from_u64(0x6361_7368_6261_636b))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(0x6b63_6162_6873_6163))
            .insecure_random_seed(0x6361_7368);
    }
    builder.build()
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // Built on first use only: most calls never touch WASI, and a component built
        // for wasm32-unknown-unknown imports none of it.
        let clock = self.clock;
        let ctx = self.wasi.get_or_insert_with(|| locked_down_wasi(clock));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

impl wasmtime::ResourceLimiter for PluginState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes() {
            self.record_hit(LimitHit::Memory { bytes: self.limits.memory_mib << 20 });
            // Refuse the growth the way wasm does (memory.grow returns -1); the plugin
            // then fails, and `hit` explains why.
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

// The `log` and `config` imports of each contract version are implemented in that
// version's module (`wit/since_v*.rs`) on top of these two.
impl PluginState {
    /// `log.write`, at a level named in lower case: kept unless the call's log cap is
    /// passed, which traps the call.
    pub(crate) fn write_log(&mut self, level: &'static str, message: String) -> wasmtime::Result<()> {
        self.log_bytes = self.log_bytes.saturating_add(message.len() as u64);
        if self.log_bytes > self.limits.max_log_bytes {
            let hit = LimitHit::LogBytes { cap: self.limits.max_log_bytes };
            self.record_hit(hit.clone());
            return Err(wasmtime::format_err!("{hit}"));
        }
        self.logs.push(LogLine { level, message });
        Ok(())
    }

    /// `config.get`: the configuration checked against the manifest, secrets left out.
    pub(crate) fn config_json(&self) -> String {
        self.config_json.clone()
    }
}

impl PluginState {
    /// `http.fetch`, in the HTTP capability's own types; each contract version's module
    /// implements its import on top of this.
    pub(crate) fn http_fetch(
        &mut self,
        request: super::http::Request,
    ) -> wasmtime::Result<Result<super::http::Response, super::http::HttpError>> {
        let limits = self.limits;
        let Some(grant) = self.http.as_mut() else {
            return Ok(Err(super::http::HttpError::Denied("this plugin has no HTTP capability".into())));
        };
        match grant.fetch(request, &limits) {
            Ok(answer) => Ok(answer),
            Err(hit) => {
                self.record_hit(hit.clone());
                Err(wasmtime::format_err!("{hit}"))
            }
        }
    }
}
