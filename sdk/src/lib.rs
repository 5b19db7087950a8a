//! # cashback-sdk
//!
//! Write [cashbackd](https://example.invalid/cashbackd) plugins in Rust: merchant
//! cashback rules and affiliate-network adapters, compiled to sandboxed WebAssembly
//! components that follow the `cashback:plugin@0.1.0` WIT contract.
//!
//! A rule plugin is a type that implements [`rules::Rule`] plus one line,
//! [`export_rule!`]; an adapter implements [`adapter::Adapter`] and calls
//! [`export_adapter!`]. Enable the cargo feature of the world you write (`rules` or
//! `adapter`), never both in one plugin.
//!
//! ```ignore
//! use cashback_sdk::prelude::*;
//!
//! struct TenPercent;
//!
//! impl Rule for TenPercent {
//!     fn evaluate(order: &Order, _ctx: &RuleContext) -> Result<RuleDecision, PluginError> {
//!         let mut decision = RuleDecision::empty(&order.amount.currency);
//!         for line in &order.line_items {
//!             let cashback = money::apply_bps(line.amount, 1_000, Rounding::Down)?;
//!             decision.credit_line(line, cashback, Some(1_000), "10% on everything")?;
//!         }
//!         Ok(decision)
//!     }
//! }
//!
//! export_rule!(TenPercent);
//! ```
//!
//! Everything a plugin needs from the host goes through this crate ([`log`], [`config`],
//! and for adapters `adapter::http`), so the same code runs natively under `cargo test`,
//! where [`testing`] stands in for the host, and inside cashbackd.
#![deny(missing_docs)]

// Lets the generated bindings and the export macros name this crate the same way from
// inside it and from a plugin crate.
extern crate self as cashback_sdk;

pub mod config;
pub mod log;
pub mod money;
pub mod time;
mod types_ext;

#[cfg(feature = "adapter")]
pub mod adapter;
#[cfg(feature = "partner-callback")]
pub mod partner;
#[cfg(feature = "rules")]
pub mod rules;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The version of the WIT contract this SDK's rules and adapters implement. The export
/// macros stamp it into the component (custom section `cashback:api-version`) so that the
/// host can refuse a plugin built for another version before it instantiates anything.
/// Partner-callback plugins (feature `partner-callback`) are built against 0.2.0, the
/// version that added their world: `partner::API_VERSION`.
pub const API_VERSION: &str = "0.1.0";

/// Bindings for what both worlds share: the `types`, `log` and `config` interfaces.
/// Each world's own bindings (under [`rules`] and [`adapter`]) reuse these types.
#[allow(missing_docs)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        inline: "
            package cashback:sdk;
            world shared {
                import cashback:plugin/types@0.1.0;
                import cashback:plugin/log@0.1.0;
                import cashback:plugin/config@0.1.0;
            }
        ",
        path: "../wit/since_v0.1.0",
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        runtime_path: "cashback_sdk::__private::wit_bindgen::rt",
        generate_all,
    });
}

/// The data types of the contract (`cashback:plugin/types`), with helpers.
pub mod types {
    pub use crate::bindings::cashback::plugin::types::{
        ConversionEvent, ConversionState, Exclusion, LineCashback, LineItem, Money, Order, PluginError, RuleContext,
        RuleDecision, Timestamp,
    };
}

/// What most plugins need, in one `use`.
pub mod prelude {
    pub use crate::money::{self, Bps, Rounding};
    pub use crate::time::parse_timestamp;
    pub use crate::types::*;
    pub use crate::{config, log};

    #[cfg(feature = "adapter")]
    pub use crate::adapter::{
        Adapter, FileResult, ImportRequest, Page, PostbackRequest, RejectedItem, RejectedRow, http,
    };
    #[cfg(feature = "adapter")]
    pub use crate::export_adapter;
    #[cfg(feature = "rules")]
    pub use crate::export_rule;
    #[cfg(feature = "rules")]
    pub use crate::rules::Rule;
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// Routes panic messages to the host's log before the trap, so the error an
    /// operator sees says why the plugin panicked, not only that it did.
    pub fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            static INSTALLED: std::sync::Once = std::sync::Once::new();
            INSTALLED.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    crate::log::error(&format!("panic: {info}"));
                }));
            });
        }
    }
}

/// Stamps the API version, the plugin's manifest (`cashback-plugin.toml` next to its
/// `Cargo.toml`) and optionally its fixtures (a JSON file, path relative to `Cargo.toml`)
/// into the component as custom sections, so that one `.wasm` file carries everything
/// the host checks at upload. Used by the export macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_plugin {
    () => {
        $crate::__stamp_plugin!(@api b"0.1.0");
    };
    (fixtures = $path:literal) => {
        $crate::__stamp_plugin!(@api b"0.1.0", fixtures = $path);
    };
    (@api $version:literal) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "cashback:api-version")]
        #[used]
        static __CASHBACK_API_VERSION: [u8; 5] = *$version;

        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "cashback:manifest")]
        #[used]
        static __CASHBACK_MANIFEST: [u8; include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/cashback-plugin.toml"))
            .len()] = *include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/cashback-plugin.toml"));
    };
    (@api $version:literal, fixtures = $path:literal) => {
        $crate::__stamp_plugin!(@api $version);

        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "cashback:fixtures")]
        #[used]
        static __CASHBACK_FIXTURES: [u8; include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)).len()] =
            *include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path));
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_version_matches_the_wit_package() {
        let wit = include_str!("../../wit/since_v0.1.0/types.wit");
        assert!(wit.contains(&format!("package cashback:plugin@{};", super::API_VERSION)));
        assert_eq!(super::API_VERSION.len(), 5, "the stamp in __stamp_plugin! is 5 bytes");
    }
}
