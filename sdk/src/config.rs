//! The plugin's configuration for the merchant or network it runs for.
//!
//! The host checks the configuration against the schema in the plugin's manifest before
//! a call, and never passes fields marked secret: those are credentials the host adds to
//! outgoing requests itself.

use crate::types::PluginError;
use serde::de::DeserializeOwned;

/// The configuration as JSON text.
pub fn raw() -> String {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::cashback::plugin::config::get()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::current_config()
    }
}

/// The configuration parsed into `T`; a parse failure is a [`PluginError::Config`] that
/// names the offending field.
pub fn get<T: DeserializeOwned>() -> Result<T, PluginError> {
    parse(&raw())
}

/// Parses configuration JSON into `T` (what [`get`] does with the host's JSON).
pub fn parse<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    serde_json::from_str(json).map_err(|e| PluginError::Config(format!("invalid configuration: {e}")))
}
