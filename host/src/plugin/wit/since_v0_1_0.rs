//! `cashback:plugin@0.1.0`. Frozen: this module changes only to fix host-side bugs.

/// The contract version these bindings implement.
pub const API_VERSION: &str = "0.1.0";

/// Bindings of the `merchant-rules` world, plus the shared `types`, `log` and `config`.
pub mod rules_world {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "cashback:plugin/merchant-rules@0.1.0",
        // Every import may trap: that is how the host stops a call that logs past its
        // cap or exceeds its request budget, without trusting the plugin to stop.
        imports: { default: trappable },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

/// Bindings of the `network-adapter` world, sharing the rules world's types.
pub mod adapter_world {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "cashback:plugin/network-adapter@0.1.0",
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
pub use rules_world::MerchantRulesPre;
pub use rules_world::cashback::plugin::log::Level as LogLevel;
pub use rules_world::cashback::plugin::types::{
    ConversionEvent, ConversionState, Exclusion, LineCashback, LineItem, Money, Order, PluginError, RuleContext,
    RuleDecision, Timestamp,
};

/// Interface names a component of each world exports at this version.
pub const RULES_EXPORT: &str = "cashback:plugin/rules@0.1.0";
/// See [`RULES_EXPORT`].
pub const ADAPTER_EXPORT: &str = "cashback:plugin/adapter@0.1.0";
