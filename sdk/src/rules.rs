//! Merchant rule plugins (world `merchant-rules`).
//!
//! A rule computes the cashback for an order: per line item, with exclusions, caps,
//! tiers, reward delay and an optional hold for review. Rules are pure: use the order,
//! the context (whose `now` is the evaluation time) and [`crate::config`], never a clock,
//! randomness or global state. The host may run the same input twice (replays,
//! backtests, shadow versions) and expects the same answer.

use crate::types::{Order, PluginError, RuleContext, RuleDecision};

/// What a rule plugin implements.
pub trait Rule {
    /// Computes the cashback decision for `order`.
    fn evaluate(order: &Order, context: &RuleContext) -> Result<RuleDecision, PluginError>;
}

#[allow(missing_docs)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/since_v0.1.0",
        world: "cashback:plugin/merchant-rules@0.1.0",
        with: {
            "cashback:plugin/types@0.1.0": crate::bindings::cashback::plugin::types,
            "cashback:plugin/log@0.1.0": crate::bindings::cashback::plugin::log,
            "cashback:plugin/config@0.1.0": crate::bindings::cashback::plugin::config,
        },
        runtime_path: "cashback_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_merchant_rules",
    });
}

/// Exports a type implementing [`Rule`] as the plugin's `rules` interface, and stamps the
/// API version and the manifest (`cashback-plugin.toml` beside `Cargo.toml`) into the
/// component. Invoke it once, at the root of the plugin crate.
///
/// On targets other than wasm32 it expands to nothing, so the plugin crate still builds
/// natively for `cargo test`.
#[macro_export]
macro_rules! export_rule {
    ($rule:ty $(, fixtures = $fixtures:literal)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __CashbackRuleExport;

            impl $crate::rules::bindings::exports::cashback::plugin::rules::Guest for __CashbackRuleExport {
                fn evaluate(
                    order: $crate::types::Order,
                    context: $crate::types::RuleContext,
                ) -> ::core::result::Result<$crate::types::RuleDecision, $crate::types::PluginError> {
                    $crate::__private::install_panic_hook();
                    <$rule as $crate::rules::Rule>::evaluate(&order, &context)
                }
            }

            $crate::rules::bindings::__export_merchant_rules!(
                __CashbackRuleExport with_types_in $crate::rules::bindings
            );
            $crate::__stamp_plugin!($(fixtures = $fixtures)?);
        };
        // Natively the export is a no-op; naming the impl keeps it type-checked and used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$rule as $crate::rules::Rule>::evaluate;
        };
    };
}
