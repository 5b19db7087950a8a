//! Partner-callback plugins (world `partner-callback`, contract `cashback:plugin@0.2.0`).
//!
//! A partner-callback plugin renders the HTTP request of one callback in a partner's own
//! format or signature scheme; the host sends it (with its address checks, timeout,
//! retries and delivery log). It gets no network and no clock: the change carries `now`.
//!
//! This world exists since contract 0.2.0, while the SDK's rules and adapters are built
//! against 0.1.0 (so that every existing plugin keeps building into the same component).
//! This module therefore carries its own 0.2.0 bindings of `types`, `log` and `config`:
//! use [`partner::log`](log), [`partner::config`](config) and the types re-exported here,
//! not the crate-level ones, or the component would import both versions.
//!
//! ```ignore
//! use cashback_sdk::partner::prelude::*;
//!
//! struct Plain;
//!
//! impl PartnerCallback for Plain {
//!     fn render(change: &Change, endpoint: &Endpoint) -> Result<Request, PluginError> {
//!         Ok(Request::get(&endpoint.url))
//!     }
//! }
//!
//! export_partner_callback!(Plain, fixtures = "fixtures.json");
//! ```

/// The contract version of this world.
pub const API_VERSION: &str = "0.2.0";

#[allow(missing_docs)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/since_v0.2.0",
        world: "cashback:plugin/partner-callback@0.2.0",
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        runtime_path: "cashback_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_partner_callback",
    });
}

pub use bindings::cashback::plugin::types::{ConversionState, PluginError, Timestamp};
pub use bindings::exports::cashback::plugin::callback::{
    Change, ConversionSnapshot, Endpoint, Method, Request, Subject,
};

/// What a partner-callback plugin implements.
pub trait PartnerCallback {
    /// Renders the request for `change`, going to `endpoint`. Called once per attempt;
    /// the same input must give the same request (use `change.now`, never a clock).
    fn render(change: &Change, endpoint: &Endpoint) -> Result<Request, PluginError>;
}

impl Request {
    /// A GET of `url`, no headers, no body, nothing redacted.
    pub fn get(url: &str) -> Request {
        Request { method: Method::Get, url: url.to_string(), headers: Vec::new(), body: None, redact: Vec::new() }
    }
}

impl Change {
    /// The value of a macro (`click_id`, `state`, `payout`...), if the change has it.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Logging to the host (the 0.2.0 `log` import). Natively, as [`crate::log`].
pub mod log {
    /// Records a message at `level`: "debug", "info", "warn" or "error".
    fn write(level: crate::log::Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        {
            use super::bindings::cashback::plugin::log::{Level, write};
            let level = match level {
                crate::log::Level::Trace => Level::Trace,
                crate::log::Level::Debug => Level::Debug,
                crate::log::Level::Info => Level::Info,
                crate::log::Level::Warn => Level::Warn,
                crate::log::Level::Error => Level::Error,
            };
            write(level, message);
        }
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::record_log(level, message);
    }

    /// Records a debug message.
    pub fn debug(message: &str) {
        write(crate::log::Level::Debug, message);
    }

    /// Records an informational message.
    pub fn info(message: &str) {
        write(crate::log::Level::Info, message);
    }

    /// Records a warning.
    pub fn warn(message: &str) {
        write(crate::log::Level::Warn, message);
    }

    /// Records an error.
    pub fn error(message: &str) {
        write(crate::log::Level::Error, message);
    }
}

/// The plugin's configuration for the endpoint (the 0.2.0 `config` import). Natively, the
/// one [`crate::testing::set_config`] sets.
pub mod config {
    use super::PluginError;
    use serde::de::DeserializeOwned;

    /// The configuration as JSON text.
    pub fn raw() -> String {
        #[cfg(target_arch = "wasm32")]
        {
            super::bindings::cashback::plugin::config::get()
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::current_config()
        }
    }

    /// The configuration parsed into `T`; a failure names the field, as
    /// [`crate::config::get`] does.
    pub fn get<T: DeserializeOwned>() -> Result<T, PluginError> {
        use crate::types::PluginError as V1;
        crate::config::parse(&raw()).map_err(|e| match e {
            V1::InvalidInput(m) => PluginError::InvalidInput(m),
            V1::Config(m) => PluginError::Config(m),
            V1::Upstream(m) => PluginError::Upstream(m),
            V1::Internal(m) => PluginError::Internal(m),
        })
    }
}

/// Routes panic messages to the host's log before the trap, through the 0.2.0 `log` (the
/// crate-level hook would import 0.1.0's, which a 0.2.0 world does not link).
#[doc(hidden)]
pub fn __install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                log::error(&format!("panic: {info}"));
            }));
        });
    }
}

/// What a partner-callback plugin needs, in one `use`.
pub mod prelude {
    pub use super::{
        Change, ConversionSnapshot, ConversionState, Endpoint, Method, PartnerCallback, PluginError, Request, Subject,
        config, log,
    };
    pub use crate::export_partner_callback;
}

/// Exports a type implementing [`PartnerCallback`] as the plugin's `callback` interface, and
/// stamps contract version 0.2.0, the manifest (`cashback-plugin.toml`, with `kind =
/// "partner-callback"` and `wit = "0.2.0"`) and optionally the fixtures into the component.
/// On targets other than wasm32 it expands to nothing, so the crate still builds natively.
#[macro_export]
macro_rules! export_partner_callback {
    ($plugin:ty $(, fixtures = $fixtures:literal)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __CashbackPartnerExport;

            impl $crate::partner::bindings::exports::cashback::plugin::callback::Guest for __CashbackPartnerExport {
                fn render(
                    change: $crate::partner::Change,
                    endpoint: $crate::partner::Endpoint,
                ) -> ::core::result::Result<$crate::partner::Request, $crate::partner::PluginError> {
                    $crate::partner::__install_panic_hook();
                    <$plugin as $crate::partner::PartnerCallback>::render(&change, &endpoint)
                }
            }

            $crate::partner::bindings::__export_partner_callback!(
                __CashbackPartnerExport with_types_in $crate::partner::bindings
            );
            $crate::__stamp_plugin!(@api b"0.2.0" $(, fixtures = $fixtures)?);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$plugin as $crate::partner::PartnerCallback>::render;
        };
    };
}
