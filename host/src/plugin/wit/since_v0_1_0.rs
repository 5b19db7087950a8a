//! `cashback:plugin@0.1.0`. Frozen: this module changes only to fix host-side bugs.
//!
//! A 0.1.0 plugin loads through these bindings and the rest of the host never sees their
//! types: the `types` interface, unchanged in 0.2.0, is bound to the latest version's Rust
//! types (as Zed's older API modules bind unchanged interfaces to `latest`: the component
//! model checks records and variants by structure, not by package version), and what 0.1.0
//! defines itself (`log`, `config`, `http`, the adapter's records) is converted here, at
//! the edge. The host side of this version's imports is implemented here too.

use super::latest;
use crate::plugin::state::PluginState;

/// The contract version these bindings implement.
pub const API_VERSION: &str = crate::plugin::contract::V0_1_0;

/// Bindings of the `merchant-rules` world, plus `log` and `config`.
pub mod rules_world {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "cashback:plugin/merchant-rules@0.1.0",
        // Every import may trap: that is how the host stops a call that logs past its
        // cap or exceeds its request budget, without trusting the plugin to stop.
        imports: { default: trappable },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            // Unchanged in 0.2.0, and a types-only interface: nothing to link under its
            // 0.1.0 name, and one set of Rust types for the whole host.
            "cashback:plugin/types": crate::plugin::wit::since_v0_2_0::rules_world::cashback::plugin::types,
        },
    });
}

/// Bindings of the `network-adapter` world, sharing the rules world's imports.
pub mod adapter_world {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "cashback:plugin/network-adapter@0.1.0",
        imports: { default: trappable },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "cashback:plugin/types": crate::plugin::wit::since_v0_2_0::rules_world::cashback::plugin::types,
            "cashback:plugin/log": super::rules_world::cashback::plugin::log,
            "cashback:plugin/config": super::rules_world::cashback::plugin::config,
        },
    });
}

pub use adapter_world::NetworkAdapterPre;
pub use adapter_world::cashback::plugin::http;
use adapter_world::exports::cashback::plugin::adapter as v1;
pub use rules_world::MerchantRulesPre;
use rules_world::cashback::plugin::log::Level;

/// Interface names a component of each world exports at this version.
pub const RULES_EXPORT: &str = "cashback:plugin/rules@0.1.0";
/// See [`RULES_EXPORT`].
pub const ADAPTER_EXPORT: &str = "cashback:plugin/adapter@0.1.0";

impl rules_world::cashback::plugin::log::Host for PluginState {
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.write_log(level, message)
    }
}

impl rules_world::cashback::plugin::config::Host for PluginState {
    fn get(&mut self) -> wasmtime::Result<String> {
        Ok(self.config_json())
    }
}

impl http::Host for PluginState {
    fn fetch(&mut self, request: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        use crate::plugin::http as new;
        let method = match request.method {
            http::Method::Get => new::Method::Get,
            http::Method::Post => new::Method::Post,
            http::Method::Put => new::Method::Put,
        };
        let request = new::Request {
            method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            credential: request.credential,
        };
        Ok(self
            .http_fetch(request)?
            .map(|r| http::Response { status: r.status, headers: r.headers, body: r.body })
            .map_err(|e| match e {
                new::HttpError::Denied(s) => http::HttpError::Denied(s),
                new::HttpError::InvalidRequest(s) => http::HttpError::InvalidRequest(s),
                new::HttpError::Timeout => http::HttpError::Timeout,
                new::HttpError::TooLarge(n) => http::HttpError::TooLarge(n),
                new::HttpError::Transport(s) => http::HttpError::Transport(s),
            }))
    }
}

/// The adapter's exports, taking and returning the latest types.
pub(crate) fn parse_postback(
    g: &v1::Guest,
    store: &mut wasmtime::Store<PluginState>,
    r: &latest::PostbackRequest,
) -> wasmtime::Result<Result<Vec<latest::ConversionEvent>, latest::PluginError>> {
    let r = v1::PostbackRequest {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
        received_at: r.received_at,
    };
    g.call_parse_postback(store, &r)
}

/// See [`parse_postback`].
pub(crate) fn import_page(
    g: &v1::Guest,
    store: &mut wasmtime::Store<PluginState>,
    r: &latest::ImportRequest,
) -> wasmtime::Result<Result<latest::Page, latest::PluginError>> {
    let r = v1::ImportRequest { window_start: r.window_start, window_end: r.window_end, cursor: r.cursor.clone() };
    Ok(g.call_import_page(store, &r)?.map(|p| latest::Page {
        events: p.events,
        rejected: p
            .rejected
            .into_iter()
            .map(|i| latest::RejectedItem { reference: i.reference, reason: i.reason })
            .collect(),
        next_cursor: p.next_cursor,
    }))
}

/// See [`parse_postback`].
pub(crate) fn parse_file(
    g: &v1::Guest,
    store: &mut wasmtime::Store<PluginState>,
    name: &str,
    contents: &[u8],
) -> wasmtime::Result<Result<latest::FileResult, latest::PluginError>> {
    Ok(g.call_parse_file(store, name, contents)?.map(|f| latest::FileResult {
        events: f.events,
        rejected: f.rejected.into_iter().map(|r| latest::RejectedRow { row: r.row, reason: r.reason }).collect(),
    }))
}
