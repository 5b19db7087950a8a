//! `cashback:plugin@0.2.0`: the 0.1.0 worlds unchanged, plus `partner-callback`. The
//! newest version (`latest`): the rest of the host speaks these types. Frozen once
//! released: this module then changes only to fix host-side bugs.
//!
//! The host side of the imports of this version (`log`, `config`, `http`) is implemented
//! here, on [`PluginState`], delegating to the version-neutral code in `state.rs` and
//! `http.rs`.

use crate::plugin::state::PluginState;

/// The contract version these bindings implement.
pub const API_VERSION: &str = crate::plugin::contract::V0_2_0;

/// Bindings of the `merchant-rules` world, plus the shared `types`, `log` and `config`.
pub mod rules_world {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "cashback:plugin/merchant-rules@0.2.0",
        // Every import may trap: that is how the host stops a call that logs past its
        // cap or exceeds its request budget, without trusting the plugin to stop.
        imports: { default: trappable },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

/// Bindings of the `network-adapter` world, sharing the rules world's types.
pub mod adapter_world {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "cashback:plugin/network-adapter@0.2.0",
        imports: { default: trappable },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "cashback:plugin/types": super::rules_world::cashback::plugin::types,
            "cashback:plugin/log": super::rules_world::cashback::plugin::log,
            "cashback:plugin/config": super::rules_world::cashback::plugin::config,
        },
    });
}

/// Bindings of the `partner-callback` world (new in 0.2.0), sharing the rules world's types.
pub mod partner_world {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "cashback:plugin/partner-callback@0.2.0",
        imports: { default: trappable },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "cashback:plugin/types": super::rules_world::cashback::plugin::types,
            "cashback:plugin/log": super::rules_world::cashback::plugin::log,
            "cashback:plugin/config": super::rules_world::cashback::plugin::config,
        },
    });
}

pub use adapter_world::NetworkAdapterPre;
pub use adapter_world::cashback::plugin::http;
pub use adapter_world::exports::cashback::plugin::adapter::{
    FileResult, ImportRequest, Page, PostbackRequest, RejectedItem, RejectedRow,
};
pub use partner_world::PartnerCallbackPre;
pub use partner_world::exports::cashback::plugin::callback::{
    Change, ConversionSnapshot, Endpoint as CallbackEndpoint, Method as CallbackMethod, Request as CallbackRequest,
    Subject as CallbackSubject,
};
pub use rules_world::MerchantRulesPre;
pub use rules_world::cashback::plugin::log::Level as LogLevel;
pub use rules_world::cashback::plugin::types::{
    ConversionEvent, ConversionState, Exclusion, LineCashback, LineItem, Money, Order, PluginError, RuleContext,
    RuleDecision, Timestamp,
};

/// Interface names a component of each world exports at this version.
pub const RULES_EXPORT: &str = "cashback:plugin/rules@0.2.0";
/// See [`RULES_EXPORT`].
pub const ADAPTER_EXPORT: &str = "cashback:plugin/adapter@0.2.0";
/// See [`RULES_EXPORT`].
pub const CALLBACK_EXPORT: &str = "cashback:plugin/callback@0.2.0";

impl rules_world::cashback::plugin::types::Host for PluginState {}

impl rules_world::cashback::plugin::log::Host for PluginState {
    fn write(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
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
